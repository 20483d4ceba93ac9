"""NUTS engines: nutpie, PyMC, and the JAX samplers numpyro and blackjax, on CPU or GPU.

Every engine samples the same PyMC model from the same start point and returns an
:class:`arviz.InferenceData` with the same ``posterior`` variables (free parameters and
deterministics on their natural scale) and the ``sample_stats`` the convergence checks read
(``diverging``, ``tree_depth``, ``maxdepth_reached``, ``n_steps``), so :class:`~bayesnlme.inference.fit.FitResult`,
``fit.nc`` and the summary do not depend on the engine.

=============  ==================================================================  ==========
engine         log-density compiled by                                             device
=============  ==================================================================  ==========
``nutpie``     numba (PyTensor's numba backend); Rust NUTS, one thread per chain   cpu
``pymc``       PyTensor's C backend; PyMC's NUTS in one process per chain          cpu
``numpyro``    JAX (PyTensor's JAX backend); numpyro NUTS, chains vectorised       cpu, gpu
``blackjax``   JAX; blackjax NUTS with window adaptation, chains vectorised        cpu, gpu
=============  ==================================================================  ==========

JAX engines keep their compiled programs in a persistent cache (``$BAYESNLME_CACHE_DIR/jax``,
default ``~/.cache/bayesnlme/jax``), so a second fit of the same model on data of the same shape,
in a new process, skips XLA compilation.  JAX is an optional dependency:
``pip install 'bayesnlme[jax]'`` (CPU) or ``pip install 'bayesnlme[jax]' 'jax[cuda12]'`` (NVIDIA GPU).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pymc as pm
from pymc.model.fgraph import fgraph_from_model, model_from_fgraph
from pytensor.graph.traversal import ancestors

from bayesnlme.build.random_effects import sampler_only
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.inference import nutpie_cache, startpoint
from bayesnlme.structural import ode_jax, static_form

SAMPLERS = ("nutpie", "pymc", "numpyro", "blackjax")
JAX_SAMPLERS = ("numpyro", "blackjax")
DEVICES = ("cpu", "gpu")


def check_engine(sampler: str, device: str) -> None:
    """Raise :class:`BayesNLMEInputError` naming what is wrong with an engine/device choice."""
    if sampler not in SAMPLERS:
        raise BayesNLMEInputError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if device not in DEVICES:
        raise BayesNLMEInputError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if sampler not in JAX_SAMPLERS:
        if device != "cpu":
            raise BayesNLMEInputError(f"sampler {sampler!r} runs on the CPU only; for --device {device} choose "
                                      f"one of the JAX samplers ({', '.join(JAX_SAMPLERS)})")
        return
    jax_device(device, sampler)


def jax_device(device: str, sampler: str = "numpyro"):
    """The first JAX device of a kind ('cpu' or 'gpu'), with the persistent compile cache switched on."""
    try:
        import jax
        __import__(sampler)
    except ImportError as exc:
        raise BayesNLMEInputError(
            f"sampler {sampler!r} needs JAX and {sampler} ({exc.name} is not installed): "
            f"pip install 'bayesnlme[jax]'") from exc
    _persistent_cache(jax)
    try:
        found = jax.devices(device)
    except RuntimeError:
        found = []
    if not found:
        kinds = sorted({d.platform for d in jax.devices()})
        raise BayesNLMEInputError(
            f"--device {device}: JAX sees no {device.upper()} (it has: {', '.join(kinds)}); on a machine with an "
            f"NVIDIA GPU install JAX's CUDA build (pip install 'jax[cuda12]'), or use --device cpu")
    return found[0]


def cache_dir() -> Path:
    """Root of bayesnlme's compile caches: ``$BAYESNLME_CACHE_DIR`` or ``~/.cache/bayesnlme``."""
    root = os.environ.get("BAYESNLME_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "bayesnlme"


def _persistent_cache(jax) -> None:
    path = cache_dir() / "jax"
    if jax.config.jax_compilation_cache_dir != str(path):
        path.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def jitter_names(model, flat=()) -> set[str]:
    """Free variables whose start is jittered per chain.

    Random effects and SDs start jittered (in the population parameterisation the ETAs' direction,
    mean and sum of squares, :mod:`bayesnlme.build.random_effects`); typical values at their prior
    medians (keeps oral models out of the flip-flop mode), except those whose gradient is exactly 0
    there (``flat``): nutpie scales its initial mass matrix by the gradient and cannot start from a
    zero component.
    """
    return {v.name for v in model.free_RVs if v.name in ("eta_z", "kappa_z", "eta_dir", "eta_w", "eta_ss")
            or v.name.startswith(("eta_wb_", "eta_u_")) or v.name in flat
            or v.name.startswith(("omega_", "sigma_"))}


def chain_starts(model, start: dict, jitter: set[str], chains: int, seed: int) -> list[dict]:
    """One start per chain on the natural scale: ``start``, jittered by U(-1, 1) on the unconstrained
    scale for the variables in ``jitter`` (PyMC's jitter), from a generator seeded by ``seed``."""
    rvs = {v for v in model.free_RVs if v.name in jitter}
    fn = startpoint.initial_point_fn(model, start, rvs, return_transformed=False)
    seeds = np.random.SeedSequence([seed, 7]).generate_state(chains)
    return [{name: np.asarray(value) for name, value in fn(int(s)).items()} for s in seeds]


def kept_names(model) -> list[str]:
    """The variables a fit's posterior keeps: the natural-scale free variables and the deterministics
    (whatever the engine; :func:`harmonise` drops nutpie's unconstrained ``*__`` copies)."""
    return [v.name for v in model.free_RVs + model.deterministics]


def compile_nutpie(model, start: dict, flat=(), built=None, compiled=None):
    """nutpie's compiled model: chains start at ``start``, :func:`jitter_names` jittered per chain, and the
    natural-scale free variables and deterministics kept (:func:`harmonise` drops nutpie's ``*__``).
    Its C callbacks come from PyTensor's numba cache when this model structure and data shape were
    compiled before (:mod:`bayesnlme.inference.nutpie_cache`).

    ``flat=None`` with ``built`` (the :class:`~bayesnlme.build.BuiltModel` of ``model``): the start is
    checked here with the compiled log-density callback itself
    (:func:`~bayesnlme.inference.startpoint.check_start_compiled`), which also gives ``flat``.
    ``compiled``: this function's result for ``model`` at another start (``init="map"``'s mode), restarted
    at ``start`` with the same callbacks.
    """
    import nutpie  # numba bindings: loaded only where a model is compiled

    keep = kept_names(model)

    def jittered(names):
        return {v for v in model.free_RVs if v.name in jitter_names(model, names)}

    if compiled is not None:
        if flat is None:
            flat = startpoint.check_start_compiled(built, compiled.logp_func, start)
        again = nutpie_cache.restarted(compiled, model, start, jittered(flat))
        if again is not None:
            return again
    if flat is None:
        compiled = nutpie_cache.compile_model(   # its C callbacks cached on disk
            model, start, None, keep, check=lambda logp: jittered(startpoint.check_start_compiled(built, logp, start)))
        if compiled is not None:
            return compiled
        flat = startpoint.check_start(built, start)
    compiled = nutpie_cache.compile_model(model, start, jittered(flat), keep)
    if compiled is None:
        compiled = nutpie.compile_pymc_model(model, initial_points=start, jitter_rvs=jittered(flat), var_names=keep)
    return compiled


def sample(model, start: dict, sampler: str, *, device: str = "cpu", chains: int, draws: int, tune: int,
           seed: int, progress: bool, target_accept: float = 0.8, flat=(), timings: dict | None = None,
           cores: int | None = None, built=None, compiled=None):
    """Draw from ``model`` with one engine; returns :class:`arviz.InferenceData` (posterior, sample_stats).

    ``timings``, when given, receives ``compile_s`` where the engine compiles apart from sampling
    (nutpie: the numba compilation; JAX engines compile inside the sampler).  ``cores``: chains run
    in parallel (nutpie, PyMC; default one per chain up to the CPU count; 1 when many fits run side
    by side).  The draws do not depend on it.  ``flat``: free variables with gradient 0 at the start
    (:func:`~bayesnlme.inference.startpoint.check_start`); ``None`` (nutpie only, with ``built``, the
    model's :class:`~bayesnlme.build.BuiltModel`): the start is checked with the compiled log-density.
    ``compiled`` (nutpie only): :func:`compile_nutpie`'s model of ``model`` at another start, reused.
    """
    t0 = time.perf_counter()
    if flat is None and sampler != "nutpie":
        raise ValueError("flat=None (the start checked by the compiled log-density) is for nutpie only")
    jitter = jitter_names(model, flat or ())
    keep = kept_names(model)
    cores = cores or min(chains, os.cpu_count() or 1)
    if sampler == "nutpie":
        import nutpie

        compiled = compile_nutpie(model, start, flat, built, compiled)
        if timings is not None:
            timings["compile_s"] = time.perf_counter() - t0
        idata = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, seed=seed,
                              progress_bar=progress, save_warmup=False, cores=cores)
    elif sampler == "pymc":
        with model:
            idata = pm.sample(draws=draws, tune=tune, chains=chains, random_seed=seed, initvals=start,
                              init="adapt_diag", progressbar=progress, target_accept=target_accept,
                              cores=cores, compute_convergence_checks=False)
    else:
        idata = _sample_jax(model, start, sampler, device, chains, draws, tune, seed, progress, target_accept,
                            jitter, keep)
    return harmonise(idata)


MAX_TREE_DEPTH = 10   # every engine's default


def harmonise(idata):
    """The same posterior variables and sampler statistics whatever the engine.

    ``posterior``: natural-scale parameters and deterministics (nutpie also returns the unconstrained
    ``*_log__`` copies: dropped; the population parameterisation's own coordinates,
    :data:`bayesnlme.build.random_effects.SAMPLER_ONLY`, are kept for the log-likelihood, and dropped by
    :func:`~bayesnlme.inference.fit.fit_model` after it).  ``sample_stats``
    always has ``diverging``, ``tree_depth`` (number of trajectory doublings), ``maxdepth_reached`` and
    ``n_steps`` (leapfrog steps).
    """
    post = idata.posterior
    idata.posterior = post.drop_vars([v for v in post.data_vars if str(v).endswith("__")])
    ss = idata.sample_stats
    if "tree_depth" not in ss and "depth" in ss:                      # nutpie
        ss["tree_depth"] = ss["depth"]
    if "maxdepth_reached" not in ss:
        if "reached_max_treedepth" in ss:                             # pymc
            ss["maxdepth_reached"] = ss["reached_max_treedepth"]
        elif "tree_depth" in ss:                                       # numpyro, blackjax
            ss["maxdepth_reached"] = ss["tree_depth"] >= MAX_TREE_DEPTH
    return idata


def without_sampler_coordinates(posterior):
    """``posterior`` without the population parameterisation's own coordinates
    (:data:`bayesnlme.build.random_effects.SAMPLER_ONLY`) and the dimensions only they used: the variables
    of the model whichever parameterisation was sampled."""
    out = posterior.drop_vars([v for v in posterior.data_vars if sampler_only(v)])
    used = {d for v in out.data_vars.values() for d in v.dims}
    return out.drop_vars([c for c in out.coords if c not in used and c in posterior.dims])


def _sample_jax(model, start, sampler, device, chains, draws, tune, seed, progress, target_accept, jitter, keep):
    from pymc.sampling.jax import sample_jax_nuts

    target = jax_device(device, sampler)
    ode_jax.register()
    starts = chain_starts(model, start, jitter, chains, seed)
    import jax

    with jax.default_device(target), ode_jax.on_device(device):
        return sample_jax_nuts(model=for_jax(model), draws=draws, tune=tune, chains=chains,
                               target_accept=target_accept, random_seed=seed, initvals=starts, jitter=False,
                               var_names=keep, progressbar=progress, chain_method="vectorized",
                               postprocessing_backend=device, compute_convergence_checks=False,
                               nuts_sampler=sampler)


def for_jax(model: pm.Model) -> pm.Model:
    """``model`` with static shapes throughout, for PyTensor's JAX backend.

    The closed-form oral models gather the flip-flop series over the records that need it, a set known
    only when the log density is evaluated (:func:`bayesnlme.structural.steady_state.scaled_exp_difference`);
    JAX cannot compile that.  Each such variable is replaced by its static-shape form (the same values and
    gradients), in a copy of the model with its variables in the same order (the same parameter layout,
    so the same draws for the same seed).  A model without one is returned as it is.
    """
    if not any(getattr(v.tag, "static_form", None) for v in ancestors(model.basic_RVs + model.deterministics)):
        return model
    fgraph, memo = fgraph_from_model(model)
    for var in [v for v in fgraph.variables if getattr(v.tag, "static_form", None)]:
        fgraph.replace(var, static_form(var, memo), import_missing=True)
    out = model_from_fgraph(fgraph, mutate_fgraph=True)
    for new, old in ((out.free_RVs, model.free_RVs), (out.observed_RVs, model.observed_RVs),
                     (out.deterministics, model.deterministics)):   # the model's order (a graph's is topological)
        order = {v.name: i for i, v in enumerate(old)}
        new.sort(key=lambda v: order[v.name])
    return out
