"""Convergence thresholds, the one-line account of where divergent transitions cluster,
:func:`rank_rhat` (ArviZ's R-hat vectorised over many variables: the ETAs of a large population) and
:func:`without_arviz_numba` for ArviZ's diagnostics."""

from __future__ import annotations

import contextlib
import threading

import arviz as az
import numpy as np
from scipy import special

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


def rank_rhat(draws, chunk: int = 512) -> np.ndarray:
    """Rank-normalised split R-hat (Vehtari et al. 2021) of every variable at once.

    ``az.rhat(method="rank")`` computes one variable at a time in Python: ~0.8 ms each at 200 draws, 25 s
    for the 30,000 ETAs of 10,000 subjects.  This is the same computation on blocks of variables
    (``tests/test_fit.py`` checks it against ArviZ to 1e-12): chains split in halves (the middle draw of
    an odd count dropped), ranks over all draws of a variable (ties averaged, as ``scipy.stats.rankdata``)
    back-transformed to normal scores (Blom's offset 3/8), the split R-hat of those scores and of the
    scores of ``|x - median|``, and the larger of the two.

    Parameters
    ----------
    draws : array_like, shape (chain, draw, ...)

    Returns
    -------
    numpy.ndarray, shape ``draws.shape[2:]``
        NaN for a variable with a NaN draw, or constant, or with fewer than 2 chains or 4 draws.
    """
    x = np.asarray(draws, dtype=float)
    shape = x.shape[2:]
    n_chain, n_draw = x.shape[:2]
    flat = x.reshape(n_chain, n_draw, -1)
    k = flat.shape[2]
    if n_chain < 2 or n_draw < 4:
        return np.full(shape, np.nan)
    half = n_draw // 2
    size = 2 * n_chain * half
    # normal scores of ranks 1..size (no ties: every variable's scores are these, permuted)
    table = special.ndtri((np.arange(1, size + 1) - 3 / 8) / (size - 2 * 3 / 8 + 1))
    out = np.empty(k)
    for start in range(0, k, chunk):
        block = flat[:, :, start:start + chunk]
        # (variables, split chain, draw): each row one variable's draws, split chains one after another
        split = np.concatenate([block[:, :half], block[:, n_draw - half:]], axis=0)
        rows = np.ascontiguousarray(np.moveaxis(split, 2, 0)).reshape(-1, size)
        bad = np.isnan(rows).any(axis=1)
        rows[bad] = 0.0
        bulk = _split_rhat(_normal_scores(rows, table), 2 * n_chain)
        tail = _split_rhat(_normal_scores(np.abs(rows - np.median(rows, axis=1, keepdims=True)), table),
                           2 * n_chain)
        res = np.where(tail > bulk, tail, bulk)   # max(bulk, tail) as ArviZ takes it (NaN bulk stays NaN)
        res[bad] = np.nan
        out[start:start + chunk] = res
    return out.reshape(shape)


def _normal_scores(rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Blom's normal scores of the ranks within each row; ``table[r - 1]`` is the score of rank r."""
    order = np.argsort(rows, axis=1)
    ordered = np.take_along_axis(rows, order, axis=1)
    new = np.ones(ordered.shape, bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]       # a run of equal values starts here
    scores = np.empty(rows.shape)
    np.put_along_axis(scores, order, np.broadcast_to(table, rows.shape), axis=1)
    ties = np.flatnonzero(~new.all(axis=1))
    if len(ties):   # average ranks of tied values (few rows: repeated draws, rounded values)
        size = rows.shape[1]
        pos = np.arange(size)
        new_t = new[ties]
        ends = np.ones(new_t.shape, bool)
        ends[:, :-1] = new_t[:, 1:]
        first = np.maximum.accumulate(np.where(new_t, pos, 0), axis=1)
        last = np.minimum.accumulate(np.where(ends, pos, size - 1)[:, ::-1], axis=1)[:, ::-1]
        rank = np.empty(new_t.shape)
        np.put_along_axis(rank, order[ties], (first + last) / 2 + 1, axis=1)
        scores[ties] = special.ndtri((rank - 3 / 8) / (size - 2 * 3 / 8 + 1))
    return scores


def _split_rhat(z: np.ndarray, n_split: int) -> np.ndarray:
    z = z.reshape(z.shape[0], n_split, -1)   # (variables, split chain, draw)
    n = z.shape[2]
    between = n * np.var(z.mean(axis=2), axis=1, ddof=1)
    within = np.var(z, axis=2, ddof=1).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt((between / within + n - 1) / n)
