"""Covariate models: the factor each covariate effect applies to a typical value.

:func:`log_factor` is the one definition of every covariate model; the builder
calls it with ``pytensor.tensor`` and summaries call it with ``numpy``.
:func:`covariate_log_factors` makes the effects' random variables (their priors, or the
regularised horseshoe of :class:`Horseshoe`) and sums the factors per parameter.
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from bayesnlme.build.priors import estimate
from bayesnlme.data import NMData
from bayesnlme.errors import SpecError
from bayesnlme.spec import ModelSpec


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


def covariate_values(eff, data: NMData):
    """The covariate of ``eff`` as its factor reads it: at each observation (time-varying) or per subject
    (baseline), as floats except for a categorical covariate's raw levels."""
    frame = (data.observation_covariates if eff.time_varying else data.baseline_covariates)([eff.covariate])
    x = frame[eff.covariate].to_numpy()
    return x if eff.kind == "categorical" else x.astype(float)


def covariate_log_factors(spec: ModelSpec, data: NMData, init: dict,
                          switches: dict | None = None, given: dict | None = None) -> tuple[dict, dict]:
    """Sums of log covariate factors per parameter.

    ``switches`` (``{"<COV>_on_<P>": 0 or 1}``) multiplies the named effects' thetas by a data container
    ``switch_<COV>_on_<P>``: ``s * theta`` in every kind's factor, so an effect switched off has factor 1
    exactly, with a finite gradient (see :func:`bayesnlme.build.build_model`).  ``given``: thetas made
    elsewhere, by name (the population parameterisation's regression,
    :func:`bayesnlme.build.random_effects.covariate_designs`); the others are made here.

    Returns
    -------
    by_subject : dict
        Baseline-covariate terms, shape (n_subjects,).
    by_observation : dict
        Time-varying-covariate terms, shape (n_obs,) (the covariate carried
        forward to each observation).
    """
    by_subject, by_obs = {}, {}
    shrink = Horseshoe(spec.shrinkage, init) if spec.shrinkage is not None else None
    made = {}   # theta name -> its variable, for the effects that share one (shared_with)
    unknown = sorted(set(switches or ()) - {e.label for e in spec.covariates})
    if unknown:
        raise SpecError(f"switches name covariate effects the spec does not have: {', '.join(unknown)}")
    for eff in sorted(spec.covariates, key=lambda e: e.shared_with is not None):
        if eff.shared_with is None:
            for n, f in zip(eff.effect_names(), eff.fixed_values()):
                if given and n in given:
                    made[n] = given[n]
                    continue
                made[n] = ((shrink.effect(n, eff.prior) if shrink is not None else estimate(n, eff.prior, f, init))
                           if f is None else pt.as_tensor_variable(float(f)))
        thetas = [made[n] for n in eff.effect_names()]
        if switches is not None and eff.label in switches:
            switch = pm.Data(f"switch_{eff.label}", np.float64(switches[eff.label]))
            thetas = [switch * t for t in thetas]
        x, out = covariate_values(eff, data), (by_obs if eff.time_varying else by_subject)
        out[eff.parameter] = out.get(eff.parameter, 0.0) + log_factor(eff, x, thetas, pt)
    return by_subject, by_obs


class Horseshoe:
    """The regularised horseshoe of :class:`bayesnlme.spec.components.CovariateShrinkage` (non-centred)."""

    def __init__(self, hs, init: dict):
        self.tau = pm.HalfCauchy("hs_tau", beta=hs.tau0)
        c2 = pm.InverseGamma("hs_c2", alpha=hs.slab_df / 2, beta=hs.slab_df / 2)
        self.c2 = c2 * hs.slab_scale ** 2
        init.update(hs_tau=hs.tau0, hs_c2=1.0)
        self.init = init

    def effect(self, name: str, prior):
        """The effect ``name`` as a deterministic of its own z and local scale; scale from its prior's SD."""
        scale = float(prior.args.get("sigma", 1.0)) if prior is not None else 1.0
        z = pm.Normal(f"hs_z_{name}", 0.0, 1.0)
        lam = pm.HalfCauchy(f"hs_lambda_{name}", beta=1.0)
        # a start off 0: at z = 0 the gradient in tau and lambda is exactly 0, where nutpie cannot start
        self.init.update({f"hs_z_{name}": 0.1, f"hs_lambda_{name}": 1.0})
        lam_t = pt.sqrt(self.c2 * lam ** 2 / (self.c2 + self.tau ** 2 * lam ** 2))
        return pm.Deterministic(name, scale * z * self.tau * lam_t)
