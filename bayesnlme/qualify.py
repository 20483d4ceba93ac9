"""Qualification: reference problems with published answers, run and tabulated against those answers.

Regulated users qualify software by running problems whose answers are known and recording the result
with the installation it came from (an installation/operational qualification record).  ``make
qualify`` (``python -m bayesnlme.qualify --out qualification``) runs:

* **theophylline vs R nlme** (Pinheiro & Bates 2000): posterior medians of CL, V, KA against nlme's ML
  estimates, within 2 posterior SDs; the marginal log-likelihood by importance sampling at nlme's
  estimates against the exact value by adaptive Gauss-Hermite quadrature in R (-180.3641, 20^3 and 30^3
  nodes agree to 1e-4; docs/likelihood.md), within 4 Monte Carlo SEs;
* **phenobarbital vs NONMEM** (Grasela & Donn 1985; the NONMEM ``pheno`` example, FOCE-I): CL/kg, V/kg
  and the Apgar < 5 ratio on V inside our 90% credible intervals and medians within 10%;
* **posteriordb** ``one_comp_mm_elim_abs`` (ODE, Michaelis-Menten): each of 5 quantiles of KA, KM, VM and
  sigma placed on the reference posterior's CDF within 4 Monte Carlo SEs of its level;
* **PSIS-LOO vs R loo** (loo 2.5.1, R 4.2.2): elpd_loo, its SE, p_loo and the Pareto k of every point
  for a fixed log-likelihood matrix (:func:`loo_reference_matrix`) within 1e-6 relative (k within 0.005).
  ArviZ's SE of elpd_loo uses the population variance of the pointwise values and R's the sample SD, so
  ArviZ's SE is smaller by sqrt((n-1)/n) (2.5% for n = 20); the table compares it after that factor;
* **BLQ recovery**: ~25% BLQ simulated data; the M3 posterior medians of CL and V within 3 posterior SDs
  of the truth, and the M1 (drop) estimate of CL biased low by more than 1.5 SDs.

Output: ``qualification.csv`` (problem, quantity, ours, reference, tolerance, passed) and
``qualification.md`` (the same table under the installation record: date, platform, Python, package
versions, git commit, SHA-256 of each data set used).  Exit status 0 when every row passes, 1 otherwise.
It takes 1-4 minutes on 2 cores (58 s with warm compile caches, about 4 min from empty ones).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
from scipy import stats

from bayesnlme.evaluate.likelihood import marginal_loglik
from bayesnlme.inference import fit_model
from bayesnlme.inference.convergence import without_arviz_numba
from bayesnlme.inference.fit import package_versions
from bayesnlme.spec import ModelSpec, load_spec

from . import datasets

# nlme 3.1-162 ML fit of theophylline (docs/likelihood.md): CL, V, KA, omegas, sigma
NLME = {"CL": 2.7691, "V": 31.4759, "KA": 1.5629, "omega_CL": 0.2647301, "omega_V": 0.1349591,
        "omega_KA": 0.6220764, "sigma_add": 0.6966863}
NLME_EXACT_LOGLIK = -180.3641      # adaptive Gauss-Hermite 20^3 and 30^3 nodes at NLME, R 4.2.2
PHENO_NONMEM = {"CL": 0.0047, "V": 0.98, "APGAR_RATIO": 1.16}
PHENO_SPEC = """
name = "pheno_wt_apgar_block"
structural = "1cmt_iv"
[parameters.CL]
unit = "L/h/kg"
prior = { dist = "lognormal", median = 0.005, sigma = 1.0 }
omega = { dist = "halfnormal", sigma = 0.5 }
[parameters.V]
unit = "L/kg"
prior = { dist = "lognormal", median = 1.0, sigma = 1.0 }
omega = { dist = "halfnormal", sigma = 0.5 }
[random_effects]
blocks = [["CL", "V"]]
[[covariates]]
parameter = "CL"
covariate = "WT"
type = "power"
reference = 1.0
fixed = 1.0
[[covariates]]
parameter = "V"
covariate = "WT"
type = "power"
reference = 1.0
fixed = 1.0
[[covariates]]
parameter = "V"
covariate = "APGRLOW"
type = "categorical"
reference = 0
prior = { dist = "normal", mu = 0.0, sigma = 0.5 }
[residual]
type = "proportional"
"""
POSTERIORDB_SPEC = {
    "name": "posteriordb_one_comp_mm_elim_abs", "structural": "1cmt_mm_oral",
    "parameters": {p: {"prior": {"dist": "halfcauchy", "beta": 1.0}, "iiv": "none"} for p in ("KA", "KM", "VM")}
    | {"V": {"fixed": 2.0, "iiv": "none"}},
    "residual": {"type": "exponential", "sigma_exp": {"dist": "halfcauchy", "beta": 1.0}}}

# R loo 2.5.1 on loo_reference_matrix(): loo(ll, r_eff = 1); see docs/reliability.md for the R code
R_LOO = {"elpd_loo": -44.591235757785, "se_elpd_loo": 5.998007601832, "p_loo": 3.488125297721}
R_LOO_K = [0.580166, 0.570126, 0.530950, 0.512834, 0.489009, 0.468029, 0.422661, 0.328636, 0.224441, 0.170891,
           0.039287, -0.032038, -0.008741, -0.025795, -0.039863, -0.066137, 0.015998, 0.076026, 0.111651,
           0.993066]

BLQ_TRUTH = {"CL": 2.0, "V": 20.0, "LLOQ": 0.5}
BLQ_TIMES = np.array([0.5, 1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 36])
BLQ_SPEC = """
structural = "1cmt_iv"
[parameters.CL]
prior = { dist = "lognormal", median = 3.0, sigma = 1.0 }
omega = { dist = "halfnormal", sigma = 0.5 }
[parameters.V]
prior = { dist = "lognormal", median = 15.0, sigma = 1.0 }
omega = { dist = "halfnormal", sigma = 0.5 }
[residual]
type = "additive"
blq = "%s"
"""


def simulate_blq_study(n: int = 20, seed: int = 11) -> pd.DataFrame:
    """1-compartment IV study with about a quarter of the concentrations below the LLOQ (CENS = 1).

    IV bolus 100 mg at time 0, 12 samples 0.5-36 h, CL 2 L/h and V 20 L with log-normal IIV (SD 0.2 and
    0.15), additive error SD 0.4 mg/L; a BLQ record carries DV = LLOQ = 0.5 mg/L and CENS = 1.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(1, n + 1):
        cl = BLQ_TRUTH["CL"] * np.exp(0.2 * rng.standard_normal())
        v = BLQ_TRUTH["V"] * np.exp(0.15 * rng.standard_normal())
        rows.append({"ID": i, "TIME": 0.0, "DV": 0.0, "AMT": 100.0, "EVID": 1, "CENS": 0})
        y = 100 / v * np.exp(-cl / v * BLQ_TIMES) + 0.4 * rng.standard_normal(len(BLQ_TIMES))
        for t, yy in zip(BLQ_TIMES, y):
            rows.append({"ID": i, "TIME": t, "DV": max(yy, BLQ_TRUTH["LLOQ"]), "AMT": 0.0, "EVID": 0,
                         "CENS": int(yy < BLQ_TRUTH["LLOQ"])})
    return pd.DataFrame(rows)


def loo_reference_matrix(n_draws: int = 2000) -> np.ndarray:
    """A fixed (draws x 20) log-likelihood matrix made without random numbers (R builds the same one).

    Normal data ``y_i = (i - 10.5) / 4`` for i = 1..19 and an outlier ``y_20 = 6``; draws of the mean
    ``mu_s = 0.3 + 0.45 qnorm((s - 0.5) / S)`` and, in a fixed permuted order, of the SD
    ``sigma_s = 2 exp(0.16 qnorm((p_s - 0.5) / S))`` with ``p_s = (s * 7919) mod S + 1`` (about the
    posterior of a normal model for these data; the outlier's Pareto k is the largest).
    """
    s = np.arange(1, n_draws + 1)
    mu = 0.3 + 0.45 * stats.norm.ppf((s - 0.5) / n_draws)
    p = (s * 7919) % n_draws + 1
    sigma = 2.0 * np.exp(0.16 * stats.norm.ppf((p - 0.5) / n_draws))
    y = np.append((np.arange(1, 20) - 10.5) / 4, 6.0)
    return stats.norm.logpdf(y[None, :], mu[:, None], sigma[:, None])


def _row(problem, quantity, ours, reference, tolerance, passed, note=""):
    return {"problem": problem, "quantity": quantity, "ours": ours, "reference": reference,
            "tolerance": tolerance, "passed": bool(passed), "note": note}


def theophylline_vs_nlme(draws: int, seed: int) -> list[dict]:
    d = load_spec("pk_1cmt_oral").to_dict()
    d["residual"] = {"type": "additive"}
    fit = fit_model(ModelSpec.from_dict(d), datasets.dataset_path("theophylline"), chains=4, draws=draws,
                    tune=draws, seed=seed, progress=False)
    s = fit.summary()
    rows = [_row("theophylline vs nlme", f"{p} median", s.loc[p, "q50"], NLME[p],
                 f"|diff| < 2 posterior SD ({2 * s.loc[p, 'sd']:.3g})",
                 abs(s.loc[p, "q50"] - NLME[p]) < 2 * s.loc[p, "sd"]) for p in ("CL", "V", "KA")]
    m = marginal_loglik(fit, theta=dict(NLME), n_samples=8000, seed=0)
    rows.append(_row("theophylline vs nlme", "log-likelihood at nlme's estimates", m.loglik, NLME_EXACT_LOGLIK,
                     f"|diff| < 4 MC SE ({4 * m.mc_se:.3f})", abs(m.loglik - NLME_EXACT_LOGLIK) < 4 * m.mc_se,
                     "reference: exact integral by adaptive Gauss-Hermite quadrature in R"))
    return rows


def phenobarbital_vs_nonmem(draws: int, seed: int) -> list[dict]:
    df = datasets.load_phenobarbital()
    df["APGRLOW"] = (df["APGR"] < 5).astype(int)
    fit = fit_model(ModelSpec.from_toml_text(PHENO_SPEC), df, chains=4, draws=draws, tune=draws, seed=seed,
                    progress=False)
    s = fit.summary()
    ratio = np.exp(fit.posterior_draws("APGRLOW_1_on_V"))
    ours = {"CL": (s.loc["CL", "q50"], s.loc["CL", "q5"], s.loc["CL", "q95"]),
            "V": (s.loc["V", "q50"], s.loc["V", "q5"], s.loc["V", "q95"]),
            "APGAR_RATIO": (np.median(ratio), *np.quantile(ratio, [0.05, 0.95]))}
    rows = []
    for name, (med, lo, hi) in ours.items():
        ref = PHENO_NONMEM[name]
        rows.append(_row("phenobarbital vs NONMEM", f"{name} median (90% CrI {lo:.4g}-{hi:.4g})", med, ref,
                         "reference inside 90% CrI and |median/ref - 1| < 10%",
                         lo < ref < hi and abs(med / ref - 1) < 0.10))
    return rows


def posteriordb_ode(draws: int, seed: int) -> list[dict]:
    fit = fit_model(ModelSpec.from_dict(POSTERIORDB_SPEC), datasets.load_posteriordb_mm(), chains=4,
                    draws=max(draws, 2500), tune=1000, seed=seed, progress=False, target_accept=0.9)
    ref = datasets.posteriordb_mm_reference()
    post = fit.idata.posterior
    rows = []
    for ours, theirs in (("KA", "k_a"), ("KM", "K_m"), ("VM", "V_m"), ("sigma_exp", "sigma")):
        draws_, reference = post[ours].values, np.sort(ref[theirs].to_numpy())
        worst = 0.0
        for q in (0.05, 0.25, 0.5, 0.75, 0.95):
            with without_arviz_numba():
                ess = float(az.ess(draws_, method="quantile", prob=q))
            level = np.searchsorted(reference, np.quantile(draws_, q)) / len(reference)
            se = np.sqrt(q * (1 - q) * (1 / ess + 1 / len(reference)))
            worst = max(worst, abs(level - q) / se)
        rows.append(_row("posteriordb one_comp_mm_elim_abs", f"{ours}: largest |level - q| / SE over 5 quantiles",
                         worst, 0.0, "< 4", worst < 4))
    return rows


def loo_vs_r() -> list[dict]:
    ll = loo_reference_matrix()
    with warnings.catch_warnings():   # the outlier's k > 0.7 is part of the reference, not a problem
        warnings.simplefilter("ignore", UserWarning)
        res = az.loo(az.from_dict(log_likelihood={"y": ll[None]}), pointwise=True, reff=1.0)
    k = np.asarray(res.pareto_k)
    n = ll.shape[1]
    # ArviZ's SE is sqrt(n var) with the population variance, R's sqrt(n) sd with the sample SD
    ours = {"elpd_loo": float(res["elpd_loo"]), "se_elpd_loo": float(res["se"]) * np.sqrt(n / (n - 1)),
            "p_loo": float(res["p_loo"])}
    rows = [_row("PSIS-LOO vs R loo", name + (" (ArviZ SE x sqrt(n/(n-1)))" if name.startswith("se") else ""),
                 ours[name], R_LOO[name], "relative diff < 1e-6", abs(ours[name] / R_LOO[name] - 1) < 1e-6)
            for name in ("elpd_loo", "se_elpd_loo", "p_loo")]
    rows.append(_row("PSIS-LOO vs R loo", "Pareto k, largest abs. diff over 20 points",
                     float(np.max(np.abs(k - np.array(R_LOO_K)))), 0.0, "< 0.005",
                     np.max(np.abs(k - np.array(R_LOO_K))) < 0.005, f"largest k: ours {k.max():.3f}"))
    return rows


def blq_recovery(draws: int, seed: int) -> list[dict]:
    df = simulate_blq_study()
    fits = {m: fit_model(ModelSpec.from_toml_text(BLQ_SPEC % m), df, chains=4, draws=draws, tune=draws,
                         seed=seed, progress=False).summary() for m in ("m3", "m1")}
    m3, m1 = fits["m3"], fits["m1"]
    rows = [_row("BLQ recovery (M3)", f"{p} median", m3.loc[p, "q50"], BLQ_TRUTH[p],
                 f"|diff| < 3 posterior SD ({3 * m3.loc[p, 'sd']:.3g})",
                 abs(m3.loc[p, "q50"] - BLQ_TRUTH[p]) < 3 * m3.loc[p, "sd"],
                 f"{100 * (df.loc[df.EVID == 0, 'CENS'].mean()):.0f}% of records BLQ") for p in ("CL", "V")]
    rows.append(_row("BLQ recovery (M1 drops BLQ)", "CL median", m1.loc["CL", "q50"], BLQ_TRUTH["CL"],
                     f"biased low: below truth - 1.5 SD ({BLQ_TRUTH['CL'] - 1.5 * m1.loc['CL', 'sd']:.3g})",
                     m1.loc["CL", "q50"] < BLQ_TRUTH["CL"] - 1.5 * m1.loc["CL", "sd"]))
    return rows


def installation_record() -> dict:
    """Date, platform, Python, package versions, git commit and the SHA-256 of each data set used."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or "not a git checkout"
    except (OSError, subprocess.SubprocessError):
        commit = "git not available"
    files = {n: datasets.dataset_path(n) for n in ("theophylline", "phenobarbital", "posteriordb_mm")}
    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "machine": platform.machine(), "python": sys.version.split()[0],
            "git_commit": commit, "versions": package_versions(),
            "data_sha256": {n: hashlib.sha256(p.read_bytes()).hexdigest() for n, p in files.items()}}


PROBLEMS = {"theophylline": theophylline_vs_nlme, "phenobarbital": phenobarbital_vs_nonmem,
            "posteriordb": posteriordb_ode, "loo": loo_vs_r, "blq": blq_recovery}


def run(problems=None, *, draws: int = 1000, seed: int = 1) -> tuple[pd.DataFrame, dict]:
    """Run the reference problems; returns the table and the installation record."""
    rows = []
    for name in problems or PROBLEMS:
        t0 = time.perf_counter()
        fn = PROBLEMS[name]
        got = fn() if name == "loo" else fn(draws, seed)
        for r in got:
            r["seconds"] = round(time.perf_counter() - t0, 1)
        rows += got
    return pd.DataFrame(rows), installation_record()


def to_markdown(table: pd.DataFrame, record: dict) -> str:
    lines = ["# bayesnlme qualification record", "",
             f"- date (UTC): {record['date']}", f"- platform: {record['platform']} ({record['machine']})",
             f"- Python: {record['python']}", f"- git commit: {record['git_commit']}",
             "- packages: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()),
             "- data SHA-256: " + ", ".join(f"{k} {v[:16]}" for k, v in record["data_sha256"].items()), "",
             f"**{int(table['passed'].sum())} of {len(table)} checks passed.**", "",
             "| problem | quantity | ours | reference | tolerance | result |", "|---|---|---|---|---|---|"]

    def cell(text):
        return str(text).replace("|", "\\|")

    for r in table.itertuples():
        lines.append(f"| {cell(r.problem)} | {cell(r.quantity)} | {r.ours:.6g} | {r.reference:.6g} | "
                     f"{cell(r.tolerance)} | {'pass' if r.passed else 'FAIL'} |")
    return "\n".join(lines) + "\n"
