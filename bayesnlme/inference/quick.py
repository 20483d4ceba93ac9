"""Quick, approximate fits: posterior mode (MAP) with a Laplace approximation, and ADVI.

Both give draws from an approximation of the posterior in the same
:class:`arviz.InferenceData` layout as a NUTS fit (one chain), so
:class:`~bayesnlme.inference.fit.FitResult` works unchanged.  They are for fast model
iteration and NUTS start values; their intervals are approximations and they
have no convergence diagnostics (no R-hat).

The MAP is the joint mode over population parameters and the (non-centred)
ETAs, not the marginal mode NONMEM's FOCE finds: OMEGAs come out larger than
their posterior medians, and typical values of parameters with large IIV
(KA) shift by up to a posterior SD.  Use it for iteration and start values.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pymc as pm
import pytensor

from bayesnlme.errors import SamplingError
from bayesnlme.inference import engines, startpoint

METHODS = ("nuts", "map", "advi")
# ADVI's step and sampling functions compile with numba (pm.fit's own compiles, in this mode): the same
# draws as the C backend, and its nodes' numba functions are cached with the sampler's
ADVI_MODE = "NUMBA"
APPROXIMATE = {"map": "MAP + Laplace approximation", "advi": "ADVI (mean-field)",
               "fullrank_advi": "ADVI (full-rank)"}


def compiled_model(built):
    """The compiled model NUTS samples for ``built.model`` (nutpie's, :func:`engines.compile_nutpie`): its
    log-density + gradient and its expansion to every variable as numba callbacks, loaded from the cache
    when this model structure and data shape were compiled before; the start is checked with them.

    The mode and the Laplace draws use it, not PyTensor's C backend: one compiled function for a MAP fit,
    for ``init="map"`` and the NUTS run after it, cached across processes.
    """
    return engines.compile_nutpie(built.model, dict(built.initial_point), None, built)


def find_map(built, *, progress: bool = False, compiled=None) -> dict:
    """Posterior mode from the builder's initial point (L-BFGS-B on the unconstrained scale, the compiled
    gradient; as :func:`pymc.find_MAP`).

    Parameters
    ----------
    built : BuiltModel
    progress : bool
        Unused (kept for callers; the optimisation takes well under a second).
    compiled : CompiledPyMCModel, optional
        :func:`compiled_model` of ``built``, where the caller has it.

    Returns
    -------
    dict
        Values of the free variables (constrained and transformed names) and deterministics.
    """
    from scipy.optimize import minimize

    compiled = compiled if compiled is not None else compiled_model(built)
    point = startpoint.transformed_start(built)
    names = compiled.shape_info[0][:len(built.model.free_RVs)]
    x0 = np.concatenate([np.asarray(point[n], dtype=float).ravel() for n in names])

    def cost(x):
        logp, grad = compiled.logp_func(x)
        if not np.isfinite(logp) or not np.isfinite(grad).all():
            return np.inf, np.zeros_like(x)   # the line search steps back
        return -logp, -grad

    found = minimize(cost, x0, jac=True, method="L-BFGS-B", options={"maxfun": 5000})
    return _expanded(compiled, found.x[None, :], squeeze=True)


def _expanded(compiled, flat_draws: np.ndarray, *, squeeze: bool = False) -> dict:
    """Every compiled variable (unconstrained values and the kept variables) at each flat point."""
    values = np.array([compiled.expand_func(row)[0] for row in flat_draws])
    out = {}
    for name, cut, shape in zip(*compiled.shape_info):
        v = values[:, cut].reshape(len(flat_draws), *shape)
        out[name] = v[0] if squeeze else v
    return out


def laplace_draws(built, mode: dict, draws: int, seed: int, *, compiled=None) -> tuple[az.InferenceData, list[str]]:
    """Draws from the Gaussian at the mode with covariance the inverse Hessian of -logp.

    The Gaussian lives on the unconstrained scale (log of positive parameters,
    ...), where the posterior is closest to normal; draws are transformed back.  The Hessian is central
    differences of the compiled gradient (2 x dim calls of microseconds each).

    Returns
    -------
    idata : arviz.InferenceData
        Group ``posterior`` with one chain of ``draws`` draws.
    problems : list of str
        Plain-words notes (a Hessian that was not positive definite).
    """
    compiled = compiled if compiled is not None else compiled_model(built)
    model = built.model
    names = compiled.shape_info[0][:len(model.free_RVs)]
    x0 = np.concatenate([np.asarray(mode[n], dtype=float).ravel() for n in names])
    step = 1e-4 * np.maximum(1.0, np.abs(x0))
    h = np.empty((len(x0), len(x0)))
    for i in range(len(x0)):
        e = np.zeros_like(x0)
        e[i] = step[i]
        h[i] = (compiled.logp_func(x0 - e)[1] - compiled.logp_func(x0 + e)[1]) / (2 * step[i])
    h = (h + h.T) / 2
    if not np.isfinite(h).all():
        raise SamplingError("the log-density's gradient is not finite next to the mode: no Laplace "
                            "approximation there; fit with NUTS (method='nuts')")
    w, u = np.linalg.eigh(h)
    problems = []
    if (w <= 0).any():
        problems.append(f"the Hessian at the mode has {int((w <= 0).sum())} non-positive eigenvalue(s): "
                        f"the mode is on a ridge or boundary; the Laplace intervals are unreliable")
        w = np.where(w <= 0, np.abs(w).max() * 1e-8 + 1e-8, w)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((draws, len(x0)))
    flat_draws = x0 + (z / np.sqrt(w)) @ u.T       # cov = U diag(1/w) U^T
    return _to_idata(model, _expanded(compiled, flat_draws)), problems


def _to_idata(model, values: dict) -> az.InferenceData:
    """One chain of the natural-scale free variables and deterministics (as a NUTS fit's posterior)."""
    keep = [v.name for v in model.free_RVs + model.deterministics]
    posterior = {k: values[k][None] for k in keep}
    dims = {k: list(v) for k, v in model.named_vars_to_dims.items() if k in posterior}
    return az.from_dict(posterior=posterior, coords={k: list(v) for k, v in model.coords.items()}, dims=dims)


def advi_draws(built, *, draws: int, seed: int, method: str = "advi", n: int = 10000,
               progress: bool = False) -> tuple[az.InferenceData, list[str]]:
    """ADVI (mean-field or full-rank) started at the builder's initial point.

    Returns
    -------
    idata, problems : as :func:`laplace_draws`.
    """
    with built.model, pytensor.config.change_flags(mode=ADVI_MODE):
        approx = pm.fit(n=n, method=method, random_seed=seed, progressbar=progress,
                        start={k: v for k, v in built.initial_point.items()},
                        callbacks=[pm.callbacks.CheckParametersConvergence(tolerance=1e-3, diff="relative")])
        idata = approx.sample(draws, random_seed=seed, return_inferencedata=True)
    problems = []
    hist = np.asarray(approx.hist)
    if not np.isfinite(hist[-100:]).all():
        problems.append("the ADVI objective (ELBO) is not finite at the end of the optimisation")
    return idata, problems
