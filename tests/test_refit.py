"""A model compiled once and sampled again for new DV gives exactly the draws of a fresh fit_model."""

import numpy as np
import pandas as pd

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
