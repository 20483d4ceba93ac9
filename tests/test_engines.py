"""The JAX engines: the same log-density as PyTensor's, and the same posterior as nutpie.

1. Every model_library entry, built on a small design, evaluates its log-density and gradient through
   PyTensor's JAX backend (what numpyro and blackjax sample) to the same values as PyTensor's own, at a
   point away from the start (gradients: against central differences along random directions for closed
   forms, PyTensor's gradient graph for ODE models, which go through the numba integrator called from JAX).
2. Theophylline sampled by numpyro and by blackjax gives nutpie's posterior: means and SDs of the
   population parameters agree within 4 combined Monte Carlo standard errors.
"""

import warnings

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("numpyro")
pytest.importorskip("blackjax")

import pytensor  # noqa: E402
from capability_matrix import _design  # noqa: E402
from pymc.initial_point import make_initial_point_fn  # noqa: E402
from pymc.sampling.jax import get_jaxified_logp  # noqa: E402
from pytensor.compile.mode import Mode  # noqa: E402

from bayesnlme import datasets, load_spec  # noqa: E402
from bayesnlme.build import build_model  # noqa: E402
from bayesnlme.errors import BayesNLMEInputError  # noqa: E402
from bayesnlme.inference import fit_model  # noqa: E402
from bayesnlme.inference.engines import chain_starts, check_engine, for_jax  # noqa: E402
from bayesnlme.spec import library_names  # noqa: E402
from bayesnlme.structural import ode_jax  # noqa: E402
from bayesnlme.structural.ode import ODESolveOp  # noqa: E402


def _built(name):
    spec = load_spec(name)
    design = _design(spec, np.random.default_rng(3))
    design["DV"] = 1.0      # a value every observation model accepts
    return build_model(spec, design)


def _is_ode(model) -> bool:
    from pytensor.graph.traversal import ancestors

    return any(v.owner is not None and isinstance(v.owner.op, ODESolveOp) for v in ancestors([model.logp()]))


@pytest.mark.parametrize("name", library_names())
def test_jax_log_density_equals_pytensor(name, monkeypatch):
    built = _built(name)
    model = built.model
    ode_jax.register()
    point = make_initial_point_fn(model=model, overrides=built.initial_point)(0)   # the fit's start
    rng = np.random.default_rng(5)
    # away from the start (ETA = 0, prior medians), where errors in one term could cancel
    values = [point[v.name] + 0.1 * rng.standard_normal(np.shape(point[v.name])) for v in model.value_vars]
    # reference: PyTensor's Python linker (no C compilation: the values, not the speed, are compared)
    # (the terms summed here: the Python linker cannot evaluate an Elemwise of more than 32 inputs)
    ode = _is_ode(model)
    mode = Mode(linker="py", optimizer="fast_compile")
    terms = model.logp(sum=False)
    reference = pytensor.function(model.value_vars, terms, on_unused_input="ignore", mode=mode)

    def total(vals):
        return sum(float(np.sum(p)) for p in reference(*vals))

    expect = total(values)
    logp = get_jaxified_logp(for_jax(model))   # what blackjax samples (numpyro: its negative)
    got, grads = jax.value_and_grad(logp)(values)
    assert np.isfinite(expect)
    np.testing.assert_allclose(float(got), expect, rtol=1e-9, atol=1e-8)
    got_grad = [np.asarray(g) for g in grads]
    if ode:
        # the integrator's error control makes finite differences noisy: PyTensor's own gradient graph
        expect_grad = pytensor.function(model.value_vars, model.dlogp(), on_unused_input="ignore", mode=mode)(*values)
        np.testing.assert_allclose(np.concatenate([g.ravel() for g in got_grad]), expect_grad, rtol=1e-7, atol=1e-7)
    else:
        # closed forms: JAX's gradient against central differences of the reference log-density along random
        # directions (a wrong component shows in every direction; compiling PyTensor's gradient graph for
        # the Python linker costs ~10 s a model)
        h = 1e-5
        for _ in range(3):
            d = [rng.standard_normal(np.shape(x)) for x in values]
            up, down = [x + h * u for x, u in zip(values, d)], [x - h * u for x, u in zip(values, d)]
            fd = (total(up) - total(down)) / (2 * h)
            analytic = sum(float(np.sum(g * u)) for g, u in zip(got_grad, d))
            assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-5)
    if ode:
        # vectorised chains (numpyro/blackjax vmap the log-density): the host callback once per chain
        batch = [np.stack([x, x + 0.05]) for x in values]
        both = jax.vmap(logp)(batch)
        np.testing.assert_allclose(float(both[0]), expect, rtol=1e-9, atol=1e-8)
        assert float(both[1]) != float(both[0])
    if name == "pkpd_indirect_response_1":
        # the integrator written in JAX (the GPU default; initial states at the baseline E0 here): the same
        # value, and the host's gradient within the sensitivities' accuracy (the other library ODE models:
        # tests/test_ode.py, `make validate`)
        monkeypatch.setenv("BAYESNLME_JAX_ODE", "native")
        value, grad = jax.value_and_grad(get_jaxified_logp(for_jax(model)))(values)
        np.testing.assert_allclose(float(value), expect, rtol=1e-9, atol=1e-8)
        host = np.concatenate([g.ravel() for g in got_grad])
        np.testing.assert_allclose(np.concatenate([np.ravel(g) for g in grad]), host, rtol=1e-6,
                                   atol=1e-6 * np.abs(host).max())


def test_engine_choice_errors_name_the_option():
    with pytest.raises(BayesNLMEInputError, match="unknown sampler 'stan'"):
        check_engine("stan", "cpu")
    with pytest.raises(BayesNLMEInputError, match="runs on the CPU only"):
        check_engine("nutpie", "gpu")
    with pytest.raises(BayesNLMEInputError, match="unknown device 'tpu'"):
        check_engine("numpyro", "tpu")
    if not any(d.platform == "gpu" for d in jax.devices()):
        with pytest.raises(BayesNLMEInputError, match="JAX sees no GPU"):
            check_engine("numpyro", "gpu")


def test_chain_starts_jitter_only_random_effects_and_sds():
    built = _built("pk_1cmt_oral")
    starts = chain_starts(built.model, built.initial_point, {"eta_z", "omega_CL", "sigma_add"}, 3, seed=4)
    assert len(starts) == 3
    for s in starts:
        assert s["CL"] == pytest.approx(built.initial_point["CL"])     # typical values at prior medians
        assert s["omega_CL"] > 0 and np.exp(-1) - 1e-9 <= s["omega_CL"] / 0.3 <= np.exp(1) + 1e-9
    assert not np.allclose(starts[0]["eta_z"], starts[1]["eta_z"])
    again = chain_starts(built.model, built.initial_point, {"eta_z", "omega_CL", "sigma_add"}, 3, seed=4)
    np.testing.assert_array_equal(again[2]["eta_z"], starts[2]["eta_z"])


@pytest.fixture(scope="module")
def theophylline_fits():
    spec = load_spec("pk_1cmt_oral")
    path = datasets.dataset_path("theophylline")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {s: fit_model(spec, path, sampler=s, chains=4, draws=500, tune=500, seed=3, progress=False)
                for s in ("nutpie", "numpyro", "blackjax")}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["numpyro", "blackjax"])
def test_jax_engine_gives_nutpie_posterior(theophylline_fits, engine):
    import arviz as az

    ref, got = theophylline_fits["nutpie"], theophylline_fits[engine]
    names = ["CL", "V", "KA", "omega_CL", "omega_V", "omega_KA", "sigma_add", "sigma_prop"]
    a = az.summary(ref.idata, var_names=names, round_to="none")   # unrounded: a rounded MCSE of 0 is no tolerance
    b = az.summary(got.idata, var_names=names, round_to="none")
    for name in names:
        tol_mean = 4 * np.hypot(a.loc[name, "mcse_mean"], b.loc[name, "mcse_mean"])
        assert abs(a.loc[name, "mean"] - b.loc[name, "mean"]) < tol_mean, name
        tol_sd = 4 * np.hypot(a.loc[name, "mcse_sd"], b.loc[name, "mcse_sd"])
        assert abs(a.loc[name, "sd"] - b.loc[name, "sd"]) < tol_sd, name
    # the same FitResult whatever the engine: groups, posterior variables, settings, checks
    assert set(got.idata.posterior.data_vars) == set(ref.idata.posterior.data_vars)
    assert {"posterior", "sample_stats", "log_likelihood", "observed_data", "constant_data"} <= set(got.idata.groups())
    assert got.idata.log_likelihood["DV"].shape == ref.idata.log_likelihood["DV"].shape
    assert got.settings["sampler"] == engine and got.settings["device"] == "cpu"
    assert (got.idata.posterior.sizes["chain"], got.idata.posterior.sizes["draw"]) == (4, 500)
    ss = got.idata.sample_stats
    assert {"diverging", "tree_depth", "maxdepth_reached", "n_steps"} <= set(ss.data_vars)
    assert int(ss["diverging"].sum()) == 0 and 1 <= int(ss["tree_depth"].min()) <= int(ss["tree_depth"].max()) <= 10


def test_cli_engine_choice_error_is_one_line(capsys):
    from bayesnlme.cli import main
    from bayesnlme.cli.parsers import DEVICES as CLI_DEVICES
    from bayesnlme.cli.parsers import SAMPLERS as CLI_SAMPLERS
    from bayesnlme.inference.engines import DEVICES, SAMPLERS

    assert (CLI_SAMPLERS, CLI_DEVICES) == (SAMPLERS, DEVICES)
    data = str(datasets.dataset_path("indometacin"))
    assert main(["fit", "--model", "pk_1cmt_iv", "--data", data, "--sampler", "pymc", "--device", "gpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "runs on the CPU only" in err and "numpyro" in err
