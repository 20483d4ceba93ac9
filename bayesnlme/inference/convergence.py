"""Convergence thresholds and the one-line account of where divergent transitions cluster."""

from __future__ import annotations

import numpy as np

R_HAT_MAX = 1.01   # Vehtari et al. (2021)
ESS_MIN = 400      # bulk and tail ESS: 100 per chain for 4 chains


def divergence_location(result) -> str:
    """Where divergent draws cluster: the parameters whose divergent draws sit furthest from the rest."""
    ss, post = result.idata.sample_stats, result.idata.posterior
    div = ss["diverging"].values.ravel().astype(bool)
    if not div.any():
        return "no divergences"
    shifts = {}
    for name in result.parameter_names():
        x = post[name].values.ravel()
        sd = x[~div].std() if (~div).sum() > 1 else x.std()
        shifts[name] = (np.median(x[div]) - np.median(x[~div])) / sd if sd > 0 else 0.0
    top = sorted(shifts, key=lambda k: -abs(shifts[k]))[:3]
    return "they cluster at " + ", ".join(
        f"{'low' if shifts[k] < 0 else 'high'} {k} ({shifts[k]:+.1f} SD from the other draws)" for k in top)
