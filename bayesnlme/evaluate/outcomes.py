"""Simulated observations by observation type (DVID) and each record's LLOQ.

A spec with ``[[observations]]`` gives every record its own observation model
(:mod:`bayesnlme.spec.observation`).  Given the model output ``f`` at each record
(``BuiltModel.ipred``: the record's own output) and its residual SD
(``BuiltModel.residual_sd``, per type; 1 for non-continuous families), at each
posterior draw, a record's simulated DV is drawn from its likelihood:

==============  =================================================================
likelihood      simulated DV
==============  =================================================================
additive, ...   ``f + sd eps`` (``f exp(sd eps)`` for exponential), eps ~ N(0, 1);
                the *uncensored* value, also for CENS records
bernoulli       1 with probability ``expit(f)``, else 0
ordinal         category k in 0..K-1 with ``P(Y <= k) = expit(c_k - f)``
poisson         Poisson with mean ``exp(f)`` (``link = "identity"``: ``f``)
negbin          gamma--Poisson mixture: mean ``m``, ``Var = m + m^2 / phi``
tte             NaN (event times are simulated by
                :func:`bayesnlme.vpc.outcomes.simulate_event_times`)
==============  =================================================================

Cutpoints, ``phi`` and SIGMAs are those of the same posterior draw as the
record's IPRED, so parameter uncertainty propagates.

LLOQ of a record (:func:`record_lloq`): the DV of a ``CENS = 1`` record (its
limit), otherwise the data set's LLOQ for that observation type -- a user
``lloq`` if given, else the largest DV among the type's ``CENS = 1`` records;
NaN where there is none (and for non-continuous types).
"""

from __future__ import annotations

import numpy as np


def type_index(models: tuple, data) -> list:
    """Records of each observation model: ``[(model, index array), ...]``."""
    multi = len(models) > 1 or models[0].dvid is not None
    n = len(data.obs_dv)
    return [(m, np.flatnonzero(data.obs_dvid == m.dvid) if multi else np.arange(n)) for m in models]


def _value(m, base: str, draws: dict, n: int) -> np.ndarray:
    """A per-draw parameter of an observation model: shape (n,) (or (n, K-1) for cutpoints)."""
    prior = m.priors.get(base)
    if prior is not None and prior.is_fixed:
        return np.full(n, float(prior.args["value"]))
    return np.asarray(draws[base + m.suffix], float)


def draw_type(m, f: np.ndarray, sd: np.ndarray, draws: dict, rng: np.random.Generator) -> np.ndarray:
    """Simulated DV of one observation model's records.

    Parameters
    ----------
    m : bayesnlme.spec.observation.ObservationModel
    f, sd : numpy.ndarray, shape (n_draws, n_records)
        Model output at the records (IPRED; the logit, linear predictor or
        log rate for non-continuous families) and residual SD.
    draws : dict of str -> numpy.ndarray
        Posterior draws of the free variables (``phi<suffix>``, ``cutpoints<suffix>``).

    Returns
    -------
    numpy.ndarray, shape (n_draws, n_records)
    """
    params = {b: _value(m, b, draws, f.shape[0]) for b in ("phi", "cutpoints") if b in m.base_names()}
    return m.draw(f, sd, params, rng)


def observation_draw(spec, data, ipred: np.ndarray, sd: np.ndarray, draws: dict,
                     rng: np.random.Generator) -> np.ndarray:
    """Simulated DV of every record by its observation model (types in spec order).

    Parameters
    ----------
    spec : ModelSpec
    data : NMData
        The simulated design (``DVID`` picks each record's model).
    ipred, sd : numpy.ndarray, shape (n_draws, n_obs)
    draws : dict
        The posterior draws behind ``ipred`` (see :func:`draw_type`).

    Returns
    -------
    numpy.ndarray, shape (n_draws, n_obs)
    """
    dv = np.full(np.shape(ipred), np.nan)
    for m, idx in type_index(spec.observation_models(), data):
        if len(idx):
            dv[:, idx] = draw_type(m, ipred[:, idx], sd[:, idx], draws, rng)
    return dv


def record_lloq(data, lloq: float | None = None, models: tuple | None = None) -> np.ndarray | None:
    """LLOQ of each observation record (DV units), or None when the data have none.

    Parameters
    ----------
    data : NMData
    lloq : float, optional
        The data set's LLOQ for records that are not ``CENS = 1`` (default:
        the largest DV among the type's ``CENS = 1`` records).
    models : tuple of ObservationModel, optional
        Non-continuous types get NaN.

    Returns
    -------
    numpy.ndarray of float, shape (n_obs,), or None
        None without a user ``lloq`` and without ``CENS = 1`` records.
    """
    cens = data.obs_cens
    below = np.zeros(len(data.obs_dv), bool) if cens is None else np.asarray(cens) == 1
    if lloq is None and not below.any():
        return None
    types = data.obs_dvid if data.obs_dvid is not None else np.zeros(len(below), int)
    out = np.full(len(below), np.nan)
    for t in np.unique(types):
        sel = types == t
        if lloq is not None:
            out[sel] = float(lloq)
        elif (sel & below).any():
            out[sel] = data.obs_dv[sel & below].max()
    out[below] = data.obs_dv[below]
    if models is not None:
        for m, idx in type_index(models, data):
            if not m.is_normal:
                out[idx] = np.nan
    return out


__all__ = ["observation_draw", "draw_type", "record_lloq", "type_index"]
