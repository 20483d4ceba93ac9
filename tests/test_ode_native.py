"""The DOPRI5 integrator written in JAX (``bayesnlme.structural.ode_dopri_jax``), what the JAX engines run
on a GPU: the same states as the numba kernel, and sensitivities as accurate, on every kind of dosing event.

1. On the dosing regimens of test_ode (oral doses with F and ALAG and ADDL, IV boluses and infusions, a
   stiff-ish subject), EVID 3/4 resets and parameter segments (IOV, time-varying covariates), the JAX solver
   takes the kernel's steps: states and sensitivities agree to rounding (1e-9), except the lag's, which
   JAX gets by differentiating the event time (discretisation error, ~1e-6 of its scale at rtol 1e-6).
2. Steady-state doses (SS=1: oral with lag and F, an infusion, a lag longer than II): both are within
   10 rtol (states) and 100 rtol (sensitivities) of a reference solved at rtol 1e-11.
3. Under PyTensor's JAX backend (``BAYESNLME_JAX_ODE=native``) the gradient JAX takes through the solve
   (its custom VJP) is the host kernel's.  Library ODE models' log-densities and gradients equal the host
   path's: ``pkpd_indirect_response_1`` in test_engines, the five others here under `make validate`.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)

import pytensor.tensor as pt  # noqa: E402
from test_ode import (  # noqa: E402
    KEY_LOG,
    LINEAR,
    PARAMS,
    SS_PARAMS,
    _regimens,
    _reset_regimens,
    _steady_state_regimens,
    _within_subject_records,
)

from bayesnlme.data import read_nonmem  # noqa: E402
from bayesnlme.errors import BayesNLMEInputError  # noqa: E402
from bayesnlme.structural import ode_jax  # noqa: E402
from bayesnlme.structural.ode import ODESolveOp, schedule, segments  # noqa: E402
from bayesnlme.structural.ode_dopri_jax import MAX_TRAIN, native_solve  # noqa: E402

SYSTEM = LINEAR.function.keywords["system"]
ALAG = SYSTEM.parameters.index("ALAG")


def _both(data, P, rtol=1e-6, atol=1e-8, segment=None):
    """(Y, S) of the numba kernel and of the JAX solver for one schedule."""
    sched = schedule(data, LINEAR, SYSTEM, rtol, atol, segment=segment)
    steady = bool(sched[11].any())
    kernel = SYSTEM.kernel_ss if steady else SYSTEM.kernel
    host = kernel(P.copy(), *[np.array(x, order="C") for x in sched[:-1]])
    native = [np.asarray(v) for v in jax.jit(native_solve(SYSTEM, sched, steady))(P)]
    return host, native


def _matrix(params):
    return np.stack([params[k] for k in SYSTEM.parameters], axis=1)


def _segmented(frame):
    """Data, per-observation segments and per-segment parameters (n_sub, G n_p) of the IOV records."""
    data = read_nonmem(frame)
    keys = frame.loc[frame["EVID"] == 0, "KEY"].to_numpy()
    seg = segments(data, keys)
    G = int(seg.max()) + 1
    P = np.zeros((data.n_subjects, G, len(SYSTEM.parameters)))
    for i in range(data.n_subjects):
        for g in range(G):
            at = (data.obs_subject == i) & (seg == g)
            key = keys[at][0] if at.any() else 0
            P[i, g] = [PARAMS[k][i] * np.exp(KEY_LOG.get(k, np.zeros(3))[key]) for k in SYSTEM.parameters]
    return data, P.reshape(data.n_subjects, -1), seg


@pytest.mark.parametrize("case", ["regimens", "resets", "segments"])
def test_native_takes_the_kernels_steps(case):
    if case == "segments":
        data, P, seg = _segmented(_within_subject_records())
    else:
        data, P, seg = read_nonmem(_regimens() if case == "regimens" else _reset_regimens()), _matrix(PARAMS), None
    (y, s), (yj, sj) = _both(data, P, segment=seg if seg is not None and seg.any() else None)
    assert np.all(np.isfinite(yj)) and yj.shape == y.shape and sj.shape == s.shape
    np.testing.assert_allclose(yj, y, rtol=1e-9, atol=1e-12 * np.abs(y).max())
    scale = np.maximum(np.abs(s).max(axis=(0, 1)), 1e-300)               # per column (units differ)
    err = np.abs(sj - s).max(axis=(0, 1)) / scale
    lag = np.zeros(s.shape[2], bool)
    lag[ALAG::len(SYSTEM.parameters)] = True
    assert np.all(err[~lag] <= 1e-9), err
    assert np.all(err[lag] <= 1e-4), err
    assert np.abs(s[:, :, lag]).max() > 1.0                           # the lag's sensitivity is exercised
    if case == "segments":                                            # later segments' columns carry gradient
        assert np.abs(sj[:, :, len(SYSTEM.parameters):]).max() > 1e-3


def test_native_steady_state_as_accurate_as_the_kernel():
    """Also: a lagged SS dose with ALAG > (MAX_TRAIN + 1) II gives NaN (a rejected proposal) for its subject
    only, as documented; the kernel handles it."""
    data = read_nonmem(_steady_state_regimens())
    P = _matrix(SS_PARAMS)
    rtol = 1e-6
    sched = schedule(data, LINEAR, SYSTEM, rtol, 1e-8)
    native = jax.jit(native_solve(SYSTEM, sched, True))
    y, s = SYSTEM.kernel_ss(P.copy(), *[np.array(x, order="C") for x in sched[:-1]])
    yj, sj = (np.asarray(v) for v in native(P))
    tight = schedule(data, LINEAR, SYSTEM, 1e-11, 1e-13)
    y_ref, s_ref = SYSTEM.kernel_ss(P.copy(), *[np.array(x, order="C") for x in tight[:-1]])
    scale = np.abs(s_ref).max(axis=(0, 1))
    for got, sens in ((y, s), (yj, sj)):
        assert np.abs(got - y_ref).max() <= 10 * rtol * np.abs(y_ref).max()
        assert np.all(np.abs(sens - s_ref).max(axis=(0, 1)) <= 100 * rtol * scale)
    long_lag = P.copy()
    long_lag[2, ALAG] = 8.0 * (MAX_TRAIN + 1) + 1.0                      # subject 3: II = 8
    y, _ = SYSTEM.kernel_ss(long_lag.copy(), *[np.array(x, order="C") for x in sched[:-1]])
    yj = np.asarray(native(long_lag)[0])
    third = data.obs_subject == 2
    assert np.all(np.isfinite(y)) and np.all(np.isnan(yj[third])) and np.all(np.isfinite(yj[~third]))
    np.testing.assert_allclose(yj[~third], y[~third], rtol=10 * rtol)


def test_jax_gradient_through_the_solve_is_the_kernels(monkeypatch):
    """The ODE Op under PyTensor's JAX backend, differentiated by JAX: native (custom VJP over the
    forward sensitivities) and host callback give the same value and gradient."""
    from pytensor.graph.fg import FunctionGraph
    from pytensor.link.jax.dispatch import jax_funcify

    data = read_nonmem(_regimens())
    consts = [pt.constant(x) for x in schedule(data, LINEAR, SYSTEM, 1e-8, 1e-10)]
    P = pt.dmatrix("P")
    y, _ = ODESolveOp(SYSTEM, False)(P, *consts)
    weights = np.linspace(0.5, 2.0, data.n_obs)
    total = (y[:, 1] / P[data.obs_subject, 1] * weights).sum()
    ode_jax.register()
    out = {}
    for solver in ode_jax.SOLVERS:
        monkeypatch.setenv("BAYESNLME_JAX_ODE", solver)
        fn = jax_funcify(FunctionGraph([P], [total], clone=True))
        out[solver] = jax.value_and_grad(lambda p: fn(p)[0])(_matrix(PARAMS))
    np.testing.assert_allclose(float(out["native"][0]), float(out["host"][0]), rtol=1e-12)
    g_native, g_host = np.asarray(out["native"][1]), np.asarray(out["host"][1])
    scale = np.abs(g_host).max(axis=0)
    assert np.all(np.abs(g_native - g_host) <= 1e-6 * scale + 1e-12)
    assert np.abs(g_host[:, ALAG]).max() > 0.1


def test_solver_choice(monkeypatch):
    monkeypatch.delenv("BAYESNLME_JAX_ODE", raising=False)
    assert ode_jax.solver_for("gpu") == "native" and ode_jax.solver_for("cpu") == "host"
    with ode_jax.on_device("gpu"):
        assert ode_jax.solver_for() == "native"
    assert ode_jax.solver_for() == "host"
    monkeypatch.setenv("BAYESNLME_JAX_ODE", "native")
    assert ode_jax.solver_for("cpu") == "native"
    monkeypatch.setenv("BAYESNLME_JAX_ODE", "gpu-please")
    with pytest.raises(BayesNLMEInputError, match="BAYESNLME_JAX_ODE='gpu-please': choose one of native, host"):
        ode_jax.solver_for("cpu")


def _ode_library():
    from bayesnlme import load_spec
    from bayesnlme.spec import library_names

    return [name for name in library_names() if load_spec(name).structural.piecewise]


@pytest.mark.validation
@pytest.mark.parametrize("name", [n for n in _ode_library() if n != "pkpd_indirect_response_1"])
def test_every_library_ode_model_native_equals_host(name, monkeypatch):
    """`make validate`: the library ODE models test_engines does not check with the JAX integrator, through
    ``for_jax`` + PyMC's jaxified log-density, once per solver (~25-35 s each: a numba and a JAX compile)."""
    _native_equals_host(name, monkeypatch)


def _native_equals_host(name, monkeypatch):
    from capability_matrix import _design
    from pymc.initial_point import make_initial_point_fn
    from pymc.sampling.jax import get_jaxified_logp

    from bayesnlme import load_spec
    from bayesnlme.build import build_model
    from bayesnlme.inference.engines import for_jax

    design = _design(load_spec(name), np.random.default_rng(3))
    design["DV"] = 1.0
    built = build_model(load_spec(name), design)
    point = make_initial_point_fn(model=built.model, overrides=built.initial_point)(0)
    rng = np.random.default_rng(5)
    values = [point[v.name] + 0.1 * rng.standard_normal(np.shape(point[v.name])) for v in built.model.value_vars]
    ode_jax.register()
    out = {}
    for solver in ode_jax.SOLVERS:
        monkeypatch.setenv("BAYESNLME_JAX_ODE", solver)
        out[solver] = jax.value_and_grad(get_jaxified_logp(for_jax(built.model)))(values)
    assert np.isfinite(float(out["host"][0]))
    np.testing.assert_allclose(float(out["native"][0]), float(out["host"][0]), rtol=1e-9)
    g_native, g_host = (np.concatenate([np.ravel(g) for g in out[s][1]]) for s in ("native", "host"))
    np.testing.assert_allclose(g_native, g_host, rtol=1e-6, atol=1e-6 * np.abs(g_host).max())
