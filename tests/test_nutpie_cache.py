"""nutpie's C callbacks from PyTensor's numba cache (bayesnlme.inference.nutpie_cache).

The callbacks are generated source with nutpie's C signatures and user-data record; these tests
check they read the data containers where nutpie puts them (two containers, swapped with
``with_data``, and the design arrays lifted out of the graph) and give nutpie's own log-density.
That a second process loads them from the cache instead of compiling is checked in
tests/test_reproducible.py; that a model compiled before is loaded without deriving its log-density
again (its record), here.
"""

import numpy as np
import pytest

nutpie = pytest.importorskip("nutpie")

from bayesnlme import datasets, load_spec, read_nonmem  # noqa: E402
from bayesnlme.build import build_model  # noqa: E402
from bayesnlme.inference import engines, lift, nutpie_cache  # noqa: E402
from bayesnlme.inference.refit import _add_mask  # noqa: E402
from bayesnlme.inference.startpoint import check_start  # noqa: E402


def test_unpack_reads_each_containers_pointer_and_shape_from_nutpies_record():
    from nutpie.compile_pymc import make_user_data

    class Var:   # what make_user_data reads of a data container
        def __init__(self, ndim):
            self.ndim = ndim

    shared = {"a": np.arange(3.0), "b": np.ones((2, 5)), "c": np.array(7.0), "d": np.arange(4, dtype=np.int64)}
    user_data = make_user_data({k: Var(v.ndim) for k, v in shared.items()}, shared)
    words = np.frombuffer(user_data.tobytes(), dtype=np.uint64)
    lines, args = nutpie_cache._unpack(user_data, ["b", "d", "c"], shared)
    assert args == ", s0, s1, s2"
    for line, name in zip(lines.splitlines(), ["b", "d", "c"]):
        ptr_word = int(line.split("ud[")[1].split("]")[0])
        assert words[ptr_word] == shared[name].ctypes.data
        shape_words = [int(w.split("]")[0]) for w in line.split("int(ud[")[1:]]
        assert [int(words[w]) for w in shape_words] == list(shared[name].shape)
        assert line.endswith(f"np.{shared[name].dtype.name})")


@pytest.mark.slow
def test_cached_callbacks_give_nutpies_log_density_and_read_swapped_data():
    data = read_nonmem(datasets.dataset_path("indometacin"))
    built = build_model(load_spec("pk_1cmt_iv"), data, check_residual=False, dv_data=True)
    _add_mask(built.model)          # two data containers: DV_data and DV_drop
    model, flat = built.model, check_start(built)
    rvs = {v for v in model.free_RVs if v.name in engines.jitter_names(model, flat)}
    keep = [v.name for v in model.free_RVs + model.deterministics]
    ours = nutpie_cache.compile_model(model, built.initial_point, rvs, keep)
    theirs = nutpie.compile_pymc_model(model, initial_points=built.initial_point, jitter_rvs=rvs, var_names=keep)
    assert ours is not None and ours.n_dim == theirs.n_dim and ours.n_expanded == theirs.n_expanded
    # the design (TIME, AMT, subject index) travels in the user-data record beside the DV containers
    lifted = sorted(k for k in ours.shared_data if k.startswith(lift.PREFIX))
    assert len(lifted) >= 2 and {"DV_data", "DV_drop"} <= set(ours.shared_data)
    assert any(np.array_equal(ours.shared_data[k], data.obs_time) for k in lifted)

    def draws(compiled, **swap):
        idata = nutpie.sample(compiled.with_data(**swap) if swap else compiled, draws=40, tune=40, chains=2,
                              seed=4, progress_bar=False, cores=1)
        return {k: idata.posterior[k].values for k in ("CL", "V", "sigma_prop")}

    # the same log-density and gradient as nutpie's own compile (the lifted graph sums in another order:
    # equal to rounding), through the C callbacks nutpie calls, also after the DV containers are swapped
    dv = 2.0 * data.obs_dv
    drop = (data.obs_subject == 0).astype(float)
    rng = np.random.default_rng(3)
    for swap in ({}, {"DV_data": dv, "DV_drop": drop}):
        a, b = (c.with_data(**swap) if swap else c for c in (ours, theirs))
        for seed in range(4):
            x = a.initial_point_func(seed) + 0.3 * rng.normal(size=ours.n_dim)
            (lp_a, g_a), (lp_b, g_b) = a.logp_func(x), b.logp_func(x)
            assert lp_a == pytest.approx(lp_b, rel=1e-12)
            np.testing.assert_allclose(g_a, g_b, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(a.expand_func(x)[0], b.expand_func(x)[0], rtol=1e-12)
    first = draws(ours)
    np.testing.assert_array_equal(draws(ours)["CL"], first["CL"])   # the same seed, the same draws
    swapped = draws(ours, DV_data=dv, DV_drop=drop)
    # doubling every concentration halves V (the data changed, not only the seed's path)
    assert np.median(swapped["V"]) == pytest.approx(np.median(first["V"]) / 2, rel=0.25)


def _theophylline_model(time_scale=1.0):
    data = read_nonmem(datasets.dataset_path("theophylline"))
    if time_scale != 1.0:
        frame = data.frame.drop(columns="ROW").copy()
        frame["TIME"] *= time_scale
        data = read_nonmem(frame)
    return build_model(load_spec("pk_1cmt_oral"), data, dv_data=True, eta_parameterisation="population")


@pytest.mark.slow
def test_a_model_compiled_before_loads_both_callbacks_from_the_cache_alone(monkeypatch, tmp_path):
    """The second compile of the same model (built again: other Python objects) reads its record and numba's
    cache and derives, rewrites and links nothing; it gives the same callbacks: the same log-density,
    gradient and expanded draw to the bit, the same draws, and reads swapped DV like the first."""
    first, again = _theophylline_model(), _theophylline_model()
    keep = [v.name for v in first.model.free_RVs + first.model.deterministics]
    key = nutpie_cache.model_key(first.model, keep)
    assert key is not None and key == nutpie_cache.model_key(again.model, keep)
    assert nutpie_cache.model_key(again.model, keep[:-1]) != key           # other stored variables

    def jitter(built):   # the fit's jittered variables (nutpie cannot start where a gradient is 0)
        return {v for v in built.model.free_RVs if v.name in engines.jitter_names(built.model, ())}

    long_way = nutpie_cache.compile_model(first.model, first.initial_point, jitter(first), keep, reuse=False)

    def derive(*args, **kwargs):
        raise AssertionError("the log-density was derived, rewritten and linked again")

    with monkeypatch.context() as m:
        m.setattr(nutpie_cache, "_make_functions", derive)
        loaded = nutpie_cache.compile_model(again.model, again.initial_point, jitter(again), keep)
    assert (loaded.n_dim, loaded.n_expanded, loaded.shapes) == (long_way.n_dim, long_way.n_expanded, long_way.shapes)
    assert loaded.shared_data.keys() == long_way.shared_data.keys()
    for name, value in long_way.shared_data.items():
        np.testing.assert_array_equal(loaded.shared_data[name], value)
    rng = np.random.default_rng(5)
    dv = 1.5 * np.asarray(long_way.shared_data["DV_data"])
    swapped_models = [c.with_data(DV_data=dv) for c in (long_way, loaded)]
    for seed in range(3):
        x = long_way.initial_point_func(seed) + 0.2 * rng.normal(size=long_way.n_dim)
        np.testing.assert_array_equal(loaded.initial_point_func(seed), long_way.initial_point_func(seed))
        (lp_a, g_a), (lp_b, g_b) = long_way.logp_func(x), loaded.logp_func(x)
        assert np.isfinite(lp_a) and lp_a == lp_b
        np.testing.assert_array_equal(g_a, g_b)
        np.testing.assert_array_equal(long_way.expand_func(x)[0], loaded.expand_func(x)[0])
        swapped = [nutpie_cache._logp_and_grad(c.compiled_logp_func, c.user_data, c.shared_data, c.n_dim)(x)[0]
                   for c in swapped_models]
        assert swapped[0] == swapped[1] != lp_a                        # the new DV reached both
    draws = [nutpie.sample(c, draws=30, tune=30, chains=2, seed=3, progress_bar=False, cores=1).posterior
             for c in (long_way, loaded)]
    for name in ("CL", "V", "omega_KA", "eta_z"):
        np.testing.assert_array_equal(draws[0][name].values, draws[1][name].values)

    # other data of the same shape: another key, compiled the long way (its own record), its own density
    other = _theophylline_model(time_scale=1.01)
    assert nutpie_cache.model_key(other.model, keep) != key
    compiled_other = nutpie_cache.compile_model(other.model, other.initial_point, None, keep)
    x = long_way.initial_point_func(0)
    assert compiled_other.logp_func(x)[0] != long_way.logp_func(x)[0]
    # a damaged record is compiled the long way, with the same result
    nutpie_cache._record_path(key).write_bytes(b"not a record")
    repaired = nutpie_cache.compile_model(again.model, again.initial_point, None, keep)
    assert repaired.logp_func(x)[0] == long_way.logp_func(x)[0]
    assert nutpie_cache._read_record(key)["n_dim"] == long_way.n_dim      # and written again


def _shape_cases():
    import dataclasses

    import pandas as pd
    from test_iov_likelihood import (
        SPEC as IOV_SPEC,  # an IOV model (one parameter with occasion effects)
    )

    from bayesnlme.spec import ModelSpec

    theo = read_nonmem(datasets.dataset_path("theophylline"))
    base = load_spec("pk_1cmt_oral")
    centred = dataclasses.replace(base, parameters={**base.parameters,
                                                    "V": dataclasses.replace(base.parameters["V"], centered=True)})
    block = dataclasses.replace(base, omega_blocks=(("CL", "V"),))
    iov = pd.DataFrame([{"ID": i, "TIME": 24.0 * occ + t, "DV": 10.0 + i + t, "EVID": 0, "MDV": 0, "OCC": occ,
                         "EXPOSURE": 1.0} for i in (1, 2, 3) for occ in (1, 2) for t in range(2)])
    return [(base, theo), (centred, theo), (block, theo), (ModelSpec.from_toml_text(IOV_SPEC), iov)]


@pytest.mark.parametrize("case", range(4), ids=["diagonal", "centred V", "block CL-V", "IOV"])
def test_shapes_read_from_static_types_are_nutpies(case):
    """The builder gives the subjects' random effects a static shape, so the sampler's compile reads the
    shapes from the types instead of compiling nutpie's shape function; they must be the shapes it
    computes.  Occasion effects keep a shape from their dims only (predictions at other times evaluate
    the model on other occasions): nutpie's function then gives the shapes."""
    from nutpie.compile_pymc import _compute_shapes

    spec, data = _shape_cases()[case]
    model = build_model(spec, data).model
    trace = model.value_vars + model.free_RVs + model.deterministics
    dynamic = [v.name for v in trace if None in v.type.shape]
    assert dynamic == ([] if case < 3 else ["kappa_z", "kappa_z", "KAPPA"]), dynamic
    ours, theirs = nutpie_cache._shapes(model), _compute_shapes(model)
    assert ours.keys() == theirs.keys()
    assert {k: tuple(int(n) for n in v) for k, v in theirs.items()} == {k: tuple(int(n) for n in v)
                                                                         for k, v in ours.items()}


def test_shapes_fall_back_to_nutpies_function_without_static_shapes():
    import pymc as pm

    with pm.Model(coords={"ID": ["a", "b", "c"]}) as model:
        z = pm.Normal("z", 0.0, 1.0, dims="ID")       # shape from the coords only: not static
        pm.Deterministic("w", 2 * z, dims="ID")
    assert model["z"].type.shape == (None,)
    shapes = nutpie_cache._shapes(model)
    assert tuple(shapes["z"]) == (3,) and tuple(shapes["w"]) == (3,)
