"""Mixing of covariate thetas: a simulated population with a weight effect on CL, fitted in each ETA
parameterisation.

``n`` subjects (default 300) of the 1-compartment oral design of ``benchmarks/scale.py`` (10 samples a
subject, 100 mg), weights log-normal around 70 kg (SD 25%), ``CL = 4 (WT / 70)^0.75 exp(ETA)``; the
spec is ``pk_1cmt_oral`` with ``CL~WT:power``.  Each parameterisation is fitted with ``fit_model`` (nutpie,
4 chains x 1000 after 1000, seed 1) in this process, one after the other.

Printed per parameterisation: wall time (s; compilation included, so run twice for warm figures), mean
leapfrog steps a draw, bulk ESS of the typical values, OMEGAs and ``WT_on_CL``, and WT_on_CL's posterior
mean and SD (the truth is 0.75).

Run::

    .venv/bin/python benchmarks/covariate_mixing.py               # 300 subjects, both parameterisations
    .venv/bin/python benchmarks/covariate_mixing.py --subjects 1200 --forms population
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

warnings.simplefilter("ignore")
sys.path.insert(0, str(Path(__file__).parent))

import scale  # noqa: E402  (the design and truth of the scaling benchmark)

NAMES = ["CL", "V", "KA", "omega_CL", "omega_V", "omega_KA", "WT_on_CL"]


def simulate(n: int, seed: int = 7) -> pd.DataFrame:
    """A NONMEM-format study of ``n`` subjects with a weight effect on CL (exponent 0.75)."""
    rng = np.random.default_rng(seed)
    truth, times = scale.TRUTH, np.asarray(scale.TIMES)
    wt = np.exp(rng.normal(np.log(70.0), 0.25, n))
    eta = rng.normal(0.0, truth["omega"], (n, 3))
    cl = truth["CL"] * (wt / 70.0) ** 0.75 * np.exp(eta[:, 0])
    v, ka = truth["V"] * np.exp(eta[:, 1]), truth["KA"] * np.exp(eta[:, 2])
    k = (cl / v)[:, None]
    conc = 100.0 * ka[:, None] / (v[:, None] * (ka[:, None] - k)) * (np.exp(-k * times) - np.exp(-ka[:, None] * times))
    dv = conc * (1 + truth["sigma_prop"] * rng.standard_normal(conc.shape)) \
        + truth["sigma_add"] * rng.standard_normal(conc.shape)
    m = len(times)
    evid = np.tile(np.r_[1, np.zeros(m, int)], n)
    return pd.DataFrame({"ID": np.repeat(np.arange(1, n + 1), m + 1), "TIME": np.tile(np.r_[0.0, times], n),
                         "DV": np.column_stack([np.zeros(n), dv]).ravel(), "AMT": np.where(evid == 1, 100.0, 0.0),
                         "EVID": evid, "MDV": evid, "CMT": np.where(evid == 1, 1, 2), "WT": np.repeat(wt, m + 1)})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=300)
    parser.add_argument("--forms", nargs="+", default=["population", "subject"])
    args = parser.parse_args(argv)

    import arviz as az

    from bayesnlme import load_spec, read_nonmem
    from bayesnlme.covsearch import parse_candidates, with_relations
    from bayesnlme.inference.fit import fit_model

    data = read_nonmem(simulate(args.subjects), name=f"simulated_{args.subjects}")
    base = load_spec("pk_1cmt_oral")
    covs = data.baseline_covariates()
    spec = with_relations(base, parse_candidates("CL~WT:power", base, covs), covs)
    print(f"{args.subjects} subjects, pk_1cmt_oral + WT on CL (power), nutpie 4 x 1000 after 1000, seed 1")
    print(f"{'form':12s} {'wall s':>7s} {'steps':>6s} " + " ".join(f"{n:>9s}" for n in NAMES) + "  WT_on_CL mean (sd)")
    for form in args.forms:
        t0 = time.perf_counter()
        res = fit_model(spec, data, seed=1, progress=False, eta_parameterisation=form)
        wall = time.perf_counter() - t0
        post = res.idata.posterior
        ess = az.ess(post[NAMES], method="bulk")
        steps = float(res.idata.sample_stats["n_steps"].mean())
        theta = post["WT_on_CL"].values
        print(f"{form:12s} {wall:7.1f} {steps:6.1f} " + " ".join(f"{float(ess[n]):9.0f}" for n in NAMES)
              + f"  {theta.mean():.3f} ({theta.std():.3f})")


if __name__ == "__main__":
    main()
