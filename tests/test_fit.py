"""Fitting: NUTS on real and simulated data, summary, convergence checks, save/load."""

import hashlib
import json
import os

import arviz as az
import numpy as np
import pandas as pd
import pytest
from _pheno import pheno_study

from bayesnlme.atomic import OutputError
from bayesnlme.datasets import dataset_path, load_indometacin
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.inference.convergence import rank_rhat, without_arviz_numba
from bayesnlme.inference.fit import SUMMARY_COLUMNS, FitResult, _mode_problems, fit_model
from bayesnlme.spec import ModelSpec, load_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def theo():
    return fit_model(load_spec("pk_1cmt_oral"), dataset_path("theophylline"), chains=4, draws=1000,
                     tune=1000, seed=1, progress=False)


def test_theophylline_recovers_published_estimates(theo):
    s = theo.summary()
    # published population estimates (Pinheiro & Bates 2000; NONMEM guide): CL 2.8 L/h, V 32 L, KA 1.5 /h
    for p, ref in {"CL": 2.8, "V": 32.0, "KA": 1.5}.items():
        assert abs(s.loc[p, "q50"] - ref) < 2 * s.loc[p, "sd"], (p, s.loc[p, "q50"])
    assert (s["r_hat"] <= 1.01).all()
    assert int(theo.idata.sample_stats["diverging"].sum()) == 0
    assert theo.problems == []


def test_summary_table_in_pharmacometric_terms(theo):
    s = theo.summary()
    assert list(s.index) == ["CL", "V", "KA", "omega_CL", "omega_V", "omega_KA", "sigma_add", "sigma_prop"]
    assert list(s.reset_index().columns[:9]) == SUMMARY_COLUMNS
    om = theo.posterior_draws("omega_CL")
    assert s.loc["omega_CL", "cv_percent"] == pytest.approx(np.median(100 * np.sqrt(np.exp(om ** 2) - 1)))
    assert s.loc["CL", "q5"] < s.loc["CL", "q50"] < s.loc["CL", "q95"]
    assert s.loc["CL", "mean"] == pytest.approx(theo.posterior_draws("CL").mean())


def test_pointwise_log_likelihood_and_data_groups(theo):
    ll = theo.idata.log_likelihood["DV"]
    assert ll.dims == ("chain", "draw", "obs") and ll.shape == (4, 1000, 132)
    assert np.isfinite(ll.values).all()
    ids = theo.idata.constant_data["ID"].values
    assert list(ids[:11]) == ["1"] * 11 and ids[-1] == "12"
    loo = az.loo(theo.idata)
    assert np.isfinite(loo.elpd_loo)


def test_save_load_round_trip(theo, tmp_path):
    path = theo.save(tmp_path / "fit.nc")
    again = FitResult.load(path)
    pd.testing.assert_frame_equal(again.summary(), theo.summary())
    assert again.spec == theo.spec
    meta = again.metadata
    assert meta["data_sha256"] == hashlib.sha256(dataset_path("theophylline").read_bytes()).hexdigest()
    assert meta["settings"] == {"method": "nuts", "sampler": "nutpie", "device": "cpu", "chains": 4, "draws": 1000,
                                "tune": 1000, "seed": 1, "log_likelihood": "observation",
                                "eta_parameterisation": "population"}
    assert {"pymc", "pytensor", "arviz", "nutpie", "bayesnlme"} <= set(meta["versions"])
    assert again.data.n_obs == 132 and list(again.data.covariate_names) == ["WT", "DOSE_MGKG"]
    assert json.loads(again.idata.posterior.attrs["bayesnlme_spec"])["structural"] == "1cmt_oral"
    # written uncompressed (zlib: 8% smaller, 7x the writing time)
    import h5py
    with h5py.File(path) as f:
        assert f["posterior/eta_z"].compression is None and f["log_likelihood/DV"].compression is None


def test_failed_save_keeps_the_previous_file(theo, tmp_path, monkeypatch):
    path = theo.save(tmp_path / "fit.nc")
    before = hashlib.sha256(path.read_bytes()).hexdigest()

    def broken(self, filename, *a, **k):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(az.InferenceData, "to_netcdf", broken)
    # the project's one-line error (exit status 1 on the command line), not a bare OSError
    with pytest.raises(OutputError, match=r"fit.nc: could not write the result \(disk full\); the earlier file "
                                          r"is unchanged"):
        theo.save(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert os.listdir(tmp_path) == ["fit.nc"]


def _indometacin_spec():
    return load_spec("pk_1cmt_iv")


def test_same_seed_same_draws_and_pymc_sampler():
    kw = dict(chains=2, draws=150, tune=150, progress=False)
    a = fit_model(_indometacin_spec(), load_indometacin(), seed=11, **kw)
    b = fit_model(_indometacin_spec(), load_indometacin(), seed=11, **kw)
    c = fit_model(_indometacin_spec(), load_indometacin(), seed=12, **kw)
    np.testing.assert_array_equal(a.posterior_draws("CL"), b.posterior_draws("CL"))
    assert not np.array_equal(a.posterior_draws("CL"), c.posterior_draws("CL"))
    p = fit_model(_indometacin_spec(), load_indometacin(), seed=11, sampler="pymc", **kw)
    assert list(p.summary().index) == list(a.summary().index)
    assert p.idata.log_likelihood["DV"].shape == (2, 150, 66)
    # two samplers, one posterior: medians agree within a posterior SD
    sa, sp = a.summary(), p.summary()
    assert abs(sa.loc["CL", "q50"] - sp.loc["CL", "q50"]) < sa.loc["CL", "sd"]


def test_bad_sampler_settings():
    with pytest.raises(BayesNLMEInputError, match="unknown sampler 'stan'"):
        fit_model(_indometacin_spec(), load_indometacin(), sampler="stan")
    with pytest.raises(BayesNLMEInputError, match="draws must be an integer >= 1"):
        fit_model(_indometacin_spec(), load_indometacin(), draws=0)


def simulate_study(seed=5, n=40):
    """Repeated IV infusions, allometric CL, correlated ETA on CL and V, proportional error."""
    rng = np.random.default_rng(seed)
    truth = {"CL": 4.0, "V": 40.0, "WT_on_CL": 0.75, "omega_CL": 0.3, "omega_V": 0.25,
             "corr_CL_V": 0.6, "sigma_prop": 0.1}
    wt = rng.uniform(45, 110, n)
    cov = np.array([[0.09, 0.6 * 0.3 * 0.25], [0.6 * 0.3 * 0.25, 0.0625]])
    eta = rng.multivariate_normal([0, 0], cov, n)
    cl = truth["CL"] * (wt / 70) ** 0.75 * np.exp(eta[:, 0])
    v = truth["V"] * np.exp(eta[:, 1])
    times = np.array([0.5, 1, 2, 4, 8, 11.5, 24.5, 36, 47.5])
    rows = []
    for i in range(n):
        rows.append(dict(ID=i + 1, TIME=0.0, DV=".", AMT=200.0, RATE=400.0, EVID=1, MDV=1, II=12, ADDL=3, WT=wt[i]))
        k = cl[i] / v[i]
        for t in times:
            conc = 0.0
            for td in (0, 12, 24, 36):
                if t > td:  # 0.5 h infusion of 200 mg
                    tin = min(t - td, 0.5)
                    conc += 400 / cl[i] * (1 - np.exp(-k * tin)) * np.exp(-k * (t - td - tin))
            rows.append(dict(ID=i + 1, TIME=t, DV=conc * np.exp(0) * (1 + 0.1 * rng.normal()), AMT=0, RATE=0,
                             EVID=0, MDV=0, II=0, ADDL=0, WT=wt[i]))
    return pd.DataFrame(rows), truth


def test_recovers_known_truth_on_simulated_data():
    df, truth = simulate_study()
    d = load_spec("pk_1cmt_infusion").to_dict()
    d["random_effects"] = {"blocks": [["CL", "V"]]}
    d["covariates"] = [{"parameter": "CL", "covariate": "WT", "type": "power", "reference": 70}]
    d["residual"] = {"type": "proportional"}
    res = fit_model(ModelSpec.from_dict(d), df, chains=2, draws=500, tune=500, seed=3, progress=False)
    s = res.summary()
    assert set(truth) <= set(s.index)
    for p, value in truth.items():
        assert abs(s.loc[p, "q50"] - value) < 3 * s.loc[p, "sd"], (p, s.loc[p, "q50"], value)
    # the data pin CL and V down to a few percent
    assert s.loc["CL", "sd"] / s.loc["CL", "q50"] < 0.1


class _FakeResult:
    def __init__(self, posterior, spec):
        self.idata = az.from_dict(posterior=posterior)
        self.spec = spec

    parameter_names = FitResult.parameter_names


def test_flip_flop_chains_are_reported():
    rng = np.random.default_rng(0)
    cl = rng.normal(3, 0.1, (2, 200))
    v = rng.normal(30, 1, (2, 200))
    ka = np.stack([rng.normal(1.5, 0.1, 200), rng.normal(0.05, 0.005, 200)])  # chain 1: KA < CL/V
    post = {"CL": cl, "V": v, "KA": ka, "omega_CL": np.abs(rng.normal(0.3, 0.02, (2, 200))),
            "omega_V": np.abs(rng.normal(0.2, 0.02, (2, 200))), "omega_KA": np.abs(rng.normal(0.5, 0.02, (2, 200))),
            "sigma_add": np.abs(rng.normal(0.3, 0.02, (2, 200))), "sigma_prop": np.abs(rng.normal(0.1, 0.01, (2, 200)))}
    msgs = _mode_problems(_FakeResult(post, load_spec("pk_1cmt_oral")))
    assert len(msgs) == 1 and "chain(s) 1" in msgs[0] and "flip-flop" in msgs[0]
    post["KA"] = np.stack([rng.normal(1.5, 0.1, 200), rng.normal(1.5, 0.1, 200)])
    post["CL"] = np.stack([rng.normal(3, 0.1, 200), rng.normal(6, 0.1, 200)])
    msgs = _mode_problems(_FakeResult(post, load_spec("pk_1cmt_oral")))
    assert len(msgs) == 1 and "mode for CL" in msgs[0]


def test_phenobarbital_repeated_doses_match_published_nonmem():
    """Neonates, up to 15 IV doses each: CL and V per kg and the Apgar < 5 effect on V.

    Published NONMEM FOCE-I estimates for this model (the `pheno` example): CL 0.0047 L/h/kg,
    V 0.98 L/kg, Apgar < 5 raising V by about 16%.
    """
    spec, df = pheno_study()
    res = fit_model(spec, df, chains=2, draws=500, tune=500, seed=2, progress=False)
    s = res.summary()
    assert abs(s.loc["CL", "q50"] - 0.0047) < 2 * s.loc["CL", "sd"], s.loc["CL"]
    assert abs(s.loc["V", "q50"] - 0.98) < 2 * s.loc["V", "sd"], s.loc["V"]
    ratio = np.exp(res.posterior_draws("APGRLOW_1_on_V"))
    assert abs(np.median(ratio) - 1.16) < 2 * ratio.std()
    assert np.median(ratio) > 1.0


def test_arviz_numba_is_off_inside_the_block_and_restored_after_it():
    """ArviZ's numba helpers are compiled again in every process (~0.3 s a fit); the diagnostics run
    them on NumPy instead, with the same values, and the global switch comes back as it was."""
    rng = np.random.default_rng(5)
    idata = az.from_dict(posterior={"CL": rng.normal(3.0, 0.3, size=(4, 500)).cumsum(axis=1) / 50,
                                    "ETA": rng.normal(size=(4, 500, 6, 2))})
    before = az.Numba.numba_flag
    with without_arviz_numba():
        assert az.Numba.numba_flag is False
        off = az.summary(idata, kind="diagnostics", round_to="none")
    assert az.Numba.numba_flag == before
    az.Numba.enable_numba()
    try:
        on = az.summary(idata, kind="diagnostics", round_to="none")
        with pytest.raises(RuntimeError), without_arviz_numba():
            raise RuntimeError("a failure inside the block")
        assert az.Numba.numba_flag is True
    finally:
        az.Numba.numba_flag = before
    np.testing.assert_allclose(off.to_numpy(), on.to_numpy(), rtol=1e-9)


def test_rank_rhat_of_many_variables_is_arvizs():
    """The ETA check's R-hat, all variables at once, equals ArviZ's one-variable-at-a-time rank R-hat
    (ties averaged, NaN and constant variables, an odd number of draws, a chain off, heavy tails)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 201, 50, 3))
    x[:, :, 0, 0] = 1.0                                  # constant: NaN
    x[1, 5, 1, 1] = np.nan                               # a NaN draw: NaN
    x[0, :, 2, 2] += 1.5                                 # one chain off: R-hat ~1.15
    x[:, :, 3, 0] = np.round(x[:, :, 3, 0])              # heavy ties
    x[2, 7:9, 6, 0] = x[2, 6, 6, 0]                      # repeated draws (a rejected proposal)
    x[..., 4, 1] = rng.standard_cauchy(size=(4, 201))
    with without_arviz_numba():
        ref = az.rhat(az.from_dict(posterior={"a": x}))["a"].values
    got = rank_rhat(x, chunk=7)                          # blocks that split the variables unevenly
    assert np.array_equal(np.isnan(got), np.isnan(ref)) and np.isnan(got[0, 0]) and np.isnan(got[1, 1])
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0)
    assert got[2, 2] > 1.1 and np.nanmax(np.delete(got.ravel(), 8)) < 1.05
    assert np.isnan(rank_rhat(x[:1])).all() and rank_rhat(x[:, :, 0, 1]).shape == ()


def test_an_eta_whose_chains_disagree_is_named(theo):
    """One subject's ETA of V shifted in one chain (the chains disagree about that subject only): the
    convergence check names the ETA and the ID; the population parameters are untouched."""
    import dataclasses

    from bayesnlme.inference.fit import convergence_problems

    idata = theo.idata.copy()
    eta = idata.posterior["ETA"]
    assert eta.dims[2:] == ("ID", "eta_parameter")
    i, j = list(eta["ID"].values).index("7"), list(eta["eta_parameter"].values).index("V")
    values = eta.values.copy()
    values[1, :, i, j] += 3 * values[:, :, i, j].std()
    idata.posterior["ETA"] = (eta.dims, values)
    problems = convergence_problems(dataclasses.replace(theo, idata=idata))
    assert len(problems) == 1 and problems[0].startswith("R-hat ")
    assert problems[0].endswith("for ETA of V in ID 7: individual estimates have not converged")
    assert convergence_problems(theo) == []
