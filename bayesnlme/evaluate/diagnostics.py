"""Diagnostics of a fit, as tables: convergence, goodness of fit, residuals, ETAs, shrinkage.

Plots of these tables are in :mod:`bayesnlme.evaluate.plots`; every plot draws one of
the DataFrames returned here.

Residual definitions (per observation record):

IWRES
    Individual weighted residual, the posterior mean of
    ``(DV - IPRED) / RES_SD`` (for exponential error, of
    ``(log DV - log IPRED) / sigma_exp``).
CWRES
    Conditional weighted residual, the Bayesian counterpart of NONMEM's CWRES:
    ``(DV - E[y_rep]) / SD[y_rep]`` where ``y_rep`` is the posterior
    predictive distribution of the observation *conditional on the subject's
    own ETA posterior* (population parameters and ETAs from each draw, plus
    residual error).  Approximately N(0, 1) under a correct model.
NPDE
    Normalised prediction distribution error (Brendel et al. 2006; Comets,
    Brendel & Mentre 2008): for each subject, ``K`` data sets of *new*
    subjects (ETA drawn from OMEGA of each posterior draw, same design and
    covariates, residual error added) give the mean vector ``E`` and
    covariance ``V`` of the subject's observations; observed and simulated
    vectors are decorrelated with the inverse Cholesky factor of ``V``; the
    prediction discrepancy ``pde`` is the share of simulated decorrelated
    values below the observed one (bounded to ``[1/(2K), 1 - 1/(2K)]``) and
    ``NPDE = Phi^-1(pde)``.  N(0, 1) under the model.  Censored (BLQ) records get
    an imputed value first (see :func:`gof_table`).
PIT residual (specs with ``[[observations]]``: binary, ordinal, count and
    time-to-event records)
    The randomized probability integral transform of the record under
    simulated new subjects (Dunn & Smyth 1996): ``u ~ U(F(y-), F(y))`` with
    ``F`` the simulated CDF (for an event time ``F(T)``; for a right-censored
    time ``u ~ U(F(C), 1)``), reported as ``Phi^-1(u)`` in the ``NPDE``
    column; N(0, 1) under the model.  Continuous types of such specs get NPDE
    per type (decorrelated within each subject's records of that type).

Shrinkage is NONMEM's SD-based ETA shrinkage, ``1 - SD(ETA means) / OMEGA``,
with ETA means the per-subject posterior means and OMEGA the posterior median
of the SD of ETA.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
from scipy import stats

from bayesnlme.evaluate.event_times import simulate_event_times, tte_observed
from bayesnlme.evaluate.outcomes import observation_draw, type_index
from bayesnlme.evaluate.predict import new_subject_draws, posterior_predictions, simulation_outputs, thinned_draws
from bayesnlme.inference.convergence import ESS_MIN, R_HAT_MAX, divergence_location
from bayesnlme.inference.quick import APPROXIMATE

BFMI_MIN = 0.3


# ---------------------------------------------------------------------- convergence


def convergence_report(result) -> tuple[pd.DataFrame, str]:
    """Per-parameter convergence diagnostics and a plain-words verdict.

    Returns
    -------
    table : pandas.DataFrame
        Index parameter; columns ``r_hat`` (rank-normalised split R-hat),
        ``ess_bulk``, ``ess_tail``, ``ok``.
    verdict : str
        One paragraph: converged or not, and why; divergences (count and the
        parameters where divergent draws cluster), tree-depth saturation,
        E-BFMI per chain, and chains in different modes.
    """
    summ = result.summary()
    table = summ[["r_hat", "ess_bulk", "ess_tail"]].copy()
    if getattr(result, "approximate", False):   # MAP/Laplace or ADVI: nothing to converge

        table["ok"] = np.nan
        return table, (f"Approximate fit ({APPROXIMATE.get(result.method, result.method)}): no convergence "
                       f"diagnostics (R-hat, ESS, divergences) apply; intervals are approximate. "
                       f"Confirm final estimates with NUTS." + "".join(f" {p}" for p in result.problems))
    table["ok"] = (table["r_hat"] <= R_HAT_MAX) & (table["ess_bulk"] >= ESS_MIN) & (table["ess_tail"] >= ESS_MIN)
    ss = result.idata.sample_stats
    lines = []
    n_div = int(ss["diverging"].sum()) if "diverging" in ss else 0
    if n_div:
        lines.append(f"{n_div} divergent transitions; {divergence_location(result)}.")
    if "maxdepth_reached" in ss:
        sat = float(ss["maxdepth_reached"].mean())
        if sat > 0.01:
            lines.append(f"{100 * sat:.1f}% of transitions hit the maximum tree depth: the sampler is "
                         f"inefficient (strong correlations or very different scales).")
    if "energy" in ss:
        bfmi = az.bfmi(result.idata)
        low = [str(c) for c, b in zip(result.idata.posterior["chain"].values, bfmi) if b < BFMI_MIN]
        if low:
            lines.append(f"E-BFMI below {BFMI_MIN} in chain(s) {', '.join(low)} "
                         f"({', '.join(f'{b:.2f}' for b in bfmi)}): heavy-tailed energy, poor exploration.")
    bad = table[~table["ok"]]
    if len(bad):
        lines.append(f"R-hat/ESS not acceptable for {', '.join(bad.index)} (need R-hat <= {R_HAT_MAX}, "
                     f"bulk and tail ESS >= {ESS_MIN}).")
    modes = [p for p in result.problems if p.startswith("chains disagree")]
    lines += modes
    if not lines:
        verdict = (f"Converged: all {len(table)} population parameters have R-hat <= {R_HAT_MAX} and bulk/tail "
                   f"ESS >= {ESS_MIN}; no divergences, no tree-depth saturation, E-BFMI fine.")
    else:
        verdict = "Not converged, or not reliably: " + " ".join(lines)
    return table, verdict


# ---------------------------------------------------------------------- goodness of fit


def gof_table(result, *, n_npde: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per observation: DV, PRED, IPRED (with 90% band), IWRES, CWRES and NPDE.

    Parameters
    ----------
    n_npde : int
        Number of simulated new-subject data sets for NPDE (posterior draws
        are thinned evenly to this number).
    seed : int
        Seed of the simulations (CWRES replicates and NPDE).

    Returns
    -------
    pandas.DataFrame
        Columns ``ROW, ID, TIME, DV, PRED, IPRED, IPRED_q5, IPRED_q95, IWRES,
        CWRES, NPDE`` (PRED and IPRED are posterior medians, in DV units);
        ``DVID`` for specs with ``[[observations]]``; ``NPDE_KIND`` (``npde`` or
        ``randomized PIT``) when some records are not continuous; ``CENS`` when
        the data have censored (BLQ) records.  One code path for every spec: a
        single ``[residual]`` is one continuous observation model.

    Notes
    -----
    Censored records (``CENS`` 1: below the limit in DV; -1: above it) have no
    observed value, so IWRES and CWRES are NaN there.  Their NPDE uses an
    imputed value, as in the R ``npde`` package (Nguyen, Comets & Mentré 2017,
    "cdf" method): the record's prediction discrepancy is drawn uniformly
    between the simulated CDF at the interval's ends (``U(0, P(Y_sim < LLOQ))``
    below an LLOQ), the value is the simulated distribution's quantile at it,
    and the decorrelation then runs on observed and imputed values together.
    Under the model, NPDE stay N(0, 1) with censoring; a misfit below the LLOQ
    shows as a shifted NPDE distribution at those records.
    """
    return _gof(result, n_npde, seed)


def _gof(result, n_sims: int, seed: int) -> pd.DataFrame:
    """GOF per observation model (a single ``[residual]`` is one continuous model): NPDE per continuous
    type, randomized PIT residuals otherwise."""
    data, spec = result.data, result.spec
    pp = posterior_predictions(result)
    n_obs = data.n_obs
    ipred, pred = pp["IPRED"].values.reshape(-1, n_obs), pp["PRED"].values.reshape(-1, n_obs)
    sd = pp["RES_SD"].values.reshape(-1, n_obs)
    rng = np.random.default_rng(seed)
    _, draws = thinned_draws(result, n_sims)
    new = new_subject_draws(spec, draws, rng)
    out = simulation_outputs(result.built, new, ("ipred", "residual_sd"), rng)
    sims = observation_draw(spec, data, out["ipred"], out["residual_sd"], new, rng)
    cens = data.obs_cens if data.obs_cens is not None else np.zeros(n_obs, int)
    dv = data.obs_dv.astype(float)
    iwres, cwres, scores = (np.full(n_obs, np.nan) for _ in range(3))
    kind = np.empty(n_obs, dtype=object)
    k = sims.shape[0]
    for m, idx in type_index(spec.observation_models(), data):
        if not len(idx):
            continue
        if m.family.residual == "npde":   # continuous: IWRES, CWRES and NPDE (censored records imputed)
            f, s_ = ipred[:, idx], sd[:, idx]
            eps = rng.standard_normal(f.shape)
            log = m.family.log_scale
            iwres[idx] = (((np.log(dv[idx]) - np.log(f)) if log else (dv[idx] - f)) / s_).mean(0)
            yrep = f * np.exp(s_ * eps) if log else f + s_ * eps
            cwres[idx] = (dv[idx] - yrep.mean(0)) / yrep.std(0, ddof=1)
            c = cens[idx] != 0
            iwres[idx[c]], cwres[idx[c]] = np.nan, np.nan
            y = impute_censored(dv[idx], cens[idx], None if data.obs_limit is None else data.obs_limit[idx],
                                sims[:, idx], rng)
            scores[idx] = npde(y, data.obs_subject[idx], sims[:, idx], rng)
            kind[idx] = m.family.residual
            continue
        if m.family.event_time:
            t_sim, event_sim = simulate_event_times(result, n_draws=k, seed=seed + 3, dvid=m.dvid)
            t_obs, event_obs, tidx = tte_observed(result, dvid=m.dvid)
            below = ((event_sim == 1) & (t_sim < t_obs[None, :])).mean(0)   # F(T) (F(C) when censored)
            lo, hi = below, np.where(event_obs == 1, below, 1.0)
            idx = tidx
        else:   # discrete: the simulated CDF just below and at the observed value
            lo, hi = (sims[:, idx] < dv[idx]).mean(0), (sims[:, idx] <= dv[idx]).mean(0)
        u = rng.uniform(lo, np.maximum(hi, lo))
        scores[idx] = stats.norm.ppf(np.clip(u, 0.5 / k, 1 - 0.5 / k))
        kind[idx] = m.family.residual
    ids = np.array([str(i) for i in data.ids])
    table = pd.DataFrame({
        "ROW": data.obs_row, "ID": ids[data.obs_subject], "TIME": data.obs_time, "DV": data.obs_dv,
        "PRED": np.median(pred, 0), "IPRED": np.median(ipred, 0),
        "IPRED_q5": np.quantile(ipred, 0.05, 0), "IPRED_q95": np.quantile(ipred, 0.95, 0),
        "IWRES": iwres, "CWRES": cwres, "NPDE": scores,
    })
    if (kind != "npde").any():
        table["NPDE_KIND"] = kind
    if data.obs_dvid is not None and spec.observations:
        table.insert(3, "DVID", data.obs_dvid)
    if (cens != 0).any():
        table["CENS"] = cens
    return table


def impute_censored(dv: np.ndarray, cens: np.ndarray, limit, sims: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """Values for censored records drawn from the simulated distribution inside their interval.

    Parameters
    ----------
    dv : numpy.ndarray, shape (n_obs,)
        DV; for ``cens == 1`` the upper limit (LLOQ), for ``cens == -1`` the lower limit.
    cens : numpy.ndarray of int, shape (n_obs,)
    limit : numpy.ndarray or None
        ``LIMIT`` (the other end of the interval, NaN where open).
    sims : numpy.ndarray, shape (K, n_obs)
        Simulated data sets under the model.

    Returns
    -------
    numpy.ndarray, shape (n_obs,)
        ``dv`` with each censored record replaced by the empirical quantile of
        its simulations at ``u ~ U(F(lower), F(upper))``, F the simulated CDF
        (the npde package's imputation of censored observations).
    """
    out = np.asarray(dv, float).copy()
    idx = np.flatnonzero(cens != 0)
    if not idx.size:
        return out
    lim = np.full(len(dv), np.nan) if limit is None else np.asarray(limit, float)
    ys = sims[:, idx]
    k = np.maximum(np.isfinite(ys).sum(0), 1)   # failed simulations (NaN) are left out, record by record
    cdf = lambda x: (ys < x[None, :]).sum(0) / k   # noqa: E731 - the empirical CDF of each record's simulations
    below = cens[idx] == 1
    lower = np.where(below, np.where(np.isnan(lim[idx]), -np.inf, lim[idx]), dv[idx])
    upper = np.where(below, dv[idx], np.where(np.isnan(lim[idx]), np.inf, lim[idx]))
    lo, hi = cdf(lower), cdf(upper)
    u = rng.uniform(lo, np.maximum(hi, lo))
    u = np.clip(u, 0.5 / k, 1 - 0.5 / k)   # inside the simulated range when the interval has no simulations
    # the empirical quantile (inverse of the empirical CDF) of each record's simulations at its own u
    rank = np.clip(np.ceil(u * k).astype(int) - 1, 0, k - 1)
    out[idx] = np.take_along_axis(np.sort(ys, axis=0), rank[None, :], axis=0)[0]   # NaN sort last
    return out


def npde(dv: np.ndarray, subject: np.ndarray, sims: np.ndarray,
         rng: np.random.Generator | None = None) -> np.ndarray:
    """NPDE with decorrelation (Brendel/Comets) from simulated new-subject data.

    A record whose simulations are all one value (a point mass: the concentration of a pre-dose record
    under proportional or exponential error is exactly 0) has no variance to decorrelate: it is left out
    of its subject's decorrelation and scored by the randomised probability integral transform,
    ``u ~ U(P(Y < DV), P(Y <= DV))`` (U(0, 1) when DV is that value: the record says nothing).

    Parameters
    ----------
    dv : numpy.ndarray, shape (n_obs,)
    subject : numpy.ndarray of int, shape (n_obs,)
    sims : numpy.ndarray, shape (K, n_obs)
        Simulated data sets of new subjects under the model; a draw with a non-finite value for a
        subject is left out of that subject's reference (NaN when fewer than 2 remain).
    rng : numpy.random.Generator, optional
        For point-mass records only (default: seeded 0).

    Returns
    -------
    numpy.ndarray, shape (n_obs,)
    """
    out = np.empty(len(dv))
    rng = np.random.default_rng(0) if rng is None else rng
    for s in np.unique(subject):          # per-subject linear algebra on a handful of observations
        idx = np.flatnonzero(subject == s)
        ys = sims[:, idx]
        # a simulated subject whose prediction failed (an ODE solve past its step budget at extreme
        # parameters: NaN) is left out of this subject's reference distribution
        ys = ys[np.isfinite(ys).all(axis=1)]
        k = ys.shape[0]
        if k < 2:
            out[idx] = np.nan
            continue
        point = (ys == ys[:1]).all(axis=0)
        if point.any():
            u = rng.uniform((ys[:, point] < dv[idx[point]]).mean(0), (ys[:, point] <= dv[idx[point]]).mean(0))
            out[idx[point]] = stats.norm.ppf(np.clip(u, 1 / (2 * k), 1 - 1 / (2 * k)))
            idx, ys = idx[~point], ys[:, ~point]
            if not len(idx):
                continue
        mean = ys.mean(0)
        cov = np.atleast_2d(np.cov(ys, rowvar=False))
        cov = cov + np.eye(len(idx)) * 1e-10 * max(np.trace(cov) / len(idx), 1e-300)
        chol = np.linalg.cholesky(cov)
        obs_dec = np.linalg.solve(chol, dv[idx] - mean)
        sim_dec = np.linalg.solve(chol, (ys - mean).T).T
        pde = (sim_dec < obs_dec).mean(0)
        pde = np.clip(pde, 1 / (2 * k), 1 - 1 / (2 * k))
        out[idx] = stats.norm.ppf(pde)
    return out


# ---------------------------------------------------------------------- random effects


def eta_table(result) -> pd.DataFrame:
    """Posterior mean of each subject's ETAs (columns ``ETA_<P>``) with the subject's baseline covariates."""
    post = result.idata.posterior
    if "ETA" not in post:
        return pd.DataFrame(index=pd.Index([str(i) for i in result.data.ids], name="ID"))
    means = post["ETA"].mean(("chain", "draw")).to_pandas()
    means.columns = [f"ETA_{c}" for c in means.columns]
    means.index.name = "ID"
    cov = result.data.baseline_covariates()
    cov.index = cov.index.astype(str)
    return means.join(cov)


def shrinkage(result) -> pd.Series:
    """SD-based ETA shrinkage per parameter (fraction; NONMEM's ETAshrinkSD)."""
    etas = eta_table(result)
    out = {}
    for p in result.spec.eta_parameters:
        omega_name = f"omega_{p}"
        if omega_name in result.idata.posterior:
            omega = float(result.idata.posterior[omega_name].median())
        else:
            omega = result.spec.parameters[p].omega_fixed
        out[p] = 1.0 - etas[f"ETA_{p}"].std(ddof=1) / omega
    return pd.Series(out, name="shrinkage", dtype=float)


def eta_correlation(result) -> pd.DataFrame:
    """Correlation matrix of the per-subject ETA posterior means."""
    etas = eta_table(result)
    return etas[[c for c in etas.columns if c.startswith("ETA_")]].corr()
