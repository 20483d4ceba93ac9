"""Sequential PK -> PD analysis: the PK posterior fixed, the PD model fitted on its predictions.

The classic alternative to a joint PK/PD fit (Zhang, Beal & Sheiner 2003,
"PPP" / "IPP"): fit the PK model, fix each subject's PK parameters at a
posterior summary (median by default), and drive the PD model by the
concentrations they predict.  Uncertainty in the PK parameters is not
propagated (use a joint fit with DVID when it matters).

Usage::

    pk_fit = fit_model(pk_spec, pk_data, ...)
    pd_data = add_pk_predictions(pk_fit, pd_data, column="CIPRED")
    pd_spec = ModelSpec(..., structural=pd_model("emax", "column", column="CIPRED"), ...)
    pd_fit = fit_model(pd_spec, pd_data, ...)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayesnlme.data import read_nonmem
from bayesnlme.errors import DataError
from bayesnlme.evaluate.predict import evaluate_draws
from bayesnlme.structural import evaluate


def individual_estimates(result, statistic: str = "median") -> pd.DataFrame:
    """Each subject's individual parameters at a posterior summary.

    Parameters
    ----------
    result : FitResult
    statistic : {"median", "mean"}

    Returns
    -------
    pandas.DataFrame
        Index ``ID`` (as in the fitted data), one column per structural parameter (natural units).
    """
    built = result.built
    draws = {rv.name: result.posterior_draws(rv.name) for rv in built.model.free_RVs}
    names = [p for p in result.spec.parameters]
    out = evaluate_draws(built, draws, tuple(f"individual.{p}" for p in names))
    reduce = np.median if statistic == "median" else np.mean
    table = {p: reduce(np.broadcast_to(out[f"individual.{p}"], (len(out[f"individual.{p}"]), built.data.n_subjects)),
                       axis=0) for p in names}
    return pd.DataFrame(table, index=pd.Index(built.data.ids, name="ID"))


def add_pk_predictions(result, data, column: str = "CIPRED", statistic: str = "median") -> pd.DataFrame:
    """``data`` with a column of PK predictions (individual parameters fixed at the posterior ``statistic``).

    Parameters
    ----------
    result : FitResult
        A PK fit (its structural model's first output is the concentration).
    data : path, DataFrame or NMData
        The PD data (NONMEM format, with the same IDs and the doses).
    column : str
        Name of the new column: the predicted concentration at every record
        (observation rows; other rows get the value of the nearest later observation, unused).

    Raises
    ------
    DataError
        A subject of ``data`` is not in the PK fit.
    """
    nm = read_nonmem(data)
    est = individual_estimates(result, statistic)
    known = {str(i): k for k, i in enumerate(est.index)}
    missing = [i for i in nm.ids if str(i) not in known]
    if missing:
        raise DataError(f"subject(s) {', '.join(map(str, missing[:5]))} have no PK estimates in the PK fit",
                        source=nm.source, column="ID")
    order = [known[str(i)] for i in nm.ids]
    params = {p: est[p].to_numpy()[order] for p in est.columns}
    st = result.spec.structural
    from dataclasses import replace

    cp = evaluate(st, params, replace(nm, obs_cmt=np.zeros_like(nm.obs_cmt)))
    frame = nm.records.copy()
    frame[column] = np.nan
    frame.loc[nm.frame["_OBS"].to_numpy(), column] = cp
    frame[column] = frame.groupby(nm.frame["_SUBJ"].to_numpy())[column].transform(lambda s: s.bfill().ffill())
    return frame
