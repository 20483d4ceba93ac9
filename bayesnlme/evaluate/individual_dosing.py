"""A patient's predicted profile and the dose (and interval) that best reaches an exposure target.

Both push the individual posterior of :func:`bayesnlme.evaluate.individualize.individualize` (equally
weighted samples of the population values and the patient's random effects) through the model built on
a new design, with the compiled-model cache of :mod:`bayesnlme.evaluate.individual_model`:

* :func:`predict_profile`: the patient's own dose records, optionally followed by a proposed regimen,
  on a time grid (dose and infusion-end times included): the individual prediction IPRED (median, 90%
  credible band), the 90% predictive band of a new measured level (IPRED plus residual error), the
  prediction at the MAP estimate, and the measured levels;
* :func:`dose_table`: for each candidate dose x interval at steady state (one ``SS=1`` record, as
  :func:`bayesnlme.evaluate.regimens.evaluate_regimens`; 20 doses for ODE models), the exposure metrics
  of :func:`bayesnlme.evaluate.regimens.exposure_metrics` (``AUCTAU``, ``CMAX``, ``CMIN``, ``CTROUGH``,
  concentrations without residual error) plus ``AUC24 = AUCTAU * 24 / II`` (time in hours), and the
  posterior probability that the patient's exposure meets every target.  :func:`recommend` picks the
  candidate with the highest probability; ties go to the lowest daily dose, then the longest interval.

Targets (:func:`parse_target`) are written ``METRIC LO-HI`` (``CTROUGH 10-20``), ``METRIC <HI``
(``CMAX <40``) or ``METRIC >LO`` (``AUC24 >400``), bounds in DV units (x h for AUC); several targets
must all hold.  The covariates of the steady-state design are the patient's values at their last record.

Occasions (inter-occasion variability).  A profile's times take the ``OCC`` of the patient's last record
before them; a proposed regimen and a dose table's steady state are a new occasion (``OCC`` one above the
patient's largest).  An occasion without a measured level takes a KAPPA drawn from N(0, OMEGA_IOV^2) per
posterior sample (``future_occasion="new"``) or the last measured occasion's (``"last"``), see
:func:`bayesnlme.evaluate.individual_model.design_draws`; with KAPPA on CL or F the dose table's AUC is
integrated over the interval, not Dose / CL (the subject's CL without KAPPA).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.individual_model import concentration_type, design_draws, patient_model
from bayesnlme.evaluate.predict import evaluate_draws
from bayesnlme.evaluate.regimens import METRICS, attains, exposure_metrics, linear_closed_form, target_label
from bayesnlme.evaluate.simulate import regimen_data

#: Metrics a target may name: those of :mod:`bayesnlme.evaluate.regimens` and the daily AUC.
TARGET_METRICS = METRICS + ("AUC24",)
_NUM = r"[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?"
_TARGET = re.compile(rf"^\s*(?P<metric>[A-Za-z0-9]+)\s+(?:(?P<lo>{_NUM})\s*-\s*(?P<hi>{_NUM})|<\s*(?P<below>{_NUM})"
                     rf"|>\s*(?P<above>{_NUM}))\s*$")
_STANDARD = ("ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "RATE", "DUR", "II", "ADDL", "SS")
_ODE_DOSES = 20


def parse_target(text: str) -> dict:
    """A target from text: ``"CTROUGH 10-20"``, ``"CMAX <40"`` or ``"AUC24 >400"`` (case-insensitive).

    Returns
    -------
    dict
        ``{"metric": ..., "above": lo, "below": hi}`` (a bound absent when not given), as
        :func:`bayesnlme.evaluate.regimens.attains` takes it.

    Raises
    ------
    BayesNLMEInputError
        One line saying what is wrong and what is expected.

    Examples
    --------
    >>> parse_target("CTROUGH 10-20")
    {'metric': 'CTROUGH', 'above': 10.0, 'below': 20.0}
    >>> parse_target("cmax <40")
    {'metric': 'CMAX', 'below': 40.0}
    """
    expected = (f"expected 'METRIC LO-HI', 'METRIC <HI' or 'METRIC >LO' with METRIC one of "
                f"{', '.join(TARGET_METRICS)}, e.g. 'CTROUGH 10-20'")
    m = _TARGET.match(str(text))
    if not m:
        raise BayesNLMEInputError(f"target {text!r}: {expected}")
    metric = m["metric"].upper()
    if metric not in TARGET_METRICS:
        raise BayesNLMEInputError(f"target {text!r}: unknown metric {m['metric']!r}; {expected}")
    if m["lo"] is not None:
        lo, hi = float(m["lo"]), float(m["hi"])
        if not lo < hi:
            raise BayesNLMEInputError(f"target {text!r}: the lower bound {lo:g} must be below the upper {hi:g}")
        return {"metric": metric, "above": lo, "below": hi}
    if m["below"] is not None:
        return {"metric": metric, "below": float(m["below"])}
    return {"metric": metric, "above": float(m["above"])}


def parse_targets(texts) -> list[dict]:
    """Targets from one text or several (each may hold several separated by ``;``), all to hold together."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    out = [parse_target(t) for text in texts for t in str(text).split(";") if t.strip()]
    if not out:
        raise BayesNLMEInputError("no target given; e.g. 'CTROUGH 10-20'")
    return out


def last_dose(data) -> dict:
    """The patient's last dose record: ``amt``, ``ii`` (0 if none), ``duration`` (infusion, time units), ``cmt``,
    ``time`` (of the last dose given, ADDL included) and ``next`` (when the next dose would be due)."""
    doses = data.frame[data.frame["EVID"].isin([1, 4]) & (data.frame["AMT"] > 0)]
    row = doses.iloc[-1]
    rate = float(row["RATE"]) if "RATE" in doses.columns else 0.0
    dur = (float(row["DUR"]) if float(row.get("DUR", 0.0) or 0.0) > 0
           else (float(row["AMT"]) / rate if rate > 0 else 0.0))
    times = data.dose_time[0][data.dose_valid[0]]
    given = float(times.max()) if len(times) else float(row["TIME"])
    ii = float(row.get("II", 0.0) or 0.0)
    return {"amt": float(row["AMT"]), "ii": ii, "duration": dur, "cmt": int(row.get("CMT", 0) or 0),
            "time": given, "next": given + ii if ii > 0 else float(data.frame["TIME"].max())}


# ---------------------------------------------------------------------------- profile


def _profile_frame(data, regimen: dict | None, times, dvid=None) -> tuple[pd.DataFrame, float]:
    """The patient's records, the proposed doses and grid records (observation type ``dvid`` when the spec
    has types); and when the proposed regimen starts."""
    frame = data.records.copy()
    obs = data.frame["_OBS"].to_numpy(bool)
    frame["_MEASURED"] = np.where(obs, frame["DV"].astype(float), np.nan)
    frame.loc[obs, "DV"] = 1.0            # a design: DV is not used
    last = last_dose(data)
    start = np.inf
    extra = []
    if regimen is not None:
        start = float(regimen.get("start", last["next"]))
        dur = float(regimen.get("duration", last["duration"]))
        amt, ii, n = float(regimen["dose"]), float(regimen["ii"]), int(regimen.get("n_doses", 6))
        if not (amt > 0 and ii > 0 and n >= 1 and dur >= 0 and start >= float(frame["TIME"].max())):
            raise BayesNLMEInputError(f"proposed regimen needs dose > 0, II > 0, n_doses >= 1, duration >= 0 and a "
                                      f"start after the patient's last record, got {regimen}")
        row = {"TIME": start, "DV": 0.0, "AMT": amt, "EVID": 1, "MDV": 1, "CMT": int(regimen.get("cmt", last["cmt"])),
               "II": ii if n > 1 else 0.0, "ADDL": n - 1, "SS": 0, "DUR": dur}
        if "OCC" in frame.columns:    # a proposed regimen is a new occasion (carried forward to its grid)
            row["OCC"] = next_occasion(frame)
        if "RATE" in frame.columns:
            row.update(RATE=amt / dur if dur > 0 else 0.0, DUR=0.0)
        extra.append(row)
        end = start + n * ii
        dose_t = start + ii * np.arange(n)
        dose_t = np.r_[dose_t, dose_t + dur]
    else:
        end = max(last["next"], float(frame["TIME"].max()))
        dose_t = np.zeros(0)
    if times is None:
        given = data.dose_time[0][data.dose_valid[0]]
        times = np.r_[np.linspace(float(frame["TIME"].min()), end, 241), given, given + last["duration"], dose_t]
    times = np.unique(np.asarray(times, float))
    extra += [{"TIME": t, "DV": 1.0, "AMT": 0.0, "EVID": 0, "MDV": 0, "CMT": 0, "II": 0.0, "ADDL": 0, "SS": 0,
               "DUR": 0.0} for t in times]
    add = pd.DataFrame(extra)
    add["ID"] = frame["ID"].iloc[0]
    if dvid is not None:
        add["DVID"] = dvid
    combined = pd.concat([frame.assign(_ORDER=0), add.assign(_ORDER=1)], ignore_index=True)
    combined = combined.sort_values(["TIME", "_ORDER"], kind="stable").reset_index(drop=True)
    covs = [c for c in frame.columns if c not in _STANDARD and not c.startswith("_")]
    combined[covs] = combined[covs].ffill().bfill()     # the proposed regimen keeps the last covariates
    for c in ("RATE",):
        if c in combined.columns:
            combined[c] = combined[c].fillna(0.0)
    return combined, start


def next_occasion(frame: pd.DataFrame):
    """An ``OCC`` label after the patient's: the largest plus one (numeric labels), else ``"next"``."""
    occ = pd.to_numeric(frame["OCC"], errors="coerce")
    return float(occ.max()) + 1 if occ.notna().any() and occ.notna().sum() == frame["OCC"].notna().sum() else "next"


def predict_profile(post, regimen: dict | None = None, *, times=None, future_occasion: str = "new",
                    seed: int = 0) -> pd.DataFrame:
    """The patient's concentration profile under the individual posterior.

    Parameters
    ----------
    post : IndividualPosterior
    regimen : dict, optional
        A proposed regimen after the patient's records: ``dose`` (AMT units), ``ii`` (time units), optional
        ``n_doses`` (default 6), ``duration`` (infusion; default the last dose's), ``cmt`` and ``start``
        (default when the next dose is due: the last dose time plus its II).
    times : array-like, optional
        Prediction times; default 241 points over the history (and regimen) plus dose and infusion-end times.
    future_occasion : {"new", "last"}
        With inter-occasion variability: the KAPPA of an occasion without a measured level -- the proposed
        regimen (a new ``OCC``), or an occasion of the patient's records with doses only; times take the
        ``OCC`` of the last record before them.  ``"new"``: drawn from N(0, OMEGA_IOV^2) for each posterior
        sample (the band widens by the IOV; IPRED_MAP uses KAPPA = 0); ``"last"``: the KAPPA of the last
        occasion with a level.
    seed : int
        Seed of the residual-error draws of the predictive band (and of new occasions' KAPPAs).

    Returns
    -------
    pandas.DataFrame
        One row per time: ``TIME, PHASE`` (``history`` or ``proposed``), ``IPRED_median, IPRED_q5, IPRED_q95``
        (90% credible band of the concentration, DV units), ``DV_q5, DV_q95`` (90% predictive band of a
        measured level), ``IPRED_MAP`` (at the MAP estimate), ``DV_OBS`` (the measured level at its own
        time, NaN elsewhere).
    """
    conc = concentration_type(post.spec)
    frame, start = _profile_frame(post.patient, regimen, times, conc.dvid)
    cols = [c for c in frame.columns if not c.startswith("_")]
    built, _ = patient_model(post.spec, frame[cols], check_residual=False)
    design = built.data
    ipred, sd = _evaluate(post, built, ("ipred", "residual_sd"), future_occasion, seed)
    rng = np.random.default_rng(seed)
    theta_map = {k: np.asarray(v)[None] for k, v in post.map.theta.items()}
    at_map = evaluate_draws(built, design_draws(built, post.patient, theta_map, post.map.z[None],
                                                future="last" if future_occasion == "last" else "mode"),
                            ("ipred",))["ipred"][0]
    measured = frame.loc[(frame["EVID"] == 0) & (frame["MDV"] == 0), "_MEASURED"].to_numpy()
    if len(measured) != design.n_obs:   # the design's observations are these rows, in this order
        raise AssertionError("profile design and its measured levels are out of step")
    # the concentration's records (other observation types' levels informed the posterior, not the profile)
    keep = design.obs_dvid == conc.dvid if conc.dvid is not None else np.ones(design.n_obs, bool)
    ipred, sd, at_map, measured = ipred[:, keep], sd[:, keep], at_map[keep], measured[keep]
    dv = conc.family.draw(conc, ipred, sd, {}, rng)
    q = lambda x, p: np.quantile(x, p, axis=0)   # noqa: E731
    time = design.obs_time[keep]
    return pd.DataFrame({"TIME": time, "PHASE": np.where(time >= start, "proposed", "history"),
                         "IPRED_median": q(ipred, 0.5), "IPRED_q5": q(ipred, 0.05), "IPRED_q95": q(ipred, 0.95),
                         "DV_q5": q(dv, 0.05), "DV_q95": q(dv, 0.95), "IPRED_MAP": at_map, "DV_OBS": measured})


def _evaluate(post, built, outputs, future: str, seed: int):
    out = evaluate_draws(built, post.draws_for(built, future=future, seed=seed + 1), tuple(outputs))
    return [out[o] for o in outputs]


def plot_profile(profile: pd.DataFrame, targets=(), *, log: bool = False):
    """The profile with its credible and predictive bands, the measured levels and concentration targets.

    Returns
    -------
    (matplotlib.figure.Figure, pandas.DataFrame)
        The figure and the table it draws (``profile``).
    """
    import matplotlib.pyplot as plt  # plotting only when asked: matplotlib loads slowly

    fig, ax = plt.subplots(figsize=(8, 4.5))
    t = profile["TIME"].to_numpy()
    ax.fill_between(t, profile["DV_q5"], profile["DV_q95"], color="tab:blue", alpha=0.15,
                    label="90% predictive band (new level)")
    ax.fill_between(t, profile["IPRED_q5"], profile["IPRED_q95"], color="tab:blue", alpha=0.35,
                    label="90% credible band (concentration)")
    ax.plot(t, profile["IPRED_median"], color="tab:blue", label="posterior median")
    ax.plot(t, profile["IPRED_MAP"], color="k", ls=":", lw=1, label="MAP-Bayes")
    seen = profile["DV_OBS"].notna()
    ax.plot(t[seen], profile.loc[seen, "DV_OBS"], "o", color="tab:red", label="measured")
    proposed = profile["PHASE"] == "proposed"
    if proposed.any():
        ax.axvline(t[proposed.to_numpy()].min(), color="grey", ls="--", lw=1)
        ax.text(t[proposed.to_numpy()].min(), ax.get_ylim()[1], " proposed regimen", va="top", fontsize=8)
    for tg in targets:
        if tg["metric"] in ("CTROUGH", "CMAX", "CMIN"):
            for key in ("above", "below"):
                if key in tg:
                    ax.axhline(tg[key], color="tab:green", ls="--", lw=1)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("time")
    ax.set_ylabel("concentration (DV units)")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig, profile


# ---------------------------------------------------------------------------- dose finding


def _covariates(data) -> dict:
    """The patient's covariate values at their last record."""
    return {c: data.records[c].iloc[-1] for c in data.covariate_names}


def dose_table(post, targets, doses=None, intervals=None, *, duration: float | None = None,
               cmt: int | None = None, grid_points: int = 49, future_occasion: str = "new",
               seed: int = 0) -> pd.DataFrame:
    """Probability that the patient's steady-state exposure meets the targets, per candidate dose and interval.

    Parameters
    ----------
    post : IndividualPosterior
    targets : str, dict or sequence of them
        See :func:`parse_target`; all must hold.
    doses : sequence of float, optional
        Candidate amounts (AMT units, e.g. mg); default the last dose x 0.5, 0.75, 1, 1.25, 1.5, 2.
    intervals : sequence of float, optional
        Candidate intervals (time units, e.g. h); default the last dose's II.
    duration : float, optional
        Infusion duration (time units); default the last dose's (0 = bolus or oral).
    cmt : int, optional
        Dose compartment; default the last dose's.
    grid_points : int
        Grid points over the interval for CMAX, CMIN and trapezoidal AUC.
    future_occasion : {"new", "last"}
        With inter-occasion variability the steady state is a new occasion: its KAPPA is drawn from
        N(0, OMEGA_IOV^2) for each posterior sample (``"new"``; the same draw for every candidate) or is
        the patient's last occasion's with a level (``"last"``); see :func:`predict_profile`.
    seed : int
        Seed of the new occasion's KAPPA draws.

    Returns
    -------
    pandas.DataFrame
        One row per candidate: ``DOSE, II, DURATION, DAILY_DOSE`` (amount per 24 time units), ``P_TARGET``
        (posterior probability that every target holds), ``P_TARGET_MCSE`` (its Monte Carlo SE,
        ``sqrt(p(1 - p) / ESS)``), with several targets ``P(...)`` per target, and per metric named in a
        target ``<M>_median, <M>_q5, <M>_q95`` (posterior median and 90% credible interval).
    """
    targets = [parse_target(t) if isinstance(t, str) else dict(t) for t in
               ([targets] if isinstance(targets, (str, dict)) else targets)]
    if not targets:
        raise BayesNLMEInputError("no target given; e.g. 'CTROUGH 10-20'")
    for t in targets:
        if t.get("metric") not in TARGET_METRICS or not ({"above", "below"} & set(t)):
            raise BayesNLMEInputError(f"target {t}: needs a metric of {', '.join(TARGET_METRICS)} and a bound")
    last = last_dose(post.patient)
    doses = [last["amt"] * f for f in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)] if doses is None else list(doses)
    if intervals is None:
        if last["ii"] <= 0:
            raise BayesNLMEInputError("the patient's last dose has no II: give the candidate intervals")
        intervals = [last["ii"]]
    duration = last["duration"] if duration is None else float(duration)
    cmt = last["cmt"] if cmt is None else int(cmt)
    if not doses or not intervals or min(doses) <= 0 or min(intervals) <= 0 or duration < 0:
        raise BayesNLMEInputError(f"candidate doses and intervals must be positive and the duration >= 0 (got doses "
                                  f"{doses}, intervals {intervals}, duration {duration})")
    n_doses = _ODE_DOSES if getattr(post.spec.structural, "per_subject", False) else None
    cands = [(float(d), float(ii)) for d in doses for ii in intervals]
    frames = []
    for k, (dose, ii) in enumerate(cands):
        begin = 0.0 if n_doses is None else (n_doses - 1) * ii
        times = begin + np.union1d(np.linspace(0, ii, grid_points), [min(duration, ii)])
        f = regimen_data(dose, ii, n_doses or 1, dur=duration, cmt=cmt, times=times, steady_state=n_doses is None,
                         covariates=_covariates(post.patient))
        frames.append(f.assign(ID=k + 1))
    design = pd.concat(frames, ignore_index=True)
    dvid = concentration_type(post.spec).dvid
    if dvid is not None:      # the steady-state grid observes the concentration's type
        design["DVID"] = dvid
    if "OCC" in post.patient.frame.columns:
        design["OCC"] = next_occasion(post.patient.frame)
    built, _ = patient_model(post.spec, design, check_residual=False)
    iov = {p for p, par in post.spec.parameters.items() if par.omega_iov is not None}
    # AUC = F dose / CL exactly, with the subject's CL: not when KAPPA changes CL or F at the new occasion
    exact = n_doses is None and linear_closed_form(post.spec) and "CL" in post.spec.parameters and not {"CL", "F"} & iov
    outputs = ("ipred",) + (("individual.CL",) + (("individual.F",) if "F" in post.spec.parameters else ())
                            if exact else ())
    res = dict(zip(outputs, _evaluate(post, built, outputs, future_occasion, seed)))
    auc = res.get("individual.F", 1.0) * np.asarray([d for d, _ in cands])[None, :] / res["individual.CL"] \
        if exact else None
    metrics = exposure_metrics(built.data, res["ipred"], auc)
    metrics["AUC24"] = metrics["AUCTAU"] * 24.0 / np.asarray([ii for _, ii in cands])[None, :]
    ess = min(post.quality["ess"], post.n_samples)
    rows = []
    for k, (dose, ii) in enumerate(cands):
        oks = [attains(metrics[t["metric"]][:, k], t) for t in targets]
        p = float(np.mean(np.logical_and.reduce(oks)))
        row = {"DOSE": dose, "II": ii, "DURATION": duration, "DAILY_DOSE": dose * 24.0 / ii, "P_TARGET": p,
               "P_TARGET_MCSE": float(np.sqrt(p * (1 - p) / ess))}
        if len(targets) > 1:
            row.update({target_label(t): float(ok.mean()) for t, ok in zip(targets, oks)})
        for name in dict.fromkeys(t["metric"] for t in targets):
            x = metrics[name][:, k]
            row[f"{name}_median"], row[f"{name}_q5"], row[f"{name}_q95"] = np.quantile(x, [0.5, 0.05, 0.95])
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["targets"] = targets
    return table


def recommend(table: pd.DataFrame) -> pd.Series:
    """The candidate with the highest probability of target attainment (ties: lowest daily dose, then longest II)."""
    best = table["P_TARGET"].max()
    tied = table[np.isclose(table["P_TARGET"], best, rtol=0, atol=1e-12)]
    return tied.sort_values(["DAILY_DOSE", "II"], ascending=[True, False]).iloc[0]


def recommendation_text(table: pd.DataFrame, post=None) -> str:
    """The recommendation in words: the regimen, its probability (Monte Carlo SE) and its exposure."""
    targets = table.attrs.get("targets", [])
    best = recommend(table)
    how = f" as a {best['DURATION']:g}-h infusion" if best["DURATION"] > 0 else ""
    goal = " and ".join(target_label(t)[2:-1] for t in targets) or "the target"
    lines = [f"Recommended: {best['DOSE']:g} every {best['II']:g} h{how} (daily {best['DAILY_DOSE']:g}): "
             f"probability {best['P_TARGET']:.2f} (Monte Carlo SE {best['P_TARGET_MCSE']:.2f}) that {goal} at "
             f"steady state."]
    for name in dict.fromkeys(t["metric"] for t in targets):
        lines.append(f"  {name}: median {best[f'{name}_median']:.3g}, 90% credible interval "
                     f"{best[f'{name}_q5']:.3g}-{best[f'{name}_q95']:.3g}.")
    close = table[(table["P_TARGET"] >= best["P_TARGET"] - 2 * best["P_TARGET_MCSE"]) & ~table.index.isin([best.name])]
    if len(close):
        lines.append("  Within Monte Carlo error of it: " + "; ".join(
            f"{r.DOSE:g} every {r.II:g} h (p {r.P_TARGET:.2f})" for r in close.itertuples()) + ".")
    if best["P_TARGET"] < 0.5:
        lines.append(f"  No candidate reaches the target with probability above 0.5 (best {best['P_TARGET']:.2f}): "
                     f"widen the dose or interval grid, or measure again.")
    if post is not None and post.problems:
        lines.append("  Caution: " + " ".join(post.problems))
    return "\n".join(lines)
