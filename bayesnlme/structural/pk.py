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

from bayesnlme.structural import steady_state
from bayesnlme.structural.steady_state import exp_difference, safe_inverse


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
    ss : numpy.ndarray of int or None
        Steady-state flag of each dose (0 none, 1 reset then steady state, 2
        steady state added); None means no steady-state doses.  Which earlier
        doses an ``SS=1`` dose wipes out is already in ``applies``.
    ii : numpy.ndarray or None
        Interdose interval of steady-state doses (time; used where ``ss > 0``).
    """

    dt: object
    amt: np.ndarray
    rate: np.ndarray
    depot: np.ndarray
    applies: np.ndarray
    time: np.ndarray
    ss: np.ndarray | None = None
    ii: np.ndarray | None = None

    @property
    def steady(self) -> np.ndarray:
        """True where a dose is a steady-state dose (shape of ``amt``)."""
        return np.zeros(np.shape(self.amt), bool) if self.ss is None else np.asarray(self.ss) > 0


class SubjectParams(dict):
    """Parameters at the observations (the dict, shape (n_obs,) each) that also carry the per-subject
    values they were gathered from: ``by_subject`` (shape (n_subjects,)) and ``index`` (subject of each
    observation).

    The builder passes this where no parameter changes within a subject.  The closed-form models
    then derive rate constants, coefficients and reciprocals once per subject and gather them
    (:func:`_derive`), so the loop over records has no division; any other function reads it as the
    plain dict of per-observation values.
    """

    def __init__(self, by_obs: dict, by_subject: dict, index: np.ndarray):
        super().__init__(by_obs)
        self.by_subject = by_subject
        self.index = index


def _derive(params, fn):
    """``fn(p)`` -> sequence of tensors from parameters ``p``, as (n_obs, 1) columns.

    Evaluated once per subject and gathered where ``params`` is a :class:`SubjectParams`, else per
    observation.  A scalar (an absent optional parameter's default) stays a scalar.
    """
    by_subject = getattr(params, "by_subject", None)
    values = fn(params if by_subject is None else by_subject)
    # a tensor index: PyTensor checks a NumPy one for booleans element by element (75 ms at 100,000 records)
    index = None if by_subject is None else pt.as_tensor_variable(params.index)
    out = []
    for v in values:
        v = pt.as_tensor_variable(v)
        if v.ndim == 0:
            out.append(v)
        else:
            out.append((v if by_subject is None else v[index])[:, None])
    return out


def _given(mask, dt):
    """Elapsed time where ``mask`` holds (0 elsewhere) and the mask as weights.

    With data-constant ``dt`` (no estimated lag) both are numpy constants, so
    the graph has no switch over the (n_obs, n_dose) grid.
    """
    if isinstance(dt, np.ndarray) and isinstance(mask, np.ndarray):
        return np.where(mask, dt, 0.0), mask.astype(float)
    dt = pt.as_tensor_variable(dt)
    return pt.switch(mask, dt, 0.0), pt.cast(mask, "float64")


def _superpose(lams, coefs, doses: DoseEvents, inv_v, ka=None, F=1.0, alag=None, diffs=None, scales=None):
    """Concentration (central amount times ``inv_v``) at each observation from all doses; shape (n_obs,).

    ``alag`` None means no lag time; otherwise depot doses are delayed by it.  ``diffs``: for
    each rate constant, ``(KA - lambda, 1 / (KA - lambda))`` already derived (per subject);
    ``scales``: ``(factors, near)``, for each rate constant ``c F KA / V`` times ``near_inverse(KA - lambda,
    near)`` (per subject), which multiplies the non-steady-state depot doses'
    :func:`~bayesnlme.structural.steady_state.scaled_exp_difference`.
    Steady-state doses (``doses.ss > 0``) use the geometric-series sums of
    :mod:`bayesnlme.structural.steady_state`; their graph is built only when
    the data have such doses.
    """
    if (doses.depot & (doses.rate > 0) & doses.applies).any():
        raise ValueError("zero-order infusion into the depot is not supported")
    steady = doses.steady
    central = ~doses.depot & doses.applies
    amount, conc = 0.0, 0.0
    for ss, pick in ((False, ~steady), (True, steady)):
        is_bolus = (doses.rate <= 0) & central & pick
        is_inf = (doses.rate > 0) & central & pick
        is_depot = doses.depot & doses.applies & pick
        if is_bolus.any():
            amount = amount + _bolus(lams, coefs, doses, is_bolus, ss)
        if is_inf.any():
            amount = amount + _infusion(lams, coefs, doses, is_inf, ss)
        if is_depot.any() and not ss and scales is not None:
            conc = conc + _absorbed_scaled(lams, diffs, *scales, doses, is_depot, alag)
        elif is_depot.any():
            amount = amount + _absorbed(lams, coefs, doses, is_depot, ss, ka, alag, diffs) * F * ka[:, 0]
    if isinstance(amount, float):   # no bolus or infusion into the central compartment
        return conc if not isinstance(conc, float) else pt.zeros_like(inv_v[:, 0])
    return conc + amount * inv_v[:, 0]


def _absorbed_scaled(lams, diffs, scales, near, doses, mask, alag):
    """Concentration from the depot doses of ``mask`` (not steady state): ``sum_i scale_i sum_doses amt
    scaled_exp_difference(lambda_i, KA - lambda_i, t)``, the per-subject factors outside the loop over records."""
    t, w = _lagged(doses, mask, alag)
    out = 0.0
    for lam, (d, _), scale in zip(lams, diffs, scales):
        resp = steady_state.scaled_exp_difference(lam, d, t, near)
        out = out + scale[:, 0] * pt.sum(w * doses.amt * resp, axis=1)
    return out


def _lagged(doses, mask, alag):
    """Elapsed time since each depot dose of ``mask`` (minus ``alag``; 0 before it) and the weights."""
    if alag is None:
        return _given(mask, doses.dt)
    t_lag = pt.as_tensor_variable(doses.dt) - alag
    return _given(pt.and_(mask, pt.ge(t_lag, 0.0)), t_lag)


def _interval(doses: DoseEvents, mask):
    """II where ``mask`` holds, 1 elsewhere (keeps masked-out entries finite)."""
    return np.where(mask, doses.ii, 1.0)


def _bolus(lams, coefs, doses, mask, ss):
    t, w = _given(mask, doses.dt)
    if ss:
        resp = steady_state.bolus(lams, coefs, t, _interval(doses, mask))
    else:
        resp = sum(c * pt.exp(-lam * t) for lam, c in zip(lams, coefs))
    return pt.sum(w * doses.amt * resp, axis=1)


def _infusion(lams, coefs, doses, mask, ss):
    rate = np.where(mask, doses.rate, 1.0)
    dur = np.where(mask, doses.amt / rate, 0.0)
    t, w = _given(mask, doses.dt)
    if ss:
        resp = steady_state.infusion(lams, coefs, t, dur, _interval(doses, mask))
    else:
        t_in = pt.minimum(t, dur)
        t_after = pt.maximum(t - dur, 0.0)
        resp = sum(c * (-pt.expm1(-lam * t_in)) / lam * pt.exp(-lam * t_after)
                   for lam, c in zip(lams, coefs))
    return pt.sum(w * rate * resp, axis=1)


def _absorbed(lams, coefs, doses, mask, ss, ka, alag, diffs=None):
    """Sum over depot doses of amount x response, per unit F and KA."""
    if ss and alag is not None:   # earlier doses of the series absorb even while the latest is in its lag
        t, w = _given(mask, pt.as_tensor_variable(doses.dt) - alag)
    else:
        t, w = _lagged(doses, mask, alag)
    if ss:
        resp = steady_state.absorption(lams, coefs, ka, t, _interval(doses, mask))
    else:
        diffs = diffs or [(None, None)] * len(lams)
        resp = sum(c * exp_difference(lam, ka, t, d, inv_d) for lam, c, (d, inv_d) in zip(lams, coefs, diffs))
    return pt.sum(w * doses.amt * resp, axis=1)


def _near(doses: DoseEvents) -> float | None:
    """``0.01 / (the longest time since a depot dose)``: below this ``|KA - lambda|`` the flip-flop series
    applies to every record (:func:`~bayesnlme.structural.steady_state.scaled_exp_difference`); None where
    the times are not data (then the depot doses are not factored per subject)."""
    if not isinstance(doses.dt, np.ndarray):
        return None
    mask = doses.depot & doses.applies
    longest = float(np.max(doses.dt[mask], initial=0.0))
    return steady_state.SERIES_BELOW / max(longest, 1e-300)


def _derivation(oral: bool, lams_coefs, near: float | None = None):
    """What a linear model derives from its parameters ``p``: ``lams_coefs(p) -> (lams, coefs)``, then
    the rate constants, coefficients, 1/V and, with absorption, KA, F, ALAG, each
    ``(KA - lambda, 1 / (KA - lambda))`` and, with ``near`` (see :func:`_near`), each ``c F KA / V`` times
    :func:`~bayesnlme.structural.steady_state.near_inverse` of ``KA - lambda``."""
    def fn(p):
        lams, coefs = lams_coefs(p)
        inv_v = 1.0 / p["V"]
        if not oral:
            return [*lams, *coefs, inv_v]
        ka, F = p["KA"], p.get("F", 1.0)
        diffs = [x for lam in lams for x in (ka - lam, safe_inverse(ka - lam))]
        scales = [] if near is None else [c * F * ka * inv_v * steady_state.near_inverse(ka - lam, near)
                                          for c, lam in zip(coefs, lams)]
        return [*lams, *coefs, inv_v, ka, F, p.get("ALAG", 0.0), *diffs, *scales]
    return fn


def _linear(params, doses: DoseEvents, oral: bool, lams_coefs, n: int):
    """Concentration of an n-compartment linear model from its per-subject derivation."""
    near = _near(doses) if oral else None
    vals = _derive(params, _derivation(oral, lams_coefs, near))
    lams, coefs, inv_v = vals[:n], vals[n:2 * n], vals[2 * n]
    if oral:
        ka, F = vals[2 * n + 1], vals[2 * n + 2]
        F = F[:, 0] if F.ndim else F
        alag = vals[2 * n + 3] if "ALAG" in params else None
        d, scales = vals[2 * n + 4:4 * n + 4], vals[4 * n + 4:]
        return _superpose(lams, coefs, doses, inv_v, ka=ka, F=F, alag=alag,
                          diffs=[(d[2 * i], d[2 * i + 1]) for i in range(n)],
                          scales=None if near is None else (scales, near))
    return _superpose(lams, coefs, doses, inv_v)


def one_compartment(params, doses: DoseEvents, oral: bool):
    """Concentration for a 1-compartment model (CL, V; KA, F, ALAG if oral)."""
    return _linear(params, doses, oral, lambda p: ([p["CL"] / p["V"]], [1.0]), 1)


def two_compartment_rates(CL, V, Q, V2):
    """Macro rate constants (alpha, beta) and central coefficients of the 2-cmt model.

    Returns ``alpha > beta > 0`` and ``c_alpha = (alpha - k21)/(alpha - beta)``,
    ``c_beta = (k21 - beta)/(alpha - beta)``, so that the central amount after a
    unit bolus is ``c_alpha exp(-alpha t) + c_beta exp(-beta t)``.
    ``beta`` is computed as ``k10 k21 / alpha`` to avoid cancellation, and ``alpha - beta`` is the
    discriminant's square root itself: a smaller gradient (the fused per-subject gradient loop of
    ``pk_2cmt_iv`` had 646 scalar operations with ``alpha - beta``, 317 with it; one log density +
    gradient at 1,200 subjects 1,133 -> 740 us).
    """
    k10, k12, k21 = CL / V, Q / V, Q / V2
    s = k10 + k12 + k21
    disc = pt.sqrt(s * s - 4.0 * k10 * k21)     # alpha - beta
    alpha = 0.5 * (s + disc)
    beta = k10 * k21 / alpha
    return alpha, beta, (alpha - k21) / disc, (k21 - beta) / disc


def two_compartment(params, doses: DoseEvents, oral: bool):
    """Concentration for a 2-compartment model (CL, V, Q, V2; KA, F, ALAG if oral)."""
    def rates(p):
        alpha, beta, ca, cb = two_compartment_rates(*(p[n] for n in ("CL", "V", "Q", "V2")))
        return [alpha, beta], [ca, cb]
    return _linear(params, doses, oral, rates, 2)


def _product(factors):
    out = factors[0]
    for f in factors[1:]:
        out = out * f
    return out


def macro_coefficients(lams, k_back):
    """Central coefficients of the unit bolus response from the rate constants ``lams`` (the roots)
    and the peripheral return rates ``k_back`` (K21, K31): ``c_i = prod_k (k_k - lambda_i) /
    prod_{j != i} (lambda_j - lambda_i)``."""
    return [_product([k - li for k in k_back]) / _product([lj - li for j, lj in enumerate(lams) if j != i])
            for i, li in enumerate(lams)]


def three_compartment_rates(CL, V, Q, V2, Q3, V3):
    """Macro rate constants and central coefficients of the 3-compartment model.

    Micro constants ``k10 = CL/V``, ``k12 = Q/V``, ``k21 = Q/V2``, ``k13 = Q3/V``,
    ``k31 = Q3/V3`` (1/time).  The rate constants ``lambda1 > lambda2 > lambda3 > 0``
    are the roots of ``x^3 - a2 x^2 + a1 x - a0``: the largest by the
    trigonometric (Viete) formula polished by Newton steps, the other
    two from the quadratic left after deflation, with the smallest as
    ``a0 / (lambda1 lambda2)`` so that a slow terminal phase is not lost to
    cancellation.  Coefficients of the central unit bolus response
    ``sum_i c_i exp(-lambda_i t)`` are
    ``c_i = (k21 - lambda_i)(k31 - lambda_i) / prod_{j != i} (lambda_j - lambda_i)``.

    Returns
    -------
    tuple
        ``([lambda1, lambda2, lambda3], [c1, c2, c3])``.
    """
    k10, k12, k21, k13, k31 = CL / V, Q / V, Q / V2, Q3 / V, Q3 / V3
    a2 = k10 + k12 + k13 + k21 + k31
    a1 = k10 * k21 + k10 * k31 + k21 * k31 + k13 * k21 + k12 * k31
    a0 = k10 * k21 * k31
    # sqrt(-p/3); the floor only matters for three equal roots, never met in practice
    r = pt.sqrt(pt.maximum(a2 * a2 / 3.0 - a1, 1e-24 * a2 * a2) / 3.0)
    q = -2.0 * a2 ** 3 / 27.0 + a1 * a2 / 3.0 - a0
    phi = pt.arccos(pt.clip(-q / (2.0 * r ** 3), -1.0, 1.0)) / 3.0   # in [0, pi/3]
    lam1 = a2 / 3.0 + 2.0 * r * pt.cos(phi)
    # arccos is ill-conditioned near +-1 (lambda2 and lambda3 close compared with lambda1, the
    # usual PK case: ~1e-8 relative error); two Newton steps on the cubic restore full precision,
    # and their gradient is the implicit-function one, -(df/dtheta) / f'(lambda1)
    for _ in range(2):
        f = ((lam1 - a2) * lam1 + a1) * lam1 - a0
        lam1 = lam1 - f / ((3.0 * lam1 - 2.0 * a2) * lam1 + a1)
    s, prod = a2 - lam1, a0 / lam1                                     # lambda2 + lambda3, lambda2 lambda3
    lam2 = 0.5 * (s + pt.sqrt(pt.maximum(s * s - 4.0 * prod, 0.0)))
    lam3 = prod / lam2
    lams = [lam1, lam2, lam3]
    return lams, macro_coefficients(lams, [k21, k31])


def three_compartment(params, doses: DoseEvents, oral: bool):
    """Concentration for a 3-compartment model.

    Parameters (NONMEM ADVAN11/12 TRANS4 with our 2-compartment names): CL
    (clearance), V (central volume, V1), Q and V2 (first peripheral:
    intercompartmental clearance Q2 and volume), Q3 and V3 (second
    peripheral); KA, F, ALAG if oral.
    """
    return _linear(params, doses, oral,
                   lambda p: three_compartment_rates(*(p[n] for n in ("CL", "V", "Q", "V2", "Q3", "V3"))), 3)


# ------------------------------------------------------------------ NONMEM's other parameterisations
# The same linear models read from other parameters (NONMEM TRANS3, TRANS5, TRANS6).  Each gives the
# rate constants and central coefficients directly; the concentration is the central amount over V.

def two_compartment_aob_rates(AOB, ALPHA, BETA):
    """TRANS5: the 2-cmt rates from ``AOB = A/B`` (ratio of the bolus-response coefficients), ALPHA and
    BETA; ``K21 = (AOB BETA + ALPHA)/(AOB + 1)``, so the coefficients are ``AOB/(1+AOB)`` and ``1/(1+AOB)``."""
    return [ALPHA, BETA], [AOB / (1.0 + AOB), 1.0 / (1.0 + AOB)]


def _reparameterised(names, rates, n):
    """A linear model of ``n`` exponentials whose ``rates(*p[names]) -> (lams, coefs)``."""
    def model(params, doses: DoseEvents, oral: bool):
        return _linear(params, doses, oral, lambda p: rates(*(p[k] for k in names)), n)
    model.__doc__ = f"Concentration from {', '.join(names)}, V (KA, F, ALAG if oral)."
    return model


def _vss(CL, V, Q, VSS):
    """TRANS3: the 2-cmt rates from CL, V, Q and the steady-state volume ``VSS = V + V2``."""
    alpha, beta, ca, cb = two_compartment_rates(CL, V, Q, VSS - V)
    return [alpha, beta], [ca, cb]


#: The alternative parameterisations: name suffix -> (parameters before V, rates, number of exponentials).
#: The rate constants are per time unit; ``K21``/``K31`` are the return rates of the first/second peripheral.
REPARAMETERISED = {
    ("2cmt", "vss"): (("CL", "V", "Q", "VSS"), _vss, 2),
    ("2cmt", "aob"): (("AOB", "ALPHA", "BETA"), two_compartment_aob_rates, 2),
    ("2cmt", "macro"): (("ALPHA", "BETA", "K21"),
                        lambda a, b, k21: ([a, b], macro_coefficients([a, b], [k21])), 2),
    ("3cmt", "macro"): (("ALPHA", "BETA", "GAMMA", "K21", "K31"),
                        lambda a, b, g, k21, k31: ([a, b, g], macro_coefficients([a, b, g], [k21, k31])), 3),
}


def reparameterised_model(compartments: str, kind: str):
    """``(parameters, function(params, doses, oral))`` of one of :data:`REPARAMETERISED`."""
    names, rates, n = REPARAMETERISED[(compartments, kind)]
    params = names if "V" in names else (*names, "V")
    return params, _reparameterised(names, rates, n)
