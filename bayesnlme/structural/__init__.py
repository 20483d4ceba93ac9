"""Structural models: what the model predicts for a subject, given its parameters and doses.

A :class:`StructuralModel` names its parameters and maps data compartments
(``CMT``) to its own; its ``function(params, doses)`` returns the prediction
at each observation as a pytensor expression, vectorised over observations
(``params`` values have shape ``(n_obs,)``; see :class:`~bayesnlme.structural.pk.DoseEvents`).

The built-in closed forms are listed in :data:`LIBRARY`.  A user model is a
Python function written with ``pytensor.tensor`` operations, wrapped with
:meth:`StructuralModel.custom`.  Models given by differential equations
(Michaelis-Menten, turnover, effect compartment, or a user's right-hand side)
are :meth:`StructuralModel.ode` models (``per_subject=True``; see
:mod:`bayesnlme.structural.ode`).
"""

from __future__ import annotations

from functools import partial

from bayesnlme.structural.base import StructuralModel, dose_events, evaluate
from bayesnlme.structural.ode_library import library_models as ode_library_models
from bayesnlme.structural.pd import library_models as pd_library_models
from bayesnlme.structural.pk import (
    REPARAMETERISED,
    DoseEvents,
    one_compartment,
    reparameterised_model,
    three_compartment,
    two_compartment,
)
from bayesnlme.structural.steady_state import static_form, static_shapes

__all__ = ["StructuralModel", "LIBRARY", "DoseEvents", "get_structural", "dose_events", "evaluate",
           "static_shapes", "static_form"]


_ORAL_OPTIONAL = {"F": 1.0, "ALAG": 0.0}

LIBRARY: dict[str, StructuralModel] = {
    "1cmt_iv": StructuralModel(
        "1cmt_iv", ("CL", "V"), partial(one_compartment, oral=False), central_cmt=1,
        description="one compartment, IV bolus and/or zero-order infusion (RATE or DUR), "
                    "linear elimination; CMT 1 = central"),
    "1cmt_oral": StructuralModel(
        "1cmt_oral", ("CL", "V", "KA"), partial(one_compartment, oral=True),
        optional=_ORAL_OPTIONAL, depot_cmt=1, central_cmt=2,
        description="one compartment, first-order absorption with bioavailability F and lag "
                    "ALAG, linear elimination; CMT 1 = depot, CMT 2 = central"),
    "2cmt_iv": StructuralModel(
        "2cmt_iv", ("CL", "V", "Q", "V2"), partial(two_compartment, oral=False), central_cmt=1,
        description="two compartments (central V, peripheral V2, intercompartmental clearance "
                    "Q), IV bolus and/or infusion; CMT 1 = central"),
    "2cmt_oral": StructuralModel(
        "2cmt_oral", ("CL", "V", "Q", "V2", "KA"), partial(two_compartment, oral=True),
        optional=_ORAL_OPTIONAL, depot_cmt=1, central_cmt=2,
        description="two compartments with first-order absorption (F, ALAG); CMT 1 = depot, "
                    "CMT 2 = central"),
}
# infusion models are the IV models: whether a dose is a bolus or an infusion is data (RATE/DUR)
LIBRARY["1cmt_infusion"] = LIBRARY["1cmt_iv"]
LIBRARY["2cmt_infusion"] = LIBRARY["2cmt_iv"]
# 3 compartments: NONMEM ADVAN11/12 (TRANS4) with the 2-compartment names: V = V1, Q = Q2
LIBRARY["3cmt_iv"] = StructuralModel(
    "3cmt_iv", ("CL", "V", "Q", "V2", "Q3", "V3"), partial(three_compartment, oral=False), central_cmt=1,
    description="three compartments (central V, peripherals V2 and V3 with intercompartmental "
                "clearances Q and Q3), IV bolus and/or infusion; CMT 1 = central")
LIBRARY["3cmt_infusion"] = LIBRARY["3cmt_iv"]
LIBRARY["3cmt_oral"] = StructuralModel(
    "3cmt_oral", ("CL", "V", "Q", "V2", "Q3", "V3", "KA"), partial(three_compartment, oral=True),
    optional=_ORAL_OPTIONAL, depot_cmt=1, central_cmt=2,
    description="three compartments with first-order absorption (F, ALAG); CMT 1 = depot, "
                "CMT 2 = central")

# NONMEM's other parameterisations of the same linear models (TRANS3: VSS; TRANS5: AOB, ALPHA, BETA; TRANS6:
# macro rate constants with the peripheral return rates), e.g. "2cmt_iv_vss", "3cmt_oral_macro"
_REPARAMETERISED_TEXT = {
    ("2cmt", "vss"): "CL, V, Q and the steady-state volume VSS = V + V2 (NONMEM TRANS3)",
    ("2cmt", "aob"): "the ratio AOB = A/B of the bolus-response coefficients, the rate constants "
                     "ALPHA > BETA and the central volume V (NONMEM TRANS5)",
    ("2cmt", "macro"): "the rate constants ALPHA > BETA, the peripheral return rate K21 and the central "
                       "volume V (NONMEM TRANS6)",
    ("3cmt", "macro"): "the rate constants ALPHA > BETA > GAMMA, the peripheral return rates K21 and K31 "
                       "and the central volume V (NONMEM TRANS6)"}


def _reparameterised_library() -> dict:
    out = {}
    for cmt, kind in REPARAMETERISED:
        for route in ("iv", "oral"):
            params, fn = reparameterised_model(cmt, kind)
            oral, name = route == "oral", f"{cmt}_{route}_{kind}"
            layout = "CMT 1 = depot, CMT 2 = central" if oral else "CMT 1 = central"
            out[name] = StructuralModel(
                name, params + ("KA",) * oral, partial(fn, oral=oral), optional=dict(_ORAL_OPTIONAL) if oral else {},
                depot_cmt=1 if oral else None, central_cmt=2 if oral else 1,
                description=f"{'two' if cmt == '2cmt' else 'three'} compartments, "
                            f"{'first-order absorption (F, ALAG)' if oral else 'IV bolus and/or infusion'}, "
                            f"parameterised by {_REPARAMETERISED_TEXT[(cmt, kind)]}; {layout}")
    return out


LIBRARY.update(_reparameterised_library())

# ODE models (Michaelis-Menten, turnover, effect compartment): compiled on first use

LIBRARY.update(ode_library_models(StructuralModel))

# PD / exposure-response models (Emax, sigmoid Emax, linear, log-linear; by exposure column, dose or PK)

LIBRARY.update(pd_library_models(LIBRARY))


def get_structural(name: str) -> StructuralModel:
    """The library structural model called ``name``.

    Raises
    ------
    KeyError
        With the list of known names.
    """
    try:
        return LIBRARY[name]
    except KeyError:
        raise KeyError(f"unknown structural model {name!r}; known: {', '.join(sorted(LIBRARY))}") from None
