"""No dead ends: a start point where the log-density or its gradient is not finite is named in one line.

Each malformed case goes through the command line as a user would meet it: exit status 1, one line on
stderr naming the row, subject or parameter, no traceback, and well inside 30 s (the check runs before
sampling: with nutpie on the sampler's compiled log-density, loaded from the cache when this model
structure and data shape were compiled before).
"""

import gc
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from bayesnlme.build import build_model
from bayesnlme.datasets import dataset_path
from bayesnlme.errors import DataError, StartPointError
from bayesnlme.inference.fit import sampling_failure
from bayesnlme.inference.startpoint import check_start
from bayesnlme.spec import load_spec


def _theophylline():
    return pd.read_csv(dataset_path("theophylline"))


def _cli_fit(tmp_path, frame, model="pk_1cmt_oral"):
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bayesnlme.cli", "fit", "--model", model, "--data", str(path),
                           "--out", str(tmp_path / "out"), "--chains", "1", "--draws", "20", "--tune", "20",
                           "--no-progress"], capture_output=True, text=True, timeout=120)
    return proc, time.perf_counter() - t0


def test_observations_without_dose_named_before_sampling(tmp_path):
    df = _theophylline()
    df = df[~((df["ID"] == 3) & (df["AMT"] > 0))]
    proc, seconds = _cli_fit(tmp_path, df)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "subject 3 has 11 observations and no dose" in lines[0] and "column AMT" in lines[0]
    assert seconds < 30
    assert not (tmp_path / "out").exists()


def test_infinite_dv_rejected_by_the_reader(tmp_path):
    df = _theophylline()
    row = int(df.index[df["EVID"] == 0][5])
    df["DV"] = df["DV"].astype(object)
    df.loc[row, "DV"] = "-inf"
    proc, _ = _cli_fit(tmp_path, df)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"row {row + 1}, column DV: infinite value -inf" in proc.stderr


def test_huge_dv_gives_infinite_residual_named_by_row(tmp_path):
    df = _theophylline()
    row = int(df.index[df["EVID"] == 0][20])
    df.loc[row, "DV"] = 1e308
    proc, seconds = _cli_fit(tmp_path, df)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"row {row + 1} (ID {df.loc[row, 'ID']}): DV 1e+308 gives an infinite residual" in lines[0]
    assert seconds < 30


def test_start_outside_the_prior_names_the_parameter():
    built = build_model(load_spec("pk_1cmt_oral"), dataset_path("theophylline"))
    start = dict(built.initial_point, V=0.0)
    with pytest.raises(StartPointError, match=r"prior on V gives log-density -inf at the start value V = 0"):
        check_start(built, start)


def test_overflowing_prediction_named():
    # a dose of 1e308 mg: the prediction (and its proportional error) overflow for subject 1
    df = _theophylline()
    df.loc[(df["ID"] == 1) & (df["AMT"] > 0), "AMT"] = 1e308
    built = build_model(load_spec("pk_1cmt_oral"), df)
    with pytest.raises(StartPointError,
                       match=r"row 3 \(ID 1\): the residual SD is inf .*its error overflows; check the dose amounts"):
        check_start(built)


def test_finite_start_passes_and_costs_little():
    built = build_model(load_spec("pk_1cmt_oral"), dataset_path("theophylline"))
    t0 = time.perf_counter()
    check_start(built)   # no exception
    assert time.perf_counter() - t0 < 10


def test_sampler_errors_become_one_line():
    rust = RuntimeError("Could not initialize state because of bad initial gradient: Invalid initial point\n"
                        "Stack backtrace:\n   0: nuts_rs::sampler::foo\n   1: bar")
    text = sampling_failure(rust, "nutpie")
    assert "\n" not in text and "backtrace" not in text.lower() and "0: nuts_rs" not in text
    assert "could not start a chain" in text and "--seed" in text and "init" in text
    other = sampling_failure(ValueError("boom"), "pymc")
    assert other.startswith("pymc stopped while sampling (ValueError: boom)")


def test_pk_subject_without_dose_is_a_data_error_but_pd_types_are_not():
    df = _theophylline()
    df = df[~((df["ID"] == 5) & (df["AMT"] > 0))]
    with pytest.raises(DataError, match="subject 5 has 11 observations and no dose"):
        build_model(load_spec("pk_1cmt_oral"), df)
    # prediction designs (check_residual=False) are not data: no refusal
    build_model(load_spec("pk_1cmt_oral"), df, check_residual=False)
    assert np.isfinite(df["DV"]).all()


def test_uninformed_parameters_at_their_prior_median_are_jittered():
    """Parameters the data do not inform start where their own prior is flat: gradient 0 in the
    sampler's compiled graph, ~1e-17 after the Python linker's exp/log round trip.  Both count as
    zero, so nutpie (which scales its first mass matrix by the gradient) gets them jittered; found by
    the capability matrix on the indirect-response models observed through CP only."""
    df = pd.read_csv(dataset_path("theophylline"))
    df["DVID"] = 1                                   # concentrations only: the PD part is uninformed
    df = df[(df["EVID"] == 1) | (df["TIME"] > 0)]   # pre-dose records do not suit proportional error
    flat = check_start(build_model(load_spec("pd_emax"), df))
    assert {"E0", "EC50"} <= set(flat) and not {"CL", "V", "KA"} & set(flat)


def test_start_checked_with_the_samplers_compiled_function():
    """Before nutpie, the start is checked with the sampler's own compiled log-density + gradient (free of
    cost when loaded from the cache; the Python-linker check compiled an ODE model's integrator in every
    process, 15 s): the same zero-gradient parameters as the Python-linker check on a model where some
    are uninformed; a non-finite value falls back to that check, which names the cause in the data."""
    from bayesnlme.inference import nutpie_cache
    from bayesnlme.inference.startpoint import check_start_compiled

    df = pd.read_csv(dataset_path("theophylline"))
    df["DVID"] = 1
    df = df[(df["EVID"] == 1) | (df["TIME"] > 0)]
    def callback(built):   # nutpie's compiled log-density callback, as compile_model passes it to a check
        seen = []
        nutpie_cache.compile_model(built.model, built.initial_point, None, [v.name for v in built.model.free_RVs],
                                   check=lambda logp: seen.append(logp) or set())
        gc.collect()   # the compiled model is gone: the callback must keep the data it points into alive
        return seen[0]

    built = build_model(load_spec("pd_emax"), df)
    assert set(check_start_compiled(built, callback(built))) == set(check_start(built)) >= {"E0", "EC50"}

    row = int(df.index[df["EVID"] == 0][20])
    df.loc[row, "DV"] = 1e308   # the cause is named in the data's terms, as by the Python-linker check
    built = build_model(load_spec("pd_emax"), df)
    with pytest.raises(StartPointError, match=r"DV 1e\+308 gives an infinite residual"):
        check_start_compiled(built, callback(built))   # same structure and shapes: loaded from the cache


def test_compiled_check_names_what_only_the_compiled_graph_finds():
    built = build_model(load_spec("pk_1cmt_oral"), dataset_path("theophylline"))
    names = [v.name for v in built.model.free_RVs]
    sizes = [int(np.size(built.initial_point[n])) for n in names]
    bounds = np.cumsum([0] + sizes)
    k = names.index("V")

    def fake(x, bad=None):
        grad = np.ones(x.size)
        grad[bounds[k]:bounds[k + 1]] = np.nan if bad else 0.0
        return 1.0, grad

    from bayesnlme.inference.startpoint import check_start_compiled
    assert check_start_compiled(built, fake) == ["V"]
    with pytest.raises(StartPointError, match=r"compiled log-density is not finite .*gradient with respect to V "
                                              r"is not finite"):
        check_start_compiled(built, lambda x: fake(x, bad=True))
