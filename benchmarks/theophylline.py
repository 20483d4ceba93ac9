"""Cost of the bayesnlme model builder against a hand-written PyMC model.

Fits ``pk_1cmt_oral`` to the bundled theophylline data (12 subjects, 132
observations) three ways, all with nutpie and the same seed, chains, draws,
tuning, initial point and jittered variables (``eta_z``, ``omega_*``, ``sigma_*``):

``fit_model``
    :func:`bayesnlme.inference.fit.fit_model` end to end (build, compile, sample,
    pointwise log-likelihood, data groups, convergence checks, metadata).
``library``
    :func:`bayesnlme.build.build_model`, then ``nutpie.compile_pymc_model``,
    ``nutpie.sample`` and ``pm.compute_log_likelihood``, as ``fit_model`` calls them.
``handwritten``
    :func:`handwritten_model` (the model as a user would write it in PyMC, with
    the textbook Bateman concentration) through the same calls as ``library``.

``library`` vs ``handwritten`` is the like-for-like cost of the builder;
``fit_model`` adds the extras of the full pipeline.  Measured per variant:

* wall time (s), ``time.perf_counter`` from reading the data to the
  log-likelihood being computed, *including* pytensor/numba compilation (the
  imports come before the clock starts); compile and sample phases are shown
  separately where they are visible (not inside ``fit_model``);
* min bulk ESS over the eight population parameters (``arviz.ess``, after the
  clock stops) and ESS/s = min bulk ESS / wall time;
* peak memory (MB): ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end.
  nutpie samples in Rust threads of the same process, so they are included;
  each variant runs in its own subprocess, so the peak is per variant.

Compile caches: ``--cache cold`` (default) gives each variant a fresh private
pytensor ``base_compiledir`` (which also holds the numba cache), so each pays
its full compilation and none profits from another's; ``--cache warm`` times a
second run in that cache (a user refitting the same model).

The overhead is library / handwritten (and fit_model / handwritten) for wall
time and ESS/s, against the target "builder costs no more than 10% over the
hand-written model" (wall ratio <= 1.10 and ESS/s ratio >= 1/1.10).  The models
are mathematically identical (``tests/test_benchmark_script.py``), so with one
seed their ESS differences are sampling noise.

Run ``.venv/bin/python benchmarks/theophylline.py`` (``--quick``: 2 chains x
200 draws after 200 tuning, a smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

POPULATION = ["CL", "V", "KA", "omega_CL", "omega_V", "omega_KA", "sigma_add", "sigma_prop"]
VARIANTS = ["fit_model", "library", "handwritten"]
HALFNORMAL_MEDIAN = 0.6744897501960817  # median of HalfNormal(1)


def handwritten_model(data):
    """The ``pk_1cmt_oral`` model written directly in PyMC.

    Parameters
    ----------
    data : path or pandas.DataFrame
        NONMEM-format data with one oral dose (EVID=1) per subject.

    Returns
    -------
    model : pymc.Model
    initial_point : dict
        Start values by variable name: typical values at their prior medians,
        omegas 0.3, sigmas at their prior medians, eta_z = 0.
    """
    import pandas as pd
    import pymc as pm
    import pytensor.tensor as pt

    df = data if isinstance(data, pd.DataFrame) else pd.read_csv(data)
    ids = df["ID"].unique()                                   # order of first appearance
    dose = df[df["EVID"] == 1].set_index("ID")
    obs = df[(df["EVID"] == 0) & (df["MDV"] == 0)]
    subj = pd.Index(ids).get_indexer(obs["ID"])              # subject index of each observation
    amt = dose.loc[obs["ID"], "AMT"].to_numpy(float)
    t = obs["TIME"].to_numpy(float) - dose.loc[obs["ID"], "TIME"].to_numpy(float)
    coords = {"ID": [str(i) for i in ids], "eta_parameter": ["CL", "V", "KA"], "obs": np.arange(len(obs))}
    with pm.Model(coords=coords) as model:
        # declared in build_model's order, so nutpie lays out the parameter vector identically
        eta_z = pm.Normal("eta_z", 0.0, 1.0, dims=("ID", "eta_parameter"))
        omega_CL = pm.HalfNormal("omega_CL", 0.5)
        omega_V = pm.HalfNormal("omega_V", 0.5)
        omega_KA = pm.HalfNormal("omega_KA", 0.5)
        CL = pm.LogNormal("CL", np.log(5.0), 2.0)
        V = pm.LogNormal("V", np.log(50.0), 2.0)
        KA = pm.LogNormal("KA", 0.0, 1.0)
        sigma_add = pm.HalfNormal("sigma_add", 1.0)
        sigma_prop = pm.HalfNormal("sigma_prop", 0.3)

        CL_i = CL * pt.exp(omega_CL * eta_z[:, 0])
        V_i = V * pt.exp(omega_V * eta_z[:, 1])
        KA_i = KA * pt.exp(omega_KA * eta_z[:, 2])
        k, ka, v = (CL_i / V_i)[subj], KA_i[subj], V_i[subj]
        conc = amt * ka / (v * (ka - k)) * (pt.exp(-k * t) - pt.exp(-ka * t))
        sd = pt.sqrt(sigma_add**2 + (sigma_prop * conc) ** 2)
        pm.Normal("DV", mu=conc, sigma=sd, observed=obs["DV"].to_numpy(float), dims="obs")
    init = {"eta_z": np.zeros((len(ids), 3)), "omega_CL": 0.3, "omega_V": 0.3, "omega_KA": 0.3,
            "CL": 5.0, "V": 50.0, "KA": 1.0,
            "sigma_add": 1.0 * HALFNORMAL_MEDIAN, "sigma_prop": 0.3 * HALFNORMAL_MEDIAN}
    return model, init


def run_variant(variant: str, draws: int, tune: int, chains: int, seed: int = 1) -> dict:
    """Fit one variant in this process and return its figures."""
    import resource

    import arviz as az
    import nutpie
    import pymc as pm

    from bayesnlme import load_spec
    from bayesnlme.build import build_model
    from bayesnlme.datasets import dataset_path
    from bayesnlme.inference.fit import fit_model

    spec, path = load_spec("pk_1cmt_oral"), dataset_path("theophylline")
    cores = min(chains, os.cpu_count() or 1)                  # as fit_model chooses
    out = {"variant": variant, "compile_s": None, "sample_s": None}
    t0 = time.perf_counter()
    if variant == "fit_model":
        idata = fit_model(spec, path, chains=chains, draws=draws, tune=tune, seed=seed, progress=False).idata
    else:
        if variant == "library":
            built = build_model(spec, path)
            model, init = built.model, built.initial_point
        else:
            model, init = handwritten_model(path)
        jitter = {v for v in model.free_RVs if v.name == "eta_z" or v.name.startswith(("omega_", "sigma_"))}
        compiled = nutpie.compile_pymc_model(model, initial_points=init, jitter_rvs=jitter)
        t1 = time.perf_counter()
        idata = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, seed=seed,
                              progress_bar=False, save_warmup=False, cores=cores)
        t2 = time.perf_counter()
        with model:
            pm.compute_log_likelihood(idata, extend_inferencedata=True, progressbar=False)
        out.update(compile_s=t1 - t0, sample_s=t2 - t1)
    out["wall_s"] = time.perf_counter() - t0
    ess = az.ess(idata, var_names=POPULATION, method="bulk")
    out["min_ess_bulk"] = min(float(ess[n]) for n in POPULATION)
    out["ess_per_s"] = out["min_ess_bulk"] / out["wall_s"]
    out["grad_evals"] = int(idata.sample_stats["n_steps"].sum())
    out["medians"] = {p: float(idata.posterior[p].median()) for p in ("CL", "V", "KA")}
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return out


def _subprocess(variant: str, args, compiledir: str) -> dict:
    env = dict(os.environ)
    env["PYTENSOR_FLAGS"] = ",".join(filter(None, [env.get("PYTENSOR_FLAGS"), f"base_compiledir={compiledir}"]))
    cmd = [sys.executable, os.path.abspath(__file__), "--variant", variant, "--draws", str(args.draws),
           "--tune", str(args.tune), "--chains", str(args.chains)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"variant {variant} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt(x, width):
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.1f}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--tune", type=int, default=1000)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="smoke test: 2 chains x 200 draws, 200 tuning")
    p.add_argument("--cache", choices=["cold", "warm"], default="cold",
                   help="cold: fresh compile cache per variant; warm: time a second run in a filled cache")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one variant, JSON out
    args = p.parse_args(argv)
    if args.quick:
        args.draws, args.tune, args.chains = 200, 200, 2
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.draws, args.tune, args.chains)))
        return

    print(f"pk_1cmt_oral on theophylline, nutpie, {args.chains} chains x {args.draws} draws after "
          f"{args.tune} tuning, seed 1, {min(args.chains, os.cpu_count() or 1)} cores, {args.cache} "
          f"compile cache; each variant in its own subprocess")
    res = {}
    for v in VARIANTS:
        with tempfile.TemporaryDirectory(prefix=f"bench_{v}_") as cdir:
            if args.cache == "warm":
                _subprocess(v, args, cdir)
            res[v] = _subprocess(v, args, cdir)
    print(f"\n{'variant':<12}{'wall s':>8}{'compile s':>11}{'sample s':>10}{'min ESS':>9}{'ESS/s':>8}"
          f"{'grad evals':>12}{'peak MB':>9}{'CL':>8}{'V':>8}{'KA':>8}")
    for v, r in res.items():
        m = r["medians"]
        print(f"{v:<12}{r['wall_s']:>8.1f}{_fmt(r['compile_s'], 11)}{_fmt(r['sample_s'], 10)}"
              f"{r['min_ess_bulk']:>9.0f}{r['ess_per_s']:>8.1f}{r['grad_evals']:>12d}{r['peak_mb']:>9.0f}"
              f"{m['CL']:>8.3f}{m['V']:>8.3f}{m['KA']:>8.3f}")
    print("(wall s includes compilation; compile s = read data + build model + nutpie compile; min ESS =\n"
          " min bulk ESS over", ", ".join(POPULATION) + "; grad evals = post-warm-up\n"
          " leapfrog steps; peak MB = ru_maxrss of the variant's process; CL, V, KA = posterior medians)")
    hw = res["handwritten"]
    print("\nbuilder overhead vs hand-written (target: builder costs no more than 10% over hand-written)")
    for v in ("library", "fit_model"):
        wall = res[v]["wall_s"] / hw["wall_s"]
        eps = res[v]["ess_per_s"] / hw["ess_per_s"]
        ok = "meets" if wall <= 1.10 and eps >= 1 / 1.10 else "MISSES"
        print(f"  {v:<10} wall time ratio {wall:.3f}, ESS/s ratio {eps:.3f} -> {ok} the 10% target")
    lib = res["library"]
    print(f"  library phases: compile ratio {lib['compile_s'] / hw['compile_s']:.3f}, "
          f"sample ratio {lib['sample_s'] / hw['sample_s']:.3f}")


if __name__ == "__main__":
    main()
