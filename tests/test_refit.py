"""A model compiled once and sampled again for new DV gives exactly the draws of a fresh fit_model."""

import numpy as np
import pandas as pd
import pytest

from bayesnlme import datasets, load_spec, read_nonmem
from bayesnlme.inference.fit import fit_model
from bayesnlme.inference.refit import refitter, with_dv


def test_refit_draws_equal_fit_model_draws():
    frame = pd.read_csv(datasets.dataset_path("theophylline"))
    design = read_nonmem(frame[frame["ID"] <= 4].reset_index(drop=True))
    spec = load_spec("pk_1cmt_oral")
    refit = refitter(spec, design, chains=2, draws=100, tune=100)
    assert refit.swappable and refitter(spec, design, chains=2, draws=100, tune=100) is refit   # cached
    dv = design.obs_dv * 1.1
    post = refit.sample(dv, seed=5).posterior
    fit = fit_model(spec, with_dv(design, dv), chains=2, draws=100, tune=100, seed=5, progress=False)
    for name in ("CL", "V", "omega_CL", "sigma_prop"):
        np.testing.assert_array_equal(post[name].values, fit.idata.posterior[name].values)
    # the fit keeps the graph it sampled (DV in its container), so predictions and diagnostics need no rebuild
    assert np.array_equal(fit.built.model["DV_data"].get_value(), dv)


def test_masked_records_leave_the_log_density_as_if_removed():
    """Dropout by mask (one compiled model for every replicate) = the model of the kept records."""
    import pytensor

    from bayesnlme.build import build_model
    from bayesnlme.inference.refit import _add_mask

    frame = pd.read_csv(datasets.dataset_path("theophylline"))
    design = read_nonmem(frame[frame["ID"] <= 4].reset_index(drop=True))
    spec = load_spec("pk_1cmt_oral")
    keep = np.ones(design.n_obs, bool)
    keep[[3, 7, 8, 20, 30, 31, 32]] = False            # later records of some subjects, each keeps some
    masked = build_model(spec, design, check_residual=False, dv_data=True)
    _add_mask(masked.model)
    masked.model["DV_drop"].set_value((~keep).astype(float))
    rows = np.ones(len(design.records), bool)
    rows[np.flatnonzero(design.frame["_OBS"].to_numpy(bool))[~keep]] = False
    reduced = build_model(spec, design.records[rows].reset_index(drop=True))
    point = masked.model.initial_point()
    rng = np.random.default_rng(0)
    point = {k: v + 0.2 * rng.standard_normal(np.shape(v)) for k, v in point.items()}
    lp = {}
    for key, built in (("masked", masked), ("reduced", reduced)):
        fn = pytensor.function(built.model.value_vars, built.model.logp())
        lp[key] = fn(*[point[v.name] for v in built.model.value_vars])
    assert lp["masked"] == pytest.approx(lp["reduced"], rel=1e-12)
    masked.model["DV_drop"].set_value(np.zeros(design.n_obs))
    fn = pytensor.function(masked.model.value_vars, masked.model.logp())
    assert abs(fn(*[point[v.name] for v in masked.model.value_vars]) - lp["reduced"]) > 1.0


def _censored(design, lloq: float):
    """The design's DV censored below ``lloq`` (M3: CENS = 1, DV = LLOQ): the frame, DV and CENS per record."""
    below = design.obs_dv < lloq
    dv = np.where(below, lloq, design.obs_dv)
    return with_dv(design, dv, below.astype(int)), dv, below.astype(int)


@pytest.mark.parametrize("error", ["combined", "proportional", "exponential"])
def test_censoring_as_data_gives_the_m3_log_density(error):
    """CENS in a data container (one compiled model for any censored records) = CENS as constants."""
    import pytensor

    from bayesnlme.build import build_model
    from bayesnlme.spec import ModelSpec

    frame = pd.read_csv(datasets.dataset_path("theophylline"))
    frame = frame[frame["ID"] <= 4].reset_index(drop=True)
    frame.loc[(frame["TIME"] == 0) & (frame["EVID"] == 0), "MDV"] = 1   # pre-dose: IPRED 0 (refused by fit_model)
    design = read_nonmem(frame)
    d = load_spec("pk_1cmt_oral").to_dict()
    halfnormal = {"dist": "halfnormal", "sigma": 0.3}
    d["residual"] = {"combined": d["residual"], "proportional": {"type": "proportional", "sigma_prop": halfnormal},
                     "exponential": {"type": "exponential", "sigma_exp": halfnormal}}[error]
    spec = ModelSpec.from_dict(d)
    censored, dv, cens = _censored(design, 2.0)
    assert 0 < cens.sum() < len(cens)
    constant = build_model(spec, censored, check_residual=False)
    by_data = build_model(spec, design, check_residual=False, dv_data=True, cens_data=True)
    assert "DV_cens" in by_data.model.named_vars and "DV_cens" not in constant.model.named_vars
    by_data.model["DV_data"].set_value(dv)
    by_data.model["DV_cens"].set_value(cens.astype(float))
    rng = np.random.default_rng(1)
    # FAST_COMPILE: the same graphs evaluated without compiling them to C (this test is about the formulas)
    fns = {k: pytensor.function(b.model.value_vars, [b.model.logp(), *pytensor.grad(b.model.logp(),
                                                                                       b.model.value_vars)],
                                mode="FAST_COMPILE")
           for k, b in (("constant", constant), ("by_data", by_data))}
    start = constant.model.initial_point()
    for _ in range(3):
        point = {k: v + 0.3 * rng.standard_normal(np.shape(v)) for k, v in start.items()}
        out = {k: fn(*[point[v.name] for v in (constant if k == "constant" else by_data).model.value_vars])
               for k, fn in fns.items()}
        assert np.isfinite(out["by_data"][0])
        assert out["by_data"][0] == pytest.approx(out["constant"][0], rel=1e-12)
        for g_data, g_const in zip(out["by_data"][1:], out["constant"][1:]):
            np.testing.assert_allclose(g_data, g_const, rtol=1e-9, atol=1e-9)
    # nothing censored: the container path is the plain density
    by_data.model["DV_data"].set_value(design.obs_dv)
    by_data.model["DV_cens"].set_value(np.zeros(design.n_obs))
    plain = build_model(spec, design, check_residual=False)
    lp = {k: pytensor.function(b.model.value_vars, b.model.logp(), mode="FAST_COMPILE")(
        *[start[v.name] for v in b.model.value_vars]) for k, b in (("by_data", by_data), ("plain", plain))}
    assert lp["by_data"] == pytest.approx(lp["plain"], rel=1e-12)


def test_censored_refits_sample_one_compiled_model(monkeypatch):
    """Replicates with different records below the LLOQ: no fit from scratch, the posterior of a fresh fit."""
    import bayesnlme.inference.refit as refit_module

    frame = pd.read_csv(datasets.dataset_path("theophylline"))
    design = read_nonmem(frame[frame["ID"] <= 4].reset_index(drop=True))
    spec = load_spec("pk_1cmt_oral")
    refit = refitter(spec, design, chains=2, draws=300, tune=300, censored=True)
    assert refit.censorable
    censored, dv, cens = _censored(design, 5.0)     # 40% of the records: their limit is not their value
    fresh = fit_model(spec, censored, chains=2, draws=300, tune=300, seed=4, progress=False).idata.posterior

    def no_fit(*args, **kwargs):
        raise AssertionError("a censored replicate was fitted from scratch")

    monkeypatch.setattr(refit_module, "fit_model", no_fit)
    post = refit.sample(dv, seed=4, cens=cens).posterior
    for name in ("CL", "V", "KA"):
        sd = float(fresh[name].std())
        assert abs(float(post[name].mean()) - float(fresh[name].mean())) < 0.5 * sd, name
    # the same compiled model, other records censored: another posterior (CENS reached the log density)
    _, dv_more, cens_more = _censored(design, 2.0)
    other = refit.sample(dv_more, seed=4, cens=cens_more).posterior
    assert not np.array_equal(other["CL"].values, post["CL"].values)
    with pytest.raises(ValueError, match="cens must be 0 or 1"):
        refit.sample(dv, seed=4, cens=np.full(design.n_obs, 2))
