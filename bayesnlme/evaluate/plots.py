"""Diagnostic plots.  Each function returns ``(figure, DataFrame)``: the matplotlib
figure and the tidy table of exactly what it drew (computed in
:mod:`bayesnlme.evaluate.diagnostics`; plotting computes no statistics of its own).
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from . import diagnostics  # noqa: E402


def _identity(ax, x, y, log=False):
    vals = np.concatenate([np.asarray(x), np.asarray(y)])
    vals = vals[vals > 0] if log else vals
    lo, hi = (vals.min(), vals.max()) if len(vals) else (0, 1)
    ax.plot([lo, hi], [lo, hi], color="k", lw=1, ls="--")
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")


def plot_observed_vs_predicted(gof: pd.DataFrame):
    """DV against PRED and IPRED, linear and log axes, with identity lines."""
    fig, axes = plt.subplots(2, 2, figsize=(9, 8))
    for row, log in enumerate((False, True)):
        for col, pred in enumerate(("PRED", "IPRED")):
            ax = axes[row, col]
            d = gof[(gof["DV"] > 0) & (gof[pred] > 0)] if log else gof
            ax.scatter(d[pred], d["DV"], s=12, alpha=0.7)
            _identity(ax, d[pred], d["DV"], log)
            ax.set(xlabel=f"{pred} (DV units)", ylabel="DV", title=f"DV vs {pred} ({'log' if log else 'linear'})")
    fig.tight_layout()
    return fig, gof[["ID", "TIME", "DV", "PRED", "IPRED"]]


def plot_residuals(gof: pd.DataFrame):
    """CWRES and NPDE against TIME and PRED, with zero and +/-1.96 reference lines.

    Censored (BLQ) records, whose NPDE come from imputed values, are drawn in red.
    """
    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    cens = gof["CENS"].to_numpy() != 0 if "CENS" in gof else np.zeros(len(gof), bool)
    for row, res in enumerate(("CWRES", "NPDE")):
        for col, x in enumerate(("TIME", "PRED")):
            ax = axes[row, col]
            ax.scatter(gof.loc[~cens, x], gof.loc[~cens, res], s=12, alpha=0.7, label="observed")
            if cens.any() and gof.loc[cens, res].notna().any():
                ax.scatter(gof.loc[cens, x], gof.loc[cens, res], s=12, alpha=0.7, color="tab:red",
                           label="censored (BLQ), imputed")
                ax.legend(fontsize=8)
            for level, style in ((0, "-"), (1.96, ":"), (-1.96, ":")):
                ax.axhline(level, color="k", lw=1, ls=style)
            ax.set(xlabel=x, ylabel=res, title=f"{res} vs {x}")
    fig.tight_layout()
    return fig, gof[["ID", "TIME", "PRED", "CWRES", "NPDE"] + (["CENS"] if "CENS" in gof else [])]


def plot_qq(gof: pd.DataFrame):
    """Normal QQ plots of CWRES and NPDE."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
    rows = []
    for ax, res in zip(axes, ("CWRES", "NPDE")):
        sample = np.sort(gof[res].dropna().to_numpy())   # CWRES is undefined at censored records
        theo = stats.norm.ppf((np.arange(1, len(sample) + 1) - 0.5) / len(sample))
        ax.scatter(theo, sample, s=10)
        _identity(ax, theo, sample)
        ax.set(xlabel="N(0, 1) quantile", ylabel=f"{res} quantile", title=f"QQ plot of {res}")
        rows.append(pd.DataFrame({"residual": res, "theoretical": theo, "sample": sample}))
    fig.tight_layout()
    return fig, pd.concat(rows, ignore_index=True)


def plot_individual_fits(gof: pd.DataFrame, *, curves: pd.DataFrame | None = None, log: bool = False,
                         max_subjects: int = 36):
    """Per-subject panels: observations, IPRED median with 90% band, PRED.

    Curves are drawn from ``curves`` (:func:`bayesnlme.evaluate.predict.predict_at_times`
    on a fine time grid) when given, else through the observation times.
    """
    lines = gof if curves is None else curves
    ids = list(dict.fromkeys(gof["ID"]))[:max_subjects]
    ncol = min(4, len(ids))
    nrow = math.ceil(len(ids) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), sharex=True, squeeze=False)
    for ax, sid in zip(axes.flat, ids):
        d = lines[lines["ID"] == sid].sort_values("TIME")
        ax.fill_between(d["TIME"], d["IPRED_q5"], d["IPRED_q95"], alpha=0.25, label="IPRED 90% CrI")
        ax.plot(d["TIME"], d["IPRED"], label="IPRED")
        ax.plot(d["TIME"], d["PRED"], ls="--", color="gray", label="PRED")
        o = gof[gof["ID"] == sid]
        ax.scatter(o["TIME"], o["DV"], s=12, color="k", zorder=3, label="DV")
        ax.set_title(f"ID {sid}", fontsize=9)
        if log:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(ids):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("TIME")
    fig.supylabel("DV")
    fig.tight_layout()
    drawn = lines[lines["ID"].isin(ids)][["ID", "TIME", "IPRED", "IPRED_q5", "IPRED_q95", "PRED"]]
    points = gof[gof["ID"].isin(ids)][["ID", "TIME", "DV"]]
    return fig, pd.concat([drawn.assign(kind="curve"), points.assign(kind="observation")], ignore_index=True)


def plot_eta_covariates(etas: pd.DataFrame, *, max_levels: int = 6):
    """ETA posterior means against each covariate: scatter (continuous) or box (categorical)."""
    eta_cols = [c for c in etas.columns if c.startswith("ETA_")]
    covs = [c for c in etas.columns if c not in eta_cols]
    if not eta_cols or not covs:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.text(0.5, 0.5, "no ETAs or no covariates", ha="center", va="center")
        ax.axis("off")
        return fig, etas
    fig, axes = plt.subplots(len(eta_cols), len(covs), figsize=(3.2 * len(covs), 2.8 * len(eta_cols)),
                             squeeze=False)
    for i, eta in enumerate(eta_cols):
        for j, cov in enumerate(covs):
            ax = axes[i, j]
            x = etas[cov]
            categorical = not pd.api.types.is_numeric_dtype(x) or x.nunique() <= max_levels
            if categorical:
                levels = sorted(x.dropna().unique(), key=str)
                ax.boxplot([etas.loc[x == lv, eta] for lv in levels], tick_labels=[str(lv) for lv in levels])
            else:
                ax.scatter(x, etas[eta], s=14)
            ax.axhline(0, color="k", lw=1)
            ax.set(xlabel=cov, ylabel=eta)
    fig.tight_layout()
    return fig, etas


def plot_eta_correlation(etas: pd.DataFrame):
    """Heat map of the correlation matrix of ETA posterior means, values written in the cells."""
    corr = etas[[c for c in etas.columns if c.startswith("ETA_")]].corr()
    fig, ax = plt.subplots(figsize=(1.2 * len(corr) + 2, 1.2 * len(corr) + 1.5))
    im = ax.imshow(corr.values, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(corr)), corr.columns, rotation=45)
    ax.set_yticks(range(len(corr)), corr.index)
    for (i, j), v in np.ndenumerate(corr.values):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center")
    fig.colorbar(im, ax=ax)
    ax.set_title("ETA correlation (posterior means)")
    fig.tight_layout()
    return fig, corr


def plot_trace(result):
    """Trace and rank plots of the population parameters (ArviZ)."""
    import arviz as az

    names = result.parameter_names()
    axes = az.plot_trace(result.idata, var_names=names, kind="rank_vlines", compact=False)
    fig = axes.ravel()[0].figure
    fig.tight_layout()
    table, _ = diagnostics.convergence_report(result)
    return fig, table
