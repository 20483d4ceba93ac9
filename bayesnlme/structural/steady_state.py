"""Steady-state doses (NONMEM ``SS=1`` / ``SS=2`` with interdose interval ``II``) in closed form.

A steady-state dose record at time ``t0`` stands for the dose at ``t0`` and the
same dose at ``t0 - II``, ``t0 - 2 II``, ... without end.  At elapsed time
``t >= 0`` after the record, each exponential term of the single-dose response
``r`` therefore contributes ``sum_{k >= 0} r(t + k II)``, a geometric series
with ratio ``q = exp(-lambda II)``:

* IV bolus: ``c exp(-lambda t) / (1 - q)``, for every ``t >= 0``;
* zero-order infusion of rate ``R`` and duration ``T`` (``T`` may exceed
  ``II``: then infusions overlap): with ``n = max(0, ceil((T - t) / II))``
  infusions of the series still running at ``t`` and ``a = t + n II - T >= 0``,
  ``R c / lambda [n + (exp(-lambda a) - exp(-lambda t)) / (1 - q)]``;
* first-order absorption (``KA``, lag ``ALAG``): with
  ``m = max(0, ceil((ALAG - t) / II))`` (how many of the latest doses are
  still in their lag) and ``s = t - ALAG + m II`` in ``[0, ...)`` the time since
  the latest absorbing dose left its lag,
  ``c [E(lambda, KA, s) / (1 - q) + exp(-KA s) E(lambda, KA, II) / ((1 - q)(1 - q_KA))]``
  with ``E`` of :func:`exp_difference`.  This split of
  ``(G(lambda) - G(KA)) / (KA - lambda)``, ``G(x) = exp(-x s) / (1 - exp(-x II))``,
  never divides by ``KA - lambda``, so it is exact in the flip-flop limit.

Every factor is bounded (``1 - q`` is formed with ``expm1``), so the sums are
accurate for long half-lives (``lambda II`` small, strong accumulation) too.
``SS=1`` (reset, then steady state) and ``SS=2`` (steady state added to the
current amounts) differ only in which earlier doses still apply, which the
data layer decides (:mod:`bayesnlme.data`).
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.replace import graph_replace
from pytensor.graph.traversal import ancestors
from pytensor.tensor.basic import Nonzero

SERIES_BELOW = 1e-2   # |b - a| t below which exp_difference uses its series


def _series(x):
    """``(1 - exp(-x)) / x`` by its series ``1 - x/2 + x^2/6 - x^3/24 + x^4/120 - x^5/720`` (|x| < 0.01)."""
    return 1.0 - x * (1 / 2 - x * (1 / 6 - x * (1 / 24 - x * (1 / 120 - x / 720))))


def exp_difference(a, b, t, d=None, inv_d=None):
    """``(exp(-a t) - exp(-b t)) / (b - a)`` for ``a, b > 0``, ``t >= 0``, stable for ``a ~ b``.

    Where ``|b - a| t >= 0.01`` the difference is formed directly: both
    exponentials are at most 1, so nothing overflows, and cancellation costs
    at most ~1e-14 relative.  Closer to the flip-flop point it equals
    ``exp(-a t) t (1 - exp(-x)) / x`` with ``x = (b - a) t``, whose series
    ``1 - x/2 + x^2/6 - x^3/24 + x^4/120 - x^5/720`` is exact to double precision
    for ``|x| < 0.01``.  Values and gradients are right at exactly ``KA == k``.

    Parameters
    ----------
    a, b : tensor
        Rate constants (1/time), broadcastable against ``t``.
    t : array or tensor
        Time since the dose (time units).
    d, inv_d : tensor, optional
        ``b - a`` and :func:`safe_inverse` of it, when the caller has them already (computed
        once per subject instead of once per record: the record-level loop then has no division).
    """
    if d is None:
        d = b - a
    if inv_d is None:
        inv_d = safe_inverse(d)
    x = d * t
    small = pt.abs(x) < SERIES_BELOW
    ea = pt.exp(-a * t)
    series = ea * t * _series(x)
    direct = (ea - pt.exp(-b * t)) * inv_d
    return pt.switch(small, series, direct)


def scaled_exp_difference(a, d, t, near: float):
    """``E(a, a + d, t) / near_inverse(d, near)``, i.e. ``D E`` with ``D = d`` (1 where ``|d| < near``).

    ``exp(-a t) - exp(-(a + d) t)`` where ``|d| t >= 0.01`` or ``t == 0`` with ``|d| >= near``; the series of
    :func:`exp_difference` times ``D`` closer to the flip-flop point (exact at ``d == 0``).  The caller
    multiplies by :func:`near_inverse` once per subject, with the dose-independent factors (``c F KA / V``).
    Times :func:`near_inverse` it equals :func:`exp_difference` to rounding.

    The difference is formed for every record, with no branch; the series is computed only for the
    records that need it (usually none: a subject whose ``KA`` is within ``0.01 / t`` of ``lambda``),
    gathered by their flat index and written over the difference.  A per-record branch inside the fused
    elementwise loop of the gradient (a switch, a 0/1 blend) makes numba generate code 2x slower
    (``pk_1cmt_oral`` at 12,000 records: 390 against 850 microseconds per log density and gradient, the
    hand-written model 400; docs/benchmarks.md).  The number of gathered records is known only at
    evaluation, which JAX cannot compile and ``vectorize_graph`` cannot batch: those use
    :func:`scaled_exp_difference_switch`, which the graph carries as this variable's ``tag.static_form``
    (:func:`static_shapes`).

    ``near`` (1/time) is ``0.01 / T`` for the longest time ``T`` since a dose in the data, so that where
    ``|d| < near`` every record is on the series side (``D = 1`` there is right for every record).  The
    gradient's relative error on the series side is ~1e-16 / |d t| (cancellation between the
    per-record ``D`` and the per-subject ``1 / D``), at most ~1e-14 T / t.

    Parameters
    ----------
    a, d : tensor
        Rate constant and ``KA - a`` (1/time): scalars or one row per record (shape ``(n, 1)``).
    t : array or tensor
        Time since the dose (time units), shape ``(n, n_dose)``, 0 <= t <= T.
    near : float
        ``0.01 / T`` (1/time).
    """
    a, d, tt = (pt.as_tensor_variable(v) for v in (a, d, t))
    direct = pt.exp(-a * tt) - pt.exp(-(a + d) * tt)
    flat_t = pt.broadcast_to(tt, direct.shape).ravel()
    # t == 0 (before the dose or in its lag) needs the series only where D = 1: there the difference's
    # derivative in t is d, not 1
    needed = pt.and_(pt.lt(pt.abs(d * tt), SERIES_BELOW), pt.or_(pt.gt(tt, 0.0), pt.lt(pt.abs(d), near)))
    idx = pt.nonzero(needed.ravel())[0]
    rows = idx // direct.shape[1]
    ts, as_, ds = flat_t[idx], _row_values(a, rows), _row_values(d, rows)
    out = pt.set_subtensor(direct.ravel()[idx], _scaled_series(as_, ds, ts, near)).reshape(direct.shape)
    out.tag.static_form = (scaled_exp_difference_switch, (a, d, tt), near)
    return out


def _row_values(x, rows):
    """``x`` at the given rows: a scalar stays a scalar, a column ``(n, 1)`` gives a vector."""
    return x if x.ndim == 0 else x[:, 0][rows]


def scaled_exp_difference_switch(a, d, t, near: float):
    """:func:`scaled_exp_difference` with the series under a switch for every record (static shapes)."""
    small = pt.abs(d * t) < SERIES_BELOW
    return pt.switch(small, _scaled_series(a, d, t, near), pt.exp(-a * t) - pt.exp(-(a + d) * t))


def _scaled_series(a, d, t, near: float):
    """The flip-flop series side of :func:`scaled_exp_difference`: ``exp(-a t) t (1 - exp(-d t)) / (d t)``
    times ``d`` (1 where ``|d| < near``)."""
    return pt.exp(-a * t) * t * _series(d * t) * pt.switch(pt.abs(d) < near, 1.0, d)


def near_inverse(d, near: float):
    """``1 / d``, 1 where ``|d| < near`` (there :func:`scaled_exp_difference` is ``E`` itself)."""
    return 1.0 / pt.switch(pt.abs(d) < near, 1.0, d)


def safe_inverse(d):
    """``1 / d``, with 1 where ``|d| < 1e-100`` (there :func:`exp_difference` uses its series for any
    time below 1e98, so the value is never used; it keeps gradients finite)."""
    return near_inverse(d, 1e-100)


def _one_minus_q(lam, ii):
    """``1 - exp(-lam II)`` without cancellation for small ``lam II``."""
    return -pt.expm1(-lam * ii)


def bolus(lams, coefs, t, ii):
    """Central amount per unit steady-state bolus, shape (n_obs, n_dose).

    Parameters
    ----------
    lams, coefs : sequence of tensors (n_obs, 1)
        Disposition rate constants (1/time) and central unit-impulse coefficients.
    t : array or tensor (n_obs, n_dose)
        Time since the steady-state dose record (>= 0).
    ii : numpy.ndarray (n_obs, n_dose)
        Interdose interval (> 0 where used).
    """
    return sum(c * pt.exp(-lam * t) / _one_minus_q(lam, ii) for lam, c in zip(lams, coefs))


def infusion(lams, coefs, t, dur, ii):
    """Central amount per unit infusion rate at steady state, shape (n_obs, n_dose).

    ``dur`` (time) may exceed ``ii``; ``t``, ``dur`` and ``ii`` are data, so the
    number of running infusions ``n`` is a constant of the graph.
    """
    xp = np if all(isinstance(x, np.ndarray) for x in (t, dur, ii)) else pt
    n = xp.maximum(xp.ceil((dur - t) / ii), 0.0)
    a = t + n * ii - dur
    # exp(-lam a) - exp(-lam t) = -exp(-lam a) expm1(-lam (t - a)), t - a = dur - n II >= -II
    return sum(c / lam * (n - pt.exp(-lam * a) * pt.expm1(-lam * (dur - n * ii)) / _one_minus_q(lam, ii))
               for lam, c in zip(lams, coefs))


def absorption(lams, coefs, ka, t_lag, ii):
    """Central amount per unit absorbed amount and unit ``KA`` at steady state, (n_obs, n_dose).

    Parameters
    ----------
    ka : tensor (n_obs, 1)
        Absorption rate constant (1/time).
    t_lag : array or tensor (n_obs, n_dose)
        Time since the dose record minus ALAG (may be negative: then earlier
        doses of the series are the ones absorbing).
    ii : numpy.ndarray (n_obs, n_dose)
        Interdose interval (> 0 where used).
    """
    xp = np if isinstance(t_lag, np.ndarray) else pt
    # where m steps, s jumps from II to 0 but the sum is continuous (both give E(II)/((1-q)(1-q_KA)))
    m = xp.maximum(xp.ceil(-t_lag / ii), 0.0)
    s = t_lag + m * ii
    carry = pt.exp(-ka * s) / _one_minus_q(ka, ii)
    return sum(c * (exp_difference(lam, ka, s) + carry * exp_difference(lam, ka, ii)) / _one_minus_q(lam, ii)
               for lam, c in zip(lams, coefs))


def static_shapes(outputs):
    """``outputs`` with every :func:`scaled_exp_difference` in their graph in its static-shape form.

    The flip-flop series is gathered over a set of records known only when the graph is evaluated;
    JAX cannot compile that, and PyTensor's ``vectorize_graph`` cannot batch it.  Each such variable
    carries ``tag.static_form`` (the function, its inputs and ``near``); this rebuilds it with
    :func:`scaled_exp_difference_switch` (the same values and gradients).

    Parameters
    ----------
    outputs : list of tensor
        Graph outputs (e.g. a built model's pointwise log-likelihood).

    Returns
    -------
    list of tensor
        The same outputs, with the variables upstream of the replaced ones left as they were.

    Raises
    ------
    RuntimeError
        If the graph still gathers records by value: a gradient must be taken of this function's
        outputs, not of the dynamic form's.
    """
    outputs = list(outputs)
    repl = {v: static_form(v) for v in ancestors(outputs) if getattr(v.tag, "static_form", None)}
    out = graph_replace(outputs, repl, strict=False) if repl else outputs
    if any(v.owner is not None and isinstance(v.owner.op, Nonzero) for v in ancestors(out)):
        # a gradient of the dynamic form refers to its gathered records directly: take it after this
        raise RuntimeError("static_shapes: the graph still gathers records by value (a gradient taken "
                           "before static_shapes?)")
    return out


def static_form(var, memo=None):
    """The static-shape form of a variable :func:`scaled_exp_difference` made, its inputs mapped
    through ``memo`` (a graph clone's equivalence mapping) where given."""
    fn, args, near = var.tag.static_form
    if memo is not None:
        args = [memo.get(x, x) for x in args]
    return fn(*args, near)
