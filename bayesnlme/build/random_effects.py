"""Random effects between subjects (ETA): one model, two parameterisations.

``"subject"`` -- every model's own, the one fits are evaluated with (:mod:`bayesnlme.evaluate`): each
subject's standard-normal ``eta_z`` (dims ID x eta_parameter), ``ETA = z * omega`` for a diagonal
element, ``ETA = z @ L.T`` for an OMEGA block (``L`` its Cholesky factor: an LKJ prior on the
correlations, the members' omega priors on the SDs, via ``pm.LKJCholeskyCov``); a ``centered``
parameter samples ``eta_<P> ~ Normal(0, omega)`` directly.

``"population"`` -- what NUTS samples (:func:`bayesnlme.inference.fit.fit_model`): the same joint
distribution of typical values, OMEGAs and ETAs, with the quantities the data inform directly as
coordinates.  In the subject parameterisation the data fix ``a + omega z_i`` for each subject (``a``
the typical value on its ETA's scale: log TV, logit TV or TV), so a typical value can only move when
every subject's ``z`` moves with it, and an OMEGA only when every ``z`` is rescaled: with a diagonal
mass matrix NUTS needs many steps along those directions, and the typical values and OMEGAs of
data-rich populations mix slowly (bulk ESS ~400 of 4,000 draws at 1,200 subjects with 10 samples
each).  Here, for each non-centred ETA of a population of ``n`` subjects::

    eta_mean  free                 the population mean of a + ETA_i (what the data fix)
    eta_w     ~ Normal(0, 1)       a = eta_mean - omega eta_w / sqrt(n) (the typical value, derived)
    eta_ss    free, > 0            the ETAs' sum of squared deviations from their mean
    eta_rho   ~ ChiSquared(n - 1)  omega = sqrt(eta_ss / eta_rho) (derived)
    eta_dir   ~ ZeroSumNormal(1)   over subjects: the deviations' direction v / |v|
    ETA_i = eta_mean - a + sqrt(eta_ss) v_i / |v|

and the priors of the derived typical value and OMEGA enter as a potential with the change of
variables' Jacobian.  This is exact: for ``z ~ N(0, I_n)``, ``z = zbar 1 + u`` with ``w = sqrt(n) zbar ~
N(0, 1)`` independent of the zero-sum ``u``, and ``u = |u| d`` with ``rho = |u|^2 ~ chi2(n - 1)``
independent of the uniform direction ``d``; the map ``(a, omega) -> (eta_mean, eta_ss) = (a + omega w /
sqrt(n), omega^2 rho)`` at fixed ``(w, rho)`` has Jacobian ``2 omega rho``.  When the data inform a
parameter well, eta_mean and eta_ss are pinned and eta_w and eta_rho are nearly their own standard
distributions (no long diagonal ridge); when they inform it poorly, nothing's scale depends on OMEGA
(no funnel as OMEGA goes to 0).  A typical value that is fixed, or whose prior does not cover its
whole scale (a uniform prior on a log-normal parameter), keeps its own variable, with the ETAs' mean
``a + omega eta_w / sqrt(n)``; an OMEGA that is fixed, or whose prior is bounded above, keeps its own
variable, with ``eta_ss ~ Gamma((n - 1) / 2, rate 1 / (2 omega^2))``; an OMEGA block's members take
``eta_mean`` and ``eta_w`` (``a = eta_mean - L eta_w / sqrt(n)``) with ``ETA_i - mean = L v_i``, L
sampled as in the subject parameterisation.  ``eta_z = ETA / omega`` (``L^-1 ETA``) is a deterministic,
so a fit's posterior holds the subject parameterisation's variables and every evaluation reads them; the
sampler's own coordinates (:data:`SAMPLER_ONLY`) are dropped.  Measured (``docs/benchmarks.md``):
min bulk ESS of the population parameters 321 -> 2,177 at 1,200 simulated subjects with 10 samples each
(84 against 76 s of sampling), 1,134 -> 1,882 on theophylline (17 against 30 leapfrog steps a draw); no
loss with two samples a subject (12 and 300 simulated subjects).  Centred parameters, IOV and
``[mixture]`` models keep the subject parameterisation, and so do populations of fewer than
:data:`POPULATION_MIN` subjects.

Covariate effects couple the same way: the data fix ``log TV + sum_j theta_j x_ij + ETA_i``, so a theta
of a free variable moves only with every ETA (WT on CL at 300 simulated subjects: bulk ESS 611 against
~6,000 for CL).  A log-normal parameter whose effects are linear in their thetas on the log scale
(:func:`covariate_designs`) writes its typical value and those thetas as one regression
(:func:`_regression`): the least-squares coefficients of ``a + ETA`` on the design ``[1, x]`` are free,
the ETAs' residual lies in the complement of the design's columns (Householder reflections, O(n m)), and
``eta_ss / omega^2 ~ chi2(n - m)``; with only the intercept this is the form above.  Measured: WT on CL
ESS 611 -> 5,939 at 300 subjects (``benchmarks/covariate_mixing.py``).
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from scipy.special import ndtri

from bayesnlme.build.covariates import covariate_values, log_factor
from bayesnlme.build.priors import estimate, prior_dist, prior_logp, prior_rv
from bayesnlme.data import NMData
from bayesnlme.spec import ModelSpec

PARAMETERISATIONS = ("subject", "population")
POPULATION_MIN = 8                  # subjects; fewer: the subject parameterisation
SAMPLER_ONLY = ("eta_mean", "eta_w", "eta_ss", "eta_rho", "eta_dir")   # the population parameterisation's own
#: ... and per parameter with covariate effects (:func:`covariate_designs`): ``eta_beta_<P>``, ``eta_wb_<P>``,
#: ``eta_u_<P>``
SAMPLER_PREFIXES = ("eta_beta_", "eta_wb_", "eta_u_")
_LINEAR_KINDS = ("power", "exponential", "categorical")   # log factor linear in the thetas


def sampler_only(name: str) -> bool:
    """Whether ``name`` is one of the population parameterisation's own coordinates (dropped after sampling)."""
    return name in SAMPLER_ONLY or name.startswith(SAMPLER_PREFIXES)


def covariate_designs(spec: ModelSpec, data: NMData, switches: dict | None = None) -> dict:
    """The covariate effects the population parameterisation samples through their regression estimate.

    For a log-normal parameter ``P`` whose typical value is derived (:func:`random_effects`), the data fix
    each subject's ``log TV + sum_j theta_j x_ij + ETA_i``; with the thetas as free variables, a theta can
    only move when every subject's ETA moves with it, as the typical value could in the subject
    parameterisation (WT on CL at 300 subjects: bulk ESS 611 of 4,000 draws against ~6,000 for CL).  The
    effects whose log factor is linear in their thetas (power, exponential, categorical) - on baseline
    covariates, estimated with a normal prior, owning their thetas, not switched and not shrunk - are
    sampled with the typical value as one regression (see :func:`random_effects`).

    Returns
    -------
    dict
        ``{P: (theta names, columns, priors)}``: ``columns`` (n_subjects, k) the factor's derivative in each
        theta (``log(WT / ref)`` for a power effect); only parameters with at least one such effect and a
        design ``[1, columns]`` of full rank.
    """
    if spec.shrinkage is not None or spec.mixture is not None:
        return {}
    in_block = _block_members(spec)
    out = {}
    for p in spec.eta_parameters:
        par = spec.parameters[p]
        if par.iiv != "lognormal" or par.centered or p in in_block or not _derived_tv(par):
            continue
        names, cols, priors = [], [], []
        for eff in spec.covariates:
            if (eff.parameter != p or eff.kind not in _LINEAR_KINDS or eff.time_varying or eff.shared_with
                    or (switches and eff.label in switches) or eff.prior is None or eff.prior.dist != "normal"
                    or eff.prior.is_fixed or any(f is not None for f in eff.fixed_values())):
                continue
            x = covariate_values(eff, data)   # baseline: time-varying effects are left out above
            k = len(eff.effect_names())
            for j, name in enumerate(eff.effect_names()):
                names.append(name)
                priors.append(eff.prior)
                cols.append(np.asarray(log_factor(eff, x, list(np.eye(k)[j]), np), dtype=float))
        if names:
            design = np.column_stack([np.ones(data.n_subjects), *cols])
            if design.shape[0] - design.shape[1] >= 2 and np.linalg.matrix_rank(design) == design.shape[1]:
                out[p] = (names, design[:, 1:], priors)
    return out


def omega_rv(p: str, par, init: dict):
    """OMEGA's SD for ``p``: a free variable ``omega_<P>`` with its prior, or the fixed value."""
    if par.omega_fixed is not None:
        return pt.as_tensor_variable(par.omega_fixed)
    init[f"omega_{p}"] = min(par.omega.median(), 0.3)
    return prior_rv(f"omega_{p}", par.omega)


def uses_population(spec: ModelSpec, n_sub: int) -> bool:
    """Whether the population parameterisation applies to ``spec`` on ``n_sub`` subjects."""
    return (spec.mixture is None and n_sub >= POPULATION_MIN
            and any(not spec.parameters[p].centered for p in spec.eta_parameters))


def random_effects(spec: ModelSpec, n_sub: int, init: dict, parameterisation: str = "subject",
                   designs: dict | None = None) -> tuple[dict, dict]:
    """ETA per parameter, shape (n_subjects,), and the typical values made here.

    The subject parameterisation makes no typical value (``{}``: the caller makes them with
    :func:`~bayesnlme.build.priors.estimate`); the population one (where :func:`uses_population`)
    derives those of the non-centred ETA parameters (deterministics named by their symbols), and the
    thetas of ``designs`` (:func:`covariate_designs`; named by their effects: the caller's covariate
    factors use them).  ``init`` receives the start values of the variables made here (ETA = 0 and
    typical values at their prior medians, before the sampler's per-chain jitter).
    """
    names = spec.eta_parameters
    if not names:
        return {}, {}
    if parameterisation == "population" and uses_population(spec, n_sub):
        return _population(spec, n_sub, init, designs or {})
    z_names = [p for p in names if not spec.parameters[p].centered]
    col = {}
    if z_names:
        z_dim = "eta_parameter" if z_names == names else "eta_z_parameter"
        # a static shape beside the dims: the sampler's compile needs no shape-inference function
        z = pm.Normal("eta_z", 0.0, 1.0, dims=("ID", z_dim), shape=(n_sub, len(z_names)))
        init["eta_z"] = np.zeros((n_sub, len(z_names)))
        col = {p: z[:, i] for i, p in enumerate(z_names)}
    eta = {}
    in_block = _block_members(spec)
    for p in names:
        if p in in_block:
            continue
        par = spec.parameters[p]
        omega = omega_rv(p, par, init)
        if par.centered:
            eta[p] = pm.Normal(f"eta_{p}", 0.0, omega, dims="ID", shape=(n_sub,))
            init[f"eta_{p}"] = np.zeros(n_sub)
        else:
            eta[p] = col[p] * omega
    for members, chol in _block_factors(spec, init):
        correlated = pt.stack([col[p] for p in members], axis=1) @ chol.T   # rows ~ N(0, OMEGA)
        eta.update({p: correlated[:, i] for i, p in enumerate(members)})
    pm.Deterministic("ETA", pt.stack([eta[p] for p in names], axis=1), dims=("ID", "eta_parameter"))
    return eta, {}


def _block_members(spec: ModelSpec) -> set:
    return {p for block in spec.omega_blocks for p in block} | {
        p for block in spec.fixed_omega_blocks for p in block.parameters}


def _block_factors(spec: ModelSpec, init: dict) -> list:
    """``(members, L)`` per OMEGA block: estimated blocks first (their variables made here), then fixed ones."""
    out = []
    for block in spec.omega_blocks:
        k = len(block)
        packed = np.zeros(k * (k + 1) // 2)   # start at OMEGA = diag(omega0^2), no correlation
        packed[[i * (i + 1) // 2 + i for i in range(k)]] = [
            min(spec.parameters[p].omega.median(), 0.3) for p in block]
        init[f"chol_{'_'.join(block)}"] = packed
        chol, corr, sds = pm.LKJCholeskyCov(
            f"chol_{'_'.join(block)}", n=len(block), eta=spec.lkj_eta, compute_corr=True,
            sd_dist=prior_dist([spec.parameters[p].omega for p in block]))
        for i, p in enumerate(block):
            pm.Deterministic(f"omega_{p}", sds[i])
            for j in range(i + 1, len(block)):
                pm.Deterministic(f"corr_{p}_{block[j]}", corr[i, j])
        out.append((list(block), chol))
    for block in spec.fixed_omega_blocks:   # OMEGA known: a constant Cholesky factor, nothing sampled
        out.append((list(block.parameters), pt.as_tensor_variable(
            block.cholesky([spec.parameters[p].omega_fixed for p in block.parameters]))))
    return out


def _dim(model, name: str, labels: list, full: list, full_dim: str) -> str:
    if labels == full:
        return full_dim
    model.add_coord(name, labels)
    return name


# priors whose support is the whole image of the ETA's scale (TV > 0, 0 < TV < 1, any TV), and OMEGA priors
# on (0, inf): a typical value or OMEGA derived from the population's coordinates can take any such value
_SUPPORT = {"lognormal": {"lognormal", "halfnormal", "halfcauchy", "halfstudentt", "exponential"},
            "logit": {"beta"}, "normal": {"normal"}}
_OMEGA_SUPPORT = {"halfnormal", "halfcauchy", "halfstudentt", "exponential", "lognormal"}


def _derived_tv(par) -> bool:
    """Whether the typical value is derived from ``eta_mean`` (else a constant, or a free variable of its own
    with the ETAs' mean non-centred)."""
    return par.fixed is None and not par.prior.is_fixed and par.prior.dist in _SUPPORT.get(par.iiv, ())


def _derived_omega(par) -> bool:
    return par.omega_fixed is None and par.omega.dist in _OMEGA_SUPPORT


def _population(spec: ModelSpec, n: int, init: dict, designs: dict) -> tuple[dict, dict]:
    model = pm.modelcontext(None)
    names = spec.eta_parameters
    z_names = [p for p in names if not spec.parameters[p].centered]
    z_dim = "eta_parameter" if z_names == names else "eta_z_parameter"
    in_block = _block_members(spec)
    diag = [p for p in z_names if p not in in_block]
    free_om = [p for p in diag if _derived_omega(spec.parameters[p])]
    # the ETAs' degrees of freedom about their mean (about their covariate regression: :func:`_regression`)
    dof = {p: n - 1 - (len(designs[p][0]) if p in designs else 0) for p in diag}
    omega, potential = {}, []
    if diag:   # the scale of each diagonal ETA: its sum of squares and a chi-square
        ss = pm.HalfFlat("eta_ss", dims=_dim(model, "eta_ss_parameter", diag, names, "eta_parameter"),
                         shape=(len(diag),))
        om0 = np.array([spec.parameters[p].omega_fixed if spec.parameters[p].omega_fixed is not None
                        else min(spec.parameters[p].omega.median(), 0.3) for p in diag])
        init["eta_ss"] = np.array([dof[p] for p in diag]) * om0**2 / 3   # ETA SD omega0 / sqrt(3), as the jitter
    if free_om:
        rho = pm.ChiSquared("eta_rho", nu=np.array([float(dof[p]) for p in free_om]),
                            dims=_dim(model, "eta_rho_parameter", free_om, names, "eta_parameter"),
                            shape=(len(free_om),))
        init["eta_rho"] = np.array([float(dof[p]) for p in free_om])
    for i, p in enumerate(diag):
        par = spec.parameters[p]
        if p in free_om:
            omega[p] = pm.Deterministic(f"omega_{p}", pt.sqrt(ss[i] / rho[free_om.index(p)]))
            # omega's prior, and the Jacobian of (omega) -> (eta_ss) at fixed eta_rho: omega / (2 eta_ss)
            potential.append(prior_logp(par.omega, omega[p]) + pt.log(omega[p]) - pt.log(ss[i]))
        else:   # a fixed OMEGA, or one whose prior is bounded above: its own variable, eta_ss given it
            omega[p] = omega_rv(p, par, init)
            potential.append(pm.logp(pm.Gamma.dist(alpha=dof[p] / 2, beta=1 / (2 * omega[p] ** 2)), ss[i]))
    for p in names:
        if spec.parameters[p].centered:
            omega[p] = omega_rv(p, spec.parameters[p], init)
    blocks = _block_factors(spec, init)
    plain = [p for p in z_names if p not in designs]   # one mean each (and the block members)
    plain_dim = z_dim if plain == z_names or not plain else _dim(model, "eta_w_parameter", plain, names,
                                                                "eta_parameter")
    est = [p for p in plain if _derived_tv(spec.parameters[p])]
    if est:
        mean_free = pm.Flat("eta_mean", dims=_dim(model, "eta_mean_parameter", est, names, "eta_parameter"),
                            shape=(len(est),))
        init["eta_mean"] = np.array([_start_value(spec, p, init) for p in est])
    shift = {}
    if plain:
        w = pm.Normal("eta_w", 0.0, 1.0, dims=plain_dim, shape=(len(plain),))
        init["eta_w"] = np.zeros(len(plain))
        v = pm.ZeroSumNormal("eta_dir", sigma=1.0, dims=(plain_dim, "ID"), shape=(len(plain), n))
        init["eta_dir"] = _spread(len(plain), n)
        shift = {p: omega[p] * w[plain.index(p)] / np.sqrt(n) for p in diag if p in plain}   # mean ETA
        for members, chol in blocks:
            block_shift = chol @ w[[plain.index(p) for p in members]] / np.sqrt(n)
            shift.update({p: block_shift[i] for i, p in enumerate(members)})
    typical = {}
    for p in plain:
        par = spec.parameters[p]
        if p in est:
            a = mean_free[est.index(p)] - shift[p]
            typical[p] = pm.Deterministic(p, _from_eta_scale(par.iiv, a))
            potential.append(prior_logp(par.prior, typical[p]) + _log_jacobian(par.iiv, a))
        else:   # fixed, or a prior with bounded support: its own variable (or constant), the mean non-centred
            typical[p] = estimate(p, par.prior, par.fixed, init)
    eta, z = {}, {}
    for p in diag:
        if p in designs:
            eta[p] = _regression(spec, p, designs[p], omega[p], ss[diag.index(p)], init, typical, potential)
        else:
            k = plain.index(p)
            eta[p] = shift[p] + pt.sqrt(ss[diag.index(p)]) * v[k] / pt.sqrt(pt.sum(v[k] ** 2))
        z[p] = eta[p] / omega[p]
    for members, chol in blocks:
        idx = [plain.index(p) for p in members]
        dev = v[idx].T                                         # (n, k): rows ~ N(0, I) before L
        correlated = pt.stack([shift[p] for p in members]) + dev @ chol.T
        for i, p in enumerate(members):
            eta[p] = correlated[:, i]
            z[p] = w[idx[i]] / np.sqrt(n) + dev[:, i]          # L^-1 ETA_i
    for p in names:
        if spec.parameters[p].centered:
            eta[p] = pm.Normal(f"eta_{p}", 0.0, omega[p], dims="ID", shape=(n,))
            init[f"eta_{p}"] = np.zeros(n)
    if potential:   # none where every typical value is its own variable and every OMEGA is in a block
        pm.Potential("eta_priors", pt.sum(pt.stack([pt.sum(t) for t in potential])))
    pm.Deterministic("eta_z", pt.stack([z[p] for p in z_names], axis=1), dims=("ID", z_dim))
    pm.Deterministic("ETA", pt.stack([eta[p] for p in names], axis=1), dims=("ID", "eta_parameter"))
    return eta, typical


def _regression(spec: ModelSpec, p: str, design: tuple, omega, ss, init: dict, typical: dict, potential: list):
    """ETA of ``p`` whose typical value and covariate thetas are one regression (:func:`covariate_designs`).

    With the design ``X = [1, x_1 .. x_k]`` (n, m) and ``a_i = log TV + sum_j theta_j x_ij`` the data fix
    ``a + ETA``; its least-squares coefficients ``eta_beta_<P>`` (free) play the part of ``eta_mean``: the
    coefficients ``beta = (log TV, theta)`` are ``eta_beta - omega R^-1 eta_wb`` (``X = Q_1 R``, ``eta_wb ~
    N(0, I_m)``: ``ETA``'s least-squares coefficients are ``N(0, omega^2 (X'X)^-1)``) and the residual,
    ``eta_ss`` times a direction uniform on the complement of X's columns (``Q_2 u / |u|``, ``eta_u_<P> ~
    N(0, I_{n-m})``), has ``eta_ss / omega^2 ~ chi2(n - m)``.  ``ETA = Q [omega eta_wb; sqrt(eta_ss) u /
    |u|]``, ``Q`` applied as X's m Householder reflections.  The map ``(beta, omega) -> (eta_beta, eta_ss)``
    has the Jacobian ``2 omega eta_rho`` of the one-mean form; the priors of TV (with ``log |dTV/da|``) and of
    the thetas enter the potential.
    """
    names, columns, priors = design
    n = columns.shape[0]
    x = np.column_stack([np.ones(n), columns])
    m = x.shape[1]
    vectors, scales, r = _householder(x)
    par = spec.parameters[p]
    coef = pm.Flat(f"eta_beta_{p}", shape=(m,))
    init[f"eta_beta_{p}"] = np.array([_start_value(spec, p, init), *[float(pr.median()) for pr in priors]])
    wb = pm.Normal(f"eta_wb_{p}", 0.0, 1.0, shape=(m,))
    init[f"eta_wb_{p}"] = np.zeros(m)
    u = pm.Normal(f"eta_u_{p}", 0.0, 1.0, shape=(n - m,))
    init[f"eta_u_{p}"] = _spread(1, n - m + 1)[0, : n - m] + 1e-3   # any direction off 0 will do
    # products with the constant design as sums of elementwise products, not dot: the gradient's Gemv nodes
    # compile numba's generic np.dot (a NumbaPerformanceWarning to the user) and gain nothing at m <= a few
    beta = coef - omega * pt.sum(np.linalg.inv(r) * wb[None, :], axis=1)
    eta = pt.concatenate([omega * wb, pt.sqrt(ss) * u / pt.sqrt(pt.sum(u ** 2))])
    for j in reversed(range(m)):   # Q y = H_0 (H_1 (... H_{m-1} y))
        eta = eta - scales[j] * vectors[j] * pt.sum(vectors[j] * eta)
    typical[p] = pm.Deterministic(p, pt.exp(beta[0]))
    potential.append(prior_logp(par.prior, typical[p]) + beta[0])
    for j, (name, prior) in enumerate(zip(names, priors), start=1):
        typical[name] = pm.Deterministic(name, beta[j])
        potential.append(prior_logp(prior, typical[name]))
    return eta


def _householder(x: np.ndarray) -> tuple:
    """``x`` (n, m) = ``H_0 .. H_{m-1} [R; 0]`` with ``H_j = I - s_j v_j v_j'``: the vectors (m, n), the
    scales ``s`` (m,) and ``R`` (m, m), upper triangular."""
    a = np.array(x, dtype=float)
    n, m = a.shape
    vectors, scales = np.zeros((m, n)), np.zeros(m)
    for j in range(m):
        col = a[j:, j]
        alpha = -np.copysign(np.linalg.norm(col), col[0] if col[0] != 0 else 1.0)
        vec = col.copy()
        vec[0] -= alpha
        scales[j] = 2.0 / (vec @ vec)
        a[j:, j:] -= scales[j] * np.outer(vec, vec @ a[j:, j:])
        vectors[j, j:] = vec
    return vectors, scales, np.triu(a[:m, :m])


def _from_eta_scale(iiv: str, a):
    if iiv == "lognormal":
        return pt.exp(a)
    return pt.sigmoid(a) if iiv == "logit" else a


def _log_jacobian(iiv: str, a):
    """log |d TV / d a| for :func:`_from_eta_scale`."""
    if iiv == "lognormal":
        return a
    return -pt.softplus(-a) - pt.softplus(a) if iiv == "logit" else pt.zeros(())


def _start_value(spec: ModelSpec, p: str, init: dict) -> float:
    par = spec.parameters[p]
    tv = float(par.prior.median())
    if par.iiv == "lognormal":
        return float(np.log(tv))
    return float(np.log(tv) - np.log1p(-tv)) if par.iiv == "logit" else tv


def _spread(k: int, n: int) -> np.ndarray:
    """A fixed zero-sum start for ``eta_dir`` (k, n): each row a permutation of evenly spaced normal scores
    (any direction will do; ``|v|`` must not be 0, where ``v / |v|`` has no gradient)."""
    scores = ndtri((np.arange(n) + 0.5) / n)
    rows = [np.random.default_rng([n, i]).permutation(scores) for i in range(k)]
    return np.array([r - r.mean() for r in rows])
