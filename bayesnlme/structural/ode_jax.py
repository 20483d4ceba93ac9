"""ODE models under the JAX engines: the integrator in JAX on the device, or the numba one on the host.

:func:`register` teaches PyTensor's JAX backend to evaluate :class:`~bayesnlme.structural.ode.ODESolveOp`
in one of two ways (:func:`solver_for`):

* ``native`` (the default on a GPU): the same DOPRI5 method written in JAX
  (:mod:`~bayesnlme.structural.ode_dopri_jax`), so the whole log-density runs on the device;
* ``host`` (the default on the CPU, where it is ~6-8x faster per evaluation than XLA's loop,
  ``benchmarks/ode_jax.py``): the compiled DOPRI5 kernel (the same one nutpie runs) is called on the host through
``jax.pure_callback``, and its forward sensitivities ``S = dY/dP`` give the reverse-mode gradient
(``jax.custom_vjp``), so numpyro and blackjax can differentiate the log-density.  The dosing schedule
(data) is bound when the function is built, so each call sends only the individual parameters; chains
vectorised by ``vmap`` make one host call for all chains.  On a GPU each evaluation copies the individual parameters
to the host and the states back; the integration itself runs on the CPU.

The environment variable ``BAYESNLME_JAX_ODE`` (``native`` or ``host``) overrides the choice; a schedule
that is not constant in the graph always uses the host.  JAX is imported when :func:`register` is first
called, not when this module is imported.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.structural.ode import ODESolveOp
from bayesnlme.structural.ode_dopri_jax import native_solve

_REGISTERED = []
_DEVICE = ["cpu"]   # the device the JAX engine samples on (set by :func:`on_device`)
SOLVERS = ("native", "host")


@contextlib.contextmanager
def on_device(device: str):
    """ODE solves compiled inside this block are for ``device`` ('cpu' or 'gpu'): see :func:`solver_for`."""
    _DEVICE.append(device)
    try:
        yield
    finally:
        _DEVICE.pop()


def solver_for(device: str | None = None) -> str:
    """'native' or 'host': ``BAYESNLME_JAX_ODE`` if set, else native on a GPU and host on the CPU."""
    chosen = os.environ.get("BAYESNLME_JAX_ODE", "").strip().lower()
    if chosen:
        if chosen not in SOLVERS:
            raise BayesNLMEInputError(f"BAYESNLME_JAX_ODE={chosen!r}: choose one of {', '.join(SOLVERS)}")
        return chosen
    return "native" if (device or _DEVICE[-1]) == "gpu" else "host"


def register() -> None:
    """Register the JAX implementation of :class:`ODESolveOp` (idempotent)."""
    if _REGISTERED:
        return
    from pytensor.link.jax.dispatch import jax_funcify

    jax_funcify.register(ODESolveOp)(_jax_ode_solve)
    _REGISTERED.append(True)


def _jax_ode_solve(op, node=None, **kwargs):
    import jax
    import jax.numpy as jnp
    from pytensor.graph.basic import Constant

    kernel = op.kernel
    n_states = op.system.n_states
    schedule_inputs = list(node.inputs[1:-1]) if node is not None else []
    fixed = None
    if schedule_inputs and all(isinstance(v, Constant) for v in schedule_inputs):
        # the schedule is data: bound here once, so each call sends only the parameters to the host
        fixed = [np.array(v.data, order="C") for v in schedule_inputs]
        if solver_for() == "native":
            obs_subject = np.asarray(node.inputs[-1].data)
            solve_native = native_solve(op.system, fixed + [obs_subject], op.steady)

            @jax.custom_vjp
            def native(P):
                return solve_native(P)

            def native_forward(P):
                y, s = solve_native(P)
                return (y, s), (P, s)

            def native_backward(residual, cotangent):
                P, s = residual
                contrib = (cotangent[0][:, :, None] * s).sum(axis=1)      # (n_obs, n_segments x n_params)
                return (jnp.zeros_like(P).at[obs_subject].add(contrib),)

            native.defvjp(native_forward, native_backward)
            return lambda P, *inputs: native(P)

    def host(P, *schedule):
        P = np.asarray(P, dtype=np.float64)
        if P.ndim == 3:       # chains vectorised by vmap: one host call for all of them
            out = [host(p) for p in P]
            return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])
        sched = [x.copy() for x in fixed] if fixed is not None else [np.array(x, order="C") for x in schedule]
        y, s = kernel(np.array(P, order="C"), *sched)
        return np.asarray(y, dtype=np.float64), np.asarray(s, dtype=np.float64)

    def call(P, schedule, n_obs):
        shapes = (jax.ShapeDtypeStruct((n_obs, n_states), jnp.float64),
                  jax.ShapeDtypeStruct((n_obs, n_states, P.shape[-1]), jnp.float64))   # segments x params
        if fixed is not None:
            return jax.pure_callback(host, shapes, P, vmap_method="expand_dims")
        return jax.pure_callback(host, shapes, P, *schedule, vmap_method="sequential")

    @jax.custom_vjp
    def solve(P, schedule, obs_subject):
        return call(P, schedule, obs_subject.shape[0])

    def forward(P, schedule, obs_subject):
        y, s = call(P, schedule, obs_subject.shape[0])
        return (y, s), (P, schedule, obs_subject, s)

    def backward(residual, cotangent):
        P, schedule, obs_subject, s = residual
        g_y = cotangent[0]
        contrib = (g_y[:, :, None] * s).sum(axis=1)               # (n_obs, n_segments x n_params)
        g_p = jnp.zeros_like(P).at[obs_subject].add(contrib)
        return g_p, tuple(_zero_cotangent(x) for x in schedule), _zero_cotangent(obs_subject)

    solve.defvjp(forward, backward)

    def ode_solve(P, *inputs):
        return solve(P, tuple(inputs[:-1]), inputs[-1])

    return ode_solve


def _zero_cotangent(x):
    import jax
    import jax.numpy as jnp

    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, dtype=jax.dtypes.float0)
