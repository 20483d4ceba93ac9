"""Bayesian covariate model building: ETA screening, forward inclusion and backward elimination by ELPD.

The stepwise covariate modelling of NONMEM users (PsN ``scm``), judged by predictive accuracy for
new subjects instead of likelihood-ratio tests:

1. **Base fit** of the model without the candidate relations.
2. **Screening** on the base fit's ETAs: for each candidate ``P~COV``, the per-subject posterior
   mean of ETA_P against the covariate's baseline value -- Spearman's rank correlation for a
   continuous covariate, Kruskal-Wallis for a categorical one.  Candidates with p above
   ``screen_p`` (default 0.2: a liberal filter; ETA shrinkage lowers its power) are not fitted.
3. **Forward inclusion.** Each step fits the current model plus each remaining candidate, in
   parallel on the many-fits runner (:mod:`bayesnlme.runner`), and computes every subject's
   leave-one-subject-out ELPD from the integrated likelihood (random effects integrated out,
   :func:`bayesnlme.evaluate.subject_loo.integrated_subject_loo`).  ``elpd_diff``: the candidate's ELPD
   minus the current model's, summed over subjects; ``dse``: the SE of the paired per-subject differences,
   ``sqrt(n var(d_i))`` (as ``arviz.compare``); ``p_effect``: the effect's two-sided posterior tail
   probability ``2 min(P(theta > 0), P(theta < 0))`` (smallest over a categorical covariate's levels).
   Of the candidates that pass the rule, the one with the largest ``elpd_diff`` is included.
4. **Backward elimination** from the forward model: each included relation is dropped in turn; of
   those that fail the rule, the one whose removal costs least is removed, until all pass.

The rule (``rule=``):

``"effect"`` (default)
    include when the ELPD improves (``elpd_diff > 0``) *and* ``p_effect < alpha`` (0.01); remove
    when dropping the relation does not lower the ELPD or its ``p_effect >= alpha``.
``"elpd"``
    include when ``elpd_diff > forward * dse`` (2); remove when the loss ``< backward * dse`` (2).

Why not ``elpd_diff > 2 dse`` alone: for nested models the per-subject differences are heterogeneous,
so ``dse`` is large relative to the gain (60 simulated subjects, a 1.5-fold sex effect on V: ``elpd_diff
= 3.5, dse = 3.4``, the posterior far from no effect; Sivula et al. 2022).  Requiring a predictive gain
and a clear effect keeps the false-inclusion rate near ``alpha`` per null candidate and step.

Beside the stepwise search, the **full model** -- every candidate at once under a regularised horseshoe
prior (Piironen and Vehtari 2017; :class:`bayesnlme.spec.components.CovariateShrinkage`) -- is fitted in
parallel with the base model, and each effect's median, 90% interval and ``p_effect`` reported
(``full_model.csv``): one fit instead of many, with the selection uncertainty kept in the posterior.

The stepwise models are one model with every candidate, each relation switched on or off by a data
container (``fit_model(..., switches=...)``): compiled once per worker, not once per candidate; each
``fit.nc`` is the model without the relations switched off (``FitResult.switched_off_removed``).
Every step's fits are independent tasks in ``RUN/stepNN_<direction>/`` (one run directory each, so a
rerun of the same search resumes where it stopped and redoes no finished fit).  Outputs: the step
table (step, direction, candidate, elpd_diff, dse, z, decision), the final spec as TOML, the final
fit and a forest plot of its covariate effects.

Candidates are written ``P~COV`` with an optional ``:kind`` -- ``CL~WT:power``, ``CL~AGE:exponential``,
``V~SEX:categorical``, ``CL~CRCL:linear``.  Without a kind, a covariate with at most
``CATEGORICAL_MAX`` distinct integer values is categorical and any other is a power relation.
References: the median baseline value (power, exponential, linear) or the most frequent level
(categorical).  Priors (weakly informative, on the scale of the covariate): power exponent
N(0, 1); exponential and linear slope N(0, 0.5 / SD(COV)); categorical log-ratio N(0, 0.5).

References: Jonsson EN, Karlsson MO (1998) Automated covariate model building within NONMEM. Pharm
Res 15:1463.  Vehtari A, Gelman A, Gabry J (2017) Practical Bayesian model evaluation using
leave-one-out cross-validation and WAIC. Stat Comput 27:1413.  Piironen J, Vehtari A (2017) Sparsity
information and regularization in the horseshoe and other shrinkage priors. Electron J Stat 11:5018.
Sivula T, Magnusson M, Matamoros AA, Vehtari A (2022) Uncertainty in Bayesian leave-one-out
cross-validation based model comparison. arXiv:2008.10296.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from bayesnlme.atomic import write_atomic, write_text_atomic  # noqa: E402
from bayesnlme.data import read_nonmem  # noqa: E402
from bayesnlme.errors import BayesNLMEInputError  # noqa: E402
from bayesnlme.evaluate.covariates import plot_covariate_forest  # noqa: E402
from bayesnlme.evaluate.diagnostics import eta_table  # noqa: E402
from bayesnlme.evaluate.subject_loo import integrated_subject_loo  # noqa: E402
from bayesnlme.inference.fit import FitResult, fit_model  # noqa: E402
from bayesnlme.runner import cluster, run_tasks  # noqa: E402
from bayesnlme.spec import ModelSpec  # noqa: E402
from bayesnlme.spec.toml_text import spec_toml  # noqa: E402

KINDS = ("power", "exponential", "linear", "categorical")
CATEGORICAL_MAX = 5
_CANDIDATE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*~\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?::\s*([a-z]+))?\s*$")


@dataclass(frozen=True)
class Candidate:
    """A candidate covariate relation ``parameter ~ covariate`` of a given kind."""

    parameter: str
    covariate: str
    kind: str

    @property
    def name(self) -> str:
        """``<COV>_on_<P>``, the name of the effect in summaries."""
        return f"{self.covariate}_on_{self.parameter}"

    def table(self, baseline: pd.DataFrame) -> dict:
        """The ``[[covariates]]`` table: reference and prior from the subjects' baseline values."""
        x = baseline[self.covariate]
        d = {"parameter": self.parameter, "covariate": self.covariate, "type": self.kind}
        if self.kind == "categorical":
            d["reference"] = _plain(x.mode().sort_values().iloc[0])
            d["prior"] = {"dist": "normal", "mu": 0.0, "sigma": 0.5}
            return d
        x = x.astype(float)
        d["reference"] = float(f"{float(np.median(x)):.4g}")
        if self.kind == "power":
            d["prior"] = {"dist": "normal", "mu": 0.0, "sigma": 1.0}
        else:
            sd = float(x.std(ddof=1)) or 1.0
            d["prior"] = {"dist": "normal", "mu": 0.0, "sigma": float(f"{0.5 / sd:.4g}")}
        return d


def _plain(v):
    v = v.item() if hasattr(v, "item") else v
    return int(v) if isinstance(v, float) and v.is_integer() else v


def parse_candidates(items, spec: ModelSpec, baseline: pd.DataFrame) -> list[Candidate]:
    """Candidates from ``"P~COV[:kind]"`` strings, checked against the spec and the data.

    Examples
    --------
    >>> parse_candidates(["CL~WT:power"], spec, baseline)      # doctest: +SKIP
    [Candidate(parameter='CL', covariate='WT', kind='power')]
    """
    if isinstance(items, str):
        items = [s for s in re.split(r"[,\s]+", items) if s]
    out, seen = [], set()
    existing = {(c.parameter, c.covariate) for c in spec.covariates}
    for item in items:
        m = _CANDIDATE.match(item)
        if not m:
            raise BayesNLMEInputError(f"candidate {item!r}: write PARAMETER~COVARIATE[:kind], e.g. CL~WT:power "
                                      f"(kinds: {', '.join(KINDS)})")
        par, cov, kind = m.groups()
        if par not in spec.parameters:
            raise BayesNLMEInputError(f"candidate {item!r}: model {spec.name} has no parameter {par} "
                                      f"(it has {', '.join(spec.parameters)})")
        if cov not in baseline.columns:
            raise BayesNLMEInputError(f"candidate {item!r}: the data have no covariate column {cov} "
                                      f"(covariates: {', '.join(baseline.columns) or 'none'})")
        x = baseline[cov]
        if kind is None:
            kind = ("categorical" if x.nunique() <= CATEGORICAL_MAX and np.allclose(x, np.round(x)) else "power")
        if kind not in KINDS:
            raise BayesNLMEInputError(f"candidate {item!r}: unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
        if kind == "power" and (x.astype(float) <= 0).any():
            raise BayesNLMEInputError(f"candidate {item!r}: a power relation needs {cov} > 0 in every subject; "
                                      f"use :linear or :exponential")
        if kind == "categorical" and x.nunique() > 10:
            raise BayesNLMEInputError(f"candidate {item!r}: {cov} has {x.nunique()} levels; a categorical "
                                      f"covariate needs 10 or fewer")
        if (par, cov) in existing or (par, cov) in seen:
            raise BayesNLMEInputError(f"candidate {item!r}: {cov} on {par} is already in the model or listed twice")
        seen.add((par, cov))
        out.append(Candidate(par, cov, kind))
    if not out:
        raise BayesNLMEInputError("covariate search needs at least one candidate, e.g. CL~WT:power")
    return out


def with_relations(spec: ModelSpec, relations: list[Candidate], baseline: pd.DataFrame) -> ModelSpec:
    """``spec`` plus the covariate relations (named after them)."""
    d = spec.to_dict()
    d["covariates"] = list(d.get("covariates", [])) + [c.table(baseline) for c in relations]
    d["name"] = "+".join([spec.name] + [c.name for c in relations])
    return ModelSpec.from_dict(d)


def fit_candidate(*, key, seed, workdir, spec: dict, data: pd.DataFrame, chains: int, draws: int, tune: int,
                  n_is: int, etas: bool = False, loo: bool = True, switches: dict | None = None) -> dict:
    """Fit one candidate model (a runner task): fit.nc, summary, effects' tail probabilities and, when
    asked, the subject-level ELPD (``loo``: the stepwise comparisons need it, the full model does not)
    and the ETAs (``etas``: the base model's, for the screen).  ``switches``: which of the spec's relations
    are on (ELPD and ETAs from that fit; fit.nc and summary without the relations switched off)."""
    result = fit_model(ModelSpec.from_dict(spec), data, chains=chains, draws=draws, tune=tune, seed=seed,
                       progress=False, cores=1, switches=switches)
    kept = result.switched_off_removed()
    kept.save(workdir / "fit.nc")
    p_effect = {}
    for eff in kept.spec.covariates:
        for n in eff.estimated_names():   # two-sided posterior tail probability of "no effect or opposite sign"
            x = kept.posterior_draws(n)
            p = float(2 * min((x > 0).mean(), (x < 0).mean()))
            key = f"{eff.covariate}_on_{eff.parameter}"
            p_effect[key] = min(p_effect.get(key, 1.0), p)
    out = {"p_effect": p_effect, "problems": kept.problems,
           "summary": kept.summary()[["q5", "q50", "q95", "r_hat", "ess_bulk"]].to_dict(orient="index")}
    if loo:
        elpd = integrated_subject_loo(result, n_is=n_is, seed=seed)
        out.update(elpd_i=elpd["elpd"].to_dict(), pareto_k=elpd["pareto_k"].to_dict())
    if etas:
        out["etas"] = eta_table(result).reset_index().to_dict(orient="list")
    return out


def screen(etas: pd.DataFrame, candidates: list[Candidate]) -> dict:
    """p-value of each candidate's association with the base fit's ETAs (None: parameter has no ETA)."""
    out = {}
    for c in candidates:
        col = f"ETA_{c.parameter}"
        if col not in etas:
            out[c.name] = None
            continue
        eta, x = etas[col].astype(float), etas[c.covariate]
        if c.kind == "categorical":
            groups = [eta[x == v].to_numpy() for v in sorted(x.unique())]
            groups = [g for g in groups if len(g)]
            out[c.name] = float(stats.kruskal(*groups).pvalue) if len(groups) > 1 else 1.0
        else:
            out[c.name] = float(stats.spearmanr(eta, x.astype(float)).pvalue)
    return out


@dataclass(frozen=True)
class Rule:
    """When a candidate enters (forward) and when an included relation leaves (backward)."""

    kind: str = "effect"
    alpha: float = 0.01
    forward: float = 2.0
    backward: float = 2.0

    def __post_init__(self):
        if self.kind not in ("effect", "elpd"):
            raise BayesNLMEInputError(f"unknown covariate search rule {self.kind!r}; choose 'effect' or 'elpd'")
        if not 0 < self.alpha < 1:
            raise BayesNLMEInputError(f"alpha must be between 0 and 1, got {self.alpha!r}")

    def include(self, gain: float, dse: float, p_effect: float) -> bool:
        if self.kind == "elpd":
            return gain > self.forward * dse
        return gain > 0 and p_effect < self.alpha

    def remove(self, loss: float, dse: float, p_effect: float) -> bool:
        if self.kind == "elpd":
            return loss < self.backward * dse
        return loss <= 0 or p_effect >= self.alpha

    def describe(self) -> str:
        if self.kind == "elpd":
            return (f"included when elpd_diff > {self.forward:g} dse; removed when the loss < {self.backward:g} dse")
        return (f"included when elpd_diff > 0 and p_effect < {self.alpha:g}; removed when its removal does not "
                f"lower the ELPD or p_effect >= {self.alpha:g}")


def _full_model_table(task: dict, cands: list) -> pd.DataFrame | None:
    """Each candidate's effect in the full horseshoe model: median, 90% interval, p_effect."""
    if task["status"] != "done":
        return None
    summ, p_eff = task["result"]["summary"], task["result"]["p_effect"]
    rows = []
    for c in cands:
        names = [n for n in summ if n == c.name
                 or (n.startswith(f"{c.covariate}_") and n.endswith(f"_on_{c.parameter}"))]
        for n in names:
            rows.append({"candidate": c.name, "effect": n, "q5": summ[n]["q5"], "q50": summ[n]["q50"],
                         "q95": summ[n]["q95"], "p_effect": p_eff.get(c.name, np.nan),
                         "excludes_0": bool(summ[n]["q5"] > 0 or summ[n]["q95"] < 0)})
    return pd.DataFrame(rows).set_index("effect")


def _difference(a: dict, b: dict) -> tuple[float, float]:
    """Sum and SE of the paired per-subject ELPD differences a - b."""
    ids = sorted(a)
    d = np.array([a[i] - b[i] for i in ids])
    return float(d.sum()), float(np.sqrt(len(d) * d.var(ddof=1)))


@dataclass
class CovSearchResult:
    """Outcome of :func:`covsearch`.

    Attributes
    ----------
    steps : pandas.DataFrame
        One row per candidate and step: ``step``, ``direction`` (screen/forward/backward),
        ``candidate``, ``screen_p``, ``elpd_diff``, ``dse``, ``z`` (elpd_diff / dse), ``decision``.
    selected : list of str
        The relations in the final model, in the order they were included.
    final_spec : ModelSpec
    final_fit : pathlib.Path
        ``fit.nc`` of the final model.
    run_dir : pathlib.Path
    """

    steps: pd.DataFrame
    selected: list
    final_spec: ModelSpec
    final_fit: Path
    run_dir: Path
    notes: list = field(default_factory=list)
    rule: str = ""
    full_model: pd.DataFrame | None = None

    def full_model_text(self) -> str:
        """The full horseshoe model's verdict on each candidate, in one sentence."""
        if self.full_model is None or self.full_model.empty:
            return ""
        clear = self.full_model.index[self.full_model["excludes_0"]].tolist()
        return (f"Full model with all {len(self.full_model)} candidates under a regularised horseshoe: the 90% "
                f"credible interval excludes no effect for {', '.join(clear) if clear else 'none'}.")

    def describe(self) -> str:
        """The search in a few sentences."""
        sel = ", ".join(self.selected) if self.selected else "none"
        return " ".join([f"Selected covariate relations: {sel}. Final model {self.final_spec.name}; "
                         f"{len(self.steps)} candidate evaluations in {self.steps['step'].max()} steps "
                         f"({self.rule}).", self.full_model_text(), *self.notes]).replace("  ", " ").strip()


def covsearch(spec: ModelSpec, data, candidates, *, run_dir, screen_p: float | None = 0.2, rule: str = "effect",
              full_model: bool = True, alpha: float = 0.01, forward: float = 2.0, backward: float = 2.0,
              chains: int = 4, draws: int = 500, tune: int = 500, n_is: int = 200, seed: int = 1, scheduler=None,
              n_workers: int | None = None, memory_limit=None, retry_failed: bool = False,
              progress: bool = True) -> CovSearchResult:
    """Stepwise Bayesian covariate model building (see the module docstring for the rules).

    Parameters
    ----------
    spec : ModelSpec
        Base model (may already hold covariate relations; they stay).
    data : path or pandas.DataFrame
        NONMEM-format data with the covariate columns.
    candidates : list of str or str
        ``"CL~WT:power"``, ... (comma- or space-separated in one string).
    run_dir : path
        Run directory; a rerun of the same search resumes.
    screen_p : float or None
        ETA screening threshold; None fits every candidate at the first forward step.
    rule : {"effect", "elpd"}
        Decision rule (module docstring): ``"effect"`` -- ELPD gain > 0 and the effect's two-sided
        posterior tail probability ``p_effect < alpha``; ``"elpd"`` -- gain > ``forward * dse``
        (removal when the loss < ``backward * dse``).
    alpha : float
        ``p_effect`` threshold of the ``"effect"`` rule, for inclusion and for keeping.
    full_model : bool
        Also fit the model with every candidate under a regularised horseshoe prior
        (:class:`bayesnlme.spec.components.CovariateShrinkage`), in parallel with the base fit, and
        report each effect beside the stepwise result (``full_model.csv``).
    forward, backward : float
        Multipliers of ``dse`` of the ``"elpd"`` rule.
    chains, draws, tune : int
        NUTS settings of every fit.
    n_is : int
        Importance samples per subject and draw for the integrated subject-level LOO.
    seed : int
        Run seed: each fit's seed derives from it and the step and candidate.
    scheduler, n_workers, memory_limit, retry_failed, progress
        Where the fits run (:func:`bayesnlme.runner.run_tasks`).

    Returns
    -------
    CovSearchResult
        Also written to ``run_dir``: steps.csv, final_model.toml, covariate_forest.png, covsearch.txt.
    """
    rule = Rule(rule, alpha, forward, backward)
    nm = read_nonmem(data)
    frame = nm.records
    baseline = nm.baseline_covariates()
    cands = parse_candidates(candidates, spec, baseline)
    run_dir = Path(run_dir)
    settings = {"chains": chains, "draws": draws, "tune": tune, "n_is": n_is}
    rows, notes = [], []
    everything = with_relations(spec, cands, baseline)   # the stepwise models: relations switched on or off

    def switched(relations: list) -> dict:
        return {"spec": everything.to_dict(), "switches": {c.name: int(c in relations) for c in cands}}

    with cluster(scheduler, n_workers, memory_limit) as sched:
        def fit_step(label: str, models: dict, options: dict | None = None) -> dict:
            tasks = {k: {**(switched(m) if isinstance(m, list) else {"spec": m.to_dict()}),
                         **(options or {}).get(k, {})} for k, m in models.items()}
            run = run_tasks(fit_candidate, tasks, run_dir / label, seed=seed, scheduler=sched, progress=progress,
                            retry_failed=retry_failed,
                            shared={"data": frame, **settings}, label=f"covsearch {label}")
            return {k: run.tasks[k] for k in models}

        first = {"base": []}
        if full_model:   # every candidate at once under a regularised horseshoe, beside the stepwise search
            d = with_relations(spec, cands, baseline).to_dict()
            d["covariate_shrinkage"] = {"type": "horseshoe"}
            d["name"] = f"{spec.name}+horseshoe"
            first["full_horseshoe"] = ModelSpec.from_dict(d)
        step0 = fit_step("step00_base", first, {"base": {"etas": True}, "full_horseshoe": {"loo": False}})
        base = step0["base"]
        if full_model:
            full = _full_model_table(step0["full_horseshoe"], cands)
            if full is None:
                notes.append(f"The full horseshoe model failed to fit: {step0['full_horseshoe']['error']}")
        if base["status"] != "done":
            raise BayesNLMEInputError(f"covsearch: the base model failed to fit: {base['error']}")
        current, current_dir, selected = base["result"], run_dir / "step00_base" / "tasks" / "base", []
        pool = list(cands)
        if screen_p is not None:
            p = screen(pd.DataFrame(base["result"]["etas"]).set_index("ID"), cands)
            for c in cands:
                kept = p[c.name] is None or p[c.name] < screen_p
                rows.append({"step": 0, "direction": "screen", "candidate": c.name, "screen_p": p[c.name],
                             "decision": "kept" if kept else f"screened out (p >= {screen_p:g})"})
            pool = [c for c in cands if p[c.name] is None or p[c.name] < screen_p]
        step = 0
        while pool:
            step += 1
            label = f"step{step:02d}_forward"
            models = {c.name: selected + [c] for c in pool}
            fits = fit_step(label, models)
            best, scored = None, []
            for c in pool:
                f = fits[c.name]
                if f["status"] != "done":
                    rows.append({"step": step, "direction": "forward", "candidate": c.name,
                                 "decision": f"failed: {f['error']}"})
                    continue
                diff, dse = _difference(f["result"]["elpd_i"], current["elpd_i"])
                p_eff = f["result"]["p_effect"].get(c.name, 1.0)
                ok = rule.include(diff, dse, p_eff)
                scored.append((c, diff, dse, p_eff, ok))
                if ok and (best is None or diff > best[1]):
                    best = (c, diff)
            for c, diff, dse, p_eff, ok in scored:
                decision = ("included" if best and c == best[0] else
                            "passes, not the best" if ok else "not included")
                rows.append({"step": step, "direction": "forward", "candidate": c.name, "elpd_diff": diff,
                             "dse": dse, "z": diff / dse if dse > 0 else np.nan, "p_effect": p_eff,
                             "decision": decision})
            if best is None:
                break
            selected.append(best[0])
            pool = [c for c in pool if c != best[0]]
            current, current_dir = fits[best[0].name]["result"], run_dir / label / "tasks" / best[0].name
        while len(selected) > 0:
            step += 1
            label = f"step{step:02d}_backward"
            models = {f"drop_{c.name}": [s for s in selected if s != c] for c in selected}
            fits = fit_step(label, models)
            worst, scored = None, []
            for c in selected:
                f = fits[f"drop_{c.name}"]
                if f["status"] != "done":
                    rows.append({"step": step, "direction": "backward", "candidate": c.name,
                                 "decision": f"failed: {f['error']}"})
                    continue
                loss, dse = _difference(current["elpd_i"], f["result"]["elpd_i"])
                p_eff = current["p_effect"].get(c.name, 1.0)
                drop = rule.remove(loss, dse, p_eff)
                scored.append((c, loss, dse, p_eff))
                if drop and (worst is None or loss < worst[1]):
                    worst = (c, loss)
            for c, loss, dse, p_eff in scored:
                rows.append({"step": step, "direction": "backward", "candidate": c.name, "elpd_diff": loss,
                             "dse": dse, "z": loss / dse if dse > 0 else np.nan, "p_effect": p_eff,
                             "decision": "removed" if worst and c == worst[0] else "kept"})
            if worst is None:
                break
            selected = [s for s in selected if s != worst[0]]
            key = f"drop_{worst[0].name}"
            current, current_dir = fits[key]["result"], run_dir / label / "tasks" / key
    final_spec = with_relations(spec, selected, baseline)
    steps = pd.DataFrame(rows, columns=["step", "direction", "candidate", "screen_p", "elpd_diff", "dse", "z",
                                        "p_effect", "decision"])
    bad_k = sum(v > 0.7 for v in current["pareto_k"].values())
    if bad_k:
        notes.append(f"{bad_k} subject(s) of the final fit have Pareto k > 0.7 in the integrated LOO: their "
                     f"ELPD is uncertain; check them before trusting close decisions.")
    if current["problems"]:
        notes.append("The final fit has convergence problems: " + "; ".join(current["problems"]))
    out = CovSearchResult(steps=steps, selected=[c.name for c in selected], final_spec=final_spec,
                          final_fit=current_dir / "fit.nc", run_dir=run_dir, notes=notes,
                          rule=rule.describe(), full_model=full if full_model else None)
    _write(out)
    return out


def _write(out: CovSearchResult) -> None:
    d = out.run_dir
    write_atomic(d / "steps.csv", lambda t: out.steps.to_csv(t, index=False))
    rules = ["Selected by bayesnlme covsearch (ETA screening, forward inclusion, backward elimination by "
             "integrated subject-level ELPD).", f"Rule: {out.rule}.",
             f"Relations: {', '.join(out.selected) or 'none'}."]
    write_text_atomic(d / "final_model.toml", spec_toml(out.final_spec.to_dict(), header=rules))
    write_text_atomic(d / "covsearch.txt", out.describe() + "\n")
    if out.full_model is not None:
        write_atomic(d / "full_model.csv", lambda t: out.full_model.to_csv(t))
    if out.final_spec.covariates:
        fig, table = plot_covariate_forest(FitResult.load(out.final_fit))
        write_atomic(d / "covariate_forest.png", lambda t: fig.savefig(t, format="png", dpi=110))
        write_atomic(d / "covariate_forest.csv", lambda t: table.to_csv(t, index=False))
        plt.close(fig)
