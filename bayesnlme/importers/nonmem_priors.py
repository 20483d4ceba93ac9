"""Priors for an imported NONMEM model, and the ``.ext`` file of a NONMEM run.

Two choices (``priors=`` of :func:`bayesnlme.importers.import_nonmem`):

``"weak"``
    Centred on the control stream's initial values.  Typical values: log-normal with median at the
    ``$THETA`` initial value and log-scale SD :data:`WEAK_LOG_SIGMA` = 1 (95% of the prior mass within a
    factor 7 of it).  Covariate effects: normal at the initial value (categorical: the log ratio),
    SD 1 for exponents and log ratios, ``2*|initial|`` (1 if 0) for exponential and linear slopes,
    truncated to the ``$THETA`` bounds.  OMEGA: half-normal on the SD of ETA with scale
    ``2*sqrt(OMEGA initial)`` (NONMEM's OMEGA is a variance).  SIGMA: half-normal on the residual SD,
    scale ``2*sqrt(SIGMA initial)`` (or ``2*|THETA|`` where a THETA is the SD).

``"estimates"``
    Centred on the final estimates of the ``.ext`` file (row ``ITERATION = -1000000000``), with
    widths from their standard errors (row ``-1000000001``, written when ``$COVARIANCE`` succeeded):
    a typical value ``log-normal(median = estimate, sigma = sqrt(log(1 + RSE^2)))``; an effect
    ``normal(estimate, SE)`` (log ratio: ``SE/ratio`` by the delta method); an OMEGA variance
    ``w2`` with standard error ``se`` -> log-normal on the SD of ETA with median ``sqrt(w2)`` and
    log-scale SD ``sqrt(log(1 + (se/w2)^2)) / 2`` (the SD's log is half the variance's); SIGMA alike.
    Where the ``.ext`` file has no standard error for a parameter the weak width is used around
    the estimate.

FIX in the control stream: a fixed THETA, OMEGA or SIGMA is fixed in the spec (its value, as SD).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.importers.nonmem_pk import Untranslatable

WEAK_LOG_SIGMA = 1.0
WEAK_EFFECT_SD = {"power": 1.0, "categorical": 1.0}
WEAK_SCALE = 2.0   # half-normal scale of an SD prior, in units of the initial SD
FINAL, SE_ROW = -1000000000, -1000000001


@dataclass
class Value:
    """A NONMEM parameter as the prior sees it: the value (initial or final), its SE, bounds and FIX."""
    value: float
    se: float | None = None
    lower: float = -math.inf
    upper: float = math.inf
    fixed: bool = False


def slope_ratio(a: Value, b: Value) -> Value:
    """``a / b``: an additive covariate slope ``a`` relative to the typical value ``b > 0`` (any sign).

    SE by the delta method, ``sqrt((se_a/b)^2 + (a se_b / b^2)^2)``, without the covariance of the two
    estimates; unbounded.
    """
    if a.fixed != b.fixed:
        raise Untranslatable("the slope's THETA is fixed and the typical value's estimated (or the reverse); "
                             "bayesnlme estimates the relative slope")
    if b.value <= 0:
        raise Untranslatable(f"typical value {b.value:g} is not positive: no relative slope")
    se = math.hypot(a.se / b.value, a.value * b.se / b.value ** 2) if a.se and b.se else None
    return Value(a.value / b.value, se, -math.inf, math.inf, a.fixed)


def ratio(a: Value, b: Value) -> Value:
    """``a / b`` of two positive THETAs as one value (a category's THETA over the reference's).

    The SE by the delta method, ``(a/b) sqrt((se_a/a)^2 + (se_b/b)^2)``, without the covariance of
    the two estimates (the ``.ext`` file does not give it); positive when both are bounded below by 0.
    """
    if a.fixed != b.fixed:
        raise Untranslatable("one branch's THETA is fixed and the other estimated; bayesnlme estimates the "
                             "ratio of the two")
    if a.value <= 0 or b.value <= 0:
        raise Untranslatable(f"THETA values {a.value:g} and {b.value:g} are not both positive: no log ratio")
    r = a.value / b.value
    se = r * math.hypot(a.se / a.value, b.se / b.value) if a.se and b.se else None
    return Value(r, se, 0.0 if a.lower >= 0 and b.lower >= 0 else -math.inf, math.inf, a.fixed)


def read_ext(path) -> tuple[dict, dict]:
    """Final estimates and standard errors of a NONMEM ``.ext`` file (its last table).

    Returns
    -------
    estimates, standard_errors : dict
        Column name (``THETA1``, ``OMEGA(1,1)``, ``SIGMA(1,1)``) -> value; standard errors are
        empty without a covariance step; a fixed parameter's SE (written as 0 or 1e10) is left out.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise BayesNLMEInputError(f"{path}: cannot read the .ext file ({exc.strerror})") from None
    starts = [i for i, line in enumerate(lines) if line.startswith("TABLE NO.")]
    body = lines[starts[-1] + 1:] if starts else lines
    if not body or not body[0].split() or body[0].split()[0] != "ITERATION":
        raise BayesNLMEInputError(f"{path}: not a NONMEM .ext file (no ITERATION header)")
    header = body[0].split()
    rows = {}
    for n, line in enumerate(body[1:], start=len(lines) - len(body) + 2):
        parts = line.split()
        if len(parts) != len(header):
            raise BayesNLMEInputError(f"{path}, line {n}: {len(parts)} values for {len(header)} columns")
        try:
            rows[int(float(parts[0]))] = [float(p) for p in parts[1:]]
        except ValueError:
            raise BayesNLMEInputError(f"{path}, line {n}: non-numeric value") from None
    if FINAL not in rows:
        raise BayesNLMEInputError(f"{path}: no final estimates (no row with ITERATION = {FINAL})")
    est = dict(zip(header[1:], rows[FINAL]))
    se = {k: v for k, v in zip(header[1:], rows.get(SE_ROW, [])) if 0 < v < 1e9}
    return est, se


_TITLE = re.compile(r"^\s*\S*\*{5,}\s+([A-Z][A-Z ]*[A-Z])\s+\*{5,}\s*$")
#: Listing sections that follow an estimation step (the others name the step's method)
_SECTIONS = ("MINIMUM VALUE OF OBJECTIVE FUNCTION", "FINAL PARAMETER ESTIMATE", "STANDARD ERROR OF ESTIMATE",
             "COVARIANCE MATRIX OF ESTIMATE", "CORRELATION MATRIX OF ESTIMATE",
             "INVERSE COVARIANCE MATRIX OF ESTIMATE")
_BLOCK = re.compile(r"^\s*(THETA|OMEGA|SIGMA) - (VECTOR|COV MATRIX|CORR MATRIX)")
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([ED][-+]?\d+)?$", re.IGNORECASE)


def read_lst(path) -> tuple[dict, dict]:
    """Final estimates and standard errors from a NONMEM output listing (``.lst``), where no ``.ext`` is.

    Reads the last ``FINAL PARAMETER ESTIMATE`` section (the last estimation step) and the ``STANDARD
    ERROR OF ESTIMATE`` section that follows it (the covariance step): the THETA vector and the lower
    triangles of the OMEGA and SIGMA covariance matrices (``.........`` marks a fixed element's SE).  The
    listing prints 3 significant digits, the ``.ext`` file more: prefer the ``.ext`` file where it exists.

    Returns
    -------
    estimates, standard_errors : dict
        Keyed like :func:`read_ext`: ``THETA1``, ``OMEGA(2,1)``, ``SIGMA(1,1)``.
    """
    path = Path(path)
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        raise BayesNLMEInputError(f"{path}: cannot read the .lst file ({exc.strerror})") from None
    titles = [(i, m.group(1)) for i, line in enumerate(lines)
              if (m := _TITLE.match(line)) and m.group(1) in _SECTIONS]
    finals = [k for k, (_, name) in enumerate(titles) if name == "FINAL PARAMETER ESTIMATE"]
    if not finals:
        raise BayesNLMEInputError(f"{path}: no FINAL PARAMETER ESTIMATE section (not a NONMEM listing, or the "
                                  f"run did not finish)")
    k = finals[-1]

    def section(j: int) -> list:   # from the title to the next banner (a line of asterisks only)
        start = titles[j][0] + 1
        end = next((i for i in range(start + 1, len(lines)) if lines[i].strip() and set(lines[i].strip()) == {"*"}),
                   len(lines))
        return lines[start:end]

    est = _lst_values(section(k), path)
    se = {}
    if k + 1 < len(titles) and titles[k + 1][1] == "STANDARD ERROR OF ESTIMATE":
        se = {n: v for n, v in _lst_values(section(k + 1), path).items() if v is not None and v > 0}
    return {n: v for n, v in est.items() if v is not None}, se


def _lst_values(lines: list, path) -> dict:
    """THETA, OMEGA and SIGMA (covariance matrices, not correlations) of one listing section."""
    out, block, row = {}, None, None
    thetas = []
    for line in lines:
        m = _BLOCK.match(line)
        if m:
            block = m.group(1) if m.group(2) != "CORR MATRIX" else None
            row = None
            continue
        if block is None:
            continue
        text = line.lstrip()
        tokens = (text[1:] if text.startswith("+") else text).split()   # "+" opens a matrix row's values
        if block == "THETA":
            if tokens and not any(t.startswith("TH") for t in tokens):
                thetas += [_lst_number(t, path) for t in tokens]
            continue
        label = re.fullmatch(r"\s*(ETA|EPS)(\d+)\s*", line)
        if label:
            row, col = int(label.group(2)), 1
            continue
        if row is not None and line.lstrip().startswith("+"):
            for t in tokens:
                out[f"{block}({row},{col})"] = _lst_number(t, path)
                col += 1
    out.update({f"THETA{i}": v for i, v in enumerate(thetas, 1)})
    return out


def _lst_number(token: str, path):
    if set(token) == {"."}:
        return None
    if not _NUMBER.match(token):
        raise BayesNLMEInputError(f"{path}: unexpected value {token!r} in a parameter table of the listing")
    return float(token.upper().replace("D", "E"))


def ext_table(est: dict, se: dict) -> pd.DataFrame:
    """The estimates and SEs as a table (for the summary the command prints)."""
    return pd.DataFrame({"estimate": pd.Series(est), "se": pd.Series(se)}).drop(index="OBJ", errors="ignore")


def _rse_log_sigma(v: Value) -> float:
    return math.sqrt(math.log1p((v.se / abs(v.value)) ** 2)) if v.se else WEAK_LOG_SIGMA


def typical_value(v: Value, scale: float, domain: tuple, log: bool = False, logit: bool = False) -> dict:
    """The ``prior``/``fixed`` entry of a typical value ``scale * THETA`` (natural units).

    ``log``: the typical value is ``scale * exp(THETA)`` (a THETA on the log scale); its bounds and value are
    exponentiated and its SE becomes the relative SE, so its normal prior is the log-normal one.
    ``logit``: the typical value is ``expit(THETA)`` (a fraction, THETA on the logit scale); value and bounds
    through expit, the SE by the delta method (``p (1 - p) SE``).
    """
    if log:
        v = Value(math.exp(v.value), v.se * math.exp(v.value) if v.se else None, math.exp(v.lower),
                  math.exp(v.upper), v.fixed)
    elif logit:
        def expit(x):
            return 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0
        p = expit(v.value)
        v = Value(p, v.se * p * (1 - p) if v.se else None, expit(v.lower), expit(v.upper), v.fixed)
    x = v.value * scale
    if v.fixed:
        return {"fixed": x}
    lo, hi = max(domain[0], v.lower * scale), min(domain[1], v.upper * scale)
    if math.isfinite(hi):   # e.g. F in (0, 1): truncated normal within the bounds
        sd = v.se * scale if v.se else max(abs(x), 0.1)
        return {"prior": {"dist": "truncatednormal", "mu": x, "sigma": sd, "lower": lo, "upper": hi}}
    if x <= 0:
        raise Untranslatable(f"THETA value {v.value:g} is not positive; a log-normal prior needs a positive "
                             f"centre")
    return {"prior": {"dist": "lognormal", "median": x, "sigma": _rse_log_sigma(v)}}


def effect(v: Value, kind: str, transform: str) -> dict:
    """The ``prior``/``fixed`` entry of a covariate effect, on bayesnlme's scale of the effect.

    ``transform``: ``"identity"``, ``"log"`` (bayesnlme theta = log THETA) or ``"log1p"``
    (log(1 + THETA)); bounds and SE are carried through the same map (SE by the delta method).
    """
    f, df = {"identity": (lambda x: x, lambda x: 1.0), "log": (math.log, lambda x: 1.0 / x),
             "log1p": (math.log1p, lambda x: 1.0 / (1.0 + x))}[transform]
    floor = {"identity": -math.inf, "log": 0.0, "log1p": -1.0}[transform]
    if v.value <= floor:
        raise Untranslatable(f"THETA value {v.value:g} has no log ratio ({transform})")
    mu = f(v.value)
    if v.fixed:
        if kind == "categorical":
            raise Untranslatable("a fixed categorical effect (bayesnlme estimates categorical effects)")
        return {"fixed": mu}
    if v.se:
        sd = v.se * df(v.value)
    elif transform != "identity":   # a log ratio (THETA(7)**SEX, IF ... TVCL*THETA(7)): SD 1 whatever the form
        sd = 1.0
    else:
        sd = WEAK_EFFECT_SD.get(kind, 2.0 * abs(v.value) if v.value != 0 else 1.0)
    lo = f(v.lower) if v.lower > floor else -math.inf
    hi = f(v.upper) if math.isfinite(v.upper) else math.inf
    if math.isfinite(lo) or math.isfinite(hi):
        prior = {"dist": "truncatednormal", "mu": mu, "sigma": sd}
        prior.update({k: b for k, b in (("lower", lo), ("upper", hi)) if math.isfinite(b)})
        return {"prior": prior}
    return {"prior": {"dist": "normal", "mu": mu, "sigma": sd}}


def sd_prior(v: Value, factor: float = 1.0, variance: bool = True) -> dict:
    """Prior of an SD given a NONMEM variance (``variance=True``) or a THETA that is an SD.

    Returns ``{"fixed": sd}`` for a FIX value, else ``{"prior": ...}``: log-normal from the SE
    (``estimates`` with a covariance step), else half-normal with scale ``2 * sd``.
    """
    sd = factor * (math.sqrt(v.value) if variance else abs(v.value))
    if v.fixed:
        return {"fixed": sd}
    if sd <= 0:
        raise Untranslatable("an estimated variance or SD of 0 gives no scale for its prior")
    if v.se:
        half = 0.5 if variance else 1.0
        return {"prior": {"dist": "lognormal", "median": sd, "sigma": half * _rse_log_sigma(v)}}
    return {"prior": {"dist": "halfnormal", "sigma": WEAK_SCALE * sd}}
