"""$PK of a NONMEM control stream -> bayesnlme parameters: typical value, IIV and covariate effects.

Works on the expressions Pharmpy parsed (sympy), substituted down to THETAs, ETAs and data items, and
recognises the usual forms, each the exact equivalent of a bayesnlme spec entry:

================================================  ==============================================
NONMEM                                            bayesnlme
================================================  ==============================================
``CL = TVCL*EXP(ETA(1))`` (also MU referencing)   ``iiv = "lognormal"``
``CL = EXP(THETA(1) + ETA(1))`` (THETA = log CL)    typical value ``exp(THETA(1))``
``MU_1 = LOG(THETA(1)) + THETA(4)*LOG(WT/70)``      power effect of WT, reference 70 (MU referencing)
``CL = TVCL + ETA(1)``                            ``iiv = "normal"``
``F1 = EXP(L)/(1+EXP(L))``, ``L = LOG(TVF/(1-TVF))  ``iiv = "logit"`` (typical value TVF, or
   + ETA(1)`` (or ``L = THETA(1) + ETA(1)``)         EXP(THETA(1))/(1+EXP(THETA(1))))
``THETA(1)`` (one per parameter)                  typical value (prior on ``CL``)
``1.5`` (a number, e.g. ``F1 = 1``)               fixed typical value
``*(WT/70)**THETA(n)`` / ``**0.75`` / ``*WT``     power effect, estimated / fixed exponent
``*EXP(THETA(n)*(AGE-40))``                       exponential effect, reference 40
``*(1+THETA(n)*(AGE-40))``                        linear effect, reference 40
``THETA(1) + THETA(n)*(WT-70)`` (additive)        typical value THETA(1), linear effect with the
                                                   relative slope THETA(n)/THETA(1), reference 70
``IF (SEX.EQ.1) TVCL=TVCL*THETA(n)``              categorical effect on a derived 0/1 column
   (or ``*(1+THETA(n))``, ``*EXP(THETA(n))``)      ``SEXEQ1``: log ratio = log(THETA(n)),
                                                   log(1+THETA(n)) or THETA(n)
``IF (SEX.EQ.1) THEN TVCL=THETA(1)``               categorical effect, log ratio
   ``ELSE TVCL=THETA(2)`` (a THETA per branch)        = log(THETA(1)/THETA(2)); typical value THETA(2)
``*THETA(n)**SEX``                                exponential effect, reference 0, with
                                                   theta = log(THETA(n)) (the log ratio if 0/1)
================================================  ==============================================

A THETA that is one covariate's effect on two parameters (``(WT/70)**THETA(5)`` on CL and Q) is one
shared effect (``shared_with``).  Anything else (a THETA in two typical values, a condition on TIME,
an ETA entering another way) is returned as a problem for the caller to list by control-stream line;
nothing is approximated.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import sympy

#: The central volume of TRANS5/TRANS6, which are not parameterised by it: the volume S1 (S2) scales by.
CENTRAL = "<central volume>"
#: (ADVAN, TRANS) -> (bayesnlme structural model, {NONMEM name: bayesnlme name}, central scale S<n>).
ADVANS = {
    (1, 2): ("1cmt_iv", {"CL": "CL", "V": "V"}, "S1"),
    (2, 2): ("1cmt_oral", {"CL": "CL", "V": "V", "KA": "KA"}, "S2"),
    (3, 4): ("2cmt_iv", {"CL": "CL", "V1": "V", "Q": "Q", "V2": "V2"}, "S1"),
    (4, 4): ("2cmt_oral", {"CL": "CL", "V2": "V", "Q": "Q", "V3": "V2", "KA": "KA"}, "S2"),
    (11, 4): ("3cmt_iv", {"CL": "CL", "V1": "V", "Q2": "Q", "V2": "V2", "Q3": "Q3", "V3": "V3"}, "S1"),
    (12, 4): ("3cmt_oral", {"CL": "CL", "V2": "V", "Q3": "Q", "V3": "V2", "Q4": "Q3", "V4": "V3",
                            "KA": "KA"}, "S2"),
    # TRANS3: steady-state volume; TRANS5: A/B and the macro rate constants; TRANS6: macro rate constants
    # and the return rates of the peripheral compartments (named by bayesnlme's compartments: K21, K31)
    (3, 3): ("2cmt_iv_vss", {"CL": "CL", "V": "V", "Q": "Q", "VSS": "VSS"}, "S1"),
    (4, 3): ("2cmt_oral_vss", {"CL": "CL", "V": "V", "Q": "Q", "VSS": "VSS", "KA": "KA"}, "S2"),
    (3, 5): ("2cmt_iv_aob", {"AOB": "AOB", "ALPHA": "ALPHA", "BETA": "BETA", CENTRAL: "V"}, "S1"),
    (4, 5): ("2cmt_oral_aob", {"AOB": "AOB", "ALPHA": "ALPHA", "BETA": "BETA", CENTRAL: "V", "KA": "KA"}, "S2"),
    (3, 6): ("2cmt_iv_macro", {"ALPHA": "ALPHA", "BETA": "BETA", "K21": "K21", CENTRAL: "V"}, "S1"),
    (4, 6): ("2cmt_oral_macro", {"ALPHA": "ALPHA", "BETA": "BETA", "K32": "K21", CENTRAL: "V", "KA": "KA"}, "S2"),
    (11, 6): ("3cmt_iv_macro", {"ALPHA": "ALPHA", "BETA": "BETA", "GAMMA": "GAMMA", "K21": "K21", "K31": "K31",
                                CENTRAL: "V"}, "S1"),
    (12, 6): ("3cmt_oral_macro", {"ALPHA": "ALPHA", "BETA": "BETA", "GAMMA": "GAMMA", "K32": "K21", "K42": "K31",
                                  CENTRAL: "V", "KA": "KA"}, "S2"),
}
#: TRANS1 (rate constants): ADVAN -> {TRANS2/4 name: its expression in the rate constants and ``VC``, the
#: central volume that S1 (S2) scales by}; ``K = CL/V`` in $PK then gives back ``CL = K*V`` exactly.
TRANS1 = {
    1: {"CL": "K*VC", "V": "VC"},
    2: {"CL": "K*VC", "V": "VC", "KA": "KA"},
    3: {"CL": "K*VC", "V1": "VC", "Q": "K12*VC", "V2": "K12*VC/K21"},
    4: {"CL": "K*VC", "V2": "VC", "Q": "K23*VC", "V3": "K23*VC/K32", "KA": "KA"},
    11: {"CL": "K*VC", "V1": "VC", "Q2": "K12*VC", "V2": "K12*VC/K21", "Q3": "K13*VC", "V3": "K13*VC/K31"},
    12: {"CL": "K*VC", "V2": "VC", "Q3": "K23*VC", "V3": "K23*VC/K32", "Q4": "K24*VC", "V4": "K24*VC/K42",
         "KA": "KA"},
}
#: Oral models: bioavailability and lag of the depot (compartment 1) -> bayesnlme's F and ALAG.
DEPOT_EXTRAS = {"F1": "F", "ALAG1": "ALAG"}
#: Data items that are not covariates: a condition or a factor on them is not a covariate model.
EVENT_ITEMS = {"TIME", "AMT", "EVID", "MDV", "CMT", "RATE", "II", "ADDL", "SS", "DV", "ID", "T", "TAD",
               "PCMT", "CALLFL", "NEWIND", "ICALL", "IREP"}
NONMEM_RELATIONS = {sympy.Eq: "EQ", sympy.Ne: "NE", sympy.Lt: "LT", sympy.Le: "LE", sympy.Gt: "GT", sympy.Ge: "GE"}


class Untranslatable(Exception):
    """Raised inside the decomposition; ``symbols`` locate the statement at fault, ``reason`` says why."""

    def __init__(self, reason: str, symbols=()):
        super().__init__(reason)
        self.reason, self.symbols = reason, {str(s) for s in symbols}


@dataclass
class Effect:
    """One covariate effect found in a typical value.

    ``transform`` says how bayesnlme's theta follows from the NONMEM THETA: ``"identity"``,
    ``"log"`` (ratio THETA -> log THETA), ``"log1p"`` (ratio 1+THETA -> log(1+THETA)).  With a
    ``denominator`` (one THETA per IF branch) the ratio is ``theta / denominator``.
    """
    covariate: str
    kind: str
    reference: float | int
    theta: str | None = None      # NONMEM THETA symbol (estimated or fixed)
    fixed: float | None = None    # a constant exponent/slope written in the code
    transform: str = "identity"
    condition: tuple | None = None   # categorical: (column, op, value) of the derived 0/1 column
    denominator: str | None = None   # a THETA for each branch: the ratio is theta / denominator
    shared_with: str | None = None   # the THETA is this parameter's effect of the same covariate (one exponent)


@dataclass
class ParameterModel:
    """A structural parameter: THETA of its typical value, a constant multiplier, IIV, its effects."""
    name: str
    theta: str | None = None
    scale: float = 1.0
    nonmem: str = ""
    fixed_value: float | None = None
    log_theta: bool = False       # the typical value is EXP(THETA) (MU_1 = THETA(1), CL = EXP(MU_1 + ETA(1)))
    logit_theta: bool = False     # the typical value is EXP(THETA)/(1+EXP(THETA)) (F1 with a logit-scale THETA)
    iiv: str = "none"
    eta: str | None = None
    effects: list = field(default_factory=list)
    occasions: object = None      # IOV: the occasion ETAs and their indicators (nonmem_iov.Occasions)


def trans1_expressions(advan: int, volume: str) -> dict:
    """TRANS1's clearances and volumes: {TRANS2/4 name: sympy expression in the rate constants}.

    ``volume`` is the $PK name of the central volume (``VC`` in :data:`TRANS1`).

    Examples
    --------
    >>> trans1_expressions(3, "V")["V2"]
    K12*V/K21
    """
    out = {}
    for name, text in TRANS1[advan].items():
        symbols = {n: sympy.Symbol(volume if n == "VC" else n) for n in re.findall(r"[A-Z]\w*", text)}
        out[name] = sympy.parse_expr(text, local_dict=symbols)
    return out


def indicator_name(column: str, op: str, value) -> str:
    """Name of the derived 0/1 column of a condition: ``SEX.EQ.1`` -> ``SEXEQ1``, ``WT.GT.2.5`` -> ``WTGT2P5``."""
    v = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{column}{op}" + v.replace("-", "M").replace(".", "P")


def decompose(name: str, expr, thetas: set, etas: set, columns: set) -> ParameterModel:
    """Split the full expression of a structural parameter into typical value, IIV and effects.

    Parameters
    ----------
    name : str
        bayesnlme name of the parameter (for messages).
    expr : sympy.Expr
        The parameter in terms of THETAs, ETAs and data items (all assignments substituted).
    thetas, etas : set of str
        Names of the THETA and ETA symbols.
    columns : set of str
        Data items usable as covariates.

    Raises
    ------
    Untranslatable
        With the symbols of the part that has no bayesnlme equivalent.
    """
    pm = ParameterModel(name)
    found = [s for s in expr.free_symbols if str(s) in etas]
    if len(found) > 1:
        raise Untranslatable(f"{name} has more than one ETA ({', '.join(sorted(map(str, found)))})", found)
    tv = expr
    if found:
        eta = found[0]
        pm.eta = str(eta)
        ratio = _without_exp_eta(expr, eta)
        if ratio is not None:
            pm.iiv, tv = "lognormal", ratio
        elif eta not in (diff := expr - eta).free_symbols:
            pm.iiv, tv = "normal", diff
        elif (odds := _without_exp_eta(sympy.simplify(expr / (1 - expr)), eta)) is not None:
            pm.iiv = "logit"   # F1 = EXP(LGT)/(1+EXP(LGT)), LGT = LOG(TVF/(1-TVF)) + ETA (or THETA + ETA)
            if isinstance(odds, sympy.exp) and odds.args[0].is_Symbol and str(odds.args[0]) in thetas:
                pm.theta, pm.logit_theta = str(odds.args[0]), True
                return pm
            tv = sympy.simplify(odds / (1 + odds))
        else:
            raise Untranslatable(f"{eta} enters {name} neither as TV*EXP(ETA), TV+ETA nor as the logit "
                                 f"EXP(L)/(1+EXP(L)) with L = LOG(TV/(1-TV)) + ETA", [eta])
    _typical_value(pm, tv, thetas, columns)
    return pm


def claim_thetas(bn: str, pm: ParameterModel, used: dict, nm: dict) -> None:
    """Record which parameter uses each THETA (``used``: THETA -> (parameter, effect or None); ``nm``:
    Pharmpy name -> NONMEM name).

    A THETA that is the same effect of the same covariate on an earlier parameter (one allometric
    exponent for CL and Q) makes this effect ``shared_with`` that parameter; any other reuse is refused.
    """
    for t, e in [(pm.theta, None)] * bool(pm.theta) + [(e.theta, e) for e in pm.effects if e.theta]:
        if t not in used:
            used[t] = (bn, e)
            continue
        owner, first = used[t]
        if (e is None or first is None or (e.covariate, e.kind) != (first.covariate, first.kind)
                or e.kind not in ("power", "exponential", "linear") or e.transform != "identity"
                or first.transform != "identity" or e.denominator or first.denominator):
            raise Untranslatable(f"{nm[t]} is used by {owner} and {bn}, not as one effect of one covariate "
                                 f"(bayesnlme shares a power, exponential or linear effect's theta: shared_with)",
                                 {t})
        e.shared_with = owner


def _without_exp_eta(expr, eta):
    """``expr / exp(eta)`` when ``expr`` is ``TV * exp(... + eta)`` (MU referencing included), else None."""
    rest, found = [], False
    for f in sympy.Mul.make_args(expr):
        if isinstance(f, sympy.exp) and eta in f.free_symbols and not found:
            arg = f.args[0] - eta
            if eta in arg.free_symbols:
                return None
            rest += list(sympy.Mul.make_args(sympy.expand_power_exp(sympy.exp(arg))))
            found = True
        elif eta in f.free_symbols:
            return None
        else:
            rest.append(f)
    return sympy.Mul(*rest) if found else None


def _typical_value(pm: ParameterModel, tv, thetas, columns) -> None:
    const, powers = sympy.Integer(1), []
    for f in [h for f in _factors(tv) for g in _log_theta_split(f, thetas) for h in _exp_of_logs(g)]:
        syms = {str(s) for s in f.free_symbols}
        events = syms & EVENT_ITEMS
        if events:
            raise Untranslatable(f"{pm.name} changes with {', '.join(sorted(events))} (an event/time data "
                                 f"item, not a covariate): no bayesnlme equivalent", f.free_symbols)
        bad = syms - thetas - columns
        if bad:
            raise Untranslatable(f"{pm.name} depends on {', '.join(sorted(bad))}, which is neither a THETA "
                                 f"nor a covariate column of $INPUT", [sympy.Symbol(b) for b in bad] or [f])
        if f.is_number:
            const *= f
        elif isinstance(f, sympy.Piecewise):
            pm.effects.append(_categorical(pm.name, f, thetas, columns))
        elif f.is_Symbol and str(f) in thetas or isinstance(f, sympy.exp) and str(f.args[0]) in thetas:
            if pm.theta is not None:
                raise Untranslatable(f"the typical value of {pm.name} is a product of two THETAs "
                                     f"({pm.theta}, {f})", [f])
            pm.log_theta = isinstance(f, sympy.exp)   # MU_1 = THETA(1): THETA(1) is log(CL)
            f = f.args[0] if pm.log_theta else f
            pm.theta = str(f)
        elif f.is_Symbol or (f.is_Pow and f.base.is_Symbol and f.exp.is_number):   # WT, WT**0.75
            base, k = (f, 1) if f.is_Symbol else (f.base, f.exp)
            if str(base) in thetas:
                raise Untranslatable(f"{pm.name}: factor {f} is a power of a THETA, not a typical value "
                                     f"bayesnlme knows", f.free_symbols)
            powers.append((str(base), float(k)))
        elif f.is_Pow and f.base.is_Symbol and str(f.base) in thetas:   # THETA(7)**SEX
            pm.effects.append(_theta_power(pm.name, f, columns))
        elif f.is_Pow:
            pm.effects.append(_power(pm.name, f, thetas, columns))
        elif isinstance(f, sympy.exp):
            pm.effects.append(_exponential(pm.name, f, thetas, columns))
        elif f.is_Add and pm.theta is None and _intercept(f, thetas) is not None:
            # TVCL = THETA(1) + THETA(4)*(WT-70): THETA(1)*(1 + THETA(4)/THETA(1)*(WT-70)), a relative slope
            pm.theta = str(_intercept(f, thetas))
            cov = _single_covariate(pm.name, f, columns)
            slope, fixed, ref = _slope_reference(pm.name, sympy.expand(f - sympy.Symbol(pm.theta)), cov, thetas, f, 0)
            if slope is None:
                raise Untranslatable(f"{pm.name}: additive covariate term with a fixed slope ({f})", f.free_symbols)
            pm.effects.append(Effect(str(cov), "linear", ref, theta=slope, denominator=pm.theta))
        elif f.is_Add:
            pm.effects.append(_linear(pm.name, f, thetas, columns))
        else:
            raise Untranslatable(f"{pm.name}: factor {f} is not a covariate model bayesnlme knows", f.free_symbols)
    if pm.theta is None:
        if pm.effects or powers or const <= 0:
            raise Untranslatable(f"the typical value of {pm.name} has no THETA of its own", tv.free_symbols)
        pm.fixed_value = float(const)   # F1 = 1, KA = 1.5: a value written in the code is a fixed one
        return
    const = float(const)
    if len(powers) > 1 and len({c for c, _ in powers}) < len(powers):
        raise Untranslatable(f"{pm.name}: a covariate appears twice in the typical value", tv.free_symbols)
    for i, (cov, k) in enumerate(powers):   # THETA*c*WT**k == THETA*(WT/ref)**k with ref = c**(-1/k)
        ref = 1.0
        if i == 0 and const != 1.0:
            if const <= 0:
                raise Untranslatable(f"{pm.name}: negative constant factor {const:g}", tv.free_symbols)
            ref, const = const ** (-1.0 / k), 1.0
        pm.effects.append(Effect(cov, "power", _tidy(ref), fixed=k))
    if const <= 0:
        raise Untranslatable(f"{pm.name}: constant factor {const:g} is not positive", tv.free_symbols)
    pm.scale = const


def _log_theta_split(f, thetas) -> list:
    """``exp(THETA(1) + 0.75*log(WT/70))`` -> ``[exp(THETA(1)), (WT/70)**0.75]`` (a THETA on the log scale,
    ``MU_1 = THETA(1) + ...``); any other factor as it is."""
    if not (isinstance(f, sympy.exp) and f.args[0].is_Add):
        return [f]
    own = [a for a in f.args[0].args if a.is_Symbol and str(a) in thetas]
    if len(own) != 1:
        return [f]
    return [sympy.exp(own[0]), *sympy.Mul.make_args(sympy.exp(f.args[0] - own[0]))]


def _exp_of_logs(f) -> list:
    """``exp(THETA(4)*LOG(WT/70) + ...)`` -> ``[(WT/70)**THETA(4), ...]``: a power effect written on the log
    scale (``MU_1 = LOG(THETA(1)) + THETA(4)*LOG(WT/70)``); terms without a LOG stay in one ``exp``."""
    if not isinstance(f, sympy.exp):
        return [f]
    powers, rest = [], []
    for term in sympy.Add.make_args(f.args[0]):
        logs = [g for g in sympy.Mul.make_args(term) if isinstance(g, sympy.log)]
        if len(logs) == 1:
            powers.append(logs[0].args[0] ** (term / logs[0]))
        else:
            rest.append(term)
    return powers + ([sympy.exp(sympy.Add(*rest))] if rest else []) if powers else [f]


def _factors(tv) -> list:
    """The multiplicative factors of a typical value; ``Piecewise`` branches become ratio factors."""
    if isinstance(tv, sympy.Piecewise):
        *branches, (default, cond) = tv.args
        if cond != sympy.true:
            raise Untranslatable("an IF without a default branch", tv.free_symbols)
        while isinstance(default, sympy.Piecewise) and default.args[-1][1] == sympy.true:
            # IF (X.EQ.2) TVCL=THETA(4) / IF (X.EQ.3) TVCL=THETA(5): one factor per level, exact when the
            # conditions exclude each other (the first that holds is the only one)
            *inner, (default, _) = default.args
            branches += inner
            if not _exclusive([c for _, c in branches]):
                raise Untranslatable("IF conditions that can hold together (bayesnlme multiplies one factor "
                                     "per condition)", tv.free_symbols)
        out = _factors(default)
        for value, c in branches:
            ratio = sympy.simplify(value / default)
            out.append(sympy.Piecewise((ratio, c), (1, True)))
        return out
    out = []
    for f in sympy.Mul.make_args(tv):
        if f.is_Pow and isinstance(f.base, sympy.Piecewise) and f.exp == -1:   # 1/Piecewise(...)
            f = f.base.func(*[(1 / v, c) for v, c in f.base.args])
        if isinstance(f, sympy.Piecewise) and not _is_ratio(f):
            out += _factors(f)
        else:
            out.append(f)
    return out


def _exclusive(conditions) -> bool:
    """True when the conditions are ``COLUMN == value`` of one column, each with its own value."""
    if not all(isinstance(c, sympy.Eq) for c in conditions):
        return False
    pairs = [(c.lhs, c.rhs) if c.rhs.is_number else (c.rhs, c.lhs) for c in conditions]
    return (len({str(a) for a, _ in pairs}) == 1 and all(b.is_number for _, b in pairs)
            and len({float(b) for _, b in pairs}) == len(pairs))


def _is_ratio(pw) -> bool:
    return len(pw.args) == 2 and pw.args[1] == (1, sympy.true)


def _intercept(f, thetas):
    """The one bare THETA among the terms of a sum (the typical value of an additive covariate model)."""
    bare = [a for a in f.args if a.is_Symbol and str(a) in thetas]
    return bare[0] if len(bare) == 1 else None


def _single_covariate(name, f, columns):
    covs = sorted(str(s) for s in f.free_symbols if str(s) in columns)
    if len(covs) != 1:
        raise Untranslatable(f"{name}: factor {f} does not involve exactly one covariate", f.free_symbols)
    return sympy.Symbol(covs[0])


def _coefficient(name, c, thetas, f):
    """A THETA symbol (estimated) or a number (fixed): (theta, fixed)."""
    if c.is_Symbol and str(c) in thetas:
        return str(c), None
    if c.is_number:
        return None, float(c)
    raise Untranslatable(f"{name}: factor {f} has coefficient {c}, not a single THETA", f.free_symbols)


def _power(name, f, thetas, columns) -> Effect:
    cov = _single_covariate(name, f.base, columns)
    ratio = sympy.simplify(f.base / cov)
    if not ratio.is_number or float(ratio) <= 0:
        raise Untranslatable(f"{name}: base {f.base} of a power is not COV/reference", f.free_symbols)
    theta, fixed = _coefficient(name, f.exp, thetas, f)
    return Effect(str(cov), "power", _tidy(1.0 / float(ratio)), theta=theta, fixed=fixed)


def _theta_power(name, f, columns) -> Effect:
    """``THETA(n)**SEX`` or ``THETA(n)**(AGE-40)``: ``exp(log(THETA(n)) * (COV - ref))``, an exponential
    effect whose bayesnlme theta is ``log(THETA(n))`` (for a 0/1 covariate, the log ratio)."""
    cov = _single_covariate(name, f.exp, columns)
    arg = sympy.expand(f.exp)
    ref = -arg.subs(cov, 0)
    if sympy.simplify(arg - (cov - ref)) != 0 or not ref.is_number:
        raise Untranslatable(f"{name}: exponent {f.exp} of {f.base} is not {cov} or {cov} minus a number",
                             f.free_symbols)
    return Effect(str(cov), "exponential", _tidy(float(ref)), theta=str(f.base), transform="log")


def _slope_reference(name, arg, cov, thetas, f, at):
    """``arg`` linear in ``cov``: slope (THETA or number) and the covariate value where ``arg == at``."""
    slope = sympy.simplify(sympy.diff(arg, cov))
    if cov in slope.free_symbols:
        raise Untranslatable(f"{name}: factor {f} is not linear in {cov}", f.free_symbols)
    theta, fixed = _coefficient(name, slope, thetas, f)
    ref = sympy.simplify((at - arg.subs(cov, 0)) / slope)
    if not ref.is_number:
        raise Untranslatable(f"{name}: factor {f} has no numeric reference value", f.free_symbols)
    return theta, fixed, _tidy(float(ref))


def _exponential(name, f, thetas, columns) -> Effect:
    cov = _single_covariate(name, f, columns)
    theta, fixed, ref = _slope_reference(name, sympy.expand(f.args[0]), cov, thetas, f, 0)
    return Effect(str(cov), "exponential", ref, theta=theta, fixed=fixed)


def _linear(name, f, thetas, columns) -> Effect:
    cov = _single_covariate(name, f, columns)
    theta, fixed, ref = _slope_reference(name, sympy.expand(f), cov, thetas, f, 1)
    return Effect(str(cov), "linear", ref, theta=theta, fixed=fixed)


def _categorical(name, pw, thetas, columns) -> Effect:
    (ratio, cond), _ = pw.args
    rel = type(cond)
    if rel not in NONMEM_RELATIONS:
        raise Untranslatable(f"{name}: condition {cond} is not one comparison of a covariate with a number",
                             pw.free_symbols)
    lhs, rhs = cond.lhs, cond.rhs
    if lhs.is_number and rhs.is_Symbol:
        lhs, rhs, rel = rhs, lhs, {sympy.Lt: sympy.Gt, sympy.Gt: sympy.Lt, sympy.Le: sympy.Ge,
                                   sympy.Ge: sympy.Le}.get(rel, rel)
    if not (lhs.is_Symbol and rhs.is_number):
        raise Untranslatable(f"{name}: condition {cond} is not one comparison of a covariate with a number",
                             pw.free_symbols)
    if str(lhs) in EVENT_ITEMS or str(lhs) not in columns:
        raise Untranslatable(f"{name}: condition on {lhs}, which is not a covariate column (a time- or "
                             f"event-dependent change has no bayesnlme equivalent)", pw.free_symbols)
    value = float(rhs)
    value = int(value) if value.is_integer() else value
    ratio = sympy.simplify(ratio)
    th = [s for s in ratio.free_symbols if str(s) in thetas]
    num, den = sympy.fraction(ratio)
    if len(th) == 2 and num in th and den in th:   # IF (SEX.EQ.1) THEN TVCL=THETA(1) ELSE TVCL=THETA(2)
        return Effect(indicator_name(str(lhs), NONMEM_RELATIONS[rel], value), "categorical", 0, theta=str(num),
                      transform="log", condition=(str(lhs), NONMEM_RELATIONS[rel], value), denominator=str(den))
    if len(th) != 1 or ratio.free_symbols != set(th):
        raise Untranslatable(f"{name}: the IF branch multiplies by {ratio}, not by a function of one THETA",
                             pw.free_symbols)
    t = th[0]
    if ratio == t:
        transform = "log"
    elif sympy.simplify(ratio - 1 - t) == 0:
        transform = "log1p"
    elif sympy.simplify(ratio - sympy.exp(t)) == 0:
        transform = "identity"
    else:
        raise Untranslatable(f"{name}: the IF branch multiplies by {ratio}; bayesnlme takes THETA, 1+THETA "
                             f"or EXP(THETA)", pw.free_symbols)
    return Effect(indicator_name(str(lhs), NONMEM_RELATIONS[rel], value), "categorical", 0, theta=str(t),
                  transform=transform, condition=(str(lhs), NONMEM_RELATIONS[rel], value))


def _tidy(x: float):
    """70.00000000001 -> 70 (references read back from float arithmetic)."""
    r = round(x, 9)
    return int(r) if r.is_integer() and abs(r) < 1e15 else (r if math.isclose(r, x, rel_tol=1e-12) else x)


def condition_mask(frame, condition):
    """Boolean mask of a derived column's condition ``(column, op, value)`` on a DataFrame."""
    col, op, value = condition
    x = frame[col]
    return {"EQ": x == value, "NE": x != value, "LT": x < value, "LE": x <= value,
            "GT": x > value, "GE": x >= value}[op]


#: NONMEM variables that change the model when assigned in $PK/$ERROR and have no bayesnlme equivalent
SPECIAL = re.compile(r"^(MTIME|MTDIFF|MNEXT|MPAST|MNOW|MTDIFF|A_0|A_0FLG|TSCALE|XSCALE|CALLFL|COMACT|"
                     r"COMSAV|EXIT|R\d+|D\d+|F\d+|ALAG\d+|FO|F0|S\d+|DADT|ETASXI|MIXNUM|MIXEST)(\(\d+\))?$")
