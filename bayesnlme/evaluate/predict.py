"""The posterior-evaluation engine: IPRED, PRED, residual SD, the per-record log-likelihood and draws.

Compiled functions of a fit are built and cached in one place, :func:`compiled_function` (one cache
per built model, keyed by what is computed), and posterior draws are thinned in one place,
:func:`thinned_draws`; simulation, residual diagnostics, the marginal likelihood, LOO, event times
and VPCs all evaluate through them.

All functions evaluate the builder's prediction graph (the same closed form
or user function that defined the likelihood) at posterior draws, vectorised
over draws with :func:`pytensor.graph.replace.vectorize_graph` and evaluated
in chunks so that memory stays bounded.

Definitions (all on the observation records of the fitted data):

* IPRED: the individual prediction, with the subject's own ETA;
* PRED: the population prediction, the typical subject (ETA = 0) with the
  subject's covariates and doses;
* RES_SD: the residual-error SD at the observation (log scale for
  exponential error);
* new-subject replicates: ETA drawn afresh from N(0, OMEGA) of the same
  posterior draw, residual error added -- the simulations behind NPDE.
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import xarray as xr
from pytensor.graph.replace import vectorize_graph

from bayesnlme.build import build_model
from bayesnlme.data import read_nonmem, record_columns
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.structural import static_shapes

_CHUNK = 500
#: Draws x records evaluated in one call at most (a large population: 100,000 records, 20 draws a call).
CELLS = 2_000_000
#: Simulation modes: new subjects (ETAs drawn from OMEGA) or the fitted subjects (their posterior ETAs).
MODES = ("new_subjects", "individual")
# A density's parameter checks (sigma > 0 ...) are removed, not turned into PyMC's -inf switch: after
# vectorize_graph that switch tests *all* stacked draws at once, so one draw with an invalid parameter
# (e.g. IPRED underflowing to 0 under proportional error at an extreme importance sample) made every
# draw's log-likelihood -inf.  Without the check an invalid draw gets its own NaN or -inf, which the
# consumers (subject_loglik, the likelihood) treat as -inf for that draw only.
EVAL_MODE = pytensor.compile.get_mode("FAST_RUN").including("local_remove_check_parameter")


def compiled_function(built, key, make) -> tuple[list, object]:
    """The one cache of a built model's compiled evaluation functions.

    Every module that evaluates a fit at posterior draws (predictions, simulation, residual
    diagnostics, the likelihood, LOO, event times) compiles through here, once per model and key.

    Parameters
    ----------
    built : BuiltModel
    key : hashable
        What is computed (e.g. the output names).
    make : callable
        ``make() -> list of tensors`` of the model's free random variables, called on a cache miss.

    Returns
    -------
    names : list of str
        The free random variables, in the order the function takes their stacked draws.
    function
        ``function(*draws) -> list of arrays``, each with a leading draw dimension.
    """
    def compile_():
        rvs = list(built.model.free_RVs)
        batched = [pt.tensor(name=rv.name, shape=(None, *rv.type.shape), dtype=rv.dtype) for rv in rvs]
        vec = vectorize_graph(static_shapes(make()), replace=dict(zip(rvs, batched)))
        return [rv.name for rv in rvs], pytensor.function(batched, vec, on_unused_input="ignore", mode=EVAL_MODE)
    return cached(built, key, compile_)


def cached(built, key, make):
    """What is compiled or derived once per built model (evaluation functions, the likelihood's
    objective, the random-effect layout), kept on the model: ``make()`` on the first call per key."""
    cache = built.__dict__.setdefault("_compiled_cache", {})
    if key not in cache:
        cache[key] = make()
    return cache[key]


def _compiled(built, outputs: tuple[str, ...]):
    """A function of stacked free-RV draws -> stacked builder outputs (leading dim = draw)."""
    return compiled_function(built, outputs, lambda: [output_tensor(built, o) for o in outputs])


def output_tensor(built, name: str):
    """A builder output by name: ``ipred``, ``pred``, ``residual_sd``, ``loglik`` (per-record log-likelihood),
    ``individual.<P>`` (per subject) or ``mixture.<name>`` (a ``[mixture]`` model's per-component tensors,
    :func:`bayesnlme.build.mixture.build_mixture`)."""
    if name.startswith("individual."):
        return built.individual[name.split(".", 1)[1]]
    if name.startswith("mixture."):
        return built.mixture[name.split(".", 1)[1]]
    return getattr(built, name)


def evaluate_draws(built, draws: dict, outputs=("ipred", "pred", "residual_sd")) -> dict:
    """Evaluate builder outputs at stacked draws of the free random variables.

    Parameters
    ----------
    built : bayesnlme.build.BuiltModel
    draws : dict of str -> numpy.ndarray
        Each free RV's values with a leading draw dimension (natural scale).
    outputs : tuple of str
        Attributes of ``built`` to evaluate.

    Returns
    -------
    dict of str -> numpy.ndarray, shape (n_draws, n_obs)
    """
    names, fn = _compiled(built, tuple(outputs))
    n = len(next(iter(draws.values())))
    step = draw_block(built)
    pieces = []
    for start in range(0, n, step):
        m = min(step, n - start)
        out = fn(*[np.asarray(draws[k][start:start + step]) for k in names])
        # an output that depends on no random variable (e.g. the unit SD of non-continuous records)
        # comes back without the draw dimension
        pieces.append([v if np.ndim(v) > output_tensor(built, o).ndim else np.broadcast_to(v, (m, *np.shape(v)))
                       for o, v in zip(outputs, out)])
    return {o: np.concatenate([p[i] for p in pieces]) for i, o in enumerate(outputs)}


def draw_block(built) -> int:
    """Draws evaluated in one call: 500, fewer where that would exceed :data:`CELLS` draw-records."""
    return max(1, min(_CHUNK, CELLS // max(built.data.n_obs, 1)))


def posterior_membership(built, draws: dict) -> np.ndarray:
    """A ``[mixture]`` model's posterior membership probabilities at each draw.

    ``P(component k | y_i, parameters, ETA_i) = w_ik p(y_i | k) / sum_l w_il p(y_i | l)``, from the
    builder's per-subject component log-likelihoods.

    Returns
    -------
    numpy.ndarray, shape (n_draws, n_subjects, K)
    """
    out = evaluate_draws(built, draws, ("mixture.log_weights", "mixture.subject_loglik"))
    log_post = out["mixture.log_weights"] + out["mixture.subject_loglik"]
    log_post -= log_post.max(axis=2, keepdims=True)
    prob = np.exp(log_post)
    return prob / prob.sum(axis=2, keepdims=True)


def simulation_outputs(built, draws: dict, outputs: tuple, rng: np.random.Generator,
                       membership: np.ndarray | None = None) -> dict:
    """:func:`evaluate_draws` for simulation: a ``[mixture]`` model's subjects get a component per draw.

    Without ``[mixture]`` this is :func:`evaluate_draws`.  With one, ``ipred`` and ``residual_sd`` are
    those of a component drawn for each subject at each draw: from the prior membership probabilities
    (``p_mix_k``, with the subject's covariate; new subjects) or from ``membership``, shape
    (n_draws, n_subjects, K) (e.g. :func:`posterior_membership` of the fitted subjects).  Other outputs
    are evaluated as they are (``pred`` averages the components; ``individual.<P>`` of the mixed
    parameter is that of the most probable component given the design's DV).
    """
    if built.mixture is None:
        return evaluate_draws(built, draws, outputs)
    rest = tuple(o for o in outputs if o not in ("ipred", "residual_sd"))
    out = evaluate_draws(built, draws, rest + ("mixture.ipred", "mixture.residual_sd", "mixture.log_weights"))
    prob = np.exp(out.pop("mixture.log_weights")) if membership is None else membership
    k = np.minimum((np.cumsum(prob, axis=2) < rng.random(prob.shape[:2])[..., None]).sum(axis=2),
                   prob.shape[2] - 1)[:, built.data.obs_subject]          # (n_draws, n_obs)
    for name in ("ipred", "residual_sd"):
        comp = out.pop(f"mixture.{name}")                                  # (n_draws, K, n_obs)
        if name in outputs:
            out[name] = np.take_along_axis(comp, k[:, None, :], axis=1)[:, 0]
    return out


def posterior_predictions(result) -> xr.Dataset:
    """IPRED, PRED and RES_SD at every posterior draw.

    Returns
    -------
    xarray.Dataset
        Variables ``IPRED``, ``PRED``, ``RES_SD`` with dims (chain, draw, obs),
        in the units of DV.
    """
    built = result.built
    post = result.idata.posterior
    names = [rv.name for rv in built.model.free_RVs]
    out = evaluate_draws(built, {n: result.posterior_draws(n) for n in names})
    shape = (post.sizes["chain"], post.sizes["draw"], -1)
    coords = {"chain": post["chain"].values, "draw": post["draw"].values, "obs": result.data.obs_row}
    return xr.Dataset({k.upper().replace("RESIDUAL_SD", "RES_SD"): (("chain", "draw", "obs"), v.reshape(shape))
                       for k, v in out.items()}, coords=coords)


def new_subject_draws(spec, draws: dict, rng: np.random.Generator, shapes: dict | None = None) -> dict:
    """Replace the fitted subjects' random effects by new subjects' in a dict of posterior draws.

    Non-centred ``eta_z`` and ``kappa_z`` become fresh standard normals (so
    ETA ~ N(0, OMEGA) and KAPPA ~ N(0, omega_iov^2) of each draw); a centred
    ``eta_<P>`` becomes ``omega_<P>`` of the same draw times a standard normal.

    Parameters
    ----------
    shapes : dict of str -> tuple, optional
        Per-draw shapes of the random effects in another design (e.g.
        ``BuiltModel.initial_point`` shapes of a model built on new data);
        default: the shapes in ``draws`` (the fitted subjects).
    """
    draws = dict(draws)
    n = len(next(iter(draws.values())))

    def shape(name):
        return draws[name].shape if shapes is None else (n, *np.shape(shapes[name]))

    for name in ("eta_z", "kappa_z"):
        if name in draws:
            draws[name] = rng.standard_normal(shape(name))
    for p, par in spec.parameters.items():
        if par.centered and f"eta_{p}" in draws:
            omega = draws[f"omega_{p}"] if f"omega_{p}" in draws else np.full(n, par.omega_fixed)
            draws[f"eta_{p}"] = np.asarray(omega)[:, None] * rng.standard_normal(shape(f"eta_{p}"))
    return draws


def require_single_residual(spec, what: str) -> None:
    """Raise a clear error where ``what`` is defined for one continuous residual model only.

    CWRES and NPDE (:func:`bayesnlme.evaluate.diagnostics.gof_table`) standardise a
    continuous ``spec.residual``; specs with ``[[observations]]`` (DVID types,
    non-continuous outcomes) have no such residual.  Censored (BLQ) records of
    a continuous model are handled (imputed NPDE).  The likelihood, LOO,
    simulation and VPC handle every observation model.
    """
    if getattr(spec, "observations", ()):
        raise BayesNLMEInputError(f"{what} standardise one continuous [residual] model; this spec has "
                                  f"[[observations]] (DVID types / non-continuous outcomes), whose records "
                                  f"have no single residual SD")


def residual_draw(spec, ipred: np.ndarray, sd: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Observations simulated around IPRED with the single ``[residual]`` model (log-normal for exponential).

    Specs with ``[[observations]]`` are simulated by type with
    :func:`bayesnlme.evaluate.outcomes.observation_draw` (as :func:`bayesnlme.evaluate.simulate.simulate` does).
    """
    if getattr(spec, "observations", ()):
        require_single_residual(spec, "predict.residual_draw (use bayesnlme.evaluate.simulate.simulate)")
    m = spec.observation_models()[0]
    return m.family.draw(m, np.asarray(ipred, float), np.asarray(sd, float), {}, rng)


def simulate_replicates(result, n_rep: int | None = None, *, new_subjects: bool = True,
                        seed: int = 0) -> np.ndarray:
    """Replicates of the observed data, one per (thinned) posterior draw.

    Parameters
    ----------
    n_rep : int, optional
        Number of replicates (posterior draws used, evenly thinned); default all.
    new_subjects : bool
        True: ETA drawn afresh from N(0, OMEGA) of each draw (new subjects with
        the same design and covariates, as for NPDE and VPC); False: each
        subject's own posterior ETA (individual predictive check).
    seed : int

    Returns
    -------
    numpy.ndarray, shape (n_rep, n_obs)
    """
    built = result.built
    rng = np.random.default_rng(seed)
    names = [rv.name for rv in built.model.free_RVs]
    draws = {n: result.posterior_draws(n) for n in names}
    total = len(next(iter(draws.values())))
    idx = np.arange(total) if n_rep is None else np.linspace(0, total - 1, n_rep).round().astype(int)
    draws = {k: v[idx] for k, v in draws.items()}
    if new_subjects:
        draws = new_subject_draws(result.spec, draws, rng)
    membership = None if new_subjects or built.mixture is None else posterior_membership(built, draws)
    out = simulation_outputs(built, draws, ("ipred", "residual_sd"), rng, membership)
    return residual_draw(result.spec, out["ipred"], out["residual_sd"], rng)


def predict_at_times(result, times, *, n_draws: int = 200):
    """IPRED (median and 90% band) and PRED of every fitted subject at chosen times.

    The subjects' own dose records and covariates are kept; the observation
    records are replaced by one record per subject and time, and the model is
    rebuilt on that design and evaluated at (thinned) posterior draws.

    Parameters
    ----------
    times : array-like
        Times (the data's time unit), e.g. a fine grid for smooth curves.
    n_draws : int
        Posterior draws used (evenly thinned).

    Returns
    -------
    pandas.DataFrame
        Columns ``ID, TIME, IPRED, IPRED_q5, IPRED_q95, PRED`` (PRED at the
        posterior median typical values, i.e. the median over draws).
    """
    import pandas as pd

    data = result.data
    frame = data.frame
    keep = frame[~frame["_OBS"] & ~((frame["EVID"] == 0) & (frame["MDV"] == 1))]
    times = np.asarray(sorted(set(np.asarray(times, float))))
    first = frame.groupby("_SUBJ", sort=True).first()
    grid = first.loc[np.repeat(first.index, len(times))].reset_index()
    grid["TIME"] = np.tile(times, len(first))
    grid[["EVID", "MDV", "AMT", "RATE", "DUR", "II", "ADDL", "SS", "CMT"]] = 0.0
    grid["DV"] = 1.0
    keep = keep.assign(_ORDER=0)
    grid = grid.assign(_ORDER=1)
    combined = pd.concat([keep, grid], ignore_index=True).sort_values(
        ["_SUBJ", "TIME", "_ORDER"], kind="stable")
    cols = record_columns(frame)
    design = read_nonmem(combined[cols].reset_index(drop=True), name=f"{data.source} (prediction grid)")
    built = build_model(result.spec, design, check_residual=False)
    names = [rv.name for rv in built.model.free_RVs]
    draws = {n: result.posterior_draws(n) for n in names}
    total = len(next(iter(draws.values())))
    idx = np.linspace(0, total - 1, min(n_draws, total)).round().astype(int)
    draws = {k: v[idx] for k, v in draws.items()}
    membership = None
    if built.mixture is not None:   # each fitted subject's most probable component at the draw (as its IPRED)
        prob = posterior_membership(result.built, draws)
        membership = (prob == prob.max(axis=2, keepdims=True)).astype(float)
    out = simulation_outputs(built, draws, ("ipred", "pred"), np.random.default_rng(0), membership)
    ids = np.array([str(i) for i in design.ids])
    return pd.DataFrame({
        "ID": ids[design.obs_subject], "TIME": design.obs_time,
        "IPRED": np.median(out["ipred"], 0), "IPRED_q5": np.quantile(out["ipred"], 0.05, 0),
        "IPRED_q95": np.quantile(out["ipred"], 0.95, 0), "PRED": np.median(out["pred"], 0)})


def thinned_draws(result, n_draws: int | None) -> tuple[np.ndarray, dict]:
    """Evenly thinned posterior draws of every free random variable.

    Returns
    -------
    idx : numpy.ndarray of int
        Draw indices (chains concatenated).
    draws : dict of str -> numpy.ndarray
        Each free RV's values at those draws (leading dimension = draw).
    """
    names = [rv.name for rv in result.built.model.free_RVs]
    draws = {n: result.posterior_draws(n) for n in names}
    total = len(next(iter(draws.values())))
    if n_draws is not None and n_draws < 1:
        raise BayesNLMEInputError(f"number of posterior draws must be at least 1, got {n_draws}")
    idx = np.arange(total) if n_draws is None or n_draws >= total else \
        np.linspace(0, total - 1, n_draws).round().astype(int)
    return idx, {k: v[idx] for k, v in draws.items()}
