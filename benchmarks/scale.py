"""Scaling benchmark: simulated 1-compartment oral populations on each engine and device.

For each population size N (subjects; 10 samples each after one 100 mg oral dose; truth CL 4 L/h,
V 40 L, KA 1.2 /h, OMEGA 0.3 on each, combined error 0.05 mg/L + 10%) and each engine, the
``pk_1cmt_oral`` library model is fitted twice, each time in a fresh subprocess:

``bayesnlme``
    :func:`bayesnlme.build.build_model` + :func:`bayesnlme.inference.engines.sample` (what
    ``bayesnlme fit --sampler ENGINE`` runs, without the pointwise log-likelihood and the save): the
    ETAs in the population parameterisation NUTS samples by default (:mod:`bayesnlme.build.random_effects`).
``bayesnlme-subject`` (with ``--variants``)
    the same in the subject parameterisation (``--eta-parameterisation subject``).
``handwritten``
    ``benchmarks/theophylline.handwritten_model`` (the same model written directly in PyMC, same
    priors, start and jittered variables) through the same engine.
``numpyro-native`` (numpyro engine only)
    the same model written directly in numpyro, sampled by ``numpyro.infer.MCMC`` with vectorised
    chains: the reference the issue asks the JAX engine to match.

Each variant runs ``cold`` (an empty private compile cache: PyTensor's compiledir, numba's and JAX's
persistent caches) and then ``warm`` (a second process on the cache the first filled).  Printed per run:
wall time from reading the data to the last draw (s), build (s), compile (nutpie: the numba
compilation, measured; JAX engines: cold minus warm sampler time, where the persistent cache removes
XLA compilation), sampling (s, without the compilation), min bulk ESS over the eight population parameters,
ESS/s (min bulk ESS / wall), max R-hat, mean tree depth, peak memory (host RSS in MB; on a GPU also the
device's peak), and the medians of CL, V and KA.

Run::

    .venv/bin/python benchmarks/scale.py                        # CPU: N = 100 and 1200; nutpie, numpyro, blackjax
    make benchmark-gpu     # = --device gpu --sizes 10000 100000 --engines numpyro --phases cold (JAX with CUDA)
    .venv/bin/python benchmarks/scale.py --quick                # smoke test: N = 50, 2 chains x 100 draws

``--json FILE`` writes every run's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
POPULATION = ["CL", "V", "KA", "omega_CL", "omega_V", "omega_KA", "sigma_add", "sigma_prop"]
TIMES = (0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 24.0)
TRUTH = {"CL": 4.0, "V": 40.0, "KA": 1.2, "omega": 0.3, "sigma_add": 0.05, "sigma_prop": 0.1}
ENGINES = ("nutpie", "numpyro", "blackjax")


def simulate(n: int, seed: int = 2026) -> pd.DataFrame:
    """A NONMEM-format study of ``n`` subjects drawn from :data:`TRUTH` (vectorised numpy)."""
    rng = np.random.default_rng(seed)
    eta = rng.normal(0.0, TRUTH["omega"], (n, 3))
    cl, v, ka = (TRUTH[p] * np.exp(eta[:, i]) for i, p in enumerate(("CL", "V", "KA")))
    t = np.asarray(TIMES)[None, :]
    k = (cl / v)[:, None]
    conc = 100.0 * ka[:, None] / (v[:, None] * (ka[:, None] - k)) * (np.exp(-k * t) - np.exp(-ka[:, None] * t))
    dv = conc * (1 + TRUTH["sigma_prop"] * rng.standard_normal(conc.shape)) \
        + TRUTH["sigma_add"] * rng.standard_normal(conc.shape)
    ids = np.repeat(np.arange(1, n + 1), len(TIMES) + 1)
    time_ = np.tile(np.r_[0.0, TIMES], n)
    evid = np.tile(np.r_[1, np.zeros(len(TIMES), int)], n)
    dvs = np.column_stack([np.zeros(n), dv]).ravel()
    return pd.DataFrame({"ID": ids, "TIME": time_, "DV": np.where(evid == 1, 0.0, dvs),
                         "AMT": np.where(evid == 1, 100.0, 0.0), "EVID": evid, "MDV": evid,
                         "CMT": np.where(evid == 1, 1, 2)})


def numpyro_model(df: pd.DataFrame):
    """``pk_1cmt_oral`` written directly in numpyro (non-centred ETAs, the library's priors).

    Returns the model function and its start (typical values at prior medians, ETA = 0).  Float64, as
    PyMC's JAX backend uses."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    jax.config.update("jax_enable_x64", True)
    ids = df["ID"].unique()
    dose = df[df["EVID"] == 1].set_index("ID")
    obs = df[df["EVID"] == 0]
    subj = jnp.asarray(pd.Index(ids).get_indexer(obs["ID"]))
    amt = jnp.asarray(dose.loc[obs["ID"], "AMT"].to_numpy(float))
    t = jnp.asarray(obs["TIME"].to_numpy(float) - dose.loc[obs["ID"], "TIME"].to_numpy(float))
    y = jnp.asarray(obs["DV"].to_numpy(float))
    n = len(ids)

    def model():
        eta_z = numpyro.sample("eta_z", dist.Normal(0.0, 1.0).expand([n, 3]).to_event(2))
        om = jnp.stack([numpyro.sample(f"omega_{p}", dist.HalfNormal(0.5)) for p in ("CL", "V", "KA")])
        cl = numpyro.sample("CL", dist.LogNormal(jnp.log(5.0), 2.0))
        v = numpyro.sample("V", dist.LogNormal(jnp.log(50.0), 2.0))
        ka = numpyro.sample("KA", dist.LogNormal(0.0, 1.0))
        s_add = numpyro.sample("sigma_add", dist.HalfNormal(1.0))
        s_prop = numpyro.sample("sigma_prop", dist.HalfNormal(0.3))
        ind = jnp.exp(om * eta_z)
        cli, vi, kai = cl * ind[:, 0], v * ind[:, 1], ka * ind[:, 2]
        k, kas, vs = (cli / vi)[subj], kai[subj], vi[subj]
        conc = amt * kas / (vs * (kas - k)) * (jnp.exp(-k * t) - jnp.exp(-kas * t))
        sd = jnp.sqrt(s_add**2 + (s_prop * conc) ** 2)
        numpyro.sample("DV", dist.Normal(conc, sd), obs=y)

    start = {"CL": 5.0, "V": 50.0, "KA": 1.0, "omega_CL": 0.3, "omega_V": 0.3, "omega_KA": 0.3,
             "sigma_add": 0.674, "sigma_prop": 0.202, "eta_z": jnp.zeros((n, 3))}
    return model, start


def numpyro_native(df: pd.DataFrame, chains: int, draws: int, tune: int, seed: int):
    """Sample :func:`numpyro_model` with ``numpyro.infer.MCMC`` (vectorised chains); returns InferenceData."""
    import arviz as az
    import jax
    from numpyro.infer import MCMC, NUTS, init_to_value

    model, start = numpyro_model(df)
    mcmc = MCMC(NUTS(model, init_strategy=init_to_value(values=start), target_accept_prob=0.8),
                num_warmup=tune, num_samples=draws, num_chains=chains, chain_method="vectorized",
                progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed), extra_fields=("diverging", "num_steps"))
    samples = mcmc.get_samples(group_by_chain=True)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    return az.from_dict(posterior={k: np.asarray(v) for k, v in samples.items()},
                        sample_stats={"diverging": np.asarray(extra["diverging"]),
                                      "n_steps": np.asarray(extra["num_steps"])})


def run_one(variant: str, engine: str, device: str, data: str, chains: int, draws: int, tune: int,
            seed: int = 1) -> dict:
    """Fit one variant in this process and return its figures (printed as one JSON line)."""
    import resource
    import warnings

    import arviz as az

    warnings.simplefilter("ignore")
    sys.path.insert(0, str(HERE))
    from theophylline import handwritten_model

    from bayesnlme import load_spec
    from bayesnlme.build import build_model
    from bayesnlme.data import read_nonmem
    from bayesnlme.inference import engines

    out = {"variant": variant, "engine": engine, "device": device, "compile_s": None}
    if engine in engines.JAX_SAMPLERS or variant == "numpyro-native":
        engines.jax_device(device, "numpyro" if variant == "numpyro-native" else engine)   # cache on
    t0 = time.perf_counter()
    df = pd.read_csv(data)
    if variant == "numpyro-native":
        t1 = time.perf_counter()
        idata = numpyro_native(df, chains, draws, tune, seed)
    else:
        if variant.startswith("bayesnlme"):
            parameterisation = "subject" if variant == "bayesnlme-subject" else "population"
            built = build_model(load_spec("pk_1cmt_oral"), read_nonmem(df), eta_parameterisation=parameterisation)
            model, start = built.model, built.initial_point
        else:
            model, start = handwritten_model(df)
        t1 = time.perf_counter()
        timings = {}
        idata = engines.sample(model, start, engine, device=device, chains=chains, draws=draws, tune=tune,
                               seed=seed, progress=False, timings=timings)
        out["compile_s"] = timings.get("compile_s")
    t2 = time.perf_counter()
    out.update(build_s=t1 - t0, sample_s=t2 - t1, wall_s=t2 - t0)
    ess = az.ess(idata, var_names=POPULATION, method="bulk")
    out["min_ess_bulk"] = min(float(ess[p]) for p in POPULATION)
    out["ess_per_s"] = out["min_ess_bulk"] / out["wall_s"]
    out["max_rhat"] = max(float(az.rhat(idata, var_names=POPULATION)[p]) for p in POPULATION)
    ss = idata.sample_stats
    out["mean_tree_depth"] = float(np.log2(ss["n_steps"] + 1).mean()) if "n_steps" in ss else None
    out["divergences"] = int(ss["diverging"].sum())
    out["medians"] = {p: float(idata.posterior[p].median()) for p in ("CL", "V", "KA")}
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "gpu":
        import jax

        stats = jax.devices("gpu")[0].memory_stats() or {}
        out["gpu_peak_mb"] = stats.get("peak_bytes_in_use", 0) / 2**20
    return out


def _subprocess(args, variant, engine, data, cache) -> dict:
    env = dict(os.environ, BAYESNLME_CACHE_DIR=str(Path(cache) / "bayesnlme"))
    env["PYTENSOR_FLAGS"] = ",".join(filter(None, [env.get("PYTENSOR_FLAGS"), f"base_compiledir={cache}/pytensor"]))
    env["NUMBA_CACHE_DIR"] = f"{cache}/numba"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", variant, "--engines", engine, "--data", data,
           "--device", args.device, "--draws", str(args.draws), "--tune", str(args.tune), "--chains", str(args.chains)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        return {"variant": variant, "engine": engine, "error": proc.stderr.strip().splitlines()[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _f(x, width, digits=1):
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{digits}f}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1200])
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--tune", type=int, default=1000)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--phases", nargs="+", choices=["cold", "warm"], default=["cold", "warm"],
                   help="cold: empty compile caches; warm: a second process on the filled caches")
    p.add_argument("--no-reference", action="store_true", help="only the bayesnlme model, no hand-written ones")
    p.add_argument("--variants", nargs="+", choices=["bayesnlme", "bayesnlme-subject", "handwritten", "numpyro-native"],
                   help="run only these models (default: all that apply)")
    p.add_argument("--quick", action="store_true", help="smoke test: N = 50, 2 chains x 100 draws after 100")
    p.add_argument("--json", help="write every run's figures to this file")
    p.add_argument("--one", help=argparse.SUPPRESS)        # internal: one variant in this process
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.draws, args.tune, args.chains = [50], 100, 100, 2
    if args.one:
        print(json.dumps(run_one(args.one, args.engines[0], args.device, args.data, args.chains, args.draws,
                                 args.tune)))
        return
    if args.device == "gpu" and "nutpie" in args.engines:
        args.engines.remove("nutpie")
    print(f"pk_1cmt_oral, simulated 1-compartment oral populations ({len(TIMES)} samples per subject); "
          f"{args.chains} chains x {args.draws} draws after {args.tune}; device {args.device}; "
          f"{os.cpu_count()} CPU cores; each run in its own process, cold cache then warm")
    head = (f"{'N':>7} {'engine':<9}{'model':<18}{'cache':<6}{'wall s':>8}{'build':>7}{'compile':>8}{'sample':>8}"
            f"{'minESS':>8}{'ESS/s':>8}{'Rhat':>6}{'depth':>6}{'div':>5}{'MB':>7}{'CL':>7}{'V':>7}{'KA':>6}")
    print(head)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bayesnlme_scale_") as tmp:
        for n in args.sizes:
            data = str(Path(tmp) / f"pop_{n}.csv")
            simulate(n).to_csv(data, index=False)
            for engine in args.engines:
                variants = ["bayesnlme"]
                if "bayesnlme-subject" in (args.variants or ()):
                    variants.append("bayesnlme-subject")
                if not args.no_reference:
                    variants += ["handwritten"] + (["numpyro-native"] if engine == "numpyro" else [])
                for variant in [v for v in variants if not args.variants or v in args.variants]:
                    cache = Path(tmp) / f"cache_{n}_{engine}_{variant}"
                    runs = {}
                    for phase in args.phases:
                        r = _subprocess(args, variant, engine, data, cache)
                        r.update(n=n, cache=phase)
                        runs[phase] = r
                        rows.append(r)
                    cold, warm = runs.get("cold", {"error": ""}), runs.get("warm", {"error": ""})
                    if "error" not in cold and "error" not in warm and cold["compile_s"] is None:
                        cold["compile_s"] = max(cold["sample_s"] - warm["sample_s"], 0.0)   # JAX: cache hit
                    for phase, r in runs.items():
                        if "error" in r:
                            print(f"{n:>7} {engine:<9}{variant:<18}{phase:<6} failed: {r['error']}")
                            continue
                        m = r["medians"]
                        print(f"{n:>7} {engine:<9}{variant:<18}{phase:<6}{_f(r['wall_s'], 8)}{_f(r['build_s'], 7)}"
                              f"{_f(r['compile_s'], 8)}{_f(r['sample_s'] - (r['compile_s'] or 0.0), 8)}"
                              f"{_f(r['min_ess_bulk'], 8, 0)}"
                              f"{_f(r['ess_per_s'], 8)}{_f(r['max_rhat'], 6, 3)}{_f(r['mean_tree_depth'], 6)}"
                              f"{r['divergences']:>5}{_f(r.get('gpu_peak_mb', r['peak_mb']), 7, 0)}"
                              f"{m['CL']:>7.3f}{m['V']:>7.2f}{m['KA']:>6.3f}", flush=True)
    print("truth: CL 4, V 40, KA 1.2; compile for JAX engines = cold - warm sampling time (persistent cache)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
