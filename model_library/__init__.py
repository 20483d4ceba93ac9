"""The bayesnlme model library: one TOML specification per model (installed as bayesnlme.model_library)."""
