"""Turn a :class:`~bayesnlme.spec.ModelSpec` and data into one PyMC model.

This module (with :mod:`~bayesnlme.build.random_effects` and the other modules of
:mod:`bayesnlme.build`) is the only place that creates PyMC random variables.  The model has

* coords ``ID`` (subjects), ``obs`` (observation records, labelled by their
  1-based record number) and ``eta_parameter`` (parameters with an ETA);
* one free variable per estimated typical value, named by its symbol
  (``CL``, ``V`` ...), ``omega_<P>`` (SD of ETA on P), ``corr_<P1>_<P2>``
  (a deterministic from the LKJ correlation of an OMEGA block), covariate
  effects ``<COV>_on_<P>`` and residual SDs ``sigma_add`` / ``sigma_prop`` /
  ``sigma_exp``;
* non-centred random effects ``eta_z`` (standard normal, dims ID x
  eta_parameter) and the deterministic ``ETA`` = z scaled by OMEGA (and its
  Cholesky factor for blocks); NUTS samples the same distribution written
  through each ETA's population mean and spread, ``eta_z`` then a
  deterministic (:mod:`~bayesnlme.build.random_effects`);
* the observed variable ``DV`` (dims ``obs``), whose pointwise log-likelihood
  ArviZ uses for LOO.

Everything is vectorised: individual parameters are computed for all subjects
at once, gathered to observations, and the structural model superposes all
doses with array operations; there is no Python loop over subjects or
observations in the graph.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import pymc as pm
import pytensor
import pytensor.tensor as pt

from bayesnlme.build.covariates import covariate_log_factors
from bayesnlme.build.mixture import build_mixture, check_mixture_data
from bayesnlme.build.observations import (
    censoring_by_data,
    check_zero_prediction,
    dv_draw_inputs,
    observation_parameters,
    pointwise_loglik,
)
from bayesnlme.build.priors import estimate, prior_rv
from bayesnlme.build.random_effects import PARAMETERISATIONS, covariate_designs, random_effects, uses_population
from bayesnlme.data import NMData, read_nonmem
from bayesnlme.errors import DataError, SpecError
from bayesnlme.spec import ModelSpec
from bayesnlme.spec.families import put, take
from bayesnlme.spec.observation import check_data
from bayesnlme.structural import LIBRARY, DoseEvents, dose_events
from bayesnlme.structural.pd import time_varying
from bayesnlme.structural.pk import SubjectParams

# numba's fastmath is off for model graphs (bit-reproducible draws): set where the ODE integrator, the
# lowest compiled code, is defined (bayesnlme.structural.ode), so that it holds whatever is imported first.


@dataclass(frozen=True)
class BuiltModel:
    """A PyMC model made from a spec and data.

    Attributes
    ----------
    model : pymc.Model
    spec : ModelSpec
        The spec bound to the data (categorical levels filled in).
    data : NMData
    initial_point : dict
        Sampler start values by variable name (prior medians of typical
        values, ETA = 0), so oral models start in the absorption-faster-than-
        elimination mode rather than the flip-flop one.
    """
    model: pm.Model
    spec: ModelSpec
    data: NMData
    initial_point: dict
    ipred: object = None
    pred: object = None
    residual_sd: object = None
    individual: dict = None
    excluded: object = None   # ROW numbers dropped from the likelihood (BLQ M1)
    loglik: object = None     # per-record log-likelihood (n_obs,): the very graph behind DV's density
    mixture: dict = None      # [mixture]: per-component tensors (bayesnlme.build.mixture.build_mixture)


def occasions(data: NMData) -> tuple[np.ndarray, list[str]]:
    """Each observation's (subject, occasion) index and the labels ``"<ID>/<OCC>"``.

    Raises
    ------
    DataError
        The data have no ``OCC`` column or an observation has no occasion.
    """
    if "OCC" not in data.frame.columns:
        raise DataError("inter-occasion variability (omega_iov) needs an OCC column", source=data.source,
                        column="OCC")
    occ = data.frame.loc[data.frame["_OBS"], "OCC"].to_numpy()
    if pd.isna(occ).any():
        i = int(np.flatnonzero(pd.isna(occ))[0])
        raise DataError("observation without an occasion (OCC is missing)", source=data.source,
                        row=int(data.obs_row[i]), column="OCC")
    keys = pd.Series([f"{data.ids[s]}/{_occ_label(o)}" for s, o in zip(data.obs_subject, occ)])
    index, labels = pd.factorize(keys)
    return index, list(labels)


def _occ_label(o) -> str:
    return str(int(o)) if isinstance(o, float) and o.is_integer() else str(o)


def _occasion_effects(spec: ModelSpec, occ_index, init: dict) -> dict:
    """KAPPA per parameter at each observation, shape (n_obs,): non-centred, ``KAPPA = z * omega_iov``."""
    names = [p for p, par in spec.parameters.items() if par.omega_iov is not None]
    if not names:
        return {}
    # no static shape: predictions at other times (evaluate.predict_at_times) build the model on a design with
    # other occasions and evaluate it at the fit's KAPPA draws
    z = pm.Normal("kappa_z", 0.0, 1.0, dims=("OCC", "iov_parameter"))
    init["kappa_z"] = np.zeros((int(occ_index.max()) + 1, len(names)))
    kappa = []
    for i, p in enumerate(names):
        prior = spec.parameters[p].omega_iov
        init[f"omega_iov_{p}"] = min(prior.median(), 0.2)
        kappa.append(z[:, i] * prior_rv(f"omega_iov_{p}", prior))
    kappa = pm.Deterministic("KAPPA", pt.stack(kappa, axis=1), dims=("OCC", "iov_parameter"))
    return {p: kappa[occ_index, i] for i, p in enumerate(names)}


def individual_parameters(spec: ModelSpec, data: NMData, init: dict, occ_index=None, switches: dict | None = None,
                          parameterisation: str = "subject") -> tuple[dict, dict, dict, dict]:
    """Individual and typical-subject parameters (ETAs in ``parameterisation``, :mod:`~bayesnlme.build.random_effects`).

    Returns
    -------
    individual, typical : dict
        Per-subject parameters, shape (n_subjects,): typical values, baseline
        covariate effects and ETAs combined (``typical``: ETA = 0, each
        subject's covariates kept -- the parameters behind PRED).
    obs_log_individual, obs_log_typical : dict
        Log multipliers at each observation, shape (n_obs,), for parameters
        that change within a subject: time-varying covariates and (individual
        only) KAPPA.  Empty when nothing changes within subjects.

    Notes
    -----
    With time-varying covariates or IOV a parameter changes between
    observations of a subject; closed-form models then evaluate each
    observation with the parameters in force at that observation (for all
    earlier doses).  That is exact while parameters are constant over the time
    a dose's drug is in the body (occasions separated by wash-out, slowly
    changing covariates) and an approximation otherwise.  ODE models make the parameters
    piecewise constant in time instead, which is exact (:mod:`bayesnlme.structural.ode`).
    """
    designs = (covariate_designs(spec, data, switches)
               if parameterisation == "population" and uses_population(spec, data.n_subjects) else {})
    if designs:   # typical values and thetas as one regression: its thetas made with the ETAs
        eta, tvs = random_effects(spec, data.n_subjects, init, parameterisation, designs)
        cov_sub, cov_obs = covariate_log_factors(spec, data, init, switches, given=tvs)
    else:
        cov_sub, cov_obs = covariate_log_factors(spec, data, init, switches)
        eta, tvs = random_effects(spec, data.n_subjects, init, parameterisation)
    kappa = _occasion_effects(spec, occ_index, init) if occ_index is not None else {}
    ones = np.ones(data.n_subjects)
    individual, typical = {}, {}
    for p, par in spec.parameters.items():
        tv = tvs[p] if p in tvs else estimate(p, par.prior, par.fixed, init)
        for out, e in ((individual, eta.get(p, 0.0)), (typical, 0.0)):
            if par.iiv == "lognormal" or (par.iiv == "none" and (p in cov_sub or p in cov_obs)):
                out[p] = pt.exp(pt.log(tv) + cov_sub.get(p, 0.0) + e) * ones
            elif par.iiv == "normal":
                out[p] = (tv * pt.exp(cov_sub.get(p, 0.0)) + e) * ones
            elif par.iiv == "logit":
                out[p] = pm.math.invlogit(pt.log(tv) - pt.log1p(-tv) + e) * ones
            else:
                out[p] = tv * ones
    obs_typical = dict(cov_obs)
    obs_individual = {p: cov_obs.get(p, 0.0) + kappa.get(p, 0.0) for p in set(cov_obs) | set(kappa)}
    return individual, typical, obs_individual, obs_typical


def at_observations(params: dict, obs_log: dict, data: NMData) -> dict:
    """Per-subject parameters gathered to observations, times their within-subject multipliers.

    Without such multipliers the result is a :class:`~bayesnlme.structural.pk.SubjectParams`: the
    closed-form models then derive their rate constants once per subject."""
    # the index as a tensor: PyTensor checks a NumPy index for booleans element by element (75 ms a
    # gather at 100,000 records)
    index = pt.as_tensor_variable(data.obs_subject)
    out = {p: v[index] for p, v in params.items()}
    if not obs_log:
        return SubjectParams(out, dict(params), data.obs_subject)
    for p, term in obs_log.items():
        out[p] = out[p] * pt.exp(term)
    return out


def _check_dosed(spec: ModelSpec, data: NMData) -> None:
    """A library PK model predicts 0 for every observation of a subject never dosed: a data error."""
    st = spec.structural
    if spec.observations or tuple(st.outputs) != ("CP",) or LIBRARY.get(st.name) is not st:
        return   # PD/outcome types can be observed without a dose (placebo, baseline); user models may not need one
    frame = data.frame
    dosed = np.zeros(data.n_subjects, bool)
    dosed[frame.loc[frame["EVID"].isin([1, 4]), "_SUBJ"].to_numpy(int)] = True
    undosed = ~dosed[data.obs_subject]
    if undosed.any():
        subject = int(data.obs_subject[np.flatnonzero(undosed)[0]])
        n_obs = int((data.obs_subject == subject).sum())
        others = int((~dosed[np.unique(data.obs_subject)]).sum()) - 1
        also = f" ({others} more subjects like it)" if others > 0 else ""
        raise DataError(f"subject {data.ids[subject]} has {n_obs} observations and no dose{also}: the PK "
                        f"model predicts 0 at every one; add its dose records (EVID=1, AMT > 0) or remove "
                        f"the subject", source=data.source, row=int(data.obs_row[np.flatnonzero(undosed)[0]]),
                        column="AMT")


def _build_mixture(model, spec, data, doses, init, parts, dv_data) -> BuiltModel:
    """A ``[mixture]`` model: one prediction per component, DV's density marginalised over membership."""
    check_mixture_data(spec, data)
    individual, typical, obs_ind, obs_typ = parts
    cens = data.obs_cens if data.obs_cens is not None else np.zeros(data.n_obs, int)
    dropped = (cens != 0) & (spec.residual.blq == "m1")      # M1: out of the likelihood (log-density 0)
    dv, _ = _dv_container(model, spec, data, dv_data)
    observed = data.obs_dv if dv is None else dv
    m = spec.observation_models()[0]   # the [residual] one
    p = observation_parameters(m, init)

    def component(ind, typ):
        ipred = _outputs(spec, data, doses, ind, obs_ind)[m.output]
        sd = m.family.residual_sd(p, ipred)
        # censored records (M3) by their probability below/above the limit; M1-dropped ones 0
        ll = m.family.logp(m, observed, ipred, p, cens, data.obs_limit)
        if dropped.any():
            ll = pt.switch(dropped, 0.0, ll)
        return ipred, _outputs(spec, data, doses, typ, obs_typ)[m.output], sd, ll

    with model:
        out = build_mixture(spec, data, init, individual, typical, component, observed)
    return BuiltModel(model=model, spec=spec, data=data, initial_point=init,
                      excluded=data.obs_row[dropped].tolist() if dropped.any() else None, **out)


def without_traces(function):
    """``function`` run without PyTensor recording the caller's stack on every variable it creates
    (``config.traceback__limit``, for PyTensor's own error messages): ~20% of building a model and of
    deriving its log-density, ~0.1 s on theophylline.  The builder's errors name the spec and data instead."""
    @functools.wraps(function)
    def run(*args, **kwargs):
        with pytensor.config.change_flags(traceback__limit=0):   # a new context each call: re-entrant
            return function(*args, **kwargs)

    return run


@without_traces
def build_model(spec: ModelSpec, data, *, check_residual: bool = True, dv_data: bool = False,
                cens_data: bool = False, switches: dict | None = None,
                eta_parameterisation: str = "subject") -> BuiltModel:
    """Build the PyMC model for ``spec`` on ``data``.

    Parameters
    ----------
    spec : ModelSpec
    data : NMData, path or pandas.DataFrame
        NONMEM-format data (read with :func:`bayesnlme.data.read_nonmem` if needed).
    check_residual : bool
        Check DV against the residual model (off when the observation records are a design).
    dv_data : bool
        Hold the observed DV in a data container ``DV_data`` (:func:`pymc.Data`) instead of a
        constant, so that a compiled model can be sampled again for new DV values of the same design
        (:mod:`bayesnlme.inference.refit`).  Continuous observation models only: with a discrete or
        time-to-event observation model or censored records DV stays a constant (check
        ``"DV_data" in built.model.named_vars``).
    cens_data : bool
        With ``dv_data``, also hold CENS in a data container ``DV_cens`` (1 = below DV, Beal's M3), so
        that replicates with different records below an LLOQ share one compiled model (SBC).  Where
        every observation model is normal-family with ``blq = "m3"`` and the design has no
        right-censored record or interval limit (else as without it); not for ``[mixture]`` models.
    switches : dict, optional
        ``{"<COV>_on_<P>": 0 or 1}``: each named covariate effect's thetas multiplied by a data container
        ``switch_<COV>_on_<P>`` with that value.  A switched-off effect's thetas stay in the model (sampled
        from their priors, no influence on the likelihood), so models that differ only in which effects
        are on have one graph: :mod:`bayesnlme.covsearch` compiles its candidates once.
    eta_parameterisation : {"subject", "population"}
        How the ETAs are written (:mod:`bayesnlme.build.random_effects`): each subject's ``eta_z`` as a
        free variable (every evaluation's model), or through the population's mean and spread of each
        ETA with ``eta_z`` a deterministic (the same distribution; what NUTS samples).

    Returns
    -------
    BuiltModel

    Raises
    ------
    SpecError, DataError
        When the spec and data do not fit together (missing covariates,
        doses into compartments the model lacks, DV <= 0 with exponential error...).
    """
    if eta_parameterisation not in PARAMETERISATIONS:
        raise ValueError(f"eta_parameterisation must be one of {PARAMETERISATIONS}, got {eta_parameterisation!r}")
    data = read_nonmem(data)
    spec = spec.bind(data)
    # with observation types, DVID (not CMT) says what an observation record is
    doses = dose_events(_dvid_data(spec, data), spec.structural)
    check = check_residual or bool(spec.observations)   # DVIDs must match even on a design's records
    if check:   # DV in range for each observation model (the one check of every family's data)
        check_data(spec.observation_models(), data)
    if check_residual:   # off when the "observations" are prediction times, not data
        check_zero_prediction(spec, data, doses)
        _check_dosed(spec, data)
    coords = {"ID": [str(i) for i in data.ids], "obs": data.obs_row.tolist(),
              "eta_parameter": spec.eta_parameters}
    centred = [p for p in spec.eta_parameters if spec.parameters[p].centered]
    if centred and len(centred) < len(spec.eta_parameters):
        coords["eta_z_parameter"] = [p for p in spec.eta_parameters if p not in centred]
    occ_index = None
    iov = [p for p, par in spec.parameters.items() if par.omega_iov is not None]
    if iov:
        occ_index, coords["OCC"] = occasions(data)
        coords["iov_parameter"] = iov
    init: dict = {}
    with pm.Model(coords=coords) as model:
        individual, typical, obs_ind, obs_typ = individual_parameters(spec, data, init, occ_index, switches,
                                                                       eta_parameterisation)
        if spec.mixture is not None:
            return _build_mixture(model, spec, data, doses, init, (individual, typical, obs_ind, obs_typ), dv_data)
        return _build_observations(model, spec, data, doses, init, (individual, typical, obs_ind, obs_typ),
                                   dv_data=dv_data, cens_data=cens_data)


def _dvid_data(spec: ModelSpec, data: NMData) -> NMData:
    if spec.observations and data.obs_dvid is not None:

        return replace(data, obs_cmt=np.zeros_like(data.obs_cmt))
    return data


def _within_subject(spec: ModelSpec, data: NMData, obs_log: dict) -> dict:
    """Keyword arguments passing within-subject parameter changes to a per-subject structural function.

    ODE models (``piecewise``) also get the key of the data behind the changes (occasion,
    time-varying covariates), from which they make their parameters piecewise constant.
    """
    st = spec.structural
    if not obs_log:
        return {}
    if not st.per_record:
        raise SpecError(f"structural model {st.name} takes one parameter set per subject, so time-varying "
                        f"covariates and inter-occasion variability (omega_iov) cannot enter it")
    if not st.piecewise:
        return {"obs_log": obs_log}
    return {"obs_log": obs_log, "obs_key": within_subject_key(spec, data)}


def within_subject_key(spec: ModelSpec, data: NMData) -> np.ndarray:
    """Codes (n_obs,) equal for two observations of a subject whose within-subject parameter
    multipliers are equal: same occasion (with IOV) and same time-varying covariate values."""
    parts = []
    if any(par.omega_iov is not None for par in spec.parameters.values()):
        parts.append(pd.Series(occasions(data)[0]))
    tv = sorted({eff.covariate for eff in spec.covariates if eff.time_varying})
    if tv:
        frame = data.observation_covariates(tv)
        parts += [frame[c].reset_index(drop=True) for c in tv]
    if not parts:
        return np.arange(data.n_obs)
    return pd.MultiIndex.from_arrays(parts).factorize()[0] if len(parts) > 1 else pd.factorize(parts[0])[0]


def _outputs(spec: ModelSpec, data: NMData, doses: DoseEvents, params: dict, obs_log: dict) -> dict:
    """Every structural output at the records, ``{name: tensor (n_obs,)}`` (contract 1)."""
    st = spec.structural
    if st.per_subject:
        out = st.function(params, data, st, **_within_subject(spec, data, obs_log))
    else:
        out = st.function(at_observations(params, obs_log, data), doses)
    return out if isinstance(out, dict) else {st.outputs[0]: out}


def _dv_container(model, spec: ModelSpec, data: NMData, dv_data: bool, cens_data: bool = False):
    """``DV_data``, DV as a data container (a refit samples one compiled model for new DV), or None; and
    ``DV_cens``, CENS as one (1 = below DV, M3), or None.

    DV is made a container where every record's density is a function of DV: continuous observation
    models, and no censored record unless CENS is a container too (``cens_data`` and
    :func:`censoring_by_data`; a censored record's DV is its limit).
    """
    censored = data.obs_cens is not None and bool((data.obs_cens != 0).any())
    by_data = cens_data and censoring_by_data(spec, data)
    if not dv_data or (censored and not by_data) or not all(m.family.continuous for m in spec.observation_models()):
        return None, None
    cens = np.zeros(data.n_obs) if data.obs_cens is None else (data.obs_cens != 0).astype(float)
    with model:
        return (pm.Data("DV_data", data.obs_dv, dims="obs"),
                pm.Data("DV_cens", cens, dims="obs") if by_data else None)


def _build_observations(model, spec, data, doses, init, parts, *, dv_data: bool, cens_data: bool = False) -> BuiltModel:
    """The observed ``DV`` as the sum of per-record log-densities of each record's observation model.

    One path for every spec: ``[residual]`` is a single continuous observation model.  ``DV`` is a
    ``pm.CustomDist`` whose log-density is the per-record graph (so ``log_likelihood["DV"]`` is
    pointwise) and whose random draw is each record's observation model's.
    """
    st = spec.structural
    individual, typical, obs_ind, obs_typ = parts
    outs = _outputs(spec, data, doses, individual, obs_ind)
    at_times = ((lambda tq: st.function(individual, data, st, times=tq, **_within_subject(spec, data, obs_ind)))
                if time_varying(st) else None)
    dv, cens = _dv_container(model, spec, data, dv_data, cens_data)
    ll, ipred, sd, excluded, families = pointwise_loglik(spec, data, outs, init, at_times, dv=dv, cens=cens)
    pred_outs = _outputs(spec, data, doses, typical, obs_typ)
    pred = pt.zeros(data.n_obs)
    for m in spec.observation_models():
        idx = np.flatnonzero(data.obs_dvid == m.dvid) if m.dvid is not None else np.arange(data.n_obs)
        pred = put(pred, idx, take(pred_outs[m.output], idx, data.n_obs), data.n_obs)
    with model:
        # logp: the per-record log-likelihood graph; random: each record's observation model draws it
        scalars, random = dv_draw_inputs(families)
        pm.CustomDist("DV", ll, ipred, sd, *scalars, logp=lambda value, lp, *rest: lp, random=random,
                      observed=data.obs_dv if dv is None else dv, dims="obs")
    return BuiltModel(model=model, spec=spec, data=data, initial_point=init, ipred=ipred, pred=pred,
                      residual_sd=sd, individual=individual, excluded=excluded, loglik=ll)
