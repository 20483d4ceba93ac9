"""Pointwise log-likelihood of every observation under its observation model (build-time helpers).

Called by :func:`bayesnlme.build.build_model` only (the module that creates
PyMC variables): it makes the observation models' parameters (SIGMAs,
``phi``, ``lambda``, ``shape``, ordered ``cutpoints``) and returns the
log-density of each observation record as one (n_obs,) tensor.  The builder
registers it as the observed variable ``DV`` (dims ``obs``), so
``log_likelihood["DV"]`` is pointwise and ArviZ LOO works for every family.

The densities are written per family on the records of that family (integer
index sets from the data, so no branch evaluates another family's formula and
no NaN reaches a gradient); see :mod:`bayesnlme.spec.observation` for the formulas.
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pymc.distributions.dist_math import normal_lccdf, normal_lcdf
from scipy.special import gammaln, roots_legendre

from bayesnlme.build.priors import DIST_ARGS, prior_rv
from bayesnlme.spec import ModelSpec
from bayesnlme.spec.observation import check_data

_LOG_2PI = float(np.log(2 * np.pi))


def normal_logp(kind: str, y, f, sd, cens=None, limit=None):
    """Log-density (or, for censored records, log-probability) of continuous observations.

    Parameters
    ----------
    kind : {"additive", "proportional", "combined", "exponential"}
    y : numpy.ndarray
        DV (the limit for censored records).
    f, sd : tensor
        Prediction and residual SD (log scale for exponential error).
    cens : numpy.ndarray of int, optional
        0 observed, 1 below DV (M3: ``P(Y <= DV)``, or ``P(LIMIT <= Y <= DV)``), -1 above DV.
    limit : numpy.ndarray of float, optional
        The interval's other end (NaN: open).
    """
    n = len(y)
    cens = np.zeros(n, int) if cens is None else np.asarray(cens)
    limit = np.full(n, np.nan) if limit is None else np.asarray(limit, float)
    log = kind == "exponential"
    mu = pt.log(f) if log else f
    with np.errstate(divide="ignore"):
        yt = np.log(np.where(y > 0, y, 1.0)) if log else y
        lt = np.where(limit > 0, np.log(np.where(limit > 0, limit, 1.0)), -np.inf) if log else limit
    out = pt.zeros(n)
    obs = np.flatnonzero(cens == 0)
    if len(obs):
        s = sd[obs]
        if kind == "proportional":
            # SD = sigma_prop * IPRED is 0 where IPRED is 0 (before a lag time): density 0 there
            # (DV = 0 is rejected by check_data), written so that neither value nor gradient is NaN
            positive = s > 0
            s = pt.switch(positive, s, 1.0)
        z = (yt[obs] - mu[obs]) / s
        lp = -0.5 * z ** 2 - pt.log(s) - 0.5 * _LOG_2PI - (yt[obs] if log else 0.0)
        if kind == "proportional":
            lp = pt.switch(positive, lp, -np.inf)
        out = pt.set_subtensor(out[obs], lp)
    for side in (1, -1):
        for bounded in (False, True):
            idx = np.flatnonzero((cens == side) & (np.isfinite(lt) == bounded))
            if not len(idx):
                continue
            m, s = mu[idx], sd[idx]
            if side == 1:
                lp = normal_lcdf(m, s, yt[idx])
                if bounded:   # log(Phi(b) - Phi(a))
                    lp = pm.math.logdiffexp(lp, normal_lcdf(m, s, lt[idx]))
            else:
                lp = normal_lccdf(m, s, yt[idx])
                if bounded:
                    lp = pm.math.logdiffexp(lp, normal_lccdf(m, s, lt[idx]))
            out = pt.set_subtensor(out[idx], lp)
    return out


def bernoulli_logp(y, eta):
    """``y log expit(eta) + (1 - y) log expit(-eta)``, written with log1pexp."""
    sign = np.where(np.asarray(y) == 1, -1.0, 1.0)
    return -pt.log1pexp(sign * eta)


def ordinal_logp(y, eta, cutpoints):
    """Proportional odds: ``P(Y <= k) = expit(c_k - eta)``, categories 0..K-1."""
    y = np.asarray(y, int)
    k = cutpoints.type.shape[0]   # static: the number of cutpoints is K - 1
    upper = pt.concatenate([cutpoints, [np.inf]])[y] - eta
    lower = pt.concatenate([[-np.inf], cutpoints])[y] - eta
    # log(expit(u) - expit(l)) = log(expit(u)) + log1p(-exp(l - u)) ... done stably via logdiffexp
    lu = -pt.log1pexp(-upper)
    ll = -pt.log1pexp(-lower)
    top = y == k   # upper = +inf: log(1 - expit(l)) = -log1pexp(l)
    bottom = y == 0
    mid = pm.math.logdiffexp(lu, ll)
    return pt.switch(top, -pt.log1pexp(lower), pt.switch(bottom, lu, mid))


def poisson_logp(y, lp, link="log"):

    y = np.asarray(y, float)
    log_rate = lp if link == "log" else pt.log(lp)
    return y * log_rate - pt.exp(log_rate) - gammaln(y + 1)


def negbin_logp(y, lp, phi, link="log"):
    """NB2 with mean ``m`` and ``Var = m + m^2 / phi``."""

    y = np.asarray(y, float)
    log_m = lp if link == "log" else pt.log(lp)
    log_pm = pt.logaddexp(pt.log(phi), log_m)   # log(phi + m)
    return (pt.gammaln(y + phi) - pt.gammaln(phi) - gammaln(y + 1)
            + phi * (pt.log(phi) - log_pm) + y * (log_m - log_pm))


def log_baseline_hazard(hazard, t, lam, shape=None):
    """``log h0(t)`` (t > 0)."""
    if hazard == "exponential":
        return pt.log(lam) * pt.ones_like(t)
    if hazard == "weibull":
        return pt.log(lam) + pt.log(shape) + (shape - 1) * pt.log(lam * t)
    return pt.log(lam) + shape * t


def cumulative_baseline_hazard(hazard, t, lam, shape=None):
    """``H0(t) = int_0^t h0``."""
    if hazard == "exponential":
        return lam * t
    if hazard == "weibull":
        return (lam * t) ** shape
    # Gompertz: lam (exp(shape t) - 1) / shape, -> lam t as shape -> 0
    st = shape * t
    return lam * t * pt.switch(pt.abs(st) < 1e-8, 1.0 + st / 2, pt.expm1(st) / pt.switch(pt.abs(st) < 1e-8, 1.0, st))


def tte_logp(hazard, y, t, lam, shape, lp_at_t, lp_nodes=None, nodes=32):
    """``DV log h(T) - H(T)`` with ``h = h0 exp(lp)``.

    ``lp_nodes`` None: ``lp`` is constant on [0, T] and ``H = H0(T) exp(lp)`` exactly;
    otherwise ``lp_nodes`` (n, Q) holds lp at the Gauss--Legendre nodes ``T (x + 1) / 2``.
    """
    y = np.asarray(y, float)
    t = np.asarray(t, float)
    log_h = log_baseline_hazard(hazard, t, lam, shape) + lp_at_t
    if lp_nodes is None:
        cum = cumulative_baseline_hazard(hazard, t, lam, shape) * pt.exp(lp_at_t)
    else:
        x, w = roots_legendre(nodes)
        tq = t[:, None] * (x[None, :] + 1) / 2
        h = pt.exp(log_baseline_hazard(hazard, tq, lam, shape) + lp_nodes)
        cum = (h * (w[None, :] * t[:, None] / 2)).sum(axis=1)
    return y * log_h - cum


def quadrature_times(t: np.ndarray, nodes: int) -> np.ndarray:
    """Gauss--Legendre nodes on [0, t] per record, shape (n, nodes)."""
    x, _ = roots_legendre(nodes)
    return np.asarray(t, float)[:, None] * (x[None, :] + 1) / 2


def _param(name, prior, init):

    if not prior.is_fixed:
        init[name] = prior.median()
    return prior_rv(name, prior)


def _cutpoints(m, init):

    prior, k = m.priors["cutpoints"], m.categories - 1
    cls, args = DIST_ARGS[prior.dist]
    start = np.linspace(-1.0, 1.0, k) if k > 1 else np.zeros(1)
    init[f"cutpoints{m.suffix}"] = start
    c = cls(f"cutpoints{m.suffix}", **args(prior.args), shape=k,
            transform=pm.distributions.transforms.ordered)   # start: init (a model initval breaks fgraph tools)
    for j in range(k):
        pm.Deterministic(f"cutpoint_{j + 1}{m.suffix}", c[j])
    return c


def pointwise_loglik(spec: ModelSpec, data, outputs: dict, init: dict, at_times=None):
    """Parameters of every observation model and the log-likelihood of each record.

    Parameters
    ----------
    outputs : dict of str -> tensor (n_obs,)
        Structural outputs at the records.
    at_times : callable, optional
        ``at_times(times (n_obs, Q)) -> dict of (n_obs, Q)`` for models whose
        outputs change between records (time-varying hazards).

    Returns
    -------
    ll : tensor (n_obs,)
    ipred, sd : tensor (n_obs,)
        Each record's own output, and its residual SD (1 for non-normal families).
    excluded : numpy.ndarray of int
        Record numbers (ROW) dropped by M1 (their log-likelihood is 0).
    families : list of (ObservationModel, index array, dict)
        Each model's records and its own parameters (``phi``, ``cutpoints``) as tensors: what
        its random draw needs besides IPRED and SD (:meth:`ObservationModel.draw`).
    """
    models = spec.observation_models()
    check_data(models, data)
    n = data.n_obs
    multi = len(models) > 1 or models[0].dvid is not None
    cens = data.obs_cens if data.obs_cens is not None else np.zeros(n, int)
    limit = data.obs_limit if data.obs_limit is not None else np.full(n, np.nan)
    ll, ipred, sd = pt.zeros(n), pt.zeros(n), pt.ones(n)
    excluded, families = [], []
    for m in models:
        idx = np.flatnonzero(data.obs_dvid == m.dvid) if multi else np.arange(n)
        full = idx   # IPRED and SD stay defined at M1-dropped records (simulation draws there)
        if m.is_normal and m.blq == "m1":
            excluded += data.obs_row[idx[cens[idx] != 0]].tolist()
            idx = idx[cens[idx] == 0]
        if not len(idx):
            continue
        f = outputs[m.output][idx]
        ipred = pt.set_subtensor(ipred[full], outputs[m.output][full])
        y = data.obs_dv[idx]
        p = {b: (_cutpoints(m, init) if b == "cutpoints" else _param(b + m.suffix, m.priors[b], init))
             for b in m.base_names()}
        families.append((m, full, {b: p[b] for b in ("phi", "cutpoints") if b in p}))
        if m.is_normal:
            s = _residual_sd(m.likelihood, p, f)
            sd = pt.set_subtensor(sd[full], _residual_sd(m.likelihood, p, outputs[m.output][full]))
            lp = normal_logp(m.likelihood, y, f, s, cens[idx], limit[idx])
        elif m.likelihood == "bernoulli":
            lp = bernoulli_logp(y, f)
        elif m.likelihood == "ordinal":
            lp = ordinal_logp(y, f, p["cutpoints"])
        elif m.likelihood == "poisson":
            lp = poisson_logp(y, f, m.link)
        elif m.likelihood == "negbin":
            lp = negbin_logp(y, f, p["phi"], m.link)
        else:
            nodes_lp = None
            if at_times is not None:
                tq = np.zeros((n, m.nodes))
                tq[idx] = quadrature_times(data.obs_time[idx], m.nodes)
                nodes_lp = at_times(tq)[m.output][idx]
            lp = tte_logp(m.hazard, y, data.obs_time[idx], p["lambda"], p.get("shape"), f, nodes_lp, m.nodes)
        ll = pt.set_subtensor(ll[idx], lp)
    return ll, ipred, sd, np.array(sorted(excluded), int), families


def dv_draw_inputs(families: list) -> tuple[list, object]:
    """The scalar family parameters the observed DV's ``random`` needs, and that ``random``.

    ``pm.CustomDist`` broadcasts its inputs with DV's (n_obs,) shape, so every input is a scalar
    (a vector of cutpoints is passed one cutpoint at a time).  ``random(ll, ipred, sd, *scalars,
    rng, size)`` draws each record by its own observation model (:meth:`ObservationModel.draw`).
    """
    scalars, layout = [], []
    for m, idx, p in families:
        sizes = {}
        for b, v in p.items():
            n = int(m.categories) - 1 if b == "cutpoints" else 1
            scalars += [v[j] for j in range(n)] if b == "cutpoints" else [v]
            sizes[b] = n
        layout.append((m, idx, sizes))

    def random(ll, ipred, sd, *values, rng=None, size=None):
        out = np.full(np.shape(ipred), np.nan)
        at = 0
        for m, idx, sizes in layout:
            params = {}
            for b, n in sizes.items():
                params[b] = np.asarray(values[at:at + n], float).reshape(1, n)
                at += n
            out[idx] = m.draw(np.asarray(ipred, float)[None, idx], np.asarray(sd, float)[None, idx], params, rng)[0]
        return out

    return scalars, random


def _residual_sd(kind, p, f):
    if kind == "additive":
        return p["sigma_add"] * pt.ones_like(f)
    if kind == "proportional":
        return p["sigma_prop"] * f
    if kind == "combined":
        return pt.sqrt(p["sigma_add"] ** 2 + (p["sigma_prop"] * f) ** 2)
    return p["sigma_exp"] * pt.ones_like(f)
