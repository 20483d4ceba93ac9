"""The model specification: one validated object that describes an NLME model.

A :class:`ModelSpec` holds

* the structural model (a :mod:`bayesnlme.structural` library name or a
  :class:`~bayesnlme.structural.StructuralModel` wrapping a user function);
* one :class:`Parameter` per individual parameter: its typical value (THETA)
  with a prior in natural units, or a fixed value, and its inter-individual
  variability (ETA): log-normal (default), normal, logit-normal or none, with a
  prior on OMEGA expressed as the *standard deviation* of ETA;
* optional OMEGA blocks (correlated ETAs, LKJ prior on the correlations);
* :class:`CovariateEffect` entries (power, exponential, linear, categorical);
* a :class:`ResidualError` (additive, proportional, combined or exponential).

Individual parameters are ``P_i = TV(P) * prod(covariate factors) * exp(ETA_i)``
for log-normal IIV, ``TV(P) * factors + ETA_i`` for normal IIV, and
``expit(logit(TV(P)) + ETA_i)`` for logit-normal IIV.

Spec files are TOML (read with :mod:`tomllib`) with the same content; nothing in
them is ever evaluated as code.  Every mistake raises :class:`SpecError` naming
the parameter or key at fault.  See ``model_library/*.toml`` for examples.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import SpecError
from .structural import LIBRARY, StructuralModel

IIV_KINDS = ("lognormal", "normal", "logit", "none")
COVARIATE_KINDS = ("power", "exponential", "linear", "categorical", "piecewise")
RESIDUAL_KINDS = ("additive", "proportional", "combined", "exponential")
#: Allowed values of structural parameters the library knows: (lower, upper).
KNOWN_DOMAINS = {"CL": (0, math.inf), "V": (0, math.inf), "Q": (0, math.inf), "V2": (0, math.inf),
                 "Q3": (0, math.inf), "V3": (0, math.inf),
                 "KA": (0, math.inf), "F": (0, 1), "ALAG": (0, math.inf)}

# distribution name -> (required parameters, support function)
_DISTS = {
    "normal": (("mu", "sigma"), lambda p: (-math.inf, math.inf)),
    "lognormal": (("median", "sigma"), lambda p: (0.0, math.inf)),
    "halfnormal": (("sigma",), lambda p: (0.0, math.inf)),
    "halfcauchy": (("beta",), lambda p: (0.0, math.inf)),
    "halfstudentt": (("nu", "sigma"), lambda p: (0.0, math.inf)),
    "exponential": (("lam",), lambda p: (0.0, math.inf)),
    "uniform": (("lower", "upper"), lambda p: (p["lower"], p["upper"])),
    "truncatednormal": (("mu", "sigma", "lower", "upper"), lambda p: (p["lower"], p["upper"])),
    "beta": (("alpha", "beta"), lambda p: (0.0, 1.0)),
}
_POSITIVE_ARGS = {"sigma", "beta", "nu", "lam", "alpha", "median"}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


def _from_rse(dist: str, args: dict, where: str) -> dict:
    """An informative prior given as an earlier estimate with its relative standard error.

    ``lognormal(median=m, rse_percent=r)`` -> ``sigma = sqrt(log(1 + (r/100)^2))`` (the
    log-normal whose coefficient of variation is the RSE); ``normal(mu=m, rse_percent=r)``
    -> ``sigma = |m| r / 100``.
    """
    args = dict(args)
    rse = args.pop("rse_percent")
    if isinstance(rse, bool) or not isinstance(rse, (int, float)) or not 0 < rse < math.inf:
        raise SpecError(f"{where}: rse_percent must be a positive number, got {rse!r}")
    if "sigma" in args:
        raise SpecError(f"{where}: give either sigma or rse_percent, not both")
    if dist == "lognormal" and "median" in args:
        args["sigma"] = math.sqrt(math.log1p((rse / 100.0) ** 2))
    elif dist == "normal" and "mu" in args and args["mu"] != 0:
        args["sigma"] = abs(float(args["mu"])) * rse / 100.0
    else:
        raise SpecError(f"{where}: rse_percent works with lognormal(median) or normal(mu != 0) priors")
    return args


_OMEGA_SCALES = ("sd", "variance", "cv_percent")


def omega_sd(d: dict, where: str) -> tuple[float, float]:
    """Convert an OMEGA reported as SD, variance or CV% to the SD of ETA.

    Returns
    -------
    sd : float
        SD of ETA (log scale for log-normal parameters): ``sqrt(variance)``, or
        ``sqrt(log(1 + CV^2))`` for a CV% (exact for log-normal IIV).
    dlog : float
        d log(sd) / d log(reported value): 1 for SD, 1/2 for a variance,
        ``CV^2 / ((1 + CV^2) log(1 + CV^2))`` for a CV% -- used to turn a relative
        standard error of the reported value into one of the SD.
    """
    given = [k for k in _OMEGA_SCALES if k in d]
    if len(given) != 1:
        raise SpecError(f"{where}: give OMEGA as exactly one of sd, variance or cv_percent, got {sorted(d)}")
    k = given[0]
    v = d[k]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
        raise SpecError(f"{where}: {k} must be a positive number, got {v!r}")
    if k == "sd":
        return float(v), 1.0
    if k == "variance":
        return math.sqrt(v), 0.5
    cv2 = (v / 100.0) ** 2
    return math.sqrt(math.log1p(cv2)), cv2 / ((1 + cv2) * math.log1p(cv2))


def _omega_prior(d, where: str) -> "Prior":
    """The OMEGA prior: a distribution table, or an earlier estimate (sd/variance/cv_percent + rse_percent).

    An earlier estimate becomes a log-normal prior on the SD of ETA with median at the
    converted SD and log-scale sigma ``dlog * sqrt(log(1 + RSE^2))`` (exact for a
    variance: half the log-normal sigma of the variance).
    """
    if isinstance(d, dict) and "dist" not in d and any(k in d for k in _OMEGA_SCALES):
        _check_keys(d, _OMEGA_SCALES + ("rse_percent",), where)
        if "rse_percent" not in d:
            raise SpecError(f"{where}: an OMEGA estimate needs rse_percent to become a prior "
                            f"(or use omega_fixed to fix it)")
        sd, dlog = omega_sd(d, where)
        rse = d["rse_percent"]
        if isinstance(rse, bool) or not isinstance(rse, (int, float)) or not 0 < rse < math.inf:
            raise SpecError(f"{where}: rse_percent must be a positive number, got {rse!r}")
        return Prior("lognormal", {"median": sd, "sigma": dlog * math.sqrt(math.log1p((rse / 100.0) ** 2))})
    return Prior.from_dict(d, where)


@dataclass(frozen=True)
class Prior:
    """A prior distribution in natural units.

    Parameters
    ----------
    dist : str
        One of ``normal(mu, sigma)``, ``lognormal(median, sigma)`` (sigma on
        the log scale), ``halfnormal(sigma)``, ``halfcauchy(beta)``,
        ``halfstudentt(nu, sigma)``, ``exponential(lam)``,
        ``uniform(lower, upper)``, ``truncatednormal(mu, sigma, lower, upper)``,
        ``beta(alpha, beta)``.  ``truncatednormal`` bounds may be omitted
        (``lower``/``upper`` default to -inf/inf).
    args : dict
        The distribution's parameters.
    """

    dist: str
    args: dict

    @classmethod
    def from_dict(cls, d, where: str) -> "Prior":
        if isinstance(d, Prior):
            return d
        if isinstance(d, dict) and set(d) == {"fixed"}:   # e.g. sigma_add = { fixed = 0.1 }: not estimated
            v = d["fixed"]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise SpecError(f"{where}: fixed must be a finite number, got {v!r}")
            return cls("fixed", {"value": float(v)})
        if not isinstance(d, dict) or "dist" not in d:
            raise SpecError(f"{where}: a prior is a table with 'dist' and its parameters, "
                            f"e.g. {{ dist = \"lognormal\", median = 5.0, sigma = 1.0 }}; got {d!r}")
        dist = str(d["dist"]).lower().replace("_", "").replace("-", "")
        if dist not in _DISTS:
            raise SpecError(f"{where}: unknown prior distribution {d['dist']!r}; known: {', '.join(_DISTS)}")
        args = {k: v for k, v in d.items() if k != "dist"}
        if "rse_percent" in args:
            args = _from_rse(dist, args, where)
        if dist == "truncatednormal":
            args.setdefault("lower", -math.inf)
            args.setdefault("upper", math.inf)
        required = _DISTS[dist][0]
        missing = [a for a in required if a not in args]
        extra = [a for a in args if a not in required]
        if missing or extra:
            raise SpecError(f"{where}: prior {dist} takes {', '.join(required)}"
                            + (f"; missing {', '.join(missing)}" if missing else "")
                            + (f"; unknown {', '.join(extra)}" if extra else ""))
        for k, v in args.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                raise SpecError(f"{where}: prior {dist} parameter {k} must be a number, got {v!r}")
            if k in _POSITIVE_ARGS and not (0 < v < math.inf):
                raise SpecError(f"{where}: impossible prior: {dist} {k} must be positive and finite, got {v}")
        args = {k: float(v) for k, v in args.items()}
        lo, hi = _DISTS[dist][1](args)
        if not lo < hi:
            raise SpecError(f"{where}: impossible prior: {dist} needs lower < upper, got {lo} and {hi}")
        return cls(dist, args)

    @property
    def is_fixed(self) -> bool:
        """A fixed value (``{ fixed = x }``), not a distribution."""
        return self.dist == "fixed"

    @property
    def support(self) -> tuple[float, float]:
        if self.is_fixed:
            return (self.args["value"], self.args["value"])
        return _DISTS[self.dist][1](self.args)

    def median(self) -> float:
        """Prior median (the sampler's initial value for the parameter)."""
        from scipy import stats

        a = self.args
        if self.is_fixed:
            return a["value"]
        if self.dist == "lognormal":
            return a["median"]
        if self.dist == "normal":
            return a["mu"]
        if self.dist == "halfnormal":
            return a["sigma"] * stats.norm.ppf(0.75)
        if self.dist == "halfcauchy":
            return a["beta"]
        if self.dist == "halfstudentt":
            return a["sigma"] * stats.t.ppf(0.75, a["nu"])
        if self.dist == "exponential":
            return math.log(2) / a["lam"]
        if self.dist == "uniform":
            return 0.5 * (a["lower"] + a["upper"])
        if self.dist == "beta":
            return float(stats.beta.median(a["alpha"], a["beta"]))
        lo, hi = (a["lower"] - a["mu"]) / a["sigma"], (a["upper"] - a["mu"]) / a["sigma"]
        return float(stats.truncnorm.median(lo, hi, loc=a["mu"], scale=a["sigma"]))

    def to_dict(self) -> dict:
        if self.is_fixed:
            return {"fixed": self.args["value"]}
        return {"dist": self.dist, **self.args}


@dataclass(frozen=True)
class Parameter:
    """An individual parameter: typical value (THETA) and inter-individual variability.

    Attributes
    ----------
    name : str
        Symbol, e.g. ``"CL"``; the typical value is reported under this name.
    prior : Prior or None
        Prior of the typical value, natural units.  None when ``fixed`` is set.
    fixed : float or None
        Fixed typical value (no prior, not estimated).
    iiv : {"lognormal", "normal", "logit", "none"}
        Distribution of the individual values around the typical value.
    omega : Prior or None
        Prior of OMEGA as the standard deviation of ETA (reported as ``omega_<name>``).
    omega_fixed : float or None
        Fixed SD of ETA.
    omega_iov : Prior or None
        Prior of the SD of the inter-occasion random effect (KAPPA, one per
        subject and occasion of the data's ``OCC`` column), reported as
        ``omega_iov_<name>``; None for no IOV.
    centered : bool
        Sample ETA directly (``ETA ~ N(0, omega)``) instead of the default
        non-centred ``ETA = omega * z``.  Centred suits data-rich subjects
        (many observations, low shrinkage); non-centred suits sparse data.
    unit, description : str
    """

    name: str
    prior: Prior | None = None
    fixed: float | None = None
    iiv: str = "none"
    omega: Prior | None = None
    omega_fixed: float | None = None
    unit: str = ""
    description: str = ""
    omega_iov: Prior | None = None
    centered: bool = False

    @property
    def has_eta(self) -> bool:
        return self.iiv != "none"

    def to_dict(self) -> dict:
        d = {"iiv": self.iiv}
        if self.fixed is not None:
            d["fixed"] = self.fixed
        if self.prior is not None:
            d["prior"] = self.prior.to_dict()
        if self.omega is not None:
            d["omega"] = self.omega.to_dict()
        if self.omega_fixed is not None:
            d["omega_fixed"] = self.omega_fixed
        if self.omega_iov is not None:
            d["omega_iov"] = self.omega_iov.to_dict()
        if self.centered:
            d["centered"] = True
        if self.unit:
            d["unit"] = self.unit
        if self.description:
            d["description"] = self.description
        return d


@dataclass(frozen=True)
class CovariateEffect:
    """How a covariate changes the typical value of a parameter.

    The factor multiplying the typical value is

    * power: ``(COV / reference) ** theta`` (allometry: ``theta`` fixed to 0.75 or 1);
    * exponential: ``exp(theta * (COV - reference))``;
    * linear: ``1 + theta * (COV - reference)``;
    * categorical: ``exp(theta_level)`` for each level other than ``reference``
      (so ``exp(theta)`` is the ratio to the reference level);
    * piecewise (hockey stick with a knot ``K``): ``1 + g(COV) - g(reference)`` with
      ``g(x) = t1 (min(x, K) - K) + t2 (max(x, K) - K)``: slope ``t1`` below the knot
      (``<COV>_on_<P>``) and ``t2`` above (``<COV>_above_on_<P>``; ``fixed_above = 0``
      gives the classic plateau).

    The estimated ``theta`` is reported as ``<COV>_on_<P>`` (categorical:
    ``<COV>_<level>_on_<P>``).  A covariate that changes within a subject is used
    at each observation (time-varying) unless ``time_varying = false``; the
    baseline (first) value is used otherwise.
    """

    parameter: str
    covariate: str
    kind: str
    reference: float | str
    prior: Prior | None = None
    fixed: float | None = None
    levels: tuple = ()
    knot: float | None = None
    fixed_above: float | None = None
    time_varying: bool | None = None

    def effect_names(self) -> list[str]:
        """Names of the effect's thetas (estimated or fixed), in the order the factor uses them."""
        if self.kind == "categorical":
            return [f"{self.covariate}_{_level_label(v)}_on_{self.parameter}" for v in self.levels]
        if self.kind == "piecewise":
            return [f"{self.covariate}_on_{self.parameter}", f"{self.covariate}_above_on_{self.parameter}"]
        return [f"{self.covariate}_on_{self.parameter}"]

    def fixed_values(self) -> list:
        """Fixed value (or None when estimated) of each theta, aligned with :meth:`effect_names`."""
        if self.kind == "categorical":
            return [None] * len(self.levels)
        if self.kind == "piecewise":
            return [self.fixed, self.fixed_above]
        return [self.fixed]

    def estimated_names(self) -> list[str]:
        """The effect's thetas that are sampled (reported in the summary)."""
        return [n for n, f in zip(self.effect_names(), self.fixed_values()) if f is None]

    def to_dict(self) -> dict:
        d = {"parameter": self.parameter, "covariate": self.covariate, "type": self.kind,
             "reference": self.reference}
        if self.fixed is not None:
            d["fixed"] = self.fixed
        if self.prior is not None:
            d["prior"] = self.prior.to_dict()
        if self.knot is not None:
            d["knot"] = self.knot
        if self.fixed_above is not None:
            d["fixed_above"] = self.fixed_above
        if self.time_varying is not None:
            d["time_varying"] = self.time_varying
        return d


def _level_label(v) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return re.sub(r"[^A-Za-z0-9]", "_", str(v))


@dataclass(frozen=True)
class ResidualError:
    """Residual (within-subject) error model.

    * additive: ``DV ~ Normal(IPRED, sigma_add)``
    * proportional: ``DV ~ Normal(IPRED, sigma_prop * IPRED)``
    * combined: ``DV ~ Normal(IPRED, sqrt(sigma_add**2 + (sigma_prop * IPRED)**2))``
    * exponential: ``log(DV) ~ Normal(log(IPRED), sigma_exp)`` (a log-normal DV; needs DV > 0)
    """

    kind: str = "combined"
    priors: dict = field(default_factory=dict)
    blq: str = "m3"   # censored (CENS != 0) records: "m3" censored likelihood, "m1" dropped

    def sigma_names(self) -> tuple[str, ...]:
        return {"additive": ("sigma_add",), "proportional": ("sigma_prop",),
                "combined": ("sigma_add", "sigma_prop"), "exponential": ("sigma_exp",)}[self.kind]

    def to_dict(self) -> dict:
        d = {"type": self.kind, **{k: v.to_dict() for k, v in self.priors.items()}}
        if self.blq != "m3":
            d["blq"] = self.blq
        return d


_DEFAULT_SIGMA = {"sigma_add": Prior("halfnormal", {"sigma": 1.0}),
                  "sigma_prop": Prior("halfnormal", {"sigma": 0.5}),
                  "sigma_exp": Prior("halfnormal", {"sigma": 0.5})}
_DEFAULT_OMEGA = Prior("halfnormal", {"sigma": 0.5})
_DEFAULT_COV_PRIOR = Prior("normal", {"mu": 0.0, "sigma": 1.0})


@dataclass(frozen=True)
class ModelSpec:
    """A complete, validated NLME model specification.

    Construct with keyword arguments, :meth:`from_dict` or :meth:`from_toml`;
    the constructor validates everything that does not need the data.
    """

    name: str
    structural: StructuralModel
    parameters: dict
    residual: ResidualError = field(default_factory=ResidualError)
    covariates: tuple = ()
    omega_blocks: tuple = ()
    lkj_eta: float = 2.0
    description: str = ""
    observations: tuple = ()

    def __post_init__(self):
        _validate_spec(self)
        self.observation_models()   # validates outputs and DVIDs

    def observation_models(self) -> tuple:
        """The observation models (:mod:`bayesnlme.observation`): ``[[observations]]`` or the ``[residual]`` one."""
        from .observation import resolve

        return resolve(self.observations, self.residual, self.structural)

    def observation_parameter_names(self) -> list[str]:
        """Residual/outcome parameters in summary order (``sigma_add`` ... for a single residual)."""
        return [n for m in self.observation_models() for n in m.parameter_names()]

    # ------------------------------------------------------------------ queries
    @property
    def eta_parameters(self) -> list[str]:
        """Parameters with a random effect, in spec order."""
        return [p for p, par in self.parameters.items() if par.has_eta]

    @property
    def covariate_columns(self) -> list[str]:
        return sorted({c.covariate for c in self.covariates})

    def with_residual(self, kind: str) -> "ModelSpec":
        """The same model with another residual error model (default priors)."""
        return replace(self, residual=_residual_from_dict({"type": kind}))

    # ------------------------------------------------------------------ data binding
    def bind(self, data) -> "ModelSpec":
        """Check the spec against a data set; fill categorical levels from the data.

        Raises
        ------
        SpecError
            A covariate effect names a column the data do not have.
        DataError
            A needed covariate is missing for a subject, or invalid for its effect.
        """
        cols = data.columns
        effects = []
        for eff in self.covariates:
            if eff.covariate not in data.covariate_names:
                raise SpecError(f"covariate effect {eff.covariate}_on_{eff.parameter}: column "
                                f"{eff.covariate} is not a covariate in {data.source} "
                                f"(columns: {', '.join(cols)})")
            data.require_covariates([eff.covariate])
            values = data.baseline_covariates([eff.covariate])[eff.covariate]
            varies = bool((data.frame.groupby("_SUBJ")[eff.covariate].nunique(dropna=True) > 1).any())
            if eff.time_varying is None:
                eff = replace(eff, time_varying=varies)
            if eff.time_varying:
                values = data.observation_covariates([eff.covariate])[eff.covariate]
                values.index = [data.ids[i] for i in data.obs_subject]
                if self.parameters[eff.parameter].iiv not in ("lognormal", "none"):
                    raise SpecError(f"covariate effect {eff.covariate}_on_{eff.parameter}: time-varying "
                                    f"covariates need a log-normal (or no) IIV on {eff.parameter}")
            if eff.kind == "categorical":
                levels = sorted(set(values) - {eff.reference}, key=str)
                if eff.reference not in set(values):
                    raise SpecError(f"covariate effect on {eff.parameter}: reference level "
                                    f"{eff.reference!r} of {eff.covariate} does not occur in the data "
                                    f"(levels: {sorted(set(values), key=str)})")
                eff = replace(eff, levels=tuple(levels))
            else:
                if not all(isinstance(v, (int, float)) for v in values):
                    raise data.error(f"covariate {eff.covariate} must be numeric for a {eff.kind} "
                                     f"effect on {eff.parameter}", column=eff.covariate)
                if eff.kind == "power" and (values <= 0).any():
                    bad = values.index[(values <= 0).to_numpy()][0]
                    subj = int(list(data.ids).index(bad))
                    raise data.error(f"covariate {eff.covariate} must be positive for a power effect "
                                     f"(ID {bad} has {values[bad]:g})", row=data._first_row[subj],
                                     column=eff.covariate)
            effects.append(eff)
        return replace(self, covariates=tuple(effects))

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        """A plain dict with the TOML layout (round-trips through :meth:`from_dict`)."""
        d = {"name": self.name, "description": self.description,
             "structural": self.structural.name,
             "parameters": {p: par.to_dict() for p, par in self.parameters.items()},
             "residual": self.residual.to_dict()}
        if self.observations:
            d["observations"] = [o.to_dict() for o in self.observations]
        if self.omega_blocks:
            d["random_effects"] = {"blocks": [list(b) for b in self.omega_blocks], "lkj_eta": self.lkj_eta}
        if self.covariates:
            d["covariates"] = [c.to_dict() for c in self.covariates]
        return d

    @classmethod
    def from_dict(cls, d: dict, *, structural: StructuralModel | None = None,
                  source: str = "spec") -> "ModelSpec":
        """Build a spec from the TOML layout (see ``model_library/``).

        Parameters
        ----------
        structural : StructuralModel, optional
            A user structural model; then the ``structural`` key, if present,
            must equal its name.
        """
        return _parse(d, structural, source)

    @classmethod
    def from_toml(cls, path, **kwargs) -> "ModelSpec":
        """Read a spec from a TOML file (parsed with :mod:`tomllib`, never executed)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise SpecError(f"{path}: cannot read spec file ({exc.strerror})") from None
        return cls.from_toml_text(text, source=path.name, **kwargs)

    @classmethod
    def from_toml_text(cls, text: str, *, source: str = "spec", **kwargs) -> "ModelSpec":
        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{source}: not valid TOML ({exc})") from None
        return _parse(d, kwargs.get("structural"), source)


# ---------------------------------------------------------------------- construction helpers


def _check_keys(d, allowed, where):
    if not isinstance(d, dict):
        raise SpecError(f"{where}: expected a table, got {d!r}")
    unknown = [k for k in d if k not in allowed]
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                        f"allowed: {', '.join(allowed)}")


def _number(v, where, positive=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpecError(f"{where}: must be a finite number, got {v!r}")
    if positive and v <= 0:
        raise SpecError(f"{where}: must be positive, got {v}")
    return float(v)


def _parameter_from_dict(name, d, source):
    where = f"{source}: parameter {name}"
    _check_keys(d, ("prior", "fixed", "iiv", "omega", "omega_fixed", "omega_iov", "centered",
                    "unit", "description"), where)
    iiv = d.get("iiv", "lognormal")
    prior = Prior.from_dict(d["prior"], f"{where}, prior") if "prior" in d else None
    omega = _omega_prior(d["omega"], f"{where}, omega") if "omega" in d else None
    fixed = _number(d["fixed"], f"{where}, fixed") if "fixed" in d else None
    omega_fixed = None
    if "omega_fixed" in d:   # a number is the SD of ETA; a table may give variance or cv_percent
        of = d["omega_fixed"]
        omega_fixed = (omega_sd(of, f"{where}, omega_fixed")[0] if isinstance(of, dict)
                       else _number(of, f"{where}, omega_fixed", True))
    omega_iov = _omega_prior(d["omega_iov"], f"{where}, omega_iov") if "omega_iov" in d else None
    centered = d.get("centered", False)
    if not isinstance(centered, bool):
        raise SpecError(f"{where}, centered: must be true or false, got {centered!r}")
    if iiv in IIV_KINDS and iiv != "none" and omega is None and omega_fixed is None:
        omega = _DEFAULT_OMEGA
    return Parameter(name=name, prior=prior, fixed=fixed, iiv=iiv, omega=omega, omega_fixed=omega_fixed,
                     unit=str(d.get("unit", "")), description=str(d.get("description", "")),
                     omega_iov=omega_iov, centered=centered)


def _residual_from_dict(d, source="spec"):
    where = f"{source}: residual"
    _check_keys(d, ("type", "sigma_add", "sigma_prop", "sigma_exp", "blq"), where)
    kind = d.get("type", "combined")
    if kind not in RESIDUAL_KINDS:
        raise SpecError(f"{where}: unknown residual error type {kind!r}; known: {', '.join(RESIDUAL_KINDS)}")
    res = ResidualError(kind)
    priors = {}
    for s in res.sigma_names():
        priors[s] = Prior.from_dict(d[s], f"{where}, {s}") if s in d else _DEFAULT_SIGMA[s]
    unused = [k for k in ("sigma_add", "sigma_prop", "sigma_exp") if k in d and k not in priors]
    if unused:
        raise SpecError(f"{where}: {', '.join(unused)} given but residual type {kind} uses "
                        f"{', '.join(res.sigma_names())}")
    blq = d.get("blq", "m3")
    if blq not in ("m3", "m1"):
        raise SpecError(f"{where}: blq must be \"m3\" (censored likelihood) or \"m1\" (drop), got {blq!r}")
    return ResidualError(kind, priors, blq)


def _covariate_from_dict(d, source):
    where = f"{source}: covariate effect"
    _check_keys(d, ("parameter", "covariate", "type", "reference", "prior", "fixed", "knot",
                    "fixed_above", "time_varying"), where)
    for k in ("parameter", "covariate", "type", "reference"):
        if k not in d:
            raise SpecError(f"{where} {d.get('covariate', '?')}_on_{d.get('parameter', '?')}: missing '{k}'")
    where = f"{where} {d['covariate']}_on_{d['parameter']}"
    kind = d["type"]
    if kind not in COVARIATE_KINDS:
        raise SpecError(f"{where}: unknown type {kind!r}; known: {', '.join(COVARIATE_KINDS)}")
    ref = d["reference"]
    if kind == "power":
        ref = _number(ref, f"{where}, reference", positive=True)
    elif kind != "categorical":
        ref = _number(ref, f"{where}, reference")
    fixed = _number(d["fixed"], f"{where}, fixed") if "fixed" in d else None
    if kind == "categorical" and fixed is not None:
        raise SpecError(f"{where}: a categorical effect cannot be fixed")
    knot = fixed_above = None
    if kind == "piecewise":
        if "knot" not in d:
            raise SpecError(f"{where}: a piecewise (hockey-stick) effect needs 'knot', the covariate "
                            f"value where the slope changes")
        knot = _number(d["knot"], f"{where}, knot")
        fixed_above = _number(d["fixed_above"], f"{where}, fixed_above") if "fixed_above" in d else None
    elif "knot" in d or "fixed_above" in d:
        raise SpecError(f"{where}: 'knot' and 'fixed_above' belong to type = \"piecewise\"")
    tv = d.get("time_varying")
    if tv is not None and not isinstance(tv, bool):
        raise SpecError(f"{where}, time_varying: must be true or false, got {tv!r}")
    all_fixed = fixed is not None and (kind != "piecewise" or fixed_above is not None)
    prior = Prior.from_dict(d["prior"], f"{where}, prior") if "prior" in d else (
        None if all_fixed else _DEFAULT_COV_PRIOR)
    if all_fixed and "prior" in d:
        raise SpecError(f"{where}: give either 'prior' or 'fixed', not both")
    return CovariateEffect(parameter=d["parameter"], covariate=d["covariate"], kind=kind,
                           reference=ref, prior=prior, fixed=fixed, knot=knot, fixed_above=fixed_above,
                           time_varying=tv)


def _parse(d, structural, source) -> "ModelSpec":
    """Every parse goes through here: a value of a type no check foresaw still gets a one-line SpecError.

    The checks below name the key at fault; this net only catches what they miss (the fuzz tests
    assert that it never fires for the inputs they generate).
    """
    if not isinstance(d, dict):
        raise SpecError(f"{source}: a spec is a table of keys (name, structural, parameters, ...)")
    try:
        return _from_dict(d, structural, source)
    except (TypeError, AttributeError, KeyError, IndexError) as exc:
        raise SpecError(f"{source}: malformed spec, a value has the wrong type or shape "
                        f"({type(exc).__name__}: {exc})") from None


def _from_dict(d, structural, source):
    _check_keys(d, ("name", "description", "structural", "parameters", "residual",
                    "random_effects", "covariates", "observations"), source)
    if structural is None:
        sname = d.get("structural")
        if sname is None:
            raise SpecError(f"{source}: missing 'structural' (one of {', '.join(sorted(LIBRARY))})")
        if not isinstance(sname, str) or sname not in LIBRARY:
            raise SpecError(f"{source}: unknown structural model {sname!r}; known: {', '.join(sorted(LIBRARY))}")
        structural = LIBRARY[sname]
    elif "structural" in d and d["structural"] != structural.name:
        raise SpecError(f"{source}: structural {d['structural']!r} does not match the given model {structural.name!r}")
    params = d.get("parameters", {})
    if not isinstance(params, dict) or not params:
        raise SpecError(f"{source}: 'parameters' must be a table with one entry per parameter")
    parameters = {n: _parameter_from_dict(n, p, source) for n, p in params.items()}
    re_ = d.get("random_effects", {})
    _check_keys(re_, ("blocks", "lkj_eta"), f"{source}: random_effects")
    blocks = re_.get("blocks", [])
    if not isinstance(blocks, list) or not all(isinstance(b, list) for b in blocks):
        raise SpecError(f"{source}: random_effects.blocks must be a list of parameter lists, e.g. [[\"CL\", \"V\"]]")
    covs = d.get("covariates", [])
    if not isinstance(covs, list):
        raise SpecError(f"{source}: 'covariates' must be an array of tables ([[covariates]])")
    try:
        return ModelSpec(name=str(d.get("name", source)), structural=structural, parameters=parameters,
                         residual=_residual_from_dict(d.get("residual", {}), source),
                         covariates=tuple(_covariate_from_dict(c, source) for c in covs),
                         omega_blocks=tuple(tuple(b) for b in blocks),
                         lkj_eta=_number(re_.get("lkj_eta", 2.0), f"{source}: random_effects.lkj_eta", True),
                         description=str(d.get("description", "")),
                         observations=_observations_from_list(d.get("observations", []), source))
    except SpecError as exc:
        msg = str(exc)
        raise SpecError(msg if msg.startswith(source) else f"{source}: {msg}") from None


def _observations_from_list(obs, source) -> tuple:
    from .observation import observation_from_dict

    if not isinstance(obs, list):
        raise SpecError(f"{source}: 'observations' must be an array of tables ([[observations]])")
    return tuple(observation_from_dict(o, f"{source}: observations[{i}]") for i, o in enumerate(obs))


def _validate_spec(spec: ModelSpec) -> None:
    st = spec.structural
    if not isinstance(st, StructuralModel):
        raise SpecError(f"structural must be a StructuralModel or a library name, got {st!r}")
    known = st.all_parameters
    for name, par in spec.parameters.items():
        if not _NAME.match(name):
            raise SpecError(f"parameter name {name!r} must be letters and digits, starting with a letter")
        if name not in known:
            raise SpecError(f"unknown parameter {name!r} for structural model {st.name} "
                            f"(its parameters: {', '.join(known)})")
        if par.iiv not in IIV_KINDS:
            raise SpecError(f"parameter {name}: unknown iiv {par.iiv!r}; known: {', '.join(IIV_KINDS)}")
        if (par.prior is None) == (par.fixed is None):
            raise SpecError(f"parameter {name}: give exactly one of 'prior' or 'fixed'")
        domain = {"lognormal": (0, math.inf), "logit": (0, 1)}.get(par.iiv, KNOWN_DOMAINS.get(name))
        if domain is not None:
            lo, hi = domain
            if par.prior is not None:
                plo, phi = par.prior.support
                if plo < lo or phi > hi:
                    raise SpecError(f"parameter {name}: impossible prior: {par.prior.dist} has support "
                                    f"({plo:g}, {phi:g}) but {name} must lie in ({lo:g}, {hi:g})"
                                    + (f" for {par.iiv} IIV" if par.iiv in ("lognormal", "logit") else ""))
            elif not lo <= par.fixed <= hi or (par.fixed == lo and par.iiv in ("lognormal", "logit")):
                raise SpecError(f"parameter {name}: fixed value {par.fixed:g} outside ({lo:g}, {hi:g})")
        if par.has_eta and par.omega is not None and par.omega.support[0] < 0:
            raise SpecError(f"parameter {name}: impossible prior: omega (SD of ETA) must be positive, "
                            f"but {par.omega.dist} allows negative values")
        if par.has_eta and (par.omega is None) == (par.omega_fixed is None):
            raise SpecError(f"parameter {name}: give exactly one of 'omega' or 'omega_fixed'")
        if par.omega_iov is not None and par.iiv != "lognormal":
            raise SpecError(f"parameter {name}: inter-occasion variability (omega_iov) needs "
                            f"iiv = \"lognormal\", got {par.iiv!r}")
        if par.omega_iov is not None and par.omega_iov.support[0] < 0:
            raise SpecError(f"parameter {name}: impossible prior: omega_iov (SD of KAPPA) must be positive")
        if par.centered and not par.has_eta:
            raise SpecError(f"parameter {name}: centered = true needs a random effect (iiv is \"none\")")
    missing = [p for p in st.parameters if p not in spec.parameters]
    if missing:
        raise SpecError(f"structural model {st.name} needs parameter(s) {', '.join(missing)}")
    for s, prior in spec.residual.priors.items():
        if prior.is_fixed and prior.args["value"] <= 0:
            raise SpecError(f"residual {s}: a fixed standard deviation must be positive, got {prior.args['value']:g}")
        if prior.support[0] < 0:
            raise SpecError(f"residual {s}: impossible prior: a standard deviation must be positive, "
                            f"but {prior.dist} allows negative values")
    seen = set()
    for block in spec.omega_blocks:
        if len(block) < 2:
            raise SpecError(f"OMEGA block {list(block)} needs at least two parameters")
        for p in block:
            if p not in spec.parameters:
                raise SpecError(f"OMEGA block {list(block)}: unknown parameter {p!r}")
            if not spec.parameters[p].has_eta:
                raise SpecError(f"OMEGA block {list(block)}: parameter {p} has no random effect (iiv = \"none\")")
            if spec.parameters[p].omega is None:
                raise SpecError(f"OMEGA block {list(block)}: parameter {p} has a fixed omega; "
                                f"block members need an omega prior")
            if p in seen:
                raise SpecError(f"parameter {p} appears in more than one OMEGA block")
            if spec.parameters[p].centered:
                raise SpecError(f"OMEGA block {list(block)}: parameter {p} is centered; block members "
                                f"use the non-centred parameterisation (remove centered = true)")
            if spec.parameters[p].omega.dist != spec.parameters[block[0]].omega.dist:
                raise SpecError(f"OMEGA block {list(block)}: the omega priors of a block must be of one "
                                f"family ({block[0]}: {spec.parameters[block[0]].omega.dist}, "
                                f"{p}: {spec.parameters[p].omega.dist})")
            seen.add(p)
    names = set()
    for eff in spec.covariates:
        if eff.parameter not in spec.parameters:
            raise SpecError(f"covariate effect {eff.covariate}_on_{eff.parameter}: unknown parameter "
                            f"{eff.parameter!r} (parameters: {', '.join(spec.parameters)})")
        if spec.parameters[eff.parameter].iiv == "logit":
            raise SpecError(f"covariate effect {eff.covariate}_on_{eff.parameter}: covariate effects on a "
                            f"logit-normal parameter are not supported")
        if spec.parameters[eff.parameter].fixed is not None:
            raise SpecError(f"covariate effect {eff.covariate}_on_{eff.parameter}: {eff.parameter} is fixed")
        if eff.kind == "piecewise" and not isinstance(eff.reference, (int, float)):
            raise SpecError(f"covariate effect {eff.covariate}_on_{eff.parameter}: reference must be a number")
        key = (eff.covariate, eff.parameter)
        if key in names:
            raise SpecError(f"covariate effect {eff.covariate}_on_{eff.parameter} is given twice")
        names.add(key)


# ---------------------------------------------------------------------- model library


def library_names() -> list[str]:
    """Names of the ``model_library/`` entries (TOML specs shipped with bayesnlme)."""
    from importlib import resources

    return sorted(p.name[:-5] for p in resources.files("bayesnlme.model_library").iterdir()
                  if p.name.endswith(".toml"))


def library_path(name: str) -> Path:
    """Path of the library entry ``name`` (e.g. ``"pk_1cmt_oral"``)."""
    from importlib import resources

    if name not in library_names():
        raise SpecError(f"unknown model {name!r}: not a .toml file and not a model_library entry "
                        f"(entries: {', '.join(library_names())})")
    return Path(str(resources.files("bayesnlme.model_library").joinpath(f"{name}.toml")))


def load_spec(model) -> ModelSpec:
    """A spec from a TOML file path or the name of a ``model_library/`` entry."""
    if isinstance(model, ModelSpec):
        return model
    path = Path(model)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise SpecError(f"{path}: spec file not found")
        return ModelSpec.from_toml(path)
    return ModelSpec.from_toml(library_path(str(model)))
