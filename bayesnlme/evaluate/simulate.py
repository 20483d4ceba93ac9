"""Simulation from a fitted model: the original design, new data sets and dosing regimens.

Every replicate uses one posterior draw for everything population-level
(typical values, covariate effects, OMEGA, SIGMA), so parameter uncertainty
and between-subject variability are propagated together:

* ``mode="new_subjects"`` (default): each subject's ETA is drawn afresh from
  N(0, OMEGA) of the replicate's draw (block OMEGA included, via the
  builder's own non-centred parameterisation), then residual error is added
  -- the simulations behind a VPC and behind dosing decisions;
* ``mode="individual"``: each fitted subject keeps its own posterior ETA of
  the draw (an *individual* predictive check); only subjects of the fit can be
  simulated this way.

A new design (a NONMEM-format data set or one made by :func:`regimen_data`)
is built with the fitted spec (:func:`bayesnlme.build.build_model`) and the
builder's prediction graph is evaluated at the draws, vectorised over draws
and, for large designs, in chunks of subjects so memory stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bayesnlme.build.cache import cached_build
from bayesnlme.data import NMData, read_nonmem
from bayesnlme.errors import BayesNLMEInputError, DataError
from bayesnlme.evaluate.outcomes import observation_draw, record_lloq
from bayesnlme.evaluate.predict import (
    MODES,
    new_subject_draws,
    posterior_membership,
    residual_draw,
    simulation_outputs,
    thinned_draws,
)

_STANDARD = ("ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "RATE", "DUR", "II", "ADDL", "SS")


@dataclass(frozen=True)
class Simulation:
    """Simulated observations on a design.

    Attributes
    ----------
    data : NMData
        The design (observation records define where values are simulated).
    draw : numpy.ndarray of int, shape (n_rep,)
        Posterior draw (chains concatenated) behind each replicate.
    dv : numpy.ndarray, shape (n_rep, n_obs)
        Simulated observations (IPRED with residual error), units of DV.
    ipred : numpy.ndarray, shape (n_rep, n_obs)
        Simulated subjects' predictions without residual error.
    pred : numpy.ndarray, shape (n_obs,)
        PRED: the typical subject's prediction (ETA = 0, own covariates and
        doses), the median over the draws used.
    mode : str
        ``"new_subjects"`` or ``"individual"``.
    lloq : numpy.ndarray, shape (n_obs,), optional
        Each record's LLOQ (:func:`bayesnlme.evaluate.outcomes.record_lloq`; NaN:
        none); None when the design has no censored records and no LLOQ was given.
    model : numpy.ndarray of str, shape (n_rep,), optional
        For a model-averaged simulation (:mod:`bayesnlme.evaluate.averaging`): the fit behind each
        replicate; None for one fit.

    Notes
    -----
    With ``[[observations]]`` each record's DV is drawn from its own
    observation model (:mod:`bayesnlme.evaluate.outcomes`): 0/1 for bernoulli,
    categories for ordinal, counts, NaN for time-to-event records.  Censored
    (CENS) records get the uncensored simulated value; :attr:`blq` says
    whether it lies below the record's LLOQ.
    """
    data: NMData
    draw: np.ndarray
    dv: np.ndarray
    ipred: np.ndarray
    pred: np.ndarray
    mode: str
    lloq: np.ndarray | None = None
    model: np.ndarray | None = None

    @property
    def dvid(self) -> np.ndarray:
        """Observation type (DVID) of each record, shape (n_obs,) (1 when the design has no DVID column)."""
        d = self.data.obs_dvid
        return np.ones(self.data.n_obs, int) if d is None else np.asarray(d)

    @property
    def blq(self) -> np.ndarray | None:
        """Simulated value below the record's LLOQ, shape (n_rep, n_obs) (None without LLOQ)."""
        return None if self.lloq is None else self.dv < self.lloq

    def to_frame(self) -> pd.DataFrame:
        """Long table: ``REP, DRAW, ID, TIME, ROW, PRED, IPRED_SIM, DV_SIM, DVID`` (and ``LLOQ, BLQ_SIM``
        with an LLOQ); one row per replicate and observation."""
        n_rep, n_obs = self.dv.shape
        ids = np.asarray([str(i) for i in self.data.ids])[self.data.obs_subject]
        frame = pd.DataFrame({
            "REP": np.repeat(np.arange(1, n_rep + 1), n_obs), "DRAW": np.repeat(self.draw, n_obs),
            "ID": np.tile(ids, n_rep), "TIME": np.tile(self.data.obs_time, n_rep),
            "ROW": np.tile(self.data.obs_row, n_rep), "PRED": np.tile(self.pred, n_rep),
            "IPRED_SIM": self.ipred.ravel(), "DV_SIM": self.dv.ravel(), "DVID": np.tile(self.dvid, n_rep)})
        if self.lloq is not None:
            frame["LLOQ"] = np.tile(self.lloq, n_rep)
            frame["BLQ_SIM"] = self.blq.ravel()
        return frame


def regimen_data(dose: float, ii: float, n_doses: int = 1, *, dur: float = 0.0, cmt: int = 0,
                 times=None, n_subjects: int = 1, steady_state: bool = False,
                 covariates: pd.DataFrame | dict | None = None) -> pd.DataFrame:
    """A NONMEM-format design for a dosing regimen.

    Parameters
    ----------
    dose : float
        Amount per dose (units of AMT, e.g. mg).
    ii : float
        Dosing interval II (time units of the fit, e.g. h).
    n_doses : int
        Number of doses (the first at time 0, then ``ADDL = n_doses - 1``).
    dur : float
        Infusion duration (0 = bolus or, into a depot, oral).
    cmt : int
        Dose compartment (0 = the model's default: depot for oral models).
    times : array-like, optional
        Observation times; default 49 points over the dosing period
        (``[0, II]`` at steady state, ``[0, n_doses II]`` otherwise).
    n_subjects : int
        Identical dosing records for subjects ``1..n_subjects``.
    steady_state : bool
        One ``SS=1`` dose record (the regimen at steady state, NONMEM
        semantics) instead of ``n_doses`` doses; times are then after the
        steady-state dose.
    covariates : pandas.DataFrame or dict, optional
        Covariate values: a dict of constants, or a table with one row per
        subject (in subject order).

    Returns
    -------
    pandas.DataFrame
        Columns ``ID, TIME, DV, AMT, EVID, MDV, CMT, DUR, II, ADDL, SS`` and the covariates.
    """
    if not (dose > 0 and ii > 0 and n_doses >= 1 and dur >= 0 and n_subjects >= 1):
        raise BayesNLMEInputError(f"regimen needs dose > 0, II > 0, n_doses >= 1, duration >= 0 and "
                                  f"n_subjects >= 1 (got dose {dose}, II {ii}, n_doses {n_doses}, "
                                  f"duration {dur}, n_subjects {n_subjects})")
    end = ii if steady_state else n_doses * ii
    times = np.linspace(0.0, end, 49) if times is None else np.asarray(times, float)
    dose_row = {"TIME": 0.0, "DV": 0.0, "AMT": float(dose), "EVID": 1, "MDV": 1, "CMT": cmt,
                "DUR": float(dur), "II": float(ii), "ADDL": 0 if steady_state else n_doses - 1,
                "SS": int(steady_state)}
    one = pd.DataFrame([dose_row] + [{"TIME": t, "DV": 0.0, "AMT": 0.0, "EVID": 0, "MDV": 0, "CMT": 0, "DUR": 0.0,
                                      "II": 0.0, "ADDL": 0, "SS": 0} for t in np.sort(times)])
    frame = pd.concat([one.assign(ID=i + 1) for i in range(n_subjects)], ignore_index=True)
    if covariates is not None:
        table = pd.DataFrame([covariates] * n_subjects) if isinstance(covariates, dict) else \
            covariates.reset_index(drop=True)
        if len(table) != n_subjects:
            raise BayesNLMEInputError(f"covariate table has {len(table)} rows for {n_subjects} subjects")
        frame = frame.join(table.drop(columns=[c for c in table.columns if c.upper() in _STANDARD]),
                           on=frame["ID"] - 1)
    return frame[["ID"] + [c for c in frame.columns if c != "ID"]]


def assign_covariates(frame: pd.DataFrame, result, covariates, rng: np.random.Generator,
                      names=None) -> pd.DataFrame:
    """Give every subject of a design its covariate vector.

    Parameters
    ----------
    covariates : None, "resample" or pandas.DataFrame
        None: keep the design's own covariate columns; ``"resample"``: each
        subject gets the baseline covariate vector of a fitted subject drawn
        with replacement; a table: rows matched by ``ID`` if it has an ID
        column, otherwise drawn with replacement (a user covariate
        distribution).
    names : sequence of str, optional
        The covariates to assign (default: those of ``result``'s covariate effects).
    """
    names = sorted({eff.covariate for eff in result.spec.covariates} if names is None else set(names))
    if covariates is None or not names:
        return frame
    ids = pd.unique(frame["ID"])
    if isinstance(covariates, str):
        if covariates != "resample":
            raise BayesNLMEInputError(f"covariates must be None, 'resample' or a table, got {covariates!r}")
        pool = result.data.baseline_covariates(names).reset_index(drop=True)
    else:
        pool = pd.DataFrame(covariates)
        missing = [n for n in names if n not in pool.columns]
        if missing:
            raise DataError(f"covariate table lacks {', '.join(missing)} (the model needs it)",
                            source="<covariate table>", column=missing[0])
        if "ID" in pool.columns:
            by_id = pool.drop_duplicates("ID").set_axis(pool.drop_duplicates("ID")["ID"].map(_id_key))[names]
            absent = [i for i in ids if _id_key(i) not in by_id.index]
            if absent:
                raise DataError(f"no covariates for ID {absent[0]}", source="<covariate table>", column="ID")
            return frame.drop(columns=names, errors="ignore").join(by_id, on=frame["ID"].map(_id_key))
    chosen = pool[names].iloc[rng.integers(0, len(pool), len(ids))].set_axis(ids)
    return frame.drop(columns=names, errors="ignore").join(chosen, on="ID")


def _id_key(value) -> str:
    """IDs compared as text, so 1, 1.0 and "1" match."""
    try:
        f = float(value)
        return str(int(f)) if f.is_integer() else str(f)
    except (TypeError, ValueError):
        return str(value)


def _fitted_rows(result, design: NMData) -> np.ndarray:
    """Each design subject's row among the fitted subjects."""
    fitted = {_id_key(i): k for k, i in enumerate(result.data.ids)}
    absent = [i for i in design.ids if _id_key(i) not in fitted]
    if absent:
        raise DataError(f"individual simulation keeps fitted subjects' ETAs, but ID {absent[0]} was not "
                        f"in the fit (use mode='new_subjects' for new subjects)", source=design.source,
                        column="ID")
    return np.array([fitted[_id_key(i)] for i in design.ids])


def _individual_draws(result, draws: dict, design: NMData, shapes: dict, rng) -> dict:
    """The fitted subjects' own ETAs of each draw, rows reordered to the design's subjects."""
    rows = _fitted_rows(result, design)
    out = dict(draws)
    for name in list(out):
        if name == "eta_z" or (name.startswith("eta_") and name[4:] in result.spec.parameters):
            out[name] = out[name][:, rows]
    if "kappa_z" in out and out["kappa_z"].shape[1:] != np.shape(shapes["kappa_z"]):
        # a different set of occasions: new occasions get new KAPPAs
        out["kappa_z"] = rng.standard_normal((len(out["kappa_z"]), *np.shape(shapes["kappa_z"])))
    return out


def _placeholder_dv(nm: NMData) -> pd.DataFrame:
    """A design's records with the (ignored) DV of uncensored observations set to 1.

    Why: the builder checks DV against each record's likelihood (0/1 for
    bernoulli, DV != 0 for proportional error ...); 1 is valid for all of them.
    Censored records keep their DV, which is their limit (LLOQ).
    """
    frame = nm.records.copy()
    obs = nm.frame["_OBS"].to_numpy(bool)
    if "CENS" in frame.columns:
        obs &= frame["CENS"].fillna(0).to_numpy() == 0
    frame.loc[obs, "DV"] = 1.0
    return frame


def design_model(spec, design: NMData):
    """The model of ``spec`` built on a simulation design, kept for the process's next use of the same pair.

    Compiling the prediction function of a design is most of a small simulation's time (seconds for
    a fraction of a second of evaluation), and the same design is simulated again and again when
    regimens are evaluated for many posteriors (the probability-of-target-attainment rule of
    :mod:`bayesnlme.decision`, for each replicate study): the built model, with the functions compiled
    on it, comes from the process's cache (:func:`bayesnlme.build.cache.cached_build`).
    """
    return cached_build(spec, design, check_residual=False)


def _subject_chunks(frame: pd.DataFrame, size: int):
    ids = pd.unique(frame["ID"])
    for start in range(0, len(ids), size):
        yield frame[frame["ID"].isin(ids[start:start + size])]


def iter_simulations(result, data=None, *, n_draws: int | None = 200, mode: str = "new_subjects",
                     covariates=None, seed: int = 0, subject_chunk: int = 500,
                     extra_outputs: tuple = (), progress: bool = False):
    """Simulate a design chunk by chunk of subjects (memory bounded).

    Yields
    ------
    design : NMData
        The chunk's design.
    idx : numpy.ndarray
        Posterior draw indices (the same for every chunk).
    out : dict of str -> numpy.ndarray
        ``dv``, ``ipred``, ``pred``, shape (n_draws, n_obs_chunk), and any
        ``extra_outputs`` (e.g. ``"individual.CL"``, shape (n_draws, n_sub_chunk)).
        With ``[[observations]]``, ``dv`` is drawn by each record's observation
        model (:func:`bayesnlme.evaluate.outcomes.observation_draw`) and a new
        design's observation DVs are placeholders (:func:`_placeholder_dv`).
    """
    if mode not in MODES:
        raise BayesNLMEInputError(f"simulation mode must be one of {', '.join(MODES)}, got {mode!r}")
    rng = np.random.default_rng(seed)
    idx, draws = thinned_draws(result, n_draws)
    if data is None:
        frame, name = result.data.records, result.data.source
    else:
        nm = read_nonmem(data)
        frame, name = (_placeholder_dv(nm) if result.spec.observations else nm.records), nm.source
    frame = assign_covariates(frame, result, covariates, rng)
    outputs = ("ipred", "pred", "residual_sd") + tuple(extra_outputs)
    chunks = _subject_chunks(frame, subject_chunk)
    fitted_membership = (posterior_membership(result.built, draws)
                         if mode == "individual" and result.spec.mixture is not None else None)
    if progress:   # a bar over subject chunks (rich comes with PyMC)
        from rich.progress import track

        n_chunks = -(-frame["ID"].nunique() // subject_chunk)
        chunks = track(chunks, total=n_chunks, description=f"simulating {len(idx)} draws", transient=True)
    for part in chunks:
        design = read_nonmem(part.reset_index(drop=True), name=f"{name} (simulation design)")
        if data is None and len(part) == len(frame) and covariates is None:
            built = result.built    # the fitted design: reuse its compiled graph
        else:
            built = design_model(result.spec, design)
        shapes = built.initial_point
        chunk = (new_subject_draws(result.spec, draws, rng, shapes) if mode == "new_subjects"
                 else _individual_draws(result, draws, design, shapes, rng))
        membership = None   # a [mixture]'s fitted subjects keep their posterior membership probabilities
        if mode == "individual" and built.mixture is not None:
            membership = fitted_membership[:, _fitted_rows(result, built.data)]
        out = simulation_outputs(built, chunk, outputs, rng, membership)
        if result.spec.observations:   # each record by its own observation model (DVID)
            out["dv"] = observation_draw(result.spec, built.data, out["ipred"], out.pop("residual_sd"), chunk, rng)
        else:
            out["dv"] = residual_draw(result.spec, out["ipred"], out.pop("residual_sd"), rng)
        yield built.data, idx, out


def simulate(result, data=None, *, n_draws: int | None = 200, mode: str = "new_subjects",
             covariates=None, seed: int = 0, subject_chunk: int = 500, progress: bool = False,
             lloq: float | None = None) -> Simulation:
    """Simulate observations from a fit.

    Parameters
    ----------
    result : FitResult
    data : NMData, path or pandas.DataFrame, optional
        The design to simulate (e.g. from :func:`regimen_data`); default: the
        fitted data set.  Observation records are where values are simulated
        (their DV is ignored).
    n_draws : int, optional
        Replicates = posterior draws used (evenly thinned); None = all.
    mode : {"new_subjects", "individual"}
        New subjects (ETA ~ N(0, OMEGA) of each draw) or the fitted subjects'
        own ETAs (individual predictive check).
    covariates : None, "resample" or pandas.DataFrame
        See :func:`assign_covariates`.
    seed : int
    subject_chunk : int
        Subjects per model evaluation (bounds memory for large designs).
    progress : bool
        Show a progress bar over subject chunks.
    lloq : float, optional
        LLOQ (DV units) of records that are not ``CENS = 1``; default from the
        design's ``CENS = 1`` records (see :func:`bayesnlme.evaluate.outcomes.record_lloq`).

    Returns
    -------
    Simulation
    """
    parts = list(iter_simulations(result, data, n_draws=n_draws, mode=mode, covariates=covariates,
                                  seed=seed, subject_chunk=subject_chunk, progress=progress))
    if len(parts) == 1:
        design, idx, out = parts[0]
    else:
        frames = [d.records for d, _, _ in parts]
        design = read_nonmem(pd.concat(frames, ignore_index=True), name=parts[0][0].source)
        idx = parts[0][1]
        out = {k: np.concatenate([p[2][k] for p in parts], axis=1) for k in ("dv", "ipred", "pred")}

    return Simulation(data=design, draw=idx, dv=out["dv"], ipred=out["ipred"],
                      pred=np.median(out["pred"], axis=0), mode=mode,
                      lloq=record_lloq(design, lloq, result.spec.observation_models()))
