"""Mixture models ([mixture], NONMEM's $MIX): spec checks, the marginalised likelihood and recovery.

The recovery study: 50 subjects, one IV bolus of 100 mg and 8 samples each, 30% poor metabolisers with a
4-fold lower CL (ratio 0.25), log-normal IIV (omega_CL 0.2, omega_V 0.15), 10% log-normal residual error.
One fit (2 chains x 400 after 400 warm-up, started at the posterior mode) serves the recovery, membership
and simulation tests.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.special import logsumexp

from bayesnlme.build import build_model
from bayesnlme.data import read_nonmem
from bayesnlme.errors import ConvergenceWarning, SpecError
from bayesnlme.evaluate.mixture import mixture_membership
from bayesnlme.evaluate.predict import evaluate_draws
from bayesnlme.evaluate.simulate import simulate
from bayesnlme.inference import fit_model
from bayesnlme.spec import ModelSpec, load_spec
from bayesnlme.spec.toml_text import spec_toml
from bayesnlme.structural import LIBRARY, evaluate

TIMES = [0.5, 1, 2, 4, 6, 8, 12, 24]
TRUTH = {"CL": 4.0, "ratio_CL_2": 0.25, "p_mix_2": 0.3, "V": 30.0}


def study(n: int = 50, seed: int = 1):
    """The simulated study and each subject's true component (True: poor metaboliser)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(1, n + 1):
        rows.append({"ID": i, "TIME": 0.0, "DV": 0.0, "AMT": 100.0, "EVID": 1, "MDV": 1})
        rows += [{"ID": i, "TIME": t, "DV": 1.0, "AMT": 0.0, "EVID": 0, "MDV": 0} for t in TIMES]
    df = pd.DataFrame(rows)
    poor = rng.random(n) < TRUTH["p_mix_2"]
    cl = TRUTH["CL"] * np.where(poor, TRUTH["ratio_CL_2"], 1.0) * np.exp(rng.normal(0, 0.2, n))
    v = TRUTH["V"] * np.exp(rng.normal(0, 0.15, n))
    ipred = evaluate(LIBRARY["1cmt_iv"], {"CL": cl, "V": v}, read_nonmem(df))
    df.loc[df.EVID == 0, "DV"] = ipred * np.exp(0.1 * rng.standard_normal(len(ipred)))
    return df, poor


def mixture_spec(**mixture) -> ModelSpec:
    d = load_spec("pk_1cmt_iv").to_dict()
    d["residual"] = {"type": "proportional"}
    for p in ("CL", "V"):   # rich data: centred ETAs
        d["parameters"][p]["centered"] = True
    d["mixture"] = {"parameter": "CL", "components": 2, **mixture}
    return ModelSpec.from_dict(d)


# ---------------------------------------------------------------------- spec
@pytest.mark.parametrize("mixture, message", [
    ({"parameter": "CL", "colour": 1}, "mixture: unknown key.*'colour'"),
    ({"parameter": "CL", "components": 1}, r"components: must be an integer >= 2"),
    ({"parameter": "KA"}, "parameter 'KA' is not in the model"),
    ({"parameter": "CL", "ratio_prior": {"dist": "lognormal", "median": 0.3, "sigma": 1.0}},
     r"ratio_prior: must be a distribution on \(0, 1\)"),
    ({"parameter": "CL", "components": 3, "p_prior": {"dist": "beta", "alpha": 1, "beta": 1}},
     "need .*dirichlet"),
    ({"parameter": "CL", "components": 3, "p_prior": {"dist": "dirichlet", "alpha": [1, 1]}},
     "one value per component"),
    ({"parameter": "CL", "covariate": "GENO"}, "needs 'reference'"),
    ({"parameter": "CL", "reference": 0}, "reference given without 'covariate'"),
    ({}, "missing 'parameter'"),
])
def test_spec_errors_are_one_line(mixture, message):
    d = load_spec("pk_1cmt_iv").to_dict()
    d["mixture"] = mixture
    with pytest.raises(SpecError, match=message) as err:
        ModelSpec.from_dict(d)
    assert "\n" not in str(err.value)


def test_mixed_parameter_needs_lognormal_iiv():
    d = load_spec("pk_1cmt_iv").to_dict()
    d["parameters"]["CL"]["iiv"] = "none"
    d["parameters"]["CL"].pop("omega")
    d["mixture"] = {"parameter": "CL"}
    with pytest.raises(SpecError, match='CL needs iiv = "lognormal"'):
        ModelSpec.from_dict(d)


@pytest.mark.parametrize("mixture", [
    {},
    {"components": 3, "p_prior": {"dist": "dirichlet", "alpha": [2, 1, 1]},
     "covariate": "GENO", "reference": 0, "covariate_prior": {"dist": "normal", "mu": 0, "sigma": 1}},
])
def test_round_trip_and_reported_names(mixture):
    spec = mixture_spec(**mixture)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert ModelSpec.from_toml_text(spec_toml(spec.to_dict())).to_dict() == spec.to_dict()
    names = spec.population_parameter_names()
    k = mixture.get("components", 2)
    assert [f"ratio_CL_{j}" for j in range(2, k + 1)] + [f"p_mix_{j}" for j in range(1, k + 1)] == \
        [n for n in names if n.startswith(("ratio_", "p_mix_"))]
    if "covariate" in mixture:
        assert names[-2:] == ["GENO_on_p_mix_2", "GENO_on_p_mix_3"]


# ---------------------------------------------------------------------- likelihood
def test_likelihood_marginalises_membership_per_subject():
    """DV's per-record terms sum, per subject, to logsumexp_k[log w_k + sum_j log N(y_ij | component k)]."""
    df, _ = study(n=12)
    spec = mixture_spec(covariate="GENO", reference=0)
    df["GENO"] = (df["ID"] % 3 == 0).astype(float)
    built = build_model(spec, df)
    rng = np.random.default_rng(0)
    draws = {"CL": np.array([4.0, 3.0]), "V": np.array([30.0, 25.0]), "omega_CL": np.array([0.2, 0.3]),
             "omega_V": np.array([0.15, 0.1]), "eta_CL": rng.normal(0, 0.3, (2, 12)),
             "eta_V": rng.normal(0, 0.1, (2, 12)), "sigma_prop": np.array([0.1, 0.2]),
             "ratio_CL_2": np.array([0.25, 0.5]), "p_mix_2": np.array([0.3, 0.6]),
             "GENO_on_p_mix_2": np.array([1.0, -0.5])}
    assert sorted(draws) == sorted(rv.name for rv in built.model.free_RVs)
    out = evaluate_draws(built, draws, ("loglik",))["loglik"]
    data = built.data
    s, t, geno = data.obs_subject, data.obs_time, (np.arange(1, 13) % 3 == 0).astype(float)
    for d in range(2):
        cl = draws["CL"][d] * np.exp(draws["eta_CL"][d])
        v = draws["V"][d] * np.exp(draws["eta_V"][d])
        comp = np.stack([stats.norm.logpdf(data.obs_dv, f, draws["sigma_prop"][d] * f) for f in
                         (100 / v[s] * np.exp(-cl[s] * r / v[s] * t) for r in (1.0, draws["ratio_CL_2"][d]))])
        per_subject = np.stack([np.bincount(s, weights=c, minlength=12) for c in comp], axis=1)
        logit = np.log(draws["p_mix_2"][d] / (1 - draws["p_mix_2"][d])) + draws["GENO_on_p_mix_2"][d] * geno
        log_w = np.stack([-np.logaddexp(0, logit), -np.logaddexp(0, -logit)], axis=1)
        expect = logsumexp(log_w + per_subject, axis=1)
        np.testing.assert_allclose(np.bincount(s, weights=out[d], minlength=12), expect, rtol=1e-10)


def test_mixture_with_observation_types_is_refused():
    df, _ = study(n=4)
    d = mixture_spec().to_dict()
    d["observations"] = [{"output": "CP", "likelihood": "proportional"}]
    with pytest.raises(SpecError, match=r"\[\[observations\]\].*not supported with \[mixture\]"):
        build_model(ModelSpec.from_dict(d), df)


def test_jax_log_density_equals_pytensor():
    jax = pytest.importorskip("jax")
    from pymc.sampling.jax import get_jaxified_logp

    df, _ = study(n=6)
    built = build_model(mixture_spec(), df)
    model = built.model
    point = model.initial_point()
    rng = np.random.default_rng(5)
    values = [point[v.name] + 0.1 * rng.standard_normal(np.shape(point[v.name])) for v in model.value_vars]
    expect = model.compile_logp()(dict(zip([v.name for v in model.value_vars], values)))
    got = jax.jit(get_jaxified_logp(model))(values)
    np.testing.assert_allclose(float(got), expect, rtol=1e-9)


# ---------------------------------------------------------------------- recovery
@pytest.fixture(scope="module")
def fitted():
    df, poor = study()
    with warnings.catch_warnings():   # short chains trip the ESS check by design
        warnings.simplefilter("ignore", ConvergenceWarning)
        # started at the posterior mode: with the ETA shared by the components, a subject whose ETA settles
        # early in warm-up in the other component's range stays there (see README, Mixture models)
        result = fit_model(mixture_spec(), df, chains=2, draws=400, tune=400, seed=1, progress=False,
                           init="map")
    return result, poor


@pytest.mark.validation
def test_fit_recovers_both_modes_and_the_mixing_fraction(fitted):
    result, _ = fitted
    summary = result.summary()
    assert {"ratio_CL_2", "p_mix_1", "p_mix_2"} <= set(summary.index)
    for name, truth in TRUTH.items():
        mean, sd = summary.loc[name, "mean"], summary.loc[name, "sd"]
        assert abs(mean - truth) < 3 * sd, (name, mean, sd, truth)
    # the poor metabolisers' typical CL, TV * ratio, recovered as well
    post = result.idata.posterior
    slow = (post["CL"] * post["ratio_CL_2"]).values.ravel()
    assert abs(slow.mean() - 1.0) < 3 * slow.std()
    assert summary.loc["ratio_CL_2", "r_hat"] < 1.05


@pytest.mark.validation
def test_membership_classifies_subjects(fitted):
    result, poor = fitted
    table = mixture_membership(result)
    assert list(table.columns) == ["ID", "P1", "P2", "component"]
    np.testing.assert_allclose(table["P1"] + table["P2"], 1.0)
    accuracy = np.mean((table["P2"].to_numpy() > 0.5) == poor)
    chance = max(poor.mean(), 1 - poor.mean())   # always guessing the larger group: 0.74
    assert accuracy >= 0.9 > chance + 0.1


@pytest.mark.validation
def test_simulation_draws_membership_per_subject(fitted):
    """New subjects: a component per subject from p_mix; fitted subjects: from their posterior membership."""
    result, poor = fitted
    late = result.data.obs_time == 24
    sims = simulate(result, n_draws=40, seed=2)
    c24 = sims.ipred[:, late]                     # poor metabolisers ~1.5 mg/L at 24 h, the others ~0.15
    assert abs((c24 > 0.5).mean() - TRUTH["p_mix_2"]) < 0.12
    own = simulate(result, n_draws=40, seed=2, mode="individual")
    assert np.mean(((own.ipred[:, late] > 0.5).mean(0) > 0.5) == poor) >= 0.9


def test_censored_records_enter_each_component_by_their_probability():
    """M3: a record below the LLOQ contributes log P(Y < LLOQ | component k) inside the logsumexp."""
    df, _ = study(n=6)
    obs = df["EVID"] == 0
    below = obs & (df["DV"] < 0.3)
    df["CENS"] = 0
    df.loc[below, ["DV", "CENS"]] = [0.3, 1]
    assert below.sum() > 3
    built = build_model(mixture_spec(), df)
    draws = {"CL": np.array([4.0]), "V": np.array([30.0]), "omega_CL": np.array([0.2]),
             "omega_V": np.array([0.15]), "eta_CL": np.full((1, 6), 0.1), "eta_V": np.zeros((1, 6)),
             "sigma_prop": np.array([0.1]), "ratio_CL_2": np.array([0.25]), "p_mix_2": np.array([0.3])}
    got = evaluate_draws(built, draws, ("loglik",))["loglik"][0]
    data = built.data
    s, t, cens = data.obs_subject, data.obs_time, data.obs_cens
    cl = 4.0 * np.exp(0.1)
    comp = []
    for r in (1.0, 0.25):
        f = 100 / 30 * np.exp(-cl * r / 30 * t)
        comp.append(np.where(cens == 1, stats.norm.logcdf(0.3, f, 0.1 * f), stats.norm.logpdf(data.obs_dv, f, 0.1 * f)))
    per_subject = np.stack([np.bincount(s, weights=c, minlength=6) for c in comp], axis=1)
    expect = logsumexp(np.log([0.7, 0.3]) + per_subject, axis=1)
    np.testing.assert_allclose(np.bincount(s, weights=got, minlength=6), expect, rtol=1e-10)


def test_prior_predictive_draws_a_component_per_subject():
    from bayesnlme.evaluate.prior_check import prior_predictive

    df, _ = study(n=10)
    sims, _ = prior_predictive(mixture_spec(), df, draws=30)
    assert sims.shape == (30, 80) and np.isfinite(sims).all()


@pytest.mark.validation
def test_predictions_keep_each_subjects_most_probable_component(fitted):
    from bayesnlme.evaluate.predict import predict_at_times

    result, poor = fitted
    curves = predict_at_times(result, [24.0], n_draws=50)
    ipred = curves["IPRED"].to_numpy()          # one row per subject, in ID order
    assert np.mean((ipred > 0.5) == poor) >= 0.9   # poor metabolisers ~1.5 mg/L at 24 h, the others ~0.15


def test_default_init_starts_a_mixture_at_the_mode(monkeypatch):
    """init="auto" (the default) finds the posterior mode first for a [mixture] spec, not for others."""
    from bayesnlme.inference import fit as fitmod

    calls = []

    def fake_map(built, **kw):
        calls.append(built.spec.name)
        raise RuntimeError("stop here")

    monkeypatch.setattr(fitmod.quick, "find_map", fake_map)
    monkeypatch.setattr(fitmod.quick, "compiled_model", lambda built: None)   # the mode's compile: not needed
    df, _ = study()
    with pytest.raises(RuntimeError, match="stop here"):
        fit_model(mixture_spec(), df, chains=1, draws=5, tune=5, progress=False)
    assert len(calls) == 1
