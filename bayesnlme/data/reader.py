"""Read, validate and vectorise NONMEM-format event data.

A data set is a table with one event per row (NONMEM's ``$INPUT`` layout):

========  ==============================================================  =========================
column    meaning                                                         default when absent
========  ==============================================================  =========================
ID        subject identifier (records of one subject must be contiguous)  required
TIME      event time (h in the bundled data sets)                         required
DV        observed value on observation rows                              required
AMT       dose amount on dose rows                                        0
EVID      0 observation, 1 dose, 2 other, 3 reset, 4 reset and dose       1 if AMT > 0 else 0
MDV       1 = no observation on this row                                  1 if EVID != 0 else 0
CMT       compartment (0 = the model's default)                           0
RATE      infusion rate (amount/time); 0 = bolus                          0
DUR       infusion duration (time), alternative to RATE                   0
II        interdose interval for ADDL and SS                              0
ADDL      number of additional doses like this one, every II             0
SS        steady state: 0 no, 1 reset then steady state, 2 steady state   0
          added to the current amounts (both need II > 0)
========  ==============================================================  =========================

A steady-state dose (``SS=1`` or ``2``) stands for the same dose given every
``II`` forever up to and including its own time (NONMEM semantics).  ``SS=1``
first resets the system like ``EVID=4``: earlier doses, still-running
infusions and the pending ADDL doses of earlier records no longer count.
ADDL doses of a steady-state record are ordinary doses.

Column names are matched case-insensitively and ``.`` or an empty cell is read
as missing.  Every other column is a covariate; covariates are carried forward
within a subject (last observation carried forward), and values missing before
a subject's first recorded value are filled backwards from it.

Rows in error messages are data records counted from 1 (the header is not a
record), followed by the file line where the data came from a file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from bayesnlme.data.nmdata import MISSING, NUMERIC_COLUMNS, REQUIRED_COLUMNS, RESERVED_COLUMNS, NMData
from bayesnlme.errors import DataError


def read_nonmem(source, *, name: str | None = None) -> NMData:
    """Read and validate NONMEM-format data.

    Parameters
    ----------
    source : str, os.PathLike or pandas.DataFrame
        A CSV file (comma separated, header row) or a DataFrame.
    name : str, optional
        Name used in messages for a DataFrame source.

    Returns
    -------
    NMData

    Raises
    ------
    DataError
        With the record number, column and problem for the first error found.
    """
    if isinstance(source, NMData):
        return source
    if isinstance(source, pd.DataFrame):
        label = name or "<DataFrame>"
        raw = source.astype(str).where(source.notna(), "")
        digest = hashlib.sha256(source.to_csv(index=False).encode()).hexdigest()
        line_offset = None
    else:
        path = Path(source)
        label = name or path.name
        if not path.is_file():
            raise DataError("file not found", source=str(path))
        content = path.read_bytes()
        digest = hashlib.sha256(content).hexdigest()
        try:
            raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True,
                              header=None)
            text_lines = content.decode().splitlines()
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DataError(f"not a readable CSV file ({str(exc).strip().splitlines()[-1]})",
                            source=label) from None
        # header=None keeps repeated names (pandas would rename a second TIME to TIME.1)
        raw, raw.columns = raw.iloc[1:].reset_index(drop=True), list(raw.iloc[0])
        # pandas skips blank lines: map data records to the file lines they came from
        line_offset = [i + 1 for i, line in enumerate(text_lines) if line.strip()][1:]
    return _from_strings(raw, label, digest, line_offset)


def _from_strings(raw: pd.DataFrame, label: str, digest: str, line_offset) -> NMData:
    def err(msg, row=None, column=None):
        if row is not None and line_offset is not None and row <= len(line_offset):
            msg = f"{msg} (file line {line_offset[row - 1]})"
        return DataError(msg, source=label, row=row, column=column)

    raw = raw.copy()
    raw.columns = [str(c).strip() for c in raw.columns]
    upper = [c.upper() for c in raw.columns]
    dupes = sorted({c for c in upper if upper.count(c) > 1})
    if dupes:
        raise err(f"duplicate column name(s) {', '.join(dupes)} (names are case-insensitive)")
    standard = set(NUMERIC_COLUMNS) | {"ID"} | set(RESERVED_COLUMNS)
    raw.columns = [u if u in standard else c for c, u in zip(raw.columns, upper)]
    for col in REQUIRED_COLUMNS:
        if col not in raw.columns:
            raise err(f"required column {col} is missing (columns: {', '.join(raw.columns)})")
    if len(raw) == 0:
        raise err("no data records")

    raw = raw.apply(lambda s: s.str.strip())
    df = pd.DataFrame(index=raw.index)
    df["ROW"] = np.arange(1, len(raw) + 1)
    ids = raw["ID"]
    if ids.isin(MISSING).any():
        raise err("ID is missing", row=int(np.flatnonzero(ids.isin(MISSING))[0]) + 1, column="ID")
    df["ID"] = ids
    for col in NUMERIC_COLUMNS:
        if col in raw.columns:
            df[col] = _to_number(raw[col], col, err)
    for col in raw.columns:
        if col in df.columns:
            continue
        values = raw[col].where(~raw[col].isin(MISSING))
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().sum() == values.notna().sum():
            _check_finite(numeric, col, err)
            df[col] = numeric
        else:
            df[col] = values
    _fill_defaults(df)
    _validate(df, err)
    covariates = tuple(c for c in df.columns
                       if c not in RESERVED_COLUMNS and c != "ROW" and not c.startswith("_"))
    return _vectorise(df, covariates, label, digest)


def _to_number(col: pd.Series, name: str, err) -> pd.Series:
    missing = col.isin(MISSING)
    values = pd.to_numeric(col.where(~missing), errors="coerce")
    bad = values.isna() & ~missing
    if bad.any():
        i = int(np.flatnonzero(bad.values)[0])
        raise err(f"non-numeric value {col.iloc[i]!r}", row=i + 1, column=name)
    _check_finite(values, name, err)
    return values.astype(float)


def _check_finite(values: pd.Series, name: str, err) -> None:
    """'inf', '-inf', '1e999' parse as numbers; no NONMEM column or covariate may hold one."""
    infinite = np.isinf(values.to_numpy(float, na_value=np.nan))
    if infinite.any():
        i = int(np.flatnonzero(infinite)[0])
        raise err(f"infinite value {float(values.iloc[i]):g} (every number must be finite)", row=i + 1, column=name)


def _fill_defaults(df: pd.DataFrame) -> None:
    if "AMT" not in df:
        df["AMT"] = 0.0
    if "EVID" not in df:
        df["EVID"] = np.where(df["AMT"].fillna(0) > 0, 1.0, 0.0)
    df["EVID"] = df["EVID"].fillna(0.0)
    if "MDV" not in df:
        df["MDV"] = np.where(df["EVID"] != 0, 1.0, 0.0)
    df["MDV"] = df["MDV"].fillna(pd.Series(np.where(df["EVID"] != 0, 1.0, 0.0), index=df.index))
    for col in ("CMT", "RATE", "DUR", "II", "ADDL", "SS"):
        df[col] = df[col].fillna(0.0) if col in df else 0.0
    df["AMT"] = df["AMT"].fillna(0.0)


def _first_bad(mask) -> int:
    return int(np.flatnonzero(np.asarray(mask))[0]) + 1


MAX_ADDL = 100_000   # implied doses per record; more is a unit or typing error, and would exhaust memory


def _validate(df: pd.DataFrame, err) -> None:
    checks = [
        (df["TIME"].isna(), "TIME", "TIME is missing"),
        (~df["EVID"].isin([0, 1, 2, 3, 4]), "EVID", "EVID must be 0, 1, 2, 3 or 4"),
        (~df["MDV"].isin([0, 1]), "MDV", "MDV must be 0 or 1"),
        (df["AMT"] < 0, "AMT", "negative dose amount"),
        (df["RATE"] < 0, "RATE",
         "negative RATE (modelled rate/duration, RATE=-1/-2, is not supported; give RATE or DUR)"),
        (df["DUR"] < 0, "DUR", "negative infusion duration"),
        ((df["RATE"] > 0) & (df["DUR"] > 0), "DUR", "both RATE and DUR given; give one of them"),
        (df["II"] < 0, "II", "negative interdose interval"),
        ((df["ADDL"] < 0) | (df["ADDL"] != np.round(df["ADDL"])) | (df["ADDL"] > MAX_ADDL), "ADDL",
         f"ADDL must be a whole number from 0 to {MAX_ADDL}"),
        ((df["ADDL"] > 0) & ~(df["II"] > 0), "II", "ADDL > 0 needs a positive II"),
        ((df["CMT"] != np.round(df["CMT"])) | (df["CMT"] > 1000), "CMT", "CMT must be a whole number up to 1000"),
        (df["CMT"] < 0, "CMT", "negative CMT (turning compartments off is not supported)"),
        (~df["SS"].isin([0, 1, 2]), "SS", "SS must be 0, 1 (reset, then steady state) or 2 "
         "(steady state added)"),
    ]
    dose = df["EVID"].isin([1, 4])
    obs = (df["EVID"] == 0) & (df["MDV"] == 0)
    checks += [
        (obs & df["DV"].isna(), "DV", "observation record (EVID=0, MDV=0) without a DV value"),
        (dose & (df["AMT"] <= 0), "AMT", "dose record (EVID 1 or 4) needs AMT > 0"),
        ((df["AMT"] > 0) & ~dose, "AMT", "AMT > 0 on a record that is not a dose (EVID is not 1 or 4)"),
        (((df["RATE"] > 0) | (df["DUR"] > 0)) & ~dose, "RATE", "RATE/DUR given on a record that is not a dose"),
        ((df["ADDL"] > 0) & ~dose, "ADDL", "ADDL given on a record that is not a dose"),
        ((df["SS"] != 0) & ~dose, "SS", "SS given on a record that is not a dose (EVID is not 1 or 4)"),
        ((df["SS"] != 0) & dose & ~(df["II"] > 0), "II",
         "steady-state dose (SS=1 or 2) needs a positive interdose interval II"),
    ]
    for bad, column, message in checks:
        if bad.any():
            raise err(message, row=_first_bad(bad), column=column)

    change = df["ID"] != df["ID"].shift()
    block = change.cumsum()
    seen = {}
    for i in np.flatnonzero(change.values):
        ident = df["ID"].iat[i]
        if ident in seen:
            raise err(f"records of ID {ident} are not contiguous (it appears again after other IDs; "
                      f"first block starts at row {seen[ident]})", row=i + 1, column="ID")
        seen[ident] = i + 1
    back = (df["TIME"].diff() < 0) & ~change
    if back.any():
        i = _first_bad(back)
        raise err(f"TIME decreases within ID {df['ID'].iat[i - 1]} "
                  f"({df['TIME'].iat[i - 2]:g} then {df['TIME'].iat[i - 1]:g})", row=i, column="TIME")
    df["_SUBJ"] = block - 1
    _validate_observation_columns(df, obs, err)
    if not obs.any():
        raise err("no observation records (EVID=0 with MDV=0)")


def _validate_observation_columns(df: pd.DataFrame, obs, err) -> None:
    """DVID (whole number), CENS (-1, 0, 1) and LIMIT (numeric) on observation records."""
    for col in ("DVID", "CENS", "LIMIT"):
        if col not in df.columns:
            continue
        v = pd.to_numeric(df[col], errors="coerce")
        bad = obs & df[col].notna() & v.isna()
        if bad.any():
            raise err(f"{col} must be numeric, got {df[col].iat[_first_bad(bad) - 1]!r}",
                      row=_first_bad(bad), column=col)
        df[col] = v
    if "DVID" in df.columns:
        d = df["DVID"]
        bad = obs & (d.isna() | (d != np.round(d)))
        if bad.any():
            raise err("DVID (observation type) must be a whole number on every observation record",
                      row=_first_bad(bad), column="DVID")
    if "CENS" in df.columns:
        c = df["CENS"].fillna(0)
        bad = obs & ~c.isin([-1, 0, 1])
        if bad.any():
            raise err("CENS must be 0 (observed), 1 (below the limit in DV, BLQ) or -1 (above it)",
                      row=_first_bad(bad), column="CENS")
        if "LIMIT" in df.columns:
            lim = df["LIMIT"]
            wrong = obs & lim.notna() & (((c == 1) & (lim >= df["DV"])) | ((c == -1) & (lim <= df["DV"])))
            if wrong.any():
                raise err("LIMIT must lie below DV for CENS=1 (the value is in [LIMIT, DV]) and above "
                          "DV for CENS=-1", row=_first_bad(wrong), column="LIMIT")


# --------------------------------------------------------------------------- events → arrays


def _vectorise(df: pd.DataFrame, covariates, label: str, digest: str) -> NMData:
    ids = df.drop_duplicates("_SUBJ")["ID"].to_numpy()
    if covariates:
        filled = df.groupby("_SUBJ", sort=False)[list(covariates)].transform(lambda s: s.ffill().bfill())
        df[list(covariates)] = filled
    df["_OBS"] = (df["EVID"] == 0) & (df["MDV"] == 0)
    events = _expand_events(df)

    n_sub = len(ids)
    doses = events[events["is_dose"]]
    counts = doses.groupby("subj").size().reindex(range(n_sub), fill_value=0).to_numpy()
    n_dose = max(int(counts.max()), 1)
    slot = doses.groupby("subj").cumcount().to_numpy()
    subj = doses["subj"].to_numpy()

    def dense(values, dtype=float):
        out = np.zeros((n_sub, n_dose), dtype=dtype)
        out[subj, slot] = values
        return out

    rate = np.where(doses["DUR"].to_numpy() > 0, doses["AMT"].to_numpy() / np.where(
        doses["DUR"].to_numpy() > 0, doses["DUR"].to_numpy(), 1.0), doses["RATE"].to_numpy())
    dose_order = dense(doses["order"].to_numpy(), int)
    dose_epoch = dense(doses["epoch"].to_numpy(), int)
    valid = dense(True, bool)

    obs = events[events["is_obs"]]
    o_subj = obs["subj"].to_numpy()
    applies = (valid[o_subj]
               & (dose_order[o_subj] < obs["order"].to_numpy()[:, None])
               & (dose_epoch[o_subj] == obs["epoch"].to_numpy()[:, None]))
    first_row = df.groupby("_SUBJ")["ROW"].first().to_dict()
    frame = df.reset_index(drop=True)
    return NMData(
        frame=frame, ids=ids,
        obs_subject=o_subj.astype(int), obs_time=obs["TIME"].to_numpy(float),
        obs_dv=obs["DV"].to_numpy(float), obs_cmt=obs["CMT"].to_numpy(int),
        obs_row=obs["ROW"].to_numpy(int),
        dose_time=dense(doses["TIME"].to_numpy()), dose_amt=dense(doses["AMT"].to_numpy()),
        dose_rate=dense(rate), dose_cmt=dense(doses["CMT"].to_numpy(), int),
        dose_valid=valid, dose_applies=applies,
        covariate_names=tuple(covariates), source=label, sha256=digest,
        _first_row={int(k): int(v) for k, v in first_row.items()},
        dose_ss=dense(doses["SS"].to_numpy(), int), dose_ii=dense(doses["II"].to_numpy()),
        **_observation_columns(df, obs["ROW"].to_numpy(int)),
    )


def _observation_columns(df: pd.DataFrame, rows: np.ndarray) -> dict:
    """DVID, CENS and LIMIT at the observation records (None for absent columns)."""
    by_row = df.set_index("ROW")
    out = {}
    for col, key in (("DVID", "obs_dvid"), ("CENS", "obs_cens"), ("LIMIT", "obs_limit")):
        if col not in df.columns:
            out[key] = None
            continue
        v = by_row.loc[rows, col]
        if col == "LIMIT":
            out[key] = v.to_numpy(float)
        else:   # validated in _validate_observation_columns: whole numbers, no gaps on observations
            out[key] = v.fillna(0).to_numpy(float).astype(int)
    return out


def _expand_events(df: pd.DataFrame) -> pd.DataFrame:
    """Explicit records plus ADDL-implied doses, in event order per subject.

    An implied dose at the same time as a record is placed after that record
    (an observation recorded at a dosing time is the trough).  A reset (EVID 3
    or 4) cancels the implied doses of earlier records that fall after it.
    """
    base = pd.DataFrame({
        "subj": df["_SUBJ"].to_numpy(), "TIME": df["TIME"].to_numpy(), "ROW": df["ROW"].to_numpy(),
        "AMT": df["AMT"].to_numpy(), "RATE": df["RATE"].to_numpy(), "DUR": df["DUR"].to_numpy(),
        "CMT": df["CMT"].to_numpy(), "DV": df["DV"].to_numpy(),
        "SS": df["SS"].to_numpy(), "II": df["II"].to_numpy(),
        "is_dose": df["EVID"].isin([1, 4]).to_numpy(), "is_obs": df["_OBS"].to_numpy(),
        # SS=1 resets the system before putting it at steady state
        "reset": (df["EVID"].isin([3, 4]) | (df["SS"] == 1)).to_numpy(), "implied": False,
    })
    src = base[(df["ADDL"] > 0).to_numpy()]
    if len(src):
        n_add = df.loc[df["ADDL"] > 0, "ADDL"].to_numpy(int)
        ii = df.loc[df["ADDL"] > 0, "II"].to_numpy(float)
        rep = src.loc[src.index.repeat(n_add)].copy()
        k = np.concatenate([np.arange(1, n + 1) for n in n_add])
        rep["TIME"] = rep["TIME"].to_numpy() + k * np.repeat(ii, n_add)
        rep["implied"] = True
        rep["is_obs"] = False
        rep["reset"] = False
        rep["SS"] = 0.0   # the ADDL doses of a steady-state record are ordinary doses
        base = pd.concat([base, rep], ignore_index=True)
    events = base.sort_values(["subj", "TIME", "implied", "ROW"], kind="stable").reset_index(drop=True)
    events["epoch"] = events.groupby("subj")["reset"].cumsum()
    if events["implied"].any():
        # an implied dose from epoch e that falls after the next reset is cancelled
        origin_epoch = events.loc[~events["implied"]].set_index(["subj", "ROW"])["epoch"]
        src_epoch = origin_epoch.reindex(pd.MultiIndex.from_arrays([events["subj"], events["ROW"]])).to_numpy()
        events = events[~events["implied"] | (events["epoch"].to_numpy() == src_epoch)].reset_index(drop=True)
    events["order"] = events.groupby("subj").cumcount()
    return events
