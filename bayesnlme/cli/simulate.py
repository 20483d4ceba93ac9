"""``bayesnlme simulate``: steady-state exposure and target attainment of dosing regimens."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from bayesnlme.atomic import write_atomic, write_text_atomic
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.averaging import evaluate_regimens_averaged
from bayesnlme.evaluate.regimens import evaluate_regimens, load_regimens, plot_regimens
from bayesnlme.inference import FitResult


def averaged_fits(args, result) -> tuple[dict, list | None]:
    """``DIR`` and the ``--average`` folders as named fits, and the ``--weights`` (None: stacking)."""
    dirs = [args.dir] + list(args.average)
    names = []
    for d in dirs:   # folder names, made unique
        name = Path(d).resolve().name
        names.append(name if name not in names else f"{name}_{len(names)}")
    fits = {names[0]: result, **{n: FitResult.load(Path(d) / "fit.nc") for n, d in zip(names[1:], dirs[1:])}}
    if args.weights is None:
        return fits, None
    try:
        weights = [float(w) for w in args.weights.split(",")]
    except ValueError:
        raise BayesNLMEInputError(f"--weights: numbers separated by commas, got {args.weights!r}") from None
    if len(weights) != len(dirs):
        raise BayesNLMEInputError(f"--weights: {len(weights)} weights for {len(dirs)} fits (DIR and each --average)")
    return fits, weights


def run(args) -> int:
    """``bayesnlme simulate``: regimen table, per-subject metrics and plot; returns the exit status."""
    options = load_regimens(args.regimens)
    result = FitResult.load(Path(args.dir) / "fit.nc")
    out = Path(args.out) if args.out else Path(args.dir) / "simulation"
    out.mkdir(parents=True, exist_ok=True)
    if args.average:
        fits, weights = averaged_fits(args, result)
        table, metrics = evaluate_regimens_averaged(fits, weights=weights, **options)
        print(f"model-averaged over {', '.join(fits)}: weights {table.loc[0, 'WEIGHTS']}")
    else:
        table, metrics = evaluate_regimens(result, **options)
    write_text_atomic(out / "regimens.csv", table.to_csv(index=False))
    write_text_atomic(out / "regimen_metrics.csv", metrics.to_csv(index=False))
    fig, _ = plot_regimens(table, options["targets"])
    write_atomic(out / "regimens.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    with pd.option_context("display.width", 160, "display.max_columns", 40, "display.float_format", "{:.3g}".format):
        cols = ["REGIMEN", "BAND", "AUCTAU_median", "CMAX_median", "CTROUGH_median"] + \
            [c for c in table.columns if c.startswith("P(")]
        print(table[cols].to_string(index=False))
    print(f"\nwrote regimens.csv, regimen_metrics.csv and regimens.png to {out}")
    return 0
