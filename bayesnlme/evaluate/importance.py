"""Importance sampling over the random effects: the Student-t proposal per subject, the map from standard
normal ``z`` to ETA/KAPPA draws, and the per-subject conditional log-likelihood it weights.

Shared by the marginal likelihood (:mod:`bayesnlme.evaluate.likelihood`) and the integrated
subject-level LOO (:mod:`bayesnlme.evaluate.subject_loo`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytensor
from scipy.special import gammaln

from bayesnlme.build import occasions
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.predict import cached, draw_block, evaluate_draws

#: Degrees of freedom of the Student-t importance proposal.
PROPOSAL_DF = 5.0
#: Factor applied to the proposal covariance (a little wider than the target).
PROPOSAL_INFLATION = 1.2
_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class RandomEffects:
    """How a subject's random effects are stacked into the standardised vector ``z`` it is integrated over.

    ``z`` (n_sub, n_re) holds first the ETAs (the columns of the non-centred ``eta_z``, then
    ``eta_<P> / omega_<P>`` for each centred parameter P, in ``spec.eta_parameters`` order), then,
    with inter-occasion variability, the occasion effects: ``n_iov`` columns of ``kappa_z`` for each
    of the subject's occasions in order of appearance, padded to the largest number of occasions
    (padding columns enter no prediction; as standard normals under the prior they integrate to 1).
    """
    names: tuple          # free variables that are random effects
    centred: tuple        # centred ETA parameters
    n_eta: int
    n_iov: int = 0
    n_slots: int = 0      # occasions of the subject with the most
    occ_subject: np.ndarray = None   # (n_occ,) subject of each occasion (coords OCC)
    occ_slot: np.ndarray = None      # (n_occ,) its position among the subject's occasions

    @property
    def n_re(self) -> int:
        return self.n_eta + self.n_iov * self.n_slots


def random_effects(built) -> RandomEffects:
    """The random-effect layout of a built model (:class:`RandomEffects`); cached on the model."""
    return cached(built, "random_effects", lambda: _layout(built))


def _layout(built) -> RandomEffects:
    free = {rv.name for rv in built.model.free_RVs}
    centred = tuple(p for p in built.spec.eta_parameters if built.spec.parameters[p].centered)
    names = [n for n in ["eta_z"] if n in free] + [f"eta_{p}" for p in centred]
    info = RandomEffects(tuple(names), centred, len(built.spec.eta_parameters))
    if "kappa_z" in free:
        occ_index, _ = occasions(built.data)
        n_occ = int(occ_index.max()) + 1
        first = np.unique(occ_index, return_index=True)[1]          # first record of each occasion
        occ_subject = built.data.obs_subject[first]
        occ_slot = np.zeros(n_occ, int)
        for s in np.unique(occ_subject):
            occ_slot[occ_subject == s] = np.arange((occ_subject == s).sum())
        info = RandomEffects(tuple(names + ["kappa_z"]), centred, info.n_eta,
                             n_iov=int(built.model["kappa_z"].shape[1].eval()), n_slots=int(occ_slot.max()) + 1,
                             occ_subject=occ_subject, occ_slot=occ_slot)
    return info


def random_effect_names(built) -> tuple[list[str], list[str]]:
    """The free variables that are random effects (ETAs and occasion effects), and the centred parameters."""
    info = random_effects(built)
    return list(info.names), list(info.centred)


def _omega_of(built, p: str, draws: dict):
    """OMEGA (SD) of centred parameter P: its draws (leading dim) or the fixed value."""
    fixed = built.spec.parameters[p].omega_fixed
    return np.asarray(draws[f"omega_{p}"], float) if fixed is None else np.asarray(float(fixed))


def z_to_draws(built, z: np.ndarray, draws: dict) -> dict:
    """Population draws (leading dim K) plus the random effects for standardised ``z`` (K, n_sub, n_re)."""
    info = random_effects(built)
    n_nc = info.n_eta - len(info.centred)
    out = dict(draws)
    if n_nc:
        out["eta_z"] = z[..., :n_nc]
    for j, p in enumerate(info.centred):
        omega = _omega_of(built, p, draws)
        out[f"eta_{p}"] = z[..., n_nc + j] * (omega[:, None] if omega.ndim else omega)
    if info.n_iov:
        slots = z[..., info.n_eta:].reshape(*z.shape[:-1], info.n_slots, info.n_iov)
        out["kappa_z"] = slots[..., info.occ_subject, info.occ_slot, :]
    return out


def posterior_z(result, seed: int = 0) -> np.ndarray:
    """Posterior draws of the standardised random effects ``z``: shape (n_draws, n_sub, n_re).

    Padding columns of subjects with fewer occasions are standard normal (``seed``): their
    posterior is their prior.
    """
    built = result.built
    info = random_effects(built)
    cols = [result.posterior_draws("eta_z")] if "eta_z" in info.names else []
    omegas = {f"omega_{p}": result.posterior_draws(f"omega_{p}") for p in info.centred
              if built.spec.parameters[p].omega_fixed is None}
    for p in info.centred:
        omega = _omega_of(built, p, omegas)
        cols.append((result.posterior_draws(f"eta_{p}") / (omega[:, None] if omega.ndim else omega))[..., None])
    if info.n_iov:
        kappa = result.posterior_draws("kappa_z")                     # (D, n_occ, n_iov)
        slots = np.random.default_rng(seed).standard_normal(
            (len(kappa), built.data.n_subjects, info.n_slots, info.n_iov))
        slots[:, info.occ_subject, info.occ_slot, :] = kappa
        cols.append(slots.reshape(len(kappa), built.data.n_subjects, -1))
    return np.concatenate(cols, axis=2)


@dataclass
class Proposal:
    """Per-subject multivariate Student-t proposals in z-space."""
    mean: np.ndarray   # (n_sub, n_eta)
    chol: np.ndarray   # (n_sub, n_eta, n_eta), lower
    df: float = PROPOSAL_DF

    @classmethod
    def from_draws(cls, z: np.ndarray, inflation: float = PROPOSAL_INFLATION) -> "Proposal":
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

    def adapted(self, z: np.ndarray, log_w: np.ndarray, inflation: float = PROPOSAL_INFLATION) -> "Proposal":
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
        return Proposal(mean, chol, self.df)


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


def base_draws(rng: np.random.Generator, k: int, n_sub: int, d: int, df: float = PROPOSAL_DF) -> tuple:
    return rng.standard_normal((k, n_sub, d)), rng.chisquare(df, size=(k, n_sub))


def subject_loglik(built, draws: dict) -> np.ndarray:
    """``log p(y_i | draw)`` per subject at stacked draws of all free RVs: shape (K, n_sub).

    Sums the model's own per-record log-likelihood (:attr:`BuiltModel.loglik`, the graph of DV's
    density in the fit: every observation model, censored records included) over each subject's records.
    """
    data = built.data
    n, n_sub = len(next(iter(draws.values()))), data.n_subjects
    step = draw_block(built)   # draws per block: (draws x records) arrays stay small for a large population
    out = np.empty((n, n_sub))
    for start in range(0, n, step):
        block = {name: v[start:start + step] for name, v in draws.items()}
        ll = evaluate_draws(built, block, ("loglik",))["loglik"]
        ll = np.where(np.isnan(ll), -np.inf, ll)
        k = ll.shape[0]
        idx = (data.obs_subject[None, :] + n_sub * np.arange(k)[:, None]).ravel()
        with np.errstate(invalid="ignore"):
            out[start:start + k] = np.bincount(idx, weights=ll.ravel(), minlength=k * n_sub).reshape(k, n_sub)
    return out


@dataclass
class Population:
    """The model's population free variables and their unconstrained (sampler) scale."""
    names: list
    shapes: list
    sizes: list
    to_natural: object       # f(*unconstrained) -> list of natural values
    to_unconstrained: object  # f(*natural) -> list of unconstrained values
    log_prior: object        # f(*unconstrained) -> log prior density of the natural values
    has_eta: bool
    n_eta: int = 0           # length of a subject's standardised random-effect vector z (ETAs, KAPPAs)

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


def population(built) -> Population:
    """Compile (once per built model) the transforms and log prior of the population variables."""
    return cached(built, "population", lambda: _population(built))


def _population(built) -> Population:
    model = built.model
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
    n_eta = random_effects(built).n_re
    return Population(names=[rv.name for rv in pop], shapes=shapes,
                      sizes=[int(np.prod(s)) for s in shapes], to_natural=to_nat,
                      to_unconstrained=to_unc, log_prior=log_prior, has_eta=bool(random), n_eta=n_eta)


def check_theta(info: Population, theta) -> dict:
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
    info = population(result.built)
    return {n: np.median(result.posterior_draws(n), axis=0) for n in info.names}
