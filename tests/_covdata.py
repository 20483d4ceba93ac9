"""A simulated 1-compartment oral study with two true covariate effects and three null ones.

Truth: CL = 4 (WT/70)^0.75 L/h, V = 40 x 1.6^SEX L, KA = 1.2 /h; log-normal IIV (SD 0.25 on each);
combined error 0.1 mg/L + 10%; one 100 mg dose, 8 samples 0.5-24 h.  AGE (on CL, on V) and WT on KA
have no effect.
"""

import numpy as np
import pandas as pd

TIMES = np.array([0.5, 1, 2, 4, 6, 8, 12, 24.0])
TRUE = ("WT_on_CL", "SEX_on_V")


def simulate_covariate_study(n: int = 80, seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    wt = rng.uniform(45, 110, n).round(1)
    sex = rng.integers(0, 2, n)
    age = rng.uniform(20, 80, n).round(0)
    eta = rng.normal(0, 0.25, (n, 3))
    cl = 4 * (wt / 70) ** 0.75 * np.exp(eta[:, 0])
    v = 40 * 1.6 ** sex * np.exp(eta[:, 1])
    ka = 1.2 * np.exp(eta[:, 2])
    k = cl / v
    rows = []
    for i in range(n):
        rows.append({"ID": i + 1, "TIME": 0.0, "DV": 0.0, "AMT": 100.0, "EVID": 1, "MDV": 1, "CMT": 1,
                     "WT": wt[i], "SEX": sex[i], "AGE": age[i]})
        c = 100 * ka[i] / (v[i] * (ka[i] - k[i])) * (np.exp(-k[i] * TIMES) - np.exp(-ka[i] * TIMES))
        dv = c + rng.normal(0, 1, len(TIMES)) * np.sqrt(0.1 ** 2 + (0.1 * c) ** 2)
        for t, y in zip(TIMES, dv):
            rows.append({"ID": i + 1, "TIME": t, "DV": round(float(y), 4), "AMT": 0.0, "EVID": 0, "MDV": 0,
                         "CMT": 2, "WT": wt[i], "SEX": sex[i], "AGE": age[i]})
    return pd.DataFrame(rows)
