"""Rewritten graphs kept on disk (bayesnlme.inference.graph_cache).

A stored graph must be found again for the same computation on other data of the same shape, must
then read the *current* data (PyTensor's own pickled functions carry the data they were compiled
with), must not be found for another computation, and must never be worse than compiling.
"""

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest

from bayesnlme.inference import graph_cache, lift


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(graph_cache, "cache_dir", lambda: tmp_path)
    return tmp_path


def _graph(times, scale=2.0):
    """A small log-density with a data container and lifted design arrays, as the builder's are."""
    with pm.Model() as model:
        dv = pm.Data("DV", np.array([1.0, 0.7, 0.4, 0.2]))
        k = pm.LogNormal("k", 0.0, 1.0)
        pm.Normal("y", scale * pt.exp(-k * pt.as_tensor(times)), 0.1, observed=dv)
    value = model.rvs_to_values[model.free_RVs[0]]
    logp = model.logp()
    outputs = lift.lift_constants([logp, pytensor.grad(logp, value)])
    return model, [value], outputs


def _no_compile(*args, **kwargs):
    raise AssertionError("compiled although the rewritten graph was stored")


def test_a_stored_graph_is_linked_to_the_current_data(store, monkeypatch):
    times = np.array([0.5, 1.0, 2.0, 4.0])
    model, inputs, outputs = _graph(times)
    first = graph_cache.compile_function(inputs, outputs, model=model)
    assert len(list(store.glob("*.pkl"))) == 1
    expected = first(np.array(0.3))

    # the same structure on other data of the same shape (another TIME, another DV): built anew, as in
    # another process, after other graphs were built (PyTensor's variable counter moved on)
    model2, inputs2, outputs2 = _graph(times * 1.7)
    model2["DV"].set_value(np.array([2.0, 1.1, 0.5, 0.1]))
    with monkeypatch.context() as patch:
        patch.setattr(graph_cache, "compile_pymc", _no_compile)
        cached = graph_cache.compile_function(inputs2, outputs2, model=model2)
    with model2:
        fresh = pm.pytensorf.compile(inputs2, outputs2, mode="NUMBA")
    got, want = cached(np.array(0.3)), fresh(np.array(0.3))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert abs(got[0] - expected[0]) > 1.0          # the new data changed the log-density: it was read
    # a later change of a container is read too, as by a function compiled in this process
    model2["DV"].set_value(np.array([1.0, 0.7, 0.4, 0.2]))
    np.testing.assert_array_equal(cached(np.array(0.3))[0], fresh(np.array(0.3))[0])


def test_another_computation_is_not_found(store):
    times = np.array([0.5, 1.0, 2.0, 4.0])
    model, inputs, outputs = _graph(times)
    key = graph_cache.graph_key(inputs, outputs, model.check_bounds, "NUMBA")
    assert key == graph_cache.graph_key(*_graph(times * 3.0)[1:], model.check_bounds, "NUMBA")
    assert key != graph_cache.graph_key(*_graph(times, scale=2.5)[1:], model.check_bounds, "NUMBA")  # a constant
    assert key != graph_cache.graph_key(*_graph(times[:3])[1:], model.check_bounds, "NUMBA")           # a shape
    assert key != graph_cache.graph_key(inputs, outputs, not model.check_bounds, "NUMBA")
    assert key != graph_cache.graph_key(inputs, outputs, model.check_bounds, "FAST_RUN")


def test_an_unreadable_file_is_compiled_again(store):
    times = np.array([0.5, 1.0, 2.0, 4.0])
    model, inputs, outputs = _graph(times)
    expected = graph_cache.compile_function(inputs, outputs, model=model)(np.array(0.3))
    (path,) = store.glob("*.pkl")
    path.write_bytes(b"not a pickle")
    model, inputs, outputs = _graph(times)
    got = graph_cache.compile_function(inputs, outputs, model=model)(np.array(0.3))
    np.testing.assert_array_equal(got[0], expected[0])
    assert path.read_bytes() != b"not a pickle"      # written again


def test_the_folder_is_pruned_by_age_and_size_and_a_used_graph_stays(store, monkeypatch):
    """Graphs of old package versions are never looked up again: files unused for MAX_AGE_DAYS go when a
    process first stores a graph, then the least recently used above MAX_BYTES; a hit marks its file used."""
    import os
    import time

    times = np.array([0.5, 1.0, 2.0, 4.0])
    model, inputs, outputs = _graph(times)
    graph_cache.compile_function(inputs, outputs, model=model)
    (used,) = store.glob("*.pkl")
    day, now = 86400.0, time.time()
    for name, age in (("old", 30), ("older", 60), ("recent", 3)):
        (store / f"{name}.pkl").write_bytes(b"x" * 1000)
        os.utime(store / f"{name}.pkl", (now - age * day, now - age * day))
    os.utime(used, (now - 40 * day, now - 40 * day))
    model, inputs, outputs = _graph(times)
    graph_cache.compile_function(inputs, outputs, model=model)        # a hit: the file is marked used
    assert now - used.stat().st_mtime < 60
    monkeypatch.setattr(graph_cache, "_PRUNED", set())
    model, inputs, outputs = _graph(times, scale=3.0)                  # another graph: stored, then prune
    graph_cache.compile_function(inputs, outputs, model=model)
    names = sorted(p.name for p in store.glob("*.pkl"))
    assert "old.pkl" not in names and "older.pkl" not in names and "recent.pkl" in names and used.name in names
    assert len(names) == 3
    # above the size limit the least recently used go first, whatever their age
    newest = max(store.glob("*.pkl"), key=lambda p: p.stat().st_mtime_ns)
    removed = graph_cache.prune(store, max_bytes=newest.stat().st_size)
    assert sorted(removed) == sorted(n for n in names if n != newest.name)
    assert [p.name for p in store.glob("*.pkl")] == [newest.name]
    assert graph_cache.prune(store / "absent") == []


def test_the_shared_logp_terms_follow_the_model():
    model, _, _ = _graph(np.array([0.5, 1.0, 2.0, 4.0]))
    first = graph_cache.logp_factors(model)
    assert graph_cache.logp_factors(model)[0] is first[0]          # built once
    with model:
        pm.Potential("extra", -model["k"])
    terms = graph_cache.logp_factors(model)
    assert len(terms) == len(first) + 1                              # a new potential: built again
    point = {"k_log__": np.array(0.2)}
    total = model.compile_fn(graph_cache.model_logp(model), point_fn=False)(**point)
    np.testing.assert_allclose(total, model.compile_logp()(point), rtol=1e-12)


@pytest.mark.parametrize("name, data", [("pk_1cmt_oral", "theophylline"), ("pk_1cmt_mm_oral", "theophylline")])
def test_pointwise_log_likelihood_from_the_builders_graph_is_pymcs_and_is_stored(store, monkeypatch, name, data):
    """The fit's log_likelihood group is compiled from the builder's per-record graph (no second PyMC
    derivation of DV's density): the same values bit for bit, and its rewritten graph is stored (its
    key can be formed: a clone's tag that still pointed into the random-variable graph made it
    unpicklable, so it was compiled again in every process)."""
    import arviz as az

    from bayesnlme import datasets, load_spec, read_nonmem
    from bayesnlme.build import build_model

    built = build_model(load_spec(name), read_nonmem(datasets.dataset_path(data)))
    model, rng = built.model, np.random.default_rng(0)
    ip = model.initial_point()
    post = {}
    for rv in model.free_RVs:
        value = ip[model.rvs_to_values[rv].name]
        transform = model.rvs_to_transforms.get(rv)
        value = np.asarray(transform.backward(value).eval() if transform is not None else value)
        post[rv.name] = (rng.normal(size=(2, 3) + value.shape) if rv.name == "eta_z"
                         else value * np.exp(rng.normal(0, 0.05, size=(2, 3) + value.shape)))
    direct = lift.add_log_likelihood(az.from_dict(posterior=post), model, built.loglik)
    assert len(list(store.iterdir())) == 1
    monkeypatch.setattr(graph_cache, "compile_pymc", _no_compile)
    again = lift.add_log_likelihood(az.from_dict(posterior=post), model, built.loglik)   # from the store
    monkeypatch.undo()
    derived = lift.add_log_likelihood(az.from_dict(posterior=post), model)
    ll = direct.log_likelihood["DV"].values
    assert ll.shape == (2, 3, built.data.n_obs) and np.isfinite(ll).all()
    np.testing.assert_array_equal(ll, derived.log_likelihood["DV"].values)
    np.testing.assert_array_equal(ll, again.log_likelihood["DV"].values)



def test_a_miss_returns_the_stored_graph_linked_as_later_processes_link_it(store, monkeypatch):
    """numba's cache key of a compiled function follows its graph's node order, and a graph unpickled in
    another process need not keep the order rewriting left: the likelihood's objective on theophylline got
    one key in the process that rewrote it and another in every process that loaded it, so numba compiled
    it twice.  A miss therefore returns the stored graph, linked as every later process links it."""
    loaded = []
    real_load = graph_cache._load

    def recording(*args, **kwargs):
        loaded.append(real_load(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(graph_cache, "_load", recording)
    model, inputs, outputs = _graph(np.array([0.5, 1.0, 2.0, 4.0]))
    fn = graph_cache.compile_function(inputs, outputs, model=model)
    assert len(list(store.glob("*.pkl"))) == 1
    assert len(loaded) == 1 and fn is loaded[0]
    with model:
        fresh = pm.pytensorf.compile(inputs, outputs, mode="NUMBA")
    np.testing.assert_array_equal(fn(np.array(0.3))[1], fresh(np.array(0.3))[1])
