"""-2LL for every observation model: importance sampling against numerical integration over the ETAs.

The importance-sampling likelihood sums the model's own per-record log-likelihood (the graph behind
DV's density in the fit), so censored (M3) records, counts and time-to-event records are integrated
like continuous ones.  Each case computes the same marginal log-likelihood independently: scipy's
densities at each record and a dense grid (2 ETAs) or Gauss-Hermite quadrature (1 ETA) over the
random effects, at the posterior medians of a short fit; the two agree within 4 Monte Carlo SEs.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.special import logsumexp, roots_hermitenorm

from bayesnlme.errors import ConvergenceWarning
from bayesnlme.evaluate.likelihood import marginal_loglik, posterior_median
from bayesnlme.inference.fit import fit_model
from bayesnlme.qualify import BLQ_SPEC, simulate_blq_study
from bayesnlme.spec import ModelSpec, load_spec

pytestmark = pytest.mark.slow


def _fit(spec, df):
    with warnings.catch_warnings():   # short chains: only the proposals and a theta are needed
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit_model(spec, df, chains=2, draws=150, tune=150, seed=1, progress=False)


def _gauss_hermite_1d(loglik_at_eta, omega, n=80):
    """log integral of exp(loglik(eta)) N(eta; 0, omega^2) d eta, by Gauss-Hermite (probabilists')."""
    x, w = roots_hermitenorm(n)
    return logsumexp(np.array([loglik_at_eta(omega * xi) for xi in x]) + np.log(w)) - 0.5 * np.log(2 * np.pi)


def test_m3_censored_records_match_2d_integration():
    df = simulate_blq_study(n=5, seed=3)
    obs = df[df["EVID"] == 0]
    assert 0.15 < obs["CENS"].mean() < 0.5
    res = _fit(ModelSpec.from_toml_text(BLQ_SPEC % "m3"), df)
    theta = posterior_median(res)
    m = marginal_loglik(res, theta=theta, n_samples=4000, seed=0)
    grid = np.linspace(-7, 7, 281)
    z1, z2 = np.meshgrid(grid, grid, indexing="ij")
    log_prior = stats.norm.logpdf(z1) + stats.norm.logpdf(z2) + 2 * np.log(grid[1] - grid[0])
    cl = theta["CL"] * np.exp(theta["omega_CL"] * z1)
    v = theta["V"] * np.exp(theta["omega_V"] * z2)
    total = 0.0
    for _, s in obs.groupby("ID"):
        ll = np.zeros_like(z1)
        for t, dv, cens in zip(s["TIME"], s["DV"], s["CENS"]):
            ipred = 100.0 / v * np.exp(-cl / v * t)
            ll += (stats.norm.logcdf(dv, ipred, theta["sigma_add"]) if cens
                   else stats.norm.logpdf(dv, ipred, theta["sigma_add"]))
        total += logsumexp(ll + log_prior)
    assert m.mc_se < 0.1
    assert abs(m.loglik - total) < 4 * m.mc_se + 1e-3, (m.loglik, total, m.mc_se)
    assert m.minus2ll == pytest.approx(-2 * m.loglik)


def test_poisson_counts_match_gauss_hermite():
    rng = np.random.default_rng(4)
    rows = []
    for i in range(1, 9):
        eta = 0.5 * rng.standard_normal()
        for x in rng.uniform(0, 3, 6):
            rows.append(dict(ID=i, TIME=float(len(rows)), DV=int(rng.poisson(np.exp(1.0 + eta - 0.4 * x))),
                             EVID=0, EXPOSURE=x))
    df = pd.DataFrame(rows)
    res = _fit(load_spec("count_poisson"), df)
    theta = posterior_median(res)
    m = marginal_loglik(res, theta=theta, n_samples=4000, seed=0)
    total = sum(_gauss_hermite_1d(
        lambda eta: stats.poisson.logpmf(s["DV"], np.exp(theta["E0"] + eta + theta["SLOPE"] * s["EXPOSURE"])).sum(),
        theta["omega_E0"]) for _, s in df.groupby("ID"))
    assert abs(m.loglik - total) < 4 * m.mc_se + 1e-3, (m.loglik, total, m.mc_se)


def test_time_to_event_with_frailty_matches_gauss_hermite():
    rng = np.random.default_rng(5)
    rows = []
    for i in range(1, 31):
        x, frailty = rng.uniform(0, 3), 0.6 * rng.standard_normal()
        t = rng.exponential(1 / (0.02 * np.exp(frailty - 0.3 * x)))
        rows.append(dict(ID=i, TIME=round(min(t, 100.0), 3), DV=int(t <= 100.0), EVID=0, EXPOSURE=x))
    df = pd.DataFrame(rows)
    assert 0 < df["DV"].mean() < 1   # events and right-censored subjects
    d = load_spec("tte_exponential").to_dict()
    d["parameters"]["E0"] = {"prior": {"dist": "normal", "mu": 0.0, "sigma": 0.1}, "iiv": "normal",
                             "omega": {"dist": "halfnormal", "sigma": 1.0}}   # a frailty on the log hazard
    res = _fit(ModelSpec.from_dict(d), df)
    theta = posterior_median(res)
    m = marginal_loglik(res, theta=theta, n_samples=4000, seed=0)

    def loglik(row, eta):
        h = theta["lambda"] * np.exp(theta["E0"] + eta + theta["SLOPE"] * row.EXPOSURE)
        return row.DV * np.log(h) - h * row.TIME

    total = sum(_gauss_hermite_1d(lambda eta, row=row: loglik(row, eta), theta["omega_E0"])
                for row in df.itertuples())
    assert abs(m.loglik - total) < 4 * m.mc_se + 1e-3, (m.loglik, total, m.mc_se)
