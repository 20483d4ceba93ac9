"""The validated data set: :class:`NMData` holds the event table and the dense arrays a likelihood needs.

:func:`bayesnlme.data.read_nonmem` makes one; the column conventions are documented there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bayesnlme.errors import DataError

NUMERIC_COLUMNS = ("TIME", "DV", "AMT", "EVID", "MDV", "CMT", "RATE", "DUR", "II", "ADDL", "SS")
REQUIRED_COLUMNS = ("ID", "TIME", "DV")
#: Columns with a meaning of their own: never treated as covariates.
RESERVED_COLUMNS = ("ID",) + NUMERIC_COLUMNS + ("DVID", "DVNAME", "CENS", "LIMIT", "BLQ", "LLOQ", "OCC", "C")
MISSING = {"", ".", "NA", "NaN", "nan"}


@dataclass(frozen=True)
class NMData:
    """A validated NONMEM-format data set and the dense arrays a likelihood needs.

    Subjects are indexed ``0..n_subjects-1`` in order of first appearance.
    Doses are the explicit dose records plus the additional doses implied by
    ADDL/II, sorted in event order and padded per subject to ``n_dose_max``.

    Attributes
    ----------
    frame : pandas.DataFrame
        The records with upper-case standard columns, NONMEM defaults filled,
        covariates carried forward, and ``ROW`` (1-based record number).
    ids : numpy.ndarray, shape (n_subjects,)
        Original ID values.
    obs_subject : numpy.ndarray of int, shape (n_obs,)
        Subject index of each observation.
    obs_time, obs_dv : numpy.ndarray of float, shape (n_obs,)
        Observation time and observed value.
    obs_cmt : numpy.ndarray of int, shape (n_obs,)
        Observation compartment (0 = model default).
    obs_row : numpy.ndarray of int, shape (n_obs,)
        Record number of each observation, for messages.
    dose_time, dose_amt, dose_rate : numpy.ndarray of float, shape (n_subjects, n_dose_max)
        Dose times, amounts and infusion rates (0 = bolus); 0 in padding.
    dose_cmt : numpy.ndarray of int, shape (n_subjects, n_dose_max)
        Dose compartment (0 = model default).
    dose_valid : numpy.ndarray of bool, shape (n_subjects, n_dose_max)
        False for padding.
    dose_applies : numpy.ndarray of bool, shape (n_obs, n_dose_max)
        Whether dose ``d`` of the observation's subject is given before the
        observation (earlier in event order, and not wiped out by a reset,
        EVID 3/4 or SS=1).
    dose_ss : numpy.ndarray of int, shape (n_subjects, n_dose_max)
        Steady-state flag (0, 1 or 2) of each dose; None only for NMData made
        by hand without it (then no dose is a steady-state dose).
    dose_ii : numpy.ndarray of float, shape (n_subjects, n_dose_max)
        Interdose interval II of each dose (time; used where ``dose_ss > 0``).
    obs_dvid : numpy.ndarray of int, shape (n_obs,) or None
        Observation type (``DVID`` column; None when the data have none).
        Selects the observation model of each record (see ``[[observations]]``
        in :mod:`bayesnlme.spec`).
    obs_cens : numpy.ndarray of int, shape (n_obs,) or None
        Censoring flag (``CENS``; Monolix/nlmixr2 convention): 0 observed,
        1 below the limit (left-censored, BLQ), -1 above the limit.  None
        when the data have no ``CENS`` column.
    obs_limit : numpy.ndarray of float, shape (n_obs,) or None
        ``LIMIT``: the other end of a censoring interval (e.g. 0 for a
        concentration below LLOQ = DV: the value lies in [LIMIT, DV]);
        NaN where absent (then the interval is open, (-inf, DV] or [DV, inf)).
    covariate_names : tuple of str
    source : str
        File name or ``"<DataFrame>"``.
    sha256 : str
        SHA-256 of the file bytes, or of the DataFrame written as CSV.
    """
    frame: pd.DataFrame
    ids: np.ndarray
    obs_subject: np.ndarray
    obs_time: np.ndarray
    obs_dv: np.ndarray
    obs_cmt: np.ndarray
    obs_row: np.ndarray
    dose_time: np.ndarray
    dose_amt: np.ndarray
    dose_rate: np.ndarray
    dose_cmt: np.ndarray
    dose_valid: np.ndarray
    dose_applies: np.ndarray
    covariate_names: tuple[str, ...]
    source: str
    sha256: str
    _first_row: dict = field(repr=False, default_factory=dict)
    dose_ss: np.ndarray | None = None
    dose_ii: np.ndarray | None = None
    obs_dvid: np.ndarray | None = None
    obs_cens: np.ndarray | None = None
    obs_limit: np.ndarray | None = None

    @property
    def n_subjects(self) -> int:
        return len(self.ids)

    @property
    def n_obs(self) -> int:
        return len(self.obs_time)

    @property
    def n_dose_max(self) -> int:
        return self.dose_time.shape[1]

    @property
    def columns(self) -> list[str]:
        """The data set's own columns (as read, ADDL-expanded), without bayesnlme's bookkeeping ones."""
        return record_columns(self.frame)

    @property
    def records(self) -> pd.DataFrame:
        """The event records with only the data set's own columns: valid input to :func:`read_nonmem`."""
        return self.frame[self.columns]

    def error(self, message: str, *, row: int | None = None, column: str | None = None) -> DataError:
        """A :class:`DataError` located in this data set."""
        return DataError(message, source=self.source, row=row, column=column)

    def require_covariates(self, names) -> None:
        """Check that every subject has a value of each covariate in ``names``.

        Raises
        ------
        DataError
            Naming the covariate and the first record of a subject without any value.
        """
        for name in names:
            if name not in self.frame.columns:
                raise self.error(f"covariate {name!r} is not a column of the data "
                                 f"(columns: {', '.join(c for c in self.frame.columns if c[0] != '_' and c != 'ROW')})")
            missing = self.frame.groupby("_SUBJ", sort=False)[name].apply(lambda s: s.isna().all())
            if missing.any():
                subj = int(missing.index[missing.values][0])
                raise self.error(f"covariate {name} is missing for every record of ID "
                                 f"{self.ids[subj]} (the model needs it)",
                                 row=self._first_row[subj], column=name)

    def baseline_covariates(self, names=None) -> pd.DataFrame:
        """Covariate values at each subject's first record, one row per subject (index ID)."""
        names = list(self.covariate_names if names is None else names)
        first = self.frame.groupby("_SUBJ", sort=True)[names].first()
        first.index = pd.Index(self.ids, name="ID")
        return first

    def observation_covariates(self, names=None) -> pd.DataFrame:
        """Time-varying covariates (carried forward) at each observation, shape (n_obs, k)."""
        names = list(self.covariate_names if names is None else names)
        obs = self.frame[self.frame["_OBS"]]
        return obs[names].reset_index(drop=True)


def record_columns(frame: pd.DataFrame) -> list[str]:
    """Columns of an :attr:`NMData.frame` (or a subset of it) that came from the data set:
    not the record number ``ROW`` nor the ``_``-prefixed bookkeeping columns."""
    return [c for c in frame.columns if not c.startswith("_") and c != "ROW"]


# --------------------------------------------------------------------------- reading
