"""Compare fitted population models by their expected log predictive density (ELPD).

PSIS-LOO (default) or WAIC, from the pointwise log-likelihood stored with every
fit, at one of two levels.  ``level="subject"`` (default) sums the log-likelihood
over each subject's observations and leaves out whole subjects: how well does
the model predict the concentrations of a *new subject*?  ``level="observation"``
leaves out single concentrations while the rest of the profile (and so the
subject's ETAs) stays in.

Pareto k diagnoses each PSIS-LOO contribution.  At the subject level high k is
common: leaving a subject out moves its ETAs from their individual posterior
back to the population distribution, a large step for subjects with rich data.
High-k subjects are reported (:func:`pareto_k_report`, ``n_high_pareto_k`` in
:func:`compare`) and handled by :mod:`bayesnlme.evaluate.subject_loo`: their random
effects are integrated out (integrated PSIS), and those still unreliable can
be refitted without the subject within a time budget; ``bayesnlme compare`` and
``compare(..., integrate=True)`` add the resulting ``elpd_handled``, ``se_handled``
and ``n_unreliable`` and rank by them.
"""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pandas as pd

from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.elpd import check_choices, loo, waic
from bayesnlme.evaluate.subject_loo import add_high_k_handling

COMPARE_COLUMNS = ["rank", "elpd", "se", "p", "elpd_diff", "dse", "weight", "warning", "n_high_pareto_k"]
_NEW = {"subject": "a new subject", "observation": "a left-out observation of a known subject"}


def named_results(results) -> dict:
    pairs = results.items() if isinstance(results, dict) else [r if isinstance(r, tuple) else (r.spec.name, r)
                                                                for r in results]
    named = {}
    for name, r in pairs:  # a list may hold two fits of one spec: name them spec, spec_2, ...
        key, i = name, 2
        while key in named:
            key, i = f"{name}_{i}", i + 1
        named[key] = r
    if len(named) < 2:
        raise BayesNLMEInputError(f"model comparison needs at least two fits, got {len(named)}")
    return named


def check_same_data(named: dict) -> None:
    """Raise BayesNLMEInputError unless all fits share data SHA-256, subjects and observations."""
    (ref_name, ref), *rest = named.items()
    ids = lambda r: np.asarray(r.idata.constant_data["ID"].values).astype(str)  # noqa: E731
    for name, r in rest:
        a, b = ref.metadata.get("data_sha256"), r.metadata.get("data_sha256")
        why = [f"data SHA-256 {b[:12]}... vs {a[:12]}..."] if a and b and a != b else []
        why += [f"{x} vs {y} {what}" for what, x, y in (("subjects", r.data.n_subjects, ref.data.n_subjects),
                                                         ("observations", r.data.n_obs, ref.data.n_obs)) if x != y]
        if not why and not np.array_equal(ids(r), ids(ref)):
            why.append("the observations belong to different subjects")
        if why:
            raise BayesNLMEInputError(
                f"cannot compare {name} with {ref_name}: they were fitted to different data "
                f"({'; '.join(why)}); predictive accuracy is comparable only for fits to the same "
                f"observations, so refit the models to the same data file")


def compare_table(named: dict, level: str, ic: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # high k / WAIC variance: reported in the table
        warnings.simplefilter("ignore", DeprecationWarning)  # ArviZ's own pandas deprecations
        loos = {n: loo(r, level) for n, r in named.items()}
        ics = loos if ic == "loo" else {n: waic(r, level) for n, r in named.items()}
        table = az.compare(ics, ic=ic)
    table = table.rename(columns={f"elpd_{ic}": "elpd", f"p_{ic}": "p"})
    table["n_high_pareto_k"] = [int((loos[n]["pareto_k"] > loos[n]["good_k"]).sum()) for n in table.index]
    table = table[COMPARE_COLUMNS].rename_axis("model")
    table.attrs.update(level=level, ic=ic)
    return table, loos


def compare(results, level: str = "subject", ic: str = "loo", *, integrate: bool = False) -> pd.DataFrame:
    """Rank fitted models by expected log predictive density, best first.

    Parameters
    ----------
    results : dict of {str: FitResult} or list of FitResult
        Fits to the same data (a list is named by ``spec.name``).
    level : {"subject", "observation"}
        Predict a new subject (default) or a left-out observation.
    ic : {"loo", "waic"}
        PSIS-LOO (default) or WAIC, through :func:`arviz.compare`.
    integrate : bool
        Subject level: also integrate out the random effects of high Pareto-k subjects
        (:func:`bayesnlme.evaluate.subject_loo.add_high_k_handling`, as ``bayesnlme compare`` does),
        adding ``elpd_handled``, ``se_handled``, ``elpd_diff_handled``, ``dse_handled`` and
        ``n_unreliable`` and ranking by the handled ELPD.  Costs an importance-sampling pass per fit.

    Returns
    -------
    pandas.DataFrame
        Index ``model``; ``rank`` (0 = best), ``elpd``, ``se``, ``p`` (effective
        number of parameters), ``elpd_diff`` (best minus this), ``dse`` (its SE),
        ``weight`` (stacking), ``warning`` (ArviZ flag), ``n_high_pareto_k``
        (always from PSIS-LOO).  ``attrs`` holds level and ic.

    Raises
    ------
    BayesNLMEInputError
        Fewer than two fits, or fits to different data.
    """
    check_choices(level, ic)
    named = named_results(results)
    check_same_data(named)
    table = compare_table(named, level, ic)[0]
    if integrate and level == "subject" and ic == "loo":
        table = add_high_k_handling(table, named)[0]
    return table


def describe_comparison(df: pd.DataFrame) -> str:
    """The result of :func:`compare` in a few plain sentences."""
    level, ic, best = df.attrs.get("level", "subject"), df.attrs.get("ic", "loo"), df.index[0]
    handled = "elpd_handled" in df
    elpd, se, d_col, dse_col = (("elpd_handled", "se_handled", "elpd_diff_handled", "dse_handled") if handled
                                else ("elpd", "se", "elpd_diff", "dse"))
    how = ("leave-one-subject-out ELPD after automatic high-k handling" if handled
           else f"{'PSIS-LOO' if ic == 'loo' else 'WAIC'} ELPD")
    out = [f"{best} predicts {_NEW[level]} best ({how} {df.loc[best, elpd]:.1f}, SE {df.loc[best, se]:.1f})."]
    for name in df.index[1:]:
        diff, dse = df.loc[name, d_col], df.loc[name, dse_col]
        ratio = f"{diff / dse:.1f} SE" if dse > 0 else "SE 0"
        verdict = ("practically indistinguishable (a difference below 4 is small)" if diff < 4 else
                   f"clearly worse ({ratio})" if diff > 2 * dse else
                   f"worse, but within 2 SE ({ratio}): not a decisive difference")
        out.append(f"{name}: ELPD lower by {diff:.1f} (SE of the difference {dse:.1f}), {verdict}.")
    if handled:
        out += [f"Caution: {name} has {n} subjects whose contribution is still unreliable after handling "
                f"(high Pareto k even with random effects integrated out): its ELPD is uncertain."
                for name, n in df["n_unreliable"].items() if n]
    else:
        out += [f"Caution: {name} has {n} {level}s with high Pareto k (influential): its ELPD is uncertain."
                for name, n in df["n_high_pareto_k"].items() if n]
    return " ".join(out)
