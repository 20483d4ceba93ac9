"""Command line: malformed inputs give one-line errors and exit 1; a fit writes fit.nc and summary.csv."""

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import xarray as xr

from bayesnlme.cli import main
from bayesnlme.datasets import dataset_path
from bayesnlme.inference.fit import SUMMARY_COLUMNS

THEO = dataset_path("theophylline")
GOOD = THEO.read_text().splitlines()


def _csv(tmp_path, lines, name="bad.csv"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _edit(row, column, value):
    """The theophylline file with data record ``row`` (1-based), ``column`` set to ``value``."""
    header = GOOD[0].split(",")
    lines = list(GOOD)
    cells = lines[row].split(",")
    cells[header.index(column)] = value
    lines[row] = ",".join(cells)
    return lines


BAD_DATA = [
    ("nonnumeric_time", lambda: _edit(5, "TIME", "1.2h"), r"bad\.csv, row 5, column TIME: non-numeric value '1\.2h'"),
    ("time_decreasing", lambda: _edit(5, "TIME", "0.1"),
     r"row 5, column TIME: TIME decreases within ID 1 \(0.57 then 0.1\)"),
    ("negative_amt", lambda: _edit(1, "AMT", "-320"), r"row 1, column AMT: negative dose amount"),
    ("evid_9", lambda: _edit(3, "EVID", "9"), r"row 3, column EVID: EVID must be 0, 1, 2, 3 or 4"),
    ("obs_without_dv", lambda: _edit(4, "DV", "."), r"row 4, column DV: observation record .* without a DV"),
    ("missing_column", lambda: [",".join(c for c in line.split(",")[:2] + line.split(",")[3:]) for line in GOOD],
     r"required column DV is missing"),
    ("addl_no_ii",
     lambda: [GOOD[0] + ",ADDL"] + [line + (",3" if i == 1 else ",0") for i, line in enumerate(GOOD[1:], 1)],
     r"row 1, column II: ADDL > 0 needs a positive II"),
    ("dose_into_cmt3", lambda: _edit(1, "CMT", "3"), r"row 1, column CMT: dose into CMT 3"),
]


@pytest.mark.parametrize("case, lines, message", BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_bad_data_exits_1_with_one_line(tmp_path, capsys, case, lines, message):
    rc = main(["fit", "--model", "pk_1cmt_oral", "--data", _csv(tmp_path, lines()), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "o").exists()


BAD_SPECS = [
    ("unknown_param",
     'structural = "1cmt_oral"\n[parameters.CLX]\nprior = { dist = "lognormal", median = 1.0, sigma = 1.0 }\n',
     r"unknown parameter 'CLX'"),
    ("impossible_prior",
     'structural = "1cmt_oral"\n[parameters.CL]\nprior = { dist = "normal", mu = 1.0, sigma = 1.0 }\n',
     r"parameter CL: impossible prior"),
    ("bad_toml", 'structural = \n', r"not valid TOML"),
    ("absent_covariate", (Path(__file__).parents[1] / "model_library" / "pk_1cmt_oral.toml").read_text()
     + '\n[[covariates]]\nparameter = "CL"\ncovariate = "CRCL"\ntype = "power"\nreference = 100\n',
     r"column CRCL is not a covariate in theophylline\.csv"),
]


@pytest.mark.parametrize("case, text, message", BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_exits_1_with_one_line(tmp_path, capsys, case, text, message):
    spec = tmp_path / "m.toml"
    spec.write_text(text)
    rc = main(["fit", "--model", str(spec), "--data", str(THEO), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err


def test_unknown_model_and_missing_file(tmp_path, capsys):
    assert main(["fit", "--model", "pk_7cmt", "--data", str(THEO)]) == 1
    assert "unknown model 'pk_7cmt'" in capsys.readouterr().err
    assert main(["fit", "--model", "pk_1cmt_oral", "--data", str(tmp_path / "nope.csv")]) == 1
    assert "nope.csv: file not found" in capsys.readouterr().err


def test_library_lists_entries(capsys):
    assert main(["library"]) == 0
    out = capsys.readouterr().out
    assert "pk_1cmt_oral" in out and "pk_2cmt_infusion" in out
    assert main(["library", "pk_2cmt_oral"]) == 0
    assert 'structural = "2cmt_oral"' in capsys.readouterr().out


@pytest.mark.slow
def test_closed_output_pipe_exits_quietly():
    """`bayesnlme library | head -1`: the reader closes the pipe; no 'internal error', status 0."""
    code = ("import os, sys; r, w = os.pipe(); os.close(r); os.dup2(w, 1); "
            "from bayesnlme.cli import main; sys.exit(main(['library']))")
    run = subprocess.run([sys.executable, "-u", "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""


def test_fit_command_end_to_end(tmp_path):
    """The installed entry point, in a subprocess: writes fit.nc and summary.csv; a failed rerun keeps them."""
    exe = Path(sys.executable).with_name("bayesnlme")
    out = tmp_path / "fit"
    cmd = [str(exe), "fit", "--model", "pk_1cmt_oral", "--data", str(THEO), "--out", str(out),
           "--chains", "2", "--draws", "200", "--tune", "200", "--seed", "3", "--no-progress",
           "--log-likelihood", "subject"]
    tmp = tmp_path / "tmp"     # the system's temporary folder, as the command sees it
    tmp.mkdir()
    # private folders other commands left: one of a process killed two days ago (removed), one of a process
    # that is gone but whose folder changed a minute ago (kept: its PID might be another container's), one
    # of a running process (kept)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    left = {"stale": f"bayesnlme-{gone.pid}-abcd1234", "recent": f"bayesnlme-workers-{gone.pid}-efgh5678",
            "running": f"bayesnlme-{os.getpid()}-ijkl9012"}
    for key, name in left.items():
        (tmp / name).mkdir()
        (tmp / name / "leftover.py").write_text("x = 1\n")
        age = 60 if key == "recent" else 2 * 86400
        os.utime(tmp / name, (time.time() - age, time.time() - age))
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(tmp)})
    assert run.returncode == 0, run.stderr
    # PyTensor's numba backend leaves a source file per function in the temporary folder (~60 a fit):
    # the command keeps them in a folder of its own, removed at its end
    assert sorted(os.listdir(tmp)) == sorted([left["recent"], left["running"]])
    table = pd.read_csv(out / "summary.csv")
    assert list(table.columns) == SUMMARY_COLUMNS
    assert list(table["parameter"]) == ["CL", "V", "KA", "omega_CL", "omega_V", "omega_KA", "sigma_add", "sigma_prop"]
    assert "CL" in run.stdout and "wrote" in run.stdout
    assert "log-likelihood kept per subject (12 values a draw instead of 132)" in run.stdout
    with xr.open_dataset(out / "fit.nc", group="log_likelihood") as ll:
        assert ll["DV"].dims == ("chain", "draw", "ID") and ll["DV"].shape == (2, 200, 12)
    before = {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in ("fit.nc", "summary.csv")}
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(_edit(3, "TIME", "x")) + "\n")
    cmd_bad = [str(exe), "fit", "--model", "pk_1cmt_oral", "--data", str(bad), "--out", str(out)]
    run = subprocess.run(cmd_bad, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "Traceback" not in run.stderr and "row 3, column TIME" in run.stderr
    after = {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in ("fit.nc", "summary.csv")}
    assert after == before
    assert sorted(os.listdir(out)) == ["fit.nc", "summary.csv"]
