"""The phenobarbital neonates with the published model's covariates (NONMEM's `pheno` example): CL and V per
kg (WT on both, exponent fixed at 1) and an Apgar score below 5 on V (a categorical effect, estimated)."""

from bayesnlme.datasets import load_phenobarbital
from bayesnlme.spec import ModelSpec


def pheno_study():
    """``(spec, data)``: the data with their ``APGRLOW`` column (Apgar < 5) and the spec using it."""
    df = load_phenobarbital()
    df["APGRLOW"] = (df["APGR"] < 5).astype(int)
    spec = ModelSpec.from_dict({
        "structural": "1cmt_iv",
        "parameters": {
            "CL": {"prior": {"dist": "lognormal", "median": 0.005, "sigma": 1.0}, "unit": "L/h/kg"},
            "V": {"prior": {"dist": "lognormal", "median": 1.0, "sigma": 1.0}, "unit": "L/kg"}},
        "covariates": [
            {"parameter": "CL", "covariate": "WT", "type": "power", "reference": 1.0, "fixed": 1.0},
            {"parameter": "V", "covariate": "WT", "type": "power", "reference": 1.0, "fixed": 1.0},
            {"parameter": "V", "covariate": "APGRLOW", "type": "categorical", "reference": 0,
             "prior": {"dist": "normal", "mu": 0.0, "sigma": 0.5}}],
        "residual": {"type": "proportional"}})
    return spec, df
