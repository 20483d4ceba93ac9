"""$DATA/$INPUT of a NONMEM control stream -> the column mapping for bayesnlme's data reader.

NONMEM reads a data file by position: ``$INPUT`` names its columns in order, ``DROP``/``SKIP`` drop
one, ``A=B`` gives a synonym (``DV=CONC``: the column is DV, the code calls it CONC), and
``IGNORE=@`` / ``IGNORE=#`` / ``IGNORE=C`` / ``IGNORE=(COND,...)`` / ``ACCEPT=(...)`` skip records.
Pharmpy reads the file that way (records filtered, ``.`` read as 0 as NONMEM does); this module
renames the columns to bayesnlme's (``ID TIME DV AMT EVID MDV CMT RATE II ADDL SS``), drops the
dropped ones, adds the 0/1 columns the translated categorical effects use (``SEXEQ1 = SEX == 1``),
exponentiates a log-transformed DV (``Y = LOG(F) + EPS(1)``) and scales the doses where the
control stream scales the prediction (``S2 = V/1000``: AMT x 1000).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bayesnlme.importers.nonmem_pk import condition_mask

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


def translate_frame(frame: pd.DataFrame, mapping: dict, derived: dict, log_dv: bool,
                    dose_scale: float = 1.0) -> pd.DataFrame:
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
    """
    out = pd.DataFrame({new: frame[old].to_numpy() for old, new in mapping.items()
                        if new is not None and old in frame})
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
