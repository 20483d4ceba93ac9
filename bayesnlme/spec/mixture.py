"""A mixture of subpopulations on one parameter (NONMEM's ``$MIX``): the ``[mixture]`` table.

Each subject belongs to one of ``K`` subpopulations (components), unobserved.  In component ``k`` the
typical value of the mixed parameter ``P`` is ``TV_k = TV(P) * ratio_k`` with ``ratio_1 = 1`` and
``1 > ratio_2 > ... > ratio_K > 0`` (ordered, so the components cannot swap labels: component 1 has the
highest typical value).  The subject's ETA is the same whatever its component.  The probability of
component ``k`` is ``p_mix_k``; with a covariate ``X`` (baseline value, numeric) the log-odds of each
component against component 1 change linearly: ``log(p_ik / p_i1) = log(p_mix_k / p_mix_1) +
beta_k (X_i - reference)`` (for two components ``logit(p_i2) = logit(p_mix_2) + beta (X_i - reference)``).

Reported parameters: ``ratio_<P>_<k>`` (``TV_k / TV(P)``, k >= 2), ``p_mix_<k>`` (k = 1..K, at the
covariate's reference value) and ``<X>_on_p_mix_<k>`` (k >= 2) with a covariate.  For ``K > 2`` the
sampled variables are the successive ratios ``ratio_step_<P>_<k> = TV_k / TV_(k-1)``.

TOML::

    [mixture]
    parameter = "CL"
    components = 2
    ratio_prior = { dist = "beta", alpha = 1.5, beta = 1.5 }   # TV_k / TV_(k-1), support in (0, 1)
    p_prior = { dist = "beta", alpha = 1, beta = 1 }          # p_mix_2 (K = 2); K > 2: dist = "dirichlet"
    covariate = "GENO"                                        # optional, with reference and covariate_prior
    reference = 0
    covariate_prior = { dist = "normal", mu = 0, sigma = 2 }
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bayesnlme.errors import SpecError
from bayesnlme.spec.priors import Prior, check_keys, number

MIXTURE_KEYS = ("parameter", "components", "ratio_prior", "p_prior", "covariate", "reference",
                "covariate_prior")
DEFAULT_RATIO_PRIOR = Prior("beta", {"alpha": 1.5, "beta": 1.5})
DEFAULT_COVARIATE_PRIOR = Prior("normal", {"mu": 0.0, "sigma": 2.0})


@dataclass(frozen=True)
class Mixture:
    """The ``[mixture]`` table: ``components`` subpopulations differing in the typical value of ``parameter``.

    Attributes
    ----------
    parameter : str
        The mixed parameter (log-normal IIV).
    components : int
        Number of subpopulations, K >= 2.
    ratio_prior : Prior
        Prior of each successive ratio ``TV_k / TV_(k-1)`` (k >= 2); its support must lie in (0, 1).
    p_prior : Prior or None
        Prior of ``p_mix_2`` for K = 2 (support in (0, 1)); None for K > 2.
    dirichlet_alpha : tuple of float or None
        Concentrations of the Dirichlet prior of ``(p_mix_1, ..., p_mix_K)`` for K > 2.
    covariate : str or None
        Baseline covariate shifting the log-odds of membership.
    reference : float
        Covariate value at which the mixing probabilities are ``p_mix_k``.
    covariate_prior : Prior or None
        Prior of each ``<X>_on_p_mix_<k>`` (log-odds per unit of the covariate).
    """
    parameter: str
    components: int = 2
    ratio_prior: Prior = DEFAULT_RATIO_PRIOR
    p_prior: Prior | None = None
    dirichlet_alpha: tuple | None = None
    covariate: str | None = None
    reference: float = 0.0
    covariate_prior: Prior | None = None

    @property
    def ratio_names(self) -> list[str]:
        """``ratio_<P>_<k>``: typical value of component k over component 1's, k = 2..K."""
        return [f"ratio_{self.parameter}_{k}" for k in range(2, self.components + 1)]

    @property
    def step_names(self) -> list[str]:
        """The sampled successive ratios (K > 2; for K = 2 the one ratio is sampled directly)."""
        if self.components == 2:
            return self.ratio_names
        return [f"ratio_step_{self.parameter}_{k}" for k in range(2, self.components + 1)]

    @property
    def p_names(self) -> list[str]:
        """``p_mix_<k>``, k = 1..K."""
        return [f"p_mix_{k}" for k in range(1, self.components + 1)]

    @property
    def covariate_names(self) -> list[str]:
        """``<X>_on_p_mix_<k>``, k = 2..K (empty without a covariate)."""
        if self.covariate is None:
            return []
        return [f"{self.covariate}_on_p_mix_{k}" for k in range(2, self.components + 1)]

    def parameter_names(self) -> list[str]:
        """The mixture's reported population parameters, in summary order."""
        return self.ratio_names + self.p_names + self.covariate_names

    def to_dict(self) -> dict:
        d = {"parameter": self.parameter, "components": self.components,
             "ratio_prior": self.ratio_prior.to_dict()}
        if self.p_prior is not None:
            d["p_prior"] = self.p_prior.to_dict()
        else:
            d["p_prior"] = {"dist": "dirichlet", "alpha": list(self.dirichlet_alpha)}
        if self.covariate is not None:
            d.update(covariate=self.covariate, reference=self.reference,
                     covariate_prior=self.covariate_prior.to_dict())
        return d


def _unit_interval(prior: Prior, where: str) -> Prior:
    lo, hi = prior.support
    if prior.is_fixed or lo < 0 or hi > 1:
        raise SpecError(f"{where}: must be a distribution on (0, 1) (beta, or uniform/truncatednormal within "
                        f"[0, 1]), got {prior.dist} with support ({lo:g}, {hi:g})")
    return prior


def _dirichlet(d: dict, k: int, where: str) -> tuple:
    check_keys(d, ("dist", "alpha"), where)
    alpha = d.get("alpha", 1.0)
    alpha = [alpha] * k if not isinstance(alpha, list) else alpha
    if len(alpha) != k:
        raise SpecError(f"{where}: dirichlet alpha needs one value per component ({k}), got {len(alpha)}")
    return tuple(number(a, f"{where}, alpha", positive=True) for a in alpha)


def mixture_from_dict(d, source: str) -> Mixture:
    """Read and check a ``[mixture]`` table (everything that does not need the other tables)."""
    where = f"{source}: mixture"
    check_keys(d, MIXTURE_KEYS, where)
    if "parameter" not in d or not isinstance(d["parameter"], str):
        raise SpecError(f"{where}: missing 'parameter', the name of the parameter drawn from the subpopulations")
    k = d.get("components", 2)
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise SpecError(f"{where}, components: must be an integer >= 2, got {k!r}")
    ratio = _unit_interval(Prior.from_dict(d["ratio_prior"], f"{where}, ratio_prior"), f"{where}, ratio_prior") \
        if "ratio_prior" in d else DEFAULT_RATIO_PRIOR
    p_prior, alpha = None, None
    pd_ = d.get("p_prior", {"dist": "beta", "alpha": 1.0, "beta": 1.0} if k == 2 else {"dist": "dirichlet"})
    if isinstance(pd_, dict) and str(pd_.get("dist", "")).lower() == "dirichlet":
        alpha = _dirichlet(pd_, k, f"{where}, p_prior")
    elif k > 2:
        raise SpecError(f"{where}, p_prior: with {k} components the mixing probabilities need "
                        f"{{ dist = \"dirichlet\", alpha = ... }}")
    else:
        p_prior = _unit_interval(Prior.from_dict(pd_, f"{where}, p_prior"), f"{where}, p_prior")
    cov = d.get("covariate")
    if cov is None:
        extra = [x for x in ("reference", "covariate_prior") if x in d]
        if extra:
            raise SpecError(f"{where}: {', '.join(extra)} given without 'covariate'")
        return Mixture(d["parameter"], k, ratio, p_prior, alpha)
    if not isinstance(cov, str):
        raise SpecError(f"{where}, covariate: must be a column name, got {cov!r}")
    if "reference" not in d:
        raise SpecError(f"{where}: a covariate on the mixing probabilities needs 'reference', the covariate "
                        f"value at which they are p_mix_k")
    ref = number(d["reference"], f"{where}, reference")
    cprior = (Prior.from_dict(d["covariate_prior"], f"{where}, covariate_prior") if "covariate_prior" in d
              else DEFAULT_COVARIATE_PRIOR)
    if cprior.is_fixed or not math.isinf(cprior.support[0]):
        raise SpecError(f"{where}, covariate_prior: a change in log-odds needs a prior on the whole line "
                        f"(normal), got {cprior.dist}")
    return Mixture(d["parameter"], k, ratio, p_prior, alpha, cov, ref, cprior)


def check_mixture(mix: Mixture, parameters: dict) -> None:
    """Check the mixture against the spec's parameters: the mixed one exists and has log-normal IIV."""
    if mix.parameter not in parameters:
        raise SpecError(f"mixture: parameter {mix.parameter!r} is not in the model "
                        f"(parameters: {', '.join(parameters)})")
    if parameters[mix.parameter].iiv != "lognormal":
        raise SpecError(f"mixture: parameter {mix.parameter} needs iiv = \"lognormal\" (the components "
                        f"scale its typical value), got {parameters[mix.parameter].iiv!r}")
