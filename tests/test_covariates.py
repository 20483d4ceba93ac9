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
