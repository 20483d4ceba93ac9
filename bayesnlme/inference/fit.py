"""Sample an NLME model with NUTS and hold the result.

:func:`fit_model` builds the PyMC model, samples it with nutpie (default) or
PyMC's NUTS, adds the pointwise log-likelihood, checks convergence and returns
a :class:`FitResult`, which wraps an :class:`arviz.InferenceData`, knows its
spec and data, gives a pharmacometric :meth:`~FitResult.summary` and saves
to / loads from a single netCDF file.
"""

from __future__ import annotations

import datetime as _dt
import json
import warnings
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytensor
import xarray as xr

from bayesnlme.atomic import write_atomic
from bayesnlme.build import build_model
from bayesnlme.build.random_effects import PARAMETERISATIONS, uses_population
from bayesnlme.data import NMData, read_nonmem
from bayesnlme.errors import BayesNLMEInputError, ConvergenceWarning, SamplingError
from bayesnlme.inference import engines, lift, quick
from bayesnlme.inference.convergence import ESS_MIN, R_HAT_MAX, divergence_location, rank_rhat, without_arviz_numba
from bayesnlme.inference.engines import DEVICES, SAMPLERS  # noqa: F401  (re-exported)
from bayesnlme.inference.startpoint import check_start
from bayesnlme.spec import ModelSpec

FIT_METHODS = ("nuts", "map", "advi", "fullrank_advi")
#: What the ``log_likelihood`` group of a fit holds (``"auto"``: observations, or subjects above POINTWISE_MAX_BYTES).
LOG_LIKELIHOOD_LEVELS = ("auto", "observation", "subject", "none")
#: Largest pointwise log-likelihood ``"auto"`` keeps per observation (n_obs x chains x draws x 8 bytes).
POINTWISE_MAX_BYTES = 512 * 2**20
SUMMARY_COLUMNS = ["parameter", "mean", "sd", "q5", "q50", "q95", "r_hat", "ess_bulk", "ess_tail"]
_PACKAGES = ("bayesnlme", "pymc", "pytensor", "arviz", "nutpie", "numpy", "pandas", "xarray", "scipy", "jax",
             "numpyro", "blackjax")


def package_versions() -> dict:
    """Versions of bayesnlme and the packages its results depend on."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@dataclass
class FitResult:
    """A sampled NLME model.

    Attributes
    ----------
    idata : arviz.InferenceData
        Groups ``posterior``, ``sample_stats``, ``log_likelihood`` (variable
        ``DV``, dims chain, draw, obs; or chain, draw, ID when the fit kept it per
        subject; absent with ``log_likelihood="none"``), ``observed_data``,
        ``constant_data`` (``ID`` and ``TIME`` of each observation) and
        ``nonmem_data`` (the data records as read).
    spec : ModelSpec
        The spec bound to the data.
    data : NMData
    settings : dict
        Sampler, chains, draws, tune and seed.
    problems : list of str
        Convergence problems in plain words (empty when none was found).
    """
    idata: az.InferenceData
    spec: ModelSpec
    data: NMData
    settings: dict
    problems: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    @property
    def built(self):
        """The PyMC model of this fit (its ETAs in the subject parameterisation, whichever NUTS sampled): the
        one sampled, or, for a fit read from disk or sampled in the population parameterisation, built on
        first use (with the fit's covariate switches)."""
        if "_built" not in self.__dict__:
            self.__dict__["_built"] = build_model(self.spec, self.data, switches=self.settings.get("switches"))
        return self.__dict__["_built"]

    @property
    def method(self) -> str:
        """How the fit was made: ``"nuts"``, ``"map"`` (MAP + Laplace) or ``"advi"``/``"fullrank_advi"``."""
        return self.settings.get("method", "nuts")

    @property
    def approximate(self) -> bool:
        """True for MAP/Laplace and ADVI fits: approximate intervals, no convergence diagnostics."""
        return self.method != "nuts"

    # ------------------------------------------------------------------ tables
    def parameter_names(self) -> list[str]:
        """Population parameters in summary order: THETA, covariate effects, OMEGA, correlations, SIGMA."""
        return self.spec.population_parameter_names()

    def summary(self) -> pd.DataFrame:
        """Posterior summary of the population parameters.

        Returns
        -------
        pandas.DataFrame
            One row per parameter (index ``parameter``) with columns ``mean``,
            ``sd``, ``q5``, ``q50``, ``q95``, ``r_hat`` (rank-normalised split
            R-hat), ``ess_bulk``, ``ess_tail`` (all NaN for an approximate fit:
            see :attr:`approximate`) and ``cv_percent`` (for OMEGA of
            log-normal parameters: the posterior median of
            ``100 sqrt(exp(omega^2) - 1)``; for logit/normal IIV empty).
            Typical values are in the parameters' natural units; ``omega_<P>``
            is the SD of ETA on P.
        """
        names = self.parameter_names()
        post = self.idata.posterior
        draws = {n: post[n].values.reshape(post[n].shape[0], post[n].shape[1]) for n in names}
        if self.approximate:   # one chain from an approximation: R-hat/ESS would be meaningless
            diag = pd.DataFrame(np.nan, index=names, columns=["r_hat", "ess_bulk", "ess_tail"])
        else:
            with without_arviz_numba():
                diag = az.summary(self.idata, var_names=names, kind="diagnostics", round_to="none")
        rows = []
        for n in names:
            x = draws[n].ravel()
            q5, q50, q95 = np.quantile(x, [0.05, 0.5, 0.95])
            cv = np.nan
            par = n[10:] if n.startswith("omega_iov_") else n[6:]
            if n.startswith("omega_") and self.spec.parameters[par].iiv == "lognormal":
                cv = float(np.median(100 * np.sqrt(np.expm1(x ** 2))))
            rows.append({"parameter": n, "mean": x.mean(), "sd": x.std(ddof=1), "q5": q5, "q50": q50,
                         "q95": q95, "r_hat": diag.loc[n, "r_hat"], "ess_bulk": diag.loc[n, "ess_bulk"],
                         "ess_tail": diag.loc[n, "ess_tail"], "cv_percent": cv})
        return pd.DataFrame(rows).set_index("parameter")

    def switched_off_removed(self) -> "FitResult":
        """The fit as the model of its switched-on covariate effects (a fit made with ``switches``).

        The effects switched off (``fit_model(..., switches={"AGE_on_CL": 0})``) had no influence on the
        likelihood and their thetas were sampled from their priors: here they leave the spec and the
        posterior, so the saved fit is that of the model without them, and rebuilds as such.
        """
        off = {k for k, v in (self.settings.get("switches") or {}).items() if not v}
        if not off:
            return self
        gone = [e for e in self.spec.covariates if e.label in off]
        spec = replace(self.spec, covariates=tuple(e for e in self.spec.covariates if e not in gone))
        idata = self.idata.copy()
        idata.posterior = idata.posterior.drop_vars([n for e in gone for n in e.estimated_names()])
        settings = {**self.settings, "switches": {k: v for k, v in self.settings["switches"].items() if v}}
        metadata = {**self.metadata, "settings": settings}
        idata.posterior.attrs["bayesnlme_spec"] = json.dumps(spec.to_dict())
        out = FitResult(idata=idata, spec=spec, data=self.data, settings=settings, metadata=metadata)
        out.problems = list(self.problems) if self.approximate else convergence_problems(out)
        out.metadata["problems"] = out.problems
        idata.posterior.attrs["bayesnlme_metadata"] = json.dumps(out.metadata)
        return out

    def posterior_draws(self, name: str) -> np.ndarray:
        """All draws of a parameter, chains concatenated."""
        return self.idata.posterior[name].values.reshape(-1, *self.idata.posterior[name].shape[2:])

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        """Write the fit to one netCDF file, atomically.

        The file is written to a temporary name in the same folder and renamed
        over ``path`` only when complete, so an interrupted save never leaves a
        truncated file and never destroys an earlier good one.  Not compressed: ArviZ's default zlib made
        posterior draws (which do not compress) 8% smaller at 7x the writing time (theophylline 0.41 ->
        0.23 s; 10,000 subjects x 200 draws 7.4 -> 0.5 s) and 3-4x the reading time.
        """
        self.idata.posterior.attrs["bayesnlme_metadata"] = json.dumps(self.metadata)
        write_atomic(path, lambda tmp: self.idata.to_netcdf(tmp, compress=False))
        return Path(path)

    @classmethod
    def load(cls, path, *, structural=None) -> "FitResult":
        """Read a fit written by :meth:`save`.

        Parameters
        ----------
        structural : StructuralModel, optional
            Needed only when the fit used a user-written structural function
            (functions are not stored in the file).
        """
        path = Path(path)
        if not path.is_file():
            raise BayesNLMEInputError(f"{path}: no such fit file")
        try:
            idata = az.from_netcdf(path)
            attrs = dict(idata.posterior.attrs)
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise BayesNLMEInputError(f"{path}: not a readable fit file ({type(exc).__name__}: {exc})") from None
        if "bayesnlme_spec" not in attrs or "bayesnlme_metadata" not in attrs or "nonmem_data" not in idata.groups():
            raise BayesNLMEInputError(f"{path}: not a bayesnlme fit (no bayesnlme_spec/metadata or data)")
        meta = json.loads(attrs["bayesnlme_metadata"])
        spec = ModelSpec.from_dict(json.loads(attrs["bayesnlme_spec"]), structural=structural,
                                   source=str(path))
        frame = idata["nonmem_data"].to_dataframe().reset_index(drop=True)
        # the records are stored, not the file: keep the original file's SHA-256
        data = replace(read_nonmem(frame, name=meta["data_source"]), sha256=meta["data_sha256"])
        return cls(idata=idata, spec=spec.bind(data), data=data, settings=meta["settings"],
                   problems=meta.get("problems", []), metadata=meta)


# ---------------------------------------------------------------------- sampling


def fit_model(spec: ModelSpec, data, *, chains: int = 4, draws: int = 1000, tune: int = 1000,
              seed: int = 1, sampler: str = "nutpie", progress: bool = True,
              target_accept: float = 0.8, method: str = "nuts", init: str = "auto",
              device: str = "cpu", cores: int | None = None, switches: dict | None = None,
              log_likelihood: str = "auto", eta_parameterisation: str = "population") -> FitResult:
    """Fit an NLME model with NUTS, or approximately (MAP + Laplace, ADVI).

    Parameters
    ----------
    spec : ModelSpec
    data : NMData, path or pandas.DataFrame
    chains, draws, tune : int
        Number of chains, kept draws per chain and warm-up draws per chain.
    seed : int
        Random seed; the same data, spec, sampler and seed give the same draws.
    sampler : {"nutpie", "pymc", "numpyro", "blackjax"}
        NUTS engine (:mod:`bayesnlme.inference.engines`): nutpie (numba, the default), PyMC's
        own NUTS, or the JAX samplers numpyro and blackjax (``pip install 'bayesnlme[jax]'``).
    progress : bool
        Show a progress bar.
    target_accept : float
        NUTS target acceptance rate (PyMC sampler; nutpie adapts its own).
    method : {"nuts", "map", "advi", "fullrank_advi"}
        ``"map"``: posterior mode plus a Laplace approximation (Gaussian on the
        unconstrained scale, covariance = inverse Hessian of -log posterior);
        ``"advi"`` / ``"fullrank_advi"``: variational approximation.  Both give
        ``draws`` draws in one chain, with no R-hat or ESS (approximate fits).
    init : {"auto", "prior", "map"}
        NUTS start: prior medians (ETA = 0), or the posterior mode with each OMEGA at the spread of the
        mode's ETAs (the joint mode's OMEGAs are inflated where the data say little of each subject:
        :func:`bayesnlme.inference.quick.nuts_start`).  ``"auto"``: the posterior mode for a
        ``[mixture]`` spec (from the prior medians its chains settle in a wrong mode: a subject whose
        ETA lands in the other component's range early in warm-up stays there), the prior medians
        otherwise.
    device : {"cpu", "gpu"}
        Where a JAX engine runs; nutpie and PyMC run on the CPU only.
    cores : int, optional
        Chains sampled in parallel by nutpie or PyMC (default: one per chain up to the number of
        CPU cores; 1 when many fits share a machine, as on :mod:`bayesnlme.runner`'s workers).
        The draws are the same whatever its value.
    switches : dict, optional
        ``{"<COV>_on_<P>": 0 or 1}``: covariate effects of ``spec`` switched on or off by data containers
        (:func:`bayesnlme.build.build_model`), so that models differing only in their effects share one
        compiled log-density (:mod:`bayesnlme.covsearch`).  The result holds the whole spec, the
        switched-off effects' thetas drawn from their priors; :meth:`FitResult.switched_off_removed` is
        the fit of the model without them.
    log_likelihood : {"auto", "observation", "subject", "none"}
        What the ``log_likelihood`` group keeps for LOO/WAIC (:mod:`bayesnlme.evaluate.compare`): the
        log-likelihood of every observation at every draw (observation- and subject-level LOO), its sum
        per subject (subject-level LOO only, the default level of model comparison), or nothing.
        ``"auto"``: per observation up to :data:`POINTWISE_MAX_BYTES` (512 MiB: 16,000 observations
        at 4 x 1000 draws), per subject above (a population of 10,000 subjects with 10 samples each
        would otherwise hold 3.2 GB).  ``settings["log_likelihood"]`` records the level kept.
    eta_parameterisation : {"population", "subject"}
        How NUTS samples the ETAs (:mod:`bayesnlme.build.random_effects`): through each ETA's population
        mean and spread (the default: the same posterior, typical values and OMEGAs of data-rich
        populations mix several times faster), or each subject's ``eta_z`` directly.  Either way the
        posterior holds ``eta_z``, ``ETA`` and the other variables of the model.  ``"population"`` falls
        back to ``"subject"`` for ``[mixture]`` specs, models whose ETAs are all centred and populations
        of fewer than 8 subjects; ``settings["eta_parameterisation"]`` records the one used.

    Returns
    -------
    FitResult
    """
    engines.check_engine(sampler, device)
    if method not in FIT_METHODS:
        raise BayesNLMEInputError(f"unknown fit method {method!r}; choose one of {', '.join(FIT_METHODS)}")
    if init not in ("auto", "prior", "map"):
        raise BayesNLMEInputError(f"unknown init {init!r}; choose 'auto', 'prior' or 'map'")
    if log_likelihood not in LOG_LIKELIHOOD_LEVELS:
        raise BayesNLMEInputError(f"unknown log_likelihood {log_likelihood!r}; choose one of "
                                  f"{', '.join(LOG_LIKELIHOOD_LEVELS)}")
    if eta_parameterisation not in PARAMETERISATIONS:
        raise BayesNLMEInputError(f"unknown eta_parameterisation {eta_parameterisation!r}; choose one of "
                                  f"{', '.join(PARAMETERISATIONS)}")
    if init == "auto":
        init = "map" if getattr(spec, "mixture", None) is not None else "prior"
    for name, value, low in (("chains", chains, 1), ("draws", draws, 1), ("tune", tune, 0)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise BayesNLMEInputError(f"{name} must be an integer >= {low}, got {value!r}")
    data = read_nonmem(data)
    # what NUTS samples: the same model with the ETAs written through their population mean and spread
    parameterisation = "subject"
    if method == "nuts" and eta_parameterisation == "population" and uses_population(spec, data.n_subjects):
        parameterisation = "population"
    # DV in a data container where the model allows one: the graph the refitter compiles once and samples
    # for new DV (inference.refit), so that a refit and a fit of the same data give the same draws
    built = build_model(spec, data, dv_data=True, switches=switches, eta_parameterisation=parameterisation)
    model, start = built.model, built.initial_point
    settings = {"method": method, "sampler": sampler if method == "nuts" else method, "chains": chains,
                "device": device,
                "draws": draws, "tune": tune, "seed": seed}
    if method == "nuts":
        settings["eta_parameterisation"] = parameterisation
    if switches:
        settings["switches"] = {k: int(bool(v)) for k, v in switches.items()}
    problems = []
    # a non-finite start gets one line naming its cause, not a sampler backtrace; nutpie's start is checked
    # with its own compiled log-density (None here), which costs nothing more when loaded from the cache
    compiled_check = method == "nuts" and sampler == "nutpie"
    # the mode is found with the compiled model, which checks the start the same way (quick.compiled_model)
    by_mode = method == "map" or (method == "nuts" and init == "map")
    flat = None if compiled_check or by_mode else check_start(built)
    compiled = None   # init="map" with nutpie: the mode's compiled model samples
    if method != "nuts":
        idata, problems = _approximate(built, method, draws, seed, progress)
        settings.update(chains=1, tune=0)
    else:
        if init == "map":
            compiled = quick.compiled_model(built)
            # the mode's ETAs, with OMEGAs at their spread (the joint mode inflates them: quick.nuts_start)
            start = quick.nuts_start(built, quick.find_map(built, compiled=compiled), compiled)
            settings["init"] = "map"
            flat = None if compiled_check else check_start(built, start)
            compiled = compiled if sampler == "nutpie" else None
        idata = _nuts(model, start, sampler, chains, draws, tune, seed, progress, target_accept, flat, device, cores,
                      built, compiled)
    # numba, not C (the C backend first scans PyTensor's whole C module cache: seconds), design lifted
    settings["log_likelihood"] = level = _log_likelihood_level(log_likelihood, model, built.data, idata)
    if level != "none":
        subjects = None
        if level == "subject":
            codes, first = pd.factorize(built.data.obs_subject)   # subjects with observations, in order
            subjects = (codes, [str(built.data.ids[i]) for i in first])
        lift.add_log_likelihood(idata, model, built.loglik, subjects=subjects)
    # the population parameterisation's own coordinates, now that the log-likelihood is evaluated: the
    # posterior holds the model's variables (eta_z, ETA, typical values, OMEGAs ...) whichever was sampled
    idata.posterior = engines.without_sampler_coordinates(idata.posterior)
    _add_data_groups(idata, built.data)
    result = FitResult(idata=idata, spec=built.spec, data=built.data, settings=settings)
    if parameterisation == "subject":   # the graph that was sampled: predictions and diagnostics reuse it
        result.__dict__["_built"] = built
    result.problems = problems if method != "nuts" else convergence_problems(result)
    for p in result.problems:
        warnings.warn(p, ConvergenceWarning, stacklevel=2)
    result.metadata = {
        "data_source": data.source, "data_sha256": data.sha256, "settings": settings,
        "versions": package_versions(), "problems": result.problems,
        "numba_fastmath": bool(pytensor.config.numba__fastmath),   # False: draws reproducible bit for bit
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    idata.posterior.attrs["bayesnlme_spec"] = json.dumps(built.spec.to_dict())
    idata.posterior.attrs["bayesnlme_metadata"] = json.dumps(result.metadata)
    idata.posterior.attrs["data_sha256"] = data.sha256
    idata.posterior.attrs["seed"] = seed
    idata.posterior.attrs["fit_method"] = method
    return result


def _log_likelihood_level(requested: str, model, data: NMData, idata) -> str:
    """The level the fit's ``log_likelihood`` group keeps (see :func:`fit_model`)."""
    if requested == "subject" and [v.name for v in model.observed_RVs] != ["DV"]:
        raise BayesNLMEInputError("log_likelihood='subject' needs the model's one observed variable DV")
    if requested != "auto":
        return requested
    n_draws = idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"]
    big = data.n_obs * n_draws * 8 > POINTWISE_MAX_BYTES
    return "subject" if big and [v.name for v in model.observed_RVs] == ["DV"] else "observation"


def _nuts(model, start, sampler, chains, draws, tune, seed, progress, target_accept, flat=(), device="cpu",
          cores=None, built=None, compiled=None):
    try:
        return engines.sample(model, start, sampler, device=device, chains=chains, draws=draws, tune=tune,
                              seed=seed, progress=progress, target_accept=target_accept, flat=flat, cores=cores,
                              built=built, compiled=compiled)
    except (KeyboardInterrupt, MemoryError, BayesNLMEInputError):   # StartPointError too
        raise
    except Exception as exc:   # nutpie's Rust errors, PyMC's SamplingError: one line, what to try
        raise SamplingError(sampling_failure(exc, sampler)) from exc


def sampling_failure(exc: Exception, sampler: str) -> str:
    """One line for an exception raised inside the sampler: what happened and what to try."""
    text = " ".join(str(exc).split())
    first = text.split(" Stack backtrace")[0].split(" Caused by")[0][:300]
    if "initial" in text.lower() and ("gradient" in text.lower() or "point" in text.lower()):
        return (f"{sampler} could not start a chain ({first}): the model's start point passed the check, "
                f"so a chain's randomly jittered start did not; try another --seed, or start at the "
                f"posterior mode (--init map / init='map')")
    return (f"{sampler} stopped while sampling ({type(exc).__name__}: {first}); try another --seed, a "
            f"longer warm-up, or another sampler (--sampler {' / '.join(x for x in SAMPLERS if x != sampler)})")


def _approximate(built, method, draws, seed, progress):
    """Draws of an approximate fit (one chain) and its problems in plain words."""
    if method == "map":
        compiled = quick.compiled_model(built)   # once, for the mode and the Laplace step
        mode = quick.find_map(built, compiled=compiled)
        return quick.laplace_draws(built, mode, draws, seed, compiled=compiled)
    return quick.advi_draws(built, draws=draws, seed=seed, method=method, progress=progress)


def _add_data_groups(idata: az.InferenceData, data: NMData) -> None:
    if "constant_data" in idata.groups():   # an engine's copy of the data containers (DV_data): the fit's own below
        del idata.constant_data
    obs = {"obs": data.obs_row}
    ids = np.array([str(i) for i in data.ids])
    groups = {}
    if "observed_data" not in idata.groups():
        groups["observed_data"] = xr.Dataset({"DV": ("obs", data.obs_dv)}, coords=obs)
    groups["constant_data"] = xr.Dataset({"ID": ("obs", ids[data.obs_subject]), "TIME": ("obs", data.obs_time)},
                                         coords=obs)
    frame = data.records
    table = {}
    for c in frame.columns:
        col = frame[c]
        table[c] = ("record", col.to_numpy(float) if pd.api.types.is_numeric_dtype(col)
                    else col.astype(str).where(col.notna(), ".").to_numpy(dtype=str))
    groups["nonmem_data"] = xr.Dataset(table, coords={"record": data.frame["ROW"].to_numpy()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "nonmem_data" is not an ArviZ schema group
        idata.add_groups(groups)


# ---------------------------------------------------------------------- convergence


def convergence_problems(result: FitResult) -> list[str]:
    """Convergence problems of a fit, each in plain words.

    Checks divergent transitions, rank-normalised R-hat above 1.01 and bulk
    ESS below 400 for the population parameters (and the worst ETA), and
    chains that settled in different modes (for oral models, the flip-flop
    swap of KA and the elimination rate constant CL/V).
    """
    idata, out = result.idata, []
    n_chain = idata.posterior.sizes["chain"]
    div = int(idata.sample_stats["diverging"].sum()) if "diverging" in idata.sample_stats else 0
    if div:

        total = idata.sample_stats["diverging"].size
        out.append(f"{div} of {total} post-warm-up transitions diverged ({divergence_location(result)}): "
                   f"the posterior has regions the sampler cannot explore; treat the estimates with caution "
                   f"(reparameterise, tighten priors or simplify the random effects)")
    summ = result.summary()
    bad_rhat = summ[summ["r_hat"] > R_HAT_MAX]
    if len(bad_rhat) and n_chain > 1:
        worst = bad_rhat["r_hat"].idxmax()
        out.append(f"R-hat above {R_HAT_MAX} for {', '.join(bad_rhat.index)} (worst {worst}: "
                   f"{bad_rhat.loc[worst, 'r_hat']:.3f}): the chains have not mixed; run longer chains")
    if "ETA" in idata.posterior and n_chain > 1:
        eta = idata.posterior["ETA"]
        eta_rhat = xr.DataArray(rank_rhat(eta.values), dims=eta.dims[2:], coords={d: eta[d] for d in eta.dims[2:]})
        if float(eta_rhat.max()) > R_HAT_MAX:
            pos = np.unravel_index(int(np.argmax(eta_rhat.values)), eta_rhat.shape)
            out.append(f"R-hat {float(eta_rhat.max()):.3f} for ETA of {eta_rhat['eta_parameter'].values[pos[1]]} "
                       f"in ID {eta_rhat['ID'].values[pos[0]]}: individual estimates have not converged")
    low_ess = summ[summ["ess_bulk"] < ESS_MIN]
    if len(low_ess):
        worst = low_ess["ess_bulk"].idxmin()
        out.append(f"bulk ESS below {ESS_MIN} for {', '.join(low_ess.index)} (lowest {worst}: "
                   f"{low_ess.loc[worst, 'ess_bulk']:.0f}): too few effective draws for reliable "
                   f"90% intervals; run more draws")
    out += _mode_problems(result)
    return out


def _mode_problems(result: FitResult) -> list[str]:
    post = result.idata.posterior
    if post.sizes["chain"] < 2:
        return []
    out = []
    if {"KA", "CL", "V"} <= set(post.data_vars) and result.spec.structural.depot_cmt is not None:
        ka_above = (post["KA"] > post["CL"] / post["V"]).mean("draw").values
        if (ka_above > 0.5).any() and (ka_above < 0.5).any():
            flip = [str(c) for c, a in zip(post["chain"].values, ka_above) if a < 0.5]
            out.append(f"chains disagree on a mode: in chain(s) {', '.join(flip)} absorption is slower "
                       f"than elimination (KA < CL/V, the flip-flop mode) and in the others faster; the "
                       f"estimates mix two different solutions; give KA an informative prior or fix "
                       f"its relation to CL/V")
            return out
    for name in result.parameter_names():
        x = post[name].values.reshape(post.sizes["chain"], -1)
        med = np.median(x, axis=1)
        within = np.mean(np.std(x, axis=1))
        if within > 0 and (med.max() - med.min()) > 4 * within:
            lo, hi = int(np.argmin(med)), int(np.argmax(med))
            out.append(f"chains disagree on a mode for {name}: chain {post['chain'].values[lo]} is centred "
                       f"at {med[lo]:.4g} and chain {post['chain'].values[hi]} at {med[hi]:.4g}; the "
                       f"posterior is multimodal or some chains are stuck")
    return out
