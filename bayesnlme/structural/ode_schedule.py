"""The constant inputs of the ODE solver (:class:`~bayesnlme.structural.ode.ODESolveOp`) for a data
set: each subject's dose events, observation order, resets (EVID 3/4) and parameter segments
(piecewise-constant parameters: IOV, time-varying covariates), checked against the model."""

from __future__ import annotations

import numpy as np

from bayesnlme.errors import DataError

__all__ = ["schedule", "segments"]


def schedule(data, model, system, rtol: float, atol: float, max_steps: int = 2000,
             active=None, segment=None) -> list:
    """The constant inputs of :class:`ODESolveOp` for a data set.

    ``segment`` (per observation, from :func:`segments`) gives piecewise-constant
    parameters: segment ``g`` of a subject holds from just after the last observation of
    segment ``g - 1`` (in time and record order) to its own last observation, as
    NONMEM's parameters of a record hold from the previous event to it.  A dose belongs
    to the segment in force at its record (its F and ALAG).  Default: one segment.

    ``active`` (bool per parameter, default all) marks the parameters whose
    sensitivities are integrated; the others (constants, e.g. a default ``F``)
    get zero sensitivities at no cost.

    ``max_steps`` (plus 100 per dose event and observation) bounds the DOPRI5
    steps of one subject; a subject that needs more gets NaN outputs, which the
    log density turns into a rejected proposal.

    Raises
    ------
    DataError
        Dose into a compartment the model does not have;
        steady-state doses the ODE solver does not handle (SS=2, constant
        infusions with AMT=0, infusions longer than II).
    """
    n = system.n_states
    ss = np.zeros(data.dose_time.shape, np.int64) if data.dose_ss is None else data.dose_ss.astype(np.int64)
    ii = np.zeros(data.dose_time.shape) if data.dose_ii is None else data.dose_ii.astype(float)
    ss = np.where(data.dose_valid, ss, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        dur = np.where(data.dose_rate > 0, data.dose_amt / data.dose_rate, 0.0)
    for bad, why in ((ss == 2, "SS=2 (steady state added to the current state) has no meaning for a "
                                "nonlinear ODE model; use SS=1 or explicit doses (ADDL/II)"),
                     ((ss > 0) & (data.dose_amt <= 0), "steady-state constant infusions (SS with AMT=0) are "
                                                        "not supported by ODE models"),
                     ((ss > 0) & (ii <= 0), "a steady-state dose needs II > 0"),
                     ((ss > 0) & (dur > ii), "steady-state infusions longer than II (overlapping) are not "
                                             "supported by ODE models")):
        if bad.any():
            subj, d = (int(v) for v in np.argwhere(bad)[0])
            row = _dose_row(data, subj, d)
            raise DataError(f"ODE model {model.name}: {why}", source=data.source, row=row, column="SS")
    cmt = np.where(data.dose_cmt == 0, model.default_dose_cmt, data.dose_cmt)
    bad = data.dose_valid & ((cmt < 1) | (cmt > n))
    if bad.any():
        subj = int(np.argwhere(bad)[0][0])
        raise DataError(f"dose into CMT {int(cmt[bad][0])}, but ODE model {model.name} has compartments "
                        f"1..{n}", source=data.source, row=data._first_row[subj], column="CMT")
    names = system.parameters
    active = np.ones(len(names), bool) if active is None else np.asarray(active, bool)
    idx = np.array([names.index(p) if p in names else -1 for p in ("F", "ALAG")] + list(active), np.int64)
    lagged = (cmt == model.depot_cmt) if model.depot_cmt is not None else np.zeros(cmt.shape, bool)
    t_first = np.where(data.dose_valid, data.dose_time, np.inf).min(axis=1)
    t0 = np.minimum(t_first, [data.obs_time[data.obs_subject == i].min(initial=np.inf)
                              for i in range(data.n_subjects)])
    order = np.lexsort((np.arange(data.n_obs), data.obs_time, data.obs_subject)).astype(np.int64)
    start = np.searchsorted(data.obs_subject[order], np.arange(data.n_subjects + 1)).astype(np.int64)
    scale = float(np.max(data.dose_amt, initial=0.0)) or 1.0
    boundary, seg_stop, dose_seg = _segment_schedule(data, order, start, segment)
    return [t0.astype(float), data.obs_time.astype(float), order, start, data.dose_applies.astype(bool),
            data.dose_time.astype(float), data.dose_amt.astype(float), data.dose_rate.astype(float),
            (cmt - 1).astype(np.int64), lagged.astype(bool), data.dose_valid.astype(bool), ss, ii,
            *_resets(data), data.obs_row.astype(np.int64), boundary, seg_stop, dose_seg, idx,
            np.array([rtol, atol * scale, max_steps], float), data.obs_subject.astype(np.int64)]


def segments(data, key) -> np.ndarray:
    """Each observation's parameter segment within its subject, from ``key`` (per observation).

    A subject's observations, in time and record order, start a new segment wherever
    ``key`` (codes of the data behind within-subject parameter changes: occasion,
    time-varying covariates) differs from the previous observation's.  None: all 0.
    """
    seg = np.zeros(data.n_obs, np.int64)
    if key is None or data.n_obs == 0:
        return seg
    key = np.asarray(key)
    order = np.lexsort((np.arange(data.n_obs), data.obs_time, data.obs_subject))
    subj, k = data.obs_subject[order], key[order]
    new = np.r_[False, (subj[1:] == subj[:-1]) & (k[1:] != k[:-1])]
    first = np.r_[True, subj[1:] != subj[:-1]]
    run = np.cumsum(new)
    seg[order] = run - np.maximum.accumulate(np.where(first, run, 0))
    return seg


def _segment_schedule(data, order, start, segment):
    """Boundary flags (n_obs,), next boundary time per position in ``order`` (n_obs,), and each
    dose's segment (n_sub, n_dose_max) for :func:`schedule`."""
    n_obs = data.n_obs
    boundary = np.zeros(n_obs, bool)
    seg_stop = np.full(n_obs, np.inf)
    dose_seg = np.zeros(data.dose_time.shape, np.int64)
    if segment is None or not np.any(segment):
        return boundary, seg_stop, dose_seg
    seg = np.asarray(segment)[order]
    subj = data.obs_subject[order]
    last = np.r_[(seg[1:] != seg[:-1]) & (subj[1:] == subj[:-1]), False]   # the last of its segment
    boundary[order[last]] = True
    nxt = np.inf
    for q in range(n_obs - 1, -1, -1):
        if q + 1 < n_obs and subj[q + 1] != subj[q]:
            nxt = np.inf
        if last[q]:
            nxt = data.obs_time[order[q]]
        seg_stop[q] = nxt
    # a dose's segment: the boundary observations recorded before it (earlier, or at its time and
    # before it in the records, i.e. the dose does not apply to them)
    applies = np.asarray(data.dose_applies, bool)
    for i in range(data.n_subjects):
        b = order[start[i]:start[i + 1]][last[start[i]:start[i + 1]]]
        if len(b):
            to, td = data.obs_time[b][:, None], data.dose_time[i][None, :]
            dose_seg[i] = ((to < td) | ((to == td) & ~applies[b])).sum(axis=0)
    return boundary, seg_stop, dose_seg


def _resets(data) -> tuple[np.ndarray, np.ndarray]:
    """Reset (EVID 3/4) times and data rows per subject, shape (n_sub, max resets) (inf / -1 padded)."""
    fr = data.frame
    rs = fr[fr["EVID"].isin([3, 4])] if "_SUBJ" in fr.columns else fr.iloc[:0]
    counts = rs.groupby("_SUBJ").size()
    width = max(int(counts.max()) if len(counts) else 0, 1)
    times = np.full((data.n_subjects, width), np.inf)
    rows = np.full((data.n_subjects, width), -1, np.int64)
    for subj, g in rs.groupby("_SUBJ"):
        times[int(subj), :len(g)] = g["TIME"].to_numpy(float)
        rows[int(subj), :len(g)] = g["ROW"].to_numpy(int)
    return times, rows


def _dose_row(data, subj: int, d: int):
    """Data row of (steady-state) dose ``d`` of subject ``subj``: its first SS record."""
    fr = data.frame
    pick = fr[(fr["_SUBJ"] == subj) & (fr["SS"] != 0)] if {"_SUBJ", "SS"} <= set(fr.columns) else fr.iloc[:0]
    return int(pick["ROW"].iloc[0]) if len(pick) else data._first_row.get(subj)
