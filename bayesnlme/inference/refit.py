"""Sample one model on one design again and again for new DV values, compiling it once.

Simulation-based calibration and replicate trial simulation fit the same model structure to data
sets that differ only in their DV values.  Compiling the log-density is most of a small fit's time
(a 12-subject one-compartment fit: ~8 s of numba compilation for ~2 s of sampling), and nutpie's
compiled function cannot be cached on disk.  :class:`Refitter` builds the model with DV in a data
container (``build_model(..., dv_data=True)``), compiles it for nutpie once, and samples it for each
new DV vector through nutpie's ``with_data``; :func:`refitter` keeps one per model, design and
settings in the process, so a Dask worker compiles a model once for all the tasks it runs.

With ``masked=True`` some records can also be left out of a fit (dropout in a replicate trial): a
data container ``DV_drop`` (1 = left out) switches those records' log-density off, so designs that
differ only in which records each subject kept share one compiled model too.

With ``censored=True`` the records below an LLOQ can differ between fits too (SBC with an LLOQ): a
data container ``DV_cens`` (1 = censored, DV = its limit, Beal's M3) chooses each record's density or
its probability below the limit (``build_model(..., cens_data=True)``), for normal-family observation
models with M3.

Models whose DV cannot be swapped (discrete or time-to-event observation models, censored records
without ``censored=True`` or outside its scope, ``[mixture]`` models with censored records) are fitted
from scratch each time with :func:`bayesnlme.inference.fit.fit_model` -- the same posterior, at the
full cost.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pandas as pd

from bayesnlme.build import build_model
from bayesnlme.data import NMData, read_nonmem
from bayesnlme.inference import engines
from bayesnlme.inference.fit import fit_model

_CACHE: OrderedDict = OrderedDict()
CACHE_SIZE = 4


class Refitter:
    """A model compiled for one design, sampled with nutpie for any DV vector of that design.

    Parameters
    ----------
    spec : ModelSpec
    design : NMData
        The design: doses, covariates and observation records (their DV is replaced at each fit).
    chains, draws, tune : int
    cores : int
        Threads nutpie uses for the chains (1 when many fits run side by side).
    masked : bool
        Compile with the ``DV_drop`` container, so :meth:`sample` can leave records out (``keep``).
    censored : bool
        Compile with the ``DV_cens`` container where the model allows it, so :meth:`sample` can
        censor records (``cens``) without compiling again.

    Examples
    --------
    >>> refit = Refitter(spec, design, chains=2, draws=500, tune=500)    # doctest: +SKIP
    >>> idata = refit.sample(dv, seed=3)                                  # doctest: +SKIP
    """

    def __init__(self, spec, design: NMData, *, chains: int = 2, draws: int = 500, tune: int = 500,
                 cores: int = 1, masked: bool = False, censored: bool = False):
        self.spec, self.design = spec, design
        self.chains, self.draws, self.tune, self.cores = chains, draws, tune, cores
        # the ETAs written as fit_model's NUTS samples them (bayesnlme.build.random_effects)
        built = build_model(spec, design, check_residual=False, dv_data=True, cens_data=censored,
                            eta_parameterisation="population")
        self.swappable = "DV_data" in built.model.named_vars
        self.censorable = "DV_cens" in built.model.named_vars
        self.masked = masked and self.swappable and "DV" in built.model.named_vars
        self.compiled = None
        if self.masked:
            _add_mask(built.model)
        if self.swappable:   # the compiled model fit_model's nutpie engine makes, so the draws are the same
            self.compiled = engines.compile_nutpie(built.model, built.initial_point, None, built)

    def sample(self, dv, seed: int, keep=None, cens=None):
        """Posterior draws (:class:`arviz.InferenceData`, groups posterior and sample_stats) given ``dv``.

        Parameters
        ----------
        dv : array of float, shape (n_obs,)
            DV of the design's observation records, in record order.
        seed : int
        keep : array of bool, shape (n_obs,), optional
            Records that enter the fit (default all); the others are left out, as if they were
            not in the data.  Without ``masked`` (or for a model whose DV cannot be swapped) the
            model is fitted from scratch to the kept records.
        cens : array of int, shape (n_obs,), optional
            1 where a record is censored below its DV (its LLOQ, M3), 0 elsewhere (default none).
            Without ``censored`` (or for a model whose CENS cannot be a container) records censored
            here make a fit from scratch.
        """
        import nutpie  # numba bindings: loaded only in processes that sample

        dv = np.asarray(dv, float)
        if dv.shape != (self.design.n_obs,):
            raise ValueError(f"dv has shape {dv.shape}; the design has {self.design.n_obs} observations")
        keep = None if keep is None else np.asarray(keep, bool)
        if keep is not None and keep.shape != dv.shape:
            raise ValueError(f"keep has shape {keep.shape}; the design has {self.design.n_obs} observations")
        cens = None if cens is None else np.asarray(cens)
        if cens is not None and (cens.shape != dv.shape or not np.isin(cens, (0, 1)).all()):
            raise ValueError(f"cens must be 0 or 1 for each of the design's {self.design.n_obs} observations")
        censoring = cens is not None and bool(cens.any())
        if (not self.swappable or (keep is not None and not keep.all() and not self.masked)
                or (censoring and not self.censorable)):
            frame = with_dv(self.design, dv, cens)
            if keep is not None:
                rows = np.ones(len(frame), bool)
                rows[np.flatnonzero(self.design.frame["_OBS"].to_numpy(bool))[~keep]] = False
                frame = frame[rows].reset_index(drop=True)
            return fit_model(self.spec, frame, chains=self.chains, draws=self.draws, tune=self.tune, seed=seed,
                             progress=False, log_likelihood="none").idata   # the draws are what is kept
        data = {"DV_data": dv}
        if self.masked:
            data["DV_drop"] = np.zeros(dv.shape) if keep is None else (~keep).astype(float)
        if self.censorable:
            data["DV_cens"] = np.zeros(dv.shape) if cens is None else cens.astype(float)
        compiled = self.compiled.with_data(**data)
        idata = nutpie.sample(compiled, draws=self.draws, tune=self.tune, chains=self.chains, seed=seed,
                              progress_bar=False, save_warmup=False, cores=self.cores)
        idata = engines.harmonise(idata)
        idata.posterior = engines.without_sampler_coordinates(idata.posterior)
        return idata


def _add_mask(model) -> None:
    """``DV_drop`` (1 = leave the record out) and a potential that takes those records' log-density back out."""
    import pymc as pm
    import pytensor.tensor as pt

    with model:
        drop = pm.Data("DV_drop", np.zeros(model["DV_data"].get_value().shape))
        lp = pm.logp(model["DV"], model["DV_data"])
        pm.Potential("DV_dropped", -pt.switch(drop > 0, lp, 0.0).sum())


def with_dv(design: NMData, dv, cens=None) -> pd.DataFrame:
    """The design's records with DV of the observation records set to ``dv`` (record order), and with
    ``cens`` (per observation record) their ``CENS`` column (0 on the other records)."""
    frame = design.records.copy()
    obs = design.frame["_OBS"].to_numpy(bool)
    frame.loc[obs, "DV"] = np.asarray(dv, float)
    if cens is not None:
        column = np.zeros(len(frame), int)
        column[np.flatnonzero(obs)] = np.asarray(cens, int)
        frame["CENS"] = column
    return frame


def refitter(spec, design, *, chains: int = 2, draws: int = 500, tune: int = 500, cores: int = 1,
             masked: bool = False, censored: bool = False) -> Refitter:
    """The process's :class:`Refitter` for this spec, design and settings (compiled on first use).

    Keeps the last few (``CACHE_SIZE``); the key is the spec (with its structural model's identity),
    the design's records and the settings.  (The compiled nutpie model is kept here, beside the
    process's cache of built models, :mod:`bayesnlme.build.cache`, because it is built with DV as
    data and is specific to the sampler settings.)
    """
    design = read_nonmem(design)
    key = (repr(spec.to_dict()), id(spec.structural), design.sha256, chains, draws, tune, cores, masked, censored)
    hit = _CACHE.get(key)
    if hit is not None and hit.spec.structural is spec.structural:   # a custom structural function is the model too
        _CACHE.move_to_end(key)
        return hit
    out = Refitter(spec, design, chains=chains, draws=draws, tune=tune, cores=cores, masked=masked,
                   censored=censored)
    _CACHE[key] = out
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return out
