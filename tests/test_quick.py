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
        # the subject parameterisation: the model the MAP fit compiles (one compile for the three fits)
        nuts = fit_model(spec, data, chains=2, draws=300, tune=300, seed=1, progress=False, init="map",
                         eta_parameterisation="subject")
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


def test_mode_is_a_maximum_of_the_compiled_log_density_and_nuts_reuses_that_compile(monkeypatch):
    """The MAP fit, ``init="map"`` and the NUTS run after it use one compiled model (nutpie's numba
    callbacks), never PyTensor's C backend (seconds of C compilation per model on an empty cache)."""
    import pytensor.link.c.cmodule as cmodule

    from bayesnlme.build import build_model
    from bayesnlme.inference import nutpie_cache, quick

    def no_c(*args, **kwargs):
        raise AssertionError("a C module was compiled or loaded")

    spec, data = load_spec("pk_1cmt_oral"), dataset_path("theophylline")
    built = build_model(spec, data)
    with monkeypatch.context() as m:
        m.setattr(cmodule.ModuleCache, "module_from_key", no_c)
        compiled = quick.compiled_model(built)
        mode = quick.find_map(built, compiled=compiled)
    names = compiled.shape_info[0][:len(built.model.free_RVs)]
    x = np.concatenate([np.ravel(mode[n]) for n in names])
    logp, grad = compiled.logp_func(x)
    assert np.isfinite(logp) and np.abs(grad).max() < 1e-3 * max(1.0, abs(logp))   # stationary
    rng = np.random.default_rng(0)
    for _ in range(20):                                                               # and a maximum
        assert compiled.logp_func(x + 1e-3 * rng.standard_normal(x.size))[0] < logp
    # the natural-scale values are the transformed ones mapped back
    assert mode["CL"] == pytest.approx(np.exp(mode["CL_log__"]))
    # init="map": the mode's compile is the one NUTS samples (at most one long compile, then the record)
    calls = {"compile_model": 0, "long": 0}
    real_compile, real_long = nutpie_cache.compile_model, nutpie_cache._compile_callbacks

    def counted(*args, **kwargs):
        calls["compile_model"] += 1
        return real_compile(*args, **kwargs)

    def counted_long(*args, **kwargs):
        calls["long"] += 1
        return real_long(*args, **kwargs)

    monkeypatch.setattr(nutpie_cache, "compile_model", counted)
    monkeypatch.setattr(nutpie_cache, "_compile_callbacks", counted_long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit_model(spec, data, chains=2, draws=100, tune=100, seed=1, progress=False, init="map",
                        eta_parameterisation="subject", log_likelihood="none")
    assert calls["compile_model"] == 2 and calls["long"] <= 1
    assert res.settings["init"] == "map"
