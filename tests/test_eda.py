"""Exploratory analysis: counts, covariate summaries, outlier rules, plot tables, the eda command."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from bayesnlme import eda
from bayesnlme.cli import main
from bayesnlme.datasets import dataset_path
from bayesnlme.errors import DataError

TIMES = [0.5, 1, 2, 4, 6, 8, 12, 24]


def _study() -> pd.DataFrame:
    """Four subjects, doses 100/100/200/200 mg, SEX 0/1, WT; mono-exponential decline after 2 h.

    Planted: ID 2 a 5-fold spike at 8 h (record flagged as off-trend), ID 3 a sample at -1 h before its
    dose, ID 4 two BLQ records (CENS=1) and one record with MDV=1.
    """
    rng = np.random.default_rng(3)
    rows = []
    for i, (amt, sex, wt) in enumerate([(100, 0, 60.5), (100, 1, 80.5), (200, 0, 70.5), (200, 1, 90.5)], start=1):
        if i == 3:
            rows.append({"ID": i, "TIME": -1.0, "DV": 0.7, "AMT": 0, "EVID": 0, "MDV": 0, "CENS": 0})
        rows.append({"ID": i, "TIME": 0.0, "DV": 0, "AMT": amt, "EVID": 1, "MDV": 1, "CENS": 0})
        for t in TIMES:
            dv = amt / 10 * (t / 2 if t < 2 else np.exp(-0.15 * (t - 2))) * np.exp(0.05 * rng.standard_normal())
            if i == 2 and t == 8:
                dv *= 5
            rows.append({"ID": i, "TIME": t, "DV": round(dv, 4), "AMT": 0, "EVID": 0, "MDV": 0,
                         "CENS": int(i == 4 and t >= 12)})
        for r in rows[-len(TIMES) - 1 - (i == 3):]:
            r.update(SEX=sex, WT=wt)
    df = pd.DataFrame(rows)
    df.loc[(df["ID"] == 4) & (df["TIME"] == 6), "MDV"] = 1
    return df


@pytest.fixture(scope="module")
def data():
    return eda.read_nonmem(_study())


def test_summary_counts_and_blq_share(data):
    s = dict(zip(*eda.data_summary(data).to_numpy().T))
    assert s["subjects"] == "4" and s["dose records"] == "4"
    assert s["observations"] == str(4 * 8 + 1 - 1)          # + pre-dose sample of ID 3, - MDV=1 record
    assert s["observations per subject, median (range)"] == "8 (7-9)"
    assert s["observation records ignored (EVID=0, MDV=1)"] == "1"
    assert s["observations below LOQ"] == f"2 ({100 * 2 / 32:.1f}%)"
    assert eda.data_summary(dataset_path("theophylline")).query("item == 'observations below LOQ'").empty


def test_covariate_kinds_and_summary_by_category(data):
    assert eda.covariate_kinds(data) == {"SEX": "categorical", "WT": "continuous"}
    cs = eda.covariate_summary(data).set_index(["covariate", "group"])
    assert cs.loc[("WT", "all"), "mean"] == pytest.approx(75.5)
    assert cs.loc[("WT", "SEX=1"), "mean"] == pytest.approx(85.5)
    assert cs.loc[("WT", "SEX=0"), "median"] == pytest.approx(65.5)
    sex = cs.loc[("SEX", "all")]
    assert list(sex["level"]) == ["0", "1"] and list(sex["n"]) == [2, 2] and list(sex["percent"]) == [50, 50]


def test_outliers_find_the_planted_records_and_nothing_else(data):
    out = eda.outlier_table(data)
    found = {(r.ID, r.TIME): r.reason for r in out.itertuples()}
    assert set(found) == {("2", 8.0), ("3", -1.0)}
    assert "before the first dose" in found[("3", -1.0)]
    off = float(found[("2", 8.0)].split("off by ")[1].split(",")[0])
    assert "own trend" in found[("2", 8.0)] and off == pytest.approx(np.log(5), abs=0.15)   # 5-fold, 5% noise
    assert eda.outlier_table(dataset_path("theophylline")).empty


def test_spaghetti_table_dose_normalised_and_grouped(data):
    fig, df = eda.plot_spaghetti(data, dose_normalised=True, by="dose", log=True)
    assert fig is not None and (df["DV"] > 0).all()
    raw = eda.spaghetti_table(data)
    norm = eda.spaghetti_table(data, dose_normalised=True, by="dose")
    after = raw["TIME"].to_numpy() > 0
    amt = np.where(raw["ID"].isin(["1", "2"]), 100.0, 200.0)
    np.testing.assert_allclose(norm["DV"][after], raw["DV"][after] / amt[after])
    assert np.isnan(norm["DV"][~after]).all()                # before any dose: no dose to divide by
    assert sorted(norm["group"].unique()) == [100.0, 200.0]
    fig, df = eda.plot_spaghetti(data, by="SEX", facet=True)
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 2
    with pytest.raises(DataError, match="NOPE"):
        eda.plot_spaghetti(data, by="NOPE")


def test_covariate_plots_tables(data):
    fig, box = eda.plot_covariate_boxplots(data)
    assert fig is not None and set(box["by"]) == {"SEX"} and len(box) == 4
    fig, corr = eda.plot_covariate_correlation(data)
    base = data.baseline_covariates()
    assert corr.loc["SEX", "WT"] == pytest.approx(np.corrcoef(base["SEX"], base["WT"])[0, 1])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert f"{corr.loc['SEX', 'WT']:.2f}" in texts
    fig, scat = eda.plot_covariate_scatter(data)
    assert scat.shape == (4, 2) and len(fig.axes) == 4
    one = eda.read_nonmem(_study().drop(columns="SEX"))
    assert eda.plot_covariate_boxplots(one)[0] is None and eda.plot_covariate_correlation(one)[0] is None


def test_eda_command_writes_files_and_escaped_index(tmp_path):
    df = _study().rename(columns={"WT": "<b>WT</b>"})
    df["ID"] = df["ID"].map({1: "<script>alert(1)</script>", 2: "b", 3: "c", 4: "d"})
    src = tmp_path / "study.csv"
    df.to_csv(src, index=False)
    assert main(["eda", "--data", str(src), "--out", str(tmp_path / "eda")]) == 0
    names = {p.name for p in (tmp_path / "eda").iterdir()}
    assert {"index.html", "data_summary.csv", "outliers.csv", "spaghetti.png", "covariate_correlation.png"} <= names
    html = (tmp_path / "eda" / "index.html").read_text()
    assert "&lt;b&gt;WT&lt;/b&gt;" in html and "<b>WT" not in html and "<script>alert" not in html
    assert main(["eda", "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x")]) == 1
