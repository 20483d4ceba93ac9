"""Likelihood families: one object per family owns everything the package knows about it.

An :class:`~bayesnlme.spec.observation.ObservationModel` names its family (``likelihood``); the family
object (:data:`FAMILIES`) holds its parameter names, its data checks, its log-density (PyTensor,
censoring included), its random draw (NumPy), the residual diagnostic it gets (NPDE or randomized PIT),
the kind of VPC it gets and its equation for the report -- the way a Bambi ``Family`` keeps the graph
side and the prediction side of a likelihood together.  The builder, the simulator, the diagnostics,
the VPC and the report ask the family instead of branching on its name.

Families (``y`` = DV, ``f`` = the model output at the record; formulas in
:mod:`bayesnlme.spec.observation`): the continuous ``additive``, ``proportional``, ``combined`` and
``exponential`` errors (with left/right/interval censoring, M3), ``bernoulli``, ``ordinal``,
``poisson``, ``negbin`` and ``tte`` (time to event, with its baseline hazard).
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
from scipy.special import expit, gammaln, roots_legendre

__all__ = ["Family", "FAMILIES", "NORMAL_KINDS", "LIKELIHOODS"]

_LOG_2PI = float(np.log(2 * np.pi))


def _logdiffexp(a, b):
    """``log(exp(a) - exp(b))`` for a >= b (as ``pymc.math.logdiffexp``: b = -inf safe)."""
    return pt.switch(pt.isneginf(b), a, a + pt.log1mexp(b - a))


class Family:
    """A likelihood family (base class; the instances are in :data:`FAMILIES`).

    Attributes
    ----------
    name : str
        The ``likelihood`` key of the spec.
    continuous : bool
        A normal-error family: BLQ records (CENS, M3/M1), IWRES/CWRES/NPDE, prediction-corrected VPC.
    vpc : {"continuous", "categorical", "kaplan-meier"}
        The visual predictive check the family gets.
    residual : {"npde", "randomized PIT"}
        Its standardised residual in ``diagnose``.
    """
    name = ""
    continuous = False
    vpc = "categorical"
    residual = "randomized PIT"

    @property
    def event_time(self) -> bool:
        """Observations are event or censoring times (simulated over the hazard, Kaplan-Meier VPC)."""
        return self.vpc == "kaplan-meier"

    def base_names(self, m) -> tuple[str, ...]:
        """Base names of the family's own parameters (``sigma_add``, ``phi``, ``cutpoints`` ...)."""
        return ()

    def dv_error(self, m, y: np.ndarray):
        """(bad records, message) when DV values are impossible for the family, else None."""
        return None

    def logp(self, m, y, f, p: dict, cens=None, limit=None, time=None, nodes_lp=None):
        """Per-record log-density (PyTensor) of DV ``y`` (numpy) given the output ``f`` (tensor)."""
        raise NotImplementedError

    def residual_sd(self, p: dict, f):
        """Residual SD at the records (1 for families without one)."""
        return pt.ones_like(f)

    def draw(self, m, f: np.ndarray, sd: np.ndarray, params: dict, rng: np.random.Generator) -> np.ndarray:
        """Random DV, shape of ``f`` (n_draws, n_records); see :meth:`ObservationModel.draw`."""
        raise NotImplementedError

    def default_categories(self, m, y: np.ndarray) -> list:
        """Categories whose proportions a categorical VPC shows."""
        return []

    def equation(self, m, output: str | None = None) -> str:
        """The family's line of the report's model equations (parameter names with their suffix;
        ``output`` names the prediction, default the observed output)."""
        names = ", ".join(b + m.suffix for b in self.base_names(m))
        return f"DV_ij ~ {self.name}({output or m.output}_ij{', ' + names if names else ''})"


class Continuous(Family):
    """Normal error on the natural scale (additive, proportional, combined) or the log scale (exponential)."""
    continuous = True
    vpc = "continuous"
    residual = "npde"
    _NAMES = {"additive": ("sigma_add",), "proportional": ("sigma_prop",),
              "combined": ("sigma_add", "sigma_prop"), "exponential": ("sigma_exp",)}
    _EQUATION = {"additive": "DV_ij = IPRED_ij + sigma_add · EPS_ij",
                 "proportional": "DV_ij = IPRED_ij + sigma_prop · IPRED_ij · EPS_ij",
                 "combined": "DV_ij = IPRED_ij + sqrt(sigma_add² + (sigma_prop · IPRED_ij)²) · EPS_ij",
                 "exponential": "log(DV_ij) = log(IPRED_ij) + sigma_exp · EPS_ij"}

    def __init__(self, name: str):
        self.name = name

    @property
    def log_scale(self) -> bool:
        return self.name == "exponential"

    @property
    def positive(self) -> bool:
        """The error SD or the density needs a positive prediction / DV (proportional, exponential)."""
        return self.name in ("proportional", "exponential")

    def base_names(self, m):
        return self._NAMES[self.name]

    def residual_sd(self, p, f):
        if self.name == "additive":
            return p["sigma_add"] * pt.ones_like(f)
        if self.name == "proportional":
            return p["sigma_prop"] * f
        if self.name == "combined":
            return pt.sqrt(p["sigma_add"] ** 2 + (p["sigma_prop"] * f) ** 2)
        return p["sigma_exp"] * pt.ones_like(f)

    def logp(self, m, y, f, p, cens=None, limit=None, time=None, nodes_lp=None):
        return normal_logp(self.name, y, f, self.residual_sd(p, f), cens, limit)

    def draw(self, m, f, sd, params, rng):
        eps = rng.standard_normal(np.shape(f))
        return f * np.exp(sd * eps) if self.log_scale else f + sd * eps

    def equation(self, m, output=None):
        text = self._EQUATION[self.name].replace("IPRED", output or m.output)
        for base in self.base_names(m):
            text = text.replace(base, base + m.suffix)
        return text + ",  EPS_ij ~ Normal(0, 1)"


class Bernoulli(Family):
    """``P(y = 1) = expit(f)``: f is the logit."""
    name = "bernoulli"

    def dv_error(self, m, y):
        return ~np.isin(y, [0, 1]), "a bernoulli (binary) DV must be 0 or 1"

    def logp(self, m, y, f, p, cens=None, limit=None, time=None, nodes_lp=None):
        sign = np.where(np.asarray(y) == 1, -1.0, 1.0)   # y log expit(f) + (1 - y) log expit(-f)
        return -pt.log1pexp(sign * f)

    def draw(self, m, f, sd, params, rng):
        return (rng.random(np.shape(f)) < expit(f)).astype(float)

    def default_categories(self, m, y):
        return [0, 1]


class Ordinal(Family):
    """Proportional odds: ``P(Y <= k) = expit(c_k - f)``, categories 0..K-1."""
    name = "ordinal"

    def base_names(self, m):
        return ("cutpoints",)

    def dv_error(self, m, y):
        return (~np.isin(y, np.arange(m.categories)),
                f"an ordinal DV must be a category 0..{m.categories - 1} (categories = {m.categories})")

    def logp(self, m, y, f, p, cens=None, limit=None, time=None, nodes_lp=None):
        cutpoints = p["cutpoints"]
        y = np.asarray(y, int)
        k = cutpoints.type.shape[0]   # static: the number of cutpoints is K - 1
        upper = pt.concatenate([cutpoints, [np.inf]])[y] - f
        lower = pt.concatenate([[-np.inf], cutpoints])[y] - f
        lu, ll = -pt.log1pexp(-upper), -pt.log1pexp(-lower)    # log expit(upper), log expit(lower)
        mid = _logdiffexp(lu, ll)
        return pt.switch(y == k, -pt.log1pexp(lower), pt.switch(y == 0, lu, mid))

    def draw(self, m, f, sd, params, rng):
        cut = np.asarray(params["cutpoints"], float).reshape(len(f), 1, -1)
        cum = expit(cut - f[:, :, None])                        # P(Y <= k), k = 0..K-2
        return (rng.random(np.shape(f))[:, :, None] > cum).sum(axis=2).astype(float)

    def default_categories(self, m, y):
        return list(range(m.categories))

    def equation(self, m, output=None):
        return (f"P(DV_ij <= k) = expit(cutpoint_k{m.suffix} - {output or m.output}_ij), "
                f"k = 0..{m.categories - 2}")


class Count(Family):
    """Poisson (mean ``exp(f)``, or ``f`` with the identity link) and NB2 (``Var = m + m^2 / phi``)."""
    _MAX_CATEGORIES = 8

    def __init__(self, name: str):
        self.name = name

    def base_names(self, m):
        return ("phi",) if self.name == "negbin" else ()

    def dv_error(self, m, y):
        return (y < 0) | (y != np.round(y)), "a count DV must be a whole number >= 0"

    def logp(self, m, y, f, p, cens=None, limit=None, time=None, nodes_lp=None):
        y = np.asarray(y, float)
        log_m = f if m.link == "log" else pt.log(f)
        if self.name == "poisson":
            return y * log_m - pt.exp(log_m) - gammaln(y + 1)
        phi = p["phi"]
        log_pm = pt.logaddexp(pt.log(phi), log_m)   # log(phi + m)
        return (pt.gammaln(y + phi) - pt.gammaln(phi) - gammaln(y + 1)
                + phi * (pt.log(phi) - log_pm) + y * (log_m - log_pm))

    def draw(self, m, f, sd, params, rng):
        mean = np.exp(f) if m.link == "log" else np.maximum(f, 0.0)
        if self.name == "negbin":
            phi = np.asarray(params["phi"], float).reshape(-1, 1)
            mean = rng.gamma(phi, mean / phi)                   # NB2 = Poisson with a gamma-distributed mean
        return rng.poisson(mean).astype(float)

    def default_categories(self, m, y):
        top = int(np.ceil(np.quantile(y, 0.9))) if len(y) else 0   # 0.. the observed 90th percentile, at most 8
        return list(range(min(top, self._MAX_CATEGORIES - 1) + 1))


class TimeToEvent(Family):
    """Hazard ``h(t) = h0(t) exp(f(t))``; DV 1 event, 0 censored at TIME."""
    name = "tte"
    vpc = "kaplan-meier"

    def base_names(self, m):
        return ("lambda",) if m.hazard == "exponential" else ("lambda", "shape")

    def dv_error(self, m, y):
        return ~np.isin(y, [0, 1]), "a time-to-event DV must be 1 (event) or 0 (censored at TIME)"

    def logp(self, m, y, f, p, cens=None, limit=None, time=None, nodes_lp=None):
        return tte_logp(m.hazard, y, time, p["lambda"], p.get("shape"), f, nodes_lp, m.nodes)

    def draw(self, m, f, sd, params, rng):
        return np.full(np.shape(f), np.nan)   # event times are simulated over the hazard (evaluate.event_times)


NORMAL_KINDS = ("additive", "proportional", "combined", "exponential")
#: Every family by its ``likelihood`` name.
FAMILIES: dict[str, Family] = {**{k: Continuous(k) for k in NORMAL_KINDS}, "bernoulli": Bernoulli(),
                               "ordinal": Ordinal(), "poisson": Count("poisson"), "negbin": Count("negbin"),
                               "tte": TimeToEvent()}
LIKELIHOODS = tuple(FAMILIES)


# ------------------------------------------------------------------------------------------ densities

def normal_logp(kind: str, y, f, sd, cens=None, limit=None):
    """Log-density (or, for censored records, log-probability) of continuous observations.

    Parameters
    ----------
    kind : {"additive", "proportional", "combined", "exponential"}
    y : numpy.ndarray or tensor (n,)
        DV (the limit for censored records).  A tensor (a data container whose values change between
        fits of one compiled model) only where no record is censored.
    f, sd : tensor
        Prediction and residual SD (log scale for exponential error).
    cens : numpy.ndarray of int or tensor, optional
        0 observed, 1 below DV (M3: ``P(Y <= DV)``, or ``P(LIMIT <= Y <= DV)``), -1 above DV.  A tensor
        (the data container ``DV_cens``, 1 = below DV) makes every record's log-likelihood both
        terms, chosen by it, so that one compiled model serves any pattern of censored records
        (:func:`censored_by_data`).
    limit : numpy.ndarray of float, optional
        The interval's other end (NaN: open).
    """
    if cens is not None and not isinstance(cens, np.ndarray):
        return censored_by_data(kind, y, f, sd, cens)
    n = len(y) if isinstance(y, np.ndarray) else len(cens if cens is not None else limit)
    cens = np.zeros(n, int) if cens is None else np.asarray(cens)
    limit = np.full(n, np.nan) if limit is None else np.asarray(limit, float)
    log = kind == "exponential"
    mu, sd, positive = _guarded(kind, f, sd)
    out = pt.zeros(n)
    obs = np.flatnonzero(cens == 0)
    if len(obs):
        s, m, yo = take(sd, obs, n), take(mu, obs, n), take(y, obs, n)
        if log:   # DV > 0 on observed records (check_positive_dv)
            yo = np.log(yo) if isinstance(yo, np.ndarray) else pt.log(yo)
        lp = _density(yo, m, s, log)
        if positive is not None:
            lp = pt.switch(take(positive, obs, n), lp, -np.inf)
        out = put(out, obs, lp, n)
    if (cens != 0).any():
        if not isinstance(y, np.ndarray):
            raise TypeError("censored records need DV (their limit) as a constant array")
        from pymc.distributions.dist_math import (  # PyMC's stable normal tails
            normal_lccdf,
            normal_lcdf,
        )

        with np.errstate(divide="ignore"):
            yt = np.log(np.where(y > 0, y, 1.0)) if log else y
            lt = np.where(limit > 0, np.log(np.where(limit > 0, limit, 1.0)), -np.inf) if log else limit
        for side in (1, -1):
            for bounded in (False, True):
                idx = np.flatnonzero((cens == side) & (np.isfinite(lt) == bounded))
                if not len(idx):
                    continue
                m, s = mu[idx], sd[idx]
                tail = normal_lcdf if side == 1 else normal_lccdf
                lp = tail(m, s, yt[idx])
                if bounded:   # log(Phi(b) - Phi(a)) (or of the upper tails)
                    lp = _logdiffexp(lp, tail(m, s, lt[idx]))
                if positive is not None:   # IPRED 0 (SD 0, or log IPRED -inf): Y is 0, in the interval or not
                    lo, hi = (limit[idx], y[idx]) if side == 1 else (y[idx], limit[idx])
                    holds_zero = ~(lo > 0) & ~(hi < 0)   # an open end (NaN) holds it
                    lp = pt.switch(positive[idx], lp, np.where(holds_zero, 0.0, -np.inf))
                out = pt.set_subtensor(out[idx], lp)
    return out


def censored_by_data(kind: str, y, f, sd, cens):
    """Each record's log-density, or where ``cens > 0`` its M3 probability ``log P(Y <= DV)``.

    ``cens`` is a tensor (0 or 1 per record: the data container ``DV_cens``), so which records are
    censored is data, not the graph's structure: SBC and replicate trials sample one compiled model
    for replicates with different records below the LLOQ.  Both terms are formed for every record
    and each is finite with finite gradients everywhere (the unused one is multiplied by 0 in the
    gradient).  The same values as :func:`normal_logp` with ``cens`` as an array (the same
    formulas, PyMC's ``normal_lcdf`` for the tail); no interval limits, no right-censoring.
    """
    from pymc.distributions.dist_math import normal_lcdf  # PyMC's stable lower tail

    log = kind == "exponential"
    yt = pt.log(y) if log else y   # DV > 0 (check_positive_dv); a censored record's DV is its limit > 0
    mu, s, positive = _guarded(kind, f, sd)   # density 0 where IPRED is 0, P(Y <= limit) = 1
    density = _density(yt, mu, s, log)
    below = normal_lcdf(mu, s, yt)
    if positive is not None:
        density = pt.switch(positive, density, -np.inf)
        below = pt.switch(positive, below, 0.0)
    return pt.switch(pt.gt(cens, 0), below, density)


def _guarded(kind: str, f, s):
    """The normal's mean (log IPRED for exponential error) and SD, and where IPRED is positive (None
    where any IPRED will do).

    Before the first dose reaches the sampled compartment (pre-dose records, inside a lag time) IPRED
    is exactly 0: for proportional error SD = sigma_prop * IPRED is 0, for exponential error the mean
    ``log IPRED`` is -inf.  Y is then 0 with certainty: an observed DV > 0 has density 0 (such records
    are refused by ``check_zero_prediction`` when the design makes it so), a record censored below its
    LLOQ has probability 1.  The SD (or IPRED) is replaced by 1 there so that neither value nor gradient
    is NaN, and the caller puts the value of Y = 0 where IPRED is not positive.
    """
    if kind == "proportional":
        positive = s > 0
        return f, pt.switch(positive, s, 1.0), positive
    if kind == "exponential":
        positive = f > 0
        return pt.log(pt.switch(positive, f, 1.0)), s, positive
    return f, s, None


def _density(y, mu, s, log: bool):
    """Normal log-density of ``y`` (log DV for exponential error, with the Jacobian ``-log DV``)."""
    z = (y - mu) / s
    return -0.5 * z ** 2 - pt.log(s) - 0.5 * _LOG_2PI - (y if log else 0.0)


def take(x, idx: np.ndarray, n: int):
    """``x[idx]`` for sorted distinct record numbers ``idx`` of ``n``; ``x`` itself when they are all
    (no indexing op in the graph of a model with one observation type)."""
    return x if len(idx) == n else x[idx]


def put(base, idx: np.ndarray, value, n: int):
    """``base`` with ``value`` at sorted distinct record numbers ``idx`` of ``n``; ``value`` itself when
    they are all."""
    return value if len(idx) == n else pt.set_subtensor(base[idx], value)


def log_baseline_hazard(hazard, t, lam, shape=None):
    """``log h0(t)`` (t > 0)."""
    if hazard == "exponential":
        return pt.log(lam) * pt.ones_like(t)
    if hazard == "weibull":
        return pt.log(lam) + pt.log(shape) + (shape - 1) * pt.log(lam * t)
    return pt.log(lam) + shape * t


def cumulative_baseline_hazard(hazard, t, lam, shape=None):
    """``H0(t) = int_0^t h0``."""
    if hazard == "exponential":
        return lam * t
    if hazard == "weibull":
        return (lam * t) ** shape
    # Gompertz: lam (exp(shape t) - 1) / shape, -> lam t as shape -> 0
    st = shape * t
    return lam * t * pt.switch(pt.abs(st) < 1e-8, 1.0 + st / 2, pt.expm1(st) / pt.switch(pt.abs(st) < 1e-8, 1.0, st))


def tte_logp(hazard, y, t, lam, shape, lp_at_t, lp_nodes=None, nodes=32):
    """``DV log h(T) - H(T)`` with ``h = h0 exp(lp)``.

    ``lp_nodes`` None: ``lp`` is constant on [0, T] and ``H = H0(T) exp(lp)`` exactly;
    otherwise ``lp_nodes`` (n, Q) holds lp at the Gauss--Legendre nodes ``T (x + 1) / 2``.
    """
    y = np.asarray(y, float)
    t = np.asarray(t, float)
    log_h = log_baseline_hazard(hazard, t, lam, shape) + lp_at_t
    if lp_nodes is None:
        cum = cumulative_baseline_hazard(hazard, t, lam, shape) * pt.exp(lp_at_t)
    else:
        x, w = roots_legendre(nodes)
        tq = t[:, None] * (x[None, :] + 1) / 2
        h = pt.exp(log_baseline_hazard(hazard, tq, lam, shape) + lp_nodes)
        cum = (h * (w[None, :] * t[:, None] / 2)).sum(axis=1)
    return y * log_h - cum
