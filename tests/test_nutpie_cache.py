"""nutpie's C callbacks from PyTensor's numba cache (bayesnlme.inference.nutpie_cache).

The callbacks are generated source with nutpie's C signatures and user-data record; these tests
check they read the data containers where nutpie puts them (two containers, swapped with
``with_data``) and give nutpie's own draws bit for bit.  That a second process loads them from the
cache instead of compiling is checked in tests/test_reproducible.py.
"""

import numpy as np
import pytest

nutpie = pytest.importorskip("nutpie")

from bayesnlme import datasets, load_spec, read_nonmem  # noqa: E402
from bayesnlme.build import build_model  # noqa: E402
from bayesnlme.inference import engines, nutpie_cache  # noqa: E402
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
def test_cached_callbacks_give_nutpies_own_draws_with_swapped_data():
    data = read_nonmem(datasets.dataset_path("indometacin"))
    built = build_model(load_spec("pk_1cmt_iv"), data, check_residual=False, dv_data=True)
    _add_mask(built.model)          # two data containers: DV_data and DV_drop
    model, flat = built.model, check_start(built)
    rvs = {v for v in model.free_RVs if v.name in engines.jitter_names(model, flat)}
    keep = [v.name for v in model.free_RVs + model.deterministics]
    ours = nutpie_cache.compile_model(model, built.initial_point, rvs, keep)
    theirs = nutpie.compile_pymc_model(model, initial_points=built.initial_point, jitter_rvs=rvs, var_names=keep)
    assert ours is not None and ours.n_dim == theirs.n_dim

    def draws(compiled, **swap):
        idata = nutpie.sample(compiled.with_data(**swap) if swap else compiled, draws=40, tune=40, chains=2,
                              seed=4, progress_bar=False, cores=1)
        return {k: idata.posterior[k].values for k in ("CL", "V", "sigma_prop")}

    first = draws(ours)
    for name, value in draws(theirs).items():
        np.testing.assert_array_equal(first[name], value, err_msg=name)
    # DV doubled and the first subject's records dropped: both read the new containers
    dv = 2.0 * data.obs_dv
    drop = (data.obs_subject == 0).astype(float)
    swapped = draws(ours, DV_data=dv, DV_drop=drop)
    for name, value in draws(theirs, DV_data=dv, DV_drop=drop).items():
        np.testing.assert_array_equal(swapped[name], value, err_msg=name)
    # doubling every concentration halves V (the data changed, not only the seed's path)
    assert np.median(swapped["V"]) == pytest.approx(np.median(first["V"]) / 2, rel=0.25)
