"""The objective of the population mode search (:func:`bayesnlme.evaluate.likelihood.population_mode`):
the importance-sampling estimate of the marginal log-likelihood plus the log prior, and its gradient with
respect to the unconstrained population parameters, compiled once per model; evaluated over all importance
samples at once, or in blocks of samples where one call would hold too much memory (:class:`Objective`).
"""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.graph.replace import vectorize_graph

from bayesnlme.evaluate.importance import random_effect_names, random_effects
from bayesnlme.evaluate.predict import cached
from bayesnlme.inference.graph_cache import compile_function
from bayesnlme.structural import static_shapes

CHECK_TO_NINF = "local_check_parameter_to_ninf_switch"   # a density check (sigma > 0) gives -inf, not an error
#: Importance samples x records evaluated in one call of the objective; above it the samples are taken in
#: blocks (two passes, :class:`Objective`): one call over 2,000 samples of 12,000 records held 4.3 GB, and
#: of 100,000 records more than a 24 GB machine has.
OBJECTIVE_CELLS = 2_000_000


def objective_function(built, gradient: bool = True):
    """Compiled ``f(*unconstrained, z, log_ratio, use_prior, weights) -> [objective, *gradients, lse]``.

    ``lse_i = logsumexp_k(log p(y_i | theta, z_ik) + log_ratio_ik)`` per subject and
    ``objective = sum_i weights_i lse_i + use_prior * log p(theta)`` (without the ``- n_sub log K``),
    differentiated by pytensor with respect to the unconstrained population parameters (``gradient=False``:
    ``[objective, lse]`` only).  Without random effects ``z`` is absent and ``log_ratio`` has shape
    (1, n_sub).  The per-record densities are the model's own (:attr:`BuiltModel.loglik`), as in
    :func:`subject_loglik`.
    """
    return cached(built, "objective" if gradient else "objective_value", lambda: compile_objective(built, gradient))


class Objective:
    """The mode search's objective and gradient at ``theta`` over all importance samples, in blocks of
    samples when one call would evaluate more than :data:`OBJECTIVE_CELLS` sample-records.

    Blocks: a first pass gives each block's per-subject ``lse_ic``; then ``lse_i = logsumexp_c lse_ic`` and
    the gradient is ``sum_c d/dtheta sum_i w_ic lse_ic`` with ``w_ic = exp(lse_ic - lse_i)`` fixed (the
    weights input): the same objective and gradient as one call, memory bounded by the block.
    """

    def __init__(self, built, n_samples: int):
        self.fn = objective_function(built)
        self.n_sub = built.data.n_subjects
        self.block = max(1, OBJECTIVE_CELLS // max(built.data.n_obs, 1))
        self.value = objective_function(built, gradient=False) if n_samples > self.block else None

    def __call__(self, theta: list, args: tuple, use_prior: float) -> tuple[float, list]:
        ones = np.ones(self.n_sub)
        if self.value is None or args[0].shape[0] <= self.block:
            out = self.fn(*theta, *args, use_prior, ones)
            return float(out[0]), list(out[1:-1])
        blocks = [slice(i, i + self.block) for i in range(0, args[0].shape[0], self.block)]
        lse = np.array([self.value(*theta, *(a[b] for a in args), 0.0, ones)[1] for b in blocks])
        top = lse.max(axis=0)
        safe = np.where(np.isfinite(top), top, 0.0)
        total = safe + np.log(np.exp(lse - safe).sum(axis=0))   # per subject, over all samples
        weights = np.where(np.isfinite(total), np.exp(lse - np.where(np.isfinite(total), total, 0.0)), 0.0)
        value, grads = float(total.sum()), None
        for j, b in enumerate(blocks):
            out = self.fn(*theta, *(a[b] for a in args), use_prior if j == 0 else 0.0, weights[j])
            if j == 0:   # the prior's term: the block's objective less its weighted lse
                value += float(out[0]) - float(weights[0] @ np.where(weights[0] > 0, out[-1], 0.0))
            grads = [np.asarray(g, float) for g in out[1:-1]] if grads is None else \
                [acc + np.asarray(g, float) for acc, g in zip(grads, out[1:-1])]
        return value, grads


def compile_objective(built, gradient: bool = True):
    """The function :func:`objective_function` caches: the model's per-record log-likelihood vectorised over
    the importance samples ``z`` (numba; PyTensor's C backend where numba cannot compile it)."""
    model, data = built.model, built.data
    random, centred = random_effect_names(built)
    pop = [rv for rv in model.free_RVs if rv.name not in random]
    by_name = {rv.name: rv for rv in model.free_RVs}
    values = [model.rvs_to_values[rv] for rv in pop]
    replace = {}
    for rv, value in zip(pop, values):
        tr = model.rvs_to_transforms.get(rv)
        replace[rv] = value if tr is None else tr.backward(value, *rv.owner.inputs)
    log_ratio = pt.matrix("log_ratio")
    inputs = list(values)
    if random:
        info = random_effects(built)
        z = pt.tensor("z", shape=(None, data.n_subjects, info.n_re), dtype="float64")
        n_nc = info.n_eta - len(centred)
        if n_nc:
            replace[by_name["eta_z"]] = z[:, :, :n_nc]
        for j, p in enumerate(centred):
            fixed = built.spec.parameters[p].omega_fixed
            omega = replace[by_name[f"omega_{p}"]] if fixed is None else pt.as_tensor_variable(float(fixed))
            replace[by_name[f"eta_{p}"]] = z[:, :, n_nc + j] * omega
        if info.n_iov:   # each occasion's KAPPA z from its subject's slot (see importance.RandomEffects)
            slots = z[:, :, info.n_eta:].reshape((z.shape[0], data.n_subjects, info.n_slots, info.n_iov))
            replace[by_name["kappa_z"]] = slots[:, info.occ_subject, info.occ_slot, :]
        inputs.append(z)
    ll = vectorize_graph(static_shapes([built.loglik])[0], replace=replace)
    if not random:
        ll = ll[None, :]
    per_subject = pt.inc_subtensor(pt.zeros((data.n_subjects, ll.shape[0]))[data.obs_subject], ll.T).T
    lse = pt.logsumexp(per_subject + log_ratio, axis=0)
    weights = pt.vector("weights")
    objective = (weights * lse).sum()
    use_prior = pt.scalar("use_prior")
    if pop:
        lp = model.logp(vars=pop, jacobian=False, sum=True)
        objective = objective + use_prior * lp
        grads = pt.grad(objective, values) if gradient else []
    else:
        grads = []
    ins, outs = inputs + [log_ratio, use_prior, weights], [objective, *grads, lse]
    fn = None
    try:   # numba: compiles (and caches on disk) much faster than the C backend for this gradient graph
        import numba  # noqa: F401

        # its rewritten graph kept on disk too (the model's check_bounds: CHECK_TO_NINF included), so a
        # later process links it without rewriting it (~2 s of a warm `bayesnlme diagnose` on theophylline)
        fn = compile_function(ins, outs, model=model, mode="NUMBA", on_unused_input="ignore")
    except Exception:   # numba missing or an op it cannot compile: the default C backend
        fn = None
    if fn is None:
        fn = pytensor.function(ins, outs, on_unused_input="ignore",
                               mode=pytensor.compile.get_mode("FAST_RUN").including(CHECK_TO_NINF))
    return fn
