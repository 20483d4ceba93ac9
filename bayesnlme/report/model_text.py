"""A model specification written out for people: equations (plain text) and tables.

Everything returned is plain text; the report template escapes it.
"""

from __future__ import annotations

import pandas as pd

from bayesnlme.spec import ModelSpec, Prior

_IIV_EQUATION = {
    "lognormal": "{p}_i = TV{p}_i · exp(ETA_{p},i)",
    "normal": "{p}_i = TV{p}_i + ETA_{p},i",
    "logit": "logit({p}_i) = logit(TV{p}_i) + ETA_{p},i",
    "none": "{p}_i = TV{p}_i",
}
_COVARIATE_FACTOR = {
    "power": "({c} / {ref})^{t}",
    "exponential": "exp({t} · ({c} − {ref}))",
    "linear": "(1 + {t} · ({c} − {ref}))",
    "categorical": "exp({t}[{c}])",
    "piecewise": "(1 + g({c}) − g({ref})), "
                 "g(x) = {t} · (min(x, {knot}) − {knot}) + {t2} · (max(x, {knot}) − {knot})",
}
def prior_text(prior: Prior | None, fixed=None) -> str:
    """``lognormal(median=5, sigma=1)`` or ``fixed at 0.75``."""
    if fixed is not None:
        return f"fixed at {fixed:g}"
    if prior is None:
        return "default"
    args = (f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in prior.args.items())
    return f"{prior.dist}({', '.join(args)})"


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def _theta(eff, i: int) -> str:
    names, fixed = eff.effect_names(), eff.fixed_values()
    return f"{fixed[i]:g}" if fixed[i] is not None else names[i]


def equations(spec: ModelSpec) -> list[str]:
    """The model as a list of equation lines (i: subject, j: observation)."""
    lines = [f"Structural model: {spec.structural.name}"
             + (f" ({spec.structural.description})" if spec.structural.description else "")]
    for p, par in spec.parameters.items():
        factors = []
        for eff in spec.covariates:
            if eff.parameter != p:
                continue
            knot = eff.knot if eff.knot is not None else 0
            t2 = _theta(eff, 1) if eff.kind == "piecewise" else ""
            t = f"{eff.covariate}_<level>_on_{p}" if eff.kind == "categorical" else _theta(eff, 0)
            factors.append(_COVARIATE_FACTOR[eff.kind].format(c=eff.covariate, ref=_num(eff.reference), t=t,
                                                              knot=f"{knot:g}", t2=t2))
        theta = f"{par.fixed:g}" if par.fixed is not None else f"THETA_{p}"
        lines.append(f"TV{p}_i = {theta}" + "".join(f" · {f}" for f in factors))
        iov = " · exp(KAPPA_{p},ik)".format(p=p) if par.omega_iov is not None else ""
        lines.append(_IIV_EQUATION[par.iiv].format(p=p) + iov)
    for p in spec.eta_parameters:
        lines.append(f"ETA_{p},i ~ Normal(0, omega_{p}²)")
    for block in spec.omega_blocks:
        lines.append(f"(ETA_{', ETA_'.join(block)}) correlated: LKJ(eta={spec.lkj_eta:g}) prior on their correlation")
    for block in spec.fixed_omega_blocks:
        k = len(block.parameters)
        corr = ", ".join(f"{block.parameters[i]}-{block.parameters[j]} {block.correlation[i][j]:g}"
                         for i in range(k) for j in range(i + 1, k))
        lines.append(f"(ETA_{', ETA_'.join(block.parameters)}) correlated, fixed: correlation {corr}")
    lines.append(f"IPRED_ij = f(t_ij, doses_i; individual parameters of subject i)   [{spec.structural.name}]")
    if getattr(spec, "observations", None):
        lines += [_observation_line(m) for m in spec.observation_models()]
    else:
        m = spec.observation_models()[0]
        lines.append(m.family.equation(m, output="IPRED"))
    return lines


def _observation_line(m) -> str:
    where = f"DVID {m.dvid}: " if m.dvid is not None else ""
    return where + m.family.equation(m)


def parameter_table(spec: ModelSpec) -> pd.DataFrame:
    """One row per structural parameter: unit, typical-value prior, IIV and its prior, IOV, description."""
    rows = []
    for p, par in spec.parameters.items():
        rows.append({"parameter": p, "unit": par.unit, "typical value (THETA)": prior_text(par.prior, par.fixed),
                     "IIV": par.iiv,
                     "OMEGA (SD of ETA)": prior_text(par.omega, par.omega_fixed) if par.has_eta else "",
                     "IOV": prior_text(par.omega_iov) if par.omega_iov is not None else "",
                     "description": par.description})
    return pd.DataFrame(rows)


def covariate_table(spec: ModelSpec) -> pd.DataFrame:
    """One row per covariate effect: parameter, covariate, kind, reference, estimated names and priors."""
    rows = []
    for eff in spec.covariates:
        rows.append({"parameter": eff.parameter, "covariate": eff.covariate, "kind": eff.kind,
                     "reference": _num(eff.reference), "effect": ", ".join(eff.effect_names()),
                     "prior": (f"shared with {eff.covariate}_on_{eff.shared_with}" if eff.shared_with
                               else prior_text(eff.prior, eff.fixed)),
                     "levels": ", ".join(str(v) for v in eff.levels)})
    return pd.DataFrame(rows)


def residual_table(spec: ModelSpec) -> pd.DataFrame:
    """The residual error model and the prior of each SIGMA."""
    if getattr(spec, "observations", None):
        return pd.DataFrame([{"DVID": "" if m.dvid is None else m.dvid, "output": m.output, "model": m.likelihood,
                              "parameter": b + m.suffix, "prior": prior_text(m.priors.get(b)), "BLQ": m.blq}
                             for m in spec.observation_models() for b in m.base_names()])
    return pd.DataFrame([{"model": spec.residual.kind, "parameter": n,
                          "prior": prior_text(spec.residual.priors.get(n))} for n in spec.residual.sigma_names()])
