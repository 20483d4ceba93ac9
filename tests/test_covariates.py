"""Covariate factors (numpy and pytensor agree) and the covariate-effect summary / forest plot."""

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pytensor.tensor as pt
import pytest

from bayesnlme.data import read_nonmem
from bayesnlme.datasets import load_phenobarbital
from bayesnlme.evaluate.covariates import effect_ratios, log_factor, plot_covariate_forest
from bayesnlme.inference.fit import FitResult
from bayesnlme.spec import CovariateEffect, ModelSpec, load_spec


@pytest.mark.parametrize("kind,thetas,expected", [
    ("power", [0.75], lambda x: (x / 2.0) ** 0.75),
    ("exponential", [0.3], lambda x: np.exp(0.3 * (x - 2.0))),
    ("linear", [0.2], lambda x: 1 + 0.2 * (x - 2.0)),
    ("piecewise", [0.4, 0.1], lambda x: 1 + (0.4 * (np.minimum(x, 1.5) - 1.5) + 0.1 * (np.maximum(x, 1.5) - 1.5))
     - (0.1 * 0.5)),
])
def test_log_factor_numpy_and_pytensor_agree(kind, thetas, expected):
    eff = CovariateEffect(parameter="CL", covariate="WT", kind=kind, reference=2.0,
                          knot=1.5 if kind == "piecewise" else None)
    x = np.array([0.8, 1.5, 2.0, 3.1])
    np.testing.assert_allclose(np.exp(log_factor(eff, x, thetas)), expected(x), rtol=1e-12)
    sym = log_factor(eff, x, [pt.as_tensor_variable(t) for t in thetas], pt).eval()
    np.testing.assert_allclose(np.exp(sym), expected(x), rtol=1e-10)


def test_categorical_factor_only_for_its_level():
    eff = CovariateEffect(parameter="V", covariate="SEX", kind="categorical", reference=0, levels=(1, 2))
    f = np.exp(log_factor(eff, np.array([0, 1, 2, 1]), [0.2, -0.1]))
    np.testing.assert_allclose(f, [1, np.exp(0.2), np.exp(-0.1), np.exp(0.2)])


@pytest.fixture(scope="module")
def fake_fit():
    """A FitResult with known draws of the effects (no sampling: the summary is pure arithmetic)."""
    df = load_phenobarbital()   # bundled copy: tests never read ../shared
    df["APGLOW"] = (df["APGR"] < 5).astype(int)
    data = read_nonmem(df, name="phenobarbital")
    d = load_spec("pk_1cmt_iv").to_dict()
    d["covariates"] = [
        {"parameter": "CL", "covariate": "WT", "type": "power", "reference": 1.3},
        {"parameter": "V", "covariate": "WT", "type": "power", "reference": 1.3, "fixed": 1.0},
        {"parameter": "V", "covariate": "APGLOW", "type": "categorical", "reference": 0},
    ]
    spec = ModelSpec.from_dict(d).bind(data)
    rng = np.random.default_rng(4)
    post = {"WT_on_CL": rng.normal(0.8, 0.1, (2, 200)), "APGLOW_1_on_V": rng.normal(0.15, 0.05, (2, 200))}
    return FitResult(idata=az.from_dict(posterior=post), spec=spec, data=data, settings={})


def test_power_ratio_equals_hand_computation_from_draws(fake_fit):
    df = effect_ratios(fake_fit)
    wt = fake_fit.data.baseline_covariates(["WT"])["WT"].astype(float)
    p5, p95 = np.quantile(wt, [0.05, 0.95])
    theta = fake_fit.posterior_draws("WT_on_CL")
    cl = df[df["effect"] == "WT_on_CL"].reset_index(drop=True)
    assert list(cl["value"]) == pytest.approx([p5, p95])
    for i, x in enumerate((p5, p95)):
        r = (x / 1.3) ** theta
        assert cl.loc[i, "ratio_q50"] == pytest.approx(np.median(r))
        assert cl.loc[i, "ratio_lo"] == pytest.approx(np.quantile(r, 0.05))
        assert cl.loc[i, "ratio_hi"] == pytest.approx(np.quantile(r, 0.95))
    assert cl.loc[0, "reference"] == 1.3 and cl.loc[0, "model"] == "(WT/1.3)**theta"
    # fixed exponent: no interval, exactly (x/ref)**1
    v = df[df["effect"] == "WT_on_V"].reset_index(drop=True)
    assert bool(v.loc[1, "fixed"]) and v.loc[1, "ratio_lo"] == pytest.approx(p95 / 1.3) == v.loc[1, "ratio_hi"]
    # categorical: exp(theta) for the level
    a = df[df["covariate"] == "APGLOW"]
    assert list(a["value"]) == [1]
    assert a["ratio_q50"].iloc[0] == pytest.approx(np.median(np.exp(fake_fit.posterior_draws("APGLOW_1_on_V"))))


def test_chosen_values_and_forest_plot(fake_fit):
    fig, df = plot_covariate_forest(fake_fit, values={"WT": [1.0, 3.0]})
    cl = df[df["effect"] == "WT_on_CL"]
    assert list(cl["value"]) == [1.0, 3.0]
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and len(ax.get_yticklabels()) == len(df) == 5
    assert any(abs(line.get_xdata()[0] - 1.0) < 1e-12 for line in ax.get_lines())
    plt.close(fig)


# ------------------------------------------------------------------ one theta for two parameters (shared_with)
_SHARED = """
name = "shared_allometry"
structural = "2cmt_iv"
[parameters.CL]
prior = { dist = "lognormal", median = 0.005, sigma = 1 }
[parameters.V]
prior = { dist = "lognormal", median = 1.0, sigma = 1 }
[parameters.Q]
prior = { dist = "lognormal", median = 0.01, sigma = 1 }
iiv = "none"
[parameters.V2]
prior = { dist = "lognormal", median = 1.0, sigma = 1 }
iiv = "none"
[[covariates]]
parameter = "CL"
covariate = "WT"
type = "power"
reference = 1.5
prior = { dist = "normal", mu = 0.75, sigma = 0.2 }
[[covariates]]
parameter = "Q"
covariate = "WT"
type = "power"
reference = 2.0
shared_with = "CL"
[residual]
type = "proportional"
"""


def test_shared_theta_is_one_variable_used_by_both_parameters():
    import pytensor

    from bayesnlme.build import build_model

    spec = ModelSpec.from_toml_text(_SHARED)
    assert ModelSpec.from_dict(spec.to_dict()).to_dict() == spec.to_dict()
    assert [e.estimated_names() for e in spec.covariates] == [["WT_on_CL"], []]
    assert spec.population_parameter_names().count("WT_on_CL") == 1
    assert "WT_on_Q" not in spec.population_parameter_names()
    built = build_model(spec, load_phenobarbital())
    names = [rv.name for rv in built.model.free_RVs]
    assert names.count("WT_on_CL") == 1 and not any("WT_on_Q" in n for n in names)
    point = {k: np.asarray(v, float) for k, v in built.initial_point.items()}
    point["WT_on_CL"] = np.array(0.6)
    rvs = list(built.model.free_RVs)
    fn = pytensor.function(rvs, [built.individual["CL"], built.individual["Q"]], on_unused_input="ignore")
    cl, q = fn(*[point[rv.name] for rv in rvs])
    wt = built.data.baseline_covariates(["WT"])["WT"].to_numpy()
    # Q has no IIV: Q_i / Q_j = (WT_i / WT_j)^0.6 with CL's exponent; the ETAs are 0 at the initial point
    np.testing.assert_allclose(q / q[0], (wt / wt[0]) ** 0.6, rtol=1e-10)
    np.testing.assert_allclose(cl / cl[0], (wt / wt[0]) ** 0.6, rtol=1e-10)


@pytest.mark.parametrize("change, match", [
    (("shared_with = \"CL\"", "shared_with = \"V\""), r"needs an effect of WT on V"),
    (("reference = 2.0\nshared_with", "reference = 2.0\nprior = { dist = \"normal\", mu = 0, sigma = 1 }\nshared_with"),
     r"give 'prior' or 'fixed' there, not here"),
    (("type = \"power\"\nreference = 2.0", "type = \"linear\"\nreference = 2.0"),
     r"that effect is power, this one linear"),
    (("prior = { dist = \"normal\", mu = 0.75, sigma = 0.2 }", "fixed = 0.75"), r"write fixed = 0.75 here"),
    (("type = \"power\"\nreference = 2.0", "type = \"categorical\"\nreference = 2.0"),
     r"shared_with is for power, exponential and linear effects"),
])
def test_shared_theta_errors_name_the_effect(change, match):
    from bayesnlme.errors import SpecError

    with pytest.raises(SpecError, match=r"WT_on_Q.*" + match):
        ModelSpec.from_toml_text(_SHARED.replace(*change))
