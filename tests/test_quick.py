"""Quick fits: MAP + Laplace and ADVI give a FitResult like NUTS, close to the NUTS posterior."""

import warnings

import numpy as np
import pytest

from bayesnlme.datasets import dataset_path
from bayesnlme.errors import BayesNLMEInputError, ConvergenceWarning
from bayesnlme.evaluate.diagnostics import convergence_report
from bayesnlme.inference.fit import FitResult, fit_model
from bayesnlme.spec import load_spec

THETAS = ("CL", "V", "KA")


@pytest.fixture(scope="module")
def fits():
    spec, data = load_spec("pk_1cmt_oral"), dataset_path("theophylline")
    with warnings.catch_warnings():   # short chains; this test compares estimates
        warnings.simplefilter("ignore", ConvergenceWarning)
        nuts = fit_model(spec, data, chains=2, draws=300, tune=300, seed=1, progress=False, init="map")
    approx = {m: fit_model(spec, data, method=m, draws=400, seed=1, progress=False) for m in ("map", "advi")}
    return nuts, approx


def test_map_typical_values_close_to_nuts_medians(fits):
    nuts, approx = fits
    s_nuts, s_map = nuts.summary(), approx["map"].summary()
    for p in THETAS:
        # the Laplace draws are centred on the joint mode (ETAs included); CL and V within 10% of
        # the NUTS medians; KA, with the largest IIV, is pulled furthest by the joint mode (< 1 SD)
        assert abs(s_map.loc[p, "q50"] / s_nuts.loc[p, "q50"] - 1) < (0.10 if p != "KA" else 0.2), p
        assert abs(s_map.loc[p, "q50"] - s_nuts.loc[p, "q50"]) < s_nuts.loc[p, "sd"], p
        assert s_map.loc[p, "q5"] < s_map.loc[p, "q50"] < s_map.loc[p, "q95"]
    assert nuts.settings["init"] == "map"


def test_advi_medians_within_a_few_posterior_sd(fits):
    nuts, approx = fits
    s_nuts, s_advi = nuts.summary(), approx["advi"].summary()
    for p in THETAS:
        assert abs(s_advi.loc[p, "q50"] - s_nuts.loc[p, "q50"]) < 3 * s_nuts.loc[p, "sd"], p


def test_approximate_fit_api_and_round_trip(fits, tmp_path):
    _, approx = fits
    for method, res in approx.items():
        s = res.summary()
        assert res.approximate and res.method == method
        assert s["r_hat"].isna().all() and s["q50"].notna().all()
        assert res.idata.posterior.sizes["draw"] == 400
        table, verdict = convergence_report(res)
        assert verdict.startswith("Approximate fit") and table["ok"].isna().all()
        assert res.idata.log_likelihood["DV"].shape[-1] == res.data.n_obs
        back = FitResult.load(res.save(tmp_path / f"{method}.nc"))
        assert back.method == method and back.approximate
        assert back.idata.posterior.attrs["fit_method"] == method
        np.testing.assert_allclose(back.posterior_draws("CL"), res.posterior_draws("CL"))


def test_unknown_method():
    with pytest.raises(BayesNLMEInputError, match="fit method"):
        fit_model(load_spec("pk_1cmt_oral"), dataset_path("theophylline"), method="pathfinder")
