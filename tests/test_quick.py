"""Quick fits: MAP + Laplace and ADVI give a FitResult like NUTS, close to the NUTS posterior."""

import warnings

import numpy as np
import pytest
from _pheno import pheno_study

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
    # init="map": the mode's compiled model is the one NUTS samples (compiled or loaded once)
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
    assert calls["compile_model"] == 1 and calls["long"] <= 1   # NUTS restarts the mode's compiled model
    assert res.settings["init"] == "map"


def test_nuts_start_keeps_the_modes_etas_with_omegas_at_their_spread():
    """``init="map"`` starts NUTS at the mode's ETAs with each OMEGA at their root mean square and
    ``eta_z = ETA / OMEGA`` (the joint mode's OMEGAs are inflated: :func:`quick.nuts_start`)."""
    from bayesnlme.build import build_model
    from bayesnlme.inference import quick, startpoint

    spec = load_spec("pk_1cmt_oral")
    built = build_model(spec, dataset_path("theophylline"))
    compiled = quick.compiled_model(built)   # the record test_quick's fits wrote
    mode = quick.find_map(built, compiled=compiled)
    start = quick.nuts_start(built, mode, compiled)
    assert set(start) == set(built.initial_point)
    eta = np.asarray(mode["ETA"])
    for j, p in enumerate(spec.eta_parameters):
        spread = np.sqrt(np.mean(eta[:, j] ** 2))
        assert float(start[f"omega_{p}"]) == pytest.approx(spread, rel=1e-12)
        assert spread < float(mode[f"omega_{p}"])   # the mode's OMEGA is larger than its ETAs' spread
        np.testing.assert_allclose(start["eta_z"][:, j] * start[f"omega_{p}"], eta[:, j], rtol=1e-12, atol=1e-15)
        assert np.sqrt(np.mean(start["eta_z"][:, j] ** 2)) == pytest.approx(1.0)
    for name in ("CL", "V", "KA", "sigma_add", "sigma_prop"):   # everything else at the mode
        assert float(start[name]) == float(mode[name])
    assert np.isfinite(compiled.logp_func(np.concatenate(
        [np.ravel(startpoint.transformed_start(built, start)[n])
         for n in compiled.shape_info[0][:len(built.model.free_RVs)]]))[0])


def test_nuts_start_of_an_omega_block_and_a_centred_eta():
    """An OMEGA block gets the Cholesky factor of its ETAs' second moments (``ETA = eta_z @ L.T`` kept); a
    centred ETA keeps its values with OMEGA at their spread; a start whose density is not finite falls back
    to the mode."""
    from types import SimpleNamespace

    from bayesnlme.build import build_model
    from bayesnlme.inference import quick
    from bayesnlme.spec import ModelSpec

    d = load_spec("pk_1cmt_oral").to_dict()
    d["random_effects"] = {"blocks": [["CL", "V"]], "lkj_eta": 2.0}
    d["parameters"]["KA"]["centered"] = True
    built = build_model(ModelSpec.from_dict(d, source="block.toml"), dataset_path("theophylline"))
    assert {"chol_CL_V", "eta_z", "eta_KA", "omega_KA"} <= set(built.initial_point)
    rng = np.random.default_rng(4)
    eta = rng.multivariate_normal([0.0, 0.0], [[0.09, 0.03], [0.03, 0.04]], size=12)
    mode = {k: np.array(v, dtype=float) for k, v in built.initial_point.items()}
    mode["eta_KA"] = 0.6 * rng.standard_normal(12)
    mode["ETA"] = np.column_stack([eta, mode["eta_KA"]])
    names = [v.name for v in built.model.value_vars]
    finite = SimpleNamespace(shape_info=(names,), logp_func=lambda x: (0.0, np.zeros_like(x)))
    start = quick.nuts_start(built, mode, finite)
    low = np.zeros((2, 2))
    low[np.tril_indices(2)] = start["chol_CL_V"]
    np.testing.assert_allclose(low @ low.T, eta.T @ eta / 12, rtol=1e-12)
    np.testing.assert_allclose(start["eta_z"] @ low.T, eta, rtol=1e-10, atol=1e-14)
    assert float(start["omega_KA"]) == pytest.approx(np.sqrt(np.mean(mode["eta_KA"] ** 2)), rel=1e-12)
    np.testing.assert_array_equal(start["eta_KA"], mode["eta_KA"])
    not_finite = SimpleNamespace(shape_info=(names,), logp_func=lambda x: (-np.inf, np.zeros_like(x)))
    fallback = quick.nuts_start(built, mode, not_finite)
    for k in built.initial_point:
        np.testing.assert_array_equal(fallback[k], mode[k])


@pytest.mark.validation
def test_init_map_converges_on_sparse_data_in_the_subject_parameterisation(monkeypatch):
    """Phenobarbital (1-3 levels per neonate): NUTS started at the joint mode stays where the mode's
    inflated OMEGAs put it (R-hat ~2.2); started at :func:`quick.nuts_start` it converges."""
    from bayesnlme.inference import quick

    spec, df = pheno_study()
    population = ["CL", "V", "APGRLOW_1_on_V", "omega_CL", "omega_V", "sigma_prop"]

    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return fit_model(spec, df, chains=2, draws=300, tune=300, seed=2, progress=False, init="map",
                             eta_parameterisation="subject", log_likelihood="none")

    rhat = fit().summary().loc[population, "r_hat"]
    assert rhat.max() < 1.05, rhat.to_dict()
    monkeypatch.setattr(quick, "nuts_start",
                        lambda built, mode, compiled=None: {k: mode[k] for k in built.initial_point})
    assert fit().summary().loc[population, "r_hat"].max() > 1.5   # the mode itself as the start
