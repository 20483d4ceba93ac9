"""Covariate model building: candidates, screening, the decision rule, and a search on simulated data."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _covdata import TRUE, simulate_covariate_study

from bayesnlme import load_spec, read_nonmem
from bayesnlme.covsearch import (
    Candidate,
    Rule,
    covsearch,
    parse_candidates,
    screen,
    with_relations,
)
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.spec import ModelSpec

CANDIDATES = "CL~WT:power V~SEX CL~AGE:exponential KA~WT:power V~AGE:linear"


@pytest.fixture(scope="module")
def study():
    return simulate_covariate_study()


def test_candidates_parse_with_kinds_references_and_priors(study):
    spec = load_spec("pk_1cmt_oral")
    base = read_nonmem(study).baseline_covariates()
    cands = parse_candidates(CANDIDATES, spec, base)
    assert cands[0] == Candidate("CL", "WT", "power")
    assert cands[1] == Candidate("V", "SEX", "categorical")      # 2 integer levels: categorical by default
    assert [c.name for c in cands] == ["WT_on_CL", "SEX_on_V", "AGE_on_CL", "WT_on_KA", "AGE_on_V"]
    full = with_relations(spec, cands[:3], base)
    tables = {(c.parameter, c.covariate): c for c in full.covariates}
    assert tables[("CL", "WT")].reference == pytest.approx(np.median(base["WT"]), rel=1e-3)
    assert tables[("V", "SEX")].reference == 0 and tables[("V", "SEX")].kind == "categorical"
    age = tables[("CL", "AGE")]
    assert age.prior.args["sigma"] == pytest.approx(0.5 / base["AGE"].std(), rel=1e-3)
    assert full.name == "pk_1cmt_oral+WT_on_CL+SEX_on_V+AGE_on_CL"
    for bad, msg in (("CL-WT", "PARAMETER~COVARIATE"), ("Q~WT", "no parameter Q"), ("CL~HT", "no covariate column HT"),
                     ("CL~WT:spline", "unknown kind"), ("CL~WT CL~WT", "listed twice"), ("", "at least one")):
        with pytest.raises(BayesNLMEInputError, match=msg):
            parse_candidates(bad, spec, base)


def test_screen_and_rule():
    rng = np.random.default_rng(0)
    wt = rng.uniform(40, 100, 50)
    sex = rng.integers(0, 2, 50)
    etas = pd.DataFrame({"ETA_CL": 0.7 * np.log(wt / 70) + rng.normal(0, 0.1, 50), "ETA_V": rng.normal(0, 0.3, 50),
                         "WT": wt, "SEX": sex})
    p = screen(etas, [Candidate("CL", "WT", "power"), Candidate("V", "SEX", "categorical"),
                      Candidate("KA", "WT", "power")])
    assert p["WT_on_CL"] < 1e-6 and p["SEX_on_V"] > 0.01 and p["WT_on_KA"] is None
    r = Rule()
    assert r.include(3.0, 3.5, 0.001) and not r.include(3.0, 3.5, 0.02) and not r.include(-0.1, 1.0, 0.0)
    assert r.remove(-0.2, 1.0, 0.0) and r.remove(5.0, 1.0, 0.05) and not r.remove(5.0, 1.0, 0.001)
    e = Rule("elpd")
    assert not e.include(3.0, 3.5, 0.0) and e.include(8.0, 3.5, 0.5) and e.remove(5.0, 3.0, 0.0)
    with pytest.raises(BayesNLMEInputError, match="unknown covariate search rule"):
        Rule("aic")


@pytest.mark.slow
@pytest.mark.validation
def test_covsearch_selects_the_true_effects_and_a_rerun_does_no_work(study, tmp_path):
    data = tmp_path / "study.csv"
    study.to_csv(data, index=False)
    kw = dict(chains=2, draws=200, tune=200, seed=3, scheduler="serial", progress=False)
    res = covsearch(load_spec("pk_1cmt_oral"), data, CANDIDATES, run_dir=tmp_path / "cov", **kw)
    assert sorted(res.selected) == sorted(TRUE)
    steps = res.steps
    screened = steps[steps["direction"] == "screen"].set_index("candidate")
    assert screened.loc["WT_on_CL", "screen_p"] < 0.01 and screened.loc["SEX_on_V", "screen_p"] < 0.01
    assert {"AGE_on_CL", "WT_on_KA", "AGE_on_V"} <= set(screened.index[screened["decision"] != "kept"])
    fwd = steps[(steps["direction"] == "forward") & (steps["decision"] == "included")]
    assert sorted(fwd["candidate"]) == sorted(TRUE)
    assert (fwd["elpd_diff"] > 0).all() and (fwd["p_effect"] < 0.01).all()
    back = steps[steps["direction"] == "backward"]
    assert set(back["decision"]) == {"kept"}
    # outputs
    final = ModelSpec.from_toml(tmp_path / "cov" / "final_model.toml")
    assert sorted(f"{c.covariate}_on_{c.parameter}" for c in final.covariates) == sorted(TRUE)
    assert (tmp_path / "cov" / "covariate_forest.png").stat().st_size > 0
    forest = pd.read_csv(tmp_path / "cov" / "covariate_forest.csv")
    assert set(forest["parameter"]) == {"CL", "V"}
    assert res.final_fit.exists()
    # the full model: every candidate under a regularised horseshoe; the true effects stand out
    full = pd.read_csv(tmp_path / "cov" / "full_model.csv", index_col="effect")
    assert set(full["candidate"]) == {"WT_on_CL", "SEX_on_V", "AGE_on_CL", "WT_on_KA", "AGE_on_V"}
    assert set(full.loc[full["excludes_0"], "candidate"]) == set(TRUE), full
    assert "Full model with all 5 candidates" in res.describe()
    # the same search from the command line: every fit is found in the run directory, none redone
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "cov").rglob("fit.nc")}
    out = subprocess.run([sys.executable, "-m", "bayesnlme.cli", "covsearch", "pk_1cmt_oral", "--data", str(data),
                          "--candidates", CANDIDATES, "--out", str(tmp_path / "cov"), "--chains", "2", "--draws",
                          "200", "--tune", "200", "--seed", "3", "--scheduler", "serial", "--no-progress"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Selected covariate relations: " in out.stdout and "WT_on_CL" in out.stdout
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cov").rglob("fit.nc")} == before
    manifest = json.loads((tmp_path / "cov" / "step01_forward" / "manifest.json").read_text())
    assert manifest["runs"][-1]["skipped"] == len(manifest["tasks"])


# ------------------------------------------------------------------ candidates as one graph (switches)
def _two_effects(study):
    return with_relations(load_spec("pk_1cmt_oral"),
                          parse_candidates("CL~WT:power CL~AGE:exponential", load_spec("pk_1cmt_oral"),
                                           read_nonmem(study).baseline_covariates()),
                          read_nonmem(study).baseline_covariates())


def test_a_switched_off_effect_changes_nothing_and_an_unknown_switch_is_refused(study):
    import pytensor

    from bayesnlme.build import build_model
    from bayesnlme.errors import SpecError

    both = _two_effects(study)
    wt_only = ModelSpec.from_dict({**both.to_dict(), "covariates": [both.covariates[0].to_dict()]})

    def ipred(built, age_theta):
        point = {k: np.asarray(v, float) for k, v in built.initial_point.items()}
        point["WT_on_CL"], point["eta_z"] = np.array(0.8), np.full_like(point["eta_z"], 0.3)
        point["AGE_on_CL"] = np.array(age_theta)
        rvs = list(built.model.free_RVs)
        return pytensor.function(rvs, built.ipred, on_unused_input="ignore")(*[point[rv.name] for rv in rvs])

    reference = ipred(build_model(wt_only, study), 0.0)
    off = build_model(both, study, switches={"WT_on_CL": 1, "AGE_on_CL": 0})
    np.testing.assert_array_equal(ipred(off, 0.05), reference)   # s * theta = 0: the factor is exactly 1
    on = build_model(both, study, switches={"WT_on_CL": 1, "AGE_on_CL": 1})
    np.testing.assert_allclose(ipred(on, 0.0), reference, rtol=1e-12)
    assert not np.allclose(ipred(on, 0.05), reference, rtol=1e-3)
    with pytest.raises(SpecError, match="switches name covariate effects the spec does not have: SEX_on_V"):
        build_model(both, study, switches={"SEX_on_V": 1})


def test_candidates_share_one_compiled_model_and_save_as_their_own(study, tmp_path):
    import pytensor

    from bayesnlme.inference.fit import FitResult, fit_model

    both = _two_effects(study)
    kw = dict(chains=2, draws=100, tune=100, seed=5, progress=False)
    first = fit_model(both, study, switches={"WT_on_CL": 1, "AGE_on_CL": 0}, **kw)
    cache = lambda: {p: p.stat().st_mtime_ns for p in Path(pytensor.config.compiledir).rglob("*.nbc")}  # noqa: E731
    before = cache()
    second = fit_model(both, study, switches={"WT_on_CL": 1, "AGE_on_CL": 1}, **kw)
    assert cache() == before   # the second candidate compiled nothing: the switches are data
    kept = first.switched_off_removed()
    assert [f"{c.covariate}_on_{c.parameter}" for c in kept.spec.covariates] == ["WT_on_CL"]
    assert "AGE_on_CL" in first.idata.posterior and "AGE_on_CL" not in kept.idata.posterior
    assert "AGE_on_CL" not in kept.summary().index and "AGE_on_CL" in second.summary().index
    kept.save(tmp_path / "fit.nc")
    back = FitResult.load(tmp_path / "fit.nc")   # rebuilds as the model without AGE
    assert [rv.name for rv in back.built.model.free_RVs if rv.name.endswith("_on_CL")] == ["WT_on_CL"]
    assert back.settings["switches"] == {"WT_on_CL": 1}
    # switched off, the effect's theta is drawn from its prior, N(0, 0.5 / SD(AGE)): no information from data
    sd = both.covariates[1].prior.args["sigma"]
    assert abs(np.std(first.posterior_draws("AGE_on_CL")) / sd - 1) < 0.25
    assert np.std(second.posterior_draws("AGE_on_CL")) < 0.5 * sd
