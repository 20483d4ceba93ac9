"""``bayesnlme trial``: replicate trial simulation on the many-fits runner."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pandas as pd

from bayesnlme.cli.sbc import scheduler_of
from bayesnlme.data import read_nonmem
from bayesnlme.decision import load_rule, rule_from_dict
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.inference import FitResult
from bayesnlme.spec import load_spec
from bayesnlme.trial import trial


def rule_pairs(items) -> dict:
    """The keys of ``--rule KEY=VALUE ...``; a value is read as a TOML value (number, true/false, "text")
    when it is one, else as text.

    Examples
    --------
    >>> rule_pairs(["kind=interval", "parameter=CL", "lower=0.8", "target=CTROUGH >10", "above=false"])
    {'kind': 'interval', 'parameter': 'CL', 'lower': 0.8, 'target': 'CTROUGH >10', 'above': False}
    """
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise BayesNLMEInputError(f"--rule: expected KEY=VALUE, got {item!r} (quote a pair that holds a space, "
                                      f"e.g. \"target=CTROUGH >10\")")
        if key in out:
            raise BayesNLMEInputError(f"--rule: key {key!r} given twice")
        try:
            out[key] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = value.strip()
    return out


def _covariates(value):
    """``--covariates``: None, "resample" or the table in a CSV file."""
    if value is None or value == "resample":
        return value
    path = Path(value)
    if not path.is_file():
        raise BayesNLMEInputError(f"--covariates: expected 'resample' or a CSV covariate table, and {path} is "
                                  f"not a file")
    try:
        return pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BayesNLMEInputError(f"--covariates: {path}: not a readable CSV table ({exc})") from None


def run(args) -> int:
    """``bayesnlme trial``: run (or resume) the replicates, print the probability of success; the exit status."""
    # the cheap checks first: a typo in the rule should not wait for the fit to load
    rule = load_rule(args.rule_file) if args.rule_file else rule_from_dict(rule_pairs(args.rule), "--rule")
    covariates = _covariates(args.covariates)
    design = read_nonmem(args.design)
    analysis_spec = load_spec(args.analysis_model) if args.analysis_model else None
    result = FitResult.load(Path(args.dir) / "fit.nc")
    res = trial(result, design, n=args.n, rule=rule, analysis=args.analysis, analysis_spec=analysis_spec,
                dropout=args.dropout, covariates=covariates, chains=args.chains, draws=args.draws, tune=args.tune,
                seed=args.seed, run_dir=args.out, scheduler=scheduler_of(args), n_workers=args.workers,
                memory_limit=args.memory_limit, retry_failed=args.retry_failed, progress=not args.no_progress,
                lloq=args.lloq)
    table = res.replicates
    print(res.describe())
    if "truth" in table and table["truth"].notna().any():
        print(f"truth {table['truth'].median():.4g} and estimate {table['estimate'].median():.4g} "
              f"(medians over replicates)")
    print(f"\nreplicates.csv (one row per replicate), trial.txt and the run manifest in {args.out}/")
    return 0
