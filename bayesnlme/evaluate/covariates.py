"""Covariate effects of a fit: each covariate-affected parameter's ratio to the reference subject, with
its credible interval, as a table and as a forest plot."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayesnlme.build.covariates import log_factor

_FORMULA = {"power": "({cov}/{ref:g})**theta", "exponential": "exp(theta*({cov}-{ref:g}))",
            "linear": "1+theta*({cov}-{ref:g})", "categorical": "exp(theta_level), reference {cov}={ref}",
            "piecewise": "1+g({cov})-g({ref:g}), knot {knot:g}"}


def effect_ratios(result, values: dict | None = None, quantiles=(0.05, 0.95), ci: float = 0.9) -> pd.DataFrame:
    """Ratio of each covariate-affected parameter to the reference subject's, with credible intervals.

    Parameters
    ----------
    result : bayesnlme.inference.fit.FitResult
    values : dict, optional
        ``{covariate: [values]}`` to evaluate; default: the ``quantiles`` of
        each continuous covariate over subjects (baseline values), and every
        non-reference level of a categorical one.
    quantiles : tuple of float
        Data quantiles used by default (5th and 95th percentile).
    ci : float
        Width of the equal-tailed credible interval.

    Returns
    -------
    pandas.DataFrame
        One row per effect and value: ``effect`` (``<COV>_on_<P>``),
        ``parameter``, ``covariate``, ``kind``, ``reference``, ``model``
        (the factor's formula, i.e. the standardisation), ``value``, ``label``,
        ``ratio_q50`` and ``ratio_lo``/``ratio_hi`` (posterior median and
        interval of ``P(value) / P(reference)``), ``fixed`` (effect thetas fixed).
    """
    values = values or {}
    base = result.data.baseline_covariates(sorted({e.covariate for e in result.spec.covariates}))
    lo_q, hi_q = (1 - ci) / 2, 1 - (1 - ci) / 2
    rows = []
    for eff in result.spec.covariates:
        thetas = [np.asarray(f, float) if f is not None else result.posterior_draws(n)
                  for n, f in zip(eff.effect_names(), eff.fixed_values())]
        if eff.covariate in values:
            xs = list(values[eff.covariate])
        elif eff.kind == "categorical":
            xs = list(eff.levels)
        else:
            xs = list(np.quantile(base[eff.covariate].astype(float), quantiles))
        for q, x in enumerate(xs):
            ratio = np.exp(np.atleast_1d(log_factor(eff, np.asarray(x), thetas)))
            label = (f"{eff.covariate} = {x}" if eff.kind == "categorical" or eff.covariate in values
                     else f"{eff.covariate} = {x:.3g} (P{100 * quantiles[q]:g})")
            name = eff.effect_names()[0] if eff.shared_with is None else eff.label
            rows.append({"effect": name, "parameter": eff.parameter, "covariate": eff.covariate,
                         "kind": eff.kind, "reference": eff.reference,
                         "model": _FORMULA[eff.kind].format(cov=eff.covariate, ref=eff.reference,
                                                            knot=getattr(eff, "knot", None) or 0.0),
                         "value": x, "label": label, "ratio_q50": float(np.median(ratio)),
                         "ratio_lo": float(np.quantile(ratio, lo_q)), "ratio_hi": float(np.quantile(ratio, hi_q)),
                         "fixed": all(f is not None for f in eff.fixed_values())})
    return pd.DataFrame(rows)


def plot_covariate_forest(result, values: dict | None = None, quantiles=(0.05, 0.95), ci: float = 0.9):
    """Forest plot of covariate effects: ratio to the reference subject on a log axis.

    A vertical line marks no effect (ratio 1) and a shaded band the 0.8-1.25
    range conventionally regarded as clinically unimportant.

    Returns
    -------
    fig : matplotlib.figure.Figure
    df : pandas.DataFrame
        The table drawn (:func:`effect_ratios`).
    """
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    df = effect_ratios(result, values, quantiles, ci)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * max(len(df), 1)))
    y = np.arange(len(df))[::-1]
    ax.axvspan(0.8, 1.25, color="0.85", zorder=0, label="0.8-1.25")
    ax.axvline(1.0, color="k", lw=1)
    if len(df):
        ax.errorbar(df["ratio_q50"], y, xerr=[df["ratio_q50"] - df["ratio_lo"], df["ratio_hi"] - df["ratio_q50"]],
                    fmt="o", color="C0", capsize=3, label=f"median, {100 * ci:g}% CrI")
    ax.set_yticks(y, [f"{p}: {lab}" for p, lab in zip(df["parameter"], df["label"])])
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set(xlabel="ratio to reference subject (log scale)", title="Covariate effects")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig, df
