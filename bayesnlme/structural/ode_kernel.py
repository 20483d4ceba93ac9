"""The compiled Dormand--Prince 5(4) integrator of :mod:`bayesnlme.structural.ode`: the Butcher tableau,
its dense output, and :func:`make_kernel`, which closes a numba loop over subjects, dose events and
observations around one compiled right-hand side (method, cost and step control are described in
:mod:`bayesnlme.structural.ode`)."""

from __future__ import annotations

import numba
import numpy as np

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
# dense output of DOPRI5 (Hairer & Wanner's 4th-order continuous extension, scipy's RK45 ``P``):
# y(t + x h) = y(t) + h sum_k (sum_j K_j _DENSE[j, k]) x^(k+1)
_DENSE = np.array([
    [1, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432],
    [0, 0, 0, 0],
    [0, 131558114200 / 32700410799, -68118460800 / 10900136933, 87487479700 / 32700410799],
    [0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072],
    [0, 127303824393 / 49829197408, -318862633887 / 49829197408, 701980252875 / 199316789632],
    [0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844],
    [0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423]])
_STEPS_PER_STOP = 100   # step budget per dose event / observation, on top of max_steps
_SS_BUDGET = 200        # step budget of one steady-state computation, in units of max_steps
_E = _B - np.array([5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40])
#: The method's constants, for another implementation of it (:mod:`~bayesnlme.structural.ode_dopri_jax`)
DOPRI5 = {"A": _A, "C": _C, "E": _E, "DENSE": _DENSE, "steps_per_stop": _STEPS_PER_STOP, "ss_budget": _SS_BUDGET}


def make_kernel(rhs, init, n, n_p, steady: bool):
    """The numba integrator for one compiled RHS (closure over the compiled functions).

    Subjects are integrated one after the other, each with its own adaptive steps; the
    scalar RHS makes one step cost a few hundred floating-point operations and no
    allocation.
    """
    width, n_out = n + 1 + n_p, n + n * n + n * n_p

    @numba.njit(cache=False)
    def _bolus(i, d, t, P, y, S, x, r, r2, dose_amt, dose_state, dose_lagged, f_idx, lag_idx, off):
        """Bolus dose d of subject i at time t: jump of its state, with F and ALAG sensitivities.

        ``off`` is the first column of the parameter segment in force at the dose's record
        (its F and ALAG).
        """
        c = dose_state[i, d]
        lagged = dose_lagged[i, d]
        if lag_idx >= 0 and lagged:   # d y / d ALAG jumps by f(y-) - f(y+)
            x[:n] = y
            x[n] = t
            rhs(x, r)
        y[c] += (P[i, off + f_idx] if f_idx >= 0 and lagged else 1.0) * dose_amt[i, d]
        if f_idx >= 0 and lagged:
            S[c, off + f_idx] += dose_amt[i, d]
        if lag_idx >= 0 and lagged:
            x[:n] = y
            x[n] = t
            rhs(x, r2)
            for a in range(n):
                S[a, off + lag_idx] += r[a] - r2[a]

    @numba.njit(cache=False)
    def _integrate(t, t_end, h, y, S, rate, x, r, K, KS, ys, Ss, cols, jb, rtol, atol, budget, obs_time, obs_order, op,
                   oend, out_y, out_s):
        """DOPRI5 of the states ``y`` and sensitivities ``S`` from t to t_end (in place).

        Observations ``obs_order[op:oend]`` strictly before t_end are written from the dense
        output.  Returns (next step size, steps taken or -1 when the budget is exceeded or the
        error is not finite, next observation pointer).
        """
        x[:n] = y
        x[n] = t
        rhs(x, r)
        _stage(r, rate, S, K, KS, 0, n, n_p, cols, jb)
        steps = 0
        while t < t_end:
            hh = min(h, t_end - t)
            for s in range(1, 7):
                for a in range(n):
                    acc = 0.0
                    for j in range(s):
                        acc += _A[s, j] * K[j, a]
                    ys[a] = y[a] + hh * acc
                    x[a] = ys[a]
                    for b in cols:
                        acc = 0.0
                        for j in range(s):
                            acc += _A[s, j] * KS[j, a, b]
                        Ss[a, b] = S[a, b] + hh * acc
                x[n] = t + _C[s] * hh
                rhs(x, r)
                _stage(r, rate, Ss, K, KS, s, n, n_p, cols, jb)
            steps += 1
            # ys/Ss hold stage 7 = the 5th-order solution (FSAL)
            err = 0.0
            for a in range(n):
                e = 0.0
                for j in range(7):
                    e += _E[j] * K[j, a]
                sc = atol + rtol * max(abs(y[a]), abs(ys[a]))
                err += (hh * e / sc) ** 2
            err = np.sqrt(err / n)
            if steps > budget or not np.isfinite(err):
                return h, -1, op
            if err <= 1.0:
                clipped = hh < h
                t_new = t_end if clipped or t + hh >= t_end else t + hh
                # observations inside the step (those at t_end wait for the event logic,
                # which orders them against a dose at the same time)
                while op < oend:
                    o = obs_order[op]
                    if obs_time[o] > t_new or obs_time[o] >= t_end:
                        break
                    if obs_time[o] == t_new:
                        out_y[o] = ys
                        out_s[o] = Ss
                    else:
                        _dense(K, KS, y, S, hh, (obs_time[o] - t) / hh, out_y[o], out_s[o], n, n_p, cols)
                    op += 1
                t = t_new
                y[:] = ys
                S[:, :] = Ss
                K[0] = K[6]
                KS[0] = KS[6]
                fac = 5.0 if err == 0.0 else min(5.0, max(0.2, 0.9 * err ** -0.2))
                h = max(h, hh * fac) if clipped else hh * fac
            else:
                h = hh * max(0.2, 0.9 * err ** -0.2)
        return h, steps, op

    @numba.njit(cache=False)
    def _steady_state(i, d, ts, P, Y0, S0, y, S, x, r, r2, K, KS, ys, Ss, cols, jb, g, G, off, dose_amt, dose_rate,
                      dose_state, dose_lagged, dose_ii, f_idx, lag_idx, rtol, atol, budget):
        """Reset subject i and replace its state at ts by the steady state of dose d every II.

        The state at the start of a dosing interval is the fixed point of one interval of
        dosing, found by iterating intervals from the initial state (what SS=1 means:
        reset, then the doses have been given forever); the sensitivities follow the same
        iteration and converge to the derivative of the fixed point.  Converged when one
        more interval changes no state by more than ``rtol / 10`` (relative, plus ``atol``)
        and no sensitivity by more than ``rtol / 10`` of its parameter's largest.  Returns
        the steps taken, or -1 (budget exceeded, no convergence in 5000 intervals).  The reset is
        to the initial state of the parameter segment ``g`` in force; ``off`` is the first column
        of the dose's segment.
        """
        ii, c, amt, R = dose_ii[i, d], dose_state[i, d], dose_amt[i, d], dose_rate[i, d]
        lagged = dose_lagged[i, d]
        _reset(i, g, G, Y0, S0, y, S)
        rate = np.zeros(n)
        yp = np.empty(n)
        Sp = np.empty(S.shape)
        no_obs = np.empty(0)
        no_order = np.empty(0, np.int64)
        no_out_y = np.empty((0, n))
        no_out_s = np.empty((0, n, S.shape[1]))
        h = ii * 0.01
        steps = 0
        for _ in range(5000):
            yp[:] = y
            Sp[:, :] = S
            if R > 0:
                # infusion of AMT/RATE (<= II, checked by schedule) from the start of the interval
                dur = amt / R
                rate[c] = R
                h, used, _o = _integrate(ts, ts + dur, h, y, S, rate, x, r, K, KS, ys, Ss, cols, jb, rtol, atol,
                                         budget - steps, no_obs, no_order, 0, 0, no_out_y, no_out_s)
                rate[c] = 0.0
                if used < 0:
                    return -1
                steps += used
                start = ts + dur
            else:
                # bolus at its lag (modulo II) into the interval
                lag = (P[i, off + lag_idx] % ii) if lag_idx >= 0 and lagged else 0.0
                if lag > 0:
                    h, used, _o = _integrate(ts, ts + lag, h, y, S, rate, x, r, K, KS, ys, Ss, cols, jb, rtol, atol,
                                             budget - steps, no_obs, no_order, 0, 0, no_out_y, no_out_s)
                    if used < 0:
                        return -1
                    steps += used
                _bolus(i, d, ts + lag, P, y, S, x, r, r2, dose_amt, dose_state, dose_lagged, f_idx, lag_idx, off)
                start = ts + lag
            if start < ts + ii:
                h, used, _o = _integrate(start, ts + ii, h, y, S, rate, x, r, K, KS, ys, Ss, cols, jb, rtol, atol,
                                         budget - steps, no_obs, no_order, 0, 0, no_out_y, no_out_s)
                if used < 0:
                    return -1
                steps += used
            done = True
            for a in range(n):
                if abs(y[a] - yp[a]) > 0.1 * rtol * abs(y[a]) + atol:
                    done = False
            for b in cols:
                scale = 0.0
                for a in range(n):
                    scale = max(scale, abs(S[a, b]))
                for a in range(n):
                    if abs(S[a, b] - Sp[a, b]) > 0.1 * rtol * scale:
                        done = False
            if done:
                return steps
        return -1

    if not steady:
        @numba.njit(cache=False)
        def _steady_state(i, d, ts, P, Y0, S0, y, S, x, r, r2, K, KS, ys, Ss, cols, jb, g, G, off, dose_amt,
                          dose_rate, dose_state, dose_lagged, dose_ii, f_idx, lag_idx, rtol, atol, budget):
            return -1   # never called: the schedule chose the kernel without SS doses

    @numba.njit(cache=False)
    def kernel(P, t0, obs_time, obs_order, obs_start, obs_first, dose_time, dose_amt, dose_rate,
               dose_state, dose_lagged, dose_valid, dose_ss, dose_ii, reset_time, reset_row, obs_row,
               obs_boundary, seg_stop, dose_seg, idx, opts):
        P = np.ascontiguousarray(P)   # one type specialisation of the compiled functions
        n_sub = P.shape[0]
        G = P.shape[1] // n_p   # parameter segments (piecewise-constant parameters), n_p columns each
        ncol = G * n_p
        n_obs = obs_time.shape[0]
        D = dose_time.shape[1]
        f_idx, lag_idx = idx[0], idx[1]
        act = np.nonzero(idx[2:])[0]   # parameters whose sensitivities are needed
        rtol, atol, max_steps = opts[0], opts[1], int(opts[2])
        out_y = np.full((n_obs, n), np.nan)
        out_s = np.zeros((n_obs, n, ncol))   # columns of segments not reached (yet) stay 0
        init_out = init(np.ascontiguousarray(P.reshape((n_sub * G, n_p))))   # initial states of every segment
        Y0, S0 = init_out[0], init_out[1]
        x = np.empty(width)
        r = np.empty(n_out)
        r2 = np.empty(n_out)
        K = np.zeros((7, n))
        KS = np.zeros((7, n, ncol))
        ys = np.empty(n)
        Ss = np.empty((n, ncol))
        y = np.empty(n)
        S = np.empty((n, ncol))
        rate = np.empty(n)
        for i in range(n_sub):
            # events: kind 4 reset (EVID 3/4), 3 steady-state reset (SS=1, at the record time),
            # 0 bolus, 1 infusion start, 2 infusion end; sorted by time (stable: a reset precedes
            # its own dose and the doses of later records at its time).
            # A lagged SS dose with ALAG >= II has floor(ALAG / II) doses of its train still
            # in their lag at the record time: they arrive after it, as boluses.
            R = reset_time.shape[1]
            cap = 3 * D + R
            for d in range(D):
                lag = P[i, dose_seg[i, d] * n_p + lag_idx] if lag_idx >= 0 else 0.0
                if dose_valid[i, d] and dose_ss[i, d] == 1 and dose_lagged[i, d] and dose_rate[i, d] <= 0:
                    cap += int(lag // dose_ii[i, d])
            ev_t = np.empty(cap)
            ev_k = np.empty(cap, np.int64)
            ev_d = np.empty(cap, np.int64)
            m = 0
            for q in range(R):
                if np.isfinite(reset_time[i, q]):
                    ev_t[m], ev_k[m], ev_d[m] = reset_time[i, q], 4, q
                    m += 1
            for d in range(D):
                if not dose_valid[i, d]:
                    continue
                if dose_ss[i, d] == 1:
                    ev_t[m], ev_k[m], ev_d[m] = dose_time[i, d], 3, d
                    m += 1
                if dose_rate[i, d] > 0:
                    ev_t[m], ev_k[m], ev_d[m] = dose_time[i, d], 1, d
                    ev_t[m + 1], ev_k[m + 1], ev_d[m + 1] = dose_time[i, d] + dose_amt[i, d] / dose_rate[i, d], 2, d
                    m += 2
                else:
                    # the lag (and F) of the parameter segment in force at the dose's record
                    tl = P[i, dose_seg[i, d] * n_p + lag_idx] if lag_idx >= 0 and dose_lagged[i, d] else 0.0
                    ev_t[m], ev_k[m], ev_d[m] = dose_time[i, d] + tl, 0, d
                    m += 1
                    if dose_ss[i, d] == 1:
                        for j in range(1, int(tl // dose_ii[i, d]) + 1):
                            ev_t[m], ev_k[m], ev_d[m] = dose_time[i, d] + tl - j * dose_ii[i, d], 0, d
                            m += 1
            order = np.argsort(ev_t[:m], kind="mergesort")
            et, ek, ed = ev_t[:m][order], ev_k[:m][order], ev_d[:m][order]
            # parameter segment 0; a later one starts right after its boundary observation is recorded
            g = 0
            x[n + 1:] = P[i, :n_p]
            cols, jb = _columns(act, g, n_p)
            Ss[:, :] = 0.0   # columns enter the integration segment by segment: the others stay 0
            KS[:, :, :] = 0.0
            _reset(i, g, G, Y0, S0, y, S)
            rate[:] = 0.0
            t, h, target = t0[i], 0.0, t0[i]
            t_reset = -np.inf   # infusions started before the last reset no longer run
            ep, op, oend = 0, obs_start[i], obs_start[i + 1]
            # step budget: a base plus a share per stop (dose event or observation); past it
            # the subject's remaining outputs stay NaN (log density -inf, the sampler rejects
            # the point).  Reached only where an explicit method meets severe stiffness, e.g.
            # KA of thousands per hour in early warm-up, where one evaluation would otherwise
            # take seconds.
            steps, budget = 0, max_steps + _STEPS_PER_STOP * (m + oend - op)
            failed = False
            while not failed:
                # apply the events and record the observations at t; find the next stop
                finished = False
                while True:
                    has_ev, has_ob = ep < m, op < oend
                    if not has_ob:   # nothing left to record: later doses do not matter
                        finished = True
                        break
                    te = et[ep] if has_ev else np.inf
                    o = obs_order[op]
                    to = obs_time[o]
                    # a dose (or SS reset) at an observation's time comes first only if it
                    # precedes it in the records; infusion starts/ends make no jump
                    if has_ev and ek[ep] == 4:   # a reset at an observation's time: by record order
                        ev_first = te < to or (te == to and reset_row[i, ed[ep]] < obs_row[o])
                    else:
                        ev_first = has_ev and (te < to or (te == to and (ek[ep] == 1 or ek[ep] == 2
                                                                          or obs_first[o, ed[ep]])))
                    tn = te if ev_first else to
                    if tn > t:
                        # integrate to the next dose event, the end of the parameter segment or the
                        # last observation; observations on the way come from the dense output
                        target = min(te, seg_stop[op], obs_time[obs_order[oend - 1]])
                        break
                    if not ev_first:
                        out_y[o] = y
                        out_s[o] = S
                        op += 1
                        if obs_boundary[o]:   # the next record's parameters hold from here on
                            g += 1
                            x[n + 1:] = P[i, g * n_p:(g + 1) * n_p]
                            cols, jb = _columns(act, g, n_p)
                            h = 0.0
                        continue
                    d, k = ed[ep], ek[ep]
                    ep += 1
                    if k == 4:   # EVID 3/4: every state back to its initial value, infusions stop
                        _reset(i, g, G, Y0, S0, y, S)
                        rate[:] = 0.0
                        t_reset = t
                        h = 0.0
                        continue
                    c = dose_state[i, d]
                    if k == 1:
                        rate[c] += dose_rate[i, d]
                    elif k == 2:
                        if dose_time[i, d] >= t_reset:
                            rate[c] -= dose_rate[i, d]
                    elif k == 3:
                        used = _steady_state(i, d, t, P, Y0, S0, y, S, x, r, r2, K, KS, ys, Ss, cols, jb, g, G,
                                             dose_seg[i, d] * n_p, dose_amt, dose_rate, dose_state, dose_lagged,
                                             dose_ii, f_idx, lag_idx, rtol, atol, _SS_BUDGET * max_steps)
                        if used < 0:
                            failed = True
                            break
                    else:
                        _bolus(i, d, t, P, y, S, x, r, r2, dose_amt, dose_state, dose_lagged, f_idx, lag_idx,
                               dose_seg[i, d] * n_p)
                if finished or failed:
                    break
                if h == 0.0:
                    h = max(target - t, 1e-6) * 0.01
                h, used, op = _integrate(t, target, h, y, S, rate, x, r, K, KS, ys, Ss, cols, jb, rtol, atol,
                                         budget - steps,
                                         obs_time, obs_order, op, oend, out_y, out_s)
                if used < 0:
                    break   # outputs of the rest of this subject stay NaN
                steps += used
                t = target
        for g in range(G):
            for b in range(n_p):
                if not idx[2 + b]:
                    out_s[:, :, g * n_p + b] = 0.0   # not needed (a constant parameter): not integrated
        return out_y, out_s

    return kernel


@numba.njit(cache=True)
def _dense(K, KS, y, S, h, x, out_y, out_s, n, n_p, cols):
    """States and sensitivities (columns ``cols``) at ``t + x h`` inside an accepted step (dense output)."""
    for a in range(n):
        acc = 0.0
        for k in range(4):
            q = 0.0
            for j in range(7):
                q += K[j, a] * _DENSE[j, k]
            acc += q * x ** (k + 1)
        out_y[a] = y[a] + h * acc
        for b in cols:
            acc = 0.0
            for k in range(4):
                q = 0.0
                for j in range(7):
                    q += KS[j, a, b] * _DENSE[j, k]
                acc += q * x ** (k + 1)
            out_s[a, b] = S[a, b] + h * acc


@numba.njit(cache=True)
def _stage(r, rate, S, K, KS, s, n, n_p, cols, jb):
    """Stage derivative: y' = f + infusion rate, S' = J_y S + J_p.

    ``r`` holds f_a, then J_y[a, c] (at n + a n + c), then J_p[a, b] (at n + n^2 + a n_p + b).
    Sensitivity column ``cols[k]`` belongs to parameter ``jb[k]`` of the segment in force, or
    (``jb[k] = -1``) to an earlier segment, whose parameters no longer enter the RHS.
    """
    for a in range(n):
        K[s, a] = r[a] + rate[a]
        for k in range(cols.shape[0]):
            b = cols[k]
            acc = r[n + n * n + a * n_p + jb[k]] if jb[k] >= 0 else 0.0
            for c in range(n):
                acc += r[n + a * n + c] * S[c, b]
            KS[s, a, b] = acc


@numba.njit(cache=True)
def _columns(act, g, n_p):
    """Sensitivity columns integrated in parameter segment ``g``: the active parameters of segments
    0..g (later ones are still 0), and each column's parameter in the RHS's Jacobian (-1: an
    earlier segment's)."""
    m = act.shape[0]
    cols = np.empty((g + 1) * m, np.int64)
    jb = np.empty((g + 1) * m, np.int64)
    for q in range(g + 1):
        for k in range(m):
            cols[q * m + k] = q * n_p + act[k]
            jb[q * m + k] = act[k] if q == g else -1
    return cols, jb


@numba.njit(cache=True)
def _reset(i, g, G, Y0, S0, y, S):
    """States of subject ``i`` back to their initial values under parameter segment ``g`` (EVID 3/4, SS)."""
    n_p = S0.shape[2]
    y[:] = Y0[i * G + g]
    S[:, :] = 0.0
    S[:, g * n_p:(g + 1) * n_p] = S0[i * G + g]
