"""Visual predictive checks: VPC, prediction-corrected VPC and BLQ-aware VPC.

Observations are binned by time (quantiles of the observation times, user
edges, or a nominal-time column).  In each bin (and stratum), the observed
percentiles (default 5th, 50th, 95th) are compared with the distribution of the
same percentiles over simulated replicates of the study (new subjects, one
posterior draw each, :func:`bayesnlme.evaluate.simulate.simulate`): the table gives
that distribution's prediction interval (default 90%) and median, and flags
``OUTSIDE`` when the observed percentile falls outside its interval.

Prediction correction (Bergstrand et al., AAPS J 2011; lower bound 0):
``pcY_ij = Y_ij * PRED_bin / PRED_ij`` with ``PRED_bin`` the median PRED of
the bin's observations, applied to observed and simulated values alike
(observations with PRED <= 0, e.g. pre-dose, are left out).  Variability
correction: ``pvcY_ij = PRED_bin + (pcY_ij - PRED_bin) * sd_bin / sd_ij`` with
``sd_ij`` the SD of the simulated ``pcY_ij`` over replicates and ``sd_bin`` the
median of ``sd_ij`` in the bin.

BLQ (``lloq``, or the data's ``CENS`` column): observed values below LLOQ
keep their rank (they are the lowest values) but an observed percentile that
falls among them is unknown and reported as missing; it counts as outside its
interval when the whole interval lies above LLOQ.  A ``BLQ_FRACTION`` row per
bin compares the observed fraction below LLOQ with the simulated fractions.
With ``CENS`` the LLOQ is per record (:func:`bayesnlme.evaluate.outcomes.record_lloq`),
``CENS = 1`` records count as below it, and a bin's percentiles are censored
at the bin's highest LLOQ; for a pcVPC the LLOQs are corrected like the data.

Observation types: a fit with several (``DVID``) gets one VPC per type
(``dvid=``); bernoulli, ordinal and count types get a categorical VPC and
time-to-event types a Kaplan--Meier VPC (:mod:`bayesnlme.vpc.types`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayesnlme.errors import BayesNLMEInputError, DataError
from bayesnlme.evaluate.simulate import simulate
from bayesnlme.vpc.binning import assign_bins, bin_edges, observation_strata
from bayesnlme.vpc.outcomes import plot_categorical_vpc, plot_km_vpc
from bayesnlme.vpc.types import censored_observations, outcome_vpc_table, select_type

TABLE_COLUMNS = ["STRATUM", "BIN", "BIN_LO", "BIN_HI", "TIME", "N_OBS", "STATISTIC", "OBSERVED",
                 "SIM_LO", "SIM_MEDIAN", "SIM_HI", "OUTSIDE"]


def prediction_correct(y: np.ndarray, sims: np.ndarray, pred: np.ndarray, groups: np.ndarray,
                       variability: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Prediction-(and variability-)corrected observations and simulations.

    Parameters
    ----------
    y : numpy.ndarray, shape (n_obs,)
    sims : numpy.ndarray, shape (n_rep, n_obs)
    pred : numpy.ndarray, shape (n_obs,)
        PRED of each observation (> 0).
    groups : numpy.ndarray of int, shape (n_obs,)
        Bin (and stratum) of each observation; corrections are within groups.

    Returns
    -------
    pc_y, pc_sims : numpy.ndarray
        Same shapes as ``y`` and ``sims`` (see the module docstring for the formulas).
    """
    pc_y, pc_sims = np.empty_like(y, dtype=float), np.empty_like(sims, dtype=float)
    for g in np.unique(groups):
        m = groups == g
        ref = np.median(pred[m])
        pc_y[m] = y[m] * ref / pred[m]
        pc_sims[:, m] = sims[:, m] * ref / pred[m]
        if variability:
            sd = pc_sims[:, m].std(axis=0, ddof=1)
            scale = np.median(sd) / np.where(sd > 0, sd, np.inf)
            pc_y[m] = ref + (pc_y[m] - ref) * scale
            pc_sims[:, m] = ref + (pc_sims[:, m] - ref) * scale
    return pc_y, pc_sims


def _censored_quantile(values: np.ndarray, q: np.ndarray, lloq, below=None) -> np.ndarray:
    """Quantiles with values below LLOQ ranked lowest; a quantile among them is NaN (unknown).

    ``below`` (default ``values < lloq``) marks the censored values when each has its own LLOQ.
    """
    if lloq is None:
        return np.quantile(values, q, axis=-1)
    below = values < lloq if below is None else below
    out = np.quantile(np.where(below, -1e300, values), q, axis=-1)
    return np.where(out < lloq, np.nan, out)


def vpc_statistics(y, sims, time, *, bins=8, strata=None, percentiles=(5, 50, 95), pi: float = 90,
                   lloq: float | None = None) -> pd.DataFrame:
    """Observed percentiles and simulated prediction intervals per bin (and stratum).

    Parameters
    ----------
    y : array, shape (n_obs,)
        Observed values (already prediction corrected for a pcVPC).
    sims : array, shape (n_rep, n_obs)
        Simulated replicates of ``y``.
    time : array, shape (n_obs,)
        Binning variable (time, or nominal time).
    bins : int or sequence
        Number of quantile bins of ``time`` or bin edges.
    strata : array, shape (n_obs,), optional
        Stratum label of each observation.
    percentiles : sequence of float
        Percentiles (0-100) of the observations to check.
    pi : float
        Prediction interval (percent) of the simulated percentiles.
    lloq : float or array of shape (n_obs,), optional
        Lower limit of quantification (DV units; per record, NaN = none):
        BLQ-aware percentiles (censored at the bin's highest LLOQ) and a
        ``BLQ_FRACTION`` row per bin.

    Returns
    -------
    pandas.DataFrame
        :data:`TABLE_COLUMNS`; ``STATISTIC`` is ``P<k>`` or ``BLQ_FRACTION``.
    """
    y, sims, time = np.asarray(y, float), np.asarray(sims, float), np.asarray(time, float)
    if not 0 < pi < 100 or any(not 0 < p < 100 for p in percentiles):
        raise BayesNLMEInputError(f"percentiles and PI must lie strictly between 0 and 100 "
                                  f"(got percentiles {list(percentiles)}, PI {pi})")
    strata = np.full(len(y), "all", dtype=object) if strata is None else np.asarray(strata, dtype=object)
    edges = bin_edges(time, bins)
    b = assign_bins(time, edges)
    q = np.asarray(percentiles, float) / 100
    band = np.array([(100 - pi) / 200, 0.5, 1 - (100 - pi) / 200])
    limits = None if lloq is None else np.broadcast_to(np.asarray(lloq, float), y.shape)
    rows = []
    for s in pd.unique(strata):
        for k in range(len(edges) - 1):
            m = (strata == s) & (b == k)
            if not m.any():
                continue
            base = {"STRATUM": s, "BIN": k + 1, "BIN_LO": edges[k], "BIN_HI": edges[k + 1],
                    "TIME": float(np.median(time[m])), "N_OBS": int(m.sum())}
            lq = _bin_lloq(limits, m)
            obs = _censored_quantile(y[m], q, lq, None if lq is None else y[m] < limits[m])
            # (n_q, n_rep), uncensored model quantiles; a simulated record that failed (NaN: an ODE solve
            # past its step budget at extreme parameters) is left out of its replicate
            vals = sims[:, m]
            sim = (np.nanquantile if np.isnan(vals).any() else np.quantile)(vals, q, axis=1)
            lo, med, hi = (np.nanquantile if np.isnan(sim).any() else np.quantile)(sim, band, axis=1)
            for j, p in enumerate(percentiles):
                if np.isnan(obs[j]):     # observed percentile below LLOQ: outside if the whole PI is above it
                    outside = bool(lo[j] >= lq)
                else:
                    outside = bool(obs[j] < lo[j] or obs[j] > hi[j])
                rows.append({**base, "STATISTIC": f"P{p:g}", "OBSERVED": obs[j], "SIM_LO": lo[j],
                             "SIM_MEDIAN": med[j], "SIM_HI": hi[j], "OUTSIDE": outside})
            if lq is not None:
                frac = (sims[:, m] < limits[m]).mean(axis=1)
                lo_f, med_f, hi_f = np.quantile(frac, band)
                obs_f = float((y[m] < limits[m]).mean())
                rows.append({**base, "STATISTIC": "BLQ_FRACTION", "OBSERVED": obs_f, "SIM_LO": lo_f,
                             "SIM_MEDIAN": med_f, "SIM_HI": hi_f, "OUTSIDE": bool(obs_f < lo_f or obs_f > hi_f)})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _bin_lloq(limits, m):
    """A bin's LLOQ: the highest of its records' (None when none has one)."""
    if limits is None or not np.isfinite(limits[m]).any():
        return None
    return float(np.nanmax(limits[m]))


def vpc_table(result, sim=None, *, n_sim: int = 200, bins=8, pc: bool = False, variability: bool = False,
              stratify: str | None = None, percentiles=(5, 50, 95), pi: float = 90,
              lloq: float | None = None, seed: int = 0, dvid: int | None = None) -> pd.DataFrame:
    """VPC (or pcVPC) table of a fit on its own data (one observation type).

    Parameters
    ----------
    result : FitResult
    sim : bayesnlme.evaluate.simulate.Simulation, optional
        Simulations of the fitted design with new subjects; default: made
        here with ``n_sim`` replicates.
    bins : int, sequence or str
        Number of quantile bins of TIME, bin edges (time units), or the name
        of a nominal-time column (one bin per distinct value).
    pc, variability : bool
        Prediction correction, and its variability correction.
    stratify : str, optional
        Data column (e.g. a covariate or dose group; ``DOSE`` = first dose).
    percentiles, pi, lloq
        See :func:`vpc_statistics`.  With a ``CENS`` column the LLOQ comes from
        the data (``lloq`` then only sets it for uncensored records).
    dvid : int, optional
        Observation type shown (required when the fit has several).

    Returns
    -------
    pandas.DataFrame
        :data:`TABLE_COLUMNS`; for a bernoulli, ordinal or count type the
        categorical table and for a time-to-event type the Kaplan--Meier table
        of :mod:`bayesnlme.vpc.outcomes` (see :func:`bayesnlme.vpc.types.outcome_vpc_table`).
    """
    data = result.data
    model, mask = select_type(result.spec, data, dvid)
    time = data.obs_time.astype(float)
    if isinstance(bins, str):
        if bins not in data.frame.columns:
            raise DataError(f"nominal-time column {bins!r} for VPC bins is not in the data",
                            source=data.source, column=bins)
        time = data.frame.loc[data.frame["_OBS"], bins].to_numpy(float)
        levels = np.unique(time[mask])
        bins = np.append(levels, levels[-1] + 1.0) if len(levels) > 1 else np.array([levels[0], levels[0] + 1])
        time = time.copy()
    strata = observation_strata(data, stratify) if stratify else None
    if not model.is_normal:
        if pc:
            raise BayesNLMEInputError(f"prediction correction applies to continuous observation types; DVID "
                                      f"{model.dvid} is {model.likelihood}")
        return outcome_vpc_table(result, model, mask, sim, n_sim=n_sim, time=time, bins=bins, strata=strata,
                                 pi=pi, seed=seed)
    sim = simulate(result, n_draws=n_sim, seed=seed) if sim is None else sim
    y, lloq = censored_observations(data, mask, lloq, result.spec.observation_models())
    sims, time, pred = sim.dv[:, mask], time[mask], sim.pred[mask]
    strata = strata[mask] if strata is not None else None
    if pc:
        keep = pred > 0
        groups = assign_bins(time, bin_edges(time, bins))
        if strata is not None:
            groups = pd.factorize(pd.Series(strata).astype(str) + "|" + groups.astype(str))[0]
        if np.ndim(lloq):   # per-record LLOQs are corrected like the data (the same monotone map)
            lloq = prediction_correct(lloq[keep], sims[:, keep], pred[keep], groups[keep], variability)[0]
        y, sims = prediction_correct(y[keep], sims[:, keep], pred[keep], groups[keep], variability)
        time = time[keep]
        strata = strata[keep] if strata is not None else None
    return vpc_statistics(y, sims, time, bins=bins, strata=strata, percentiles=percentiles, pi=pi,
                          lloq=lloq)


def plot_vpc(table: pd.DataFrame, *, log: bool = False, ylabel: str = "DV", title: str = "VPC"):
    """Draw a VPC table: shaded PIs of the simulated percentiles, their medians, observed percentiles.

    Returns
    -------
    (matplotlib.figure.Figure, pandas.DataFrame)
        The figure and ``table`` (every number drawn).
    """
    import matplotlib.pyplot as plt

    strata = list(pd.unique(table["STRATUM"]))
    blq = (table["STATISTIC"] == "BLQ_FRACTION").any()
    fig, axes = plt.subplots(1 + blq, len(strata), figsize=(5 * len(strata), 4 + 2.5 * blq), squeeze=False,
                             sharex=True)
    stats = [s for s in pd.unique(table["STATISTIC"]) if s != "BLQ_FRACTION"]
    for c, s in enumerate(strata):
        ax = axes[0, c]
        for st in stats:
            t = table[(table["STRATUM"] == s) & (table["STATISTIC"] == st)]
            central = st == "P50"
            ax.fill_between(t["TIME"], t["SIM_LO"], t["SIM_HI"], alpha=0.3,
                            color="tab:red" if central else "tab:blue", label=f"simulated {st} PI")
            first = st == stats[0]
            ax.plot(t["TIME"], t["SIM_MEDIAN"], "--", color="k", lw=0.8, label="simulated median" if first else None)
            ax.plot(t["TIME"], t["OBSERVED"], "-o", color="k", ms=3, lw=1.5 if central else 1,
                    label="observed" if first else None)
            bad = t[t["OUTSIDE"]]
            ax.plot(bad["TIME"], bad["OBSERVED"], "o", mfc="none", mec="red", ms=9,
                    label="outside PI" if first else None)
        ax.set_title(f"{title}: {s}" if len(strata) > 1 else title)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        if blq:
            t = table[(table["STRATUM"] == s) & (table["STATISTIC"] == "BLQ_FRACTION")]
            axes[1, c].fill_between(t["TIME"], t["SIM_LO"], t["SIM_HI"], alpha=0.3, color="tab:blue")
            axes[1, c].plot(t["TIME"], t["OBSERVED"], "-o", color="k", ms=3)
            axes[1, c].set_ylabel("fraction < LLOQ")
        axes[-1, c].set_xlabel("time")
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig, table


def vpc(result, *, log: bool = False, **kwargs):
    """VPC (``pc=True``: pcVPC) of a fit: :func:`vpc_table` drawn by :func:`plot_vpc`.

    Returns
    -------
    (matplotlib.figure.Figure, pandas.DataFrame)
    """
    table = vpc_table(result, **kwargs)
    which = f" (DVID {kwargs['dvid']})" if kwargs.get("dvid") is not None else ""
    if "category" in table.columns or "n_at_risk" in table.columns:   # a non-continuous observation type

        if "category" in table.columns:
            return plot_categorical_vpc(table, title="categorical VPC" + which)
        return plot_km_vpc(table, title="Kaplan-Meier VPC" + which)
    title = ("pvcVPC" if kwargs.get("variability") else "pcVPC") if kwargs.get("pc") else "VPC"
    return plot_vpc(table, log=log, ylabel=("prediction-corrected " if kwargs.get("pc") else "") + "DV",
                    title=title + which)
