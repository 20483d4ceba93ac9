"""Design arrays lifted out of a graph before it is compiled, so that what is compiled depends on the
model's structure and the data's shape, not on the data's values.

``build_model`` puts the design (TIME, doses, covariates, the subject index of every record) into the
graph as constants.  PyTensor writes constants into the function it compiles, and its numba cache keys
on them: every new data set of the same model compiled again from scratch (theophylline: 40 s cold,
7.5 s warm, 23.5 s with TIME x 1.01).  :func:`lift_constants` replaces each array constant that only
feeds data operations (elementwise maths, gathers and scatters by index, transposes, joins, dot
products, reductions, and the inputs an Op declares as data with ``lift_data_from``, e.g. the ODE
integrator's dose and observation schedule) by a shared variable holding the same values, of the same static type
(shape included); constants that set a shape or a slice bound stay constants, and so do
broadcast scalars (every dimension of length 1: numbers of the model's structure, not data).  The compiled
function then takes the design as an input and is found in the cache for any data of the same shape.

The graph is not rewritten first: PyTensor's ``canonicalize`` + ``stabilize`` on a log-density joined
with its gradient did not finish on some models (a PK/PD model with BLQ records: minutes, 5 GB), and
on the library's models the arrays lifted are the same without it (the design's TIME, AMT, subject
index), so constant sub-expressions of the design are computed at each evaluation, not folded.
"""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import pytensor
import xarray as xr
from pymc.backends.arviz import coords_and_dims_for_inferencedata
from pymc.model.transform.conditioning import remove_value_transforms
from pytensor.graph.basic import Constant
from pytensor.graph.traversal import ancestors, graph_inputs, io_toposort
from pytensor.tensor.basic import Join
from pytensor.tensor.blas import Dot22
from pytensor.tensor.elemwise import CAReduce, DimShuffle, Elemwise
from pytensor.tensor.math import Dot
from pytensor.tensor.random.op import RandomVariable
from pytensor.tensor.subtensor import (
    AdvancedIncSubtensor,
    AdvancedIncSubtensor1,
    AdvancedSubtensor,
    AdvancedSubtensor1,
    IncSubtensor,
    Subtensor,
)

from bayesnlme.inference.graph_cache import compile_function

#: Operations whose every input is data (never a shape or a static index).
_DATA_OPS = (Elemwise, DimShuffle, CAReduce, Dot, Dot22, AdvancedSubtensor1, AdvancedSubtensor,
             AdvancedIncSubtensor1, AdvancedIncSubtensor)
#: Operations whose first ``n`` inputs are data, the rest slice bounds.
_LEADING_DATA = {Subtensor: 1, IncSubtensor: 2}

PREFIX = "__data_"


def _is_data_use(node, position: int) -> bool:
    op = node.op
    if isinstance(op, _DATA_OPS):
        return True
    start = getattr(op, "lift_data_from", None)   # an Op's own declaration: its inputs from here on are data
    if start is not None:
        return position >= start
    if isinstance(op, Join):
        return position > 0   # the axis stays a constant
    for kind, n in _LEADING_DATA.items():
        if isinstance(op, kind):
            return position < n
    return False


class Lifter:
    """Lifts array constants into shared variables named ``__data_0``, ``__data_1``, ... in the order
    they are met; constants with the same dtype, shape and values share one variable, also across the
    several graphs of one model (log-density, expansion to the stored variables)."""

    def __init__(self):
        self._by_content: dict[str, pytensor.compile.SharedVariable] = {}

    def __call__(self, outputs: list) -> list:
        """``outputs`` with their liftable constants replaced (same values, same static types)."""
        outputs = list(outputs)
        uses: dict = {}
        for node in io_toposort([], outputs):
            for position, var in enumerate(node.inputs):
                if isinstance(var, Constant) and any(n != 1 for n in getattr(var.type, "shape", ())):
                    uses.setdefault(var, []).append(_is_data_use(node, position))
        replace = {}
        for const, data_uses in uses.items():
            if data_uses and all(data_uses) and const not in outputs:
                replace[const] = self._shared(const)
        if not replace:
            return outputs
        return pytensor.clone_replace(outputs, replace)

    def _shared(self, const):
        value = np.ascontiguousarray(const.data)
        key = hashlib.sha256(b"%s|%s|" % (value.dtype.str.encode(), str(value.shape).encode())
                             + value.tobytes()).hexdigest()
        if key not in self._by_content:
            self._by_content[key] = pytensor.shared(value, name=f"{PREFIX}{len(self._by_content)}",
                                                    shape=const.type.shape)
        return self._by_content[key]

    @property
    def shared(self) -> list:
        """The shared variables made so far, in order."""
        return list(self._by_content.values())


def lift_constants(outputs: list) -> list:
    """``outputs`` with array constants that only feed data operations lifted into shared variables
    (:class:`Lifter`); one graph, or several compiled together."""
    return Lifter()(outputs)


def add_log_likelihood(idata, model, loglik=None, subjects=None):
    """``pm.compute_log_likelihood(idata, model=model)`` on the lifted graph, compiled with numba: the
    pointwise log-likelihood of every observed variable at every posterior draw, as the
    ``log_likelihood`` group of ``idata`` (for LOO/WAIC).  Its compiled function, like the sampler's,
    is cached for any data of this shape.

    ``subjects``: ``(codes, ids)``, each observation's subject number (0 .. n-1) and the n subject IDs.
    Given, ``DV`` is summed over each subject's observations draw by draw and stored with dims
    ``(chain, draw, ID)`` (the subject-level log-likelihood, n_subjects values per draw instead of n_obs:
    large populations).

    ``loglik``: the builder's per-record log-likelihood of ``DV`` (``BuiltModel.loglik``), the very graph
    ``DV``'s density returns, as a function of the free random variables.  Given (and ``DV`` the model's
    only observed variable), that graph is compiled with each free variable replaced by an input of its
    name, instead of asking PyMC to derive the observed variables' log-density again (~0.3 s on a small
    model); the same values.
    """
    direct = None if loglik is None or [v.name for v in model.observed_RVs] != ["DV"] else _free_inputs(model, loglik)
    if direct is not None:   # no copy of the model needed: the inputs are the free variables themselves
        source, inputs, outs = model, direct[0], lift_constants([direct[1]])
    else:
        source = remove_value_transforms(model)
        inputs, outs = source.value_vars, lift_constants(source.logp(vars=list(source.observed_RVs), sum=False))
    fn = compile_function(inputs, outs, model=source, on_unused_input="ignore")
    coords, dims = coords_and_dims_for_inferencedata(source)
    names = [rv.name for rv in source.observed_RVs]
    if subjects is not None:
        dims, coords = {**dims, "DV": ["ID"]}, {**coords, "ID": list(subjects[1])}
    values = _over_draws(fn, inputs, idata.posterior, len(names), subjects)
    post = idata.posterior
    shape = (post.sizes["chain"], post.sizes["draw"])
    data = {}
    for name, v in zip(names, values):
        v = v.reshape(shape + v.shape[1:])
        extra = dims.get(name) or [f"{name}_dim_{j}" for j in range(v.ndim - 2)]
        data[name] = xr.DataArray(v, dims=("chain", "draw", *extra),
                                  coords={"chain": post["chain"].values, "draw": post["draw"].values,
                                          **{d: coords[d] for d in extra if d in coords}})
    idata.add_groups({"log_likelihood": xr.Dataset(data)})
    return idata


def _over_draws(fn, inputs, posterior, n_out: int, subjects=None) -> list:
    """``fn`` at every posterior draw: one array per output, leading dimension chain x draw.

    The compiled function is called positionally with ``trust_input`` (the draws are the inputs' own
    dtype and C-contiguous): PyTensor's keyword call filters every input at every call, which took 90%
    of the time on theophylline (0.25 s for 4,000 draws, 0.02 s of it in the compiled code).
    ``subjects``: ``(codes, ids)``, the values of the one output summed per subject at each draw.
    """
    n = posterior.sizes["chain"] * posterior.sizes["draw"]
    args = [np.ascontiguousarray(posterior[v.name].values.reshape(n, *posterior[v.name].shape[2:]),
                                 dtype=v.type.dtype) for v in inputs]
    fn.trust_input = True
    out = None
    for i in range(n):
        res = fn(*[a[i, ...] for a in args])   # 0-d arrays, not NumPy scalars, for scalar inputs
        if subjects is not None:
            res = [np.bincount(subjects[0], weights=res[0], minlength=len(subjects[1]))]
        if out is None:
            out = [np.empty((n,) + np.shape(r)) for r in res[:n_out]]
        for o, r in zip(out, res):
            o[i] = r
    return out


def _free_inputs(model, loglik):
    """``(inputs, graph)``: ``loglik`` with each free random variable replaced by an input of its name and
    type, or None where the graph holds any other random variable (then PyMC derives the log-density)."""
    inputs = [rv.type(name=rv.name) for rv in model.free_RVs]
    out = pytensor.clone_replace(loglik, dict(zip(model.free_RVs, inputs)))
    if any(isinstance(node.op, RandomVariable) for node in io_toposort(list(graph_inputs([out])), [out])):
        return None
    # a clone's tag is a copy of the original's: a static_form there still points into the random-variable
    # graph (and would make the graph's cache key unpicklable); this compiled function does not need it
    original = set(ancestors([loglik]))
    for var in ancestors([out]):
        if var not in original and getattr(var.tag, "static_form", None) is not None:
            var.tag = copy.copy(var.tag)
            del var.tag.static_form
    return inputs, out
