"""The DOPRI5 integrator of :mod:`bayesnlme.structural.ode` written in JAX, for the JAX engines on a GPU.

:func:`native_solve` returns the JAX function of :class:`~bayesnlme.structural.ode.ODESolveOp` for one data
set: the same method as the numba kernel (:mod:`~bayesnlme.structural.ode_kernel`: Dormand--Prince 5(4),
the same error norm, step-size control, step budget, dense output for observations, and the same order of
dose events, resets, steady state and parameter segments), written as one ``lax.while_loop`` per subject
and ``vmap``-ed over subjects (and over chains by the engines), so that the whole log-density, integration
included, is one XLA program that runs on the device.  Subjects advance in lock step: an iteration applies
one dose event or records one observation or takes one step for each subject, so the loop runs as many
iterations as the busiest subject needs.

Sensitivities ``S = dY/dP`` come from forward-mode differentiation of the solve (``jax.jacfwd`` over the
parameters that need them; reverse mode cannot go through a ``while_loop``) with the step-size controller
held constant (``stop_gradient``): for an explicit Runge--Kutta method that is the method applied to the
sensitivity equations on the same steps, what the numba kernel integrates.  Event-time sensitivities (ALAG)
follow from differentiating the event times themselves.  The gradient of the log-density is then
``S`` contracted with the gradient of the states (``jax.custom_vjp``).

What the numba kernel does and this one does not: a lagged steady-state dose whose lag is
``MAX_TRAIN + 1`` dosing intervals or longer gives NaN (a rejected proposal) here.  The steady-state
iteration checks the states for convergence, not the sensitivities (on the test regimens both solvers'
sensitivities are within 100 rtol of a tight reference).

The schedule (data) must be constant in the graph; :mod:`~bayesnlme.structural.ode_jax` falls back to the
numba kernel on the host otherwise.
"""

from __future__ import annotations

import numpy as np

from bayesnlme.structural.ode_kernel import DOPRI5
from bayesnlme.structural.ode_rhs import as_matrix, rhs_rows

#: doses of a lagged steady-state train still in their lag at the record time (ALAG >= II) handled per dose
MAX_TRAIN = 2


def jax_functions(system):
    """JAX functions of one subject: ``rhs(y (n,), t, p (n_p,)) -> (n,)`` and ``init(P (G, n_p)) -> (G, n)``,
    from the PyTensor graphs of the system's RHS and initial states (PyTensor's JAX backend)."""
    import pytensor.tensor as pt
    from pytensor.graph.fg import FunctionGraph
    from pytensor.link.jax.dispatch import jax_funcify

    n, names = system.n_states, system.parameters
    rows = [pt.vector(f"y{a}", dtype="float64") for a in range(n)]
    t = pt.vector("t", dtype="float64")
    cols = [pt.vector(f"p{k}", dtype="float64") for k in range(len(names))]
    zero = pt.zeros_like(t)
    f = rhs_rows(system.rhs, names, n, rows, t, cols)
    rhs_fn = jax_funcify(FunctionGraph(rows + [t] + cols, [pt.stack([o + zero for o in f], axis=0)], clone=True))
    init_fn = None
    if system.initial is not None:
        y0 = as_matrix(system.initial(dict(zip(names, cols))), n, "initial") + cols[0][:, None] * 0.0
        init_fn = jax_funcify(FunctionGraph(cols, [y0], clone=True))

    def rhs(y, t, p):
        out = rhs_fn(*[y[a:a + 1] for a in range(n)], t[None], *[p[k:k + 1] for k in range(len(names))])
        return out[0][:, 0]

    def init(P):
        import jax.numpy as jnp
        if init_fn is None:
            return jnp.zeros((P.shape[0], n), P.dtype)
        return init_fn(*[P[:, k] for k in range(len(names))])[0]

    return rhs, init


def _layout(schedule):
    """Per-subject arrays (padded) of a constant schedule (see :func:`~bayesnlme.structural.ode.schedule`)."""
    (t0, obs_time, order, start, obs_first, dose_time, dose_amt, dose_rate, dose_state, dose_lagged, dose_valid,
     dose_ss, dose_ii, reset_time, reset_row, obs_row, boundary, seg_stop, dose_seg, idx, opts,
     obs_subject) = schedule
    n_sub = len(start) - 1
    counts = np.diff(start)
    M = max(int(counts.max(initial=0)), 1)
    pos = start[:-1, None] + np.arange(M)[None, :]                  # positions in ``order``
    valid = np.arange(M)[None, :] < counts[:, None]
    q = np.where(valid, pos, 0)
    o = order[q] if len(order) else np.zeros_like(q)
    sub = {
        "t0": t0, "n_obs": counts.astype(np.int64),
        "ot": np.where(valid, obs_time[o] if len(order) else 0.0, np.inf),
        "orow": np.where(valid, obs_row[o] if len(order) else 0, 0),
        "obnd": valid & (boundary[o] if len(order) else False),
        "ostop": np.where(valid, seg_stop[q] if len(order) else np.inf, np.inf),
        "ofirst": (obs_first[o] if len(order) else np.zeros((n_sub, M, dose_time.shape[1]), bool))
        & valid[:, :, None],
        "dose_time": dose_time, "dose_amt": dose_amt, "dose_rate": dose_rate, "dose_state": dose_state,
        "dose_lagged": dose_lagged, "dose_valid": dose_valid, "dose_ss": dose_ss, "dose_ii": dose_ii,
        "dose_seg": dose_seg, "reset_time": reset_time, "reset_row": reset_row,
    }
    rtol, atol, max_steps = float(opts[0]), float(opts[1]), int(opts[2])
    return sub, valid, o, (int(idx[0]), int(idx[1]), np.asarray(idx[2:], bool)), (rtol, atol, max_steps)


def native_solve(system, schedule, steady: bool):
    """The JAX function ``solve(P) -> (Y (n_obs, n), S (n_obs, n, G n_p))`` of a constant schedule,
    differentiable in reverse mode through ``S`` (see the module docstring)."""
    import jax
    import jax.numpy as jnp

    rhs, init = jax_functions(system)
    n, n_p = system.n_states, len(system.parameters)
    sub, valid, obs_index, (f_idx, lag_idx, active), (rtol, atol, max_steps) = _layout(schedule)
    n_obs = len(schedule[1])
    M = valid.shape[1]
    D = sub["dose_time"].shape[1]
    R = sub["reset_time"].shape[1]
    trains = MAX_TRAIN if (steady and lag_idx >= 0 and bool((sub["dose_lagged"] & (sub["dose_ss"] == 1)).any())) \
        else 0
    A, C, E, DENSE = (jnp.asarray(DOPRI5[k]) for k in ("A", "C", "E", "DENSE"))
    tiny = jnp.asarray(1e-6)

    def stages(y, t, hh, rate, p):
        """The seven DOPRI5 stages from (t, y): K (7, n); K[6] is f at the 5th-order solution ``ys``."""
        # unrolled: a loop would halve XLA's compile time on the CPU, but on a GPU each iteration of a loop
        # is a round trip to the host
        K = jnp.zeros((7, n)).at[0].set(rhs(y, t, p) + rate)
        for s in range(1, 7):
            ys = y + hh * (A[s, :s] @ K[:s])
            K = K.at[s].set(rhs(ys, t + C[s] * hh, p) + rate)
        return K, ys

    def error(y, ys, K, hh):
        sc = atol + rtol * jnp.maximum(jnp.abs(y), jnp.abs(ys))
        return jax.lax.stop_gradient(jnp.sqrt(jnp.mean((hh * (E @ K) / sc) ** 2)))

    def new_step(h, hh, err, accept, clipped):
        grow = jnp.where(err == 0.0, 5.0, jnp.minimum(5.0, jnp.maximum(0.2, 0.9 * jnp.where(err == 0.0, 1.0, err)
                                                                        ** -0.2)))
        shrink = jnp.maximum(0.2, 0.9 * jnp.where(err > 0, err, 1.0) ** -0.2)
        h_acc = jnp.where(clipped, jnp.maximum(h, hh * grow), hh * grow)
        return jax.lax.stop_gradient(jnp.where(accept, h_acc, hh * shrink))

    def integrate(t, t_end, h, y, rate, p, go, budget):
        """States from t to t_end with no observations (the steady-state intervals); ``go`` False: no-op.
        Returns (h, y, steps or -1)."""
        def cond(c):
            t, h, y, steps, ok = c
            return go & ok & (t < t_end)

        def body(c):
            t, h, y, steps, ok = c
            hh = jnp.minimum(h, t_end - t)
            K, ys = stages(y, t, hh, rate, p)
            err = error(y, ys, K, hh)
            steps = steps + 1
            ok = (steps <= budget) & jnp.isfinite(err)
            accept = ok & (err <= 1.0)
            clipped = hh < h
            t_new = jnp.where(clipped | (t + hh >= t_end), t_end, t + hh)
            return (jnp.where(accept, t_new, t), new_step(h, hh, err, accept, clipped),
                    jnp.where(accept, ys, y), steps, ok)

        t, h, y, steps, ok = jax.lax.while_loop(cond, body, (t, h, y, jnp.asarray(0), jnp.asarray(True)))
        return h, y, jnp.where(ok, steps, -1)

    def steady_state(go, d, ts, y_reset, p, p_dose, s):
        """The state at ``ts`` after dose ``d`` given every II forever (the kernel's ``_steady_state``)."""
        ii, c, amt, R_ = s["dose_ii"][d], s["dose_state"][d], s["dose_amt"][d], s["dose_rate"][d]
        lagged = s["dose_lagged"][d]
        infusion = R_ > 0
        dur = jnp.where(infusion, amt / jnp.where(infusion, R_, 1.0), 0.0)
        lag = jnp.where((lag_idx >= 0) & lagged & ~infusion, p_dose[max(lag_idx, 0)] % ii, 0.0)
        f = jnp.where((f_idx >= 0) & lagged, p_dose[max(f_idx, 0)], 1.0)
        budget = DOPRI5["ss_budget"] * max_steps
        infusing = jnp.zeros(n).at[c].set(R_)

        def cond(c_):
            y, h, steps, k, done = c_
            return go & ~done & (k < 5000) & (steps >= 0)

        def body(c_):
            y_prev, h, steps, k, _ = c_
            # the infusion part, or the lag before the bolus
            first = jnp.where(infusion, dur, lag)
            h, y, used = integrate(ts, ts + first, h, y_prev, jnp.where(infusion, infusing, 0.0), p,
                                   go & (first > 0), budget - steps)
            steps = jnp.where(used < 0, -1, steps + used)
            y = jnp.where(infusion, y, y.at[c].add(f * amt))
            h, y, used = integrate(ts + first, ts + ii, h, y, jnp.zeros(n), p, go & (steps >= 0) & (first < ii),
                                   budget - steps)
            steps = jnp.where((used < 0) | (steps < 0), -1, steps + used)
            done = jnp.all(jnp.abs(y - y_prev) <= 0.1 * rtol * jnp.abs(y) + atol)
            return y, h, steps, k + 1, done

        y, h, steps, k, done = jax.lax.while_loop(
            cond, body, (y_reset, ii * 0.01, jnp.asarray(0), jnp.asarray(0), jnp.asarray(False)))
        return y, done & (steps >= 0)

    def events(Pm, s):
        """The subject's events sorted by time (stable, in the kernel's insertion order): times, kinds, index."""
        seg = s["dose_seg"]
        lagged, valid, ss, rate = s["dose_lagged"], s["dose_valid"], s["dose_ss"], s["dose_rate"]
        tl = jnp.where((lag_idx >= 0) & lagged, Pm[seg, max(lag_idx, 0)], 0.0)
        infusion = rate > 0
        t_dose, ii = s["dose_time"], s["dose_ii"]
        end = t_dose + s["dose_amt"] / jnp.where(infusion, rate, 1.0)
        cols_t = [jnp.where(valid & (ss == 1), t_dose, jnp.inf),
                  jnp.where(valid, jnp.where(infusion, t_dose, t_dose + tl), jnp.inf),
                  jnp.where(valid & infusion, end, jnp.inf)]
        cols_k = [jnp.full(D, 3), jnp.where(infusion, 1, 0), jnp.full(D, 2)]
        in_train = valid & (ss == 1) & lagged & ~infusion
        n_train = jnp.where(in_train, jnp.floor(tl / jnp.where(ii > 0, ii, 1.0)), 0.0)
        for j in range(1, trains + 1):
            cols_t.append(jnp.where(in_train & (j <= n_train), t_dose + tl - j * ii, jnp.inf))
            cols_k.append(jnp.zeros(D, int))
        width = len(cols_t)
        et = jnp.concatenate([jnp.where(jnp.isfinite(s["reset_time"]), s["reset_time"], jnp.inf),
                              jnp.stack(cols_t, axis=1).reshape(-1)])
        ek = jnp.concatenate([jnp.full(R, 4), jnp.stack(cols_k, axis=1).reshape(-1)])
        ed = jnp.concatenate([jnp.arange(R), jnp.repeat(jnp.arange(D), width)])
        order = jnp.argsort(jax.lax.stop_gradient(et), stable=True)
        too_long = jnp.any(n_train > trains)
        return et[order], ek[order], ed[order], jnp.sum(jnp.isfinite(et)), too_long

    def subject(Pflat, s):
        """Outputs (M, n) at the subject's observations (in time order; NaN past a failure)."""
        Pm = Pflat.reshape(-1, n_p)
        Y0 = init(Pm)
        et, ek, ed, m, too_long = events(Pm, s)
        ot, n_ob = s["ot"], s["n_obs"]
        last_ot = ot[jnp.maximum(n_ob - 1, 0)]
        budget = max_steps + DOPRI5["steps_per_stop"] * (m + n_ob)
        positions = jnp.arange(M)

        def cond(c):
            return ~c["done"]

        def body(c):
            t, h, y, rate, ep, op, g = c["t"], c["h"], c["y"], c["rate"], c["ep"], c["op"], c["g"]
            p = Pm[g]
            # -- the event logic at t (the kernel's inner loop, one action per iteration)
            has_ev, has_ob = ep < m, op < n_ob
            e = jnp.minimum(ep, et.shape[0] - 1)
            te = jnp.where(has_ev, et[e], jnp.inf)
            k, d = ek[e], ed[e]
            q = jnp.minimum(op, M - 1)
            to = ot[q]
            reset_first = (te < to) | ((te == to) & (s["reset_row"][jnp.minimum(d, R - 1)] < s["orow"][q]))
            dose_first = (te < to) | ((te == to) & ((k == 1) | (k == 2) | s["ofirst"][q, jnp.minimum(d, D - 1)]))
            ev_first = has_ev & jnp.where(k == 4, reset_first, dose_first)
            tn = jnp.where(ev_first, te, to)
            idle = ~c["integrating"] & has_ob
            start = idle & (tn > t)
            record = idle & ~(tn > t) & ~ev_first
            apply = idle & ~(tn > t) & ev_first
            # -- record the observation at t
            out = jnp.where(record & (positions == q)[:, None], y[None, :], c["out"])
            bnd = record & s["obnd"][q]
            # -- apply event ep at t
            dd = jnp.minimum(d, D - 1)
            cs, amt, r_ = s["dose_state"][dd], s["dose_amt"][dd], s["dose_rate"][dd]
            is_reset, is_bolus = apply & (k == 4), apply & (k == 0)
            p_dose = Pm[s["dose_seg"][dd]]   # F and ALAG of the segment in force at the dose's record
            f = jnp.where((f_idx >= 0) & s["dose_lagged"][dd], p_dose[max(f_idx, 0)], 1.0)
            y_ev = jnp.where(is_reset, Y0[g], y)
            y_ev = jnp.where(is_bolus, y_ev.at[cs].add(f * amt), y_ev)
            rate_ev = jnp.where(is_reset, 0.0, rate)
            rate_ev = jnp.where(apply & (k == 1), rate_ev.at[cs].add(r_), rate_ev)
            rate_ev = jnp.where(apply & (k == 2) & (s["dose_time"][dd] >= c["t_reset"]), rate_ev.at[cs].add(-r_),
                                rate_ev)
            failed = c["failed"]
            if steady:
                y_ss, ok = steady_state(apply & (k == 3), dd, t, Y0[g], p, p_dose, s)
                y_ev = jnp.where(apply & (k == 3), y_ss, y_ev)
                failed = failed | (apply & (k == 3) & ~ok)
            t_reset = jnp.where(is_reset, t, c["t_reset"])
            # -- start integrating towards the next stop
            target = jnp.where(start, jnp.minimum(jnp.minimum(te, s["ostop"][q]), last_ot), c["target"])
            h = jnp.where(is_reset | bnd, 0.0, h)
            h = jnp.where(start & (h == 0.0), jnp.maximum(target - t, tiny) * 0.01, h)
            # -- one DOPRI5 step (used when integrating)
            stepping = c["integrating"]
            hh = jnp.minimum(h, target - t)
            hh_safe = jnp.where(stepping, hh, 1.0)
            K, ys = stages(y, t, hh_safe, rate, p)
            err = error(y, ys, K, hh_safe)
            steps = c["steps"] + stepping
            bad = stepping & ((steps > budget) | ~jnp.isfinite(err))
            accept = stepping & ~bad & (err <= 1.0)
            clipped = hh < h
            t_new = jnp.where(clipped | (t + hh >= target), target, t + hh)
            x = (ot - t) / hh_safe
            dense = y[None, :] + hh_safe * (((DENSE.T @ K).T)[None, :, :] *
                                            (x[:, None, None] ** jnp.arange(1, 5)[None, None, :])).sum(-1)
            inside = accept & (positions >= op) & (ot <= t_new) & (ot < target)
            out = jnp.where(inside[:, None], jnp.where((ot == t_new)[:, None], ys[None, :], dense), out)
            reached = accept & (t_new >= target)
            return {
                "t": jnp.where(accept, t_new, t), "h": jnp.where(stepping, new_step(h, hh, err, accept, clipped), h),
                "y": jnp.where(accept, ys, jnp.where(apply, y_ev, y)),
                "rate": jnp.where(apply, rate_ev, rate), "ep": ep + apply, "op": op + record + inside.sum(),
                "g": g + bnd, "t_reset": t_reset, "target": target,
                "integrating": (c["integrating"] & ~reached & ~bad) | start,
                "steps": steps, "failed": failed | bad, "out": out,
                "done": failed | bad | ~(op + record + inside.sum() < n_ob),
            }

        c0 = {"t": s["t0"], "h": jnp.asarray(0.0), "y": Y0[0], "rate": jnp.zeros(n), "ep": jnp.asarray(0),
              "op": jnp.asarray(0), "g": jnp.asarray(0), "t_reset": -jnp.asarray(jnp.inf),
              "target": s["t0"], "integrating": jnp.asarray(False), "steps": jnp.asarray(0),
              "failed": too_long, "out": jnp.full((M, n), jnp.nan), "done": too_long | (n_ob == 0)}
        return jax.lax.while_loop(cond, body, c0)["out"]

    def jacobian(Pflat, s, cols):
        def f(v):
            out = subject(Pflat.at[cols].set(v), s)
            return out, out
        J, out = jax.jacfwd(f, has_aux=True)(Pflat[cols])
        return out, J                                   # (M, n), (M, n, len(cols))

    keys = sorted(sub)
    consts = [np.asarray(sub[k_]) for k_ in keys]
    flat_obs = obs_index[valid]

    def solve(P):
        G = P.shape[1] // n_p
        cols = np.flatnonzero(np.tile(active, G))
        s = dict(zip(keys, (jnp.asarray(c_) for c_ in consts)))
        y = jnp.zeros((n_obs, n), P.dtype)
        S = jnp.zeros((n_obs, n, P.shape[1]), P.dtype)
        if len(cols) == 0:
            out = jax.vmap(subject)(P, s)
            return y.at[flat_obs].set(out[valid]), S
        out, J = jax.vmap(lambda Pi, si: jacobian(Pi, si, cols))(P, s)
        S = S.at[flat_obs[:, None, None], np.arange(n)[None, :, None], cols[None, None, :]].set(J[valid])
        return y.at[flat_obs].set(out[valid]), S

    return solve
