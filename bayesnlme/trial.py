"""Replicate trial simulation: the probability that a proposed study meets its decision rule.

From a fitted model, :func:`trial` simulates ``n`` replicate studies of a proposed design (its
regimen, number of subjects, sampling times and covariates, as a NONMEM-format data set -- e.g. from
:func:`bayesnlme.evaluate.simulate.regimen_data`), each from a different posterior draw of the
population parameters and with new subjects (ETAs from that draw's OMEGA), so that the uncertainty
of the current model is carried into the prediction (the "assurance" of O'Hagan, Stevens and
Campbell 2005, rather than power at one assumed truth).  Subjects may drop out: each subject's
dropout time is exponential with the rate that gives the stated probability of dropping out before
the last sampling time, and the records after it are removed.

Each replicate is analysed -- by NUTS (the default; a model is compiled once per worker and sampled
again for each replicate's DV when no subject drops out, :mod:`bayesnlme.inference.refit`: about a
second per replicate of a 24-subject study) or by MAP + Laplace -- with the fit's model or another
analysis model, and the decision rule is applied to the replicate's posterior.  The Laplace
approximation is taken at the joint mode of all parameters, random effects included, and its
intervals for population parameters can be far too wide (measured: a 90% interval of CL/median
0.77-1.31 where NUTS gives 0.93-1.08 on the same 24-subject replicates), so it makes the probability
of success conservative; it also compiles a model per replicate.  Prefer NUTS.

Covariates: by default every replicate has the design's own subjects' covariates.  With
``covariates="resample"`` (or a covariate table) every replicate draws its own subjects' covariate
vectors -- from the fitted subjects (or the table's rows), with a seed from the run seed and the
replicate's key -- is simulated with them on a worker, and is analysed with them; each replicate's data
set is kept as ``tasks/<replicate>/data.csv`` in the run directory.

Rules (:mod:`bayesnlme.decision`): ``DecisionRule.interval`` (a credible interval of a parameter,
relative to its median, as a ratio ``exp``, relative to the truth or as is, within bounds),
``DecisionRule.probability`` (``P(parameter > threshold) >= level``) and ``DecisionRule.attainment``
(the probability of target attainment of a regimen at steady state, computed from the replicate's
posterior with :func:`bayesnlme.evaluate.regimens.evaluate_regimens` -- new subjects from the
population of the design -- at least ``level``, by its posterior mean or the lower end of its credible
interval; the replicate's "truth" is then the PTA at the population parameters it was simulated from).

The result is the probability of success, its Monte Carlo SE ``sqrt(p (1 - p) / n)``, and a table
per replicate (the truth, the estimate and interval, success, and the fit's ESS and divergences).

Reference: O'Hagan A, Stevens JW, Campbell MJ (2005) Assurance in clinical trial design. Pharm Stat
4:187.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd

from bayesnlme.atomic import write_atomic, write_text_atomic
from bayesnlme.data import read_nonmem
from bayesnlme.decision import DecisionRule, attainment_draws
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.predict import thinned_draws
from bayesnlme.evaluate.regimens import concentration_dvid
from bayesnlme.evaluate.simulate import assign_covariates, simulate
from bayesnlme.inference.convergence import without_arviz_numba
from bayesnlme.inference.fit import FitResult, fit_model
from bayesnlme.inference.refit import refitter, with_dv
from bayesnlme.runner import run_tasks, task_seed
from bayesnlme.sbc import below_lloq, placeholder_design
from bayesnlme.spec import ModelSpec

__all__ = ["trial", "TrialResult", "DecisionRule", "replicate_covariates", "trial_replicate"]

ANALYSES = ("nuts", "map")


def _drop_out(frame: pd.DataFrame, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Records kept (bool per record): each subject's observation records after an exponential dropout
    time (rate per time unit) are not."""
    ids = pd.unique(frame["ID"])
    t_drop = pd.Series(rng.exponential(1 / rate, len(ids)) if rate > 0 else np.full(len(ids), np.inf), index=ids)
    obs = frame["EVID"].fillna(0).to_numpy() == 0
    return ~obs | (frame["TIME"].to_numpy() <= t_drop.loc[frame["ID"]].to_numpy())


def _fit_at(spec: ModelSpec, data, draws: dict) -> FitResult:
    """A FitResult whose posterior is ``draws`` (name -> array, leading dimension = draw) as one chain."""
    post = az.convert_to_dataset({k: np.asarray(v)[None] for k, v in draws.items()})
    return FitResult(idata=az.InferenceData(posterior=post), spec=spec, data=data, settings={})


def _with_covariates(design: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The design with each subject's covariates from ``table`` (column ID and one per covariate)."""
    names = [c for c in table.columns if c != "ID"]
    return design.drop(columns=names, errors="ignore").join(table.set_index("ID")[names], on="ID")


def _simulate_replicate(simulation: dict, design: pd.DataFrame, covariates: pd.DataFrame, index: int, seed: int):
    """One replicate's subjects (the design with their own covariates) simulated from its posterior draw."""
    data = read_nonmem(simulation["data"])
    spec = ModelSpec.from_dict(simulation["spec"]).bind(data)
    one = _fit_at(spec, data, {k: v[index:index + 1] for k, v in simulation["draws"].items()})
    sim = simulate(one, _with_covariates(design, covariates), n_draws=1, seed=seed)
    return sim.data, sim.dv[0]


def trial_replicate(*, key, seed, workdir, spec: dict, design: pd.DataFrame, dv: np.ndarray | None, truth: dict,
                    index: int, rule: dict, analysis: str, chains: int, draws: int, tune: int,
                    dropout_rate: float, simulation: dict | None = None, population: pd.DataFrame | None = None,
                    pta_seed: int = 0, covariates: pd.DataFrame | None = None,
                    lloq: np.ndarray | None = None) -> dict:
    """Simulate (when its subjects have their own covariates) and analyse one replicate study (a runner task).

    Writes the replicate's data set (``data.csv``, after dropout) into ``workdir``; returns the truth,
    the rule's outcome, the numbers of subjects, observations and censored observations and, for NUTS,
    the ESS of the rule's parameter and the divergences.  With ``lloq`` (per observation record, NaN:
    none), simulated values below it are censored (``CENS = 1``, ``DV = LLOQ``) and analysed by Beal's M3,
    NUTS replicates with the compiled model of the others (``DV_cens``, :mod:`bayesnlme.inference.refit`).
    """
    fit_spec = ModelSpec.from_dict(spec)
    rule = DecisionRule(**rule)
    rng = np.random.default_rng(seed)
    s_sim = int(np.random.SeedSequence(seed).generate_state(1)[0])
    if covariates is None:      # the design's subjects, simulated with the others in the client
        nm, y = read_nonmem(design), dv[index]
    else:
        nm, y = _simulate_replicate(simulation, design, covariates, index, s_sim)
    cens = None
    if lloq is not None:
        y, cens = below_lloq(y, np.asarray(lloq, float))
    frame = with_dv(nm, y, cens)
    kept = _drop_out(frame, dropout_rate, rng) if dropout_rate > 0 else np.ones(len(frame), bool)
    frame = frame[kept].reset_index(drop=True)
    frame.to_csv(Path(workdir) / "data.csv", index=False)
    if analysis == "nuts" and covariates is None:
        # one compiled model for every replicate; dropout leaves records out of it by a mask
        keep = kept[nm.frame["_OBS"].to_numpy(bool)] if dropout_rate > 0 else None
        idata = refitter(fit_spec, nm, chains=chains, draws=draws, tune=tune, cores=1, masked=dropout_rate > 0,
                         censored=lloq is not None).sample(y, seed, keep=keep, cens=cens)
        fitted = None
    else:
        fitted = fit_model(fit_spec, frame, chains=chains, draws=draws, tune=tune, seed=seed, progress=False,
                           method="map" if analysis == "map" else "nuts", cores=1, log_likelihood="none")
        idata = fitted.idata
    if rule.kind == "attainment":
        if fitted is None:      # the refitted draws with the design's subjects (all of them: the ETAs'), as a fit
            data = read_nonmem(with_dv(nm, y, cens))
            fitted = FitResult(idata=idata, spec=fit_spec.bind(data), data=data,
                               settings={"method": "nuts", "chains": chains, "draws": draws, "tune": tune,
                                         "seed": seed})
        values = attainment_draws(fitted, rule, population=population, seed=pta_seed)
    elif rule.parameter in idata.posterior:
        values = idata.posterior[rule.parameter].values
    else:
        raise BayesNLMEInputError(f"decision rule: the analysis model {fit_spec.name} has no parameter "
                                  f"{rule.parameter}")
    t = truth[rule.parameter][index] if rule.parameter in truth else np.nan   # e.g. absent from the fit's model
    out = {"truth": float(t), **rule.evaluate(values, t),
           "n_subjects": int(frame.loc[frame["EVID"].fillna(0) == 0, "ID"].nunique()),   # with >= 1 level
           "n_observations": int((frame["EVID"].fillna(0) == 0).sum()),
           "n_censored": int(frame["CENS"].sum()) if cens is not None else 0}
    if analysis == "nuts":
        if rule.kind != "attainment":
            with without_arviz_numba():
                out["ess_bulk"] = float(az.ess(idata, var_names=[rule.parameter])[rule.parameter])
        out["divergences"] = int(idata.sample_stats["diverging"].values.sum())
    return out


@dataclass
class TrialResult:
    """Outcome of :func:`trial`.

    Attributes
    ----------
    replicates : pandas.DataFrame
        One row per replicate that finished: ``truth``, ``estimate``, ``lower``/``upper`` and/or
        ``probability`` (see :meth:`DecisionRule.evaluate`), ``success``, ``n_subjects``,
        ``n_observations`` (after dropout), ``n_censored`` (of them, below the LLOQ) and, for NUTS,
        ``divergences`` and (not for attainment rules) ``ess_bulk`` of the rule's parameter.
    rule : DecisionRule
    failed : dict
        Replicate -> one-line error.
    """

    replicates: pd.DataFrame
    rule: DecisionRule
    failed: dict = field(default_factory=dict)

    @property
    def p_success(self) -> float:
        """Probability that the study meets the rule (share of replicates)."""
        return float(self.replicates["success"].mean())

    @property
    def mc_se(self) -> float:
        """Monte Carlo SE of :attr:`p_success`, ``sqrt(p (1 - p) / n)``."""
        p, n = self.p_success, len(self.replicates)
        return float(np.sqrt(p * (1 - p) / n))

    def describe(self) -> str:
        n = len(self.replicates)
        text = (f"Probability of success {self.p_success:.1%} (Monte Carlo SE {self.mc_se:.1%}, {n} replicate "
                f"studies) for the rule: {self.rule.describe()}.")
        cens = self.replicates["n_censored"] if "n_censored" in self.replicates else None
        if cens is not None and cens.sum():
            text += (f" Simulated values below the LLOQ were censored and analysed by M3: "
                     f"{cens.sum() / self.replicates['n_observations'].sum():.1%} of the observations "
                     f"({int((cens > 0).sum())} of {n} replicates had some).")
        if self.failed:
            text += f" {len(self.failed)} replicate(s) failed and are left out (see the manifest)."
        return text


def replicate_keys(n: int) -> list[str]:
    """Task keys of ``n`` replicates: ``rep0`` ... (zero-padded to the same width)."""
    return [f"rep{i:0{len(str(n - 1))}d}" for i in range(n)]


def replicate_covariates(result, design, covariates, keys, seed: int, names=None) -> dict:
    """Each replicate's subjects' covariates, drawn with replacement from a pool for every replicate.

    Parameters
    ----------
    result : FitResult
        Its subjects are the pool for ``covariates="resample"``.
    design : path, NMData or pandas.DataFrame
        The proposed study (its subjects' IDs).
    covariates : "resample" or pandas.DataFrame
        See :func:`bayesnlme.evaluate.simulate.assign_covariates` (a table without an ID column is the
        pool; with one, every replicate gets the same covariates).
    keys : sequence of str
        Replicate keys (:func:`replicate_keys`).
    seed : int
        Run seed: replicate ``key`` draws with the seed :func:`bayesnlme.runner.task_seed` gives
        ``(seed, "covariates:" + key)``, so its subjects are the same whatever the scheduling.
    names : sequence of str, optional
        Covariates to draw (default: those of ``result``'s covariate effects).

    Returns
    -------
    dict of str -> pandas.DataFrame
        Key -> one row per subject of the design: ``ID`` and one column per covariate.
    """
    frame = read_nonmem(design).records
    names = sorted({e.covariate for e in result.spec.covariates} if names is None else set(names))
    out = {}
    for k in keys:
        rng = np.random.default_rng(task_seed(seed, f"covariates:{k}"))
        assigned = assign_covariates(frame, result, covariates, rng, names=names)
        out[k] = assigned.groupby("ID", sort=False)[names].first().reset_index()
    return out


def _population(result, frame: pd.DataFrame, covariates, names: list) -> pd.DataFrame | None:
    """The population the design's subjects come from: the fitted subjects, the covariate pool or the design's own."""
    if not names:
        return None
    if isinstance(covariates, str):
        return result.data.baseline_covariates(names).reset_index(drop=True)
    if covariates is not None and "ID" not in pd.DataFrame(covariates).columns:
        return pd.DataFrame(covariates)[names].reset_index(drop=True)
    return read_nonmem(frame).baseline_covariates(names).reset_index(drop=True)


def trial(result, design, *, n: int = 200, rule: DecisionRule, analysis: str = "nuts",
          analysis_spec: ModelSpec | None = None, dropout: float = 0.0, covariates=None, chains: int = 2,
          draws: int = 500, tune: int = 500, seed: int = 1, run_dir, scheduler=None,
          n_workers: int | None = None, memory_limit=None, retry_failed: bool = False,
          progress: bool = True, lloq: float | None = None) -> TrialResult:
    """Simulate and analyse ``n`` replicates of a proposed study (see the module docstring).

    Parameters
    ----------
    result : FitResult
        The model the replicates are simulated from (each from a different posterior draw).
    design : path, NMData or pandas.DataFrame
        The proposed study: doses, sampling records (DV ignored) and covariates of every subject.
    n : int
        Replicate studies (at most the number of posterior draws).
    rule : DecisionRule
        See :mod:`bayesnlme.decision`.
    analysis : {"nuts", "map"}
        How each replicate is analysed.
    analysis_spec : ModelSpec, optional
        The model each replicate is analysed with (default: the fit's).
    dropout : float
        Probability that a subject drops out before the last sampling time (0 <= dropout < 1).
    covariates : None, "resample" or pandas.DataFrame
        None: the design's own covariates, the same in every replicate.  ``"resample"``: every
        replicate draws its subjects' covariate vectors with replacement from the fitted subjects;
        a table without an ID column: from its rows (a covariate distribution); with an ID column:
        matched by ID, the same in every replicate (:func:`replicate_covariates`).  The covariates
        of both the fit's model and the analysis model are drawn.
    chains, draws, tune : int
        NUTS settings of each analysis (``draws`` also for MAP + Laplace).
    seed : int
        Run seed (simulation, covariates, dropout and each analysis).
    run_dir, scheduler, n_workers, memory_limit, retry_failed, progress
        See :func:`bayesnlme.runner.run_tasks`.
    lloq : float, optional
        Lower limit of quantification (DV units): simulated values below it are censored (``CENS = 1``,
        ``DV = LLOQ``) and each replicate is analysed with Beal's M3 likelihood, as the real study would
        be.  Default: the limits of the design's ``CENS = 1`` records, if it has any (no censoring
        otherwise).

    Returns
    -------
    TrialResult
        Also written to ``run_dir``: ``replicates.csv`` and ``trial.txt``; each replicate's data set
        (after dropout) is ``run_dir/tasks/<replicate>/data.csv``.

    Notes
    -----
    Replicates whose subjects draw their own covariates are simulated on the workers, and their
    analysis builds a model each (the covariates are part of it); its compiled log density is found
    in the cache for any covariate values of the same design (:mod:`bayesnlme.inference.lift`), so a
    replicate pays the graph rewrites (~2-3 s), not a compilation: 12-subject replicates of a
    ``WT`` on ``CL`` model took ~4.6 s each with 2 x 200 draws on 2 cores.

    An attainment rule's new subjects come from the population the design samples: the fitted
    subjects (``covariates="resample"``), the covariate table (without an ID column), or the
    design's own subjects; the same population for every replicate and for its truth.

    Examples
    --------
    >>> rule = DecisionRule.attainment("CTROUGH >10", dose=400, ii=12, level=0.9)      # doctest: +SKIP
    >>> res = trial(fit, regimen_data(400, 12, 1, times=[1, 2, 4, 8, 12], n_subjects=24),  # doctest: +SKIP
    ...             n=200, rule=rule, covariates="resample", run_dir="trial_400q12")
    >>> res.describe()                                                                  # doctest: +SKIP
    """
    if analysis not in ANALYSES:
        raise BayesNLMEInputError(f"analysis must be one of {', '.join(ANALYSES)}, got {analysis!r}")
    if not 0 <= dropout < 1:
        raise BayesNLMEInputError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise BayesNLMEInputError(f"trial simulation needs at least 2 replicates, got n={n!r}")
    for name, value, low in (("chains", chains, 1), ("draws", draws, 1), ("tune", tune, 0)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise BayesNLMEInputError(f"{name} must be an integer >= {low}, got {value!r}")
    if not isinstance(rule, DecisionRule):
        raise BayesNLMEInputError(f"rule must be a DecisionRule, got {type(rule).__name__}")
    spec = analysis_spec or result.spec
    if rule.kind == "attainment":   # before any replicate: both models must predict a concentration
        concentration_dvid(result.spec)
        concentration_dvid(spec)
    placeholder, limits = placeholder_design(design, lloq, what="trial simulation")
    frame = read_nonmem(placeholder).records
    names = sorted({e.covariate for s in (result.spec, spec) for e in s.covariates})
    idx, population_draws = thinned_draws(result, n)
    keys = replicate_keys(len(idx))
    tasks = {k: {"index": i} for i, k in enumerate(keys)}
    by_id = covariates is not None and not isinstance(covariates, str) and "ID" in pd.DataFrame(covariates).columns
    if by_id and names:     # matched by ID: the same subjects in every replicate
        frame = assign_covariates(frame, result, covariates, np.random.default_rng(seed), names=names)
    own = covariates is not None and bool(names) and not by_id
    if own:
        per_rep = replicate_covariates(result, frame, covariates, keys, seed, names)
        for k in keys:
            tasks[k]["covariates"] = per_rep[k]
    spec.bind(read_nonmem(_with_covariates(frame, per_rep[keys[0]]) if own else frame))   # the analysis can read it
    truth = {p: result.posterior_draws(p)[idx].tolist() for p in result.spec.population_parameter_names()}
    population = _population(result, frame, covariates, names) if rule.kind == "attainment" else None
    if rule.kind == "attainment":   # the PTA at each replicate's true population parameters
        truth[rule.parameter] = attainment_draws(_fit_at(result.spec, result.data, population_draws), rule,
                                                 population=population, seed=seed, n_draws=None).tolist()
    shared = {"spec": spec.to_dict(), "truth": truth, "rule": rule.to_dict(), "analysis": analysis,
              "chains": chains, "draws": draws, "tune": tune, "population": population, "pta_seed": seed,
              "lloq": limits}
    if own:     # each replicate simulates its own subjects, on the workers
        shared.update(design=frame, dv=None, simulation={"spec": result.spec.to_dict(), "data": result.data.records,
                                                         "draws": population_draws})
    else:       # every replicate has the design's subjects: one vectorised simulation here
        sim = simulate(result, frame, n_draws=n, mode="new_subjects", seed=seed)
        shared.update(design=sim.data.records, dv=sim.dv)
    t_last = float(frame.loc[frame["EVID"].fillna(0) == 0, "TIME"].max())
    shared["dropout_rate"] = -np.log1p(-dropout) / t_last if dropout > 0 else 0.0
    run = run_tasks(trial_replicate, tasks, run_dir, seed=seed, shared=shared, scheduler=scheduler,
                    n_workers=n_workers, memory_limit=memory_limit, retry_failed=retry_failed, progress=progress,
                    label="trial replicates")
    table = pd.DataFrame.from_dict(run.results, orient="index")
    table.index.name = "replicate"
    out = TrialResult(replicates=table, rule=rule, failed=run.failed)
    if table.empty:
        raise BayesNLMEInputError("trial simulation: no replicate finished; see the run's manifest.json")
    folder = Path(run_dir)
    write_atomic(folder / "replicates.csv", lambda t: table.to_csv(t))
    write_text_atomic(folder / "trial.txt", out.describe() + "\n")
    return out
