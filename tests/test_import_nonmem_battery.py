"""NONMEM import, a battery of control streams written the way modellers write them.

Each stream is in NM-TRAN's own syntax on a bundled data set written NONMEM-style (header skipped by
``IGNORE=@`` or ``IGNORE=#``, records filtered by ``IGNORE=(...)``/``ACCEPT=(...)``).  For each one the
translation is compared with what the control stream says (structural model, parameters, covariate
forms and references, IIV, residual, priors centred on the initial values, fixed values), and for 28
of them the imported spec's IPRED and residual SD are compared, record by record, with the control
stream's own equations evaluated directly: individual parameters from its $PK written in numpy, the
amounts by the matrix exponential of the ADVAN's compartment matrix (TRANS3/5/6: its rate constants by NONMEM's
own formulas), ``F = A(central)/S``.  No NUTS fit.
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
from bayesnlme.spec import ModelSpec  # noqa: E402


# ---------------------------------------------------------------------------------------------- data
def _theo(dv_scale=1.0):
    df = pd.read_csv(dataset_path("theophylline")).drop(columns="DOSE_MGKG")
    df["DV"] *= dv_scale
    df["AGE"], df["SEX"] = 30 + (df["ID"] * 7) % 40, df["ID"] % 2
    return df


def _warf(dv_scale=1.0):
    df = pd.read_csv(dataset_path("warfarin")).drop(columns="DVNAME")
    scr = 0.8 + 0.01 * (df["ID"] % 10)   # a creatinine clearance (Cockcroft-Gault) for the linear CRCL form
    df["CRCL"] = ((140 - df["AGE"]) * df["WT"] / (72 * scr) * np.where(df["SEX"] == 0, 0.85, 1.0)).round(1)
    df.loc[df["DVID"] == 1, "DV"] *= dv_scale
    return df


def _indo(log=False):
    df = pd.read_csv(dataset_path("indometacin"))
    if log:
        df.loc[df["EVID"] == 0, "DV"] = np.log(df.loc[df["EVID"] == 0, "DV"])
    return df


def _indo_infusion():
    df = _indo()   # 30-minute infusions, dose in mg, concentrations in ng/mL
    df.insert(4, "RATE", np.where(df["EVID"] == 1, df["AMT"] / 0.5, 0.0))
    df["DV"] *= 1000
    return df


def _pheno(dv_scale=1.0):
    df = pd.read_csv(dataset_path("phenobarbital"))
    df["DV"] *= dv_scale
    return df


#: file -> (frame, header prefix): "#" for IGNORE=#, "" for IGNORE=@ (the header starts with a letter)
DATA = {"theo.csv": (_theo, ""), "theo_ngml.csv": (lambda: _theo(1000.0), ""), "warf.csv": (_warf, ""),
        "warf_ngml.csv": (lambda: _warf(1000.0), ""), "indo.csv": (_indo, ""),
        "indo_log.csv": (lambda: _indo(log=True), ""), "indo_infusion.csv": (_indo_infusion, ""),
        "pheno.csv": (_pheno, "#"), "pheno_ngml.csv": (lambda: _pheno(1000.0), "#")}

# ------------------------------------------------------------------------------------------- streams
STREAMS = {}
STREAMS["theo_mu"] = """$PROBLEM Theophylline, MU-referenced 1-cmt oral, allometric CL (fixed exponent)
;; 1. Based on: run0
$INPUT ID TIME DV AMT EVID MDV CMT WT AGE=DROP SEX=SKIP
$DATA ../theo.csv IGNORE=@
$SUBROUTINES ADVAN2 TRANS2
$ABBR DERIV2=NO
$PK
; typical values
TVCL = THETA(1)*(WT/70)**0.75   ; L/h
TVV  = THETA(2)*(WT/70)         ; L
TVKA = THETA(3)
MU_1 = LOG(TVCL)
MU_2 = LOG(TVV)
MU_3 = LOG(TVKA)
CL = EXP(MU_1 + ETA(1))
V  = EXP(MU_2 + ETA(2))
KA = EXP(MU_3 + ETA(3))
S2 = V                          ; dose mg, conc mg/L
$ERROR
IPRED = F
W = SQRT(THETA(4)**2 + THETA(5)**2*IPRED**2)
IF (W.EQ.0) W = 1
IRES = DV - IPRED
IWRES = IRES/W
Y = IPRED + W*EPS(1)
$THETA
(0, 2.8)       ; CL
(0, 32)        ; V
(0, 1.5, 10)   ; KA
(0, 0.3)       ; ADD SD mg/L
(0, 0.1)       ; PROP SD
$OMEGA 0.09 ; IIV CL
$OMEGA 0.04 ; IIV V
$OMEGA 0.4  ; IIV KA
$SIGMA 1 FIX
$EST METHOD=1 INTER MAXEVAL=9999 PRINT=5 NOABORT
$COV PRINT=E
$TABLE ID TIME IPRED IWRES CWRES NOPRINT ONEHEADER FILE=sdtab1
"""
STREAMS["theo_blocks"] = """$PROBLEM Theophylline, estimated allometric exponent, BLOCK(2) on CL and V
$INPUT ID TIME CONC=DV DOSE=AMT EVID MDV CMT WT AGE SEX
$DATA ../theo.csv IGNORE=@
$SUBROUTINE ADVAN2 TRANS2
$PK
TVCL=THETA(1)*(WT/70)**THETA(4)
TVV=THETA(2)
TVKA=THETA(3)
CL=TVCL*EXP(ETA(1))
V=TVV*EXP(ETA(2))
KA=TVKA*EXP(ETA(3))
S2=V
$ERROR
IPRED=F
IF (IPRED.LE.0) IPRED=1E-8
Y=IPRED*(1+EPS(1))
$THETA (0,2.8) (0,32) (0,1.5,10) (0,0.75,2)
$OMEGA BLOCK(2)
 0.09       ; IIV CL
 0.01 0.04  ; IIV V
$OMEGA 0.5 ; IIV KA
$SIGMA 0.04
$ESTIMATION METHOD=COND INTERACTION
$COVARIANCE
"""
STREAMS["theo_s2_ngml"] = """$PROB theophylline, dose in mg, concentrations in ng/mL
$INPUT ID TIME DV AMT EVID MDV CMT WT AGE SEX
$DATA ../theo_ngml.csv IGNORE=@
$SUBROUTINE ADVAN2 TRANS2
$PK
CL = THETA(1)*EXP(ETA(1))
V  = THETA(2)*EXP(ETA(2))
KA = THETA(3)*EXP(ETA(3))
S2 = V/1000          ; mg/L -> ng/mL
$ERROR
Y = F + F*EPS(1) + EPS(2)
$THETA (0, 2.8) (0, 32) (0, 1.5)
$OMEGA 0.09 0.04 0.4
$SIGMA 0.01  ; proportional
$SIGMA 10000 ; additive, (100 ng/mL)^2
$EST METHOD=1 INTER
"""
STREAMS["warf_lag_f"] = """$PROBLEM Warfarin PK: lag time, bioavailability, age and sex on CL
$INPUT ID TIME DV AMT EVID MDV DVID CMT WT AGE SEX CRCL=DROP
$DATA ../warf.csv IGNORE=@ IGNORE=(DVID.EQ.2)
$SUBROUTINE ADVAN2 TRANS2
$PK
TVCL = THETA(1)*EXP(THETA(5)*(AGE-40))
IF(SEX.EQ.1) TVCL = TVCL*THETA(6)
TVV  = THETA(2)*(WT/70)
CL = TVCL*EXP(ETA(1))
V  = TVV*EXP(ETA(2))
KA = THETA(3)*EXP(ETA(3))
ALAG1 = THETA(4)
F1 = THETA(7)
S2 = V
$ERROR
IPRED = F
Y = IPRED + IPRED*EPS(1) + EPS(2)
$THETA
 (0, 0.13)          ; CL L/h
 (0, 8)             ; V L
 (0, 1.2)           ; KA 1/h
 (0, 0.8, 2)        ; ALAG h
 (-0.1, 0.01, 0.1)  ; AGE on CL
 (0, 1.1)           ; SEX on CL (ratio)
 (0, 0.9, 1)        ; F1
$OMEGA 0.1 0.02 0.5
$SIGMA 0.01 0.04
"""
STREAMS["warf_sex_power"] = """$PROBLEM Warfarin: THETA**SEX, linear CRCL on V, exponent fixed at 0, exponential error
$INPUT ID TIME DV AMT EVID MDV DVID CMT WT AGE SEX CRCL
$DATA ../warf.csv IGNORE=@ ACCEPT=(DVID.LT.2)
$SUBROUTINE ADVAN2 TRANS2
$PK
TVCL = THETA(1)*(WT/70)**THETA(4)*THETA(5)**SEX
TVV = THETA(2)*(1+THETA(6)*(CRCL-100))
CL = TVCL*EXP(ETA(1))
V = TVV*EXP(ETA(2))
KA = THETA(3)
S2 = V
$ERROR
IPRED = F
Y = F*EXP(EPS(1))
$THETA (0, 0.13) (0, 8) (0, 1.2) (0 FIX) (0, 0.9) (-0.01, 0.002, 0.01)
$OMEGA 0.1
$OMEGA 0.02
$SIGMA 0.04
"""
STREAMS["pheno_trans1"] = """$PROBLEM Phenobarbital, ADVAN1 TRANS1 with K = CL/V
$INPUT ID TIME DV AMT EVID MDV CMT WT APGR
$DATA ../pheno.csv IGNORE=#
$SUBROUTINE ADVAN1 TRANS1
$PK
TVCL = THETA(1)*WT
TVV = THETA(2)*WT
IF (APGR.LT.5) TVV = TVV*(1+THETA(3))
CL = TVCL*EXP(ETA(1))
V = TVV*EXP(ETA(2))
K = CL/V
S1 = V
$ERROR
W = F
Y = F + W*EPS(1)
$THETA (0,0.0047) (0,1.0) (-.99,.1)
$OMEGA DIAGONAL(2) 0.03 0.03
$SIGMA 0.013
$EST METHOD=1 INTERACTION
"""
STREAMS["pheno_s1_scale"] = """$PROBLEM Phenobarbital, dose mg, DV ng/mL: S1 = V/1000
$INPUT ID TIME CONC=DV DOSE=AMT EVID MDV CMT WGT APGAR
$DATA ../pheno_ngml.csv IGNORE=#
$SUBROUTINE ADVAN1 TRANS2
$PK
TVCL = THETA(1)*WGT
TVV = THETA(2)*WGT
IF (APGAR.LT.5) TVV = TVV*THETA(3)
CL = TVCL*EXP(ETA(1))
V = TVV*EXP(ETA(2))
S1 = V/1000
$ERROR
IPRED = F
Y = IPRED*(1 + EPS(1))
$THETA (0,0.0047) (0,1.0) (0,1.1)
$OMEGA 0.03 0.03
$SIGMA 0.013
"""
STREAMS["indo_advan3"] = """$PROBLEM Indometacin, 2-cmt iv (ADVAN3 TRANS4), BLOCK(2), fixed OMEGA and SIGMA
$INPUT ID TIME DV AMT EVID MDV CMT
$DATA ../indo.csv IGNORE=@
$SUBROUTINE ADVAN3 TRANS4
$PK
CL = THETA(1)*EXP(ETA(1))
V1 = THETA(2)*EXP(ETA(2))
Q  = THETA(3)
V2 = THETA(4)*EXP(ETA(3))
S1 = V1
$ERROR
IPRED = F
Y = IPRED + EPS(1)
$THETA (0, 8) (0, 10) (0, 4) (0, 20)
$OMEGA BLOCK(2) 0.1 0.05 0.1
$OMEGA 0.1 FIX
$SIGMA 0.04 FIX
"""
STREAMS["indo_advan11_log"] = """$PROBLEM Indometacin, 3-cmt iv (ADVAN11 TRANS4), log-transformed DV
$INPUT ID TIME LNDV=DV AMT EVID MDV CMT
$DATA ../indo_log.csv IGNORE=@
$SUBROUTINE ADVAN11 TRANS4
$PK
CL = THETA(1)*EXP(ETA(1))
V1 = THETA(2)*EXP(ETA(2))
Q2 = THETA(3)
V2 = THETA(4)
Q3 = THETA(5)
V3 = THETA(6)
S1 = V1
$ERROR
IPRED = -5
IF (F.GT.0) IPRED = LOG(F)
Y = IPRED + EPS(1)
$THETA (0, 8) (0, 10) (0, 4) (0, 20) (0, 1) (0, 30)
$OMEGA 0.1 0.1
$SIGMA 0.04
"""
STREAMS["warf_advan4_s2"] = """$PROBLEM Warfarin 2-cmt oral (ADVAN4 TRANS4), dose mg, conc ng/mL
$INPUT ID TIME DV AMT EVID MDV DVID CMT WT AGE SEX CRCL
$DATA ../warf_ngml.csv IGNORE=@ IGNORE=(DVID.EQ.2)
$SUBROUTINE ADVAN4 TRANS4
$PK
TVCL = THETA(1)*(WT/70)**0.75
CL = TVCL*EXP(ETA(1))
V2 = THETA(2)*(WT/70)*EXP(ETA(2))
Q  = THETA(3)
V3 = THETA(4)
KA = THETA(5)*EXP(ETA(3))
S2 = V2/1000
$ERROR
IPRED = F
W = SQRT(THETA(6)**2 + THETA(7)**2*IPRED**2)
Y = IPRED + W*EPS(1)
$THETA (0, 0.13) (0, 7) (0, 0.5) (0, 3) (0, 1.2) (0, 200) (0, 0.1)
$OMEGA 0.1 0.02 0.5
$SIGMA 1 FIX
"""
STREAMS["warf_shared_allometry"] = """$PROBLEM Warfarin 2-cmt oral, estimated allometric exponents (CL and Q; V2 and V3)
$INPUT ID TIME DV AMT EVID MDV DVID CMT WT AGE SEX CRCL
$DATA ../warf.csv IGNORE=@ IGNORE=(DVID.EQ.2)
$SUBROUTINE ADVAN4 TRANS4
$PK
ASCL = (WT/70)**THETA(6)   ; clearances
ASV  = (WT/70)**THETA(7)   ; volumes
CL = THETA(1)*ASCL*EXP(ETA(1))
V2 = THETA(2)*ASV*EXP(ETA(2))
Q  = THETA(3)*ASCL
V3 = THETA(4)*ASV
KA = THETA(5)*EXP(ETA(3))
S2 = V2
$ERROR
IPRED = F
Y = IPRED*(1 + EPS(1))
$THETA (0, 0.13) (0, 7) (0, 0.5) (0, 3) (0, 1.2) (0, 0.75, 2) (0, 1, 2)
$OMEGA 0.1 0.02 0.5
$SIGMA 0.04
"""
STREAMS["warf_min_max"] = """$PROBLEM Warfarin 1-cmt oral, CRCL capped with MIN/MAX (NM-TRAN, not parsed by Pharmpy)
$INPUT ID TIME DV AMT EVID MDV DVID CMT WT AGE SEX CRCL
$DATA ../warf.csv IGNORE=@ IGNORE=(DVID.EQ.2)
$SUBROUTINE ADVAN2 TRANS2
$PK
CRCLC = MIN(MAX(CRCL, 60), 150)   ; capped
TVCL = THETA(1)*(CRCLC/100)**THETA(4)
CL = TVCL*EXP(ETA(1))
V = THETA(2)*EXP(ETA(2))
KA = THETA(3)
S2 = V
$ERROR
IPRED = MAX(F, 1E-8)
Y = IPRED*(1 + EPS(1))
$THETA (0, 0.13) (0, 8) (0, 1.2) (0, 0.5)
$OMEGA 0.1 0.02
$SIGMA 0.04
"""
STREAMS["warf_additive"] = """$PROBLEM Warfarin 1-cmt oral, an additive (not multiplicative) weight effect on CL
$INPUT ID TIME DV AMT EVID MDV DVID CMT WT AGE SEX CRCL
$DATA ../warf.csv IGNORE=@ IGNORE=(DVID.EQ.2)
$SUBROUTINE ADVAN2 TRANS2
$PK
TVCL = THETA(1) + THETA(4)*(WT - 70)   ; L/h, + L/h per kg
CL = TVCL*EXP(ETA(1))
V = THETA(2)*EXP(ETA(2))
KA = THETA(3)
S2 = V
$ERROR
Y = F*(1 + EPS(1))
$THETA (0, 0.13) (0, 8) (0, 1.2) (-0.01, 0.002, 0.01)
$OMEGA 0.1 0.02
$SIGMA 0.04
"""
STREAMS["warf_advan12"] = """$PROBLEM Warfarin 3-cmt oral (ADVAN12 TRANS4), fixed THETAs, OMEGA and SIGMA
$INPUT ID TIME DV AMT EVID MDV DVID CMT WT AGE SEX CRCL
$DATA ../warf.csv IGNORE=@ IGNORE=(DVID.EQ.2)
$SUBROUTINE ADVAN12 TRANS4
$PK
CL = THETA(1)*EXP(ETA(1))
V2 = THETA(2)*EXP(ETA(2))
Q3 = THETA(3)
V3 = THETA(4)
Q4 = THETA(5)
V4 = THETA(6)
KA = THETA(7)
S2 = V2
$ERROR
IPRED = F
Y = IPRED + IPRED*EPS(1)
$THETA (0, 0.13) (0, 7) (0, 0.5) (0, 3) 0.1 FIX 1.5 FIX (0, 1.2)
$OMEGA 0.1
$OMEGA 0.1 FIX
$SIGMA 0.04 FIX
"""
STREAMS["warf_ifelse"] = """$PROBLEM Warfarin: IF/THEN/ELSE category, linear 0/1 covariate, additive IIV, THETA SD
$INPUT ID TIME DV AMT EVID MDV DVID CMT WT AGE SEX CRCL
$DATA ../warf.csv IGNORE=@ IGNORE=(DVID.GT.1)
$SUBROUTINE ADVAN2 TRANS2
$PK
IF (SEX.EQ.0) THEN
  TVCL = THETA(1)*THETA(4)
ELSE
  TVCL = THETA(1)
ENDIF
TVV = THETA(2)*(1 + THETA(5)*SEX)
CL = TVCL*EXP(ETA(1))
V = TVV + ETA(2)
KA = THETA(3)
S2 = V
$ERROR
Y = F + THETA(6)*EPS(1)
$THETA (0, 0.13) (0, 8) (0, 1.2) (0, 0.9) (-0.5, 0.1, 1) (0, 0.5)
$OMEGA 0.1 1
$SIGMA 1 FIX
"""
STREAMS["theo_abbr"] = """$PROBLEM Theophylline: $ABBR REPLACE names, A(2)/V, F1 written as 1, additive SD fixed at 0
$ABBR REPLACE THETA(CL)=THETA(1)
$ABBR REPLACE THETA(V)=THETA(2)
$ABBR REPLACE ETA(CL)=ETA(1)
$INPUT ID TIME DV AMT EVID MDV CMT WT AGE SEX
$DATA ../theo.csv IGNORE=@ ACCEPT=(TIME.LT.20)
$SUBROUTINE ADVAN2 TRANS2
$PK
CL = THETA(CL)*EXP(ETA(CL))
V  = THETA(V)
KA = 1.5
F1 = 1
S2 = V
$ERROR
IPRED = A(2)/V
W = SQRT(THETA(3)**2 + THETA(4)**2*IPRED**2)
Y = IPRED + W*EPS(1)
$THETA (0, 2.8) (0, 32) (0 FIX) (0, 0.15)
$OMEGA 0.09
$SIGMA 1 FIX
"""
STREAMS["theo_logtheta"] = """$PROBLEM Theophylline: THETAs on the log scale (MU_1 = THETA(1)), output-only $PK code
$INPUT ID TIME DV AMT EVID MDV CMT WT AGE SEX
$DATA ../theo.csv IGNORE=@
$SUBROUTINE ADVAN2 TRANS2
$PK
IF (NEWIND.LE.1) THEN
  BTIME = TIME
ENDIF
IF (AMT.GT.0) BTIME = TIME
TAD = TIME - BTIME
MU_1 = THETA(1) + 0.75*LOG(WT/70)
MU_2 = THETA(2)
CL = EXP(MU_1 + ETA(1))
V  = EXP(MU_2 + ETA(2))
KA = THETA(3)*EXP(ETA(3))
S2 = V
$ERROR (ONLY OBSERVATIONS)
IPRED = F
W = THETA(4)*IPRED
IF (W.EQ.0) W = 1
Y = IPRED + W*EPS(1)
$THETA 1.03 3.47 (0, 1.5) (0, 0.1)
$OMEGA 0.1 SD
$OMEGA 0.04
$OMEGA 0 FIX
$SIGMA 1 FIX
"""
STREAMS["indo_infusion"] = """$PROBLEM Indometacin as 30-min infusions, 2-cmt (ADVAN3 TRANS4), dose mg, conc ng/mL
$INPUT ID TIME DV AMT RATE EVID MDV CMT
$DATA ../indo_infusion.csv IGNORE=@
$SUBROUTINE ADVAN3 TRANS4
$PK
TVCL = THETA(1)
CL = TVCL*EXP(ETA(1))
V1 = THETA(2)*EXP(ETA(2))
Q  = THETA(3)
V2 = THETA(4)
S1 = V1/1000
$ERROR
IPRED = F
Y = IPRED*(1 + EPS(1)) + EPS(2)
$THETA (0, 8) (0, 10) (0, 4) (0, 20)
$OMEGA 0.1 0.1
$SIGMA 0.04 2500
"""
STREAMS["indo_trans1"] = """$PROBLEM Indometacin, 2-cmt iv by rate constants (ADVAN3 TRANS1)
$INPUT ID TIME DV AMT EVID MDV CMT
$DATA ../indo.csv IGNORE=@
$SUBROUTINE ADVAN3 TRANS1
$PK
CL  = THETA(1)*EXP(ETA(1))
V1  = THETA(2)*EXP(ETA(2))
Q   = THETA(3)
V2  = THETA(4)
K   = CL/V1
K12 = Q/V1
K21 = Q/V2
S1  = V1
$ERROR
Y = F + F*EPS(1)
$THETA (0, 8) (0, 10) (0, 4) (0, 20)
$OMEGA 0.1 0.1
$SIGMA 0.04
"""
STREAMS["indo_trans3"] = """$PROBLEM Indometacin, 2-cmt iv by the steady-state volume (ADVAN3 TRANS3)
$INPUT ID TIME DV AMT EVID MDV CMT
$DATA ../indo.csv IGNORE=@
$SUBROUTINE ADVAN3 TRANS3
$PK
CL  = THETA(1)*EXP(ETA(1))
V   = THETA(2)*EXP(ETA(2))
Q   = THETA(3)
VSS = THETA(4)*EXP(ETA(3))
S1  = V
$ERROR
Y = F + F*EPS(1)
$THETA (0, 8) (0, 10) (0, 4) (0, 30)
$OMEGA 0.1 0.1 0.05
$SIGMA 0.04
"""
STREAMS["indo_trans6"] = """$PROBLEM Indometacin, 2-cmt iv by macro rate constants (ADVAN3 TRANS6)
$INPUT ID TIME DV AMT EVID MDV CMT
$DATA ../indo.csv IGNORE=@
$SUBROUTINE ADVAN3 TRANS6
$PK
ALPHA = THETA(1)*EXP(ETA(1))
BETA  = THETA(2)*EXP(ETA(2))
K21   = THETA(3)
V     = THETA(4)*EXP(ETA(3))
S1    = V
$ERROR
Y = F + F*EPS(1)
$THETA (0, 2.5) (0, 0.2) (0, 0.6) (0, 10)
$OMEGA 0.1 0.1 0.1
$SIGMA 0.04
"""
STREAMS["warf_trans5"] = """$PROBLEM Warfarin 2-cmt oral by A/B, ALPHA and BETA (ADVAN4 TRANS5), S2 a THETA of its own
$INPUT ID TIME DV AMT EVID MDV DVID CMT WT AGE SEX CRCL
$DATA ../warf.csv IGNORE=@ IGNORE=(DVID.EQ.2)
$SUBROUTINE ADVAN4 TRANS5
$PK
AOB   = THETA(1)
ALPHA = THETA(2)*EXP(ETA(1))
BETA  = THETA(3)*EXP(ETA(2))
KA    = THETA(5)
S2    = THETA(4)*(WT/70)*EXP(ETA(3))
$ERROR
Y = F + F*EPS(1)
$THETA (0, 2) (0, 0.1) (0, 0.012) (0, 8) (0, 1.2)
$OMEGA 0.1 0.1 0.05
$SIGMA 0.04
"""
STREAMS["indo_advan11_trans6"] = """$PROBLEM Indometacin, 3-cmt iv by macro rate constants (ADVAN11 TRANS6)
$INPUT ID TIME DV AMT EVID MDV CMT
$DATA ../indo.csv IGNORE=@
$SUBROUTINE ADVAN11 TRANS6
$PK
ALPHA = THETA(1)*EXP(ETA(1))
BETA  = THETA(2)
GAMMA = THETA(3)
K21   = THETA(4)
K31   = THETA(5)
V     = THETA(6)*EXP(ETA(2))
S1    = V
$ERROR
Y = F + F*EPS(1)
$THETA (0, 3) (0, 0.5) (0, 0.05) (0, 1) (0, 0.1) (0, 10)
$OMEGA 0.1 0.1
$SIGMA 0.04
"""
STREAMS["warf_advan12_trans6"] = """$PROBLEM Warfarin 3-cmt oral by macro rate constants (ADVAN12 TRANS6), conc ng/mL
$INPUT ID TIME DV AMT EVID MDV DVID CMT WT AGE SEX CRCL
$DATA ../warf_ngml.csv IGNORE=@ IGNORE=(DVID.EQ.2)
$SUBROUTINE ADVAN12 TRANS6
$PK
ALPHA = THETA(1)*EXP(ETA(1))
BETA  = THETA(2)
GAMMA = THETA(3)
K32   = THETA(4)
K42   = THETA(5)
V     = THETA(6)*EXP(ETA(2))
KA    = THETA(7)
S2    = V/1000
$ERROR
Y = F + F*EPS(1)
$THETA (0, 0.5) (0, 0.05) (0, 0.01) (0, 0.2) (0, 0.02) (0, 8) (0, 1.2)
$OMEGA 0.1 0.1
$SIGMA 0.04
"""
STREAMS["indo_block_fix"] = STREAMS["indo_advan3"].replace(
    "BLOCK(2), fixed OMEGA and SIGMA", "a fixed BLOCK(2) as published").replace("0.05 0.1\n", "0.08 0.1 FIX\n")
STREAMS["theo_logit_f"] = """$PROBLEM Theophylline: bioavailability with logit-normal IIV, THETA on the natural scale
$INPUT ID TIME DV AMT EVID MDV CMT WT AGE SEX
$DATA ../theo.csv IGNORE=@
$SUBROUTINE ADVAN2 TRANS2
$PK
CL = THETA(1)*EXP(ETA(1))
V  = THETA(2)*EXP(ETA(2))
KA = THETA(3)
TVF = THETA(4)
LGT = LOG(TVF/(1-TVF)) + ETA(3)
F1 = EXP(LGT)/(1+EXP(LGT))
S2 = V
$ERROR
Y = F + F*EPS(1)
$THETA (0, 2.8) (0, 32) (0, 1.5) (0, 0.8, 1)
$OMEGA 0.09 0.04 0.5
$SIGMA 0.01
"""
STREAMS["theo_logit_theta"] = STREAMS["theo_logit_f"].replace("THETA on the natural", "THETA on the logit").replace(
    "TVF = THETA(4)\nLGT = LOG(TVF/(1-TVF)) + ETA(3)", "LGT = THETA(4) + ETA(3)").replace("(0, 0.8, 1)", "1.4")
STREAMS["warf_two_thetas"] = """$PROBLEM Warfarin: a THETA per sex, CL on a covariate computed from two columns, capped
$INPUT ID TIME DV AMT EVID MDV DVID CMT WT AGE SEX CRCL=DROP
$DATA ../warf.csv IGNORE=@ IGNORE=(DVID.EQ.2)
$SUBROUTINE ADVAN2 TRANS2
$PK
AGEWT = (140-AGE)*WT/72      ; Cockcroft-Gault without creatinine
IF (AGEWT.GT.120) AGEWT = 120
IF (SEX.EQ.1) THEN
  TVCL = THETA(1)
ELSE
  TVCL = THETA(4)
ENDIF
CL = TVCL*(AGEWT/100)**THETA(5)*EXP(ETA(1))
V  = THETA(2)*(WT/70)*EXP(ETA(2))
KA = THETA(3)
S2 = V
$ERROR
Y = F + F*EPS(1)
$THETA (0, 0.13) (0, 8) (0, 1.2) (0, 0.11) (0.75)
$OMEGA 0.1 0.02
$SIGMA 0.01
"""
STREAMS["warf_age_levels"] = """$PROBLEM Warfarin: age class computed in $PK, a THETA per class
$INPUT ID TIME DV AMT EVID MDV DVID CMT WT AGE SEX CRCL
$DATA ../warf.csv IGNORE=@ IGNORE=(DVID.EQ.2)
$SUBROUTINE ADVAN2 TRANS2
$PK
AGECAT = 1
IF (AGE.GT.30) AGECAT = 2
IF (AGE.GT.45) AGECAT = 3
TVCL = THETA(1)
IF (AGECAT.EQ.2) TVCL = THETA(4)
IF (AGECAT.EQ.3) TVCL = THETA(5)
CL = TVCL*EXP(ETA(1))
V  = THETA(2)*EXP(ETA(2))
KA = THETA(3)
S2 = V
$ERROR
Y = F + F*EPS(1)
$THETA (0, 0.13) (0, 8) (0, 1.2) (0, 0.12) (0, 0.1)
$OMEGA 0.1 0.02
$SIGMA 0.01
"""
STREAMS["theo_mu_logcov"] = """$PROBLEM Theophylline, MU referencing with the covariates on the log scale
$INPUT ID TIME DV AMT EVID MDV CMT WT AGE SEX
$DATA ../theo.csv IGNORE=@
$SUBROUTINE ADVAN2 TRANS2
$PK
MU_1 = LOG(THETA(1)) + THETA(4)*LOG(WT/70)
MU_2 = LOG(THETA(2)) + LOG(WT/70)
MU_3 = LOG(THETA(3))
CL = EXP(MU_1 + ETA(1))
V  = EXP(MU_2 + ETA(2))
KA = EXP(MU_3 + ETA(3))
S2 = V
$ERROR
Y = F*(1 + EPS(1))
$THETA (0, 2.8) (0, 32) (0, 1.5) (0.75)
$OMEGA 0.09 0.04 0.4
$SIGMA 0.01
"""
STREAMS["theo_lower"] = """$problem theophylline in lower case (NM-TRAN 7.2+), a 0/1 flag computed in $pk
$input id time dv amt evid mdv cmt wt age sex
$data ../theo.csv ignore=@
$subroutine advan2 trans2
$pk
female = 0
if (sex.eq.0) female = 1
tvcl = theta(1)*(1 + theta(4)*female)
cl = tvcl*exp(eta(1))
v  = theta(2)*exp(eta(2))
ka = theta(3)*exp(eta(3))
s2 = v
$error
ipred = f
y = ipred + ipred*eps(1) + eps(2)
$theta (0, 2.8) (0, 32) (0, 1.5) (-0.5, 0.1, 2)
$omega 0.09 0.04 0.4
$sigma 0.01 0.04
$estimation method=1 interaction
"""

# --------------------------------------------------------------------------- what each one should be
# parameters: P -> (iiv, typical value: prior centre or ("FIX", v), omega SD: halfnormal scale / 2, ("FIX", sd)
# or None); effects: (P, covariate) -> (type, reference, prior centre or ("FIX", v)); residual: (type,
# {sigma: SD (halfnormal scale / 2) or ("FIX", sd)}).
LN = "lognormal"
EXPECTED = {
    "theo_mu": dict(structural="1cmt_oral", parameters={
        "CL": (LN, 2.8, 0.3), "V": (LN, 32.0, 0.2), "KA": (LN, 1.5, math.sqrt(0.4))},
        effects={("CL", "WT"): ("power", 70, ("FIX", 0.75)), ("V", "WT"): ("power", 70, ("FIX", 1.0))},
        residual=("combined", {"sigma_add": 0.3, "sigma_prop": 0.1})),
    "theo_blocks": dict(structural="1cmt_oral", parameters={
        "CL": (LN, 2.8, 0.3), "V": (LN, 32.0, 0.2), "KA": (LN, 1.5, math.sqrt(0.5))},
        effects={("CL", "WT"): ("power", 70, 0.75)}, blocks=(("CL", "V"),),
        residual=("proportional", {"sigma_prop": 0.2})),
    "theo_s2_ngml": dict(structural="1cmt_oral", parameters={
        "CL": (LN, 2.8, 0.3), "V": (LN, 32.0, 0.2), "KA": (LN, 1.5, math.sqrt(0.4))},
        residual=("combined", {"sigma_prop": 0.1, "sigma_add": 100.0}), dose_scale=1000.0),
    "warf_lag_f": dict(structural="1cmt_oral", parameters={
        "CL": (LN, 0.13, math.sqrt(0.1)), "V": (LN, 8.0, math.sqrt(0.02)), "KA": (LN, 1.2, math.sqrt(0.5)),
        "F": ("none", 0.9, None), "ALAG": ("none", 0.8, None)},
        effects={("CL", "AGE"): ("exponential", 40, 0.01), ("CL", "SEXEQ1"): ("categorical", 0, math.log(1.1)),
                 ("V", "WT"): ("power", 70, ("FIX", 1.0))},
        residual=("combined", {"sigma_prop": 0.1, "sigma_add": 0.2})),
    "warf_sex_power": dict(structural="1cmt_oral", parameters={
        "CL": (LN, 0.13, math.sqrt(0.1)), "V": (LN, 8.0, math.sqrt(0.02)), "KA": ("none", 1.2, None)},
        effects={("CL", "WT"): ("power", 70, ("FIX", 0.0)), ("CL", "SEX"): ("exponential", 0, math.log(0.9)),
                 ("V", "CRCL"): ("linear", 100, 0.002)},
        residual=("exponential", {"sigma_exp": 0.2})),
    "pheno_trans1": dict(structural="1cmt_iv", parameters={
        "CL": (LN, 0.0047, math.sqrt(0.03)), "V": (LN, 1.0, math.sqrt(0.03))},
        effects={("CL", "WT"): ("power", 1, ("FIX", 1.0)), ("V", "WT"): ("power", 1, ("FIX", 1.0)),
                 ("V", "APGRLT5"): ("categorical", 0, math.log(1.1))},
        residual=("proportional", {"sigma_prop": math.sqrt(0.013)})),
    "pheno_s1_scale": dict(structural="1cmt_iv", parameters={
        "CL": (LN, 0.0047, math.sqrt(0.03)), "V": (LN, 1.0, math.sqrt(0.03))},
        effects={("CL", "WGT"): ("power", 1, ("FIX", 1.0)), ("V", "WGT"): ("power", 1, ("FIX", 1.0)),
                 ("V", "APGARLT5"): ("categorical", 0, math.log(1.1))},
        residual=("proportional", {"sigma_prop": math.sqrt(0.013)}), dose_scale=1000.0),
    "indo_advan3": dict(structural="2cmt_iv", parameters={
        "CL": (LN, 8.0, math.sqrt(0.1)), "V": (LN, 10.0, math.sqrt(0.1)), "Q": ("none", 4.0, None),
        "V2": (LN, 20.0, ("FIX", math.sqrt(0.1)))}, blocks=(("CL", "V"),),
        residual=("additive", {"sigma_add": ("FIX", 0.2)})),
    "indo_advan11_log": dict(structural="3cmt_iv", parameters={
        "CL": (LN, 8.0, math.sqrt(0.1)), "V": (LN, 10.0, math.sqrt(0.1)), "Q": ("none", 4.0, None),
        "V2": ("none", 20.0, None), "Q3": ("none", 1.0, None), "V3": ("none", 30.0, None)},
        residual=("exponential", {"sigma_exp": 0.2}), log_dv=True),
    "warf_advan4_s2": dict(structural="2cmt_oral", parameters={
        "CL": (LN, 0.13, math.sqrt(0.1)), "V": (LN, 7.0, math.sqrt(0.02)), "Q": ("none", 0.5, None),
        "V2": ("none", 3.0, None), "KA": (LN, 1.2, math.sqrt(0.5))},
        effects={("CL", "WT"): ("power", 70, ("FIX", 0.75)), ("V", "WT"): ("power", 70, ("FIX", 1.0))},
        residual=("combined", {"sigma_add": 200.0, "sigma_prop": 0.1}), dose_scale=1000.0),
    "warf_shared_allometry": dict(structural="2cmt_oral", parameters={
        "CL": (LN, 0.13, math.sqrt(0.1)), "V": (LN, 7.0, math.sqrt(0.02)), "Q": ("none", 0.5, None),
        "V2": ("none", 3.0, None), "KA": (LN, 1.2, math.sqrt(0.5))},
        effects={("CL", "WT"): ("power", 70, 0.75), ("V", "WT"): ("power", 70, 1.0),
                 ("Q", "WT"): ("power", 70, ("shared", "CL")), ("V2", "WT"): ("power", 70, ("shared", "V"))},
        residual=("proportional", {"sigma_prop": 0.2})),
    "warf_min_max": dict(structural="1cmt_oral", parameters={
        "CL": (LN, 0.13, math.sqrt(0.1)), "V": (LN, 8.0, math.sqrt(0.02)), "KA": ("none", 1.2, None)},
        effects={("CL", "CRCLC"): ("power", 100, 0.5)}, residual=("proportional", {"sigma_prop": 0.2})),
    "warf_additive": dict(structural="1cmt_oral", parameters={
        "CL": (LN, 0.13, math.sqrt(0.1)), "V": (LN, 8.0, math.sqrt(0.02)), "KA": ("none", 1.2, None)},
        effects={("CL", "WT"): ("linear", 70, 0.002 / 0.13)}, residual=("proportional", {"sigma_prop": 0.2})),
    "warf_advan12": dict(structural="3cmt_oral", parameters={
        "CL": (LN, 0.13, math.sqrt(0.1)), "V": (LN, 7.0, ("FIX", math.sqrt(0.1))), "Q": ("none", 0.5, None),
        "V2": ("none", 3.0, None), "Q3": ("none", ("FIX", 0.1), None), "V3": ("none", ("FIX", 1.5), None),
        "KA": ("none", 1.2, None)},
        residual=("proportional", {"sigma_prop": ("FIX", 0.2)})),
    "warf_ifelse": dict(structural="1cmt_oral", parameters={
        "CL": (LN, 0.13, math.sqrt(0.1)), "V": ("normal", 8.0, 1.0), "KA": ("none", 1.2, None)},
        effects={("CL", "SEXEQ0"): ("categorical", 0, math.log(0.9)), ("V", "SEX"): ("linear", 0, 0.1)},
        residual=("additive", {"sigma_add": 0.5})),
    "theo_abbr": dict(structural="1cmt_oral", parameters={
        "CL": (LN, 2.8, 0.3), "V": ("none", 32.0, None), "KA": ("none", ("FIX", 1.5), None),
        "F": ("none", ("FIX", 1.0), None)},
        residual=("proportional", {"sigma_prop": 0.15})),
    "theo_logtheta": dict(structural="1cmt_oral", parameters={
        "CL": (LN, math.exp(1.03), 0.1), "V": (LN, math.exp(3.47), 0.2), "KA": ("none", 1.5, None)},
        effects={("CL", "WT"): ("power", 70, ("FIX", 0.75))}, residual=("proportional", {"sigma_prop": 0.1})),
    "indo_infusion": dict(structural="2cmt_iv", parameters={
        "CL": (LN, 8.0, math.sqrt(0.1)), "V": (LN, 10.0, math.sqrt(0.1)), "Q": ("none", 4.0, None),
        "V2": ("none", 20.0, None)},
        residual=("combined", {"sigma_prop": 0.2, "sigma_add": 50.0}), dose_scale=1000.0),
    "indo_trans1": dict(structural="2cmt_iv", parameters={
        "CL": (LN, 8.0, math.sqrt(0.1)), "V": (LN, 10.0, math.sqrt(0.1)), "Q": ("none", 4.0, None),
        "V2": ("none", 20.0, None)}, residual=("proportional", {"sigma_prop": 0.2})),
    "indo_trans3": dict(structural="2cmt_iv_vss", parameters={
        "CL": (LN, 8.0, math.sqrt(0.1)), "V": (LN, 10.0, math.sqrt(0.1)), "Q": ("none", 4.0, None),
        "VSS": (LN, 30.0, math.sqrt(0.05))}, residual=("proportional", {"sigma_prop": 0.2})),
    "indo_trans6": dict(structural="2cmt_iv_macro", parameters={
        "ALPHA": (LN, 2.5, math.sqrt(0.1)), "BETA": (LN, 0.2, math.sqrt(0.1)), "K21": ("none", 0.6, None),
        "V": (LN, 10.0, math.sqrt(0.1))}, residual=("proportional", {"sigma_prop": 0.2})),
    "warf_trans5": dict(structural="2cmt_oral_aob", parameters={
        "AOB": ("none", 2.0, None), "ALPHA": (LN, 0.1, math.sqrt(0.1)), "BETA": (LN, 0.012, math.sqrt(0.1)),
        "V": (LN, 8.0, math.sqrt(0.05)), "KA": ("none", 1.2, None)},
        effects={("V", "WT"): ("power", 70, ("FIX", 1.0))}, residual=("proportional", {"sigma_prop": 0.2})),
    "indo_advan11_trans6": dict(structural="3cmt_iv_macro", parameters={
        "ALPHA": (LN, 3.0, math.sqrt(0.1)), "BETA": ("none", 0.5, None), "GAMMA": ("none", 0.05, None),
        "K21": ("none", 1.0, None), "K31": ("none", 0.1, None), "V": (LN, 10.0, math.sqrt(0.1))},
        residual=("proportional", {"sigma_prop": 0.2})),
    "warf_advan12_trans6": dict(structural="3cmt_oral_macro", parameters={
        "ALPHA": (LN, 0.5, math.sqrt(0.1)), "BETA": ("none", 0.05, None), "GAMMA": ("none", 0.01, None),
        "K21": ("none", 0.2, None), "K31": ("none", 0.02, None), "V": (LN, 8.0, math.sqrt(0.1)),
        "KA": ("none", 1.2, None)}, dose_scale=1000.0, residual=("proportional", {"sigma_prop": 0.2})),
    "indo_block_fix": dict(structural="2cmt_iv", parameters={
        "CL": (LN, 8.0, ("FIX", math.sqrt(0.1))), "V": (LN, 10.0, ("FIX", math.sqrt(0.1))), "Q": ("none", 4.0, None),
        "V2": (LN, 20.0, ("FIX", math.sqrt(0.1)))}, fixed_blocks=((("CL", "V"), pytest.approx(0.8)),),
        residual=("additive", {"sigma_add": ("FIX", 0.2)})),
    "theo_logit_f": dict(structural="1cmt_oral", parameters={
        "CL": (LN, 2.8, 0.3), "V": (LN, 32.0, 0.2), "KA": ("none", 1.5, None), "F": ("logit", 0.8, math.sqrt(0.5))},
        residual=("proportional", {"sigma_prop": 0.1})),
    "theo_logit_theta": dict(structural="1cmt_oral", parameters={
        "CL": (LN, 2.8, 0.3), "V": (LN, 32.0, 0.2), "KA": ("none", 1.5, None),
        "F": ("logit", 1 / (1 + math.exp(-1.4)), math.sqrt(0.5))},
        residual=("proportional", {"sigma_prop": 0.1})),
    # the typical CL is the ELSE branch's THETA(4); the IF branch's THETA(1) is the ratio 0.13 / 0.11
    "warf_two_thetas": dict(structural="1cmt_oral", parameters={
        "CL": (LN, 0.11, math.sqrt(0.1)), "V": (LN, 8.0, math.sqrt(0.02)), "KA": ("none", 1.2, None)},
        effects={("CL", "AGEWT"): ("power", 100, 0.75), ("CL", "SEXEQ1"): ("categorical", 0, math.log(0.13 / 0.11)),
                 ("V", "WT"): ("power", 70, ("FIX", 1.0))},
        residual=("proportional", {"sigma_prop": 0.1})),
    "warf_age_levels": dict(structural="1cmt_oral", parameters={
        "CL": (LN, 0.13, math.sqrt(0.1)), "V": (LN, 8.0, math.sqrt(0.02)), "KA": ("none", 1.2, None)},
        effects={("CL", "AGECATEQ3"): ("categorical", 0, math.log(0.1 / 0.13)),
                 ("CL", "AGECATEQ2"): ("categorical", 0, math.log(0.12 / 0.13))},
        residual=("proportional", {"sigma_prop": 0.1})),
    "theo_mu_logcov": dict(structural="1cmt_oral", parameters={
        "CL": (LN, 2.8, 0.3), "V": (LN, 32.0, 0.2), "KA": (LN, 1.5, math.sqrt(0.4))},
        effects={("CL", "WT"): ("power", 70, 0.75), ("V", "WT"): ("power", 70, ("FIX", 1.0))},
        residual=("proportional", {"sigma_prop": 0.1})),
    "theo_lower": dict(structural="1cmt_oral", parameters={
        "CL": (LN, 2.8, 0.3), "V": (LN, 32.0, 0.2), "KA": (LN, 1.5, math.sqrt(0.4))},
        effects={("CL", "FEMALE"): ("linear", 0, 0.1)},
        residual=("combined", {"sigma_prop": 0.1, "sigma_add": 0.2})),
}


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    """The data files in a folder and the control streams in its ``models/`` (``$DATA ../file.csv``)."""
    root = tmp_path_factory.mktemp("battery")
    (root / "models").mkdir()
    for name, (make, prefix) in DATA.items():
        (root / name).write_text(prefix + make().to_csv(index=False))
    for name, text in STREAMS.items():
        (root / "models" / f"{name}.mod").write_text(text)
    return root / "models"


@pytest.fixture(scope="module")
def imported(streams):
    return {name: import_nonmem(streams / f"{name}.mod") for name in STREAMS}


def _centre(prior):
    return prior.args["median"] if "median" in prior.args else prior.args["mu"]


def _value(prior, fixed):
    return ("FIX", pytest.approx(fixed)) if fixed is not None else pytest.approx(_centre(prior))


def _omega(par):
    if par.iiv == "none":
        return None
    if par.omega_fixed is not None:
        return ("FIX", pytest.approx(par.omega_fixed))
    assert par.omega.dist == "halfnormal"
    return pytest.approx(par.omega.args["sigma"] / 2)   # half-normal, scale 2 x sqrt(OMEGA)


def _sigma(prior):
    if prior.dist == "fixed":
        return ("FIX", pytest.approx(prior.args["value"]))
    assert prior.dist == "halfnormal"
    return pytest.approx(prior.args["sigma"] / 2)


def _flat(d, prefix="") -> dict:
    if isinstance(d, dict):
        return {k: v for key, value in d.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    if isinstance(d, (list, tuple)):
        return {k: v for i, value in enumerate(d) for k, v in _flat(value, f"{prefix}{i}.").items()}
    return {prefix: float(d) if isinstance(d, int) and not isinstance(d, bool) else d}


def _summary(res) -> dict:
    spec = res.spec
    out = dict(structural=spec.structural.name,
               parameters={p: (par.iiv, _value(par.prior, par.fixed), _omega(par))
                           for p, par in spec.parameters.items()},
               effects={(c.parameter, c.covariate): (c.kind, c.reference, ("shared", c.shared_with) if c.shared_with
                                                      else _value(c.prior, c.fixed))
                        for c in spec.covariates},
               residual=(spec.residual.kind, {k: _sigma(v) for k, v in spec.residual.priors.items()}))
    if spec.omega_blocks:
        out["blocks"] = spec.omega_blocks
    if spec.fixed_omega_blocks:
        out["fixed_blocks"] = tuple((b.parameters, b.correlation[0][1]) for b in spec.fixed_omega_blocks)
    if res.dose_scale != 1:
        out["dose_scale"] = res.dose_scale
    if res.log_dv:
        out["log_dv"] = True
    return out


@pytest.mark.parametrize("name", list(STREAMS))
def test_stream_translates_as_written(imported, name):
    res = imported[name]
    assert _summary(res) == {"effects": {}, **EXPECTED[name]}
    assert not res.untranslated
    toml, spec = _flat(ModelSpec.from_toml_text(res.toml).to_dict()), _flat(res.spec.to_dict())
    assert toml.keys() == spec.keys()   # the TOML round-trips (to the 8 digits it writes)
    assert {k: v for k, v in toml.items() if isinstance(v, float)} == pytest.approx(
        {k: v for k, v in spec.items() if isinstance(v, float)}, rel=1e-7)
    assert {k: v for k, v in toml.items() if not isinstance(v, float)} == {
        k: v for k, v in spec.items() if not isinstance(v, float)}
    # $EST / $COV / $TABLE: left out quietly, each with its line; no record is left out otherwise
    records = [i for i in res.notes if i.text.startswith("$")]
    assert all(i.text.split()[0].upper() in ("$EST", "$ESTIMATION", "$COV", "$COVARIANCE", "$TABLE") for i in records)
    assert all("not part of the model" in i.reason and i.line for i in records)


def test_notes_and_data_mapping(imported):
    notes = {i.text: i.reason for i in imported["theo_mu"].notes}
    assert "guard" in notes["IF (W.EQ.0) W = 1"] and "output only" in notes["IWRES = IRES/W"]
    assert "guard" in {i.text: i.reason for i in imported["indo_advan11_log"].notes}["IF (F.GT.0) IPRED = LOG(F)"]
    theo = imported["theo_mu"]
    assert theo.columns["AGE"] is None and theo.columns["SEX"] is None and "AGE" not in theo.data
    blocks = imported["theo_blocks"]   # CONC=DV, DOSE=AMT: the reserved names are the data items
    assert blocks.columns["CONC"] == "DV" and blocks.columns["DOSE"] == "AMT"
    theo_data = _theo()
    assert len(blocks.data) == len(theo_data) and blocks.data["AMT"].sum() == pytest.approx(theo_data["AMT"].sum())
    # IGNORE=(DVID.EQ.2), ACCEPT=(DVID.LT.2), IGNORE=(DVID.GT.1): the warfarin PD records are left out alike
    pk = _warf()
    pk = pk[pk["DVID"] < 2]
    for name in ("warf_lag_f", "warf_sex_power", "warf_ifelse"):
        assert len(imported[name].data) == len(pk) and set(imported[name].data["DVIDNM"]) == {0, 1}
    assert imported["warf_lag_f"].derived == {"SEXEQ1": "SEX.EQ.1"}
    assert "TRANS1 rate constants -> the $PK's own CL, V (K = CL/V ...)" in imported["pheno_trans1"].mapped
    # MIN/MAX: a computed covariate (capped as NONMEM caps it), a guard quoted as written, at its line
    capped = imported["warf_min_max"]
    np.testing.assert_allclose(capped.data["CRCLC"], np.clip(capped.data["CRCL"], 60, 150))
    assert {(i.line, i.text) for i in capped.notes if "guard" in i.reason} == {(13, "IPRED = MAX(F, 1E-8)")}
    assert imported["theo_abbr"].data["TIME"].max() < 20   # ACCEPT=(TIME.LT.20)
    # S2 = V/1000: the doses, not the parameters, carry the factor; the TOML says so
    s2 = imported["theo_s2_ngml"]
    assert s2.data["AMT"].max() == pytest.approx(1000 * theo_data["AMT"].max())
    assert "AMT (and RATE) x 1000" in s2.toml and any("S2 = V/1000" in m for m in s2.mapped)
    infusion = imported["indo_infusion"].data   # RATE scaled with AMT: the same infusion durations
    assert (infusion["AMT"] / infusion["RATE"]).dropna().unique() == pytest.approx([0.5])
    assert infusion["RATE"].max() == pytest.approx(1000 * _indo_infusion()["RATE"].max())
    # log-transformed DV: exponentiated on reading
    assert imported["indo_advan11_log"].data["DV"].iloc[1] == pytest.approx(_indo()["DV"].iloc[1])
    # covariates computed in $PK from data items become columns, computed per record as NONMEM does
    two = imported["warf_two_thetas"]
    assert list(two.derived) == ["AGEWT", "SEXEQ1"] and two.derived["SEXEQ1"] == "SEX.EQ.1"
    assert "(WT*(140 - AGE)/72, True)" in two.derived["AGEWT"] and "120" in two.derived["AGEWT"]   # the cap
    np.testing.assert_allclose(two.data["AGEWT"], np.minimum((140 - pk["AGE"]) * pk["WT"] / 72, 120), rtol=1e-12)
    assert (two.data["AGEWT"] == 120).mean() > 0.1 and (two.data["AGEWT"] < 120).mean() > 0.1   # the cap acts
    lower = imported["theo_lower"]   # lower-case code read as NM-TRAN reads it; the $DATA path kept as written
    assert lower.data["FEMALE"].tolist() == (theo_data["SEX"] == 0).astype(int).tolist()
    assert any("FEMALE = Piecewise((1, Eq(SEX, 0)), (0, True))" in m for m in lower.mapped)


# ----------------------------------------------------------------- the control streams' own equations
def _eta(ident: int) -> np.ndarray:
    """ETA(1..3) of subject ``ident``: fixed, different per subject, within +-0.3."""
    return 0.3 * np.sin(0.7 * float(ident) * np.arange(1, 4) + 0.4)


def _theo_mu(r, e):
    return dict(CL=math.exp(math.log(2.8 * (r.WT / 70) ** 0.75) + e[0]), V=math.exp(math.log(32 * r.WT / 70) + e[1]),
                KA=math.exp(math.log(1.5) + e[2]), S=None)


def _theo_s2(r, e):
    v = 32 * math.exp(e[1])
    return dict(CL=2.8 * math.exp(e[0]), V=v, KA=1.5 * math.exp(e[2]), S=v / 1000)


def _warf_lag_f(r, e):
    tvcl = 0.13 * math.exp(0.01 * (r.AGE - 40)) * (1.1 if r.SEX == 1 else 1.0)
    return dict(CL=tvcl * math.exp(e[0]), V=8 * r.WT / 70 * math.exp(e[1]), KA=1.2 * math.exp(e[2]), ALAG1=0.8,
                F1=0.9, S=None)


def _warf_sex_power(r, e):
    return dict(CL=0.13 * (r.WT / 70) ** 0 * 0.9 ** r.SEX * math.exp(e[0]),
                V=8 * (1 + 0.002 * (r.CRCL - 100)) * math.exp(e[1]), KA=1.2, S=None)


def _pheno_trans1(r, e):
    cl, v = 0.0047 * r.WT * math.exp(e[0]), 1.0 * r.WT * (1.1 if r.APGR < 5 else 1.0) * math.exp(e[1])
    return dict(K=cl / v, V=v, S=None)


def _pheno_s1(r, e):
    v = 1.0 * r.WT * (1.1 if r.APGR < 5 else 1.0) * math.exp(e[1])
    return dict(CL=0.0047 * r.WT * math.exp(e[0]), V=v, S=v / 1000)


def _indo_advan3(r, e):
    return dict(CL=8 * math.exp(e[0]), V1=10 * math.exp(e[1]), Q=4.0, V2=20 * math.exp(e[2]), S=None)


def _indo_advan11(r, e):
    return dict(CL=8 * math.exp(e[0]), V1=10 * math.exp(e[1]), Q2=4.0, V2=20.0, Q3=1.0, V3=30.0, S=None)


def _warf_advan4(r, e):
    v2 = 7 * (r.WT / 70) * math.exp(e[1])
    return dict(CL=0.13 * (r.WT / 70) ** 0.75 * math.exp(e[0]), V2=v2, Q=0.5, V3=3.0, KA=1.2 * math.exp(e[2]),
                S=v2 / 1000)


def _theo_logtheta(r, e):
    return dict(CL=math.exp(1.03 + 0.75 * math.log(r.WT / 70) + e[0]), V=math.exp(3.47 + e[1]), KA=1.5, S=None)


def _indo_infusion_pk(r, e):
    v1 = 10 * math.exp(e[1])
    return dict(CL=8 * math.exp(e[0]), V1=v1, Q=4.0, V2=20.0, S=v1 / 1000)


def _indo_trans1(r, e):
    cl, v1, q, v2 = 8 * math.exp(e[0]), 10 * math.exp(e[1]), 4.0, 20.0
    return dict(K=cl / v1, K12=q / v1, K21=q / v2, V1=v1, S=None)


def _theo_logit(logit_f):
    def pk(r, e):
        return dict(CL=2.8 * math.exp(e[0]), V=32 * math.exp(e[1]), KA=1.5, F1=1 / (1 + math.exp(-logit_f - e[2])),
                    S=None)
    return pk


def _warf_two_thetas(r, e):
    agewt = min((140 - r.AGE) * r.WT / 72, 120.0)
    tvcl = 0.13 if r.SEX == 1 else 0.11
    return dict(CL=tvcl * (agewt / 100) ** 0.75 * math.exp(e[0]), V=8 * r.WT / 70 * math.exp(e[1]), KA=1.2, S=None)


def _warf_age_levels(r, e):
    tvcl = 0.1 if r.AGE > 45 else 0.12 if r.AGE > 30 else 0.13
    return dict(CL=tvcl * math.exp(e[0]), V=8 * math.exp(e[1]), KA=1.2, S=None)


def _theo_lower(r, e):
    return dict(CL=2.8 * (1 + 0.1 * (r.SEX == 0)) * math.exp(e[0]), V=32 * math.exp(e[1]), KA=1.5 * math.exp(e[2]),
                S=None)


def _warf_shared_allometry(r, e):
    w = r.WT / 70
    return dict(CL=0.13 * w**0.75 * math.exp(e[0]), V2=7 * w * math.exp(e[1]), Q=0.5 * w**0.75, V3=3 * w,
                KA=1.2 * math.exp(e[2]), S=None)


def _warf_min_max(r, e):
    crcl = min(max(r.CRCL, 60.0), 150.0)
    return dict(CL=0.13 * (crcl / 100) ** 0.5 * math.exp(e[0]), V=8 * math.exp(e[1]), KA=1.2, S=None)


def _warf_additive(r, e):
    return dict(CL=(0.13 + 0.002 * (r.WT - 70)) * math.exp(e[0]), V=8 * math.exp(e[1]), KA=1.2, S=None)


def _warf_advan12(r, e):
    return dict(CL=0.13 * math.exp(e[0]), V2=7 * math.exp(e[1]), Q3=0.5, V3=3.0, Q4=0.1, V4=1.5, KA=1.2, S=None)


def _micro_2cmt(trans, k):
    """NONMEM's TRANS5/TRANS6 rate constants (its guide, also Pharmpy's ``advan.py``): K, K12, K21."""
    alpha, beta = k["ALPHA"], k["BETA"]
    k21 = (k["AOB"] * beta + alpha) / (k["AOB"] + 1) if trans == 5 else k["K21"]
    k10 = alpha * beta / k21
    return k10, alpha + beta - k21 - k10, k21


def _micro_3cmt(k):
    """ADVAN11/12 TRANS6: K, K12, K21, K13, K31 from ALPHA, BETA, GAMMA, K21, K31."""
    a, b, g, k21, k31 = (k[n] for n in ("ALPHA", "BETA", "GAMMA", "K21", "K31"))
    k10 = a * b * g / (k21 * k31)
    k13 = (a * b + a * g + b * g + k31 * k31 - k31 * (a + b + g) - k10 * k21) / (k21 - k31)
    return k10, a + b + g - k10 - k13 - k21 - k31, k21, k13, k31


def _indo_trans3(r, e):
    v = 10 * math.exp(e[1])
    return dict(K=8 * math.exp(e[0]) / v, K12=4.0 / v, K21=4.0 / (30 * math.exp(e[2]) - v), S=v)


def _indo_trans6(r, e):
    k, k12, k21 = _micro_2cmt(6, dict(ALPHA=2.5 * math.exp(e[0]), BETA=0.2 * math.exp(e[1]), K21=0.6))
    return dict(K=k, K12=k12, K21=k21, S=10 * math.exp(e[2]))


def _warf_trans5(r, e):
    k, k23, k32 = _micro_2cmt(5, dict(AOB=2.0, ALPHA=0.1 * math.exp(e[0]), BETA=0.012 * math.exp(e[1])))
    return dict(K=k, K23=k23, K32=k32, KA=1.2, S=8 * r.WT / 70 * math.exp(e[2]))


def _indo_advan11_trans6(r, e):
    k, k12, k21, k13, k31 = _micro_3cmt(dict(ALPHA=3 * math.exp(e[0]), BETA=0.5, GAMMA=0.05, K21=1.0, K31=0.1))
    return dict(K=k, K12=k12, K21=k21, K13=k13, K31=k31, S=10 * math.exp(e[1]))


def _warf_advan12_trans6(r, e):
    k, k23, k32, k24, k42 = _micro_3cmt(dict(ALPHA=0.5 * math.exp(e[0]), BETA=0.05, GAMMA=0.01, K21=0.2, K31=0.02))
    return dict(K=k, K23=k23, K32=k32, K24=k24, K42=k42, KA=1.2, S=8 * math.exp(e[1]) / 1000)


#: stream -> (ADVAN, data as NONMEM reads it, $PK in numpy, {bayesnlme parameter: ETA number}, residual SD of F)
NUMERIC = {
    "theo_mu": (2, lambda: _theo(), _theo_mu, {"CL": 1, "V": 2, "KA": 3}, lambda f: np.sqrt(0.3**2 + 0.1**2 * f**2)),
    "theo_s2_ngml": (2, lambda: _theo(1000.0), _theo_s2, {"CL": 1, "V": 2, "KA": 3},
                     lambda f: np.sqrt(0.01 * f**2 + 10000)),
    "warf_lag_f": (2, lambda: _warf().query("DVID != 2"), _warf_lag_f, {"CL": 1, "V": 2, "KA": 3},
                   lambda f: np.sqrt(0.01 * f**2 + 0.04)),
    "warf_sex_power": (2, lambda: _warf().query("DVID < 2"), _warf_sex_power, {"CL": 1, "V": 2},
                       lambda f: np.full_like(f, 0.2)),
    "pheno_trans1": (1, lambda: _pheno(), _pheno_trans1, {"CL": 1, "V": 2}, lambda f: math.sqrt(0.013) * f),
    "pheno_s1_scale": (1, lambda: _pheno(1000.0), _pheno_s1, {"CL": 1, "V": 2}, lambda f: math.sqrt(0.013) * f),
    "indo_advan3": (3, lambda: _indo(), _indo_advan3, {"CL": 1, "V": 2, "V2": 3}, lambda f: np.full_like(f, 0.2)),
    "indo_advan11_log": (11, lambda: _indo(), _indo_advan11, {"CL": 1, "V": 2}, lambda f: np.full_like(f, 0.2)),
    "warf_advan4_s2": (4, lambda: _warf(1000.0).query("DVID != 2"), _warf_advan4, {"CL": 1, "V": 2, "KA": 3},
                       lambda f: np.sqrt(200.0**2 + 0.1**2 * f**2)),
    "warf_shared_allometry": (4, lambda: _warf().query("DVID != 2"), _warf_shared_allometry,
                              {"CL": 1, "V": 2, "KA": 3}, lambda f: 0.2 * f),
    "warf_min_max": (2, lambda: _warf().query("DVID != 2"), _warf_min_max, {"CL": 1, "V": 2}, lambda f: 0.2 * f),
    "warf_additive": (2, lambda: _warf().query("DVID != 2"), _warf_additive, {"CL": 1, "V": 2}, lambda f: 0.2 * f),
    "warf_advan12": (12, lambda: _warf().query("DVID != 2"), _warf_advan12, {"CL": 1, "V": 2},
                     lambda f: 0.2 * f),
    "theo_logtheta": (2, lambda: _theo(), _theo_logtheta, {"CL": 1, "V": 2}, lambda f: 0.1 * f),
    "indo_infusion": (3, _indo_infusion, _indo_infusion_pk, {"CL": 1, "V": 2},
                      lambda f: np.sqrt(0.04 * f**2 + 2500)),
    "indo_trans1": (3, _indo, _indo_trans1, {"CL": 1, "V": 2}, lambda f: 0.2 * f),
    "indo_block_fix": (3, lambda: _indo(), _indo_advan3, {"CL": 1, "V": 2, "V2": 3}, lambda f: np.full_like(f, 0.2)),
    "theo_logit_f": (2, _theo, _theo_logit(math.log(0.8 / 0.2)), {"CL": 1, "V": 2, "F": 3}, lambda f: 0.1 * f),
    "theo_logit_theta": (2, _theo, _theo_logit(1.4), {"CL": 1, "V": 2, "F": 3}, lambda f: 0.1 * f),
    "warf_two_thetas": (2, lambda: _warf().query("DVID != 2"), _warf_two_thetas, {"CL": 1, "V": 2},
                        lambda f: 0.1 * f),
    "warf_age_levels": (2, lambda: _warf().query("DVID != 2"), _warf_age_levels, {"CL": 1, "V": 2},
                        lambda f: 0.1 * f),
    "theo_mu_logcov": (2, _theo, _theo_mu, {"CL": 1, "V": 2, "KA": 3}, lambda f: 0.1 * f),
    "indo_trans3": (3, _indo, _indo_trans3, {"CL": 1, "V": 2, "VSS": 3}, lambda f: 0.2 * f),
    "indo_trans6": (3, _indo, _indo_trans6, {"ALPHA": 1, "BETA": 2, "V": 3}, lambda f: 0.2 * f),
    "warf_trans5": (4, lambda: _warf().query("DVID != 2"), _warf_trans5, {"ALPHA": 1, "BETA": 2, "V": 3},
                    lambda f: 0.2 * f),
    "indo_advan11_trans6": (11, _indo, _indo_advan11_trans6, {"ALPHA": 1, "V": 2}, lambda f: 0.2 * f),
    "warf_advan12_trans6": (12, lambda: _warf(1000.0).query("DVID != 2"), _warf_advan12_trans6, {"ALPHA": 1, "V": 2},
                            lambda f: 0.2 * f),
    "theo_lower": (2, _theo, _theo_lower, {"CL": 1, "V": 2, "KA": 3}, lambda f: np.sqrt(0.01 * f**2 + 0.04)),
}
#: ADVAN -> (depot, central volume, [(intercompartmental clearance, peripheral volume)]), NONMEM's numbering
ADVAN_LAYOUT = {1: (False, "V", []), 2: (True, "V", []), 3: (False, "V1", [("Q", "V2")]),
                4: (True, "V2", [("Q", "V3")]), 11: (False, "V1", [("Q2", "V2"), ("Q3", "V3")]),
                12: (True, "V2", [("Q3", "V3"), ("Q4", "V4")])}


def _rate_matrix(advan: int, p: dict):
    """``dA/dt = M @ A`` of the ADVAN (compartments in NONMEM's order) and the index of the central one."""
    depot, vc, peripheral = ADVAN_LAYOUT[advan]
    c = int(depot)
    m = np.zeros((1 + c + len(peripheral),) * 2)
    m[c, c] = -p["K"] if "K" in p else -p["CL"] / p[vc]
    if depot:
        m[0, 0], m[c, 0] = -p["KA"], p["KA"]
    for j, (q, v) in enumerate(peripheral, start=c + 1):
        # TRANS1 gives the rate constants (K12, K21 for ADVAN3) themselves
        out, back = (p[f"K{c + 1}{j + 1}"], p[f"K{j + 1}{c + 1}"]) if "K" in p else (p[q] / p[vc], p[q] / p[v])
        m[c, c] -= out
        m[j, c], m[j, j], m[c, j] = out, -back, back
    return m, c


def _expm_column(m, dt, col, duration=0.0) -> np.ndarray:
    """``expm(m * t)[:, col]`` for each ``t`` in ``dt``, shape (len(dt), len(m)); with a ``duration``, the
    same input spread evenly over it (a zero-order infusion of rate 1/duration).  By the eigen-decomposition
    (the compartment matrices here have distinct eigenvalues; scipy's expm, one call per time, is slow)."""
    lam, vec = np.linalg.eig(m)
    w = np.linalg.solve(vec, np.eye(len(m))[:, col])
    modes = np.exp(np.outer(dt, lam))
    if duration:   # each mode: the integral over the infusion so far, then its decay since the end
        during = np.minimum(dt, duration)
        modes = np.expm1(np.outer(during, lam)) / lam / duration * np.exp(np.outer(dt - during, lam))
    return np.real((vec[None] * modes[:, None, :]) @ w)


def _nonmem_f(advan, frame, pk) -> np.ndarray:
    """F = A(central)/S at each observation record: the doses superposed, each by the matrix exponential."""
    depot, vc, _ = ADVAN_LAYOUT[advan]
    frame, out = frame.reset_index(drop=True), []
    for ident, sub in frame.groupby("ID", sort=False):
        p = pk(sub.iloc[0], _eta(ident))
        m, c = _rate_matrix(advan, p)
        obs = sub[(sub["EVID"] == 0) & (sub["MDV"] == 0)]
        amount = np.zeros((len(obs), len(m)))
        for j, d in sub[sub["EVID"] == 1].iterrows():
            oral = depot and d["CMT"] == 1
            dt = obs["TIME"].to_numpy() - d["TIME"] - (p.get("ALAG1", 0.0) if oral else 0.0)
            after = (dt > 0) | ((dt == 0) & (obs.index.to_numpy() > j))   # a dose record before the sample
            dose = (p.get("F1", 1.0) if oral else 1.0) * d["AMT"]
            duration = d["AMT"] / d["RATE"] if d.get("RATE", 0) > 0 else 0.0
            amount[after] += dose * _expm_column(m, dt[after], int(d["CMT"]) - 1, duration)
        out.append(amount[:, c] / (p["S"] or p[vc]))
    return np.concatenate(out)


def _spec_outputs(res, eta_of: dict):
    """The imported spec's IPRED and residual SD on its data: typical values and effects at their prior centres
    (the $THETA initial values), residual SDs at the SIGMA/THETA initial values, ``ETA(k)`` of the control stream
    on the parameter ``eta_of`` says."""
    built = build_model(res.spec, res.data, check_residual=False)
    spec, ids = built.spec, np.asarray(built.data.ids)
    point = {k: np.array(v, dtype=float) for k, v in built.initial_point.items()}
    for p, par in spec.parameters.items():
        if par.prior is not None:
            point[p] = _centre(par.prior)
    for c in spec.covariates:
        for n in c.estimated_names():
            point[n] = _centre(c.prior)
    for k, prior in spec.residual.priors.items():
        if prior.dist == "halfnormal":
            point[k] = prior.args["sigma"] / 2
    sds = {}
    for j, p in enumerate(spec.eta_parameters):
        par = spec.parameters[p]
        sds[p] = par.omega_fixed if par.omega_fixed is not None else 0.25
        if par.omega_fixed is None:
            point[f"omega_{p}"] = sds[p]
        point["eta_z"][:, j] = [_eta(i)[eta_of[p] - 1] / sds[p] for i in ids] if p in eta_of else 0.0
    for block in spec.fixed_omega_blocks:   # ETA = L z: the z that give the control stream's ETAs
        cols = [spec.eta_parameters.index(p) for p in block.parameters]
        sd = [sds[p] for p in block.parameters]
        point["eta_z"][:, cols] = np.linalg.solve(block.cholesky(sd), (point["eta_z"][:, cols] * sd).T).T
    for block in spec.omega_blocks:   # packed Cholesky factor of a diagonal OMEGA: ETA = z * SD
        k = len(block)
        packed = np.zeros(k * (k + 1) // 2)
        packed[[i * (i + 1) // 2 + i for i in range(k)]] = [sds[p] for p in block]
        point[f"chol_{'_'.join(block)}"] = packed
    rvs = list(built.model.free_RVs)
    fn = pytensor.function(rvs, [built.ipred, built.residual_sd], mode="FAST_COMPILE", on_unused_input="ignore")
    return fn(*[point[rv.name] for rv in rvs])


@pytest.mark.parametrize("name", list(NUMERIC))
def test_imported_predictions_equal_the_control_stream(imported, name):
    advan, frame, pk, eta_of, sd = NUMERIC[name]
    expected = _nonmem_f(advan, frame(), pk)
    ipred, res_sd = _spec_outputs(imported[name], eta_of)
    assert ipred.shape == expected.shape
    np.testing.assert_allclose(ipred, expected, rtol=1e-6, atol=1e-9 * expected.max())
    np.testing.assert_allclose(res_sd, sd(expected), rtol=1e-6, atol=1e-12)


# ------------------------------------------------------------------------------------------- refusals
def test_what_has_no_bayesnlme_equivalent_is_named_by_line(streams):
    k_direct = streams / "theo_trans1_k.mod"
    k_direct.write_text("""$PROBLEM ADVAN2 TRANS1, K itself estimated
$INPUT ID TIME DV AMT EVID MDV CMT WT AGE SEX
$DATA ../theo.csv IGNORE=@
$SUBROUTINE ADVAN2 TRANS1
$PK
K  = THETA(1)*EXP(ETA(1))
V  = THETA(2)*EXP(ETA(2))
KA = THETA(3)
S2 = V
$ERROR
Y = F + EPS(1)
$THETA (0, 0.08) (0, 32) (0, 1.5)
$OMEGA 0.09 0.04
$SIGMA 0.25
""")
    with pytest.raises(NonmemImportError, match=r"line 6 `K = THETA\(1\)\*EXP\(ETA\(1\)\)`: TRANS1 CL = K\*V: CL has "
                                                r"more than one ETA"):
        import_nonmem(k_direct)
    block_fix = streams / "indo_block_fix_npd.mod"   # a fixed block must be a covariance matrix
    block_fix.write_text(STREAMS["indo_block_fix"].replace("0.08 0.1 FIX", "0.2 0.1 FIX"))
    with pytest.raises(NonmemImportError, match=r"line 15 `\$OMEGA BLOCK\(2\) 0.1 0.2 0.1 FIX`: ETA\(1\), ETA\(2\): "
                                                r"\$OMEGA BLOCK: correlation of \['CL', 'V'\] is not positive "
                                                r"definite"):
        import_nonmem(block_fix)
    overlapping = streams / "warf_overlapping.mod"   # first match wins: not a product of one factor per IF
    overlapping.write_text(STREAMS["warf_age_levels"].replace("AGECAT.EQ.2", "AGE.GT.30").replace("AGECAT.EQ.3",
                                                                                                   "AGE.GT.45"))
    with pytest.raises(NonmemImportError, match=r"line 11 `IF \(AGE.GT.45\) TVCL = THETA\(5\)`: IF conditions "
                                                r"that can hold together"):
        import_nonmem(overlapping)
    trans6 = streams / "theo_trans6.mod"   # no macro-constant parameterisation of a 1-compartment ADVAN
    trans6.write_text(STREAMS["theo_mu"].replace("TRANS2", "TRANS6"))
    with pytest.raises(NonmemImportError, match=r"line \d+ `\$SUBROUTINES? ADVAN2 TRANS6`: ADVAN2 has no TRANS6; its "
                                                r"parameterisations are TRANS1, TRANS2"):
        import_nonmem(trans6)
    other_amount = streams / "theo_depot.mod"
    other_amount.write_text(STREAMS["theo_abbr"].replace("IPRED = A(2)/V", "IPRED = A(1)/V"))
    with pytest.raises(NonmemImportError, match=r"line 15 `IPRED = A\(1\)/V`: Y uses A_DEPOT"):
        import_nonmem(other_amount)
    two_typical = streams / "warf_two_typical.mod"   # one THETA in two typical values: not a shared effect
    two_typical.write_text(STREAMS["warf_shared_allometry"].replace("V3 = THETA(4)*ASV", "V3 = THETA(2)*ASV"))
    with pytest.raises(NonmemImportError, match=r"line 11 `V3 = THETA\(2\)\*ASV`: THETA\(2\) is used by V and V2, "
                                                r"not as one effect of one covariate"):
        import_nonmem(two_typical)
    other_covariate = streams / "warf_shared_age.mod"   # one THETA as the exponent of WT and of AGE
    other_covariate.write_text(STREAMS["warf_shared_allometry"].replace("Q  = THETA(3)*ASCL",
                                                                        "Q  = THETA(3)*(AGE/40)**THETA(6)"))
    with pytest.raises(NonmemImportError, match=r"THETA\(6\) is used by CL and Q, not as one effect"):
        import_nonmem(other_covariate)


def test_cli_says_the_doses_carry_the_scale(streams, tmp_path, capsys):
    from bayesnlme.cli import main

    out, data = tmp_path / "s2.toml", tmp_path / "s2.csv"
    assert main(["import-nonmem", str(streams / "warf_advan4_s2.mod"), "--out", str(out), "--data-out", str(data)]) == 0
    assert "doses: AMT (and RATE) x 1000" in capsys.readouterr().out
    assert pd.read_csv(data)["AMT"].max() == pytest.approx(1000 * _warf()["AMT"].max())
    # without --data-out the converted doses are written beside the spec: the spec is wrong without them
    out2 = tmp_path / "s2b.toml"
    assert main(["import-nonmem", str(streams / "warf_advan4_s2.mod"), "--out", str(out2)]) == 0
    assert f"the data written to {tmp_path / 's2b_data.csv'}" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "s2b_data.csv")["AMT"].max() == pytest.approx(1000 * _warf()["AMT"].max())
