"""Cost of the ODE solver: the 1-compartment oral model as an ODE against its closed form.

Fits ``pk_1cmt_oral`` (priors, IIV, residual as in the library) to the bundled
theophylline data (12 subjects, 132 observations) twice with nutpie, same seed,
chains, draws and tuning:

``closed``
    the library closed form (``structural = "1cmt_oral"``);
``ode``
    the same spec whose structural model is
    ``StructuralModel.ode(dA1 = -KA A1, dA2 = KA A1 - CL/V A2)`` (DOPRI5 with
    forward sensitivities, ``bayesnlme.structural.ode``) at ``--rtol``.

Per variant, in its own subprocess: compile time (build + ``nutpie.compile_pymc_model``,
including numba compilation of the solver), sampling time, the cost of one
log-density + gradient evaluation outside the sampler, min bulk ESS over the
population parameters, ESS/s of sampling, and peak memory (``ru_maxrss``).

Also per variant: leapfrog steps over warm-up and sampling, and sampling CPU time per
leapfrog step (the cost of one log-density + gradient inside the sampler).
``--replicate K`` fits theophylline copied K times (12 K subjects) to show how the ratio
changes with data size: the ODE solver's cost per call is mostly fixed overhead shared by all
subjects, the closed form's grows with the number of observations.

Run ``.venv/bin/python benchmarks/ode.py`` (``--quick``: 2 chains x 200 draws).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

POPULATION = ["CL", "V", "KA", "omega_CL", "omega_V", "omega_KA", "sigma_add", "sigma_prop"]


def ode_spec(rtol: float):
    """``pk_1cmt_oral`` with its structural model written as an ODE."""
    from dataclasses import replace

    from bayesnlme import load_spec
    from bayesnlme.structural import StructuralModel

    def rhs(y, t, p):
        return [-p["KA"] * y[:, 0], p["KA"] * y[:, 0] - p["CL"] / p["V"] * y[:, 1]]

    model = StructuralModel.ode(rhs, ("CL", "V", "KA"), 2, outputs={"CP": lambda y, p: y[:, 1] / p["V"]},
                                name="1cmt_oral_ode", optional={"F": 1.0, "ALAG": 0.0}, depot_cmt=1,
                                central_cmt=2, rtol=rtol, atol=rtol * 1e-2)
    return replace(load_spec("pk_1cmt_oral"), structural=model)


def theophylline(replicate: int = 1):
    """The bundled theophylline data, copied ``replicate`` times with new IDs."""
    import pandas as pd

    from bayesnlme import datasets

    base = datasets.load_theophylline()
    parts = [base.assign(ID=base["ID"] + k * 1000) for k in range(replicate)]
    return pd.concat(parts, ignore_index=True)


def run_variant(variant: str, chains: int, draws: int, tune: int, rtol: float, replicate: int = 1) -> dict:
    import resource

    import arviz as az
    import numpy as np
    import nutpie
    import pytensor

    from bayesnlme import load_spec
    from bayesnlme.build import build_model

    spec = load_spec("pk_1cmt_oral") if variant == "closed" else ode_spec(rtol)
    t0 = time.perf_counter()
    built = build_model(spec, theophylline(replicate))
    compiled = nutpie.compile_pymc_model(built.model, initial_points=built.initial_point)
    t1 = time.perf_counter()
    c1 = time.process_time()
    trace = nutpie.sample(compiled, chains=chains, draws=draws, tune=tune, seed=1, progress_bar=False,
                          save_warmup=True)
    t2 = time.perf_counter()
    cpu = time.process_time() - c1
    leapfrogs = int(trace.warmup_sample_stats["n_steps"].sum() + trace.sample_stats["n_steps"].sum())
    model = built.model
    logp = model.logp()
    fn = pytensor.function(model.value_vars, [logp, *pytensor.grad(logp, model.value_vars)], mode="NUMBA")
    point = model.initial_point()
    args = [point[v.name] for v in model.value_vars]
    fn(*args)
    n = 200
    t3 = time.perf_counter()
    for _ in range(n):
        fn(*args)
    per_eval = (time.perf_counter() - t3) / n
    ess = az.ess(trace, var_names=POPULATION)
    min_ess = float(min(float(ess[v].min()) for v in POPULATION))
    return {"variant": variant, "compile_s": t1 - t0, "sample_s": t2 - t1, "eval_us": per_eval * 1e6,
            "min_ess_bulk": min_ess, "ess_per_s": min_ess / (t2 - t1),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "leapfrog_mean": float(trace.sample_stats["n_steps"].mean()), "leapfrogs": leapfrogs,
            "us_per_leapfrog": cpu / leapfrogs * 1e6,
            "CL": float(np.median(trace.posterior["CL"])), "V": float(np.median(trace.posterior["V"])),
            "KA": float(np.median(trace.posterior["KA"]))}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--replicate", type=int, default=1, help="copies of theophylline (12 subjects each)")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.chains, a.draws, a.tune = 2, 200, 200
    if a.variant:
        print(json.dumps(run_variant(a.variant, a.chains, a.draws, a.tune, a.rtol, a.replicate)))
        return []
    rows = []
    for variant in ("closed", "ode"):
        cmd = [sys.executable, __file__, "--variant", variant, "--chains", str(a.chains), "--draws",
               str(a.draws), "--tune", str(a.tune), "--rtol", str(a.rtol), "--replicate", str(a.replicate)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"theophylline x{a.replicate} ({12 * a.replicate} subjects), pk_1cmt_oral, nutpie {a.chains} chains "
          f"x {a.draws} draws (+{a.tune} tune), ODE rtol {a.rtol:g}")
    print(f"{'variant':8} {'compile_s':>9} {'sample_s':>8} {'eval_us':>8} {'min_ess':>8} {'ess/s':>7} "
          f"{'peak_mb':>7} {'leapfrog':>8} {'us/leapfrog':>11} {'CL':>6} {'V':>6} {'KA':>6}")
    for r in rows:
        print(f"{r['variant']:8} {r['compile_s']:9.1f} {r['sample_s']:8.1f} {r['eval_us']:8.0f} "
              f"{r['min_ess_bulk']:8.0f} {r['ess_per_s']:7.1f} {r['peak_mb']:7.0f} {r['leapfrog_mean']:8.1f} "
              f"{r['us_per_leapfrog']:11.0f} "
              f"{r['CL']:6.3f} {r['V']:6.2f} {r['KA']:6.3f}")
    c, o = rows
    print(f"ODE / closed form: sampling time x{o['sample_s'] / c['sample_s']:.1f}, "
          f"per leapfrog in the sampler x{o['us_per_leapfrog'] / c['us_per_leapfrog']:.1f}, "
          f"per evaluation outside x{o['eval_us'] / c['eval_us']:.1f}, "
          f"compile + sample x{(o['compile_s'] + o['sample_s']) / (c['compile_s'] + c['sample_s']):.1f}, "
          f"ESS/s x{o['ess_per_s'] / c['ess_per_s']:.2f}")
    return rows


if __name__ == "__main__":
    main()
