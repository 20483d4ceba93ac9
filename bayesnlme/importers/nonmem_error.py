"""$ERROR of a NONMEM control stream -> a bayesnlme residual error model.

``Y`` is taken with every $ERROR assignment substituted, in terms of ``F`` (the scaled central
amount, i.e. the concentration), the EPSs and THETAs.  With ``Y = F + sum_i g_i(F) EPS(i)`` the
residual variance is ``sum_i g_i^2 SIGMA(i,i) = A + B F^2``:

* ``A > 0, B = 0`` additive (``Y = F + EPS(1)``; or ``Y = F + THETA(a)*EPS(1)`` with ``$SIGMA 1 FIX``),
* ``A = 0, B > 0`` proportional (``Y = F*(1+EPS(1))``, ``Y = F + F*EPS(1)``),
* both: combined (``Y = F + F*EPS(1) + EPS(2)``; ``W = SQRT(THETA(a)**2 + THETA(b)**2*IPRED**2)``,
  ``Y = IPRED + W*EPS(1)`` with ``$SIGMA 1 FIX``),

and each of ``A``, ``B`` must come from one estimated quantity: a SIGMA (a variance: the SD is its
square root) or a THETA times a fixed SIGMA (the THETA is then an SD).  ``Y = F*EXP(EPS(1))`` and
``Y = LOG(F) + EPS(1)`` (log-transformed DV) become ``exponential``: ``log DV ~ N(log F, sigma_exp)``.
A term whose THETA or SIGMA is ``0 FIX`` is dropped (combined -> proportional or additive).
Guards such as ``IF (IPRED.LT.0.001) IPRED = 0.001`` or ``IPRED = -5`` / ``IF (F.GT.0) IPRED = LOG(F)``
are dropped (the branch with ``F`` kept) and reported as notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from bayesnlme.importers.nonmem_pk import Untranslatable


@dataclass
class Source:
    """Where a residual SD comes from: ``sd = factor * sqrt(SIGMA)`` or ``sd = factor * |THETA|``."""
    kind: str            # "sigma" or "theta"
    name: str            # pharmpy name of the SIGMA or THETA
    factor: float = 1.0


@dataclass
class Residual:
    kind: str
    sources: dict                       # bayesnlme sigma name -> Source
    log_dv: bool = False                # DV is log-transformed in the data (Y = LOG(F) + EPS)
    guards: list = field(default_factory=list)   # Piecewise conditions dropped (symbols, for the lines)


def residual(y, f, eps_var: dict, fixed_sigmas: dict, thetas: set) -> Residual:
    """Classify ``Y``.

    Parameters
    ----------
    y : sympy.Expr
        ``Y`` in terms of ``f``, EPSs and THETAs.
    f : sympy.Symbol
        The prediction ``F``.
    eps_var : dict
        EPS symbol -> variance parameter symbol (``$SIGMA``), diagonal only.
    fixed_sigmas : dict
        Variance parameter name -> fixed value, for the SIGMAs that are FIX.
    thetas : set of str
        THETA names.

    Raises
    ------
    Untranslatable
    """
    guards = []
    for pw in sorted(y.atoms(sympy.Piecewise), key=str):
        conds = set().union(*[c.free_symbols for _, c in pw.args])
        if {str(s) for s in conds} <= thetas | {str(f)}:
            guards.append(conds)
            y = y.xreplace({pw: _guarded_value(pw, f)})
        else:
            raise Untranslatable(f"Y depends on a condition on {', '.join(sorted(map(str, conds)))} (several "
                                 f"observation types or a data-dependent error model)", conds)
    eps = [e for e in eps_var if e in y.free_symbols]
    if not eps:
        raise Untranslatable("Y has no EPS", y.free_symbols)
    extra = {str(s) for s in y.free_symbols} - thetas - {str(f)} - {str(e) for e in eps}
    if extra:
        raise Untranslatable(f"Y depends on {', '.join(sorted(extra))} (an ETA, covariate or data item in "
                             f"the error model)", [sympy.Symbol(s) for s in extra])
    y0 = y.subs({e: 0 for e in eps})
    log_dv = False
    if sympy.simplify(y0 - f) != 0:
        if sympy.simplify(y0 - sympy.log(f)) != 0:
            raise Untranslatable(f"the prediction in Y is {y0}, not F (or LOG(F))", y.free_symbols)
        log_dv = True
    linear = all(sympy.simplify(sympy.diff(y, a, b)) == 0 for a in eps for b in eps)
    if not linear:
        if len(eps) == 1 and not log_dv and sympy.simplify(y / f - sympy.exp(eps[0])) == 0:
            return Residual("exponential", {"sigma_exp": _source(eps_var[eps[0]], fixed_sigmas, thetas, y)},
                            False, guards)
        raise Untranslatable("Y is not F plus terms in the EPSs, nor F*EXP(EPS)", y.free_symbols)
    var = sympy.expand(sum(sympy.diff(y, e) ** 2 * eps_var[e] for e in eps))
    poly = sympy.Poly(var, f) if f in var.free_symbols else None
    if poly is not None and any(d not in ((0,), (2,)) and c != 0 for d, c in poly.terms()):
        raise Untranslatable("the residual variance is not of the form A + B*F**2", y.free_symbols)
    a = poly.coeff_monomial(1) if poly else var
    b = poly.coeff_monomial(f ** 2) if poly else sympy.Integer(0)
    if log_dv:
        if b != 0:
            raise Untranslatable("Y = LOG(F) + ... with a term in F on the log scale", y.free_symbols)
        return Residual("exponential", {"sigma_exp": _source(a, fixed_sigmas, thetas, y)}, True, guards)
    sources = {}
    if a != 0:
        sources["sigma_add"] = _source(a, fixed_sigmas, thetas, y)
    if b != 0:
        sources["sigma_prop"] = _source(b, fixed_sigmas, thetas, y)
    kind = {1: "additive" if a != 0 else "proportional", 2: "combined"}[len(sources)]
    return Residual(kind, sources, False, guards)


def without_fixed_zero(res: Residual, zero: set) -> Residual:
    """``res`` without the terms whose SD is fixed at 0 (``THETA(6) = (0 FIX)`` in a combined ``W``).

    Parameters
    ----------
    res : Residual
    zero : set of str
        Names of the THETAs and SIGMAs that are fixed at 0.
    """
    sources = {n: s for n, s in res.sources.items() if s.name not in zero}
    if not sources:
        raise Untranslatable("every residual error term is fixed at 0")
    if len(sources) == len(res.sources):
        return res
    kind = "additive" if "sigma_add" in sources else "proportional"
    return Residual(kind, sources, res.log_dv, res.guards)


def _guarded_value(pw, f):
    """The branch of a guard that is the prediction.

    ``IF (IPRED.LE.0) IPRED = 1E-8`` keeps the default branch; ``IPRED = -5`` then
    ``IF (F.GT.0) IPRED = LOG(F)`` keeps the one branch with ``F`` (the other is a constant).
    """
    with_f = [value for value, _ in pw.args if f in value.free_symbols]
    return with_f[0] if len(with_f) == 1 else pw.args[-1][0]


def _source(variance, fixed_sigmas, thetas, y) -> Source:
    """One variance term ``c * [THETA**2] * SIGMA`` -> its :class:`Source`."""
    c, theta, sigma = 1.0, None, None
    for t in sympy.Mul.make_args(sympy.powsimp(variance)):
        if t.is_number:
            c *= float(t)
        elif t.is_Pow and t.exp == 2 and t.base.is_Symbol and str(t.base) in thetas and theta is None:
            theta = str(t.base)
        elif t.is_Symbol and str(t) not in thetas and sigma is None:
            sigma = str(t)
        else:
            raise Untranslatable(f"residual variance term {variance} is not one SIGMA (or THETA**2 times "
                                 f"a fixed SIGMA)", y.free_symbols)
    if sigma is None or c <= 0:
        raise Untranslatable(f"residual variance term {variance} has no SIGMA", y.free_symbols)
    if theta is None:
        return Source("sigma", sigma, c ** 0.5)
    if sigma not in fixed_sigmas:
        raise Untranslatable(f"residual term {variance}: THETA and SIGMA both estimated for one error "
                             f"term (not identifiable; fix the SIGMA to 1)", y.free_symbols)
    return Source("theta", theta, (c * fixed_sigmas[sigma]) ** 0.5)
