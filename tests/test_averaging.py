"""Model-averaged predictions: weights, allocation, simulation, VPC input and regimen attainment."""

import numpy as np
import pytest

from bayesnlme import datasets, load_spec
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.averaging import (
    allocate,
    evaluate_regimens_averaged,
    model_weights,
    simulate_averaged,
)
from bayesnlme.evaluate.regimens import evaluate_regimens
from bayesnlme.evaluate.simulate import simulate
from bayesnlme.inference.fit import fit_model
from bayesnlme.spec import ModelSpec
from bayesnlme.vpc import vpc_table


def test_allocate_adds_up_and_follows_the_weights():
    assert allocate({"a": 0.5, "b": 0.3, "c": 0.2}, 7) == {"a": 4, "b": 2, "c": 1}
    assert allocate({"a": 1.0, "b": 0.0}, 5) == {"a": 5, "b": 0}
    out = allocate({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 100)
    assert sum(out.values()) == 100 and max(out.values()) - min(out.values()) <= 1


@pytest.fixture(scope="module")
def fits():
    data = datasets.dataset_path("theophylline")
    combined = fit_model(load_spec("pk_1cmt_oral"), data, chains=2, draws=200, tune=200, seed=1, progress=False)
    d = load_spec("pk_1cmt_oral").to_dict()
    d["residual"] = {"type": "additive"}
    d["name"] = "pk_1cmt_oral_add"
    additive = fit_model(ModelSpec.from_dict(d), data, chains=2, draws=200, tune=200, seed=1, progress=False)
    return {"combined": combined, "additive": additive}


@pytest.mark.slow
def test_averaged_simulation_pools_each_models_own_replicates(fits):
    sim = simulate_averaged(fits, weights={"combined": 3, "additive": 1}, n_draws=40, seed=5)
    assert sim.dv.shape == (40, fits["combined"].data.n_obs)
    assert list(sim.model).count("combined") == 30 and list(sim.model).count("additive") == 10
    own = simulate(fits["additive"], n_draws=10, seed=5)
    np.testing.assert_array_equal(sim.dv[sim.model == "additive"], own.dv)
    single = simulate(fits["combined"], n_draws=30, seed=5)
    np.testing.assert_allclose(sim.pred, 0.75 * single.pred + 0.25 * own.pred)
    table = vpc_table(fits["combined"], sim=sim, bins=4)       # a model-averaged VPC
    assert len(table) >= 4 and {"OBSERVED", "SIM_MEDIAN"} <= set(table.columns)
    w = model_weights(fits)                                   # stacking weights by default
    assert set(w) == set(fits) and sum(w.values()) == pytest.approx(1.0) and min(w.values()) >= 0
    with pytest.raises(BayesNLMEInputError, match="non-negative"):
        model_weights(fits, {"combined": -1, "additive": 1})
    with pytest.raises(BayesNLMEInputError, match="unknown models"):
        model_weights(fits, {"other": 1})


@pytest.mark.slow
def test_averaged_attainment_is_the_weighted_average(fits):
    target = {"metric": "CTROUGH", "above": 5.0}
    kw = dict(doses=[300], intervals=[12], n_subjects=50, targets=[target], seed=2)
    avg, metrics = evaluate_regimens_averaged(fits, weights={"combined": 0.6, "additive": 0.4}, n_draws=20, **kw)
    a, _ = evaluate_regimens(fits["combined"], n_draws=12, **kw)
    b, _ = evaluate_regimens(fits["additive"], n_draws=8, **kw)
    label = [c for c in avg.columns if c.startswith("P(") and not c.endswith(("_lo", "_hi"))][0]
    assert avg.loc[0, label] == pytest.approx(0.6 * a.loc[0, label] + 0.4 * b.loc[0, label], abs=1e-12)
    assert set(metrics["MODEL"]) == {"combined", "additive"}
    assert metrics.groupby("MODEL")["DRAW"].nunique().to_dict() == {"combined": 12, "additive": 8}
    assert "combined 0.600" in avg.loc[0, "WEIGHTS"]


@pytest.mark.slow
def test_command_line_averages_vpc_and_regimens(fits, tmp_path, capsys):
    from bayesnlme.cli import main

    a, b = tmp_path / "combined", tmp_path / "additive"
    fits["combined"].save(a / "fit.nc")
    fits["additive"].save(b / "fit.nc")
    assert main(["vpc", str(a), "--average", str(b), "--weights", "3,1", "--n-sim", "20", "--bins", "4"]) == 0
    out = capsys.readouterr().out
    assert "simulated studies per fit {'combined': 15, 'additive': 5}" in out
    assert (a / "vpc" / "vpc.csv").exists()
    (tmp_path / "r.toml").write_text('doses = [300]\nintervals = [12]\nn_subjects = 20\nn_draws = 8\n'
                                     '[[targets]]\nmetric = "CTROUGH"\nabove = 5.0\n')
    assert main(["simulate", str(a), "--average", str(b), "--weights", "1,1", "--regimens",
                 str(tmp_path / "r.toml"), "--out", str(tmp_path / "sim")]) == 0
    assert "model-averaged over combined, additive: weights combined 0.500, additive 0.500" in capsys.readouterr().out
    assert main(["vpc", str(a), "--average", str(b), "--weights", "1"]) == 1
    assert "1 weights for 2 fits" in capsys.readouterr().err
