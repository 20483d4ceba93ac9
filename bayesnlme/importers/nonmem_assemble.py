"""The spec dict of a translated control stream: parameters with priors, covariate effects, OMEGA
blocks and the residual, each with a comment saying which THETA/OMEGA/SIGMA it came from."""

from __future__ import annotations

import math
import re

from bayesnlme.importers import nonmem_priors as pri
from bayesnlme.importers.nonmem_pk import Untranslatable
from bayesnlme.spec import KNOWN_DOMAINS

_TRANSFORM_TEXT = {"identity": "{t}", "log": "log({t})", "log1p": "log(1 + {t})"}


def assemble(t, structural: str, params: dict, res, omegas: dict, blocks: list):
    """``(spec dict, comments)`` for :func:`bayesnlme.spec.toml_text.spec_toml`.

    ``t`` is the :class:`~bayesnlme.importers.nonmem_build.Translation` (values, names, lists).
    """
    d = {"name": t.path.stem, "description": f"imported from NONMEM control stream {t.path.name}",
         "structural": structural, "parameters": {}}
    comments, covs, used = {}, [], set()
    for bn, pm in params.items():
        try:
            entry, lines = _parameter(t, bn, pm, omegas, used)
        except Untranslatable as exc:
            t.fail(t.parameter_item(pm.nonmem, f"{bn}: {exc.reason}"))
            continue
        d["parameters"][bn] = entry
        comments[f"parameters.{bn}"] = lines
        for e in pm.effects:
            try:
                cov, line = _effect(t, bn, e, used)
            except Untranslatable as exc:
                t.fail(t.parameter_item(pm.nonmem, f"{bn}, effect of {e.covariate}: {exc.reason}"))
                continue
            comments[f"covariates.{len(covs)}"] = [line]
            covs.append(cov)
    if covs:
        d["covariates"] = covs
    blocks = [b for b in blocks if all(p in d["parameters"] and "omega" in d["parameters"][p] for p in b)]
    if blocks:
        d["random_effects"] = {"blocks": blocks, "lkj_eta": 2.0}
        comments["random_effects"] = ["$OMEGA BLOCK: correlated ETAs with an LKJ(2) prior on the correlation; "
                                      "the OMEGA off-diagonal values are not used by the prior"]
        t.mapped.append(f"$OMEGA BLOCK -> random_effects.blocks = {blocks} (LKJ(2) on the correlations)")
    fixed = [b for b in t.fixed_blocks if all("omega_fixed" in d["parameters"].get(p, {}) for p in b.parameters)]
    if fixed:
        d.setdefault("random_effects", {})["fixed_blocks"] = [b.to_dict() for b in fixed]
        comments.setdefault("random_effects", []).append(
            "$OMEGA BLOCK ... FIX: the members' SDs are their omega_fixed, the correlations are fixed_blocks")
    if res is not None:
        d["residual"], comments["residual"] = _residual(t, res, used)
    unused = sorted(t.thetas - used - t.zero_terms, key=lambda p: int(t.nm[p][6:-1]))
    for p in unused:
        t.notes.append(_item(t, f"{t.nm[p]} ({p}) is used by no translated statement"))
    return d, comments


def _item(t, reason):
    from_record = t.cs.get_records("THETA")
    return t.lines.record(from_record[0], reason) if from_record else t.lines.statement("PK", -1, reason)


def _name(t, p) -> str:
    """``THETA(1)``, or ``THETA(1) (POP_CL)`` where the control stream names it in a comment."""
    return t.nm[p] if re.fullmatch(r"(THETA|OMEGA|SIGMA)_[\d_]+", p) else f"{t.nm[p]} ({p})"


def _parameter(t, bn, pm, omegas, used):
    if pm.theta is None:
        entry = {"iiv": pm.iiv, "fixed": pm.fixed_value}
        lines = [f"{bn}: typical value {pm.fixed_value:g} written in the code (fixed)"]
        t.mapped.append(f"{pm.nonmem} = {pm.fixed_value:g} -> {bn} fixed typical value")
    else:
        entry, lines = _typical_value(t, bn, pm, used)
    if pm.iiv != "none":
        eta, ov = omegas[bn]
        col = t.nm.get(str(t.model.random_variables.get_covariance(eta, eta)), "OMEGA")
        eta = t.eta_nm.get(eta, eta)
        if ov.fixed and ov.value == 0:
            entry["iiv"] = "none"
            lines.append(f"{eta}: {col} 0 FIX -> no IIV on {bn}")
        else:
            om = pri.sd_prior(ov, 1.0, variance=True)
            if "fixed" in om:
                entry["omega_fixed"] = om["fixed"]
            else:
                entry["omega"] = om["prior"]
            kind = {"lognormal": "log-normal (ETA on the log scale)", "logit": "logit-normal (ETA on the logit "
                    "scale)"}.get(pm.iiv, f"normal (additive ETA, units of {bn})")
            lines.append(f"{eta}: {col} variance {ov.value:g}{' FIX' if ov.fixed else ''} -> omega_{bn} = "
                         f"SD {math.sqrt(ov.value):.4g}, {kind}"
                         + (f"; RSE of the variance {100 * ov.se / ov.value:.0f}%" if ov.se else ""))
            t.mapped.append(f"{eta} {col} -> omega_{bn} = sqrt(variance), {pm.iiv} IIV")
    if bn in t.iov:
        etas, v = t.iov[bn]
        entry["omega_iov"] = pri.sd_prior(v, 1.0, variance=True)["prior"]
        col = t.nm.get(str(t.model.random_variables.get_covariance(etas[0], etas[0])), "OMEGA")
        lines.append(f"{', '.join(map(t.eta_nm.get, etas))} (one per occasion, SAME): {col} variance {v.value:g} "
                     f"-> omega_iov_{bn} = SD {math.sqrt(v.value):.4g}"
                     + (f"; RSE of the variance {100 * v.se / v.value:.0f}%" if v.se else ""))
    entry["description"] = f"NONMEM {pm.name} ({lines[0].split(': ', 1)[1]})"
    return entry, lines


def _typical_value(t, bn, pm, used):
    v = t.values[pm.theta]
    used.add(pm.theta)
    domain = {"lognormal": (0.0, math.inf), "logit": (0.0, 1.0)}.get(
        pm.iiv, KNOWN_DOMAINS.get(bn, (-math.inf, math.inf)))
    entry = {"iiv": pm.iiv, **pri.typical_value(v, pm.scale, domain, pm.log_theta, pm.logit_theta)}
    scale = "" if pm.scale == 1 else f" x {pm.scale:g}"
    name = (f"EXP({_name(t, pm.theta)})" if pm.log_theta else
            f"EXPIT({_name(t, pm.theta)})" if pm.logit_theta else _name(t, pm.theta))
    se = (f", SE {v.se:.3g} ({'log' if pm.log_theta else 'logit'} scale)" if pm.log_theta or pm.logit_theta
          else f", RSE {100 * v.se / abs(v.value):.0f}%") if v.se else ""
    lines = [f"{bn}: typical value {name}{scale}, "
             + (f"FIX {v.value:g}" if v.fixed else f"{'estimate' if t.values_are_estimates else 'initial'} "
                f"{v.value:g}" + se)]
    t.mapped.append(f"{name} -> {bn} typical value{scale}")
    return entry, lines


def _effect(t, bn, e, used):
    cov = e.covariate if e.kind == "categorical" else t.columns.get(e.covariate) or e.covariate
    entry = {"parameter": bn, "covariate": cov, "type": e.kind, "reference": e.reference}
    if e.kind == "categorical":
        t.derived[cov] = e.condition
    if e.shared_with:   # the THETA of the same covariate's effect on another parameter
        entry["shared_with"] = e.shared_with
        src = f"{_name(t, e.theta)}, shared with {e.shared_with} (one theta, {cov}_on_{e.shared_with})"
    elif e.theta and e.denominator and e.kind == "linear":   # THETA(1) + THETA(4)*(WT-70)
        v = pri.slope_ratio(t.values[e.theta], t.values[e.denominator])
        used.update((e.theta, e.denominator))
        entry.update(pri.effect(v, e.kind, "identity"))
        src = (f"additive: {_name(t, e.denominator)} + {_name(t, e.theta)}*({e.covariate}-{e.reference}); "
               f"bayesnlme's {cov}_on_{bn} = {t.nm[e.theta]}/{t.nm[e.denominator]}")
    elif e.theta and e.denominator:   # a THETA per IF branch: the ratio of the two
        v = pri.ratio(t.values[e.theta], t.values[e.denominator])
        used.update((e.theta, e.denominator))
        entry.update(pri.effect(v, e.kind, e.transform))
        src = (f"{_name(t, e.theta)} in the branch, {_name(t, e.denominator)} otherwise; bayesnlme's {cov}_on_{bn} "
               f"= log({t.nm[e.theta]}/{t.nm[e.denominator]})")
    elif e.theta:
        v = t.values[e.theta]
        used.add(e.theta)
        entry.update(pri.effect(v, e.kind, e.transform))
        what = _TRANSFORM_TEXT[e.transform].format(t=t.nm[e.theta])
        src = f"{_name(t, e.theta)}{' FIX' if v.fixed else ''}; bayesnlme's {cov}_on_{bn} = {what}"
    else:
        entry["fixed"] = e.fixed
        src = f"exponent {e.fixed:g} written in the code (fixed)" if e.kind == "power" else \
            f"constant {e.fixed:g} written in the code (fixed)"
    if e.kind == "categorical":
        c, op, val = e.condition
        text = f"IF ({c}.{op}.{val}) {bn} x ratio: derived 0/1 column {cov}; {src}"
    elif e.kind == "exponential" and e.transform == "log":
        exponent = e.covariate if e.reference == 0 else f"({e.covariate}-{e.reference})"
        text = f"{t.nm[e.theta]}**{exponent} on {bn}: {src}"
    else:
        text = {"power": f"({e.covariate}/{e.reference})**{t.nm.get(e.theta, e.fixed)}", "exponential":
                f"EXP(theta*({e.covariate}-{e.reference}))", "linear":
                f"(1+theta*({e.covariate}-{e.reference}))"}[e.kind] + f" on {bn}: {src}"
    t.mapped.append(f"{e.kind} effect of {e.covariate} on {bn} ({src})")
    return entry, text


def _residual(t, res, used):
    entry, lines = {"type": res.kind}, [f"$ERROR -> {res.kind} residual error"
                                        + ("; DV is log-transformed in the NONMEM data" if res.log_dv else "")]
    for name, src in res.sources.items():
        v = t.values[src.name]
        variance = src.kind == "sigma"
        if not variance:
            used.add(src.name)
        pr = pri.sd_prior(v, src.factor, variance=variance)
        entry[name] = pr if "fixed" in pr else pr["prior"]
        factor = "" if src.factor == 1 else f"{src.factor:g} x "
        sd = src.factor * (math.sqrt(v.value) if variance else abs(v.value))
        what = f"sqrt({_name(t, src.name)})" if variance else f"|{_name(t, src.name)}|"
        lines.append(f"{name}: {factor}{what}{' FIX' if v.fixed else ''} = SD {sd:.4g}"
                     + (" (NONMEM's SIGMA is a variance)" if variance else " (the THETA is an SD; SIGMA fixed)"))
        t.mapped.append(f"{_name(t, src.name)} -> {name}" + (" = sqrt(variance)" if variance else " (an SD)"))
    return entry, lines
