"""Occasion effects (IOV) are integrated by the importance-sampling likelihood and the subject-level LOO.

The check is exact: with a log-linear model (baseline E0 with log-normal IIV and IOV, exponential
residual error) ``log DV`` of a subject is multivariate normal with covariance
``OMEGA^2 J + OMEGA_IOV^2 (same occasion) + SIGMA^2 I``, so the marginal likelihood has a closed form
to compare the importance-sampling estimate with, within its Monte Carlo error.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bayesnlme.errors import ConvergenceWarning
from bayesnlme.evaluate.likelihood import marginal_loglik
from bayesnlme.evaluate.subject_loo import marginal_subject_loglik
from bayesnlme.inference import fit_model
from bayesnlme.spec import ModelSpec

pytestmark = pytest.mark.slow

SPEC = """
name = "baseline_iov"
structural = "linear_exposure"
[parameters.E0]
prior = { dist = "lognormal", median = 10.0, sigma = 1.0 }
omega = { dist = "halfnormal", sigma = 0.5 }
omega_iov = { dist = "halfnormal", sigma = 0.5 }
[parameters.SLOPE]
fixed = 0.0
iiv = "none"
[residual]
type = "exponential"
sigma_exp = { dist = "halfnormal", sigma = 0.5 }
"""
TRUTH = {"E0": 10.0, "omega_E0": 0.3, "omega_iov_E0": 0.25, "sigma_exp": 0.1}


def _data(n_sub=8, seed=4):
    """Subjects with 1 to 3 occasions (so the padding of the occasion slots is exercised), 3 records each."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(1, n_sub + 1):
        eta = rng.normal(0, TRUTH["omega_E0"])
        for occ in range(1, 1 + 1 + i % 3):
            kappa = rng.normal(0, TRUTH["omega_iov_E0"])
            for t in range(3):
                dv = TRUTH["E0"] * np.exp(eta + kappa + rng.normal(0, TRUTH["sigma_exp"]))
                rows.append({"ID": i, "TIME": 24.0 * occ + t, "DV": dv, "EVID": 0, "MDV": 0, "OCC": occ,
                             "EXPOSURE": 1.0})
    return pd.DataFrame(rows)


def _exact(df, theta) -> np.ndarray:
    """Closed-form log p(y_i | theta) per subject (density of DV: the log-normal Jacobian included)."""
    out = []
    for _, g in df.groupby("ID", sort=False):
        y = np.log(g["DV"].to_numpy())
        same_occ = (g["OCC"].to_numpy()[:, None] == g["OCC"].to_numpy()[None, :]).astype(float)
        cov = (theta["omega_E0"] ** 2 + theta["omega_iov_E0"] ** 2 * same_occ
               + theta["sigma_exp"] ** 2 * np.eye(len(y)))
        out.append(stats.multivariate_normal(np.full(len(y), np.log(theta["E0"])), cov).logpdf(y) - y.sum())
    return np.array(out)


@pytest.fixture(scope="module")
def fit():
    """A short NUTS fit: its posterior of the ETAs and KAPPAs makes the importance proposals."""
    df = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit_model(ModelSpec.from_toml_text(SPEC), df, chains=2, draws=300, tune=300, seed=2, progress=False)
    return df, res


def test_marginal_likelihood_integrates_occasion_effects(fit):
    df, res = fit
    theta = {k: np.asarray(v) for k, v in TRUTH.items() if k in res.idata.posterior}
    lik = marginal_loglik(res, theta=theta, n_samples=4000, seed=1)
    exact = _exact(df, TRUTH).sum()
    assert lik.mc_se < 0.2
    assert abs(lik.loglik - exact) < 4 * lik.mc_se + 0.02, (lik.loglik, exact, lik.mc_se)
    # the occasion effects matter: leaving them out of the closed form moves it by many Monte Carlo SEs
    assert abs(_exact(df, {**TRUTH, "omega_iov_E0": 1e-6}).sum() - exact) > 50 * lik.mc_se


def test_subject_level_likelihood_integrates_occasion_effects(fit):
    df, res = fit
    theta = {k: np.asarray([v]) for k, v in TRUTH.items() if k in res.idata.posterior}
    runs = np.array([marginal_subject_loglik(res, n_draws=1, n_is=10000, seed=s, theta_draws=theta)[0]
                     for s in range(4)])
    mc_se = runs.std(axis=0, ddof=1) / 2            # of the mean of 4 independent estimates
    err = runs.mean(axis=0) - _exact(df, TRUTH)
    assert np.all(np.abs(err) < 4 * mc_se + 0.01), (err, mc_se)
    assert mc_se.max() < 0.05
