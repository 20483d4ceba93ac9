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

Rules:

``DecisionRule.interval(parameter, ci=0.9, lower=0.8, upper=1.25, scale=...)``
    success when the equal-tailed ``ci`` credible interval of the parameter, on a scale, lies within
    ``[lower, upper]``.  Scales: ``"relative"`` (the parameter over its posterior median: the
    precision criterion of paediatric study design, e.g. 95% CI of CL within 60-140% of the
    estimate), ``"exp"`` (exp of the parameter: the ratio a categorical or log-scale covariate effect
    implies, e.g. a drug-interaction ratio within the 0.8-1.25 no-effect boundaries), ``"truth"``
    (the parameter over the replicate's true value) or ``"natural"``.
``DecisionRule.probability(parameter, threshold=0, above=True, level=0.95)``
    success when ``P(parameter > threshold) >= level`` (or ``<``), e.g. a covariate effect detected.

The result is the probability of success, its Monte Carlo SE ``sqrt(p (1 - p) / n)``, and a table
per replicate (the truth, the interval, success, and the fit's ESS and divergences).

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
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.simulate import simulate
from bayesnlme.inference.fit import fit_model
from bayesnlme.inference.refit import refitter, with_dv
from bayesnlme.runner import run_tasks
from bayesnlme.spec import ModelSpec

SCALES = ("relative", "exp", "truth", "natural")
ANALYSES = ("nuts", "map")


@dataclass(frozen=True)
class DecisionRule:
    """What a replicate study must show (see the module docstring)."""

    kind: str
    parameter: str
    ci: float = 0.9
    lower: float = -np.inf
    upper: float = np.inf
    scale: str = "natural"
    threshold: float = 0.0
    above: bool = True
    level: float = 0.95

    @classmethod
    def interval(cls, parameter: str, *, ci: float = 0.9, lower: float = -np.inf, upper: float = np.inf,
                 scale: str = "relative") -> "DecisionRule":
        """Success when the ``ci`` credible interval (on ``scale``) lies within ``[lower, upper]``."""
        if scale not in SCALES:
            raise BayesNLMEInputError(f"decision rule scale must be one of {', '.join(SCALES)}, got {scale!r}")
        if not (0 < ci < 1 and lower < upper):
            raise BayesNLMEInputError(f"decision rule needs 0 < ci < 1 and lower < upper (got ci {ci}, "
                                      f"{lower}-{upper})")
        return cls("interval", parameter, ci=ci, lower=lower, upper=upper, scale=scale)

    @classmethod
    def probability(cls, parameter: str, *, threshold: float = 0.0, above: bool = True,
                    level: float = 0.95) -> "DecisionRule":
        """Success when ``P(parameter > threshold) >= level`` (``above=False``: ``<``)."""
        if not 0 < level < 1:
            raise BayesNLMEInputError(f"decision rule level must be between 0 and 1, got {level!r}")
        return cls("probability", parameter, threshold=threshold, above=above, level=level)

    def describe(self) -> str:
        if self.kind == "probability":
            return (f"P({self.parameter} {'>' if self.above else '<'} {self.threshold:g}) >= {self.level:g}")
        of = {"relative": f"{self.parameter} / its posterior median", "exp": f"exp({self.parameter})",
              "truth": f"{self.parameter} / its true value", "natural": self.parameter}[self.scale]
        return f"{100 * self.ci:g}% CrI of {of} within {self.lower:g}-{self.upper:g}"

    def evaluate(self, draws: np.ndarray, truth: float) -> dict:
        """Apply the rule to a replicate's posterior draws of the parameter."""
        x = np.asarray(draws, float).ravel()
        if self.kind == "probability":
            prob = float((x > self.threshold).mean() if self.above else (x < self.threshold).mean())
            return {"estimate": float(np.median(x)), "probability": prob, "success": bool(prob >= self.level)}
        y = {"relative": x / np.median(x), "exp": np.exp(x), "truth": x / truth, "natural": x}[self.scale]
        lo, hi = np.quantile(y, [(1 - self.ci) / 2, (1 + self.ci) / 2])
        return {"estimate": float(np.median(x)), "lower": float(lo), "upper": float(hi),
                "success": bool(self.lower <= lo and hi <= self.upper)}


def _drop_out(frame: pd.DataFrame, rate: float, rng: np.random.Generator) -> pd.DataFrame:
    """Remove each subject's observation records after an exponential dropout time (rate per time unit)."""
    ids = pd.unique(frame["ID"])
    t_drop = pd.Series(rng.exponential(1 / rate, len(ids)) if rate > 0 else np.full(len(ids), np.inf), index=ids)
    obs = frame["EVID"].fillna(0).to_numpy() == 0
    keep = ~obs | (frame["TIME"].to_numpy() <= t_drop.loc[frame["ID"]].to_numpy())
    return frame[keep].reset_index(drop=True)


def trial_replicate(*, key, seed, workdir, spec: dict, design: pd.DataFrame, dv: np.ndarray, truth: dict,
                    index: int, rule: dict, analysis: str, chains: int, draws: int, tune: int,
                    dropout_rate: float) -> dict:
    """Analyse one replicate study (a runner task) and apply the decision rule."""
    fit_spec = ModelSpec.from_dict(spec)
    rule = DecisionRule(**rule)
    nm = read_nonmem(design)
    rng = np.random.default_rng(seed)
    frame = with_dv(nm, dv[index])
    if dropout_rate > 0:
        frame = _drop_out(frame, dropout_rate, rng)
    if analysis == "nuts" and dropout_rate == 0:
        idata = refitter(fit_spec, nm, chains=chains, draws=draws, tune=tune, cores=1).sample(dv[index], seed)
    else:
        idata = fit_model(fit_spec, frame, chains=chains, draws=draws, tune=tune, seed=seed, progress=False,
                          method="map" if analysis == "map" else "nuts", cores=1).idata
    post = idata.posterior
    if rule.parameter not in post:
        raise BayesNLMEInputError(f"decision rule: the analysis model {fit_spec.name} has no parameter "
                                  f"{rule.parameter}")
    t = truth.get(rule.parameter, [np.nan])[index]
    out = {"truth": float(t), **rule.evaluate(post[rule.parameter].values, t),
           "n_subjects": int(frame.loc[frame["EVID"].fillna(0) == 0, "ID"].nunique()),   # with >= 1 level
           "n_observations": int((frame["EVID"].fillna(0) == 0).sum())}
    if analysis == "nuts":
        out["ess_bulk"] = float(az.ess(idata, var_names=[rule.parameter])[rule.parameter])
        out["divergences"] = int(idata.sample_stats["diverging"].values.sum())
    return out


@dataclass
class TrialResult:
    """Outcome of :func:`trial`.

    Attributes
    ----------
    replicates : pandas.DataFrame
        One row per replicate that finished: ``truth``, ``estimate``, ``lower``/``upper`` or
        ``probability``, ``success``, ``n_subjects``, ``n_observations`` (after dropout) and, for NUTS,
        ``ess_bulk`` and ``divergences``.
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
        if self.failed:
            text += f" {len(self.failed)} replicate(s) failed and are left out (see the manifest)."
        return text


def trial(result, design, *, n: int = 200, rule: DecisionRule, analysis: str = "nuts",
          analysis_spec: ModelSpec | None = None, dropout: float = 0.0, covariates=None, chains: int = 2,
          draws: int = 500, tune: int = 500, seed: int = 1, run_dir, scheduler=None,
          n_workers: int | None = None, memory_limit=None, progress: bool = True) -> TrialResult:
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
    analysis : {"nuts", "map"}
        How each replicate is analysed.
    analysis_spec : ModelSpec, optional
        The model each replicate is analysed with (default: the fit's).
    dropout : float
        Probability that a subject drops out before the last sampling time (0 <= dropout < 1).
    covariates : None, "resample" or pandas.DataFrame
        Covariates of the simulated subjects (:func:`bayesnlme.evaluate.simulate.assign_covariates`).
    chains, draws, tune : int
        NUTS settings of each analysis.
    seed : int
        Run seed (simulation, dropout and each analysis).
    run_dir, scheduler, n_workers, memory_limit, progress
        See :func:`bayesnlme.runner.run_tasks`.

    Returns
    -------
    TrialResult
        Also written to ``run_dir``: ``replicates.csv`` and ``trial.txt``.
    """
    if analysis not in ANALYSES:
        raise BayesNLMEInputError(f"analysis must be one of {', '.join(ANALYSES)}, got {analysis!r}")
    if not 0 <= dropout < 1:
        raise BayesNLMEInputError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise BayesNLMEInputError(f"trial simulation needs at least 2 replicates, got n={n!r}")
    spec = analysis_spec or result.spec
    sim = simulate(result, design, n_draws=n, mode="new_subjects", covariates=covariates, seed=seed)
    frame = sim.data.records
    names = result.spec.population_parameter_names()
    truth = {p: result.posterior_draws(p)[sim.draw].tolist() for p in names}
    t_last = float(frame.loc[frame["EVID"].fillna(0) == 0, "TIME"].max())
    rate = -np.log1p(-dropout) / t_last if dropout > 0 else 0.0
    keys = [f"rep{i:0{len(str(len(sim.draw) - 1))}d}" for i in range(len(sim.draw))]
    tasks = {k: {"index": i} for i, k in enumerate(keys)}
    shared = {"spec": spec.to_dict(), "design": frame, "dv": sim.dv, "truth": truth,
              "rule": {k: getattr(rule, k) for k in rule.__dataclass_fields__}, "analysis": analysis,
              "chains": chains, "draws": draws, "tune": tune, "dropout_rate": rate}
    run = run_tasks(trial_replicate, tasks, run_dir, seed=seed, shared=shared, scheduler=scheduler,
                    n_workers=n_workers, memory_limit=memory_limit, progress=progress, label="trial replicates")
    table = pd.DataFrame.from_dict(run.results, orient="index")
    table.index.name = "replicate"
    out = TrialResult(replicates=table, rule=rule, failed=run.failed)
    if table.empty:
        raise BayesNLMEInputError("trial simulation: no replicate finished; see the run's manifest.json")
    folder = Path(run_dir)
    write_atomic(folder / "replicates.csv", lambda t: table.to_csv(t))
    write_text_atomic(folder / "trial.txt", out.describe() + "\n")
    return out
