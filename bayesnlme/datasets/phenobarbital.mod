$PROBLEM Phenobarbital in neonates (Grasela & Donn 1985): CL and V proportional to weight, Apgar < 5 on V
; The classic NONMEM "pheno" model, written for bayesnlme's bundled phenobarbital_neonates.csv
; (same records as NONMEM's and Pharmpy's pheno.dta). Units: TIME h, AMT mg, DV mg/L, WT kg.
$DATA phenobarbital_neonates.csv IGNORE=@
$INPUT ID TIME DV AMT EVID MDV CMT WT APGR
$SUBROUTINE ADVAN1 TRANS2

$PK
TVCL = THETA(1)*WT                  ; CL in L/h, THETA(1) in L/h/kg
TVV = THETA(2)*WT                   ; V in L, THETA(2) in L/kg
IF (APGR.LT.5) TVV = TVV*(1 + THETA(3))
CL = TVCL*EXP(ETA(1))
V = TVV*EXP(ETA(2))
S1 = V

$ERROR
Y = F + F*EPS(1)

$THETA (0, 0.00469307)   ; POP_CL  L/h/kg
$THETA (0, 1.00916)      ; POP_V  L/kg
$THETA (-0.99, 0.1)      ; APGR_V  fractional change of V with Apgar < 5
$OMEGA 0.0309626         ; IIV_CL  variance
$OMEGA 0.031128          ; IIV_V  variance
$SIGMA 0.0130865         ; RUV_PROP  variance of the proportional error

$ESTIMATION METHOD=1 INTERACTION MAXEVAL=9999
$COVARIANCE UNCONDITIONAL
