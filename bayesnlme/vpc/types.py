"""Which observation type (DVID) a VPC shows, its censoring (BLQ), and VPCs of non-continuous types.

A fit with several observation types (joint PK/PD, a concentration and a
binary response...) gets one VPC per type: :func:`select_type` picks the
records of ``dvid`` and refuses to mix types.  A continuous type gets the
percentile VPC of :mod:`bayesnlme.vpc`; a bernoulli, ordinal or count type the
categorical VPC and a time-to-event type the Kaplan--Meier VPC of
:mod:`bayesnlme.vpc.outcomes` (:func:`outcome_vpc_table`).

Censored records (``CENS = 1``, BLQ) of a continuous type are handled as
in Bergstrand et al. (AAPS J 2009): the observation is known only to lie below
its LLOQ, so it is ranked below every quantified value (:func:`censored_observations`),
an observed percentile that falls among the censored values is not reported,
and a ``BLQ_FRACTION`` row per bin compares the observed fraction of ``CENS = 1``
records with the simulated fraction below each record's LLOQ.
"""

from __future__ import annotations

import numpy as np

from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.event_times import simulate_event_times, tte_observed
from bayesnlme.evaluate.outcomes import record_lloq, type_index
from bayesnlme.evaluate.simulate import simulate
from bayesnlme.spec.families import FAMILIES
from bayesnlme.vpc import outcomes as vo

CATEGORICAL = tuple(name for name, family in FAMILIES.items() if family.vpc == "categorical")


def select_type(spec, data, dvid=None):
    """The observation model a VPC shows and its records.

    Parameters
    ----------
    spec : ModelSpec
    data : NMData
    dvid : int, optional
        Required when the spec has several observation types.

    Returns
    -------
    model : bayesnlme.spec.observation.ObservationModel
    mask : numpy.ndarray of bool, shape (n_obs,)

    Raises
    ------
    BayesNLMEInputError
        Several types and no ``dvid``, an unknown ``dvid``, or no records of it.
    """
    pairs = type_index(spec.observation_models(), data)
    known = ", ".join(f"DVID {m.dvid} ({m.output}, {m.likelihood})" for m, _ in pairs)
    if dvid is None:
        if len(pairs) > 1:
            raise BayesNLMEInputError(f"the fit has {len(pairs)} observation types ({known}): a VPC shows one; "
                                      f"choose it with dvid= (bayesnlme vpc --dvid)")
        model, idx = pairs[0]
    else:
        match = [(m, i) for m, i in pairs if m.dvid is not None and int(m.dvid) == int(dvid)]
        if not match:
            raise BayesNLMEInputError(f"dvid={dvid} is not an observation type of this fit"
                                      + (f" (its types: {known})" if pairs[0][0].dvid is not None
                                         else " (it has a single observation type without DVID: leave dvid out)"))
        model, idx = match[0]
    if not len(idx):
        raise BayesNLMEInputError(f"no observation records of DVID {model.dvid} in {data.source}")
    mask = np.zeros(data.n_obs, bool)
    mask[idx] = True
    return model, mask


def censored_observations(data, mask, lloq, models):
    """Observed values and per-record LLOQ of the selected records, censored records ranked lowest.

    Returns
    -------
    y : numpy.ndarray, shape (n_sel,)
        DV, with ``-inf`` at ``CENS = 1`` records (known only to lie below their LLOQ).
    limits : numpy.ndarray or float or None
        Each record's LLOQ (:func:`bayesnlme.evaluate.outcomes.record_lloq`) when
        the records include ``CENS = 1`` ones; else the user ``lloq`` (scalar or None).
    """
    y = data.obs_dv[mask].astype(float)
    cens = np.zeros(len(y), int) if data.obs_cens is None else np.asarray(data.obs_cens)[mask]
    if not (cens == 1).any():
        return y, lloq
    limits = record_lloq(data, lloq, models)[mask]
    y[cens == 1] = -np.inf
    return y, limits


def outcome_vpc_table(result, model, mask, sim=None, *, n_sim=200, time=None, bins=8, strata=None, pi=90.0,
                      seed=0, categories=None):
    """Categorical (bernoulli, ordinal, counts) or Kaplan--Meier (tte) VPC table of one observation type.

    Parameters
    ----------
    model, mask
        From :func:`select_type`.
    sim : Simulation, optional
        Simulations of the fitted design (categorical types; made here when absent).
    time : array, shape (n_obs,), optional
        Binning variable of every record (default TIME).
    bins : int or sequence
        Quantile bins or bin edges of ``time`` (categorical types).
    strata : array, shape (n_obs,), optional
        Stratum label of every record.
    categories : sequence, optional
        Categories whose proportions are checked (default: all of a
        bernoulli/ordinal type; 0.. the observed 90th percentile, at most 8, for counts).

    Returns
    -------
    pandas.DataFrame
        :data:`bayesnlme.vpc.outcomes.CATEGORICAL_COLUMNS` (per bin and
        category) or :data:`bayesnlme.vpc.outcomes.KM_COLUMNS` (per time).
    """

    data = result.data
    if model.family.event_time:

        obs_time, obs_event, idx = tte_observed(result, dvid=model.dvid)
        sim_time, sim_event = simulate_event_times(result, n_draws=n_sim, seed=seed, dvid=model.dvid)
        return vo.km_vpc_table(obs_time, obs_event, sim_time, sim_event, pi=pi,
                               strata=strata[idx] if strata is not None else None)
    if model.family.vpc != "categorical":
        raise BayesNLMEInputError(f"no VPC for a {model.likelihood} observation type")

    sim = simulate(result, n_draws=n_sim, seed=seed) if sim is None else sim
    time = data.obs_time.astype(float) if time is None else np.asarray(time, float)
    y = data.obs_dv[mask].astype(float)
    if categories is None:
        categories = _default_categories(model, y)
    return vo.categorical_vpc_table(y, sim.dv[:, mask], time[mask], bins=bins, categories=categories, pi=pi,
                                    strata=strata[mask] if strata is not None else None)


def _default_categories(model, y):
    """Every category of a bernoulli/ordinal type; for counts 0..the observed 90th percentile (at most 8)."""
    return model.family.default_categories(model, y)


__all__ = ["select_type", "censored_observations", "outcome_vpc_table", "CATEGORICAL"]
