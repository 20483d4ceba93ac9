"""Small simulated infusion studies and their fits, shared (cached) by test_simulate and test_vpc."""

import warnings
from functools import lru_cache

import numpy as np
import pandas as pd

from bayesnlme.data import read_nonmem
from bayesnlme.errors import ConvergenceWarning
from bayesnlme.inference.fit import fit_model
from bayesnlme.spec import load_spec
from bayesnlme.structural import LIBRARY, evaluate

TIMES = [0.5, 1, 2, 4, 8, 11.9, 12.5, 14, 18, 23.9, 24.5, 26, 30, 36]


def infusion_study(structural: str, n_sub: int = 20, seed: int = 0) -> pd.DataFrame:
    """Three 1-h infusions of 100 mg every 12 h; 14 samples per subject; 10% proportional + 0.05 additive error."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(1, n_sub + 1):
        rows += [{"ID": i, "TIME": 12.0 * k, "DV": 0.0, "AMT": 100.0, "DUR": 1.0, "EVID": 1, "MDV": 1}
                 for k in range(3)]
        rows += [{"ID": i, "TIME": t, "DV": 1.0, "AMT": 0.0, "DUR": 0.0, "EVID": 0, "MDV": 0} for t in TIMES]
    df = pd.DataFrame(rows).sort_values(["ID", "TIME", "EVID"], ascending=[True, True, False], kind="stable")
    df = df.reset_index(drop=True)
    data = read_nonmem(df)
    tv = {"CL": 2.0, "V": 20.0} if structural == "1cmt_iv" else {"CL": 2.0, "V": 8.0, "Q": 4.0, "V2": 40.0}
    params = {p: v * np.exp(rng.normal(0, 0.3 if p == "CL" else 0.2, n_sub)) for p, v in tv.items()}
    ipred = evaluate(LIBRARY[structural], params, data)
    dv = ipred * (1 + 0.1 * rng.standard_normal(len(ipred))) + 0.05 * rng.standard_normal(len(ipred))
    df.loc[df["EVID"] == 0, "DV"] = np.maximum(dv, 0.01)
    df["NTIME"] = df["TIME"].round()     # nominal time (h), for VPC binning
    return df


@lru_cache(maxsize=None)
def fitted(truth: str):
    """A 1-compartment fit to data simulated from ``truth`` ("1cmt_iv" correct, "2cmt_iv" misspecified)."""
    with warnings.catch_warnings():   # short test chains trip the ESS check by design
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit_model(load_spec("pk_1cmt_iv"), infusion_study(truth), chains=2, draws=200, tune=250, seed=3,
                         progress=False)
