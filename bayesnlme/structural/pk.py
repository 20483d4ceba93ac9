"""Closed-form linear compartmental PK models, vectorised with pytensor.

Every model is written as the central-compartment *unit impulse response*, a
sum of exponentials ``sum_i c_i exp(-lambda_i t)`` (1 term for one
compartment, 2 for two), and doses are added by superposition.  A dose can be

* an IV bolus into the central compartment: ``A * sum_i c_i exp(-lambda_i t)``;
* a zero-order infusion of rate ``R`` for ``T = A / R``:
  ``R * sum_i c_i / lambda_i (1 - exp(-lambda_i min(t, T))) exp(-lambda_i max(t - T, 0))``;
* a bolus into the depot with first-order absorption ``KA`` (oral models), with
  bioavailability ``F`` and lag time ``ALAG``:
  ``F A KA sum_i c_i E(lambda_i, KA, t - ALAG)``, where
  ``E(a, b, t) = (exp(-a t) - exp(-b t)) / (b - a)``.

``E`` is evaluated as ``exp(-min(a, b) t) * t * g(|b - a| t)`` with
``g(x) = (1 - exp(-x)) / x`` (series near 0), which is symmetric, exact in the
flip-flop limit ``KA -> k`` and never forms a difference of large numbers.
Each dose term is bounded, so hundreds of doses add up without loss.

Concentrations are the central amount divided by ``V``.  Times are in the
data's time unit (h for the bundled data); rates are per that unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytensor.tensor as pt



@dataclass(frozen=True)
class DoseEvents:
    """Doses as seen from each observation, arrays of shape (n_obs, n_dose_max).

    Attributes
    ----------
    dt : array or tensor
        Observation time minus dose time.
    amt : numpy.ndarray
        Dose amount (0 in padding).
    rate : numpy.ndarray
        Infusion rate, amount per time unit (0 = bolus).
    depot : numpy.ndarray of bool
        True for doses into the absorption (depot) compartment.
    applies : numpy.ndarray of bool
        True where the dose precedes the observation in event order.
    time : numpy.ndarray, shape (n_obs,)
        Observation times.
    """

    dt: object
    amt: np.ndarray
    rate: np.ndarray
    depot: np.ndarray
    applies: np.ndarray
    time: np.ndarray


_SERIES_BELOW = 1e-2


def exp_difference(a, b, t):
    """``(exp(-a t) - exp(-b t)) / (b - a)`` for ``a, b > 0``, ``t >= 0``, stable for ``a ~ b``.

    Where ``|b - a| t >= 0.01`` the difference is formed directly: both
    exponentials are at most 1, so nothing overflows, and cancellation costs
    at most ~1e-14 relative.  Closer to the flip-flop point it equals
    ``exp(-(a + b) t / 2) * t * sinh(y) / y`` with ``y = (b - a) t / 2``, whose
    series ``1 + y^2/6 + y^4/120`` is exact to double precision for
    ``|y| < 0.005``.  Both forms are symmetric in ``a`` and ``b``, so values and
    gradients are right at exactly ``KA == k``.
    """
    d = b - a
    x = d * t
    small = pt.abs(x) < _SERIES_BELOW
    y2 = 0.25 * x * x
    series = pt.exp(-0.5 * (a + b) * t) * t * (1.0 + y2 / 6.0 + y2 * y2 / 120.0)
    direct = (pt.exp(-a * t) - pt.exp(-b * t)) / pt.switch(small, 1.0, d)
    return pt.switch(small, series, direct)


def _given(mask, dt):
    """Elapsed time where ``mask`` holds (0 elsewhere) and the mask as weights.

    With data-constant ``dt`` (no estimated lag) both are numpy constants, so
    the graph has no switch over the (n_obs, n_dose) grid.
    """
    if isinstance(dt, np.ndarray) and isinstance(mask, np.ndarray):
        return np.where(mask, dt, 0.0), mask.astype(float)
    dt = pt.as_tensor_variable(dt)
    return pt.switch(mask, dt, 0.0), pt.cast(mask, "float64")


def _superpose(lams, coefs, doses: DoseEvents, ka=None, F=1.0, alag=None):
    """Central amount at each observation from all doses; shape (n_obs,).

    ``alag`` None means no lag time; otherwise depot doses are delayed by it.
    """
    is_inf = (doses.rate > 0) & ~doses.depot & doses.applies
    is_bolus = (doses.rate <= 0) & ~doses.depot & doses.applies
    is_depot = doses.depot & doses.applies
    if (doses.depot & (doses.rate > 0) & doses.applies).any():
        raise ValueError("zero-order infusion into the depot is not supported")
    total = 0.0
    if is_bolus.any():
        t, w = _given(is_bolus, doses.dt)
        resp = sum(c * pt.exp(-lam * t) for lam, c in zip(lams, coefs))
        total = total + pt.sum(w * doses.amt * resp, axis=1)
    if is_inf.any():
        rate = np.where(is_inf, doses.rate, 1.0)
        dur = np.where(is_inf, doses.amt / rate, 0.0)
        t, w = _given(is_inf, doses.dt)
        t_in = pt.minimum(t, dur)
        t_after = pt.maximum(t - dur, 0.0)
        resp = sum(c * (-pt.expm1(-lam * t_in)) / lam * pt.exp(-lam * t_after)
                   for lam, c in zip(lams, coefs))
        total = total + pt.sum(w * rate * resp, axis=1)
    if is_depot.any():
        if alag is None:
            t, w = _given(is_depot, doses.dt)
        else:
            t_lag = pt.as_tensor_variable(doses.dt) - alag
            t, w = _given(pt.and_(is_depot, pt.ge(t_lag, 0.0)), t_lag)
        resp = sum(c * exp_difference(lam, ka, t) for lam, c in zip(lams, coefs))
        total = total + pt.sum(w * doses.amt * resp, axis=1) * F * ka[:, 0]
    return total


def _col(x):
    return pt.as_tensor_variable(x)[:, None]


def one_compartment(params, doses: DoseEvents, oral: bool):
    """Concentration for a 1-compartment model (CL, V; KA, F, ALAG if oral)."""
    CL, V = _col(params["CL"]), _col(params["V"])
    k = CL / V
    if oral:
        amount = _superpose([k], [1.0], doses, ka=_col(params["KA"]), F=params.get("F", 1.0),
                            alag=_col(params["ALAG"]) if "ALAG" in params else None)
    else:
        amount = _superpose([k], [1.0], doses)
    return amount / params["V"]


def two_compartment_rates(CL, V, Q, V2):
    """Macro rate constants (alpha, beta) and central coefficients of the 2-cmt model.

    Returns ``alpha > beta > 0`` and ``c_alpha = (alpha - k21)/(alpha - beta)``,
    ``c_beta = (k21 - beta)/(alpha - beta)``, so that the central amount after a
    unit bolus is ``c_alpha exp(-alpha t) + c_beta exp(-beta t)``.
    ``beta`` is computed as ``k10 k21 / alpha`` to avoid cancellation.
    """
    k10, k12, k21 = CL / V, Q / V, Q / V2
    s = k10 + k12 + k21
    alpha = 0.5 * (s + pt.sqrt(s * s - 4.0 * k10 * k21))
    beta = k10 * k21 / alpha
    return alpha, beta, (alpha - k21) / (alpha - beta), (k21 - beta) / (alpha - beta)


def two_compartment(params, doses: DoseEvents, oral: bool):
    """Concentration for a 2-compartment model (CL, V, Q, V2; KA, F, ALAG if oral)."""
    alpha, beta, ca, cb = two_compartment_rates(*(_col(params[p]) for p in ("CL", "V", "Q", "V2")))
    if oral:
        amount = _superpose([alpha, beta], [ca, cb], doses, ka=_col(params["KA"]), F=params.get("F", 1.0),
                            alag=_col(params["ALAG"]) if "ALAG" in params else None)
    else:
        amount = _superpose([alpha, beta], [ca, cb], doses)
    return amount / params["V"]
