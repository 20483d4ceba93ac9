"""Prior predictive check: concentrations simulated from the priors alone, against the data.

Before sampling, a user sees whether the priors put the study's observations
in a clinically plausible range: if most observations fall outside the prior
predictive 90% band the priors (or the units) are wrong.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pymc as pm

from bayesnlme.build import build_model
from bayesnlme.data import read_nonmem
from bayesnlme.errors import BayesNLMEInputError


def prior_predictive(spec, data, *, draws: int = 500, seed: int = 0) -> tuple[np.ndarray, object]:
    """DV simulated from the priors (population parameters, ETAs and residual error).

    Returns
    -------
    sims : numpy.ndarray
        Shape (draws, n_obs), DV units.
    data : NMData
    """
    data = read_nonmem(data)
    tte = [m for m in spec.observation_models() if m.family.event_time]
    if tte:
        raise BayesNLMEInputError(
            f"prior predictive check: model {spec.name} has a time-to-event observation model, whose outcome is "
            f"the event time, not a DV value at a record's time; check its priors with a Kaplan-Meier VPC "
            f"(bayesnlme vpc --dvid) of a short fit instead")
    built = build_model(spec, data)
    with built.model:
        try:
            idata = pm.sample_prior_predictive(draws=draws, random_seed=seed, var_names=["DV"])
        except (NotImplementedError, ValueError) as exc:
            raise BayesNLMEInputError(f"prior predictive check: model {spec.name} cannot simulate DV "
                                      f"({type(exc).__name__}: {exc})") from None
    return idata.prior_predictive["DV"].values.reshape(draws, data.n_obs), built.data


def prior_check_table(data, sims: np.ndarray, n_bins: int = 8, pi: float = 90.0) -> pd.DataFrame:
    """Per time bin: prior predictive percentiles and the share of observations inside the band.

    Parameters
    ----------
    data : NMData
    sims : numpy.ndarray
        Prior predictive DV, shape (draws, n_obs).
    n_bins : int
        Number of TIME bins (quantiles of the observation times).
    pi : float
        Width of the prior predictive band, percent.

    Returns
    -------
    pandas.DataFrame
        One row per bin: ``time_lo``, ``time_hi``, ``time_mid`` (median observation
        time, h), ``n_obs``, ``pi_lo``, ``pi50``, ``pi_hi`` (prior predictive
        percentiles of all simulated DVs in the bin), ``obs_median``,
        ``share_inside`` (observations inside [pi_lo, pi_hi]); ``attrs["share_inside"]``
        is the share over all observations.
    """
    t, dv = data.obs_time, data.obs_dv
    edges = np.unique(np.quantile(t, np.linspace(0, 1, n_bins + 1)))
    which = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, max(len(edges) - 2, 0))
    lo_q, hi_q = (100 - pi) / 200, 1 - (100 - pi) / 200
    rows, inside = [], np.zeros(len(t), bool)
    for b in np.unique(which):
        m = which == b
        lo, med, hi = np.quantile(sims[:, m], [lo_q, 0.5, hi_q])
        inside[m] = (dv[m] >= lo) & (dv[m] <= hi)
        rows.append({"time_lo": edges[b], "time_hi": edges[min(b + 1, len(edges) - 1)],
                     "time_mid": float(np.median(t[m])), "n_obs": int(m.sum()), "pi_lo": lo, "pi50": med,
                     "pi_hi": hi, "obs_median": float(np.median(dv[m])), "share_inside": float(inside[m].mean())})
    df = pd.DataFrame(rows)
    df.attrs["share_inside"] = float(inside.mean())
    return df


def plot_prior_check(spec, data, *, draws: int = 500, seed: int = 0, n_bins: int = 8, pi: float = 90.0,
                     log: bool = False):
    """Observed DV against TIME over the prior predictive band.

    Returns
    -------
    fig : matplotlib.figure.Figure
    df : pandas.DataFrame
        :func:`prior_check_table` of the simulations drawn.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    sims, data = prior_predictive(spec, data, draws=draws, seed=seed)
    df = prior_check_table(data, sims, n_bins, pi)
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.fill_between(df["time_mid"], df["pi_lo"], df["pi_hi"], color="C0", alpha=0.25,
                    label=f"prior predictive {pi:g}%")
    ax.plot(df["time_mid"], df["pi50"], color="C0", label="prior predictive median")
    ax.scatter(data.obs_time, data.obs_dv, s=10, color="k", alpha=0.7, label="observed")
    if log:
        ax.set_yscale("log")
        pos = data.obs_dv[data.obs_dv > 0]
        if len(pos):
            # additive error puts the lower band below 0: show a decade under the lowest observation
            lows = df["pi_lo"][df["pi_lo"] > 0]
            ax.set_ylim(bottom=max(min(pos.min(), lows.min() if len(lows) else pos.min()), pos.min() / 10) / 2)
    ax.set(xlabel="TIME (h)", ylabel="DV", title=f"Prior predictive check: {100 * df.attrs['share_inside']:.0f}% "
           f"of observations inside the prior {pi:g}% band")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, df
