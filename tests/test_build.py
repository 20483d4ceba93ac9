"""Builder: spec + data -> PyMC model; checked against hand computation, no sampling."""

import numpy as np
import pandas as pd
import pymc as pm
import pytest
from scipy import stats

from bayesnlme.build import build_model
from bayesnlme.data import read_nonmem
from bayesnlme.datasets import load_indometacin, load_theophylline
from bayesnlme.errors import DataError, SpecError
from bayesnlme.report.model_text import equations
from bayesnlme.spec import ModelSpec, load_spec
from bayesnlme.spec.toml_text import spec_toml


def _spec(extra="", residual="combined", structural="1cmt_oral", params=("CL", "V", "KA")):
    d = load_spec("pk_1cmt_oral").to_dict()
    d["structural"] = structural
    d["parameters"] = {p: d["parameters"][p] for p in params}
    d["residual"] = {"type": residual}
    d.update(extra or {})
    return ModelSpec.from_dict(d)


def _point(built, **over):
    m = built.model
    ip = m.initial_point()
    rng = np.random.default_rng(3)
    ip["eta_z"] = rng.normal(size=ip["eta_z"].shape)
    for k, v in over.items():
        key = next(n for n in ip if n == k or n.startswith(k + "_"))
        tr = m.rvs_to_transforms[m[k]]
        ip[key] = tr.forward(np.asarray(v, float)).eval() if tr is not None else np.asarray(v, float)
    return ip


def test_coords_names_and_dims():
    built = build_model(load_spec("pk_1cmt_oral"), load_theophylline())
    m = built.model
    assert list(m.coords["ID"]) == [str(i) for i in range(1, 13)]
    assert len(m.coords["obs"]) == 132
    assert list(m.coords["eta_parameter"]) == ["CL", "V", "KA"]
    assert {v.name for v in m.free_RVs} == {"CL", "V", "KA", "omega_CL", "omega_V", "omega_KA", "eta_z",
                                            "sigma_add", "sigma_prop"}
    assert m.named_vars_to_dims["DV"] == ("obs",)
    assert m.named_vars_to_dims["ETA"] == ("ID", "eta_parameter")
    assert built.initial_point["CL"] == 5.0 and built.initial_point["KA"] == 1.0


def test_likelihood_equals_hand_computation():
    df = load_theophylline()
    spec = _spec({"covariates": [{"parameter": "CL", "covariate": "WT", "type": "power",
                                  "reference": 70, "fixed": 0.75}]})
    built = build_model(spec, df)
    m = built.model
    pt_ = _point(built, CL=2.5, V=30.0, KA=1.4, omega_CL=0.3, omega_V=0.2, omega_KA=0.5,
                 sigma_add=0.4, sigma_prop=0.1)
    logp_dv = m.compile_logp(vars=[m["DV"]], sum=True)(pt_)

    data = read_nonmem(df)
    z = pt_["eta_z"]
    wt = data.baseline_covariates(["WT"])["WT"].to_numpy()
    cl = 2.5 * (wt / 70) ** 0.75 * np.exp(0.3 * z[:, 0])
    v = 30.0 * np.exp(0.2 * z[:, 1])
    ka = 1.4 * np.exp(0.5 * z[:, 2])
    s, t = data.obs_subject, data.obs_time
    k = cl[s] / v[s]
    amt = data.dose_amt[s, 0]
    conc = amt * ka[s] / (v[s] * (ka[s] - k)) * (np.exp(-k * t) - np.exp(-ka[s] * t))
    sd = np.sqrt(0.4 ** 2 + (0.1 * conc) ** 2)
    expected = stats.norm.logpdf(data.obs_dv, conc, sd).sum()
    assert logp_dv == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("residual", ["additive", "proportional", "exponential"])
def test_residual_models_match_scipy(residual):
    df = load_indometacin()
    spec = _spec(residual=residual, structural="1cmt_iv", params=("CL", "V"))
    built = build_model(spec, df)
    m = built.model
    sig = {"additive": "sigma_add", "proportional": "sigma_prop", "exponential": "sigma_exp"}[residual]
    pt_ = _point(built, CL=8.0, V=10.0, omega_CL=0.2, omega_V=0.1, **{sig: 0.2})
    got = m.compile_logp(vars=[m["DV"]])(pt_)
    data = read_nonmem(df)
    z = pt_["eta_z"]
    cl, v = 8 * np.exp(0.2 * z[:, 0]), 10 * np.exp(0.1 * z[:, 1])
    s = data.obs_subject
    conc = 25 / v[s] * np.exp(-cl[s] / v[s] * data.obs_time)
    y = data.obs_dv
    expected = {"additive": stats.norm.logpdf(y, conc, 0.2),
                "proportional": stats.norm.logpdf(y, conc, 0.2 * conc),
                "exponential": stats.lognorm.logpdf(y, 0.2, scale=conc)}[residual].sum()
    assert got == pytest.approx(expected, rel=1e-9)


def test_residual_is_one_observation_model_and_its_dv_a_container():
    """``[residual]`` and the same error as one ``[[observations]]`` entry build the same log-density; with
    ``dv_data`` the DV is a data container, and new DV values give the scipy log-density at them."""
    df = load_indometacin()
    spec = _spec(residual="combined", structural="1cmt_iv", params=("CL", "V"))
    d = spec.to_dict()
    d.pop("residual")
    d["observations"] = [{"output": "CP", "likelihood": "combined"}]
    twin = ModelSpec.from_dict(d)
    built, other = build_model(spec, df, dv_data=True), build_model(twin, df)
    m = built.model
    pt_ = _point(built, CL=8.0, V=10.0, omega_CL=0.2, omega_V=0.1, sigma_add=0.1, sigma_prop=0.15)
    logp = m.compile_logp(vars=[m["DV"]])
    assert logp(pt_) == pytest.approx(other.model.compile_logp(vars=[other.model["DV"]])(pt_), rel=1e-12)
    data = read_nonmem(df)
    z = pt_["eta_z"]
    cl, v = 8 * np.exp(0.2 * z[:, 0]), 10 * np.exp(0.1 * z[:, 1])
    conc = 25 / v[data.obs_subject] * np.exp(-cl[data.obs_subject] / v[data.obs_subject] * data.obs_time)
    sd = np.sqrt(0.1 ** 2 + (0.15 * conc) ** 2)
    new = data.obs_dv * 1.5 + 0.2
    m.set_data("DV_data", new)
    assert logp(pt_) == pytest.approx(stats.norm.logpdf(new, conc, sd).sum(), rel=1e-9)
    assert "DV_data" not in other.model.named_vars


def test_block_omega_correlates_etas():
    spec = _spec({"random_effects": {"blocks": [["CL", "V"]], "lkj_eta": 2.0}})
    built = build_model(spec, load_theophylline())
    m = built.model
    assert "corr_CL_V" in m.named_vars and "corr_CL_KA" not in m.named_vars
    assert "omega_CL" in m.named_vars and "omega_CL" not in {v.name for v in m.free_RVs}
    with m:
        prior = pm.sample_prior_predictive(draws=300, random_seed=1, var_names=[
            "ETA", "eta_z", "omega_CL", "omega_V", "omega_KA", "corr_CL_V"]).prior
    eta, z = prior["ETA"].values[0], prior["eta_z"].values[0]
    r = prior["corr_CL_V"].values[0]
    om_cl, om_v = prior["omega_CL"].values[0], prior["omega_V"].values[0]
    # ETA = L z with L the Cholesky factor of OMEGA = diag(omega) [[1, r], [r, 1]] diag(omega)
    np.testing.assert_allclose(eta[:, :, 0], om_cl[:, None] * z[:, :, 0], rtol=1e-8)
    expected_v = om_v[:, None] * (r[:, None] * z[:, :, 0] + np.sqrt(1 - r[:, None] ** 2) * z[:, :, 1])
    np.testing.assert_allclose(eta[:, :, 1], expected_v, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(eta[:, :, 2], prior["omega_KA"].values[0][:, None] * z[:, :, 2], rtol=1e-10)
    # the LKJ(2) prior on a 2x2 correlation is Beta(2, 2) on (r + 1) / 2: mean 0, SD 1/sqrt(5)
    assert abs(r.mean()) < 3 * 0.447 / np.sqrt(300) and abs(r.std() - 0.447) < 0.06


def _fixed_block_spec(corr=0.6, **over):
    d = load_spec("pk_1cmt_oral").to_dict()
    for p, sd in (("CL", 0.3), ("V", 0.2)):
        d["parameters"][p].pop("omega", None)
        d["parameters"][p]["omega_fixed"] = sd
    d["random_effects"] = {"fixed_blocks": [{"parameters": ["CL", "V"], "correlation": [[1.0, corr], [corr, 1.0]]}]}
    d.update(over)
    return ModelSpec.from_dict(d, source="fixed.toml")


def test_fixed_omega_block_gives_the_known_covariance():
    """A published OMEGA block (NONMEM BLOCK(2) ... FIX): ETA = L z with the constant Cholesky factor, nothing
    about the block sampled; the ETA draws have the block's covariance."""
    spec = _fixed_block_spec()
    assert ModelSpec.from_toml_text(_toml(spec), source="fixed.toml") == spec   # the TOML round-trips
    built = build_model(spec, load_theophylline())
    m = built.model
    assert not {"omega_CL", "omega_V", "corr_CL_V"} & {v.name for v in m.free_RVs}
    with m:
        prior = pm.sample_prior_predictive(draws=2000, random_seed=1, var_names=["ETA", "eta_z"]).prior
    eta, z = prior["ETA"].values[0], prior["eta_z"].values[0]
    chol = np.linalg.cholesky([[0.09, 0.6 * 0.06], [0.6 * 0.06, 0.04]])
    np.testing.assert_allclose(eta[:, :, :2], z[:, :, :2] @ chol.T, rtol=1e-10, atol=1e-14)
    pairs = eta[:, :, :2].reshape(-1, 2)   # 24,000 (CL, V) pairs: SE of the correlation (1 - 0.36)/sqrt(n) = 0.004
    assert np.corrcoef(pairs.T)[0, 1] == pytest.approx(0.6, abs=4 * 0.64 / np.sqrt(len(pairs)))
    assert pairs.std(axis=0) == pytest.approx([0.3, 0.2], rel=4 / np.sqrt(2 * len(pairs)))
    assert "(ETA_CL, ETA_V) correlated, fixed: correlation CL-V 0.6" in equations(spec)


@pytest.mark.parametrize("change, message", [
    (dict(corr=1.2), r"fixed.toml: random_effects.fixed_blocks: correlation of \['CL', 'V'\] is not positive definite"),
    (dict(random_effects={"fixed_blocks": [{"parameters": ["CL", "V"], "correlation": [[1.0, 0.5]]}]}),
     r"correlation must be a 2 x 2 matrix"),
    (dict(random_effects={"fixed_blocks": [{"parameters": ["CL", "KA"], "correlation": [[1, 0.5], [0.5, 1]]}]}),
     r"fixed OMEGA block \['CL', 'KA'\]: parameter KA needs omega_fixed"),
    (dict(random_effects={"blocks": [["CL", "KA"]],
                          "fixed_blocks": [{"parameters": ["CL", "V"], "correlation": [[1, 0.5], [0.5, 1]]}]}),
     r"parameter CL"),
])
def test_fixed_omega_block_errors_name_the_block(change, message):
    with pytest.raises(SpecError, match=message):
        _fixed_block_spec(**change)


def _toml(spec):
    return spec_toml(spec.to_dict(), [], {})


def test_graph_size_does_not_grow_with_subjects():
    """No Python loop over subjects/observations: the logp graph is the same size for 12 or 48 subjects."""
    df = load_theophylline()
    big = pd.concat([df.assign(ID=df["ID"] + 100 * k) for k in range(4)], ignore_index=True)
    sizes = []
    for d in (df, big):
        m = build_model(load_spec("pk_1cmt_oral"), d).model
        fn = m.compile_logp()
        sizes.append(len(fn.f.maker.fgraph.apply_nodes))
    assert sizes[0] == sizes[1]


def test_model_without_random_effects_single_subject():
    df = load_theophylline().query("ID == 1")
    d = load_spec("pk_1cmt_oral").to_dict()
    for p in d["parameters"].values():
        p["iiv"] = "none"
        p.pop("omega")
    built = build_model(ModelSpec.from_dict(d), df)
    names = {v.name for v in built.model.free_RVs}
    assert "eta_z" not in names and names == {"CL", "V", "KA", "sigma_add", "sigma_prop"}
    assert np.isfinite(built.model.compile_logp()(built.model.initial_point()))


def test_fixed_parameters_are_not_free():
    d = load_spec("pk_1cmt_oral").to_dict()
    d["parameters"]["KA"] = {"fixed": 1.5, "iiv": "none"}
    d["parameters"]["F"] = {"fixed": 0.8, "iiv": "none"}
    built = build_model(ModelSpec.from_dict(d), load_theophylline())
    names = {v.name for v in built.model.free_RVs}
    assert "KA" not in names and "F" not in names
    assert list(built.model.coords["eta_parameter"]) == ["CL", "V"]


def test_exponential_error_rejects_zero_dv_with_row():
    with pytest.raises(DataError, match=r"theophylline, row 14, column DV: exponential residual error \(output CP\) "
                                        r"with DV <= 0 at 9 observation\(s\) \(rows 14, 26, 38"):
        build_model(_spec(residual="exponential"), read_nonmem(load_theophylline(), name="theophylline"))


def test_proportional_error_rejects_predose_observation():
    df = load_theophylline()
    df = df[~((df["TIME"] == 0) & (df["EVID"] == 0) & (df["DV"] == 0))]   # the 3 pre-dose samples with DV > 0 stay
    with pytest.raises(DataError, match=r"row 2, column DV: proportional residual error: the prediction is exactly 0 "
                                        r".*3 such observations"):
        build_model(_spec(residual="proportional"), df)
    # the same check for a concentration type of [[observations]] (a PK/PD spec)
    d = _spec().to_dict()
    d["observations"] = [{"dvid": 1, "output": "CP", "likelihood": "proportional"}]
    with pytest.raises(DataError, match=r"row 2, column DV: proportional residual error \(DVID 1\): the prediction "
                                        r"is exactly 0"):
        build_model(ModelSpec.from_dict(d), df.assign(DVID=1))


def _predose_blq(**extra):
    """Theophylline with its 12 time-0 samples (taken as the dose is given: CP exactly 0) reported BLQ."""
    df = load_theophylline()
    pre = (df["TIME"] == 0) & (df["EVID"] == 0)
    return df.assign(DV=np.where(pre, 0.25, df["DV"]), CENS=pre.astype(int), **extra), pre[df["EVID"] == 0].to_numpy()


@pytest.mark.parametrize("residual", ["proportional", "exponential"])
@pytest.mark.parametrize("cens_data", [False, True], ids=["CENS constant", "CENS container"])
def test_predose_records_below_lloq_are_certain_under_zero_sd_errors(residual, cens_data):
    """A pre-dose sample reported below the LLOQ: with CP = 0 it is BLQ with probability 1 (M3 adds 0 to the
    log-likelihood, gradient finite), so proportional and exponential error accept it; an uncensored one,
    or one censored in an interval with a positive lower limit, is still refused."""
    df, pre = _predose_blq()
    built = build_model(_spec(residual=residual), df, dv_data=cens_data, cens_data=cens_data)
    assert (built.model["DV_cens"] is not None) if cens_data else "DV_cens" not in built.model
    m = built.model
    ip = _point(built, CL=2.5, V=30.0, KA=1.4)
    pointwise = m.compile_logp(vars=[m["DV"]], sum=False)(ip)[0]
    assert pre.sum() == 12 and np.all(pointwise[pre] == 0.0) and np.isfinite(pointwise[~pre]).all()
    assert np.isfinite(m.compile_dlogp()(ip)).all()
    with pytest.raises(DataError, match=r"row 2, column DV: .*the prediction is exactly 0 .*; 1 such observations"):
        build_model(_spec(residual=residual), df.assign(CENS=np.where(df.index == 1, 0, df["CENS"])))
    with pytest.raises(DataError, match=r"row 2, column DV: .*the prediction is exactly 0 .*; 12 such observations"):
        build_model(_spec(residual=residual), df.assign(LIMIT=np.where(df["CENS"] == 1, 0.1, np.nan)))


def test_dose_into_unknown_compartment():
    df = load_theophylline()
    df.loc[(df["ID"] == 2) & (df["EVID"] == 1), "CMT"] = 3
    with pytest.raises(DataError, match=r"row 13, column CMT: dose into CMT 3, but model 1cmt_oral"):
        build_model(load_spec("pk_1cmt_oral"), df)
    df = load_indometacin()
    with pytest.raises(DataError, match=r"observation in CMT 1, but model 1cmt_oral observes CMT 2"):
        build_model(load_spec("pk_1cmt_oral"), df)


def test_normal_and_logit_iiv_build_and_predict():
    d = load_spec("pk_1cmt_oral").to_dict()
    d["parameters"]["KA"]["iiv"] = "normal"
    d["parameters"]["F"] = {"prior": {"dist": "beta", "alpha": 8.0, "beta": 2.0}, "iiv": "logit"}
    built = build_model(ModelSpec.from_dict(d), load_theophylline())
    ip = built.model.initial_point()
    assert np.isfinite(built.model.compile_logp()(ip))
    assert list(built.model.coords["eta_parameter"]) == ["CL", "V", "KA", "F"]
    from bayesnlme.evaluate.predict import evaluate_draws

    point = {k: np.asarray(v)[None] for k, v in built.initial_point.items()}
    out = evaluate_draws(built, point, ("pred", "ipred"))
    assert out["pred"].shape == out["ipred"].shape == (1, 132)
    np.testing.assert_allclose(out["pred"], out["ipred"])       # ETA = 0 at the initial point
    point["eta_z"] = point["eta_z"] + 0.5
    out2 = evaluate_draws(built, point, ("pred", "ipred"))
    np.testing.assert_allclose(out2["pred"], out["pred"])
    assert not np.allclose(out2["ipred"], out["ipred"])


def _lagged_theophylline(first_dv: float):
    """Theophylline without the time-0 records, subject 1's first sample (0.27 h) set to ``first_dv``."""
    df = load_theophylline()
    df = df[~((df["TIME"] == 0) & (df["EVID"] == 0))].reset_index(drop=True)
    first = df.index[(df["ID"] == 1) & (df["EVID"] == 0)][0]
    df.loc[first, "DV"] = first_dv
    return df


def _lag_spec(where: str, lag: float = 0.5):
    extra = {"parameters": {**_spec().to_dict()["parameters"], "ALAG": {"fixed": lag, "iiv": "none"}}}
    if where == "observations":
        extra["observations"] = [{"output": "CP", "likelihood": "proportional"}]
    return _spec(extra, residual="proportional")


@pytest.mark.parametrize("where", ["observations", "residual"])
def test_proportional_error_rejects_zero_dv_naming_rows(where):
    """DV = 0 after the dose: unbounded density as IPRED -> 0, NaN at IPRED = 0 (e.g. before a lag)."""
    df = _lagged_theophylline(0.0)
    with pytest.raises(DataError, match=r"row 2, column DV: proportional residual error \(output CP\) with DV = 0 "
                                        r"at 1 observation\(s\) \(rows 2\).*combined error model"):
        build_model(_lag_spec(where), df)


def test_proportional_error_before_lag_is_minus_inf_not_nan():
    """DV > 0 where the lag makes IPRED exactly 0: log-density -inf, gradient finite (the sampler rejects)."""
    built = build_model(_lag_spec("observations"), _lagged_theophylline(0.5))
    m = built.model
    ip = _point(built, CL=2.5, V=30.0, KA=1.4)
    pointwise = m.compile_logp(vars=[m["DV"]], sum=False)(ip)[0]
    before = built.data.obs_time <= 0.5
    assert before.sum() >= 1 and not np.isnan(pointwise).any()
    assert np.all(pointwise[before] == -np.inf) and np.isfinite(pointwise[~before]).all()
    assert np.isfinite(m.compile_dlogp()(ip)).all()
