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

Batching: the RHS and its Jacobians (``J_y`` and ``J_theta`` from
``pytensor.grad`` of each output state summed over subjects, which is exact
because subjects are independent) are compiled once to one numba function
of the whole batch.  All subjects advance together: each iteration makes
one attempt step for every subject, each with its own step size, time and
dose events, so one RHS call serves all subjects and a subject with a fast
phase does not force small steps on the others.

Cost: about 6 batched RHS+Jacobian evaluations per iteration; the number of
iterations is the largest per-subject number of steps, which grows like
``rtol ** (-1/5)`` and with the number of observations and doses (each is a
step boundary).  See ``docs/ode.md`` and ``benchmarks/ode.py``.

The integrator is a pytensor ``Op`` with a numba implementation, so the
log-density compiles to one nopython function under nutpie (numba backend),
and runs through ``perform`` under the C/Python backends (``pm.sample``).
"""

from __future__ import annotations

from functools import cached_property

import numba
import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.numba.dispatch import numba_funcify

__all__ = ["ODESystem", "ODESolveOp", "solve_states"]

# Dormand-Prince 5(4) tableau (Hairer, Norsett & Wanner, Table 5.2)
_C = np.array([0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0])
_A = np.array([
    [0, 0, 0, 0, 0, 0],
    [1 / 5, 0, 0, 0, 0, 0],
    [3 / 40, 9 / 40, 0, 0, 0, 0],
    [44 / 45, -56 / 15, 32 / 9, 0, 0, 0],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0, 0],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656, 0],
    [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]])
_B = np.array([35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0])
_STEPS_PER_STOP = 100   # step budget per dose event / observation, on top of max_steps
_E = _B - np.array([5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40])


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

    @cached_property
    def kernel(self):
        """The compiled integrator (built on first use: numba compilation takes seconds)."""
        n, n_p = self.n_states, len(self.parameters)
        # The RHS and its Jacobians as one fused elementwise graph over subjects: inputs
        # transposed (one row per state / parameter) and gradients taken with respect to
        # those rows, so no IncSubtensor/Join pairs appear (4-5x cheaper per call than
        # differentiating with respect to the (n_sub, n_states) matrix).
        YT = pt.tensor("YT", shape=(n, None), dtype="float64")
        t = pt.tensor("t", shape=(None,), dtype="float64")
        PT = pt.tensor("PT", shape=(n_p, None), dtype="float64")
        rows = [YT[a] for a in range(n)]
        cols = [PT[k] for k in range(n_p)]
        f = _as_rows(self.rhs(_StateColumns(rows), t, dict(zip(self.parameters, cols))), n, "rhs")
        out = list(f)
        for wrt in (rows, cols):
            for a in range(n):
                out += pt.grad(f[a].sum(), wrt, disconnected_inputs="ignore", return_disconnected="zero")
        zero = pt.zeros_like(t)
        rhs_fn = pytensor.function([YT, t, PT], pt.stack([o + zero for o in out], axis=0), mode="NUMBA",
                                   on_unused_input="ignore")
        y = pt.tensor("y", shape=(None, n), dtype="float64")
        P = pt.tensor("P", shape=(None, n_p), dtype="float64")
        p = {name: P[:, k] for k, name in enumerate(self.parameters)}
        zeros_y, zeros_s = pt.zeros((P.shape[0], n)), pt.zeros((P.shape[0], n, n_p))
        y0 = _as_matrix(self.initial(p), n, "initial") + zeros_y if self.initial is not None else zeros_y
        s0 = pt.stack([pt.grad(y0[:, i].sum(), P, disconnected_inputs="ignore") for i in range(n)], axis=1)
        init_fn = pytensor.function([P], [y0, s0 + zeros_s], mode="NUMBA", on_unused_input="ignore")
        return _make_kernel(rhs_fn.vm.jit_fn, init_fn.vm.jit_fn, n, n_p)


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


def _as_matrix(out, n, what):
    if isinstance(out, (list, tuple)):
        if len(out) != n:
            raise ValueError(f"{what} returned {len(out)} states, the model has n_states={n}")
        return pt.stack([pt.as_tensor_variable(o) for o in out], axis=1)
    out = pt.as_tensor_variable(out)
    if out.ndim != 2:
        raise ValueError(f"{what} must return a (n_sub, n_states) tensor or a list of n_states vectors")
    return out


def _make_kernel(rhs, init, n, n_p):
    """The numba integrator for one compiled RHS (closure over the compiled functions)."""
    C, A, B, E = _C, _A, _B, _E

    @numba.njit(cache=False)
    def kernel(P, t0, obs_time, obs_order, obs_start, obs_first, dose_time, dose_amt, dose_rate,
               dose_state, dose_lagged, dose_valid, idx, opts):
        P = np.ascontiguousarray(P)   # one type specialisation of the compiled RHS
        n_sub = P.shape[0]
        n_obs = obs_time.shape[0]
        D = dose_time.shape[1]
        f_idx, lag_idx = idx[0], idx[1]
        rtol, atol, max_steps = opts[0], opts[1], int(opts[2])
        out_y = np.full((n_obs, n), np.nan)
        out_s = np.full((n_obs, n, n_p), np.nan)
        init_out = init(P)
        PT = np.ascontiguousarray(P.T)
        y = init_out[0].copy()
        S = init_out[1].copy()
        # events per subject: kind 0 bolus, 1 infusion start, 2 infusion end; sorted by time
        ev_t = np.full((n_sub, 2 * D), np.inf)
        ev_k = np.zeros((n_sub, 2 * D), np.int64)
        ev_d = np.zeros((n_sub, 2 * D), np.int64)
        n_ev = np.zeros(n_sub, np.int64)
        for i in range(n_sub):
            m = 0
            lag = P[i, lag_idx] if lag_idx >= 0 else 0.0
            for d in range(D):
                if not dose_valid[i, d]:
                    continue
                if dose_rate[i, d] > 0:
                    ev_t[i, m], ev_k[i, m], ev_d[i, m] = dose_time[i, d], 1, d
                    ev_t[i, m + 1], ev_k[i, m + 1], ev_d[i, m + 1] = (
                        dose_time[i, d] + dose_amt[i, d] / dose_rate[i, d], 2, d)
                    m += 2
                else:
                    ev_t[i, m], ev_k[i, m], ev_d[i, m] = dose_time[i, d] + (lag if dose_lagged[i, d] else 0.0), 0, d
                    m += 1
            order = np.argsort(ev_t[i, :m], kind="mergesort")
            ev_t[i, :m], ev_k[i, :m], ev_d[i, :m] = ev_t[i, :m][order], ev_k[i, :m][order], ev_d[i, :m][order]
            n_ev[i] = m
        t = t0.copy()
        h = np.zeros(n_sub)
        target = np.zeros(n_sub)
        rate = np.zeros((n_sub, n))
        ep = np.zeros(n_sub, np.int64)
        op = obs_start[:n_sub].copy()
        done = np.zeros(n_sub, np.bool_)
        need = np.ones(n_sub, np.bool_)
        K = np.zeros((7, n_sub, n))
        KS = np.zeros((7, n_sub, n, n_p))
        ys = np.empty((n_sub, n))
        Ss = np.empty((n_sub, n, n_p))
        ts = np.empty(n_sub)
        hh = np.zeros(n_sub)
        for i in range(n_sub):
            # process events at t0, then the first target
            _advance(i, t, y, S, rate, ep, op, n_ev, ev_t, ev_k, ev_d, obs_time, obs_order, obs_start,
                     obs_first, dose_amt, dose_rate, dose_state, dose_lagged, P, f_idx, lag_idx, out_y, out_s,
                     target, done, need, rhs, n, n_p)
            h[i] = max(target[i] - t[i], 1e-6) * 0.01 if not done[i] else 0.0
        # step budget per subject: a base plus a share per stop (dose event or observation);
        # past it the subject's remaining outputs stay NaN (log density -inf, the sampler
        # rejects the point).  Reached only where an explicit method meets severe stiffness,
        # e.g. KA of thousands per hour in early warm-up, where one evaluation would
        # otherwise take seconds.
        budget = np.empty(n_sub, np.int64)
        steps = np.zeros(n_sub, np.int64)
        for i in range(n_sub):
            budget[i] = max_steps + _STEPS_PER_STOP * (n_ev[i] + obs_start[i + 1] - obs_start[i])
        while not done.all():
            if need.any():
                r = _call(rhs, y, t, PT)
                for i in range(n_sub):
                    if need[i]:
                        _stage(r, i, rate, S, K, KS, 0, n, n_p)
                        need[i] = False
            for i in range(n_sub):
                hh[i] = min(h[i], target[i] - t[i]) if not done[i] else 0.0
            for s in range(1, 7):
                for i in range(n_sub):
                    ts[i] = t[i] + C[s] * hh[i]
                    for a in range(n):
                        acc = 0.0
                        for j in range(s):
                            acc += A[s, j] * K[j, i, a]
                        ys[i, a] = y[i, a] + hh[i] * acc
                        for b in range(n_p):
                            acc = 0.0
                            for j in range(s):
                                acc += A[s, j] * KS[j, i, a, b]
                            Ss[i, a, b] = S[i, a, b] + hh[i] * acc
                r = _call(rhs, ys, ts, PT)
                for i in range(n_sub):
                    _stage(r, i, rate, Ss, K, KS, s, n, n_p)
            for i in range(n_sub):
                if done[i]:
                    continue
                steps[i] += 1
                if steps[i] > budget[i]:
                    done[i] = True
                    continue
                # ys/Ss hold stage 7 = the 5th-order solution (FSAL)
                err = 0.0
                for a in range(n):
                    e = 0.0
                    for j in range(7):
                        e += E[j] * K[j, i, a]
                    sc = atol + rtol * max(abs(y[i, a]), abs(ys[i, a]))
                    err += (hh[i] * e / sc) ** 2
                err = np.sqrt(err / n)
                if not np.isfinite(err):
                    done[i] = True   # outputs of the rest of this subject stay NaN
                    continue
                if err <= 1.0:
                    clipped = hh[i] < h[i]
                    t[i] = target[i] if clipped or t[i] + hh[i] >= target[i] else t[i] + hh[i]
                    y[i] = ys[i]
                    S[i] = Ss[i]
                    K[0, i] = K[6, i]
                    KS[0, i] = KS[6, i]
                    fac = 5.0 if err == 0.0 else min(5.0, max(0.2, 0.9 * err ** -0.2))
                    h[i] = max(h[i], hh[i] * fac) if clipped else hh[i] * fac
                    if t[i] >= target[i]:
                        _advance(i, t, y, S, rate, ep, op, n_ev, ev_t, ev_k, ev_d, obs_time, obs_order,
                                 obs_start, obs_first, dose_amt, dose_rate, dose_state, dose_lagged, P, f_idx,
                                 lag_idx, out_y, out_s, target, done, need, rhs, n, n_p)
                else:
                    h[i] = hh[i] * max(0.2, 0.9 * err ** -0.2)
        return out_y, out_s

    return kernel


@numba.njit(cache=True)
def _stage(r, i, rate, S, K, KS, s, n, n_p):
    """Stage derivative of subject i: y' = f + infusion rate, S' = J_y S + J_p.

    ``r`` is the compiled RHS output: rows f_a, then J_y[a, c] (row n + a n + c),
    then J_p[a, b] (row n + n^2 + a n_p + b), one column per subject.
    """
    for a in range(n):
        K[s, i, a] = r[a, i] + rate[i, a]
        for b in range(n_p):
            acc = r[n + n * n + a * n_p + b, i]
            for c in range(n):
                acc += r[n + a * n + c, i] * S[i, c, b]
            KS[s, i, a, b] = acc


@numba.njit(cache=False)
def _call(rhs, y, t, PT):
    """The compiled RHS at states y (n_sub, n) and times t (n_sub,): (n_out, n_sub)."""
    return rhs(np.ascontiguousarray(y.T), t, PT)[0]


@numba.njit(cache=False)
def _advance(i, t, y, S, rate, ep, op, n_ev, ev_t, ev_k, ev_d, obs_time, obs_order, obs_start,
             obs_first, dose_amt, dose_rate, dose_state, dose_lagged, P, f_idx, lag_idx, out_y, out_s,
             target, done, need, rhs, n, n_p):
    """Apply subject i's events and record its observations at time t[i]; set the next target."""
    while True:
        has_ev = ep[i] < n_ev[i]
        has_ob = op[i] < obs_start[i + 1]
        if not has_ev and not has_ob:
            done[i] = True
            return
        te = ev_t[i, ep[i]] if has_ev else np.inf
        o = obs_order[op[i]] if has_ob else -1
        to = obs_time[o] if has_ob else np.inf
        # a dose at an observation's time comes first only if it precedes it in the records
        ev_first = has_ev and (te < to or (te == to and (ev_k[i, ep[i]] != 0 or obs_first[o, ev_d[i, ep[i]]])))
        tn = te if ev_first else to
        if tn > t[i]:
            target[i] = tn
            return
        if not ev_first:
            out_y[o] = y[i]
            out_s[o] = S[i]
            op[i] += 1
            continue
        d, k = ev_d[i, ep[i]], ev_k[i, ep[i]]
        c = dose_state[i, d]
        ep[i] += 1
        need[i] = True
        if k == 1:
            rate[i, c] += dose_rate[i, d]
        elif k == 2:
            rate[i, c] -= dose_rate[i, d]
        else:
            lagged = dose_lagged[i, d]
            fr = P[i, f_idx] if f_idx >= 0 and lagged else 1.0
            yb = y[i:i + 1].copy()
            y[i, c] += fr * dose_amt[i, d]
            if f_idx >= 0 and lagged:
                S[i, c, f_idx] += dose_amt[i, d]
            if lag_idx >= 0 and lagged:
                tt = t[i:i + 1].copy()
                PTi = np.ascontiguousarray(P[i:i + 1].T)
                f_minus = _call(rhs, yb, tt, PTi)
                f_plus = _call(rhs, y[i:i + 1].copy(), tt, PTi)
                for a in range(n):
                    S[i, a, lag_idx] += f_minus[a, 0] - f_plus[a, 0]


class ODESolveOp(Op):
    """States at every observation record, and their sensitivities, for all subjects.

    Inputs: ``P`` (n_sub, n_params) individual parameters, then the constant
    schedule of :func:`schedule` .  Outputs: ``Y`` (n_obs, n_states) and
    ``S = dY/dP`` (n_obs, n_states, n_params).  The gradient uses ``S``
    (first order only: ``S`` itself has no gradient).
    """

    __props__ = ("system",)

    def __init__(self, system: ODESystem):
        self.system = system

    def make_node(self, P, *schedule):
        P = pt.as_tensor_variable(P)
        schedule = [pt.as_tensor_variable(x) for x in schedule]
        y = pt.tensor(dtype="float64", shape=(None, self.system.n_states))
        s = pt.tensor(dtype="float64", shape=(None, self.system.n_states, len(self.system.parameters)))
        return Apply(self, [P, *schedule], [y, s])

    def perform(self, node, inputs, outputs):
        # writable C-contiguous copies: the same numba specialisation as under nutpie
        y, s = self.system.kernel(*[np.array(x, order="C") for x in inputs[:-1]])
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


@numba_funcify.register(ODESolveOp)
def _numba_ode_solve(op, node=None, **kwargs):
    kernel = op.system.kernel

    @numba.njit
    def solve(P, t0, obs_time, obs_order, obs_start, obs_first, dose_time, dose_amt, dose_rate,
              dose_state, dose_lagged, dose_valid, idx, opts, obs_subject):
        # copies: constants arrive read-only, which would be another (slow) numba specialisation
        return kernel(np.ascontiguousarray(P).copy(), t0.copy(), obs_time.copy(), obs_order.copy(),
                      obs_start.copy(), obs_first.copy(), dose_time.copy(), dose_amt.copy(),
                      dose_rate.copy(), dose_state.copy(), dose_lagged.copy(), dose_valid.copy(),
                      idx.copy(), opts.copy())

    return solve


def schedule(data, model, system: ODESystem, rtol: float, atol: float, max_steps: int = 2000) -> list:
    """The constant inputs of :class:`ODESolveOp` for a data set.

    ``max_steps`` (plus 100 per dose event and observation) bounds the DOPRI5
    steps of one subject; a subject that needs more gets NaN outputs, which the
    log density turns into a rejected proposal.

    Raises
    ------
    DataError
        Dose into a compartment the model does not have; resets (EVID 3/4)
        or steady-state doses (not supported by ODE models yet).
    """
    from ..errors import DataError

    n = system.n_states
    fr = data.frame
    if fr["EVID"].isin([3, 4]).any():
        row = int(fr.loc[fr["EVID"].isin([3, 4]), "ROW"].iloc[0])
        raise DataError(f"ODE model {model.name}: reset records (EVID 3/4) are not supported",
                        source=data.source, row=row, column="EVID")
    if data.dose_ss is not None and data.dose_ss.any():
        row = int(fr.loc[fr.get("SS", 0) != 0, "ROW"].iloc[0]) if "SS" in fr else None
        raise DataError(f"ODE model {model.name}: steady-state doses (SS) are not supported; give the "
                        f"doses explicitly (ADDL/II)", source=data.source, row=row, column="SS")
    cmt = np.where(data.dose_cmt == 0, model.default_dose_cmt, data.dose_cmt)
    bad = data.dose_valid & ((cmt < 1) | (cmt > n))
    if bad.any():
        subj = int(np.argwhere(bad)[0][0])
        raise DataError(f"dose into CMT {int(cmt[bad][0])}, but ODE model {model.name} has compartments "
                        f"1..{n}", source=data.source, row=data._first_row[subj], column="CMT")
    names = system.parameters
    idx = np.array([names.index(p) if p in names else -1 for p in ("F", "ALAG")], np.int64)
    lagged = (cmt == model.depot_cmt) if model.depot_cmt is not None else np.zeros(cmt.shape, bool)
    t_first = np.where(data.dose_valid, data.dose_time, np.inf).min(axis=1)
    t0 = np.minimum(t_first, [data.obs_time[data.obs_subject == i].min(initial=np.inf)
                              for i in range(data.n_subjects)])
    order = np.lexsort((np.arange(data.n_obs), data.obs_time, data.obs_subject)).astype(np.int64)
    start = np.searchsorted(data.obs_subject[order], np.arange(data.n_subjects + 1)).astype(np.int64)
    scale = float(np.max(data.dose_amt, initial=0.0)) or 1.0
    return [t0.astype(float), data.obs_time.astype(float), order, start, data.dose_applies.astype(bool),
            data.dose_time.astype(float), data.dose_amt.astype(float), data.dose_rate.astype(float),
            (cmt - 1).astype(np.int64), lagged.astype(bool), data.dose_valid.astype(bool), idx,
            np.array([rtol, atol * scale, max_steps], float), data.obs_subject.astype(np.int64)]


def solve_states(system: ODESystem, P, data, model, rtol: float = 1e-8, atol: float = 1e-10):
    """States (n_obs, n_states) at the data's observation records, as a differentiable tensor.

    Parameters
    ----------
    system : ODESystem
    P : tensor, shape (n_sub, n_params)
        Individual parameters in ``system.parameters`` order.
    data : NMData
    model : StructuralModel
        For its dose compartments (``depot_cmt`` gets F and ALAG).
    rtol, atol : float
        Relative tolerance and absolute tolerance (as a fraction of the
        largest dose amount) of the DOPRI5 local error.
    """
    consts = [pt.constant(x) for x in schedule(data, model, system, rtol, atol)]
    y, _ = ODESolveOp(system)(pt.as_tensor_variable(P), *consts)
    return y


def ode_function(params_by_subject: dict, data, model, *, system: ODESystem, outputs: dict,
                 rtol: float, atol: float):
    """Contract-2 structural function of an ODE model: outputs at every observation record.

    Returns
    -------
    dict of str -> tensor (n_obs,)
        Each output (e.g. ``CP``, ``RESPONSE``), in ``model.outputs`` order.
    """
    n_sub = data.n_subjects
    cols = []
    for name in system.parameters:
        v = params_by_subject.get(name, model.optional.get(name))
        if v is None:
            raise KeyError(f"ODE model {model.name} needs parameter {name}")
        cols.append(pt.as_tensor_variable(v).astype("float64") * pt.ones(n_sub))
    P = pt.stack(cols, axis=1)
    states = solve_states(system, P, data, model, rtol, atol)
    p_obs = {name: P[data.obs_subject, k] for k, name in enumerate(system.parameters)}
    return {name: fn(states, p_obs) for name, fn in outputs.items()}


def with_tolerance(model, rtol: float, atol: float | None = None):
    """The same ODE model (and compiled solver) with other DOPRI5 tolerances."""
    from dataclasses import replace
    from functools import partial

    kw = dict(model.function.keywords, rtol=rtol)
    if atol is not None:
        kw["atol"] = atol
    return replace(model, function=partial(model.function.func, **kw))
