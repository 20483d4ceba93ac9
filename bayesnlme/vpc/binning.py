"""Binning of observations for VPCs: quantile or given bin edges, and strata by a data column."""

from __future__ import annotations

import numpy as np

from bayesnlme.errors import BayesNLMEInputError, DataError


def bin_edges(x: np.ndarray, bins=8) -> np.ndarray:
    """Bin edges: ``bins`` quantile bins of ``x`` (int) or the given edges (sequence)."""
    x = np.asarray(x, float)
    if np.isscalar(bins):
        if int(bins) < 1:
            raise BayesNLMEInputError(f"number of VPC bins must be at least 1, got {bins}")
        edges = np.unique(np.quantile(x, np.linspace(0, 1, int(bins) + 1)))
        return edges if len(edges) > 1 else np.array([x.min(), x.max() + 1.0])
    edges = np.asarray(bins, float)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise BayesNLMEInputError(f"VPC bin edges must be increasing (at least two), got {list(bins)}")
    return edges


def assign_bins(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each value (the last bin includes its right edge); -1 outside the edges."""
    i = np.searchsorted(edges, x, side="right") - 1
    i[x == edges[-1]] = len(edges) - 2
    i[(x < edges[0]) | (x > edges[-1])] = -1
    return i


def observation_strata(data, column: str) -> np.ndarray:
    """Stratum of each observation: a data column at the observation records.

    ``DOSE`` without a DOSE column means each subject's first dose amount.
    """
    frame = data.frame
    if column.upper() == "DOSE" and "DOSE" not in frame.columns:
        first = np.where(data.dose_valid.any(axis=1), data.dose_amt[:, 0], 0.0)
        return np.array([f"DOSE={v:g}" for v in first[data.obs_subject]], dtype=object)
    if column not in frame.columns:
        raise DataError(f"cannot stratify by {column!r}: not a column of the data", source=data.source,
                        column=column)
    values = frame.loc[frame["_OBS"], column].to_numpy()
    return np.array([f"{column}={v:g}" if isinstance(v, (int, float, np.number)) else f"{column}={v}"
                     for v in values], dtype=object)
