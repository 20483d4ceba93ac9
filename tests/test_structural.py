"""Closed-form PK models (bayesnlme.structural) against numerical ODE solutions.

The reference integrates the linear system [depot, central, peripheral] with
scipy's LSODA at rtol=1e-11, atol=1e-14, piecewise between dose events (bolus
amounts added to the states, infusions as constant inputs, depot doses shifted
by ALAG and scaled by F).  Closed forms must agree to 1e-6 relative.
"""

from decimal import Decimal, getcontext

import numpy as np
import pandas as pd
import pytensor
import pytensor.tensor as pt
import pytest
from numpy.testing import assert_allclose
from scipy.integrate import solve_ivp

from bayesnlme import structural as S
from bayesnlme.data import read_nonmem
from bayesnlme.errors import DataError

MODELS = ["1cmt_iv", "1cmt_oral", "2cmt_iv", "2cmt_oral"]
ORAL = ["1cmt_oral", "2cmt_oral"]
BASE = {  # k10 = 0.1/h (1cmt); 2cmt: k10 = 0.2, k12 = 1/3, k21 = 0.125
    "1cmt_iv": dict(CL=2.0, V=20.0),
    "1cmt_oral": dict(CL=2.0, V=20.0, KA=1.2, F=0.7, ALAG=0.5),
    "2cmt_iv": dict(CL=3.0, V=15.0, Q=5.0, V2=40.0),
    "2cmt_oral": dict(CL=3.0, V=15.0, Q=5.0, V2=40.0, KA=0.9, F=0.7, ALAG=0.5),
}
COLS = ["TIME", "DV", "AMT", "EVID", "MDV", "CMT", "RATE", "DUR", "II", "ADDL"]


# ----------------------------------------------------------------------------- data helpers

def dose(t, amt, cmt=1, evid=1, **kw):
    """A dose record; CMT 1 is the depot of oral models and the central cmt of IV models."""
    return dict(TIME=t, AMT=amt, CMT=cmt, EVID=evid, MDV=1, **kw)


def obs(t):
    return dict(TIME=t, EVID=0, MDV=0)


def reset(t):
    return dict(TIME=t, EVID=3, MDV=1)


def records(doses, times, trough=False):
    """Doses and observations in time order; at equal times doses come first unless trough."""
    tagged = [(d["TIME"], 0, i, d) for i, d in enumerate(doses)]
    tagged += [(t, -1 if trough else 1, i, obs(t)) for i, t in enumerate(times)]
    return [r for *_, r in sorted(tagged, key=lambda x: x[:3])]


def make_data(*subjects):
    rows = [{"ID": i + 1, **{c: 0.0 for c in COLS}, **r} for i, recs in enumerate(subjects) for r in recs]
    return read_nonmem(pd.DataFrame(rows, columns=["ID"] + COLS))


def stack(plist):
    return {k: np.array([p[k] for p in plist], float) for k in plist[0]}


# ----------------------------------------------------------------------------- ODE reference

def ode_reference(p, doses, times, oral, trough=False):
    """Central concentration at ``times`` by numerical integration of the linear ODEs."""
    k10, k12 = p["CL"] / p["V"], p.get("Q", 0.0) / p["V"]
    k21, ka = p.get("Q", 0.0) / p.get("V2", 1.0), p.get("KA", 0.0)
    F, alag = p.get("F", 1.0), p.get("ALAG", 0.0)
    M = np.array([[-ka, 0.0, 0.0], [ka, -(k10 + k12), k21], [0.0, k12, -k21]])
    boluses, infusions = [], []
    for d in doses:
        for n in range(int(d.get("ADDL", 0)) + 1):
            t = d["TIME"] + n * d.get("II", 0.0)
            rate = d["AMT"] / d["DUR"] if d.get("DUR", 0) > 0 else d.get("RATE", 0.0)
            if oral and d["CMT"] == 1:
                boluses.append((t + alag, 0, F * d["AMT"]))
            elif rate > 0:
                infusions.append((t, t + d["AMT"] / rate, rate))
            else:
                boluses.append((t, 1, d["AMT"]))
    grid = sorted({b[0] for b in boluses} | {x for s, e, _ in infusions for x in (s, e)} | set(times))
    y, t_cur, amount = np.zeros(3), grid[0], {}
    for tb in grid:
        if tb > t_cur:
            u = np.array([0.0, sum(r for s, e, r in infusions if s <= t_cur and e >= tb), 0.0])
            sol = solve_ivp(lambda _, x: M @ x + u, (t_cur, tb), y, method="LSODA", jac=lambda *_: M,
                            rtol=1e-11, atol=1e-14)
            assert sol.success
            y, t_cur = sol.y[:, -1], tb
        if trough:
            amount[tb] = y[1]
        for tbol, i, a in boluses:
            if tbol == tb:
                y[i] += a
        if not trough:
            amount[tb] = y[1]
    return np.array([amount[t] for t in times]) / p["V"]


def check_against_ode(name, subjects):
    """subjects: list of (params, doses, times, trough). One evaluate call; returns per-subject preds."""
    model = S.LIBRARY[name]
    data = make_data(*(records(d, t, tr) for _, d, t, tr in subjects))
    pred = S.evaluate(model, stack([s[0] for s in subjects]), data)
    assert pred.shape == (data.n_obs,) and np.all(np.isfinite(pred))
    out = []
    for i, (p, d, t, tr) in enumerate(subjects):
        got = pred[data.obs_subject == i]
        ref = ode_reference(p, d, t, name in ORAL, tr)
        assert_allclose(got, ref, rtol=1e-6, atol=1e-10 * max(np.abs(ref).max(), 1e-300),
                        err_msg=f"{name}, subject {i + 1}")
        out.append(got)
    return out


def two_cmt_macro(p):
    k10, k12, k21 = p["CL"] / p["V"], p["Q"] / p["V"], p["Q"] / p["V2"]
    s = k10 + k12 + k21
    alpha = 0.5 * (s + np.sqrt(s * s - 4.0 * k10 * k21))
    return alpha, k10 * k21 / alpha


# ----------------------------------------------------------------------------- tests

def test_library_aliases():
    assert S.LIBRARY["1cmt_infusion"] is S.LIBRARY["1cmt_iv"]
    assert S.LIBRARY["2cmt_infusion"] is S.LIBRARY["2cmt_iv"]
    assert S.LIBRARY["2cmt_oral"].depot_cmt == 1 and S.LIBRARY["2cmt_oral"].central_cmt == 2


def test_exp_difference_against_high_precision():
    getcontext().prec = 60
    a = np.array([0.1, 0.1, 0.1, 0.1, 2.0, 0.01, 0.3, 1e-3, 0.5])
    b = np.array([0.1, 0.1 * (1 + 1e-12), 0.1 * (1 - 1e-7), 0.1 * (1 + 1e-3), 0.05, 50.0, 0.3, 1e-3, 0.5])
    t = np.array([5.0, 5.0, 7.0, 3.0, 11.0, 1000.0, 0.0, 2000.0, 1e-9])
    got = pytensor.function([], S.pk.exp_difference(pt.as_tensor(a), pt.as_tensor(b), pt.as_tensor(t)))()
    ref = []
    for ai, bi, ti in zip(map(Decimal, a), map(Decimal, b), map(Decimal, t)):
        ref.append(float(ti * (-ai * ti).exp() if ai == bi else ((-ai * ti).exp() - (-bi * ti).exp()) / (bi - ai)))
    assert_allclose(got, ref, rtol=1e-12, atol=0)
    # at a == b the derivative w.r.t. each argument is -t^2 exp(-a t) / 2
    x, y = pt.dscalars("x", "y")
    e = S.pk.exp_difference(x, y, 3.0)
    grads = pytensor.function([x, y], pytensor.grad(e, [x, y]))(0.1, 0.1)
    assert_allclose(grads, [-4.5 * np.exp(-0.3)] * 2, rtol=1e-12)


@pytest.mark.parametrize("name", MODELS)
def test_single_dose(name):
    p, central = BASE[name], 2 if name in ORAL else 1
    times = [0.0, 0.25, 0.5, 0.75, 1.0, 2.0, 2.5, 3.0, 6.0, 12.0, 24.0, 48.0, 96.0]
    subjects = [
        (p, [dose(0.0, 100.0, central)], times, False),                 # IV bolus
        (p, [dose(0.0, 100.0, central, RATE=50.0)], times, False),      # infusion, ends at 2
        (p, [dose(0.0, 100.0, central, DUR=2.5)], times, False),        # infusion, ends at 2.5
        (p, [dose(0.0, 100.0, central, DUR=2.0)], times, False),        # same as RATE=50
    ]
    if name in ORAL:
        subjects.append((p, [dose(0.0, 100.0, 1)], times, False))       # depot, F=0.7, ALAG=0.5
    preds = check_against_ode(name, subjects)
    assert preds[0][0] == pytest.approx(100.0 / p["V"], rel=1e-14)    # bolus: jump at t=0
    assert preds[1][0] == 0.0 and preds[2][0] == 0.0
    assert_allclose(preds[3], preds[1], rtol=1e-13, atol=0)             # DUR and RATE agree
    if name in ORAL:
        assert np.all(preds[4][np.array(times) <= p["ALAG"]] == 0.0)
        assert np.all(preds[4][np.array(times) > p["ALAG"]] > 0.0)
        if name == "1cmt_oral":  # Bateman function
            tl, k, ka = np.array(times[3:]) - 0.5, 0.1, 1.2
            bateman = 0.7 * 100 * ka / (20.0 * (ka - k)) * (np.exp(-k * tl) - np.exp(-ka * tl))
            assert_allclose(preds[4][3:], bateman, rtol=1e-12)


@pytest.mark.parametrize("name", MODELS)
def test_repeated_doses(name):
    p, oral = BASE[name], name in ORAL
    times = sorted(set(np.arange(1.0, 132.0, 3.5).tolist() + [12.0 * i for i in range(1, 11)] + [0.5, 130.0]))
    explicit = [dose(12.0 * i, 100.0) for i in range(10)]
    addl = [dose(0.0, 100.0, ADDL=9, II=12.0)]
    subjects = [(p, explicit, times, True), (p, addl, times, True)]  # trough at dosing times
    if oral:  # depot doses plus an IV bolus and an infusion into the central cmt (CMT 2)
        mixed = [dose(0.0, 100.0, ADDL=3, II=12.0), dose(30.0, 50.0, 2), dose(50.0, 40.0, 2, DUR=1.0),
                 dose(60.0, 80.0), dose(60.0, 20.0, 2)]
        subjects.append((p, mixed, times, False))
    else:  # repeated infusions with ADDL, overlapping in part with a bolus
        subjects.append((p, [dose(0.0, 100.0, RATE=40.0, ADDL=9, II=12.0), dose(37.0, 30.0)], times, False))
    preds = check_against_ode(name, subjects)
    assert_allclose(preds[0], preds[1], rtol=1e-13, atol=0)


@pytest.mark.parametrize("name", ORAL)
def test_flip_flop(name):
    base = BASE[name]
    if name == "1cmt_oral":
        k = base["CL"] / base["V"]
        kas = [k, k * (1 + 1e-9), k * (1 - 1e-12), k * (1 + 1e-4), k * (1 - 1e-4)]
    else:
        alpha, beta = two_cmt_macro(base)
        kas = [alpha, beta, beta * (1 + 1e-9), alpha * (1 - 1e-9), beta * (1 + 1e-4), alpha * (1 - 1e-4)]
    doses = [dose(0.0, 100.0), dose(24.0, 100.0), dose(36.0, 50.0)]
    times = [0.0, 0.5, 1.0, 2.0, 5.0, 12.0, 24.0, 24.5, 30.0, 36.0, 48.0, 96.0, 200.0]
    subjects = [({**base, "KA": ka}, doses, times, False) for ka in kas]
    preds = check_against_ode(name, subjects)
    if name == "1cmt_oral":  # analytic limit KA == k: C = F D k (t - ALAG) exp(-k (t - ALAG)) / V
        t = np.array(times)
        lim = sum(0.7 * amt * k * np.where(t - t0 - 0.5 > 0, (t - t0 - 0.5) * np.exp(-k * (t - t0 - 0.5)), 0.0)
                  for t0, amt in [(0.0, 100.0), (24.0, 100.0), (36.0, 50.0)]) / base["V"]
        assert_allclose(preds[0], lim, rtol=1e-12, atol=1e-14 * lim.max())
        assert_allclose(preds[1], lim, rtol=1e-7)


@pytest.mark.parametrize("name", MODELS)
def test_many_doses_steady_state(name):
    p, oral = BASE[name], name in ORAL
    times = [1.0, 7.5, 1500.25, 2988.0, 2990.0, 2994.0, 2995.0, 2997.0, 2999.5, 3000.0, 3005.0, 3100.0]
    regimen = [dose(0.0, 100.0, ADDL=499, II=6.0)]
    subjects = [(p, regimen, times, True)]
    if oral:  # flip-flop under 500 doses
        ka = p["CL"] / p["V"] if name == "1cmt_oral" else two_cmt_macro(p)[1]
        subjects.append(({**p, "KA": ka}, regimen, times, True))
    else:  # 500 infusions of 1.5 h
        subjects.append((p, [dose(0.0, 100.0, DUR=1.5, ADDL=499, II=6.0)], times, False))
    preds = check_against_ode(name, subjects)
    if name == "1cmt_iv":  # steady-state trough and peak of a bolus regimen
        k, tau, V = 0.1, 6.0, p["V"]
        trough = 100.0 / V * np.exp(-k * tau) / (1 - np.exp(-k * tau))
        assert preds[0][times.index(2994.0)] == pytest.approx(trough, rel=1e-10)
        assert preds[0][times.index(2995.0)] == pytest.approx((trough + 100 / V) * np.exp(-k), rel=1e-10)


def test_subjects_vectorised():
    name = "2cmt_oral"
    plist = [dict(CL=3.0, V=15.0, Q=5.0, V2=40.0, KA=0.9, F=0.7, ALAG=0.5),
             dict(CL=0.5, V=60.0, Q=0.2, V2=10.0, KA=4.0, F=1.0, ALAG=0.0),
             dict(CL=12.0, V=8.0, Q=30.0, V2=200.0, KA=0.05, F=0.3, ALAG=2.0),
             dict(CL=1.0, V=10.0, Q=1.0, V2=10.0, KA=1.0, F=0.5, ALAG=0.1)]
    subjects = [
        (plist[0], [dose(0.0, 100.0, ADDL=2, II=8.0)], [1.0, 4.0, 8.0, 20.0, 30.0], True),
        (plist[1], [dose(0.0, 500.0), dose(3.0, 50.0, 2, RATE=25.0)], [0.5, 2.0, 5.0, 10.0, 100.0, 400.0], False),
        (plist[2], [dose(1.0, 70.0)] + [dose(2.0 + i, 10.0, 2) for i in range(12)],
         [0.0, 3.0, 3.0, 6.5, 13.0, 14.0, 40.0, 72.0], False),
        (plist[3], [], [1.0, 5.0], False),  # no doses: zero, padded
    ]
    preds = check_against_ode(name, subjects)
    assert np.all(preds[3] == 0.0)


@pytest.mark.parametrize("name", ORAL)
def test_gradient_near_flip_flop(name):
    model, base = S.LIBRARY[name], BASE[name]
    doses = [dose(0.0, 100.0), dose(12.0, 100.0), dose(20.0, 30.0, 2)]
    data = make_data(records(doses, [0.25, 1.0, 3.0, 8.0, 12.0, 16.0, 24.0, 48.0, 96.0]))
    names = list(model.parameters)
    xs = pt.dscalars(*names)
    ones = np.ones(data.n_obs)
    params = {n: x * ones for n, x in zip(names, xs)}
    params.update(F=0.7 * ones, ALAG=0.5 * ones)
    f = pt.sum(model.function(params, S.dose_events(data, model)) * np.linspace(1.0, 2.0, data.n_obs))
    # 1cmt: compiled as in production; 2cmt: FAST_COMPILE (no C compilation of the large
    # gradient graph, which would take ~30 s on a cold cache; the gradient graph is the same)
    fn = pytensor.function(xs, [f, *pytensor.grad(f, xs)], mode=None if name == "1cmt_oral" else "FAST_COMPILE")
    if name == "1cmt_oral":
        k = base["CL"] / base["V"]
        kas = [k, k * (1 + 1e-7), k * (1 - 1e-6), k * (1 + 1e-3), 3.0 * k]
    else:
        alpha, beta = two_cmt_macro(base)
        kas = [beta, alpha, beta * (1 + 1e-7), alpha * (1 - 1e-3), 2.0]
    for ka in kas:
        x0 = np.array([base[n] for n in names[:-1]] + [ka])
        val, *grad = fn(*x0)
        grad = np.array(grad)
        assert np.isfinite(val) and np.all(np.isfinite(grad)), (ka, grad)
        fd = np.empty(len(x0))
        for j in range(len(x0)):
            h = 1e-5 * x0[j]
            up, dn = x0.copy(), x0.copy()
            up[j] += h
            dn[j] -= h
            fd[j] = (fn(*up)[0] - fn(*dn)[0]) / (up[j] - dn[j])
        assert_allclose(grad, fd, rtol=1e-5, atol=1e-9 * abs(val), err_msg=f"{name}: KA={ka!r}, d/d{names}")


def test_event_ordering_resets_and_addl():
    V, k = 20.0, 0.1
    c = lambda amt, t: amt / V * np.exp(-k * np.asarray(t, float))  # noqa: E731
    subjects = [
        # observation before / after a bolus at the same time
        [dose(0.0, 100.0), obs(12.0), dose(12.0, 100.0), obs(12.0), obs(13.0)],
        # ADDL-implied doses come after observations at the same time (trough)
        [dose(0.0, 100.0, ADDL=2, II=12.0), obs(12.0), obs(24.0), obs(30.0)],
        # EVID=3 reset wipes earlier doses (an observation before it in the file does not see the reset)
        [dose(0.0, 100.0), obs(5.0), obs(10.0), reset(10.0), obs(10.0), obs(15.0), dose(20.0, 100.0), obs(25.0)],
        # EVID=4 resets and doses; the earlier record's implied doses after it are cancelled
        [dose(0.0, 100.0, ADDL=5, II=12.0), obs(29.0), dose(30.0, 50.0, evid=4, ADDL=1, II=12.0),
         obs(30.0), obs(40.0), obs(48.0)],
    ]
    expected = [
        [c(100, 12), c(100, 12) + 100 / V, c(100, [13, 1]).sum()],
        [c(100, 12), c(100, [24, 12]).sum(), c(100, [30, 18, 6]).sum()],
        [c(100, 5), c(100, 10), 0.0, 0.0, c(100, 5)],
        [c(100, [29, 17, 5]).sum(), 50 / V, c(50, 10), c(50, [18, 6]).sum()],
    ]
    data = make_data(*subjects)
    pred = S.evaluate(S.LIBRARY["1cmt_iv"], dict(CL=2.0, V=V), data)
    for i, exp in enumerate(expected):
        assert_allclose(pred[data.obs_subject == i], exp, rtol=1e-12, atol=0, err_msg=f"subject {i + 1}")


def test_infusion_into_depot_is_rejected():
    data = make_data([dose(0.0, 100.0, 1, RATE=10.0), obs(1.0)])
    with pytest.raises(DataError, match="depot"):
        S.dose_events(data, S.LIBRARY["1cmt_oral"])


@pytest.mark.parametrize("name", ["1cmt_oral", "2cmt_oral", "3cmt_oral", "2cmt_iv"])
def test_per_subject_derivation_equals_per_observation(name):
    """The builder passes SubjectParams: rate constants, coefficients, 1/V and 1/(KA - lambda) are
    derived once per subject and gathered.  Values and gradients equal the per-observation
    evaluation, including a subject with KA exactly equal to CL/V (the flip-flop series)."""
    model = S.LIBRARY[name]
    base = {"CL": 3.0, "V": 15.0, "Q": 5.0, "V2": 40.0, "Q3": 1.0, "V3": 80.0, "KA": 0.9, "F": 0.7, "ALAG": 0.5}
    doses = [dose(0.0, 100.0), dose(12.0, 100.0)]
    data = make_data(*[records(doses, [0.25, 1.0, 3.0, 8.0, 12.5, 24.0, 48.0])] * 3)
    names = [n for n in model.parameters] + [n for n in ("F", "ALAG") if n in model.optional]
    xs = pt.dvectors(*names)
    idx = data.obs_subject
    by_sub = dict(zip(names, xs))
    by_obs = {n: x[idx] for n, x in by_sub.items()}
    ev = S.dose_events(data, model)
    w = np.linspace(1.0, 2.0, data.n_obs)
    f_sub = pt.sum(w * model.function(S.pk.SubjectParams(by_obs, by_sub, idx), ev))
    f_obs = pt.sum(w * model.function(dict(by_obs), ev))
    fn = pytensor.function(xs, [f_sub, f_obs, *pytensor.grad(f_sub, xs), *pytensor.grad(f_obs, xs)],
                           mode="FAST_COMPILE")
    rng = np.random.default_rng(3)
    vals = [base[n] * np.exp(rng.normal(0, 0.3, 3)) for n in names]
    if "KA" in names and name == "1cmt_oral":
        vals[names.index("KA")][1] = vals[names.index("CL")][1] / vals[names.index("V")][1]
    _same_value_and_gradients(fn(*vals), len(names), rtol=1e-12, rtol_grad=1e-9, atol_grad=1e-12)


def _same_value_and_gradients(out, k, rtol, rtol_grad, atol_grad):
    """``out`` = two values, then the k gradients of each: the values are positive and equal, the
    gradients finite and equal (``atol_grad`` relative to the value)."""
    assert np.isfinite(out[0]) and out[0] > 0
    assert_allclose(out[0], out[1], rtol=rtol)
    for g_first, g_second in zip(out[2:2 + k], out[2 + k:]):
        assert np.all(np.isfinite(g_first))
        assert_allclose(g_first, g_second, rtol=rtol_grad, atol=atol_grad * abs(out[0]))


@pytest.mark.parametrize("name", ORAL)
@pytest.mark.parametrize("lag", [False, True])
def test_series_over_the_records_that_need_it_equals_the_static_form(name, lag):
    """The flip-flop series is computed only for the records gathered at evaluation time (a dynamic
    set, which JAX and ``vectorize_graph`` cannot take); ``static_shapes`` swaps in the form with the
    series under a per-record switch.  Both give the same values and gradients: subjects with KA equal
    to a rate constant, within ``near`` of it, within 0.01/t of it for the early samples only, and far."""
    model = S.LIBRARY[name]
    base = {**BASE[name], "F": 0.7, "ALAG": 0.5}
    lam = base["CL"] / base["V"] if name == "1cmt_oral" else two_cmt_macro(base)[1]
    kas = [lam, lam * (1 + 1e-9), lam + 1e-3, 3.0 * lam, lam - 1e-3]
    doses = [dose(0.0, 100.0), dose(12.0, 100.0)]
    data = make_data(*[records(doses, [0.25, 0.75, 1.0, 3.0, 8.0, 12.5, 24.0, 48.0])] * len(kas))
    names = [n for n in model.parameters] + ["F"] + (["ALAG"] if lag else [])
    xs = pt.dvectors(*names)
    idx = data.obs_subject
    by_sub = dict(zip(names, xs))
    f = pt.sum(np.linspace(1.0, 2.0, data.n_obs) * model.function(
        S.pk.SubjectParams({n: x[idx] for n, x in by_sub.items()}, by_sub, idx), S.dose_events(data, model)))
    (g,) = S.static_shapes([f])
    ops = [{type(n.op).__name__ for n in pytensor.graph.traversal.applys_between(xs, [out])} for out in (f, g)]
    assert "Nonzero" in ops[0] and "Nonzero" not in ops[1]
    with pytest.raises(RuntimeError, match="gradient taken before"):
        S.static_shapes(pytensor.grad(f, xs))
    fn = pytensor.function(xs, [f, g, *pytensor.grad(f, xs), *pytensor.grad(g, xs)], mode="FAST_COMPILE")
    vals = [np.array(kas) if n == "KA" else np.full(len(kas), base[n]) for n in names]
    _same_value_and_gradients(fn(*vals), len(names), rtol=1e-13, rtol_grad=1e-12, atol_grad=1e-14)


def _nonmem_parameters(kind: str, p: dict) -> dict:
    """NONMEM's TRANS3/5/6 parameters of the model with clearances and volumes ``p`` (numpy)."""
    k10, k12, k21 = p["CL"] / p["V"], p["Q"] / p["V"], p["Q"] / p["V2"]
    extra = {k: p[k] for k in ("KA", "F", "ALAG") if k in p}
    if kind == "vss":
        return dict(CL=p["CL"], V=p["V"], Q=p["Q"], VSS=p["V"] + p["V2"], **extra)
    if "Q3" in p:   # three compartments: the rates are the eigenvalues of the central-peripheral matrix
        k13, k31 = p["Q3"] / p["V"], p["Q3"] / p["V3"]
        m = np.array([[-(k10 + k12 + k13), k21, k31], [k12, -k21, 0.0], [k13, 0.0, -k31]])
        a, b, g = sorted(-np.linalg.eigvals(m).real, reverse=True)
        return dict(ALPHA=a, BETA=b, GAMMA=g, K21=k21, K31=k31, V=p["V"], **extra)
    a, b = two_cmt_macro(p)
    if kind == "aob":
        return dict(AOB=(a - k21) / (k21 - b), ALPHA=a, BETA=b, V=p["V"], **extra)
    return dict(ALPHA=a, BETA=b, K21=k21, V=p["V"], **extra)


@pytest.mark.parametrize("name", [n for n in S.LIBRARY if n.endswith(("_vss", "_aob", "_macro"))])
def test_nonmem_parameterisations_equal_clearances_and_volumes(name):
    """TRANS3 (VSS), TRANS5 (AOB, ALPHA, BETA) and TRANS6 (ALPHA, BETA[, GAMMA], K21[, K31]) models give the
    concentrations of the CL/V model they are a reparameterisation of: boluses, infusions, repeated
    doses, on subjects with slow and with fast distribution."""
    canonical = name.rsplit("_", 1)[0]
    kind, oral = name.rsplit("_", 1)[1], "oral" in name
    model, ref = S.LIBRARY[name], S.LIBRARY[canonical]
    base = [dict(CL=3.0, V=15.0, Q=5.0, V2=40.0, Q3=1.0, V3=80.0, KA=0.9, F=0.7, ALAG=0.5),
            dict(CL=0.5, V=60.0, Q=30.0, V2=10.0, Q3=8.0, V3=300.0, KA=4.0, F=1.0, ALAG=0.0)]
    plist = [{k: v for k, v in p.items() if k in ref.all_parameters} for p in base]
    regimens = [[dose(0.0, 100.0, ADDL=3, II=12.0)], [dose(0.0, 500.0, ADDL=1, II=24.0),
                                                       dose(30.0, 50.0, 2 if oral else 1, RATE=25.0)]]
    data = make_data(*(records(d, [0.75, 2.0, 6.0, 11.9, 25.0, 31.0, 48.0, 96.0]) for d in regimens))
    alt = [_nonmem_parameters(kind, p) for p in plist]
    assert set(alt[0]) == set(model.all_parameters)
    got, expected = S.evaluate(model, stack(alt), data), S.evaluate(ref, stack(plist), data)
    assert expected.min() > 0
    assert_allclose(got, expected, rtol=1e-9)
