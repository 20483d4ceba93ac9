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

METHODS = ("nuts", "map", "advi")
APPROXIMATE = {"map": "MAP + Laplace approximation", "advi": "ADVI (mean-field)",
               "fullrank_advi": "ADVI (full-rank)"}


def find_map(built, *, progress: bool = False) -> dict:
    """Posterior mode from the builder's initial point.

    Returns
    -------
    dict
        Values of the free variables (constrained and transformed names) and deterministics.
    """
    with built.model:   # start values by variable name, constrained scale (as pm.sample initvals)
        return pm.find_MAP(start=dict(built.initial_point), progressbar=progress, include_transformed=True,
                           return_raw=False, seed=0)


def laplace_draws(built, mode: dict, draws: int, seed: int) -> tuple[az.InferenceData, list[str]]:
    """Draws from the Gaussian at the mode with covariance the inverse Hessian of -logp.

    The Gaussian lives on the unconstrained scale (log of positive parameters,
    ...), where the posterior is closest to normal; draws are transformed back.

    Returns
    -------
    idata : arviz.InferenceData
        Group ``posterior`` with one chain of ``draws`` draws.
    problems : list of str
        Plain-words notes (a Hessian that was not positive definite).
    """
    model = built.model
    value_vars = model.value_vars
    point = {v.name: np.asarray(mode[v.name], dtype=float) for v in value_vars}
    [logp], flat = pm.pytensorf.join_nonshared_inputs(point, [model.logp()], value_vars)
    # central differences of the exact gradient: one cheap compile, 2 * dim gradient calls
    # (pytensor's symbolic Hessian is a scan over gradients that compiles for minutes)
    grad = pytensor.function([flat], pytensor.grad(-logp, flat))
    x0 = np.concatenate([point[v.name].ravel() for v in value_vars])
    step = 1e-4 * np.maximum(1.0, np.abs(x0))
    h = np.empty((len(x0), len(x0)))
    for i in range(len(x0)):
        e = np.zeros_like(x0)
        e[i] = step[i]
        h[i] = (grad(x0 + e) - grad(x0 - e)) / (2 * step[i])
    h = (h + h.T) / 2
    w, u = np.linalg.eigh(h)
    problems = []
    if (w <= 0).any():
        problems.append(f"the Hessian at the mode has {int((w <= 0).sum())} non-positive eigenvalue(s): "
                        f"the mode is on a ridge or boundary; the Laplace intervals are unreliable")
        w = np.where(w <= 0, np.abs(w).max() * 1e-8 + 1e-8, w)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((draws, len(x0)))
    flat_draws = x0 + (z / np.sqrt(w)) @ u.T       # cov = U diag(1/w) U^T
    return _to_idata(model, value_vars, point, flat_draws), problems


def _to_idata(model, value_vars, point, flat_draws) -> az.InferenceData:
    outs = pm.util.get_default_varnames(model.unobserved_value_vars, include_transformed=False)
    fn = model.compile_fn(outs, inputs=value_vars, on_unused_input="ignore", point_fn=False)
    sizes = [point[v.name].size for v in value_vars]
    cuts = np.cumsum([0] + sizes)
    samples = {o.name: [] for o in outs}
    for row in flat_draws:
        args = [row[a:b].reshape(point[v.name].shape) for v, a, b in zip(value_vars, cuts[:-1], cuts[1:])]
        for o, val in zip(outs, fn(*args)):
            samples[o.name].append(val)
    posterior = {k: np.asarray(v)[None] for k, v in samples.items()}
    dims = {k: list(v) for k, v in model.named_vars_to_dims.items() if k in posterior}
    return az.from_dict(posterior=posterior, coords={k: list(v) for k, v in model.coords.items()}, dims=dims)


def advi_draws(built, *, draws: int, seed: int, method: str = "advi", n: int = 10000,
               progress: bool = False) -> tuple[az.InferenceData, list[str]]:
    """ADVI (mean-field or full-rank) started at the builder's initial point.

    Returns
    -------
    idata, problems : as :func:`laplace_draws`.
    """
    with built.model:
        approx = pm.fit(n=n, method=method, random_seed=seed, progressbar=progress,
                        start={k: v for k, v in built.initial_point.items()},
                        callbacks=[pm.callbacks.CheckParametersConvergence(tolerance=1e-3, diff="relative")])
        idata = approx.sample(draws, random_seed=seed, return_inferencedata=True)
    problems = []
    hist = np.asarray(approx.hist)
    if not np.isfinite(hist[-100:]).all():
        problems.append("the ADVI objective (ELBO) is not finite at the end of the optimisation")
    return idata, problems
