"""The right-hand side of an ODE model and its Jacobians, compiled to numba for the integrator.

:func:`scalar_graph` traces the user's ``rhs(y, t, p)`` on scalar states, time and parameters and, when
the graph is elementwise, rebuilds it from PyTensor's scalar ops: one numba function of scalars that
allocates nothing (:func:`scalar_rhs`).  Any other RHS gets the array version of the same graph
(:func:`batched_rhs`, about 100x slower per call).  Used by :class:`bayesnlme.structural.ode.ODESystem`.
"""

from __future__ import annotations

import numba
import numpy as np
import pytensor
import pytensor.tensor as pt


def _derivatives(rhs, parameters, n, rows, t, cols):
    """Graph of the RHS ``f`` and its Jacobians: outputs f_a, J_y[a, c], J_p[a, b] (row-major).

    ``rows``/``cols`` are the states/parameters (scalars, or one vector per state/parameter
    over subjects, in which case gradients of the sums are the per-subject derivatives,
    exact because subjects are independent).
    """
    out = rhs_rows(rhs, parameters, n, rows, t, cols)
    for wrt in (rows, cols):
        for a in range(n):
            out += pt.grad(out[a].sum(), wrt, disconnected_inputs="ignore", return_disconnected="zero")
    return out


def rhs_rows(rhs, parameters, n, rows, t, cols) -> list:
    """The user's ``rhs`` on states ``rows`` (one tensor per state), time ``t`` and parameters ``cols`` (one
    tensor per parameter, in ``parameters`` order), as a list of n derivative tensors."""
    return _as_rows(rhs(_StateColumns(rows), t, dict(zip(parameters, cols))), n, "rhs")


class _NotElementwise(Exception):
    pass


def scalar_rhs(rhs, parameters, n):
    """The RHS and its Jacobians as one numba function of scalars, or None.

    Returns ``call(x, out)`` with ``x = [y_0..y_{n-1}, t, p_0..]`` and ``out`` the
    ``n + n^2 + n n_p`` derivatives (no array is allocated per call: about 100x cheaper
    than the array version for one subject); None when the RHS is not elementwise
    (:func:`scalar_graph`), so the caller falls back to :func:`batched_rhs`.
    """
    from numba.np.unsafe.ndarray import to_fixed_tuple

    graph = scalar_graph(rhs, parameters, n)
    if graph is None:
        return None
    jf = pytensor.function(*graph, mode="NUMBA", on_unused_input="ignore").vm.jit_fn
    width = len(graph[0])

    @numba.njit(cache=False)
    def call(x, res):
        r = jf(*to_fixed_tuple(x, width))
        for k in range(len(r)):
            res[k] = r[k]

    return call, jf


def scalar_graph(rhs, parameters, n):
    """The RHS and its Jacobians as a graph of pytensor scalars, or None.

    The RHS is traced on scalar states, time and parameters; when its graph (after
    pytensor's canonical rewrites) holds only elementwise operations, it is rebuilt from
    their scalar ops.  Returns (inputs, outputs): inputs ``y_0..y_{n-1}, t, p_0..``,
    outputs f_a, J_y[a, c], J_p[a, b]; None for an RHS that needs the state matrix
    (e.g. stacks states, sums over them, matrix products).
    """
    import pytensor.scalar as ps
    from pytensor.graph.basic import Constant
    from pytensor.graph.rewriting.utils import rewrite_graph
    from pytensor.graph.traversal import io_toposort
    from pytensor.tensor.elemwise import DimShuffle, Elemwise

    n_p = len(parameters)
    rows = [pt.scalar(f"y{a}", dtype="float64") for a in range(n)]
    t = pt.scalar("t", dtype="float64")
    cols = [pt.scalar(f"p{k}", dtype="float64") for k in range(n_p)]
    try:
        out = _derivatives(rhs, parameters, n, rows, t, cols)
    except Exception:   # the RHS needs the (n_sub, n_states) matrix: use the array version
        return None
    if any(o.ndim != 0 for o in out):
        return None
    inputs = rows + [t] + cols
    out = rewrite_graph(out, include=("canonicalize", "stabilize", "specialize"))
    scalar_in = [ps.float64(v.name) for v in inputs]
    mapping = dict(zip(inputs, scalar_in))

    def scalar(v):
        if v in mapping:
            return mapping[v]
        if isinstance(v, Constant) and np.asarray(v.data).size == 1:
            return ps.constant(np.asarray(v.data).item(), dtype=v.dtype)
        raise _NotElementwise

    try:
        for node in io_toposort(inputs, out):
            if isinstance(node.op, Elemwise):
                res = node.op.scalar_op.make_node(*[scalar(x) for x in node.inputs]).outputs
            elif isinstance(node.op, DimShuffle) and node.outputs[0].ndim == 0:
                res = [scalar(node.inputs[0])]
            else:
                return None
            mapping.update(zip(node.outputs, res))
        outs = [s if s.type.dtype == "float64" else ps.cast(s, "float64") for s in map(scalar, out)]
    except _NotElementwise:
        return None
    return scalar_in, outs


def batched_rhs(rhs, parameters, n):
    """Fallback of :func:`scalar_rhs` for any RHS: the array graph called with one subject."""
    n_p = len(parameters)
    YT = pt.tensor("YT", shape=(n, None), dtype="float64")
    t = pt.tensor("t", shape=(None,), dtype="float64")
    PT = pt.tensor("PT", shape=(n_p, None), dtype="float64")
    out = _derivatives(rhs, parameters, n, [YT[a] for a in range(n)], t, [PT[k] for k in range(n_p)])
    zero = pt.zeros_like(t)
    jf = pytensor.function([YT, t, PT], pt.stack([o + zero for o in out], axis=0), mode="NUMBA",
                           on_unused_input="ignore").vm.jit_fn

    @numba.njit(cache=False)
    def call(x, res):
        r = jf(x[:n].copy().reshape((n, 1)), x[n:n + 1].copy(), x[n + 1:].copy().reshape((n_p, 1)))[0]
        res[:] = r[:, 0]

    return call, jf


class _StateColumns:
    """The state matrix ``y`` as the RHS sees it: ``y[:, k]`` is state k's own vector.

    Indexing a column returns the graph input itself (so gradients with respect
    to it stay elementwise); anything else acts on the stacked (n_sub, n_states)
    matrix.
    """
    def __init__(self, rows):
        self.rows = rows

    def _matrix(self):
        return pt.stack(self.rows, axis=1)

    def __getitem__(self, key):
        if (isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None)
                and isinstance(key[1], (int, np.integer))):
            return self.rows[int(key[1])]
        return self._matrix()[key]

    def __getattr__(self, name):
        return getattr(self._matrix(), name)


def _as_rows(out, n, what):
    """The RHS result as a list of n (n_sub,) tensors."""
    if isinstance(out, (list, tuple)):
        if len(out) != n:
            raise ValueError(f"{what} returned {len(out)} states, the model has n_states={n}")
        return [pt.as_tensor_variable(o) for o in out]
    out = pt.as_tensor_variable(out)
    if out.ndim != 2:
        raise ValueError(f"{what} must return a (n_sub, n_states) tensor or a list of n_states vectors")
    return [out[:, a] for a in range(n)]


def as_matrix(out, n, what):
    if isinstance(out, (list, tuple)):
        if len(out) != n:
            raise ValueError(f"{what} returned {len(out)} states, the model has n_states={n}")
        return pt.stack([pt.as_tensor_variable(o) for o in out], axis=1)
    out = pt.as_tensor_variable(out)
    if out.ndim != 2:
        raise ValueError(f"{what} must return a (n_sub, n_states) tensor or a list of n_states vectors")
    return out
