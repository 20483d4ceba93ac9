"""Simulation-based calibration (SBC): does fitting this model recover what it simulates?

For each replicate: draw the population parameters (THETA, OMEGA, SIGMA) and the subjects' ETAs
from the prior, simulate DV at the design's observation records (its doses, sampling times and
covariates), fit the model to the simulated data, and record the rank of each true value among
``L`` evenly thinned posterior draws (``L + 1`` possible ranks).  If the fitting procedure is
calibrated -- model, priors, sampler and settings together -- every parameter's ranks are uniform
on ``0..L`` (Talts et al. 2018).  Ranks piled at the top mean the posterior sits below the truth
(biased low), at the bottom biased high; a U shape an overconfident (too narrow) posterior, a hump
an underconfident one.

Uniformity is judged with the graphical ECDF test of Säilynoja, Bürkner and Vehtari (2022): the
empirical CDF of the normalised ranks against simultaneous confidence bands, obtained by
simulating the binomial tail probabilities of uniform ranks.  The smallest tail probability along
the ECDF is the test statistic; its simulated null distribution gives a p-value per parameter and
the band at level ``1 - alpha``.  A parameter is rejected when its p-value is below ``alpha``
(default 1%).  With K parameters each tested at ``alpha``, a calibrated model shows at least one
rejection in ``1 - (1 - alpha)^K`` of runs (7.7% for eight parameters at 1%), so the table also gives
Holm's adjusted p-values (``p_holm``, family-wise over the K tests) and the verdict says when no
rejection survives them: a departure worth a rerun with more replicates, not yet a finding.

Replicates run on the many-fits runner (:mod:`bayesnlme.runner`): one task each, in a run
directory that a rerun resumes.  Models with a single ``[residual]`` are compiled once per worker
and sampled again for each replicate's DV (:mod:`bayesnlme.inference.refit`).

References
----------
Talts S, Betancourt M, Simpson D, Vehtari A, Gelman A (2018). Validating Bayesian inference
algorithms with simulation-based calibration. arXiv:1804.06788.
Säilynoja T, Bürkner P-C, Vehtari A (2022). Graphical test for discrete uniformity and its
applications in goodness-of-fit evaluation and multiple sample comparison. Statistics and
Computing 32:32.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import arviz as az
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pymc as pm  # noqa: E402
from scipy import stats  # noqa: E402

from bayesnlme.atomic import write_atomic, write_text_atomic  # noqa: E402
from bayesnlme.build.cache import cached_build  # noqa: E402
from bayesnlme.data import read_nonmem  # noqa: E402
from bayesnlme.errors import BayesNLMEInputError  # noqa: E402
from bayesnlme.evaluate.outcomes import record_lloq  # noqa: E402
from bayesnlme.inference.convergence import without_arviz_numba  # noqa: E402
from bayesnlme.inference.refit import refitter, with_dv  # noqa: E402
from bayesnlme.runner import run_tasks  # noqa: E402
from bayesnlme.spec import ModelSpec  # noqa: E402

ALPHA = 0.01
N_NULL = 4000      # simulated uniform rank samples behind the p-values and bands (Monte Carlo SE of p ~ 0.0016 at 1%)


def placeholder_design(design, lloq: float | None = None,
                       what: str = "SBC") -> tuple[pd.DataFrame, np.ndarray | None]:
    """The design's records with observation DV set to 1 (valid for every residual model), without
    ``CENS``/``LIMIT``, and each observation record's LLOQ (None: no censoring).

    The LLOQ comes from ``lloq`` or, without it, from the design's ``CENS = 1`` records
    (:func:`bayesnlme.evaluate.outcomes.record_lloq`: a ``CENS = 1`` record's DV is its limit).
    ``what`` names the caller in errors (SBC, trial simulation).
    """
    nm = read_nonmem(design)
    if nm.obs_cens is not None and (nm.obs_cens == -1).any():
        raise BayesNLMEInputError(f"{nm.source}: {what} censors simulated DV below an LLOQ only; the design has "
                                  f"CENS = -1 (right-censored) records")
    if lloq is not None and not (np.isfinite(lloq) and lloq > 0):
        raise BayesNLMEInputError(f"{what}: lloq must be a positive number (DV units), got {lloq!r}")
    limits = record_lloq(nm, lloq)
    frame = with_dv(nm, np.ones(nm.n_obs)).drop(columns=["CENS", "LIMIT"], errors="ignore")
    return frame, limits


def censor(design, dv: np.ndarray, lloq: np.ndarray) -> tuple[pd.DataFrame, int]:
    """The design's records (path, NMData or frame) with simulated ``dv``, those below their LLOQ censored (M3).

    A censored record gets ``CENS = 1`` and ``DV = LLOQ`` (the NONMEM/Monolix convention the
    reader expects); records without an LLOQ (NaN) are never censored.

    Returns
    -------
    frame : pandas.DataFrame
    n_censored : int
    """
    dv, cens = below_lloq(dv, lloq)
    return with_dv(read_nonmem(design), dv, cens), int(cens.sum())


def below_lloq(dv: np.ndarray, lloq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Observation records' DV with those below their LLOQ set to it, and CENS (1 there, else 0)."""
    below = (dv < lloq) & np.isfinite(lloq)
    return np.where(below, lloq, dv), below.astype(int)


@contextlib.contextmanager
def _quiet(logger: str):
    """Silence a logger's INFO lines (PyMC announces every prior predictive draw)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def prior_draw(spec: ModelSpec, design, seed: int) -> tuple[dict, np.ndarray]:
    """One draw of the population parameters from the prior and DV simulated at the design.

    Returns
    -------
    truth : dict of str -> float
        Population parameters (:meth:`ModelSpec.population_parameter_names`).
    dv : numpy.ndarray, shape (n_obs,)
        Simulated DV of the design's observation records (record order).
    """
    built = cached_build(spec, design, check_residual=False)   # one graph per process and design
    names = built.spec.population_parameter_names()   # the bound spec: categorical levels are known there
    with built.model, _quiet("pymc"):
        prior = pm.sample_prior_predictive(draws=1, random_seed=seed, var_names=names + ["DV"])
    truth = {n: float(np.asarray(prior.prior[n].values).ravel()[0]) for n in names}
    return truth, np.asarray(prior.prior_predictive["DV"].values, float).reshape(-1)


def sbc_replicate(*, key, seed, workdir, spec: dict, fit_spec: dict, design: pd.DataFrame, chains: int,
                  draws: int, tune: int, n_ranks: int, lloq: np.ndarray | None = None) -> dict:
    """One SBC replicate (a runner task): prior draw, simulated data, fit, ranks.

    With ``lloq`` (per observation record), simulated values below it are censored (``CENS = 1``,
    M3 likelihood).  The model compiled once per worker is sampled again for each replicate
    (:mod:`bayesnlme.inference.refit`), with which records are censored as data (``DV_cens``) where
    the model allows it (normal-family observation models with M3); a model that does not is
    fitted from scratch for replicates with censored records.

    Writes ``data.csv`` (the simulated data set) into ``workdir``; returns the truth, the ranks,
    the number of censored records and the fit's diagnostics (minimum bulk ESS, maximum R-hat,
    divergences).
    """
    sim, fit = ModelSpec.from_dict(spec), ModelSpec.from_dict(fit_spec)
    s_prior, s_fit = (int(x) for x in np.random.SeedSequence(seed).generate_state(2))
    truth, dv = prior_draw(sim, design, s_prior)
    if not np.all(np.isfinite(dv)):
        raise BayesNLMEInputError(f"replicate {key}: the prior draw gives non-finite DV; "
                                  f"the priors allow values the structural model cannot handle")
    nm = read_nonmem(design)
    cens = None
    if lloq is not None:
        dv, cens = below_lloq(dv, np.asarray(lloq, float))
    n_censored = 0 if cens is None else int(cens.sum())
    with_dv(nm, dv, cens).to_csv(workdir / "data.csv", index=False)
    idata = refitter(fit, nm, chains=chains, draws=draws, tune=tune, cores=1,
                     censored=lloq is not None).sample(dv, s_fit, cens=cens)
    post = idata.posterior
    total = post.sizes["chain"] * post.sizes["draw"]
    keep = np.unique(np.linspace(0, total - 1, n_ranks - 1).round().astype(int))
    ranks, means, sds = {}, {}, {}
    for name, t in truth.items():
        x = post[name].values.reshape(-1)
        ranks[name] = int((x[keep] < t).sum())
        means[name], sds[name] = float(x.mean()), float(x.std(ddof=1))
    names = list(truth)
    with without_arviz_numba():
        diag = az.summary(idata, var_names=names, kind="diagnostics", round_to="none")
    return {"truth": truth, "rank": ranks, "posterior_mean": means, "posterior_sd": sds,
            "n_ranks": int(len(keep) + 1), "n_censored": n_censored,
            "min_ess_bulk": float(diag["ess_bulk"].min()),
            "max_r_hat": float(diag["r_hat"].max()),
            "divergences": int(idata.sample_stats["diverging"].values.sum())}


# ---------------------------------------------------------------------------------- rank statistics
def _ecdf_counts(ranks: np.ndarray, n_levels: int) -> np.ndarray:
    """Counts of ranks < j for j = 1..n_levels-1; ``ranks`` (m, n) -> (m, n_levels - 1)."""
    m = ranks.shape[0]
    flat = (np.arange(m)[:, None] * n_levels + ranks).ravel()
    hist = np.bincount(flat, minlength=m * n_levels).reshape(m, n_levels)
    return hist.cumsum(axis=1)[:, :-1]


def _min_tail(counts: np.ndarray, n: int, z: np.ndarray) -> np.ndarray:
    """Smallest two-sided binomial tail probability along each ECDF (the test statistic)."""
    lower = stats.binom.cdf(counts, n, z)
    upper = stats.binom.sf(counts - 1, n, z)
    return np.minimum(1.0, 2 * np.minimum(lower, upper)).min(axis=-1)


@functools.lru_cache(maxsize=16)
def _null(n: int, n_levels: int, seed: int = 20220302) -> np.ndarray:
    """The statistic for N_NULL samples of n uniform ranks (seeded: p-values and bands are reproducible)."""
    rng = np.random.default_rng(seed)
    z = np.arange(1, n_levels) / n_levels
    return _min_tail(_ecdf_counts(rng.integers(0, n_levels, size=(N_NULL, n)), n_levels), n, z)


def uniformity_test(ranks, n_ranks: int, alpha: float = ALPHA) -> dict:
    """ECDF test of discrete uniformity of ranks in ``0..n_ranks-1`` (Säilynoja et al. 2022).

    Returns
    -------
    dict
        ``p_value``; ``z`` (evaluation points j / n_ranks), ``ecdf`` (share of ranks < j) and the
        simultaneous ``lower``/``upper`` band of the ECDF at level ``1 - alpha``.
    """
    ranks = np.asarray(ranks, int)
    n = len(ranks)
    z = np.arange(1, n_ranks) / n_ranks
    null = _null(n, n_ranks)
    observed = _min_tail(_ecdf_counts(ranks[None, :], n_ranks), n, z)[0]
    gamma = np.quantile(null, alpha)
    return {"p_value": float((1 + (null <= observed).sum()) / (len(null) + 1)), "z": z,
            "ecdf": _ecdf_counts(ranks[None, :], n_ranks)[0] / n,
            "lower": stats.binom.ppf(gamma / 2, n, z) / n, "upper": stats.binom.ppf(1 - gamma / 2, n, z) / n}


def _shape(ranks: np.ndarray, n_ranks: int) -> str:
    """The departure from uniformity in words (for a rejected parameter)."""
    u = (ranks + 0.5) / n_ranks
    shift = u.mean() - 0.5                       # SE under uniformity: sqrt(1/12/n)
    outer = np.mean((u < 0.1) | (u > 0.9))       # 0.2 under uniformity
    se = np.sqrt(1 / 12 / len(u))
    if abs(shift) > 2.5 * se:
        return ("posterior below the truth (biased low)" if shift > 0
                else "posterior above the truth (biased high)")
    if outer > 0.2 + 2.5 * np.sqrt(0.16 / len(u)):
        return "posterior too narrow (overconfident)"
    if outer < 0.2 - 2.5 * np.sqrt(0.16 / len(u)):
        return "posterior too wide (underconfident)"
    return "ranks not uniform"


@dataclass
class SBCResult:
    """Ranks of an SBC run and their verdict.

    Attributes
    ----------
    ranks : pandas.DataFrame
        One row per replicate that finished (index ``replicate``), one column per population parameter.
    n_ranks : int
        Number of possible ranks (``L + 1``).
    table : pandas.DataFrame
        Per parameter: ``n``, ``mean_rank`` (normalised, 0.5 expected), ``p_value``, ``p_holm`` (Holm's
        adjustment over the parameters: family-wise), ``rejected`` (p < alpha) and ``shape`` (the
        departure in words).
    fits : pandas.DataFrame
        Per replicate: ``min_ess_bulk``, ``max_r_hat``, ``divergences``, ``n_censored`` (records below
        the LLOQ).
    failed : dict
        Replicate -> one-line error of replicates whose simulation or fit failed.
    alpha : float
    """

    ranks: pd.DataFrame
    n_ranks: int
    table: pd.DataFrame
    fits: pd.DataFrame
    failed: dict = field(default_factory=dict)
    alpha: float = ALPHA

    @property
    def calibrated(self) -> bool:
        """No parameter rejected at ``alpha``."""
        return not self.table["rejected"].any()

    @property
    def calibrated_familywise(self) -> bool:
        """No parameter rejected at family-wise level ``alpha`` (Holm's adjusted p-values)."""
        return not (self.table["p_holm"] < self.alpha).any()

    def verdict(self) -> str:
        """The result in words."""
        n = len(self.ranks)
        rej = self.table[self.table["rejected"]]
        head = f"SBC with {n} replicates ({self.n_ranks} possible ranks each)"
        if self.failed:
            head += f"; {len(self.failed)} replicate(s) failed and are left out"
        if rej.empty:
            worst = self.table["p_value"].idxmin()
            text = (f"{head}: calibrated -- no parameter's ranks depart from uniformity at "
                    f"{self.alpha:.0%} (smallest p = {self.table.loc[worst, 'p_value']:.3f}, {worst}).")
        else:
            items = "; ".join(f"{p} (p = {r.p_value:.4f}: {r.shape})" for p, r in rej.iterrows())
            text = (f"{head}: NOT calibrated at {self.alpha:.0%} -- {items}. The fits do not recover what the "
                    f"model simulates: check the priors the fit uses against the simulating ones, the "
                    f"sampler's convergence below, and whether the design identifies these parameters.")
            k = len(self.table)
            if k > 1 and self.calibrated_familywise:
                chance = 1.0 - (1.0 - self.alpha) ** k
                text += (f" But with {k} parameters each tested at {self.alpha:.0%}, a calibrated model shows at "
                         f"least one such departure in {chance:.1%} of runs, and none survives Holm's adjustment "
                         f"for the {k} tests (smallest adjusted p = {self.table['p_holm'].min():.3f}): rerun with "
                         f"more replicates before concluding.")
        cens = self.fits["n_censored"] if "n_censored" in self.fits else pd.Series(0, index=self.fits.index)
        if cens.sum():
            text += (f" Simulated values below the LLOQ were censored (M3) in {int((cens > 0).sum())} of "
                     f"{len(self.fits)} replicates ({int(cens.sum())} records).")
        div = int((self.fits["divergences"] > 0).sum())
        low = int((self.fits["min_ess_bulk"] < self.n_ranks - 1).sum())
        if div or low:
            text += (f" {div} of {len(self.fits)} fits had divergent transitions and {low} a bulk ESS below "
                     f"the {self.n_ranks - 1} thinned draws behind each rank (their ranks may be autocorrelated).")
        return text


def analyse(results: dict, failed: dict | None = None, alpha: float = ALPHA) -> SBCResult:
    """Ranks, uniformity tests and the verdict from the replicates' summaries (runner results)."""
    if not results:
        raise BayesNLMEInputError("SBC: no replicate finished; see the run's manifest.json for the errors")
    keys = sorted(results)
    n_ranks = results[keys[0]]["n_ranks"]
    ranks = pd.DataFrame([results[k]["rank"] for k in keys], index=pd.Index(keys, name="replicate"))
    fits = pd.DataFrame([{"min_ess_bulk": results[k]["min_ess_bulk"], "max_r_hat": results[k]["max_r_hat"],
                          "divergences": results[k]["divergences"], "n_censored": results[k].get("n_censored", 0)}
                         for k in keys], index=ranks.index)
    rows = []
    for name in ranks.columns:
        r = ranks[name].to_numpy(int)
        p = uniformity_test(r, n_ranks, alpha)["p_value"]
        rows.append({"parameter": name, "n": len(r), "mean_rank": float(((r + 0.5) / n_ranks).mean()),
                     "p_value": p, "rejected": p < alpha, "shape": _shape(r, n_ranks) if p < alpha else ""})
    table = pd.DataFrame(rows).set_index("parameter")
    table.insert(table.columns.get_loc("p_value") + 1, "p_holm", holm(table["p_value"].to_numpy()))
    return SBCResult(ranks=ranks, n_ranks=n_ranks, table=table, fits=fits, failed=dict(failed or {}), alpha=alpha)


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error over the tests), in the order given:
    sorted ascending, the i-th smallest (1-based) is ``max_{j <= i} min(1, (K - j + 1) p_(j))``."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p, kind="stable")
    k = len(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate((k - np.arange(k)) * p[order]))
    out = np.empty(k)
    out[order] = adjusted
    return out


def sbc(spec: ModelSpec, design, *, n: int = 200, fit_spec: ModelSpec | None = None, run_dir,
        chains: int = 2, draws: int = 500, tune: int = 500, n_ranks: int = 100, seed: int = 1,
        scheduler=None, n_workers: int | None = None, memory_limit=None, retry_failed: bool = False,
        progress: bool = True, alpha: float = ALPHA, lloq: float | None = None) -> SBCResult:
    """Simulation-based calibration of ``spec`` on a design.

    Parameters
    ----------
    spec : ModelSpec
        The model whose priors simulate the replicates (and, unless ``fit_spec`` is given, fit them).
    design : path, NMData or pandas.DataFrame
        NONMEM-format data giving doses, sampling times and covariates (DV values are ignored).
    n : int
        Number of replicates.
    fit_spec : ModelSpec, optional
        A different model (e.g. other priors) to fit the replicates with: SBC then tests whether it
        is calibrated for data from ``spec`` (a miscalibration check).
    run_dir : path
        Run directory (:func:`bayesnlme.runner.run_tasks`); an interrupted run resumes.
    chains, draws, tune : int
        NUTS settings of each fit (nutpie); ranks use ``n_ranks - 1`` draws thinned from ``chains * draws``.
    n_ranks : int
        Possible ranks ``L + 1`` (100: L = 99 thinned draws).
    seed : int
        Run seed; replicate ``rep0007`` uses ``task_seed(seed, "rep0007")``.
    scheduler, n_workers, memory_limit, retry_failed, progress
        See :func:`bayesnlme.runner.run_tasks` (``"serial"`` runs in this process).
    alpha : float
        Level of the per-parameter uniformity test.
    lloq : float, optional
        Lower limit of quantification (DV units).  Simulated values below it are censored
        (``CENS = 1``, ``DV = LLOQ``) and fitted with the M3 likelihood, as real BLQ data are.  Without
        it, a design with ``CENS = 1`` records censors at their limits (a ``CENS = 1`` record's DV),
        per observation type; a design without them is not censored.  Which records are censored is
        data of the model compiled once per worker (``DV_cens``), for normal-family observation models
        with M3: 1.1-2.0 s per censored replicate of ``pk_1cmt_oral`` on theophylline, 2 x 200 after 200
        (it was a full fit, 11-13 s, before 2026-12-06).

    Returns
    -------
    SBCResult
        Also written to ``run_dir``: ``sbc_ranks.csv``, ``sbc_table.csv``, ``sbc_fits.csv``,
        ``sbc_verdict.txt``, ``sbc_ranks.png`` and ``sbc_ecdf.png``.
    """
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise BayesNLMEInputError(f"SBC needs at least 2 replicates, got n={n!r}")
    if not isinstance(n_ranks, (int, np.integer)) or not 2 <= n_ranks <= chains * draws + 1:
        raise BayesNLMEInputError(f"n_ranks must be between 2 and chains * draws + 1 = {chains * draws + 1}, "
                                  f"got {n_ranks!r}")
    fit_spec = fit_spec or spec
    missing = [p for p in spec.population_parameter_names() if p not in fit_spec.population_parameter_names()]
    if missing:
        raise BayesNLMEInputError(f"SBC: the fitting model {fit_spec.name} lacks parameters the simulating model "
                                  f"{spec.name} has: {', '.join(missing)}")
    frame, limits = placeholder_design(design, lloq)
    width = len(str(n - 1))
    tasks = {f"rep{i:0{width}d}": {} for i in range(n)}
    shared = {"spec": spec.to_dict(), "fit_spec": fit_spec.to_dict(), "design": frame, "chains": chains,
              "draws": draws, "tune": tune, "n_ranks": n_ranks, "lloq": limits}
    run = run_tasks(sbc_replicate, tasks, run_dir, seed=seed, shared=shared, scheduler=scheduler,
                    n_workers=n_workers, memory_limit=memory_limit, retry_failed=retry_failed,
                    progress=progress, label="SBC replicates")
    result = analyse(run.results, run.failed, alpha)
    write_outputs(result, Path(run_dir))
    return result


def write_outputs(result: SBCResult, folder: Path) -> None:
    """The ranks, the table, the fits' diagnostics, the verdict and both plots, each written atomically."""
    write_atomic(folder / "sbc_ranks.csv", lambda t: result.ranks.to_csv(t))
    write_atomic(folder / "sbc_table.csv", lambda t: result.table.to_csv(t))
    write_atomic(folder / "sbc_fits.csv", lambda t: result.fits.to_csv(t))
    write_text_atomic(folder / "sbc_verdict.txt", result.verdict() + "\n")
    if result.failed:
        write_text_atomic(folder / "sbc_failed.json", json.dumps(result.failed, indent=1))
    for name, fig in (("sbc_ranks.png", plot_rank_histograms(result)), ("sbc_ecdf.png", plot_ecdf_difference(result))):
        write_atomic(folder / name, lambda t, f=fig: f.savefig(t, format="png", dpi=110))
        plt.close(fig)


def _grid(k: int):
    cols = min(4, k)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.ravel()[k:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def plot_rank_histograms(result: SBCResult, bins: int | None = None):
    """Rank histogram per parameter with the central 99% range of a bin count under uniformity."""
    n, L1 = len(result.ranks), result.n_ranks
    bins = bins or int(max(2, min(20, n // 5, L1)))
    edges = np.linspace(0, L1, bins + 1)
    fig, axes = _grid(result.ranks.shape[1])
    for ax, name in zip(axes, result.ranks.columns):
        ax.hist(result.ranks[name], bins=edges, color="#4C72B0", edgecolor="white")
        lo, hi = stats.binom.ppf([0.005, 0.995], n, 1 / bins)
        ax.axhspan(lo, hi, color="grey", alpha=0.25, lw=0)
        ax.axhline(n / bins, color="grey", lw=0.8)
        flag = " (rejected)" if result.table.loc[name, "rejected"] else ""
        ax.set_title(f"{name}{flag}", fontsize=9, color="#C44E52" if flag else "black")
        ax.set_xlabel("rank")
    fig.suptitle("SBC rank histograms (grey: 99% range of a bin under uniformity)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_ecdf_difference(result: SBCResult):
    """ECDF of normalised ranks minus the uniform CDF, with the simultaneous band (Säilynoja et al. 2022)."""
    fig, axes = _grid(result.ranks.shape[1])
    for ax, name in zip(axes, result.ranks.columns):
        t = uniformity_test(result.ranks[name].to_numpy(int), result.n_ranks, result.alpha)
        ax.fill_between(t["z"], t["lower"] - t["z"], t["upper"] - t["z"], step="mid", color="grey", alpha=0.3, lw=0)
        ax.step(t["z"], t["ecdf"] - t["z"], where="post", color="#4C72B0")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{name}: p = {t['p_value']:.3f}", fontsize=9,
                     color="#C44E52" if t["p_value"] < result.alpha else "black")
        ax.set_xlabel("normalised rank")
    fig.suptitle(f"SBC ECDF difference ({1 - result.alpha:.0%} simultaneous band)", fontsize=10)
    fig.tight_layout()
    return fig
