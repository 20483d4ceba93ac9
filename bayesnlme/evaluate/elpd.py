"""Expected log predictive density of one fit: PSIS-LOO and WAIC at the subject or the observation level,
and the Pareto k verdict.  :mod:`bayesnlme.evaluate.compare` ranks several fits with them."""

from __future__ import annotations

import json

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.inference.convergence import without_arviz_numba

LEVELS, ICS = ("subject", "observation"), ("loo", "waic")


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
    if "log_likelihood" not in idata.groups() and _kept(idata) == "none":
        raise BayesNLMEInputError("the fit kept no log-likelihood (fitted with log_likelihood='none'); "
                                  "refit it with log_likelihood 'subject' or 'observation' to compare it")
    if "log_likelihood" in idata.groups() and "ID" in idata.log_likelihood.get("DV", xr.DataArray()).dims:
        return idata.log_likelihood["DV"].transpose("chain", "draw", "ID")   # kept per subject by the fit
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


def _kept(idata) -> str | None:
    """The fit's ``settings["log_likelihood"]`` (None for a fit written before it was recorded)."""
    try:
        return json.loads(idata.posterior.attrs["bayesnlme_metadata"])["settings"].get("log_likelihood")
    except (KeyError, ValueError, TypeError, AttributeError):
        return None


def level_idata(result, level: str) -> az.InferenceData:
    """InferenceData holding the posterior (for the MCMC efficiency) and the level's log-likelihood."""
    idata = getattr(result, "idata", result)
    if level == "subject":
        ll = subject_log_likelihood(idata)
    elif "log_likelihood" in idata.groups() and "obs" in idata.log_likelihood.get("DV", xr.DataArray()).dims:
        ll = idata.log_likelihood["DV"]
    else:
        kept = _kept(idata)
        raise BayesNLMEInputError(
            "observation-level LOO/WAIC needs the log-likelihood of every observation, and the fit kept "
            + ("it per subject (log_likelihood='auto' does above 512 MiB)" if kept == "subject" else
               "none" if kept == "none" else "no pointwise log-likelihood")
            + "; compare at the subject level, or refit with log_likelihood='observation' "
              "(bayesnlme fit --log-likelihood observation)")
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
    with without_arviz_numba():
        return az.loo(level_idata(result, level), pointwise=pointwise)


def waic(result, level: str = "subject", pointwise: bool = True):
    """WAIC estimate of the expected log predictive density; parameters as :func:`loo`."""
    check_choices(level)
    with without_arviz_numba():
        return az.waic(level_idata(result, level), pointwise=pointwise)


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
