"""Replicate trial simulation: decision rules, probability of success, dropout, a larger study does better."""

import numpy as np
import pandas as pd
import pytest

from bayesnlme import datasets, load_spec
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.simulate import regimen_data
from bayesnlme.inference.fit import fit_model
from bayesnlme.trial import DecisionRule, trial

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


@pytest.fixture(scope="module")
def fit():
    return fit_model(load_spec("pk_1cmt_oral"), datasets.dataset_path("theophylline"), chains=2, draws=300,
                     tune=300, seed=1, progress=False)


@pytest.mark.slow
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
    with pytest.raises(BayesNLMEInputError, match="no replicate finished"):
        trial(fit, design, n=2, rule=DecisionRule.interval("Q", lower=0.8, upper=1.25), chains=1, draws=50, tune=50,
              run_dir=tmp_path / "c", scheduler="serial", progress=False)
