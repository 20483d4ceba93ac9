"""``bayesnlme prior-check``: DV simulated from the priors alone, against the data."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from bayesnlme.atomic import write_atomic, write_text_atomic
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.prior_check import plot_prior_check
from bayesnlme.spec import load_spec


def run(args) -> int:
    if args.draws < 10 or args.bins < 1:
        raise BayesNLMEInputError("--draws must be >= 10 and --bins >= 1")
    fig, df = plot_prior_check(load_spec(args.model), args.data, draws=args.draws, seed=args.seed,
                               n_bins=args.bins, log=args.log)
    out = Path(args.out) / "prior_check"
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "prior_check.csv", df.to_csv(index=False))
    write_atomic(out / "prior_check.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    print(f"{100 * df.attrs['share_inside']:.0f}% of observations inside the prior predictive 90% band")
    print(f"wrote {out / 'prior_check.csv'} and {out / 'prior_check.png'}")
    return 0
