"""Library ODE PK/PD models (indirect response II-IV, effect compartment) through ``build_model``.

Each library spec (``model_library/*.toml``) is loaded, given two observation
types (DVID 1 -> CP, DVID 2 -> the response) and built on a small simulated
data set; at a fixed point with non-zero ETAs its IPRED must equal
``scipy.integrate.solve_ivp`` of the same equations with the same individual
parameters (1e-6 relative), and the log-density and its gradient must be
finite.  One built model per library entry (each ODE system costs a numba
compilation), shared through module-scoped fixtures.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytensor
import pytest
from scipy.integrate import solve_ivp

from bayesnlme.build import build_model
from bayesnlme.spec import ModelSpec, load_spec
from bayesnlme.structural import LIBRARY
from bayesnlme.structural.ode import with_tolerance

# four numba compilations of ODE systems (30-100 s each on a busy 2-core machine): slow, not skipped
pytestmark = pytest.mark.slow

DOSES = {1: 100.0, 2: 150.0, 3: 60.0}                 # mg into CMT 1 (depot) at t = 0
CP_TIMES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 24.0)       # h; 0.25 h lies before the lag time
PD_TIMES = (0.0, 4.0, 12.0, 24.0, 48.0)                # h; t = 0 is the baseline record
ALAG = 0.3                                             # h, fixed: exercises the lag on the depot dose

# population values at the checked point (mg, L, h); omegas 0.3 and a fixed ETA pattern below
POINT = {"CL": 4.0, "V": 40.0, "KA": 1.2, "E0": 100.0, "KOUT": 0.08, "IC50": 1.5, "EC50": 1.5,
         "EMAX": 1.5, "IMAX": 0.8, "KE0": 0.4}
EFFECT_POINT = {"E0": 10.0, "EMAX": 40.0}              # effect compartment: baseline and Emax in response units


def _inhibition(cp, p):
    return p.get("IMAX", 1.0) * cp / (p["IC50"] + cp)


def _stimulation(cp, p):
    return p["EMAX"] * cp / (p["EC50"] + cp)


def _rhs(name):
    """The model's equations in numpy (written from the Dayneka, Garg & Jusko 1993 definitions)."""
    def f(t, y, p):
        cp = y[1] / p["V"]
        pk = [-p["KA"] * y[0], p["KA"] * y[0] - p["CL"] * cp]
        if name == "effect_compartment":
            return pk + [p["KE0"] * (cp - y[2])]
        kin, kout, r = p["E0"] * p["KOUT"], p["KOUT"], y[2]
        if name == "indirect_response_2":
            return pk + [kin - kout * (1 - _inhibition(cp, p)) * r]
        if name == "indirect_response_3":
            return pk + [kin * (1 + _stimulation(cp, p)) - kout * r]
        return pk + [kin - kout * (1 + _stimulation(cp, p)) * r]
    return f


def _reference(name, p, dose, times):
    """CP and RESPONSE at ``times`` by solve_ivp (Radau, rtol 1e-11), the dose entering the depot at ALAG."""
    turnover = name != "effect_compartment"
    y0 = np.array([0.0, 0.0, p["E0"] if turnover else 0.0])
    before = solve_ivp(_rhs(name), (0.0, ALAG), y0, args=(p,), dense_output=True, method="Radau",
                       rtol=1e-11, atol=1e-12)
    y1 = before.y[:, -1] + np.array([dose, 0.0, 0.0])
    after = solve_ivp(_rhs(name), (ALAG, max(times)), y1, args=(p,), dense_output=True, method="Radau",
                      rtol=1e-11, atol=1e-12)
    ys = np.array([before.sol(t) if t <= ALAG else after.sol(t) for t in times])
    cp = ys[:, 1] / p["V"]
    resp = ys[:, 2] if turnover else p["E0"] + p["EMAX"] * ys[:, 2] / (p["EC50"] + ys[:, 2])
    return cp, resp


def _data() -> pd.DataFrame:
    rows = []
    for i, amt in DOSES.items():
        rows.append(dict(ID=i, TIME=0.0, DV=0.0, AMT=amt, EVID=1, MDV=1, CMT=1, DVID=0))
        rows += [dict(ID=i, TIME=t, DV=1.0 + 0.1 * i, AMT=0.0, EVID=0, MDV=0, CMT=2, DVID=1) for t in CP_TIMES]
        rows += [dict(ID=i, TIME=t, DV=90.0 + i, AMT=0.0, EVID=0, MDV=0, CMT=3, DVID=2) for t in PD_TIMES]
    return pd.DataFrame(rows).sort_values(["ID", "TIME", "EVID"], ascending=[True, True, False])


def _spec(library_name: str) -> ModelSpec:
    """The library spec with DVID 1 (CP, combined error) and DVID 2 (response, additive), ALAG fixed."""
    d = load_spec(library_name).to_dict()
    d.pop("residual", None)
    d["parameters"]["ALAG"] = {"fixed": ALAG, "iiv": "none"}
    if library_name in ("pkpd_indirect_response_2",):
        d["parameters"]["IMAX"] = {"fixed": POINT["IMAX"], "iiv": "none"}
    d["observations"] = [{"dvid": 1, "output": "CP", "likelihood": "combined"},
                         {"dvid": 2, "output": "RESPONSE", "likelihood": "additive"}]
    structural = with_tolerance(LIBRARY[d["structural"]], rtol=1e-10, atol=1e-12)  # same compiled solver
    return ModelSpec.from_dict(d, structural=structural)


def _point(built, values: dict) -> dict:
    """A point of the model's value variables: population values, omegas 0.3, sigmas 1, fixed ETA z."""
    m = built.model
    point = m.initial_point()
    rng = np.random.default_rng(3)
    for rv in m.free_RVs:
        name = rv.name
        if name == "eta_z":
            v = rng.uniform(-1.0, 1.0, size=point[m.rvs_to_values[rv].name].shape)
        elif name.startswith("omega_"):
            v = 0.3
        elif name.startswith("sigma_"):
            v = 1.0
        else:
            v = values[name]
        tr = m.rvs_to_transforms.get(rv)
        v = np.asarray(v, float)
        point[m.rvs_to_values[rv].name] = tr.forward(v, *rv.owner.inputs).eval() if tr is not None else v
    return point


class Checked:
    """A built library model with IPRED, individual parameters, logp and its gradient at one point."""

    def __init__(self, library_name: str):
        self.spec = _spec(library_name)
        self.built = build_model(self.spec, _data())
        m = self.built.model
        values = dict(POINT, **(EFFECT_POINT if library_name.endswith("effect_compartment") else {}))
        self.point = _point(self.built, values)
        names = list(self.built.individual)
        logp = m.logp()
        grad = pytensor.grad(logp, m.value_vars)
        outs = m.replace_rvs_by_values([self.built.ipred, *(self.built.individual[n] for n in names)])
        # one compiled function (each compilation of an ODE graph is costly)
        fn = m.compile_fn([*outs, logp, *grad], inputs=m.value_vars, on_unused_input="ignore", point_fn=True)
        got = fn(self.point)
        k = len(names) + 1
        self.ipred, self.individual = got[0], dict(zip(names, got[1:k]))
        self.logp = float(got[k])
        self.dlogp = np.concatenate([np.ravel(g) for g in got[k + 1:]])


@pytest.fixture(scope="module", params=["pkpd_indirect_response_2", "pkpd_indirect_response_3",
                                        "pkpd_indirect_response_4", "pkpd_effect_compartment"])
def checked(request):
    return request.param, Checked(request.param)


def test_ipred_matches_solve_ivp(checked):
    library_name, c = checked
    data = c.built.data
    structural = c.spec.structural.name
    ids = list(data.ids)
    for s, sid in enumerate(ids):
        p = {k: float(np.broadcast_to(v, (len(ids),))[s]) for k, v in c.individual.items()}
        p.setdefault("IMAX", POINT["IMAX"] if structural == "indirect_response_2" else 1.0)
        sel = data.obs_subject == s
        times, dvid = data.obs_time[sel], data.obs_dvid[sel]
        cp, resp = _reference(structural, p, DOSES[int(sid)], times)
        want = np.where(dvid == 1, cp, resp)
        got = c.ipred[sel]
        # before the lag time CP is exactly 0 in both
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12, err_msg=f"{library_name}, ID {sid}")
        assert np.all(got[(dvid == 1) & (times < ALAG)] == 0.0)
        # the response record at t = 0 is the baseline (E0 for turnover models, E0 + 0 for the link model)
        assert got[(dvid == 2) & (times == 0)] == pytest.approx(p["E0"], rel=1e-12)


def test_individual_parameters_vary(checked):
    """The point has non-zero ETAs, so the check above is not just the typical subject."""
    _, c = checked
    assert np.ptp(np.broadcast_to(c.individual["CL"], (3,))) > 0.05 * POINT["CL"]


def test_drug_moves_the_response(checked):
    """At 4-24 h the response has left its baseline in the direction the model says."""
    library_name, c = checked
    data = c.built.data
    later = (data.obs_dvid == 2) & (data.obs_time >= 4) & (data.obs_time <= 24)
    base = np.broadcast_to(c.individual["E0"], (3,))[data.obs_subject[later]]
    change = c.ipred[later] - base
    rises = library_name in ("pkpd_indirect_response_2", "pkpd_indirect_response_3", "pkpd_effect_compartment")
    assert np.all(change > 0.5) if rises else np.all(change < -0.5)


def test_logp_and_gradient_finite(checked):
    _, c = checked
    assert np.isfinite(c.logp)
    assert c.dlogp.shape == (sum(v.size for v in c.point.values()),)
    assert np.all(np.isfinite(c.dlogp)) and np.any(c.dlogp != 0)
