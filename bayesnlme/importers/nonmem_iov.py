"""Inter-occasion variability written NONMEM's way -> bayesnlme's ``OCC`` column and ``omega_iov``.

NONMEM has no occasion data item: a modeller gives each occasion an ETA of its own, all with one
variance (``$OMEGA BLOCK(1) 0.02`` then ``$OMEGA BLOCK(1) SAME`` once per further occasion), and
switches them on with 0/1 indicators of a data item::

    OCC1 = 0                                ; or  IF (OCC.EQ.1) IOVCL = ETA(4)
    OCC2 = 0                                ;     IF (OCC.EQ.2) IOVCL = ETA(5)
    IF (OCC.EQ.1) OCC1 = 1
    IF (OCC.EQ.2) OCC2 = 1
    IOVCL = OCC1*ETA(4) + OCC2*ETA(5)
    CL = TVCL*EXP(ETA(1) + IOVCL)

That is bayesnlme's ``P = TV * exp(ETA + KAPPA)`` with one KAPPA per subject and occasion:
``omega_iov`` is the square root of the shared variance, and the occasion of each record is the
number of the ETA switched on there (``OCC = 1`` where ``ETA(4)`` applies, ``2`` where ``ETA(5)``
does), a data column computed per record from the indicators, like any covariate computed in $PK.

Recognised by what the expression *is*, not by how it is written: after all assignments are
substituted, ``d log(P) / d ETA(k)`` must be free of every ETA (``P`` is log-linear in the
occasion ETAs) and 0 or 1 on each record, with exactly one occasion ETA switched on at each
observation.  One occasion layout for all parameters with IOV (bayesnlme has one ``OCC`` column).

The difference from NONMEM, stated where it is mapped: NONMEM changes a subject's parameters at
the first record of the next occasion and carries the amounts over; bayesnlme's closed forms
evaluate each observation with its occasion's parameters for every dose.  The two agree when the
drug of earlier occasions is gone (wash-out between periods, separate dosing days) and differ by
the carried-over drug otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import sympy

from bayesnlme.importers.nonmem_data import can_evaluate, condition_text, evaluate
from bayesnlme.importers.nonmem_pk import Untranslatable


@dataclass
class Occasions:
    """The occasion ETAs of one parameter: ``{ETA name: its 0/1 indicator}`` in ETA order."""
    parameter: str
    indicators: dict
    parameter_nonmem: str = ""

    def describe(self) -> str:
        """``1 where OCC.EQ.1, 2 where OCC.EQ.2``: the occasion number where each ETA is switched on."""
        return ", ".join(f"{k} where {_condition_text(c)}" for k, c in enumerate(self.indicators.values(), start=1))


def _condition_text(indicator) -> str:
    """NONMEM's text of a 0/1 indicator ``Piecewise((1, Eq(OCC, 1)), (0, True))`` -> ``OCC.EQ.1``."""
    if (isinstance(indicator, sympy.Piecewise) and len(indicator.args) == 2 and indicator.args[0][0] == 1
            and indicator.args[1] == (0, sympy.true)):
        return condition_text(indicator.args[0][1])
    return str(indicator)


def split_occasions(name: str, expr, iov_etas: set, all_etas: set):
    """``expr = base * exp(sum_k I_k * ETA_k)``: ``(base, Occasions)``, or ``(expr, None)`` without IOV ETAs.

    Parameters
    ----------
    name : str
        bayesnlme name of the parameter (for messages).
    expr : sympy.Expr
        The parameter in THETAs, ETAs and data items.
    iov_etas, all_etas : set of str
        The ETAs Pharmpy puts on the IOV level (``$OMEGA ... SAME`` chains), and all ETAs.

    Raises
    ------
    Untranslatable
        An occasion ETA that does not enter as a term of the exponent with a factor of data items only.
    """
    found = sorted((e for e in expr.free_symbols if str(e) in iov_etas), key=lambda e: _eta_number(str(e)))
    if not found:
        return expr, None
    indicators = {}
    for eta in found:
        coef = sympy.simplify(sympy.diff(expr, eta) / expr)
        if {str(s) for s in coef.free_symbols} & all_etas or coef == 0:
            raise Untranslatable(f"{eta} enters {name} other than as a term of its exponent, TV*EXP(ETA + "
                                 f"OCC1*{eta} + ...): bayesnlme's IOV is P = TV*exp(ETA + KAPPA)", [eta])
        if not can_evaluate(coef):
            raise Untranslatable(f"the occasion indicator of {eta} in {name} ({coef}) uses a function bayesnlme "
                                 f"does not evaluate", [eta])
        indicators[str(eta)] = coef
    return expr.xreplace({e: 0 for e in found}), Occasions(name, indicators)


def _eta_number(name: str) -> int:
    digits = "".join(ch for ch in name.rsplit("_", 1)[-1] if ch.isdigit())
    return int(digits) if digits else 0


def common_layout(occasions: list) -> Occasions:
    """The one occasion layout of all parameters with IOV (their indicators must be the same).

    Raises
    ------
    Untranslatable
        Parameters whose occasions are defined differently (bayesnlme has one ``OCC`` column).
    """
    first = occasions[0]
    for other in occasions[1:]:
        a, b = list(first.indicators.values()), list(other.indicators.values())
        if len(a) != len(b) or any(sympy.simplify(x - y) != 0 for x, y in zip(a, b)):
            raise Untranslatable(f"the occasions of {first.parameter} ({len(a)} ETAs) and of {other.parameter} "
                                 f"({len(b)} ETAs) are switched on by different conditions: bayesnlme has one "
                                 f"OCC column for all parameters with IOV",
                                 set(first.indicators) | set(other.indicators))
    return first


def occasion_column(layout: Occasions, frame: pd.DataFrame, observed: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``(OCC per record, problem)``: the number of the occasion ETA switched on at each record.

    ``problem`` names the first observation record (ID and TIME) with no occasion ETA, or with
    more than one, or an indicator that is not 0 or 1; None when every observation has one.
    Records that are not observations (doses) get the occasion of their indicators, or 0.
    """
    switched = np.column_stack([evaluate(c, frame) for c in layout.indicators.values()])

    def at(i: int) -> str:
        if {"ID", "TIME"} <= set(frame.columns):
            return f"ID {frame['ID'].iloc[i]:g}, TIME {frame['TIME'].iloc[i]:g}"
        return f"record {i + 1}"

    bad = observed & ~np.all(np.isin(switched, (0.0, 1.0)), axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        value = switched[i][~np.isin(switched[i], (0.0, 1.0))][0]
        return np.zeros(len(frame)), f"at {at(i)} an occasion indicator is {value:g}, not 0 or 1"
    count = switched.sum(axis=1)
    occ = (switched * np.arange(1, switched.shape[1] + 1)).sum(axis=1)
    for wrong, what in ((count == 0, "no occasion ETA applies"), (count > 1, "two occasion ETAs apply")):
        wrong = wrong & observed
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            return occ, f"at {at(i)} (an observation) {what}: {np.count_nonzero(wrong)} such observation(s)"
    return np.where(count == 1, occ, 0.0), None


def occasion_layout(t, params: dict) -> Occasions | None:
    """The occasion layout of a translation's parameters, its indicators in data items; None without IOV.

    Covariates computed in $PK only to switch the occasion ETAs on (``OCC1 = 0``, ``IF (OCC.EQ.1)
    OCC1 = 1``) are substituted into the indicators and no longer written as data columns.
    """
    found = [pm.occasions for pm in params.values() if pm.occasions]
    if not found:
        return None
    try:
        layout = common_layout(found)
    except Untranslatable as exc:
        t.fail(t.parameter_item(params[found[1].parameter].nonmem, exc.reason))
        return None
    computed = t.computed_columns()
    indicators = {e: c.xreplace({sympy.Symbol(k): v for k, v in computed.items()})
                  for e, c in layout.indicators.items()}
    used = {e.covariate for pm in params.values() for e in pm.effects}
    switches = {str(s) for c in layout.indicators.values() for s in c.free_symbols} - used
    for n, e in t.computed:   # a switch another computed covariate uses stays a column
        if n not in switches:
            switches -= {str(s) for s in e.free_symbols}
    t.computed = [(n, e) for n, e in t.computed if n not in switches]
    out = Occasions(layout.parameter, indicators, params[layout.parameter].nonmem)
    for occ in found:
        etas = ", ".join(map(t.eta_nm.get, occ.indicators))
        t.mapped.append(f"{occ.parameter}: occasion ETAs {etas} -> omega_iov_{occ.parameter} (a KAPPA per subject "
                        f"and occasion)")
    t.mapped.append(f"occasions -> data column OCC = {out.describe()} (the number of the occasion ETA switched on); "
                    f"bayesnlme evaluates each observation with its occasion's parameters for every dose: the "
                    f"same as NONMEM when earlier occasions' drug is gone (wash-out), not for drug carried over")
    return out

