"""PD and exposure-response: Emax family effects, joint PK/PD by DVID, sequential PK -> PD.

Data simulated with known truth: 1-compartment IV PK (CL 2 L/h, V 20 L) and
a direct Emax effect (E0 10, EMAX 40, EC50 2 mg/L).  The joint fit recovers
PK and PD together (each DVID with its own residual error); the sequential
fit takes a PK-only fit's individual parameters (posterior medians) as an
exposure column and recovers the PD parameters.
"""

import numpy as np
import pandas as pd
import pytensor.tensor as pt
import pytest

from bayesnlme.build import build_model
from bayesnlme.errors import DataError, SpecError
from bayesnlme.evaluate.sequential import add_pk_predictions
from bayesnlme.inference.fit import fit_model
from bayesnlme.spec import ModelSpec
from bayesnlme.structural import LIBRARY, evaluate
from bayesnlme.structural.pd import drug_effect, pd_model

TRUTH = {"CL": 2.0, "V": 20.0, "E0": 10.0, "EMAX": 40.0, "EC50": 2.0, "sigma_prop_CP": 0.1,
         "sigma_add_EFFECT": 2.0}
TIMES = [0.25, 0.5, 1, 2, 4, 8, 12, 24]
_LN = lambda m, s: {"dist": "lognormal", "median": m, "sigma": s}   # noqa: E731
_OM = {"dist": "halfnormal", "sigma": 0.5}
PK_PARAMS = {"CL": {"prior": _LN(3, 1), "omega": _OM}, "V": {"prior": _LN(15, 1), "omega": _OM}}
PD_PARAMS = {"E0": {"prior": _LN(8, 1), "iiv": "none"}, "EMAX": {"prior": _LN(30, 1), "iiv": "none"},
             "EC50": {"prior": _LN(1, 1.5), "iiv": "none"}}
OBS = [{"dvid": 1, "output": "CP", "likelihood": "proportional"},
       {"dvid": 2, "output": "EFFECT", "likelihood": "additive",
        "sigma_add": {"dist": "halfnormal", "sigma": 5.0}}]


def simulate(n=16, seed=21):
    rng = np.random.default_rng(seed)
    t = TRUTH
    rows, eps = [], {1: [], 2: []}
    for i in range(1, n + 1):
        cl, v = t["CL"] * np.exp(0.25 * rng.standard_normal()), t["V"] * np.exp(0.2 * rng.standard_normal())
        dose = [50.0, 100.0, 200.0][i % 3]
        rows.append({"ID": i, "TIME": 0.0, "DV": 0.0, "AMT": dose, "EVID": 1, "DVID": 0})
        for time in TIMES:
            c = dose / v * np.exp(-cl / v * time)
            eps[1].append(t["sigma_prop_CP"] * rng.standard_normal())
            rows.append({"ID": i, "TIME": time, "DV": c * (1 + eps[1][-1]), "AMT": 0.0, "EVID": 0, "DVID": 1})
            e = t["E0"] + t["EMAX"] * c / (t["EC50"] + c)
            eps[2].append(t["sigma_add_EFFECT"] * rng.standard_normal())
            rows.append({"ID": i, "TIME": time, "DV": e + eps[2][-1], "AMT": 0.0, "EVID": 0, "DVID": 2})
    df = pd.DataFrame(rows)
    # realised residual SDs: what 128 records per type can pin down (seed 21: 0.093 and 1.76)
    df.attrs["realised"] = {"sigma_prop_CP": float(np.std(eps[1])), "sigma_add_EFFECT": float(np.std(eps[2]))}
    return df


@pytest.fixture(scope="module")
def joint():
    spec = ModelSpec.from_dict({"parameters": {**PK_PARAMS, **PD_PARAMS}, "observations": OBS},
                               structural=LIBRARY["pkpd_1cmt_iv_emax"])
    df = simulate()
    result = fit_model(spec, df, chains=2, draws=300, tune=300, seed=2)
    result.realised = df.attrs["realised"]
    return result


@pytest.fixture(scope="module")
def sequential():
    df = simulate()
    pk_spec = ModelSpec.from_dict({"parameters": PK_PARAMS, "residual": {"type": "proportional"}},
                                  structural=LIBRARY["1cmt_iv"])
    pk_fit = fit_model(pk_spec, df[df["DVID"] != 2], chains=2, draws=300, tune=300, seed=2)
    pd_data = add_pk_predictions(pk_fit, df[df["DVID"] != 1], column="CIPRED")
    pd_spec = ModelSpec.from_dict({"parameters": PD_PARAMS, "residual": {"type": "additive"}},
                                  structural=pd_model("emax", "column", column="CIPRED"))
    pd_fit = fit_model(pd_spec, pd_data, chains=2, draws=300, tune=300, seed=2)
    pd_fit.realised_sigma = df.attrs["realised"]["sigma_add_EFFECT"]
    return pk_fit, pd_data, pd_fit


def test_joint_pkpd_recovers_truth(joint):
    s = joint.summary()
    assert list(s.index) == ["CL", "V", "E0", "EMAX", "EC50", "omega_CL", "omega_V", "sigma_prop_CP",
                             "sigma_add_EFFECT"]
    # SIGMAs against the realised residual SDs; within 3 posterior SDs (7 simultaneous 90% intervals
    # would all hold for only ~half of the seeds: 0.9^7)
    for name, truth in {**TRUTH, **joint.realised}.items():
        assert abs(s.loc[name, "q50"] - truth) < 3 * s.loc[name, "sd"], (name, s.loc[name, ["q50", "sd"]].tolist())
    assert s.loc["EC50", "q95"] / s.loc["EC50", "q5"] < 2.5     # EC50 pinned within a factor 2.5
    assert (s["r_hat"] < 1.05).all()
    # IPRED is each record's own output: concentrations on DVID 1, effects on DVID 2
    from bayesnlme.evaluate.predict import posterior_predictions

    ipred = posterior_predictions(joint)["IPRED"].median(("chain", "draw")).values
    dvid, dv = joint.data.obs_dvid, joint.data.obs_dv
    for d in (1, 2):
        assert np.corrcoef(ipred[dvid == d], dv[dvid == d])[0, 1] > 0.95
    assert ipred[dvid == 2].min() > 9.0 and ipred[dvid == 1].max() < 15.0


def test_sequential_pd_recovers_truth(sequential):
    pk_fit, pd_data, pd_fit = sequential
    assert pd_data["CIPRED"].notna().all()
    obs = pd_data[pd_data["EVID"] == 0]
    # the sequential exposure is close to the true concentrations (PK well determined)
    assert obs["CIPRED"].gt(0).all()
    s = pd_fit.summary()
    for name in ("E0", "EMAX", "EC50"):   # within 3 posterior SDs, not 90% intervals (see above)
        assert abs(s.loc[name, "q50"] - TRUTH[name]) < 3 * s.loc[name, "sd"], \
            (name, s.loc[name, ["q50", "sd"]].tolist())
    realised = pd_fit.realised_sigma
    assert abs(s.loc["sigma_add", "q50"] - realised) < 3 * s.loc["sigma_add", "sd"]


def test_drug_effects_match_numpy():
    x = np.array([0.0, 0.5, 2.0, 10.0])
    p = {"E0": 10.0, "EMAX": 40.0, "EC50": 2.0, "GAMMA": 2.5, "SLOPE": 3.0}
    pt_p = {k: pt.as_tensor(np.float64(v)) for k, v in p.items()}
    xt = pt.as_tensor(x)
    np.testing.assert_allclose(drug_effect("emax", xt, pt_p).eval(), 10 + 40 * x / (2 + x))
    np.testing.assert_allclose(drug_effect("sigmoid_emax", xt, pt_p).eval(),
                               10 + 40 * x ** 2.5 / (2 ** 2.5 + x ** 2.5), rtol=1e-12)
    np.testing.assert_allclose(drug_effect("linear", xt, pt_p).eval(), 10 + 3 * x)
    np.testing.assert_allclose(drug_effect("loglinear", xt, pt_p).eval(), 10 + 3 * np.log1p(x))


def test_dose_and_pk_drivers():
    df = simulate(n=3)
    m = pd_model("emax", "dose")
    got = evaluate(m, {"E0": 1.0, "EMAX": 10.0, "EC50": 100.0}, build_model(
        ModelSpec.from_dict({"parameters": PD_PARAMS, "residual": {"type": "additive"}}, structural=m),
        df[df["DVID"] != 1]).data)
    dose = np.repeat([100.0, 200.0, 50.0], len(TIMES))
    np.testing.assert_allclose(got, 1 + 10 * dose / (100 + dose))
    joint = LIBRARY["pkpd_1cmt_iv_emax"]
    data = build_model(ModelSpec.from_dict({"parameters": {**PK_PARAMS, **PD_PARAMS}, "observations": OBS},
                                           structural=joint), df).data
    cp = evaluate(joint, {"CL": 2.0, "V": 20.0, "E0": 10.0, "EMAX": 40.0, "EC50": 2.0}, data)
    dose_of = np.repeat([100.0, 200.0, 50.0], 2 * len(TIMES))
    np.testing.assert_allclose(cp, dose_of / 20 * np.exp(-0.1 * data.obs_time), rtol=1e-12)


def test_errors():
    df = simulate(n=2)
    spec = ModelSpec.from_dict({"parameters": PD_PARAMS, "residual": {"type": "additive"}},
                               structural=pd_model("emax", "column", column="AUC"))
    with pytest.raises(DataError, match="exposure column 'AUC' is not in the data"):
        build_model(spec, df[df["DVID"] == 2])
    with pytest.raises(SpecError, match="each needs a dvid"):
        ModelSpec.from_dict({"parameters": {**PK_PARAMS, **PD_PARAMS},
                             "observations": [OBS[0], {"output": "EFFECT", "likelihood": "additive"}]},
                            structural=LIBRARY["pkpd_1cmt_iv_emax"])
    with pytest.raises(SpecError, match="DVID values must be unique"):
        ModelSpec.from_dict({"parameters": {**PK_PARAMS, **PD_PARAMS},
                             "observations": [OBS[0], {**OBS[1], "dvid": 1}]},
                            structural=LIBRARY["pkpd_1cmt_iv_emax"])
    with pytest.raises(ValueError, match="closed-form PK model"):
        pd_model("emax", "pk")


def test_regimens_of_a_joint_pkpd_fit_use_the_concentration_type(joint):
    """Regimen evaluation of a spec with DVID types simulates the CP type: AUCtau = Dose / CL exactly."""
    from bayesnlme.evaluate.regimens import evaluate_regimens

    table, metrics = evaluate_regimens(joint, doses=[100, 200], intervals=[12], n_subjects=40, n_draws=40,
                                       targets=[{"metric": "CTROUGH", "above": 1.0}])
    assert list(table["DOSE"]) == [100, 200]
    cl = joint.posterior_draws("CL")
    # the median over new subjects and draws of Dose / CL_i; CL_i log-normal around the typical CL
    for dose, auc in zip(table["DOSE"], table["AUCTAU_median"]):
        assert abs(auc / (dose / np.median(cl)) - 1) < 0.1, (dose, auc, np.median(cl))
    assert table["AUCTAU_median"].iloc[1] == pytest.approx(2 * table["AUCTAU_median"].iloc[0], rel=0.1)


def test_regimens_refused_in_one_sentence_without_a_concentration_type():
    from bayesnlme.errors import BayesNLMEInputError
    from bayesnlme.evaluate.regimens import concentration_dvid
    from bayesnlme.spec import load_spec

    assert concentration_dvid(load_spec("pk_1cmt_oral")) is None
    assert concentration_dvid(load_spec("pd_emax")) == 1
    with pytest.raises(BayesNLMEInputError, match=r"observes none \(its observation models: EFFECT poisson\)"):
        concentration_dvid(load_spec("count_poisson"))


def test_library_pd_emax_starts_although_emax_starts_at_zero():
    """EMAX starts at its prior median 0, where EC50 has no influence and its gradient is exactly 0.

    nutpie scales its initial mass matrix by the gradient and could not start there ("All
    initialization points failed"); such variables are now jittered like the random effects.
    """
    from bayesnlme.inference.startpoint import check_start
    from bayesnlme.spec import load_spec

    df = simulate()
    spec = load_spec("pd_emax")
    assert "EC50" in check_start(build_model(spec, df))
    res = fit_model(spec, df, chains=1, draws=30, tune=30, seed=1, progress=False)
    assert np.isfinite(res.posterior_draws("EC50")).all()
