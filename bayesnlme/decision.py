"""Decision rules of a replicate trial: what one replicate study's posterior must show to succeed.

:func:`bayesnlme.trial.trial` applies a :class:`DecisionRule` to the posterior of every replicate study.
Three kinds:

``DecisionRule.interval(parameter, ci=0.9, lower=0.8, upper=1.25, scale=...)``
    success when the equal-tailed ``ci`` credible interval of the parameter, on a scale, lies within
    ``[lower, upper]``.  Scales: ``"relative"`` (the parameter over its posterior median: the
    precision criterion of paediatric study design, e.g. 95% CI of CL within 60-140% of the
    estimate), ``"exp"`` (exp of the parameter: the ratio a categorical or log-scale covariate effect
    implies, e.g. a drug-interaction ratio within the 0.8-1.25 no-effect boundaries), ``"truth"``
    (the parameter over the replicate's true value) or ``"natural"``.
``DecisionRule.probability(parameter, threshold=0, above=True, level=0.95)``
    success when ``P(parameter > threshold) >= level`` (or ``<``), e.g. a covariate effect detected.
``DecisionRule.attainment(target, dose=, ii=, level=0.9, criterion="mean", ...)``
    success when the probability of target attainment (PTA) of a regimen at steady state, computed
    from the replicate's posterior, reaches ``level``: e.g. "PTA(CTROUGH > 10) >= 90% at 400 mg every
    12 h".  At each of ``n_draws`` posterior draws of the replicate's population parameters,
    ``n_subjects`` new subjects are simulated on the regimen at steady state by
    :func:`bayesnlme.evaluate.regimens.evaluate_regimens` (concentrations without residual error; the
    same machinery as ``bayesnlme simulate``), and the PTA of that draw is the share of them meeting
    the target.  ``criterion="mean"`` (the default, the usual dose-selection criterion): success when
    the posterior mean PTA -- the share of all simulated subjects, i.e. the PTA predicted for a new
    patient population -- is at least ``level``.  ``criterion="lower"``: success when the lower end of
    the equal-tailed ``ci`` credible interval of the PTA is at least ``level`` (the number a regimen
    table's ``_lo`` column shows), i.e. ``P(PTA >= level | data) >= (1 + ci) / 2``: the study must also
    make the PTA precise.  A draw's PTA carries Monte Carlo noise of about ``sqrt(p (1 - p) /
    n_subjects)`` (0.03 at p = 0.9 and 100 subjects), which widens its credible interval: use a few
    hundred subjects with ``criterion="lower"``.  The new subjects' covariates are drawn from the
    population the trial's design samples (the fitted subjects for ``covariates="resample"``, the
    covariate table, or the design's own subjects; see :func:`bayesnlme.trial.trial`); the replicate's
    "truth" is the PTA at the population parameters it was simulated from (from ``n_subjects`` new
    subjects).  Every replicate and the truth use the same new subjects' covariates and the same
    random-number seed (the run seed): replicates differ by their posteriors, not by Monte Carlo
    noise, and the simulated design is compiled once per process
    (:func:`bayesnlme.evaluate.simulate.design_model`).

Rules are data: :func:`rule_from_dict` (and :func:`load_rule` for a TOML file) build one from keys
(``kind`` plus the keyword arguments above), with one-line errors naming the key at fault.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.individual_dosing import parse_target
from bayesnlme.evaluate.regimens import METRICS, attains, evaluate_regimens, target_label

#: Metrics an attainment rule's target may use: the regimen evaluation's, and the daily AUC.
ATTAINMENT_METRICS = METRICS + ("AUC24",)

SCALES = ("relative", "exp", "truth", "natural")
CRITERIA = ("mean", "lower")
KINDS = ("interval", "probability", "attainment")
#: keys a rule of each kind may have (besides ``kind``), and those it must have
RULE_KEYS = {"interval": ("parameter", "ci", "lower", "upper", "scale"),
             "probability": ("parameter", "threshold", "above", "level"),
             "attainment": ("target", "dose", "ii", "duration", "cmt", "level", "criterion", "ci", "n_subjects",
                            "n_draws")}
REQUIRED = {"interval": ("parameter",), "probability": ("parameter",), "attainment": ("target", "dose", "ii")}
_TEXT = ("parameter", "scale", "criterion")
_WHOLE = ("cmt", "n_subjects", "n_draws")


@dataclass(frozen=True)
class DecisionRule:
    """What a replicate study must show (see the module docstring).

    Build one with :meth:`interval`, :meth:`probability` or :meth:`attainment` (or
    :func:`rule_from_dict`), which check the arguments.  ``parameter`` of an attainment rule is the
    target's label, e.g. ``P(CTROUGH>10)``.
    """

    kind: str
    parameter: str
    ci: float = 0.9
    lower: float = -np.inf
    upper: float = np.inf
    scale: str = "natural"
    threshold: float = 0.0
    above: bool = True
    level: float = 0.95
    target: dict | None = None
    dose: float = np.nan
    ii: float = np.nan
    duration: float = 0.0
    cmt: int = 0
    criterion: str = "mean"
    n_subjects: int = 100
    n_draws: int = 100

    @classmethod
    def interval(cls, parameter: str, *, ci: float = 0.9, lower: float = -np.inf, upper: float = np.inf,
                 scale: str = "relative") -> "DecisionRule":
        """Success when the ``ci`` credible interval (on ``scale``) lies within ``[lower, upper]``."""
        if scale not in SCALES:
            raise BayesNLMEInputError(f"decision rule scale must be one of {', '.join(SCALES)}, got {scale!r}")
        if not (0 < ci < 1 and lower < upper):
            raise BayesNLMEInputError(f"decision rule needs 0 < ci < 1 and lower < upper (got ci {ci}, "
                                      f"{lower}-{upper})")
        return cls("interval", parameter, ci=ci, lower=lower, upper=upper, scale=scale)

    @classmethod
    def probability(cls, parameter: str, *, threshold: float = 0.0, above: bool = True,
                    level: float = 0.95) -> "DecisionRule":
        """Success when ``P(parameter > threshold) >= level`` (``above=False``: ``<``)."""
        if not 0 < level < 1:
            raise BayesNLMEInputError(f"decision rule level must be between 0 and 1, got {level!r}")
        return cls("probability", parameter, threshold=threshold, above=above, level=level)

    @classmethod
    def attainment(cls, target, *, dose: float, ii: float, level: float = 0.9, criterion: str = "mean",
                   ci: float = 0.9, duration: float = 0.0, cmt: int = 0, n_subjects: int = 100,
                   n_draws: int = 100) -> "DecisionRule":
        """Success when the probability of target attainment at a regimen reaches ``level``.

        Parameters
        ----------
        target : str or dict
            ``"CTROUGH >10"``, ``"AUC24 400-600"``, ``"CMAX <40"`` or ``{"metric": "CTROUGH", "above":
            10}``; metric one of ``AUCTAU`` (DV units x time), ``AUC24`` (``AUCTAU * 24 / ii``: the daily
            AUC, time in hours -- the vancomycin target), ``CMAX``, ``CMIN``, ``CTROUGH`` (DV units).
        dose : float
            Amount per dose (AMT units, e.g. mg).
        ii : float
            Dosing interval (time units of the data, e.g. h).
        level : float
            The PTA to reach (0 < level < 1), e.g. 0.9.
        criterion : {"mean", "lower"}
            The posterior mean PTA, or the lower end of its ``ci`` credible interval, must reach ``level``.
        ci : float
            Credible interval of the PTA (reported; the criterion with ``"lower"``).
        duration : float
            Infusion duration (time units; 0: bolus or oral).
        cmt : int
            Dose compartment (0: the model's default).
        n_subjects, n_draws : int
            New subjects per posterior draw, and posterior draws of the replicate, behind the PTA.

        Examples
        --------
        >>> DecisionRule.attainment("CTROUGH >10", dose=400, ii=12).describe()
        'posterior mean probability of target attainment P(CTROUGH>10) >= 0.9 at 400 every 12 (steady state)'
        """
        t = _target(target)
        for name, value, low, strict in (("dose", dose, 0, True), ("ii", ii, 0, True), ("duration", duration, 0, False),
                                         ("cmt", cmt, 0, False), ("n_subjects", n_subjects, 1, False),
                                         ("n_draws", n_draws, 1, False)):
            if not (value > low if strict else value >= low):   # NaN fails too
                raise BayesNLMEInputError(f"decision rule {name} must be {'>' if strict else '>='} {low}, "
                                          f"got {value!r}")
        if not 0 < level < 1:
            raise BayesNLMEInputError(f"decision rule level must be between 0 and 1, got {level!r}")
        if not 0 < ci < 1:
            raise BayesNLMEInputError(f"decision rule ci must be between 0 and 1, got {ci!r}")
        if criterion not in CRITERIA:
            raise BayesNLMEInputError(f"decision rule criterion must be one of {', '.join(CRITERIA)}, "
                                      f"got {criterion!r}")
        return cls("attainment", target_label(t), ci=ci, level=level, target=t, dose=float(dose), ii=float(ii),
                   duration=float(duration), cmt=int(cmt), criterion=criterion, n_subjects=int(n_subjects),
                   n_draws=int(n_draws))

    def describe(self) -> str:
        """The rule in one sentence."""
        if self.kind == "probability":
            return (f"P({self.parameter} {'>' if self.above else '<'} {self.threshold:g}) >= {self.level:g}")
        if self.kind == "attainment":
            of = "posterior mean" if self.criterion == "mean" else f"lower end of the {100 * self.ci:g}% CrI of the"
            infusion = f" infused over {self.duration:g}" if self.duration > 0 else ""
            return (f"{of} probability of target attainment {self.parameter} >= {self.level:g} at {self.dose:g} "
                    f"every {self.ii:g}{infusion} (steady state)")
        of = {"relative": f"{self.parameter} / its posterior median", "exp": f"exp({self.parameter})",
              "truth": f"{self.parameter} / its true value", "natural": self.parameter}[self.scale]
        return f"{100 * self.ci:g}% CrI of {of} within {self.lower:g}-{self.upper:g}"

    def to_dict(self) -> dict:
        """The rule's fields (JSON-able; ``DecisionRule(**rule.to_dict())`` gives the rule back)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def evaluate(self, draws: np.ndarray, truth: float) -> dict:
        """Apply the rule to a replicate's posterior draws.

        Parameters
        ----------
        draws : numpy.ndarray
            Posterior draws of the parameter; for an attainment rule, the PTA at each draw
            (:func:`attainment_draws`, a share in [0, 1]).
        truth : float
            The replicate's true value (the ``"truth"`` scale divides by it).

        Returns
        -------
        dict
            ``estimate`` (posterior median; for attainment the posterior mean PTA), ``lower`` and
            ``upper`` (the ``ci`` interval; not for probability rules), ``probability`` (probability
            rules: ``P(parameter > threshold)``; attainment: ``P(PTA >= level)``) and ``success``.
        """
        x = np.asarray(draws, float).ravel()
        if self.kind == "probability":
            prob = float((x > self.threshold).mean() if self.above else (x < self.threshold).mean())
            return {"estimate": float(np.median(x)), "probability": prob, "success": bool(prob >= self.level)}
        if self.kind == "attainment":
            lo, hi = np.quantile(x, [(1 - self.ci) / 2, (1 + self.ci) / 2])
            mean = float(x.mean())
            judged = mean if self.criterion == "mean" else lo
            return {"estimate": mean, "lower": float(lo), "upper": float(hi),
                    "probability": float((x >= self.level).mean()), "success": bool(judged >= self.level)}
        y = {"relative": x / np.median(x), "exp": np.exp(x), "truth": x / truth, "natural": x}[self.scale]
        lo, hi = np.quantile(y, [(1 - self.ci) / 2, (1 + self.ci) / 2])
        return {"estimate": float(np.median(x)), "lower": float(lo), "upper": float(hi),
                "success": bool(self.lower <= lo and hi <= self.upper)}


def _target(target) -> dict:
    """A regimen-evaluation target from text or a table, checked."""
    if isinstance(target, str):
        t = parse_target(target)
    elif isinstance(target, dict):
        t = dict(target)
        extra = sorted(set(t) - {"metric", "above", "below"})
        if extra or not {"above", "below"} & set(t):
            raise BayesNLMEInputError(f"decision rule target needs metric and 'above' and/or 'below' (numbers) "
                                      f"and nothing else, got {target!r}")
        for k in ("above", "below"):
            if k in t and (not isinstance(t[k], (int, float)) or isinstance(t[k], bool)):
                raise BayesNLMEInputError(f"decision rule target: {k} must be a number, got {t[k]!r}")
            if k in t:
                t[k] = float(t[k])
        if "above" in t and "below" in t and not t["above"] < t["below"]:
            raise BayesNLMEInputError(f"decision rule target: above ({t['above']:g}) must be below 'below' "
                                      f"({t['below']:g})")
    else:
        raise BayesNLMEInputError(f"decision rule target must be text such as 'CTROUGH >10' or a table "
                                  f"{{metric, above, below}}, got {target!r}")
    if t.get("metric") not in ATTAINMENT_METRICS:
        raise BayesNLMEInputError(f"decision rule target metric must be one of {', '.join(ATTAINMENT_METRICS)} "
                                  f"(steady state over one interval), got {t.get('metric')!r}")
    return t


def attainment_draws(result, rule: DecisionRule, *, population: pd.DataFrame | None = None, seed: int = 0,
                     n_draws: int | None = -1) -> np.ndarray:
    """The probability of target attainment of an attainment rule's regimen at each posterior draw.

    Parameters
    ----------
    result : FitResult
        A posterior (e.g. a replicate study's).
    rule : DecisionRule
        An attainment rule: its target, regimen, ``n_subjects`` and ``n_draws``.
    population : pandas.DataFrame, optional
        Covariates of the population the new subjects come from (default: the subjects of ``result``);
        see :func:`bayesnlme.evaluate.regimens.evaluate_regimens`.
    seed : int
    n_draws : int or None
        Posterior draws (evenly thinned); None: all; default: the rule's ``n_draws``.

    Returns
    -------
    numpy.ndarray, shape (n_draws,)
        Share of the ``rule.n_subjects`` new subjects of each draw that meet the target.
    """
    _, metrics = evaluate_regimens(result, [rule.dose], [rule.ii], duration=rule.duration, cmt=rule.cmt,
                                   n_subjects=rule.n_subjects, n_draws=rule.n_draws if n_draws == -1 else n_draws,
                                   seed=seed, population=population)
    metric = rule.target["metric"]
    values = (metrics["AUCTAU"].to_numpy() * 24.0 / rule.ii if metric == "AUC24"   # daily AUC, time in hours
              else metrics[metric].to_numpy())
    ok = attains(values, rule.target)
    return pd.Series(ok).groupby(metrics["DRAW"].to_numpy()).mean().to_numpy()


def rule_from_dict(d: dict, source: str = "decision rule") -> DecisionRule:
    """A :class:`DecisionRule` from keys: ``kind`` and that kind's arguments (:data:`RULE_KEYS`).

    Parameters
    ----------
    d : dict
        E.g. ``{"kind": "interval", "parameter": "CL", "lower": 0.8, "upper": 1.25}`` or ``{"kind":
        "attainment", "target": "CTROUGH >10", "dose": 400, "ii": 12, "level": 0.9}``; an attainment
        target may also be a table ``{metric = "CTROUGH", above = 10}``.
    source : str
        Where the keys came from, for messages (a file name, ``--rule``).

    Raises
    ------
    BayesNLMEInputError
        One line naming the source and the key at fault.

    Examples
    --------
    >>> rule_from_dict({"kind": "probability", "parameter": "WT_on_CL", "level": 0.9}).describe()
    'P(WT_on_CL > 0) >= 0.9'
    """
    def bad(key, msg):
        return BayesNLMEInputError(f"{source}: key {key!r}: {msg}")

    kind = d.get("kind")
    if kind not in KINDS:
        raise bad("kind", f"required: one of {', '.join(KINDS)}, got {kind!r}")
    allowed = RULE_KEYS[kind]
    unknown = sorted(set(d) - set(allowed) - {"kind"})
    if unknown:
        raise bad(unknown[0], f"unknown for a rule of kind {kind} (allowed: kind, {', '.join(allowed)})")
    for key in REQUIRED[kind]:
        if key not in d:
            raise bad(key, f"required for a rule of kind {kind}")
    args = {}
    for key in allowed:
        if key not in d:
            continue
        v = d[key]
        if key in _TEXT:
            ok = isinstance(v, str) and v != ""
            what = "text"
        elif key == "above":
            ok, what = isinstance(v, bool), "true or false"
        elif key == "target":
            ok, what = isinstance(v, (str, dict)), "text such as 'CTROUGH >10' or a table {metric, above, below}"
        elif key in _WHOLE:
            ok, what = isinstance(v, int) and not isinstance(v, bool), "a whole number"
        else:
            ok, what = isinstance(v, (int, float)) and not isinstance(v, bool), "a number"
        if not ok:
            raise bad(key, f"must be {what}, got {v!r}")
        args[key] = v
    first = args.pop("parameter", None) if kind != "attainment" else args.pop("target")
    try:
        return getattr(DecisionRule, kind)(first, **args)
    except BayesNLMEInputError as exc:
        # the constructors' messages name the argument; say where it came from
        raise BayesNLMEInputError(f"{source}: {exc}") from None


def load_rule(path) -> DecisionRule:
    """A :class:`DecisionRule` from a TOML file of keys (see :func:`rule_from_dict`); never executed.

    Examples
    --------
    A file ``rule.toml``::

        kind = "attainment"
        target = "CTROUGH >10"     # or target = { metric = "CTROUGH", above = 10 }
        dose = 400                 # AMT units per dose
        ii = 12                    # dosing interval, time units
        level = 0.9                # PTA to reach
        criterion = "mean"         # or "lower": the lower end of the ci CrI of the PTA
    """
    path = Path(path)
    if not path.is_file():
        raise BayesNLMEInputError(f"{path}: rule file not found")
    try:
        d = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BayesNLMEInputError(f"{path}: not valid TOML ({' '.join(str(exc).split())})") from None
    return rule_from_dict(d, str(path))
