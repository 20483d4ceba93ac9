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
