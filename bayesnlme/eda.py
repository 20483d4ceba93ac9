"""Exploratory data analysis of NONMEM-format data, before any model.

Tables return a :class:`pandas.DataFrame`; plots return ``(fig, DataFrame)``,
the figure and the table it draws (``fig`` is None when the data have nothing
to draw, e.g. box plots without a categorical covariate).  Every function
takes an :class:`~bayesnlme.data.NMData`, a file path or a DataFrame.

Covariates are split into *categorical* (text, or at most
``MAX_CATEGORIES`` distinct integer values) and *continuous* (the rest),
using each subject's baseline (first) value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayesnlme.data import NMData, read_nonmem

#: A numeric covariate with at most this many distinct integer values is treated as categorical.
MAX_CATEGORIES = 5


def _data(data) -> NMData:
    return data if isinstance(data, NMData) else read_nonmem(data)


def covariate_kinds(data) -> dict:
    """``{covariate: "categorical" | "continuous"}`` from the baseline values."""
    data = _data(data)
    base = data.baseline_covariates()
    out = {}
    for c in data.covariate_names:
        x = base[c].dropna()
        numeric = pd.api.types.is_numeric_dtype(x)
        few = x.nunique() <= MAX_CATEGORIES and (not numeric or np.all(np.mod(x, 1) == 0))
        out[c] = "categorical" if (not numeric or few) else "continuous"
    return out


def blq_mask(data) -> np.ndarray | None:
    """Boolean (n_obs,): observation below the limit of quantification; None when the data do not say.

    From ``CENS == 1``, else ``BLQ != 0``, else ``DV < LLOQ``.
    """
    data = _data(data)
    obs = data.frame[data.frame["_OBS"]]
    if "CENS" in obs:   # Monolix/nlmixr2 convention: 1 below the limit, -1 above it
        return pd.to_numeric(obs["CENS"], errors="coerce").fillna(0).to_numpy() == 1
    if "BLQ" in obs:
        return pd.to_numeric(obs["BLQ"], errors="coerce").fillna(0).to_numpy() != 0
    if "LLOQ" in obs:
        lloq = pd.to_numeric(obs["LLOQ"], errors="coerce").to_numpy()
        return np.nan_to_num(obs["DV"].to_numpy() < lloq, nan=False)
    return None


# --------------------------------------------------------------------------- tables


def data_summary(data) -> pd.DataFrame:
    """Counts that describe a data set: subjects, doses, observations, exclusions, BLQ share.

    Returns
    -------
    pandas.DataFrame
        Columns ``item`` and ``value`` (text), one row per fact.
    """
    data = _data(data)
    f = data.frame
    per_sub = np.bincount(data.obs_subject, minlength=data.n_subjects)
    n_dose_rec = int((f["EVID"].isin([1, 4])).sum())
    skipped = int(((f["EVID"] == 0) & (f["MDV"] == 1)).sum())
    rows = [
        ("data file", data.source), ("SHA-256", data.sha256), ("records", len(f)),
        ("subjects", data.n_subjects), ("dose records", n_dose_rec),
        ("doses (with ADDL expanded)", int(data.dose_valid.sum())),
        ("observations", data.n_obs),
        ("observations per subject, median (range)", f"{np.median(per_sub):g} ({per_sub.min()}-{per_sub.max()})"),
        ("observation records ignored (EVID=0, MDV=1)", skipped),
        ("time range of observations", f"{data.obs_time.min():g} to {data.obs_time.max():g}"),
        ("covariates", ", ".join(data.covariate_names) or "none"),
    ]
    blq = blq_mask(data)
    if blq is not None:
        rows.append(("observations below LOQ", f"{int(blq.sum())} ({100 * blq.mean():.1f}%)"))
    return pd.DataFrame(rows, columns=["item", "value"]).astype({"value": str})


def covariate_summary(data) -> pd.DataFrame:
    """Baseline covariates: continuous ones overall and by each categorical level, categorical level counts.

    Returns
    -------
    pandas.DataFrame
        Columns ``covariate``, ``group`` ("all" or ``<CAT>=<level>``), ``level``
        (categorical levels), ``n``, ``percent``, ``mean``, ``sd``, ``median``,
        ``min``, ``max``, ``missing``.  One row per subject-level statistic.
    """
    data = _data(data)
    base, kinds = data.baseline_covariates(), covariate_kinds(data)
    cont = [c for c, k in kinds.items() if k == "continuous"]
    cats = [c for c, k in kinds.items() if k == "categorical"]
    rows = []
    groups = [("all", base)] + [(f"{g}={lv}", sub) for g in cats for lv, sub in base.groupby(g, sort=True)]
    for label, sub in groups:
        for c in cont:
            x = sub[c].astype(float)
            rows.append({"covariate": c, "group": label, "n": int(x.notna().sum()), "mean": x.mean(),
                         "sd": x.std(), "median": x.median(), "min": x.min(), "max": x.max(),
                         "missing": int(x.isna().sum())})
    for c in cats:
        counts = base[c].value_counts(dropna=False).sort_index()
        for lv, n in counts.items():
            rows.append({"covariate": c, "group": "all", "level": "missing" if pd.isna(lv) else str(lv),
                         "n": int(n), "percent": 100 * n / len(base)})
    cols = ["covariate", "group", "level", "n", "percent", "mean", "sd", "median", "min", "max", "missing"]
    return pd.DataFrame(rows, columns=cols)


def outlier_table(data, *, k: float = 4.0) -> pd.DataFrame:
    """Observations worth a second look, each with the reason.

    Reasons: a concentration before the subject's first dose; a non-positive
    DV not flagged BLQ; an observation far from the subject's own trend (its
    log DV, after the subject's peak, differs from the log-linear
    interpolation between its two neighbours by more than ``k`` robust SDs
    of all such differences); a subject without doses.

    Returns
    -------
    pandas.DataFrame
        Columns ``ROW`` (record number), ``ID``, ``TIME``, ``DV``, ``reason``.
    """
    data = _data(data)
    obs = pd.DataFrame({"ROW": data.obs_row, "ID": data.ids[data.obs_subject].astype(str),
                        "SUBJ": data.obs_subject, "TIME": data.obs_time, "DV": data.obs_dv})
    first = np.where(data.dose_valid, data.dose_time, np.inf).min(axis=1)
    blq = blq_mask(data)
    blq = np.zeros(len(obs), bool) if blq is None else blq
    found = []
    pre = (obs["TIME"].to_numpy() < first[data.obs_subject]) & (obs["DV"].to_numpy() > 0)
    found.append(obs[pre & np.isfinite(first[data.obs_subject])].assign(reason="concentration before the first dose"))
    after_first = obs["TIME"].to_numpy() > first[data.obs_subject]   # a zero pre-dose sample is expected
    found.append(obs[(obs["DV"] <= 0) & ~blq & after_first].assign(reason="DV <= 0 after dosing (not flagged BLQ)"))
    found.append(obs[~np.isfinite(first[data.obs_subject])].assign(reason="subject has no dose record"))
    logdv = np.log(obs["DV"].where((obs["DV"] > 0) & ~blq))
    g = logdv.groupby(obs["SUBJ"])
    t = obs["TIME"].groupby(obs["SUBJ"])
    w = (obs["TIME"] - t.shift(1)) / (t.shift(-1) - t.shift(1))
    # log-linear interpolation between the two neighbours: exact for mono-exponential decline
    jump = logdv - (g.shift(1) + w * (g.shift(-1) - g.shift(1)))
    # absorption makes early points jump by design: judge only the decline after the subject's peak,
    # found on a running median so that a single spike cannot be the peak
    smooth = obs.groupby("SUBJ")["DV"].transform(lambda s: s.rolling(3, center=True, min_periods=1).median())
    peak_time = obs.loc[smooth.groupby(obs["SUBJ"]).idxmax(), ["SUBJ", "TIME"]].set_index("SUBJ")["TIME"]
    jump = jump.where(t.shift(1) >= obs["SUBJ"].map(peak_time))
    mad = 1.4826 * np.nanmedian(np.abs(jump - np.nanmedian(jump))) if jump.notna().sum() >= 5 else np.nan
    if np.isfinite(mad) and mad > 0:
        size = jump.abs()
        ja = size.groupby(obs["SUBJ"])
        # a spike also shifts its neighbours' interpolations: flag only the local maximum
        far = (size > k * mad) & (size >= ja.shift(1).fillna(0)) & (size >= ja.shift(-1).fillna(0))
        found.append(obs[far].assign(reason=[f"far from the subject's own trend (log DV off by "
                                             f"{v:+.2f}, {abs(v) / mad:.1f} robust SDs)" for v in jump[far]]))
    out = pd.concat(found, ignore_index=True) if found else obs.iloc[:0].assign(reason="")
    return out.drop(columns="SUBJ").sort_values(["ROW", "reason"]).reset_index(drop=True)


# --------------------------------------------------------------------------- plots


def _last_dose_amount(data: NMData) -> np.ndarray:
    """Amount of the latest dose given before each observation (NaN before any dose)."""
    applies = data.dose_applies & data.dose_valid[data.obs_subject]
    idx = applies.shape[1] - 1 - np.argmax(applies[:, ::-1], axis=1)
    amt = data.dose_amt[data.obs_subject, idx]
    return np.where(applies.any(axis=1), amt, np.nan)


def _group_values(data: NMData, by) -> pd.Series | None:
    if by is None:
        return None
    if by == "dose":
        first_amt = np.where(data.dose_valid, data.dose_amt, np.nan)[:, 0]
        return pd.Series(np.round(first_amt, 3)[data.obs_subject], name="first dose")
    data.require_covariates([by])
    return data.observation_covariates([by])[by]


def spaghetti_table(data, *, dose_normalised: bool = False, by: str | None = None) -> pd.DataFrame:
    """The observations a spaghetti plot draws: ``ID``, ``TIME``, ``DV`` (divided by the latest dose if
    ``dose_normalised``), and ``group`` when ``by`` names a covariate or ``"dose"`` (first dose amount)."""
    data = _data(data)
    df = pd.DataFrame({"ID": data.ids[data.obs_subject].astype(str), "TIME": data.obs_time, "DV": data.obs_dv})
    if dose_normalised:
        df["DV"] = df["DV"] / _last_dose_amount(data)
    group = _group_values(data, by)
    if group is not None:
        df["group"] = group.to_numpy()
    return df


def plot_spaghetti(data, *, log: bool = False, dose_normalised: bool = False, by: str | None = None,
                   facet: bool = False, max_facets: int = 9):
    """DV versus time, one line per subject.

    Parameters
    ----------
    log : bool
        Log-scale DV axis (non-positive values are not drawn).
    dose_normalised : bool
        Divide DV by the amount of the latest dose (concentration per dose unit).
    by : str, optional
        Covariate name or ``"dose"``: colour lines by it (categorical: one colour
        per level; continuous: a colour scale), or one panel per level if ``facet``.
    """
    import matplotlib.pyplot as plt

    data = _data(data)
    df = spaghetti_table(data, dose_normalised=dose_normalised, by=by)
    if log:
        df = df[df["DV"] > 0]
    levels = sorted(df["group"].dropna().unique(), key=str) if by is not None else [None]
    categorical = by is not None and (by == "dose" or covariate_kinds(data).get(by) == "categorical"
                                      or len(levels) <= MAX_CATEGORIES)
    panels = levels[:max_facets] if (facet and categorical) else [None]
    ncol = min(3, len(panels))
    nrow = int(np.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False, sharex=True, sharey=True)
    cmap = plt.get_cmap("tab10" if categorical else "viridis")
    if by is not None and not categorical:
        lo, hi = float(df["group"].min()), float(df["group"].max())
        norm = plt.Normalize(lo, hi if hi > lo else lo + 1)
    for ax, panel in zip(axes.ravel(), panels):
        sub = df if panel is None else df[df["group"] == panel]
        for sid, s in sub.groupby("ID", sort=False):
            if by is None:
                color = "0.35"
            elif categorical:
                color = cmap(levels.index(s["group"].iloc[0]) % 10)
            else:
                color = cmap(norm(float(s["group"].iloc[0])))
            ax.plot(s["TIME"], s["DV"], "-o", ms=2.5, lw=0.8, color=color, alpha=0.8)
        if log:
            ax.set_yscale("log")
        if panel is not None:
            ax.set_title(f"{by} = {panel}", fontsize=9)
        ax.set_xlabel("TIME")
        ax.set_ylabel("DV / dose" if dose_normalised else "DV")
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    if by is not None and categorical and not facet:
        handles = [plt.Line2D([], [], color=cmap(i % 10), label=str(lv)) for i, lv in enumerate(levels)]
        axes[0, 0].legend(handles=handles, title=by, fontsize=7, title_fontsize=8)
    elif by is not None and not categorical:
        fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), label=by)
    fig.suptitle(f"Observations vs time{' (dose-normalised)' if dose_normalised else ''}"
                 f"{', log scale' if log else ''}", fontsize=10)
    return fig, df


def plot_covariate_boxplots(data):
    """Box plots of each continuous baseline covariate by each categorical covariate.

    Returns
    -------
    fig : matplotlib Figure or None
        None when there is no (continuous, categorical) pair.
    table : pandas.DataFrame
        Long table ``ID``, ``covariate``, ``value``, ``by``, ``level``.
    """
    import matplotlib.pyplot as plt

    data = _data(data)
    base, kinds = data.baseline_covariates(), covariate_kinds(data)
    pairs = [(c, g) for c, k in kinds.items() if k == "continuous" for g, kg in kinds.items() if kg == "categorical"]
    rows = [pd.DataFrame({"ID": base.index.astype(str), "covariate": c, "value": base[c].to_numpy(float),
                          "by": g, "level": base[g].astype(str).to_numpy()}) for c, g in pairs]
    columns = ["ID", "covariate", "value", "by", "level"]
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)
    if not pairs:
        return None, table
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.6 * len(pairs), 3.4), squeeze=False)
    for ax, (c, g) in zip(axes[0], pairs):
        sub = table[(table["covariate"] == c) & (table["by"] == g)]
        levels = sorted(sub["level"].unique())
        ax.boxplot([sub.loc[sub["level"] == lv, "value"].dropna() for lv in levels])
        ax.set_xticks(range(1, len(levels) + 1), levels)
        ax.set_xlabel(g)
        ax.set_ylabel(c)
    fig.tight_layout()
    return fig, table


def _numeric_baseline(data: NMData) -> pd.DataFrame:
    base = data.baseline_covariates()
    return base[[c for c in base.columns if pd.api.types.is_numeric_dtype(base[c])]].astype(float)


def plot_covariate_scatter(data):
    """Scatter matrix of the numeric baseline covariates (histograms on the diagonal).

    Returns ``(None, table)`` with fewer than two numeric covariates; ``table`` is
    the baseline covariate table (index ID).
    """
    import matplotlib.pyplot as plt

    base = _numeric_baseline(_data(data))
    k = base.shape[1]
    if k < 2:
        return None, base
    fig, axes = plt.subplots(k, k, figsize=(2.2 * k + 1, 2.2 * k + 1), squeeze=False)
    for i, a in enumerate(base.columns):
        for j, b in enumerate(base.columns):
            ax = axes[i, j]
            if i == j:
                ax.hist(base[a].dropna(), bins=12, color="0.6")
            else:
                ax.plot(base[b], base[a], "o", ms=3, alpha=0.7)
            if i == k - 1:
                ax.set_xlabel(b)
            if j == 0:
                ax.set_ylabel(a)
    fig.tight_layout()
    return fig, base


def plot_covariate_correlation(data):
    """Heat map of Pearson correlations between numeric baseline covariates, values written in the cells.

    Returns ``(None, table)`` with fewer than two numeric covariates; ``table`` is the correlation matrix.
    """
    import matplotlib.pyplot as plt

    corr = _numeric_baseline(_data(data)).corr()
    k = corr.shape[0]
    if k < 2:
        return None, corr
    fig, ax = plt.subplots(figsize=(1.1 * k + 2.5, 1.1 * k + 2))
    im = ax.imshow(corr.to_numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(k), corr.columns, rotation=45, ha="right")
    ax.set_yticks(range(k), corr.index)
    for i in range(k):
        for j in range(k):
            v = corr.iat[i, j]
            ax.text(j, i, "" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                    color="white" if abs(v) > 0.6 else "black", fontsize=9)
    fig.colorbar(im, ax=ax, label="Pearson r")
    fig.tight_layout()
    return fig, corr


def plot_outliers(data, *, k: float = 4.0):
    """Spaghetti plot (log scale) with the observations of :func:`outlier_table` marked in red."""
    data = _data(data)
    table = outlier_table(data, k=k)
    fig, _ = plot_spaghetti(data, log=True)
    ax = fig.axes[0]
    flagged = table[table["DV"] > 0]
    ax.plot(flagged["TIME"], flagged["DV"], "o", mfc="none", mec="red", ms=8, label="flagged")
    if len(flagged):
        ax.legend(fontsize=8)
    fig.suptitle(f"{len(table)} flagged observation(s)", fontsize=10)
    return fig, table
