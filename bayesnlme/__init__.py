"""bayesnlme: Bayesian nonlinear mixed-effects (population PK/PD) models on PyMC.

Typical use::

    from bayesnlme import load_spec, fit_model, datasets
    result = fit_model(load_spec("pk_1cmt_oral"), datasets.dataset_path("theophylline"))
    result.summary()
"""

import warnings as _warnings

_warnings.filterwarnings("ignore", message="ArviZ is undergoing a major refactor", category=FutureWarning)
_warnings.filterwarnings("ignore", message=".*could not link to a BLAS installation.*")

from bayesnlme.data import NMData, read_nonmem  # noqa: E402
from bayesnlme.errors import BayesNLMEInputError, ConvergenceWarning, DataError, SpecError  # noqa: E402
from bayesnlme.spec import ModelSpec, load_spec  # noqa: E402
from bayesnlme.structural import StructuralModel  # noqa: E402

from . import datasets  # noqa: E402

__version__ = "0.1.0"


# modules that were top level before the layout by stage, still reachable as `from bayesnlme import diagnostics`
_MOVED = {**{m: f"bayesnlme.evaluate.{m}" for m in ("compare", "diagnostics", "likelihood", "plots", "predict",
                                                  "prior_check", "regimens", "simulate", "subject_loo")},
          "fit": "bayesnlme.inference.fit", "quick": "bayesnlme.inference.quick"}


def __getattr__(name):
    # build/fit import PyMC; load them on first use so `bayesnlme --help` and data checks stay fast
    if name in _MOVED:
        import importlib

        return importlib.import_module(_MOVED[name])
    if name in ("fit_model", "FitResult"):
        from bayesnlme import inference
        return getattr(inference, name)
    if name in ("build_model", "BuiltModel"):
        from bayesnlme import build
        return getattr(build, name)
    raise AttributeError(name)


__all__ = ["datasets", "NMData", "read_nonmem", "ModelSpec", "load_spec", "StructuralModel",
           "fit_model", "FitResult", "build_model", "BuiltModel", "BayesNLMEInputError", "DataError",
           "SpecError", "ConvergenceWarning"]
