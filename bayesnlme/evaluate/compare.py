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
be refitted without the subject within a time budget; ``bayesnlme compare``
adds the resulting ``elpd_handled``, ``se_handled`` and ``n_unreliable``.
"""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

from bayesnlme.errors import BayesNLMEInputError

LEVELS, ICS = ("subject", "observation"), ("loo", "waic")
COMPARE_COLUMNS = ["rank", "elpd", "se", "p", "elpd_diff", "dse", "weight", "warning", "n_high_pareto_k"]
_NEW = {"subject": "a new subject", "observation": "a left-out observation of a known subject"}


def check_choices(level, ic="loo") -> None:
    for what, value, allowed in (("level", level, LEVELS), ("information criterion", ic, ICS)):
        if value not in allowed:
            raise BayesNLMEInputError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")


def subject_log_likelihood(idata) -> xr.DataArray:
    """Pointwise log-likelihood summed over each subject's observations.
    Parameters
    ----------
    idata : arviz.InferenceData
        A fit's ``idata``: ``log_likelihood`` variable ``DV`` (dims chain, draw,
        obs) and ``constant_data`` variable ``ID`` (dim obs).

    Returns
    -------
    xarray.DataArray
        ``DV``, dims ``(chain, draw, ID)``: log-likelihood of each subject's whole
        profile per draw; subjects in order of first appearance in the data.
    """
    if (not {"log_likelihood", "constant_data"} <= set(idata.groups()) or "DV" not in idata.log_likelihood
            or "ID" not in idata.constant_data):
        raise BayesNLMEInputError("the fit has no pointwise log-likelihood with subject IDs "
                                  "(log_likelihood DV, constant_data ID); refit it with bayesnlme")
    ll = idata.log_likelihood["DV"].transpose("chain", "draw", "obs")
    codes, ids = pd.factorize(np.asarray(idata.constant_data["ID"].values).astype(str))
    total = np.zeros((len(ids),) + ll.shape[:2])
    np.add.at(total, codes, np.moveaxis(ll.values, -1, 0))  # one vectorised pass over observations
    return xr.DataArray(np.moveaxis(total, 0, -1), dims=("chain", "draw", "ID"), name="DV",
                        coords={"chain": ll["chain"].values, "draw": ll["draw"].values, "ID": ids})


def _level_idata(result, level: str) -> az.InferenceData:
    """InferenceData holding the posterior (for the MCMC efficiency) and the level's log-likelihood."""
    idata = getattr(result, "idata", result)
    ll = subject_log_likelihood(idata) if level == "subject" else idata.log_likelihood["DV"]
    return az.InferenceData(posterior=idata.posterior, log_likelihood=xr.Dataset({"DV": ll}))


def loo(result, level: str = "subject", pointwise: bool = True):
    """PSIS-LOO estimate of the expected log predictive density.
    Parameters
    ----------
    result : FitResult or arviz.InferenceData
    level : {"subject", "observation"}
        Leave out whole subjects (default) or single observations.
    pointwise : bool
        Keep ``loo_i`` and ``pareto_k`` (dim ``ID``, or ``obs``: the record number).

    Returns
    -------
    arviz.ELPDData
        From :func:`arviz.loo`: ``elpd_loo``, ``se``, ``p_loo`` (effective number
        of parameters), ``good_k``, ...
    """
    check_choices(level)
    return az.loo(_level_idata(result, level), pointwise=pointwise)


def waic(result, level: str = "subject", pointwise: bool = True):
    """WAIC estimate of the expected log predictive density; parameters as :func:`loo`."""
    check_choices(level)
    return az.waic(_level_idata(result, level), pointwise=pointwise)


def pareto_k_report(elpd_data, labels=None) -> tuple[pd.DataFrame, str]:
    """Pareto k of each PSIS-LOO contribution, as a table and a verdict in words.
    Parameters
    ----------
    elpd_data : arviz.ELPDData
        From :func:`loo` with ``pointwise=True``.
    labels : sequence of str, optional
        One per subject (observation); default: the IDs (``record <n>``).

    Returns
    -------
    table : pandas.DataFrame
        Columns ``label``, ``pareto_k``, ``elpd_loo_i``, ``category``: ``good``
        (k <= good_k = min(1 - 1/log10(S), 0.7) for S draws), ``bad`` (k <= 1)
        or ``very bad``.
    verdict : str
        Whether the estimate can be trusted, naming the subjects that cannot.
    """
    if "pareto_k" not in elpd_data:
        raise BayesNLMEInputError("no Pareto k values: pass the result of loo(..., pointwise=True)")
    k = elpd_data["pareto_k"]
    subject = k.dims[0] == "ID"
    unit = "subject" if subject else "observation"
    labels = [str(x) for x in (labels if labels is not None else
                               [v if subject else f"record {v}" for v in k[k.dims[0]].values])]
    if len(labels) != k.size:
        raise BayesNLMEInputError(f"{len(labels)} labels for {k.size} Pareto k values")
    n_draws = int(elpd_data["n_samples"])
    good_k = float(elpd_data["good_k"]) if "good_k" in elpd_data else min(1 - 1 / np.log10(n_draws), 0.7)
    kv = np.asarray(k.values, dtype=float)
    table = pd.DataFrame({"label": labels, "pareto_k": kv, "elpd_loo_i": np.asarray(elpd_data["loo_i"].values),
                          "category": np.where(kv <= good_k, "good", np.where(kv <= 1, "bad", "very bad"))})
    high = table[table["pareto_k"] > good_k]
    if high.empty:
        return table, (f"all Pareto k <= {good_k:.2f} ({k.size} {unit}s, {n_draws} draws): "
                       f"the PSIS-LOO estimate is reliable")
    which, worst = ("IDs " if len(high) > 1 else "ID ") if subject else "", table[table["pareto_k"] > 1]
    _join = lambda x: ", ".join(x[:10]) + (f" and {len(x) - 10} more" if len(x) > 10 else "")  # noqa: E731
    verdict = (f"{len(high)} of {k.size} {unit}s {'have' if len(high) > 1 else 'has'} Pareto k > {good_k:.2f} "
               f"({which}{_join(list(high['label']))}): their LOO contributions are unreliable"
               + (f" (k > 1 for {_join(list(worst['label']))}: badly biased)" if len(worst) else ""))
    return table, verdict + (
        f"; the ELPD of this model and differences involving it are uncertain. These {unit}s are influential: "
        "check their records (dosing, outlying concentrations) and consider a more robust model (heavier-tailed "
        f"residual or ETA distributions) or K-fold cross-validation {'by subject' if subject else 'for them'}")


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


def compare(results, level: str = "subject", ic: str = "loo") -> pd.DataFrame:
    """Rank fitted models by expected log predictive density, best first.
    Parameters
    ----------
    results : dict of {str: FitResult} or list of FitResult
        Fits to the same data (a list is named by ``spec.name``).
    level : {"subject", "observation"}
        Predict a new subject (default) or a left-out observation.
    ic : {"loo", "waic"}
        PSIS-LOO (default) or WAIC, through :func:`arviz.compare`.

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
    return compare_table(named, level, ic)[0]


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
