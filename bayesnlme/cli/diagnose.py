"""``bayesnlme diagnose``: convergence, goodness-of-fit tables and figures of a saved fit."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bayesnlme.atomic import write_atomic, write_text_atomic
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate import diagnostics, plots
from bayesnlme.evaluate.covariates import plot_covariate_forest
from bayesnlme.evaluate.likelihood import marginal_loglik
from bayesnlme.evaluate.mixture import mixture_membership
from bayesnlme.evaluate.predict import predict_at_times
from bayesnlme.inference import FitResult


def run_diagnose(args) -> int:

    folder = Path(args.dir)
    result = FitResult.load(folder / "fit.nc")
    if args.npde_sims < 10:
        raise BayesNLMEInputError(f"--npde-sims must be at least 10, got {args.npde_sims}")
    if args.is_samples < 10:
        raise BayesNLMEInputError(f"--is-samples must be at least 10, got {args.is_samples}")
    out = folder / "diagnostics"
    out.mkdir(exist_ok=True)
    table, verdict = diagnostics.convergence_report(result)
    gof = diagnostics.gof_table(result, n_npde=args.npde_sims, seed=args.seed)
    etas = diagnostics.eta_table(result)
    shrink = diagnostics.shrinkage(result)

    curves = predict_at_times(result, np.linspace(0, result.data.obs_time.max(), 120))
    tables = {"convergence.csv": table, "gof.csv": gof, "eta.csv": etas,
              "shrinkage.csv": shrink.to_frame(), "eta_correlation.csv": diagnostics.eta_correlation(result)}
    if result.spec.mixture is not None:   # posterior probability of each subject's component
        tables["mixture_membership.csv"] = mixture_membership(result)
    for name, df in tables.items():
        write_text_atomic(out / name, df.to_csv(index=name not in ("gof.csv", "mixture_membership.csv")))
    write_text_atomic(out / "convergence.txt", verdict + "\n")
    figures = {"gof_observed_vs_predicted.png": plots.plot_observed_vs_predicted(gof),
               "gof_residuals.png": plots.plot_residuals(gof), "gof_qq.png": plots.plot_qq(gof),
               "individual_fits.png": plots.plot_individual_fits(gof, curves=curves),
               "eta_vs_covariates.png": plots.plot_eta_covariates(etas),
               "eta_correlation.png": plots.plot_eta_correlation(etas), "trace_rank.png": plots.plot_trace(result)}
    if result.spec.covariates:   # ratio to the reference subject at P5/P95 and each category

        fig, forest = plot_covariate_forest(result)
        figures["covariate_forest.png"] = (fig, forest)
        write_text_atomic(out / "covariate_forest.csv", forest.to_csv(index=False))
    for name, (fig, _) in figures.items():
        write_atomic(out / name, lambda tmp, fig=fig: fig.savefig(tmp, dpi=100, format="png"))
        plt.close(fig)

    lik = None
    try:
        lik = marginal_loglik(result, seed=args.seed, n_samples=args.is_samples)
    except BayesNLMEInputError as exc:   # e.g. a fit without draws of its population parameters
        print(f"marginal likelihood not computed: {exc}")
    if lik is not None:
        write_text_atomic(out / "likelihood.csv", pd.DataFrame([{
            "loglik": lik.loglik, "mc_se": lik.mc_se, "minus2ll": lik.minus2ll, "aic": lik.aic, "bic": lik.bic,
            "n_parameters": lik.n_parameters, "n_obs": lik.n_obs}]).to_csv(index=False))
    print(verdict)
    if lik is not None:
        print(f"\nmarginal log-likelihood at the posterior mode (importance sampling): {lik.loglik:.2f} "
              f"(MC SE {lik.mc_se:.2f}); -2LL {lik.minus2ll:.2f}, AIC {lik.aic:.2f}, BIC {lik.bic:.2f} "
              f"({lik.n_parameters} parameters, {lik.n_obs} observations)")
    print("\nETA shrinkage (SD-based): " + ", ".join(f"{p} {100 * v:.0f}%" for p, v in shrink.items()))
    cwres = (f"CWRES mean {gof['CWRES'].mean():.2f}, SD {gof['CWRES'].std():.2f}; " if gof["CWRES"].notna().any()
             else "CWRES: none (no continuous observations); ")
    what = "NPDE / randomized PIT" if "NPDE_KIND" in gof and (gof["NPDE_KIND"] != "npde").any() else "NPDE"
    print(f"{cwres}{what} mean {gof['NPDE'].mean():.2f}, SD {gof['NPDE'].std():.2f} (expected 0 and 1)")
    print(f"\nwrote {len(tables) + 1 + (lik is not None)} tables and {len(figures)} plots to {out}")
    return 0
