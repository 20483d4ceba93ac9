"""Beal's M3 in a NONMEM $ERROR (``F_FLAG = 1``, ``Y = PHI(...)``) -> bayesnlme's censored records.

The usual code (Ahn et al. 2008; Bergstrand & Karlsson 2009)::

    IPRED = F
    W = SQRT(THETA(4)**2 + THETA(5)**2*IPRED**2)
    IF (BLQ.EQ.1) THEN
      F_FLAG = 1
      Y = PHI((LLOQ - IPRED)/W)          ; the likelihood of a value below LLOQ
    ELSE
      F_FLAG = 0
      Y = IPRED + W*EPS(1)
    ENDIF

is bayesnlme's default handling of a censored record (``blq = "m3"``): ``CENS = 1`` on the records
where the ``PHI`` branch applies, with ``DV`` the limit, and the residual error of the other branch.
``Y = 1 - PHI((ULOQ - IPRED)/W)`` (above a limit) is ``CENS = -1``.  With a log-transformed DV
(``IPRED = LOG(F)``, ``Y = PHI((LOG(LLOQ) - IPRED)/W)``) the limit is read back on the natural scale.

Recognised by what the expressions are: ``Y`` has two branches, one with the EPSs and one with
``PHI`` and no EPS; ``F_FLAG`` is 1 exactly where the ``PHI`` branch applies; the ``PHI`` argument is
``(L - prediction) / SD`` with ``SD`` the residual SD of the other branch, and ``L`` is free of the
prediction, the THETAs and the EPSs (a data item such as ``LLOQ``, or a number).  Anything else with
a ``PHI`` (M4's ``(PHI(...) - PHI(-IPRED/W)) / (1 - PHI(-IPRED/W))``, an SD that is not the error
model's) is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy

from bayesnlme.importers.nonmem_data import can_evaluate, condition_text, evaluate
from bayesnlme.importers.nonmem_pk import Untranslatable


@dataclass
class Censoring:
    """Where the M3 branch applies (``condition``, data items), the ``limit`` (DV scale of the NONMEM data)
    and the direction: ``1`` below the limit (``PHI``), ``-1`` above it (``1 - PHI``)."""
    condition: object
    limit: object
    direction: int

    def describe(self) -> str:
        """``CENS = 1 where BLQ.EQ.1, DV = LLOQ there``: the data the censored records get."""
        return (f"censored records: CENS = {self.direction} where {condition_text(self.condition)}, "
                f"DV = {self.limit} there "
                f"(residual.blq = \"m3\", bayesnlme's default: the likelihood of a value "
                f"{'below' if self.direction == 1 else 'above'} the limit)")

    def columns(self, frame, observed: np.ndarray, log_dv: bool, computed: dict) -> tuple[np.ndarray, np.ndarray]:
        """``(CENS, limit)`` per record of a Pharmpy-read frame: the limit on the natural DV scale.
        ``computed``: covariates computed in $PK (name -> expression in data items), substituted."""
        sub = {sympy.Symbol(k): v for k, v in computed.items()}
        hit = observed & evaluate(self.condition.xreplace(sub), frame).astype(bool)
        limit = evaluate(self.limit.xreplace(sub), frame)
        return np.where(hit, self.direction, 0), np.exp(limit) if log_dv else limit


def _is_phi(e) -> bool:
    return isinstance(e, sympy.Function) and str(e.func) == "PHI"


def _branches(pw) -> tuple:
    """``((a, cond), (b, True))`` -> ``(a, b, cond)``: ``a`` where ``cond`` holds, else ``b``."""
    if not isinstance(pw, sympy.Piecewise) or len(pw.args) != 2 or pw.args[1][1] != sympy.true:
        raise Untranslatable("an M3 Y needs one IF ... ELSE (the PHI branch and the EPS branch)", pw.free_symbols)
    return pw.args[0][0], pw.args[1][0], pw.args[0][1]


def split_m3(y, flag, f, eps: dict, fixed_sigmas: dict, thetas: set):
    """``(Y of the observed records, Censoring)`` when ``Y`` is Beal's M3, else ``(y, None)``.

    Parameters
    ----------
    y : sympy.Expr
        ``Y`` with the $ERROR assignments substituted (in ``f``, EPSs, THETAs and data items).
    flag : sympy.Expr or None
        ``F_FLAG`` likewise, None when the code does not set it.
    f : sympy.Symbol
        The prediction ``F``.
    eps : dict
        EPS symbol -> its SIGMA symbol.
    fixed_sigmas : dict
        SIGMA name -> value, for the fixed ones.
    thetas : set of str

    Raises
    ------
    Untranslatable
    """
    if not any(_is_phi(a) for a in y.atoms(sympy.Function)):
        return y, None
    a, b, cond = _branches(y)
    with_eps = [bool(set(eps) & v.free_symbols) for v in (a, b)]
    if with_eps.count(True) != 1:
        raise Untranslatable("an M3 Y needs one branch with the EPSs and one with PHI and no EPS", y.free_symbols)
    censored, observed, where = (b, a, sympy.Not(cond)) if with_eps[0] else (a, b, cond)
    if flag is None:
        raise Untranslatable("Y = PHI(...) without F_FLAG = 1: NONMEM then reads it as a prediction, not as the "
                             "likelihood of a censored value", y.free_symbols)
    flagged = {1: sympy.true, 0: sympy.false}.get(flag) if flag.is_number else None
    if isinstance(flag, sympy.Piecewise) and len(flag.args) == 2 and flag.args[1][1] == sympy.true:
        fa, fb, fcond = _branches(flag)
        flagged = fcond if (fa, fb) == (1, 0) else sympy.Not(fcond) if (fa, fb) == (0, 1) else None
    if flagged is None or sympy.simplify(sympy.Equivalent(flagged, where)) != sympy.true:
        raise Untranslatable("F_FLAG is not 1 exactly where Y is the PHI branch", flag.free_symbols)
    phis = [g for g in censored.atoms(sympy.Function) if _is_phi(g)]
    direction = 1 if len(phis) == 1 and censored == phis[0] else (
        -1 if len(phis) == 1 and sympy.simplify(censored - (1 - phis[0])) == 0 else 0)
    if not direction:
        raise Untranslatable(f"the censored branch {censored} is not Beal's M3 (PHI((LLOQ - IPRED)/W), or 1 - PHI "
                             f"above a limit); M4 and other forms have no bayesnlme equivalent", y.free_symbols)
    pred = observed.subs({e: 0 for e in eps})
    variance = sum(sympy.diff(observed, e) ** 2 * s for e, s in eps.items()).xreplace(
        {sympy.Symbol(k): sympy.nsimplify(v) for k, v in fixed_sigmas.items()})
    positive = {s: sympy.Symbol(str(s), positive=True) for s in variance.free_symbols}   # SDs: sqrt(T**2) = T
    limit = sympy.simplify((phis[0].args[0] * sympy.sqrt(variance) + pred).xreplace(positive))
    limit = limit.xreplace({v: k for k, v in positive.items()})
    names = {str(s) for s in limit.free_symbols}
    if f in limit.free_symbols or names & (thetas | {str(e) for e in eps}) or not can_evaluate(limit):
        raise Untranslatable(f"the PHI argument {phis[0].args[0]} is not (LIMIT - prediction)/SD with the SD of the "
                             f"error model {sympy.sqrt(variance)}", y.free_symbols)
    return observed, Censoring(where, limit, direction)
