"""Simulated event times of a time-to-event fit (the simulations behind a Kaplan--Meier VPC).

The hazard is ``h(t) = h0(t) exp(f(t))`` (:mod:`bayesnlme.spec.observation`): ``h0``
exponential (``lambda``), Weibull (``lambda``, ``shape``) or Gompertz, ``f`` the
structural output the ``tte`` observation model observes (a log hazard ratio).
Each simulated subject draws ``E = -log(U)`` and has its event where the
cumulative hazard reaches ``E``; it is censored at its end of follow-up
(:func:`simulate_event_times`).
"""

from __future__ import annotations

import hashlib

import numpy as np

from bayesnlme.errors import BayesNLMEInputError, DataError
from bayesnlme.evaluate.predict import MODES, compiled_function, evaluate_draws, new_subject_draws, thinned_draws
from bayesnlme.structural.pd import time_varying

_CELLS = 20_000_000   # array elements per vectorised block (bounds memory)


def _tte_model(spec, dvid=None):
    """The spec's ``tte`` observation model (the one with ``dvid`` when there are several)."""
    tte = [m for m in spec.observation_models() if m.family.event_time and (dvid is None or m.dvid == dvid)]
    if len(tte) != 1:
        which = f"{len(tte)} of them; pass dvid=..." if tte else "none" + (f" with DVID {dvid}" if dvid else "")
        raise BayesNLMEInputError(f"event-time simulation needs one likelihood = \"tte\" observation model "
                                  f"in the spec ({which})")
    return tte[0]


def tte_observed(result, *, dvid=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fitted data's time-to-event records, one per subject.

    Returns
    -------
    time : numpy.ndarray, shape (n_sub,)
        Event or censoring TIME (time units).
    event : numpy.ndarray of int, shape (n_sub,)
        DV: 1 event, 0 right-censored.
    index : numpy.ndarray of int, shape (n_sub,)
        The records' positions among the observation records (``obs`` dimension).

    Raises
    ------
    DataError
        A subject has more than one TTE record.
    """
    spec, data = result.built.spec, result.data
    m = _tte_model(spec, dvid)
    models = spec.observation_models()
    idx = (np.flatnonzero(data.obs_dvid == m.dvid) if (len(models) > 1 or m.dvid is not None)
           else np.arange(data.n_obs))
    seen = np.zeros(data.n_subjects, int)
    np.add.at(seen, data.obs_subject[idx], 1)
    if (seen[data.obs_subject[idx]] > 1).any():
        j = int(np.flatnonzero(seen[data.obs_subject[idx]] > 1)[1])   # the subject's second record
        raise DataError("event-time simulation needs one time-to-event record per subject (first event or "
                        "censoring); this subject has several", source=data.source,
                        row=int(data.obs_row[idx[j]]), column="ID")
    return data.obs_time[idx].astype(float), data.obs_dv[idx].astype(int), idx


def _h0(hazard, t, lam, shape):
    """Cumulative baseline hazard ``H0(t)`` (dimensionless)."""
    if hazard == "exponential":
        return lam * t
    if hazard == "weibull":
        return (lam * t) ** shape
    st = shape * t
    safe = np.where(np.abs(st) < 1e-8, 1.0, st)
    return lam * t * np.where(np.abs(st) < 1e-8, 1.0 + st / 2, np.expm1(st) / safe)


def _h0_inverse(hazard, h, lam, shape):
    """``t`` with ``H0(t) = h`` (inf where a Gompertz hazard with shape < 0 never reaches ``h``)."""
    if hazard == "exponential":
        return h / lam
    if hazard == "weibull":
        return h ** (1.0 / shape) / lam
    arg = shape * h / lam
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(np.abs(arg) < 1e-10, h / lam, np.log1p(arg) / np.where(shape == 0, 1.0, shape))
    return np.where(arg <= -1.0, np.inf, t)


def _obs_parameter(m, base: str, draws: dict, n: int) -> np.ndarray:
    """``lambda``/``shape`` of each draw (a fixed prior's value when not estimated), shape (n, 1)."""
    name = base + m.suffix
    if name in draws:
        return np.asarray(draws[name], float).reshape(n, 1)
    prior = m.priors.get(base)
    if prior is None:
        return np.ones((n, 1))
    return np.full((n, 1), float(prior.args["value"]) if prior.is_fixed else prior.median())


def _effect_on_grid(built, m, idx, grid_t):
    """A function of draws -> ``f(t)`` at per-subject grid times ``grid_t`` (n_sub, G), and its draw chunk size.

    The returned function maps a dict of stacked free-RV draws to an array
    (n_draws, n_sub, G); the chunk size bounds the (draws, records, G, doses)
    arrays the closed-form PK builds.
    """
    data, st = built.data, built.spec.structural
    tq = np.zeros((data.n_obs, grid_t.shape[1]))
    tq[idx] = grid_t
    key = ("output_on_grid", m.output, hashlib.sha256(tq.tobytes()).hexdigest())
    names, fn = compiled_function(built, key, lambda: [st.function(built.individual, data, st, times=tq)[m.output]])
    step = max(1, _CELLS // max(1, tq.size * max(1, data.dose_time.shape[1])))
    return (lambda draws: fn(*[np.asarray(draws[n]) for n in names])[0][:, idx]), step


def _invert_on_grid(hazard, grid_t, f, e, lam, shape):
    """Event times where the cumulative hazard on the grid reaches ``e``; inf where it does not.

    ``H`` is integrated with the baseline's exact increments times the mean of
    ``exp(f)`` at the two ends of each interval (exact for constant ``f``, and
    finite for a Weibull hazard with shape < 1 at t = 0).
    """
    h0 = _h0(hazard, grid_t[None], lam[..., None], shape[..., None])          # (R, S, G)
    ef = np.exp(f)
    mean_ef = (ef[..., 1:] + ef[..., :-1]) / 2
    cum = np.concatenate([np.zeros(h0.shape[:-1] + (1,)), np.cumsum(np.diff(h0, axis=-1) * mean_ef, -1)], -1)
    j = np.clip((cum < e[..., None]).sum(-1), 1, grid_t.shape[1] - 1)         # interval (j-1, j] reaching e
    take = lambda a, k: np.take_along_axis(a, k[..., None], -1)[..., 0]     # noqa: E731
    target = take(h0, j - 1) + (e - take(cum, j - 1)) / take(mean_ef, j - 1)
    t = _h0_inverse(hazard, target, lam, shape)
    t_grid = np.broadcast_to(grid_t[None], h0.shape)
    t = np.clip(t, take(t_grid, j - 1), take(t_grid, j))
    return np.where(cum[..., -1] >= e, t, np.inf)


def simulate_event_times(result, *, n_draws: int = 200, seed: int = 0, mode: str = "new_subjects",
                         t_max: float | None = None, grid: int = 400,
                         dvid=None) -> tuple[np.ndarray, np.ndarray]:
    """Simulated event times of the fitted subjects' design, one study per posterior draw.

    The hazard is ``h(t) = h0(t) exp(f(t))`` (:mod:`bayesnlme.spec.observation`).
    For each subject and draw, ``E = -log(U)`` with ``U ~ Uniform(0, 1)``, and
    the event time solves ``H(T) = E``: exactly (``H0`` inverted in closed
    form) when ``f`` is constant in time, otherwise by integrating the hazard on
    ``grid`` points over the subject's follow-up (exact baseline increments
    times the trapezoid mean of ``exp(f)``, then interpolated within the
    interval).  Subjects are censored at their end of follow-up: their own
    censoring TIME if censored, ``t_max`` if they had an event.

    Parameters
    ----------
    result : FitResult
        A fit whose spec has one ``tte`` observation model.
    n_draws : int
        Replicates (posterior draws used, evenly thinned).
    seed : int
    mode : {"new_subjects", "individual"}
        ETA drawn afresh from N(0, OMEGA) of each draw, or each fitted
        subject's own posterior ETA (individual predictive check).
    t_max : float, optional
        End of the study (time units); default the last TTE TIME in the data.
        Follow-up never extends past it.
    grid : int
        Time points per subject for time-varying hazards.
    dvid : int, optional
        The TTE observation model's DVID when the spec has several.

    Returns
    -------
    sim_time : numpy.ndarray, shape (n_rep, n_sub)
        Event or censoring time (time units), subjects in the order of
        :func:`tte_observed`.
    sim_event : numpy.ndarray of int, shape (n_rep, n_sub)
        1 event, 0 censored at the end of follow-up.
    """
    if mode not in MODES:
        raise BayesNLMEInputError(f"simulation mode must be one of {', '.join(MODES)}, got {mode!r}")
    if grid < 2:
        raise BayesNLMEInputError(f"grid must have at least 2 time points, got {grid}")
    built = result.built
    m = _tte_model(built.spec, dvid)
    obs_time, obs_event, idx = tte_observed(result, dvid=dvid)
    end = float(obs_time.max()) if t_max is None else float(t_max)
    follow = np.minimum(np.where(obs_event == 1, end, obs_time), end)
    rng = np.random.default_rng(seed)
    _, draws = thinned_draws(result, n_draws)
    if mode == "new_subjects":
        draws = new_subject_draws(result.spec, draws, rng)
    n = len(next(iter(draws.values())))
    lam, shape = (_obs_parameter(m, b, draws, n) for b in ("lambda", "shape"))
    e = rng.exponential(size=(n, len(idx)))
    if time_varying(built.spec.structural):
        grid_t = follow[:, None] * np.linspace(0.0, 1.0, grid)[None, :]
        effect, step = _effect_on_grid(built, m, idx, grid_t)
        t = np.concatenate([   # chunks of draws bound the (draws, subjects, grid) arrays
            _invert_on_grid(m.hazard, grid_t, effect({k: v[s:s + step] for k, v in draws.items()}),
                            e[s:s + step], lam[s:s + step], shape[s:s + step]) for s in range(0, n, step)])
    else:
        f = evaluate_draws(built, draws, ("ipred",))["ipred"][:, idx]
        t = _h0_inverse(m.hazard, e * np.exp(-f), lam, shape)
    event = t <= follow[None, :]
    return np.where(event, t, follow[None, :]), event.astype(int)
