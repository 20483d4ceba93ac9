"""Pharmacodynamic and exposure-response structural models.

A drug effect on a baseline ``E0``, driven by an exposure ``X``:

=============  ====================================================  =====================
effect         EFFECT                                                parameters
=============  ====================================================  =====================
emax           ``E0 + EMAX X / (EC50 + X)``                            E0, EMAX, EC50
sigmoid_emax   ``E0 + EMAX X^GAMMA / (EC50^GAMMA + X^GAMMA)`` (Hill)   E0, EMAX, EC50, GAMMA
linear         ``E0 + SLOPE X``                                      E0, SLOPE
loglinear      ``E0 + SLOPE log(1 + X)`` (defined at X = 0)          E0, SLOPE
=============  ====================================================  =====================

The exposure ``X`` (the ``driver``) is

* ``"pk"``: the concentration ``CP`` predicted by a closed-form PK model at the
  record (joint PK/PD; outputs ``CP`` and ``EFFECT``, observations chosen by
  DVID; the observation's ``CMT`` is ignored because DVID says what it is);
* ``"dose"``: the amount of the subject's latest dose before the record (0 before any);
* ``"column"``: a data column at the record (an observed concentration, an
  exposure metric such as AUC or Cmax, or -- sequential PK/PD -- individual
  predictions from a PK fit, see :func:`bayesnlme.evaluate.sequential.add_pk_predictions`).

``EFFECT`` is whatever the observation model says it is: a continuous
response, the logit of a response probability (``bernoulli``), the linear
predictor of an ordinal model, a log rate (``poisson``/``negbin``) or a log
hazard ratio (``tte``).  Units: X in the driver's units (mg/L for CP, mg for
dose), EC50 likewise; E0 and EMAX in the response's units.

Models are ``per_subject`` (contract 2) so that they can read the data's
columns; parameters are gathered to records here.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np
import pytensor.tensor as pt

from bayesnlme.errors import DataError
from bayesnlme.structural.base import StructuralModel, dose_events
from bayesnlme.structural.pk import DoseEvents

EFFECTS = {"emax": ("E0", "EMAX", "EC50"), "sigmoid_emax": ("E0", "EMAX", "EC50", "GAMMA"),
           "linear": ("E0", "SLOPE"), "loglinear": ("E0", "SLOPE")}
DRIVERS = ("pk", "dose", "column")


def drug_effect(kind: str, x, p: dict):
    """``EFFECT`` of exposure ``x`` with parameters ``p`` (tensors broadcasting with ``x``)."""
    if kind == "emax":
        return p["E0"] + p["EMAX"] * x / (p["EC50"] + x)
    if kind == "sigmoid_emax":
        # x^g / (EC50^g + x^g) = 1 / (1 + (EC50/x)^g), written to stay finite at x = 0
        xg = pt.exp(p["GAMMA"] * pt.log(pt.maximum(x, 1e-300)))
        return p["E0"] + p["EMAX"] * xg / (pt.exp(p["GAMMA"] * pt.log(p["EC50"])) + xg)
    if kind == "linear":
        return p["E0"] + p["SLOPE"] * x
    return p["E0"] + p["SLOPE"] * pt.log1p(x)


def _latest_dose(data) -> np.ndarray:
    """Amount of each record's latest applied dose (0 before the first)."""
    order = np.where(data.dose_applies, data.dose_time[data.obs_subject], -np.inf)
    last = order.argmax(axis=1)
    amt = data.dose_amt[data.obs_subject, last]
    return np.where(data.dose_applies.any(axis=1), amt, 0.0)


def _column(data, column: str) -> np.ndarray:

    if column not in data.frame.columns:
        raise DataError(f"exposure column {column!r} is not in the data", source=data.source, column=column)
    x = data.frame.set_index("ROW").loc[data.obs_row, column]
    x = pd_numeric(x)
    if np.isnan(x).any():
        i = int(np.flatnonzero(np.isnan(x))[0])
        raise DataError(f"exposure column {column} is missing or not numeric at an observation",
                        source=data.source, row=int(data.obs_row[i]), column=column)
    return x


def pd_numeric(x) -> np.ndarray:
    import pandas as pd

    return pd.to_numeric(x, errors="coerce").to_numpy(float)


def _pk_at(pk, params_obs: dict, data, times=None):
    """CP from a closed-form PK model at the records, or at ``times`` (n_obs, Q) -> (n_obs, Q)."""
    data0 = replace(data, obs_cmt=np.zeros_like(data.obs_cmt))   # DVID, not CMT, says what a record is
    doses = dose_events(data0, pk)
    if times is None:
        return pk.function(params_obs, doses)
    n, q = times.shape
    dt = times[:, :, None] - data.dose_time[data.obs_subject][:, None, :]
    rep = lambda a: np.repeat(np.asarray(a)[:, None, :], q, axis=1).reshape(n * q, -1)   # noqa: E731
    if doses.ss is not None:
        raise NotImplementedError("time-varying hazards with steady-state doses (SS) are not supported")
    applies = np.repeat(data.dose_applies[:, None, :], q, axis=1) & (dt > 0)

    dq = DoseEvents(dt=dt.reshape(n * q, -1), amt=rep(doses.amt), rate=rep(doses.rate), depot=rep(doses.depot),
                    applies=applies.reshape(n * q, -1), time=times.reshape(-1))
    idx = np.repeat(np.arange(n), q)
    cp = pk.function({k: v[idx] for k, v in params_obs.items()}, dq)
    return cp.reshape((n, q))


def _function(params_by_subject: dict, data, model, *, effect, driver, pk, column, times=None, obs_log=None):
    s = data.obs_subject
    p = {k: pt.as_tensor_variable(v) for k, v in params_by_subject.items()}
    p = {k: (v[s] if v.ndim else v * pt.ones(len(s))) for k, v in p.items()}
    for k, term in (obs_log or {}).items():   # within-subject changes: time-varying covariates, KAPPA
        p[k] = p[k] * pt.exp(term)
    out = {}
    if driver == "pk":
        x = _pk_at(pk, p, data, times)
        out["CP"] = x
        if times is not None:
            p = {k: v[:, None] for k, v in p.items()}
    elif driver == "dose":
        x = pt.as_tensor_variable(_latest_dose(data))
    else:
        x = pt.as_tensor_variable(_column(data, column))
    out["EFFECT"] = drug_effect(effect, x, p)
    return out


def pd_model(effect: str = "emax", driver: str = "column", *, pk=None, column: str = "EXPOSURE",
             name: str | None = None):
    """A PD / exposure-response :class:`~bayesnlme.structural.StructuralModel`.

    Parameters
    ----------
    effect : {"emax", "sigmoid_emax", "linear", "loglinear"}
    driver : {"pk", "dose", "column"}
    pk : StructuralModel, optional
        Closed-form PK model (``driver="pk"``), e.g. ``LIBRARY["1cmt_oral"]``.
    column : str
        Data column with the exposure (``driver="column"``).

    Returns
    -------
    StructuralModel
        Outputs ``("CP", "EFFECT")`` for ``driver="pk"``, else ``("EFFECT",)``.
        Its function accepts ``times`` (n_obs, Q) to evaluate the outputs inside
        each record's interval (used for time-varying hazards), and ``obs_log``
        (log multipliers of parameters at each record: time-varying covariates, IOV).
    """
    if effect not in EFFECTS:
        raise ValueError(f"unknown effect {effect!r}; known: {', '.join(EFFECTS)}")
    if driver not in DRIVERS:
        raise ValueError(f"unknown driver {driver!r}; known: {', '.join(DRIVERS)}")
    if driver == "pk" and (pk is None or pk.per_subject):
        raise ValueError("driver='pk' needs a closed-form PK model (pk=LIBRARY['1cmt_oral'] ...)")
    fn = partial(_function, effect=effect, driver=driver, pk=pk, column=column)
    what = {"pk": f"CP of {pk.name if pk else ''}", "dose": "the latest dose amount",
            "column": f"data column {column}"}[driver]
    return StructuralModel(
        name=name or f"{effect}_{driver}", parameters=(pk.parameters if driver == "pk" else ()) + EFFECTS[effect],
        function=fn, optional=dict(pk.optional) if driver == "pk" else {},
        depot_cmt=pk.depot_cmt if driver == "pk" else None,
        central_cmt=pk.central_cmt if driver == "pk" else 1,
        outputs=("CP", "EFFECT") if driver == "pk" else ("EFFECT",), per_subject=True, per_record=True,
        description=f"{effect} drug effect on E0 driven by {what}")


def time_varying(model) -> bool:
    """Whether a structural model's outputs change between records (needs quadrature for hazards)."""
    f = model.function
    return isinstance(f, partial) and f.func is _function and f.keywords.get("driver") == "pk"


def library_models(LIBRARY: dict) -> dict:
    """Library PD entries: each effect driven by the ``EXPOSURE`` column, by dose, and jointly by 1-cmt PK."""
    out = {}
    for effect in EFFECTS:
        out[f"{effect}_exposure"] = pd_model(effect, "column", column="EXPOSURE", name=f"{effect}_exposure")
        out[f"{effect}_dose"] = pd_model(effect, "dose", name=f"{effect}_dose")
        out[f"pkpd_1cmt_oral_{effect}"] = pd_model(effect, "pk", pk=LIBRARY["1cmt_oral"],
                                                   name=f"pkpd_1cmt_oral_{effect}")
        out[f"pkpd_1cmt_iv_{effect}"] = pd_model(effect, "pk", pk=LIBRARY["1cmt_iv"],
                                                 name=f"pkpd_1cmt_iv_{effect}")
    return out
