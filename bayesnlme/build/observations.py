"""Pointwise log-likelihood of every observation under its observation model (build-time helpers).

Called by :func:`bayesnlme.build.build_model` only (the module that creates
PyMC variables): it makes the observation models' parameters (SIGMAs,
``phi``, ``lambda``, ``shape``, ordered ``cutpoints``) and returns the
log-density of each observation record as one (n_obs,) tensor.  The builder
registers it as the observed variable ``DV`` (dims ``obs``), so
``log_likelihood["DV"]`` is pointwise and ArviZ LOO works for every family.

Each family's density is its own (:mod:`bayesnlme.spec.families`), evaluated on the records of
that family (integer index sets from the data, so no family evaluates another's formula and no
NaN reaches a gradient); see :mod:`bayesnlme.spec.observation` for the formulas.
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from scipy.special import roots_legendre

from bayesnlme.build.priors import DIST_ARGS, prior_rv
from bayesnlme.spec import ModelSpec
from bayesnlme.spec.families import put, take


def quadrature_times(t: np.ndarray, nodes: int) -> np.ndarray:
    """Gauss--Legendre nodes on [0, t] per record, shape (n, nodes)."""
    x, _ = roots_legendre(nodes)
    return np.asarray(t, float)[:, None] * (x[None, :] + 1) / 2


def check_zero_prediction(spec: ModelSpec, data, doses) -> None:
    """Refuse an observed record whose concentration is exactly 0 under an error model whose SD is then 0.

    Before the first dose reaches the central compartment (pre-dose samples, inside an oral dose's
    lag) CP is exactly 0, and a proportional or exponential error has no density there.  Applies to
    every continuous observation model of CP, ``[residual]`` or ``[[observations]]``.  A record
    censored below its LLOQ (``CENS = 1``) is kept: with CP = 0 it is below the LLOQ with probability 1
    (M3: it adds 0 to the log-likelihood; M1 drops it anyway), as a pre-dose sample reported BLQ is.

    Raises
    ------
    DataError
        Naming the first such record (row, column DV) and how many there are.
    """
    models = [m for m in spec.observation_models()
              if m.family.continuous and m.family.positive and m.output == "CP"]
    if not models:
        return
    dt = np.asarray(doses.dt)
    contributes = doses.applies & (~(doses.depot & (dt <= 0)) | doses.steady)   # an SS dose's history is present
    zero = ~contributes.any(axis=1)
    cens = data.obs_cens if data.obs_cens is not None else np.zeros(data.n_obs, int)
    above_zero = data.obs_limit > 0 if data.obs_limit is not None else np.zeros(data.n_obs, bool)
    multi = len(spec.observation_models()) > 1 or models[0].dvid is not None
    for m in models:
        # dropped (M1), or below the LLOQ with no positive lower limit: P(Y <= LLOQ) = 1 when CP = 0
        certain = (cens != 0) if m.blq == "m1" else (cens == 1) & ~above_zero
        hit = zero & ~certain & ((data.obs_dvid == m.dvid) if multi else True)
        if hit.any():
            i = int(np.flatnonzero(hit)[0])
            where = "" if m.dvid is None else f" (DVID {m.dvid})"
            raise data.error(f"{m.likelihood} residual error{where}: the prediction is exactly 0 at this "
                             f"observation (no dose has reached the central compartment yet; {int(hit.sum())} "
                             f"such observations), so its error SD would be 0; exclude pre-dose observations "
                             f"(MDV=1), flag them below the LLOQ (CENS=1) if they were, or use a combined error "
                             f"model", row=int(data.obs_row[i]), column="DV")


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


def observation_parameters(m, init: dict) -> dict:
    """An observation model's parameters by base name (``sigma_add``, ``phi``, ``cutpoints`` ...): random
    variables named with the model's suffix (constants when fixed); their starts go into ``init``."""
    return {b: (_cutpoints(m, init) if b == "cutpoints" else _param(b + m.suffix, m.priors[b], init))
            for b in m.base_names()}


def pointwise_loglik(spec: ModelSpec, data, outputs: dict, init: dict, at_times=None, dv=None, cens=None):
    """Parameters of every observation model and the log-likelihood of each record.

    Parameters
    ----------
    outputs : dict of str -> tensor (n_obs,)
        Structural outputs at the records.
    dv : tensor (n_obs,), optional
        DV as a data container (continuous observation models, no censored record); default
        ``data.obs_dv`` as a constant.
    cens : tensor (n_obs,), optional
        CENS as a data container (``DV_cens``: 1 = below DV, M3; normal-family observation models
        only, see :func:`censoring_by_data`); default ``data.obs_cens`` as constants.
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
    models = spec.observation_models()   # their data were checked by the builder (check_data)
    n = data.n_obs
    multi = len(models) > 1 or models[0].dvid is not None
    if cens is None:
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
        f = take(outputs[m.output], idx, n)
        ipred = put(ipred, full, take(outputs[m.output], full, n), n)
        y = take(data.obs_dv if dv is None else dv, idx, n)
        p = observation_parameters(m, init)
        families.append((m, full, {b: p[b] for b in ("phi", "cutpoints") if b in p}))
        family = m.family
        if family.continuous:
            sd = put(sd, full, family.residual_sd(p, take(outputs[m.output], full, n)), n)
        nodes_lp = None
        if family.event_time and at_times is not None:   # the output changes on [0, T]: quadrature
            tq = np.zeros((n, m.nodes))
            tq[idx] = quadrature_times(data.obs_time[idx], m.nodes)
            nodes_lp = at_times(tq)[m.output][idx]
        c = cens[idx] if isinstance(cens, np.ndarray) else take(cens, idx, n)
        lp = family.logp(m, y, f, p, c, limit[idx], time=data.obs_time[idx], nodes_lp=nodes_lp)
        ll = put(ll, idx, lp, n)
    return ll, ipred, sd, np.array(sorted(excluded), int), families


def censoring_by_data(spec: ModelSpec, data) -> bool:
    """Whether CENS can be a data container (``DV_cens``) for this spec and design: every observation
    model normal-family with M3, and the design has neither right-censored records nor interval limits
    (what replicates censored below an LLOQ need)."""
    if not all(m.is_normal and m.blq == "m3" for m in spec.observation_models()):
        return False
    if data.obs_cens is not None and (data.obs_cens == -1).any():
        return False
    return data.obs_limit is None or not np.isfinite(data.obs_limit).any()


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
