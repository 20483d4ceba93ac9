"""``bayesnlme eda`` and ``bayesnlme report``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_cli(subparsers) -> None:
    """Register the ``eda`` and ``report`` subcommands."""
    e = subparsers.add_parser(
        "eda", help="exploratory analysis of a data file: summary, spaghetti plots, covariates, outliers",
        description="Read a NONMEM-format CSV and write into OUT: data_summary.csv, covariate_summary.csv, "
        "outliers.csv, spaghetti plots (linear, log, dose-normalised, by covariate), covariate box plots, "
        "scatter matrix and correlation heat map (PNG, each with the CSV it draws) and index.html.",
        epilog="example:\n  bayesnlme eda --data theophylline.csv --out eda_theo",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--data", required=True, help="NONMEM-format CSV file")
    e.add_argument("--out", default="bayesnlme_eda", help="output folder (default: %(default)s)")
    e.set_defaults(handler=_eda)
    r = subparsers.add_parser(
        "report", help="one self-contained HTML report of one or more fits",
        description="Write one HTML file (figures embedded, no external requests) with the data summary and "
        "exploratory figures, the model written out, assumptions and exclusions, estimates, convergence, "
        "goodness of fit, whatever DIR/vpc, DIR/simulation and DIR/prior_check hold, a comparison table "
        "when several fits are given, and a reproducibility record.",
        epilog="examples:\n  bayesnlme report fits/theo --out theo_report.html\n"
        "  bayesnlme report fits/1cmt fits/2cmt --out comparison.html",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("dirs", nargs="+", metavar="DIR", help="fit folder(s) containing fit.nc")
    r.add_argument("--out", default="report.html", help="HTML file to write (default: %(default)s)")
    r.add_argument("--npde-sims", type=int, default=200,
                   help="NPDE simulations when DIR/diagnostics has no plots (default: %(default)s)")
    r.add_argument("--seed", type=int, default=0, help="seed of those simulations (default: %(default)s)")
    r.set_defaults(handler=_report)


def _eda(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from . import write_eda

    files = write_eda(args.data, args.out)
    print(f"wrote {len(files)} files to {args.out}; open {Path(args.out) / 'index.html'}")
    return 0


def _report(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from ..errors import BayesNLMEInputError
    from . import render_report

    if args.npde_sims < 10:
        raise BayesNLMEInputError(f"--npde-sims must be at least 10, got {args.npde_sims}")
    for d in args.dirs:
        if not (Path(d) / "fit.nc").is_file() and not Path(d).is_file():
            raise BayesNLMEInputError(f"{d}: no fit.nc there (run 'bayesnlme fit ... --out {d}' first)")
    command = " ".join(["bayesnlme"] + sys.argv[1:]) if Path(sys.argv[0]).name == "bayesnlme" else None
    out = render_report(args.dirs, args.out, command=command, npde_sims=args.npde_sims, seed=args.seed)
    print(f"wrote {out}")
    return 0
