"""Nothing lost: kill -9 at a random moment, two writers at once, a full disk.

A folder holds good results of ``fit``, ``diagnose``, ``vpc``, ``simulate`` and ``report``.  Each
command is then started again on it as a separate process and killed with SIGKILL at a moment drawn
from a seeded generator between its start and its expected end; afterwards every earlier file is still
there and loads (unchanged, or replaced whole by the new run's complete file), and the folder can be
locked again at once (no stale lock).  A second writer into a folder in use is refused with one line;
a write that fails for lack of space leaves the earlier file and says so.
"""

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayesnlme.atomic import output_lock
from bayesnlme.cli import main
from bayesnlme.datasets import dataset_path
from bayesnlme.inference.fit import FitResult

THEO = str(dataset_path("theophylline"))
REGIMENS = ("doses = [100]\nintervals = [12]\nn_subjects = 10\nn_draws = 10\n[[targets]]\n"
            "metric = \"CTROUGH\"\nabove = 1.0\n")


def _commands(folder: Path) -> dict:
    d = str(folder)
    return {
        "fit": ["fit", "--model", "pk_1cmt_oral", "--data", THEO, "--out", d, "--chains", "2", "--draws", "40",
                "--tune", "40", "--seed", "2", "--no-progress"],
        "diagnose": ["diagnose", d, "--npde-sims", "50"],
        "vpc": ["vpc", d, "--n-sim", "20"],
        "simulate": ["simulate", d, "--regimens", str(folder.parent / "regimens.toml")],
        "report": ["report", d, "--out", str(folder / "report.html"), "--npde-sims", "20"],
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A fit folder with every command's results, and how long each command took in this process."""
    root = tmp_path_factory.mktemp("faults")
    (root / "regimens.toml").write_text(REGIMENS)
    folder = root / "theo"
    seconds = {}
    for name, argv in _commands(folder).items():
        t0 = time.perf_counter()
        assert main(argv) == 0, name
        seconds[name] = time.perf_counter() - t0
    return folder, seconds


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def _loads(path: Path) -> None:
    """The file is complete: it parses as what its name says it is."""
    if path.name == "fit.nc":
        FitResult.load(path)
    elif path.name.endswith((".csv", ".csv.gz")):
        pd.read_csv(path)
    elif path.suffix == ".png":
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.read_bytes()[-8:-4] == b"IEND", path
    elif path.suffix == ".html":
        assert path.read_text().rstrip().endswith("</html>"), path
    else:
        assert path.stat().st_size > 0, path


@pytest.mark.slow
@pytest.mark.parametrize("command", ["fit", "diagnose", "vpc", "simulate", "report"])
def test_kill_9_at_a_random_moment_keeps_earlier_results(results, command):
    folder, seconds = results
    before = _files(folder)
    rng = np.random.default_rng(sorted(_commands(folder)).index(command))
    # a new process first imports the package (~3 s); kill anywhere from late in the import to past the
    # expected end of the work (measured in this process, where nothing was imported or compiled anew)
    moment = rng.uniform(2.5, 3.5 + 1.2 * seconds[command])
    proc = subprocess.Popen([sys.executable, "-m", "bayesnlme.cli", *_commands(folder)[command]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=moment)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    after = _files(folder)
    assert set(before) <= set(after), f"lost: {sorted(set(before) - set(after))} (killed at {moment:.1f} s)"
    for name in before:
        _loads(folder / name)
    # the folder is usable again at once: the killed holder's lock went with it, and the next holder
    # removes the temporary file a write killed midway left
    with output_lock(folder):
        assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_second_writer_refused_with_one_line(tmp_path, capsys):
    folder = tmp_path / "busy"
    with output_lock(folder):
        assert main(["fit", "--model", "pk_1cmt_oral", "--data", THEO, "--out", str(folder)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{folder}: another bayesnlme command (pid {os.getpid()}) is writing" in err[0]
    assert not folder.exists()   # nothing left behind by the refused run; the holder's empty folder removed
    # the lock is released with its holder: a new run may take the folder
    with output_lock(folder):
        pass


def test_full_disk_keeps_the_old_result(results, monkeypatch, capsys):
    folder, _ = results
    before = _files(folder)

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("bayesnlme.atomic.os.replace", no_space)
    assert main(_commands(folder)["fit"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fit.nc: could not write the result (No space left on device); the earlier file " \
                             "is unchanged" in err[0], err
    assert _files(folder) == before
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]   # no temporary file left


def test_lock_removes_temporaries_a_killed_writer_left(tmp_path):
    folder = tmp_path / "theo"
    folder.mkdir()
    stale = folder / ".fit.nc.k3j9x_2q.tmp"          # what write_atomic's mkstemp name looks like
    stale.write_bytes(b"CDF half written")
    kept = [folder / "fit.nc", folder / "notes.tmp", folder / ".notes.tmp", folder / "sub"]
    kept[0].write_bytes(b"good")
    kept[1].write_text("a user's file")
    kept[2].write_text("a user's hidden file")
    kept[3].mkdir()
    (kept[3] / ".fit.nc.abcdefgh.tmp").write_text("sub-folders are not searched")
    with output_lock(folder):
        assert not stale.exists()
        assert all(p.exists() for p in kept) and (kept[3] / ".fit.nc.abcdefgh.tmp").exists()
    assert kept[0].read_bytes() == b"good"
