"""NONMEM control-stream import: structural model, parameters, covariates, IIV, residual, priors, data
mapping, untranslatable lines by number, the command line, and one fit of the imported pheno model."""

import math
import re

import numpy as np
import pytest

pytest.importorskip("pharmpy")

from bayesnlme.cli import main  # noqa: E402
from bayesnlme.datasets import nonmem_path  # noqa: E402
from bayesnlme.errors import BayesNLMEInputError  # noqa: E402
from bayesnlme.importers import NonmemImportError, import_nonmem, read_ext  # noqa: E402
from bayesnlme.spec import ModelSpec  # noqa: E402

DATA = """C,ID,TIME,CONC,AMT,WT,SEX,AGE,EVID,MDV,CMT
C,0,0,.,0,70,1,40,2,1,1
,1,0,.,100,70,1,40,1,1,1
,1,1,5.1,0,70,1,40,0,0,2
,1,2,4.0,0,70,1,40,0,0,2
,2,0,.,100,60,0,30,1,1,1
,2,1,6.1,0,60,0,30,0,0,2
,2,3,3.5,0,60,0,30,0,0,2
,3,0,.,100,80,0,70,1,1,1
,3,3,3.5,0,80,0,70,0,0,2
"""
INPUT = "$INPUT C=DROP ID TIME DV=CONC AMT WT SEX AGE EVID MDV CMT\n$DATA data.csv IGNORE=C IGNORE=(AGE.GT.65)\n"


def _write(tmp_path, body, name="run1.mod"):
    (tmp_path / "data.csv").write_text(DATA)
    path = tmp_path / name
    path.write_text("$PROBLEM test\n" + INPUT + body)
    return path


def _prior(entry):
    return entry.prior.dist, entry.prior.args


def test_advan1_trans2_additive_weak_priors(tmp_path):
    path = _write(tmp_path, """$SUBROUTINE ADVAN1 TRANS2
$PK
CL = THETA(1)*EXP(ETA(1))
V = THETA(2)*EXP(ETA(2))
S1 = V
$ERROR
Y = F + EPS(1)
$THETA (0, 2.5) (0, 30)
$OMEGA 0.09 0.16
$SIGMA 0.25
""")
    res = import_nonmem(path)
    spec = res.spec
    assert spec.structural.name == "1cmt_iv" and list(spec.parameters) == ["CL", "V"]
    assert _prior(spec.parameters["CL"]) == ("lognormal", {"median": 2.5, "sigma": 1.0})
    assert _prior(spec.parameters["V"]) == ("lognormal", {"median": 30.0, "sigma": 1.0})
    # OMEGA is a variance: half-normal on the SD with scale 2*sqrt(OMEGA)
    assert spec.parameters["CL"].iiv == "lognormal"
    assert spec.parameters["CL"].omega.args["sigma"] == pytest.approx(2 * 0.3)
    assert spec.parameters["V"].omega.args["sigma"] == pytest.approx(2 * 0.4)
    assert spec.residual.kind == "additive"
    assert spec.residual.priors["sigma_add"].args["sigma"] == pytest.approx(2 * 0.5)
    assert not res.untranslated
    # the TOML round-trips through validation
    assert ModelSpec.from_toml_text(res.toml).to_dict() == spec.to_dict()


def test_advan2_power_categorical_exponential_and_data_mapping(tmp_path):
    path = _write(tmp_path, """$SUBROUTINE ADVAN2 TRANS2
$PK
TVCL = THETA(1)*(WT/70)**THETA(4)
IF (SEX.EQ.1) TVCL = TVCL*THETA(5)
TVV = THETA(2)*EXP(THETA(6)*(AGE-40))
CL = TVCL*EXP(ETA(1))
V = TVV*EXP(ETA(2))
KA = THETA(3)
S2 = V
$ERROR
IPRED = F
IF (IPRED.LT.0.001) IPRED = 0.001
W = SQRT(THETA(7)**2 + THETA(8)**2*IPRED**2)
Y = IPRED + W*EPS(1)
IRES = DV - IPRED
$THETA (0, 2) (0, 30) (0, 1.5) 0.75 FIX (0, 1.2) 0.01 (0, 0.1) (0, 0.2)
$OMEGA 0.1 0.09
$SIGMA 1 FIX
""")
    res = import_nonmem(path)
    spec = res.spec
    assert spec.structural.name == "1cmt_oral" and set(spec.parameters) == {"CL", "V", "KA"}
    assert spec.parameters["KA"].iiv == "none"
    effects = {(c.covariate, c.parameter): c for c in spec.covariates}
    wt = effects["WT", "CL"]
    assert (wt.kind, wt.reference, wt.fixed) == ("power", 70.0, 0.75)
    sex = effects["SEXEQ1", "CL"]   # ratio THETA(5) -> bayesnlme log ratio log(THETA(5))
    assert sex.kind == "categorical" and sex.reference == 0
    assert sex.prior.args["mu"] == pytest.approx(math.log(1.2)) and sex.prior.args["sigma"] == 1.0
    age = effects["AGE", "V"]
    assert (age.kind, age.reference) == ("exponential", 40.0)
    assert age.prior.args == {"mu": 0.01, "sigma": pytest.approx(0.02)}
    # W = SQRT(THETA(7)**2 + THETA(8)**2*IPRED**2) with SIGMA 1 FIX: the THETAs are SDs
    assert spec.residual.kind == "combined"
    assert spec.residual.priors["sigma_add"].args["sigma"] == pytest.approx(0.2)
    assert spec.residual.priors["sigma_prop"].args["sigma"] == pytest.approx(0.4)
    # $INPUT: C dropped, CONC is DV; IGNORE=C drops the C line, IGNORE=(AGE.GT.65) subject 3
    assert res.columns["C"] is None and res.columns["CONC"] == "DV"
    assert res.derived == {"SEXEQ1": "SEX.EQ.1"}
    data = res.data
    assert list(data.ID.unique()) == [1, 2] and "C" not in data and "DV" in data
    assert list(data.SEXEQ1) == [1, 1, 1, 0, 0, 0]
    assert data.DV.iloc[1] == 5.1
    # the guard and IRES are left out with their lines, not untranslated
    notes = {i.line: i.reason for i in res.notes}
    assert "guard" in notes[15] and "output only" in notes[18]
    fit_input = spec.bind(__import__("bayesnlme").data.read_nonmem(data))
    assert {c.covariate for c in fit_input.covariates} == {"WT", "SEXEQ1", "AGE"}


def test_advan3_trans4_block_omega_fix_linear_mu_referencing(tmp_path):
    path = _write(tmp_path, """$SUBROUTINE ADVAN3 TRANS4
$PK
MU_1 = LOG(THETA(1))
CL = EXP(MU_1 + ETA(1))
V1 = THETA(2)*EXP(ETA(2))
Q = THETA(3)
V2 = THETA(4)*(1 + THETA(5)*(AGE-40))*EXP(ETA(3))
S1 = V1
$ERROR
Y = F*(1 + EPS(1))
$THETA (0, 5) (0, 50) (0, 10) (0, 100) (-0.05, 0.01, 0.05)
$OMEGA BLOCK(2) 0.09 0.03 0.16
$OMEGA 0.04 FIX
$SIGMA 0.04
""")
    spec = import_nonmem(path).spec
    assert spec.structural.name == "2cmt_iv" and list(spec.parameters) == ["CL", "V", "Q", "V2"]
    assert spec.omega_blocks == (("CL", "V"),)
    assert spec.parameters["V2"].omega_fixed == pytest.approx(0.2)   # sqrt(0.04 FIX)
    lin = spec.covariates[0]
    assert (lin.kind, lin.covariate, lin.parameter, lin.reference) == ("linear", "AGE", "V2", 40.0)
    assert lin.prior.args == {"mu": 0.01, "sigma": pytest.approx(0.02), "lower": -0.05, "upper": 0.05}
    assert spec.residual.kind == "proportional"
    assert spec.residual.priors["sigma_prop"].args["sigma"] == pytest.approx(2 * 0.2)


@pytest.mark.parametrize("advan, code, error, expected", [
    ("ADVAN4 TRANS4", "CL=THETA(1)*EXP(ETA(1))\nV2=THETA(2)\nQ=THETA(3)\nV3=THETA(4)\nKA=THETA(5)\nS2=V2\n",
     "Y = F*EXP(EPS(1))", ("2cmt_oral", ["CL", "V", "Q", "V2", "KA"], "exponential")),
    ("ADVAN11 TRANS4", "CL=THETA(1)*EXP(ETA(1))\nV1=THETA(2)\nQ2=THETA(3)\nV2=THETA(4)\nQ3=THETA(5)\n"
     "V3=THETA(6)\nS1=V1\n", "Y = F + F*EPS(1) + EPS(2)", ("3cmt_iv", ["CL", "V", "Q", "V2", "Q3", "V3"], "combined")),
    ("ADVAN12 TRANS4", "CL=THETA(1)*EXP(ETA(1))\nV2=THETA(2)\nQ3=THETA(3)\nV3=THETA(4)\nQ4=THETA(5)\n"
     "V4=THETA(6)\nKA=THETA(7)\nS2=V2\n", "Y = LOG(F) + EPS(1)",
     ("3cmt_oral", ["CL", "V", "Q", "V2", "Q3", "V3", "KA"], "exponential")),
])
def test_other_advans_map_names_and_error_models(tmp_path, advan, code, error, expected):
    n = code.count("THETA(")
    path = _write(tmp_path, f"$SUBROUTINE {advan}\n$PK\n{code}$ERROR\n{error}\n"
                            f"$THETA {' '.join(f'(0, {i + 1})' for i in range(n))}\n$OMEGA 0.1\n$SIGMA 0.04 0.01\n")
    res = import_nonmem(path, strict=False)
    spec = res.spec
    assert (spec.structural.name, list(spec.parameters), spec.residual.kind) == expected
    # parameters are renamed, their THETAs kept: ADVAN4's V3 (THETA(4)) is bayesnlme's V2
    for i, p in enumerate(expected[1]):
        assert spec.parameters[p].prior.args["median"] == i + 1
    assert res.log_dv == ("LOG" in error)
    if res.log_dv:   # DV is log(concentration) in the data: exponentiated on observation records
        assert res.data.DV.iloc[1] == pytest.approx(math.exp(5.1))


def test_oral_bioavailability_and_lag(tmp_path):
    path = _write(tmp_path, """$SUBROUTINE ADVAN2 TRANS2
$PK
CL = THETA(1)*EXP(ETA(1))
V = THETA(2)
KA = THETA(3)
F1 = THETA(4)
ALAG1 = THETA(5)*EXP(ETA(2))
S2 = V
S1 = 1
$ERROR
Y = F + F*EPS(1)
$THETA (0, 5) (0, 50) (0, 1) (0, 0.8, 1) (0, 0.5)
$OMEGA 0.1 0.04
$SIGMA 0.04
""")
    res = import_nonmem(path)
    f, alag = res.spec.parameters["F"], res.spec.parameters["ALAG"]
    assert f.iiv == "none" and f.prior.dist == "truncatednormal" and f.prior.args["upper"] == 1.0
    assert alag.iiv == "lognormal" and alag.prior.args["median"] == 0.5
    assert alag.omega.args["sigma"] == pytest.approx(2 * 0.2)
    assert any(i.line == 12 and "not observed" in i.reason for i in res.notes)   # S1 = 1


def test_untranslatable_lines_are_named(tmp_path):
    path = _write(tmp_path, """$SUBROUTINE ADVAN1 TRANS2
$PK
TVCL = THETA(1)
IF (TIME.GT.24) TVCL = TVCL*THETA(3)
CL = TVCL*EXP(ETA(1))
V = THETA(2)
MTIME(1) = 24
S1 = V/WT
$ERROR
Y = F + EPS(1)
$THETA (0, 5) (0, 50) (0, 1.2)
$OMEGA 0.1
$SIGMA 1
""")
    with pytest.raises(NonmemImportError) as err:
        import_nonmem(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path))
    assert "line 7 `IF (TIME.GT.24) TVCL = TVCL*THETA(3)`: CL changes with TIME" in msg
    assert "line 10 `MTIME(1) = 24`" in msg
    assert "line 11 `S1 = V/WT`: S1 is not V times a positive number" in msg


def test_des_and_rate_constant_trans_are_refused(tmp_path):
    des = _write(tmp_path, """$SUBROUTINE ADVAN13 TOL=9
$MODEL COMP=(DEPOT DEFDOSE) COMP=(CENTRAL DEFOBS)
$PK
CL = THETA(1)*EXP(ETA(1))
V = THETA(2)
S2 = V
$DES
DADT(1) = -A(1)
DADT(2) = A(1) - CL/V*A(2)
$ERROR
Y = F + EPS(1)
$THETA (0, 5) (0, 50)
$OMEGA 0.1
$SIGMA 1
""")
    with pytest.raises(NonmemImportError, match=r"line 10 `\$DES`.*line 4 `\$SUBROUTINE ADVAN13"):
        import_nonmem(des)
    trans1 = _write(tmp_path, "$SUBROUTINE ADVAN1 TRANS1\n$PK\nK = THETA(1)*EXP(ETA(1))\nS1 = THETA(2)\n"
                              "$ERROR\nY = F + EPS(1)\n$THETA (0, 0.1) (0, 50)\n$OMEGA 0.1\n$SIGMA 1\n", "t1.mod")
    # TRANS1 with K estimated itself: bayesnlme's CL = K*S1 is a product of two THETAs (K = CL/V would map)
    with pytest.raises(NonmemImportError, match=r"line 6 `K = THETA\(1\)\*EXP\(ETA\(1\)\)`: TRANS1 CL = K\*S1: "
                                                r"the typical value of CL is a product of two THETAs"):
        import_nonmem(trans1)


def test_estimates_priors_from_ext():
    res = import_nonmem(nonmem_path("phenobarbital"), priors="estimates")
    spec, (est, se) = res.spec, read_ext(nonmem_path("phenobarbital").with_suffix(".ext"))
    cl = spec.parameters["CL"].prior.args
    assert cl["median"] == est["THETA1"]
    assert cl["sigma"] == pytest.approx(math.sqrt(math.log1p((se["THETA1"] / est["THETA1"]) ** 2)))
    om = spec.parameters["CL"].omega.args   # SD of ETA: sqrt of the variance, log-sd half the variance's
    assert om["median"] == pytest.approx(math.sqrt(est["OMEGA(1,1)"]))
    assert om["sigma"] == pytest.approx(0.5 * math.sqrt(math.log1p((se["OMEGA(1,1)"] / est["OMEGA(1,1)"]) ** 2)))
    apgar = next(c for c in spec.covariates if c.covariate == "APGRLT5")   # V * (1 + THETA(3))
    assert apgar.prior.args["mu"] == pytest.approx(math.log1p(est["THETA3"]))
    assert apgar.prior.args["sigma"] == pytest.approx(se["THETA3"] / (1 + est["THETA3"]))
    assert spec.residual.priors["sigma_prop"].args["median"] == pytest.approx(math.sqrt(est["SIGMA(1,1)"]))
    wt = [c for c in spec.covariates if c.covariate == "WT"]   # TVCL = THETA(1)*WT: per kg
    assert [(c.kind, c.reference, c.fixed) for c in wt] == [("power", 1.0, 1.0)] * 2


def _banner(title: str) -> list:
    stars = " " + "*" * 120
    side = " " + "*" * 20
    return [stars, side + " " * 80 + side[1:], side + title.center(80) + side[1:], stars]


def _listing(steps: list) -> str:
    """A NONMEM listing (as NONMEM 7 writes it: 3 significant digits, ``.........`` for a fixed element's SE)
    with one FINAL PARAMETER ESTIMATE section per step, and a STANDARD ERROR section where a step has SEs.
    ``steps``: [(thetas, omega lower triangle rows, sigma rows, SEs as the same three or None)]."""
    def fmt(v):
        return "........." if v is None else f"{v:.2E}"

    def part(thetas, omega, sigma):
        out = ["", " THETA - VECTOR OF FIXED EFFECTS PARAMETERS   *********", ""]
        for i in range(0, len(thetas), 12):   # 12 to a line, each line under its header
            chunk = thetas[i:i + 12]
            out += ["         " + "  ".join(f"TH{j:2d}    " for j in range(i + 1, i + 1 + len(chunk))), " ",
                    "        " + " ".join(f"{fmt(v):>9}" for v in chunk), " "]
        for name, eta, rows in (("OMEGA - COV MATRIX FOR RANDOM EFFECTS - ETAS  ********", "ETA", omega),
                                ("SIGMA - COV MATRIX FOR RANDOM EFFECTS - EPSILONS  ****", "EPS", sigma)):
            out += ["", f" {name}", "", "         " + "      ".join(f"{eta}{j}" for j in range(1, len(rows) + 1)), " "]
            for j, row in enumerate(rows, 1):
                out += [f" {eta}{j}", "+       " + " ".join(f"{fmt(v):>9}" for v in row), " "]
        out += ["", " OMEGA - CORR MATRIX FOR RANDOM EFFECTS - ETAS  *******", "", " ETA1", "+        9.99E+00", " "]
        return out

    lines = ["NONMEM(R) VERSION 7.5.0", " #TERM:", "0MINIMIZATION SUCCESSFUL"]
    for thetas, omega, sigma, se in steps:
        lines += _banner("FIRST ORDER CONDITIONAL ESTIMATION WITH INTERACTION") + [" #OBJV:*** 586.276 ***", "1"]
        lines += _banner("FINAL PARAMETER ESTIMATE") + part(thetas, omega, sigma) + ["1"]
        if se is not None:
            lines += _banner("FIRST ORDER CONDITIONAL ESTIMATION WITH INTERACTION")[:2]
            lines += _banner("STANDARD ERROR OF ESTIMATE")[2:] + part(*se) + ["1"]
    return "\n".join(lines) + "\n Elapsed finaloutput time in seconds:     0.02\n"


def test_listing_estimates_last_step_wrapped_thetas_and_fixed(tmp_path):
    from bayesnlme.importers.nonmem_priors import read_lst

    thetas = [0.5 + k for k in range(13)]   # 13: the vector wraps onto a second line
    omega = [[0.09], [0.01, 0.04]]
    sigma = [[0.02]]
    se = ([0.05] * 12 + [None], [[0.02], [None, 0.01]], [[0.003]])
    first = ([9.0] * 13, [[1.0], [0.0, 1.0]], [[1.0]], None)   # an earlier step ($EST METHOD=IMP ...)
    path = tmp_path / "run1.lst"
    path.write_text(_listing([first, (thetas, omega, sigma, se)]))
    est, ses = read_lst(path)
    assert [est[f"THETA{k}"] for k in range(1, 14)] == pytest.approx(thetas)
    assert (est["OMEGA(1,1)"], est["OMEGA(2,1)"], est["OMEGA(2,2)"], est["SIGMA(1,1)"]) == (0.09, 0.01, 0.04, 0.02)
    assert ses["THETA1"] == 0.05 and "THETA13" not in ses and "OMEGA(2,1)" not in ses   # fixed: no SE
    assert ses["OMEGA(2,2)"] == 0.01 and ses["SIGMA(1,1)"] == 0.003
    assert not any(v == 9.99 for v in est.values())   # correlations are not covariances
    with pytest.raises(BayesNLMEInputError, match="no FINAL PARAMETER ESTIMATE section"):
        (tmp_path / "x.lst").write_text("NONMEM(R) VERSION 7.5.0\n PROBLEM STOPPED\n")
        read_lst(tmp_path / "x.lst")


def test_estimates_priors_from_a_listing_where_there_is_no_ext(tmp_path):
    import shutil

    src = nonmem_path("phenobarbital")
    est, se = read_ext(src.with_suffix(".ext"))
    for name in (src.name,):
        shutil.copy(src, tmp_path / name)
    text = src.read_text()
    data = re.search(r"\$DATA\s+(\S+)", text).group(1)
    shutil.copy(src.parent / data, tmp_path / data)
    three = {k: float(f"{v:.2E}") for k, v in est.items()}   # the listing's 3 significant digits
    steps = [([three[f"THETA{k}"] for k in (1, 2, 3)], [[three["OMEGA(1,1)"]], [0.0, three["OMEGA(2,2)"]]],
              [[three["SIGMA(1,1)"]]],
              ([se[f"THETA{k}"] for k in (1, 2, 3)], [[se["OMEGA(1,1)"]], [None, se["OMEGA(2,2)"]]],
               [[se["SIGMA(1,1)"]]]))]
    (tmp_path / src.name).with_suffix(".lst").write_text(_listing(steps))
    from_lst = import_nonmem(tmp_path / src.name, priors="estimates").spec   # found beside the stream
    from_ext = import_nonmem(src, priors="estimates").spec
    for p in ("CL", "V"):
        assert from_lst.parameters[p].prior.args["median"] == pytest.approx(
            from_ext.parameters[p].prior.args["median"], rel=5e-3)
        assert from_lst.parameters[p].omega.args["median"] == pytest.approx(
            from_ext.parameters[p].omega.args["median"], rel=5e-3)
        assert from_lst.parameters[p].prior.args["sigma"] == pytest.approx(
            from_ext.parameters[p].prior.args["sigma"], rel=2e-2)


def test_cli_writes_toml_that_validates(tmp_path, capsys):
    out, data = tmp_path / "pheno.toml", tmp_path / "pheno.csv"
    rc = main(["import-nonmem", str(nonmem_path("phenobarbital")), "--out", str(out), "--priors", "weak",
               "--data-out", str(data)])
    printed = capsys.readouterr().out
    assert rc == 0 and "1cmt_iv" in printed and "APGRLT5" in printed
    spec = ModelSpec.from_toml(out)
    assert spec.structural.name == "1cmt_iv" and spec.residual.kind == "proportional"
    assert "APGRLT5" in data.read_text().splitlines()[0]


def test_a_syntax_error_names_its_line(tmp_path):
    body = ("$SUBROUTINE ADVAN1 TRANS2\n$PK\nCL = THETA(1)*EXP(ETA(1))\nV = THETA(2) +* 2\nS1 = V\n"
            "$ERROR\nY = F + EPS(1)\n$THETA (0,5) (0,50)\n$OMEGA 0.1\n$SIGMA 1\n")
    with pytest.raises(NonmemImportError, match=r"run1.mod: line 7 `V = THETA\(2\) \+\* 2`: Pharmpy cannot parse "
                                                r"this statement \(unexpected '\*' at column 15\)"):
        import_nonmem(_write(tmp_path, body))
    lower = _write(tmp_path, body.replace(" +* 2", "").replace("$ERROR\nY = F + EPS(1)", "$error\ny = f + eps(1) +* 1"),
                   "run2.mod")   # lower case (read upper-cased), quoted as written
    with pytest.raises(NonmemImportError, match=r"line 10 `y = f \+ eps\(1\) \+\* 1`: Pharmpy cannot parse"):
        import_nonmem(lower)


def test_cli_refuses_untranslated_lines(tmp_path, capsys):
    path = _write(tmp_path, "$SUBROUTINE ADVAN1 TRANS2\n$PK\nCL = THETA(1)\nMTIME(1) = 24\n"
                            "V = THETA(2)\nS1 = V\n$ERROR\nY = F + EPS(1)\n$THETA (0,5) (0,50)\n$SIGMA 1\n")
    out = tmp_path / "x.toml"
    assert main(["import-nonmem", str(path), "--out", str(out)]) == 1
    assert "line 7" in capsys.readouterr().err and not out.exists()
    assert main(["import-nonmem", str(path), "--out", str(out), "--allow-untranslated"]) == 0
    assert "NOT TRANSLATED" in out.read_text()


@pytest.mark.slow
def test_imported_pheno_fit_recovers_nonmem_estimates():
    from bayesnlme.inference.fit import fit_model

    res = import_nonmem(nonmem_path("phenobarbital"), priors="estimates")
    fit = fit_model(res.spec, res.data, chains=2, draws=400, tune=400, seed=11, progress=False)
    est, _ = read_ext(nonmem_path("phenobarbital").with_suffix(".ext"))
    nonmem = {"CL": est["THETA1"], "V": est["THETA2"], "omega_CL": math.sqrt(est["OMEGA(1,1)"]),
              "omega_V": math.sqrt(est["OMEGA(2,2)"]), "sigma_prop": math.sqrt(est["SIGMA(1,1)"])}
    table = fit.summary()
    for name, value in nonmem.items():
        draws = np.asarray(fit.posterior_draws(name)).ravel()
        assert abs(np.median(draws) - value) < 3 * draws.std(), (name, np.median(draws), value, draws.std())
    assert table["r_hat"].max() < 1.05


def test_missing_pharmpy_is_one_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pharmpy.modeling", None)   # as if pharmpy-core were not installed
    with pytest.raises(NonmemImportError, match=r"pip install 'bayesnlme\[nonmem\]'"):
        import_nonmem(nonmem_path("phenobarbital"))


def test_additive_slope_prior_is_the_relative_slope_with_its_delta_method_se():
    from bayesnlme.importers.nonmem_priors import Value, effect, slope_ratio

    v = slope_ratio(Value(-0.002, 0.0005), Value(0.13, 0.01))   # a negative slope is fine
    assert v.value == pytest.approx(-0.002 / 0.13)
    assert v.se == pytest.approx(math.hypot(0.0005 / 0.13, 0.002 * 0.01 / 0.13 ** 2))
    assert effect(v, "linear", "identity") == {"prior": {"dist": "normal", "mu": pytest.approx(v.value),
                                                         "sigma": pytest.approx(v.se)}}
    with pytest.raises(Exception, match="typical value -0.1 is not positive"):
        slope_ratio(Value(0.002, 0.0005), Value(-0.1, 0.01))
