"""Diagnostics: predictions, residuals, NPDE, shrinkage, convergence report, plots, CLI diagnose."""

import arviz as az
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bayesnlme.cli import main
from bayesnlme.datasets import dataset_path
from bayesnlme.evaluate import diagnostics, plots
from bayesnlme.evaluate.predict import posterior_predictions, simulate_replicates
from bayesnlme.inference.fit import FitResult, fit_model
from bayesnlme.spec import load_spec
from bayesnlme.structural import evaluate


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("theo")
    res = fit_model(load_spec("pk_1cmt_oral"), dataset_path("theophylline"), chains=2, draws=300, tune=300,
                    seed=4, progress=False)
    res.save(folder / "fit.nc")
    return folder, FitResult.load(folder / "fit.nc")


@pytest.fixture(scope="module")
def gof(saved):
    return diagnostics.gof_table(saved[1], n_npde=300, seed=1)


@pytest.mark.slow
def test_ipred_and_pred_equal_the_closed_form_at_a_draw(saved):
    res = saved[1]
    pp = posterior_predictions(res)
    post = res.idata.posterior
    c, d = 1, 123
    eta = post["ETA"].values[c, d]
    tv = {p: float(post[p].values[c, d]) for p in ("CL", "V", "KA")}
    ind = {p: tv[p] * np.exp(eta[:, i]) for i, p in enumerate(("CL", "V", "KA"))}
    np.testing.assert_allclose(pp["IPRED"].values[c, d], evaluate(res.spec.structural, ind, res.data), rtol=1e-10)
    np.testing.assert_allclose(pp["PRED"].values[c, d], evaluate(res.spec.structural, tv, res.data), rtol=1e-10)
    sd = np.sqrt(post["sigma_add"].values[c, d] ** 2
                 + (post["sigma_prop"].values[c, d] * pp["IPRED"].values[c, d]) ** 2)
    np.testing.assert_allclose(pp["RES_SD"].values[c, d], sd, rtol=1e-10)


@pytest.mark.slow
def test_gof_table_columns_and_residual_calibration(gof, saved):
    assert list(gof.columns) == ["ROW", "ID", "TIME", "DV", "PRED", "IPRED", "IPRED_q5", "IPRED_q95",
                                 "IWRES", "CWRES", "NPDE"]
    assert len(gof) == 132 and (gof["IPRED_q5"] <= gof["IPRED_q95"]).all()
    # a well-specified model: NPDE ~ N(0, 1); 132 values -> SE of the mean ~0.09
    assert abs(gof["NPDE"].mean()) < 0.3 and 0.7 < gof["NPDE"].std() < 1.3
    assert abs(gof["CWRES"].mean()) < 0.3
    # IPRED tracks DV much more closely than PRED
    assert (gof["DV"] - gof["IPRED"]).abs().mean() < 0.6 * (gof["DV"] - gof["PRED"]).abs().mean()


def test_npde_is_standard_normal_and_decorrelated():
    rng = np.random.default_rng(0)
    n_sub, n_i, k = 300, 4, 1000
    cov = 0.5 * np.ones((n_i, n_i)) + 0.5 * np.eye(n_i)        # strongly correlated within subject
    mean = np.array([1.0, 2.0, 3.0, 4.0])
    subject = np.repeat(np.arange(n_sub), n_i)
    dv = rng.multivariate_normal(mean, cov, n_sub).ravel()
    sims = rng.multivariate_normal(mean, cov, (k, n_sub)).reshape(k, -1)
    out = diagnostics.npde(dv, subject, sims).reshape(n_sub, n_i)
    assert stats.kstest(out.ravel(), "norm").pvalue > 0.01
    within = np.corrcoef(out[:, 0], out[:, 1])[0, 1]
    assert abs(within) < 0.15          # raw residuals would correlate at 0.5
    raw = (dv.reshape(n_sub, n_i) - mean)
    assert np.corrcoef(raw[:, 0], raw[:, 1])[0, 1] > 0.35
    # a biased model gives shifted NPDE
    biased = diagnostics.npde(dv + 1.0, subject, sims)
    assert biased.mean() > 0.5
    # a failed simulation (NaN: an ODE solve past its step budget) leaves only its subject's draw out
    broken = sims.copy()
    broken[7, 0] = np.nan
    got = diagnostics.npde(dv, subject, broken)
    np.testing.assert_array_equal(got[n_i:], out.ravel()[n_i:])
    np.testing.assert_allclose(got[:n_i], diagnostics.npde(dv[:n_i], subject[:n_i], np.delete(sims[:, :n_i], 7, 0)))
    cens = np.zeros(len(dv), int)
    cens[[0, 5]] = 1
    imputed = diagnostics.impute_censored(dv, cens, None, broken, np.random.default_rng(1))
    assert np.isfinite(imputed).all() and imputed[0] <= dv[0] and imputed[5] <= dv[5]


def test_npde_of_a_point_mass_record_is_uniform_and_leaves_the_others_alone():
    """A pre-dose record under proportional error is simulated exactly 0 every time: no variance to
    decorrelate.  Its NPDE is the randomised PIT (U(0, 1) when DV is that value), and the subject's other
    records get the NPDE they have without it (before, the degenerate record scored -3.29 every time)."""
    rng = np.random.default_rng(2)
    n_sub, n_i, k = 400, 3, 500
    cov = 0.5 * np.ones((n_i, n_i)) + 0.5 * np.eye(n_i)
    subject = np.repeat(np.arange(n_sub), n_i + 1)
    body = rng.multivariate_normal(np.ones(n_i), cov, n_sub)
    dv = np.column_stack([np.zeros(n_sub), body]).ravel()                # record 0 of each subject: 0
    sims = np.concatenate([np.zeros((k, n_sub, 1)), rng.multivariate_normal(np.ones(n_i), cov, (k, n_sub))],
                          axis=2).reshape(k, -1)
    out = diagnostics.npde(dv, subject, sims, np.random.default_rng(3)).reshape(n_sub, n_i + 1)
    assert stats.kstest(out[:, 0], "norm").pvalue > 0.01 and np.unique(out[:, 0]).size == n_sub
    without = diagnostics.npde(body.ravel(), np.repeat(np.arange(n_sub), n_i),
                               sims.reshape(k, n_sub, n_i + 1)[:, :, 1:].reshape(k, -1))
    np.testing.assert_array_equal(out[:, 1:].ravel(), without)
    # a point mass away from DV: the PIT is 0 or 1 (clipped to the simulated range), as for any record
    off = diagnostics.npde(np.array([0.5, 1.0]), np.array([0, 0]), np.column_stack([np.zeros(k), rng.normal(size=k)]))
    assert off[0] == stats.norm.ppf(1 - 1 / (2 * k))


@pytest.mark.slow
def test_shrinkage_matches_definition_from_saved_file(saved):
    folder, res = saved
    idata = az.from_netcdf(folder / "fit.nc")
    eta_means = idata.posterior["ETA"].mean(("chain", "draw")).values
    for i, p in enumerate(["CL", "V", "KA"]):
        omega = float(np.median(idata.posterior[f"omega_{p}"].values))
        expected = 1 - np.std(eta_means[:, i], ddof=1) / omega
        assert diagnostics.shrinkage(res)[p] == pytest.approx(expected, rel=1e-12)
    table = diagnostics.eta_table(res)
    assert list(table.columns) == ["ETA_CL", "ETA_V", "ETA_KA", "WT", "DOSE_MGKG"] and len(table) == 12


@pytest.mark.slow
def test_new_subject_replicates_spread_like_omega(saved):
    res = saved[1]
    sims = simulate_replicates(res, 400, seed=2)
    own = simulate_replicates(res, 400, seed=2, new_subjects=False)
    assert sims.shape == own.shape == (400, 132)
    # new subjects vary more than the fitted subjects' own predictions
    assert sims.std(0).mean() > 1.2 * own.std(0).mean()


@pytest.mark.slow
def test_convergence_report_and_plots(saved, gof):
    res = saved[1]
    table, verdict = diagnostics.convergence_report(res)
    assert list(table.columns) == ["r_hat", "ess_bulk", "ess_tail", "ok"]
    assert verdict.startswith("Converged") == bool(table["ok"].all())
    for fig, df in [plots.plot_observed_vs_predicted(gof), plots.plot_residuals(gof), plots.plot_qq(gof),
                    plots.plot_individual_fits(gof), plots.plot_eta_covariates(diagnostics.eta_table(res)),
                    plots.plot_eta_correlation(diagnostics.eta_table(res))]:
        assert fig.axes and isinstance(df, pd.DataFrame) and len(df)
    fig, df = plots.plot_qq(gof)
    assert len(df) == 2 * len(gof) and set(df["residual"]) == {"CWRES", "NPDE"}


def test_divergence_location_names_the_parameter():
    rng = np.random.default_rng(1)

    class Fake:
        spec = load_spec("pk_1cmt_iv")
        parameter_names = FitResult.parameter_names

    div = np.zeros((2, 500), bool)
    div[:, :25] = True
    post = {"CL": rng.normal(5, 1, (2, 500)), "V": rng.normal(50, 5, (2, 500)),
            "omega_CL": np.abs(rng.normal(0.3, 0.05, (2, 500))), "omega_V": np.abs(rng.normal(0.3, 0.05, (2, 500))),
            "sigma_add": np.abs(rng.normal(1, 0.1, (2, 500))), "sigma_prop": np.abs(rng.normal(0.1, 0.01, (2, 500)))}
    post["omega_V"][div] = 0.01      # divergences at small omega_V: the classic funnel
    fake = Fake()
    fake.idata = az.from_dict(posterior=post, sample_stats={"diverging": div})
    assert diagnostics.divergence_location(fake).startswith("they cluster at low omega_V")


@pytest.mark.slow
def test_cli_diagnose_writes_tables_and_plots(saved, capsys):
    folder, _ = saved
    assert main(["diagnose", str(folder), "--npde-sims", "200"]) == 0
    out = capsys.readouterr().out
    assert "ETA shrinkage (SD-based): CL" in out and "-2LL" in out
    lik = pd.read_csv(folder / "diagnostics" / "likelihood.csv")
    assert lik.loc[0, "aic"] == pytest.approx(lik.loc[0, "minus2ll"] + 2 * lik.loc[0, "n_parameters"])
    assert lik.loc[0, "n_parameters"] == 8 and lik.loc[0, "n_obs"] == 132
    d = folder / "diagnostics"
    for name in ["convergence.csv", "convergence.txt", "gof.csv", "eta.csv", "shrinkage.csv",
                 "gof_observed_vs_predicted.png", "gof_residuals.png", "gof_qq.png", "individual_fits.png",
                 "eta_vs_covariates.png", "eta_correlation.png", "trace_rank.png"]:
        assert (d / name).stat().st_size > 0, name
    assert (d / "gof_qq.png").read_bytes()[:4] == b"\x89PNG"
    assert list(pd.read_csv(d / "gof.csv").columns)[-3:] == ["IWRES", "CWRES", "NPDE"]
    assert main(["diagnose", str(folder / "nowhere")]) == 1


@pytest.mark.slow
def test_predictions_at_new_times_match_the_data_times(saved, gof):
    from bayesnlme.evaluate.predict import predict_at_times

    res = saved[1]
    curves = predict_at_times(res, np.unique(res.data.obs_time), n_draws=10**6)   # all 600 draws
    merged = gof.merge(curves, on=["ID", "TIME"], suffixes=("", "_grid"))
    assert len(merged) == len(gof)        # every observation time of every subject is on the grid
    np.testing.assert_allclose(merged["IPRED_grid"], merged["IPRED"], rtol=1e-9)
    np.testing.assert_allclose(merged["PRED_grid"], merged["PRED"], rtol=1e-9)
    fig, df = plots.plot_individual_fits(gof, curves=predict_at_times(res, np.linspace(0, 25, 26)))
    assert set(df["kind"]) == {"curve", "observation"} and (df["kind"] == "curve").sum() == 12 * 26
