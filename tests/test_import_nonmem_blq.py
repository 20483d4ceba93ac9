"""NONMEM import: Beal's M3 in $ERROR (``F_FLAG = 1``, ``Y = PHI((LLOQ - IPRED)/W)``) -> censored records.

Theophylline with a limit of quantification of 1 mg/L: the 16 observations below it have BLQ = 1 and
DV = LLOQ (``theo_blq.csv``).  Each translated stream must give CENS = 1 exactly there, DV = the limit,
the residual error of the observed branch, and a per-record log-likelihood equal to the stream's own:
``log PHI((LLOQ - IPRED)/W)`` on the censored records, the normal density elsewhere.
"""


import numpy as np
import pandas as pd
import pytest
from scipy import stats

pytest.importorskip("pharmpy")

import pytensor  # noqa: E402

from bayesnlme.build import build_model  # noqa: E402
from bayesnlme.datasets import dataset_path  # noqa: E402
from bayesnlme.importers import NonmemImportError, import_nonmem  # noqa: E402

HEAD = """$PROBLEM theophylline, BLQ by M3
$INPUT ID TIME DV AMT EVID MDV CMT WT LLOQ BLQ
$DATA {data} IGNORE=@
$SUBROUTINES ADVAN2 TRANS2
$PK
CL = THETA(1)*EXP(ETA(1))
V = THETA(2)*EXP(ETA(2))
KA = THETA(3)*EXP(ETA(3))
S2 = V
"""
TAIL = """$THETA (0, 2.8) (0, 32) (0, 1.5) (0, 0.3) (0, 0.1)
$OMEGA 0.09 0.04 0.25
$SIGMA 1 FIX
$ESTIMATION METHOD=COND LAPLACIAN INTER
"""
#: the usual code, the PHI branch first
M3 = """$ERROR
IPRED = F
W = SQRT(THETA(4)**2 + THETA(5)**2*IPRED**2)
IF (BLQ.EQ.1) THEN
  F_FLAG = 1
  Y = PHI((LLOQ - IPRED)/W)
ELSE
  F_FLAG = 0
  Y = IPRED + W*EPS(1)
ENDIF
"""
#: the PHI computed before the IF and used in the ELSE branch; the error written as two EPSs' THETAs
M3_CUMD = """$ERROR
IPRED = F
W = SQRT(THETA(4)**2 + THETA(5)**2*IPRED**2)
DUM = (LLOQ - IPRED)/W
CUMD = PHI(DUM)
IF (BLQ.EQ.0) THEN
  F_FLAG = 0
  Y = IPRED + W*EPS(1)
ELSE
  F_FLAG = 1
  Y = CUMD
ENDIF
"""
#: a limit written in the code (1 mg/L) instead of a column
M3_CONSTANT = M3.replace("Y = PHI((LLOQ - IPRED)/W)", "Y = PHI((1 - IPRED)/W)")
#: the flag computed in $PK from the data (a covariate computed per record) and tested in $ERROR
M3_PK_FLAG = M3.replace("IF (BLQ.EQ.1) THEN", "IF (BELOW.EQ.1) THEN")


def _data(tmp_path) -> pd.DataFrame:
    df = pd.read_csv(dataset_path("theophylline")).drop(columns="DOSE_MGKG")
    df["LLOQ"] = 1.0
    df["BLQ"] = ((df["EVID"] == 0) & (df["DV"] < 1.0)).astype(int)
    df.loc[df["BLQ"] == 1, "DV"] = 1.0
    df.to_csv(tmp_path / "theo_blq.csv", index=False)
    return df


def _import(tmp_path, error, **kw):
    df = _data(tmp_path)
    path = tmp_path / "run1.mod"
    head = HEAD.replace("S2 = V\n", "S2 = V\nBELOW = 0\nIF (BLQ.EQ.1) BELOW = 1\n") if "BELOW" in error else HEAD
    path.write_text(head.format(data="theo_blq.csv") + error + TAIL)
    return df, import_nonmem(path, **kw)


def _outputs(res):
    """IPRED, residual SD and per-record log-likelihood at the initial estimates, ETAs 0."""
    built = build_model(res.spec, res.data)
    point = {k: np.array(v, dtype=float) for k, v in built.initial_point.items()}
    for p, par in res.spec.parameters.items():
        point[p] = par.prior.args["median"]
    for k, prior in res.spec.residual.priors.items():
        point[k] = prior.args["sigma"] / 2   # the half-normal's scale is twice the initial SD
    point["eta_z"][:] = 0.0
    rvs = list(built.model.free_RVs)
    fn = pytensor.function(rvs, [built.ipred, built.residual_sd, built.loglik], mode="FAST_COMPILE",
                           on_unused_input="ignore")
    return fn(*[point[rv.name] for rv in rvs])


def _stream_f(df) -> np.ndarray:
    obs = df[df["EVID"] == 0]
    dose = df[df["EVID"] == 1].set_index("ID")["AMT"]
    k, ka, v = 2.8 / 32, 1.5, 32.0
    t = obs["TIME"].to_numpy()
    return dose.loc[obs["ID"]].to_numpy() * ka / (v * (ka - k)) * (np.exp(-k * t) - np.exp(-ka * t))


@pytest.mark.parametrize("error", [M3, M3_CUMD, M3_CONSTANT, M3_PK_FLAG],
                         ids=["if_phi", "cumd_else", "constant_limit", "pk_flag"])
def test_m3_becomes_censored_records_with_the_same_likelihood(tmp_path, error):
    df, res = _import(tmp_path, error)
    assert res.spec.residual.kind == "combined" and res.spec.residual.blq == "m3"
    obs = df[df["EVID"] == 0]
    data_obs = res.data[res.data["EVID"] == 0]
    blq = obs["BLQ"].to_numpy() == 1
    assert blq.sum() == 16
    np.testing.assert_array_equal(data_obs["CENS"].to_numpy(), blq.astype(int))
    np.testing.assert_allclose(data_obs["DV"].to_numpy()[blq], 1.0)
    assert (res.data.loc[res.data["EVID"] != 0, "CENS"] == 0).all()   # doses are not censored
    assert any("CENS = 1 where B" in m for m in res.mapped) and "BLQ (M3)" in res.toml
    ipred, sd, loglik = _outputs(res)
    f = _stream_f(df)
    w = np.sqrt(0.3**2 + 0.1**2 * f**2)
    np.testing.assert_allclose(ipred, f, rtol=1e-9)
    np.testing.assert_allclose(sd, w, rtol=1e-9)
    dv = obs["DV"].to_numpy()
    expected = np.where(blq, stats.norm.logcdf((1.0 - f) / w), stats.norm.logpdf(dv, f, w))
    np.testing.assert_allclose(loglik, expected, rtol=1e-6)


def test_m3_with_a_log_transformed_dv(tmp_path):
    df = _data(tmp_path)
    obs = df["EVID"] == 0
    df.loc[obs & (df["DV"] > 0), "DV"] = np.log(df.loc[obs & (df["DV"] > 0), "DV"])
    df = df[~(obs & (df["TIME"] == 0))]   # the pre-dose zeros have no log
    df.to_csv(tmp_path / "theo_blq_log.csv", index=False)
    error = """$ERROR
IPRED = LOG(F)
W = THETA(4)
IF (BLQ.EQ.1) THEN
  F_FLAG = 1
  Y = PHI((LOG(LLOQ) - IPRED)/W)
ELSE
  F_FLAG = 0
  Y = IPRED + W*EPS(1)
ENDIF
"""
    path = tmp_path / "run1.mod"
    path.write_text(HEAD.format(data="theo_blq_log.csv") + error + TAIL.replace("(0, 0.3) (0, 0.1)", "(0, 0.3)"))
    res = import_nonmem(path)
    assert res.spec.residual.kind == "exponential"
    d = res.data[res.data["EVID"] == 0]
    cens = d["CENS"].to_numpy() == 1
    np.testing.assert_array_equal(cens, df.loc[df["EVID"] == 0, "BLQ"].to_numpy() == 1)
    assert cens.sum() == 4   # the 12 pre-dose records are gone
    np.testing.assert_allclose(d["DV"].to_numpy()[cens], 1.0)   # the limit back on the natural scale
    np.testing.assert_allclose(d["DV"].to_numpy()[~cens], np.exp(df.loc[df["EVID"] == 0, "DV"].to_numpy()[~cens]))


@pytest.mark.parametrize("error, match", [
    (M3.replace("  F_FLAG = 1\n", "").replace("  F_FLAG = 0\n", ""), r"Y = PHI\(\.\.\.\) without F_FLAG = 1"),
    (M3.replace("  F_FLAG = 1\n", "  F_FLAG = 0\n"), r"F_FLAG is not 1 exactly where Y is the PHI branch"),
    (M3.replace("Y = PHI((LLOQ - IPRED)/W)", "Y = (PHI((LLOQ - IPRED)/W) - PHI(-IPRED/W))/(1 - PHI(-IPRED/W))"),
     r"is not Beal's M3 .* M4 and other forms have no bayesnlme equivalent"),
    (M3.replace("Y = PHI((LLOQ - IPRED)/W)", "Y = PHI((LLOQ - IPRED)/THETA(4))"),
     r"the PHI argument .* is not \(LIMIT - prediction\)/SD with the SD of the error model"),
], ids=["no_flag", "flag_elsewhere", "m4", "other_sd"])
def test_what_is_not_m3_is_named(tmp_path, error, match):
    with pytest.raises(NonmemImportError, match=r"line \d+ .*" + match):
        _import(tmp_path, error)
