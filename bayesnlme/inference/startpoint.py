"""Check the log-density and its gradient at the sampler's start point; name the cause when not finite.

A sampler that starts where the log-density or its gradient is not finite
stops with a message about its own state (nutpie: "Could not initialize state
because of bad initial gradient"; PyMC: ``SamplingError``) that names nothing
in the user's data or spec.  :func:`check_start` evaluates both at the start
point before any compilation for sampling and, when either is not finite,
raises :class:`~bayesnlme.errors.StartPointError` with one line naming the
parameter, record or subject responsible.

The check compiles the model's per-variable log-densities, the gradient and
the predictions (IPRED and the residual SD) with PyTensor's Python linker
and only the cheap rewrites: about a second for a theophylline-sized model,
and no C or numba compilation of the graph (but an ODE model's integrator is
compiled here, in every process: 15 s for a Michaelis-Menten model).  Checks that need no
evaluation at all (a subject with observations and no dose) are data checks
in :mod:`bayesnlme.build`.

Before NUTS with nutpie, :func:`check_start_compiled` evaluates the sampler's own compiled function
instead (loaded from the cache on a second fit of the same structure), and runs :func:`check_start`
only when that is not finite, to name the cause.
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
from pymc.initial_point import convert_str_to_rv_dict, make_initial_point_expression
from pymc.logprob.utils import ParameterValueError
from pymc.pytensorf import compile as compile_pymc
from pymc.pytensorf import find_rng_nodes, replace_rng_nodes, reseed_rngs
from pymc.util import get_transformed_name
from pytensor.compile.mode import Mode

from bayesnlme.errors import StartPointError
from bayesnlme.inference.graph_cache import logp_factors

# One evaluation, so compiling dominates: no C/numba code and no graph rewrites at all (0.04 s instead
# of 0.5 s on theophylline).  Unrewritten, a parameter check (sigma > 0) raises where the sampler's graph
# gives -inf, and numerically unstabilised forms may overflow; either sends the check to the careful
# mode, whose rewrites match the sampler's, before anything is reported.
_FAST = Mode(linker="py", optimizer=None)
_CAREFUL = Mode(linker="py", optimizer="fast_compile").including("local_check_parameter_to_ninf_switch")
_RANDOM_EFFECTS = ("eta_z", "kappa_z")
_INITIAL = Mode(linker="py", optimizer="fast_compile")


def initial_point_fn(model, start: dict | None, jitter_rvs=(), *, return_transformed: bool = True):
    """``pymc.initial_point.make_initial_point_fn(model=model, overrides=start, jitter_rvs=jitter_rvs,
    return_transformed=return_transformed)``, compiled with PyTensor's Python linker.

    PyMC compiles it in ``FAST_COMPILE`` mode, whose virtual machine imports PyTensor's C linker and
    with it setuptools (~0.25 s in every process that samples); one evaluation per chain needs neither.
    The values are the same, bit for bit (the same transforms and the same generator draws).

    Returns
    -------
    callable
        ``fn(seed) -> dict``: the start of every free variable by name (its value variable's name
        when ``return_transformed``), jittered by U(-1, 1) for ``jitter_rvs`` from a generator seeded by
        ``seed``.
    """
    strategies = {**model.rvs_to_initial_values, **convert_str_to_rv_dict(model, start or {})}
    values = make_initial_point_expression(free_rvs=model.free_RVs, rvs_to_transforms=model.rvs_to_transforms,
                                           initval_strategies=strategies, jitter_rvs=set(jitter_rvs),
                                           default_strategy="support_point", return_transformed=return_transformed)
    func = compile_pymc(inputs=[], outputs=replace_rng_nodes(values), mode=_INITIAL)
    rngs = find_rng_nodes(func.maker.fgraph.outputs)
    names = [get_transformed_name(v.name, model.rvs_to_transforms[v])
             if return_transformed and model.rvs_to_transforms[v] is not None else v.name for v in model.free_RVs]

    def seeded(seed):
        reseed_rngs(rngs, seed)
        return dict(zip(names, func()))

    return seeded


def transformed_start(built, start: dict | None = None) -> dict:
    """The start point on the sampler's (unconstrained) scale, keyed by value-variable name."""
    return initial_point_fn(built.model, start if start is not None else built.initial_point)(0)


def check_start(built, start: dict | None = None) -> list[str]:
    """Raise :class:`StartPointError` when the log-density or its gradient is not finite at the start.

    Parameters
    ----------
    built : BuiltModel
    start : dict, optional
        Start values in natural units by variable name (default: the model's
        own start, prior medians and ETA = 0).

    Returns
    -------
    list of str
        Free variables with a gradient component 0 at the start (below 1e-8).  A
        sampler that scales its initial mass matrix by the gradient (nutpie)
        cannot start there; this happens where a parameter has no influence
        at the start (EC50 while EMAX starts at its prior median 0) and its
        own prior is flat at its median.  Start those elsewhere (jitter).

    Raises
    ------
    StartPointError
        One line naming the cause: a prior that excludes the start value, the
        record whose DV, prediction or residual SD makes the likelihood
        infinite, or the parameter whose gradient is not finite.
    """
    model = built.model
    point = transformed_start(built, start)
    values = [model.rvs_to_values[v] for v in model.free_RVs]
    factors = logp_factors(model)   # free, then observed variables, then potentials (the sampler's terms too)
    terms = factors[:len(model.free_RVs) + len(model.observed_RVs)]
    grads = pytensor.grad(sum(pt.as_tensor(f).sum() for f in factors), values)
    extra = [g for g in (built.ipred, built.residual_sd) if g is not None]
    extra = model.replace_rvs_by_values(extra) if extra else []
    args = [point[v.name] for v in values]
    out = None
    with np.errstate(all="ignore"):   # overflow is what the check reports, in words
        try:
            out = pytensor.function(values, terms + grads + extra, mode=_FAST, on_unused_input="ignore")(*args)
        except ParameterValueError:
            pass
        if out is None or not all(np.isfinite(x).all() for x in out[:len(terms) + len(grads)]):
            out = pytensor.function(values, terms + grads + extra, mode=_CAREFUL, on_unused_input="ignore")(*args)
    n_free = len(model.free_RVs)
    lp_free, lp_obs = out[:n_free], out[n_free:len(terms)]
    grad = out[len(terms):len(terms) + len(grads)]
    ipred = out[len(terms) + len(grads)] if built.ipred is not None else None
    sd = out[len(terms) + len(grads) + 1] if built.residual_sd is not None else None
    if all(np.isfinite(x).all() for x in out[:len(terms) + len(grads)]):
        # 'zero' up to round-off: the Python linker's exp/log round trip leaves ~1e-17 where the
        # sampler's compiled gradient is exactly 0 (a parameter the data do not inform, at its prior median)
        return [rv.name for rv, g in zip(model.free_RVs, grad) if (np.abs(np.asarray(g)) < 1e-8).any()]
    raise StartPointError(_cause(built, start if start is not None else built.initial_point, lp_free,
                                 lp_obs, grad, ipred, sd))


def check_start_compiled(built, logp_fn, start: dict | None = None) -> list[str]:
    """:func:`check_start` with the sampler's own compiled log-density + gradient.

    The sampler's function (``logp_fn``: the flat unconstrained point, free variables in
    ``model.free_RVs`` order -> the log-density and its gradient; nutpie's compiled callback, as
    :func:`bayesnlme.inference.nutpie_cache.compile_model` passes it) is compiled, or loaded from the
    cache, anyway; evaluating it at the start costs microseconds, where :func:`check_start` compiles
    a graph of its own (~0.5 s on theophylline; an ODE model's integrator in every process).  Only
    when it is not finite does :func:`check_start` run, to name the cause.

    Returns
    -------
    list of str
        Free variables with a gradient component 0 at the start (below 1e-8), as :func:`check_start`.

    Raises
    ------
    StartPointError
        As :func:`check_start`; where only the compiled function is not finite (its rewrites differ
        from the check's), the message names the parameters whose gradient is not finite.
    """
    model = built.model
    point = transformed_start(built, start)
    values = [model.rvs_to_values[v] for v in model.free_RVs]
    parts = [np.asarray(point[v.name], dtype="float64").ravel() for v in values]
    logp, grad = logp_fn(np.concatenate(parts))   # the callback reports a failure inside as NaN, never raises
    bounds = np.cumsum([0] + [p.size for p in parts])
    pieces = [np.asarray(grad)[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    if np.isfinite(logp) and np.isfinite(grad).all():
        return [rv.name for rv, g in zip(model.free_RVs, pieces) if (np.abs(g) < 1e-8).any()]
    check_start(built, start)   # names the cause, in the terms the user wrote
    bad = [rv.name for rv, g in zip(model.free_RVs, pieces) if not np.isfinite(g).all()]
    what = (f"its gradient with respect to {', '.join(bad)} is not finite" if bad and np.isfinite(logp)
            else f"the log-density is {float(logp):g}")
    raise StartPointError(f"the sampler's compiled log-density is not finite at the start point ({what}), "
                          f"although each term is finite when evaluated one by one: a numerical overflow in "
                          f"the compiled graph; check the doses' units and the priors' medians, or start "
                          f"elsewhere (init='map')")


def _cause(built, start, lp_free, lp_obs, grad, ipred, sd) -> str:
    model, data = built.model, built.data
    for rv, lp in zip(model.free_RVs, lp_free):
        if not np.isfinite(lp).all() and rv.name not in _RANDOM_EFFECTS:
            value = np.asarray(start.get(rv.name, np.nan), float)
            shown = f"{float(value):g}" if value.size == 1 else "its start values"
            return (f"the prior on {rv.name} gives log-density {float(np.min(lp)):g} at the start value "
                    f"{rv.name} = {shown}: the start lies outside the prior's support; check the prior's "
                    f"bounds and median")
    for rv, lp in zip(model.observed_RVs, lp_obs):
        lp = np.broadcast_to(np.asarray(lp, float), (data.n_obs,))
        bad = np.flatnonzero(~np.isfinite(lp))
        if bad.size:
            return _record_cause(built, bad, lp, ipred, sd)
    for rv, g in zip(model.free_RVs, grad):
        bad = ~np.isfinite(np.asarray(g))
        if bad.any():
            where = ""
            if rv.name in ("eta_z",) and np.ndim(g) == 2:
                subject = int(np.flatnonzero(bad.any(axis=1))[0])
                where = f" (ETA of subject {data.ids[subject]})"
                rows = np.flatnonzero(data.obs_subject == subject)
                if ipred is not None:
                    p = np.broadcast_to(np.asarray(ipred, float), (data.n_obs,))[rows]
                    where += (f"; its predictions at the start range from {np.nanmin(p):g} to {np.nanmax(p):g} "
                              f"(rows {int(data.obs_row[rows[0]])}-{int(data.obs_row[rows[-1]])})")
            return (f"the gradient of the log-density with respect to {rv.name}{where} is not finite at the "
                    f"start point, although the log-density is; the model is not differentiable there (a "
                    f"prediction at a kink or overflowing); check the records named, or start elsewhere "
                    f"(init='map')")
    return "the log-density is not finite at the start point"   # every term was finite: cannot happen


def _record_cause(built, bad, lp, ipred, sd) -> str:
    """One line for observation records whose log-likelihood is not finite at the start."""
    data = built.data
    i = int(bad[0])
    row, subject = int(data.obs_row[i]), int(data.obs_subject[i])
    more = f" ({bad.size} such records)" if bad.size > 1 else ""
    dv = float(data.obs_dv[i])
    at = f"row {row} (ID {data.ids[subject]})"
    p = None if ipred is None else float(np.broadcast_to(np.asarray(ipred, float), (data.n_obs,))[i])
    s = None if sd is None else float(np.broadcast_to(np.asarray(sd, float), (data.n_obs,))[i])
    if not np.isfinite(dv):
        return f"{at}: DV {dv:g} is not a finite number{more}"
    if p is not None and not np.isfinite(p):
        return (f"{at}: the prediction (IPRED) is {p:g} at the start point{more}; the structural model "
                f"overflows with the start parameters: check the dose amounts and units, and the priors' "
                f"medians")
    if s is not None and not np.isfinite(s):
        return (f"{at}: the residual SD is {s:g} at the start point (IPRED {p:g}){more}: the prediction is so "
                f"large that its error overflows; check the dose amounts (AMT) and units, and the priors' "
                f"medians")
    if s is not None and s <= 0:
        return (f"{at}: the residual SD is {s:g} at the start point (IPRED {p:g}){more}, so DV {dv:g} has "
                f"zero likelihood; use a combined (additive + proportional) error model or exclude the "
                f"record (MDV=1)")
    with np.errstate(over="ignore"):
        residual = np.square((np.float64(dv) - p) / (s if s is not None else 1.0)) if p is not None else 0.0
    if not np.isfinite(residual) or abs(dv) > 1e100:
        sd_text = "" if s is None else f", SD {s:g}"
        return f"{at}: DV {dv:g} gives an infinite residual (IPRED {p:g}{sd_text}){more}; check the DV units"
    pred = "" if p is None else f", IPRED {p:g}"
    return (f"{at}: log-likelihood {float(lp[i]):g} at the start point (DV {dv:g}{pred}){more}; the record "
            f"is impossible under the model at the start (e.g. a DV outside the observation model's support)")
