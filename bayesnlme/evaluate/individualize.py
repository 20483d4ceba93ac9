"""Bayesian individualisation: one new patient's random effects given their measured levels (TDM).

The population is a fit (:class:`~bayesnlme.inference.FitResult`, its posterior draws) or a published
model given as a spec with informative priors (its "posterior" is then the prior: population values are
drawn from the spec's priors).  A patient's NONMEM-format records (doses, covariates, a few levels) are
read with :func:`bayesnlme.data.read_nonmem`.

Full Bayes (:func:`individualize`).  The patient is one more member of the population, so their
posterior is ``p(eta, theta | y, D) ∝ p(y | eta, theta) p(eta | theta) p(theta | D)``: the population
uncertainty is carried through, and the patient's levels also weigh the population draws by their
marginal likelihood ``p(y | theta)`` -- exactly what a NUTS refit of the population with the patient
added gives (checked in ``tests/test_individualize.py``).  It is computed by sampling/importance
resampling (SIR; Rubin 1988, Smith & Gelfand 1992) over thinned population draws ``theta_s``
(``n_draws``, default 300): for each draw, ``n_proposals`` standardised random effects ``z`` (ETA = L z,
``L`` the draw's Cholesky factor of OMEGA, so the prior of ``z`` is N(0, I) at every draw) are proposed
from a defensive mixture (Hesterberg 1995) of the prior N(0, I) (weight 0.2) and a multivariate
Student-t (5 df) centred on the MAP estimate with the inflated Laplace covariance, adapted once to the
weighted mean and covariance of the first pass; weights ``p(y | theta_s, z) N(z; 0, I) / q(z)`` are
normalised over all draws and proposals, and ``n_samples`` pairs ``(theta_s, z)`` are drawn by
systematic resampling.  ``population="fixed"`` normalises per draw instead (each draw keeps weight
``1/S``): the posterior ``∫ p(eta | y, theta) p(theta | D) dtheta`` that ignores what one patient says
about the population (negligible for a large population, not for 12 subjects).  Quality is reported,
not assumed: the effective sample size of the weights (Kish), the effective number of population draws
(ESS of the per-draw weight sums), and the Pareto k of the weights (PSIS; Vehtari et al. 2024, k >
0.7: unreliable); a low ESS triggers one more pass with 4x the proposals, and what remains low is said
in :attr:`IndividualPosterior.problems`.  Everything is vectorised: one compiled function evaluates the
log-likelihood at (n_draws x n_proposals) parameter sets (:func:`bayesnlme.evaluate.predict.compiled_function`).

MAP-Bayes (:func:`map_estimate`): the ETAs minimising ``-log p(y | eta, theta) - log p(eta | theta)``
at the population posterior median (the median of the population draws), by BFGS with the compiled
gradient -- the estimate of mapbayr and of NONMEM's ``$ESTIMATION MAXEVAL=0 POSTHOC``.

Inter-occasion variability (``omega_iov``, occasions from the patient's ``OCC`` column; none: one
occasion).  The random effects ``z`` are the ETAs and the KAPPAs of the occasions with a measured level,
so both the SIR posterior and the MAP cover them jointly (the layout of the marginal likelihood's
importance sampling, :class:`bayesnlme.evaluate.importance.RandomEffects`).  Predictions at an occasion
without a level (the next occasion, a proposed regimen, a dose table's steady state) draw its KAPPA from
N(0, OMEGA_IOV^2) for every posterior sample (``future_occasion="new"``, the default: bands widen by the
IOV), or keep the KAPPA of the last occasion with a level (``"last"``); see
:func:`bayesnlme.evaluate.individual_model.design_draws`.

Cost.  The first call in a process compiles the model's functions: ~15-25 s on a cold PyTensor cache, ~4 s
on a warm one (the log-likelihood and its gradient, the MAP, and for a spec the prior draws; a profile and
a dose table compile their own designs, ~1 s each).  Compiled models are kept in a module-level cache keyed
by the spec and the patient's *design* (dose records, times, covariates; the measured levels are a data
container of the compiled function, :mod:`bayesnlme.evaluate.individual_model`), so another target, dose
grid or seed for the same patient, or another patient with the same sampling design, takes ~0.1 s for the
posterior (300 draws x 200 proposals) and ~0.1 s each for the profile and the dose table.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from arviz import psislw
from scipy.special import gammaln, logsumexp

from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.importance import random_effects
from bayesnlme.evaluate.individual_model import (
    MapEstimate,
    design_draws,
    loglik_at,
    map_estimate,
    patient_eta,
    patient_kappa,
    patient_model,
    population_draws,
    read_patient,
)
from bayesnlme.evaluate.predict import evaluate_draws
from bayesnlme.spec import ModelSpec

#: Student-t degrees of freedom and covariance inflation of the proposal; weight of the prior component.
PROPOSAL_DF, INFLATION, DEFENSIVE = 5.0, 1.5, 0.2
#: Below this effective sample size a second pass with 4x the proposals is run; below MIN_ESS after it, a problem.
MIN_ESS = 200
#: Pareto k of the importance weights above which the estimate is unreliable (Vehtari et al. 2024).
K_MAX = 0.7
_LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------------- importance sampling


def _mixture(rng, mean, chol, k: int):
    """``k`` proposals from the defensive mixture and their log density and log prior N(z; 0, I)."""
    d = len(mean)
    x = rng.standard_normal((k, d))
    t = mean + (x * np.sqrt(PROPOSAL_DF / rng.chisquare(PROPOSAL_DF, k))[:, None]) @ chol.T
    z = np.where((rng.random(k) < DEFENSIVE)[:, None], x, t)
    log_prior = -0.5 * d * _LOG_2PI - 0.5 * (z ** 2).sum(1)
    u = np.linalg.solve(chol, (z - mean).T).T
    log_t = (gammaln((PROPOSAL_DF + d) / 2) - gammaln(PROPOSAL_DF / 2) - d / 2 * math.log(PROPOSAL_DF * math.pi)
             - np.log(np.diag(chol)).sum() - (PROPOSAL_DF + d) / 2 * np.log1p((u ** 2).sum(1) / PROPOSAL_DF))
    log_q = np.logaddexp(math.log(DEFENSIVE) + log_prior, math.log1p(-DEFENSIVE) + log_t)
    return z, log_prior - log_q


def _normalised(log_w: np.ndarray, population: str) -> np.ndarray:
    """Normalised weights (S, M): over all draws and proposals, or within each draw (``fixed``)."""
    if population == "fixed":
        lw = log_w - logsumexp(log_w, axis=1, keepdims=True)
        ok = np.isfinite(lw).all(axis=1)     # a draw under which the levels are impossible has no say
        lw = np.where(ok[:, None], lw, -np.inf) - math.log(max(ok.sum(), 1))
        return np.exp(lw)
    return np.exp(log_w - logsumexp(log_w))


def _pass(built, loglik, theta: dict, rng, mean, chol, m: int, population: str):
    s = len(next(iter(theta.values())))
    z, log_ratio = _mixture(rng, mean, chol, s * m)
    rep = {k: np.repeat(v, m, axis=0) for k, v in theta.items()}
    log_w = (loglik_at(built, loglik, rep, z) + log_ratio).reshape(s, m)
    if not np.isfinite(log_w).any():
        raise BayesNLMEInputError("the patient's levels are impossible under every population draw (log-likelihood "
                                  "-inf): check the units and times of DV and AMT")
    return z.reshape(s, m, -1), log_w, _normalised(log_w, population)


@dataclass
class IndividualPosterior:
    """A patient's individual posterior as equally weighted samples, with its MAP estimate and its quality.

    Attributes
    ----------
    spec : ModelSpec
    patient : NMData
    source : str
        Where the population came from (a fit's posterior or a spec's priors).
    theta : dict of str -> numpy.ndarray
        Population values behind each sample, leading dimension ``n_samples``.
    z : numpy.ndarray, shape (n_samples, d)
        Standardised random effects (ETA = L z), then with IOV the standardised KAPPAs of each occasion
        with a measured level.
    parameters : pandas.DataFrame
        Individual parameters per sample (natural units, e.g. CL in L/h; with IOV the subject's values
        without KAPPA), ``ETA_<P>`` and with IOV ``KAPPA_<P>_OCC<occasion>``.
    map : MapEstimate
    quality : dict
        ``n_draws``, ``n_proposals``, ``ess`` (Kish ESS of the normalised weights), ``ess_population``
        (effective number of population draws), ``pareto_k`` (of the normalised weights) and ``population``
        (``"update"`` or ``"fixed"``).
    problems : list of str
        What limits the result, in words (empty when nothing does).
    """
    spec: ModelSpec
    patient: object
    source: str
    theta: dict
    z: np.ndarray
    parameters: pd.DataFrame
    map: MapEstimate
    quality: dict
    problems: list = field(default_factory=list)

    @property
    def n_samples(self) -> int:
        return len(self.z)

    def draws_for(self, built, *, future: str = "new", seed: int = 0) -> dict:
        """Free-variable draws for a model of this spec on another design (every subject is this patient);
        ``future``: the KAPPA of an occasion without a level (:func:`~.individual_model.design_draws`)."""
        return design_draws(built, self.patient, self.theta, self.z, future=future, seed=seed)

    def summary(self, ci: float = 90) -> pd.DataFrame:
        """Per individual parameter and ETA: posterior median, ``ci``% credible interval and MAP.

        Returns
        -------
        pandas.DataFrame
            Columns ``parameter, unit, median, q_lo, q_hi, map`` (units of the spec).
        """
        lo, hi = (100 - ci) / 200, 1 - (100 - ci) / 200
        rows = []
        for col in self.parameters.columns:
            x = self.parameters[col].to_numpy()
            is_eta, is_kappa = col.startswith("ETA_"), col.startswith("KAPPA_")
            unit = "" if is_eta or is_kappa else (self.spec.parameters[col].unit or "")
            mapv = (self.map.eta.get(col[4:], np.nan) if is_eta else self.map.kappa.get(col[6:], np.nan) if is_kappa
                    else self.map.parameters[col])
            rows.append({"parameter": col, "unit": unit, "median": float(np.median(x)),
                         "q_lo": float(np.quantile(x, lo)), "q_hi": float(np.quantile(x, hi)), "map": mapv})
        return pd.DataFrame(rows)


def individualize(source, patient, *, n_draws: int = 300, n_proposals: int = 200, n_samples: int = 2000,
                  population: str = "update", seed: int = 0) -> IndividualPosterior:
    """The full-Bayes individual posterior of one patient (SIR over population draws) and the MAP estimate.

    Parameters
    ----------
    source : FitResult or ModelSpec
        A population fit, or a spec whose (informative) priors are the population.
    patient : path, pandas.DataFrame or NMData
        One patient's NONMEM-format records (see :func:`read_patient`).
    n_draws : int
        Population draws used (thinned posterior, or prior draws).
    n_proposals : int
        Proposals of the random effects per population draw.
    n_samples : int
        Equally weighted posterior samples returned (systematic resampling).
    population : {"update", "fixed"}
        ``"update"`` (default): the patient's levels also weigh the population draws (the joint posterior,
        as a refit with the patient); ``"fixed"``: each draw keeps its weight (the population is not learnt
        from this patient).
    seed : int

    Returns
    -------
    IndividualPosterior

    Examples
    --------
    >>> post = individualize(load_spec("my_published_model.toml"), "patient.csv", seed=1)   # doctest: +SKIP
    >>> post.summary()                                                                         # doctest: +SKIP
    """
    if population not in ("update", "fixed"):
        raise BayesNLMEInputError(f"population must be 'update' or 'fixed', got {population!r}")
    for name, value in (("n_draws", n_draws), ("n_proposals", n_proposals), ("n_samples", n_samples)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise BayesNLMEInputError(f"{name} must be a whole number >= 1, got {value!r}")
    spec = source if isinstance(source, ModelSpec) else source.spec
    data = read_patient(patient, spec)
    built, loglik = patient_model(spec, data)
    if random_effects(built).n_re == 0:
        raise BayesNLMEInputError(f"{spec.name} has no inter-individual variability: there is nothing to individualise")
    theta, label = population_draws(source, built, n_draws, seed)
    rng = np.random.default_rng(seed)
    median = {k: np.median(v, axis=0) for k, v in theta.items()}
    mode = map_estimate(built, loglik, median)
    mean, chol = mode.z, np.linalg.cholesky(INFLATION * mode.covariance)
    z, log_w, w = _pass(built, loglik, theta, rng, mean, chol, max(n_proposals // 4, 20), population)
    flat_w, flat_z = w.ravel(), z.reshape(-1, z.shape[-1])
    mean = flat_w @ flat_z
    cov = (flat_z - mean).T @ ((flat_z - mean) * flat_w[:, None])
    try:
        chol = np.linalg.cholesky(INFLATION * cov + 1e-9 * np.eye(len(mean)))
    except np.linalg.LinAlgError:
        pass   # keep the Laplace proposal
    m = n_proposals
    for attempt in range(2):
        z, log_w, w = _pass(built, loglik, theta, rng, mean, chol, m, population)
        quality = _quality(w, population, n_draws, m)
        if quality["ess"] >= MIN_ESS or attempt:
            break
        m *= 4
    pick = _systematic(w.ravel(), n_samples, rng)
    s_idx = pick // m
    z = z.reshape(-1, z.shape[-1])[pick]
    theta_s = {k: v[s_idx] for k, v in theta.items()}
    post = IndividualPosterior(spec=built.spec, patient=data, source=label, theta=theta_s, z=z,
                               parameters=pd.DataFrame(), map=mode, quality=quality)
    post.parameters = _parameter_table(built, post)
    post.problems = _problems(post, source, data)
    return post


def _systematic(w: np.ndarray, n: int, rng) -> np.ndarray:
    """Systematic resampling: ``n`` indices with expected counts ``n w`` (lowest variance of the usual schemes)."""
    edges = np.cumsum(w)
    edges[-1] = 1.0
    return np.searchsorted(edges, (rng.random() + np.arange(n)) / n)


def _quality(w, population: str, n_draws: int, m: int) -> dict:
    ess = float(1.0 / (w ** 2).sum())
    per_draw = w.sum(axis=1)
    with np.errstate(divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")    # arviz warns about its own k estimate; we report it
        k = float(np.ravel(psislw(np.maximum(np.log(w.ravel()), -1e300))[1])[0])
    return {"n_draws": n_draws, "n_proposals": m, "ess": ess, "ess_population": float(1.0 / (per_draw ** 2).sum()),
            "pareto_k": k, "population": population}


def _parameter_table(built, post: IndividualPosterior) -> pd.DataFrame:
    draws = post.draws_for(built)
    out = evaluate_draws(built, draws, tuple(f"individual.{p}" for p in built.spec.parameters))
    table = pd.DataFrame({p: out[f"individual.{p}"][:, 0] for p in built.spec.parameters})
    eta = patient_eta(built, draws)
    for i, p in enumerate(built.spec.eta_parameters):
        table[f"ETA_{p}"] = eta[:, i]
    for name, kappa in patient_kappa(built, draws).items():
        table[f"KAPPA_{name}"] = kappa
    return table


def _problems(post: IndividualPosterior, source, data) -> list[str]:
    q, out = post.quality, []
    if q["ess"] < MIN_ESS:
        out.append(f"the individual posterior rests on {q['ess']:.0f} effective samples (of "
                   f"{q['n_draws'] * q['n_proposals']} weighted): credible intervals and probabilities are rough; "
                   f"increase n_proposals")
    if q["pareto_k"] > K_MAX:
        out.append(f"importance weights are heavy-tailed (Pareto k = {q['pareto_k']:.2f} > {K_MAX}): the levels "
                   f"are far from what the population expects (check units, times and doses) or the proposal "
                   f"misses the posterior; the estimates may be unreliable")
    if q["population"] == "update" and q["ess_population"] < 0.1 * q["n_draws"]:
        out.append(f"the patient's levels concentrate the weight on {q['ess_population']:.0f} of "
                   f"{q['n_draws']} population draws: the patient is atypical for this population")
    if not post.map.converged:
        out.append("the MAP optimisation did not converge; the MAP estimates are approximate")
    if data.n_obs == 0:
        out.append("the patient has no measured level: the individual posterior is the population's")
    if isinstance(source, ModelSpec):
        wide = [p for p, par in source.parameters.items() if par.prior is not None and par.fixed is None
                and par.prior.dist == "lognormal" and par.prior.args["sigma"] > 0.5]
        if wide:
            out.append(f"the priors of {', '.join(wide)} are wide (log-SD > 0.5): a spec stands in for a population "
                       f"only with informative (published) priors")
    elif getattr(source, "problems", None):
        out.append(f"the population fit has convergence problems ({len(source.problems)}): see its diagnostics")
    return out
