"""The per-fit part of a report: model, assumptions, estimates, convergence, GOF, VPC, record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bayesnlme.eda import blq_mask
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate import diagnostics, plots
from bayesnlme.report.html import EXTRA_SECTIONS, figure_base64, png_file, record_table, table
from bayesnlme.report.model_text import covariate_table, equations, parameter_table, residual_table

_GOF_FILES = (("gof_observed_vs_predicted.png", "Observed versus PRED and IPRED"),
              ("gof_residuals.png", "CWRES and IWRES versus time and PRED"), ("gof_qq.png", "Q-Q plots of residuals"),
              ("individual_fits.png", "Individual fits"), ("eta_vs_covariates.png", "ETA versus covariates"),
              ("eta_correlation.png", "ETA correlations"), ("trace_rank.png", "Rank plots of the chains"))


def assumptions(result) -> list[str]:
    """Plain sentences on what the fit used and left out of the data."""
    data, f = result.data, result.data.frame
    out = [f"{data.n_obs} observations (EVID=0, MDV=0) of {data.n_subjects} subjects are fitted; "
           f"{int(data.dose_valid.sum())} doses (ADDL expanded) enter the structural model."]
    skipped = f[(f["EVID"] == 0) & (f["MDV"] == 1)]
    if len(skipped):
        out.append(f"{len(skipped)} observation record(s) with MDV=1 are not fitted (records "
                   f"{', '.join(str(r) for r in skipped['ROW'].head(20))}{', ...' if len(skipped) > 20 else ''}).")
    other = f[f["EVID"] == 2]
    if len(other):
        out.append(f"{len(other)} EVID=2 record(s) only carry covariate values.")
    out += _censoring(result)
    blq = blq_mask(data)
    if blq is not None and getattr(data, "obs_cens", None) is None:
        out.append(f"{int(blq.sum())} observation(s) are flagged below the limit of quantification (BLQ/LLOQ "
                   f"column); only a CENS column makes the likelihood censored, so they are fitted at their DV value.")
    cov = result.spec.covariate_columns
    if cov:
        out.append(f"Covariates ({', '.join(cov)}) are carried forward within a subject; values missing before "
                   f"the first recorded value are filled backwards.")
    out.append(f"Residual error: {result.spec.residual.kind}; ETAs are independent normal deviates"
               + (" except the correlated blocks listed above." if result.spec.omega_blocks else "."))
    return out


_BLQ_TEXT = {"m3": "M3 (censored likelihood: the probability of a value beyond the limit)",
             "m1": "M1 (dropped from the likelihood)"}


def _censoring(result) -> list[str]:
    cens = getattr(result.data, "obs_cens", None)
    if cens is None or not (cens != 0).any():
        return []
    models = result.spec.observation_models() if hasattr(result.spec, "observation_models") else []
    methods = sorted({m.blq for m in models if getattr(m, "is_normal", True) and hasattr(m, "blq")}) or ["m3"]
    return [f"{int((cens == 1).sum())} observation(s) below the limit of quantification (CENS=1) and "
            f"{int((cens == -1).sum())} above a limit (CENS=-1), handled by "
            f"{' / '.join(_BLQ_TEXT.get(m, m) for m in methods)}."]


def estimates_table(result, shrink: pd.Series | None) -> pd.DataFrame:
    """Median, 90% CrI, CV% and shrinkage per population parameter."""
    s = result.summary()
    df = pd.DataFrame({"median": s["q50"], "90% CrI low": s["q5"], "90% CrI high": s["q95"], "sd": s["sd"],
                       "CV%": s["cv_percent"], "R-hat": s["r_hat"], "ESS bulk": s["ess_bulk"]})
    if shrink is not None:
        df["shrinkage %"] = [100 * shrink.get(n[6:], np.nan) if n.startswith("omega_") and not
                             n.startswith("omega_iov_") else np.nan for n in df.index]
    return df


def _gof(result, folder: Path, npde_sims: int, seed: int) -> tuple[list, str]:
    diag = folder / "diagnostics"
    present = [(diag / name, cap) for name, cap in _GOF_FILES if (diag / name).is_file()]
    if present:
        return [png_file(p, cap) for p, cap in present], ""

    try:
        gof = diagnostics.gof_table(result, n_npde=npde_sims, seed=seed)
    except BayesNLMEInputError as exc:   # e.g. non-continuous outcomes: say why there are no GOF plots
        return [], f"Goodness-of-fit plots not available: {exc}"
    figs = [(plots.plot_observed_vs_predicted(gof), _GOF_FILES[0][1]), (plots.plot_residuals(gof), _GOF_FILES[1][1]),
            (plots.plot_qq(gof), _GOF_FILES[2][1]), (plots.plot_individual_fits(gof), _GOF_FILES[3][1])]
    return ([{"base64": figure_base64(fig), "caption": cap} for (fig, _), cap in figs],
            f"Computed for this report ({npde_sims} simulations for NPDE); run 'bayesnlme diagnose' for the full set.")


def _extras(folder: Path) -> list[dict]:
    out = []
    for key, title in EXTRA_SECTIONS:
        sub = folder / key
        if not sub.is_dir():
            continue
        figures = [png_file(p, p.stem.replace("_", " ")) for p in sorted(sub.glob("*.png"))]
        tables = []
        for p in sorted(sub.glob("*.csv")):
            with open(p, encoding="utf-8", errors="replace") as fh:
                n = sum(1 for _ in fh) - 1
            tables.append((p.name, table(pd.read_csv(p, nrows=40), max_rows=40, n_total=n)))
        if figures or tables:
            out.append({"key": key, "title": title, "figures": figures, "tables": tables})
    return out


def fit_section(result, folder: Path, *, npde_sims: int = 200, seed: int = 0) -> dict:
    """Everything the report template shows for one fit."""

    spec = result.spec
    conv, verdict = diagnostics.convergence_report(result)
    shrink = diagnostics.shrinkage(result) if spec.eta_parameters and "ETA" in result.idata.posterior else None
    lik_file = folder / "diagnostics" / "likelihood.csv"
    record, spec_text = record_table(result, folder)
    gof, gof_note = _gof(result, folder, npde_sims, seed)
    covs = covariate_table(spec)
    return {
        "name": spec.name, "dir": str(folder), "description": spec.description,
        "equations": equations(spec), "parameters": table(parameter_table(spec)),
        "covariate_effects": table(covs) if len(covs) else None, "residual": table(residual_table(spec)),
        "assumptions": assumptions(result), "estimates": table(estimates_table(result, shrink), index=True),
        "likelihood": table(pd.read_csv(lik_file)) if lik_file.is_file() else None,
        "etas": table(diagnostics.eta_table(result), index=True, max_rows=500) if shrink is not None else None,
        "converged": verdict.startswith("Converged"), "verdict": verdict, "problems": list(result.problems),
        "convergence": table(conv, index=True), "gof": gof, "gof_note": gof_note, "extras": _extras(folder),
        "record": table(record, max_rows=200), "spec_text": spec_text,
    }
