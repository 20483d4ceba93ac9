"""The population parameterisation of the ETAs (bayesnlme.build.random_effects): the same posterior as the
subject parameterisation, sampled with fewer steps; a posterior that holds the subject parameterisation's
variables; the cases that keep the subject parameterisation."""

import arviz as az
import numpy as np
import pytest

from bayesnlme import load_spec
from bayesnlme.build import build_model
from bayesnlme.build.random_effects import POPULATION_MIN, SAMPLER_ONLY
from bayesnlme.datasets import load_theophylline
from bayesnlme.inference.fit import fit_model
from bayesnlme.inference.startpoint import transformed_start
from bayesnlme.spec import ModelSpec

POPULATION = ["CL", "V", "KA", "omega_CL", "omega_V", "omega_KA", "sigma_add", "sigma_prop"]


def _block_spec():
    """An OMEGA block on CL and V, a fixed OMEGA on KA: both kinds of column, and a fixed OMEGA's sum of squares."""
    d = load_spec("pk_1cmt_oral").to_dict()
    d["parameters"]["KA"].pop("omega")
    d["parameters"]["KA"]["omega_fixed"] = 0.5
    d["random_effects"] = {"blocks": [["CL", "V"]], "lkj_eta": 2.0}
    return ModelSpec.from_dict(d, source="block.toml")


def _fits(spec, **kw):
    return {par: fit_model(spec, load_theophylline(), progress=False, seed=3, eta_parameterisation=par, **kw)
            for par in ("subject", "population")}


@pytest.fixture(scope="module")
def diagonal():
    return _fits(load_spec("pk_1cmt_oral"))


@pytest.fixture(scope="module")   # two fits of a model no other test compiles: make validate
def block():
    return _fits(_block_spec(), draws=500, tune=500)


def _agree(fits, names):
    """Posterior means and SDs of the two parameterisations within 4.5 combined Monte Carlo SEs."""
    s = {k: az.summary(r.idata, var_names=names, kind="all") for k, r in fits.items()}
    a, b = s["subject"], s["population"]
    for stat, se in (("mean", "mcse_mean"), ("sd", "mcse_sd")):
        tol = 4.5 * np.hypot(a[se], b[se])
        off = (a[stat] - b[stat]).abs() > tol
        assert not off.any(), f"{stat} differs: {a.loc[off, stat].to_dict()} vs {b.loc[off, stat].to_dict()}"


def test_the_population_parameterisation_gives_the_subject_posterior(diagonal):
    _agree(diagonal, POPULATION)
    # each subject's ETAs too (their posterior means within Monte Carlo error)
    ea, eb = (r.idata.posterior["ETA"] for r in diagonal.values())
    sa, sb = (az.summary(e.to_dataset(), kind="all") for e in (ea, eb))
    assert ((sa["mean"] - sb["mean"]).abs() <= 4.5 * np.hypot(sa["mcse_mean"], sb["mcse_mean"])).all()
    assert [r.settings["eta_parameterisation"] for r in diagonal.values()] == ["subject", "population"]


def test_the_population_parameterisation_mixes_better(diagonal):
    """On theophylline: fewer leapfrog steps per draw and more effective draws of the typical values and OMEGAs
    (measured 30 -> 17 steps, min bulk ESS 1,134 -> 1,882 with seed 1)."""
    steps = {k: float(r.idata.sample_stats["n_steps"].mean()) for k, r in diagonal.items()}
    ess = {k: float(az.ess(r.idata, var_names=POPULATION, method="bulk").to_array().min())
           for k, r in diagonal.items()}
    assert steps["population"] < 0.8 * steps["subject"], steps
    assert ess["population"] > ess["subject"], ess
    assert all(r.idata.sample_stats["diverging"].sum() == 0 for r in diagonal.values())


def test_the_posterior_holds_the_subject_variables(diagonal):
    sub, pop = diagonal["subject"].idata.posterior, diagonal["population"].idata.posterior
    assert set(pop.data_vars) == set(sub.data_vars)
    assert not set(SAMPLER_ONLY) & set(pop.data_vars)
    # eta_z is the subject parameterisation's variable: ETA = z * omega, draw by draw
    om = np.stack([pop[f"omega_{p}"].values for p in ("CL", "V", "KA")], axis=-1)
    np.testing.assert_allclose(pop["ETA"].values, pop["eta_z"].values * om[:, :, None, :], rtol=1e-10, atol=1e-13)
    # the pointwise log-likelihood is the subject model's, evaluated at those draws
    assert diagonal["population"].idata.log_likelihood["DV"].shape[-1] == diagonal["population"].data.n_obs


@pytest.mark.slow
@pytest.mark.validation
def test_an_omega_block_and_a_fixed_omega_give_the_subject_posterior(block):
    _agree(block, ["CL", "V", "KA", "omega_CL", "omega_V", "corr_CL_V", "sigma_add", "sigma_prop"])
    pop = block["population"].idata.posterior
    assert block["population"].settings["eta_parameterisation"] == "population"
    # a block's eta_z is L^-1 ETA: ETA_CL = omega_CL z_CL, ETA_V = omega_V (r z_CL + sqrt(1 - r^2) z_V)
    z, eta, r = pop["eta_z"].values, pop["ETA"].values, pop["corr_CL_V"].values[..., None]
    om_cl, om_v = pop["omega_CL"].values[..., None], pop["omega_V"].values[..., None]
    np.testing.assert_allclose(eta[..., 0], om_cl * z[..., 0], rtol=1e-9)
    np.testing.assert_allclose(eta[..., 1], om_v * (r * z[..., 0] + np.sqrt(1 - r**2) * z[..., 1]), rtol=1e-8,
                               atol=1e-12)
    np.testing.assert_allclose(eta[..., 2], 0.5 * z[..., 2], rtol=1e-10)


def test_where_the_subject_parameterisation_stays():
    theo = load_theophylline()
    spec = load_spec("pk_1cmt_oral")
    pop = build_model(spec, theo, eta_parameterisation="population").model
    assert {"eta_mean", "eta_w", "eta_ss", "eta_rho", "eta_dir"} <= {v.name for v in pop.free_RVs}
    assert "eta_z" in {v.name for v in pop.deterministics} and "CL" in {v.name for v in pop.deterministics}
    few = theo[theo["ID"].isin(theo["ID"].unique()[:POPULATION_MIN - 1])]
    small = build_model(spec, few, eta_parameterisation="population").model
    assert "eta_z" in {v.name for v in small.free_RVs}          # 7 subjects: a direction on S^5 is left alone
    mixture = build_model(load_spec("pk_1cmt_oral_mixture_cl"), theo, eta_parameterisation="population").model
    assert "eta_z" in {v.name for v in mixture.free_RVs}
    with pytest.raises(ValueError, match="eta_parameterisation must be one of"):
        build_model(spec, theo, eta_parameterisation="centred")


def _other_scales_spec():
    """Typical values on each ETA scale and each kind of prior support: V fixed with an ETA, KA's OMEGA with a
    uniform prior (bounded above: its own variable), CL with a uniform prior (bounded: its own variable)."""
    d = load_spec("pk_1cmt_oral").to_dict()
    d["parameters"]["CL"]["prior"] = {"dist": "uniform", "lower": 0.5, "upper": 20.0}
    d["parameters"]["V"].pop("prior")
    d["parameters"]["V"]["fixed"] = 32.0
    d["parameters"]["KA"]["omega"] = {"dist": "uniform", "lower": 0.0, "upper": 2.0}
    return ModelSpec.from_dict(d, source="other.toml")


def test_bounded_priors_and_fixed_values_keep_their_own_variables():
    spec = _other_scales_spec()
    built = build_model(spec, load_theophylline(), eta_parameterisation="population")
    free = {v.name for v in built.model.free_RVs}
    assert {"CL", "omega_KA"} <= free and "V" not in free and "KA" not in free    # KA derived from eta_mean
    assert free >= {"eta_mean", "eta_w", "eta_ss", "eta_rho", "eta_dir"}
    assert built.model["eta_mean"].type.shape == (1,) and built.model["eta_rho"].type.shape == (2,)
    # the log-density is finite at the start and at a jittered point, with a finite gradient
    fn = built.model.logp_dlogp_function(ravel_inputs=True)
    fn.set_extra_values({})
    point = transformed_start(built)
    flat = np.concatenate([np.ravel(point[built.model.rvs_to_values[v].name]) for v in built.model.free_RVs])
    for x in (flat, flat + np.random.default_rng(1).uniform(-0.5, 0.5, flat.size)):
        lp, grad = fn(x)
        assert np.isfinite(lp) and np.isfinite(grad).all()


@pytest.mark.slow
@pytest.mark.validation
def test_bounded_priors_and_fixed_values_give_the_subject_posterior():
    fits = _fits(_other_scales_spec(), draws=500, tune=500)
    _agree(fits, ["CL", "KA", "omega_CL", "omega_V", "omega_KA", "sigma_add", "sigma_prop"])
    # the sampler's own dimensions go with its coordinates (eta_rho over CL and V only, eta_mean over KA)
    assert set(fits["population"].idata.posterior.dims) == set(fits["subject"].idata.posterior.dims)


def test_a_block_of_every_eta_with_fixed_typical_values_builds():
    """Nothing derived (every OMEGA in the block, every typical value fixed or bounded): no potential at all."""
    d = load_spec("pk_1cmt_oral").to_dict()
    for p, value in (("CL", 2.8), ("V", 32.0)):
        d["parameters"][p].pop("prior")
        d["parameters"][p]["fixed"] = value
    d["parameters"]["KA"]["prior"] = {"dist": "uniform", "lower": 0.1, "upper": 10.0}
    d["random_effects"] = {"blocks": [["CL", "V", "KA"]], "lkj_eta": 2.0}
    built = build_model(ModelSpec.from_dict(d), load_theophylline(), eta_parameterisation="population")
    m = built.model
    assert "eta_priors" not in m.named_vars and "eta_mean" not in m.named_vars
    assert {"eta_w", "eta_dir", "KA"} <= {v.name for v in m.free_RVs}
    assert np.isfinite(m.compile_logp(mode="FAST_COMPILE")(transformed_start(built)))


def _covariate_model(linear: bool = False):
    """Phenobarbital (59 neonates) with WT (power) on CL and V and a two-level APGAR covariate on V: each
    parameter's typical value and thetas sampled as one regression; a linear effect (not linear in its theta
    on the log scale) keeps its own variable."""
    from bayesnlme import read_nonmem
    from bayesnlme.datasets import load_phenobarbital

    df = load_phenobarbital()
    df["APGLOW"] = (df["APGR"] < 5).astype(int)
    data = read_nonmem(df, name="phenobarbital")
    d = load_spec("pk_1cmt_iv").to_dict()
    d["covariates"] = [
        {"parameter": "CL", "covariate": "WT", "type": "power", "reference": 1.3},
        {"parameter": "V", "covariate": "WT", "type": "power", "reference": 1.3},
        {"parameter": "V", "covariate": "APGLOW", "type": "categorical", "reference": 0},
    ] + ([{"parameter": "CL", "covariate": "APGR", "type": "linear", "reference": 7}] if linear else [])
    return ModelSpec.from_dict(d).bind(data), data


def test_covariate_thetas_are_one_regression_with_the_typical_value():
    import pytensor

    from bayesnlme.build.random_effects import covariate_designs

    spec, data = _covariate_model(linear=True)
    designs = covariate_designs(spec, data)
    assert designs["CL"][0] == ["WT_on_CL"] and designs["V"][0] == ["WT_on_V", "APGLOW_1_on_V"]
    switched = covariate_designs(spec, data, switches={"WT_on_CL": 1})   # a covariate search's switch: a free theta
    assert "CL" not in switched and switched["V"][0] == designs["V"][0]
    built = build_model(spec, data, eta_parameterisation="population")
    m = built.model
    free = {v.name for v in m.free_RVs}
    assert {"eta_beta_CL", "eta_wb_CL", "eta_u_CL", "eta_beta_V", "eta_u_V", "APGR_on_CL"} <= free
    assert not {"WT_on_CL", "WT_on_V", "APGLOW_1_on_V", "eta_mean", "eta_dir"} & free
    assert m["eta_u_V"].type.shape == (data.n_subjects - 3,)
    # the change of variables at a random point: ETA's least-squares coefficients on the design [1, x] are
    # eta_beta - (log TV, thetas), the residual's sum of squares is eta_ss
    point = transformed_start(built)
    rng = np.random.default_rng(2)
    values = [m.rvs_to_values[v] for v in m.free_RVs]
    args = [np.asarray(point[v.name]) + rng.uniform(-0.5, 0.5, np.shape(point[v.name])) for v in values]
    outs = m.replace_rvs_by_values([m["ETA"], m["CL"], m["V"], m["WT_on_CL"], m["WT_on_V"], m["APGLOW_1_on_V"],
                                    m["eta_ss"], m["eta_beta_CL"], m["eta_beta_V"]])
    eta, cl, v, t_cl, t_v, t_apg, ss, b_cl, b_v = pytensor.function(values, outs, mode="FAST_COMPILE",
                                                                   on_unused_input="ignore")(*args)
    base = data.baseline_covariates(["WT", "APGLOW"])
    logwt = np.log(base["WT"].to_numpy(float) / 1.3)
    for k, (x, beta, theta) in enumerate((
            (np.column_stack([np.ones(data.n_subjects), logwt]), b_cl, [np.log(cl), t_cl]),
            (np.column_stack([np.ones(data.n_subjects), logwt, base["APGLOW"] == 1]), b_v, [np.log(v), t_v, t_apg]))):
        coef, *_ = np.linalg.lstsq(x.astype(float), eta[:, k], rcond=None)
        np.testing.assert_allclose(coef, beta - np.array(theta), rtol=1e-9, atol=1e-11)
        assert np.sum((eta[:, k] - x.astype(float) @ coef) ** 2) == pytest.approx(ss[k], rel=1e-9)


@pytest.mark.slow
@pytest.mark.validation
def test_covariate_regressions_give_the_subject_posterior():
    spec, data = _covariate_model()
    fits = {par: fit_model(spec, data, progress=False, seed=3, eta_parameterisation=par, draws=500, tune=500)
            for par in ("subject", "population")}
    _agree(fits, ["CL", "V", "WT_on_CL", "WT_on_V", "APGLOW_1_on_V", "omega_CL", "omega_V", "sigma_add",
                  "sigma_prop"])
    sub, pop = (fits[k].idata.posterior for k in ("subject", "population"))
    assert set(pop.data_vars) == set(sub.data_vars) and set(pop.dims) == set(sub.dims)


def test_every_eta_a_regression_builds_without_a_shared_direction():
    """WT on CL and on V (pk_1cmt_iv: every ETA parameter a regression): no eta_mean, eta_w or eta_dir, no
    empty coordinate, a finite log-density at the start."""
    spec, data = _covariate_model()
    d = spec.to_dict()
    d["covariates"] = [c for c in d["covariates"] if c["covariate"] == "WT"]
    built = build_model(ModelSpec.from_dict(d).bind(data), data, eta_parameterisation="population")
    m = built.model
    assert not {"eta_mean", "eta_w", "eta_dir"} & set(m.named_vars)
    assert set(m.coords) == {"ID", "obs", "eta_parameter"}
    assert np.isfinite(m.compile_logp(mode="FAST_COMPILE")(transformed_start(built)))
