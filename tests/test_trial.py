"""Replicate trial simulation: decision rules, probability of success, dropout, a larger study does better,
target attainment, covariates per replicate, the command line."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayesnlme import datasets, load_spec
from bayesnlme.cli import main
from bayesnlme.decision import load_rule, rule_from_dict
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.simulate import regimen_data
from bayesnlme.inference.fit import fit_model
from bayesnlme.trial import DecisionRule, replicate_covariates, replicate_keys, trial

TIMES = [0.5, 1, 2, 4, 8, 12, 24]


def test_decision_rules():
    rng = np.random.default_rng(0)
    x = rng.normal(np.log(1.1), 0.05, 4000)                 # a log-ratio effect, ratio ~1.1
    r = DecisionRule.interval("DDI_on_CL", ci=0.9, lower=0.8, upper=1.25, scale="exp").evaluate(x, np.nan)
    assert r["success"] and 0.95 < r["lower"] < 1.1 < r["upper"] < 1.25
    assert not DecisionRule.interval("E", ci=0.9, lower=0.8, upper=1.05, scale="exp").evaluate(x, 0)["success"]
    cl = rng.lognormal(np.log(4), 0.1, 4000)
    rel = DecisionRule.interval("CL", ci=0.9, lower=0.8, upper=1.25).evaluate(cl, 4.0)
    assert rel["lower"] == pytest.approx(np.exp(-1.645 * 0.1), abs=0.01) and rel["success"]
    tru = DecisionRule.interval("CL", ci=0.9, lower=0.8, upper=1.25, scale="truth").evaluate(cl, 5.0)
    assert not tru["success"] and tru["upper"] < 1.0
    p = DecisionRule.probability("WT_on_CL", threshold=0, level=0.95).evaluate(rng.normal(0.3, 0.1, 4000), 0.75)
    assert p["success"] and p["probability"] > 0.99
    assert "90% CrI of exp(DDI_on_CL) within 0.8-1.25" == DecisionRule.interval(
        "DDI_on_CL", lower=0.8, upper=1.25, scale="exp").describe()
    with pytest.raises(BayesNLMEInputError, match="scale must be one of"):
        DecisionRule.interval("CL", scale="log")


def test_attainment_rule_mean_or_lower_bound_and_rule_keys(tmp_path):
    rule = DecisionRule.attainment("CTROUGH >10", dose=400, ii=12, level=0.9)
    assert rule.describe() == ("posterior mean probability of target attainment P(CTROUGH>10) >= 0.9 at 400 every "
                               "12 (steady state)")
    pta = np.r_[np.full(80, 0.97), np.full(20, 0.7)]     # posterior mean 0.916; 10% of draws at 0.7
    r = rule.evaluate(pta, 0.95)
    assert r["success"] and r["estimate"] == pytest.approx(0.916) and r["lower"] == pytest.approx(0.7)
    assert r["probability"] == pytest.approx(0.8)        # P(PTA >= 0.9)
    lower = DecisionRule.attainment({"metric": "CTROUGH", "above": 10}, dose=400, ii=12, criterion="lower",
                                    duration=1)
    assert not lower.evaluate(pta, 0.95)["success"]     # its 90% CrI reaches down to 0.7
    assert lower.evaluate(np.full(100, 0.95), 0.95)["success"]
    assert lower.describe().startswith("lower end of the 90% CrI of the probability of target attainment")
    assert "400 every 12 infused over 1" in lower.describe()
    assert DecisionRule(**lower.to_dict()) == lower
    # the same keys from a TOML file or from --rule
    path = tmp_path / "rule.toml"
    path.write_text('kind = "attainment"\ntarget = { metric = "CTROUGH", above = 10 }\ndose = 400\nii = 12\n'
                    'level = 0.9\n')
    assert load_rule(path) == rule
    assert rule_from_dict({"kind": "interval", "parameter": "CL", "lower": 0.8, "upper": 1.25}) == \
        DecisionRule.interval("CL", lower=0.8, upper=1.25)
    for keys, message in [({"kind": "power"}, "key 'kind': required: one of interval, probability, attainment"),
                          ({"kind": "interval"}, "key 'parameter': required"),
                          ({"kind": "interval", "parameter": "CL", "lower": "x"}, "key 'lower': must be a number"),
                          ({"kind": "probability", "parameter": "CL", "scale": "exp"}, "key 'scale': unknown"),
                          ({"kind": "attainment", "target": "CTROUGH >1", "dose": 1, "ii": 1, "n_draws": 2.5},
                           "key 'n_draws': must be a whole number"),
                          ({"kind": "attainment", "target": {"metric": "AUCINF", "above": 1}, "dose": 1, "ii": 1},
                           "metric must be one"),
                          ({"kind": "attainment", "target": "CTROUGH >1", "dose": 1, "ii": 0}, "ii must be > 0"),
                          ({"kind": "attainment", "target": "CTROUGH >1", "dose": 1, "ii": 1, "criterion": "median"},
                           "criterion must be one of mean, lower")]:
        with pytest.raises(BayesNLMEInputError, match=f"^r.toml: .*{message}"):
            rule_from_dict(keys, "r.toml")
    path.write_text("kind = ")
    with pytest.raises(BayesNLMEInputError, match="rule.toml: not valid TOML"):
        load_rule(path)


@pytest.fixture(scope="module")
def fit():
    return fit_model(load_spec("pk_1cmt_oral"), datasets.dataset_path("theophylline"), chains=2, draws=300,
                     tune=300, seed=1, progress=False)


@pytest.mark.slow
@pytest.mark.validation
def test_probability_of_success_grows_with_the_study_and_dropout_removes_records(fit, tmp_path):
    rule = DecisionRule.interval("CL", ci=0.9, lower=0.8, upper=1.25, scale="relative")
    kw = dict(n=12, rule=rule, chains=2, draws=200, tune=200, seed=2, scheduler="serial", progress=False)
    small = trial(fit, regimen_data(320, 24, 1, times=TIMES, n_subjects=4), run_dir=tmp_path / "s", **kw)
    large = trial(fit, regimen_data(320, 24, 1, times=TIMES, n_subjects=24), run_dir=tmp_path / "l", **kw)
    assert len(small.replicates) == len(large.replicates) == 12
    assert large.p_success - small.p_success >= 0.5, (small.p_success, large.p_success)
    assert large.p_success == large.replicates["success"].mean()
    p = small.p_success
    assert small.mc_se == pytest.approx(np.sqrt(p * (1 - p) / 12))
    # each replicate's truth is the posterior draw it was simulated from: they differ, inside the posterior
    cl = fit.posterior_draws("CL")
    assert large.replicates["truth"].nunique() == 12
    assert cl.min() <= large.replicates["truth"].min() and large.replicates["truth"].max() <= cl.max()
    # the CrI is narrower for the larger study, replicate by replicate on average
    width = lambda r: (r.replicates["upper"] - r.replicates["lower"]).mean()   # noqa: E731
    assert width(large) < 0.6 * width(small)
    written = pd.read_csv(tmp_path / "l" / "replicates.csv", index_col=0)
    assert written["success"].mean() == large.p_success
    assert "Probability of success" in (tmp_path / "l" / "trial.txt").read_text()

    drop = trial(fit, regimen_data(320, 24, 1, times=TIMES, n_subjects=24), dropout=0.5, run_dir=tmp_path / "d",
                 **{**kw, "n": 4})
    # exponential dropout with P(drop before 24 h) = 0.5: expected share of records kept
    rate = np.log(2) / 24
    expected = np.mean(np.exp(-rate * np.array(TIMES)))
    kept = drop.replicates["n_observations"] / (24 * len(TIMES))
    se = np.sqrt(0.25 / 24)          # a subject's kept share is in [0, 1]: SD <= 0.5
    assert abs(kept.mean() - expected) < 4 * se / np.sqrt(len(kept))


def test_trial_input_errors(fit, tmp_path):
    rule = DecisionRule.interval("CL", lower=0.8, upper=1.25)
    design = regimen_data(320, 24, 1, times=TIMES, n_subjects=2)
    with pytest.raises(BayesNLMEInputError, match="analysis must be one of"):
        trial(fit, design, rule=rule, analysis="laplace", run_dir=tmp_path / "a", scheduler="serial")
    with pytest.raises(BayesNLMEInputError, match="dropout must be a probability"):
        trial(fit, design, rule=rule, dropout=1.0, run_dir=tmp_path / "b", scheduler="serial")
    with pytest.raises(BayesNLMEInputError, match="trial simulation: lloq must be a positive number"):
        trial(fit, design, rule=rule, lloq=0.0, run_dir=tmp_path / "b", scheduler="serial")
    with pytest.raises(BayesNLMEInputError, match="no replicate finished"):
        trial(fit, design, n=2, rule=DecisionRule.interval("Q", lower=0.8, upper=1.25), chains=1, draws=50, tune=50,
              run_dir=tmp_path / "c", scheduler="serial", progress=False)


def test_replicate_covariates_differ_between_replicates_and_repeat_with_the_seed(fit):
    design = regimen_data(320, 24, 1, times=TIMES, n_subjects=4)
    keys = replicate_keys(20)
    drawn = replicate_covariates(fit, design, "resample", keys, seed=3, names=["WT"])
    wt = np.array([drawn[k]["WT"].to_numpy() for k in keys])
    assert len({tuple(w) for w in wt}) >= 15                       # each replicate has its own subjects
    assert set(wt.ravel()) <= set(fit.data.baseline_covariates(["WT"])["WT"])
    again = replicate_covariates(fit, design, "resample", keys, seed=3, names=["WT"])
    assert all(drawn[k].equals(again[k]) for k in keys)
    other = replicate_covariates(fit, design, "resample", keys, seed=4, names=["WT"])
    assert not all(drawn[k].equals(other[k]) for k in keys)
    pool = pd.DataFrame({"WT": [10.0, 20.0]})                     # a covariate distribution to draw from
    assert set(np.concatenate([t["WT"] for t in replicate_covariates(fit, design, pool, keys, 3, ["WT"]).values()])) \
        == {10.0, 20.0}
    by_id = replicate_covariates(fit, design, pd.DataFrame({"ID": [1, 2, 3, 4], "WT": [50.0, 60, 70, 80]}), keys, 3,
                                 ["WT"])
    assert all(by_id[k]["WT"].tolist() == [50, 60, 70, 80] for k in keys)


@pytest.mark.slow
def test_attainment_rule_on_nuts_replicates(fit, tmp_path):
    # the design and settings of test_trial_input_errors: the compiled model is reused in this process
    design = regimen_data(320, 24, 1, times=TIMES, n_subjects=2)
    kw = dict(n=2, chains=1, draws=50, tune=50, scheduler="serial", progress=False)
    # a trough above 0.001 mg/L: every simulated subject (0.01 left 2 of 30 below it at one posterior draw)
    easy = DecisionRule.attainment("CTROUGH >0.001", dose=320, ii=24, level=0.9, n_subjects=30, n_draws=20)
    res = trial(fit, design, rule=easy, run_dir=tmp_path / "easy", **kw)
    t = res.replicates
    assert res.p_success == 1 and (t["truth"] > 0.95).all() and (t["estimate"] > 0.9).all()
    assert "ess_bulk" not in t and "divergences" in t and (t["lower"] <= t["estimate"]).all()
    impossible = DecisionRule.attainment("CTROUGH >1000", dose=320, ii=24, criterion="lower", n_subjects=30,
                                         n_draws=20)
    res = trial(fit, design, rule=impossible, run_dir=tmp_path / "impossible", **kw)
    assert res.p_success == 0 and (res.replicates[["truth", "estimate", "upper"]] == 0).all().all()
    assert "lower end of the 90% CrI" in (tmp_path / "impossible" / "trial.txt").read_text()


@pytest.mark.slow
def test_lloq_censors_the_replicates_and_refits_them_by_m3(fit, tmp_path, monkeypatch):
    """Simulated values below the LLOQ are censored (CENS = 1, DV = LLOQ) in each replicate's data, counted,
    and analysed by M3 with the compiled refit model (fitting one from scratch fails here).  (MAP replicates
    fit the same data set with ``fit_model``, whose M3 likelihood tests/test_blq.py checks.)"""
    import bayesnlme.trial as trial_module

    design = regimen_data(320, 24, 1, times=TIMES, n_subjects=4)
    rule = DecisionRule.interval("CL", lower=0.5, upper=2.0)
    kw = dict(n=2, rule=rule, chains=1, draws=50, tune=50, scheduler="serial", progress=False, lloq=3.0)

    def no_fit(*args, **kwargs):
        raise AssertionError("a NUTS replicate was fitted from scratch")
    monkeypatch.setattr(trial_module, "fit_model", no_fit)
    monkeypatch.setattr("bayesnlme.inference.refit.fit_model", no_fit)     # the refitter's own fallback
    res = trial(fit, design, run_dir=tmp_path, **kw)
    assert len(res.replicates) == 2 and not res.failed
    for key, row in res.replicates.iterrows():
        data = pd.read_csv(tmp_path / "tasks" / key / "data.csv")
        obs = data[data["EVID"] == 0]
        assert row["n_censored"] == obs["CENS"].sum() and row["n_observations"] == len(obs)
        assert (obs.loc[obs["CENS"] == 1, "DV"] == 3.0).all() and (obs.loc[obs["CENS"] == 0, "DV"] >= 3.0).all()
        assert 0 < row["n_censored"] < row["n_observations"]      # the LLOQ is inside the simulated range
    assert "censored and analysed by M3" in (tmp_path / "trial.txt").read_text()
    assert np.isfinite(res.replicates["estimate"]).all()


def test_auc24_target_is_the_daily_auc(fit):
    from bayesnlme.decision import attainment_draws

    # every 12 h the daily AUC is twice AUCTAU: the same subjects and draws meet AUC24 > 2x iff AUCTAU > x
    # (x near the median AUCTAU, 320 mg / CL ~ 115 mg*h/L)
    kw = dict(dose=320, ii=12, n_subjects=30, n_draws=20)
    daily = attainment_draws(fit, DecisionRule.attainment("AUC24 >230", **kw), seed=4)
    per_dose = attainment_draws(fit, DecisionRule.attainment("AUCTAU >115", **kw), seed=4)
    np.testing.assert_array_equal(daily, per_dose)
    assert 0 < daily.mean() < 1          # a target between the subjects' values: the comparison is not vacuous
    assert "P(AUC24>230)" in DecisionRule.attainment("AUC24 >230", **kw).describe()


@pytest.fixture
def cli_inputs(fit, tmp_path):
    fit.save(tmp_path / "fit" / "fit.nc")
    regimen_data(320, 24, 1, times=TIMES, n_subjects=2).to_csv(tmp_path / "design.csv", index=False)
    (tmp_path / "wt.toml").write_text((Path(__file__).parents[1] / "model_library" / "pk_1cmt_oral.toml").read_text()
                                      + '\n[[covariates]]\nparameter = "CL"\ncovariate = "WT"\ntype = "power"\n'
                                      'reference = 70\n')
    return tmp_path


@pytest.mark.slow
def test_trial_command_end_to_end(fit, cli_inputs, capsys):
    """MAP analysis by a model with WT on CL of replicates that draw their own subjects' WT; a PTA rule."""
    tmp = cli_inputs
    rc = main(["trial", str(tmp / "fit"), "--design", str(tmp / "design.csv"), "--n", "2", "--analysis", "map",
               "--draws", "30", "--covariates", "resample", "--analysis-model", str(tmp / "wt.toml"), "--seed", "3",
               "--rule", "kind=attainment", "target=CTROUGH >1", "dose=320", "ii=24", "level=0.5", "n_subjects=20",
               "n_draws=20", "--out", str(tmp / "run"), "--scheduler", "serial", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "Probability of success" in out and "Monte Carlo SE" in out and "P(CTROUGH>1) >= 0.5" in out
    table = pd.read_csv(tmp / "run" / "replicates.csv", index_col=0)
    assert list(table.index) == ["rep0", "rep1"] and table[["truth", "estimate"]].stack().between(0, 1).all()
    assert (tmp / "run" / "trial.txt").read_text().splitlines()[0] in out
    # each replicate was simulated and analysed with its own subjects' WT, drawn from the run seed
    drawn = replicate_covariates(fit, tmp / "design.csv", "resample", ["rep0", "rep1"], seed=3, names=["WT"])
    analysed = {k: pd.read_csv(tmp / "run" / "tasks" / k / "data.csv").groupby("ID")["WT"].first().tolist()
                for k in ("rep0", "rep1")}
    assert analysed == {k: drawn[k]["WT"].tolist() for k in ("rep0", "rep1")}
    assert analysed["rep0"] != analysed["rep1"]


@pytest.mark.parametrize("fit_dir, args, message", [
    ("fit", ["--rule", "kind=interval", "parameter=CL", "lower=x"], r"--rule: key 'lower': must be a number"),
    ("fit", ["--rule", "kind=interval", "CL"], r"--rule: expected KEY=VALUE, got 'CL'"),
    ("fit", ["--rule", "kind=attainment", "target=CTROUGH >1", "dose=320"], r"--rule: key 'ii': required"),
    ("fit", ["--rule-file", "RULE"], r"rule\.toml: key 'scale': unknown for a rule of kind attainment"),
    ("fit", ["--rule", "kind=probability", "parameter=CL", "--covariates", "absent.csv"],
     r"--covariates: expected 'resample' or a CSV covariate table"),
    ("nofit", ["--rule", "kind=probability", "parameter=CL"], r"nofit/fit\.nc: no such fit file"),
], ids=["rule-type", "rule-pair", "rule-required", "rule-file-key", "covariates-file", "fit-dir"])
def test_trial_command_errors_name_the_flag_or_key(cli_inputs, capsys, fit_dir, args, message):
    tmp = cli_inputs
    (tmp / "rule.toml").write_text('kind = "attainment"\ntarget = "CTROUGH >1"\ndose = 320\nii = 24\nscale = "exp"\n')
    args = [str(tmp / "rule.toml") if a == "RULE" else a for a in args]
    rc = main(["trial", str(tmp / fit_dir), "--design", str(tmp / "design.csv"), "--out", str(tmp / "run"), *args])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp / "run").exists()


@pytest.mark.parametrize("args", [["--n", "1"], ["--dropout", "1.5"], ["--analysis", "laplace"],
                                  ["--rule", "kind=interval", "--rule-file", "r.toml"]])
def test_trial_command_usage_errors_exit_1(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["trial", "fits/x", "--design", "d.csv", "--out", "o", *(args if "--rule" in args else
                                                                    ["--rule", "kind=interval", *args])])
    assert exc.value.code == 1
    flag = next(a for a in args if a.startswith("--"))
    assert f"argument {flag}" in capsys.readouterr().err
