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

_SERIES_CUTOFF = 1e-5


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


def _g(x):
    """(1 - exp(-x)) / x for x >= 0, with its series near 0 (gradient-safe)."""
    small = x < _SERIES_CUTOFF
    x_safe = pt.switch(small, 1.0, x)
    return pt.switch(small, 1.0 - x / 2.0 + x * x / 6.0, -pt.expm1(-x_safe) / x_safe)


def exp_difference(a, b, t):
    """``(exp(-a t) - exp(-b t)) / (b - a)``, stable for ``a ~ b``; ``t >= 0``."""
    d = b - a
    # min(a, b) written as a + (d - |d|)/2 rather than pt.minimum: at a == b the gradient
    # then splits 1/2, 1/2 between a and b (pt.minimum gives it all to one argument, which
    # makes the gradient wrong at exactly KA == k); exact (== a) whenever a <= b
    lo = a + 0.5 * (d - pt.abs(d))
    return pt.exp(-lo * t) * t * _g(pt.abs(d) * t)


def _superpose(lams, coefs, doses: DoseEvents, ka=None, F=1.0, alag=0.0):
    """Central amount at each observation from all doses; shape (n_obs,)."""
    is_inf = (doses.rate > 0) & ~doses.depot & doses.applies
    is_bolus = (doses.rate <= 0) & ~doses.depot & doses.applies
    is_depot = doses.depot & doses.applies
    if (doses.depot & (doses.rate > 0) & doses.applies).any():
        raise ValueError("zero-order infusion into the depot is not supported")
    total = 0.0
    dt = pt.as_tensor_variable(doses.dt)
    if is_bolus.any():
        t = pt.switch(is_bolus, dt, 0.0)
        resp = sum(c * pt.exp(-lam * t) for lam, c in zip(lams, coefs))
        total = total + pt.sum(pt.switch(is_bolus, doses.amt * resp, 0.0), axis=1)
    if is_inf.any():
        rate = np.where(is_inf, doses.rate, 1.0)
        dur = np.where(is_inf, doses.amt / rate, 0.0)
        t = pt.switch(is_inf, dt, 0.0)
        t_in = pt.minimum(t, dur)
        t_after = pt.maximum(t - dur, 0.0)
        resp = sum(c * (-pt.expm1(-lam * t_in)) / lam * pt.exp(-lam * t_after)
                   for lam, c in zip(lams, coefs))
        total = total + pt.sum(pt.switch(is_inf, rate * resp, 0.0), axis=1)
    if is_depot.any():
        t_lag = dt - alag
        given = pt.and_(is_depot, pt.ge(t_lag, 0.0))
        t = pt.switch(given, t_lag, 0.0)
        resp = sum(c * exp_difference(lam, ka, t) for lam, c in zip(lams, coefs))
        total = total + pt.sum(pt.switch(given, doses.amt * F * ka * resp, 0.0), axis=1)
    return total


def _col(x):
    return pt.as_tensor_variable(x)[:, None]


def one_compartment(params, doses: DoseEvents, oral: bool):
    """Concentration for a 1-compartment model (CL, V; KA, F, ALAG if oral)."""
    CL, V = _col(params["CL"]), _col(params["V"])
    k = CL / V
    if oral:
        amount = _superpose([k], [1.0], doses, ka=_col(params["KA"]),
                            F=_col(params.get("F", 1.0)), alag=_col(params.get("ALAG", 0.0)))
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
        amount = _superpose([alpha, beta], [ca, cb], doses, ka=_col(params["KA"]),
                            F=_col(params.get("F", 1.0)), alag=_col(params.get("ALAG", 0.0)))
    else:
        amount = _superpose([alpha, beta], [ca, cb], doses)
    return amount / params["V"]
