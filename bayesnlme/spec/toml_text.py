"""Write a spec dict (the TOML layout of :meth:`bayesnlme.spec.ModelSpec.to_dict`) as commented TOML text.

Only what a spec holds: strings, numbers, booleans, arrays of strings or arrays, inline tables of
numbers (priors), tables and arrays of tables.  ``tomllib`` reads the result back.
"""

from __future__ import annotations

import json
import math


def value(v) -> str:
    """One TOML value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        v = float(f"{v:.8g}")   # 8 significant digits: the precision of a NONMEM .ext file and more
        return repr(v) if (v == 0 or 1e-4 <= abs(v) < 1e6) else f"{v:.8g}"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)   # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML form for {type(v).__name__}")


def _comment(lines) -> list[str]:
    return [f"# {line}".rstrip() for text in lines for line in str(text).splitlines()]


def spec_toml(d: dict, header=(), comments: dict | None = None) -> str:
    """TOML text of a spec dict.

    Parameters
    ----------
    d : dict
        ``name``, ``description``, ``structural``, ``parameters``, ``random_effects``, ``covariates``,
        ``residual``, ``observations``, ``mixture`` as in the spec's TOML layout (:meth:`ModelSpec.to_dict`).
    header : sequence of str
        Comment lines at the top.
    comments : dict, optional
        ``"parameters.CL"``, ``"covariates.0"``, ``"residual"`` ... -> comment lines above that table.
    """
    comments = comments or {}
    out = _comment(header)
    for k in ("name", "description", "structural"):
        if k in d:
            out.append(f"{k} = {value(d[k])}")
    for name, par in d.get("parameters", {}).items():
        out += ["", *_comment(comments.get(f"parameters.{name}", ())), f"[parameters.{name}]"]
        out += [f"{k} = {value(v)}" for k, v in par.items()]
    if d.get("random_effects"):
        out += ["", *_comment(comments.get("random_effects", ())), "[random_effects]"]
        out += [f"{k} = {value(v)}" for k, v in d["random_effects"].items()]
    for i, cov in enumerate(d.get("covariates", [])):
        out += ["", *_comment(comments.get(f"covariates.{i}", ())), "[[covariates]]"]
        out += [f"{k} = {value(v)}" for k, v in cov.items()]
    if d.get("covariate_shrinkage"):
        out += ["", *_comment(comments.get("covariate_shrinkage", ())), "[covariate_shrinkage]"]
        out += [f"{k} = {value(v)}" for k, v in d["covariate_shrinkage"].items()]
    if "residual" in d:
        out += ["", *_comment(comments.get("residual", ())), "[residual]"]
        out += [f"{k} = {value(v)}" for k, v in d["residual"].items()]
    for i, obs in enumerate(d.get("observations", [])):
        out += ["", *_comment(comments.get(f"observations.{i}", ())), "[[observations]]"]
        out += [f"{k} = {value(v)}" for k, v in obs.items()]
    if "mixture" in d:
        out += ["", *_comment(comments.get("mixture", ())), "[mixture]"]
        out += [f"{k} = {value(v)}" for k, v in d["mixture"].items()]
    return "\n".join(out) + "\n"
