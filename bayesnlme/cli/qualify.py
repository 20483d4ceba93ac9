"""``python -m bayesnlme.cli.qualify`` (``make qualify``): the reference problems of :mod:`bayesnlme.qualify`."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from bayesnlme import qualify
from bayesnlme.atomic import output_lock, write_text_atomic


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bayesnlme.cli.qualify", description=qualify.__doc__.split("\n\n")[0])
    p.add_argument("--out", default="qualification", help="output folder (default: %(default)s)")
    p.add_argument("--only", nargs="+", choices=sorted(qualify.PROBLEMS), help="run only these problems")
    p.add_argument("--draws", type=int, default=1000, help="draws (and warm-up) per chain (default: %(default)s)")
    args = p.parse_args(argv)
    with output_lock(args.out) as out:
        table, record = qualify.run(args.only, draws=args.draws)
        write_text_atomic(out / "qualification.csv", table.to_csv(index=False))
        write_text_atomic(out / "qualification.md", qualify.to_markdown(table, record))
    with pd.option_context("display.width", 160, "display.max_colwidth", 60):
        print(table[["problem", "quantity", "ours", "reference", "passed"]].to_string(index=False))
    print(f"\n{int(table['passed'].sum())} of {len(table)} checks passed; wrote {out / 'qualification.md'}")
    return 0 if table["passed"].all() else 1


if __name__ == "__main__":
    sys.exit(main())
