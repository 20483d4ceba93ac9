"""Covariate models: the factor each covariate effect applies to a typical value.

:func:`log_factor` is the one definition of every covariate model; the builder
calls it with ``pytensor.tensor`` and summaries call it with ``numpy``.
"""

from __future__ import annotations

import numpy as np


def log_factor(effect, x, thetas, xp=np):
    """Log of the multiplicative covariate factor.

    Parameters
    ----------
    effect : bayesnlme.spec.CovariateEffect
    x : array
        Covariate values (any shape; categorical: raw level values).
    thetas : list
        The effect's values (estimated or fixed) in ``effect.effect_names()`` order.
    xp : module
        ``numpy`` or ``pytensor.tensor``.

    Returns
    -------
    array
        ``log(factor)``, shape of ``x`` broadcast with the thetas.  For a
        linear or piecewise effect whose factor is <= 0 the result is NaN
        (the sampler rejects such draws).
    """
    kind, ref = effect.kind, effect.reference
    if kind == "categorical":
        term = 0.0
        for level, theta in zip(effect.levels, thetas):
            term = term + theta * (x == level).astype(float)
        return term
    x = np.asarray(x, dtype=float) if not hasattr(x, "owner") else x
    if kind == "power":
        return thetas[0] * xp.log(x / ref)
    if kind == "exponential":
        return thetas[0] * (x - ref)
    if kind == "linear":
        return xp.log(1.0 + thetas[0] * (x - ref))
    if kind == "piecewise":
        k = getattr(effect, "knot", None)

        def g(v):
            return thetas[0] * (xp.minimum(v, k) - k) + thetas[1] * (xp.maximum(v, k) - k)

        return xp.log(1.0 + g(x) - g(np.asarray(ref, dtype=float)))
    raise ValueError(f"unknown covariate effect kind {kind!r}")
