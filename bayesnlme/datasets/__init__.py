"""Public pharmacokinetic data sets shipped with bayesnlme, in NONMEM event format.

Each loader returns a :class:`pandas.DataFrame` with the columns of the file
(ID, TIME, DV, AMT, EVID, MDV, CMT and covariates).  Pass it to
:func:`bayesnlme.data.read_nonmem` or to :func:`bayesnlme.inference.fit.fit_model`.
:func:`dataset_path` gives the CSV file itself, e.g. for the command line.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

_FILES = {
    "theophylline": "theophylline.csv",
    "indometacin": "indometacin.csv",
    "phenobarbital": "phenobarbital_neonates.csv",
    "warfarin": "warfarin_pkpd.csv",
    "posteriordb_mm": "posteriordb_one_comp_mm_elim_abs.csv",
}

__all__ = ["dataset_path", "nonmem_path", "load_theophylline", "load_indometacin",
           "load_phenobarbital", "load_warfarin", "load_posteriordb_mm", "posteriordb_mm_reference",
           "DATASETS"]

DATASETS = tuple(_FILES)


def dataset_path(name: str) -> Path:
    """Path of a bundled data set's CSV file.

    Parameters
    ----------
    name : {"theophylline", "indometacin", "phenobarbital", "warfarin"}
    """
    if name not in _FILES:
        raise KeyError(f"unknown data set {name!r}; available: {', '.join(_FILES)}")
    return Path(str(resources.files(__name__).joinpath(_FILES[name])))


#: NONMEM control streams for bundled data sets (each with the .ext file of its NONMEM run beside it)
_NONMEM = {"phenobarbital": "phenobarbital.mod"}


def nonmem_path(name: str) -> Path:
    """Path of a bundled NONMEM control stream for a bundled data set.

    ``"phenobarbital"``: the classic NONMEM ``pheno`` model (ADVAN1 TRANS2, CL and V proportional to
    WT, V times ``1 + THETA(3)`` for Apgar < 5, exponential IIV on CL and V, proportional error) for
    :func:`load_phenobarbital`.  Beside it, ``phenobarbital.ext`` holds NONMEM 7 FOCE-I final
    estimates and standard errors for the same records, as distributed with Pharmpy's ``pheno``
    example: CL 0.00470 L/h/kg, V 0.984 L/kg, THETA(3) 0.159, OMEGA 0.0294 (CL) and 0.0279 (V)
    (variances), SIGMA 0.0132 (variance of the proportional error).  Read it with
    :func:`bayesnlme.importers.import_nonmem`.
    """
    if name not in _NONMEM:
        raise KeyError(f"no NONMEM control stream for {name!r}; available: {', '.join(_NONMEM)}")
    return Path(str(resources.files(__name__).joinpath(_NONMEM[name])))


def _load(name: str) -> pd.DataFrame:
    return pd.read_csv(dataset_path(name))


def load_theophylline() -> pd.DataFrame:
    """Theophylline, single oral dose, 12 subjects (144 rows).

    Origin: R ``datasets::Theoph`` (Boeckmann, Sheiner & Beal, NONMEM Users
    Guide Part V; Pinheiro & Bates 2000, sec. 8.2).  Identical observations to
    ``nlmixr2data::theo_sd``.

    Units and columns: TIME in h after the dose; AMT in mg (dose in mg/kg times
    WT), given into CMT 1 (depot); DV serum concentration in mg/L observed in
    CMT 2 (11 per subject, 0-24.65 h; the time-0 samples are kept and several
    are non-zero pre-dose residuals); WT body weight in kg; DOSE_MGKG dose in
    mg/kg.  Published population estimates: CL about 2.8 L/h, V about 32 L,
    KA about 1.5 /h.
    """
    return _load("theophylline")


def load_indometacin() -> pd.DataFrame:
    """Indometacin, 25 mg IV bolus, 6 subjects (72 rows).

    Origin: R ``datasets::Indometh`` (Kwan et al. 1976; Pinheiro & Bates 2000,
    sec. 6.2).  TIME in h; AMT 25 mg at TIME 0 into CMT 1; DV plasma
    concentration in mcg/mL (= mg/L), observed in CMT 1, 11 samples per
    subject from 0.25 to 8 h.  No covariates.  A 2-compartment model is
    usually fitted to these data.
    """
    return _load("indometacin")


def load_phenobarbital() -> pd.DataFrame:
    """Phenobarbital in neonates, repeated IV doses, 59 subjects (744 rows).

    Origin: ``nlmixr2data::pheno_sd`` (same values as R ``nlme::Phenobarb``
    and NONMEM's ``pheno`` example), Grasela & Donn (1985).  TIME in h; AMT
    read as mg (IV bolus, CMT 1); DV concentration read as mg/L (CMT 1, 1-6
    per subject); WT body weight in kg (0.6-3.6); APGR 5-minute Apgar score
    (1-10).  Published NONMEM estimates: CL about 0.0047 L/h/kg, V about
    0.98 L/kg.
    """
    return _load("phenobarbital")


def load_warfarin() -> pd.DataFrame:
    """Warfarin PK and PD (prothrombin complex activity), 32 subjects (515 rows).

    Origin: ``nlmixr2data::warfarin`` (O'Reilly et al. 1963/1968, prepared by
    Funaki, Holford & Fujita 2018).  Single oral dose; TIME in h; AMT in mg
    (CMT 1, depot).  DVID 1 = warfarin plasma concentration in mg/L (CMT 2),
    DVID 2 = PCA in % of normal (CMT 3).  Covariates WT (kg), AGE (years),
    SEX (1 = male, 0 = female).
    """
    return _load("warfarin")


def load_posteriordb_mm() -> pd.DataFrame:
    """posteriordb ``one_comp_mm_elim_abs``: one subject, oral dose, Michaelis-Menten elimination.

    Origin: github stan-dev/posteriordb, posterior
    ``one_comp_mm_elim_abs-one_comp_mm_elim_abs`` (synthetic data of the Stan
    "pkpd" benchmark; ``data.json`` written as NONMEM records).  TIME in days;
    a 30 mg dose at TIME 0 into CMT 1 (depot); DV concentration in mg/L in
    CMT 2 (20 samples, 0.5-10 days).  The Stan model fixes V = 2 L.
    """
    return _load("posteriordb_mm")


def posteriordb_mm_reference() -> pd.DataFrame:
    """posteriordb's reference posterior draws for :func:`load_posteriordb_mm`.

    Columns ``chain`` (1-10), ``draw`` (1-1000), ``k_a`` (1/day), ``K_m``
    (mg/L), ``V_m`` (mg/day) and ``sigma`` (log-scale residual SD); 10,000
    draws of Stan NUTS, thinned (posteriordb keeps reference draws nearly
    independent).  In bayesnlme names: KA, KM, VM, sigma_exp.
    """
    return pd.read_csv(resources.files(__name__).joinpath("posteriordb_one_comp_mm_elim_abs_reference.csv"))
