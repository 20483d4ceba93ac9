"""``bayesnlme individualize``: one patient's individual posterior, profile and dose table (TDM)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from bayesnlme.atomic import write_atomic, write_text_atomic
from bayesnlme.cli.parsers import individualize_out
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.individual_dosing import (
    dose_table,
    parse_targets,
    plot_profile,
    predict_profile,
    recommend,
    recommendation_text,
)
from bayesnlme.evaluate.individualize import individualize
from bayesnlme.inference import FitResult
from bayesnlme.spec import load_spec


def load_source(text: str):
    """A fit folder's :class:`FitResult`, or a spec (file or library entry) standing for the population."""
    path = Path(text)
    if path.is_dir():
        if not (path / "fit.nc").is_file():
            raise BayesNLMEInputError(f"{path}: a folder without fit.nc; give a fit folder (bayesnlme fit --out) "
                                      f"or a published model as a .toml spec")
        return FitResult.load(path / "fit.nc")
    return load_spec(text)


def run(args) -> int:
    """``bayesnlme individualize``: writes the four tables and the plot, prints the recommendation."""
    targets = parse_targets(args.target)          # bad syntax fails before anything is computed
    source = load_source(args.source)
    post = individualize(source, args.patient, n_draws=args.draws, n_proposals=args.proposals,
                         population=args.population, seed=args.seed)
    table = dose_table(post, targets, args.doses, args.intervals, duration=args.duration,
                       future_occasion=args.future_occasion, seed=args.seed)
    best = recommend(table)
    profile = predict_profile(post, {"dose": best["DOSE"], "ii": best["II"], "duration": best["DURATION"]},
                              future_occasion=args.future_occasion, seed=args.seed)
    out = individualize_out(args)
    out.mkdir(parents=True, exist_ok=True)
    params = post.summary().rename(columns={"q_lo": "q5", "q_hi": "q95"})
    write_text_atomic(out / "individual_parameters.csv", params.to_csv(index=False))
    write_text_atomic(out / "profile.csv", profile.to_csv(index=False))
    write_text_atomic(out / "dose_table.csv", table.to_csv(index=False))
    fig, _ = plot_profile(profile, targets)
    write_atomic(out / "profile.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    q = post.quality
    print(f"Patient {post.patient.ids[0]} ({post.patient.n_obs} measured levels); population: {post.source}")
    print(f"Individual posterior: {q['ess']:.0f} effective samples of {q['n_draws'] * q['n_proposals']} weighted, "
          f"{q['ess_population']:.0f} effective population draws, Pareto k {q['pareto_k']:.2f} "
          f"(population {q['population']})\n")
    with pd.option_context("display.width", 160, "display.float_format", "{:.4g}".format):
        print(params.to_string(index=False))
        print()
        print(table.to_string(index=False))
    print()
    print(recommendation_text(table, post))
    print(f"\nwrote individual_parameters.csv, profile.csv, profile.png and dose_table.csv to {out}")
    return 0
