"""Marginal likelihood by importance sampling: exact Gaussian case, R nlme reference, MC error."""

import math
import warnings

import arviz as az
import numpy as np
import pandas as pd
import pytensor
import pytensor.tensor as pt
import pytest
from scipy import optimize, stats

from bayesnlme.build import build_model
from bayesnlme.datasets import dataset_path, load_theophylline
from bayesnlme.errors import BayesNLMEInputError, ConvergenceWarning
from bayesnlme.evaluate.importance import population
from bayesnlme.evaluate.likelihood import MarginalLik, _conditional_loglik, marginal_loglik, population_mode
from bayesnlme.inference.fit import FitResult, fit_model
from bayesnlme.spec import ModelSpec, load_spec
from bayesnlme.structural import StructuralModel

# R 4.2.2, nlme 3.1-162: nlme(..., method = "ML") of the 1-compartment oral model with additive
# error and diagonal OMEGA on the 132 theophylline observations (code in docs/likelihood.md).
NLME_LOGLIK = -179.7362
NLME_AIC, NLME_BIC = 373.4725, 393.6521
NLME_THETA = {"CL": math.exp(1.018530), "V": math.exp(3.449222), "KA": math.exp(0.446522),
              "omega_CL": 0.2647301, "omega_V": 0.1349591, "omega_KA": 0.6220764, "sigma_add": 0.6966863}
# The exact marginal log-likelihood at NLME_THETA by adaptive Gauss-Hermite quadrature in R
# (20^3 and 30^3 nodes agree to 1e-4; code in docs/likelihood.md).  nlme's own logLik is the
# Lindstrom-Bates linearisation, an approximation of this integral.
AGQ_LOGLIK_AT_NLME = -180.3641


def theophylline_additive_spec():
    d = load_spec("pk_1cmt_oral").to_dict()
    d["residual"] = {"type": "additive"}
    return ModelSpec.from_dict(d)


def _quiet_fit(*args, **kwargs):
    with warnings.catch_warnings():     # short chains trip the ESS check; irrelevant here
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit_model(*args, **kwargs)


@pytest.fixture(scope="module")
def theo_fit():
    return _quiet_fit(theophylline_additive_spec(), dataset_path("theophylline"), chains=2, draws=500,
                      tune=500, seed=1, progress=False)


# ---------------------------------------------------------------------- exact: Gaussian random intercept

_N_SUB, _N_PER = 8, 5


def _level(params, doses):
    # log B_i = log TV(B) + ETA_i, so y_ij = log TV(B) + ETA_i + eps_ij: linear in ETA
    return pt.log(params["B"])


def _linear_data():
    rng = np.random.default_rng(3)
    eta = rng.normal(0.0, 1.5, _N_SUB)
    rows = [(i + 1, float(j), 10.0 + eta[i] + rng.normal(0.0, 0.8)) for i in range(_N_SUB) for j in range(_N_PER)]
    return pd.DataFrame(rows, columns=["ID", "TIME", "DV"])


def _exact_loglik(df, theta):
    """log p(y | theta) of y_i ~ MVN(log B * 1, omega^2 J + sigma^2 I), summed over subjects."""
    cov = theta["omega_B"] ** 2 * np.ones((_N_PER, _N_PER)) + theta["sigma_add"] ** 2 * np.eye(_N_PER)
    mvn = stats.multivariate_normal(np.full(_N_PER, math.log(theta["B"])), cov)
    return float(sum(mvn.logpdf(df.DV[df.ID == i].to_numpy()) for i in df.ID.unique()))


def _linear_spec():
    return ModelSpec.from_dict(
        {"name": "level", "parameters": {"B": {"prior": {"dist": "lognormal", "median": 1000.0, "sigma": 10.0},
                                               "iiv": "lognormal",
                                               "omega": {"dist": "halfnormal", "sigma": 3.0}}},
         "residual": {"type": "additive", "sigma_add": {"dist": "halfnormal", "sigma": 3.0}}},
        structural=StructuralModel.custom(_level, ["B"]))


@pytest.fixture(scope="module")
def linear_fit():
    df = _linear_data()
    return _quiet_fit(_linear_spec(), df, chains=2, draws=300, tune=300, seed=2, progress=False), df


@pytest.mark.slow
def test_mle_of_a_variance_component_on_its_boundary():
    """Data without between-subject variation (seed 1: the exact MLE of OMEGA is 0): the MLE of OMEGA is
    0 to Monte Carlo error, the same from two starts, with the exact maximum likelihood."""
    rng = np.random.default_rng(1)
    df = pd.DataFrame([(i + 1, float(j), 10.0 + rng.normal(0.0, 0.8)) for i in range(_N_SUB) for j in range(_N_PER)],
                      columns=["ID", "TIME", "DV"])

    def exact(v):
        return _exact_loglik(df, {"B": math.exp(v[0]), "omega_B": v[1], "sigma_add": math.exp(v[2])})

    best = optimize.minimize(lambda v: -exact(v), [10.0, 0.5, -0.2], method="L-BFGS-B",
                             bounds=[(None, None), (0.0, None), (None, None)])
    assert best.x[1] < 1e-6   # the data set is a boundary case
    fit = _quiet_fit(_linear_spec(), df, chains=2, draws=300, tune=300, seed=2, progress=False)
    med = {n: float(np.median(fit.posterior_draws(n))) for n in ("B", "omega_B", "sigma_add")}
    mles = []
    for start in (None, {**med, "omega_B": 1.0}):
        mle = population_mode(fit, prior=False, n_samples=1000, seed=1, start=start)
        assert float(mle["omega_B"]) < 0.05, (start, mle)   # vs sigma/sqrt(5) = 0.33: 0 to MC error
        at = exact([math.log(float(mle["B"])), float(mle["omega_B"]), math.log(float(mle["sigma_add"]))])
        assert at > -best.fun - 0.01, (start, mle)
        mles.append(mle)
    # the same estimate from both starts (on the log scale of OMEGA the second start ran on towards
    # exp(-20) while the first stopped at 0.009: the direction is flat there); OMEGA to 0.005 (1.5% of
    # sigma/sqrt(5)): the search stops once a round gains less than 0.05 in log-likelihood, and on this flat
    # boundary the two starts then stop at 0.0096 and 0.0112
    for name, abs_tol in (("B", 1e-3), ("omega_B", 5e-3), ("sigma_add", 1e-3)):
        assert float(mles[0][name]) == pytest.approx(float(mles[1][name]), rel=1e-3, abs=abs_tol), name


@pytest.mark.slow
def test_exact_gaussian_marginal_likelihood(linear_fit):
    fit, df = linear_fit
    theta = {"B": math.exp(9.5), "omega_B": 1.2, "sigma_add": 0.9}
    m = marginal_loglik(fit, theta=theta, n_samples=2000, seed=4)
    exact = _exact_loglik(df, theta)
    assert isinstance(m, MarginalLik)
    assert m.mc_se < 0.05
    assert abs(m.loglik - exact) < 3 * m.mc_se + 1e-3
    assert m.n_parameters == 3 and m.n_obs == _N_SUB * _N_PER
    assert m.minus2ll == pytest.approx(-2 * m.loglik)
    assert len(m.per_subject) == _N_SUB and m.per_subject["loglik"].sum() == pytest.approx(m.loglik)
    assert (m.per_subject["ess"] > 1000).all()
    # the MLE found with importance sampling reaches the exact maximum of the likelihood
    mle = population_mode(fit, prior=False, n_samples=1000, seed=1)
    best = optimize.minimize(lambda v: -_exact_loglik(df, {"B": math.exp(v[0]), "omega_B": math.exp(v[1]),
                                                           "sigma_add": math.exp(v[2])}), [9.0, 0.0, 0.0])
    at_mle = _exact_loglik(df, {k: float(v) for k, v in mle.items()})
    assert at_mle > -best.fun - 0.1         # MC error of the objective moves the argmax a little
    assert math.log(float(mle["B"])) == pytest.approx(best.x[0], abs=0.1)   # its SE is about 0.7


# ---------------------------------------------------------------------- R nlme reference


@pytest.mark.slow
def test_agrees_with_exact_quadrature_at_nlme_estimates(theo_fit):
    m = marginal_loglik(theo_fit, theta=NLME_THETA, n_samples=4000, seed=1)
    assert abs(m.loglik - AGQ_LOGLIK_AT_NLME) < 4 * m.mc_se + 0.02
    assert m.theta["CL"] == pytest.approx(NLME_THETA["CL"])


@pytest.mark.slow
def test_mle_matches_r_nlme(theo_fit):
    mle = population_mode(theo_fit, prior=False, n_samples=1000, seed=0)
    for name, tol in (("CL", 0.05), ("V", 0.03), ("KA", 0.1), ("sigma_add", 0.03),
                      ("omega_CL", 0.15), ("omega_V", 0.15), ("omega_KA", 0.15)):
        assert float(mle[name]) == pytest.approx(NLME_THETA[name], rel=tol), name
    m = marginal_loglik(theo_fit, theta=mle, n_samples=4000, seed=0)
    assert abs(m.loglik - NLME_LOGLIK) < 1.0
    # p = 3 THETA + 3 OMEGA + 1 SIGMA, as nlme counts them (its AIC - BIC gap fixes p and n_obs)
    assert m.n_parameters == 7 and m.n_obs == 132
    assert NLME_BIC - NLME_AIC == pytest.approx(7 * (math.log(132) - 2), abs=1e-3)
    assert m.minus2ll == pytest.approx(-2 * m.loglik)
    assert m.aic == pytest.approx(m.minus2ll + 14)
    assert m.bic == pytest.approx(m.minus2ll + 7 * math.log(132))
    assert abs(m.aic - NLME_AIC) < 2.0
    # the maximum of the likelihood is at least as high as at nlme's (approximate-likelihood) estimates
    assert m.loglik > AGQ_LOGLIK_AT_NLME - 3 * m.mc_se - 0.05


@pytest.mark.slow
def test_posterior_mode_default(theo_fit):
    m = marginal_loglik(theo_fit, n_samples=1000, seed=0)   # theta = posterior mode
    assert set(m.theta) == {"CL", "V", "KA", "omega_CL", "omega_V", "omega_KA", "sigma_add"}
    assert float(m.theta["CL"]) == pytest.approx(NLME_THETA["CL"], rel=0.1)
    assert abs(m.loglik - AGQ_LOGLIK_AT_NLME) < 1.0     # the prior moves the mode a little from the MLE
    assert "log-likelihood" in str(m) and m.to_dict()["n_parameters"] == 7


@pytest.mark.slow
def test_mc_se_decreases_with_n_samples(theo_fit):
    small = marginal_loglik(theo_fit, theta=NLME_THETA, n_samples=200, seed=0)
    large = marginal_loglik(theo_fit, theta=NLME_THETA, n_samples=3200, seed=0)
    assert large.mc_se < small.mc_se / 2.5          # ~ 1 / sqrt(n): 4x here
    assert (large.per_subject["mc_se"] < small.per_subject["mc_se"]).all()
    assert abs(large.loglik - small.loglik) < 4 * math.hypot(small.mc_se, large.mc_se) + 0.02
    # same seed, same answer
    assert marginal_loglik(theo_fit, theta=NLME_THETA, n_samples=200, seed=0).loglik == small.loglik


@pytest.mark.slow
def test_omega_block_with_zero_correlation_equals_diagonal(theo_fit):
    """A CL-V OMEGA block (LKJ Cholesky) at zero correlation has the diagonal model's likelihood."""
    d = theophylline_additive_spec().to_dict()
    d["random_effects"] = {"blocks": [["CL", "V"]]}
    # no second NUTS run: the block model's "fit" carries the diagonal fit's eta_z draws, which
    # only seed the importance proposals (they are adapted at theta)
    posterior = {"eta_z": theo_fit.idata.posterior["eta_z"].values}
    block_fit = FitResult(idata=az.from_dict(posterior=posterior), spec=ModelSpec.from_dict(d),
                          data=theo_fit.data, settings={})
    theta = {k: v for k, v in NLME_THETA.items() if k not in ("omega_CL", "omega_V")}
    theta["chol_CL_V"] = [NLME_THETA["omega_CL"], 0.0, NLME_THETA["omega_V"]]   # packed lower Cholesky
    block = marginal_loglik(block_fit, theta=theta, n_samples=2000, seed=2)
    diag = marginal_loglik(theo_fit, theta=NLME_THETA, n_samples=2000, seed=2)
    assert block.n_parameters == 8 and diag.n_parameters == 7     # + the CL-V correlation
    assert abs(block.loglik - diag.loglik) < 4 * math.hypot(block.mc_se, diag.mc_se)
    assert block.aic == pytest.approx(block.minus2ll + 16)


@pytest.mark.slow
def test_bad_theta_is_rejected(theo_fit):
    with pytest.raises(BayesNLMEInputError, match="lacks"):
        marginal_loglik(theo_fit, theta={"CL": 2.0})
    with pytest.raises(BayesNLMEInputError, match="support"):
        marginal_loglik(theo_fit, theta={**NLME_THETA, "sigma_add": -1.0})
    with pytest.raises(BayesNLMEInputError, match="one of"):
        marginal_loglik(theo_fit, theta="best")
    with pytest.raises(BayesNLMEInputError, match="n_samples"):
        marginal_loglik(theo_fit, theta=NLME_THETA, n_samples=3)


# ---------------------------------------------------------------------- densities match the PyMC model


def test_conditional_loglik_matches_pymc_exponential_error():
    """log p(y_i | theta, z) from IPRED and RES_SD equals PyMC's log density of DV (log-normal: incl. -log DV)."""
    df = load_theophylline()
    df = df[~((df.EVID == 0) & (df.TIME == 0))]          # exponential error needs IPRED > 0
    spec = load_spec("pk_1cmt_oral").with_residual("exponential")
    built = build_model(spec, df)
    model = built.model
    rng = np.random.default_rng(0)
    theta = {"CL": 2.8, "V": 32.0, "KA": 1.5, "omega_CL": 0.3, "omega_V": 0.2, "omega_KA": 0.6, "sigma_exp": 0.2}
    z = rng.standard_normal((2, built.data.n_subjects, 3))
    ours = _conditional_loglik(built, theta, z)
    assert ours.shape == (2, built.data.n_subjects)
    dv = model.observed_RVs[0]
    logp = pytensor.function(model.value_vars, model.logp(vars=[dv], sum=False)[0], on_unused_input="ignore")
    info = population(built)
    u = dict(zip(info.names, info.to_unconstrained(*[np.asarray(theta[n], float) for n in info.names])))
    for k in range(2):
        point = {model.rvs_to_values[rv].name: (z[k] if rv.name == "eta_z" else u[rv.name])
                 for rv in model.free_RVs}
        per_obs = logp(**point)
        expected = np.bincount(built.data.obs_subject, weights=per_obs, minlength=built.data.n_subjects)
        np.testing.assert_allclose(ours[k], expected, rtol=1e-10, atol=1e-8)


@pytest.mark.slow
def test_centred_eta_integrated_like_the_non_centred(theo_fit):
    """The same model with V's ETA centred: the likelihood at nlme's estimates is the same integral.

    Centred ETAs enter the importance sampling standardised (``eta_V / omega_V``), next to ``eta_z``.
    Seed 1, 4000 samples: -180.369 (non-centred) and -180.366 (centred), MC SE 0.024 each.
    """
    from bayesnlme.evaluate.subject_loo import subject_loo

    d = theophylline_additive_spec().to_dict()
    d["parameters"]["V"]["centered"] = True
    centred = _quiet_fit(ModelSpec.from_dict(d), dataset_path("theophylline"), chains=2, draws=300, tune=300,
                         seed=1, progress=False)
    assert "eta_V" in {rv.name for rv in centred.built.model.free_RVs}
    a = marginal_loglik(theo_fit, theta=NLME_THETA, n_samples=4000, seed=1)
    b = marginal_loglik(centred, theta=NLME_THETA, n_samples=4000, seed=1)
    assert b.n_parameters == a.n_parameters == 7
    assert abs(a.loglik - b.loglik) < 4 * math.hypot(a.mc_se, b.mc_se)
    assert abs(b.loglik - AGQ_LOGLIK_AT_NLME) < 4 * b.mc_se + 0.02
    table, summary = subject_loo(centred, n_draws=200, n_is=100, seed=0)
    assert np.isfinite(table["elpd"]).all() and summary["n_subjects"] == 12


def test_one_invalid_draw_does_not_poison_the_other_draws():
    """Stacked draws are evaluated in one call: a draw whose residual SD underflows to 0 (proportional
    error, an extreme importance sample) gets its own -inf/NaN; before, PyMC's parameter check spanned
    the whole batch and set every draw's log-likelihood to -inf (whole-draw NaN in the integrated LOO)."""
    import numpy as np

    from bayesnlme.build import build_model
    from bayesnlme.datasets import dataset_path
    from bayesnlme.evaluate.predict import evaluate_draws
    from bayesnlme.spec import ModelSpec, load_spec

    d = load_spec("pk_1cmt_iv").to_dict()
    d["residual"] = {"type": "proportional"}
    built = build_model(ModelSpec.from_dict(d), dataset_path("phenobarbital"))
    draws = {k: np.repeat(np.asarray(v)[None], 4, axis=0) for k, v in built.initial_point.items()}
    draws.update(CL=np.full(4, 0.0056), V=np.full(4, 1.4), omega_CL=np.full(4, 0.4), omega_V=np.full(4, 0.45),
                 sigma_prop=np.full(4, 0.126))   # a posterior draw of the phenobarbital base model
    draws["eta_z"][2, 0, :] = 2000.0         # subject 1: V -> inf, so IPRED and its SD are 0
    ll = evaluate_draws(built, draws, ("loglik",))["loglik"]
    assert np.isfinite(ll[[0, 1, 3]]).all()
    assert not np.isfinite(ll[2]).all() and np.isfinite(ll[2][built.data.obs_subject != 0]).all()


@pytest.mark.slow
def test_large_populations_are_evaluated_in_blocks_of_samples(theo_fit, monkeypatch):
    """Above OBJECTIVE_CELLS sample-records a call, the mode search's objective is taken in blocks of
    importance samples (two passes): the same value and gradient as one call (one call over 2,000 samples
    of 100,000 records needs more memory than a 24 GB machine has).  The subject log-likelihood of many
    draws is evaluated in blocks of draws too: the same values bit for bit."""
    from bayesnlme.evaluate import importance, objective, predict
    from bayesnlme.evaluate.likelihood import _posterior_proposal

    built = theo_fit.built
    info = population(built)
    rng = np.random.default_rng(0)
    z, log_ratio = _posterior_proposal(theo_fit).sample(importance.base_draws(rng, 2000, 12, info.n_eta))
    theta = info.unflatten(info.unconstrained(importance.posterior_median(theo_fit)))
    whole = objective.Objective(built, 2000)
    assert whole.value is None                                      # 2,000 x 132 cells: one call
    value, grads = whole(theta, (z, log_ratio), 1.0)
    monkeypatch.setattr(objective, "OBJECTIVE_CELLS", 132 * 300)    # 300 samples a block: 7 blocks, one short
    blocked = objective.Objective(built, 2000)
    assert blocked.block == 300
    value_b, grads_b = blocked(theta, (z, log_ratio), 1.0)
    assert value_b == pytest.approx(value, rel=1e-12, abs=1e-9)
    for g, gb in zip(grads, grads_b):
        np.testing.assert_allclose(gb, g, rtol=1e-9, atol=1e-10)
    value_0, _ = blocked(theta, (z, log_ratio), 0.0)                # without the prior: the likelihood alone
    assert value_0 == pytest.approx(whole(theta, (z, log_ratio), 0.0)[0], rel=1e-12) and value_0 != value
    draws = importance.z_to_draws(built, z[:700], {k: np.repeat(np.asarray(v)[None], 700, axis=0)
                                                   for k, v in importance.posterior_median(theo_fit).items()})
    full = importance.subject_loglik(built, draws)
    monkeypatch.setattr(predict, "CELLS", 132 * 64)                 # 64 draws a block
    np.testing.assert_array_equal(importance.subject_loglik(built, draws), full)
