"""NONMEM import: inter-occasion variability written NONMEM's way ($OMEGA BLOCK(1) SAME, occasion ETAs
switched on by indicators) -> bayesnlme's OCC column and omega_iov.

The data: theophylline with each subject dosed twice, the second period 1000 h after the first (a
wash-out: the first dose's drug is gone, ~exp(-80)), so NONMEM's semantics (parameters change at the
occasion, amounts carried over) and bayesnlme's (each observation with its occasion's parameters)
give the same prediction, and the spec's IPRED is compared with the stream's own equations with
ETAs and occasion ETAs set per subject and occasion.
"""

import math

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pharmpy")

import pytensor  # noqa: E402

from bayesnlme.build import build_model  # noqa: E402
from bayesnlme.datasets import dataset_path  # noqa: E402
from bayesnlme.importers import NonmemImportError, import_nonmem  # noqa: E402

STREAM = """$PROBLEM theophylline, IOV on CL
$INPUT ID TIME DV AMT EVID MDV CMT WT OCC
$DATA {data} IGNORE=@
$SUBROUTINES ADVAN2 TRANS2
$PK
OCC1 = 0
OCC2 = 0
IF (OCC.EQ.1) OCC1 = 1
IF (OCC.EQ.2) OCC2 = 1
IOVCL = OCC1*ETA(4) + OCC2*ETA(5)
TVCL = THETA(1)
CL = TVCL*EXP(ETA(1) + IOVCL)
V = THETA(2)*EXP(ETA(2))
KA = THETA(3)*EXP(ETA(3))
S2 = V
$ERROR
IPRED = F
Y = IPRED*(1 + EPS(1))
$THETA (0, 2.8) (0, 32) (0, 1.5)
$OMEGA 0.09 0.04 0.25
$OMEGA BLOCK(1) 0.02 ; IOV CL
$OMEGA BLOCK(1) SAME
$SIGMA 0.01
$ESTIMATION METHOD=1 INTER
"""

#: IOV on CL and V, the IF form, the occasion in a column called VISIT, MU referencing, a fixed WT exponent
STREAM_IF = """$PROBLEM theophylline, IOV on CL and V
$INPUT ID TIME DV AMT EVID MDV CMT WT VISIT
$DATA {data} IGNORE=@
$SUBROUTINES ADVAN2 TRANS2
$PK
IOVCL = 0
IOVV = 0
IF (VISIT.EQ.1) THEN
  IOVCL = ETA(4)
  IOVV = ETA(6)
ENDIF
IF (VISIT.EQ.2) THEN
  IOVCL = ETA(5)
  IOVV = ETA(7)
ENDIF
MU_1 = LOG(THETA(1)) + 0.75*LOG(WT/70)
MU_2 = LOG(THETA(2))
CL = EXP(MU_1 + ETA(1) + IOVCL)
V = EXP(MU_2 + ETA(2) + IOVV)
KA = THETA(3)*EXP(ETA(3))
S2 = V
$ERROR
IPRED = F
W = SQRT(THETA(4)**2 + THETA(5)**2*IPRED**2)
Y = IPRED + W*EPS(1)
$THETA (0, 2.8) (0, 32) (0, 1.5) (0, 0.3) (0, 0.1)
$OMEGA 0.09 0.04 0.25
$OMEGA BLOCK(1) 0.02 ; IOV CL
$OMEGA BLOCK(1) SAME
$OMEGA BLOCK(1) 0.01 ; IOV V
$OMEGA BLOCK(1) SAME
$SIGMA 1 FIX
"""


def _two_periods(column="OCC") -> pd.DataFrame:
    df = pd.read_csv(dataset_path("theophylline")).drop(columns="DOSE_MGKG")
    second = df.copy()
    second["TIME"] += 1000.0
    df[column], second[column] = 1, 2
    return pd.concat([df, second]).sort_values(["ID", "TIME"], kind="stable").reset_index(drop=True)


def _write(tmp_path, stream, frame, name="run1"):
    frame.to_csv(tmp_path / f"{name}.csv", index=False)
    path = tmp_path / f"{name}.mod"
    path.write_text(stream.format(data=f"{name}.csv"))
    return path


def _eta(ident, k) -> float:
    """ETA(k) of subject ``ident`` (k = 1..3), fixed and different per subject."""
    return 0.3 * math.sin(0.7 * float(ident) * k + 0.4)


def _kappa(ident, occ, j) -> float:
    """The occasion ETA of parameter ``j`` (0 = CL, 1 = V) on occasion ``occ`` of subject ``ident``."""
    return 0.2 * math.cos(1.3 * ident + 2.1 * occ + 0.9 * j)


def _stream_ipred(frame, pk) -> np.ndarray:
    """The control stream's F: 1-compartment oral, each occasion's dose with that occasion's parameters."""
    out = []
    obs = frame[(frame["EVID"] == 0) & (frame["MDV"] == 0)]
    for _, r in obs.iterrows():
        cl, v, ka = pk(r)
        doses = frame[(frame["ID"] == r.ID) & (frame["EVID"] == 1) & (frame["TIME"] <= r.TIME)]
        d = doses.iloc[-1]   # the period's dose; the other period's drug is exp(-80) of it
        t, k = r.TIME - d.TIME, cl / v
        out.append(d.AMT * ka / (v * (ka - k)) * (math.exp(-k * t) - math.exp(-ka * t)))
    return np.array(out)


def _spec_ipred(res, kappa_of: dict) -> np.ndarray:
    """The imported spec's IPRED with THETAs at their initial values, ETA(1..3) from :func:`_eta` and the
    occasion ETAs from :func:`_kappa` (``kappa_of``: bayesnlme parameter -> index j)."""
    built = build_model(res.spec, res.data, check_residual=False)
    spec, ids = built.spec, np.asarray(built.data.ids)
    point = {k: np.array(v, dtype=float) for k, v in built.initial_point.items()}
    for p, par in spec.parameters.items():
        point[p] = par.prior.args["median"]
    for j, p in enumerate(spec.eta_parameters):
        point[f"omega_{p}"] = 0.25
        point["eta_z"][:, j] = [_eta(i, j + 1) / 0.25 for i in ids]
    labels = list(built.model.coords["OCC"])
    iov = list(built.model.coords["iov_parameter"])
    assert sorted(iov) == sorted(kappa_of)
    for j, p in enumerate(iov):
        point[f"omega_iov_{p}"] = 0.1
        point["kappa_z"][:, j] = [_kappa(*(int(float(x)) for x in lab.split("/")), kappa_of[p]) / 0.1
                                  for lab in labels]
    rvs = list(built.model.free_RVs)
    fn = pytensor.function(rvs, built.ipred, mode="FAST_COMPILE", on_unused_input="ignore")
    return fn(*[point[rv.name] for rv in rvs])


def test_occasion_etas_become_omega_iov_and_an_occ_column(tmp_path):
    frame = _two_periods()
    res = import_nonmem(_write(tmp_path, STREAM, frame))
    cl = res.spec.parameters["CL"]
    assert cl.omega_iov.dist == "halfnormal" and cl.omega_iov.args["sigma"] == pytest.approx(2 * math.sqrt(0.02))
    assert res.spec.parameters["V"].omega_iov is None and res.spec.parameters["KA"].omega_iov is None
    # the occasion is the number of the ETA switched on: here the stream's own OCC (kept as OCCNM)
    np.testing.assert_array_equal(res.data["OCC"].to_numpy(), frame["OCC"].to_numpy())
    assert "OCC1" not in res.data and "OCC2" not in res.data   # the switches are not covariates
    assert res.derived["OCC"] == "1 where OCC.EQ.1, 2 where OCC.EQ.2"
    assert "omega_iov_CL = SD 0.1414" in res.toml and "OMEGA(4,4) variance 0.02" in res.toml
    assert any("wash-out" in m for m in res.mapped)   # the difference from NONMEM is stated

    def pk(r):
        i, occ = int(r.ID), int(r.OCC)
        return (2.8 * math.exp(_eta(i, 1) + _kappa(i, occ, 0)), 32 * math.exp(_eta(i, 2)),
                1.5 * math.exp(_eta(i, 3)))

    expected = _stream_ipred(frame, pk)
    np.testing.assert_allclose(_spec_ipred(res, {"CL": 0}), expected, rtol=1e-9, atol=1e-12)


def test_if_form_on_two_parameters_and_another_occasion_column(tmp_path):
    frame = _two_periods("VISIT")
    res = import_nonmem(_write(tmp_path, STREAM_IF, frame))
    spec = res.spec
    assert spec.parameters["CL"].omega_iov.args["sigma"] == pytest.approx(2 * math.sqrt(0.02))
    assert spec.parameters["V"].omega_iov.args["sigma"] == pytest.approx(2 * math.sqrt(0.01))
    np.testing.assert_array_equal(res.data["OCC"].to_numpy(), frame["VISIT"].to_numpy())

    def pk(r):
        i, occ = int(r.ID), int(r.VISIT)
        return (2.8 * (r.WT / 70) ** 0.75 * math.exp(_eta(i, 1) + _kappa(i, occ, 0)),
                32 * math.exp(_eta(i, 2) + _kappa(i, occ, 1)), 1.5 * math.exp(_eta(i, 3)))

    expected = _stream_ipred(frame, pk)
    np.testing.assert_allclose(_spec_ipred(res, {"CL": 0, "V": 1}), expected, rtol=1e-9, atol=1e-12)
    # a wrong occasion layout is seen: the two occasions' KAPPAs swapped
    swapped = res.data.assign(OCC=3 - res.data["OCC"])
    res.data = swapped
    assert not np.allclose(_spec_ipred(res, {"CL": 0, "V": 1}), expected, rtol=1e-3)


def test_estimates_prior_from_the_first_block_of_the_chain(tmp_path):
    path = _write(tmp_path, STREAM, _two_periods())
    cols = ["THETA1", "THETA2", "THETA3", "SIGMA(1,1)"] + [f"OMEGA({i},{j})" for i in range(1, 6)
                                                             for j in range(1, i + 1)] + ["OBJ"]
    est = dict.fromkeys(cols, 0.0) | {"THETA1": 2.9, "THETA2": 31.0, "THETA3": 1.6, "SIGMA(1,1)": 0.012,
                                      "OMEGA(1,1)": 0.08, "OMEGA(2,2)": 0.05, "OMEGA(3,3)": 0.3,
                                      "OMEGA(4,4)": 0.025, "OMEGA(5,5)": 0.025, "OBJ": 100.0}
    se = dict.fromkeys(cols, 0.0) | {"THETA1": 0.2, "THETA2": 2.0, "THETA3": 0.3, "SIGMA(1,1)": 0.002,
                                     "OMEGA(1,1)": 0.02, "OMEGA(2,2)": 0.01, "OMEGA(3,3)": 0.1,
                                     "OMEGA(4,4)": 0.005, "OMEGA(5,5)": 0.0}
    rows = [" ITERATION " + " ".join(cols)]
    for it, vals in ((-1000000000, est), (-1000000001, se)):
        rows.append(f" {it} " + " ".join(f"{vals[c]:.6E}" for c in cols))
    path.with_suffix(".ext").write_text("TABLE NO.     1: FOCE-I\n" + "\n".join(rows) + "\n")
    iov = import_nonmem(path, priors="estimates").spec.parameters["CL"].omega_iov
    assert iov.dist == "lognormal"
    assert iov.args["median"] == pytest.approx(math.sqrt(0.025))
    assert iov.args["sigma"] == pytest.approx(0.5 * math.sqrt(math.log1p((0.005 / 0.025) ** 2)))


@pytest.mark.parametrize("case, match", [
    ("correlated", r"line 28 `\$OMEGA BLOCK\(2\) 0.02 0.005 0.01`: ETA\(4\), ETA\(5\): correlated occasion ETAs "
                   r"of CL, V"),
    ("third_occasion", r"line 12 `CL = TVCL\*EXP\(ETA\(1\) \+ IOVCL\)`: occasions: at ID 3, TIME 1000.27 \(an "
                       r"observation\) no occasion ETA applies: 10 such"),
    ("no_iiv", r"KA has occasion ETAs \(ETA\(4\), ETA\(5\)\) but no IIV"),
    ("fixed", r"CL: the variance of its occasion ETAs \(ETA\(4\), ETA\(5\)\) is FIX"),
])
def test_what_does_not_map_is_named(tmp_path, case, match):
    frame, stream = _two_periods(), STREAM
    if case == "correlated":
        stream = (STREAM_IF.replace("IOVV = ETA(6)", "IOVV = ETA(5)").replace("IOVCL = ETA(5)", "IOVCL = ETA(6)")
                  .replace("$OMEGA BLOCK(1) 0.02 ; IOV CL\n$OMEGA BLOCK(1) SAME\n$OMEGA BLOCK(1) 0.01 ; IOV V\n"
                           "$OMEGA BLOCK(1) SAME\n", "$OMEGA BLOCK(2) 0.02 0.005 0.01\n$OMEGA BLOCK(2) SAME\n"))
        frame = _two_periods("VISIT")
    elif case == "third_occasion":   # NONMEM allows an occasion without an ETA (no IOV there); bayesnlme does not
        frame.loc[(frame["ID"] == 3) & (frame["TIME"] > 1000), "OCC"] = 3
    elif case == "no_iiv":
        stream = STREAM.replace("CL = TVCL*EXP(ETA(1) + IOVCL)", "CL = TVCL*EXP(ETA(1))").replace(
            "KA = THETA(3)*EXP(ETA(3))", "KA = THETA(3)*EXP(IOVCL)")
    else:
        stream = STREAM.replace("$OMEGA BLOCK(1) 0.02 ; IOV CL", "$OMEGA BLOCK(1) 0.02 FIX ; IOV CL")
    with pytest.raises(NonmemImportError, match=match):
        import_nonmem(_write(tmp_path, stream, frame))
