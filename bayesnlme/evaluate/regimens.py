"""Dosing-regimen evaluation: steady-state exposure and probability of target attainment.

For each candidate regimen (a grid of doses x dosing intervals, optionally per
band of a covariate such as body weight), new subjects are simulated at each
posterior draw (:mod:`bayesnlme.evaluate.simulate`) at steady state (one ``SS=1``
dose record) on a dense grid over one dosing interval ``[0, II]``:

* ``AUCTAU``: AUC over the interval; for the library's linear closed-form
  models exactly ``F * Dose / CL`` of each simulated subject, otherwise the
  trapezoidal rule on the grid;
* ``CMAX``, ``CMIN``: maximum and minimum over the grid (infusion end included);
* ``CTROUGH``: the concentration at the end of the interval (pre-dose).

New subjects' covariate vectors are drawn with replacement from the fitted subjects (within each band)
or from a given population table.

Metrics are concentrations without residual error.  The probability of target
attainment of a regimen at one posterior draw is the fraction of its simulated
subjects meeting the target; the table reports its posterior mean and a
credible interval over draws.  Regimen files are TOML read with :mod:`tomllib`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pandas as pd

from bayesnlme.errors import BayesNLMEInputError, DataError, SpecError
from bayesnlme.evaluate.simulate import iter_simulations, regimen_data
from bayesnlme.structural import LIBRARY

METRICS = ("AUCTAU", "CMAX", "CMIN", "CTROUGH")
_KEYS = {"doses", "intervals", "duration", "cmt", "n_subjects", "n_draws", "seed", "grid_points",
         "credible_interval", "n_doses", "bands", "targets"}
_LINEAR = ("1cmt_iv", "1cmt_oral", "2cmt_iv", "2cmt_oral", "3cmt_iv", "3cmt_oral", "2cmt_iv_vss", "2cmt_oral_vss")
_ODE_DOSES = 20


def target_label(t: dict) -> str:
    """A target's column label, e.g. ``P(10<CTROUGH<20)`` or ``P(AUCTAU>400)``."""
    parts = [f"{t['metric']}>{t['above']:g}" if "above" in t else "",
             f"{t['metric']}<{t['below']:g}" if "below" in t else ""]
    if "above" in t and "below" in t:
        return f"P({t['above']:g}<{t['metric']}<{t['below']:g})"
    return f"P({''.join(parts)})"


def attains(values, t: dict) -> np.ndarray:
    """Whether each value of a metric meets a target ``{"metric", "above" and/or "below"}`` (strict bounds).

    Parameters
    ----------
    values : array-like
        The target's metric (any shape).
    t : dict
        ``{"metric": ..., "above": x, "below": y}``; either bound may be absent.

    Returns
    -------
    numpy.ndarray of bool, the shape of ``values``
    """
    values = np.asarray(values, float)
    ok = np.ones(values.shape, bool)
    if "above" in t:
        ok &= values > t["above"]
    if "below" in t:
        ok &= values < t["below"]
    return ok


def linear_closed_form(spec) -> bool:
    """True for the library's linear closed-form PK models (steady-state AUCTAU is exactly ``F * Dose / CL``)."""
    s = spec.structural
    return not getattr(s, "per_subject", False) and any(n in LIBRARY and s is LIBRARY[n] for n in _LINEAR)


def _covariate_table(result, names: list, population: pd.DataFrame | None) -> pd.DataFrame:
    """Baseline covariates (columns ``names``) of the fitted subjects, or the rows of ``population``."""
    if population is None:
        return result.data.baseline_covariates(names).reset_index(drop=True)
    missing = [n for n in names if n not in population.columns]
    if missing:
        raise DataError(f"population table lacks covariate {missing[0]} (the model or the bands need it)",
                        source="<population table>", column=missing[0])
    if population.empty:
        raise DataError("population table has no rows", source="<population table>")
    return population[names].reset_index(drop=True)


def _band_pools(result, bands: dict | None, population: pd.DataFrame | None = None):
    """Covariate pools per band: (label, table of baseline covariates: the fitted subjects' or ``population``)."""
    names = sorted({eff.covariate for eff in result.spec.covariates})
    if bands is None:
        return [("all", _covariate_table(result, names, population) if names else None)]
    cov, edges = bands["covariate"], bands["edges"]
    table = _covariate_table(result, sorted(set(names) | {cov}), population)
    pools = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        pool = table[(table[cov] >= lo) & (table[cov] < hi)]
        if pool.empty:
            raise SpecError(f"bands: no fitted subject has {cov} in [{lo:g}, {hi:g}); choose other edges")
        pools.append((f"{cov} {lo:g}-{hi:g}", pool[names] if names else None))
    return pools


def concentration_dvid(spec) -> int | None:
    """The DVID of the observation model of the drug concentration (output ``CP``), or None without DVIDs.

    Raises
    ------
    BayesNLMEInputError
        The spec's observation models observe no concentration, so there is nothing to summarise.
    """
    if not spec.observations:
        return None
    m = spec.observation_model_of("CP")
    if m is not None:
        return m.dvid if m.dvid is not None else 1
    models = spec.observation_models()
    raise BayesNLMEInputError(
        f"regimen evaluation summarises the predicted drug concentration (CP), and {spec.name} observes none "
        f"(its observation models: {', '.join(f'{m.output} {m.likelihood}' for m in models)}); simulate the "
        f"regimen with bayesnlme.evaluate.simulate.simulate to see its effect on these outcomes instead")


def evaluate_regimens(result, doses, intervals, *, duration: float = 0.0, cmt: int = 0,
                      n_subjects: int = 200, n_draws: int = 200, targets=(), bands: dict | None = None,
                      credible_interval: float = 90, grid_points: int = 49, seed: int = 0,
                      subject_chunk: int = 500, exact: bool | None = None,
                      n_doses: int | None = None,
                      population: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Steady-state exposure and target attainment for a grid of regimens.

    Parameters
    ----------
    result : FitResult
    doses : sequence of float
        Amounts per dose (AMT units, e.g. mg).
    intervals : sequence of float
        Dosing intervals II (time units, e.g. h).
    duration : float
        Infusion duration (0 = bolus / oral).
    cmt : int
        Dose compartment (0 = model default).
    n_subjects : int
        New subjects per regimen (and band) at each posterior draw.
    n_draws : int
        Posterior draws used.
    targets : sequence of dict
        Each ``{"metric": one of METRICS, "above": x and/or "below": y}``.
    bands : dict, optional
        ``{"covariate": "WT", "edges": [...]}``: covariate vectors are resampled
        from fitted subjects within each band (default: from all subjects).
    credible_interval : float
        Percent credible interval of the target-attainment probabilities.
    exact : bool, optional
        AUCTAU as ``F * Dose / CL`` (True) or by the trapezoidal rule on the
        grid (False); default: exact for the library's linear closed forms
        at steady state.
    n_doses : int, optional
        Instead of steady-state (``SS=1``) records, give ``n_doses`` doses
        (``ADDL``) and evaluate the last interval; the default for ODE models
        (which do not take SS records) is 20 doses.
    population : pandas.DataFrame, optional
        The population the new subjects come from: their covariate vectors are drawn with
        replacement from its rows (one row per person, a column per covariate the model and
        ``bands`` use; e.g. a proposed study's subjects); default: the fitted subjects.

    Returns
    -------
    table : pandas.DataFrame
        One row per regimen and band: ``REGIMEN, BAND, DOSE, II, DURATION``, per
        metric ``<M>_median, <M>_q5, <M>_q95`` (over simulated subjects and
        draws) and per target ``<label>`` (the posterior mean of the attainment
        probability = the fraction of all simulated subjects attaining it) and
        ``<label>_lo``, ``<label>_hi`` (quantiles over draws).
    metrics : pandas.DataFrame
        Per simulated subject and draw: ``REGIMEN, BAND, DRAW, SUBJECT`` and the metrics.
    """
    rng = np.random.default_rng(seed)
    dvid = concentration_dvid(result.spec)
    pools = _band_pools(result, bands, population)
    if n_doses is None and getattr(result.spec.structural, "per_subject", False):
        n_doses = _ODE_DOSES
    frames, keys = [], []
    for dose in doses:
        for ii in intervals:
            start = 0.0 if n_doses is None else (n_doses - 1) * ii     # the interval evaluated
            times = start + np.union1d(np.linspace(0, ii, grid_points), [min(duration, ii)])
            for band, pool in pools:
                cov = None if pool is None else pool.iloc[rng.integers(0, len(pool), n_subjects)]
                frames.append(regimen_data(dose, ii, n_doses or 1, dur=duration, cmt=cmt, times=times,
                                           n_subjects=n_subjects, steady_state=n_doses is None, covariates=cov))
                keys.append((f"{dose:g} every {ii:g}", band, dose, ii))
    offset = 0
    for f in frames:    # unique IDs across regimens
        f["ID"] += offset
        offset += n_subjects
    design = pd.concat(frames, ignore_index=True)
    if dvid is not None:   # the design's records are concentrations: the type that observes CP
        design["DVID"] = np.where(design["EVID"] == 0, dvid, 0)
    if exact is None:
        exact = n_doses is None and linear_closed_form(result.spec) and "CL" in result.spec.parameters
    extra = ("individual.CL",) + (("individual.F",) if "F" in result.spec.parameters else ()) if exact else ()
    rows = []
    for data, idx, out in iter_simulations(result, design, n_draws=n_draws, seed=seed,
                                           subject_chunk=subject_chunk, extra_outputs=extra):
        rows.append(_metrics(data, idx, out, exact, n_subjects))
    metrics = pd.concat(rows, ignore_index=True)
    label = metrics.pop("_K").map(lambda k: keys[k])
    metrics.insert(0, "REGIMEN", label.map(lambda k: k[0]))
    metrics.insert(1, "BAND", label.map(lambda k: k[1]))
    return summarise_metrics(metrics, keys, duration, targets, credible_interval), metrics


def exposure_metrics(data, ipred: np.ndarray, auc: np.ndarray | None = None) -> dict:
    """Exposure metrics of each subject of a design over its grid of observation records.

    Each subject's observation records are a grid over one dosing interval, its last record at the
    end of the interval (the pre-dose trough).

    Parameters
    ----------
    data : NMData
        The design (subjects with an observation grid each).
    ipred : numpy.ndarray, shape (n_draws, n_obs)
        Concentrations at the records (DV units, e.g. mg/L).
    auc : numpy.ndarray, shape (n_draws, n_subjects), optional
        Exact AUC over the interval (e.g. ``F * Dose / CL``); default: the trapezoidal rule on the grid.

    Returns
    -------
    dict of str -> numpy.ndarray, shape (n_draws, n_subjects)
        ``AUCTAU`` (DV units x time), ``CMAX``, ``CMIN`` (over the grid) and ``CTROUGH`` (at the last
        record).
    """
    n_draw = ipred.shape[0]
    subj, t = data.obs_subject, data.obs_time
    n_sub = data.n_subjects
    cmax, cmin = np.full((n_draw, n_sub), -np.inf), np.full((n_draw, n_sub), np.inf)
    np.maximum.at(cmax.T, subj, ipred.T)
    np.minimum.at(cmin.T, subj, ipred.T)
    last = np.flatnonzero(np.r_[subj[1:] != subj[:-1], True])   # each subject's last grid time = II
    ctrough = ipred[:, last]
    if auc is None:
        seg = (subj[1:] == subj[:-1])
        area = 0.5 * (ipred[:, 1:] + ipred[:, :-1]) * np.diff(t)[None, :] * seg[None, :]
        auc = np.zeros((n_draw, n_sub))
        np.add.at(auc.T, subj[1:], area.T)
    return {"AUCTAU": auc, "CMAX": cmax, "CMIN": cmin, "CTROUGH": ctrough}


def _metrics(data, idx, out, exact: bool, n_subjects: int) -> pd.DataFrame:
    """Exposure metrics per (draw, subject) of one chunk."""
    auc = None
    if exact:
        f = out.get("individual.F", 1.0)
        auc = f * data.dose_amt[:, 0][None, :] / out["individual.CL"]
    m = exposure_metrics(data, out["ipred"], auc)
    n_draw, n_sub = len(idx), data.n_subjects
    ids = np.asarray(data.ids, int)
    return pd.DataFrame({"_K": np.tile((ids - 1) // n_subjects, n_draw), "DRAW": np.repeat(idx, n_sub),
                         "SUBJECT": np.tile(ids, n_draw), **{k: v.ravel() for k, v in m.items()}})


def summarise_metrics(metrics, keys, duration, targets, ci) -> pd.DataFrame:
    """The regimen table of :func:`evaluate_regimens` from its per-subject ``metrics``.

    ``keys``: ``(REGIMEN, BAND, DOSE, II)`` per row of the table; ``ci``: percent credible interval.
    Every DRAW weighs the same in a target's attainment probability.
    """
    lo_q, hi_q = (100 - ci) / 200, 1 - (100 - ci) / 200
    rows = []
    for (regimen, band, dose, ii) in dict.fromkeys(keys):
        m = metrics[(metrics["REGIMEN"] == regimen) & (metrics["BAND"] == band)]
        row = {"REGIMEN": regimen, "BAND": band, "DOSE": dose, "II": ii, "DURATION": duration}
        for k in METRICS:
            row[f"{k}_median"], row[f"{k}_q5"], row[f"{k}_q95"] = np.quantile(m[k], [0.5, 0.05, 0.95])
        for t in targets:
            ok = attains(m[t["metric"]].to_numpy(), t)
            per_draw = pd.Series(ok).groupby(m["DRAW"].to_numpy()).mean()
            name = target_label(t)
            row[name] = per_draw.mean()
            row[f"{name}_lo"], row[f"{name}_hi"] = np.quantile(per_draw, [lo_q, hi_q])
        rows.append(row)
    return pd.DataFrame(rows)


def plot_regimens(table: pd.DataFrame, targets=()):
    """Steady-state AUCTAU/CTROUGH by regimen and target attainment with credible intervals.

    Returns
    -------
    (matplotlib.figure.Figure, pandas.DataFrame)
    """
    import matplotlib.pyplot as plt

    labels = [target_label(t) for t in targets]
    ncol = 2 + len(labels)
    fig, axes = plt.subplots(1, ncol, figsize=(4.5 * ncol, 4), squeeze=False)
    names = (table["REGIMEN"] + np.where(table["BAND"] == "all", "", " / " + table["BAND"])).to_numpy()
    y = np.arange(len(table))
    for ax, k in zip(axes[0, :2], ("AUCTAU", "CTROUGH")):
        med = table[f"{k}_median"].to_numpy()
        ax.errorbar(med, y, xerr=[med - table[f"{k}_q5"], table[f"{k}_q95"] - med], fmt="o", capsize=3)
        ax.set_xlabel(f"steady-state {k} (median, 5-95%)")
    for ax, name in zip(axes[0, 2:], labels):
        p = table[name].to_numpy()
        # the point is the posterior mean, which can sit just outside a quantile interval piled up at 0 or 1
        err = np.clip([p - table[f"{name}_lo"], table[f"{name}_hi"] - p], 0, None)
        ax.errorbar(p, y, xerr=err, fmt="s", capsize=3)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel(name)
    for ax in axes[0]:
        ax.set_yticks(y, names if ax is axes[0, 0] else [""] * len(y))
    fig.tight_layout()
    return fig, table


def load_regimens(path) -> dict:
    """Read and validate a regimen TOML file (keyword arguments of :func:`evaluate_regimens`).

    Raises
    ------
    SpecError
        Naming the file and the key at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: regimen file not found")
    try:
        d = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML ({exc})") from None

    def bad(key, msg):
        return SpecError(f"{path}: key {key!r}: {msg}")

    unknown = sorted(set(d) - _KEYS)
    if unknown:
        raise bad(unknown[0], f"unknown key (allowed: {', '.join(sorted(_KEYS))})")
    for key in ("doses", "intervals"):
        v = d.get(key)
        if not isinstance(v, list) or not v or not all(isinstance(x, (int, float)) and x > 0 for x in v):
            raise bad(key, "required: a non-empty list of positive numbers")
    out = {"doses": [float(x) for x in d["doses"]], "intervals": [float(x) for x in d["intervals"]]}
    for key, kind, lo in (("duration", (int, float), 0), ("cmt", int, 0), ("n_subjects", int, 1), ("n_doses", int, 1),
                          ("n_draws", int, 1), ("seed", int, 0), ("grid_points", int, 3),
                          ("credible_interval", (int, float), 1)):
        if key in d:
            if not isinstance(d[key], kind) or isinstance(d[key], bool) or d[key] < lo:
                raise bad(key, f"must be a {'number' if kind != int else 'whole number'} >= {lo}, got {d[key]!r}")
            out[key] = d[key]
    if "bands" in d:
        b = d["bands"]
        if not isinstance(b, dict) or set(b) != {"covariate", "edges"} or not isinstance(b["covariate"], str) \
                or not isinstance(b["edges"], list) or len(b["edges"]) < 2 \
                or not all(isinstance(x, (int, float)) for x in b["edges"]) or np.any(np.diff(b["edges"]) <= 0):
            raise bad("bands", "must be a table with covariate = \"<name>\" and edges = [increasing numbers]")
        out["bands"] = b
    targets = d.get("targets", [])
    if not isinstance(targets, list):
        raise bad("targets", "must be an array of tables ([[targets]])")
    for i, t in enumerate(targets):
        where = f"targets[{i}]"
        if not isinstance(t, dict) or t.get("metric") not in METRICS:
            raise bad(f"{where}.metric", f"must be one of {', '.join(METRICS)}")
        extra = set(t) - {"metric", "above", "below"}
        if extra or not ({"above", "below"} & set(t)):
            got = "" if not extra else ", got " + ", ".join(sorted(extra))
            raise bad(where, f"needs 'above' and/or 'below' (numbers) and nothing else{got}")
        for k in ("above", "below"):
            if k in t and (not isinstance(t[k], (int, float)) or isinstance(t[k], bool)):
                raise bad(f"{where}.{k}", f"must be a number, got {t[k]!r}")
    out["targets"] = targets
    return out
