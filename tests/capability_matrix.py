"""Capability matrix: every ``model_library`` entry through every capability, on small simulated data.

For each library model (and each continuous one once more with ~25% of its observations below a
limit of quantification, CENS=1) this simulates a small study from the model itself (population
parameters at their prior medians, OMEGA 0.3; ETAs and DV drawn by the package's own simulator), then runs,
as a user would from the command line: ``fit`` (short NUTS chains), ``diagnose`` (convergence, GOF with
NPDE / randomized PIT, the marginal likelihood), ``compare --level subject`` (integrated
subject-level LOO), ``vpc`` for each observation type (simulation of new subjects) and, where the
model has doses, ``simulate --regimens``. A cell is ``ok`` when the command exits 0 and its table
holds finite numbers, otherwise the first line of its error.

Run ``make capabilities`` (about 70 minutes on 2 cores): it writes ``docs/capabilities.md``.
``tests/test_capabilities.py`` runs the same cells under pytest (marked ``capabilities``).
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

CAPABILITIES = ("fit", "diagnose", "-2LL", "subject LOO", "simulate/VPC", "regimens")
N_SUB = 12
PK_TIMES = (0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0)


def models() -> list[tuple[str, bool]]:
    """(library name, with BLQ) cells: every entry, and the continuous ones again with BLQ."""
    from bayesnlme.spec import library_names, load_spec

    cells = []
    for name in library_names():
        cells.append((name, False))
        if not load_spec(name).observations:      # a single continuous [residual]
            cells.append((name, True))
    return cells


def _design(spec, rng) -> pd.DataFrame:
    """Doses and sampling times of a small study for the spec's structural model."""
    st = spec.structural
    obs = spec.observations
    rows = []
    exposure_driven = st.name.endswith("_exposure")
    for i in range(1, N_SUB + 1):
        x = float(rng.uniform(0.0, 3.0))
        if exposure_driven:
            kinds = {o.likelihood for o in obs}
            if "tte" in kinds:
                rows.append({"ID": i, "TIME": 24.0, "AMT": 0.0, "EVID": 0, "MDV": 0, "EXPOSURE": x})
            else:
                n = 4 if kinds & {"poisson", "negbin", "negative_binomial"} else 2
                rows += [{"ID": i, "TIME": float(k), "AMT": 0.0, "EVID": 0, "MDV": 0, "EXPOSURE": x}
                         for k in range(n)]
            continue
        cmt = st.depot_cmt if st.depot_cmt is not None else st.central_cmt
        dose = {"ID": i, "TIME": 0.0, "AMT": 100.0, "EVID": 1, "MDV": 1, "CMT": cmt, "RATE": 0.0}
        if "infusion" in spec.to_dict()["structural"]:
            dose["RATE"] = 100.0   # 1-h infusion
        rows.append(dose)
        dvids = [o.dvid for o in obs] or [None]
        for t in PK_TIMES:
            for d in dvids:
                r = {"ID": i, "TIME": t, "AMT": 0.0, "EVID": 0, "MDV": 0, "CMT": st.central_cmt, "RATE": 0.0}
                if d is not None:
                    r["DVID"] = d
                rows.append(r)
    df = pd.DataFrame(rows)
    df.insert(2, "DV", 0.0)
    return df


def _truth(built, spec) -> dict:
    """Population values: prior medians (a zero-centred normal prior: half its SD), OMEGA 0.3."""
    ip = dict(built.initial_point)
    model = built.model
    truth = {}
    for rv in model.free_RVs:
        name = rv.name
        if name.startswith("eta") or name.startswith("z_"):
            continue
        if name not in ip:
            continue
        value = np.asarray(ip[name], float)
        if name.startswith("omega"):
            value = np.full_like(value, 0.3)
        elif name.startswith("sigma"):
            value = 0.3 * value      # a third of the prior median: data a model can be checked on
        elif name in spec.parameters:
            prior = spec.parameters[name].prior
            if prior is not None and prior.dist == "normal" and value.size == 1 and float(value) == 0.0:
                value = np.asarray(0.5 * prior.args.get("sigma", 1.0))
        truth[name] = value
    return truth


def truth_fit(name: str, design: pd.DataFrame):
    """A :class:`FitResult` whose one posterior draw is the truth, on ``design``: the package's own
    simulators then draw the study (new subjects: ETAs from OMEGA, then each record's observation model)."""
    import arviz as az

    from bayesnlme.build import build_model
    from bayesnlme.inference import FitResult
    from bayesnlme.spec import load_spec

    spec = load_spec(name)
    built = build_model(spec, design)
    truth = _truth(built, spec)
    posterior = {}
    for rv in built.model.free_RVs:
        value = truth.get(rv.name, built.initial_point.get(rv.name))
        if value is None:
            value = np.zeros(tuple(int(d) for d in rv.shape.eval()))
        posterior[rv.name] = np.asarray(value, float)[None, None, ...]
    return FitResult(idata=az.from_dict(posterior=posterior), spec=built.spec, data=built.data,
                     settings={"method": "truth"})


def simulate_study(name: str, blq: bool, seed: int = 11) -> pd.DataFrame:
    """A small data set simulated from library model ``name`` (with ~25% BLQ records when ``blq``)."""
    from bayesnlme.evaluate.event_times import simulate_event_times
    from bayesnlme.evaluate.simulate import simulate
    from bayesnlme.spec import load_spec

    spec = load_spec(name)
    design = _design(spec, np.random.default_rng(seed))
    design["DV"] = 1.0      # a placeholder every observation model accepts
    result = truth_fit(name, design)
    obs = design["EVID"] == 0
    sim = simulate(result, n_draws=1, seed=seed)
    dv = sim.dv[0].copy()
    tte = [m for m in spec.observation_models() if m.likelihood == "tte"]
    if tte:
        t, event = simulate_event_times(result, n_draws=1, seed=seed, t_max=24.0)
        design.loc[obs, "TIME"] = np.asarray(t, float).reshape(-1)
        dv = np.asarray(event, float).reshape(-1)
    design.loc[obs, "DV"] = dv
    if blq:
        lloq = float(np.quantile(dv, 0.25))
        below = obs & (design["DV"] < lloq)
        design["CENS"] = 0
        design.loc[below, "DV"] = lloq
        design.loc[below, "CENS"] = 1
    return design


def _finite_csv(path: Path, columns) -> str:
    table = pd.read_csv(path)
    for c in columns:
        if c not in table or not np.all(np.isfinite(table[c].to_numpy(float))):
            return f"{path.name}: {c} missing or not finite"
    return "ok"


def _run(argv) -> tuple[int, str]:
    from bayesnlme.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except Exception:    # a traceback is itself a failed cell
            return 1, traceback.format_exc().strip().splitlines()[-1]
    text = (err.getvalue().strip() or out.getvalue().strip()).splitlines()
    return rc, (text[-1] if text else "")


def run_cell(name: str, blq: bool, folder: Path) -> dict:
    """Every capability for one library model; {capability: "ok" or the first error line}."""
    from bayesnlme.spec import load_spec

    spec = load_spec(name)
    folder.mkdir(parents=True, exist_ok=True)
    cell = {c: "not run" for c in CAPABILITIES}
    t0 = time.perf_counter()
    try:
        data = simulate_study(name, blq)
    except Exception as exc:   # noqa: BLE001 -- the simulation itself is a capability of the model graph
        cell["fit"] = f"simulating data: {type(exc).__name__}: {exc}".splitlines()[0]
        return cell
    data_path = folder / "data.csv"
    data.to_csv(data_path, index=False)
    fit_dir = folder / "fit"
    rc, msg = _run(["fit", "--model", name, "--data", str(data_path), "--out", str(fit_dir), "--chains", "2",
                    "--draws", "150", "--tune", "200", "--seed", "1", "--no-progress"])
    cell["fit"] = "ok" if rc == 0 else msg
    if rc != 0:
        return cell
    rc, msg = _run(["diagnose", str(fit_dir), "--npde-sims", "200"])
    diag = fit_dir / "diagnostics"
    cell["diagnose"] = _finite_csv(diag / "gof.csv", ["NPDE"]) if rc == 0 else msg
    lik = diag / "likelihood.csv"
    cell["-2LL"] = (_finite_csv(lik, ["minus2ll", "aic", "bic"]) if lik.is_file() else
                    (msg if rc != 0 else "likelihood.csv not written"))
    rc, msg = _run(["compare", str(fit_dir), str(fit_dir), "--level", "subject",
                    "--out", str(folder / "comparison.csv")])
    cell["subject LOO"] = _finite_csv(folder / "comparison.csv", ["elpd", "se"]) if rc == 0 else msg
    dvids = [o.dvid for o in spec.observations] if len(spec.observations) > 1 else [None]
    vpc_msgs = []
    for d in dvids:
        argv = ["vpc", str(fit_dir), "--n-sim", "50", "--bins", "4"] + ([] if d is None else ["--dvid", str(d)])
        rc, msg = _run(argv)
        vpc_msgs.append("ok" if rc == 0 else (f"DVID {d}: " if d is not None else "") + msg)
    cell["simulate/VPC"] = next((m for m in vpc_msgs if m != "ok"), "ok")
    if spec.structural.name.endswith("_exposure"):
        cell["regimens"] = "n/a (no doses: exposure is a data column)"
    else:
        reg = folder / "regimens.toml"
        reg.write_text("doses = [50, 100]\nintervals = [12, 24]\nn_subjects = 40\nn_draws = 40\n"
                       "[[targets]]\nmetric = \"CTROUGH\"\nabove = 0.1\n")
        rc, msg = _run(["simulate", str(fit_dir), "--regimens", str(reg), "--out", str(folder / "regimens")])
        cell["regimens"] = _finite_csv(folder / "regimens" / "regimens.csv", ["AUCTAU_median"]) if rc == 0 else msg
    cell["seconds"] = round(time.perf_counter() - t0, 1)
    return cell


def markdown(results: dict) -> str:
    """``docs/capabilities.md`` from {(name, blq): cell}."""
    lines = ["# Capability matrix", "",
             "Generated by `make capabilities` (`tests/capability_matrix.py`): every `model_library` entry, and",
             "each continuous one again with ~25% of its observations below the LLOQ (CENS=1, M3), simulated",
             "from the model (12 subjects) and run through each command with short chains. `ok`: the command",
             "exited 0 and its table holds finite numbers; otherwise the cell shows the command's message.",
             "", "| model | BLQ | " + " | ".join(CAPABILITIES) + " | seconds |",
             "|---|---|" + "---|" * len(CAPABILITIES) + "---|"]
    for (name, blq), cell in results.items():
        vals = [str(cell.get(c, "")).replace("|", "/") for c in CAPABILITIES]
        lines.append(f"| {name} | {'25%' if blq else ''} | " + " | ".join(vals) + f" | {cell.get('seconds', '')} |")
    commits = sorted({str(cell.get("commit", "unknown")) for cell in results.values()})
    n_ok = sum(v == "ok" for cell in results.values() for c, v in cell.items() if c in CAPABILITIES)
    n_na = sum(str(v).startswith("n/a") for cell in results.values() for c, v in cell.items() if c in CAPABILITIES)
    lines += ["", f"{n_ok} of {len(results) * len(CAPABILITIES) - n_na} cells ok ({n_na} not applicable).",
              "", f"Run on commit(s) {', '.join(commits)}; seconds are wall time per model on 2 cores."]
    return "\n".join(lines) + "\n"


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    import argparse
    import json
    import tempfile

    from bayesnlme.atomic import write_text_atomic

    p = argparse.ArgumentParser(description="run the capability matrix and write docs/capabilities.md")
    p.add_argument("--out", default="docs/capabilities.md")
    p.add_argument("--results", default="docs/capabilities.json",
                   help="cell results, kept between runs: --only updates its cells")
    p.add_argument("--only", nargs="*", help="library names to run (default: all)")
    p.add_argument("--commit", default=_commit(), help="the commit the cells run on (recorded per cell)")
    args = p.parse_args(argv)
    store = Path(args.results)
    saved = json.loads(store.read_text()) if args.only and store.is_file() else {}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, blq in models():
            if args.only and name not in args.only:
                continue
            cell = run_cell(name, blq, Path(tmp) / f"{name}{'_blq' if blq else ''}")
            cell["commit"] = args.commit
            results[(name, blq)] = cell
            saved[f"{name}|{int(blq)}"] = cell
            write_text_atomic(store, json.dumps(saved, indent=1, sort_keys=True) + "\n")   # resumable
            print(f"{name:28s} {'BLQ' if blq else '   '} " +
                  " ".join(f"{c}={'ok' if v == 'ok' else repr(v)}" for c, v in cell.items()), flush=True)
    every = {(k.split("|")[0], k.endswith("|1")): v for k, v in sorted(saved.items())}
    order = [c for c in models() if c in every]
    write_text_atomic(Path(args.out), markdown({c: every[c] for c in order}))
    print(f"wrote {args.out} ({len(order)} of {len(models())} cells)")
    bad = [(k, c, v) for k, cell in results.items() for c, v in cell.items()
           if c in CAPABILITIES and v != "ok" and not str(v).startswith("n/a")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
