"""``bayesnlme vpc``: VPC and pcVPC tables and plots of a fit, one observation type at a time."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from bayesnlme.atomic import write_atomic, write_text_atomic
from bayesnlme.cli.simulate import averaged_fits
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.averaging import simulate_averaged
from bayesnlme.evaluate.simulate import simulate
from bayesnlme.inference import FitResult
from bayesnlme.vpc import vpc
from bayesnlme.vpc.types import select_type


def parse_bins(text: str):
    """``--bins``: a number of bins, comma-separated edges, or a nominal-time column name."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    if "," in text:
        try:
            return [float(v) for v in text.split(",")]
        except ValueError:
            raise BayesNLMEInputError(f"--bins: edges must be numbers separated by commas, got {text!r}") from None
    return text


def run(args) -> int:
    """``bayesnlme vpc``: write the VPC (and pcVPC) tables and plots; returns the exit status."""
    folder = Path(args.dir)
    result = FitResult.load(folder / "fit.nc")
    if args.n_sim < 20:
        raise BayesNLMEInputError(f"--n-sim must be at least 20, got {args.n_sim}")
    bins = parse_bins(args.bins)
    model, _ = select_type(result.spec, result.data, args.dvid)   # a bad --dvid fails before simulating
    if args.pc and not model.is_normal:
        raise BayesNLMEInputError(f"--pc applies to continuous observation types; DVID {model.dvid} is "
                                  f"{model.likelihood}")
    if args.average:
        fits, weights = averaged_fits(args, result)
        sim = simulate_averaged(fits, weights=weights, n_draws=args.n_sim, seed=args.seed, lloq=args.lloq)
        shares = {k: int((sim.model == k).sum()) for k in fits}
        print(f"model-averaged VPC: simulated studies per fit {shares}")
    else:
        sim = simulate(result, n_draws=args.n_sim, seed=args.seed, progress=True, lloq=args.lloq)
    out = folder / "vpc"
    out.mkdir(exist_ok=True)
    # the simulations behind every number, so the tables can be recomputed independently
    write_atomic(out / "simulations.csv.gz",
                 lambda tmp: sim.to_frame().to_csv(tmp, index=False, compression="gzip"))
    tag = "" if args.dvid is None else f"_dvid{args.dvid}"
    kinds = [("vpc" + tag, False)] + ([("pcvpc" + tag, True)] if args.pc else [])
    for name, pc in kinds:
        fig, table = vpc(result, sim=sim, bins=bins, pc=pc, variability=args.varcorr and pc,
                         stratify=args.stratify, pi=args.pi, lloq=args.lloq, log=args.log, dvid=args.dvid,
                         n_sim=args.n_sim, seed=args.seed)
        write_text_atomic(out / f"{name}.csv", table.to_csv(index=False))
        write_atomic(out / f"{name}.png", lambda tmp, fig=fig: fig.savefig(tmp, dpi=100, format="png"))
        plt.close(fig)
        if "STATISTIC" in table.columns:
            pct = table[table["STATISTIC"].str.startswith("P")]
            print(f"{name}: {int(pct['OUTSIDE'].sum())} of {len(pct)} observed percentiles outside their "
                  f"{args.pi:g}% prediction interval ({len(sim.draw)} simulated studies)")
        else:   # categorical proportions or Kaplan-Meier survival
            what = "category proportions" if "category" in table.columns else "Kaplan-Meier survival values"
            print(f"{name}: {int(table['outside'].sum())} of {len(table)} observed {what} outside their "
                  f"{args.pi:g}% prediction interval")
    print(f"wrote {', '.join(f'{n}.csv, {n}.png' for n, _ in kinds)} and simulations.csv.gz to {out}")
    return 0
