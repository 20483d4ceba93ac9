"""$OMEGA of a NONMEM control stream -> the spec's OMEGAs: IIV SDs, blocks, fixed blocks and IOV.

Works on the :class:`~bayesnlme.importers.nonmem_build.Translation` ``t`` after its parameters are
decomposed: each parameter's ETA (IIV) and occasion ETAs (IOV, :mod:`.nonmem_iov`) are known.
"""

from __future__ import annotations

import numpy as np

from bayesnlme.errors import SpecError
from bayesnlme.importers import nonmem_priors as pri
from bayesnlme.importers.nonmem_result import Item, omega_records
from bayesnlme.spec.omega import fixed_block_from_dict


def translate_omegas(t, params: dict) -> tuple[dict, list]:
    """``(omegas, blocks)``: ``{parameter: (ETA, Value)}`` and the lists of parameters in estimated blocks.

    Sets ``t.fixed_blocks`` (``$OMEGA BLOCK(n) ... FIX``) and ``t.iov`` (``{parameter: (ETAs, Value)}``,
    the shared variance of a parameter's occasion ETAs).
    """
    rvs = t.model.random_variables
    by_eta = {pm.eta: bn for bn, pm in params.items() if pm.eta}
    occasion_of = {e: bn for bn, pm in params.items() if pm.occasions for e in pm.occasions.indicators}
    omegas, blocks, t.fixed_blocks, t.iov, t.refused_chains = {}, [], [], {}, set()
    records = omega_records(t.cs)
    index = {e: i for i, e in enumerate(rvs.etas.names)}
    for dist in rvs.etas:
        etas = list(dist.names)
        rec = records[index[etas[0]]] if index[etas[0]] < len(records) else None
        if dist.level != "IIV":
            _occasion_etas(t, rec, etas, occasion_of)
            continue
        unused = [e for e in etas if e not in by_eta]
        if unused:
            t.notes.append(Item(None, "$OMEGA", f"{', '.join(unused)} not used by a structural parameter (dropped)"))
        etas = [e for e in etas if e in by_eta]
        if len(dist.names) > 1 and len(etas) > 1:
            if any(t.values[str(rvs.get_covariance(e, e))].fixed for e in etas):   # BLOCK(n) ... FIX
                _fixed_block(t, rec, etas, by_eta)
            else:
                blocks.append([by_eta[e] for e in etas])
        for e in etas:
            v = t.values[str(rvs.get_covariance(e, e))]
            omegas[by_eta[e]] = (e, v)
    for block in blocks:   # members of a block share one prior family
        if not all(omegas[p][1].se for p in block):
            for p in block:
                e, v = omegas[p]
                omegas[p] = (e, pri.Value(v.value, None, v.lower, v.upper, v.fixed))
    _iov_variances(t, params)
    return omegas, blocks


def _occasion_etas(t, rec, etas: list, occasion_of: dict) -> None:
    """A distribution on Pharmpy's IOV level (one ``$OMEGA BLOCK(n) SAME`` of a chain)."""
    names = ", ".join(map(t.eta_nm.get, etas))
    used = [e for e in etas if e in occasion_of]
    if not used:
        t.notes.append(_item(t, rec, f"{names}: occasion ETAs not used by a structural parameter (dropped)"))
    elif len(etas) > 1 and str(t.model.random_variables.get_covariance(etas[0], etas[0])) not in t.refused_chains:
        t.refused_chains.add(str(t.model.random_variables.get_covariance(etas[0], etas[0])))   # once per chain
        t.fail(_item(t, rec, f"{names}: correlated occasion ETAs of {', '.join(occasion_of[e] for e in used)} "
                             f"($OMEGA BLOCK({len(etas)}) SAME); bayesnlme's KAPPAs are independent per parameter "
                             f"(write one $OMEGA BLOCK(1) ... SAME chain per parameter)"))


def _iov_variances(t, params: dict) -> None:
    rvs = t.model.random_variables
    for bn, pm in params.items():
        if not pm.occasions:
            continue
        etas = list(pm.occasions.indicators)
        variances = {str(rvs.get_covariance(e, e)) for e in etas}
        names = ", ".join(map(t.eta_nm.get, etas))
        if len(variances) > 1:
            t.fail(t.parameter_item(pm.nonmem, f"{bn}: its occasion ETAs ({names}) have different variances; "
                                               f"bayesnlme's omega_iov is one SD for all occasions ($OMEGA "
                                               f"BLOCK(1) ... SAME)"))
            continue
        v = t.values[variances.pop()]
        if v.fixed:
            t.fail(t.parameter_item(pm.nonmem, f"{bn}: the variance of its occasion ETAs ({names}) is FIX; "
                                               f"bayesnlme estimates omega_iov"))
            continue
        t.iov[bn] = (etas, v)


def _fixed_block(t, rec, etas: list, by_eta: dict) -> None:
    """``$OMEGA BLOCK(n) ... FIX``: the members' SDs fixed and a fixed correlation matrix."""
    rvs = t.model.random_variables
    cov = np.array([[float(t.values[str(rvs.get_covariance(a, b))].value)
                     if str(rvs.get_covariance(a, b)) in t.values else 0.0 for b in etas] for a in etas])
    sd = np.sqrt(np.diag(cov))
    names = [by_eta[e] for e in etas]
    try:
        block = fixed_block_from_dict({"parameters": names, "correlation": (cov / np.outer(sd, sd)).tolist()},
                                      "$OMEGA BLOCK")
    except SpecError as exc:
        t.fail(_item(t, rec, f"{', '.join(map(t.eta_nm.get, etas))}: {exc}"))
        return
    t.fixed_blocks.append(block)
    t.mapped.append(f"$OMEGA BLOCK({len(etas)}) FIX -> random_effects.fixed_blocks {names} (SDs "
                    + ", ".join(f"{s:.4g}" for s in sd) + ", fixed correlation)")


def _item(t, rec, reason: str) -> Item:
    return t.lines.record(rec, reason) if rec is not None else Item(None, "$OMEGA", reason)
