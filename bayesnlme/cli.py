"""The ``bayesnlme`` command line.

Exit status: 0 success, 1 bad input (a one-line message naming the file, row,
column or parameter), 2 internal error (a bug: run again with ``--debug`` for
the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from .atomic import output_lock, write_atomic, write_text_atomic

EXAMPLES = """examples:
  bayesnlme eda --data theophylline.csv --out eda_theo    data summary, spaghetti plots, covariates, outliers
  bayesnlme fit --model pk_1cmt_oral --data theophylline.csv --out fits/theo
  bayesnlme fit --model my_model.toml --data study.csv --out fits/run2 --chains 4 --draws 2000 --seed 7
  bayesnlme diagnose fits/theo      convergence, GOF, residual and ETA plots into fits/theo/diagnostics/
  bayesnlme compare fits/1cmt fits/2cmt --level subject    rank models by PSIS-LOO
  bayesnlme vpc fits/theo --pc     VPC and prediction-corrected VPC into fits/theo/vpc/
  bayesnlme simulate fits/theo --regimens regimens.toml    steady-state exposure, target attainment
  bayesnlme library                 list the model library
  bayesnlme library pk_1cmt_oral    show one entry (its TOML, with the reasoning behind its priors)
  bayesnlme report fits/theo --out theo_report.html      one self-contained HTML report
  bayesnlme report fits/1cmt fits/2cmt --out comparison.html

exit status: 0 success, 1 bad input (one-line message), 2 internal error (--debug shows the traceback)
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors are bad input: exit status 1 (argparse's own is 2, which here means a bug)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bayesnlme", description="Bayesian nonlinear mixed-effects "
                                "(population PK/PD) models on PyMC.", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit a model to NONMEM-format data with NUTS",
                       description="Fit MODEL to DATA and write OUT/fit.nc (posterior, log-likelihood, "
                       "spec, data, seed, versions) and OUT/summary.csv.",
                       epilog="example:\n  bayesnlme fit --model pk_1cmt_oral --data theophylline.csv --out fits/theo",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("--model", required=True, help="a .toml spec file or a model_library entry name")
    f.add_argument("--data", required=True, help="NONMEM-format CSV file")
    f.add_argument("--out", default="bayesnlme_fit", help="output folder (default: %(default)s)")
    f.add_argument("--chains", type=int, default=4, help="number of chains (default: %(default)s)")
    f.add_argument("--draws", type=int, default=1000, help="draws per chain after warm-up (default: %(default)s)")
    f.add_argument("--tune", type=int, default=1000, help="warm-up draws per chain (default: %(default)s)")
    f.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    f.add_argument("--sampler", choices=["nutpie", "pymc"], default="nutpie", help="NUTS implementation (default: %(default)s)")
    f.add_argument("--method", choices=["nuts", "map", "advi"], default="nuts",
                   help="nuts (default), or a quick approximate fit: map (posterior mode + Laplace) or advi")
    f.add_argument("--init", choices=["prior", "map"], default="prior",
                   help="NUTS start: prior medians or the posterior mode (default: %(default)s)")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    d = sub.add_parser("diagnose", help="convergence report, goodness-of-fit and ETA plots and tables",
                       description="Read DIR/fit.nc and write into DIR/diagnostics/: convergence.txt and "
                       "convergence.csv, likelihood.csv (-2LL, AIC, BIC by importance sampling), gof.csv (DV, PRED, IPRED, IWRES, CWRES, NPDE per observation), "
                       "eta.csv, shrinkage.csv, eta_correlation.csv and PNG plots.",
                       epilog="example:\n  bayesnlme diagnose fits/theo",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("dir", help="fit folder (containing fit.nc)")
    d.add_argument("--npde-sims", type=int, default=1000, help="simulated data sets for NPDE (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0, help="seed of the NPDE/CWRES simulations (default: %(default)s)")
    from .compare import add_compare_parser

    add_compare_parser(sub)
    from . import simulate, vpc

    vpc.add_cli(sub)
    simulate.add_cli(sub)
    from . import prior_check

    prior_check.add_cli(sub)
    from .report import cli as report_cli

    report_cli.add_cli(sub)
    lib = sub.add_parser("library", help="list model_library entries or show one",
                         description="Without NAME: list the model_library entries with their descriptions. "
                         "With NAME: print that entry's TOML (priors explained in its comments).",
                         epilog="examples:\n  bayesnlme library\n  bayesnlme library pk_1cmt_oral\n"
                         "  bayesnlme library pk_1cmt_oral > my_model.toml   start a model of your own",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    lib.add_argument("name", nargs="?", help="entry to show")
    return p


def _fit(args) -> int:
    import pandas as pd

    from .fit import SUMMARY_COLUMNS, fit_model
    from .spec import load_spec

    spec = load_spec(args.model)
    result = fit_model(spec, args.data, chains=args.chains, draws=args.draws, tune=args.tune,
                       seed=args.seed, sampler=args.sampler, progress=not args.no_progress,
                       method=args.method, init=args.init)
    result.metadata["command"] = " ".join(["bayesnlme"] + sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "fit.nc")
    table = result.summary()
    write_text_atomic(out / "summary.csv", table.reset_index()[SUMMARY_COLUMNS].to_csv(index=False))
    with pd.option_context("display.width", 120, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print(f"{spec.name} on {result.data.source}: {result.data.n_subjects} subjects, "
              f"{result.data.n_obs} observations; " + (f"{args.chains} chains x {args.draws} draws"
              if not result.approximate else f"{args.method.upper()}: {args.draws} approximate draws"))
        print(table.to_string())
    if result.approximate:
        print(f"\napproximate fit ({result.method}): no convergence diagnostics; confirm with NUTS")
    if result.problems:
        print("\nconvergence problems:")
        for p in result.problems:
            print(f"  - {p}")
    elif not result.approximate:
        print("\nconvergence: no problems found (R-hat <= 1.01, bulk ESS >= 400, no divergences)")
    print(f"\nwrote {out / 'fit.nc'} and {out / 'summary.csv'}")
    return 0


def _diagnose(args) -> int:
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from . import diagnostics, plots
    from .errors import BayesNLMEInputError
    from .fit import FitResult

    folder = Path(args.dir)
    result = FitResult.load(folder / "fit.nc")
    if args.npde_sims < 10:
        raise BayesNLMEInputError(f"--npde-sims must be at least 10, got {args.npde_sims}")
    out = folder / "diagnostics"
    out.mkdir(exist_ok=True)
    table, verdict = diagnostics.convergence_report(result)
    gof = diagnostics.gof_table(result, n_npde=args.npde_sims, seed=args.seed)
    etas = diagnostics.eta_table(result)
    shrink = diagnostics.shrinkage(result)
    from .predict import predict_at_times

    curves = predict_at_times(result, np.linspace(0, result.data.obs_time.max(), 120))
    tables = {"convergence.csv": table, "gof.csv": gof, "eta.csv": etas,
              "shrinkage.csv": shrink.to_frame(), "eta_correlation.csv": diagnostics.eta_correlation(result)}
    for name, df in tables.items():
        write_text_atomic(out / name, df.to_csv(index=name != "gof.csv"))
    write_text_atomic(out / "convergence.txt", verdict + "\n")
    figures = {"gof_observed_vs_predicted.png": plots.plot_observed_vs_predicted(gof),
               "gof_residuals.png": plots.plot_residuals(gof), "gof_qq.png": plots.plot_qq(gof),
               "individual_fits.png": plots.plot_individual_fits(gof, curves=curves),
               "eta_vs_covariates.png": plots.plot_eta_covariates(etas),
               "eta_correlation.png": plots.plot_eta_correlation(etas), "trace_rank.png": plots.plot_trace(result)}
    if result.spec.covariates:   # ratio to the reference subject at P5/P95 and each category
        from .covariates import plot_covariate_forest

        fig, forest = plot_covariate_forest(result)
        figures["covariate_forest.png"] = (fig, forest)
        write_text_atomic(out / "covariate_forest.csv", forest.to_csv(index=False))
    for name, (fig, _) in figures.items():
        write_atomic(out / name, lambda tmp, fig=fig: fig.savefig(tmp, dpi=100, format="png"))
        plt.close(fig)
    from .likelihood import marginal_loglik

    lik = None
    try:
        lik = marginal_loglik(result, seed=args.seed)
    except BayesNLMEInputError as exc:   # occasion effects (IOV): not integrated by this method
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


def _library(args) -> int:
    from .spec import library_names, library_path, load_spec

    if args.name:
        print(library_path(args.name).read_text(), end="")
        return 0
    names = library_names()
    width = max(len(n) for n in names) + 2
    for name in names:
        print(f"{name:{width}s}{load_spec(name).description}")
    return 0


def _dispatch(args) -> int:
    if hasattr(args, "handler"):   # subcommands registered by their own module (add_cli)
        return args.handler(args)
    if args.command == "compare":
        from .compare import run_compare
        return run_compare(args)
    return {"fit": _fit, "diagnose": _diagnose, "library": _library}[args.command](args)


def _output_folder(args) -> Path | None:
    """The folder a command writes into (locked while it runs), or None for commands that write nothing."""
    if args.command in ("fit", "eda", "prior-check"):
        return Path(args.out)
    if args.command in ("diagnose", "vpc"):
        return Path(args.dir)
    if args.command == "simulate":
        return Path(args.out) if args.out else Path(args.dir)
    if args.command in ("report", "compare"):
        return Path(args.out).parent
    return None


def main(argv=None) -> int:
    """Entry point of the ``bayesnlme`` command; returns the exit status."""
    import warnings

    from .errors import BayesNLMEInputError, ConvergenceWarning

    args = _parser().parse_args(argv)
    warnings.simplefilter("ignore", ConvergenceWarning)  # printed in plain words after the summary
    try:
        folder = _output_folder(args)
        with output_lock(folder) if folder is not None else contextlib.nullcontext():
            return _dispatch(args)
    except BayesNLMEInputError as exc:
        if args.debug:
            raise
        print(f"bayesnlme: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bayesnlme: interrupted; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:   # output piped into e.g. `head`, which closed it: not an error
        import os

        # Python would complain again when flushing stdout at exit; point it at /dev/null
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - anything else is a bug; say so in one line
        if args.debug:
            raise
        print(f"bayesnlme: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
