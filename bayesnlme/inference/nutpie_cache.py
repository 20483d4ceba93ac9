"""nutpie's compiled model with its two C callbacks kept in PyTensor's on-disk numba cache.

nutpie (``nutpie.compile_pymc_model``) wraps the numba functions PyTensor compiles for the
log-density with its gradient, and for expanding a draw to the stored variables, in two
``numba.cfunc`` callbacks that its Rust sampler calls.  numba cannot cache those callbacks (they
close over objects made at run time), so every process compiled them again: 6-9 s on the
1-compartment theophylline model, more than half of a warm ``fit_model``.

Here the callbacks are generated as source text with every constant written out (dimensions, word
offsets into nutpie's user-data record, dtypes of the data containers) and registered with
PyTensor's cache locator under a key made of that text, PyTensor's own key for the function they
call and the nutpie version; a second process with the same model structure and data shape loads
them from the cache in ~0.1 s.  The C signatures and the user-data record are nutpie's, so
``CompiledPyMCModel.with_data`` (DV swapped for refits) works unchanged, and the draws are those
of nutpie's own wrappers bit for bit (``tests/test_nutpie_cache.py``).

Even with every compiled function cached, a process still derived the log-density (PyMC), rewrote it,
took its gradient, lifted the design out and linked PyTensor's numba function node by node before it
could ask for the callbacks: 1.2 s (subject parameterisation) to 2.0 s (population) on theophylline.  So
each compiled model also leaves a small record (``<key>.nutpie.pkl`` beside the stored graphs, pruned
with them), under :func:`model_key`: the hash of the model's log-density as PyMC derives it, before
anything else, with the data it was built on.  It holds what the callbacks need besides their code: the
order and values of the lifted design arrays, the shapes, and PyTensor's keys of the two inner
functions, from which the callbacks' own cache keys follow.  A model with a record is loaded from it
and numba's cache alone (~0.1-0.4 s), and gives the same callbacks, bit for bit; its data containers (DV,
covariate switches) are read from the model as usual.  Other data of the same shape has another key and
takes the long way once, loading the cached functions as before.

Where PyTensor does not cache the callee (a graph with an op numba cannot cache), the callbacks are
compiled as before, without a cache, and no record is written.  :func:`compile_model` returns ``None``
when this nutpie lacks the internals used here; the caller then uses ``nutpie.compile_pymc_model``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt

from bayesnlme.atomic import OutputError, write_atomic
from bayesnlme.inference.graph_cache import cache_dir, compile_function, graph_key, model_logp
from bayesnlme.inference.lift import Lifter
from bayesnlme.inference.startpoint import initial_point_fn

#: Bump when the generated source changes in a way its text does not show.
_VERSION = "1"
#: Bump when what a compiled model's record holds, or how the model is rebuilt from it, changes.
_RECORD = "1"

_LOGP = '''
def nutpie_logp(dim, x_, out_, logp_, user_data_):
    if dim != {n_dim}:
        return -1
    x = numba.carray(x_, ({n_dim},))
    out = numba.carray(out_, ({n_dim},))
    logp = numba.carray(logp_, ())
    ud = numba.carray(user_data_, ({n_words},), np.uint64)
{unpack}
    try:
        logp_val, grad = inner(x{args})
        logp[()] = logp_val
        out[...] = grad
        if not np.all(np.isfinite(out)):
            return 3
        if not np.isfinite(logp_val):
            return 4
    except Exception:
        return 1
    return 0
'''

_EXPAND = '''
def nutpie_expand(dim, expanded, x_, out_, user_data_):
    if dim != {n_dim}:
        return -1
    if expanded != {n_expanded}:
        return -1
    x = numba.carray(x_, ({n_dim},))
    out = numba.carray(out_, ({n_expanded},))
    ud = numba.carray(user_data_, ({n_words},), np.uint64)
{unpack}
    try:
        (values,) = inner(x{args})
        out[...] = values
    except Exception:
        return -2
    return 0
'''


def _unpack(user_data: np.ndarray, names: list[str], shared: dict) -> tuple[str, str]:
    """Source lines that rebuild each container's array from nutpie's user-data record, and the call's
    argument list.  Every field of the record is one 8-byte word (pointer, size, shape entries)."""
    record = user_data.dtype.fields["shared"]
    sub, base = record[0], record[1]
    lines = []
    for i, name in enumerate(names):
        data_off = base + sub.fields["data"][1] + sub["data"].fields[name][1]
        shape_type, shape_off = sub["shape"].fields[name][:2]
        shape_off += base + sub.fields["shape"][1]
        if data_off % 8 or shape_off % 8:
            raise ValueError("nutpie's user-data record is not made of 8-byte words")
        ndim = shape_type.shape[0] if shape_type.shape else 0
        shape = "(" + "".join(f"int(ud[{shape_off // 8 + k}]), " for k in range(ndim)) + ")"
        lines.append(f"    s{i} = numba.carray(address_as_void_pointer(ud[{data_off // 8}]), {shape}, "
                     f"np.{np.dtype(shared[name].dtype).name})")
    return "\n".join(lines) or "    pass", "".join(f", s{i}" for i in range(len(names)))


def _callback(template: str, name: str, signature, inner, inner_key, shared_names, user_data, shared,
              *, cached_only: bool = False, **sizes):
    """Compile one C callback around ``inner``, cached when PyTensor caches ``inner`` itself (``inner_key``:
    PyTensor's key of it).  ``cached_only``: load it from the cache or return None, compiling nothing
    (``inner`` is then never called: the cached machine code holds it)."""
    import numba
    import nutpie
    from nutpie.compile_pymc import address_as_void_pointer
    from pytensor.link.numba.cache import compile_numba_function_src

    unpack, args = _unpack(user_data, shared_names, shared)
    src = template.format(n_words=user_data.nbytes // 8, unpack=unpack, args=args, **sizes)
    key = None if inner_key is None else hashlib.sha256(
        "\0".join([src, inner_key, nutpie.__version__, _VERSION]).encode()).hexdigest()
    if key is None and cached_only:
        return None
    env = {"__name__": __name__, "numba": numba, "np": np, "inner": inner,
           "address_as_void_pointer": address_as_void_pointer}
    fn = compile_numba_function_src(src, name, env, cache_key=key)
    if cached_only:
        return _load_cfunc(fn, signature)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Cannot cache compiled function", category=numba.NumbaWarning)
        return numba.cfunc(signature, cache=key is not None)(fn)


class _NotCached(Exception):
    pass


def _load_cfunc(fn, signature):
    """``numba.cfunc(signature, cache=True)(fn)`` when numba's cache holds it; None instead of compiling."""
    from numba.core import sigutils
    from numba.core.ccallback import CFunc

    class CachedOnly(CFunc):
        def _compile_uncached(self):
            raise _NotCached

    callback = CachedOnly(fn, sigutils.normalize_signature(signature), locals={}, options={})
    callback.enable_caching()
    try:
        callback.compile()
    except _NotCached:
        return None
    return callback


def _shapes(model) -> dict:
    """nutpie's ``_compute_shapes(model)``: the shape of every value variable, free variable and
    deterministic, by name; read from their static types where every one has a static shape (the
    builder's models), which spares compiling and running a shape function (~0.06-0.2 s per fit)."""
    trace_vars = {var.name: var for var in model.value_vars + model.free_RVs + model.deterministics
                  if var not in model.observed_RVs + model.potentials}
    static = {name: var.type.shape for name, var in trace_vars.items()}
    if all(None not in shape for shape in static.values()):
        return {name: tuple(int(k) for k in shape) for name, shape in static.items()}
    from nutpie.compile_pymc import _compute_shapes

    return _compute_shapes(model)


def _remaining(model, var_names) -> list:
    """The stored variables other than the free variables' values (deterministics, natural scales)."""
    names = {model.rvs_to_values[v].name for v in model.free_RVs}
    return [v for v in model.unobserved_value_vars if v.name not in names
            and (var_names is None or v.name in set(var_names))]


def _make_functions(model, var_names):
    """nutpie's ``_make_functions(model, mode="NUMBA", compute_grad=True, join_expanded=True, ...)`` with the
    design arrays lifted out of both graphs (:mod:`bayesnlme.inference.lift`): the compiled functions take
    them from nutpie's user-data record, like the DV container, and are cached for any data of this shape."""
    shapes = _shapes(model)
    value_vars = [model.rvs_to_values[v] for v in model.free_RVs]
    rewrites = ["canonicalize", "stabilize"] + ([] if model.check_bounds else ["local_remove_check_parameter"])
    # rewritten in place: a copy, since the terms are shared (graph_cache.logp_factors); the inputs stay
    logp = pytensor.graph.rewrite_graph(pytensor.clone_replace(model_logp(model)), include=rewrites)
    grad = pt.concatenate([pt.as_tensor(g).ravel() for g in pytensor.gradient.grad(logp, value_vars)])
    names = [v.name for v in value_vars]
    sizes = [int(np.prod(shapes[n])) for n in names]
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    n_dim = int(bounds[-1])
    joined = pt.TensorType("float64", shape=(n_dim,))(name="_unconstrained_point")
    replacements = {value: joined[bounds[i]:bounds[i + 1]].reshape(shapes[value.name]).astype(rv.dtype)
                    for i, (rv, value) in enumerate(zip(model.free_RVs, value_vars))}
    lift = Lifter()
    logp, grad = lift(pytensor.clone_replace([logp, grad], replacements))
    remaining = _remaining(model, var_names)
    expanded = pt.concatenate([joined, *[pt.as_tensor(v).ravel() for v in remaining]])
    (expanded,) = lift(pytensor.clone_replace([expanded], replacements))
    logp_fn = compile_function((joined,), (logp, grad), model=model)      # rewritten once per machine
    expand_fn = compile_function((joined,), [expanded], model=model)
    all_names, all_slices, all_shapes = list(names), [], [shapes[n] for n in names]
    all_slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    count = n_dim
    for v in remaining:
        length = int(np.prod(shapes[v.name]))
        all_names.append(v.name)
        all_shapes.append(shapes[v.name])
        all_slices.append(slice(count, count + length))
        count += length
    return n_dim, count, logp_fn, expand_fn, (all_names, all_slices, all_shapes)


def _internals():
    """nutpie's and PyTensor's internals used here, or ``None`` where this nutpie lacks one."""
    try:
        import numba  # noqa: F401
        from nutpie.compile_pymc import (
            CompiledPyMCModel,
            _compute_shapes,  # noqa: F401  (this and address_as_void_pointer are used by _make_functions
            _prepare_dims_and_coords,
            _rv_dict_to_flat_array_wrapper,
            _wrap_with_lock,
            address_as_void_pointer,  # noqa: F401  and _callback: checked here, so a missing one falls back)
            make_user_data,
        )
        from pytensor.link.numba.cache import CACHED_SRC_FUNCTIONS, compile_numba_function_src  # noqa: F401
    except ImportError:
        return None
    return CompiledPyMCModel, _prepare_dims_and_coords, _rv_dict_to_flat_array_wrapper, _wrap_with_lock, \
        make_user_data


def compile_model(model, start: dict, jitter_rvs: set | None, var_names: list[str], check=None, *,
                  reuse: bool = True):
    """What ``nutpie.compile_pymc_model(model, initial_points=start, jitter_rvs=jitter_rvs,
    var_names=var_names)`` returns, with cached C callbacks; ``None`` where this nutpie lacks the
    internals used (the caller falls back to nutpie's own compile).

    ``check``: called, once the callbacks exist, with ``logp_and_grad(x) -> (logp, grad)`` (the
    log-density callback nutpie will call, at a flat unconstrained point in ``model.free_RVs`` order);
    returns the jittered random variables, in place of ``jitter_rvs``
    (:func:`~bayesnlme.inference.startpoint.check_start_compiled`).  Calling the callback itself, not
    the PyTensor function inside it, compiles nothing more: from Python, numba compiled that function a
    second time (seconds per model structure on an empty cache).

    ``reuse``: load both callbacks straight from the cache when this model (its graph, data and
    ``var_names``) was compiled before in any process (:func:`model_key`), without deriving, rewriting
    or linking its log-density again; ``False`` compiles (or loads) them the long way.  The returned
    model's ``logp_func`` and ``expand_func`` call the C callbacks (with the data it was compiled with).
    """
    internals = _internals()
    if internals is None:
        return None
    CompiledPyMCModel, _prepare_dims_and_coords, _rv_dict_to_flat_array_wrapper, _wrap_with_lock, \
        make_user_data = internals
    key = model_key(model, var_names)
    record = _read_record(key) if reuse and key is not None else None
    parts = _from_record(model, record, make_user_data) if record is not None else None
    if parts is None:
        parts = _compile_callbacks(model, var_names, make_user_data, key)
    n_dim, n_expanded, shape_info, shared, user_data, logp_c, expand_c = parts
    if check is not None:
        jitter_rvs = check(_logp_and_grad(logp_c, user_data, shared, n_dim))
    initial_fn = _initial_fn(model, start, jitter_rvs, shape_info, internals)
    dims, coords = _prepare_dims_and_coords(model, shape_info)
    return CompiledPyMCModel(
        _n_dim=n_dim, dims=dims, _coords=coords,
        _shapes={name: tuple(shape) for name, _, shape in zip(*shape_info)},
        compiled_logp_func=logp_c, compiled_expand_func=expand_c, initial_point_func=initial_fn,
        shared_data=shared, user_data=user_data, n_expanded=n_expanded, shape_info=shape_info,
        logp_func=_logp_and_grad(logp_c, user_data, shared, n_dim),
        expand_func=_expand(expand_c, user_data, shared, n_dim, n_expanded))


def restarted(compiled, model, start: dict, jitter_rvs: set | None):
    """``compiled`` (:func:`compile_model`'s, of ``model``) with its chains started at ``start``: the same
    callbacks, no key derived and no record read (``init="map"``: the mode's compiled model samples).
    ``None`` where this nutpie lacks the internals used."""
    internals = _internals()
    if internals is None:
        return None
    fn = _initial_fn(model, start, jitter_rvs, compiled.shape_info, internals)
    return dataclasses.replace(compiled, initial_point_func=fn)


def _initial_fn(model, start: dict, jitter_rvs, shape_info, internals):
    """nutpie's per-chain start function: ``start`` with ``jitter_rvs`` jittered, as its flat vector."""
    _, _, rv_dict_to_flat, wrap_with_lock, _ = internals
    initial = wrap_with_lock(initial_point_fn(model, start, jitter_rvs or ()))
    n_free = len(model.free_RVs)
    return rv_dict_to_flat(initial, names=shape_info[0][:n_free], shapes=shape_info[2][:n_free])


def _signatures():
    import numba

    t = numba.types
    ptr = t.CPointer(t.double)
    return t.int64(t.uint64, ptr, ptr, ptr, t.voidptr), t.int64(t.uint64, t.uint64, ptr, ptr, t.voidptr)


def _compile_callbacks(model, var_names, make_user_data, key):
    """The compiled model's parts the long way (:func:`_make_functions`, then the callbacks); its record
    stored under ``key`` for the next process."""
    from pytensor.link.numba.cache import CACHED_SRC_FUNCTIONS

    with pytensor.config.change_flags(traceback__limit=0):   # as build.model.without_traces
        n_dim, n_expanded, logp_fn, expand_fn, shape_info = _make_functions(model, var_names)
    shared, containers = {}, {}
    for var in [*logp_fn.get_shared(), *expand_fn.get_shared()]:
        if var.name in shared and containers[var.name] is not var:
            raise ValueError(f"two data containers are named {var.name!r}")
        shared[var.name] = np.array(var.get_value(), order="C", copy=True)
        shared[var.name].flags.writeable = False
        containers[var.name] = var
    user_data = make_user_data(containers, shared)
    names = {"logp": [v.name for v in logp_fn.get_shared()], "expand": [v.name for v in expand_fn.get_shared()]}
    inner = {"logp": CACHED_SRC_FUNCTIONS.get(logp_fn.vm.jit_fn.py_func),
             "expand": CACHED_SRC_FUNCTIONS.get(expand_fn.vm.jit_fn.py_func)}
    sig_logp, sig_expand = _signatures()
    logp_c = _callback(_LOGP, "nutpie_logp", sig_logp, logp_fn.vm.jit_fn, inner["logp"], names["logp"], user_data,
                       shared, n_dim=n_dim)
    expand_c = _callback(_EXPAND, "nutpie_expand", sig_expand, expand_fn.vm.jit_fn, inner["expand"],
                         names["expand"], user_data, shared, n_dim=n_dim, n_expanded=n_expanded)
    if key is not None and None not in inner.values():
        own = _model_containers(model)
        _write_record(key, {"record": _RECORD, "n_dim": n_dim, "n_expanded": n_expanded, "shape_info": shape_info,
                            "order": list(shared), "names": names, "inner": inner,
                            "lifted": {k: v for k, v in shared.items() if k not in own}})
    return n_dim, n_expanded, shape_info, shared, user_data, logp_c, expand_c


def _from_record(model, record: dict, make_user_data):
    """The compiled model's parts from a stored record and numba's cache, or None where either lacks them."""
    try:
        own = _model_containers(model)
        shared = {}
        for name in record["order"]:
            value = record["lifted"][name] if name in record["lifted"] else own[name].get_value()
            shared[name] = np.array(value, order="C", copy=True)
            shared[name].flags.writeable = False
        user_data = make_user_data(shared, shared)
        n_dim, n_expanded, names, inner = record["n_dim"], record["n_expanded"], record["names"], record["inner"]
        sig_logp, sig_expand = _signatures()
        logp_c = _callback(_LOGP, "nutpie_logp", sig_logp, _never_called, inner["logp"], names["logp"], user_data,
                           shared, cached_only=True, n_dim=n_dim)
        expand_c = _callback(_EXPAND, "nutpie_expand", sig_expand, _never_called, inner["expand"],
                             names["expand"], user_data, shared, cached_only=True, n_dim=n_dim,
                             n_expanded=n_expanded)
    except Exception:  # noqa: BLE001 - a stale or unreadable record: compiled the long way instead
        return None
    if logp_c is None or expand_c is None:
        return None
    return n_dim, n_expanded, record["shape_info"], shared, user_data, logp_c, expand_c


def _never_called(*args):
    """Stands for the compiled function inside a callback loaded from the cache (its code is inside)."""
    raise RuntimeError("a cached nutpie callback called its placeholder")


def _logp_and_grad(callback, user_data: np.ndarray, shared: dict, n_dim: int):
    """The log-density callback as a Python function of the flat point: ``(logp, grad)``; NaN where the
    callback failed (an exception inside the compiled function: status 1).  ``user_data`` points into
    ``shared`` (the data arrays): the function keeps both alive, as the compiled model does."""
    import ctypes

    call = callback.ctypes
    as_double = ctypes.POINTER(ctypes.c_double)

    def logp_and_grad(x, _keep=(user_data, shared)):
        x = np.ascontiguousarray(x, dtype=np.float64)
        grad, logp = np.full(n_dim, np.nan), np.full((), np.nan)
        status = call(n_dim, x.ctypes.data_as(as_double), grad.ctypes.data_as(as_double),
                      logp.ctypes.data_as(as_double), user_data.ctypes.data)
        if status not in (0, 3, 4):   # 3, 4: the gradient or log-density is not finite (both written)
            grad[:] = np.nan
            logp[()] = np.nan
        return float(logp), grad

    return logp_and_grad


def _expand(callback, user_data: np.ndarray, shared: dict, n_dim: int, n_expanded: int):
    """The expand callback as a Python function of the flat point: ``[values]`` (NaN where it failed)."""
    import ctypes

    call = callback.ctypes
    as_double = ctypes.POINTER(ctypes.c_double)

    def expand(x, _keep=(user_data, shared)):
        x = np.ascontiguousarray(x, dtype=np.float64)
        out = np.full(n_expanded, np.nan)
        if call(n_dim, n_expanded, x.ctypes.data_as(as_double), out.ctypes.data_as(as_double),
                user_data.ctypes.data) != 0:
            out[:] = np.nan
        return [out]

    return expand


def _model_containers(model) -> dict:
    """The data containers of the model's log-density by name (DV and the builder's switches, not the
    design arrays lifted out of the compiled graph)."""
    from pytensor.compile.sharedvalue import SharedVariable
    from pytensor.graph.traversal import graph_inputs

    return {v.name: v for v in graph_inputs([model_logp(model), *_remaining(model, None)])
            if isinstance(v, SharedVariable) and v.name is not None}


def model_key(model, var_names) -> str | None:
    """The key of the model nutpie samples: :func:`~bayesnlme.inference.graph_cache.graph_key` of its
    log-density as PyMC derives it (before rewriting, differentiation or lifting: constants, the data
    among them, by value; data containers by name and type) and of the stored variables ``var_names``
    on the unconstrained point, with this module's and nutpie's versions.  The gradient, the lifted design
    and both callbacks are functions of these, so a model with the same key compiles to the same
    callbacks.  None where the graph cannot be pickled."""
    import nutpie

    values = [model.rvs_to_values[v] for v in model.free_RVs]
    extra = (None if var_names is None else list(var_names), _VERSION, _RECORD, nutpie.__version__)
    return graph_key(values, [model_logp(model), *_remaining(model, var_names)], model.check_bounds,
                     "nutpie-model", extra=extra)


def _record_path(key: str) -> Path:
    return cache_dir() / f"{key}.nutpie.pkl"   # pruned with the stored graphs (graph_cache.prune)


def _read_record(key: str) -> dict | None:
    path = _record_path(key)
    try:
        with open(path, "rb") as file:
            record = pickle.load(file)
    except Exception:  # noqa: BLE001 - missing or unreadable: compiled the long way
        return None
    if not isinstance(record, dict) or record.get("record") != _RECORD:
        return None
    try:
        path.touch()   # used: kept by the pruning for its age limit more
    except OSError:
        pass
    return record


def _write_record(key: str, record: dict) -> None:
    try:
        data = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        write_atomic(_record_path(key), lambda tmp: Path(tmp).write_bytes(data))
    except (OSError, OutputError, pickle.PicklingError, TypeError, AttributeError):
        return   # a read-only or full cache folder costs the next process time, never a result
