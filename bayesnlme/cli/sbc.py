"""``bayesnlme sbc``: simulation-based calibration on the many-fits runner."""

from __future__ import annotations

import pandas as pd

from bayesnlme.sbc import sbc
from bayesnlme.spec import load_spec


def scheduler_of(args):
    """The runner's ``scheduler`` argument from --scheduler (None: environment or a local cluster)."""
    return args.scheduler or None


def run(args) -> int:
    spec = load_spec(args.model)
    fit_spec = load_spec(args.fit_model) if args.fit_model else None
    result = sbc(spec, args.data, n=args.n, fit_spec=fit_spec, run_dir=args.out, chains=args.chains,
                 draws=args.draws, tune=args.tune, n_ranks=args.ranks, seed=args.seed, alpha=args.alpha,
                 scheduler=scheduler_of(args), n_workers=args.workers, memory_limit=args.memory_limit,
                 retry_failed=args.retry_failed, progress=not args.no_progress, lloq=args.lloq)
    with pd.option_context("display.width", 120, "display.precision", 3):
        print(result.table.to_string())
    print()
    print(result.verdict())
    print(f"\nranks, table, plots and the run manifest in {args.out}/")
    return 0
