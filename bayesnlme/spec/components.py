"""The parts of a spec: individual parameters (THETA, IIV), covariate effects and the residual error,
each validated where it is read from its TOML table."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from bayesnlme.errors import SpecError
from bayesnlme.spec.observation import NORMAL_KINDS
from bayesnlme.spec.priors import Prior, check_keys, number, omega_prior, omega_sd

IIV_KINDS = ("lognormal", "normal", "logit", "none")
COVARIATE_KINDS = ("power", "exponential", "linear", "categorical", "piecewise")
RESIDUAL_KINDS = NORMAL_KINDS   # [residual] is shorthand for one continuous observation model
#: Allowed values of structural parameters the library knows: (lower, upper).
KNOWN_DOMAINS = {"CL": (0, math.inf), "V": (0, math.inf), "Q": (0, math.inf), "V2": (0, math.inf),
                 "Q3": (0, math.inf), "V3": (0, math.inf),
                 "KA": (0, math.inf), "F": (0, 1), "ALAG": (0, math.inf),
                 **{k: (0, math.inf) for k in ("VSS", "AOB", "ALPHA", "BETA", "GAMMA", "K21", "K31")}}


# distribution name -> (required parameters, support function)
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

    ``shared_with = "CL"`` (power, exponential and linear effects) uses the theta of the
    same covariate's effect of the same kind on ``CL`` instead of one of its own: one
    allometric exponent for CL and Q (NONMEM: one THETA in both), reported once as
    ``WT_on_CL``.  The reference is the effect's own.
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
    shared_with: str | None = None

    @property
    def label(self) -> str:
        """``<COV>_on_<P>``: the effect (a relation), whatever its thetas are called."""
        return f"{self.covariate}_on_{self.parameter}"

    def effect_names(self) -> list[str]:
        """Names of the effect's thetas (estimated or fixed), in the order the factor uses them."""
        if self.shared_with is not None:
            return [f"{self.covariate}_on_{self.shared_with}"]
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
        """The effect's thetas that are sampled (reported in the summary); none for a shared one."""
        if self.shared_with is not None:
            return []
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
        if self.shared_with is not None:
            d["shared_with"] = self.shared_with
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


DEFAULT_SIGMA = {"sigma_add": Prior("halfnormal", {"sigma": 1.0}),
                  "sigma_prop": Prior("halfnormal", {"sigma": 0.5}),
                  "sigma_exp": Prior("halfnormal", {"sigma": 0.5})}
DEFAULT_OMEGA = Prior("halfnormal", {"sigma": 0.5})
DEFAULT_COV_PRIOR = Prior("normal", {"mu": 0.0, "sigma": 1.0})


def parameter_from_dict(name, d, source):
    where = f"{source}: parameter {name}"
    check_keys(d, ("prior", "fixed", "iiv", "omega", "omega_fixed", "omega_iov", "centered",
                    "unit", "description"), where)
    iiv = d.get("iiv", "lognormal")
    prior = Prior.from_dict(d["prior"], f"{where}, prior") if "prior" in d else None
    omega = omega_prior(d["omega"], f"{where}, omega") if "omega" in d else None
    fixed = number(d["fixed"], f"{where}, fixed") if "fixed" in d else None
    omega_fixed = None
    if "omega_fixed" in d:   # a number is the SD of ETA; a table may give variance or cv_percent
        of = d["omega_fixed"]
        omega_fixed = (omega_sd(of, f"{where}, omega_fixed")[0] if isinstance(of, dict)
                       else number(of, f"{where}, omega_fixed", True))
    omega_iov = omega_prior(d["omega_iov"], f"{where}, omega_iov") if "omega_iov" in d else None
    centered = d.get("centered", False)
    if not isinstance(centered, bool):
        raise SpecError(f"{where}, centered: must be true or false, got {centered!r}")
    if iiv in IIV_KINDS and iiv != "none" and omega is None and omega_fixed is None:
        omega = DEFAULT_OMEGA
    return Parameter(name=name, prior=prior, fixed=fixed, iiv=iiv, omega=omega, omega_fixed=omega_fixed,
                     unit=str(d.get("unit", "")), description=str(d.get("description", "")),
                     omega_iov=omega_iov, centered=centered)


@dataclass(frozen=True)
class CovariateShrinkage:
    """A regularised horseshoe prior shared by every estimated covariate effect (Piironen & Vehtari 2017).

    Each effect ``theta_j = s_j * z_j * tau * lambda~_j`` with ``z_j ~ N(0, 1)``, local scales
    ``lambda_j ~ HalfCauchy(1)``, global scale ``tau ~ HalfCauchy(tau0)`` and the slab
    ``lambda~_j = c lambda_j / sqrt(c^2 + tau^2 lambda_j^2)``, ``c^2 ~ InvGamma(slab_df / 2, slab_df / 2)
    * slab_scale^2``; ``s_j`` is the SD of the effect's own normal prior (its scale in the units of
    the covariate), so a covariate on a large scale is not shrunk harder than one on a small scale.
    Most effects are pulled to 0; the few the data support escape through the slab.  The effects
    are reported under their usual names (``<COV>_on_<P>``) as deterministic functions; ``hs_tau``,
    ``hs_c2``, ``hs_z_<name>`` and ``hs_lambda_<name>`` are the sampled variables.

    Written in a spec as ``[covariate_shrinkage]`` with ``type = "horseshoe"`` and optional ``tau0``
    (default 0.1), ``slab_scale`` (1) and ``slab_df`` (4).
    """
    tau0: float = 0.1
    slab_scale: float = 1.0
    slab_df: float = 4.0

    def to_dict(self) -> dict:
        return {"type": "horseshoe", "tau0": self.tau0, "slab_scale": self.slab_scale, "slab_df": self.slab_df}


def shrinkage_from_dict(d, source) -> CovariateShrinkage | None:
    """The ``[covariate_shrinkage]`` table (None when absent)."""
    if d is None:
        return None
    where = f"{source}: covariate_shrinkage"
    if not isinstance(d, dict):
        raise SpecError(f"{where} must be a table (type = \"horseshoe\", tau0, slab_scale, slab_df)")
    check_keys(d, ("type", "tau0", "slab_scale", "slab_df"), where)
    if d.get("type", "horseshoe") != "horseshoe":
        raise SpecError(f"{where}: unknown type {d.get('type')!r}; the one shrinkage prior is \"horseshoe\"")
    return CovariateShrinkage(tau0=number(d.get("tau0", 0.1), f"{where}.tau0", positive=True),
                              slab_scale=number(d.get("slab_scale", 1.0), f"{where}.slab_scale", positive=True),
                              slab_df=number(d.get("slab_df", 4.0), f"{where}.slab_df", positive=True))


def residual_from_dict(d, source="spec"):
    where = f"{source}: residual"
    check_keys(d, ("type", "sigma_add", "sigma_prop", "sigma_exp", "blq"), where)
    kind = d.get("type", "combined")
    if kind not in RESIDUAL_KINDS:
        raise SpecError(f"{where}: unknown residual error type {kind!r}; known: {', '.join(RESIDUAL_KINDS)}")
    res = ResidualError(kind)
    priors = {}
    for s in res.sigma_names():
        priors[s] = Prior.from_dict(d[s], f"{where}, {s}") if s in d else DEFAULT_SIGMA[s]
    unused = [k for k in ("sigma_add", "sigma_prop", "sigma_exp") if k in d and k not in priors]
    if unused:
        raise SpecError(f"{where}: {', '.join(unused)} given but residual type {kind} uses "
                        f"{', '.join(res.sigma_names())}")
    blq = d.get("blq", "m3")
    if blq not in ("m3", "m1"):
        raise SpecError(f"{where}: blq must be \"m3\" (censored likelihood) or \"m1\" (drop), got {blq!r}")
    return ResidualError(kind, priors, blq)


def covariate_from_dict(d, source):
    where = f"{source}: covariate effect"
    check_keys(d, ("parameter", "covariate", "type", "reference", "prior", "fixed", "knot",
                    "fixed_above", "time_varying", "shared_with"), where)
    for k in ("parameter", "covariate", "type", "reference"):
        if k not in d:
            raise SpecError(f"{where} {d.get('covariate', '?')}_on_{d.get('parameter', '?')}: missing '{k}'")
    where = f"{where} {d['covariate']}_on_{d['parameter']}"
    kind = d["type"]
    if kind not in COVARIATE_KINDS:
        raise SpecError(f"{where}: unknown type {kind!r}; known: {', '.join(COVARIATE_KINDS)}")
    ref = d["reference"]
    if kind == "power":
        ref = number(ref, f"{where}, reference", positive=True)
    elif kind != "categorical":
        ref = number(ref, f"{where}, reference")
    fixed = number(d["fixed"], f"{where}, fixed") if "fixed" in d else None
    if kind == "categorical" and fixed is not None:
        raise SpecError(f"{where}: a categorical effect cannot be fixed")
    knot = fixed_above = None
    if kind == "piecewise":
        if "knot" not in d:
            raise SpecError(f"{where}: a piecewise (hockey-stick) effect needs 'knot', the covariate "
                            f"value where the slope changes")
        knot = number(d["knot"], f"{where}, knot")
        fixed_above = number(d["fixed_above"], f"{where}, fixed_above") if "fixed_above" in d else None
    elif "knot" in d or "fixed_above" in d:
        raise SpecError(f"{where}: 'knot' and 'fixed_above' belong to type = \"piecewise\"")
    tv = d.get("time_varying")
    if tv is not None and not isinstance(tv, bool):
        raise SpecError(f"{where}, time_varying: must be true or false, got {tv!r}")
    shared = d.get("shared_with")
    if shared is not None:
        if not isinstance(shared, str) or not shared:
            raise SpecError(f"{where}, shared_with: must be a parameter name, got {shared!r}")
        if kind not in ("power", "exponential", "linear"):
            raise SpecError(f"{where}: shared_with is for power, exponential and linear effects (one theta), "
                            f"not {kind}")
        if "prior" in d or "fixed" in d:
            raise SpecError(f"{where}: a shared effect takes its theta from {d['covariate']}_on_{shared}; give "
                            f"'prior' or 'fixed' there, not here")
        return CovariateEffect(parameter=d["parameter"], covariate=d["covariate"], kind=kind, reference=ref,
                               time_varying=tv, shared_with=shared)
    all_fixed = fixed is not None and (kind != "piecewise" or fixed_above is not None)
    prior = Prior.from_dict(d["prior"], f"{where}, prior") if "prior" in d else (
        None if all_fixed else DEFAULT_COV_PRIOR)
    if all_fixed and "prior" in d:
        raise SpecError(f"{where}: give either 'prior' or 'fixed', not both")
    return CovariateEffect(parameter=d["parameter"], covariate=d["covariate"], kind=kind,
                           reference=ref, prior=prior, fixed=fixed, knot=knot, fixed_above=fixed_above,
                           time_varying=tv)
