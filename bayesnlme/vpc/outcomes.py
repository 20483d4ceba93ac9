"""VPCs of non-continuous outcomes: categorical probabilities per bin and Kaplan--Meier VPCs.

Categorical (bernoulli, ordinal, counts): observations are binned by time or
exposure (:func:`bayesnlme.vpc.bin_edges`); in each bin (and stratum) the
observed proportion of every category is compared with the distribution of the
same proportion over simulated replicates of the study.  The table gives that
distribution's median and prediction interval (default 90%) and flags
``outside`` when the observed proportion falls outside the interval.

Time to event: the observed Kaplan--Meier (product-limit) survival curve on a
time grid is compared with the median and prediction interval of the KM curves
of simulated studies (one per posterior draw), with the same subjects and the
same follow-up.  Simulated subjects are censored at their observed
end of follow-up (:func:`simulate_event_times`): a subject censored at ``T``
is followed to ``T`` in every replicate, a subject with an event is followed
to the end of the study (``t_max``, default the last observed TTE time), the
usual KM-VPC convention, so the simulated curves carry the study's censoring.
The event times themselves come from :mod:`bayesnlme.evaluate.event_times`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.event_times import simulate_event_times, tte_observed
from bayesnlme.vpc.binning import assign_bins, bin_edges, observation_strata

CATEGORICAL_COLUMNS = ["stratum", "bin", "x_lo", "x_hi", "x_mid", "category", "n", "observed",
                       "sim_median", "sim_lo", "sim_hi", "outside"]
KM_COLUMNS = ["stratum", "time", "n_at_risk", "observed", "sim_median", "sim_lo", "sim_hi", "outside"]
_MAX_CATEGORIES = 20
_CELLS = 20_000_000   # array elements per vectorised block (bounds memory)


def _band(pi: float) -> np.ndarray:
    if not 0 < pi < 100:
        raise BayesNLMEInputError(f"prediction interval must lie strictly between 0 and 100 percent, got {pi}")
    return np.array([(100 - pi) / 200, 0.5, 1 - (100 - pi) / 200])


def _strata(strata, n: int, what: str) -> np.ndarray:
    if strata is None:
        return np.full(n, "all", dtype=object)
    strata = np.asarray(strata, dtype=object)
    if strata.shape != (n,):
        raise BayesNLMEInputError(f"strata must have one label per {what} ({n}), got shape {strata.shape}")
    return strata


# ---------------------------------------------------------------------- categorical outcomes


def categorical_vpc_table(y, sims, x, *, bins=6, categories=None, pi: float = 90,
                          strata=None) -> pd.DataFrame:
    """Observed vs simulated proportion of each category per bin (and stratum).

    Parameters
    ----------
    y : array, shape (n_obs,)
        Observed categories: 0/1 (bernoulli), 0..K-1 (ordinal) or counts.
    sims : array, shape (n_rep, n_obs)
        Simulated replicates of ``y`` (one posterior draw each).
    x : array, shape (n_obs,)
        Binning variable: time (time units of the data) or exposure.
    bins : int or sequence
        Number of quantile bins of ``x`` or bin edges (units of ``x``).
    categories : sequence, optional
        Category values whose proportions are checked (``P(Y = c)``); default
        every value in ``y`` and ``sims`` (at most 20: pass the counts of
        interest for count data).
    pi : float
        Prediction interval (percent) of the simulated proportions.
    strata : array, shape (n_obs,), optional
        Stratum label of each observation (dose group, covariate class).

    Returns
    -------
    pandas.DataFrame
        :data:`CATEGORICAL_COLUMNS`, one row per stratum, bin and category:
        ``x_lo``/``x_hi`` the bin edges, ``x_mid`` the median ``x`` of its
        observations, ``n`` its number of observations, ``observed`` the
        observed proportion (0-1), ``sim_median``/``sim_lo``/``sim_hi`` the
        median and PI of the simulated proportions, ``outside`` True when
        ``observed`` lies outside ``[sim_lo, sim_hi]``.
    """
    y, x = np.asarray(y, float), np.asarray(x, float)
    sims = np.atleast_2d(np.asarray(sims, float))
    if sims.shape[1] != len(y) or len(x) != len(y):
        raise BayesNLMEInputError(f"y ({len(y)}), x ({len(x)}) and the columns of sims ({sims.shape[1]}) "
                                  f"must have one entry per observation")
    band = _band(pi)
    strata = _strata(strata, len(y), "observation")
    if categories is None:
        categories = np.unique(np.concatenate([y, sims.ravel()]))
        if len(categories) > _MAX_CATEGORIES:
            raise BayesNLMEInputError(f"{len(categories)} distinct outcome values: pass categories=[...] "
                                      f"(e.g. the counts 0..5) to choose the proportions to check")
    cats = np.asarray(categories, float)
    edges = bin_edges(x, bins)
    b = assign_bins(x, edges)
    rows = []
    for s in pd.unique(strata):
        for k in range(len(edges) - 1):
            m = (strata == s) & (b == k)
            if not m.any():
                continue
            obs = (y[m, None] == cats).mean(axis=0)                       # (K,)
            sim = (sims[:, m, None] == cats).mean(axis=1)                 # (n_rep, K)
            lo, med, hi = np.quantile(sim, band, axis=0)
            base = {"stratum": s, "bin": k + 1, "x_lo": edges[k], "x_hi": edges[k + 1],
                    "x_mid": float(np.median(x[m])), "n": int(m.sum())}
            rows += [{**base, "category": _label(c), "observed": obs[j], "sim_median": med[j],
                      "sim_lo": lo[j], "sim_hi": hi[j], "outside": bool(obs[j] < lo[j] or obs[j] > hi[j])}
                     for j, c in enumerate(cats)]
    return pd.DataFrame(rows, columns=CATEGORICAL_COLUMNS)


def _label(c: float):
    return int(c) if float(c).is_integer() else c


def plot_categorical_vpc(table: pd.DataFrame, *, xlabel: str = "time", title: str = "categorical VPC"):
    """Draw a categorical VPC table: one panel per category (columns) and stratum (rows).

    Returns
    -------
    (matplotlib.figure.Figure, pandas.DataFrame)
        The figure and ``table`` (every number drawn).
    """
    import matplotlib.pyplot as plt

    strata, cats = list(pd.unique(table["stratum"])), list(pd.unique(table["category"]))
    fig, axes = plt.subplots(len(strata), len(cats), figsize=(3.6 * len(cats), 3.2 * len(strata)),
                             squeeze=False, sharex=True, sharey=True)
    for r, s in enumerate(strata):
        for c, cat in enumerate(cats):
            ax = axes[r, c]
            t = table[(table["stratum"] == s) & (table["category"] == cat)]
            ax.fill_between(t["x_mid"], t["sim_lo"], t["sim_hi"], alpha=0.3, color="tab:blue",
                            label="simulated PI")
            ax.plot(t["x_mid"], t["sim_median"], "--", color="k", lw=0.8, label="simulated median")
            ax.plot(t["x_mid"], t["observed"], "-o", color="k", ms=3, label="observed")
            bad = t[t["outside"]]
            ax.plot(bad["x_mid"], bad["observed"], "o", mfc="none", mec="red", ms=9, label="outside PI")
            ax.set_title(f"P(Y = {cat})" + (f", {s}" if len(strata) > 1 else ""), fontsize=9)
            ax.set_ylim(-0.02, 1.02)
        axes[r, 0].set_ylabel("proportion")
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return fig, table


# ---------------------------------------------------------------------- Kaplan--Meier


def kaplan_meier(time, event, grid) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan--Meier survival (right censoring) at grid times, vectorised over leading dimensions.

    Parameters
    ----------
    time : array, shape (..., n)
        Event or censoring time of each subject (time units).
    event : array, shape (..., n)
        1 (or True) event, 0 censored at ``time``.
    grid : array, shape (G,)
        Times at which to evaluate the curve.

    Returns
    -------
    survival : numpy.ndarray, shape (..., G)
        Product-limit estimate ``S(t) = prod_{t_j <= t} (1 - d_j / n_j)``
        (right-continuous: events at ``t`` count; subjects censored at
        ``t_j`` are at risk at ``t_j``); 0 after an event of the last subject
        at risk, the last value carried forward after the last time.
    n_at_risk : numpy.ndarray of int, shape (..., G)
        Subjects with ``time >= t``.
    """
    time, event = np.asarray(time, float), np.asarray(event).astype(bool)
    grid = np.asarray(grid, float)
    n = time.shape[-1]
    # ties: events first, so sequential factors (n-j-1)/(n-j) telescope to 1 - d/n_at_risk of the tie group
    order = np.lexsort((~event, time), axis=-1)
    t_s = np.take_along_axis(time, order, -1)
    e_s = np.take_along_axis(event, order, -1)
    factor = np.where(e_s, 1.0 - 1.0 / (n - np.arange(n)), 1.0)
    surv = np.cumprod(factor, axis=-1)
    lead = t_s.shape[:-1]
    flat_t, flat_s = t_s.reshape(-1, n), surv.reshape(-1, n)
    out_s = np.empty((len(flat_t), len(grid)))
    out_n = np.empty((len(flat_t), len(grid)), int)
    step = max(1, _CELLS // max(1, n * len(grid)))
    for start in range(0, len(flat_t), step):   # blocks of replicates bound the (rep, G, n) comparison
        tt = flat_t[start:start + step, None, :]
        upto = (tt <= grid[None, :, None]).sum(-1)                       # sorted times <= t
        out_n[start:start + step] = (tt >= grid[None, :, None]).sum(-1)
        s = np.take_along_axis(flat_s[start:start + step], np.maximum(upto - 1, 0), -1)
        out_s[start:start + step] = np.where(upto == 0, 1.0, s)
    return out_s.reshape(*lead, len(grid)), out_n.reshape(*lead, len(grid))


def km_vpc_table(obs_time, obs_event, sim_time, sim_event, *, times=None, pi: float = 90,
                 strata=None) -> pd.DataFrame:
    """Observed Kaplan--Meier curve against the simulated KM curves' median and prediction interval.

    Parameters
    ----------
    obs_time, obs_event : array, shape (n_sub,)
        Observed event/censoring time (time units) and event indicator (1 event, 0 censored).
    sim_time, sim_event : array, shape (n_rep, n_sub)
        Simulated studies with the same subjects, censored at each subject's
        observed end of follow-up (:func:`simulate_event_times`).
    times : array-like, optional
        Time grid (time units); default 41 points from 0 to the last observed time.
    pi : float
        Prediction interval (percent) of the simulated survival.
    strata : array, shape (n_sub,), optional
        Stratum label of each subject; a KM curve per stratum.

    Returns
    -------
    pandas.DataFrame
        :data:`KM_COLUMNS`, one row per stratum and time: ``n_at_risk``
        observed subjects still at risk, ``observed`` the observed KM survival
        (0-1), ``sim_median``/``sim_lo``/``sim_hi`` the median and PI of the
        simulated KM survival at that time, ``outside`` True when the observed
        survival lies outside ``[sim_lo, sim_hi]``.
    """
    obs_time, obs_event = np.asarray(obs_time, float), np.asarray(obs_event)
    sim_time, sim_event = np.atleast_2d(np.asarray(sim_time, float)), np.atleast_2d(np.asarray(sim_event))
    n = len(obs_time)
    if len(obs_event) != n or sim_time.shape[1] != n or sim_event.shape != sim_time.shape:
        raise BayesNLMEInputError(f"observed times ({n}), events ({len(obs_event)}) and simulated times/events "
                                  f"{sim_time.shape}/{sim_event.shape} must have one column per subject")
    band = _band(pi)
    grid = np.linspace(0.0, obs_time.max(), 41) if times is None else np.asarray(times, float)
    strata = _strata(strata, n, "subject")
    frames = []
    for s in pd.unique(strata):
        m = strata == s
        obs, at_risk = kaplan_meier(obs_time[m], obs_event[m], grid)
        sim, _ = kaplan_meier(sim_time[:, m], sim_event[:, m], grid)
        lo, med, hi = np.quantile(sim, band, axis=0)
        frames.append(pd.DataFrame({"stratum": s, "time": grid, "n_at_risk": at_risk, "observed": obs,
                                    "sim_median": med, "sim_lo": lo, "sim_hi": hi,
                                    "outside": (obs < lo) | (obs > hi)}))
    return pd.concat(frames, ignore_index=True)[KM_COLUMNS]


def plot_km_vpc(table: pd.DataFrame, *, xlabel: str = "time", title: str = "Kaplan-Meier VPC"):
    """Draw a KM VPC table: simulated PI band and median, observed KM curve, points outside the PI.

    Returns
    -------
    (matplotlib.figure.Figure, pandas.DataFrame)
        The figure and ``table`` (every number drawn).
    """
    import matplotlib.pyplot as plt

    strata = list(pd.unique(table["stratum"]))
    fig, axes = plt.subplots(1, len(strata), figsize=(5 * len(strata), 4), squeeze=False, sharey=True)
    for ax, s in zip(axes[0], strata):
        t = table[table["stratum"] == s]
        ax.fill_between(t["time"], t["sim_lo"], t["sim_hi"], step="post", alpha=0.3, color="tab:blue",
                        label="simulated PI")
        ax.step(t["time"], t["sim_median"], where="post", ls="--", color="k", lw=0.8, label="simulated median")
        ax.step(t["time"], t["observed"], where="post", color="k", lw=1.5, label="observed KM")
        bad = t[t["outside"]]
        ax.plot(bad["time"], bad["observed"], "o", mfc="none", mec="red", ms=8, label="outside PI")
        ax.set_title(f"{title}: {s}" if len(strata) > 1 else title)
        ax.set_xlabel(xlabel)
        ax.set_ylim(-0.02, 1.02)
    axes[0, 0].set_ylabel("survival (event-free fraction)")
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig, table


def km_vpc(result, *, n_draws: int = 200, seed: int = 0, mode: str = "new_subjects", times=None,
           pi: float = 90, stratify: str | None = None, t_max: float | None = None, dvid=None):
    """Kaplan--Meier VPC of a TTE fit on its own data: :func:`km_vpc_table` drawn by :func:`plot_km_vpc`.

    Parameters
    ----------
    stratify : str, optional
        Data column (``DOSE`` = first dose) at the TTE records, one KM curve per value.
    n_draws, seed, mode, t_max, dvid
        See :func:`simulate_event_times`; ``times``, ``pi`` see :func:`km_vpc_table`.

    Returns
    -------
    (matplotlib.figure.Figure, pandas.DataFrame)
    """
    obs_time, obs_event, idx = tte_observed(result, dvid=dvid)
    sim_time, sim_event = simulate_event_times(result, n_draws=n_draws, seed=seed, mode=mode, t_max=t_max,
                                               dvid=dvid)
    strata = observation_strata(result.data, stratify)[idx] if stratify else None
    table = km_vpc_table(obs_time, obs_event, sim_time, sim_event, times=times, pi=pi, strata=strata)
    return plot_km_vpc(table, title="Kaplan-Meier VPC" if mode == "new_subjects" else "Kaplan-Meier IPC")


__all__ = ["categorical_vpc_table", "plot_categorical_vpc", "kaplan_meier", "km_vpc_table", "plot_km_vpc",
           "km_vpc", "simulate_event_times", "tte_observed", "CATEGORICAL_COLUMNS", "KM_COLUMNS"]
