"""Import a NONMEM control stream as a bayesnlme model specification.

The control stream is parsed by Pharmpy (``pharmpy-core``; ``pip install 'bayesnlme[nonmem]'``); the
translation itself is :mod:`~bayesnlme.importers.nonmem_pk` ($PK: structural model, typical values,
IIV, covariate effects), :mod:`~bayesnlme.importers.nonmem_iov` (occasion ETAs -> ``OCC`` and
``omega_iov``), :mod:`~bayesnlme.importers.nonmem_omega` ($OMEGA), :mod:`~bayesnlme.importers.nonmem_error`
($ERROR: residual error), :mod:`~bayesnlme.importers.nonmem_priors` (priors from $THETA/$OMEGA/$SIGMA or
the ``.ext`` file) and :mod:`~bayesnlme.importers.nonmem_data` ($DATA/$INPUT).  What maps is translated
exactly (the imported model has the same likelihood as the NONMEM one) with one stated exception: with
IOV, bayesnlme evaluates each observation with its occasion's parameters for every dose, NONMEM's model
when the drug of earlier occasions is gone (the import says so).  Everything else is listed by
control-stream line with the reason, never approximated and never dropped in silence.

Units: THETAs keep their units (the data's); NONMEM's OMEGA and SIGMA are variances and become
standard deviations (of ETA, on the log scale for log-normal IIV; of the residual, in DV units for
additive error, as a fraction for proportional error).  Nothing read from the file is evaluated.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from bayesnlme.importers import nonmem_priors as priors_mod
from bayesnlme.importers.nonmem_build import Translation
from bayesnlme.importers.nonmem_result import ImportResult, NonmemImportError


def import_nonmem(path, *, priors: str = "weak", ext=None, data=None, strict: bool = True) -> ImportResult:
    """Translate a NONMEM control stream into a bayesnlme model specification.

    Parameters
    ----------
    path : str or os.PathLike
        The control stream (``run1.mod``/``.ctl``).
    priors : {"weak", "estimates"}
        ``"weak"``: centred on the ``$THETA``/``$OMEGA``/``$SIGMA`` initial values;
        ``"estimates"``: centred on the final estimates of the ``.ext`` file, widths from their
        standard errors (see :mod:`bayesnlme.importers.nonmem_priors`).
    ext : str or os.PathLike, optional
        The ``.ext`` file, or the run's listing (``.lst``, 3 significant digits) where there is no ``.ext``
        (default: the control stream's name with ``.ext``, else ``.lst``/``.res``).
    data : str or os.PathLike, optional
        The data file, if not where ``$DATA`` says.
    strict : bool
        Raise :class:`NonmemImportError` listing every untranslated line (default); with False,
        return them in :attr:`ImportResult.untranslated` next to the spec of the rest.

    Returns
    -------
    ImportResult

    Raises
    ------
    NonmemImportError
        Pharmpy is missing or cannot parse the file; no structural model maps; the spec would be
        invalid; or (strict) some statements do not translate.  One line naming the file and lines.

    Examples
    --------
    >>> from bayesnlme.importers import import_nonmem
    >>> from bayesnlme.datasets import nonmem_path
    >>> res = import_nonmem(nonmem_path("phenobarbital"), priors="estimates")
    >>> res.spec.structural.name, sorted(res.spec.parameters), res.spec.residual.kind
    ('1cmt_iv', ['CL', 'V'], 'proportional')
    """
    path = Path(path)
    if priors not in ("weak", "estimates"):
        raise NonmemImportError(f"priors must be 'weak' or 'estimates', got {priors!r}")
    if not path.is_file():
        raise NonmemImportError(f"{path}: control stream not found")
    model = _read_model(path, data)
    values = _values(model, path, priors, ext)
    return Translation(model, path, values, ext_columns(model), priors == "estimates").run(strict)


def _read_model(path: Path, data):
    try:   # Pharmpy is a heavy optional dependency (sympy, lark, ...): loaded only when importing
        from pharmpy.modeling import read_model, read_model_from_string
    except ImportError:
        raise NonmemImportError("importing NONMEM control streams needs Pharmpy: "
                                "pip install 'bayesnlme[nonmem]'") from None
    try:
        with warnings.catch_warnings():   # Pharmpy's remarks on the data set; ours are in the result
            warnings.simplefilter("ignore")
            return _parse(path, data, read_model, read_model_from_string)
    except Exception as exc:  # noqa: BLE001 - Pharmpy raises many types; one line names the file
        where = parse_error_line(path.read_text(), exc)
        if where is not None:
            line, text = where
            token = getattr(getattr(exc, "token", None), "value", None) or getattr(exc, "char", "?")
            raise NonmemImportError(f"{path}: line {line} `{text}`: Pharmpy cannot parse this statement "
                                    f"(unexpected {token!r} at column {exc.column})") from None
        msg = " ".join(str(exc).split())
        raise NonmemImportError(f"{path}: Pharmpy cannot read this control stream "
                                f"({type(exc).__name__}: {msg[:300]})") from None


def parse_error_line(text: str, exc) -> tuple[int, str] | None:
    """``(line in the file, its text)`` of a Pharmpy (lark) syntax error, else None.

    lark counts lines within the record it parses, the ``$`` line being 1; the record is the one whose
    line at that offset holds the unexpected token at the error's column.
    """
    line, column = getattr(exc, "line", None), getattr(exc, "column", None)
    token = getattr(getattr(exc, "token", None), "value", None) or getattr(exc, "char", None)
    if not isinstance(line, int) or not isinstance(column, int) or not token:
        return None
    lines = text.splitlines()
    starts = [i for i, t in enumerate(lines) if t.lstrip().startswith("$")]
    for start in starts:
        i = start + line - 1
        if i < len(lines) and lines[i][column - 1:column - 1 + len(token)].upper() == str(token).upper():
            return i + 1, " ".join(lines[i].split(";")[0].split())
    return None


#: The file token of $DATA (possibly quoted).
_DATA_FILE = re.compile(r"(\$DATA\s+)(\"[^\"]*\"|'[^']*'|\S+)", re.IGNORECASE)


def _parse(path, data, read_model, read_model_from_string):
    written = path.read_text()
    text = min_max_code(written)   # MIN/MAX, which Pharmpy does not parse, with ABS (the same lines)
    lower = needs_upper_case(text)
    if data is None and not lower and text == written:
        return read_model(str(path))
    if data is None:   # $DATA relative to the control stream, as NONMEM reads it
        found = _DATA_FILE.search(text)
        data = path.parent / found.group(2).strip("\"'") if found else None
    if lower:
        text = upper_case_code(text)
    if data is not None:   # the data file named on $DATA replaced by the (absolute) one to read
        text = _DATA_FILE.sub(lambda m: m.group(1) + str(Path(data).resolve()), text, count=1)
    return read_model_from_string(text)


def needs_upper_case(text: str) -> bool:
    """True when a record name is not in upper case (``$pk``, ``$Error``): NM-TRAN reads lower-case code
    (NONMEM 7.2 and later), Pharmpy recognises only upper-case control streams."""
    return any(not m.group(1).isupper() for m in re.finditer(r"^\s*\$([A-Za-z]+)", text, re.MULTILINE))


def upper_case_code(text: str) -> str:
    """The control stream with its code in upper case, comments (after ``;``) and line breaks as written.

    NM-TRAN is not case-sensitive, so this is the same model; the $DATA file name is put back by the
    caller (file names are case-sensitive).

    Examples
    --------
    >>> upper_case_code("$pk\ncl = theta(1)*exp(eta(1)) ; clearance, L/h\n")
    '$PK\nCL = THETA(1)*EXP(ETA(1)) ; clearance, L/h\n'
    """
    out = []
    for line in text.splitlines(keepends=True):
        code, sep, comment = line.partition(";")
        out.append(code.upper() + sep + comment)
    return "".join(out)


_MIN_MAX = re.compile(r"(?<![A-Z0-9_])(MIN|MAX)\s*\(", re.IGNORECASE)


def min_max_code(text: str) -> str:
    """The control stream with NM-TRAN's two-argument ``MIN(a,b)``/``MAX(a,b)`` written with ``ABS``.

    Pharmpy's grammar has no ``MIN``/``MAX``; ``MIN(a,b) = ((a)+(b)-ABS((a)-(b)))/2`` and ``MAX(a,b) =
    ((a)+(b)+ABS((a)-(b)))/2`` are the same numbers, on the same line (line numbers are kept; messages quote
    the line as written).  Innermost first, so ``MIN(MAX(CRCL,10),150)`` works.  Comments are left alone.

    Examples
    --------
    >>> min_max_code("WTC = MIN(WT, 100) ; capped\n")
    'WTC = ((WT)+(100)-ABS((WT)-(100)))/2 ; capped\n'
    """
    out = []
    for line in text.splitlines(keepends=True):
        code, sep, comment = line.partition(";")
        while True:
            calls = [m for m in _MIN_MAX.finditer(code) if _args(code, m.end()) is not None]
            inner = [m for m in calls if not _MIN_MAX.search(code[m.end():_args(code, m.end())[1]])]
            if not inner:
                break
            m = inner[0]
            (a, b), end = _args(code, m.end())
            sign = "-" if m.group(1).upper() == "MIN" else "+"
            code = code[:m.start()] + f"(({a})+({b}){sign}ABS(({a})-({b})))/2" + code[end:]
        out.append(code + sep + comment)
    return "".join(out)


def _args(code: str, start: int):
    """``([a, b], end)``: the two top-level arguments of a call whose ``(`` ends at ``start``; else None."""
    depth, parts, begin = 0, [], start
    for i in range(start, len(code)):
        ch = code[i]
        if ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif ch == ")":
            parts.append(code[begin:i].strip())
            return (parts, i + 1) if len(parts) == 2 and all(parts) else None
        elif ch == "," and not depth:
            parts.append(code[begin:i].strip())
            begin = i + 1
    return None


def _values(model, path, priors, ext) -> dict:
    """Pharmpy parameter name -> :class:`~bayesnlme.importers.nonmem_priors.Value` (init or estimate)."""
    est, se = {}, {}
    if priors == "estimates":
        if ext is None:   # the run's .ext file, else its listing (.lst, or .res as PsN names it)
            found = [path.with_suffix(s) for s in (".ext", ".lst", ".res") if path.with_suffix(s).is_file()]
            ext = found[0] if found else path.with_suffix(".ext")
        ext = Path(ext)
        if not ext.is_file():
            raise NonmemImportError(f"{ext}: .ext file not found, nor a .lst listing (priors='estimates' centres the "
                                    f"priors on the final estimates; give ext= or use priors='weak')")
        est, se = priors_mod.read_ext(ext) if ext.suffix.lower() == ".ext" else priors_mod.read_lst(ext)
    out = {}
    for p, col in ext_columns(model).items():
        par = model.parameters[p]
        if priors == "estimates" and col not in est:
            raise NonmemImportError(f"{ext}: no column {col} for {p}; is it the .ext file of {path.name}?")
        out[p] = priors_mod.Value(est.get(col, par.init), se.get(col), par.lower, par.upper, par.fix)
    return out


def ext_columns(model) -> dict:
    """Pharmpy parameter name -> its ``.ext`` column (``THETA1``, ``OMEGA(2,1)``, ``SIGMA(1,1)``)."""
    rvs = model.random_variables
    cols = {}
    for kind, group in (("OMEGA", rvs.etas), ("SIGMA", rvs.epsilons)):
        names = list(group.names)
        for i, a in enumerate(names, 1):
            for j, b in enumerate(names[:i], 1):
                cov = rvs.get_covariance(a, b)
                if cov != 0:   # a SAME block repeats its first block's parameters: that block's column
                    cols.setdefault(str(cov), f"{kind}({i},{j})")
    rv_params = set(rvs.parameter_names)
    thetas = [p.name for p in model.parameters if p.name not in rv_params]
    cols.update({t: f"THETA{i}" for i, t in enumerate(thetas, 1)})
    return cols
