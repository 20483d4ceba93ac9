"""Many fits at once: independent tasks on Dask distributed, each result kept in a run directory.

Covariate model building, simulation-based calibration and replicate trial simulation are sets of
independent tasks (one fit each).  :func:`run_tasks` submits them to a :class:`distributed.Client`
-- a :class:`distributed.LocalCluster` sized to the machine by default, an existing cluster by
address (``tcp://HOST:8786`` or ``DASK_SCHEDULER_ADDRESS``) -- or runs them one after the other in
this process (``scheduler="serial"``, for tests and debugging).  Dask does the scheduling, the
retries and the memory policing; this module adds what a pharmacometric run needs on top:

* **A run directory** ``RUN/`` with ``manifest.json`` (the run's settings and every task's status,
  seed, attempts, worker, time and one-line error) and ``tasks/KEY/`` per task: ``result.json`` (the
  task's summary) plus whatever files the task wrote (e.g. ``fit.nc``).  A task works in a hidden
  scratch folder ``tasks/.KEY.<random>/`` that is renamed to ``tasks/KEY/`` only when complete, on
  the worker, as soon as the task ends: a finished task survives the death of the client, of a
  worker or of the machine, and a half-finished one leaves only scratch that the next run removes.
* **Resume.** Running the same command on the same directory skips every task that has a
  ``tasks/KEY/`` folder (done, or failed for a reason in its data or spec) and runs the rest;
  ``retry_failed=True`` runs the failed ones again.  A directory made by a different command (other
  task function, seed or inputs) is refused rather than mixed.
* **Bounded retries.** A worker that dies mid-task (killed, out of memory) is restarted by its nanny
  and Dask reruns the task, at most ``distributed.scheduler.allowed-failures`` times (3 by default);
  each attempt leaves a marker, so the manifest says how often a task was tried.  A task whose own
  code raises is *not* retried: its one-line message is recorded and the other tasks go on.
* **Seeds from keys.** Task ``KEY`` gets the seed :func:`task_seed` ``(run seed, KEY)``, never one
  that depends on the order of scheduling: the serial runner and any cluster give the same results.
* **Memory.** Each local worker gets ``memory_limit`` (default: the machine's memory over the number
  of workers); Dask's nanny restarts a worker that passes 95% of it, so one runaway fit cannot take
  the machine down.

A cluster's workers must see the run directory (a shared file system, as on any HPC cluster); the
runner checks this before it submits anything.

References: Dask distributed, https://distributed.dask.org (futures, ``as_completed``, nannies,
``allowed-failures``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import socket
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from bayesnlme.atomic import private_temporary_folder, write_text_atomic
from bayesnlme.errors import BayesNLMEInputError

MANIFEST = "manifest.json"
TASKS = "tasks"
RESULT = "result.json"
_WORKER_TMP: dict = {}   # id(LocalCluster) -> its workers' temporary folder


class RunError(BayesNLMEInputError):
    """A run cannot start or resume (wrong directory, unreachable cluster, bad task keys)."""


def task_seed(run_seed: int, key: str) -> int:
    """The seed of task ``key`` in a run with seed ``run_seed`` (independent of scheduling order).

    Examples
    --------
    >>> task_seed(1, "rep0001") == task_seed(1, "rep0001") != task_seed(2, "rep0001")
    True
    """
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return int(np.random.SeedSequence([int(run_seed), digest]).generate_state(1)[0])


def digest(obj) -> str:
    """A short SHA-256 of a JSON-able object (DataFrames by their values), to recognise a run's inputs."""
    def default(o):
        if hasattr(o, "to_csv"):
            return o.to_csv(index=False)
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, (np.integer, np.floating)):
            return o.item()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"cannot describe a {type(o).__name__} in a run's inputs")
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=default).encode()).hexdigest()[:16]


@dataclass
class RunResult:
    """What a run produced: one row per task, in the order the tasks were given.

    Attributes
    ----------
    run_dir : pathlib.Path
    tasks : dict of str -> dict
        Per task key: ``status`` ("done" or "failed"), ``seed``, ``attempts``, ``elapsed_s``,
        ``worker``, ``error`` (one line, failed tasks) and ``result`` (the task's summary dict).
    skipped : list of str
        Keys finished by an earlier run of the same command (not run again).
    """

    run_dir: Path
    tasks: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)

    @property
    def results(self) -> dict:
        """Key -> summary dict of every task that is done."""
        return {k: t["result"] for k, t in self.tasks.items() if t["status"] == "done"}

    @property
    def failed(self) -> dict:
        """Key -> one-line error of every failed task."""
        return {k: t["error"] for k, t in self.tasks.items() if t["status"] == "failed"}

    @property
    def retried(self) -> list:
        """Keys of tasks that needed more than one attempt (a worker died under them)."""
        return [k for k, t in self.tasks.items() if t.get("attempts", 1) > 1]

    def task_dir(self, key: str) -> Path:
        """The folder holding task ``key``'s files."""
        return self.run_dir / TASKS / key


def _check_keys(keys) -> list[str]:
    keys = list(keys)
    bad = [k for k in keys if not isinstance(k, str) or not k or k.startswith(".")
           or any(c in k for c in '/\\:*?"<>|\n') or k != k.strip()]
    if bad:
        raise RunError(f"task keys must be non-empty folder names without / \\ : * ? \" < > | or a leading "
                       f"dot; bad: {bad[:5]}")
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise RunError(f"task keys must be unique; repeated: {dup[:5]}")
    return keys


def execute_task(func: Callable, key: str, seed: int, run_dir: str, shared: dict, kwargs: dict) -> dict:
    """Run one task where it is scheduled and keep its result in ``run_dir/tasks/key/``.

    ``func(key=..., seed=..., workdir=..., **shared, **kwargs)`` writes its files into ``workdir``
    and returns a JSON-able dict; that dict goes to ``result.json``.  An exception from ``func`` is
    recorded (``error.json`` holds the message and traceback) and not raised, so that it is not
    retried: a fault in the data or spec would fail again.  Runs on a Dask worker or in-process.
    """
    tasks = Path(run_dir) / TASKS
    final = tasks / key
    if final.exists():                      # a duplicate attempt (or a concurrent resume) got there first
        return _read_task(final)
    attempts = tasks / f".{key}.attempts"
    attempts.mkdir(parents=True, exist_ok=True)
    (attempts / uuid.uuid4().hex).touch()   # one marker per attempt: survives a worker killed below
    scratch = tasks / f".{key}.{uuid.uuid4().hex}"
    scratch.mkdir()
    record = {"key": key, "seed": seed, "worker": f"{socket.gethostname()}:{os.getpid()}",
              "attempts": len(list(attempts.iterdir()))}
    t0 = time.perf_counter()
    try:
        result = func(key=key, seed=seed, workdir=scratch, **shared, **kwargs)
        record.update(status="done", result=result)
    except Exception as exc:  # noqa: BLE001 - a task's own failure is data for the manifest, not a crash
        message = " ".join(str(exc).split()) or type(exc).__name__
        if not isinstance(exc, BayesNLMEInputError):
            message = f"{type(exc).__name__}: {message}"
        record.update(status="failed", error=message, result=None)
        (scratch / "traceback.txt").write_text(traceback.format_exc())
    record["elapsed_s"] = round(time.perf_counter() - t0, 3)
    (scratch / RESULT).write_text(json.dumps(record, indent=1, default=_jsonable))
    try:
        os.rename(scratch, final)           # atomic: the task is either wholly there or not at all
    except OSError:                         # another attempt finished first; keep its result
        shutil.rmtree(scratch, ignore_errors=True)
        return _read_task(final)
    shutil.rmtree(attempts, ignore_errors=True)
    return record


def _jsonable(o):
    if isinstance(o, (np.integer, np.floating, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"a task returned a {type(o).__name__}, which cannot be saved in result.json")


def _read_task(folder: Path) -> dict:
    return json.loads((folder / RESULT).read_text())


CONNECT_TIMEOUT = "20s"   # how long to try a scheduler address before the one-line error


def _worker_sees(path: str) -> bool:
    return os.path.isdir(path)


def _client(scheduler, n_workers, memory_limit):
    """A (client, cluster-or-None) pair for ``scheduler``: None -> env address or a LocalCluster."""
    # distributed is imported only here: the serial runner and the rest of the package do not need it
    from distributed import Client, LocalCluster

    if isinstance(scheduler, Client):
        return scheduler, None, False
    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address and address != "local":
        try:
            return Client(address, timeout=CONNECT_TIMEOUT), None, True
        except (OSError, TimeoutError) as exc:
            raise RunError(f"cannot reach the Dask scheduler at {address} ({exc}); start it with "
                           f"`dask scheduler` or omit --scheduler for a local cluster") from None
    n = n_workers or os.cpu_count() or 1
    limit = memory_limit if memory_limit is not None else "auto"
    # workers' temporary files (PyTensor's numba backend leaves ~60 a fit) in a folder removed by _close
    tmp = private_temporary_folder("workers")
    try:
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, memory_limit=limit,
                               dashboard_address=None, silence_logs=50, env={"TMPDIR": tmp})
        _WORKER_TMP[id(cluster)] = tmp
    except RuntimeError as exc:   # most often: a script without a __main__ guard (workers re-import it)
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunError(f"could not start a local Dask cluster of {n} workers ({' '.join(str(exc).split())[:200]}); "
                       f"in a script, run it under `if __name__ == \"__main__\":` (worker processes import "
                       f"the script), or use scheduler=\"serial\"") from None
    return Client(cluster), cluster, True


def _close(client, local) -> None:
    """Close a client this module made, and its LocalCluster (with the workers' temporary folder)."""
    client.close()
    if local is not None:
        local.close()
        shutil.rmtree(_WORKER_TMP.pop(id(local), ""), ignore_errors=True)


@contextlib.contextmanager
def cluster(scheduler=None, n_workers: int | None = None, memory_limit=None):
    """One cluster for several :func:`run_tasks` calls (e.g. the steps of a covariate search).

    Yields what to pass as ``scheduler``: ``"serial"`` unchanged, else a :class:`distributed.Client`
    (a new LocalCluster, or the cluster at an address), closed on exit if this function made it.
    """
    if scheduler == "serial":
        yield "serial"
        return
    client, local, own = _client(scheduler, n_workers, memory_limit)
    try:
        yield client
    finally:
        if own:
            _close(client, local)


def _load_manifest(run_dir: Path, identity: dict) -> dict:
    path = run_dir / MANIFEST
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: unreadable manifest ({exc}); move the run directory aside or "
                       f"choose another") from None
    if old.get("identity") != identity:
        diff = [k for k in identity if old.get("identity", {}).get(k) != identity[k]]
        raise RunError(f"{run_dir}: holds a different run (its {', '.join(diff) or 'settings'} differ); "
                       f"choose a new run directory, or rerun with the settings it was made with")
    return old


def run_tasks(func: Callable, tasks: dict, run_dir, *, seed: int, shared: dict | None = None,
              scheduler=None, n_workers: int | None = None, memory_limit=None,
              retry_failed: bool = False, progress: bool = True, label: str = "tasks",
              info: dict | None = None) -> RunResult:
    """Run independent tasks on Dask (or serially), keeping every result in ``run_dir``.

    Parameters
    ----------
    func : callable
        A module-level function ``func(*, key, seed, workdir, **shared, **kwargs) -> dict``; it
        writes any files into ``workdir`` (a :class:`pathlib.Path`) and returns a JSON-able summary.
    tasks : dict of str -> dict
        Task key (a folder name, e.g. ``"rep0001"``) -> that task's keyword arguments (JSON-able).
    run_dir : path
        The run directory (created; an existing one of the same command is resumed).
    seed : int
        Run seed; task ``key`` gets ``task_seed(seed, key)``.
    shared : dict, optional
        Keyword arguments common to every task (a spec, a design DataFrame), sent to each worker once.
    scheduler : {None, "serial", "local"}, str or distributed.Client
        ``"serial"``: in this process, one task after another.  ``None``: the cluster at
        ``DASK_SCHEDULER_ADDRESS`` if set, else a new LocalCluster.  ``"local"``: a new LocalCluster.
        A ``tcp://HOST:PORT`` address or a Client: that cluster.
    n_workers : int, optional
        LocalCluster size (single-threaded worker processes); default the number of CPU cores.
    memory_limit : str or int, optional
        Per-worker memory limit of a LocalCluster (e.g. ``"4GiB"``); default machine memory / workers.
    retry_failed : bool
        Run again the tasks that failed in an earlier run (default: keep their failure).
    progress : bool
        Show a progress bar (done / running / failed, elapsed, remaining) in a terminal or notebook.
    label : str
        What the tasks are, for the progress bar and the manifest (e.g. ``"SBC replicates"``).
    info : dict, optional
        JSON-able description of the run saved in the manifest (e.g. the spec and design digest);
        part of the run's identity, so a different ``info`` refuses to resume the directory.

    Returns
    -------
    RunResult

    Examples
    --------
    >>> def square(*, key, seed, workdir, x):
    ...     return {"x2": x * x}
    >>> import tempfile
    >>> run = run_tasks(square, {"a": {"x": 2}, "b": {"x": 3}}, tempfile.mkdtemp(), seed=1,
    ...                 scheduler="serial", progress=False)
    >>> run.results["b"]["x2"]
    9
    """
    keys = _check_keys(tasks)
    shared = dict(shared or {})
    run_dir = Path(run_dir).resolve()
    identity = {"function": f"{func.__module__}.{func.__qualname__}", "seed": int(seed),
                "inputs": digest({"shared": shared, "info": info or {}}),
                "tasks": digest({k: tasks[k] for k in keys})}
    old = _load_manifest(run_dir, identity)
    (run_dir / TASKS).mkdir(parents=True, exist_ok=True)
    for stale in (run_dir / TASKS).glob(".*.*"):   # scratch of a task interrupted in an earlier run
        if stale.is_dir() and not stale.name.endswith(".attempts"):
            shutil.rmtree(stale, ignore_errors=True)

    out = RunResult(run_dir=run_dir)
    todo = []
    for k in keys:
        folder = run_dir / TASKS / k
        if folder.exists():
            record = _read_task(folder)
            if record["status"] == "failed" and retry_failed:
                shutil.rmtree(folder)
            else:
                out.tasks[k] = record
                out.skipped.append(k)
                continue
        todo.append(k)

    manifest = {"identity": identity, "label": label, "info": info or {},
                "created": old.get("created") or _now(), "runs": old.get("runs", []),
                "tasks": {}}
    run_entry = {"started": _now(), "scheduler": "serial" if scheduler == "serial" else None,
                 "to_run": len(todo), "skipped": len(out.skipped)}
    manifest["runs"].append(run_entry)

    def save_manifest(final=False):
        manifest["tasks"] = {k: _manifest_row(out.tasks.get(k), k, seed) for k in keys}
        if final:
            run_entry["finished"] = _now()
        write_text_atomic(run_dir / MANIFEST, json.dumps(manifest, indent=1, default=_jsonable))

    save_manifest()
    bar = _Progress(len(keys), len(out.skipped), label, progress)
    try:
        if scheduler == "serial":
            for k in todo:
                bar.update(running=1)
                out.tasks[k] = execute_task(func, k, task_seed(seed, k), str(run_dir), shared, tasks[k])
                bar.finished(out.tasks[k]["status"] == "failed", running=0)
                save_manifest()
        elif todo:
            _run_on_dask(func, todo, tasks, shared, seed, run_dir, out, bar, save_manifest,
                         scheduler, n_workers, memory_limit, run_entry)
    finally:
        bar.close()
        save_manifest(final=True)
    out.tasks = {k: out.tasks[k] for k in keys if k in out.tasks}   # the order the tasks were given
    return out


def _run_on_dask(func, todo, tasks, shared, seed, run_dir, out, bar, save_manifest, scheduler,
                 n_workers, memory_limit, run_entry):
    from distributed import as_completed  # see _client: distributed is only needed for a cluster
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    client, cluster, own = _client(scheduler, n_workers, memory_limit)
    try:
        run_entry["scheduler"] = client.scheduler.address
        blind = [w for w, ok in client.run(_worker_sees, str(run_dir)).items() if not ok]
        if blind:
            raise RunError(f"{run_dir}: the Dask workers {blind[:3]} cannot see the run directory; "
                           f"use a folder on a file system shared with the cluster")
        shared_f = {k: client.scatter(v, broadcast=True) for k, v in shared.items()} if shared else {}
        futures = {}
        for k in todo:
            # pure=False: a task's identity is its key and seed, and a retry must really run again
            fut = client.submit(execute_task, func, k, task_seed(seed, k), str(run_dir), shared_f, tasks[k],
                                key=f"bayesnlme-{k}-{uuid.uuid4().hex[:8]}", pure=False, retries=0)
            futures[fut] = k
        last = 0.0
        for fut in as_completed(futures):
            k = futures[fut]
            try:
                out.tasks[k] = fut.result()
            except (KilledWorker, FutureCancelledError, OSError) as exc:
                out.tasks[k] = _lost(run_dir, k, seed, exc)
            now = time.monotonic()
            if now - last > 1.0:     # scheduler round trip: at most once a second
                last = now
                running = sum(len(v) for v in client.processing().values())
            else:
                running = None
            bar.finished(out.tasks[k]["status"] == "failed", running=running)
            save_manifest()
    finally:
        if own:
            _close(client, cluster)


def _lost(run_dir: Path, key: str, seed: int, exc) -> dict:
    """A task whose workers kept dying: recorded as failed (kept out of tasks/, so a rerun tries again)."""
    attempts = run_dir / TASKS / f".{key}.attempts"
    n = len(list(attempts.iterdir())) if attempts.exists() else 0
    reason = ("its worker died each time (out of memory? see the worker memory limit)"
              if type(exc).__name__ == "KilledWorker" else f"{type(exc).__name__}: {exc}")
    return {"key": key, "seed": seed, "status": "failed", "attempts": n, "error": f"lost after {n} attempts: "
            f"{reason}", "result": None, "elapsed_s": None, "worker": None}


def _manifest_row(record, key, seed) -> dict:
    if record is None:
        return {"status": "pending", "seed": task_seed(seed, key)}
    row = {k: record.get(k) for k in ("status", "seed", "attempts", "worker", "elapsed_s")}
    if record.get("attempts", 1) > 1:
        row["retried"] = f"{record['attempts'] - 1} time(s): a worker died during the task"
    if record["status"] == "failed":
        row["error"] = record.get("error")
    return row


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class _Progress:
    """Tasks done / running / failed, elapsed and estimated remaining; rich draws it in a terminal or notebook."""

    def __init__(self, total: int, done: int, label: str, show: bool):
        self.total, self.done, self.failed, self.running = total, done, 0, 0
        self.start_done, self.t0 = done, time.monotonic()
        self.label, self._bar = label, None
        if show and total > done:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # rich comes with PyMC

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[counts]}"),
                                 TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), transient=False)
            self._task = self._bar.add_task(label, total=total, completed=done, counts="", eta="")
            self._bar.start()
            self._refresh()

    def update(self, running=None):
        if running is not None:
            self.running = running
        self._refresh()

    def finished(self, failed: bool, running=None):
        self.done += 1
        self.failed += int(failed)
        if running is not None or self.running > self.total - self.done:
            running = min(self.running if running is None else running, self.total - self.done)
        self.update(running)

    def _refresh(self):
        if self._bar is None:
            return
        n = self.done - self.start_done
        left = self.total - self.done
        eta = ""
        if n and left:
            eta = f"~{_clock((time.monotonic() - self.t0) / n * left)} left"
        counts = f"{self.done}/{self.total} done · {self.running} running · {self.failed} failed"
        self._bar.update(self._task, completed=self.done, counts=counts, eta=eta)

    def close(self):
        if self._bar is not None:
            self._bar.stop()


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
