"""Turn a :class:`~bayesnlme.spec.ModelSpec` and data into one PyMC model.

This is the only module that creates PyMC random variables.  The model has

* coords ``ID`` (subjects), ``obs`` (observation records, labelled by their
  1-based record number) and ``eta_parameter`` (parameters with an ETA);
* one free variable per estimated typical value, named by its symbol
  (``CL``, ``V`` ...), ``omega_<P>`` (SD of ETA on P), ``corr_<P1>_<P2>``
  (a deterministic from the LKJ correlation of an OMEGA block), covariate
  effects ``<COV>_on_<P>`` and residual SDs ``sigma_add`` / ``sigma_prop`` /
  ``sigma_exp``;
* non-centred random effects ``eta_z`` (standard normal, dims ID x
  eta_parameter) and the deterministic ``ETA`` = z scaled by OMEGA (and its
  Cholesky factor for blocks);
* the observed variable ``DV`` (dims ``obs``), whose pointwise log-likelihood
  ArviZ uses for LOO.

Everything is vectorised: individual parameters are computed for all subjects
at once, gathered to observations, and the structural model superposes all
doses with array operations; there is no Python loop over subjects or
observations in the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from .data import NMData, read_nonmem
from .errors import DataError
from .spec import ModelSpec, Prior
from .structural import DoseEvents, dose_events


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


_DIST_ARGS = {
    "lognormal": (pm.LogNormal, lambda a: {"mu": np.log(a["median"]), "sigma": a["sigma"]}),
    "normal": (pm.Normal, lambda a: {"mu": a["mu"], "sigma": a["sigma"]}),
    "halfnormal": (pm.HalfNormal, lambda a: {"sigma": a["sigma"]}),
    "halfcauchy": (pm.HalfCauchy, lambda a: {"beta": a["beta"]}),
    "halfstudentt": (pm.HalfStudentT, lambda a: {"nu": a["nu"], "sigma": a["sigma"]}),
    "exponential": (pm.Exponential, lambda a: {"lam": a["lam"]}),
    "uniform": (pm.Uniform, lambda a: {"lower": a["lower"], "upper": a["upper"]}),
    "truncatednormal": (pm.TruncatedNormal, lambda a: dict(a)),
    "beta": (pm.Beta, lambda a: {"alpha": a["alpha"], "beta": a["beta"]}),
}


def _prior_rv(name: str, prior: Prior, dims=None):
    cls, args = _DIST_ARGS[prior.dist]
    return cls(name, **args(prior.args), dims=dims)


def _prior_dist(priors: list):
    """One vector-valued ``.dist`` for priors of the same family (an OMEGA block's SDs)."""
    cls, args = _DIST_ARGS[priors[0].dist]
    kw = [args(p.args) for p in priors]
    return cls.dist(**{k: np.array([d[k] for d in kw], float) for k in kw[0]}, shape=len(priors))


def _estimate(name, prior, fixed, init):
    """A free RV with its prior, or the fixed value as a constant."""
    if fixed is not None:
        return pt.as_tensor_variable(float(fixed))
    init[name] = prior.median()
    return _prior_rv(name, prior)


def _covariate_log_factor(spec: ModelSpec, data: NMData, init: dict) -> dict:
    """Sum of log covariate factors per parameter, shape (n_subjects,)."""
    out = {}
    if not spec.covariates:
        return out
    base = data.baseline_covariates(spec.covariate_columns)
    for eff in spec.covariates:
        x = base[eff.covariate].to_numpy()
        if eff.kind == "categorical":
            term = 0.0
            for level, ename in zip(eff.levels, eff.effect_names()):
                theta = _estimate(ename, eff.prior, None, init)
                term = term + theta * (x == level).astype(float)
        else:
            ename = eff.effect_names()[0]
            theta = _estimate(ename, eff.prior, eff.fixed, init)
            x = x.astype(float)
            if eff.kind == "power":
                term = theta * np.log(x / eff.reference)
            elif eff.kind == "exponential":
                term = theta * (x - eff.reference)
            else:  # linear: log(1 + theta (x - ref)); NaN (rejected draw) where the factor is <= 0
                term = pt.log(1.0 + theta * (x - eff.reference))
        out[eff.parameter] = out.get(eff.parameter, 0.0) + term
    return out


def _random_effects(spec: ModelSpec, n_sub: int, init: dict):
    """ETA per parameter, shape (n_subjects,): non-centred, diagonal or block OMEGA.

    ``ETA = z * omega`` for a diagonal element; for a block, ``ETA = z @ L.T``
    with ``L`` the Cholesky factor of OMEGA (LKJ prior on the correlations,
    the members' omega priors on the SDs, via ``pm.LKJCholeskyCov``).
    """
    names = spec.eta_parameters
    if not names:
        return {}
    z = pm.Normal("eta_z", 0.0, 1.0, dims=("ID", "eta_parameter"))
    init["eta_z"] = np.zeros((n_sub, len(names)))
    col = {p: z[:, i] for i, p in enumerate(names)}
    eta = {}
    in_block = {p for block in spec.omega_blocks for p in block}
    for p in names:
        if p in in_block:
            continue
        par = spec.parameters[p]
        if par.omega_fixed is not None:
            omega = pt.as_tensor_variable(par.omega_fixed)
        else:
            omega = _prior_rv(f"omega_{p}", par.omega)
            init[f"omega_{p}"] = min(par.omega.median(), 0.3)
        eta[p] = col[p] * omega
    for block in spec.omega_blocks:
        k = len(block)
        packed = np.zeros(k * (k + 1) // 2)   # start at OMEGA = diag(omega0^2), no correlation
        packed[[i * (i + 1) // 2 + i for i in range(k)]] = [
            min(spec.parameters[p].omega.median(), 0.3) for p in block]
        init[f"chol_{'_'.join(block)}"] = packed
        chol, corr, sds = pm.LKJCholeskyCov(
            f"chol_{'_'.join(block)}", n=len(block), eta=spec.lkj_eta, compute_corr=True,
            sd_dist=_prior_dist([spec.parameters[p].omega for p in block]))
        correlated = pt.stack([col[p] for p in block], axis=1) @ chol.T   # rows ~ N(0, OMEGA)
        for i, p in enumerate(block):
            pm.Deterministic(f"omega_{p}", sds[i])
            eta[p] = correlated[:, i]
            for j in range(i + 1, len(block)):
                pm.Deterministic(f"corr_{p}_{block[j]}", corr[i, j])
    pm.Deterministic("ETA", pt.stack([eta[p] for p in names], axis=1), dims=("ID", "eta_parameter"))
    return eta


def individual_parameters(spec: ModelSpec, data: NMData, init: dict) -> tuple[dict, dict]:
    """Individual and typical-subject parameters, each of shape (n_subjects,).

    Returns
    -------
    individual : dict
        Typical values, covariate effects and ETAs combined.
    typical : dict
        The same with ETA = 0 (each subject's covariates kept): the parameters behind PRED.
    """
    cov = _covariate_log_factor(spec, data, init)
    eta = _random_effects(spec, data.n_subjects, init)
    ones = np.ones(data.n_subjects)
    individual, typical = {}, {}
    for p, par in spec.parameters.items():
        tv = _estimate(p, par.prior, par.fixed, init)
        for out, e in ((individual, eta.get(p, 0.0)), (typical, 0.0)):
            if par.iiv == "lognormal" or (par.iiv == "none" and p in cov):
                out[p] = pt.exp(pt.log(tv) + cov.get(p, 0.0) + e) * ones
            elif par.iiv == "normal":
                out[p] = (tv * pt.exp(cov.get(p, 0.0)) + e) * ones
            elif par.iiv == "logit":
                out[p] = pm.math.invlogit(pt.log(tv) - pt.log1p(-tv) + e) * ones
            else:
                out[p] = tv * ones
    return individual, typical


def _check_residual(spec: ModelSpec, data: NMData, doses: DoseEvents) -> None:
    kind = spec.residual.kind
    if kind == "exponential" and (data.obs_dv <= 0).any():
        i = int(np.flatnonzero(data.obs_dv <= 0)[0])
        raise DataError(f"exponential (log-scale) residual error needs DV > 0, got {data.obs_dv[i]:g} "
                        f"({int((data.obs_dv <= 0).sum())} such observations); exclude them (MDV=1) or use "
                        f"a combined error model", source=data.source, row=int(data.obs_row[i]), column="DV")
    if kind in ("proportional", "exponential"):
        dt = np.asarray(doses.dt)
        contributes = doses.applies & ~(doses.depot & (dt <= 0))
        zero = ~contributes.any(axis=1)
        if zero.any():
            i = int(np.flatnonzero(zero)[0])
            raise DataError(f"{kind} residual error: the prediction is exactly 0 at this observation "
                            f"(no dose has reached the central compartment yet; {int(zero.sum())} such "
                            f"observations), so its error SD would be 0; exclude pre-dose observations "
                            f"(MDV=1) or use a combined error model", source=data.source,
                            row=int(data.obs_row[i]), column="DV")


def _residual_sd(spec: ModelSpec, ipred, init: dict):
    """Residual SD at each observation (on the log scale for exponential error)."""
    r = spec.residual
    sig = {}
    for s in r.sigma_names():
        sig[s] = _prior_rv(s, r.priors[s])
        init[s] = r.priors[s].median()
    if r.kind == "additive":
        return sig["sigma_add"] * pt.ones_like(ipred)
    if r.kind == "proportional":
        return sig["sigma_prop"] * ipred
    if r.kind == "combined":
        return pt.sqrt(sig["sigma_add"] ** 2 + (sig["sigma_prop"] * ipred) ** 2)
    return sig["sigma_exp"] * pt.ones_like(ipred)


def _likelihood(spec: ModelSpec, ipred, sd, dv):
    if spec.residual.kind == "exponential":
        return pm.LogNormal("DV", mu=pt.log(ipred), sigma=sd, observed=dv, dims="obs")
    return pm.Normal("DV", mu=ipred, sigma=sd, observed=dv, dims="obs")


def build_model(spec: ModelSpec, data, *, check_residual: bool = True) -> BuiltModel:
    """Build the PyMC model for ``spec`` on ``data``.

    Parameters
    ----------
    spec : ModelSpec
    data : NMData, path or pandas.DataFrame
        NONMEM-format data (read with :func:`bayesnlme.data.read_nonmem` if needed).

    Returns
    -------
    BuiltModel

    Raises
    ------
    SpecError, DataError
        When the spec and data do not fit together (missing covariates,
        doses into compartments the model lacks, DV <= 0 with exponential error...).
    """
    data = read_nonmem(data)
    spec = spec.bind(data)
    doses = dose_events(data, spec.structural)
    if check_residual:   # off when the "observations" are prediction times, not data
        _check_residual(spec, data, doses)
    coords = {"ID": [str(i) for i in data.ids], "obs": data.obs_row.tolist(),
              "eta_parameter": spec.eta_parameters}
    init: dict = {}
    with pm.Model(coords=coords) as model:
        individual, typical = individual_parameters(spec, data, init)
        ipred, pred = (_predict(spec, data, doses, params) for params in (individual, typical))
        sd = _residual_sd(spec, ipred, init)
        _likelihood(spec, ipred, sd, data.obs_dv)
    return BuiltModel(model=model, spec=spec, data=data, initial_point=init,
                      ipred=ipred, pred=pred, residual_sd=sd, individual=individual)


def _predict(spec: ModelSpec, data: NMData, doses: DoseEvents, params: dict):
    # optional parameters the spec leaves out are absent: functions use params.get(name, default)
    return spec.structural.function({p: v[data.obs_subject] for p, v in params.items()}, doses)
