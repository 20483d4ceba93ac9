"""``bayesnlme fit`` and ``bayesnlme library``.

Kept apart from ``bayesnlme diagnose`` so that a fit loads no plotting code (matplotlib and the
diagnostics take ~1.4 s to import, a tenth of a warm theophylline fit).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from bayesnlme.atomic import write_text_atomic
from bayesnlme.inference import fit_model
from bayesnlme.inference.fit import SUMMARY_COLUMNS
from bayesnlme.spec import library_names, library_path, load_spec


def run_fit(args) -> int:
    spec = load_spec(args.model)
    result = fit_model(spec, args.data, chains=args.chains, draws=args.draws, tune=args.tune,
                       seed=args.seed, sampler=args.sampler, progress=not args.no_progress,
                       method=args.method, init=args.init, device=args.device,
                       log_likelihood=args.log_likelihood, eta_parameterisation=args.eta_parameterisation)
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
    kept = result.settings.get("log_likelihood")
    if kept == "subject":
        print(f"\nlog-likelihood kept per subject ({result.data.n_subjects} values a draw instead of "
              f"{result.data.n_obs}): compare and LOO at the subject level only")
    elif kept == "none":
        print("\nno log-likelihood kept: this fit cannot be compared by LOO/WAIC")
    print(f"\nwrote {out / 'fit.nc'} and {out / 'summary.csv'}")
    return 0


def run_library(args) -> int:
    if args.name:
        print(library_path(args.name).read_text(), end="")
        return 0
    names = library_names()
    width = max(len(n) for n in names) + 2
    for name in names:
        print(f"{name:{width}s}{load_spec(name).description}")
    return 0
