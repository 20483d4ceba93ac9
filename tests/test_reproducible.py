"""The same answer twice: same data, spec and seed give bit-identical draws in fresh processes.

Indometacin (6 subjects, 1-compartment IV), the smallest bundled study.  The first process compiles
into an empty home directory (a cold PyTensor/numba cache, as on a new machine or in CI); the second
reuses that cache (warm) and runs with one thread for BLAS/OpenMP/numba.
Before numba's fastmath was turned off for model graphs, the warm run gave different draws from the
cold one (a cached log-density was optimised differently from a fresh compile).  The warm run also
loads nutpie's C callbacks from the cache instead of compiling them, and so does a third process on
another data set of the same shape.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

#: Settings of ``make test`` (Makefile: its own cache, optimisation level 1) the subprocesses here run without
_TEST_SETTINGS = ("PYTENSOR_FLAGS", "BAYESNLME_CACHE_DIR", "NUMBA_OPT", "NUMBA_CACHE_DIR")

SCRIPT = """
import sys, warnings
warnings.simplefilter("ignore")
from bayesnlme import datasets, fit_model, load_spec
data = datasets.load_indometacin()
data["TIME"] *= float(sys.argv[3])     # another data set of the same shape
res = fit_model(load_spec("pk_1cmt_iv"), data, chains=2, draws=60, tune=60,
                seed=11, progress=False, sampler=sys.argv[2])
res.save(sys.argv[1])
"""


def _run(out, home, sampler="nutpie", time_scale=1.0, **env):
    full = dict(os.environ, HOME=str(home), **env)
    for name in _TEST_SETTINGS:   # the user's defaults, not make test's compile settings
        full.pop(name, None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out), sampler, str(time_scale)], env=full,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with xr.open_dataset(out, group="posterior") as post:
        return {name: post[name].values.copy() for name in post.data_vars}


def _cache_files(home, compiledir: bool = True) -> dict:
    """What a compile would change in the caches under ``home/.pytensor``: each file's modification time,
    and for the graph cache its inode and size (a hit refreshes the file's time to mark it used; a store
    replaces the file, a new inode)."""
    out = {}
    for p in (home / ".pytensor").rglob("*"):
        if not p.is_file() or (not compiledir and any(part.startswith("compiledir_") for part in p.parts)):
            continue
        st = p.stat()
        out[p] = (st.st_ino, st.st_size) if p.parent.name == "bayesnlme_graphs" else st.st_mtime_ns
    return out


def test_draws_identical_across_processes_cold_and_warm_cache(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    cold = _run(tmp_path / "cold.nc", home)
    assert (home / ".pytensor").is_dir()   # the first run filled the cache the second one reuses
    # nutpie's C callbacks were cached too (bayesnlme.inference.nutpie_cache), and the warm run loads them
    # instead of compiling (a compile would write the cache files again)
    callbacks = {p: p.stat().st_mtime_ns for p in (home / ".pytensor").rglob("*nutpie_*.nbc")}
    assert {p.name.split("-")[0] for p in callbacks} == {"string.nutpie_logp", "string.nutpie_expand"}
    warm = _run(tmp_path / "warm.nc", home, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    assert {p: p.stat().st_mtime_ns for p in (home / ".pytensor").rglob("*nutpie_*.nbc")} == callbacks
    assert set(cold) == set(warm) and {"CL", "V", "ETA"} <= set(cold)
    for name in cold:
        np.testing.assert_array_equal(cold[name], warm[name], err_msg=name)
    # the seed matters: the draws are not a constant
    assert np.std(cold["CL"]) > 0
    # another data set of the same shape (every TIME x 1.1): the design is an input of the compiled
    # functions (bayesnlme.inference.lift), so nothing is compiled again - only the new model's record is
    # written (bayesnlme.inference.nutpie_cache: where its callbacks are) - and the data did change the draws
    pytensor_files = _cache_files(home)
    other = _run(tmp_path / "other.nc", home, time_scale=1.1)
    after = _cache_files(home)
    assert [p.name.endswith(".nutpie.pkl") for p in set(after) - set(pytensor_files)] == [True]
    assert {p: after[p] for p in pytensor_files} == pytensor_files
    assert not np.array_equal(other["CL"], cold["CL"])


def test_jax_engine_draws_identical_cold_and_warm_persistent_cache(tmp_path):
    """numpyro: the second process loads the compiled sampler from JAX's persistent cache (under
    ~/.cache/bayesnlme/jax) and gives the same draws bit for bit."""
    pytest.importorskip("numpyro")
    home = tmp_path / "home"
    home.mkdir()
    cold = _run(tmp_path / "cold.nc", home, sampler="numpyro")
    cache = home / ".cache" / "bayesnlme" / "jax"
    assert len(list(cache.iterdir())) > 0       # the first run filled the persistent cache
    warm = _run(tmp_path / "warm.nc", home, sampler="numpyro")
    assert set(cold) == set(warm) and {"CL", "V", "ETA"} <= set(cold)
    for name in cold:
        np.testing.assert_array_equal(cold[name], warm[name], err_msg=name)
    assert np.std(cold["CL"]) > 0


ODE_SCRIPT = """
import sys, warnings
warnings.simplefilter("ignore")
import numpy as np, pytensor, pytensor.tensor as pt
from bayesnlme import datasets
from bayesnlme.data import read_nonmem
from bayesnlme.inference.lift import lift_constants
from bayesnlme.structural import StructuralModel
model = StructuralModel.ode(lambda y, t, p: [-p["CL"] / p["V"] * y[:, 0]], ("CL", "V"), 1,
                            outputs={"CP": lambda y, p: y[:, 0] / p["V"]}, name="elimination")
frame = datasets.load_indometacin()
frame["TIME"] *= float(sys.argv[1])     # another data set of the same shape
data = read_nonmem(frame)
cl, v = pt.dvector("CL"), pt.dvector("V")
total = model.function({"CL": cl, "V": v}, data, model)["CP"].sum()
# the dose and observation schedule lifted out of the graph, as the sampler's compile does
f = pytensor.function([cl, v], lift_constants([total, *pytensor.grad(total, [cl, v])]), mode="NUMBA")
out = f(np.full(data.n_subjects, 8.0), np.full(data.n_subjects, 20.0))
print(" ".join(repr(float(x)) for x in np.concatenate([np.atleast_1d(o) for o in out])))
# the C backend (predictions, VPCs, diagnostics) integrates through ODESolveOp.perform's cached solver
g = pytensor.function([cl, v], total, mode="FAST_RUN")
c_total = float(g(np.full(data.n_subjects, 8.0), np.full(data.n_subjects, 20.0)))
solver = model.function.keywords["system"].solver(False)
print(repr(c_total), sum(solver.stats.cache_hits.values()), sum(solver.stats.cache_misses.values()))
"""


@pytest.mark.validation
def test_ode_integrator_is_compiled_once_across_processes(tmp_path):
    """An ODE model's log-density, integrator included, is compiled by the first process (~45 s) and loaded
    from PyTensor's numba cache by the next (~2 s), which compiles nothing (nor does the C backend's
    integrator, ``ODESolveOp.perform``'s cached solver): no file in the cache is
    written again (before, the integrator had no cache key and every process compiled it again).  A third
    process on another data set of the same shape (TIME x 1.1) compiles nothing either: the integrator's
    schedule is an input of the compiled function, not a constant in it."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in _TEST_SETTINGS}
    env["HOME"] = str(home)

    def _written(home):
        # numba's cache and the graph cache; PyTensor's C module cache (compiledir_*, where the C backend
        # rewrites its cutils_ext/__init__.py in every process) is not what this test is about
        return _cache_files(home, compiledir=False)

    def run(time_scale=1.0):
        proc = subprocess.run([sys.executable, "-c", ODE_SCRIPT, str(time_scale)], env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        numba_line, c_line = proc.stdout.strip().splitlines()[-2:]
        c_total, hits, misses = c_line.split()
        return [float(x) for x in numba_line.split()], float(c_total), (int(hits), int(misses))

    first, c_first, (hits, misses) = run()
    files = _written(home)
    # the integrator's own entries (PyTensor's wrapper of ODESolveOp's numba function, named after it, and the
    # solver ODESolveOp.perform calls)
    assert any(p.name.startswith("string.solve-") and p.suffix == ".nbc" for p in files)
    assert any(p.name.startswith("string.ode_perform_solve-") and p.suffix == ".nbc" for p in files)
    assert (hits, misses) == (0, 1)
    second, c_second, (hits, misses) = run()
    assert _written(home) == files
    assert (hits, misses) == (1, 0)      # the C backend's integrator loaded, not compiled
    assert second == first and first[0] > 0 and len(first) == 1 + 2 * 6   # value, d/dCL and d/dV of 6 subjects
    assert c_second == c_first == pytest.approx(first[0], rel=1e-12)
    other, _, _ = run(1.1)
    assert _written(home) == files
    assert other[0] < first[0]   # later samples of a decaying profile: the data did reach the function
