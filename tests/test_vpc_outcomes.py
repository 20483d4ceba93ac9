"""VPCs of non-continuous outcomes: Kaplan--Meier by hand, categorical proportions by hand, simulated
event times against known survival functions, and a KM VPC that passes a correct Weibull fit and flags an
exponential model fitted to strongly Weibull (shape 2.5) data."""

import warnings
from types import SimpleNamespace

import matplotlib
import numpy as np
import pandas as pd
import pytest
from scipy import integrate

from bayesnlme.build import build_model
from bayesnlme.errors import BayesNLMEInputError, ConvergenceWarning, DataError
from bayesnlme.evaluate import event_times
from bayesnlme.inference.fit import fit_model
from bayesnlme.spec import ModelSpec, load_spec
from bayesnlme.structural import LIBRARY
from bayesnlme.vpc.outcomes import (
    categorical_vpc_table,
    kaplan_meier,
    km_vpc,
    km_vpc_table,
    plot_categorical_vpc,
    plot_km_vpc,
    simulate_event_times,
    tte_observed,
)

matplotlib.use("Agg")

# ---------------------------------------------------------------------- Kaplan--Meier by hand


def test_kaplan_meier_equals_hand_computed_product_limit():
    # events at 1, 2, 2, 3, 5; censored at 2 (at risk at 2) and 4
    time = np.array([1, 2, 2, 3, 4, 5, 2.0])
    event = np.array([1, 1, 0, 1, 0, 1, 1])
    s, n = kaplan_meier(time, event, [0, 1, 1.5, 2, 3, 4, 5, 6])
    s1 = 6 / 7                    # t=1: 7 at risk, 1 event
    s2 = s1 * (1 - 2 / 6)         # t=2: 6 at risk (the censored one included), 2 events
    s3 = s2 * (1 - 1 / 3)         # t=3: 3 at risk
    np.testing.assert_allclose(s, [1, s1, s1, s2, s3, s3, 0, 0], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(n, [7, 7, 6, 6, 3, 2, 1, 0])
    # vectorised over replicates: each row equals the 1-D estimate, in any subject order
    rng = np.random.default_rng(0)
    perm = np.stack([rng.permutation(7) for _ in range(5)])
    sr, nr = kaplan_meier(time[perm], event[perm], [0, 1, 1.5, 2, 3, 4, 5, 6])
    np.testing.assert_allclose(sr, np.tile(s, (5, 1)), atol=1e-15)
    np.testing.assert_array_equal(nr, np.tile(n, (5, 1)))


def test_km_vpc_table_is_quantiles_of_replicate_curves():
    rng = np.random.default_rng(1)
    obs_t, obs_e = rng.exponential(10, 30).round(1), (rng.random(30) < 0.8).astype(int)
    sim_t, sim_e = rng.exponential(10, (50, 30)).round(1), (rng.random((50, 30)) < 0.8).astype(int)
    grid = np.array([0.0, 2.0, 5.0, 10.0, 20.0])
    table = km_vpc_table(obs_t, obs_e, sim_t, sim_e, times=grid, pi=80,
                         strata=np.where(np.arange(30) < 10, "A", "B"))
    assert list(table.columns) == ["stratum", "time", "n_at_risk", "observed", "sim_median", "sim_lo",
                                   "sim_hi", "outside"]
    b = table[table["stratum"] == "B"]
    curves = np.array([kaplan_meier(sim_t[r, 10:], sim_e[r, 10:], grid)[0] for r in range(50)])
    np.testing.assert_allclose(b["sim_lo"], np.quantile(curves, 0.1, axis=0))
    np.testing.assert_allclose(b["sim_hi"], np.quantile(curves, 0.9, axis=0))
    np.testing.assert_allclose(b["observed"], kaplan_meier(obs_t[10:], obs_e[10:], grid)[0])
    np.testing.assert_array_equal(b["outside"], (b["observed"] < b["sim_lo"]) | (b["observed"] > b["sim_hi"]))
    assert b["n_at_risk"].iloc[0] == 20


# ---------------------------------------------------------------------- categorical by hand


def test_categorical_table_equals_hand_counts():
    y = np.array([0, 1, 2, 2, 0, 0, 1, 2])
    x = np.array([0.5, 1.0, 1.5, 2.0, 5.0, 6.0, 7.0, 8.0])
    sims = np.array([[0, 0, 0, 0, 1, 1, 1, 1],
                     [1, 1, 2, 2, 0, 0, 0, 0],
                     [2, 2, 2, 2, 2, 2, 2, 2]])
    t = categorical_vpc_table(y, sims, x, bins=[0, 4, 10], pi=50)
    assert list(t.columns) == ["stratum", "bin", "x_lo", "x_hi", "x_mid", "category", "n", "observed",
                               "sim_median", "sim_lo", "sim_hi", "outside"]
    assert len(t) == 2 * 3 and list(t["category"][:3]) == [0, 1, 2]
    first = t[t["bin"] == 1].set_index("category")
    # bin 1 (x in [0, 4)): observed 0,1,2,2 -> 1/4, 1/4, 2/4; replicates' P(Y=2) = 0, 1/2, 1
    np.testing.assert_allclose(first["observed"], [0.25, 0.25, 0.5])
    np.testing.assert_allclose(first.loc[2, ["sim_lo", "sim_median", "sim_hi"]].to_numpy(float),
                               np.quantile([0, 0.5, 1], [0.25, 0.5, 0.75]))
    assert first["n"].iloc[0] == 4 and first["x_mid"].iloc[0] == 1.25
    second = t[t["bin"] == 2].set_index("category")
    # bin 2: observed 0,0,1,2 -> P(0) = 1/2; replicates 0, 1, 0 -> PI [0.25, 0.5]... per quantile
    np.testing.assert_allclose(second["observed"], [0.5, 0.25, 0.25])
    np.testing.assert_allclose(second.loc[0, ["sim_lo", "sim_hi"]].to_numpy(float),
                               np.quantile([0.0, 1.0, 0.0], [0.25, 0.75]))
    assert bool(second.loc[0, "outside"]) == (0.5 > np.quantile([0.0, 1.0, 0.0], 0.75))
    # strata: separate rows per stratum, counts add up
    st = categorical_vpc_table(y, sims, x, bins=[0, 4, 10], strata=np.array(["a", "b"] * 4), categories=[2])
    assert set(st["stratum"]) == {"a", "b"} and st["n"].sum() == 8
    a1 = st[(st["stratum"] == "a") & (st["bin"] == 1)]
    assert a1["observed"].item() == 0.5   # stratum a, bin 1: y = 0, 2


def test_categorical_plot_returns_figure_and_table():
    rng = np.random.default_rng(2)
    y, sims, x = rng.integers(0, 2, 60), rng.integers(0, 2, (40, 60)), rng.uniform(0, 10, 60)
    table = categorical_vpc_table(y, sims, x, bins=4)
    fig, same = plot_categorical_vpc(table)
    assert same is table and len(fig.axes) == 2 and len(table) == 8
    assert np.isclose(table.groupby("bin")["observed"].sum(), 1).all()


def test_bad_inputs_are_named():
    with pytest.raises(BayesNLMEInputError, match="strictly between 0 and 100"):
        categorical_vpc_table([0, 1], [[0, 1]], [1, 2], pi=100)
    with pytest.raises(BayesNLMEInputError, match="one entry per observation"):
        categorical_vpc_table([0, 1], [[0, 1, 1]], [1, 2])
    with pytest.raises(BayesNLMEInputError, match="pass categories"):
        categorical_vpc_table(np.arange(30), np.arange(30)[None], np.arange(30.0))
    with pytest.raises(BayesNLMEInputError, match="one column per subject"):
        km_vpc_table([1, 2], [1, 0], [[1, 2, 3]], [[1, 1, 1]])


# ---------------------------------------------------------------------- simulated event times


def _standin(spec, df, values: dict, n_draws: int = 400):
    """A fit-like object whose posterior is a point mass at ``values`` (known truth, no sampling)."""
    built = build_model(spec, df)
    return SimpleNamespace(built=built, spec=spec, data=built.data,
                           posterior_draws=lambda name: np.full(n_draws, values[name], float))


def _tte_frame(times, dv, exposure):
    n = len(times)
    return pd.DataFrame({"ID": np.arange(1, n + 1), "TIME": times, "DV": dv, "EVID": 0, "EXPOSURE": exposure})


def test_exponential_event_times_reproduce_survival_and_follow_up():
    lam, slope = 0.05, 0.4
    # 30 subjects censored at 12 h, 30 with an event (followed to the study end, 30 h); exposure 1
    df = _tte_frame(np.r_[np.full(30, 12.0), np.linspace(1, 30, 30)], np.r_[np.zeros(30), np.ones(30)], 1.0)
    res = _standin(load_spec("tte_exponential"), df, {"SLOPE": slope, "lambda": lam})
    t, e = simulate_event_times(res, n_draws=400, seed=1)
    assert t.shape == e.shape == (400, 60) and set(np.unique(e)) == {0, 1}
    assert (t[:, :30] <= 12.0).all() and (t[:, 30:] <= 30.0).all()
    assert (t[e == 0] == np.broadcast_to(np.r_[np.full(30, 12.0), np.full(30, 30.0)], t.shape)[e == 0]).all()
    rate = lam * np.exp(slope)
    grid = np.array([2.0, 5.0, 10.0, 20.0, 29.0])
    surv, _ = kaplan_meier(t[:, 30:].ravel(), e[:, 30:].ravel(), grid)
    truth = np.exp(-rate * grid)
    se = np.sqrt(truth * (1 - truth) / t[:, 30:].size)
    assert (np.abs(surv - truth) < 3.5 * se).all(), (surv, truth)
    # subjects censored at 12 h: event fraction = 1 - S(12)
    frac = e[:, :30].mean()
    assert abs(frac - (1 - np.exp(-rate * 12))) < 3.5 * np.sqrt(frac * (1 - frac) / e[:, :30].size)
    # the same seed gives the same studies
    np.testing.assert_array_equal(simulate_event_times(res, n_draws=400, seed=1)[0], t)


@pytest.mark.parametrize("hazard,shape", [("weibull", 2.5), ("weibull", 0.6), ("gompertz", 0.1),
                                          ("gompertz", -0.08)])
def test_weibull_gompertz_event_times_reproduce_survival(hazard, shape):
    """Closed-form inversion of H0: S(t) = exp(-H0(t) exp(SLOPE)); Gompertz shape < 0 leaves a cured fraction."""
    lam, slope = 0.05, 0.3
    spec = ModelSpec.from_dict({
        "parameters": {"E0": {"fixed": 0.0, "iiv": "none"},
                       "SLOPE": {"prior": {"dist": "normal", "mu": 0, "sigma": 1}, "iiv": "none"}},
        "observations": [{"output": "EFFECT", "likelihood": "tte", "hazard": hazard,
                          "lambda": {"dist": "lognormal", "median": 0.05, "sigma": 1.0},
                          "shape": {"fixed": shape}}]},
        structural=LIBRARY["linear_exposure"])
    res = _standin(spec, _tte_frame(np.full(50, 40.0), np.zeros(50), 1.0), {"SLOPE": slope, "lambda": lam})
    t, e = simulate_event_times(res, n_draws=400, seed=6)
    grid = np.array([1.0, 5.0, 10.0, 20.0, 39.0])
    h0 = (lam * grid) ** shape if hazard == "weibull" else lam * np.expm1(shape * grid) / shape
    truth = np.exp(-h0 * np.exp(slope))
    surv, _ = kaplan_meier(t.ravel(), e.ravel(), grid)
    assert (np.abs(surv - truth) < 3.5 * np.sqrt(truth * (1 - truth) / t.size)).all(), (surv, truth)


def test_time_varying_hazard_event_times_match_quad(monkeypatch):
    """h(t) = lambda exp(SLOPE CP(t)) after a 100 mg IV bolus: simulated KM vs exp(-int h) by scipy quad."""
    cl, v, slope, lam, dose = 2.0, 20.0, 0.3, 0.02, 100.0
    df = pd.DataFrame([r for i in range(1, 41) for r in (
        {"ID": i, "TIME": 0.0, "AMT": dose, "EVID": 1, "DV": 0.0},
        {"ID": i, "TIME": 40.0, "AMT": 0.0, "EVID": 0, "DV": 0.0})])   # all followed to 40 h
    spec = ModelSpec.from_dict({
        "parameters": {"CL": {"fixed": cl, "iiv": "none"}, "V": {"fixed": v, "iiv": "none"},
                       "E0": {"fixed": 0.0, "iiv": "none"},
                       "SLOPE": {"prior": {"dist": "normal", "mu": 0, "sigma": 1}, "iiv": "none"}},
        "observations": [{"output": "EFFECT", "likelihood": "tte",
                          "lambda": {"dist": "lognormal", "median": 0.02, "sigma": 1.0}}]},
        structural=LIBRARY["pkpd_1cmt_iv_linear"])
    res = _standin(spec, df, {"SLOPE": slope, "lambda": lam}, n_draws=500)
    t, e = simulate_event_times(res, n_draws=500, seed=2, grid=200)
    h = lambda s: lam * np.exp(slope * dose / v * np.exp(-cl / v * s))   # noqa: E731
    grid = np.array([2.0, 5.0, 10.0, 20.0, 39.0])
    truth = np.exp(-np.array([integrate.quad(h, 0, g)[0] for g in grid]))
    surv, _ = kaplan_meier(t.ravel(), e.ravel(), grid)
    se = np.sqrt(truth * (1 - truth) / t.size)
    assert (np.abs(surv - truth) < 3.5 * se).all(), (surv, truth)
    assert (t <= 40.0).all() and (t[e == 0] == 40.0).all()
    # memory-bounding chunks of draws change nothing
    monkeypatch.setattr(event_times, "_CELLS", 50_000)
    np.testing.assert_array_equal(simulate_event_times(res, n_draws=500, seed=2, grid=200)[0], t)


def test_individual_mode_keeps_fitted_etas():
    """Individual mode: subject 1 (ETA +2 on the log hazard) has events far earlier than subject 2 (ETA -2)."""
    spec = ModelSpec.from_dict({
        "parameters": {"E0": {"fixed": 0.0, "iiv": "none"},
                       "SLOPE": {"prior": {"dist": "normal", "mu": 0, "sigma": 1}, "iiv": "normal",
                                 "omega": {"dist": "halfnormal", "sigma": 1.0}}},
        "observations": [{"output": "EFFECT", "likelihood": "tte", "lambda": {"dist": "lognormal",
                                                                              "median": 0.05, "sigma": 1.0}}]},
        structural=LIBRARY["linear_exposure"])
    built = build_model(spec, _tte_frame([10.0, 10.0], [1.0, 1.0], 1.0))
    values = {"SLOPE": np.zeros(300), "lambda": np.full(300, 0.05), "omega_SLOPE": np.full(300, 1.0),
              "eta_z": np.tile([[2.0], [-2.0]], (300, 1, 1))}
    res = SimpleNamespace(built=built, spec=spec, data=built.data, posterior_draws=lambda name: values[name])
    t, e = simulate_event_times(res, n_draws=300, seed=5, mode="individual", t_max=1000.0)
    assert e.all()   # follow-up to 1000 h: everyone has the event
    # exponential times with rates 0.05 e^2 and 0.05 e^-2: means 2.7 h and 148 h
    np.testing.assert_allclose(t.mean(axis=0), [1 / (0.05 * np.exp(2)), 1 / (0.05 * np.exp(-2))], rtol=0.2)
    t_new, _ = simulate_event_times(res, n_draws=300, seed=5, t_max=1000.0)
    assert 0.5 < np.median(t_new[:, 0]) / np.median(t_new[:, 1]) < 2   # new subjects: no memory of the ETAs


def test_event_time_errors_are_named():
    spec = load_spec("tte_exponential")
    df = _tte_frame([5.0, 3.0, 8.0], [1.0, 0.0, 1.0], 1.0)
    df.loc[2, "ID"] = 2                      # subject 2 gets a second TTE record
    res = _standin(spec, df, {"SLOPE": 0.0, "lambda": 0.1})
    with pytest.raises(DataError, match="one time-to-event record per subject") as err:
        tte_observed(res)
    assert err.value.row == 3
    logistic = _standin(load_spec("er_logistic"), _tte_frame([1.0, 2.0], [1.0, 0.0], 1.0), {})
    with pytest.raises(BayesNLMEInputError, match='likelihood = "tte"'):
        simulate_event_times(logistic)
    ok = _standin(spec, _tte_frame([5.0], [1.0], 1.0), {"SLOPE": 0.0, "lambda": 0.1})
    with pytest.raises(BayesNLMEInputError, match="mode"):
        simulate_event_times(ok, mode="population")


# ---------------------------------------------------------------------- KM VPC of fits


def _weibull_study(n=120, seed=11, lam=0.05, shape=2.5, slope=0.5, end=24.0):
    """Weibull event times (shape 2.5: hazard rising steeply), dropout U(8, 60) h, study end 24 h."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 2, n)
    t = (rng.exponential(size=n) / np.exp(slope * x)) ** (1 / shape) / lam
    follow = np.minimum(rng.uniform(8, 60, n), end)
    return _tte_frame(np.minimum(t, follow).round(3), (t <= follow).astype(float), x.round(3)).assign(
        ARM=np.where(x < 1, "low", "high"))


@pytest.fixture(scope="module")
def weibull_data():
    return _weibull_study()


@pytest.fixture(scope="module")
def km_tables(weibull_data):
    grid = np.linspace(0, 24, 25)
    out = {}
    for name in ("tte_weibull", "tte_exponential"):
        with warnings.catch_warnings():   # short test chains trip the ESS check by design
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = fit_model(load_spec(name), weibull_data, chains=2, draws=300, tune=300, seed=2,
                            progress=False)
        t, e = simulate_event_times(res, n_draws=200, seed=3)
        obs_t, obs_e, _ = tte_observed(res)
        out[name] = (res, km_vpc_table(obs_t, obs_e, t, e, times=grid))
    return out


def test_km_vpc_passes_correct_weibull_and_flags_exponential(km_tables, weibull_data):
    res, good = km_tables["tte_weibull"]
    _, bad = km_tables["tte_exponential"]
    assert len(good) == len(bad) == 25
    np.testing.assert_allclose(good["observed"], bad["observed"])   # same data, same observed KM
    # 25 correlated time points at a 90% PI: a correct model flags few (2 here), a wrong one most (16 here:
    # the exponential predicts too many early events and too few late ones)
    assert good["outside"].sum() <= 4, good[good["outside"]]
    assert bad["outside"].sum() >= 12 and bad["outside"].sum() >= good["outside"].sum() + 8
    early = bad[(bad["time"] > 0) & (bad["time"] <= 10)]
    assert (early["observed"] > early["sim_hi"]).all()
    s = res.summary()
    assert s.loc["shape", "q5"] > 1.5   # the fit sees the rising hazard


def test_km_vpc_end_to_end_with_strata(km_tables):
    res, _ = km_tables["tte_weibull"]
    fig, table = km_vpc(res, n_draws=100, seed=4, stratify="ARM", times=[0, 6, 12, 18, 24])
    assert set(table["stratum"]) == {"ARM=low", "ARM=high"} and len(table) == 10 and len(fig.axes) == 2
    assert (table.groupby("stratum")["n_at_risk"].first().sum()) == res.data.n_subjects
    # low exposure -> lower hazard -> higher simulated survival at 24 h
    s24 = table[table["time"] == 24].set_index("stratum")["sim_median"]
    assert s24["ARM=low"] > s24["ARM=high"]
    fig2, same = plot_km_vpc(table)
    assert same is table
