"""benchmarks/theophylline.py and benchmarks/scale.py compare like with like.

The hand-written model must have the library model's variables (same names,
transforms, shapes and initial point) and the same log density at the same
point, so that the benchmark measures the builder and nothing else.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import theophylline as bench  # noqa: E402

from bayesnlme import load_spec  # noqa: E402
from bayesnlme.build import build_model  # noqa: E402
from bayesnlme.datasets import dataset_path  # noqa: E402


@pytest.fixture(scope="module")
def models():
    path = dataset_path("theophylline")
    built = build_model(load_spec("pk_1cmt_oral"), path)
    hand, init = bench.handwritten_model(path)
    return built, hand, init


def test_parser_defaults_and_quick(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(bench, "run_variant", lambda v, d, t, c: seen.update(v=v, d=d, t=t, c=c) or {})
    bench.main(["--variant", "library"])
    assert seen == {"v": "library", "d": 1000, "t": 1000, "c": 4}
    bench.main(["--variant", "handwritten", "--quick"])
    assert seen == {"v": "handwritten", "d": 200, "t": 200, "c": 2}


def test_same_variables_and_initial_point(models):
    built, hand, init = models
    # same names and transforms; same order too, so nutpie lays out both parameter vectors alike
    assert [v.name for v in hand.value_vars] == [v.name for v in built.model.value_vars], \
        "declare the hand-written model's variables in build_model's order"
    assert [v.name for v in hand.observed_RVs] == ["DV"] == [v.name for v in built.model.observed_RVs]
    np.testing.assert_array_equal(hand.rvs_to_values[hand["DV"]].data,
                                  built.model.rvs_to_values[built.model["DV"]].data)
    assert init.keys() == built.initial_point.keys()
    for k, v in built.initial_point.items():
        np.testing.assert_allclose(init[k], v, rtol=1e-12)


def test_same_logp_at_same_point(models):
    built, hand, _ = models
    rng = np.random.default_rng(0)
    lib_point = built.model.initial_point()
    logp_lib, logp_hw = built.model.compile_logp(), hand.compile_logp()
    for trial in range(3):
        point = {k: v + rng.normal(0.0, 0.5, np.shape(v)) for k, v in lib_point.items()}
        lib, hw = logp_lib(point), logp_hw(point)
        assert np.isfinite(lib)
        np.testing.assert_allclose(hw, lib, rtol=1e-9)
    grad_lib, grad_hw = _grad_by_name(built.model, point), _grad_by_name(hand, point)
    for name in grad_lib:
        np.testing.assert_allclose(grad_hw[name], grad_lib[name], rtol=1e-7, atol=1e-9, err_msg=name)


def _grad_by_name(model, point):
    """Gradient of the log density split into its value variables, by name."""
    flat = model.compile_dlogp()(point)
    sizes = [int(np.prod(np.shape(point[v.name]))) for v in model.value_vars]
    return {v.name: g for v, g in zip(model.value_vars, np.split(flat, np.cumsum(sizes)[:-1]))}


def test_scale_benchmark_models_have_the_library_log_density():
    """benchmarks/scale.py: its simulated study fits the library model, and its hand-written numpyro
    model has the library model's log density (same priors and transforms) at a random point."""
    pytest.importorskip("numpyro")
    import scale
    from numpyro.infer.util import potential_energy

    from bayesnlme.data import read_nonmem

    df = scale.simulate(15, seed=4)
    assert len(df) == 15 * (len(scale.TIMES) + 1) and (df.loc[df["EVID"] == 0, "DV"] != 0).all()
    built = build_model(load_spec("pk_1cmt_oral"), read_nonmem(df))
    model, _ = scale.numpyro_model(df)
    rng = np.random.default_rng(8)
    point = {v.name: rng.normal(0.0, 0.5, np.shape(built.model.initial_point()[v.name]))
             for v in built.model.value_vars}
    point["CL_log__"] += np.log(4.0)
    point["V_log__"] += np.log(40.0)
    expect = built.model.compile_logp()(point)
    unconstrained = {k.removesuffix("_log__"): v for k, v in point.items()}
    got = -float(potential_energy(model, (), {}, unconstrained))
    assert np.isfinite(expect)
    np.testing.assert_allclose(got, expect, rtol=1e-9)
