"""The :class:`StructuralModel` type, and what every structural model shares: dose events from data, and
evaluation of a model at given parameters (NumPy in, NumPy out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from bayesnlme.errors import DataError
from bayesnlme.structural.ode import ODESystem, ode_function
from bayesnlme.structural.pk import DoseEvents


@dataclass(frozen=True)
class StructuralModel:
    """A structural model and its compartment layout.

    Attributes
    ----------
    name : str
    parameters : tuple of str
        Required individual parameters, e.g. ``("CL", "V", "KA")``.
    optional : dict
        Optional parameters and their default values (``{"F": 1.0, "ALAG": 0.0}``
        for oral models).  A parameter the spec does not define is absent from
        ``params``: the function uses ``params.get(name, default)``.
    function : callable
        ``function(params: dict[str, tensor (n_obs,)], doses: DoseEvents) -> tensor (n_obs,)``.
    depot_cmt : int or None
        Data compartment number of the absorption depot (doses there are
        absorbed first-order); None for models without absorption.
    central_cmt : int
        Data compartment number of the central (observed) compartment.
    description : str
    outputs : tuple of str
        Names of the predicted quantities (``"CP"`` first); a function may
        return a dict ``{output: tensor (n_obs,)}`` instead of one tensor.
    per_record : bool
        True (PD models): a ``per_subject`` function that also accepts ``obs_log``, the log
        multipliers of parameters at each record, so parameters may change within a subject
        (time-varying covariates, IOV).
    piecewise : bool
        True (ODE models): ``per_record``, with parameters piecewise constant in time; the
        function also takes ``obs_key``, codes of the data behind the changes (occasion,
        time-varying covariates), and a subject's parameters change where it changes.
    per_subject : bool
        True (ODE models): ``function(params_by_subject, data, model)`` with
        parameters of shape (n_subjects,), returning values at the data's
        observation records.
    """

    name: str
    parameters: tuple[str, ...]
    function: Callable
    optional: dict = field(default_factory=dict)
    depot_cmt: int | None = None
    central_cmt: int = 1
    description: str = ""
    outputs: tuple[str, ...] = ("CP",)
    per_subject: bool = False
    per_record: bool = False
    piecewise: bool = False

    @property
    def all_parameters(self) -> tuple[str, ...]:
        return self.parameters + tuple(self.optional)

    @property
    def default_dose_cmt(self) -> int:
        return self.depot_cmt if self.depot_cmt is not None else self.central_cmt

    @classmethod
    def ode(cls, rhs: Callable, parameters, n_states: int, *, outputs: dict, name: str = "ode",
            optional: dict | None = None, initial: Callable | None = None, depot_cmt: int | None = None,
            central_cmt: int = 1, rtol: float = 1e-6, atol: float = 1e-8,
            description: str = "") -> "StructuralModel":
        """A model given by ordinary differential equations (see :mod:`bayesnlme.structural.ode`).

        Parameters
        ----------
        rhs : callable
            ``rhs(y, t, p)``: states ``y`` (n_sub, n_states) (amounts; state k
            is data ``CMT`` k+1), time ``t`` (n_sub,), parameters ``p`` (dict of
            (n_sub,) tensors) -> derivatives, written with ``pytensor.tensor``.
        parameters : sequence of str
            Required parameters; ``optional`` adds ones with defaults (``F``
            and ``ALAG`` act on bolus doses into ``depot_cmt``).
        n_states : int
        outputs : dict
            ``{name: function(states (n_obs, n_states), params (dict of (n_obs,)))}``,
            e.g. ``{"CP": lambda y, p: y[:, 1] / p["V"]}``; the first is the default prediction.
        initial : callable, optional
            ``initial(p)`` -> states at each subject's first record (default 0).
        depot_cmt, central_cmt : int
            Default dose compartment is ``depot_cmt`` if given, else ``central_cmt``.
        rtol, atol : float
            DOPRI5 local error tolerances (``atol`` relative to the largest dose).
        """
        optional = dict(optional or {})
        system = ODESystem(rhs, tuple(parameters) + tuple(optional), n_states, initial=initial)
        fn = partial(ode_function, system=system, outputs=dict(outputs), rtol=rtol, atol=atol)
        return cls(name=name, parameters=tuple(parameters), function=fn, optional=optional,
                   depot_cmt=depot_cmt, central_cmt=central_cmt, outputs=tuple(outputs),
                   per_subject=True, per_record=True, piecewise=True, description=description or "ODE model")

    @classmethod
    def custom(cls, function: Callable, parameters, *, name: str | None = None,
               optional: dict | None = None, depot_cmt: int | None = None,
               central_cmt: int = 1, description: str = "") -> "StructuralModel":
        """Wrap a user function of individual parameters and doses.

        Parameters
        ----------
        function : callable
            ``function(params, doses)`` returning predictions of shape (n_obs,),
            written with ``pytensor.tensor`` operations.  ``params[name]`` has
            shape (n_obs,); ``doses`` is a :class:`DoseEvents`.
        parameters : sequence of str
            Names of the parameters the function reads.
        """
        return cls(name=name or getattr(function, "__name__", "custom"),
                   parameters=tuple(parameters), function=function,
                   optional=dict(optional or {}), depot_cmt=depot_cmt,
                   central_cmt=central_cmt, description=description or "user-supplied function")


def dose_events(data, model: StructuralModel, dt=None) -> DoseEvents:
    """Gather each observation's subject's doses into (n_obs, n_dose_max) arrays.

    Parameters
    ----------
    data : bayesnlme.data.NMData
    model : StructuralModel
        Its compartment layout decides which doses go to the depot; a dose
        into a compartment the model does not have is an error.
    dt : optional
        Replaces ``obs_time - dose_time`` (used by the simulator).
    """
    import numpy as np

    s = data.obs_subject
    cmt = np.where(data.dose_cmt == 0, model.default_dose_cmt, data.dose_cmt)
    allowed = {model.central_cmt} | ({model.depot_cmt} if model.depot_cmt is not None else set())
    bad = data.dose_valid & ~np.isin(cmt, list(allowed))
    if bad.any():
        subj, slot = map(int, np.argwhere(bad)[0])
        rows = data.frame.loc[(data.frame["_SUBJ"] == subj) & data.frame["EVID"].isin([1, 4]), "ROW"]
        raise DataError(f"dose into CMT {int(cmt[subj, slot])}, but model {model.name} takes doses "
                        f"only into CMT {sorted(allowed)}", source=data.source,
                        row=int(rows.iloc[min(slot, len(rows) - 1)]), column="CMT")
    obs_cmt = np.where(data.obs_cmt == 0, model.central_cmt, data.obs_cmt)
    if (obs_cmt != model.central_cmt).any():
        i = int(np.flatnonzero(obs_cmt != model.central_cmt)[0])
        raise DataError(f"observation in CMT {int(obs_cmt[i])}, but model {model.name} observes "
                        f"CMT {model.central_cmt} (central)", source=data.source,
                        row=int(data.obs_row[i]), column="CMT")
    depot = (cmt == model.depot_cmt) if model.depot_cmt is not None else np.zeros_like(cmt, bool)
    if (depot & (data.dose_rate > 0) & data.dose_valid).any():
        subj = int(np.argwhere(depot & (data.dose_rate > 0))[0][0])
        raise DataError(f"infusion (RATE/DUR) into the depot (CMT {model.depot_cmt}) of model "
                        f"{model.name} is not supported; give infusions into CMT {model.central_cmt}",
                        source=data.source, row=data._first_row[subj], column="RATE")
    if dt is None:
        dt = data.obs_time[:, None] - data.dose_time[s]
    ss = getattr(data, "dose_ss", None)   # None: NMData built without steady-state columns
    return DoseEvents(dt=dt, amt=data.dose_amt[s], rate=data.dose_rate[s], depot=depot[s],
                      applies=data.dose_applies, time=data.obs_time,
                      ss=None if ss is None or not ss.any() else ss[s],
                      ii=None if ss is None or not ss.any() else data.dose_ii[s])


def evaluate(model: StructuralModel, params: dict, data, output: str | None = None):
    """Evaluate a structural model numerically at the data's observations.

    Parameters
    ----------
    model : StructuralModel
    params : dict of str -> float or array of shape (n_subjects,)
        Individual parameters (natural units).
    data : bayesnlme.data.NMData
    output : str, optional
        Per-subject (ODE) models: the output to return (default the first,
        e.g. ``"CP"``), or ``"all"`` for a dict of every output (one solve).

    Returns
    -------
    numpy.ndarray, shape (n_obs,), or dict of str -> numpy.ndarray
        Predictions (concentrations) at each observation.
    """
    import numpy as np
    import pytensor
    import pytensor.tensor as pt_

    if model.per_subject:
        by_sub = {k: pt_.as_tensor_variable(np.broadcast_to(np.asarray(v, float), (data.n_subjects,)).copy())
                  for k, v in params.items()}
        out = model.function(by_sub, data, model)
        if not isinstance(out, dict):
            out = {model.outputs[0]: out}
        if output == "all":
            names = list(out)
            return dict(zip(names, (np.asarray(v, dtype=float)
                                    for v in pytensor.function([], [out[n] for n in names])())))
        out = out[output or model.outputs[0]]
        return np.asarray(pytensor.function([], out)(), dtype=float)
    doses = dose_events(data, model)
    full = dict(params)
    by_obs = {k: np.broadcast_to(np.asarray(v, float), (data.n_subjects,))[data.obs_subject]
              for k, v in full.items()}
    out = model.function({k: pytensor.tensor.as_tensor_variable(v) for k, v in by_obs.items()}, doses)
    return np.asarray(pytensor.function([], out)(), dtype=float)
