"""Evaluation of a fit: predictions and draws (:mod:`~bayesnlme.evaluate.predict`, the one place that
compiles and thins), simulation and regimens, residual diagnostics, the marginal likelihood, LOO and
model comparison.  Each module is imported by name; this package imports nothing by itself."""
