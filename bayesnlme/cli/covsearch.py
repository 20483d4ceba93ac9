"""``bayesnlme covsearch``: stepwise covariate model building on the many-fits runner."""

from __future__ import annotations

import pandas as pd

from bayesnlme.cli.sbc import scheduler_of
from bayesnlme.covsearch import covsearch
from bayesnlme.spec import load_spec


def run(args) -> int:
    result = covsearch(load_spec(args.model), args.data, args.candidates, run_dir=args.out,
                       screen_p=None if args.screen_p >= 1 else args.screen_p, rule=args.rule, alpha=args.alpha,
                       full_model=not args.no_full_model,
                       chains=args.chains, draws=args.draws, tune=args.tune, seed=args.seed,
                       scheduler=scheduler_of(args), n_workers=args.workers, memory_limit=args.memory_limit,
                       retry_failed=args.retry_failed,
                       progress=not args.no_progress)
    with pd.option_context("display.width", 140, "display.max_columns", 20, "display.precision", 3):
        print(result.steps.to_string(index=False))
    print()
    print(result.describe())
    print(f"\nfinal model: {args.out}/final_model.toml; step table, forest plot and every fit in {args.out}/")
    return 0
