"""$DATA/$INPUT of a NONMEM control stream -> the column mapping for bayesnlme's data reader.

NONMEM reads a data file by position: ``$INPUT`` names its columns in order, ``DROP``/``SKIP`` drop
one, ``A=B`` gives a synonym (``DV=CONC``: the column is DV, the code calls it CONC), and
``IGNORE=@`` / ``IGNORE=#`` / ``IGNORE=C`` / ``IGNORE=(COND,...)`` / ``ACCEPT=(...)`` skip records.
Pharmpy reads the file that way (records filtered, ``.`` read as 0 as NONMEM does); this module
renames the columns to bayesnlme's (``ID TIME DV AMT EVID MDV CMT RATE II ADDL SS``), drops the
dropped ones, adds the 0/1 columns the translated categorical effects use (``SEXEQ1 = SEX == 1``)
and the covariates the $PK computes from several data items (``CRCL = (140-AGE)*WT/(72*SCR)``),
exponentiates a log-transformed DV (``Y = LOG(F) + EPS(1)``) and scales the doses where the
control stream scales the prediction (``S2 = V/1000``: AMT x 1000).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import sympy

from bayesnlme.importers.nonmem_pk import NONMEM_RELATIONS, condition_mask

#: NONMEM data items with the same meaning in bayesnlme's reader.
NM_ITEMS = ("ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "RATE", "II", "ADDL", "SS")
#: Data items bayesnlme cannot use, and why.
UNSUPPORTED_ITEMS = {"DATE": "calendar dates (DATE/DAT1-3 with clock TIME)", "DAT1": "calendar dates",
                     "DAT2": "calendar dates", "DAT3": "calendar dates", "L1": "L1 records",
                     "L2": "L2 data items (several observations per record)", "PCMT": "PCMT",
                     "XVID1": "XVID", "XVID2": "XVID", "XVID3": "XVID", "XVID4": "XVID", "XVID5": "XVID"}
#: bayesnlme's reserved columns with a meaning NONMEM does not give them: a covariate so named is renamed.
CLASHES = ("DVID", "DVNAME", "CENS", "LIMIT", "BLQ", "LLOQ", "OCC", "C", "DUR")


def column_mapping(colnames, drops, synonyms: dict) -> tuple[dict, list]:
    """Each data-file column (in file order, Pharmpy's name) -> bayesnlme column name, or None if dropped.

    Parameters
    ----------
    colnames : list of str
        ``$INPUT`` names as Pharmpy keeps them (for ``DV=CONC``: ``CONC``).
    drops : list of bool
        ``DROP``/``SKIP`` per column.
    synonyms : dict
        Reserved name -> the name used in the code (``{"DV": "CONC"}``).

    Returns
    -------
    mapping : dict
    problems : list of (column, reason)
    """
    reserved_of = {code: nm for nm, code in synonyms.items()}
    mapping, problems = {}, []
    for name, drop in zip(colnames, drops):
        if drop:
            mapping[name] = None
            continue
        target = reserved_of.get(name, name).upper()
        if target in UNSUPPORTED_ITEMS:
            problems.append((name, f"data item {target}: {UNSUPPORTED_ITEMS[target]} are not supported"))
            mapping[name] = None
        elif target in NM_ITEMS:
            mapping[name] = target
        elif target in CLASHES:   # bayesnlme gives these names a meaning; keep the column as a covariate
            mapping[name] = f"{name}NM"
        else:
            mapping[name] = name
    return mapping, problems


#: sympy functions a covariate computed in $PK may use, and their numpy equivalents.
_FUNCTIONS = {sympy.exp: np.exp, sympy.log: np.log, sympy.sqrt: np.sqrt, sympy.Abs: np.abs}
_RELATIONS = {sympy.Eq: np.equal, sympy.Ne: np.not_equal, sympy.Lt: np.less, sympy.Le: np.less_equal,
              sympy.Gt: np.greater, sympy.Ge: np.greater_equal}


def condition_text(condition) -> str:
    """NONMEM's text of a relation: ``Eq(BLQ, 1)`` -> ``BLQ.EQ.1`` (any other condition as sympy prints it)."""
    if type(condition) in NONMEM_RELATIONS:
        return f"{condition.lhs}.{NONMEM_RELATIONS[type(condition)]}.{condition.rhs}"
    return str(condition)


def can_evaluate(expr) -> bool:
    """True when :func:`evaluate` knows every function in ``expr``."""
    return all(f.func in _FUNCTIONS or f.func in (sympy.Min, sympy.Max, sympy.Piecewise)
               for f in expr.atoms(sympy.Function))


def evaluate(expr, frame: pd.DataFrame) -> np.ndarray:
    """A $PK expression in data items (``(140-AGE)*WT/72``, ``IF (CRCL.GT.150) CRCL=150``) on each record.

    Walks the sympy tree Pharmpy parsed (numbers, data items, ``+ * **``, EXP, LOG, SQRT, ABS, MIN,
    MAX, IF branches); nothing is compiled or evaluated as text.

    Raises
    ------
    ValueError
        For anything else, naming it.
    """
    if expr.is_Symbol:
        return frame[str(expr)].to_numpy(dtype=float)
    if expr.is_number:
        return np.full(len(frame), float(expr))
    if expr.is_Add:
        return sum(evaluate(a, frame) for a in expr.args)
    if expr.is_Mul:
        out = np.ones(len(frame))
        for a in expr.args:
            out = out * evaluate(a, frame)
        return out
    if expr.is_Pow:
        return np.power(evaluate(expr.base, frame), evaluate(expr.exp, frame))
    if expr.func in _FUNCTIONS:
        return _FUNCTIONS[expr.func](evaluate(expr.args[0], frame))
    if expr.func in (sympy.Min, sympy.Max):
        op = np.minimum if expr.func is sympy.Min else np.maximum
        return op.reduce([evaluate(a, frame) for a in expr.args])
    if expr.func in _RELATIONS:
        return _RELATIONS[expr.func](evaluate(expr.lhs, frame), evaluate(expr.rhs, frame))
    if isinstance(expr, (sympy.And, sympy.Or)):
        parts = [evaluate(a, frame).astype(bool) for a in expr.args]
        return np.logical_and.reduce(parts) if isinstance(expr, sympy.And) else np.logical_or.reduce(parts)
    if isinstance(expr, sympy.Piecewise):
        out = np.full(len(frame), np.nan)
        done = np.zeros(len(frame), bool)
        for value, cond in expr.args:
            hit = ~done & (np.ones(len(frame), bool) if cond == sympy.true else evaluate(cond, frame).astype(bool))
            out = np.where(hit, evaluate(value, frame), out)
            done |= hit
        return out
    raise ValueError(f"{expr.func.__name__} in {expr}")


def translate_frame(frame: pd.DataFrame, mapping: dict, derived: dict, log_dv: bool,
                    dose_scale: float = 1.0, computed: dict | None = None) -> pd.DataFrame:
    """A Pharmpy-read data set with bayesnlme's columns.

    Parameters
    ----------
    frame : pandas.DataFrame
        ``model.dataset`` (records already filtered by IGNORE/ACCEPT).
    mapping : dict
        From :func:`column_mapping`.
    derived : dict
        New column -> ``(column, op, value)`` condition; 1 where it holds, else 0.
    log_dv : bool
        DV holds log concentrations: exponentiate it on observation records.
    dose_scale : float
        Factor on AMT and on positive RATE (``S2 = V/1000``, dose in mg and DV in ng/mL: 1000).
    computed : list of (str, sympy.Expr), optional
        Covariates computed in $PK from data items, in $PK order (a later one may use or redefine an
        earlier one: ``IF (CRCL.GT.150) CRCL = 150``).
    """
    out = pd.DataFrame({new: frame[old].to_numpy() for old, new in mapping.items()
                        if new is not None and old in frame})
    if computed:
        frame = frame.copy()
        for name, expr in computed:
            frame[name] = out[name] = evaluate(expr, frame)
    for name, condition in derived.items():
        out[name] = condition_mask(frame, condition).astype(int).to_numpy()
    if dose_scale != 1:
        for col in ("AMT", "RATE"):
            if col in out:   # RATE -1/-2 (modelled rate/duration) is a code, not an amount per time
                x = out[col].astype(float)
                out[col] = x.where(x <= 0, x * dose_scale) if col == "RATE" else x * dose_scale
    if log_dv and "DV" in out:
        obs = (out["EVID"] == 0) if "EVID" in out else (out.get("AMT", 0) == 0)
        if "MDV" in out:
            obs &= out["MDV"] == 0
        out.loc[obs, "DV"] = np.exp(out.loc[obs, "DV"].astype(float))
    return out


def observation_records(frame: pd.DataFrame) -> np.ndarray:
    """Observation records of a data set in bayesnlme's columns (NONMEM's defaults for EVID and MDV)."""
    amt = frame["AMT"].to_numpy(dtype=float) if "AMT" in frame else np.zeros(len(frame))
    evid = frame["EVID"].to_numpy(dtype=float) if "EVID" in frame else (amt > 0).astype(float)
    mdv = frame["MDV"].to_numpy(dtype=float) if "MDV" in frame else (evid != 0).astype(float)
    return (evid == 0) & (mdv == 0)
