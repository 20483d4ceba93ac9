"""Prior predictive check: DV from the priors alone against the data."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from bayesnlme.cli import main
from bayesnlme.datasets import dataset_path
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.prior_check import plot_prior_check, prior_check_table, prior_predictive
from bayesnlme.spec import load_spec


@pytest.fixture(scope="module")
def sims():
    return prior_predictive(load_spec("pk_1cmt_oral"), dataset_path("theophylline"), draws=200, seed=3)


def test_band_and_share_by_hand(sims):
    draws, data = sims
    assert draws.shape == (200, data.n_obs)
    df = prior_check_table(data, draws, n_bins=4)
    edges = np.quantile(data.obs_time, np.linspace(0, 1, 5))
    last = data.obs_time >= edges[3]
    lo, med, hi = np.quantile(draws[:, last], [0.05, 0.5, 0.95])
    row = df.iloc[-1]
    assert (row["pi_lo"], row["pi50"], row["pi_hi"]) == pytest.approx((lo, med, hi))
    assert row["share_inside"] == pytest.approx(np.mean((data.obs_dv[last] >= lo) & (data.obs_dv[last] <= hi)))
    assert df["n_obs"].sum() == data.n_obs
    # theophylline with the library priors: the data sit inside a wide but plausible band
    assert 0.8 < df.attrs["share_inside"] <= 1.0
    assert (df["pi_lo"] < df["obs_median"]).all() and (df["obs_median"] < df["pi_hi"]).all()


def test_same_seed_same_simulation_and_plot(sims):
    fig, df = plot_prior_check(load_spec("pk_1cmt_oral"), dataset_path("theophylline"), draws=200, seed=3,
                               n_bins=4, log=True)
    assert df.equals(prior_check_table(sims[1], sims[0], n_bins=4))
    assert fig.axes[0].get_yscale() == "log"
    plt.close(fig)


def test_cli_writes_table_and_plot(tmp_path, capsys):
    rc = main(["prior-check", "--model", "pk_1cmt_oral", "--data", str(dataset_path("theophylline")),
               "--out", str(tmp_path), "--draws", "50", "--bins", "3"])
    assert rc == 0
    table = pd.read_csv(tmp_path / "prior_check" / "prior_check.csv")
    assert len(table) == 3 and (tmp_path / "prior_check" / "prior_check.png").stat().st_size > 0
    assert "inside the prior predictive 90% band" in capsys.readouterr().out


def test_outcome_models_are_simulated_by_their_own_family():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"ID": np.repeat(np.arange(1, 21), 2), "TIME": np.tile([0.0, 1.0], 20), "EVID": 0,
                       "EXPOSURE": np.repeat(rng.uniform(0, 3, 20), 2)})
    df["DV"] = rng.integers(0, 4, len(df)).astype(float)
    sims, _ = prior_predictive(load_spec("er_ordinal"), df, draws=40, seed=1)
    assert sims.shape == (40, 40) and set(np.unique(sims)) == {0.0, 1.0, 2.0, 3.0}
    tte = pd.DataFrame({"ID": [1, 2], "TIME": [5.0, 24.0], "DV": [1.0, 0.0], "EVID": 0, "EXPOSURE": [1.0, 2.0]})
    with pytest.raises(BayesNLMEInputError, match="time-to-event observation model, whose outcome is the event time"):
        prior_predictive(load_spec("tte_weibull"), tte)
