"""``bayesnlme eda`` and ``bayesnlme report``."""

from __future__ import annotations

import sys
from pathlib import Path

from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.report import render_report, write_eda


def run_eda(args) -> int:
    import matplotlib

    matplotlib.use("Agg")

    files = write_eda(args.data, args.out)
    print(f"wrote {len(files)} files to {args.out}; open {Path(args.out) / 'index.html'}")
    return 0


def run(args) -> int:
    import matplotlib

    matplotlib.use("Agg")

    if args.npde_sims < 10:
        raise BayesNLMEInputError(f"--npde-sims must be at least 10, got {args.npde_sims}")
    for d in args.dirs:
        if not (Path(d) / "fit.nc").is_file() and not Path(d).is_file():
            raise BayesNLMEInputError(f"{d}: no fit.nc there (run 'bayesnlme fit ... --out {d}' first)")
    command = " ".join(["bayesnlme"] + sys.argv[1:]) if Path(sys.argv[0]).name == "bayesnlme" else None
    out = render_report(args.dirs, args.out, command=command, npde_sims=args.npde_sims, seed=args.seed)
    print(f"wrote {out}")
    return 0
