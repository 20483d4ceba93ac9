"""General ODE structural models, integrated for all subjects at once, with gradients.

A user writes the right-hand side ``rhs(y, t, p)`` with ``pytensor.tensor``
operations: ``y`` is the state matrix (n_sub, n_states) (amounts; state ``k``
is data compartment ``CMT = k + 1``), ``t`` the time of each subject (n_sub,)
and ``p`` a dict of individual parameters (n_sub,).  It returns the time
derivatives, a (n_sub, n_states) tensor or a list of n_states (n_sub,) tensors.
Doses are not part of the RHS: a bolus is a jump of its compartment's state,
an infusion adds a constant rate between its start and end, and both are
applied between integration segments.  ``F`` and ``ALAG`` (when the model
has them) scale and delay bolus doses into the absorption compartment.

Method
------
Explicit Dormand--Prince 5(4) (``DOPRI5``, the method of ``scipy``'s
``RK45``) with local error control on the states (``rtol``, ``atol``; the
absolute tolerance is relative to the largest dose in the data, so it does not
depend on the amount unit), FSAL, and a step size per subject.  Forward
sensitivities ``S = dy/dtheta`` (``S' = J_y S + J_theta``) are integrated on the
same steps (CVODES' "staggered" default: error control on the states only).
Event sensitivities are exact: a bolus of ``F * AMT`` adds ``AMT`` to
``dy_c/dF``, and a lag adds ``f(y-) - f(y+)`` to ``dy/dALAG``.

Why this method: PK/PD systems are at most mildly stiff (rate constants
differ by 10--1000x over the times observed), where an explicit 5th-order
method at the tolerances NUTS needs is cheaper than an implicit one (no
linear solves, no Jacobian factorisations) and the sensitivities come at the
price of one Jacobian-matrix product per stage.  Truly stiff systems (fast
binding, rate constants 1e6 x apart) would need many small steps; use a
closed form or a quasi-equilibrium reformulation for them.

Steady state (``SS=1`` with ``II``): reset to the initial state, then the state
at the start of a dosing interval is the fixed point of one interval of dosing,
found by iterating intervals (:func:`_steady_state`).

Observations are read from DOPRI5's 4th-order dense output inside the steps
(Hairer & Wanner; scipy's ``RK45`` uses the same), for the states and the
sensitivities alike, so they do not cut steps short; dose events (bolus jumps,
infusion starts and ends, lagged doses) are step boundaries.

Compilation: the RHS and its Jacobians (``J_y``, ``J_theta`` from
``pytensor.grad``) are traced on scalar states, time and parameters; when the
graph is elementwise (every library model and any RHS written with
``y[:, k]``, arithmetic, ``exp``, ``switch`` ...) it is rebuilt from pytensor's
scalar ops and compiled to one numba function of scalars that allocates
nothing (:func:`~bayesnlme.structural.ode_rhs.scalar_graph`); an RHS that needs the state matrix falls back
to the array version of the same graph (about 100x slower per call).  Subjects
are integrated one after the other inside one numba function, each with its
own adaptive steps.  Parameters that are constants (a default ``F``, an
unestimated ``ALAG``) get no sensitivities.

Cost: one step is 6 RHS+Jacobian evaluations and about ``6 n (n + n_p)``
multiply-adds for the sensitivities; steps per subject grow like
``rtol ** (-1/5)``, with the stiffness of the system and with the number of
dose events.  Theophylline (12 subjects, 1-compartment oral as an ODE):
about 0.25 ms per solve with gradients at rtol 1e-6.  See ``docs/ode.md`` and
``benchmarks/ode.py``.

The integrator is a pytensor ``Op`` with a numba implementation, so the
log-density compiles to one nopython function under nutpie (numba backend),
and runs through ``perform`` under the C/Python backends (``pm.sample``).
"""

from __future__ import annotations

import hashlib
import os
import weakref
from functools import cached_property
from pathlib import Path

import numba
import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.numba.cache import CACHED_SRC_FUNCTIONS, compile_numba_function_src
from pytensor.link.numba.dispatch.basic import register_funcify_and_cache_key

from bayesnlme.structural import ode_kernel, ode_rhs
from bayesnlme.structural.ode_kernel import make_kernel
from bayesnlme.structural.ode_rhs import as_matrix, batched_rhs, scalar_graph, scalar_rhs
from bayesnlme.structural.ode_schedule import schedule, segments

# Bit-reproducible draws.  With numba's fastmath, LLVM may reassociate floating-point arithmetic, and a
# log-density loaded from pytensor's on-disk numba cache was optimised differently from a fresh compile
# of the same graph: the same seed gave different draws on a cold and on a warm cache (and so on a new
# machine).  Without fastmath a cold compile, a warm cache and a second process agree bit for bit, at the
# same sampling speed (measured on theophylline).  A user who sets numba__fastmath in PYTENSOR_FLAGS keeps
# their choice; the saved fit records which was used.  Set here, below every compiled function of the
# package (the ODE integrator's RHS included), so that it holds whatever module is imported first.
if "numba__fastmath" not in os.environ.get("PYTENSOR_FLAGS", ""):
    pytensor.config.numba__fastmath = False

__all__ = ["ODESystem", "ODESolveOp", "scalar_graph", "schedule", "segments", "solve_states"]

#: The integrator's code as far as the cache key is concerned: this module's, the kernel's and the RHS's text.
_SOURCE_KEY = hashlib.sha256("\0".join(Path(f).read_text() for f in (__file__, ode_kernel.__file__, ode_rhs.__file__)
                                       ).encode()).hexdigest()


class ODESystem:
    """A compiled RHS with its Jacobians, and the batched DOPRI5 kernel.

    Parameters
    ----------
    rhs : callable
        ``rhs(y, t, p)`` -> derivatives, see the module docstring.
    parameters : sequence of str
        Names, in order, of the individual parameters ``p`` holds (including
        ``F``/``ALAG`` when the model has them, even if ``rhs`` ignores them).
    n_states : int
    initial : callable, optional
        ``initial(p)`` -> initial states (n_sub, n_states) or a list of
        (n_sub,) tensors, at each subject's first record (e.g. a baseline
        ``KIN / KOUT`` of a turnover model); default all zero.
    """
    def __init__(self, rhs, parameters, n_states: int, initial=None):
        self.parameters = tuple(parameters)
        self.n_states = int(n_states)
        self.rhs, self.initial = rhs, initial
        _LIVE[self._identity] = self

    @property
    def _identity(self):
        return self.rhs, self.parameters, self.n_states, self.initial

    def __reduce__(self):
        # without the compiled parts (pickled numba functions lose their cache keys and are compiled again),
        # and unpickled as this process's system of the same RHS: one compiled integrator per process
        return _live_system, self._identity

    @cached_property
    def kernel(self):
        """The compiled integrator without steady-state doses (built on first use: numba
        compilation takes seconds)."""
        return self._kernel(steady=False)

    @cached_property
    def kernel_ss(self):
        """The compiled integrator with steady-state (SS=1) doses (a separate compilation:
        data without SS doses do not pay for it)."""
        return self._kernel(steady=True)

    def solver(self, steady: bool):
        """The integrator as the Python and C backends call it (``ODESolveOp.perform``: predictions over
        draws, simulation, VPCs, diagnostics, PyMC's sampler): a numba function calling the kernel, kept in
        PyTensor's numba cache under :meth:`cache_key`, so that a second process loads it instead of
        compiling the kernel again (~18 s for ``pk_1cmt_mm_oral``); the kernel itself where there is no key."""
        solvers = self.__dict__.setdefault("_solvers", {})
        if steady not in solvers:
            kernel = self.kernel_ss if steady else self.kernel
            key = self.cache_key(steady)
            if key is None:
                solvers[steady] = kernel
            else:
                args = ", ".join(_KERNEL_ARGS)
                src = f"def ode_perform_solve({args}):\n    return kernel({args})\n"
                # __name__: a cached function's environment is rebuilt by importing its module
                fn = compile_numba_function_src(src, "ode_perform_solve", {"__name__": __name__, "kernel": kernel},
                                                cache_key=hashlib.sha256(f"{key}\0solver".encode()).hexdigest())
                solvers[steady] = numba.njit(cache=True)(fn)
        return solvers[steady]

    def cache_key(self, steady: bool) -> str | None:
        """Key of the compiled integrator in PyTensor's numba cache: the keys PyTensor gave the compiled
        RHS (with its Jacobians) and initial-state functions, the sizes, and the source of this module and
        of :mod:`~bayesnlme.structural.ode_kernel`; None when PyTensor did not cache one of those functions
        (then the integrator is compiled in every process, as before)."""
        _, rhs_fn, init_fn = self._compiled
        keys = [CACHED_SRC_FUNCTIONS.get(f.py_func) if hasattr(f, "py_func") else None for f in (rhs_fn, init_fn)]
        if any(k is None for k in keys):
            return None
        parts = ["bayesnlme-ode", _SOURCE_KEY, *keys, str(self.n_states), str(len(self.parameters)), str(steady)]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    @cached_property
    def _compiled(self):
        """The numba call of the RHS with its Jacobians (what the kernel calls), and PyTensor's numba functions
        of the RHS and of the initial states (compiled by numba at their first call, or loaded from the cache)."""
        n, n_p = self.n_states, len(self.parameters)
        rhs_call, rhs_fn = scalar_rhs(self.rhs, self.parameters, n) or batched_rhs(self.rhs, self.parameters, n)
        P = pt.tensor("P", shape=(None, n_p), dtype="float64")
        p = {name: P[:, k] for k, name in enumerate(self.parameters)}
        zeros_y, zeros_s = pt.zeros((P.shape[0], n)), pt.zeros((P.shape[0], n, n_p))
        y0 = as_matrix(self.initial(p), n, "initial") + zeros_y if self.initial is not None else zeros_y
        s0 = pt.stack([pt.grad(y0[:, i].sum(), P, disconnected_inputs="ignore") for i in range(n)], axis=1)
        init_fn = pytensor.function([P], [y0, s0 + zeros_s], mode="NUMBA", on_unused_input="ignore")
        return rhs_call, rhs_fn, init_fn.vm.jit_fn

    def _kernel(self, steady: bool):
        rhs_call, _, init = self._compiled
        return make_kernel(rhs_call, init, self.n_states, len(self.parameters), steady=steady)


#: The kernel's arguments: the individual parameters, then the schedule (:func:`schedule`) without ``obs_subject``
_KERNEL_ARGS = ("P", "t0", "obs_time", "obs_order", "obs_start", "obs_first", "dose_time", "dose_amt", "dose_rate",
                "dose_state", "dose_lagged", "dose_valid", "dose_ss", "dose_ii", "reset_time", "reset_row", "obs_row",
                "obs_boundary", "seg_stop", "dose_seg", "idx", "opts")

#: The ODE systems of this process by RHS, parameters, states and initial states (graphs read from the
#: graph cache link to these, with their compiled integrators)
_LIVE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _live_system(rhs, parameters, n_states, initial) -> ODESystem:
    found = _LIVE.get((rhs, tuple(parameters), int(n_states), initial))
    return found if found is not None else ODESystem(rhs, parameters, n_states, initial)


class ODESolveOp(Op):
    """States at every observation record, and their sensitivities, for all subjects.

    Inputs: ``P`` (n_sub, n_segments * n_params) individual parameters (one block of
    n_params per parameter segment, see :func:`schedule`), then the constant
    schedule of :func:`schedule` .  Outputs: ``Y`` (n_obs, n_states) and
    ``S = dY/dP`` (n_obs, n_states, n_segments * n_params).  The gradient uses ``S``
    (first order only: ``S`` itself has no gradient).
    """
    __props__ = ("system", "steady")
    #: inputs after ``P`` are the schedule, data of the subjects' doses and records: lifted out of compiled
    #: graphs like the closed forms' design (:mod:`bayesnlme.inference.lift`), so another data set of the
    #: same shape reuses the compiled log density
    lift_data_from = 1

    def __init__(self, system: ODESystem, steady: bool = False):
        self.system = system
        self.steady = bool(steady)   # the data have SS=1 doses: the kernel that handles them

    @property
    def kernel(self):
        return self.system.kernel_ss if self.steady else self.system.kernel

    def make_node(self, P, *schedule):
        P = pt.as_tensor_variable(P)
        schedule = [pt.as_tensor_variable(x) for x in schedule]
        y = pt.tensor(dtype="float64", shape=(None, self.system.n_states))
        s = pt.tensor(dtype="float64", shape=(None, self.system.n_states, None))
        return Apply(self, [P, *schedule], [y, s])

    def perform(self, node, inputs, outputs):
        solve = self.system.solver(self.steady)
        y, s = solve(*[np.array(x, order="C") for x in inputs[:-1]])   # writable copies, as under nutpie
        outputs[0][0], outputs[1][0] = y, s

    def L_op(self, inputs, outputs, output_grads):
        from pytensor.gradient import DisconnectedType, disconnected_type
        g_y, g_s = output_grads
        if not isinstance(g_s.type, DisconnectedType):
            raise NotImplementedError("second derivatives of ODE solutions are not available")
        P, obs_subject = inputs[0], inputs[-1]
        rest = [disconnected_type() for _ in inputs[1:]]
        if isinstance(g_y.type, DisconnectedType):
            return [pt.zeros_like(P)] + rest
        contrib = (g_y[:, :, None] * outputs[1]).sum(axis=1)     # (n_obs, n_params)
        return [pt.inc_subtensor(pt.zeros_like(P)[obs_subject], contrib)] + rest

    def connection_pattern(self, node):
        return [[True, True]] + [[False, False]] * (len(node.inputs) - 1)


@register_funcify_and_cache_key(ODESolveOp)
def _numba_ode_solve(op, node=None, **kwargs):
    """The integrator as PyTensor's numba backend calls it, with its cache key (:meth:`ODESystem.cache_key`):
    a log-density holding it is then cached like any other, and a second process loads it instead of
    compiling the integrator again."""
    kernel = op.kernel

    @numba.njit
    def solve(P, t0, obs_time, obs_order, obs_start, obs_first, dose_time, dose_amt, dose_rate,
              dose_state, dose_lagged, dose_valid, dose_ss, dose_ii, reset_time, reset_row, obs_row, obs_boundary,
              seg_stop, dose_seg, idx, opts, obs_subject):
        # copies: constants arrive read-only, which would be another (slow) numba specialisation
        return kernel(np.ascontiguousarray(P).copy(), t0.copy(), obs_time.copy(), obs_order.copy(),
                      obs_start.copy(), obs_first.copy(), dose_time.copy(), dose_amt.copy(),
                      dose_rate.copy(), dose_state.copy(), dose_lagged.copy(), dose_valid.copy(),
                      dose_ss.copy(), dose_ii.copy(), reset_time.copy(), reset_row.copy(), obs_row.copy(),
                      obs_boundary.copy(), seg_stop.copy(), dose_seg.copy(), idx.copy(), opts.copy())

    return solve, op.system.cache_key(op.steady)


def solve_states(system: ODESystem, P, data, model, rtol: float = 1e-8, atol: float = 1e-10,
                 active=None, segment=None):
    """States (n_obs, n_states) at the data's observation records, as a differentiable tensor.

    Parameters
    ----------
    system : ODESystem
    P : tensor, shape (n_sub, n_segments * n_params)
        Individual parameters in ``system.parameters`` order, one block per
        parameter segment (one block without ``segment``).
    data : NMData
    model : StructuralModel
        For its dose compartments (``depot_cmt`` gets F and ALAG).
    rtol, atol : float
        Relative tolerance and absolute tolerance (as a fraction of the
        largest dose amount) of the DOPRI5 local error.
    active : sequence of bool, optional
        Parameters (columns of ``P``) that need gradients; default all.
    segment : numpy.ndarray of int, shape (n_obs,), optional
        Each observation's parameter segment (:func:`segments`).
    """
    consts = [pt.constant(x) for x in schedule(data, model, system, rtol, atol, active=active, segment=segment)]
    steady = bool(consts[11].data.any())   # dose_ss (see schedule)
    y, _ = ODESolveOp(system, steady)(pt.as_tensor_variable(P), *consts)
    return y


def ode_function(params_by_subject: dict, data, model, *, system: ODESystem, outputs: dict,
                 rtol: float, atol: float, obs_log: dict | None = None, obs_key=None):
    """Contract-2 structural function of an ODE model: outputs at every observation record.

    Parameters
    ----------
    params_by_subject : dict of str -> tensor (n_subjects,)
    obs_log : dict of str -> tensor (n_obs,), optional
        Log multipliers of parameters at each observation (time-varying covariates,
        KAPPA): parameters are piecewise constant within a subject, each observation's
        values holding from the previous observation of another ``obs_key`` to it.
    obs_key : numpy.ndarray, shape (n_obs,), optional
        Codes of the data behind ``obs_log`` (occasion, time-varying covariate values);
        a subject's parameters change where consecutive observations' keys differ.

    Returns
    -------
    dict of str -> tensor (n_obs,)
        Each output (e.g. ``CP``, ``RESPONSE``), in ``model.outputs`` order.
    """
    from pytensor.graph.basic import Constant
    from pytensor.graph.traversal import graph_inputs

    obs_log = obs_log or {}
    n_sub = data.n_subjects
    seg = segments(data, (obs_key if obs_key is not None else np.arange(data.n_obs)) if obs_log else None)
    n_seg = int(seg.max(initial=0)) + 1
    # each subject's segments: the first observation of each (padding: any observation of the subject;
    # a segment that is never reached keeps zero sensitivities)
    order = np.lexsort((np.arange(data.n_obs), data.obs_time, data.obs_subject))
    subj, g = data.obs_subject[order], seg[order]
    opens = np.r_[True, (subj[1:] != subj[:-1]) | (g[1:] != g[:-1])]   # a segment is one run of observations
    first = np.full((n_sub, n_seg), -1, np.int64)
    first[subj[opens], g[opens]] = order[opens]
    first = np.maximum(np.where(first < 0, first[:, :1], first), 0)
    cols, active = [], []
    for name in system.parameters:
        v = params_by_subject.get(name, model.optional.get(name))
        if v is None:
            raise KeyError(f"ODE model {model.name} needs parameter {name}")
        v = pt.as_tensor_variable(v).astype("float64") * pt.ones(n_sub)
        col = v[:, None] * pt.ones((1, n_seg))
        if name in obs_log:
            col = col * pt.exp(pt.as_tensor_variable(obs_log[name])[first])
        # a parameter that is a constant (a default F, a fixed ALAG) needs no sensitivities
        active.append(not all(isinstance(x, Constant) for x in graph_inputs([col])))
        cols.append(col)
    P3 = pt.stack(cols, axis=2)                                  # (n_sub, n_seg, n_params)
    states = solve_states(system, P3.reshape((n_sub, n_seg * len(cols))), data, model, rtol, atol,
                          active=active, segment=seg if n_seg > 1 else None)
    p_obs = {name: P3[data.obs_subject, seg, k] for k, name in enumerate(system.parameters)}
    return {name: fn(states, p_obs) for name, fn in outputs.items()}


def with_tolerance(model, rtol: float, atol: float | None = None):
    """The same ODE model (and compiled solver) with other DOPRI5 tolerances."""
    from dataclasses import replace
    from functools import partial

    kw = dict(model.function.keywords, rtol=rtol)
    if atol is not None:
        kw["atol"] = atol
    return replace(model, function=partial(model.function.func, **kw))
