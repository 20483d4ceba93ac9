"""The likelihood of a mixture model (``[mixture]``, NONMEM's ``$MIX``): membership marginalised per subject.

Subject ``i`` belongs to component ``k`` with prior probability ``w_ik`` (``p_mix_k``, shifted by the
covariate if there is one); in component ``k`` the mixed parameter is ``P_i * ratio_k``, the subject's
ETA unchanged.  Its data have the density

    log p(y_i) = logsumexp_k [ log w_ik + sum_j log p(y_ij | component k, ETA_i) ],

summed over the records of each subject for every component at once (a padded subject x record x
component array, no Python loop over subjects; the loop over K components is in graph construction).

The per-record log-likelihood (``DV``'s density, the ``log_likelihood`` group of a fit) is the chain-rule
split of each subject's mixture density,

    log p(y_ij | y_i1 .. y_i(j-1)) = logsumexp_k [log w_ik + S_ik(j)] - logsumexp_k [log w_ik + S_ik(j-1)],

with ``S_ik(j)`` the sum of component ``k``'s log-densities of the subject's first ``j`` records.  These
terms sum exactly to the subject's mixture density (so subject-level LOO, -2LL and importance sampling are
right), but a record's term depends on the records before it: observation-level LOO is not
leave-one-record-out for a mixture; use subject-level LOO.

IPRED and RES_SD are those of the component most probable a posteriori at the draw (given the subject's
data and ETA); PRED is the prediction of the typical subject averaged over the components with weights
``w_ik``.  Cost: K structural-model evaluations per log-density evaluation.
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from bayesnlme.build.priors import prior_rv
from bayesnlme.errors import SpecError


def _ratios(mix, init: dict) -> list:
    """``ratio_k`` for k = 1..K (``ratio_1 = 1``), ordered by the (0, 1) support of each step."""
    steps = []
    for name in mix.step_names:
        init[name] = mix.ratio_prior.median()
        steps.append(prior_rv(name, mix.ratio_prior))
    ratios = [pt.as_tensor_variable(1.0)]
    for step in steps:
        ratios.append(ratios[-1] * step)
    if mix.components > 2:
        for name, r in zip(mix.ratio_names, ratios[1:]):
            pm.Deterministic(name, r)
    return ratios


def _log_weights(mix, data, init: dict):
    """Log prior membership probabilities, shape (n_subjects, K)."""
    if mix.p_prior is not None:
        init["p_mix_2"] = mix.p_prior.median()
        p2 = prior_rv("p_mix_2", mix.p_prior)
        pm.Deterministic("p_mix_1", 1.0 - p2)
        log_p = pt.stack([pt.log1p(-p2), pt.log(p2)])
    else:
        k = mix.components
        init["p_mix_simplex"] = np.full(k, 1.0 / k)
        p = pm.Dirichlet("p_mix_simplex", a=np.asarray(mix.dirichlet_alpha))
        for i, name in enumerate(mix.p_names):
            pm.Deterministic(name, p[i])
        log_p = pt.log(p)
    logits = pt.ones((data.n_subjects, 1)) * log_p[None, :]
    if mix.covariate is not None:
        x = data.baseline_covariates([mix.covariate])[mix.covariate].to_numpy(float) - mix.reference
        betas = []
        for name in mix.covariate_names:
            init[name] = 0.0
            betas.append(prior_rv(name, mix.covariate_prior))
        shift = pt.stack([pt.as_tensor_variable(0.0)] + betas)
        logits = logits + x[:, None] * shift[None, :]
    return logits - pt.logsumexp(logits, axis=1, keepdims=True)


def _record_positions(data) -> tuple[np.ndarray, np.ndarray, int]:
    """Each record's subject and its 0-based position among that subject's records (data order)."""
    subj = np.asarray(data.obs_subject, int)
    pos = np.zeros(len(subj), int)
    seen: dict = {}
    for j, s in enumerate(subj):   # numpy bookkeeping of the design, not a loop in the graph
        pos[j] = seen.get(s, 0)
        seen[s] = pos[j] + 1
    return subj, pos, int(pos.max()) + 1 if len(pos) else 1


def mixture_loglik(ll, log_w, data):
    """Per-record chain-rule terms and per-subject component sums of a mixture's log-density.

    Parameters
    ----------
    ll : tensor, shape (n_obs, K)
        Each record's log-density in each component.
    log_w : tensor, shape (n_subjects, K)
        Log prior membership probabilities.
    data : NMData

    Returns
    -------
    record : tensor, shape (n_obs,)
        ``log p(y_ij | y_i1 .. y_i(j-1))``; summed over a subject's records, its mixture log-density.
    subject : tensor, shape (n_subjects, K)
        Sum of each component's log-densities over the subject's records.
    """
    subj, pos, width = _record_positions(data)
    k = ll.shape[1]
    dense = pt.zeros((data.n_subjects, width + 1, k))
    dense = pt.set_subtensor(dense[subj, pos + 1], ll)
    cum = pt.cumsum(dense, axis=1)          # cum[:, j] = sum of the first j records (no cancellation)
    lw = log_w[subj]
    record = (pt.logsumexp(lw + cum[subj, pos + 1], axis=1) - pt.logsumexp(lw + cum[subj, pos], axis=1))
    return record, cum[:, -1]


def _dv_random(obs_subject: np.ndarray, k: int, log_scale: bool):
    """DV's draws (prior predictive): a component per subject from ``w_ik``, then the residual error.

    The parameters arrive per record (K predictions, K SDs, K log weights): PyMC broadcasts them
    with DV; a subject's weights are read at its first record.
    """
    subjects, first = np.unique(obs_subject, return_index=True)
    where = np.searchsorted(subjects, obs_subject)

    def random(lp, *rest, rng=None, size=None):
        ipred, sd, log_w = (np.stack(rest[i * k:(i + 1) * k]) for i in range(3))   # each (K, n_obs)
        prob = np.exp(log_w[:, first]).T                                             # (n_subjects, K)
        comp = np.minimum((np.cumsum(prob, axis=1) < rng.random(len(prob))[:, None]).sum(axis=1), k - 1)[where]
        cols = np.arange(len(obs_subject))
        f, s = ipred[comp, cols], sd[comp, cols]
        eps = rng.standard_normal(f.shape)
        return f * np.exp(s * eps) if log_scale else f + s * eps
    return random


def check_mixture_data(spec, data) -> None:
    """Mixtures take one continuous ``[residual]`` model (censored records included, M3 or M1)."""
    if spec.observations:
        raise SpecError("mixture: [[observations]] (DVID types, outcomes) are not supported with [mixture]; "
                        "use one continuous [residual] model")


def build_mixture(spec, data, init: dict, individual: dict, typical: dict, component, observed) -> dict:
    """Add the mixture's variables and its observed ``DV`` to the model in context.

    Parameters
    ----------
    individual, typical : dict
        Per-subject parameters (:func:`bayesnlme.build.individual_parameters`), before the mixture.
    component : callable
        ``component(individual, typical) -> (ipred, pred, sd, ll)``, each shape (n_obs,): one
        component's predictions, residual SD and per-record log-density.
    observed : array or data container
        The observed DV.

    Returns
    -------
    dict
        ``ipred``, ``pred``, ``residual_sd``, ``individual``, ``loglik`` and ``mixture`` (tensors
        ``log_weights`` and ``subject_loglik``, shape (n_subjects, K); ``ipred`` and ``residual_sd``,
        shape (K, n_obs); ``ratios``, shape (K,)) for :class:`bayesnlme.build.BuiltModel`.
    """
    mix = spec.mixture
    p = mix.parameter
    ratios = _ratios(mix, init)
    log_w = _log_weights(mix, data, init)
    parts = [component(dict(individual, **{p: individual[p] * r}), dict(typical, **{p: typical[p] * r}))
             for r in ratios]
    ipred, pred, sd, ll = (pt.stack([c[i] for c in parts]) for i in range(4))   # each (K, n_obs)
    record, subject = mixture_loglik(ll.T, log_w, data)
    k = len(ratios)
    per_record = [ipred[j] for j in range(k)] + [sd[j] for j in range(k)] + \
        [log_w[data.obs_subject, j] for j in range(k)]     # elementwise parameters, each (n_obs,)
    pm.CustomDist("DV", record, *per_record, logp=lambda value, lp, *rest: lp,
                  random=_dv_random(data.obs_subject, k, spec.observation_models()[0].family.log_scale),
                  observed=observed, dims="obs")
    best = pt.eq(pt.argmax(log_w + subject, axis=1)[:, None], np.arange(len(ratios))[None, :])   # (n_sub, K)
    pick = best[data.obs_subject].T                                                        # (K, n_obs)
    ratio = pt.stack(ratios)
    return {"ipred": (pick * ipred).sum(0), "pred": (pt.exp(log_w[data.obs_subject]).T * pred).sum(0),
            "residual_sd": (pick * sd).sum(0), "loglik": record,
            "individual": dict(individual, **{p: individual[p] * (best * ratio[None, :]).sum(1)}),
            "mixture": {"log_weights": log_w, "subject_loglik": subject, "ipred": ipred,
                        "residual_sd": sd, "ratios": ratio}}
