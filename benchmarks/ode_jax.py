"""ODE models under the JAX engines: the integrator in JAX (``native``) against the numba one on the host.

For ``pk_1cmt_mm_oral`` (Michaelis-Menten elimination, an ODE) on theophylline copied ``--replicate`` times
(12 subjects each), per solver (``BAYESNLME_JAX_ODE``), each in its own process: the compile time and the
cost of one log-density + gradient evaluation for ``--chains`` vectorised chains (what numpyro's
``chain_method="vectorized"`` evaluates) on ``--device``, the log-density (the two must agree), and peak
memory.  ``--fit`` adds a numpyro fit through ``fit_model`` (wall time, min bulk ESS of the population
parameters, ESS/s, median CL and V).

Run ``.venv/bin/python benchmarks/ode_jax.py`` (CPU), or on a machine with an NVIDIA GPU and JAX's CUDA
build ``.venv/bin/python benchmarks/ode_jax.py --device gpu --replicate 1 100 --fit``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SOLVERS = ("native", "host")


def theophylline(replicate: int):
    import pandas as pd

    from bayesnlme import datasets

    frame = datasets.load_theophylline()
    copies = []
    for r in range(replicate):
        f = frame.copy()
        f["ID"] = f["ID"] + 1000 * r
        copies.append(f)
    return pd.concat(copies, ignore_index=True)


def one(solver: str, replicate: int, device: str, chains: int, evals: int, fit: bool, draws: int) -> dict:
    """Figures of one solver, in this process."""
    os.environ["BAYESNLME_JAX_ODE"] = solver
    import jax
    import numpy as np
    from pymc.initial_point import make_initial_point_fn
    from pymc.sampling.jax import get_jaxified_logp

    from bayesnlme import load_spec
    from bayesnlme.build import build_model
    from bayesnlme.inference.engines import for_jax, jax_device
    from bayesnlme.structural import ode_jax

    target = jax_device(device)
    frame = theophylline(replicate)
    spec = load_spec("pk_1cmt_mm_oral")
    built = build_model(spec, frame)
    ode_jax.register()
    point = make_initial_point_fn(model=built.model, overrides=built.initial_point)(0)
    values = [np.stack([point[v.name]] * chains) for v in built.model.value_vars]
    out = {"solver": solver, "device": device, "subjects": 12 * replicate, "chains": chains}
    with jax.default_device(target), ode_jax.on_device(device):
        fn = jax.jit(jax.vmap(jax.value_and_grad(get_jaxified_logp(for_jax(built.model)))))
        t0 = time.perf_counter()
        res = fn(values)
        jax.block_until_ready(res)
        out["first_call_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(evals):
            res = fn(values)
            jax.block_until_ready(res)
        out["eval_ms"] = (time.perf_counter() - t0) / evals * 1e3
        out["logp"] = float(np.asarray(res[0])[0])
    if fit:
        import arviz as az

        from bayesnlme.inference import fit_model

        t0 = time.perf_counter()
        result = fit_model(spec, frame, sampler="numpyro", device=device, chains=chains, draws=draws, tune=draws,
                           seed=1, progress=False)
        out["fit_s"] = time.perf_counter() - t0
        pop = [v for v in ("VM", "KM", "V", "KA") if v in result.idata.posterior]
        ess = az.ess(result.idata, var_names=pop)
        out["min_ess"] = float(min(ess[v].min() for v in pop))
        out["ess_per_s"] = out["min_ess"] / out["fit_s"]
        out["medians"] = {v: float(result.idata.posterior[v].median()) for v in pop}
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicate", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--evals", type=int, default=20)
    ap.add_argument("--fit", action="store_true", help="also fit with numpyro (draws = tuning = --draws)")
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        solver, rep = args.one.split(":")
        print(json.dumps(one(solver, int(rep), args.device, args.chains, args.evals, args.fit, args.draws)))
        return []
    rows = []
    print(f"{'subjects':>8} {'solver':>6} {'device':>6} {'first s':>8} {'eval ms':>8} {'logp':>14} "
          f"{'fit s':>7} {'minESS':>7} {'ESS/s':>6} {'MB':>6}")
    for rep in args.replicate:
        for solver in SOLVERS:
            cmd = [sys.executable, __file__, "--one", f"{solver}:{rep}", "--device", args.device, "--chains",
                   str(args.chains), "--evals", str(args.evals), "--draws", str(args.draws)] + \
                  (["--fit"] if args.fit else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{12 * rep:>8} {solver:>6} failed:\n{proc.stderr[-2000:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(r)
            fit = (f"{r['fit_s']:>7.1f} {r['min_ess']:>7.0f} {r['ess_per_s']:>6.1f}" if "fit_s" in r
                   else f"{'-':>7} {'-':>7} {'-':>6}")
            print(f"{r['subjects']:>8} {solver:>6} {r['device']:>6} {r['first_call_s']:>8.1f} {r['eval_ms']:>8.2f} "
                  f"{r['logp']:>14.6f} {fit} {r['peak_mb']:>6.0f}", flush=True)
            if "medians" in r:
                print(" " * 16 + "medians " + ", ".join(f"{k} {v:.3g}" for k, v in r["medians"].items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
