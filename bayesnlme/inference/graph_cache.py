"""Compiled PyTensor functions whose graph rewriting is done once per machine, not once in every process.

Compiling a log-density has two parts: PyTensor rewrites the graph (canonical forms, fusion of
elementwise loops, in-place operations), then its numba linker turns the rewritten graph into code.
The code is already kept on disk (PyTensor's numba cache), but the rewriting ran again in every
process: on the theophylline model ~1.4 s of the sampler's log-density, ~0.3 s of the pointwise
log-likelihood, a large part of a warm ``bayesnlme fit``.

:func:`compile_function` keeps the rewritten graph on disk, under PyTensor's ``base_compiledir``
(beside the numba cache, so that a fresh ``base_compiledir`` is a cold cache for both).  The key is a
hash of the graph *before* rewriting, pickled: every operation with its parameters, every constant with
its values, the inputs in order; data containers (shared variables: the DV and the design arrays lifted
out by :mod:`bayesnlme.inference.lift`) by name and type, not by value; and the versions and settings
that change what rewriting makes, with a hash of this package's source (its Ops and their rewrites are
pickled by name, not by code).  Two graphs with the same key are the same computation, so a hit can
only be the right function; anything the pickle does not capture the same way twice (a new kind of Op)
can only make a miss.  The stored graph refers to its data containers by name too, and a hit is
linked to the *current* containers: PyTensor's own pickling of a compiled function would carry the data
it was compiled with and silently reuse it (checked: it does).

A graph that cannot be pickled, or a stored file that cannot be read, is compiled as before (the
file is then written again); nothing here can change a result, only the time taken.

The folder is pruned (:func:`prune`) when a process first stores a graph: files not used for
:data:`MAX_AGE_DAYS` days (PyTensor's own age limit for its C modules) go, then the least recently used
until the folder holds at most :data:`MAX_BYTES`.  A hit marks its file used (its modification time),
so a graph in use is not removed for its age; keys change with every version of this package or of
PyTensor, PyMC, numba or NumPy, and the files of old versions would otherwise stay for ever.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import pickle
import sys
import time
import weakref
from importlib import metadata
from pathlib import Path

import numpy as np
import pytensor
from pymc.pytensorf import compile as compile_pymc
from pytensor.compile.function.types import FunctionMaker
from pytensor.compile.io import In
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Apply, Variable
from pytensor.graph.traversal import graph_inputs
from pytensor.tensor import as_tensor
from pytensor.tensor.math import variadic_add

from bayesnlme.atomic import OutputError, write_atomic

_FACTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: Bump when what is stored, or how it is linked, changes in a way the key does not show.
_VERSION = "1"
_PACKAGES = ("pytensor", "pymc", "numba", "numpy")
#: PyTensor settings that change what rewriting makes of a graph.
#: Stored graphs unused for this long are removed (PyTensor's ``cmodule__age_thresh_use``: 24 days).
MAX_AGE_DAYS = 24
#: Largest size of the folder after pruning (least recently used first); one graph is ~0.05-1 MB.
MAX_BYTES = 256 * 2**20
_PRUNED: set = set()
_FLAGS = ("floatX", "optimizer", "optimizer_including", "optimizer_excluding", "optimizer_requiring",
          "numba__fastmath", "cast_policy", "compute_test_value", "on_opt_error")


class _KeyPickler(pickle.Pickler):
    """A graph's pickle for its key: data containers by name and type; Variables and Apply nodes without
    what records their history rather than the computation: ``auto_name`` (a process-wide counter: the
    same graph would get another key after other graphs were built), a constant's ``_unique_value`` (a
    cache PyTensor fills when a compile first asks: a graph sharing constants with one compiled before
    in the process got another key) and the tag's ``trace`` (the caller's file and line: a fit from a
    script and from the command line would not share a key)."""

    def persistent_id(self, obj):
        if isinstance(obj, SharedVariable):
            return ("shared", obj.name, str(obj.type))
        return None

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray) and obj.dtype != object:
            # by value only: protocol 5 writes a read-only array (a constant's data, once compiled) in
            # another form than a writeable one
            return _array, (obj.dtype.str, obj.shape, obj.tobytes())
        if isinstance(obj, (Variable, Apply)):
            reduced = obj.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
            state = dict(reduced[2])
            state.pop("auto_name", None)
            state.pop("_unique_value", None)   # a constant's cached property, set once a compile asked
            if "tag" in state:
                state["tag"] = {k: v for k, v in vars(state["tag"]).items() if k != "trace"}
            return (reduced[0], reduced[1], state, *reduced[3:])
        return NotImplemented


def _array(dtype: str, shape: tuple, data: bytes):
    """An array from its key's pickle (keys are hashed, never loaded: here for the pickle's reference)."""
    return np.frombuffer(data, dtype=dtype).reshape(shape)


class _GraphPickler(pickle.Pickler):
    """The rewritten graph for the store: data containers by name (linked to the current ones on load)."""

    def persistent_id(self, obj):
        if isinstance(obj, SharedVariable):
            return ("shared", obj.name)
        return None


class _GraphUnpickler(pickle.Unpickler):
    def __init__(self, file, shared: dict):
        super().__init__(file)
        self._shared = shared

    def persistent_load(self, pid):
        return self._shared[pid[1]]   # KeyError: a container this graph lacks (treated as unreadable)


def cache_dir() -> Path:
    """Where rewritten graphs are kept: ``<PyTensor base_compiledir>/bayesnlme_graphs``."""
    return Path(pytensor.config.base_compiledir) / "bayesnlme_graphs"


def _containers(outputs) -> dict | None:
    """The graph's data containers by name, or None where two differ and share a name (or have none)."""
    found: dict = {}
    for var in graph_inputs(outputs):
        if isinstance(var, SharedVariable):
            if var.name is None or found.setdefault(var.name, var) is not var:
                return None
    return found


@functools.cache
def _source_hash() -> str:
    """SHA-256 of bayesnlme's Python source (~5 ms, once per process)."""
    digest, root = hashlib.sha256(), Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def graph_key(inputs, outputs, check_bounds: bool, mode: str, extra: tuple = ()) -> str | None:
    """The key of compiling ``outputs`` from ``inputs`` in ``mode``; None where the graph cannot be pickled.

    ``extra``: what else the compiled result depends on, as JSON values (hashed with the graph; not pickled
    with it: a pickle's bytes depend on which of its strings are the same object)."""
    buffer = io.BytesIO()
    try:
        _KeyPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump((list(inputs), list(outputs)))
        if extra:
            buffer.write(b"\0" + json.dumps(list(extra)).encode())
    except (pickle.PicklingError, TypeError, AttributeError, RecursionError, ValueError):
        return None
    versions = [f"{name}={metadata.version(name)}" for name in _PACKAGES]
    flags = [f"{flag}={getattr(pytensor.config, flag, None)}" for flag in _FLAGS]
    context = "\0".join([_VERSION, sys.version, mode, f"check_bounds={check_bounds}", _source_hash(), *versions,
                         *flags])
    return hashlib.sha256(context.encode() + b"\0" + buffer.getvalue()).hexdigest()


def compile_function(inputs, outputs, *, model, mode: str = "NUMBA", on_unused_input: str = "raise"):
    """``pymc.pytensorf.compile(inputs, outputs, mode=mode)`` in ``model``'s context, its rewritten graph
    kept on disk and reused by any process compiling the same graph (any data of the same shape).

    Parameters
    ----------
    inputs : list of Variable
        The explicit inputs, in call order (no data containers: those are read from their shared
        variables at each call, as in a normal compile).
    outputs : list of Variable
    model : pymc.Model
        Whose ``check_bounds`` decides how parameter checks compile (as in ``model.compile_fn``).
    mode : str
        PyTensor mode; ``"NUMBA"`` for every use in this package.
    on_unused_input : {"raise", "ignore"}

    Returns
    -------
    pytensor.compile.function.types.Function
        Called like the function :func:`pymc.pytensorf.compile` returns (same outputs, same values).
    """
    inputs, outputs = list(inputs), list(outputs)
    shared = _containers(outputs)
    key = None if shared is None else graph_key(inputs, outputs, model.check_bounds, mode)
    path = None if key is None else cache_dir() / f"{key}.pkl"
    if path is not None and path.exists():
        fn = _load(path, len(inputs), shared, on_unused_input)
        if fn is not None:
            return fn
    with model:
        fn = compile_pymc(inputs, outputs, mode=mode, on_unused_input=on_unused_input)
    if path is not None and _store(path, fn):
        # the stored graph, linked as every later process will link it: numba's cache key of a function
        # follows its graph's node order, which an unpickled graph need not share with the one rewriting
        # left (the likelihood's objective: two keys, so each process after the first compiled it again)
        stored = _load(path, len(inputs), shared, on_unused_input)
        if stored is not None:
            return stored
    return fn


def _store(path: Path, fn) -> bool:
    """Write ``fn``'s rewritten graph to ``path``; whether it was written."""
    buffer = io.BytesIO()
    try:
        # without the rewriting's features (shape inference, merge tables: 8x the graph's size on disk);
        # linking attaches what it needs again
        fgraph = fn.maker.fgraph.clone_get_equiv(check_integrity=True, attach_feature=False)[0]
        _GraphPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump((fgraph, fn.maker.mode))
    except (pickle.PicklingError, TypeError, AttributeError, RecursionError, ValueError):
        return False
    try:
        write_atomic(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))   # makes the folder too
    except (OSError, OutputError):   # a read-only or full cache folder costs time, never a result
        return False
    if path.parent not in _PRUNED:
        _PRUNED.add(path.parent)
        prune(path.parent)
    return True


def prune(folder: Path | None = None, *, max_age_days: float | None = None, max_bytes: int | None = None) -> list:
    """Remove stored graphs unused for ``max_age_days`` (default :data:`MAX_AGE_DAYS`), then the least
    recently used until the folder holds at most ``max_bytes`` (default :data:`MAX_BYTES`).

    Returns the names removed.  A file another process removes or replaces meanwhile is skipped; a file
    removed while another process wanted it costs that process a compile, never a result.
    """
    folder = cache_dir() if folder is None else Path(folder)
    max_age = (MAX_AGE_DAYS if max_age_days is None else max_age_days) * 86400.0
    limit = MAX_BYTES if max_bytes is None else max_bytes
    files = []
    for entry in os.scandir(folder) if folder.is_dir() else ():
        if entry.name.endswith(".pkl"):
            try:
                st = entry.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, entry.name))
    files.sort()   # least recently used first
    now, total, removed = time.time(), sum(f[1] for f in files), []
    for mtime, size, name in files:
        if now - mtime <= max_age and total <= limit:
            break
        try:
            (folder / name).unlink()
        except OSError:
            continue
        total -= size
        removed.append(name)
    return removed


def _load(path: Path, n_inputs: int, shared: dict, on_unused_input: str):
    """The function linked from a stored rewritten graph, or None where the file cannot be used."""
    try:
        with open(path, "rb") as file:
            fgraph, mode = _GraphUnpickler(file, shared).load()
        try:
            os.utime(path)   # used: kept by prune() for MAX_AGE_DAYS more
        except OSError:
            pass
        explicit, implicit = fgraph.inputs[:n_inputs], fgraph.inputs[n_inputs:]
        if len(explicit) != n_inputs or not all(isinstance(v, SharedVariable) for v in implicit):
            return None
        ins = [In(v) for v in explicit] + [In(v, value=v.container, implicit=True, mutable=False)
                                           for v in implicit]
        # the stored graph is the rewritten one: no rewriting again (it holds the in-place operations
        # rewriting put there, hence accept_inplace)
        maker = FunctionMaker(ins, list(fgraph.outputs), mode, fgraph=fgraph, no_fgraph_prep=True,
                              accept_inplace=True, on_unused_input=on_unused_input)
        return maker.create([i.value for i in ins])
    except Exception:  # noqa: BLE001 - an unreadable or stale file is compiled again, whatever broke it
        return None


def logp_factors(model) -> list:
    """``model.logp(sum=False)``: the log-density terms of the free variables, the observed variables and
    the potentials, in that order, built once per model (PyMC's log-probability rewriting takes ~0.2 s
    on a small model, and the start check and the sampler's compile both need the terms).

    The graphs are shared: rewrite a copy (``pytensor.clone_replace``), never these.  They are built again
    when the model gained or lost a variable or potential since (e.g. the refitter's dropout potential).
    """
    parts = (*model.free_RVs, *model.observed_RVs, *model.potentials, *model.value_vars,
             *model.rvs_to_transforms.values())
    known = _FACTORS.get(model)
    if known is None or len(known[0]) != len(parts) or any(a is not b for a, b in zip(known[0], parts)):
        with pytensor.config.change_flags(traceback__limit=0):   # as build.model.without_traces
            known = _FACTORS[model] = (parts, tuple(model.logp(sum=False)))
    return list(known[1])


def model_logp(model):
    """``model.logp()`` (the joint log-density, Jacobians included), as PyMC sums it, from
    :func:`logp_factors`."""
    total = variadic_add(*(as_tensor(factor, allow_xtensor_conversion=True).sum() for factor in logp_factors(model)))
    total.name = f"__logp_{model.name}" if model.name else "__logp"
    return total
