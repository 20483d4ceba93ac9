"""Priors in natural units: the distributions a spec may name, earlier estimates with their RSE as
informative priors, and the small validators every part of the spec shares.

Nothing here makes a PyMC variable; :mod:`bayesnlme.build` turns a :class:`Prior` into one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from bayesnlme.errors import SpecError

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
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


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


def omega_prior(d, where: str) -> "Prior":
    """The OMEGA prior: a distribution table, or an earlier estimate (sd/variance/cv_percent + rse_percent).

    An earlier estimate becomes a log-normal prior on the SD of ETA with median at the
    converted SD and log-scale sigma ``dlog * sqrt(log(1 + RSE^2))`` (exact for a
    variance: half the log-normal sigma of the variance).
    """
    if isinstance(d, dict) and "dist" not in d and any(k in d for k in _OMEGA_SCALES):
        check_keys(d, _OMEGA_SCALES + ("rse_percent",), where)
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


def check_keys(d, allowed, where):
    if not isinstance(d, dict):
        raise SpecError(f"{where}: expected a table, got {d!r}")
    unknown = [k for k in d if k not in allowed]
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                        f"allowed: {', '.join(allowed)}")


def number(v, where, positive=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpecError(f"{where}: must be a finite number, got {v!r}")
    if positive and v <= 0:
        raise SpecError(f"{where}: must be positive, got {v}")
    return float(v)
