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
from bayesnlme.structural.pk import DoseEvents, one_compartment, three_compartment, two_compartment

__all__ = ["StructuralModel", "LIBRARY", "DoseEvents", "get_structural", "dose_events", "evaluate"]


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
