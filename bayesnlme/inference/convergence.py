"""Convergence thresholds, the one-line account of where divergent transitions cluster, and
:func:`without_arviz_numba` for ArviZ's diagnostics."""

from __future__ import annotations

import contextlib
import threading

import arviz as az
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


_NUMBA_LOCK = threading.RLock()


@contextlib.contextmanager
def without_arviz_numba():
    """ArviZ's statistics (R-hat, ESS, LOO) computed with NumPy instead of numba inside the block.

    ArviZ compiles its numba helpers (e.g. the variance behind ESS) again in every process, without
    an on-disk cache: ~0.3 s, more than the computation itself on a fit's draws.  The same numbers
    either way (NumPy's variance instead of the same formula in numba).  ArviZ's switch is global state:
    it is restored on leaving the block, and the blocks of concurrent threads are serialised.
    """
    with _NUMBA_LOCK:
        before = az.Numba.numba_flag
        az.Numba.numba_flag = False
        try:
            yield
        finally:
            az.Numba.numba_flag = before
