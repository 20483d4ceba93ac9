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

Models whose DV cannot be swapped (``[[observations]]``, censored records) are fitted from scratch
each time with :func:`bayesnlme.inference.fit.fit_model` -- the same posterior, at the full cost.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pandas as pd

from bayesnlme.build import build_model
from bayesnlme.data import NMData, read_nonmem
from bayesnlme.inference import engines
from bayesnlme.inference.fit import fit_model
from bayesnlme.inference.startpoint import check_start

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

    Examples
    --------
    >>> refit = Refitter(spec, design, chains=2, draws=500, tune=500)    # doctest: +SKIP
    >>> idata = refit.sample(dv, seed=3)                                  # doctest: +SKIP
    """

    def __init__(self, spec, design: NMData, *, chains: int = 2, draws: int = 500, tune: int = 500,
                 cores: int = 1, masked: bool = False):
        self.spec, self.design = spec, design
        self.chains, self.draws, self.tune, self.cores = chains, draws, tune, cores
        built = build_model(spec, design, check_residual=False, dv_data=True)
        self.swappable = "DV_data" in built.model.named_vars
        self.masked = masked and self.swappable and "DV" in built.model.named_vars
        self.compiled = None
        if self.masked:
            _add_mask(built.model)
        if self.swappable:   # the compiled model fit_model's nutpie engine makes, so the draws are the same
            self.compiled = engines.compile_nutpie(built.model, built.initial_point, check_start(built))

    def sample(self, dv, seed: int, keep=None):
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
        """
        import nutpie  # numba bindings: loaded only in processes that sample

        dv = np.asarray(dv, float)
        if dv.shape != (self.design.n_obs,):
            raise ValueError(f"dv has shape {dv.shape}; the design has {self.design.n_obs} observations")
        keep = None if keep is None else np.asarray(keep, bool)
        if keep is not None and keep.shape != dv.shape:
            raise ValueError(f"keep has shape {keep.shape}; the design has {self.design.n_obs} observations")
        if not self.swappable or (keep is not None and not keep.all() and not self.masked):
            frame = with_dv(self.design, dv)
            if keep is not None:
                rows = np.ones(len(frame), bool)
                rows[np.flatnonzero(self.design.frame["_OBS"].to_numpy(bool))[~keep]] = False
                frame = frame[rows].reset_index(drop=True)
            return fit_model(self.spec, frame, chains=self.chains, draws=self.draws, tune=self.tune, seed=seed,
                             progress=False).idata
        data = {"DV_data": dv}
        if self.masked:
            data["DV_drop"] = np.zeros(dv.shape) if keep is None else (~keep).astype(float)
        compiled = self.compiled.with_data(**data)
        idata = nutpie.sample(compiled, draws=self.draws, tune=self.tune, chains=self.chains, seed=seed,
                              progress_bar=False, save_warmup=False, cores=self.cores)
        return engines.harmonise(idata)


def _add_mask(model) -> None:
    """``DV_drop`` (1 = leave the record out) and a potential that takes those records' log-density back out."""
    import pymc as pm
    import pytensor.tensor as pt

    with model:
        drop = pm.Data("DV_drop", np.zeros(model["DV_data"].get_value().shape))
        lp = pm.logp(model["DV"], model["DV_data"])
        pm.Potential("DV_dropped", -pt.switch(drop > 0, lp, 0.0).sum())


def with_dv(design: NMData, dv) -> pd.DataFrame:
    """The design's records with DV of the observation records set to ``dv`` (record order)."""
    frame = design.records.copy()
    obs = design.frame["_OBS"].to_numpy(bool)
    frame.loc[obs, "DV"] = np.asarray(dv, float)
    return frame


def refitter(spec, design, *, chains: int = 2, draws: int = 500, tune: int = 500, cores: int = 1,
             masked: bool = False) -> Refitter:
    """The process's :class:`Refitter` for this spec, design and settings (compiled on first use).

    Keeps the last few (``CACHE_SIZE``); the key is the spec (with its structural model's identity),
    the design's records and the settings.  (The compiled nutpie model is kept here, beside the
    process's cache of built models, :mod:`bayesnlme.build.cache`, because it is built with DV as
    data and is specific to the sampler settings.)
    """
    design = read_nonmem(design)
    key = (repr(spec.to_dict()), id(spec.structural), design.sha256, chains, draws, tune, cores, masked)
    hit = _CACHE.get(key)
    if hit is not None and hit.spec.structural is spec.structural:   # a custom structural function is the model too
        _CACHE.move_to_end(key)
        return hit
    out = Refitter(spec, design, chains=chains, draws=draws, tune=tune, cores=cores, masked=masked)
    _CACHE[key] = out
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return out
