"""Simulation by observation type (DVID) and BLQ-aware VPCs from the data's CENS column.

One joint fit on simulated data with known truth: 1-compartment IV PK (CL 2
L/h, V 20 L, additive error 0.3 mg/L, concentrations below LLOQ 0.5 mg/L
reported as ``CENS = 1``, DV = LLOQ) and a binary response whose logit is
``E0 + SLOPE * CP`` (DVID 2).  Simulated values are checked against their
conditional distributions at the posterior draws (binomial and normal
standard errors), the BLQ fractions against the truth-known model, and the
VPC tables against the data by hand.  The other families' draws (ordinal,
Poisson, negative binomial, exponential error, TTE placeholder) are checked
without a fit against their exact moments.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.special import expit

from bayesnlme.cli import main
from bayesnlme.errors import BayesNLMEInputError, ConvergenceWarning
from bayesnlme.evaluate.outcomes import draw_type, record_lloq
from bayesnlme.evaluate.simulate import simulate
from bayesnlme.inference.fit import fit_model
from bayesnlme.spec import ModelSpec
from bayesnlme.spec.observation import observation_from_dict
from bayesnlme.structural import LIBRARY
from bayesnlme.vpc import vpc, vpc_table

CL, V, OM_CL, OM_V, SIGMA, LLOQ, E0, SLOPE = 2.0, 20.0, 0.25, 0.2, 0.3, 0.5, -1.5, 0.8
PK_TIMES = np.array([0.5, 1, 2, 4, 8, 12, 16, 24, 32])
PD_TIMES = np.array([1.0, 4, 12, 24])
EDGES = [0, 1.5, 6, 14, 20, 28, 40]
_LN = lambda m, s: {"dist": "lognormal", "median": m, "sigma": s}   # noqa: E731
SPEC = {"parameters": {"CL": {"prior": _LN(3, 1), "omega": {"dist": "halfnormal", "sigma": 0.5}},
                       "V": {"prior": _LN(15, 1), "omega": {"dist": "halfnormal", "sigma": 0.5}},
                       "E0": {"prior": {"dist": "normal", "mu": 0, "sigma": 2}, "iiv": "none"},
                       "SLOPE": {"prior": {"dist": "normal", "mu": 0, "sigma": 2}, "iiv": "none"}},
        "observations": [{"dvid": 1, "output": "CP", "likelihood": "additive"},
                         {"dvid": 2, "output": "EFFECT", "likelihood": "bernoulli"}]}


def simulate_study(n=30, seed=4):
    """100 mg IV bolus; 9 concentrations (about 1 in 7 BLQ) and 4 binary responses per subject."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(1, n + 1):
        cl, v = CL * np.exp(OM_CL * rng.standard_normal()), V * np.exp(OM_V * rng.standard_normal())
        rows.append({"ID": i, "TIME": 0.0, "DV": 0.0, "AMT": 100.0, "EVID": 1, "DVID": 0, "CENS": 0})
        y = 100 / v * np.exp(-cl / v * PK_TIMES) + SIGMA * rng.standard_normal(len(PK_TIMES))
        rows += [{"ID": i, "TIME": t, "DV": max(yy, LLOQ), "AMT": 0.0, "EVID": 0, "DVID": 1, "CENS": int(yy < LLOQ)}
                 for t, yy in zip(PK_TIMES, y)]
        p = expit(E0 + SLOPE * 100 / v * np.exp(-cl / v * PD_TIMES))
        rows += [{"ID": i, "TIME": t, "DV": float(rng.random() < pp), "AMT": 0.0, "EVID": 0, "DVID": 2, "CENS": 0}
                 for t, pp in zip(PD_TIMES, p)]
    return pd.DataFrame(rows).sort_values(["ID", "TIME", "DVID"], kind="stable").reset_index(drop=True)


def truth_blq_fraction(times, n=200_000, seed=0):
    """P(C(t) + eps < LLOQ) over new subjects under the true model, per time."""
    rng = np.random.default_rng(seed)
    cl = CL * np.exp(OM_CL * rng.standard_normal(n))[:, None]
    v = V * np.exp(OM_V * rng.standard_normal(n))[:, None]
    y = 100 / v * np.exp(-cl / v * times[None, :]) + SIGMA * rng.standard_normal((n, len(times)))
    return (y < LLOQ).mean(axis=0)


@pytest.fixture(scope="module")
def fit():
    spec = ModelSpec.from_dict(SPEC, structural=LIBRARY["pkpd_1cmt_iv_linear"])
    with warnings.catch_warnings():
        # a short fit (R-hat up to 1.1 for V): the checks below are conditional on the draws used,
        # and the comparisons with the truth have tolerances from the simulated studies' spread
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit_model(spec, simulate_study(), chains=2, draws=250, tune=400, seed=3)


@pytest.fixture(scope="module")
def sim(fit):
    return simulate(fit, n_draws=200, seed=1)


def test_study_has_blq_records():
    pk = simulate_study().query("DVID == 1")
    assert 0.1 < pk["CENS"].mean() < 0.2     # seed 4: 14%, mostly at 24 and 32 h


def test_binary_records_are_bernoulli_of_the_logit(fit, sim):
    b = fit.data.obs_dvid == 2
    dv, p = sim.dv[:, b], expit(sim.ipred[:, b])    # IPRED of a bernoulli record is its logit
    assert set(np.unique(dv)) == {0.0, 1.0}
    # given each draw's logit the 0/1 draws are independent: the share of 1s per decile of p
    # matches the mean p within 4 binomial standard errors
    edges = np.quantile(p, np.linspace(0, 1, 11))
    k = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, 9)
    for j in range(10):
        m = k == j
        se = np.sqrt(p[m].mean() * (1 - p[m].mean()) / m.sum())
        assert abs(dv[m].mean() - p[m].mean()) < 4 * se, j
    assert p.min() < 0.3 and p.max() > 0.8     # the response covers the exposure range


def test_continuous_records_use_their_own_sigma(fit, sim):
    c = fit.data.obs_dvid == 1
    sigma = fit.posterior_draws("sigma_add_CP")[sim.draw]   # the type's own SIGMA, suffix _CP
    z = (sim.dv[:, c] - sim.ipred[:, c]) / sigma[:, None]
    n = z.size
    assert abs(z.mean()) < 4 / np.sqrt(n)
    assert abs(z.std() - 1) < 4 / np.sqrt(2 * n)
    assert "sigma_add_CP" in fit.summary().index and "sigma_add" not in fit.summary().index


def test_frame_has_types_and_lloq(fit, sim):
    frame = sim.to_frame()
    data = fit.data
    assert list(frame.columns[-3:]) == ["DVID", "LLOQ", "BLQ_SIM"]
    first = frame[frame["REP"] == 1]
    np.testing.assert_array_equal(first["DVID"], data.obs_dvid)
    pk = data.obs_dvid == 1
    np.testing.assert_array_equal(sim.lloq[pk], np.full(pk.sum(), LLOQ))   # CENS=1 rows' DV, and the data set's
    assert np.isnan(sim.lloq[~pk]).all()                                   # binary records: no LLOQ
    np.testing.assert_array_equal(first["BLQ_SIM"], (sim.dv[0] < LLOQ) & pk)
    assert frame["BLQ_SIM"].sum() == (sim.dv[:, pk] < LLOQ).sum()


def test_new_design_with_placeholder_dv(fit):
    # a new design's DV is ignored: 0.5 would be an invalid binary DV, and CENS is absent
    design = simulate_study(n=4, seed=9).drop(columns="CENS").assign(DV=0.5)
    s = simulate(fit, design, n_draws=50, seed=3)
    b = s.data.obs_dvid == 2
    assert s.dv.shape == (50, 4 * 13) and set(np.unique(s.dv[:, b])) == {0.0, 1.0}
    assert s.lloq is None and np.isfinite(s.dv).all()
    lloq = record_lloq(s.data, LLOQ, fit.spec.observation_models())   # what simulate(..., lloq=) stores
    assert (lloq[~b] == LLOQ).all() and np.isnan(lloq[b]).all()


def test_simulated_blq_fraction_matches_its_probability_and_the_truth(fit, sim):
    data = fit.data
    sigma = fit.posterior_draws("sigma_add_CP")[sim.draw][:, None]
    for t, truth in zip(PK_TIMES, truth_blq_fraction(PK_TIMES)):
        m = (data.obs_dvid == 1) & (data.obs_time == t)
        blq = sim.blq[:, m]
        # given the draw's IPRED and SIGMA, P(BLQ) = Phi((LLOQ - IPRED) / SIGMA): binomial SE of the mean
        prob = stats.norm.cdf((LLOQ - sim.ipred[:, m]) / sigma)
        se = np.sqrt(max(prob.mean() * (1 - prob.mean()), 1e-4) / blq.size)
        assert abs(blq.mean() - prob.mean()) < 4 * se + 1e-3, t
        # against the truth-known model: within the spread of the simulated studies' fractions
        per_study = blq.mean(axis=1)
        assert abs(per_study.mean() - truth) < max(2 * per_study.std(), 0.02), (t, per_study.mean(), truth)


def test_blq_vpc_from_cens_column(fit, sim):
    data = fit.data
    table = vpc_table(fit, sim=sim, bins=EDGES, dvid=1)
    blq = table[table["STATISTIC"] == "BLQ_FRACTION"].set_index("BIN")
    assert len(blq) == len(EDGES) - 1 and blq["OUTSIDE"].dtype == bool
    pk = data.obs_dvid == 1
    k = np.searchsorted(EDGES, data.obs_time[pk], side="right")
    cens = data.obs_cens[pk]
    for b in blq.index:
        m = k == b
        assert blq.loc[b, "OBSERVED"] == pytest.approx(cens[m].mean())          # CENS=1 records are BLQ
        frac = (sim.dv[:, pk][:, m] < LLOQ).mean(axis=1)
        assert blq.loc[b, "SIM_MEDIAN"] == pytest.approx(np.median(frac))
        for q in (5, 50):
            row = table[(table["BIN"] == b) & (table["STATISTIC"] == f"P{q}")].iloc[0]
            # an observed percentile among the censored values is unknown (not drawn)
            censored = cens[m].sum() > np.floor(q / 100 * (m.sum() - 1))
            assert np.isnan(row["OBSERVED"]) == censored, (b, q)
            if not censored:
                assert row["OBSERVED"] >= LLOQ
    assert blq["OBSERVED"].iloc[-1] > 0.5 and np.isnan(table.query("BIN == 6 and STATISTIC == 'P50'")["OBSERVED"]).all()
    # correct model: the observed BLQ fraction lies inside its 90% interval in most bins
    assert blq["OUTSIDE"].sum() <= 1
    # prediction correction maps each LLOQ like the data (monotone), so the BLQ fractions are unchanged
    pc = vpc_table(fit, sim=sim, bins=EDGES, dvid=1, pc=True, variability=True)
    pc_blq = pc[pc["STATISTIC"] == "BLQ_FRACTION"].set_index("BIN")
    np.testing.assert_allclose(pc_blq[["OBSERVED", "SIM_LO", "SIM_MEDIAN", "SIM_HI"]],
                               blq[["OBSERVED", "SIM_LO", "SIM_MEDIAN", "SIM_HI"]])


def test_user_lloq_and_record_lloq(fit):
    data = fit.data
    lloq = record_lloq(data, 0.4, fit.spec.observation_models())
    pk = data.obs_dvid == 1
    cens = data.obs_cens == 1
    assert (lloq[cens] == LLOQ).all() and (lloq[pk & ~cens] == 0.4).all() and np.isnan(lloq[~pk]).all()


def test_observation_type_choice_and_errors(fit, sim):
    with pytest.raises(BayesNLMEInputError, match="2 observation types.*dvid="):
        vpc_table(fit, sim=sim)
    with pytest.raises(BayesNLMEInputError, match="dvid=7 is not an observation type.*DVID 1 \\(CP, additive\\)"):
        vpc_table(fit, sim=sim, dvid=7)
    with pytest.raises(BayesNLMEInputError, match="prediction correction applies to continuous"):
        vpc_table(fit, sim=sim, dvid=2, pc=True)


def test_binary_type_gets_a_categorical_vpc(fit, sim):
    data = fit.data
    fig, table = vpc(fit, sim=sim, dvid=2, bins=[0, 2, 8, 30])
    assert {"category", "observed", "sim_lo", "sim_hi", "outside"} <= set(table.columns)
    b = data.obs_dvid == 2
    first = table[(table["bin"] == 1) & (table["category"] == 1)].iloc[0]
    early = b & (data.obs_time < 2)
    assert first["observed"] == pytest.approx(data.obs_dv[early].mean())
    assert first["sim_median"] == pytest.approx(np.median(sim.dv[:, early].mean(axis=1)))
    assert table["outside"].sum() <= 1
    assert fig.axes


def test_cli_vpc_by_dvid(tmp_path, fit, capsys):
    fit.save(tmp_path / "fit.nc")
    assert main(["vpc", str(tmp_path), "--dvid", "1", "--n-sim", "30", "--bins", ",".join(map(str, EDGES))]) == 0
    table = pd.read_csv(tmp_path / "vpc" / "vpc_dvid1.csv")
    assert (table["STATISTIC"] == "BLQ_FRACTION").sum() == len(EDGES) - 1
    sims = pd.read_csv(tmp_path / "vpc" / "simulations.csv.gz")
    assert {"DVID", "LLOQ", "BLQ_SIM"} <= set(sims.columns) and len(sims) == 30 * fit.data.n_obs
    assert set(sims.loc[sims["DVID"] == 2, "DV_SIM"]) <= {0.0, 1.0}
    assert main(["vpc", str(tmp_path), "--n-sim", "30"]) == 1
    err = capsys.readouterr().err
    assert "--dvid" in err


# ---------------------------------------------------------------------- families without a fit


def _model(**d):
    return observation_from_dict(d, "test")


def test_ordinal_draws_follow_proportional_odds():
    rng = np.random.default_rng(0)
    m = _model(likelihood="ordinal", categories=3)
    f = np.tile(np.array([-1.0, 0.5, 2.0]), (2000, 40))         # (draws, records)
    cut = np.tile([-0.5, 1.5], (2000, 1))
    y = draw_type(m, f, np.ones_like(f), {"cutpoints": cut}, rng)
    assert set(np.unique(y)) == {0.0, 1.0, 2.0}
    for j, eta in enumerate([-1.0, 0.5, 2.0]):
        cum = expit(np.array([-0.5, 1.5]) - eta)
        probs = np.diff(np.concatenate([[0], cum, [1]]))
        got = np.array([(y[:, j::3] == k).mean() for k in range(3)])
        se = np.sqrt(probs * (1 - probs) / y[:, j::3].size)
        assert np.all(np.abs(got - probs) < 4 * se), (eta, got, probs)


def test_count_draws_have_poisson_and_nb2_moments():
    rng = np.random.default_rng(1)
    f = np.full((4000, 50), np.log(3.0))
    y = draw_type(_model(likelihood="poisson"), f, np.ones_like(f), {}, rng)
    n = y.size
    assert abs(y.mean() - 3) < 4 * np.sqrt(3 / n) and abs(y.var() / 3 - 1) < 0.02
    ident = draw_type(_model(likelihood="poisson", link="identity"), np.full((4000, 50), 3.0), f, {}, rng)
    assert abs(ident.mean() - 3) < 4 * np.sqrt(3 / n)
    # NB2: Var = m + m^2 / phi; phi from the draws, or a fixed value
    for d, draws in ((dict(likelihood="negbin"), {"phi": np.full(4000, 2.0)}),
                     (dict(likelihood="negbin", phi={"fixed": 2.0}), {})):
        y = draw_type(_model(**d), f, np.ones_like(f), draws, rng)
        assert (y == np.round(y)).all() and y.min() >= 0
        var = 3 + 9 / 2.0
        assert abs(y.mean() - 3) < 4 * np.sqrt(var / n) and abs(y.var() / var - 1) < 0.04


def test_exponential_error_and_tte_placeholder():
    rng = np.random.default_rng(2)
    f, sd = np.full((2000, 50), 4.0), np.full((2000, 50), 0.2)
    y = draw_type(_model(likelihood="exponential"), f, sd, {}, rng)
    z = np.log(y / 4.0) / 0.2
    assert abs(z.mean()) < 4 / np.sqrt(z.size) and abs(z.std() - 1) < 0.01
    assert np.isnan(draw_type(_model(likelihood="tte"), f, sd, {}, rng)).all()


# ---------------------------------------------------------------------- time to event: NaN in simulate, KM VPC


def tte_study(n=60, seed=5):
    """Exponential hazard 0.05/h times exp(0.5 EXPOSURE), follow-up 24 h."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 3, n)
    t = rng.exponential(1 / (0.05 * np.exp(0.5 * x)))
    return pd.DataFrame({"ID": np.arange(1, n + 1), "TIME": np.minimum(t, 24.0), "DV": (t <= 24).astype(float),
                         "EVID": 0, "EXPOSURE": x})


def test_tte_records_simulate_as_nan_and_get_a_km_vpc(tmp_path, capsys):
    from bayesnlme.spec import load_spec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit_model(load_spec("tte_exponential"), tte_study(), chains=2, draws=200, tune=200, seed=1)
    s = simulate(res, n_draws=20, seed=0)
    assert s.dv.shape == (20, 60) and np.isnan(s.dv).all() and np.isfinite(s.ipred).all()
    assert s.to_frame()["DVID"].eq(1).all() and s.lloq is None
    fig, table = vpc(res, n_sim=100, seed=0)
    assert {"time", "n_at_risk", "observed", "sim_lo", "sim_hi", "outside"} <= set(table.columns)
    assert table["observed"].iloc[0] == 1.0 and table["n_at_risk"].iloc[0] == 60
    data = res.data
    late = table.iloc[-2]   # observed KM by hand at a late grid time (no ties in continuous times)
    order = np.argsort(data.obs_time)
    t_s, e_s = data.obs_time[order], data.obs_dv[order]
    at_risk = 60 - np.arange(60)
    km = np.prod(np.where((t_s <= late["time"]) & (e_s == 1), 1 - 1 / at_risk, 1.0))
    assert late["observed"] == pytest.approx(km)
    assert table["outside"].mean() < 0.25
    with pytest.raises(BayesNLMEInputError, match="prediction correction"):
        vpc_table(res, n_sim=20, pc=True)
    res.save(tmp_path / "fit.nc")
    assert main(["vpc", str(tmp_path), "--n-sim", "20"]) == 0
    assert "Kaplan-Meier survival values outside" in capsys.readouterr().out
    km = pd.read_csv(tmp_path / "vpc" / "vpc.csv")
    assert len(km) == 41 and km["observed"].iloc[-2] == pytest.approx(late["observed"])
    assert late["observed"] < 0.8     # events happened: the check is not on a flat curve
    assert main(["vpc", str(tmp_path), "--n-sim", "20", "--pc"]) == 1
    assert "--pc applies to continuous" in capsys.readouterr().err


def test_default_categories_of_outcome_vpcs():
    from bayesnlme.vpc.types import _default_categories

    assert _default_categories(_model(likelihood="bernoulli"), np.array([0, 1])) == [0, 1]
    assert _default_categories(_model(likelihood="ordinal", categories=4), np.array([0.0])) == [0, 1, 2, 3]
    counts = np.arange(100) % 7     # 90th percentile 6
    assert _default_categories(_model(likelihood="poisson"), counts) == list(range(7))
    assert _default_categories(_model(likelihood="negbin"), np.arange(100.0)) == list(range(8))   # at most 8
