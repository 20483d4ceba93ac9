"""Inference: NUTS engines (nutpie, PyMC), quick fits (MAP + Laplace, ADVI), the start-point check and
:class:`FitResult` with its save/load adapter (``fit.nc``).

Modules: :mod:`~bayesnlme.inference.fit`, :mod:`~bayesnlme.inference.quick`,
:mod:`~bayesnlme.inference.startpoint`, :mod:`~bayesnlme.inference.convergence`.
"""

from bayesnlme.inference.fit import FitResult, fit_model

__all__ = ["fit_model", "FitResult"]
