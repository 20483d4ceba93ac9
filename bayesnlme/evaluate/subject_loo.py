"""Leave-one-subject-out with the random effects integrated out, and exact refits.

The subject-level PSIS-LOO of :mod:`bayesnlme.evaluate.compare` sums each subject's
pointwise log-likelihood *given its ETAs*.  Leaving a subject out sends its
ETAs from their individual posterior back to the population distribution, a
step importance sampling from the full posterior often cannot make: Pareto k
is then high for many subjects.  The quantity wanted is the same either way,
the predictive density of a new subject's data,

    p(y_i | y_-i) = E_{theta ~ p(theta | y_-i)} [ p(y_i | theta) ],
    p(y_i | theta) = E_{z ~ N(0, I)} [ p(y_i | theta, z) ],

and it is far better estimated from the *marginal* (integrated) likelihood
``p(y_i | theta_s)`` at each posterior draw -- "integrated importance sampling"
(Vehtari et al. 2016, JMLR 17:103; Merkle, Furr & Rabe-Hesketh 2019,
Psychometrika 84:802).  ``p(y_i | theta_s)`` is computed by importance
sampling over the subject's non-centred random effects (the machinery of
:mod:`bayesnlme.evaluate.likelihood`), then PSIS-LOO is applied to it.

:func:`subject_loo` handles high Pareto-k subjects automatically: a subject
whose conditional PSIS estimate is unreliable gets its integrated estimate;
if that too has high k, and a time budget is given, the subject is left out
and the model refitted (exact LOO for just that subject).  Every subject's
method is reported.
"""

from __future__ import annotations

import time
import warnings

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import logsumexp

from bayesnlme.data import record_columns
from bayesnlme.errors import ConvergenceWarning
from bayesnlme.evaluate.elpd import loo
from bayesnlme.evaluate.importance import (
    Proposal,
    base_draws,
    posterior_z,
    random_effect_names,
    subject_loglik,
    z_to_draws,
)
from bayesnlme.inference import fit_model

_CHUNK_ROWS = 20000


def _population_names(built) -> list[str]:
    random, _ = random_effect_names(built)
    return [rv.name for rv in built.model.free_RVs if rv.name not in random]


def marginal_subject_loglik(result, *, n_draws: int = 400, n_is: int = 100, seed: int = 0,
                            theta_draws: dict | None = None) -> np.ndarray:
    """``log p(y_i | theta_s)`` with each subject's random effects integrated out.

    Parameters
    ----------
    result : FitResult
        Supplies the model, the data and the importance-sampling proposal (the
        posterior of each subject's ``eta_z``, inflated, multivariate t).
    n_draws : int
        Posterior draws used (evenly thinned).
    n_is : int
        Importance samples per subject and draw.
    theta_draws : dict, optional
        Population draws to use instead of the fit's (e.g. from a refit),
        each with a leading draw dimension.

    Returns
    -------
    numpy.ndarray, shape (n_draws, n_subjects)
    """
    built = result.built
    names = _population_names(built)
    if not random_effect_names(built)[0]:
        raise ValueError("the model has no random effects: its conditional likelihood is already marginal")
    z_post = posterior_z(result)
    proposal = Proposal.from_draws(z_post)
    if theta_draws is None:
        theta_draws = {n: result.posterior_draws(n) for n in names}
    total = len(next(iter(theta_draws.values())))
    idx = np.linspace(0, total - 1, min(n_draws, total)).round().astype(int)
    theta = {n: np.asarray(theta_draws[n])[idx] for n in names}
    rng = np.random.default_rng(seed)
    n_sub, d = z_post.shape[1], z_post.shape[2]
    per_chunk = max(1, _CHUNK_ROWS // n_is)
    out = np.empty((len(idx), n_sub))
    for start in range(0, len(idx), per_chunk):
        rows = slice(start, min(start + per_chunk, len(idx)))
        s = rows.stop - rows.start
        z, log_ratio = proposal.sample(base_draws(rng, s * n_is, n_sub, d))
        draws = z_to_draws(built, z, {n: np.repeat(v[rows], n_is, axis=0) for n, v in theta.items()})
        per_subject = subject_loglik(built, draws)
        log_w = np.where(np.isnan(per_subject + log_ratio), -np.inf, per_subject + log_ratio)
        out[rows] = logsumexp(log_w.reshape(s, n_is, n_sub), axis=1) - np.log(n_is)
    return out


def _psis(loglik: np.ndarray, n_chains: int, ids) -> az.ELPDData:
    """PSIS-LOO of a (draw, subject) log-likelihood matrix, draws split evenly into chains."""
    s = loglik.shape[0] - loglik.shape[0] % n_chains
    arr = loglik[:s].reshape(n_chains, s // n_chains, -1)
    idata = az.InferenceData(log_likelihood=xr.Dataset(
        {"DV": (("chain", "draw", "ID"), arr)}, coords={"ID": list(ids)}))
    with warnings.catch_warnings():   # high Pareto k is reported per subject in the table, not as a warning
        warnings.simplefilter("ignore", UserWarning)
        return az.loo(idata, pointwise=True, reff=1.0)   # thinned draws: close to independent


def integrated_subject_loo(result, *, n_draws: int = 400, n_is: int = 200, seed: int = 0) -> pd.DataFrame:
    """Leave-one-subject-out ELPD of every subject from its integrated likelihood (one method for all).

    Model selection compares fits subject by subject; mixing per-subject methods (conditional PSIS
    for some, integrated for others) between two fits would add noise to the paired differences.

    Returns
    -------
    pandas.DataFrame
        Index ``ID``; ``elpd`` (log predictive density of the subject's data given the others') and
        ``pareto_k``.
    """
    ids = [str(i) for i in result.data.ids]
    integ = _psis(marginal_subject_loglik(result, n_draws=n_draws, n_is=n_is, seed=seed),
                  result.idata.posterior.sizes["chain"], ids)
    return pd.DataFrame({"elpd": np.asarray(integ.loo_i), "pareto_k": np.asarray(integ.pareto_k)},
                        index=pd.Index(ids, name="ID"))


def subject_loo(result, *, n_draws: int = 400, n_is: int = 100, seed: int = 0,
                refit_budget_s: float = 0.0, refit_kwargs: dict | None = None):
    """Leave-one-subject-out ELPD with automatic handling of high Pareto-k subjects.

    Parameters
    ----------
    result : FitResult
    n_draws, n_is, seed
        Settings of the integrated importance sampling.
    refit_budget_s : float
        Wall-clock budget (s) for exact refits of subjects whose integrated
        estimate still has high Pareto k; 0 (default) refits none.  Subjects
        are refitted worst first until the budget is spent.
    refit_kwargs : dict, optional
        Sampler settings for refits (default 2 chains x 500 draws, tune 500).

    Returns
    -------
    table : pandas.DataFrame
        One row per subject: ``ID, k_conditional, elpd_conditional,
        k_integrated, elpd_integrated, elpd, method`` where ``method`` is
        ``PSIS`` (conditional estimate reliable), ``integrated PSIS``, ``exact
        refit`` or ``unreliable``.
    summary : dict
        ``elpd`` (sum), ``se``, ``n_subjects`` and counts per method.
    """
    with warnings.catch_warnings():   # high Pareto k is what this function handles; reported in the table
        warnings.simplefilter("ignore", UserWarning)
        cond = loo(result, level="subject")
    ids = [str(i) for i in result.data.ids]
    n_chain = result.idata.posterior.sizes["chain"]
    good_k = float(getattr(cond, "good_k", 0.7))
    table = pd.DataFrame({"ID": ids, "k_conditional": np.asarray(cond.pareto_k),
                          "elpd_conditional": np.asarray(cond.loo_i)})
    table["method"] = np.where(table["k_conditional"] <= good_k, "PSIS", "")
    table["elpd"] = np.where(table["method"] == "PSIS", table["elpd_conditional"], np.nan)
    table["k_integrated"] = np.nan
    table["elpd_integrated"] = np.nan
    if (table["method"] != "PSIS").any() and random_effect_names(result.built)[0]:
        integ = _psis(marginal_subject_loglik(result, n_draws=n_draws, n_is=n_is, seed=seed), n_chain, ids)
        table["k_integrated"] = np.asarray(integ.pareto_k)
        table["elpd_integrated"] = np.asarray(integ.loo_i)
        use = (table["method"] == "") & (table["k_integrated"] <= float(getattr(integ, "good_k", good_k)))
        table.loc[use, "method"] = "integrated PSIS"
        table.loc[use, "elpd"] = table.loc[use, "elpd_integrated"]
    pending = table.index[table["method"] == ""]
    if refit_budget_s > 0 and len(pending):
        start = time.monotonic()
        worst_first = table.loc[pending].sort_values("k_integrated", ascending=False).index
        for i in worst_first:
            if time.monotonic() - start > refit_budget_s:
                break
            table.loc[i, "elpd"] = exact_subject_elpd(result, table.loc[i, "ID"], n_is=n_is, seed=seed,
                                                      **(refit_kwargs or {}))
            table.loc[i, "method"] = "exact refit"
    left = table["method"] == ""
    table.loc[left, "method"] = "unreliable"
    table.loc[left, "elpd"] = np.where(table.loc[left, "elpd_integrated"].notna(),
                                       table.loc[left, "elpd_integrated"], table.loc[left, "elpd_conditional"])
    n = len(table)
    summary = {"elpd": float(table["elpd"].sum()), "se": float(np.sqrt(n * table["elpd"].var(ddof=1))),
               "n_subjects": n, **table["method"].value_counts().to_dict(), "good_k": good_k}
    return table[["ID", "k_conditional", "elpd_conditional", "k_integrated", "elpd_integrated", "elpd",
                  "method"]], summary


def exact_subject_elpd(result, subject_id, *, n_is: int = 100, seed: int = 0, chains: int = 2,
                       draws: int = 500, tune: int = 500) -> float:
    """``log p(y_i | y_-i)`` by refitting without subject ``subject_id``.

    The refit's population draws give ``p(y_i | theta_s)`` by importance
    sampling over the subject's random effects; the result is the log of
    their mean over draws.
    """
    frame = result.data.frame
    keep = frame[frame["ID"].astype(str) != str(subject_id)]
    cols = record_columns(keep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)   # short refits; only the left-out density is used
        refit = fit_model(result.spec, keep[cols].reset_index(drop=True), chains=chains, draws=draws,
                          tune=tune, seed=seed, progress=False)
    names = _population_names(result.built)
    theta = {n: refit.posterior_draws(n) for n in names}
    ll = marginal_subject_loglik(result, n_draws=len(theta[names[0]]), n_is=n_is, seed=seed, theta_draws=theta)
    col = [str(i) for i in result.data.ids].index(str(subject_id))
    return float(logsumexp(ll[:, col]) - np.log(ll.shape[0]))


def describe(summary: dict) -> str:
    """The handling of high Pareto-k subjects in words."""
    n = summary["n_subjects"]
    parts = [f"leave-one-subject-out ELPD {summary['elpd']:.1f} (SE {summary['se']:.1f}) over {n} subjects"]
    for method, words in (("PSIS", "reliable by plain PSIS"),
                          ("integrated PSIS", "fixed by integrating out their random effects"),
                          ("exact refit", "computed by refitting without them"),
                          ("unreliable", "still unreliable (Pareto k above the threshold)")):
        if summary.get(method):
            parts.append(f"{summary[method]} {words}")
    return "; ".join(parts) + "."


def add_high_k_handling(table: pd.DataFrame, results: dict, *, refit_budget_s: float = 0.0,
                        seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Add the subject-level ELPD after automatic high-k handling to a comparison table.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`bayesnlme.evaluate.compare.compare` at subject level (index: model).
    results : dict of str -> FitResult
    refit_budget_s : float
        Refit budget per model (s), see :func:`subject_loo`.

    Returns
    -------
    table : pandas.DataFrame
        With ``elpd_handled``, ``se_handled``, ``elpd_diff_handled``, ``dse_handled`` (the
        difference from the best model by handled ELPD and its SE, from the paired per-subject
        values) and ``n_unreliable`` columns, sorted by ``elpd_handled`` (best first): where
        conditional PSIS is unreliable for many subjects, the handled figures decide the ranking.
    details : dict of str -> (per-subject DataFrame, summary dict)
    """
    details = {name: subject_loo(results[name], refit_budget_s=refit_budget_s, seed=seed) for name in table.index}
    out = table.copy()
    out["elpd_handled"] = [details[n][1]["elpd"] for n in out.index]
    out["se_handled"] = [details[n][1]["se"] for n in out.index]
    pointwise = {n: details[n][0].set_index("ID")["elpd"] for n in out.index}
    best = out["elpd_handled"].idxmax()
    diffs = {n: (pointwise[best] - pointwise[n].reindex(pointwise[best].index)).to_numpy() for n in out.index}
    out["elpd_diff_handled"] = [float(diffs[n].sum()) for n in out.index]
    out["dse_handled"] = [float(np.sqrt(len(d) * d.var(ddof=1))) if n != best else 0.0 for n, d in diffs.items()]
    out["n_unreliable"] = [details[n][1].get("unreliable", 0) for n in out.index]
    out = out.sort_values("elpd_handled", ascending=False)
    out["rank"] = np.arange(len(out))   # the handled ranking (elpd_diff, dse and weight stay conditional PSIS's)
    out.attrs.update(table.attrs, handled=True)
    return out, details
