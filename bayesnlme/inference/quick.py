"""Quick, approximate fits: posterior mode (MAP) with a Laplace approximation, and ADVI.

Both give draws from an approximation of the posterior in the same
:class:`arviz.InferenceData` layout as a NUTS fit (one chain), so
:class:`~bayesnlme.inference.fit.FitResult` works unchanged.  They are for fast model
iteration and NUTS start values; their intervals are approximations and they
have no convergence diagnostics (no R-hat).

The MAP is the joint mode over population parameters and the (non-centred)
ETAs, not the marginal mode NONMEM's FOCE finds: OMEGAs come out larger than
their posterior medians, and typical values of parameters with large IIV
(KA) shift by up to a posterior SD.  Use it for iteration and start values; NUTS's start from it
(:func:`nuts_start`) takes the mode's ETAs with OMEGAs at their spread.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pymc as pm
import pytensor

from bayesnlme.errors import SamplingError, StartPointError
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


def nuts_start(built, mode: dict, compiled=None) -> dict:
    """The NUTS start for ``init="map"``: the mode's values, with each estimated OMEGA set to the spread
    of the mode's ETAs and their standard-normal ``eta_z`` rescaled to the same ETAs.

    The joint mode over OMEGAs and non-centred ETAs (``ETA = eta_z * OMEGA``, ``eta_z ~ N(0, 1)``) trades
    ``eta_z`` for OMEGA: the same ETAs with a larger OMEGA cost the prior of ``eta_z`` less, so the
    mode's OMEGAs are inflated where the data say little of each subject (phenobarbital, 1-3 levels per
    neonate: OMEGA_CL 1.30 at the mode against a posterior median of 0.18, with ``eta_z`` of root mean
    square 0.31), and NUTS chains started there stay in that corner (R-hat 2.2 after 300 + 300 draws).
    Here the ETAs (hence IPRED) are the mode's; each OMEGA is their root mean square (an OMEGA block:
    the Cholesky factor of their second moments; IOV: the KAPPAs'), ``eta_z = ETA / OMEGA``, so the
    ``eta_z`` have unit spread, as their prior says (the same data: R-hat <= 1.03 at three seeds).
    Parameters without such a free OMEGA, and the population parameterisation (whose coordinates are
    the ETAs' mean and spread), keep the mode's values; so does the whole start if the log-density is
    not finite at the rescaled one.

    Parameters
    ----------
    built : BuiltModel
    mode : dict
        :func:`find_map`'s values (free variables and deterministics, natural scale).
    compiled : CompiledPyMCModel, optional
        :func:`compiled_model` of ``built`` (the rescaled start is checked with it).

    Returns
    -------
    dict
        Start values by free-variable name (the keys of ``built.initial_point``).
    """
    start = {k: np.array(mode[k], dtype=float) for k in built.initial_point}
    spec = built.spec
    names = list(spec.eta_parameters)
    eta = np.asarray(mode.get("ETA", np.zeros((0, len(names)))), dtype=float)
    z_names = [p for p in names if not spec.parameters[p].centered]
    changed = False
    if "eta_z" in start and eta.size:
        for p in z_names:   # diagonal elements
            if f"omega_{p}" in start:
                changed |= _rescale(start, "eta_z", z_names.index(p), f"omega_{p}", eta[:, names.index(p)])
        for block in spec.omega_blocks:
            if f"chol_{'_'.join(block)}" in start and all(p in z_names for p in block):
                changed |= _rescale_block(start, [z_names.index(p) for p in block], f"chol_{'_'.join(block)}",
                                          eta[:, [names.index(p) for p in block]])
    for p in names:   # centred: eta_<P> ~ N(0, omega) sampled as is
        if spec.parameters[p].centered and f"eta_{p}" in start and f"omega_{p}" in start:
            changed |= _rescale(start, None, 0, f"omega_{p}", start[f"eta_{p}"])
    if "kappa_z" in start and "KAPPA" in mode:
        kappa = np.asarray(mode["KAPPA"], dtype=float)
        iov = [p for p, par in spec.parameters.items() if par.omega_iov is not None]
        for i, p in enumerate(iov):
            if f"omega_iov_{p}" in start:
                changed |= _rescale(start, "kappa_z", i, f"omega_iov_{p}", kappa[:, i])
    if not changed:
        return start
    compiled = compiled if compiled is not None else compiled_model(built)
    try:
        startpoint.check_start_compiled(built, compiled.logp_func, start)
    except StartPointError:
        return {k: np.array(mode[k], dtype=float) for k in built.initial_point}
    return start


def _rescale(start: dict, z_name: str | None, column: int, omega_name: str, effects: np.ndarray) -> bool:
    """OMEGA at the root mean square of ``effects``; the standard-normal column of ``z_name`` to match."""
    spread = float(np.sqrt(np.mean(np.square(effects))))
    if not np.isfinite(spread) or spread < 1e-6 or start[omega_name].ndim:
        return False
    start[omega_name] = np.array(spread)
    if z_name is not None:
        start[z_name][:, column] = effects / spread
    return True


def _rescale_block(start: dict, columns: list, chol_name: str, effects: np.ndarray) -> bool:
    """An OMEGA block's Cholesky factor from the ETAs' second moments; their ``eta_z`` to match."""
    k = len(columns)
    second = effects.T @ effects / len(effects)
    try:
        low = np.linalg.cholesky(second)
    except np.linalg.LinAlgError:
        return False
    if not np.isfinite(low).all() or np.diag(low).min() < 1e-6 or start[chol_name].shape != (k * (k + 1) // 2,):
        return False
    start[chol_name] = low[np.tril_indices(k)]   # PyMC packs the lower triangle row by row
    start["eta_z"][:, columns] = np.linalg.solve(low, effects.T).T
    return True


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
    keep = engines.kept_names(model)
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
