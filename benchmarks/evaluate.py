"""What evaluating a fit costs: the phases of ``bayesnlme diagnose``, timed one by one.

Fits ``--model`` to ``--data`` once (NUTS, 4 x 500 after 500, seed 1, into a temporary folder), then runs
``--repeats`` fresh processes that each load the fit and time, in the order ``bayesnlme diagnose`` runs them:

``load``        :meth:`FitResult.load` (the fit file, the spec, the data)
``convergence`` :func:`~bayesnlme.evaluate.diagnostics.convergence_report`
``gof``         :func:`~bayesnlme.evaluate.diagnostics.gof_table` (IPRED, PRED, CWRES, NPDE: the first
                evaluation functions of the process are compiled here)
``curves``      :func:`~bayesnlme.evaluate.predict.predict_at_times` (120 times, the individual fits' lines)
``plots``       the seven diagnostic figures, drawn and written as PNG
``likelihood``  :func:`~bayesnlme.evaluate.likelihood.marginal_loglik` (-2LL by importance sampling: the
                population mode search, its objective compiled or read from the graph cache)

and prints, per process, each phase's wall time (s), the total, the process's imports (s) and its peak
memory (MB, ``ru_maxrss``).  ``--cache cold`` gives the fit and every timed process one fresh, empty
compilation cache (the fit's own compile is then not in the figures; each timed process compiles what
evaluating needs on an empty cache: run it with ``--repeats 1``); ``--cache warm`` (the default) fits in
a fresh cache and times ``--repeats`` processes in it after one untimed warm-up process.

Run ``.venv/bin/python benchmarks/evaluate.py`` (theophylline, ``pk_1cmt_oral``, 3 warm processes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

PHASES = ("load", "convergence", "gof", "curves", "plots", "likelihood")


def _child(fit_dir: str) -> None:
    t0 = time.perf_counter()
    import resource

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from bayesnlme.evaluate import diagnostics, plots
    from bayesnlme.evaluate.likelihood import marginal_loglik
    from bayesnlme.evaluate.predict import predict_at_times
    from bayesnlme.inference.fit import FitResult
    imports = time.perf_counter() - t0
    out, tick = {}, time.perf_counter()

    def lap(name):
        nonlocal tick
        now = time.perf_counter()
        out[name], tick = now - tick, now

    result = FitResult.load(os.path.join(fit_dir, "fit.nc"))
    lap("load")
    diagnostics.convergence_report(result)
    lap("convergence")
    gof = diagnostics.gof_table(result, n_npde=200, seed=1)
    etas = diagnostics.eta_table(result)
    lap("gof")
    curves = predict_at_times(result, np.linspace(0, result.data.obs_time.max(), 120))
    lap("curves")
    figures = [plots.plot_observed_vs_predicted(gof), plots.plot_residuals(gof), plots.plot_qq(gof),
               plots.plot_individual_fits(gof, curves=curves), plots.plot_eta_covariates(etas),
               plots.plot_eta_correlation(etas), plots.plot_trace(result)]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (fig, _) in enumerate(figures):
            fig.savefig(os.path.join(tmp, f"{i}.png"), dpi=100, format="png")
            plt.close(fig)
    lap("plots")
    lik = marginal_loglik(result, seed=1)
    lap("likelihood")
    out.update(imports=imports, peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               minus2ll=lik.minus2ll)
    print("RESULT " + json.dumps(out))


def _run_child(fit_dir: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", fit_dir], env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"timed process failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _cache_env(folder: str) -> dict:
    env = dict(os.environ)
    env.update(HOME=os.path.join(folder, "home"), BAYESNLME_CACHE_DIR=os.path.join(folder, "bayesnlme"),
               NUMBA_CACHE_DIR=os.path.join(folder, "numba"),
               PYTENSOR_FLAGS=f"base_compiledir={os.path.join(folder, 'pytensor')}")
    os.makedirs(env["HOME"], exist_ok=True)
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pk_1cmt_oral")
    ap.add_argument("--data", default="theophylline", help="a bundled data set's name or a file")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", choices=("warm", "cold"), default="warm")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    from bayesnlme.datasets import DATASETS, dataset_path

    data = str(dataset_path(args.data)) if args.data in DATASETS else args.data
    with tempfile.TemporaryDirectory() as work:
        fit_dir = os.path.join(work, "fit")
        env = _cache_env(os.path.join(work, "cache0"))
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "bayesnlme.cli", "fit", "--model", args.model, "--data", data,
                        "--out", fit_dir, "--chains", "4", "--draws", "500", "--tune", "500", "--seed", "1",
                        "--no-progress"], env=env, check=True, capture_output=True)
        print(f"{args.model} on {args.data}: fitted in {time.perf_counter() - t:.1f} s (not timed below); "
              f"{args.cache} cache, {args.repeats} process(es)")
        if args.cache == "warm":
            _run_child(fit_dir, env)   # untimed: fills the cache with what evaluating compiles
        print(f"{'process':>8} " + " ".join(f"{p:>11}" for p in PHASES)
              + f" {'total':>7} {'imports':>7} {'peak_mb':>7} {'-2LL':>9}")
        for i in range(args.repeats):
            child_env = env if args.cache == "warm" else _cache_env(os.path.join(work, f"cache{i + 1}"))
            r = _run_child(fit_dir, child_env)
            total = sum(r[p] for p in PHASES)
            print(f"{i + 1:>8} " + " ".join(f"{r[p]:>11.2f}" for p in PHASES)
                  + f" {total:>7.2f} {r['imports']:>7.2f} {r['peak_mb']:>7.0f} {r['minus2ll']:>9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
