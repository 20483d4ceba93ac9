"""The many-fits runner: results in a run directory, resume, failures, killed workers, seeds from keys."""

import json
import os
import signal
import sys

import cloudpickle
import numpy as np
import pytest

from bayesnlme.runner import RunError, run_tasks, task_seed

# the task functions below live in this test module, which worker processes cannot import: send them by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def draw_task(*, key, seed, workdir, n, offset=0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n) + offset
    np.save(workdir / "x.npy", x)
    calls = workdir.parent.parent / "calls"
    calls.mkdir(exist_ok=True)
    (calls / f"{key}.{os.getpid()}.{rng.integers(1 << 30)}").touch()
    return {"mean": float(x.mean()), "first": float(x[0])}


def flaky_task(*, key, seed, workdir, bad=False):
    if bad:
        raise ValueError(f"replicate {key}: simulated DV has 3 negative values\nsecond line")
    return {"ok": 1}


def suicidal_task(*, key, seed, workdir, marker):
    """Kills its own worker process the first time it runs (a worker dying mid-task)."""
    if key == "k1" and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return {"seed": seed}


TASKS = {f"rep{i:03d}": {"n": 5} for i in range(6)}


def test_task_seed_depends_on_run_seed_and_key_only():
    assert task_seed(3, "rep001") == task_seed(3, "rep001")
    assert len({task_seed(3, k) for k in TASKS}) == len(TASKS)
    assert task_seed(3, "rep001") != task_seed(4, "rep001")


def test_serial_run_writes_results_and_manifest(tmp_path):
    run = run_tasks(draw_task, TASKS, tmp_path / "run", seed=7, scheduler="serial", progress=False)
    assert list(run.results) == list(TASKS)
    for k in TASKS:
        folder = run.task_dir(k)
        x = np.load(folder / "x.npy")
        assert x.shape == (5,)
        assert run.results[k]["mean"] == pytest.approx(x.mean())
        rec = json.loads((folder / "result.json").read_text())
        assert rec["seed"] == task_seed(7, k) and rec["status"] == "done" and rec["attempts"] == 1
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert set(manifest["tasks"]) == set(TASKS)
    assert all(t["status"] == "done" for t in manifest["tasks"].values())
    # no scratch or attempt markers left behind
    assert sorted(p.name for p in (tmp_path / "run" / "tasks").iterdir()) == sorted(TASKS)


def test_second_run_does_no_work_and_a_different_command_is_refused(tmp_path):
    d = tmp_path / "run"
    run_tasks(draw_task, TASKS, d, seed=7, scheduler="serial", progress=False)
    n_calls = len(list((d / "calls").iterdir()))
    again = run_tasks(draw_task, TASKS, d, seed=7, scheduler="serial", progress=False)
    assert len(list((d / "calls").iterdir())) == n_calls == len(TASKS)
    assert sorted(again.skipped) == sorted(TASKS)
    assert again.results == run_tasks(draw_task, TASKS, d, seed=7, scheduler="serial", progress=False).results
    with pytest.raises(RunError, match="holds a different run .*seed"):
        run_tasks(draw_task, TASKS, d, seed=8, scheduler="serial", progress=False)
    with pytest.raises(RunError, match="tasks"):
        run_tasks(draw_task, {"rep000": {"n": 6}}, d, seed=7, scheduler="serial", progress=False)


def test_interrupted_run_resumes_only_the_unfinished_tasks(tmp_path):
    d = tmp_path / "run"
    run_tasks(draw_task, TASKS, d, seed=7, scheduler="serial", progress=False)
    # as if the machine died: one task never finished, another left scratch behind
    import shutil
    shutil.rmtree(d / "tasks" / "rep002")
    (d / "tasks" / ".rep002.deadbeef").mkdir()
    shutil.rmtree(d / "calls")
    run = run_tasks(draw_task, TASKS, d, seed=7, scheduler="serial", progress=False)
    assert [p.name.split(".")[0] for p in (d / "calls").iterdir()] == ["rep002"]
    assert not (d / "tasks" / ".rep002.deadbeef").exists()
    assert len(run.results) == len(TASKS)


def test_failed_task_is_recorded_in_one_line_and_does_not_stop_the_others(tmp_path):
    tasks = {"a": {}, "b": {"bad": True}, "c": {}}
    run = run_tasks(flaky_task, tasks, tmp_path / "run", seed=1, scheduler="serial", progress=False)
    assert set(run.results) == {"a", "c"}
    assert run.failed == {"b": "ValueError: replicate b: simulated DV has 3 negative values second line"}
    assert "Traceback" in (run.task_dir("b") / "traceback.txt").read_text()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["tasks"]["b"]["status"] == "failed" and "negative" in manifest["tasks"]["b"]["error"]
    # a rerun keeps the failure unless asked to retry it
    again = run_tasks(flaky_task, tasks, tmp_path / "run", seed=1, scheduler="serial", progress=False)
    assert "b" in again.skipped and again.failed
    retried = run_tasks(flaky_task, tasks, tmp_path / "run", seed=1, scheduler="serial", progress=False,
                        retry_failed=True)
    assert retried.skipped == ["a", "c"]


def test_bad_keys_are_refused(tmp_path):
    with pytest.raises(RunError, match="folder names"):
        run_tasks(flaky_task, {"a/b": {}}, tmp_path, seed=1, scheduler="serial", progress=False)
    with pytest.raises(RunError, match="folder names"):
        run_tasks(flaky_task, {".hidden": {}}, tmp_path, seed=1, scheduler="serial", progress=False)


def test_unreachable_scheduler_is_one_line(tmp_path, monkeypatch):
    from bayesnlme import runner

    monkeypatch.setattr(runner, "CONNECT_TIMEOUT", "2s")
    with pytest.raises(RunError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:1"):
        run_tasks(flaky_task, {"a": {}}, tmp_path, seed=1, scheduler="tcp://127.0.0.1:1", progress=False)


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=50) as cluster, Client(cluster) as c:
        yield c


def test_cluster_gives_the_serial_results(tmp_path, client):
    serial = run_tasks(draw_task, TASKS, tmp_path / "serial", seed=11, scheduler="serial", progress=False)
    dask = run_tasks(draw_task, TASKS, tmp_path / "dask", seed=11, scheduler=client, progress=False,
                     shared={"offset": 0.5})
    assert list(dask.tasks) == list(TASKS)
    for k in TASKS:
        assert dask.results[k]["mean"] == pytest.approx(serial.results[k]["mean"] + 0.5, abs=1e-12)
        np.testing.assert_array_equal(np.load(dask.task_dir(k) / "x.npy"),
                                      np.load(serial.task_dir(k) / "x.npy") + 0.5)
    workers = {t["worker"] for t in dask.tasks.values()}
    assert len(workers) == 2, "both workers took tasks"


def test_killed_worker_task_is_retried_and_the_run_completes(tmp_path, client):
    marker = str(tmp_path / "killed-once")
    tasks = {f"k{i}": {"marker": marker} for i in range(4)}
    run = run_tasks(suicidal_task, tasks, tmp_path / "run", seed=3, scheduler=client, progress=False)
    assert os.path.exists(marker), "the task really killed its worker"
    assert set(run.results) == set(tasks)
    assert run.retried == ["k1"]
    assert run.results["k1"]["seed"] == task_seed(3, "k1")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["tasks"]["k1"]["attempts"] == 2 and "worker died" in manifest["tasks"]["k1"]["retried"]
    assert manifest["tasks"]["k0"]["attempts"] == 1


def leaky_task(*, key, seed, workdir):
    """Leaves a temporary file behind, as PyTensor's numba backend does for every function it builds."""
    import tempfile

    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(b"def f(): pass\n")
    return {"tmp": os.path.dirname(f.name)}


def test_a_local_clusters_workers_keep_temporary_files_in_a_folder_removed_with_it(tmp_path):
    run = run_tasks(leaky_task, {"a": {}}, tmp_path / "run", seed=1, scheduler="local", n_workers=1,
                    progress=False)
    folder = run.results["a"]["tmp"]
    assert os.path.basename(folder).startswith("bayesnlme-workers-")
    assert not os.path.exists(folder)
