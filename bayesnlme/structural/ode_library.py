"""Library ODE models: Michaelis--Menten elimination, indirect response I--IV, effect compartment.

All are :meth:`StructuralModel.ode` models.  Units as in the closed forms: doses
(mg), time (h), volumes (L), so CP is mg/L; VM is an elimination rate
(mg/h) and KM, IC50, EC50 are concentrations (mg/L).  Compartments:

* ``1cmt_mm_oral``: CMT 1 depot, CMT 2 central; ``1cmt_mm_iv``: CMT 1 central.
  Elimination ``VM * CP / (KM + CP)`` (amount per time).
* ``indirect_response_1..4``: the 1-compartment oral PK model (CL, V, KA, F,
  ALAG) drives a turnover response R (CMT 3), ``dR/dt = KIN * (production
  effect) - KOUT * (loss effect) * R`` with ``KIN = E0 * KOUT`` so that R
  starts at its baseline ``E0`` (Dayneka, Garg & Jusko 1993):

  ==  ===============================  ================================
  I   inhibition of production          KIN (1 - IMAX CP / (IC50 + CP))
  II  inhibition of loss                KOUT (1 - IMAX CP / (IC50 + CP)) R
  III stimulation of production         KIN (1 + EMAX CP / (EC50 + CP))
  IV  stimulation of loss               KOUT (1 + EMAX CP / (EC50 + CP)) R
  ==  ===============================  ================================

  ``IMAX`` is optional (default 1, complete inhibition).  Outputs ``CP`` and
  ``RESPONSE``.
* ``effect_compartment``: the same PK model and an effect-site concentration
  ``dCE/dt = KE0 (CP - CE)`` (CMT 3); outputs ``CP``, ``CE`` and ``RESPONSE =
  E0 + EMAX CE / (EC50 + CE)``.
"""

from __future__ import annotations

import pytensor.tensor as pt

_ORAL_OPTIONAL = {"F": 1.0, "ALAG": 0.0}


def _mm_oral_rhs(y, t, p):
    cp = y[:, 1] / p["V"]
    return [-p["KA"] * y[:, 0], p["KA"] * y[:, 0] - p["VM"] * cp / (p["KM"] + cp)]


def _mm_iv_rhs(y, t, p):
    cp = y[:, 0] / p["V"]
    return [-p["VM"] * cp / (p["KM"] + cp)]


def _pk_oral(y, p):
    """Depot and central derivatives of the linear 1-compartment oral model, and CP."""
    cp = y[:, 1] / p["V"]
    return -p["KA"] * y[:, 0], p["KA"] * y[:, 0] - p["CL"] * cp, cp


def _inhibition(cp, p):
    return p.get("IMAX", 1.0) * cp / (p["IC50"] + cp)


def _stimulation(cp, p):
    return p["EMAX"] * cp / (p["EC50"] + cp)


def _turnover_rhs(kind):
    def rhs(y, t, p):
        d_depot, d_central, cp = _pk_oral(y, p)
        kin, kout, r = p["E0"] * p["KOUT"], p["KOUT"], y[:, 2]
        if kind == 1:
            dr = kin * (1 - _inhibition(cp, p)) - kout * r
        elif kind == 2:
            dr = kin - kout * (1 - _inhibition(cp, p)) * r
        elif kind == 3:
            dr = kin * (1 + _stimulation(cp, p)) - kout * r
        else:
            dr = kin - kout * (1 + _stimulation(cp, p)) * r
        return [d_depot, d_central, dr]
    rhs.__name__ = f"indirect_response_{kind}"
    return rhs


def _baseline(p):
    return [pt.zeros_like(p["E0"]), pt.zeros_like(p["E0"]), p["E0"]]


def _effect_rhs(y, t, p):
    d_depot, d_central, cp = _pk_oral(y, p)
    return [d_depot, d_central, p["KE0"] * (cp - y[:, 2])]


def _cp(index):
    return lambda y, p: y[:, index] / p["V"]


def library_models(StructuralModel) -> dict:
    """The library ODE models by name (compiled on first use)."""
    models = {
        "1cmt_mm_oral": StructuralModel.ode(
            _mm_oral_rhs, ("VM", "KM", "V", "KA"), 2, outputs={"CP": _cp(1)}, name="1cmt_mm_oral",
            optional=_ORAL_OPTIONAL, depot_cmt=1, central_cmt=2,
            description="one compartment, first-order absorption (F, ALAG), Michaelis-Menten "
                        "elimination VM*CP/(KM+CP); CMT 1 = depot, CMT 2 = central (ODE)"),
        "1cmt_mm_iv": StructuralModel.ode(
            _mm_iv_rhs, ("VM", "KM", "V"), 1, outputs={"CP": _cp(0)}, name="1cmt_mm_iv",
            central_cmt=1,
            description="one compartment, IV bolus and/or infusion, Michaelis-Menten elimination "
                        "VM*CP/(KM+CP); CMT 1 = central (ODE)"),
        "effect_compartment": StructuralModel.ode(
            _effect_rhs, ("CL", "V", "KA", "KE0", "E0", "EMAX", "EC50"), 3,
            outputs={"CP": _cp(1), "CE": lambda y, p: y[:, 2],
                     "RESPONSE": lambda y, p: p["E0"] + p["EMAX"] * y[:, 2] / (p["EC50"] + y[:, 2])},
            name="effect_compartment", optional=_ORAL_OPTIONAL, depot_cmt=1, central_cmt=2,
            description="1-compartment oral PK (F, ALAG) with an effect compartment dCE/dt = "
                        "KE0 (CP - CE) and an Emax effect on CE; CMT 1 depot, 2 central, 3 effect (ODE)"),
    }
    for kind, (drug, extra) in {1: (("IC50",), {"IMAX": 1.0}), 2: (("IC50",), {"IMAX": 1.0}),
                                3: (("EMAX", "EC50"), {}), 4: (("EMAX", "EC50"), {})}.items():
        name = f"indirect_response_{kind}"
        models[name] = StructuralModel.ode(
            _turnover_rhs(kind), ("CL", "V", "KA", "E0", "KOUT") + drug, 3,
            outputs={"CP": _cp(1), "RESPONSE": lambda y, p: y[:, 2]}, name=name,
            optional={**_ORAL_OPTIONAL, **extra}, initial=_baseline, depot_cmt=1, central_cmt=2,
            description=f"indirect response (turnover) model {'I II III IV'.split()[kind - 1]} driven "
                        f"by 1-compartment oral PK (F, ALAG); response R in CMT 3 starts at E0 (ODE)")
    return models
