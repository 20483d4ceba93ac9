"""Simulation-based calibration: the uniformity test, a calibrated and a miscalibrated setup, serial == cluster."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from bayesnlme import datasets, load_spec
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.sbc import SBCResult, analyse, holm, sbc, uniformity_test
from bayesnlme.spec import ModelSpec


# ------------------------------------------------------------------------------ the test itself (no fits)
def test_uniformity_test_has_its_nominal_level():
    """p < 0.05 for about 5% of uniform rank samples (binomial SE over 400 samples: 1.1%)."""
    rng = np.random.default_rng(0)
    p = np.array([uniformity_test(rng.integers(0, 50, 100), 50)["p_value"] for _ in range(400)])
    rate = (p < 0.05).mean()
    assert abs(rate - 0.05) < 3 * np.sqrt(0.05 * 0.95 / 400), rate


def test_uniformity_test_detects_shift_and_overconfidence_and_band_agrees_with_p():
    rng = np.random.default_rng(1)
    n, levels = 100, 50
    shifted = np.minimum(levels - 1, rng.integers(0, levels, n) + 12)      # posterior below the truth
    narrow = np.where(rng.random(n) < 0.5, rng.integers(0, 8, n), rng.integers(42, 50, n))   # U shape
    for ranks in (shifted, narrow):
        t = uniformity_test(ranks, levels, alpha=0.01)
        assert t["p_value"] < 0.001
        outside = (t["ecdf"] < t["lower"]) | (t["ecdf"] > t["upper"])
        assert outside.any(), "a rejected ECDF leaves its simultaneous band"
    uniform = rng.integers(0, levels, n)
    t = uniformity_test(uniform, levels, alpha=0.01)
    if t["p_value"] >= 0.01:
        assert ((t["ecdf"] >= t["lower"]) & (t["ecdf"] <= t["upper"])).all()
    # shapes in words
    res = {f"r{i}": {"rank": {"A": int(a), "B": int(b)}, "n_ranks": levels, "min_ess_bulk": 400.0,
                     "max_r_hat": 1.0, "divergences": 0} for i, (a, b) in enumerate(zip(shifted, narrow))}
    out = analyse(res)
    assert out.table.loc["A", "shape"] == "posterior below the truth (biased low)"
    assert out.table.loc["B", "shape"] == "posterior too narrow (overconfident)"
    assert not out.calibrated and "NOT calibrated" in out.verdict()


def test_holm_adjustment_and_the_verdict_on_multiplicity():
    """Holm's adjusted p-values by hand; one parameter rejected at 1% on its own but not family-wise gets
    the multiplicity sentence, a departure that survives the adjustment does not."""
    p = np.array([0.004, 0.2, 0.003, 0.05])
    # sorted: 0.003 (x4 = 0.012), 0.004 (x3 = 0.012), 0.05 (x2 = 0.1), 0.2 (x1, running max 0.2)
    np.testing.assert_allclose(holm(p), [0.012, 0.2, 0.012, 0.1])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    np.testing.assert_allclose(holm([0.001]), [0.001])

    def result(p_values):
        names = [f"P{i}" for i in range(len(p_values))]
        table = pd.DataFrame({"n": 100, "mean_rank": 0.5, "p_value": p_values, "p_holm": holm(p_values),
                              "rejected": np.asarray(p_values) < 0.01, "shape": "biased low"},
                             index=pd.Index(names, name="parameter"))
        fits = pd.DataFrame({"min_ess_bulk": [400.0], "max_r_hat": [1.0], "divergences": [0], "n_censored": [0]})
        return SBCResult(ranks=pd.DataFrame(0, index=range(100), columns=names), n_ranks=20, table=table, fits=fits)

    lone = result([0.004] + [0.3] * 7)                  # Holm: 8 x 0.004 = 0.032
    assert not lone.calibrated and lone.calibrated_familywise
    words = lone.verdict()
    assert "NOT calibrated at 1% -- P0 (p = 0.0040" in words
    assert "least one such departure in 7.7% of runs" in words and "smallest adjusted p = 0.032" in words
    strong = result([0.0002] + [0.3] * 7)               # Holm: 0.0016 < 1%
    assert not strong.calibrated and not strong.calibrated_familywise
    assert "Holm" not in strong.verdict()
    assert "Holm" not in result([0.3] * 8).verdict()


def test_analyse_table_holds_the_holm_column():
    rng = np.random.default_rng(3)
    res = {f"r{i}": {"rank": {"A": int(rng.integers(0, 20)), "B": int(min(19, rng.integers(0, 20) + 6))},
                     "n_ranks": 20, "min_ess_bulk": 400.0, "max_r_hat": 1.0, "divergences": 0} for i in range(100)}
    table = analyse(res).table
    assert list(table.columns) == ["n", "mean_rank", "p_value", "p_holm", "rejected", "shape"]
    np.testing.assert_allclose(table["p_holm"], holm(table["p_value"]))
    assert table.loc["B", "p_holm"] < 0.01 and table.loc["A", "p_holm"] > 0.01


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def design():
    frame = pd.read_csv(datasets.dataset_path("theophylline"))
    return frame[frame["ID"] <= 6].reset_index(drop=True)


SETTINGS = dict(chains=2, draws=200, tune=200, n_ranks=20, progress=False)


def _narrow_wrong_cl() -> ModelSpec:
    d = load_spec("pk_1cmt_oral").to_dict()
    d["parameters"]["CL"]["prior"] = {"dist": "lognormal", "median": 20.0, "sigma": 0.1}
    d["name"] = "pk_1cmt_oral_wrong_CL_prior"
    return ModelSpec.from_dict(d)


@pytest.mark.slow
@pytest.mark.validation
def test_sbc_of_pk_1cmt_oral_is_calibrated_and_a_wrong_prior_is_flagged(design, tmp_path):
    """The issue's check: 100 replicates, no parameter rejected at 1%.

    Under exact calibration each of the eight tests rejects 1% of the time, so a fixed seed fails about
    one time in thirteen whenever the draws change.  With seed 2, sigma_add (weakly identified here: six
    subjects, 2 x 200 draws; 7 of 100 fits with a bulk ESS below the 19 thinned draws) has p = 0.03 at
    100 replicates; at the first 40 it fell to p = 0.0055 when the builder's graph, and with it the
    draws, changed (a9c436f), which is why this test no longer uses 40.
    """
    spec = load_spec("pk_1cmt_oral")
    good = sbc(spec, design, n=100, run_dir=tmp_path / "good", seed=2, scheduler="serial", **SETTINGS)
    assert len(good.ranks) == 100 and not good.failed
    assert good.ranks.to_numpy().min() >= 0 and good.ranks.to_numpy().max() <= 19
    assert good.calibrated, good.table
    assert "calibrated -- no parameter" in good.verdict()
    for name in ("sbc_ranks.csv", "sbc_table.csv", "sbc_fits.csv", "sbc_verdict.txt", "sbc_ranks.png",
                 "sbc_ecdf.png", "manifest.json"):
        assert (tmp_path / "good" / name).stat().st_size > 0
    # the ranks are those of the replicates' own truths among their posterior draws
    rec = json.loads((tmp_path / "good" / "tasks" / "rep00" / "result.json").read_text())["result"]
    assert good.ranks.loc["rep00", "CL"] == rec["rank"]["CL"]
    simulated = pd.read_csv(tmp_path / "good" / "tasks" / "rep00" / "data.csv")
    assert len(simulated) == len(design) and not np.allclose(simulated["DV"], design["DV"])

    bad = sbc(spec, design, n=20, fit_spec=_narrow_wrong_cl(), run_dir=tmp_path / "bad", seed=2,
              scheduler="serial", **SETTINGS)
    assert not bad.calibrated
    assert bad.table.loc["CL", "rejected"]
    assert bad.table.loc["CL", "p_value"] < 0.001
    # a narrow prior at 20 L/h keeps every posterior near 20 whatever the truth: ranks at both ends
    assert bad.table.loc["CL", "shape"] == "posterior too narrow (overconfident)"
    assert "NOT calibrated at 1% -- CL" in bad.verdict()


@pytest.mark.slow
def test_sbc_on_a_cluster_equals_serial_and_a_rerun_does_no_work(design, tmp_path):
    from distributed import Client, LocalCluster

    spec = load_spec("pk_1cmt_oral")
    serial = sbc(spec, design, n=4, run_dir=tmp_path / "serial", seed=5, scheduler="serial", **SETTINGS)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, silence_logs=50) as cluster, \
            Client(cluster) as client:
        dask = sbc(spec, design, n=4, run_dir=tmp_path / "dask", seed=5, scheduler=client, **SETTINGS)
    pd.testing.assert_frame_equal(serial.ranks, dask.ranks)
    workers = {json.loads((tmp_path / "dask" / "tasks" / k / "result.json").read_text())["worker"]
               for k in dask.ranks.index}
    assert len(workers) == 2
    for k in dask.ranks.index:
        a = json.loads((tmp_path / "serial" / "tasks" / k / "result.json").read_text())["result"]
        b = json.loads((tmp_path / "dask" / "tasks" / k / "result.json").read_text())["result"]
        assert a["truth"] == b["truth"] and a["posterior_mean"] == b["posterior_mean"]
    # the command line on the finished serial run: nothing to do, same table
    design.to_csv(tmp_path / "design.csv", index=False)
    out = subprocess.run([sys.executable, "-m", "bayesnlme.cli", "sbc", "pk_1cmt_oral", "--data",
                          str(tmp_path / "design.csv"), "--n", "4", "--out", str(tmp_path / "cli"),
                          "--chains", "2", "--draws", "200", "--tune", "200", "--ranks", "20", "--seed", "5",
                          "--scheduler", "serial", "--no-progress"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "SBC with 4 replicates" in out.stdout
    ranks = pd.read_csv(tmp_path / "cli" / "sbc_ranks.csv", index_col=0)
    np.testing.assert_array_equal(ranks.to_numpy(), serial.ranks.to_numpy())


def test_sbc_input_errors(design, tmp_path):
    spec = load_spec("pk_1cmt_oral")
    with pytest.raises(BayesNLMEInputError, match="at least 2 replicates"):
        sbc(spec, design, n=1, run_dir=tmp_path, scheduler="serial")
    with pytest.raises(BayesNLMEInputError, match="n_ranks must be between 2 and"):
        sbc(spec, design, n=4, run_dir=tmp_path, chains=1, draws=10, n_ranks=50, scheduler="serial")
    with pytest.raises(BayesNLMEInputError, match="lacks parameters .*KA"):
        sbc(spec, design, n=4, run_dir=tmp_path, fit_spec=load_spec("pk_1cmt_iv"), scheduler="serial")


def test_censor_sets_cens_and_limit_and_lloq_comes_from_the_design(design):
    from bayesnlme.data import read_nonmem
    from bayesnlme.sbc import censor, placeholder_design

    nm = read_nonmem(design)
    dv = np.linspace(0.5, 10, nm.n_obs)
    frame, n_cens = censor(nm, dv, np.full(nm.n_obs, 2.0))
    obs = frame[frame["EVID"] == 0]
    assert n_cens == int((dv < 2).sum()) > 0
    assert (obs.loc[obs["CENS"] == 1, "DV"] == 2.0).all() and (obs.loc[obs["CENS"] == 0, "DV"] >= 2).all()
    assert read_nonmem(frame).obs_cens.sum() == n_cens          # the reader accepts what censor writes
    # a design with CENS=1 records: its limits censor the simulated values; CENS/LIMIT do not reach the fits
    blq = design.copy()
    blq["CENS"] = 0
    first_obs = blq.index[blq["EVID"] == 0][0]
    blq.loc[first_obs, ["CENS", "DV"]] = [1, 0.25]
    placeholder, limits = placeholder_design(blq)
    assert "CENS" not in placeholder and np.allclose(limits, 0.25)
    assert placeholder_design(design)[1] is None
    assert np.allclose(placeholder_design(design, lloq=1.5)[1], 1.5)
    blq.loc[first_obs, "CENS"] = -1
    with pytest.raises(BayesNLMEInputError, match="CENS = -1"):
        placeholder_design(blq)
    with pytest.raises(BayesNLMEInputError, match="lloq must be a positive number"):
        placeholder_design(design, lloq=-1.0)


@pytest.mark.slow
def test_sbc_with_an_lloq_fits_censored_replicates(design, tmp_path, monkeypatch):
    import bayesnlme.inference.refit as refit_module

    def no_fit(*args, **kwargs):
        raise AssertionError("a censored replicate was fitted from scratch")

    monkeypatch.setattr(refit_module, "fit_model", no_fit)   # censored records are data of one compiled model
    out = sbc(load_spec("pk_1cmt_oral"), design, n=2, run_dir=tmp_path / "blq", seed=3, lloq=1.0,
              scheduler="serial", **{**SETTINGS, "draws": 100, "tune": 150, "n_ranks": 11})
    assert len(out.ranks) == 2 and not out.failed
    for key in out.ranks.index:
        sim = pd.read_csv(tmp_path / "blq" / "tasks" / key / "data.csv")
        obs = sim[sim["EVID"] == 0]
        assert out.fits.loc[key, "n_censored"] == (obs["CENS"] == 1).sum()
        assert (obs.loc[obs["CENS"] == 1, "DV"] == 1.0).all() and (obs.loc[obs["CENS"] == 0, "DV"] >= 1.0).all()
    assert out.fits["n_censored"].sum() > 0
    assert "censored (M3)" in out.verdict()
