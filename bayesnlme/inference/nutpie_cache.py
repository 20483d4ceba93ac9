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

Where PyTensor does not cache the callee (a graph with an op numba cannot cache), the callbacks are
compiled as before, without a cache.  :func:`compile_model` returns ``None`` when this nutpie lacks
the internals used here; the caller then uses ``nutpie.compile_pymc_model``.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytensor
import pytensor.tensor as pt

from bayesnlme.inference.graph_cache import compile_function, model_logp
from bayesnlme.inference.lift import Lifter

#: Bump when the generated source changes in a way its text does not show.
_VERSION = "1"

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


def _callback(template: str, name: str, signature, inner, shared_names, user_data, shared, **sizes):
    """Compile one C callback around ``inner``, cached when PyTensor caches ``inner`` itself."""
    import numba
    import nutpie
    from nutpie.compile_pymc import address_as_void_pointer
    from pytensor.link.numba.cache import CACHED_SRC_FUNCTIONS, compile_numba_function_src

    unpack, args = _unpack(user_data, shared_names, shared)
    src = template.format(n_words=user_data.nbytes // 8, unpack=unpack, args=args, **sizes)
    inner_key = CACHED_SRC_FUNCTIONS.get(inner.py_func)
    key = None if inner_key is None else hashlib.sha256(
        "\0".join([src, inner_key, nutpie.__version__, _VERSION]).encode()).hexdigest()
    env = {"__name__": __name__, "numba": numba, "np": np, "inner": inner,
           "address_as_void_pointer": address_as_void_pointer}
    fn = compile_numba_function_src(src, name, env, cache_key=key)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Cannot cache compiled function", category=numba.NumbaWarning)
        return numba.cfunc(signature, cache=key is not None)(fn)


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
    remaining = [v for v in model.unobserved_value_vars if v.name not in names
                 and (var_names is None or v.name in set(var_names))]
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


def compile_model(model, start: dict, jitter_rvs: set | None, var_names: list[str], check=None):
    """What ``nutpie.compile_pymc_model(model, initial_points=start, jitter_rvs=jitter_rvs,
    var_names=var_names)`` returns, with cached C callbacks; ``None`` where this nutpie lacks the
    internals used (the caller falls back to nutpie's own compile).

    ``check``: called, once the callbacks exist, with ``logp_and_grad(x) -> (logp, grad)`` (the
    log-density callback nutpie will call, at a flat unconstrained point in ``model.free_RVs`` order);
    returns the jittered random variables, in place of ``jitter_rvs``
    (:func:`~bayesnlme.inference.startpoint.check_start_compiled`).  Calling the callback itself, not
    the PyTensor function inside it, compiles nothing more: from Python, numba compiled that function a
    second time (seconds per model structure on an empty cache)."""
    internals = _internals()
    if internals is None:
        return None
    import numba
    from pymc.initial_point import make_initial_point_fn

    CompiledPyMCModel, _prepare_dims_and_coords, _rv_dict_to_flat_array_wrapper, _wrap_with_lock, \
        make_user_data = internals
    n_dim, n_expanded, logp_fn, expand_fn, shape_info = _make_functions(model, var_names)
    shared, containers = {}, {}
    for var in [*logp_fn.get_shared(), *expand_fn.get_shared()]:
        if var.name in shared and containers[var.name] is not var:
            raise ValueError(f"two data containers are named {var.name!r}")
        shared[var.name] = np.array(var.get_value(), order="C", copy=True)
        shared[var.name].flags.writeable = False
        containers[var.name] = var
    user_data = make_user_data(containers, shared)
    t = numba.types
    ptr = t.CPointer(t.double)
    logp_c = _callback(_LOGP, "nutpie_logp", t.int64(t.uint64, ptr, ptr, ptr, t.voidptr), logp_fn.vm.jit_fn,
                       [v.name for v in logp_fn.get_shared()], user_data, shared, n_dim=n_dim)
    expand_c = _callback(_EXPAND, "nutpie_expand", t.int64(t.uint64, t.uint64, ptr, ptr, t.voidptr),
                         expand_fn.vm.jit_fn, [v.name for v in expand_fn.get_shared()], user_data, shared,
                         n_dim=n_dim, n_expanded=n_expanded)
    if check is not None:
        jitter_rvs = check(_logp_and_grad(logp_c, user_data, shared, n_dim))
    initial = _wrap_with_lock(make_initial_point_fn(model=model, overrides=start, default_strategy="support_point",
                                                    jitter_rvs=jitter_rvs, return_transformed=True))
    n_free = len(model.free_RVs)
    initial_fn = _rv_dict_to_flat_array_wrapper(initial, names=shape_info[0][:n_free],
                                                shapes=shape_info[2][:n_free])
    dims, coords = _prepare_dims_and_coords(model, shape_info)
    return CompiledPyMCModel(
        _n_dim=n_dim, dims=dims, _coords=coords,
        _shapes={name: tuple(shape) for name, _, shape in zip(*shape_info)},
        compiled_logp_func=logp_c, compiled_expand_func=expand_c, initial_point_func=initial_fn,
        shared_data=shared, user_data=user_data, n_expanded=n_expanded, shape_info=shape_info,
        logp_func=logp_fn, expand_func=expand_fn)


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
