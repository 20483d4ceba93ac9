"""3-compartment closed forms and steady-state doses (SS=1/SS=2 with II) against references.

References:

* scipy ``solve_ivp`` (LSODA, rtol 1e-11, atol 1e-14) on the linear system
  [depot, central, peripheral 1, peripheral 2], integrated piecewise between
  dose events; a steady-state dose is replaced there by a long explicit history
  (the dose every II, ``N_HISTORY`` times, up to the SS record);
* for SS against the closed forms themselves: subject "SS" (an SS record, plus
  an earlier dose that SS=1 must wipe out) against subject "history" (the same
  dose given ``N_HISTORY`` times through ADDL), evaluated in one call.

Closed forms must agree to 1e-6 relative.  Parameters keep the slowest
disposition rate above 0.025/h so that ``N_HISTORY`` doses every 12 h leave a
truncation error below 1e-15.
"""

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

COLS = ["TIME", "DV", "AMT", "EVID", "MDV", "CMT", "RATE", "DUR", "II", "ADDL", "SS"]
P3 = dict(CL=4.0, V=10.0, Q=6.0, V2=20.0, Q3=1.5, V3=40.0)    # lambda = 1.33, 0.133, 0.0255 /h
PARAMS = {
    "1cmt_iv": dict(CL=2.0, V=20.0),
    "1cmt_oral": dict(CL=2.0, V=20.0, KA=1.2, F=0.7, ALAG=0.5),
    "2cmt_iv": dict(CL=3.0, V=15.0, Q=5.0, V2=40.0),
    "2cmt_oral": dict(CL=3.0, V=15.0, Q=5.0, V2=40.0, KA=0.9, F=0.7, ALAG=0.5),
    "3cmt_iv": P3,
    "3cmt_oral": dict(P3, KA=0.8, F=0.6, ALAG=0.7),
}
II = 12.0
N_HISTORY = 120


# ----------------------------------------------------------------------------- data helpers

def dose(t, amt=None, cmt=1, **kw):
    """A dose record (amount as ``amt`` or ``AMT=``); CMT 1 = depot of oral models, central of IV ones."""
    return dict(TIME=t, CMT=cmt, EVID=1, MDV=1, **({} if amt is None else {"AMT": amt}), **kw)


def subject(doses, times):
    """Records in time order; an observation at a dose time comes after the dose."""
    tagged = [(d["TIME"], 0, i, d) for i, d in enumerate(doses)]
    tagged += [(t, 1, i, dict(TIME=t, EVID=0, MDV=0)) for i, t in enumerate(times)]
    return [r for *_, r in sorted(tagged, key=lambda x: x[:3])]


def make_data(*subjects):
    rows = [{"ID": i + 1, **{c: 0.0 for c in COLS}, **r} for i, recs in enumerate(subjects) for r in recs]
    return read_nonmem(pd.DataFrame(rows, columns=["ID"] + COLS))


def predict(name, subjects, params=None):
    """Closed-form predictions, one array per subject (all subjects in one evaluate call)."""
    p = params or PARAMS[name]     # values: scalars or one per subject
    data = make_data(*(subject(d, t) for d, t in subjects))
    pred = S.evaluate(S.LIBRARY[name], {k: np.broadcast_to(np.asarray(v, float), (data.n_subjects,))
                                        for k, v in p.items()}, data)
    assert pred.shape == (data.n_obs,) and np.all(np.isfinite(pred))
    return [pred[data.obs_subject == i] for i in range(len(subjects))]


# ----------------------------------------------------------------------------- ODE reference

def explicit(doses):
    """Doses with ADDL expanded and each SS dose replaced by N_HISTORY copies every II."""
    out = []
    for d in doses:
        if d.get("SS", 0):
            out += [dict(d, TIME=d["TIME"] - k * d["II"], SS=0, ADDL=0) for k in range(N_HISTORY, 0, -1)]
        out += [dict(d, TIME=d["TIME"] + n * d.get("II", 0.0), SS=0, ADDL=0)
                for n in range(int(d.get("ADDL", 0)) + 1)]
    return out


def ode_reference(p, doses, times, oral):
    """Central concentration at ``times`` (after doses at equal times); no resets in ``doses``."""
    k10, ka = p["CL"] / p["V"], p.get("KA", 0.0)
    k12, k21 = p.get("Q", 0.0) / p["V"], p.get("Q", 0.0) / p.get("V2", 1.0)
    k13, k31 = p.get("Q3", 0.0) / p["V"], p.get("Q3", 0.0) / p.get("V3", 1.0)
    M = np.array([[-ka, 0, 0, 0], [ka, -(k10 + k12 + k13), k21, k31],
                  [0, k12, -k21, 0], [0, k13, 0, -k31]], float)
    boluses, infusions = [], []
    for d in explicit(doses):
        rate = d["AMT"] / d["DUR"] if d.get("DUR", 0) > 0 else d.get("RATE", 0.0)
        if oral and d["CMT"] in (0, 1):    # CMT 0 = the default, the depot
            boluses.append((d["TIME"] + p.get("ALAG", 0.0), 0, p.get("F", 1.0) * d["AMT"]))
        elif rate > 0:
            infusions.append((d["TIME"], d["TIME"] + d["AMT"] / rate, rate))
        else:
            boluses.append((d["TIME"], 1, d["AMT"]))
    grid = sorted({b[0] for b in boluses} | {x for s, e, _ in infusions for x in (s, e)} | set(times))
    y, t_cur, amount = np.zeros(4), grid[0], {}
    for tb in grid:
        if tb > t_cur:
            u = np.array([0.0, sum(r for s, e, r in infusions if s <= t_cur and e >= tb), 0.0, 0.0])
            sol = solve_ivp(lambda _, x: M @ x + u, (t_cur, tb), y, method="LSODA", jac=lambda *_: M,
                            rtol=1e-11, atol=1e-14)
            assert sol.success
            y, t_cur = sol.y[:, -1], tb
        for tbol, i, a in boluses:
            if tbol == tb:
                y[i] += a
        amount[tb] = y[1]
    return np.array([amount[t] for t in times]) / p["V"]


def check_ode(name, cases, params=None):
    """cases: list of (doses, times); closed form vs ODE for each subject."""
    p = params or PARAMS[name]
    preds = predict(name, cases, p)
    for i, ((d, t), got) in enumerate(zip(cases, preds)):
        ref = ode_reference(p, d, t, oral=S.LIBRARY[name].depot_cmt is not None)
        assert_allclose(got, ref, rtol=1e-6, atol=1e-9 * np.abs(ref).max(), err_msg=f"{name}, subject {i + 1}")
    return preds


def numpy_macro(p):
    k10, k12, k21, k13, k31 = p["CL"] / p["V"], p["Q"] / p["V"], p["Q"] / p["V2"], p["Q3"] / p["V"], p["Q3"] / p["V3"]
    M = np.array([[-(k10 + k12 + k13), k21, k31], [k12, -k21, 0], [k13, 0, -k31]])
    return np.sort(-np.linalg.eigvals(M).real)[::-1]


TIMES = [0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 12.0, 12.5, 14.0, 18.0, 24.0, 30.0, 36.5, 48.0, 72.0, 120.0]


# ----------------------------------------------------------------------------- 3-compartment

def test_library_entries_and_macro_constants():
    assert S.LIBRARY["3cmt_infusion"] is S.LIBRARY["3cmt_iv"]
    oral = S.LIBRARY["3cmt_oral"]
    assert oral.parameters == ("CL", "V", "Q", "V2", "Q3", "V3", "KA")
    assert (oral.depot_cmt, oral.central_cmt, S.LIBRARY["3cmt_iv"].central_cmt) == (1, 2, 1)
    cases = [P3, dict(CL=0.01, V=5.0, Q=50.0, V2=10.0, Q3=0.5, V3=1000.0),   # very slow terminal phase
             dict(CL=30.0, V=10.0, Q=0.1, V2=5.0, Q3=0.2, V3=50.0),          # lambda1 >> lambda2, lambda3
             dict(CL=1.0, V=10.0, Q=1.0, V2=10.0, Q3=1.3, V3=10.0)]
    x = pt.dvector("x")
    lams, coefs = S.pk.three_compartment_rates(*(x[i] for i in range(6)))
    fn = pytensor.function([x], lams + coefs)
    for p in cases:
        got = np.array(fn(np.array([p[k] for k in P3])))
        assert_allclose(got[:3], numpy_macro(p), rtol=1e-10)
        assert abs(got[3:].sum() - 1.0) < 1e-12          # unit bolus: central amount 1 at t = 0


def test_3cmt_iv_bolus_and_infusion_vs_ode():
    check_ode("3cmt_iv", [
        ([dose(0.0, 100.0)], TIMES),
        ([dose(0.0, 100.0, DUR=2.5), dose(24.0, 50.0, RATE=10.0, II=12.0, ADDL=2)], TIMES),
        # infusions longer than the dosing interval overlap
        ([dose(0.0, 60.0, DUR=18.0, II=12.0, ADDL=3), dose(30.0, 80.0)], TIMES),
    ])


def test_3cmt_oral_vs_ode_depot_and_central_doses():
    # CMT 1 = depot (F, ALAG), CMT 2 = central (bolus and infusion bypass F and ALAG)
    check_ode("3cmt_oral", [
        ([dose(0.0, 100.0, II=8.0, ADDL=3)], TIMES),
        ([dose(0.0, 100.0), dose(10.0, 40.0, cmt=2), dose(20.0, 60.0, cmt=2, DUR=3.0),
          dose(30.0, 100.0, cmt=0)], sorted(TIMES + [10.0, 20.0, 30.5, 30.7, 31.0])),
    ])
    # without the optional F and ALAG (defaults 1 and 0) and with KA equal to lambda2
    lam2 = numpy_macro(P3)[1]
    check_ode("3cmt_oral", [([dose(0.0, 100.0, II=12.0, ADDL=1)], TIMES)], params=dict(P3, KA=lam2))


def test_3cmt_dose_into_peripheral_is_an_error():
    with pytest.raises(DataError, match=r"CMT 3.*only into CMT \[1, 2\]") as info:
        predict("3cmt_oral", [([dose(0.0, 100.0), dose(5.0, 10.0, cmt=3)], [6.0])])
    assert info.value.column == "CMT" and info.value.row == 2


def test_3cmt_gradient_matches_finite_differences():
    names = ["CL", "V", "Q", "V2", "Q3", "V3", "KA", "ALAG"]
    d = [dose(0.0, 100.0, II=12.0, ADDL=2), dose(40.0, 50.0, cmt=2, DUR=2.0),
         dose(60.0, 100.0, SS=1, II=12.0)]
    data = make_data(subject(d, [1.0, 3.0, 12.5, 30.0, 41.0, 60.5, 61.0, 66.0]))   # > ALAG: C > 0
    doses = S.dose_events(data, S.LIBRARY["3cmt_oral"])
    x = pt.dvector("x")
    params = {n: x[i] * pt.ones(data.n_obs) for i, n in enumerate(names)}
    params["F"] = 0.6
    f = pt.sum(pt.log(S.LIBRARY["3cmt_oral"].function(params, doses)))
    # no graph rewrites: this ~2000-node graph compiles in seconds instead of minutes
    fn = pytensor.function([x], [f, pytensor.grad(f, x)],
                           mode=pytensor.compile.mode.Mode(linker="py", optimizer=None))
    x0 = np.array([PARAMS["3cmt_oral"][n] for n in names])
    val, grad = fn(x0)
    fd = []
    for i in range(len(names)):
        h = 1e-6 * x0[i]
        up, down = x0.copy(), x0.copy()
        up[i] += h
        down[i] -= h
        fd.append((fn(up)[0] - fn(down)[0]) / (2 * h))
    assert np.isfinite(val) and np.all(np.abs(grad) > 1e-6)
    assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- steady state

SS_CASES = [   # (model, SS dose without time/SS/II, earlier dose that SS=1 wipes out)
    ("1cmt_iv", dict(AMT=100.0), dict(AMT=70.0)),
    ("1cmt_iv", dict(AMT=100.0, DUR=2.0), dict(AMT=70.0)),
    ("1cmt_iv", dict(AMT=100.0, DUR=30.0), dict(AMT=70.0, DUR=20.0)),
    ("2cmt_iv", dict(AMT=100.0), dict(AMT=70.0)),
    ("2cmt_iv", dict(AMT=100.0, RATE=25.0), dict(AMT=70.0)),
    ("2cmt_iv", dict(AMT=100.0, DUR=24.0), dict(AMT=70.0)),             # duration = 2 II exactly
    ("3cmt_iv", dict(AMT=100.0), dict(AMT=70.0)),
    ("3cmt_iv", dict(AMT=100.0, DUR=5.0), dict(AMT=70.0)),
    ("3cmt_iv", dict(AMT=100.0, DUR=40.0), dict(AMT=70.0, DUR=10.0)),  # > 3 II: 4 running at once
    ("1cmt_oral", dict(AMT=100.0), dict(AMT=70.0)),
    ("2cmt_oral", dict(AMT=100.0), dict(AMT=70.0)),
    ("3cmt_oral", dict(AMT=100.0), dict(AMT=70.0)),
    ("3cmt_oral", dict(AMT=100.0, CMT=2), dict(AMT=70.0)),               # IV dose of the oral model
    ("3cmt_oral", dict(AMT=100.0, CMT=2, DUR=15.0), dict(AMT=70.0)),
]
T0 = N_HISTORY * II
# not 0: an observation at an ADDL dose time is a trough (before the implied dose), one right
# after the SS record sees the dose; 12 and 24 are troughs in both subjects
OFFSETS = [0.05, 0.3, 0.69, 0.71, 1.0, 2.0, 4.9, 5.1, 11.9, 12.0, 13.0, 24.0, 25.0, 29.5, 30.5, 36.0, 50.0]


def ss_subjects(ss_dose, earlier, lag_probe=(), addl=2):
    """[SS=1 (+ earlier dose), explicit history, SS=2 on top of the earlier dose, history + earlier]."""
    cmt = ss_dose.pop("CMT", 1)
    times = [T0 + o for o in OFFSETS + list(lag_probe)]
    before = dose(T0 - 5.0, cmt=cmt, **earlier)
    steady = dict(cmt=cmt, II=II, ADDL=addl, **ss_dose)
    history = dose(0.0, cmt=cmt, II=II, ADDL=N_HISTORY + addl, **ss_dose)
    return [([before, dose(T0, SS=1, **steady)], times), ([history], times),
            ([before, dose(T0, SS=2, **steady)], times), ([before, history], times)]


@pytest.mark.parametrize("name", list(PARAMS))
def test_steady_state_equals_long_dose_history(name):
    # all of the model's cases in one evaluate call (one compiled graph)
    cases = [(d, e) for m, d, e in SS_CASES if m == name]
    preds = predict(name, [s for d, e in cases for s in ss_subjects(dict(d), e)])
    for i, (d, _) in enumerate(cases):
        ss1, hist, ss2, hist2 = preds[4 * i:4 * i + 4]
        assert_allclose(ss1, hist, rtol=1e-9, atol=1e-12 * hist.max(), err_msg=f"SS=1 {d}")
        assert_allclose(ss2, hist2, rtol=1e-9, atol=1e-12 * hist2.max(), err_msg=f"SS=2 {d}")
        assert np.all(np.abs(ss2 / ss1 - 1) > 1e-6)      # the earlier dose counts for SS=2 only


def test_steady_state_oral_with_lag():
    # ALAG > II: at the SS record the one or two latest doses of the series are still in their lag
    lags = [0.0, 0.5, 15.0, 24.0]
    subjects, alag = [], []
    for a in lags:
        probes = [a, a + 0.01, a - 0.01 if a else 0.01, a % II, a % II + 0.2]
        subjects += ss_subjects(dict(AMT=100.0), dict(AMT=70.0), lag_probe=probes)
        alag += [a] * 4
    preds = predict("3cmt_oral", subjects, dict(PARAMS["3cmt_oral"], ALAG=np.array(alag)))
    for i, a in enumerate(lags):
        ss1, hist, ss2, hist2 = preds[4 * i:4 * i + 4]
        assert_allclose(ss1, hist, rtol=1e-9, atol=1e-12 * hist.max(), err_msg=f"SS=1, ALAG {a}")
        assert_allclose(ss2, hist2, rtol=1e-9, atol=1e-12 * hist2.max(), err_msg=f"SS=2, ALAG {a}")


@pytest.mark.parametrize("name,ss_dose", [("3cmt_iv", dict(AMT=100.0, DUR=30.0)), ("3cmt_oral", dict(AMT=100.0)),
                                          ("2cmt_oral", dict(AMT=100.0)), ("1cmt_iv", dict(AMT=50.0))])
def test_steady_state_vs_ode(name, ss_dose):
    # the ODE integrates N_HISTORY explicit doses, then the SS record's own ADDL doses
    times = [T0 + o for o in (0.5, 0.71, 3.0, 11.0, 12.5, 20.0, 31.0, 40.0)]
    check_ode(name, [([dose(T0, SS=1, II=II, ADDL=1, **ss_dose)], times)])


def test_steady_state_trough_and_accumulation_1cmt():
    # IV bolus 1-cmt: C_ss(t) = D/V exp(-k t) / (1 - exp(-k II)) (textbook accumulation)
    k, V = 0.1, 20.0
    t = np.array([0.0, 3.0, 6.0, 11.0])
    got = predict("1cmt_iv", [([dose(100.0, 100.0, SS=1, II=II)], list(100.0 + t))])[0]
    assert_allclose(got, 100.0 / V * np.exp(-k * t) / (1 - np.exp(-k * II)), rtol=1e-12)


def test_steady_state_record_data_arrays():
    data = make_data([dose(0.0, 10.0), dose(5.0, 100.0, SS=1, II=8.0, ADDL=2), dict(TIME=6.0, EVID=0, MDV=0),
                      dose(30.0, 50.0, SS=2, II=6.0), dict(TIME=31.0, EVID=0, MDV=0)])
    assert data.dose_ss.tolist() == [[0, 1, 0, 0, 2]]         # ADDL doses of an SS record are plain doses
    assert_allclose(data.dose_ii[0, [1, 4]], [8.0, 6.0])
    assert data.dose_applies.tolist() == [[False, True, False, False, False],   # SS=1 wipes the dose at 0
                                          [False, True, True, True, True]]


@pytest.mark.parametrize("records,row,column,problem", [
    ([dose(0.0, 100.0, SS=1)], 1, "II", "needs a positive interdose interval II"),
    ([dose(0.0, 100.0), dict(TIME=1.0, EVID=0, MDV=0, SS=1, II=12.0)], 2, "SS", "not a dose"),
    ([dose(0.0, 100.0, SS=2, II=-1.0)], 1, "II", "negative interdose interval"),
])
def test_steady_state_errors_name_row_and_column(records, row, column, problem):
    with pytest.raises(DataError, match=problem) as info:
        make_data(records + [dict(TIME=2.0, EVID=0, MDV=0)])
    assert (info.value.row, info.value.column) == (row, column)


def test_library_specs_build_with_steady_state_data():
    from bayesnlme.build import build_model
    from bayesnlme.evaluate.predict import evaluate_draws
    from bayesnlme.spec import load_spec

    for name in ("pk_3cmt_iv", "pk_3cmt_infusion", "pk_3cmt_oral"):
        spec = load_spec(name)
        assert spec.structural.name.startswith("3cmt_") and {"Q3", "V3"} <= set(spec.parameters)
    # IV spec: the smallest 3-compartment graph (building and compiling dominate this test)
    recs = [dose(0.0, 100.0, SS=1, II=12.0, ADDL=1), dose(30.0, 50.0, DUR=2.0)]
    data = make_data(*(subject(recs, [1.0, 6.0, 13.0, 31.0, 40.0]) for _ in range(2)))
    built = build_model(load_spec("pk_3cmt_iv"), data)
    point = {k: np.asarray(v)[None] for k, v in built.initial_point.items()}
    ipred = evaluate_draws(built, point, ("ipred",))["ipred"][0]
    typical = dict(CL=5.0, V=50.0, Q=5.0, V2=50.0, Q3=1.0, V3=200.0)   # the TOML prior medians
    assert_allclose(ipred, S.evaluate(S.LIBRARY["3cmt_iv"], typical, data), rtol=1e-10)
