"""Description + data -> one PyMC model: the only stage that makes PyMC random variables.

Modules: :mod:`~bayesnlme.build.model` (:func:`build_model`, :class:`BuiltModel`),
:mod:`~bayesnlme.build.priors` (a spec's priors as PyMC variables),
:mod:`~bayesnlme.build.covariates` (the covariate factor, for PyTensor and NumPy alike),
:mod:`~bayesnlme.build.observations` (the log-density of each observation model, censoring included),
:mod:`~bayesnlme.build.mixture` (a ``[mixture]``'s likelihood, membership marginalised per subject).
"""

from bayesnlme.build.model import BuiltModel, at_observations, build_model, individual_parameters, occasions

__all__ = ["build_model", "BuiltModel", "individual_parameters", "at_observations", "occasions"]
