"""One patient's model for individualisation: the records, the cached compiled model, the population
draws, the log-likelihood at many parameter sets and the MAP-Bayes estimate.

Used by :mod:`bayesnlme.evaluate.individualize` (the full-Bayes posterior) and
:mod:`bayesnlme.evaluate.individual_dosing` (profiles and dose finding).  Compiled models are kept in a
module-level cache keyed by the spec and the patient's *design* -- dose records, times and covariates;
the measured levels are a data container (``DV_data``) of the compiled functions, and the ID is blanked --
so another call for the same patient, or for another patient sampled at the same times, compiles nothing.

MAP-Bayes (:func:`map_estimate`): the ETAs minimising ``-log p(y | eta, theta) - log p(eta | theta)`` at
fixed population values (the population posterior median), by BFGS on the compiled gradient, in the
standardised random effects ``z`` (ETA = L z, L the Cholesky factor of OMEGA; the map is linear, so the
mode in ``z`` is the mode in ETA) -- the estimate of mapbayr and of NONMEM's ``MAXEVAL=0 POSTHOC``.

Inter-occasion variability.  ``z`` also holds the standardised KAPPAs of each occasion with a measured
level (the layout of :class:`bayesnlme.evaluate.importance.RandomEffects`: ETAs, then ``kappa_z`` per
occasion in order of appearance), so the posterior and the MAP cover them with the ETAs.  A patient file
without an ``OCC`` column is one occasion (as NONMEM would read it: one KAPPA for all records).  Any other
occasion of a prediction design -- a dose-only occasion, a proposed regimen, the steady state of a dose
table -- has no level to inform it (:func:`design_draws`): ``future="new"`` (default) draws its
standardised KAPPA from N(0, 1) for every posterior sample, so predictions carry the population's IOV
(the prediction of mapbayr and of NONMEM for a new occasion); ``future="last"`` keeps the KAPPA of the
patient's last occasion with a level (the patient stays as they were when last measured).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pymc as pm
import pytensor
from scipy import optimize

from bayesnlme.build import build_model, occasions
from bayesnlme.data import read_nonmem
from bayesnlme.errors import BayesNLMEInputError, DataError
from bayesnlme.evaluate.importance import random_effects, z_to_draws
from bayesnlme.evaluate.predict import compiled_function, evaluate_draws, thinned_draws
from bayesnlme.spec import ModelSpec
from bayesnlme.structural import static_shapes

#: What a design's occasion without a measured level takes: a KAPPA drawn from the population, or the last one.
FUTURE_OCCASIONS = ("new", "last")
_CACHE: OrderedDict = OrderedDict()
#: Patient designs (and prior draws) kept compiled in the process.
CACHE_SIZE = 16

# ---------------------------------------------------------------------------- the patient and the model


def read_patient(patient, spec: ModelSpec):
    """Read one patient's NONMEM-format records and check them against the spec.

    Parameters
    ----------
    patient : path, pandas.DataFrame or NMData
        Records of one ID: doses (``AMT``, ``RATE``/``DUR``, ``II``, ``ADDL``, ``SS``), covariates the
        spec uses, and measured levels (``EVID=0``, ``MDV=0``; none is allowed: the posterior is then the
        prior).  With inter-occasion variability, ``OCC`` numbers the occasions (absent: every record is
        occasion 1).

    Returns
    -------
    NMData

    Raises
    ------
    DataError, SpecError
        One line naming the file, row and column (a missing column, several IDs, no dose ...).
    """
    data = read_nonmem(patient)
    if data.n_subjects != 1:
        raise DataError(f"the patient file holds {data.n_subjects} subjects (IDs "
                        f"{', '.join(map(str, data.ids[:5]))}{' ...' if data.n_subjects > 5 else ''}); give one "
                        f"patient's records", source=data.source, column="ID")
    if not data.frame["EVID"].isin([1, 4]).any():
        raise DataError("the patient has no dose record (EVID=1, AMT > 0)", source=data.source, column="AMT")
    concentration_type(spec)   # a spec whose types observe no concentration: one line
    if any(par.omega_iov is not None for par in spec.parameters.values()) and "OCC" not in data.frame.columns:
        data = read_nonmem(data.records.assign(OCC=1), name=data.source)   # no OCC: one occasion
    spec.bind(data)   # a covariate column the model needs and the patient lacks: one line naming it
    return data


def concentration_type(spec: ModelSpec):
    """The observation model of the concentration that profiles and dose finding predict.

    A ``[residual]`` spec: its one model.  With ``[[observations]]`` (e.g. PK and PD levels by ``DVID``):
    the continuous type observing the structural model's first output (``CP``); the other types' levels
    inform the individual posterior (every measured level does) but are not predicted.

    Raises
    ------
    BayesNLMEInputError
        No continuous observation type of the first output.
    """
    output = spec.structural.outputs[0]
    m = spec.observation_model_of(output, continuous=True)
    if m is not None:
        return m
    models = spec.observation_models()
    raise BayesNLMEInputError(f"individualisation predicts the concentration {output}, but no observation type "
                              f"of {spec.name} observes it with a continuous likelihood "
                              f"(types: {', '.join(f'DVID {m.dvid} {m.output} {m.likelihood}' for m in models)})")


def design_key(spec: ModelSpec, data) -> tuple:
    """Cache key of a patient design: the spec and the records with the observed DV and the ID blanked.

    The ID is not part of the design: what the cached model reports of its own subjects (occasion labels,
    times, observation types) does not depend on it, and the patient's own records are kept apart
    (:attr:`IndividualPosterior.patient`), so another patient sampled at the same times compiles nothing.
    """
    frame = data.records.copy()
    frame.loc[data.frame["_OBS"].to_numpy(bool), "DV"] = 0.0
    frame["ID"] = 0
    rows = pd.util.hash_pandas_object(frame, index=False).to_numpy()   # one hash per row, in record order
    digest = hashlib.sha256(rows.tobytes()).hexdigest()
    return repr(spec.to_dict()), id(spec.structural), digest, tuple(frame.columns)


def patient_model(spec: ModelSpec, data, *, check_residual: bool = True):
    """The built model of one patient's design, from the module cache (compiled functions included).

    The observed DV is a data container (``DV_data``) set to this patient's levels, so a cached model
    serves every patient with the same doses, times and covariates.  Returns ``(built, loglik)`` with
    ``loglik`` the per-record log-likelihood graph of the container's DV.
    """
    data = read_nonmem(data)
    key = design_key(spec, data) + (check_residual,)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        built, loglik = _CACHE[key]
        if check_residual:
            build_model(spec, data)   # the checks of DV against the residual model (no compilation)
    else:
        built = build_model(spec, data, check_residual=check_residual, dv_data=True)
        loglik = built.loglik   # of the DV_data container where DV is one
        _CACHE[key] = (built, loglik)
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    if "DV_data" in built.model.named_vars:
        built.model.set_data("DV_data", data.obs_dv)
    elif not np.array_equal(built.data.obs_dv, data.obs_dv):   # censored records: DV stays a constant
        built = build_model(spec, data, check_residual=check_residual)
        loglik = built.loglik
    return built, loglik


def _random_names(spec: ModelSpec, names) -> set:
    return {n for n in names if n in ("eta_z", "kappa_z") or (n.startswith("eta_") and n[4:] in spec.parameters)}


def population_draws(source, built, n_draws: int, seed: int) -> tuple[dict, str]:
    """Population parameter draws (leading dimension = draw) and a label saying where they come from.

    A :class:`FitResult`: its posterior, evenly thinned to ``n_draws``.  A :class:`ModelSpec`: ``n_draws``
    draws from its priors (a published model with informative priors; cached per spec and seed).
    """
    random = _random_names(built.spec, [rv.name for rv in built.model.free_RVs])
    names = [rv.name for rv in built.model.free_RVs if rv.name not in random]
    if isinstance(source, ModelSpec):
        # the names: a categorical effect exists for the patient's own level only
        key = ("prior", repr(source.to_dict()), tuple(names), n_draws, seed)
        if key not in _CACHE:
            log = logging.getLogger("pymc")
            level = log.level
            log.setLevel(logging.WARNING)    # PyMC announces every prior draw on INFO
            try:
                with built.model:
                    prior = pm.sample_prior_predictive(draws=n_draws, var_names=names, random_seed=seed)
            finally:
                log.setLevel(level)
            _CACHE[key] = {n: prior.prior[n].values.reshape(n_draws, *prior.prior[n].shape[2:]) for n in names}
        return dict(_CACHE[key]), f"the priors of {source.name} ({n_draws} draws)"
    _, draws = thinned_draws(source, n_draws)
    missing = [n for n in names if n not in draws]
    if missing:
        raise BayesNLMEInputError(f"the fit has no draws of {', '.join(missing)}: the patient's model differs "
                                  f"from the fitted one")
    n = len(next(iter(draws.values())))
    return {k: draws[k] for k in names}, f"the posterior of the fit of {source.spec.name} ({n} draws)"


# ---------------------------------------------------------------------------- evaluation


def _loglik_fn(built, loglik):
    """Compiled ``(sum of log-likelihood, its gradient per random-effect variable)``, vectorised over draws."""
    info = random_effects(built)
    rvs = [built.model[n] for n in info.names]

    def make():
        (total,) = static_shapes([loglik.sum()])     # before the gradient: it is vectorised over draws
        return [total, *pytensor.grad(total, rvs)] if rvs else [total]
    return compiled_function(built, ("individualize.loglik", id(loglik)), make)


def with_z(built, theta: dict, z: np.ndarray) -> dict:
    """Free-variable draws of the patient's model: population values and random effects from ``z`` (K, d)."""
    draws = z_to_draws(built, z[:, None, :], theta)
    return {k: np.asarray(v) for k, v in draws.items()}


def occasion_labels(data) -> tuple[np.ndarray, list[str]]:
    """Each observation's occasion index and each occasion's ``OCC`` label (without the ID) of one design."""
    if data.n_obs == 0:
        return np.zeros(0, int), []
    index, labels = occasions(data)
    first = np.unique(index, return_index=True)[1]
    ids = [str(data.ids[s]) for s in data.obs_subject[first]]
    return index, [label[len(i) + 1:] for i, label in zip(ids, labels)]


def design_draws(built, patient, theta: dict, z: np.ndarray, *, future: str = "new", seed: int = 0) -> dict:
    """Free-variable draws of a model of the patient's spec on a design whose every subject is the patient.

    Parameters
    ----------
    built : BuiltModel
        The design's model (:func:`patient_model`).
    patient : NMData
        The patient's records (the occasions ``z`` holds KAPPAs of: those with a measured level).
    theta : dict
        Population values, leading dimension K.
    z : numpy.ndarray, shape (K, d)
        The patient's standardised random effects (ETAs, then KAPPAs per occasion with a level).
    future : {"new", "last", "mode"}
        What a design occasion whose ``OCC`` label has no measured level takes: a standardised KAPPA drawn
        from N(0, 1) per sample (one draw per label, shared by the design's subjects: a dose table's
        candidates are compared at the same occasion), the KAPPA of the patient's last occasion with a
        level (``"new"`` when there is none), or 0 (``"mode"``: a prediction at the MAP estimate).
    seed : int
        Seed of the new occasions' draws.
    """
    if future not in FUTURE_OCCASIONS + ("mode",):
        raise BayesNLMEInputError(f"future_occasion must be 'new' or 'last', got {future!r}")
    info = random_effects(built)
    n_sub, k = built.data.n_subjects, len(z)
    eta = np.repeat(z[:, None, :info.n_eta], n_sub, axis=1)
    if not info.n_iov:
        return {key: np.asarray(v) for key, v in z_to_draws(built, eta, theta).items()}
    own_index, own_labels = occasion_labels(patient)
    own = {label: slot for slot, label in enumerate(own_labels)}
    last = int(own_index[-1]) if len(own_index) else None
    rng, fresh = np.random.default_rng(seed), {}
    slots = np.zeros((k, n_sub, info.n_slots, info.n_iov))
    for j, label in enumerate(occasion_labels(built.data)[1]):
        slot = own.get(label, last if future == "last" else None)
        if slot is None:
            if label not in fresh:
                fresh[label] = np.zeros((k, info.n_iov)) if future == "mode" else rng.standard_normal((k, info.n_iov))
            kz = fresh[label]
        else:
            kz = z[:, info.n_eta + slot * info.n_iov:info.n_eta + (slot + 1) * info.n_iov]
        slots[:, info.occ_subject[j], info.occ_slot[j]] = kz
    full = np.concatenate([eta, slots.reshape(k, n_sub, -1)], axis=2)
    return {key: np.asarray(v) for key, v in z_to_draws(built, full, theta).items()}


def loglik_at(built, loglik, theta: dict, z: np.ndarray, *, gradient: bool = False, chunk: int = 4000):
    """The patient's log-likelihood ``log p(y | theta, z)`` at K parameter sets.

    Parameters
    ----------
    theta : dict of str -> numpy.ndarray
        Population values, leading dimension K.
    z : numpy.ndarray, shape (K, d)
        Standardised random effects.
    gradient : bool
        Also return d loglik / d z, shape (K, d).
    """
    names, fn = _loglik_fn(built, loglik)
    info = random_effects(built)
    out, grads = [], []
    for start in range(0, len(z), chunk):
        sl = slice(start, start + chunk)
        draws = with_z(built, {k: v[sl] for k, v in theta.items()}, z[sl])
        res = fn(*[draws[n] for n in names])
        out.append(np.asarray(res[0], float))
        if gradient:
            g = [np.asarray(res[1 + i])[:, 0, :] for i, n in enumerate(info.names) if n == "eta_z"]
            for j, p in enumerate(info.centred):
                omega = np.asarray(draws.get(f"omega_{p}", built.spec.parameters[p].omega_fixed), float)
                g.append((np.asarray(res[1 + info.names.index(f"eta_{p}")])[:, 0] * omega)[:, None])
            if info.n_iov:   # d/d kappa_z (K, n_occ, n_iov) into the patient's occasion slots
                g.append(np.asarray(res[1 + info.names.index("kappa_z")])[:, np.argsort(info.occ_slot)]
                         .reshape(len(res[0]), -1))
            grads.append(np.concatenate(g, axis=1) if g else np.zeros((len(res[0]), 0)))
    ll = np.concatenate(out)
    ll = np.where(np.isnan(ll), -np.inf, ll)
    return (ll, np.concatenate(grads)) if gradient else ll


# ---------------------------------------------------------------------------- MAP


@dataclass(frozen=True)
class MapEstimate:
    """The MAP-Bayesian estimate of the patient's random effects at fixed population values.

    Attributes
    ----------
    theta : dict
        The population values used (posterior medians), natural units.
    z : numpy.ndarray, shape (d,)
        Standardised random effects at the mode (ETA = L z).
    eta : dict of str -> float
        ETA per parameter with IIV.
    parameters : dict of str -> float
        Individual parameters at the mode (natural units, e.g. CL in L/h).
    objective : float
        ``-log p(y | eta) - log p(eta)`` at the mode, up to the constant of the prior (nats).
    covariance : numpy.ndarray, shape (d, d)
        Laplace covariance of ``z`` (inverse Hessian of the objective).
    converged : bool
    kappa : dict of str -> float
        With inter-occasion variability, KAPPA per ``<P>_OCC<occasion>`` (occasions with a level);
        ``parameters`` are then the subject's values without KAPPA.
    """
    theta: dict
    z: np.ndarray
    eta: dict
    parameters: dict
    objective: float
    covariance: np.ndarray
    converged: bool
    kappa: dict = field(default_factory=dict)


def map_estimate(built, loglik, theta_median: dict) -> MapEstimate:
    """MAP-Bayes ETAs (and KAPPAs of the occasions with a level) at ``theta_median`` (BFGS on the compiled
    gradient; Laplace covariance by differences).

    Parameters
    ----------
    built, loglik
        From :func:`patient_model`.
    theta_median : dict
        Population values, each without a draw dimension.
    """
    d = random_effects(built).n_re
    theta1 = {k: np.asarray(v)[None] for k, v in theta_median.items()}

    def objective(z):
        ll, g = loglik_at(built, loglik, theta1, z[None], gradient=True)
        if not np.isfinite(ll[0]):
            return 1e300, np.zeros(d)
        return -ll[0] + 0.5 * z @ z, -g[0] + z

    res = optimize.minimize(objective, np.zeros(d), jac=True, method="BFGS", options={"gtol": 1e-9, "maxiter": 500})
    z = res.x
    hess = np.empty((d, d))
    h = 1e-5
    for i in range(d):
        e = np.zeros(d)
        e[i] = h
        hess[i] = (objective(z + e)[1] - objective(z - e)[1]) / (2 * h)
    hess = 0.5 * (hess + hess.T)
    try:
        cov = np.linalg.inv(hess)
        np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        cov = np.eye(d)
    draws = with_z(built, theta1, z[None])
    out = evaluate_draws(built, draws, tuple(f"individual.{p}" for p in built.spec.parameters))
    params = {p: float(out[f"individual.{p}"][0, 0]) for p in built.spec.parameters}
    eta = dict(zip(built.spec.eta_parameters, np.ravel(patient_eta(built, draws)[0])))
    kappa = {name: float(v[0]) for name, v in patient_kappa(built, draws).items()}
    return MapEstimate(theta=dict(theta_median), z=z, eta=eta, parameters=params, objective=float(res.fun),
                       covariance=cov, converged=bool(res.success or np.linalg.norm(res.jac) < 1e-5), kappa=kappa)


def patient_eta(built, draws: dict) -> np.ndarray:
    """ETA (K, n_eta) of the patient at stacked draws."""
    names, fn = compiled_function(built, "individualize.eta", lambda: [built.model["ETA"]])
    return np.asarray(fn(*[draws[n] for n in names])[0])[:, 0, :]


def patient_kappa(built, draws: dict) -> dict:
    """KAPPA (K,) of the patient per ``<P>_OCC<occasion>`` at stacked draws; empty without IOV."""
    info = random_effects(built)
    if not info.n_iov:
        return {}
    names, fn = compiled_function(built, "individualize.kappa", lambda: [built.model["KAPPA"]])
    kappa = np.asarray(fn(*[draws[n] for n in names])[0])       # (K, n_occ, n_iov)
    iov = [p for p, par in built.spec.parameters.items() if par.omega_iov is not None]
    return {f"{p}_OCC{label}": kappa[:, j, i] for j, label in enumerate(occasion_labels(built.data)[1])
            for i, p in enumerate(iov)}
