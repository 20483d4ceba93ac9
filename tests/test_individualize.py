"""Bayesian dose individualisation: calibration of the individual predictive band, the MAP against a direct
optimisation, the full-Bayes posterior against a NUTS refit with the patient, dose finding, errors, the CLI."""

import warnings

import numpy as np
import pandas as pd
import pytensor
import pytest
from scipy import optimize, stats

from bayesnlme.build import build_model
from bayesnlme.cli import main
from bayesnlme.cli.parsers import parser
from bayesnlme.data import read_nonmem
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.individual_dosing import (
    dose_table,
    parse_target,
    parse_targets,
    predict_profile,
    recommend,
    recommendation_text,
)
from bayesnlme.evaluate.individual_model import patient_model, read_patient
from bayesnlme.evaluate.individualize import individualize
from bayesnlme.spec import ModelSpec

# A "published" one-compartment infusion model: narrow priors, so no population fit is needed.
SPEC_TOML = """
name = "infusion_published"
structural = "1cmt_infusion"
[parameters.CL]
unit = "L/h"
prior = { dist = "lognormal", median = 4.0, sigma = 0.05 }
iiv = "lognormal"
omega = { dist = "lognormal", median = 0.3, sigma = 0.05 }
[parameters.V]
unit = "L"
prior = { dist = "lognormal", median = 60.0, sigma = 0.05 }
iiv = "lognormal"
omega = { dist = "lognormal", median = 0.25, sigma = 0.05 }
[residual]
type = "combined"
sigma_add = { fixed = 1.0 }
sigma_prop = { fixed = 0.1 }
"""
SPEC = ModelSpec.from_toml_text(SPEC_TOML, source="infusion_published.toml")
DOSE, II, DUR, N_DOSES = 1000.0, 12.0, 1.0, 4
LEVEL_TIMES = (3.0, 11.9)
LATER = 47.9          # trough before the fifth dose


def _conc(t, cl, v):
    """Concentration of 1-h infusions of DOSE every II (N_DOSES doses) at times t, written out (numpy)."""
    k, rate = cl / v, DOSE / DUR
    t = np.atleast_1d(np.asarray(t, float))
    out = np.zeros_like(t)
    for td in II * np.arange(N_DOSES):
        s = t - td
        on = s > 0
        during = np.minimum(np.where(on, s, 0.0), DUR)
        out += np.where(on, rate / cl * (1 - np.exp(-k * during)) * np.exp(-k * np.maximum(s - DUR, 0.0)), 0.0)
    return out


def _sd(f):
    return np.sqrt(1.0 + (0.1 * f) ** 2)


def _patient(dv, pid=1):
    rows = [dict(ID=pid, TIME=0.0, AMT=DOSE, DUR=DUR, II=II, ADDL=N_DOSES - 1, DV=0.0, EVID=1, MDV=1)]
    rows += [dict(ID=pid, TIME=t, AMT=0.0, DUR=0.0, II=0.0, ADDL=0, DV=float(y), EVID=0, MDV=0)
             for t, y in zip(LEVEL_TIMES, dv)]
    return pd.DataFrame(rows)


def _true_patient(rng):
    """Population values from the priors, an ETA from OMEGA, levels with residual error."""
    cl = 4.0 * np.exp(0.05 * rng.standard_normal()) * np.exp(
        0.3 * np.exp(0.05 * rng.standard_normal()) * rng.standard_normal())
    v = 60.0 * np.exp(0.05 * rng.standard_normal()) * np.exp(
        0.25 * np.exp(0.05 * rng.standard_normal()) * rng.standard_normal())
    f = _conc(LEVEL_TIMES + (LATER,), cl, v)
    y = f + _sd(f) * rng.standard_normal(3)
    return cl, v, f, y


def test_predictive_band_is_calibrated():
    """40 simulated patients with 2 levels: the true concentration at a later time lies in the 90% credible band,
    and a new measured level in the 90% predictive band, at the nominal rate (binomial tolerance); the true
    CL's rank among the posterior samples is uniform (so the bands are not too wide either)."""
    rng = np.random.default_rng(2024)
    n = 40
    inside_conc = inside_level = 0
    pit = []
    for _ in range(n):
        cl, _, f, y = _true_patient(rng)
        post = individualize(SPEC, _patient(y[:2]), n_draws=100, n_proposals=100, n_samples=1000,
                             seed=int(rng.integers(1e6)))
        row = predict_profile(post, times=[LATER]).query(f"TIME == {LATER}").iloc[0]
        inside_conc += row["IPRED_q5"] <= f[2] <= row["IPRED_q95"]
        inside_level += row["DV_q5"] <= y[2] <= row["DV_q95"]
        pit.append(np.mean(post.parameters["CL"].to_numpy() < cl))
    lo, hi = stats.binom.interval(0.998, n, 0.9)
    assert lo <= inside_conc <= hi, (inside_conc, lo, hi)
    assert lo <= inside_level <= hi, (inside_level, lo, hi)
    assert stats.kstest(pit, "uniform").pvalue > 0.001, np.sort(pit)
    lo50, hi50 = stats.binom.interval(0.998, n, 0.5)
    assert lo50 <= np.sum((np.asarray(pit) > 0.25) & (np.asarray(pit) < 0.75)) <= hi50


def test_map_matches_direct_optimisation():
    """The MAP-Bayes estimate equals a direct scipy minimisation of -log p(y|eta) - log p(eta) (1e-4 relative)."""
    y = np.array([24.0, 6.5])
    post = individualize(SPEC, _patient(y), n_draws=200, seed=3)
    th = post.map.theta
    cl0, v0, om_cl, om_v = (float(th[k]) for k in ("CL", "V", "omega_CL", "omega_V"))

    def objective(eta):
        f = _conc(LEVEL_TIMES, cl0 * np.exp(eta[0]), v0 * np.exp(eta[1]))
        return -stats.norm.logpdf(y, f, _sd(f)).sum() + 0.5 * ((eta[0] / om_cl) ** 2 + (eta[1] / om_v) ** 2)

    direct = optimize.minimize(objective, np.zeros(2), method="Nelder-Mead",
                               options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 20000}).x
    assert post.map.converged
    assert post.map.parameters["CL"] == pytest.approx(cl0 * np.exp(direct[0]), rel=1e-4)
    assert post.map.parameters["V"] == pytest.approx(v0 * np.exp(direct[1]), rel=1e-4)
    assert post.map.eta["CL"] == pytest.approx(direct[0], rel=1e-4, abs=1e-6)


def test_map_with_a_published_fixed_omega_block_matches_direct_optimisation():
    """A published model whose OMEGA is a fixed correlated block: the MAP's ETA prior is the block's
    ``0.5 eta' OMEGA^-1 eta`` (1e-4 relative against scipy)."""
    text = SPEC_TOML.replace('omega = { dist = "lognormal", median = 0.3, sigma = 0.05 }', "omega_fixed = 0.3").replace(
        'omega = { dist = "lognormal", median = 0.25, sigma = 0.05 }', "omega_fixed = 0.25")
    text += '[random_effects]\nfixed_blocks = [{ parameters = ["CL", "V"], correlation = [[1.0, 0.7], [0.7, 1.0]] }]\n'
    spec = ModelSpec.from_toml_text(text, source="published_block.toml")
    y = np.array([24.0, 6.5])
    post = individualize(spec, _patient(y), n_draws=200, seed=3)
    cl0, v0 = (float(post.map.theta[k]) for k in ("CL", "V"))
    omega_inv = np.linalg.inv(np.array([[0.09, 0.7 * 0.075], [0.7 * 0.075, 0.0625]]))

    def objective(eta):
        f = _conc(LEVEL_TIMES, cl0 * np.exp(eta[0]), v0 * np.exp(eta[1]))
        return -stats.norm.logpdf(y, f, _sd(f)).sum() + 0.5 * eta @ omega_inv @ eta

    direct = optimize.minimize(objective, np.zeros(2), method="Nelder-Mead",
                               options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 20000}).x
    assert post.map.converged
    assert post.map.eta["CL"] == pytest.approx(direct[0], rel=1e-4, abs=1e-6)
    assert post.map.eta["V"] == pytest.approx(direct[1], rel=1e-4, abs=1e-6)
    uncorrelated = optimize.minimize(lambda e: objective(e) - 0.5 * e @ omega_inv @ e
                                     + 0.5 * ((e[0] / 0.3) ** 2 + (e[1] / 0.25) ** 2), np.zeros(2),
                                     method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-13}).x
    assert abs(uncorrelated[1] - direct[1]) > 100 * 1e-4 * abs(direct[1])   # the correlation matters here


def test_posterior_quality_and_nothing_compiled_after_first_call(monkeypatch):
    """New levels on the same design reuse the compiled model: nothing is compiled for the second posterior
    (what makes it ~0.1 s), also for another patient (another ID) with the same doses and sampling times.
    Not a wall-clock bound: "< 10 s" for this and a dose table failed once on a loaded machine with an empty
    compile cache (11.9 s), where the dose table's new designs compile."""
    y = np.array([24.0, 6.5])
    individualize(SPEC, _patient(y), seed=1)                     # compiles (cached per design)

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled for a patient whose design was compiled already")

    with monkeypatch.context() as patch:
        patch.setattr(pytensor, "function", no_compile)
        post = individualize(SPEC, _patient(np.array([18.0, 9.0]), pid=907), seed=1)   # other patient, same design
    assert post.patient.ids.tolist() == ["907"]
    table = dose_table(post, "CTROUGH 10-20", [500, 1000, 1500], [8, 12])
    predict_profile(post, {"dose": float(recommend(table)["DOSE"]), "ii": float(recommend(table)["II"])})
    q = post.quality
    assert q["ess"] > 1000 and q["pareto_k"] < 0.7 and not post.problems
    summary = post.summary()
    assert list(summary["parameter"]) == ["CL", "V", "ETA_CL", "ETA_V"]
    assert (summary["q_lo"] < summary["median"]).all() and (summary["median"] < summary["q_hi"]).all()
    # the posterior median of CL lies within its posterior spread of the MAP
    cl = post.parameters["CL"]
    assert abs(np.median(cl) - post.map.parameters["CL"]) < 0.5 * cl.std()


def test_implausible_levels_are_reported_not_hidden():
    """Levels ten times what the model allows: low ESS, a large Pareto k and few population draws, said in words."""
    post = individualize(SPEC, _patient(np.array([200.0, 150.0])), seed=1)
    assert post.quality["n_proposals"] == 800            # the second pass with 4x the proposals ran
    assert post.quality["pareto_k"] > 0.7 and post.quality["ess"] < 200
    text = " ".join(post.problems)
    assert "effective samples" in text and "Pareto k" in text and "atypical" in text


def test_dose_finding_picks_the_clear_best_dose_and_breaks_ties_low():
    post = individualize(SPEC, _patient(np.array([22.0, 8.0])), seed=5)
    table = dose_table(post, "CTROUGH 9-18", [250, 500, 1000, 2000, 4000], [12])
    best = recommend(table)
    assert best["DOSE"] == 1000
    others = table[table["DOSE"] != 1000]
    assert best["P_TARGET"] > others["P_TARGET"].max() + 4 * best["P_TARGET_MCSE"]
    assert "Recommended: 1000 every 12 h" in recommendation_text(table, post)
    # every candidate meets CTROUGH > 0: the lowest daily dose wins
    ties = dose_table(post, "CTROUGH >0", [250, 500], [12, 24])
    assert (ties["P_TARGET"] == 1).all()
    assert (recommend(ties)["DOSE"], recommend(ties)["II"]) == (250, 24)
    # exact steady-state AUC = Dose / CL of the same samples
    auc = dose_table(post, "AUCTAU 100-400", [1000], [12])
    assert auc["AUCTAU_median"].iloc[0] == pytest.approx(np.median(1000 / post.parameters["CL"]), rel=1e-9)


@pytest.mark.parametrize("text", ["CTROUGH", "CTROUGH 20-10", "TROUGH 10-20", "CTROUGH 10 to 20", "CMAX <", "",
                                  "CTROUGH -5-10"])
def test_bad_target_syntax_is_one_line(text):
    with pytest.raises(BayesNLMEInputError) as exc:
        parse_targets([text])
    assert "\n" not in str(exc.value)


def test_target_syntax():
    assert parse_target("CTROUGH 10-20") == {"metric": "CTROUGH", "above": 10.0, "below": 20.0}
    assert parse_target(" auc24 >400 ") == {"metric": "AUC24", "above": 400.0}
    assert parse_targets("AUC24 400-600; CMAX <40") == [{"metric": "AUC24", "above": 400.0, "below": 600.0},
                                                        {"metric": "CMAX", "below": 40.0}]


def test_patient_errors_name_file_and_column(tmp_path):
    with_cov = ModelSpec.from_toml_text(SPEC_TOML + """
[[covariates]]
parameter = "CL"
covariate = "CRCL"
type = "power"
reference = 100
fixed = 0.75
""", source="cov.toml")
    path = tmp_path / "patient.csv"
    _patient([20.0, 8.0]).to_csv(path, index=False)
    with pytest.raises(BayesNLMEInputError, match=r"CRCL.*patient\.csv") as exc:
        individualize(with_cov, path)
    assert "\n" not in str(exc.value)
    _patient([20.0, 8.0]).drop(columns="TIME").to_csv(path, index=False)
    with pytest.raises(BayesNLMEInputError, match=r"patient\.csv: required column TIME is missing"):
        individualize(SPEC, path)
    two = pd.concat([_patient([20.0, 8.0]), _patient([20.0, 8.0], pid=2)])
    with pytest.raises(BayesNLMEInputError, match=r"2 subjects"):
        individualize(SPEC, two)


def test_fitted_categorical_levels_kept_for_one_patient():
    """A spec bound to the population keeps its categorical effects on a patient at one (non-reference) level."""
    spec = ModelSpec.from_toml_text(SPEC_TOML + """
[[covariates]]
parameter = "CL"
covariate = "SEX"
type = "categorical"
reference = 0
prior = { dist = "normal", mu = 0.0, sigma = 0.2 }
""", source="sex.toml")
    population = pd.concat([_patient([20.0, 8.0]).assign(SEX=0), _patient([20.0, 8.0], pid=2).assign(SEX=1)])
    bound = spec.bind(read_nonmem(population))
    patient = read_patient(_patient([20.0, 8.0]).assign(SEX=1), bound)
    built, _ = patient_model(bound, patient)
    assert "SEX_1_on_CL" in [rv.name for rv in built.model.free_RVs]
    with pytest.raises(BayesNLMEInputError, match="level 2"):
        read_patient(_patient([20.0, 8.0]).assign(SEX=2), bound)
    assert build_model(bound, patient) is not None


def test_cli_writes_its_files(tmp_path, capsys):
    spec_path = tmp_path / "published.toml"
    spec_path.write_text(SPEC_TOML)
    patient = tmp_path / "patient.csv"
    _patient([22.0, 8.0]).to_csv(patient, index=False)
    out = tmp_path / "out"
    rc = main(["individualize", str(spec_path), "--patient", str(patient), "--target", "CTROUGH 10-20",
               "--doses", "500,1000,1500", "--intervals", "8,12", "--out", str(out), "--draws", "100"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    for name in ("individual_parameters.csv", "profile.csv", "profile.png", "dose_table.csv"):
        assert (out / name).stat().st_size > 0
    table = pd.read_csv(out / "dose_table.csv")
    assert len(table) == 6 and {"DOSE", "II", "P_TARGET", "CTROUGH_median", "CTROUGH_q5", "CTROUGH_q95"} <= set(table)
    params = pd.read_csv(out / "individual_parameters.csv")
    assert list(params.columns) == ["parameter", "unit", "median", "q5", "q95", "map"]
    assert "Recommended:" in printed
    rc = main(["individualize", str(spec_path), "--patient", str(patient), "--target", "CTROUGH 20-10",
               "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "CTROUGH 20-10" in err
    assert not (tmp_path / "bad").exists()


@pytest.mark.validation
@pytest.mark.slow
def test_full_bayes_matches_nuts_refit_with_the_patient():
    """Theophylline: the individual posterior of subject 12 (3 levels) from a fit of subjects 1-11 agrees with
    a NUTS fit of all 12 subjects (within Monte Carlo error)."""
    import arviz as az

    from bayesnlme import datasets, fit_model, load_spec

    frame = pd.read_csv(datasets.dataset_path("theophylline"))
    last = frame["ID"].max()
    others = frame[frame["ID"] != last]
    mine = frame[frame["ID"] == last]
    patient = pd.concat([mine[mine["EVID"] == 1], mine[mine["EVID"] == 0].iloc[1:4]]).sort_values("TIME", kind="stable")
    spec = load_spec("pk_1cmt_oral")
    settings = dict(chains=2, draws=300, tune=300, seed=11, progress=False)
    with warnings.catch_warnings():   # convergence warnings of the short fits are not what this checks
        warnings.simplefilter("ignore")
        population = fit_model(spec, others, **settings)
        refit = fit_model(spec, pd.concat([others, patient], ignore_index=True), **settings)
    post = individualize(population, patient, n_draws=600, n_proposals=200, n_samples=4000, seed=2)
    eta = refit.idata.posterior["ETA"].sel(ID=str(last), eta_parameter="CL")
    log_cl_nuts = np.log(refit.idata.posterior["CL"]) + eta                  # (chain, draw)
    log_cl_is = np.log(post.parameters["CL"].to_numpy())
    se_nuts = float(log_cl_nuts.std()) / np.sqrt(float(az.ess(log_cl_nuts.values)))
    ess_fit = float(population.summary().loc["CL", "ess_bulk"])
    se_is = log_cl_is.std() / np.sqrt(min(ess_fit, post.quality["ess_population"], post.quality["ess"]))
    diff = log_cl_is.mean() - float(log_cl_nuts.mean())
    assert abs(diff) < 4 * np.hypot(se_nuts, se_is), (diff, se_nuts, se_is)
    assert 0.75 < log_cl_is.std() / float(log_cl_nuts.std()) < 1.33



# ---------------------------------------------------------------------------- inter-occasion variability

IOV_LEVELS = ((3.0, 1), (11.9, 1), (27.0, 2), (35.9, 2))      # (time, OCC): two occasions with two levels each
REGIMEN = {"dose": 1000.0, "ii": 12.0, "n_doses": 2, "start": 60.0}    # a proposed regimen: a new occasion
T_NEXT = 70.0


def _iov_spec():
    d = SPEC.to_dict()
    d["name"] = "infusion_iov"
    d["parameters"]["CL"]["omega_iov"] = {"dist": "lognormal", "median": 0.3, "sigma": 0.05}
    return ModelSpec.from_dict(d)


def _conc_doses(t, cl, v, dose_times):
    """Concentration at time t of 1-h infusions of DOSE at dose_times, cl and v per sample (numpy)."""
    k, out = cl / v, 0.0
    for td in dose_times:
        s = t - td
        if s > 0:
            out = out + DOSE / DUR / cl * (1 - np.exp(-k * min(s, DUR))) * np.exp(-k * max(s - DUR, 0.0))
    return out


@pytest.fixture(scope="module")
def iov_case():
    """A patient simulated from the IOV model (ETA_CL, ETA_V, a KAPPA per occasion) and its posterior."""
    rng = np.random.default_rng(7)
    eta_cl, eta_v = 0.3 * rng.standard_normal(), 0.25 * rng.standard_normal()
    kappa = 0.3 * rng.standard_normal(2)
    rows = [dict(ID=1, TIME=0.0, AMT=DOSE, DUR=DUR, II=II, ADDL=N_DOSES - 1, DV=0.0, EVID=1, MDV=1, OCC=1)]
    for t, occ in IOV_LEVELS:
        f = _conc(t, 4.0 * np.exp(eta_cl + kappa[occ - 1]), 60.0 * np.exp(eta_v))[0]
        rows.append(dict(ID=1, TIME=t, AMT=0.0, DUR=0.0, II=0.0, ADDL=0, DV=f + _sd(f) * rng.standard_normal(),
                         EVID=0, MDV=0, OCC=occ))
    patient = pd.DataFrame(rows)
    spec = _iov_spec()
    return spec, patient, individualize(spec, patient, n_draws=200, seed=3)


def test_iov_map_over_etas_and_kappas_matches_direct_optimisation(iov_case):
    """The MAP covers ETA_CL, ETA_V and the KAPPA of each observed occasion: equal to a direct minimisation of
    -log p(y | eta, kappa) - log p(eta) - log p(kappa), each level predicted with its occasion's CL."""
    _, patient, post = iov_case
    th = post.map.theta
    cl0, v0, om_cl, om_v, om_iov = (float(th[k]) for k in ("CL", "V", "omega_CL", "omega_V", "omega_iov_CL"))
    obs = patient[patient["EVID"] == 0]
    t, y, occ = obs["TIME"].to_numpy(), obs["DV"].to_numpy(), obs["OCC"].to_numpy() - 1

    def objective(x):
        eta_cl, eta_v, kappa = x[0], x[1], x[2:]
        f = np.array([_conc(ti, cl0 * np.exp(eta_cl + kappa[o]), v0 * np.exp(eta_v))[0] for ti, o in zip(t, occ)])
        return (-stats.norm.logpdf(y, f, _sd(f)).sum() + 0.5 * ((eta_cl / om_cl) ** 2 + (eta_v / om_v) ** 2)
                + 0.5 * np.sum((kappa / om_iov) ** 2))

    direct = optimize.minimize(objective, np.zeros(4), method="Nelder-Mead",
                               options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 40000}).x
    assert post.map.converged and post.z.shape[1] == 4
    assert post.map.eta["CL"] == pytest.approx(direct[0], abs=1e-5)
    assert post.map.eta["V"] == pytest.approx(direct[1], abs=1e-5)
    assert [post.map.kappa["CL_OCC1"], post.map.kappa["CL_OCC2"]] == pytest.approx(direct[2:], abs=1e-5)
    assert post.map.parameters["CL"] == pytest.approx(cl0 * np.exp(direct[0]), rel=1e-5)
    assert {"KAPPA_CL_OCC1", "KAPPA_CL_OCC2"} <= set(post.summary()["parameter"])


def test_iov_future_occasion_new_draws_kappa_last_keeps_it(iov_case):
    """A proposed regimen is a new occasion.  ``last``: the band is exactly that of the samples' CL x
    exp(KAPPA of occasion 2).  ``new``: that of CL x exp(omega_iov x N(0, 1)), a fresh draw per sample; the 90%
    band's width agrees within 10% (its Monte Carlo SE with 2000 draws of KAPPA: ~3.5%), and is much wider."""
    _, _, post = iov_case
    doses = (II * np.arange(N_DOSES)).tolist() + [REGIMEN["start"], REGIMEN["start"] + II]
    cl, v = post.parameters["CL"].to_numpy(), post.parameters["V"].to_numpy()
    bands = {}
    for future in ("new", "last"):
        row = predict_profile(post, REGIMEN, times=[T_NEXT], future_occasion=future).query(f"TIME == {T_NEXT}").iloc[0]
        assert row["PHASE"] == "proposed"
        bands[future] = np.array([row["IPRED_q5"], row["IPRED_median"], row["IPRED_q95"]])
    last = _conc_doses(T_NEXT, cl * np.exp(post.parameters["KAPPA_CL_OCC2"].to_numpy()), v, doses)
    assert bands["last"] == pytest.approx(np.quantile(last, [0.05, 0.5, 0.95]), rel=1e-6)
    rng = np.random.default_rng(0)
    omega = np.tile(post.theta["omega_iov_CL"], 20)
    new = _conc_doses(T_NEXT, np.tile(cl, 20) * np.exp(omega * rng.standard_normal(len(omega))), np.tile(v, 20), doses)
    ref = np.quantile(new, [0.05, 0.5, 0.95])
    assert bands["new"][2] - bands["new"][0] == pytest.approx(ref[2] - ref[0], rel=0.1)
    assert bands["new"][1] == pytest.approx(ref[1], rel=0.05)
    assert bands["new"][2] - bands["new"][0] > 2 * (bands["last"][2] - bands["last"][0])
    # the dose table's steady state is a new occasion too; AUC is integrated (not Dose / CL without KAPPA)
    for future in ("new", "last"):
        table = dose_table(post, "AUCTAU 100-400", [1000], [12], future_occasion=future).iloc[0]
        bands[future] = table["AUCTAU_q95"] - table["AUCTAU_q5"]
    kappa_last = post.parameters["KAPPA_CL_OCC2"].to_numpy()
    assert table["AUCTAU_median"] == pytest.approx(np.median(1000 / (cl * np.exp(kappa_last))), rel=0.01)
    assert bands["new"] > 1.5 * bands["last"]


def test_iov_patient_without_occ_is_one_occasion(iov_case):
    """No OCC column: every record is occasion 1 (one KAPPA, estimated with the ETAs), as NONMEM reads it; an
    observation without OCC and an unknown future_occasion are one-line errors."""
    spec, patient, post = iov_case
    one = individualize(spec, patient.drop(columns="OCC"), n_draws=100, n_proposals=100, seed=1)
    assert one.z.shape[1] == 3 and "KAPPA_CL_OCC1" in one.parameters and "KAPPA_CL_OCC2" not in one.parameters
    gap = patient.astype({"OCC": float})
    gap.loc[2, "OCC"] = np.nan
    with pytest.raises(BayesNLMEInputError, match="OCC") as exc:
        individualize(spec, gap, n_draws=50, n_proposals=50)
    assert "\n" not in str(exc.value)
    with pytest.raises(BayesNLMEInputError, match="future_occasion"):
        predict_profile(post, REGIMEN, times=[T_NEXT], future_occasion="next")


def test_cli_future_occasion_flag():
    base = ["individualize", "model.toml", "--patient", "p.csv", "--target", "CTROUGH 10-20"]
    assert parser().parse_args(base).future_occasion == "new"
    assert parser().parse_args(base + ["--future-occasion", "last"]).future_occasion == "last"


# A published PK/PD model: concentrations (DVID 1) and an Emax effect (DVID 2) of one oral dose.
PKPD_SPEC = ModelSpec.from_dict({
    "name": "pkpd_published", "structural": "pkpd_1cmt_oral_emax",
    "parameters": {
        "CL": {"prior": {"dist": "lognormal", "median": 3.0, "sigma": 0.05}, "iiv": "lognormal",
               "omega": {"dist": "lognormal", "median": 0.3, "sigma": 0.05}},
        "V": {"prior": {"dist": "lognormal", "median": 30.0, "sigma": 0.05}, "iiv": "lognormal",
              "omega": {"dist": "lognormal", "median": 0.2, "sigma": 0.05}},
        "KA": {"fixed": 1.5, "iiv": "none"}, "E0": {"fixed": 10.0, "iiv": "none"},
        "EMAX": {"fixed": 50.0, "iiv": "none"},
        "EC50": {"prior": {"dist": "lognormal", "median": 5.0, "sigma": 0.05}, "iiv": "lognormal",
                 "omega": {"dist": "lognormal", "median": 0.5, "sigma": 0.05}}},
    "observations": [
        {"dvid": 1, "output": "CP", "likelihood": "combined", "sigma_add": {"fixed": 0.1},
         "sigma_prop": {"fixed": 0.1}},
        {"dvid": 2, "output": "EFFECT", "likelihood": "additive", "sigma_add": {"fixed": 2.0}}]})


def _pkpd_patient(with_effect: bool) -> pd.DataFrame:
    rows = [dict(ID=1, TIME=0.0, DV=0.0, AMT=300.0, EVID=1, MDV=1, CMT=1, DVID=1, II=12.0, ADDL=1),
            dict(ID=1, TIME=2.0, DV=6.5, AMT=0.0, EVID=0, MDV=0, CMT=2, DVID=1, II=0.0, ADDL=0),
            dict(ID=1, TIME=10.0, DV=3.1, AMT=0.0, EVID=0, MDV=0, CMT=2, DVID=1, II=0.0, ADDL=0)]
    if with_effect:   # a strong effect at these concentrations: EC50 below the typical 5
        rows += [dict(ID=1, TIME=t, DV=dv, AMT=0.0, EVID=0, MDV=0, CMT=2, DVID=2, II=0.0, ADDL=0)
                 for t, dv in ((2.0, 48.0), (6.0, 44.0), (10.0, 40.0))]
    return pd.DataFrame(rows).sort_values(["TIME", "EVID"], ascending=[True, False], kind="stable")


def test_pkpd_levels_inform_the_posterior_and_the_profile_is_the_concentration():
    """[[observations]]: every level (PK and PD) enters the individual posterior; the profile and the dose table
    predict the concentration type."""
    pk_only = individualize(PKPD_SPEC, _pkpd_patient(False), n_draws=100, seed=4)
    both = individualize(PKPD_SPEC, _pkpd_patient(True), n_draws=100, seed=4)
    ec50 = {k: p.parameters["EC50"].to_numpy() for k, p in (("pk", pk_only), ("both", both))}
    # PK alone leaves EC50 at its population distribution; the effect levels pull it down and narrow it
    assert np.median(ec50["both"]) < 0.6 * np.median(ec50["pk"])
    assert np.std(np.log(ec50["both"])) < 0.6 * np.std(np.log(ec50["pk"]))
    cl = {k: np.median(p.parameters["CL"]) for k, p in (("pk", pk_only), ("both", both))}
    assert cl["both"] == pytest.approx(cl["pk"], rel=0.1)            # the effect says little about CL
    profile = predict_profile(both, times=[1.0, 2.0, 10.0, 20.0])
    # the grid's four times and the two measured concentrations' records (the effects' records are not rows)
    np.testing.assert_array_equal(profile["TIME"], [1.0, 2.0, 2.0, 10.0, 10.0, 20.0])
    measured = profile.dropna(subset=["DV_OBS"])
    np.testing.assert_allclose(sorted(measured["DV_OBS"]), [3.1, 6.5])      # the concentrations, not the effects
    assert (profile["IPRED_median"] < 20).all()                             # mg/L, not effect units
    table = dose_table(both, "CTROUGH 2-6", [150, 300, 600], [12])
    trough = table["CTROUGH_median"].to_numpy()
    np.testing.assert_allclose(trough / trough[0], [1, 2, 4], rtol=1e-6)     # linear PK: troughs scale with dose
    assert trough[0] < 2 < trough[1] < 6 < trough[2] and recommend(table)["DOSE"] == 300
    effect_only = {**PKPD_SPEC.to_dict(), "name": "pk_effect", "observations": [PKPD_SPEC.to_dict()["observations"][1]]}
    with pytest.raises(BayesNLMEInputError, match="no observation type of pk_effect observes it"):
        read_patient(_pkpd_patient(True), ModelSpec.from_dict(effect_only))
