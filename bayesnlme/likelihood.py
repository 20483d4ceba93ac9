"""Marginal likelihood, -2LL (OFV), AIC and BIC of a fitted NLME model.

These are the likelihood-based figures NONMEM and Monolix report.  The
marginal log-likelihood of the data at population parameters ``theta`` is

.. math::

    \\log p(y \\mid \\theta) = \\sum_i \\log \\int p(y_i \\mid \\theta, z_i)\\, N(z_i; 0, I)\\, dz_i ,

where ``z_i`` are subject ``i``'s standardised random effects: the model's
non-centred ``eta_z`` (``ETA_i = z_i * omega``, or ``L z_i`` for an OMEGA
block) and ``eta_<P> / omega_<P>`` for a centred parameter P.  Each
subject's integral is estimated by importance sampling, as NONMEM's
``$EST METHOD=IMP`` and Monolix's "importance sampling" log-likelihood do:

* proposal ``q_i``: a multivariate Student-t (5 degrees of freedom) centred at
  the conditional mean of ``z_i`` with (slightly inflated) conditional
  covariance.  It starts from the posterior mean and covariance of the fit's
  ``eta_z`` draws and is then adapted at ``theta`` (importance-weighted mean
  and covariance, twice) before the final, independent set of samples;
* ``log w_ik = log p(y_i | theta, z_ik) + log N(z_ik; 0, I) - log q_i(z_ik)``
  for ``z_ik ~ q_i``, ``k = 1..K``;
* ``log p(y_i | theta) ~= logsumexp_k(log w_ik) - log K``, with Monte Carlo
  standard error (delta method) ``sd(w_i) / (sqrt(K) mean(w_i))``; the
  subjects' estimates are independent, so their variances add.

``log p(y_i | theta, z)`` is the sum over the subject's records of the model's
own per-record log-likelihood (``BuiltModel.loglik``, the graph behind DV's
density in the fit): the residual-error density (normal, or log-normal for
exponential error, including ``-log DV``) with all constants; for censored
(BLQ, M3) records the log-probability of the interval; for binary, ordinal,
count and time-to-event records their own log-probability.  ``-2LL`` of a
continuous model is therefore comparable with
``-2 logLik`` of R's ``nlme`` (method "ML") and NONMEM's OFV plus
``n_obs log(2 pi)``.  AIC = -2LL + 2p and BIC = -2LL + p log(n_obs), where p
counts the estimated population parameters (typical values, covariate
effects, OMEGA elements -- SDs and correlations -- and residual SDs; not the
ETAs).

Everything is vectorised: all subjects are evaluated together for each batch
of samples with :func:`bayesnlme.predict.evaluate_draws`, and per-observation
log densities are summed per subject with :func:`numpy.bincount`.

``theta`` defaults to the posterior mode of the population parameters
(:func:`population_mode`), the maximum of the importance-sampled marginal
log-likelihood plus the log prior; ``population_mode(..., prior=False)`` gives
the maximum-likelihood estimate.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytensor
import pytensor.tensor as pt
from scipy import optimize
from scipy.special import gammaln

from .errors import BayesNLMEInputError
from .predict import evaluate_draws

__all__ = ["MarginalLik", "marginal_loglik", "population_mode"]

#: Degrees of freedom of the Student-t importance proposal.
PROPOSAL_DF = 5.0
#: Factor applied to the proposal covariance (a little wider than the target).
PROPOSAL_INFLATION = 1.2
_LOG_2PI = math.log(2.0 * math.pi)
_CHECK_TO_NINF = "local_check_parameter_to_ninf_switch"   # a density check (sigma > 0) gives -inf, not an error


# ---------------------------------------------------------------------- result


@dataclass
class MarginalLik:
    """The marginal likelihood of a fitted model at population parameters ``theta``.

    Attributes
    ----------
    loglik : float
        Marginal log-likelihood ``log p(y | theta)`` (random effects integrated out).
    mc_se : float
        Its Monte Carlo standard error.
    minus2ll : float
        ``-2 loglik`` (NONMEM's OFV plus ``n_obs log(2 pi)``; R's ``-2 logLik``).
    aic, bic : float
        ``minus2ll + 2 p`` and ``minus2ll + p log(n_obs)``.
    n_parameters : int
        p, the number of estimated population parameters.
    n_obs : int
    theta : dict
        The population parameters used, by free-variable name, natural scale
        (for an OMEGA block ``chol_<P1>_<P2>..`` is the packed lower Cholesky
        factor of OMEGA, as in the PyMC model).
    per_subject : pandas.DataFrame
        Columns ``ID``, ``n_obs``, ``loglik``, ``mc_se`` and ``ess`` (effective
        sample size of the subject's importance weights).
    n_samples : int
        Importance samples per subject (1 for a model without random effects).
    method : str
        ``"importance sampling"``, or ``"exact: no random effects"``.
    """

    loglik: float
    mc_se: float
    minus2ll: float
    aic: float
    bic: float
    n_parameters: int
    n_obs: int
    theta: dict
    per_subject: pd.DataFrame
    n_samples: int = 0
    method: str = "importance sampling"

    def to_dict(self) -> dict:
        """The scalar figures and ``theta`` as plain Python values."""
        return {"loglik": self.loglik, "mc_se": self.mc_se, "minus2ll": self.minus2ll, "aic": self.aic,
                "bic": self.bic, "n_parameters": self.n_parameters, "n_obs": self.n_obs,
                "n_samples": self.n_samples,
                "theta": {k: np.asarray(v).tolist() for k, v in self.theta.items()}}

    def __str__(self) -> str:
        how = (f"{self.n_samples} importance samples per subject" if self.method == "importance sampling"
               else self.method)
        return (f"log-likelihood {self.loglik:.3f} (MC SE {self.mc_se:.3f}), -2LL {self.minus2ll:.3f}, "
                f"AIC {self.aic:.3f}, BIC {self.bic:.3f} (p = {self.n_parameters}, n_obs = {self.n_obs}, "
                f"{how})")


# ---------------------------------------------------------------------- population parameters


@dataclass
class _Population:
    """The model's population free variables and their unconstrained (sampler) scale."""

    names: list
    shapes: list
    sizes: list
    to_natural: object       # f(*unconstrained) -> list of natural values
    to_unconstrained: object  # f(*natural) -> list of unconstrained values
    log_prior: object        # f(*unconstrained) -> log prior density of the natural values
    has_eta: bool
    n_eta: int = 0

    @property
    def n(self) -> int:
        return int(sum(self.sizes))

    def unflatten(self, u: np.ndarray) -> list:
        out, i = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            out.append(np.asarray(u[i:i + size], float).reshape(shape))
            i += size
        return out

    def natural(self, u: np.ndarray) -> dict:
        return {n: np.asarray(v, float) for n, v in zip(self.names, self.to_natural(*self.unflatten(u)))}

    def unconstrained(self, theta: dict) -> np.ndarray:
        vals = self.to_unconstrained(*[np.asarray(theta[n], float).reshape(s)
                                       for n, s in zip(self.names, self.shapes)])
        return np.concatenate([np.asarray(v, float).ravel() for v in vals]) if vals else np.zeros(0)

    def prior(self, u: np.ndarray) -> float:
        return float(self.log_prior(*self.unflatten(u)))


def require_integrable(built) -> None:
    """Raise a clear error for models whose random effects this importance sampling does not integrate.

    It integrates each subject's ETAs -- non-centred ``eta_z`` and centred ``eta_<P>`` alike, in the
    standardised space ``z`` (:func:`random_effect_names`) -- under any observation model
    (continuous, censored M3 records, binary, ordinal, counts, time-to-event: the per-record
    log-likelihood is the model's own, :attr:`BuiltModel.loglik`).  Occasion effects (KAPPA) are
    random effects shared by a subject's records of one occasion, which it does not integrate.
    """
    iov = [p for p, par in built.spec.parameters.items() if par.omega_iov is not None]
    if iov:
        raise BayesNLMEInputError(
            f"the importance-sampling likelihood integrates the ETAs of each subject, not occasion effects; "
            f"parameter(s) {', '.join(iov)} have inter-occasion variability (omega_iov). Refit without "
            f"omega_iov to compute -2LL or subject-level LOO")


def random_effect_names(built) -> tuple[list[str], list[str]]:
    """The free variables that are random effects, and the centred parameters among them.

    ``z`` (n_sub, n_eta) stacks the standardised random effects: first the columns of the
    non-centred ``eta_z``, then ``eta_<P> / omega_<P>`` for each centred parameter P, in
    ``spec.eta_parameters`` order.
    """
    free = {rv.name for rv in built.model.free_RVs}
    centred = [p for p in built.spec.eta_parameters if built.spec.parameters[p].centered]
    return ([n for n in ["eta_z"] if n in free] + [f"eta_{p}" for p in centred]), centred


def _omega_of(built, p: str, draws: dict):
    """OMEGA (SD) of centred parameter P: its draws (leading dim) or the fixed value."""
    fixed = built.spec.parameters[p].omega_fixed
    return np.asarray(draws[f"omega_{p}"], float) if fixed is None else np.asarray(float(fixed))


def z_to_draws(built, z: np.ndarray, draws: dict) -> dict:
    """Population draws (leading dim K) plus the random effects for standardised ``z`` (K, n_sub, n_eta)."""
    _, centred = random_effect_names(built)
    n_nc = z.shape[2] - len(centred)
    out = dict(draws)
    if n_nc:
        out["eta_z"] = z[..., :n_nc]
    for j, p in enumerate(centred):
        omega = _omega_of(built, p, draws)
        out[f"eta_{p}"] = z[..., n_nc + j] * (omega[:, None] if omega.ndim else omega)
    return out


def posterior_z(result) -> np.ndarray:
    """Posterior draws of the standardised random effects ``z``: shape (n_draws, n_sub, n_eta)."""
    built = result.built
    names, centred = random_effect_names(built)
    cols = [result.posterior_draws("eta_z")] if "eta_z" in names else []
    omegas = {f"omega_{p}": result.posterior_draws(f"omega_{p}") for p in centred
              if built.spec.parameters[p].omega_fixed is None}
    for p in centred:
        omega = _omega_of(built, p, omegas)
        cols.append((result.posterior_draws(f"eta_{p}") / (omega[:, None] if omega.ndim else omega))[..., None])
    return np.concatenate(cols, axis=2)


def _population(built) -> _Population:
    """Compile (once per built model) the transforms and log prior of the population variables."""
    cache = built.__dict__.setdefault("_compiled_cache", {})
    if "_population" in cache:
        return cache["_population"]
    model = built.model
    require_integrable(built)
    random, _ = random_effect_names(built)
    pop = [rv for rv in model.free_RVs if rv.name not in random]
    start = model.initial_point()
    shapes, values, naturals, nat_in, unc = [], [], [], [], []
    for rv in pop:
        shapes.append(tuple(int(s) for s in np.shape(start[model.rvs_to_values[rv].name])))
        value = model.rvs_to_values[rv]
        values.append(value)
        tr = model.rvs_to_transforms.get(rv)
        x = rv.type()
        nat_in.append(x)
        naturals.append(value if tr is None else tr.backward(value, *rv.owner.inputs))
        unc.append(x if tr is None else tr.forward(x, *rv.owner.inputs))
    if pop:
        lp = model.logp(vars=pop, jacobian=False, sum=True)
        to_nat = pytensor.function(values, naturals, on_unused_input="ignore")
        to_unc = pytensor.function(nat_in, unc, on_unused_input="ignore")
        log_prior = pytensor.function(values, lp, on_unused_input="ignore")
    else:
        to_nat = to_unc = lambda *a: []
        log_prior = lambda *a: 0.0
    n_eta = len(built.spec.eta_parameters)
    info = _Population(names=[rv.name for rv in pop], shapes=shapes,
                       sizes=[int(np.prod(s)) for s in shapes], to_natural=to_nat,
                       to_unconstrained=to_unc, log_prior=log_prior, has_eta=bool(random), n_eta=n_eta)
    cache["_population"] = info
    return info


def _check_theta(info: _Population, theta) -> dict:
    if isinstance(theta, pd.Series):
        theta = theta.to_dict()
    if not isinstance(theta, dict):
        raise BayesNLMEInputError(f"theta must be a dict of population parameter values, got {type(theta).__name__}")
    missing = [n for n in info.names if n not in theta]
    if missing:
        raise BayesNLMEInputError(f"theta lacks {', '.join(missing)} (needs: {', '.join(info.names)})")
    out = {}
    for n, s in zip(info.names, info.shapes):
        v = np.asarray(theta[n], float)
        if v.size != int(np.prod(s)) or not np.isfinite(v).all():
            raise BayesNLMEInputError(f"theta[{n!r}] must be {'a finite number' if not s else f'finite, shape {s}'}"
                                      f", got {theta[n]!r}")
        out[n] = v.reshape(s)
    if not np.isfinite(info.prior(info.unconstrained(out))):
        raise BayesNLMEInputError(f"theta lies outside the parameters' support (e.g. a negative SD): {out}")
    return out


def posterior_median(result) -> dict:
    """Posterior medians of the population free variables (elementwise), natural scale."""
    info = _population(result.built)
    return {n: np.median(result.posterior_draws(n), axis=0) for n in info.names}


# ---------------------------------------------------------------------- importance sampling core


@dataclass
class _Proposal:
    """Per-subject multivariate Student-t proposals in z-space."""

    mean: np.ndarray   # (n_sub, n_eta)
    chol: np.ndarray   # (n_sub, n_eta, n_eta), lower
    df: float = PROPOSAL_DF

    @classmethod
    def from_draws(cls, z: np.ndarray, inflation: float = PROPOSAL_INFLATION) -> "_Proposal":
        """From posterior draws of eta_z, shape (n_draws, n_sub, n_eta)."""
        mean = z.mean(axis=0)
        dz = z - mean
        cov = np.einsum("kia,kib->iab", dz, dz) / max(len(z) - 1, 1)
        return cls(mean, _safe_chol(inflation * cov))

    def sample(self, base: tuple) -> tuple[np.ndarray, np.ndarray]:
        """Samples ``z`` (K, n_sub, n_eta) and ``log N(z; 0, I) - log q(z)`` (K, n_sub) from fixed base draws."""
        normal, chi2 = base
        d = self.mean.shape[1]
        x = normal * np.sqrt(self.df / chi2)[..., None]                     # standard t, (K, n_sub, d)
        z = self.mean + np.einsum("iab,kib->kia", self.chol, x)
        logdet = np.log(np.diagonal(self.chol, axis1=1, axis2=2)).sum(axis=1)   # (n_sub,)
        log_q = (gammaln((self.df + d) / 2) - gammaln(self.df / 2) - d / 2 * math.log(self.df * math.pi)
                 - logdet - (self.df + d) / 2 * np.log1p((x ** 2).sum(axis=2) / self.df))
        log_prior = -0.5 * d * _LOG_2PI - 0.5 * (z ** 2).sum(axis=2)
        return z, log_prior - log_q

    def adapted(self, z: np.ndarray, log_w: np.ndarray, inflation: float = PROPOSAL_INFLATION) -> "_Proposal":
        """Proposal re-centred on the importance-weighted conditional mean and covariance of z."""
        top = log_w.max(axis=0)
        ok = np.isfinite(top)                      # a subject with no finite weight keeps its proposal
        w = np.where(ok, np.exp(log_w - np.where(ok, top, 0.0)), 1.0)
        w /= w.sum(axis=0)
        ess = np.where(ok, 1.0 / (w ** 2).sum(axis=0), 0.0)
        mean = np.einsum("ki,kia->ia", w, z)
        dz = z - mean
        cov = np.einsum("ki,kia,kib->iab", w, dz, dz)
        chol = _safe_chol(inflation * cov)
        d = z.shape[2]
        keep = (ess < 2 * d + 5) | ~np.isfinite(chol).all(axis=(1, 2))   # too few effective samples: keep old
        mean[keep], chol[keep] = self.mean[keep], self.chol[keep]
        return _Proposal(mean, chol, self.df)


def _safe_chol(cov: np.ndarray) -> np.ndarray:
    d = cov.shape[-1]
    eye = np.eye(d)
    cov = 0.5 * (cov + np.swapaxes(cov, -1, -2)) + 1e-8 * eye
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        out = np.empty_like(cov)
        for i in range(cov.shape[0]):       # rare fallback: repair one subject's matrix at a time
            vals, vecs = np.linalg.eigh(cov[i])
            out[i] = np.linalg.cholesky((vecs * np.maximum(vals, 1e-6)) @ vecs.T)
        return out


def _base_draws(rng: np.random.Generator, k: int, n_sub: int, d: int, df: float = PROPOSAL_DF) -> tuple:
    return rng.standard_normal((k, n_sub, d)), rng.chisquare(df, size=(k, n_sub))


def subject_loglik(built, draws: dict) -> np.ndarray:
    """``log p(y_i | draw)`` per subject at stacked draws of all free RVs: shape (K, n_sub).

    Sums the model's own per-record log-likelihood (:attr:`BuiltModel.loglik`, the graph of DV's
    density in the fit: every observation model, censored records included) over each subject's records.
    """
    data = built.data
    ll = evaluate_draws(built, draws, ("loglik",))["loglik"]
    ll = np.where(np.isnan(ll), -np.inf, ll)
    k, n_sub = ll.shape[0], data.n_subjects
    idx = (data.obs_subject[None, :] + n_sub * np.arange(k)[:, None]).ravel()
    with np.errstate(invalid="ignore"):
        return np.bincount(idx, weights=ll.ravel(), minlength=k * n_sub).reshape(k, n_sub)


def _conditional_loglik(built, theta: dict, z: np.ndarray | None, k: int = 1) -> np.ndarray:
    """``log p(y_i | theta, z_i)`` for K sets of random effects: shape (K, n_sub)."""
    if z is not None:
        k = z.shape[0]
    draws = {n: np.broadcast_to(np.asarray(v, float), (k, *np.shape(v))).copy() for n, v in theta.items()}
    if z is not None:
        draws = z_to_draws(built, z, draws)
    return subject_loglik(built, draws)


def _is_pass(built, theta: dict, proposal: _Proposal, base: tuple):
    """One importance-sampling pass: samples z and log weights, both per subject."""
    z, log_ratio = proposal.sample(base)
    log_w = _conditional_loglik(built, theta, z) + log_ratio
    return z, np.where(np.isnan(log_w), -np.inf, log_w)


def _summarise(log_w: np.ndarray):
    """Per-subject log mean weight, its MC SE (delta method) and the weights' ESS."""
    k = log_w.shape[0]
    top = log_w.max(axis=0)
    finite = np.isfinite(top)
    safe_top = np.where(finite, top, 0.0)
    w = np.exp(log_w - safe_top)
    mean = w.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        loglik = np.where(finite, safe_top + np.log(mean), -np.inf)
        se = np.where(finite, w.std(axis=0, ddof=1) / (math.sqrt(k) * mean), np.inf)
        ess = np.where(finite, w.sum(axis=0) ** 2 / (w ** 2).sum(axis=0), 0.0)
    return loglik, se, ess


def _objective_function(built):
    """Compiled ``f(*unconstrained, z, log_ratio, use_prior) -> [objective, *gradients]``.

    ``objective = sum_i logsumexp_k(log p(y_i | theta, z_ik) + log_ratio_ik) + use_prior * log p(theta)``
    (without the ``- n_sub log K``), differentiated by pytensor with respect to the
    unconstrained population parameters.  Without random effects ``z`` is absent
    and ``log_ratio`` has shape (1, n_sub).  The per-record densities are the model's
    own (:attr:`BuiltModel.loglik`), as in :func:`subject_loglik`.
    """
    cache = built.__dict__.setdefault("_compiled_cache", {})
    if "_objective" in cache:
        return cache["_objective"]
    from pytensor.graph.replace import vectorize_graph

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
        z = pt.tensor("z", shape=(None, data.n_subjects, len(built.spec.eta_parameters)), dtype="float64")
        n_nc = len(built.spec.eta_parameters) - len(centred)
        if n_nc:
            replace[by_name["eta_z"]] = z[:, :, :n_nc]
        for j, p in enumerate(centred):
            fixed = built.spec.parameters[p].omega_fixed
            omega = replace[by_name[f"omega_{p}"]] if fixed is None else pt.as_tensor_variable(float(fixed))
            replace[by_name[f"eta_{p}"]] = z[:, :, n_nc + j] * omega
        inputs.append(z)
    ll = vectorize_graph(built.loglik, replace=replace)
    if not random:
        ll = ll[None, :]
    per_subject = pt.inc_subtensor(pt.zeros((data.n_subjects, ll.shape[0]))[data.obs_subject], ll.T).T
    objective = pt.logsumexp(per_subject + log_ratio, axis=0).sum()
    use_prior = pt.scalar("use_prior")
    if pop:
        lp = model.logp(vars=pop, jacobian=False, sum=True)
        objective = objective + use_prior * lp
        grads = pt.grad(objective, values)
    else:
        grads = []
    fn = None
    try:   # numba: compiles (and caches on disk) much faster than the C backend for this gradient graph
        import numba  # noqa: F401

        fn = pytensor.function(inputs + [log_ratio, use_prior], [objective, *grads], on_unused_input="ignore",
                               mode=pytensor.compile.get_mode("NUMBA").including(_CHECK_TO_NINF))
    except Exception:   # numba missing or an op it cannot compile: the default C backend
        fn = None
    if fn is None:
        fn = pytensor.function(inputs + [log_ratio, use_prior], [objective, *grads], on_unused_input="ignore",
                               mode=pytensor.compile.get_mode("FAST_RUN").including(_CHECK_TO_NINF))
    cache["_objective"] = fn
    return fn


def _posterior_proposal(result) -> _Proposal | None:
    """Proposals from the posterior of the standardised random effects; None for a model without them."""
    if not _population(result.built).has_eta:
        return None
    names, _ = random_effect_names(result.built)
    if not all(n in result.idata.posterior for n in names):   # no draws to start from: N(0, I), then adaptation
        n_sub, d = result.built.data.n_subjects, len(result.built.spec.eta_parameters)
        return _Proposal(np.zeros((n_sub, d)), np.broadcast_to(np.eye(d), (n_sub, d, d)).copy())
    return _Proposal.from_draws(posterior_z(result))


# ---------------------------------------------------------------------- public functions


def population_mode(result, *, prior: bool = True, n_samples: int = 2000, seed: int = 0,
                    start: dict | None = None, max_rounds: int = 4, tol: float = 1e-3) -> dict:
    """Posterior mode (or maximum-likelihood estimate) of the population parameters.

    Maximises ``log p(y | theta) + log p(theta)`` (``prior=True``) or the
    marginal log-likelihood alone (``prior=False``: the MLE, as NONMEM and
    nlme estimate) over all population free variables -- typical values,
    covariate effects, OMEGA (SDs; for blocks the packed Cholesky factor with
    its LKJ prior) and residual SDs -- with the random effects integrated out
    by importance sampling (see :func:`marginal_loglik`).

    The optimiser (L-BFGS-B, gradients by pytensor's automatic differentiation) works on
    the model's unconstrained scale (log for positive parameters, the sampler's
    transforms otherwise) starting from the posterior medians; the density
    maximised is that of the parameters in their natural units (no Jacobian of
    the transform), so the mode is the usual MAP estimate.  The importance
    samples use common random numbers -- fixed standard-normal and chi-square
    draws per subject, re-scaled to each subject's proposal -- so the objective
    is a smooth function of ``theta``.  After each optimisation the proposals
    are re-adapted at the new estimate and the optimisation is repeated, up to
    ``max_rounds`` times, until the estimate moves by less than ``tol`` on the
    unconstrained scale.

    Parameters
    ----------
    result : FitResult
    prior : bool
        Include the log prior density (posterior mode) or not (MLE).
    n_samples : int
        Importance samples per subject.
    seed : int
    start : dict, optional
        Starting values (natural scale, by free-variable name); default the
        posterior medians.
    max_rounds : int
    tol : float

    Returns
    -------
    dict
        Natural-scale values by free-variable name (``CL``, ``omega_CL``,
        ``sigma_add``, ``chol_CL_V`` ...), in the model's order.

    Warns
    -----
    RuntimeWarning
        When the optimiser reports that it did not converge.
    """
    built = result.built
    info = _population(built)
    _check_n(n_samples)
    theta0 = _check_theta(info, start) if start is not None else posterior_median(result)
    u = info.unconstrained(theta0)
    if not info.n:
        return theta0
    rng = np.random.default_rng(seed)
    n_sub = built.data.n_subjects
    proposal = _posterior_proposal(result)
    if proposal is None:
        base = None
    else:
        base = _base_draws(rng, n_samples, n_sub, info.n_eta)
        for _ in range(2):
            z, log_w = _is_pass(built, info.natural(u), proposal, base)
            proposal = proposal.adapted(z, log_w)
    bounds = [(x - 20.0, x + 20.0) for x in u]
    fn = _objective_function(built)
    log_k = math.log(n_samples) if proposal is not None else 0.0
    res = None
    for _ in range(max_rounds):
        if proposal is None:
            args = (np.zeros((1, n_sub)),)
        else:
            z, log_ratio = proposal.sample(base)
            args = (z, log_ratio)

        def fun_and_grad(v, args=args):
            out = fn(*info.unflatten(v), *args, float(prior))
            val = -(float(out[0]) - n_sub * log_k)
            grad = -np.concatenate([np.asarray(g, float).ravel() for g in out[1:]])
            if not (np.isfinite(val) and np.isfinite(grad).all()):
                return 1e10, np.zeros_like(v)
            return val, grad

        res = optimize.minimize(fun_and_grad, u, jac=True, method="L-BFGS-B", bounds=bounds,
                                options={"maxiter": 1000, "maxfun": 5000, "ftol": 1e-13, "gtol": 1e-7})
        moved = float(np.max(np.abs(res.x - u)))
        u = res.x
        if proposal is None:
            break
        z, log_w = _is_pass(built, info.natural(u), proposal, base)
        proposal = proposal.adapted(z, log_w)
        if moved < tol:
            break
    if not res.success:
        # L-BFGS-B often ends with "ABNORMAL_TERMINATION_IN_LNSRCH" at the optimum (the objective is
        # flat to rounding there); warn only when the projected gradient is not small
        lo, hi = np.array(bounds).T
        g = np.where(((res.x <= lo) & (res.jac > 0)) | ((res.x >= hi) & (res.jac < 0)), 0.0, res.jac)
        if np.max(np.abs(g)) > 1e-2:
            warnings.warn(f"population_mode: the optimiser did not converge ({res.message}; largest "
                          f"gradient {np.max(np.abs(g)):.3g}); treat the estimate with caution",
                          RuntimeWarning, stacklevel=2)
    return info.natural(u)


def marginal_loglik(result, *, theta=None, n_samples: int = 2000, seed: int = 0) -> MarginalLik:
    """Marginal log-likelihood, -2LL, AIC and BIC of a fit at population parameters ``theta``.

    Each subject's random effects are integrated out by importance sampling
    in the standardised space ``z`` (see the module documentation): Student-t
    proposals centred on the posterior of ``z_i``, adapted twice at ``theta``
    with importance-weighted moments, then ``n_samples`` fresh samples per
    subject give the estimate and its Monte Carlo standard error.

    Parameters
    ----------
    result : FitResult
    theta : dict, str or None
        Population parameters, natural scale, by free-variable name (``CL``,
        ``omega_CL``, ``sigma_add``, ``chol_CL_V`` ...; see :func:`population_mode`
        for the names).  Strings: ``"mode"`` (default, the posterior mode from
        :func:`population_mode`), ``"mle"`` (maximum-likelihood estimate) or
        ``"median"`` (posterior medians).
    n_samples : int
        Importance samples per subject (also used by the mode/MLE search).
    seed : int

    Returns
    -------
    MarginalLik
    """
    built = result.built
    info = _population(built)
    _check_n(n_samples)
    if theta is None or (isinstance(theta, str) and theta in ("mode", "mle")):
        theta = population_mode(result, prior=theta != "mle", n_samples=n_samples, seed=seed)
    elif isinstance(theta, str):
        if theta != "median":
            raise BayesNLMEInputError(f"theta must be a dict or one of 'mode', 'mle', 'median'; got {theta!r}")
        theta = posterior_median(result)
    theta = _check_theta(info, theta)
    data = built.data
    rng = np.random.default_rng([seed, 1])
    proposal = _posterior_proposal(result)
    if proposal is None:
        log_w = _conditional_loglik(built, theta, None)
        k = 1
    else:
        k = n_samples
        for _ in range(2):
            z, log_w = _is_pass(built, theta, proposal, _base_draws(rng, k, data.n_subjects, info.n_eta))
            proposal = proposal.adapted(z, log_w)
        _, log_w = _is_pass(built, theta, proposal, _base_draws(rng, k, data.n_subjects, info.n_eta))
    loglik_i, se_i, ess_i = _summarise(log_w) if k > 1 else (log_w[0], np.zeros(data.n_subjects),
                                                             np.ones(data.n_subjects))
    loglik = float(loglik_i.sum())
    mc_se = float(np.sqrt((se_i ** 2).sum()))
    p = info.n
    m2ll = -2.0 * loglik
    per = pd.DataFrame({"ID": data.ids, "n_obs": np.bincount(data.obs_subject, minlength=data.n_subjects),
                        "loglik": loglik_i, "mc_se": se_i, "ess": ess_i})
    return MarginalLik(loglik=loglik, mc_se=mc_se, minus2ll=m2ll, aic=m2ll + 2 * p,
                       bic=m2ll + p * math.log(data.n_obs), n_parameters=p, n_obs=data.n_obs,
                       theta=theta, per_subject=per, n_samples=k,
                       method="importance sampling" if proposal is not None else "exact: no random effects")


def _check_n(n):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 10:
        raise BayesNLMEInputError(f"n_samples must be an integer >= 10, got {n!r}")
