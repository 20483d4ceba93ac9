"""What the model is: the validated specification (:class:`ModelSpec`), its priors, its observation
models and the model library.  Nothing here makes a PyMC variable.

Modules: :mod:`~bayesnlme.spec.priors` (distributions in natural units),
:mod:`~bayesnlme.spec.components` (parameters, covariate effects, residual error),
:mod:`~bayesnlme.spec.observation` (one observation model per observation type),
:mod:`~bayesnlme.spec.mixture` (the ``[mixture]`` table: subpopulations in one parameter),
:mod:`~bayesnlme.spec.model` (:class:`ModelSpec`), :mod:`~bayesnlme.spec.library` (:func:`load_spec`).
"""

from bayesnlme.spec.components import (
           COVARIATE_KINDS,
           IIV_KINDS,
           KNOWN_DOMAINS,
           RESIDUAL_KINDS,
           CovariateEffect,
           Parameter,
           ResidualError,
)
from bayesnlme.spec.library import library_names, library_path, load_spec
from bayesnlme.spec.model import ModelSpec
from bayesnlme.spec.priors import Prior, omega_sd

__all__ = ["ModelSpec", "Parameter", "CovariateEffect", "ResidualError", "Prior", "load_spec", "library_names",
           "library_path", "omega_sd", "IIV_KINDS", "COVARIATE_KINDS", "RESIDUAL_KINDS", "KNOWN_DOMAINS"]
