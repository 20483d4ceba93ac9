"""The model library: TOML specs shipped with bayesnlme (``model_library/``), and :func:`load_spec`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from bayesnlme.errors import SpecError
from bayesnlme.spec.model import ModelSpec


def library_names() -> list[str]:
    """Names of the ``model_library/`` entries (TOML specs shipped with bayesnlme)."""
    return sorted(p.name[:-5] for p in resources.files("bayesnlme.model_library").iterdir()
                  if p.name.endswith(".toml"))


def library_path(name: str) -> Path:
    """Path of the library entry ``name`` (e.g. ``"pk_1cmt_oral"``)."""
    if name not in library_names():
        raise SpecError(f"unknown model {name!r}: not a .toml file and not a model_library entry "
                        f"(entries: {', '.join(library_names())})")
    return Path(str(resources.files("bayesnlme.model_library").joinpath(f"{name}.toml")))


def load_spec(model) -> ModelSpec:
    """A spec from a TOML file path or the name of a ``model_library/`` entry."""
    if isinstance(model, ModelSpec):
        return model
    path = Path(model)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise SpecError(f"{path}: spec file not found")
        return ModelSpec.from_toml(path)
    return ModelSpec.from_toml(library_path(str(model)))
