"""PyMC random variables for the priors of a spec (natural units, as :class:`~bayesnlme.spec.Prior` states them)."""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from bayesnlme.spec import Prior

DIST_ARGS = {
    "lognormal": (pm.LogNormal, lambda a: {"mu": np.log(a["median"]), "sigma": a["sigma"]}),
    "normal": (pm.Normal, lambda a: {"mu": a["mu"], "sigma": a["sigma"]}),
    "halfnormal": (pm.HalfNormal, lambda a: {"sigma": a["sigma"]}),
    "halfcauchy": (pm.HalfCauchy, lambda a: {"beta": a["beta"]}),
    "halfstudentt": (pm.HalfStudentT, lambda a: {"nu": a["nu"], "sigma": a["sigma"]}),
    "exponential": (pm.Exponential, lambda a: {"lam": a["lam"]}),
    "uniform": (pm.Uniform, lambda a: {"lower": a["lower"], "upper": a["upper"]}),
    "truncatednormal": (pm.TruncatedNormal, lambda a: dict(a)),
    "beta": (pm.Beta, lambda a: {"alpha": a["alpha"], "beta": a["beta"]}),
}


def prior_rv(name: str, prior: Prior, dims=None):
    if prior.is_fixed:   # a fixed residual/outcome parameter: a constant, not a random variable
        return pt.as_tensor_variable(prior.args["value"])
    cls, args = DIST_ARGS[prior.dist]
    return cls(name, **args(prior.args), dims=dims)


def prior_dist(priors: list):
    """One vector-valued ``.dist`` for priors of the same family (an OMEGA block's SDs)."""
    cls, args = DIST_ARGS[priors[0].dist]
    kw = [args(p.args) for p in priors]
    return cls.dist(**{k: np.array([d[k] for d in kw], float) for k in kw[0]}, shape=len(priors))


def estimate(name, prior, fixed, init):
    """A free RV with its prior, or the fixed value as a constant."""
    if fixed is not None:
        return pt.as_tensor_variable(float(fixed))
    init[name] = prior.median()
    return prior_rv(name, prior)


def prior_logp(prior: Prior, value):
    """The prior's log-density at ``value`` (a tensor): for a parameter derived from others (the typical
    values and OMEGAs of :mod:`bayesnlme.build.random_effects`' population parameterisation)."""
    cls, args = DIST_ARGS[prior.dist]
    return pm.logp(cls.dist(**args(prior.args)), value)
