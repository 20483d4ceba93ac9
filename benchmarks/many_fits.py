"""Many-fits benchmark: N independent fits, one after another against a Dask LocalCluster.

The fits are ``pk_1cmt_oral`` on the bundled theophylline data with N different seeds (4 chains x
``--draws`` after ``--tune``), each a complete ``fit_model`` with its own compilation, saved to
``fit.nc`` -- the unit of work of covariate model building.  Three ways:

``serial (one process)``
    ``run_tasks(..., scheduler="serial")``: one fit after another in this process, chains in
    parallel on all cores (what a loop over ``bayesnlme fit`` does, without the start-up per fit).
``LocalCluster``
    ``run_tasks`` on a LocalCluster of ``--workers`` single-threaded worker processes (chains one
    after another inside each fit); the cluster's start-up is included.
``sbc refit``
    for comparison, the same number of SBC replicates of the same model and design, where each worker
    compiles the model once and samples it again for each replicate's DV (``bayesnlme.inference.refit``).

Printed: wall time (s), time relative to serial, fits per minute, peak memory (MB: the largest
resident set of this process or, on the cluster, of any worker) and the shortest and longest fit (s;
a worker's first fit also pays its process's imports and first compilations).

Run::

    .venv/bin/python benchmarks/many_fits.py              # 8 fits, 2 workers
    .venv/bin/python benchmarks/many_fits.py --fits 16 --workers 4
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

warnings.simplefilter("ignore")


def fit_task(*, key, seed, workdir, data, draws, tune, cores):
    import resource as _r

    from bayesnlme import load_spec
    from bayesnlme.inference.fit import fit_model

    result = fit_model(load_spec("pk_1cmt_oral"), data, chains=4, draws=draws, tune=tune, seed=seed,
                       progress=False, cores=cores)
    result.save(workdir / "fit.nc")
    return {"CL": float(result.summary().loc["CL", "q50"]),
            "peak_mb": _r.getrusage(_r.RUSAGE_SELF).ru_maxrss / 1024}


def run_mode(args) -> None:
    """One way of running the fits, in this (fresh) process; prints a JSON line of its figures."""
    import json

    from bayesnlme import datasets, load_spec
    from bayesnlme.runner import run_tasks
    from bayesnlme.sbc import sbc

    data = pd.read_csv(datasets.dataset_path("theophylline"))
    root = Path(tempfile.mkdtemp(prefix="bayesnlme_many_fits_"))
    try:
        if args.mode == "sbc":
            sbc(load_spec("pk_1cmt_oral"), data, n=args.fits, run_dir=root / "sbc", chains=4, draws=args.draws,
                tune=args.tune, n_ranks=50, scheduler="local", n_workers=args.workers, progress=False)
            print(json.dumps({"peak": float("nan"), "lo": float("nan"), "hi": float("nan")}))
            return
        cores = None if args.mode == "serial" else args.cluster_cores
        run = run_tasks(fit_task, {f"fit{i:02d}": {} for i in range(args.fits)}, root / "run", seed=1,
                        scheduler=args.mode, n_workers=args.workers, progress=False,
                        shared={"data": data, "draws": args.draws, "tune": args.tune, "cores": cores})
        assert len(run.results) == args.fits, run.failed
        per_fit = sorted(t["elapsed_s"] for t in run.tasks.values())
        peak = max(r["peak_mb"] for r in run.results.values())
        print(json.dumps({"peak": peak, "lo": per_fit[0], "hi": per_fit[-1]}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv=None) -> None:
    import json
    import subprocess
    import sys

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fits", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--tune", type=int, default=500)
    ap.add_argument("--cluster-cores", type=int, default=1,
                    help="chains sampled in parallel inside each fit on the cluster (default 1)")
    ap.add_argument("--mode", choices=("serial", "local", "sbc"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mode:
        return run_mode(args)
    rows = []
    for mode, label in (("serial", "serial (one process)"), ("local", f"LocalCluster ({args.workers} workers)"),
                        ("sbc", f"sbc refit, LocalCluster ({args.workers} workers)")):
        cmd = [sys.executable, __file__, "--mode", mode, "--fits", str(args.fits), "--workers", str(args.workers),
               "--draws", str(args.draws), "--tune", str(args.tune), "--cluster-cores", str(args.cluster_cores)]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
        fig = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((label, wall, fig["peak"], fig["lo"], fig["hi"]))
    serial = rows[0][1]
    print(f"{args.fits} fits of pk_1cmt_oral to theophylline (4 chains x {args.draws} after {args.tune}); "
          f"wall time of a fresh process each, imports and cluster start included")
    print(f"{'':42s} {'wall s':>8s} {'x serial':>9s} {'fits/min':>9s} {'peak MB':>8s} {'fit s min-max':>14s}")
    for label, wall, peak, lo, hi in rows:
        print(f"{label:42s} {wall:8.1f} {wall / serial:9.2f} {60 * args.fits / wall:9.1f} {peak:8.0f} "
              f"{lo:6.1f}-{hi:<6.1f}")


if __name__ == "__main__":
    main()
