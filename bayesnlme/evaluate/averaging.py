"""Model-averaged predictions: simulation, VPC and regimen evaluation over several fits with weights.

When several models describe the data about equally well, predictions that condition on one of them
understate the uncertainty.  Here a prediction is a mixture of the models' predictive distributions
with weights ``w_k`` -- by default the stacking weights of :func:`bayesnlme.evaluate.compare.compare`
(Yao, Vehtari, Simpson and Gelman 2018), which maximise the leave-one-subject-out predictive density
of the mixture: ``p(y~ | y) = sum_k w_k p(y~ | y, M_k)``.

It is computed by sampling: of ``n_draws`` replicates, each model gets a share proportional to its
weight (largest-remainder rounding, so the shares add up exactly), simulated from that many of its
own posterior draws; the replicates are pooled.  A target-attainment probability of the pool is
then ``sum_k (n_k / n) P_k``, the weighted average of the models' probabilities, and percentiles and
intervals are those of the mixture.  Every model must describe the same data (same subjects and
records) and, for a design, the same design is simulated with each.

Reference: Yao Y, Vehtari A, Simpson D, Gelman A (2018) Using stacking to average Bayesian predictive
distributions. Bayesian Analysis 13:917.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.compare import check_same_data, compare, named_results
from bayesnlme.evaluate.regimens import evaluate_regimens, summarise_metrics
from bayesnlme.evaluate.simulate import Simulation, simulate


def model_weights(results, weights=None) -> dict:
    """Normalised weight per model name.

    Parameters
    ----------
    results : dict of str -> FitResult, or list of FitResult
    weights : None, dict or sequence of float
        None: stacking weights from a subject-level PSIS-LOO comparison; otherwise one non-negative
        weight per model (normalised to sum to 1).

    Examples
    --------
    >>> model_weights({"a": fit_a, "b": fit_b}, {"a": 3, "b": 1})     # doctest: +SKIP
    {'a': 0.75, 'b': 0.25}
    """
    named = named_results(results)
    if weights is None:
        table = compare(named, level="subject")
        w = {k: float(table.loc[k, "weight"]) for k in named}
    else:
        if not isinstance(weights, dict):
            weights = list(weights)
            if len(weights) != len(named):
                raise BayesNLMEInputError(f"{len(weights)} weights for {len(named)} models")
            weights = dict(zip(named, weights))
        unknown = [k for k in weights if k not in named]
        if unknown:
            raise BayesNLMEInputError(f"weights for unknown models {unknown}; the models are {list(named)}")
        w = {k: float(weights.get(k, 0.0)) for k in named}
        if any(not np.isfinite(v) or v < 0 for v in w.values()) or sum(w.values()) <= 0:
            raise BayesNLMEInputError(f"model weights must be non-negative with a positive sum, got {w}")
    total = sum(w.values())
    return {k: v / total for k, v in w.items()}


def allocate(weights: dict, n: int) -> dict:
    """Replicates per model: ``n * w_k`` rounded by largest remainder (the counts add up to ``n``).

    Examples
    --------
    >>> allocate({"a": 0.5, "b": 0.3, "c": 0.2}, 7)
    {'a': 4, 'b': 2, 'c': 1}
    """
    raw = {k: n * w for k, w in weights.items()}
    out = {k: int(np.floor(v)) for k, v in raw.items()}
    left = n - sum(out.values())
    for k in sorted(raw, key=lambda k: (-(raw[k] - out[k]), list(raw).index(k)))[:left]:
        out[k] += 1
    return out


def simulate_averaged(results, data=None, *, weights=None, n_draws: int = 200, mode: str = "new_subjects",
                      covariates=None, seed: int = 0, lloq: float | None = None) -> Simulation:
    """A model-averaged simulation: ``n_draws`` replicates shared among the models by weight.

    Parameters
    ----------
    results, weights
        See :func:`model_weights`.
    data, mode, covariates, seed, lloq
        As in :func:`bayesnlme.evaluate.simulate.simulate` (the same design and seed for each model).
    n_draws : int
        Replicates in all.

    Returns
    -------
    Simulation
        Replicates of all models (``model`` says whose each is); ``pred`` is the weighted average of
        the models' PRED.  Pass it to :func:`bayesnlme.vpc.vpc` (``sim=``) for a model-averaged VPC.
    """
    named = named_results(results)
    if data is None:
        check_same_data(named)
    w = model_weights(named, weights)
    counts = allocate(w, n_draws)
    parts = {k: simulate(named[k], data, n_draws=counts[k], mode=mode, covariates=covariates, seed=seed,
                         lloq=lloq) for k in named if counts[k] > 0}
    first = next(iter(parts.values()))
    if len({p.dv.shape[1] for p in parts.values()}) > 1:
        raise BayesNLMEInputError("the models' simulations have different records; model averaging needs "
                                  "fits of the same data (or one design simulated with each)")
    return Simulation(data=first.data, draw=np.concatenate([p.draw for p in parts.values()]),
                      dv=np.concatenate([p.dv for p in parts.values()]),
                      ipred=np.concatenate([p.ipred for p in parts.values()]),
                      pred=sum(w[k] * p.pred for k, p in parts.items()) / sum(w[k] for k in parts),
                      mode=mode, lloq=first.lloq,
                      model=np.concatenate([np.full(len(p.draw), k, dtype=object) for k, p in parts.items()]))


def evaluate_regimens_averaged(results, doses, intervals, *, weights=None, n_draws: int = 200, targets=(),
                               credible_interval: float = 90, seed: int = 0,
                               **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Model-averaged steady-state exposure and target attainment of a regimen grid.

    Each model evaluates the grid (:func:`bayesnlme.evaluate.regimens.evaluate_regimens`, same
    settings and seed) with its share of ``n_draws``; the per-subject metrics are pooled and
    summarised as one table, so each target's attainment probability is the weighted average of
    the models' and the percentiles are those of the mixture.

    Returns
    -------
    table : pandas.DataFrame
        As :func:`evaluate_regimens`'s, plus ``WEIGHTS`` (the weights, as text).
    metrics : pandas.DataFrame
        Per simulated subject and draw, with ``MODEL``.
    """
    named = named_results(results)
    check_same_data(named)
    w = model_weights(named, weights)
    counts = allocate(w, n_draws)
    tables, frames = [], []
    for i, (k, res) in enumerate(named.items()):
        if counts[k] == 0:
            continue
        table, metrics = evaluate_regimens(res, doses, intervals, n_draws=counts[k], targets=targets,
                                           credible_interval=credible_interval, seed=seed, **kwargs)
        metrics.insert(0, "MODEL", k)
        metrics["DRAW"] = metrics["DRAW"].astype(np.int64) + i * 10_000_000   # draws of different models apart
        tables.append(table)
        frames.append(metrics)
    metrics = pd.concat(frames, ignore_index=True)
    t0 = tables[0]
    keys = list(zip(t0["REGIMEN"], t0["BAND"], t0["DOSE"], t0["II"]))
    table = summarise_metrics(metrics, keys, float(t0["DURATION"].iloc[0]), list(targets), credible_interval)
    table["WEIGHTS"] = ", ".join(f"{k} {v:.3f}" for k, v in w.items())
    return table, metrics
