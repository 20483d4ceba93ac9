"""Tests for bayesnlme.data: reading, validating and vectorising NONMEM-format data."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayesnlme import datasets
from bayesnlme.data import NMData, read_nonmem
from bayesnlme.errors import BayesNLMEInputError, DataError


def write_csv(tmp_path, text, name="data.csv"):
    """Write ``text`` (dedented lines, stripped) as a CSV file and return its path."""
    path = tmp_path / name
    lines = [line.strip() for line in text.strip().splitlines()]
    path.write_text("\n".join(lines) + "\n")
    return path


def read_csv_text(tmp_path, text, name="data.csv") -> NMData:
    return read_nonmem(write_csv(tmp_path, text, name))


def raises_at(tmp_path, text, row, column, problem=None, name="bad.csv"):
    """Assert that reading ``text`` raises DataError naming file, row, column (and problem)."""
    path = write_csv(tmp_path, text, name)
    with pytest.raises(DataError, match=rf"row {row}\b.*column {column}\b") as info:
        read_nonmem(path)
    err = info.value
    msg = str(err)
    assert name in msg
    assert err.row == row
    assert err.column == column
    if problem is not None:
        assert re.search(problem, msg), msg
    return err


# --------------------------------------------------------------------------- bundled data sets


@pytest.mark.parametrize("name, n_subjects, n_obs", [
    ("theophylline", 12, 132),
    ("indometacin", 6, 66),
    ("phenobarbital", 59, 155),
    ("warfarin", 32, 483),
])
def test_bundled_dataset_counts(name, n_subjects, n_obs):
    path = datasets.dataset_path(name)
    assert path.is_file()
    data = read_nonmem(path)
    assert data.n_subjects == n_subjects
    assert data.n_obs == n_obs
    assert data.source == path.name
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert np.all(data.dose_valid.sum(axis=1) >= 1)  # every subject is dosed
    # DataFrame input gives the same arrays
    frame_data = read_nonmem(pd.read_csv(path))
    assert frame_data.n_subjects == n_subjects
    assert frame_data.n_obs == n_obs
    np.testing.assert_array_equal(frame_data.obs_dv, data.obs_dv)
    np.testing.assert_array_equal(frame_data.dose_applies, data.dose_applies)


@pytest.mark.parametrize("loader, n_rows", [
    (datasets.load_theophylline, 144),
    (datasets.load_indometacin, 72),
    (datasets.load_phenobarbital, 744),
    (datasets.load_warfarin, 515),
])
def test_dataset_loaders_row_counts(loader, n_rows):
    df = loader()
    assert isinstance(df, pd.DataFrame)
    assert len(df) == n_rows
    for col in ("ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT"):
        assert col in df.columns


def test_bundled_covariate_names():
    theo = read_nonmem(datasets.load_theophylline())
    assert theo.covariate_names == ("WT", "DOSE_MGKG")
    assert read_nonmem(datasets.load_indometacin()).covariate_names == ()
    assert read_nonmem(datasets.load_phenobarbital()).covariate_names == ("WT", "APGR")
    warf = read_nonmem(datasets.dataset_path("warfarin"))
    # DVID and DVNAME are reserved, not covariates
    assert warf.covariate_names == ("WT", "AGE", "SEX")
    base = theo.baseline_covariates()
    assert list(base.columns) == ["WT", "DOSE_MGKG"]
    assert len(base) == 12
    assert base.loc["1", "WT"] == pytest.approx(79.6)
    theo.require_covariates(["WT", "DOSE_MGKG"])  # all present: no error


def test_dataset_path_unknown_name():
    with pytest.raises(KeyError, match="unknown data set"):
        datasets.dataset_path("nope")


# --------------------------------------------------------------------------- parsing conventions


def test_lower_case_header(tmp_path):
    data = read_csv_text(tmp_path, """
        id,time,dv,amt,evid,mdv,cmt
        1,0,.,100,1,1,1
        1,1,5.0,0,0,0,2
        1,2,4.0,0,0,0,2
    """)
    assert data.n_subjects == 1
    assert data.n_obs == 2
    for col in ("ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT"):
        assert col in data.frame.columns
    np.testing.assert_array_equal(data.obs_cmt, [2, 2])
    np.testing.assert_array_equal(data.dose_cmt, [[1]])
    assert data.covariate_names == ()


def test_mixed_case_header_and_lower_case_error_column(tmp_path):
    # the standard column is reported under its upper-case name
    raises_at(tmp_path, """
        Id,Time,Dv,Amt
        1,0,.,100
        1,x,5,0
    """, row=2, column="TIME", problem="non-numeric value 'x'")


def test_defaults_without_evid_mdv(tmp_path):
    data = read_csv_text(tmp_path, """
        ID,TIME,DV,AMT
        1,0,0,100
        1,1,5.0,0
        1,2,4.0,
        2,0,.,50
        2,3,2.5,0
    """)
    f = data.frame
    np.testing.assert_array_equal(f["EVID"], [1, 0, 0, 1, 0])
    np.testing.assert_array_equal(f["MDV"], [1, 0, 0, 1, 0])
    for col in ("CMT", "RATE", "DUR", "II", "ADDL", "SS"):
        np.testing.assert_array_equal(f[col], 0.0)
    np.testing.assert_array_equal(f["ROW"], [1, 2, 3, 4, 5])
    assert data.n_obs == 3
    np.testing.assert_array_equal(data.dose_amt, [[100.0], [50.0]])
    np.testing.assert_array_equal(data.dose_time, [[0.0], [0.0]])
    np.testing.assert_array_equal(data.dose_rate, 0.0)
    assert data.dose_valid.all()


def test_only_required_columns(tmp_path):
    # no AMT at all: every record is an observation
    data = read_csv_text(tmp_path, """
        ID,TIME,DV
        1,0,1
        1,1,2
    """)
    assert data.n_obs == 2
    assert data.n_dose_max == 1
    assert not data.dose_valid.any()
    assert not data.dose_applies.any()


def test_empty_mdv_defaults_from_evid(tmp_path):
    # EVID=0 with an empty MDV is an observation (MDV defaults to 0), so an empty DV is an error
    raises_at(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV
        1,0,.,100,1,.
        1,1,5.0,.,0,0
        1,2,,,0,
    """, row=3, column="DV", problem="without a DV value")


def test_dot_and_empty_read_as_missing_values(tmp_path):
    data = read_csv_text(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV,WT
        1,0,.,100,1,1,.
        1,1,5.0,.,0,0,70
        1,2,,,2,,
        1,3,.,,2,1,72
    """)
    f = data.frame
    assert np.isnan(f["DV"].iat[0]) and np.isnan(f["DV"].iat[2]) and np.isnan(f["DV"].iat[3])
    assert f["AMT"].tolist() == [100.0, 0.0, 0.0, 0.0]
    assert f["MDV"].tolist() == [1.0, 0.0, 1.0, 1.0]
    # WT: "." back-filled from 70, "" carried forward from 70, then 72
    assert f["WT"].tolist() == [70.0, 70.0, 70.0, 72.0]
    assert data.n_obs == 1


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize("missing", ["ID", "TIME", "DV"])
def test_missing_required_column(tmp_path, missing):
    cols = ["ID", "TIME", "DV", "AMT"]
    values = ["1", "0", "1", "0"]
    keep = [i for i, c in enumerate(cols) if c != missing]
    text = ",".join(cols[i] for i in keep) + "\n" + ",".join(values[i] for i in keep)
    path = write_csv(tmp_path, text, "nocol.csv")
    with pytest.raises(DataError, match=rf"required column {missing} is missing") as info:
        read_nonmem(path)
    assert "nocol.csv" in str(info.value)


def test_non_numeric_time(tmp_path):
    raises_at(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV
        1,0,.,100,1,1
        1,1,5,0,0,0
        1,abc,4,0,0,0
    """, row=3, column="TIME", problem="non-numeric value 'abc'")


def test_non_numeric_amt(tmp_path):
    raises_at(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV
        1,0,.,100mg,1,1
        1,1,5,0,0,0
    """, row=1, column="AMT", problem="non-numeric value '100mg'")


def test_time_decreasing_within_id(tmp_path):
    raises_at(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV
        1,0,.,100,1,1
        1,2,5,0,0,0
        1,1,4,0,0,0
        2,0,.,100,1,1
    """, row=3, column="TIME", problem=r"TIME decreases within ID 1 \(2 then 1\)")


def test_time_may_restart_with_new_id(tmp_path):
    data = read_csv_text(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV
        1,0,.,100,1,1
        1,5,5,0,0,0
        2,0,.,100,1,1
        2,1,4,0,0,0
    """)
    assert data.n_subjects == 2


def test_negative_amt(tmp_path):
    raises_at(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV
        1,0,.,100,1,1
        1,1,5,0,0,0
        1,2,.,-5,1,1
    """, row=3, column="AMT", problem="negative dose amount")


def test_evid_5(tmp_path):
    raises_at(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV
        1,0,.,100,1,1
        1,1,.,0,5,1
        1,2,4,0,0,0
    """, row=2, column="EVID", problem="EVID must be")


def test_observation_without_dv(tmp_path):
    raises_at(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV
        1,0,.,100,1,1
        1,1,5,0,0,0
        1,2,.,0,0,0
    """, row=3, column="DV", problem="without a DV value")


def test_observation_without_dv_default_mdv(tmp_path):
    # no EVID/MDV columns: an empty DV on a non-dose row is an observation without DV
    raises_at(tmp_path, """
        ID,TIME,DV,AMT
        1,0,.,100
        1,1,,0
    """, row=2, column="DV")


def test_addl_without_ii(tmp_path):
    raises_at(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV,ADDL,II
        1,0,.,100,1,1,3,0
        1,1,5,0,0,0,0,0
    """, row=1, column="II", problem="ADDL > 0 needs a positive II")


def test_addl_without_ii_column(tmp_path):
    raises_at(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV,ADDL
        1,0,.,100,1,1,0
        1,1,5,0,0,0,0
        1,2,.,100,1,1,2
    """, row=3, column="II")


def test_non_contiguous_id(tmp_path):
    err = raises_at(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV
        1,0,.,100,1,1
        1,1,5,0,0,0
        2,0,.,100,1,1
        2,1,4,0,0,0
        1,2,3,0,0,0
    """, row=5, column="ID", problem="not contiguous")
    assert "first block starts at row 1" in str(err)


def test_steady_state_flag_values(tmp_path):
    # SS=1/2 are supported (tests/test_structural_3cmt_ss.py); SS=3 is not a steady-state flag
    raises_at(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV,SS,II
        1,0,.,100,1,1,0,0
        1,12,.,100,1,1,3,12
        1,13,5,0,0,0,0,0
    """, row=2, column="SS", problem="SS must be 0, 1")


def test_rate_minus_two(tmp_path):
    raises_at(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV,RATE
        1,0,.,100,1,1,-2
        1,1,5,0,0,0,0
    """, row=1, column="RATE", problem="RATE=-1/-2")


def test_dose_row_with_amt_zero(tmp_path):
    raises_at(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV
        1,0,.,100,1,1
        1,1,5,0,0,0
        1,2,.,0,1,1
    """, row=3, column="AMT", problem="needs AMT > 0")


def test_missing_id(tmp_path):
    raises_at(tmp_path, """
        ID,TIME,DV,AMT
        1,0,.,100
        .,1,5,0
    """, row=2, column="ID", problem="ID is missing")


def test_error_mentions_file_line(tmp_path):
    err = raises_at(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV
        1,0,.,100,1,1
        1,1,.,0,7,1
    """, row=2, column="EVID")
    assert "file line 3" in str(err)


def test_error_file_line_after_blank_line(tmp_path):
    path = tmp_path / "blank.csv"
    path.write_text("ID,TIME,DV,AMT\n1,0,.,100\n\n1,1,x,0\n")
    with pytest.raises(DataError, match=r"row 2, column DV") as info:
        read_nonmem(path)
    assert "file line 4" in str(info.value)


def test_exact_duplicate_column_rejected(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("ID,TIME,DV,TIME\n1,0,1,0\n")
    with pytest.raises(DataError, match="duplicate column name.*TIME"):
        read_nonmem(path)


def test_dataframe_error_names_source(tmp_path):
    df = pd.DataFrame({"ID": [1, 1, 1], "TIME": [0.0, 2.0, 1.0], "DV": [np.nan, 1.0, 2.0],
                       "AMT": [10.0, 0.0, 0.0]})
    with pytest.raises(DataError, match=r"<DataFrame>, row 3, column TIME"):
        read_nonmem(df)
    with pytest.raises(DataError, match=r"^mydata, row 3, column TIME"):
        read_nonmem(df, name="mydata")


def test_file_not_found(tmp_path):
    path = tmp_path / "does_not_exist.csv"
    with pytest.raises(DataError, match="file not found") as info:
        read_nonmem(path)
    assert "does_not_exist.csv" in str(info.value)
    assert isinstance(info.value, BayesNLMEInputError)
    assert isinstance(info.value, ValueError)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError) as info:
        read_nonmem(path)
    assert "empty.csv" in str(info.value)


def test_header_only_file(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("ID,TIME,DV,AMT\n")
    with pytest.raises(DataError, match="no data records") as info:
        read_nonmem(path)
    assert "header.csv" in str(info.value)


def test_no_observations(tmp_path):
    path = write_csv(tmp_path, """
        ID,TIME,DV,AMT
        1,0,.,100
    """, "noobs.csv")
    with pytest.raises(DataError, match="no observation records"):
        read_nonmem(path)


# --------------------------------------------------------------------------- covariates required


def test_require_covariates_missing_for_subject(tmp_path):
    data = read_csv_text(tmp_path, """
        ID,TIME,DV,AMT,WT
        1,0,.,100,70
        1,1,5,0,70
        2,0,.,100,.
        2,1,4,0,.
        2,2,3,0,
        3,0,.,100,.
        3,1,4,0,.
    """, "cov.csv")
    data.require_covariates([])  # nothing to require
    with pytest.raises(DataError, match=r"row 3.*column WT") as info:
        data.require_covariates(["WT"])
    err = info.value
    assert err.row == 3
    assert err.column == "WT"
    assert "cov.csv" in str(err)
    assert "covariate WT is missing for every record of ID 2" in str(err)


def test_require_covariates_absent_column(tmp_path):
    data = read_csv_text(tmp_path, """
        ID,TIME,DV,AMT,WT
        1,0,.,100,70
        1,1,5,0,70
    """, "cov.csv")
    data.require_covariates(["WT"])
    with pytest.raises(DataError, match=r"covariate 'AGE' is not a column") as info:
        data.require_covariates(["WT", "AGE"])
    assert "cov.csv" in str(info.value)


# --------------------------------------------------------------------------- ADDL expansion and resets


def test_addl_expansion_and_padding(tmp_path):
    data = read_csv_text(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV,ADDL,II
        1,0,.,100,1,1,3,12
        1,6,5,0,0,0,0,0
        1,30,4,0,0,0,0,0
        1,50,3,0,0,0,0,0
        2,0,.,50,1,1,0,0
        2,1,2,0,0,0,0,0
    """)
    assert data.n_subjects == 2
    assert data.n_dose_max == 4
    shape = (2, 4)
    for arr in (data.dose_time, data.dose_amt, data.dose_rate, data.dose_cmt, data.dose_valid):
        assert arr.shape == shape
    np.testing.assert_array_equal(data.dose_time[0], [0, 12, 24, 36])
    np.testing.assert_array_equal(data.dose_amt[0], [100, 100, 100, 100])
    np.testing.assert_array_equal(data.dose_valid,
                                  [[True, True, True, True], [True, False, False, False]])
    np.testing.assert_array_equal(data.dose_time[1], [0, 0, 0, 0])
    np.testing.assert_array_equal(data.dose_amt[1], [50, 0, 0, 0])
    assert data.dose_applies.shape == (data.n_obs, 4)
    np.testing.assert_array_equal(data.dose_applies, [
        [True, False, False, False],   # t=6
        [True, True, True, False],     # t=30
        [True, True, True, True],      # t=50
        [True, False, False, False],   # subject 2, t=1: padding never applies
    ])


def test_implied_dose_at_observation_time_does_not_apply(tmp_path):
    data = read_csv_text(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV,ADDL,II
        1,0,.,100,1,1,2,12
        1,12,5,0,0,0,0,0
        1,24,4,0,0,0,0,0
        1,24.5,3,0,0,0,0,0
    """)
    np.testing.assert_array_equal(data.dose_time[0], [0, 12, 24])
    np.testing.assert_array_equal(data.dose_applies, [
        [True, False, False],   # trough at 12: the dose at 12 comes after it
        [True, True, False],    # trough at 24
        [True, True, True],
    ])


def test_explicit_dose_at_observation_time_follows_record_order(tmp_path):
    data = read_csv_text(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV
        1,0,.,100,1,1
        1,12,5,0,0,0
        1,12,.,100,1,1
        1,13,4,0,0,0
    """)
    np.testing.assert_array_equal(data.dose_applies, [[True, False], [True, True]])


def test_evid3_reset_drops_earlier_doses_and_cancels_addl(tmp_path):
    data = read_csv_text(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV,ADDL,II
        1,0,.,100,1,1,4,12
        1,20,5,0,0,0,0,0
        1,30,.,0,3,1,0,0
        1,40,4,0,0,0,0,0
        1,50,.,80,1,1,0,0
        1,60,3,0,0,0,0,0
    """)
    # implied doses at 12, 24 survive; 36 and 48 (after the reset at 30) are cancelled
    valid = data.dose_valid[0]
    np.testing.assert_array_equal(data.dose_time[0][valid], [0, 12, 24, 50])
    np.testing.assert_array_equal(data.dose_amt[0][valid], [100, 100, 100, 80])
    assert data.n_dose_max == 4
    np.testing.assert_array_equal(data.dose_applies, [
        [True, True, False, False],    # t=20
        [False, False, False, False],  # t=40: after the reset, before the new dose
        [False, False, False, True],   # t=60
    ])


def test_evid4_resets_and_doses(tmp_path):
    data = read_csv_text(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV,ADDL,II
        1,0,.,100,1,1,3,12
        1,10,5,0,0,0,0,0
        1,20,.,70,4,1,1,24
        1,30,4,0,0,0,0,0
        1,50,3,0,0,0,0,0
    """)
    valid = data.dose_valid[0]
    # 0, 12 from the first record (24, 36 cancelled by the reset at 20); 20 and implied 44
    np.testing.assert_array_equal(data.dose_time[0][valid], [0, 12, 20, 44])
    np.testing.assert_array_equal(data.dose_amt[0][valid], [100, 100, 70, 70])
    np.testing.assert_array_equal(data.dose_applies, [
        [True, False, False, False],   # t=10
        [False, False, True, False],   # t=30: only the EVID=4 dose
        [False, False, True, True],    # t=50
    ])


def test_reset_only_affects_its_subject(tmp_path):
    data = read_csv_text(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV
        1,0,.,100,1,1
        1,5,.,0,3,1
        1,6,4,0,0,0
        2,0,.,100,1,1
        2,6,4,0,0,0
    """)
    np.testing.assert_array_equal(data.dose_applies, [[False], [True]])


# --------------------------------------------------------------------------- infusions


def test_dur_converted_to_rate(tmp_path):
    data = read_csv_text(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV,DUR,RATE
        1,0,.,100,1,1,2,.
        1,4,5,0,0,0,.,.
        1,12,.,60,1,1,.,30
        1,13,4,0,0,0,.,.
        1,24,.,10,1,1,.,.
        1,25,4,0,0,0,.,.
    """)
    np.testing.assert_allclose(data.dose_rate, [[50.0, 30.0, 0.0]])
    np.testing.assert_allclose(data.dose_amt, [[100.0, 60.0, 10.0]])


def test_dur_with_addl_rate(tmp_path):
    data = read_csv_text(tmp_path, """
        ID,TIME,DV,AMT,DUR,ADDL,II
        1,0,.,120,4,1,12
        1,30,5,0,0,0,0
    """)
    np.testing.assert_allclose(data.dose_time, [[0.0, 12.0]])
    np.testing.assert_allclose(data.dose_rate, [[30.0, 30.0]])


def test_rate_and_dur_both_given(tmp_path):
    raises_at(tmp_path, """
        ID,TIME,DV,AMT,RATE,DUR
        1,0,.,100,10,2
        1,1,5,0,0,0
    """, row=1, column="DUR", problem="both RATE and DUR")


# --------------------------------------------------------------------------- covariates


def test_time_varying_covariate_carried_forward(tmp_path):
    data = read_csv_text(tmp_path, """
        ID,TIME,DV,AMT,WT,CRCL
        1,0,.,100,.,.
        1,1,5,0,.,80
        1,2,4,0,72,.
        1,3,3,0,.,60
        1,4,2,0,75,.
        2,0,.,100,50,.
        2,1,3,0,.,.
        2,2,2,0,.,90
    """)
    assert data.covariate_names == ("WT", "CRCL")
    obs = data.observation_covariates()
    assert obs.shape == (data.n_obs, 2)
    assert obs["WT"].tolist() == [72.0, 72.0, 72.0, 75.0, 50.0, 50.0]
    assert obs["CRCL"].tolist() == [80.0, 80.0, 60.0, 60.0, 90.0, 90.0]
    # covariates are not carried across subjects
    assert data.frame["CRCL"].tolist() == [80, 80, 80, 60, 60, 90, 90, 90]
    base = data.baseline_covariates()
    assert base.index.name == "ID"
    assert list(base.index) == ["1", "2"]
    assert base["WT"].tolist() == [72.0, 50.0]
    assert base["CRCL"].tolist() == [80.0, 90.0]
    only_wt = data.baseline_covariates(["WT"])
    assert list(only_wt.columns) == ["WT"]
    assert data.observation_covariates(["CRCL"]).columns.tolist() == ["CRCL"]


def test_string_covariate(tmp_path):
    data = read_csv_text(tmp_path, """
        ID,TIME,DV,AMT,RACE,DVNAME,WT
        1,0,.,100,A,dose,70
        1,1,5,0,.,cp,70
        2,0,.,100,B,dose,60
        2,1,4,0,B,cp,60
    """)
    assert "RACE" in data.covariate_names
    assert "DVNAME" not in data.covariate_names
    assert data.covariate_names == ("RACE", "WT")
    base = data.baseline_covariates()
    assert base["RACE"].tolist() == ["A", "B"]
    assert base["WT"].tolist() == [70.0, 60.0]
    assert data.observation_covariates()["RACE"].tolist() == ["A", "B"]
    assert all(isinstance(v, str) for v in data.frame["RACE"])
    assert pd.api.types.is_numeric_dtype(data.frame["WT"])


def test_warfarin_reserved_columns():
    data = read_nonmem(datasets.dataset_path("warfarin"))
    assert "DVNAME" in data.frame.columns and "DVID" in data.frame.columns
    assert not {"DVNAME", "DVID"} & set(data.covariate_names)


# --------------------------------------------------------------------------- mapping and provenance


def test_obs_mapping_and_sha256(tmp_path):
    path = write_csv(tmp_path, """
        ID,TIME,DV,AMT,EVID,MDV,CMT
        10,0,.,100,1,1,1
        10,1,5,0,0,0,2
        10,2,.,0,2,1,0
        10,3,4,0,0,0,2
        7,0,.,50,1,1,1
        7,0.5,9,0,0,1,2
        7,1,3,0,0,0,2
    """, "map.csv")
    data = read_nonmem(path)
    assert data.source == "map.csv"
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert list(data.ids) == ["10", "7"]  # order of first appearance
    np.testing.assert_array_equal(data.obs_subject, [0, 0, 1])
    np.testing.assert_array_equal(data.obs_row, [2, 4, 7])
    np.testing.assert_array_equal(data.obs_time, [1.0, 3.0, 1.0])
    np.testing.assert_array_equal(data.obs_dv, [5.0, 4.0, 3.0])
    np.testing.assert_array_equal(data.obs_cmt, [2, 2, 2])
    assert data.obs_subject.dtype.kind == "i" and data.obs_row.dtype.kind == "i"
    assert data.obs_cmt.dtype.kind == "i" and data.dose_cmt.dtype.kind == "i"
    assert data.dose_valid.dtype == bool and data.dose_applies.dtype == bool
    np.testing.assert_array_equal(data.frame["ROW"], np.arange(1, 8))
    assert read_nonmem(data) is data


# --------------------------------------------------------------------------- property test


@st.composite
def event_tables(draw):
    n_sub = draw(st.integers(1, 5))
    rows = []
    for sid in range(1, n_sub + 1):
        n_rec = draw(st.integers(1, 8))
        times = sorted(draw(st.lists(
            st.floats(0, 100, allow_nan=False, allow_infinity=False).map(lambda t: round(t, 3)),
            min_size=n_rec, max_size=n_rec)))
        for t in times:
            kind = draw(st.sampled_from(["dose", "dose", "obs", "obs", "obs", "mdv", "other",
                                         "reset", "resetdose"]))
            row = dict(ID=sid, TIME=t, DV=np.nan, AMT=0.0, EVID=0, MDV=1, ADDL=0, II=0.0)
            if kind in ("dose", "resetdose"):
                row.update(EVID=1 if kind == "dose" else 4,
                           AMT=draw(st.floats(0.1, 500).map(lambda a: round(a, 2))))
                if draw(st.booleans()):
                    row.update(ADDL=draw(st.integers(1, 4)),
                               II=draw(st.floats(0.5, 24).map(lambda x: round(x, 2))))
            elif kind == "obs":
                row.update(EVID=0, MDV=0, DV=draw(st.floats(0, 1000).map(lambda x: round(x, 3))))
            elif kind == "mdv":
                row.update(EVID=0, MDV=1)
            elif kind == "other":
                row.update(EVID=2, MDV=1)
            else:
                row.update(EVID=3, MDV=1)
            rows.append(row)
    # at least one observation in the table
    if not any(r["EVID"] == 0 and r["MDV"] == 0 for r in rows):
        last = rows[-1]
        rows.append(dict(ID=last["ID"], TIME=last["TIME"], DV=1.0, AMT=0.0, EVID=0, MDV=0,
                         ADDL=0, II=0.0))
    return pd.DataFrame(rows)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=event_tables(), as_file=st.booleans())
def test_property_random_event_tables(tmp_path_factory, table, as_file):
    if as_file:
        path = tmp_path_factory.mktemp("prop") / "events.csv"
        table.to_csv(path, index=False, na_rep=".")
        data = read_nonmem(path)
    else:
        data = read_nonmem(table)
    expected_obs = int(((table["EVID"] == 0) & (table["MDV"] == 0)).sum())
    assert data.n_obs == expected_obs
    assert data.n_subjects == table["ID"].nunique()
    n_dose_max = data.n_dose_max
    assert data.dose_time.shape == (data.n_subjects, n_dose_max)
    assert data.dose_applies.shape == (data.n_obs, n_dose_max)
    # padding never applies, and an applying dose is not later than the observation
    s = data.obs_subject
    assert not (data.dose_applies & ~data.dose_valid[s]).any()
    later = data.dose_time[s] > data.obs_time[:, None]
    assert not (data.dose_applies & later).any()
    # dose times within a subject are sorted, valid slots first
    for j in range(data.n_subjects):
        v = data.dose_valid[j]
        assert not (~v[:-1] & v[1:]).any()
        assert np.all(np.diff(data.dose_time[j][v]) >= 0)
    # explicit doses are all present when there are no resets
    if not table["EVID"].isin([3, 4]).any():
        expected_doses = int((table["EVID"] == 1).sum() + table["ADDL"].sum())
        assert int(data.dose_valid.sum()) == expected_doses
    # obs_row points at observation records (1-based)
    rec = table.iloc[data.obs_row - 1]
    assert ((rec["EVID"] == 0) & (rec["MDV"] == 0)).all()
    np.testing.assert_allclose(rec["TIME"].to_numpy(), data.obs_time)
