"""``bayesnlme compare``: rank fits by predictive accuracy (PSIS-LOO or WAIC, by subject or by observation)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bayesnlme.atomic import write_text_atomic
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.compare import check_same_data, compare_table, describe_comparison, named_results
from bayesnlme.evaluate.elpd import check_choices, pareto_k_report
from bayesnlme.evaluate.subject_loo import add_high_k_handling, describe
from bayesnlme.inference import FitResult


def run(args) -> int:
    """Run ``bayesnlme compare``: load DIR/fit.nc for each DIR, compare, print, write CSV; return 0."""
    check_choices(args.level, args.ic)
    for d in args.dirs:
        if not (Path(d) / "fit.nc").is_file():
            raise BayesNLMEInputError(f"{d}: no fit.nc in this folder (write one with bayesnlme fit --out {d})")
    named = named_results([(Path(d).resolve().name, FitResult.load(Path(d) / "fit.nc")) for d in args.dirs])
    check_same_data(named)
    table, loos = compare_table(named, args.level, args.ic)
    handled = None
    if args.level == "subject" and args.ic == "loo" and all("ETA" in r.idata.posterior for r in named.values()):
        table, handled = add_high_k_handling(table, named, refit_budget_s=args.refit_budget)
    data = next(iter(named.values())).data
    with pd.option_context("display.width", 120, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print(f"{args.ic.upper()} comparison, leaving out one {args.level} at a time: {data.n_subjects} subjects, "
              f"{data.n_obs} observations")
        print(table.to_string())
    print("\n" + describe_comparison(table) + "\n\nPareto k:")
    for name in table.index:
        cd = named[name].idata.constant_data
        labels = None if args.level == "subject" else [f"ID {i} at TIME {t:g}" for i, t in zip(cd.ID.values,
                                                                                              cd.TIME.values)]
        print(f"  {name}: {pareto_k_report(loos[name], labels)[1]}")
        if handled is not None:
            print(f"    automatic handling: {describe(handled[name][1])}")
    write_text_atomic(args.out, table.reset_index().to_csv(index=False))
    print(f"\nwrote {args.out}")
    return 0
