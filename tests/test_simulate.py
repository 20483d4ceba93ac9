"""Simulation engine and regimen evaluation: new-subject spread vs OMEGA, individual mode, SS AUC, TOML, CLI."""

import numpy as np
import pandas as pd
import pytest
from _simfits import fitted

from bayesnlme.cli import main
from bayesnlme.errors import BayesNLMEInputError, DataError, SpecError
from bayesnlme.evaluate.regimens import evaluate_regimens, load_regimens
from bayesnlme.evaluate.simulate import iter_simulations, regimen_data, simulate


@pytest.fixture(scope="module")
def res():
    return fitted("1cmt_iv")


def test_new_subjects_log_parameter_spread_matches_posterior_omega(res):
    design = regimen_data(100, 12, n_subjects=300, times=[1.0])
    (data, idx, out), = iter_simulations(res, design, n_draws=100, seed=2,
                                         extra_outputs=("individual.CL", "individual.V"))
    assert out["individual.CL"].shape == (100, 300) and out["dv"].shape == (100, 300)
    for p in ("CL", "V"):
        eta = np.log(out[f"individual.{p}"]) - np.log(res.posterior_draws(p)[idx])[:, None]
        omega = res.posterior_draws(f"omega_{p}")[idx]
        # per draw, ETA ~ N(0, omega^2 of that draw): pooled variance = mean omega^2; MC SE from 30000 draws
        expected = np.mean(omega ** 2)
        se = np.sqrt(2 * np.mean(omega ** 4) / eta.size)
        assert abs(eta.var() - expected) < 4 * se
        assert abs(eta.mean()) < 4 * np.sqrt(expected / eta.size)
        # and draw by draw the spread follows that draw's OMEGA (posterior SD of omega ~0.03)
        assert np.corrcoef(eta.std(axis=1), omega)[0, 1] > 0.8


def test_individual_mode_keeps_fitted_etas(res):
    own = simulate(res, n_draws=100, mode="individual", seed=1)
    new = simulate(res, n_draws=100, seed=1)
    assert own.dv.shape == new.dv.shape == (100, res.data.n_obs)
    err_own = np.abs(np.median(own.ipred, 0) - res.data.obs_dv).mean()
    err_new = np.abs(np.median(new.ipred, 0) - res.data.obs_dv).mean()
    assert err_own < 0.5 * err_new
    # PRED does not depend on the ETAs
    np.testing.assert_allclose(own.pred, new.pred)
    frame = own.to_frame()
    assert len(frame) == 100 * res.data.n_obs and list(frame.columns[:3]) == ["REP", "DRAW", "ID"]
    with pytest.raises(DataError, match="ID 999"):
        simulate(res, regimen_data(100, 12).assign(ID=999), mode="individual", n_draws=5)


def test_chunked_simulation_equals_sizes_and_covariate_table(res):
    design = regimen_data(100, 12, 3, dur=1, n_subjects=7)
    sim = simulate(res, design, n_draws=20, seed=4, subject_chunk=3)
    assert sim.dv.shape == (20, 7 * 49) and sim.data.n_subjects == 7
    # identical dosing and no covariates: PRED is the same for every subject
    np.testing.assert_allclose(sim.pred.reshape(7, 49), np.tile(sim.pred[:49], (7, 1)))
    # the progress bar is display only: same seed, same simulations
    again = simulate(res, design, n_draws=20, seed=4, subject_chunk=3, progress=True)
    np.testing.assert_array_equal(again.dv, sim.dv)
    with pytest.raises(BayesNLMEInputError, match="dose > 0"):
        regimen_data(0, 12)


def test_steady_state_auc_equals_dose_over_cl(res):
    kw = dict(doses=[100], intervals=[8, 12], duration=1.0, n_subjects=10, n_draws=10, seed=1)
    _, m_exact = evaluate_regimens(res, **kw)
    _, m_trap = evaluate_regimens(res, **kw, exact=False, grid_points=2001)
    # the simulated steady-state profile integrates to Dose/CL of the same subject and draw
    np.testing.assert_allclose(m_trap["AUCTAU"], m_exact["AUCTAU"], rtol=1e-6)
    np.testing.assert_allclose(m_trap["CTROUGH"], m_exact["CTROUGH"], rtol=1e-9)
    # 40 doses of a drug with a ~7 h half-life: the last interval is at steady state
    _, m_addl = evaluate_regimens(res, **kw, n_doses=40)
    np.testing.assert_allclose(m_addl["AUCTAU"], m_exact["AUCTAU"], rtol=1e-3)
    np.testing.assert_allclose(m_addl["CMAX"], m_exact["CMAX"], rtol=1e-4)
    # AUC is linear in dose and does not depend on the interval
    exact, _ = evaluate_regimens(res, doses=[100, 200], intervals=[8, 12], n_subjects=20, n_draws=20, seed=1)
    a = exact.set_index(["DOSE", "II"])["AUCTAU_median"]
    assert a[(200, 8)] / a[(100, 8)] == pytest.approx(2, rel=0.25)
    assert (exact["CMAX_median"] > exact["CTROUGH_median"]).all()
    assert (exact["CMIN_median"] <= exact["CTROUGH_median"]).all()


def test_target_attainment_probabilities(res):
    targets = [{"metric": "CTROUGH", "above": 2.0}, {"metric": "AUCTAU", "above": 40, "below": 60}]
    table, metrics = evaluate_regimens(res, [50, 200], [12], n_subjects=40, n_draws=30, targets=targets)
    p = table.set_index("DOSE")["P(CTROUGH>2)"]
    assert p[200] > p[50]
    for name in ("P(CTROUGH>2)", "P(40<AUCTAU<60)"):
        assert ((0 <= table[f"{name}_lo"]) & (table[f"{name}_lo"] <= table[f"{name}_hi"])
                & (table[f"{name}_hi"] <= 1)).all()
    m = metrics[metrics["REGIMEN"] == "200 every 12"]
    assert p[200] == pytest.approx((m["CTROUGH"] > 2.0).mean())
    assert len(metrics) == 2 * 40 * 30


@pytest.mark.parametrize("text, key", [
    ("doses = [100]\nintervals = [12]\nn_subject = 5\n", "n_subject"),
    ("intervals = [12]\n", "doses"),
    ("doses = [100, -1]\nintervals = [12]\n", "doses"),
    ("doses = [100]\nintervals = [12]\nn_draws = 0\n", "n_draws"),
    ("doses = [100]\nintervals = [12]\n[[targets]]\nmetric = \"AUC\"\nabove = 1\n", "targets[0].metric"),
    ("doses = [100]\nintervals = [12]\n[[targets]]\nmetric = \"CMAX\"\n", "targets[0]"),
    ("doses = [100]\nintervals = [12]\n[bands]\ncovariate = \"WT\"\nedges = [80, 50]\n", "bands"),
])
def test_regimen_toml_errors_name_the_key(tmp_path, text, key):
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(SpecError, match=f"key '{key.replace('[', '.').replace(']', '.')}'"):
        load_regimens(path)


def test_cli_simulate(tmp_path, res, capsys):
    res.save(tmp_path / "fit.nc")
    (tmp_path / "r.toml").write_text("doses = [100]\nintervals = [12, 24]\nduration = 1\nn_subjects = 10\n"
                                     "n_draws = 10\n[[targets]]\nmetric = \"CTROUGH\"\nabove = 1.0\n")
    out = tmp_path / "sim"
    assert main(["simulate", str(tmp_path), "--regimens", str(tmp_path / "r.toml"), "--out", str(out)]) == 0
    table = pd.read_csv(out / "regimens.csv")
    assert list(table["II"]) == [12, 24] and "P(CTROUGH>1)_hi" in table
    assert (out / "regimens.png").stat().st_size > 0 and len(pd.read_csv(out / "regimen_metrics.csv")) == 200
    (tmp_path / "bad.toml").write_text("doses = [100]\nintervals = 12\n")
    assert main(["simulate", str(tmp_path), "--regimens", str(tmp_path / "bad.toml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'intervals'" in err[0]


def test_new_subjects_follow_each_draws_block_omega():
    """No sampling: draws from the prior of a CL-V OMEGA block stand in for a posterior."""
    from types import SimpleNamespace

    import pymc as pm

    from bayesnlme.build import build_model
    from bayesnlme.datasets import load_theophylline
    from bayesnlme.spec import ModelSpec, load_spec

    d = load_spec("pk_1cmt_oral").to_dict()
    d["random_effects"] = {"blocks": [["CL", "V"]], "lkj_eta": 1.0}
    built = build_model(ModelSpec.from_dict(d), load_theophylline())
    names = [rv.name for rv in built.model.free_RVs]
    with built.model:
        prior = pm.sample_prior_predictive(draws=100, random_seed=1,
                                           var_names=names + ["corr_CL_V", "omega_CL", "omega_V"]).prior
    draws = {n: prior[n].values[0] for n in prior.data_vars}
    fake = SimpleNamespace(built=built, spec=built.spec, data=built.data, posterior_draws=lambda n: draws[n])
    n_sub = 500
    (_, idx, out), = iter_simulations(fake, regimen_data(320, 24, n_subjects=n_sub, times=[1.0]), n_draws=100,
                                      seed=1, extra_outputs=("individual.CL", "individual.V"))
    eta = {p: np.log(out[f"individual.{p}"]) - np.log(draws[p][idx])[:, None] for p in ("CL", "V")}
    om_cl, om_v, r = draws["omega_CL"][idx], draws["omega_V"][idx], draws["corr_CL_V"][idx]
    # each draw's sample covariance of (ETA_CL, ETA_V) against that draw's OMEGA entry, in SE units
    z = ((eta["CL"] * eta["V"]).mean(axis=1) - r * om_cl * om_v) / (om_cl * om_v * np.sqrt((1 + r ** 2) / n_sub))
    assert abs(z.mean()) < 0.4 and 0.7 < z.std() < 1.3 and np.abs(z).max() < 4.5
    zv = ((eta["V"] ** 2).mean(axis=1) - om_v ** 2) / (om_v ** 2 * np.sqrt(2 / n_sub))
    assert abs(zv.mean()) < 0.4 and 0.7 < zv.std() < 1.3


def _prior_result(extra: dict, n_draws: int = 50):
    """A stand-in fit: prior draws of a theophylline model (no sampling)."""
    from types import SimpleNamespace

    import pymc as pm

    from bayesnlme.build import build_model
    from bayesnlme.datasets import load_theophylline
    from bayesnlme.spec import ModelSpec, load_spec

    d = load_spec("pk_1cmt_oral").to_dict()
    d.update(extra)
    built = build_model(ModelSpec.from_dict(d), load_theophylline())
    with built.model:
        prior = pm.sample_prior_predictive(draws=n_draws, random_seed=1,
                                           var_names=[rv.name for rv in built.model.free_RVs]).prior
    draws = {n: prior[n].values[0] for n in prior.data_vars}
    return SimpleNamespace(built=built, spec=built.spec, data=built.data, posterior_draws=lambda n: draws[n])


def test_covariates_resampled_or_from_a_user_table():
    allometry = {"covariates": [{"parameter": "CL", "covariate": "WT", "type": "power", "reference": 70,
                                 "fixed": 0.75}]}
    fake = _prior_result(allometry)
    design = regimen_data(300, 12, n_subjects=40, times=[2.0])
    (data, idx, out), = iter_simulations(fake, design, n_draws=10, covariates="resample", seed=0,
                                         extra_outputs=("individual.CL",))
    wt = data.baseline_covariates(["WT"])["WT"].to_numpy()
    assert set(wt) <= set(fake.data.baseline_covariates(["WT"])["WT"]) and len(set(wt)) > 3
    eta = np.log(out["individual.CL"]) - np.log(fake.posterior_draws("CL")[idx])[:, None] - 0.75 * np.log(wt / 70)
    z = fake.posterior_draws("eta_z")   # the fitted subjects' z are not reused: new subjects
    assert eta.shape == (10, 40) and not np.allclose(eta[:, :12] / fake.posterior_draws("omega_CL")[idx, None],
                                                     z[idx, :, 0])
    # the ETA part has the draw's OMEGA and no weight trend left
    assert abs(np.corrcoef(np.log(wt), eta.mean(axis=0))[0, 1]) < 0.5
    table = pd.DataFrame({"ID": np.arange(1, 41), "WT": np.linspace(40, 120, 40)})
    sim = simulate(fake, design, n_draws=10, covariates=table, seed=0)
    np.testing.assert_allclose(sim.data.baseline_covariates(["WT"])["WT"], table["WT"])
    assert np.all(np.diff(sim.pred) < 0)    # heavier subjects clear faster: PRED at 2 h falls with WT
    with pytest.raises(DataError, match="WT"):
        simulate(fake, design, n_draws=5, covariates=table.rename(columns={"WT": "BW"}))


def test_regimens_by_weight_band():
    allometry = {"covariates": [{"parameter": "CL", "covariate": "WT", "type": "power", "reference": 70,
                                 "fixed": 1.0}]}
    fake = _prior_result(allometry, n_draws=20)
    table, metrics = evaluate_regimens(fake, [300], [12], n_subjects=30, n_draws=20, seed=0,
                                       bands={"covariate": "WT", "edges": [50, 65, 90]})
    assert list(table["BAND"]) == ["WT 50-65", "WT 65-90"]
    # CL proportional to WT: the lighter band has the higher AUC at the same dose
    assert table["AUCTAU_median"].iloc[0] > table["AUCTAU_median"].iloc[1]
    assert set(metrics["BAND"]) == {"WT 50-65", "WT 65-90"} and len(metrics) == 2 * 30 * 20
    with pytest.raises(SpecError, match="no fitted subject has WT"):
        evaluate_regimens(fake, [300], [12], n_subjects=5, n_draws=5, bands={"covariate": "WT", "edges": [1, 2]})
