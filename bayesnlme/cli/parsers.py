"""Every argparse line of the ``bayesnlme`` command: subcommands, options, help and examples.

Nothing here imports PyMC, so ``bayesnlme --help`` and usage errors answer at once; each command's code
lives in its own module of :mod:`bayesnlme.cli`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# the choices bayesnlme.evaluate.compare accepts (checked there again for API calls)
LEVELS, ICS = ("subject", "observation"), ("loo", "waic")
# the engines and devices of bayesnlme.inference.engines (checked there again for API calls)
SAMPLERS, DEVICES = ("nutpie", "pymc", "numpyro", "blackjax"), ("cpu", "gpu")

EXAMPLES = """examples:
  bayesnlme eda --data theophylline.csv --out eda_theo    data summary, spaghetti plots, covariates, outliers
  bayesnlme fit --model pk_1cmt_oral --data theophylline.csv --out fits/theo
  bayesnlme fit --model my_model.toml --data study.csv --out fits/run2 --chains 4 --draws 2000 --seed 7
  bayesnlme fit --model pk_1cmt_oral --data big_study.csv --out fits/big --sampler numpyro --device gpu
  bayesnlme diagnose fits/theo      convergence, GOF, residual and ETA plots into fits/theo/diagnostics/
  bayesnlme compare fits/1cmt fits/2cmt --level subject    rank models by PSIS-LOO
  bayesnlme vpc fits/theo --pc     VPC and prediction-corrected VPC into fits/theo/vpc/
  bayesnlme simulate fits/theo --regimens regimens.toml    steady-state exposure, target attainment
  bayesnlme individualize fits/vanco --patient patient.csv --target "CTROUGH 10-20"    dose for one patient (TDM)
  bayesnlme library                 list the model library
  bayesnlme library pk_1cmt_oral    show one entry (its TOML, with the reasoning behind its priors)
  bayesnlme report fits/theo --out theo_report.html      one self-contained HTML report
  bayesnlme report fits/1cmt fits/2cmt --out comparison.html
  bayesnlme sbc pk_1cmt_oral --data design.csv --n 200 --out sbc_1cmt    simulation-based calibration on Dask
  bayesnlme covsearch base.toml --data study.csv --candidates "CL~WT:power V~WT:power CL~AGE" --out cov
  bayesnlme trial fits/theo --design design.csv --n 200 --rule-file rule.toml --out trial_24    probability of success
  bayesnlme import-nonmem run1.mod --out run1.toml --priors estimates    a NONMEM control stream as a spec

exit status: 0 success, 1 bad input (one-line message), 2 internal error (--debug shows the traceback)
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors are bad input: exit status 1 (argparse's own is 2, which here means a bug)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bayesnlme", description="Bayesian nonlinear mixed-effects "
                                "(population PK/PD) models on PyMC.", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit a model to NONMEM-format data with NUTS",
                       description="Fit MODEL to DATA and write OUT/fit.nc (posterior, log-likelihood, "
                       "spec, data, seed, versions) and OUT/summary.csv.",
                       epilog="example:\n  bayesnlme fit --model pk_1cmt_oral --data theophylline.csv --out fits/theo",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("--model", required=True, help="a .toml spec file or a model_library entry name")
    f.add_argument("--data", required=True, help="NONMEM-format CSV file")
    f.add_argument("--out", default="bayesnlme_fit", help="output folder (default: %(default)s)")
    f.add_argument("--chains", type=int, default=4, help="number of chains (default: %(default)s)")
    f.add_argument("--draws", type=int, default=1000, help="draws per chain after warm-up (default: %(default)s)")
    f.add_argument("--tune", type=int, default=1000, help="warm-up draws per chain (default: %(default)s)")
    f.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    f.add_argument("--sampler", choices=SAMPLERS, default="nutpie",
                   help="NUTS engine: nutpie (numba), pymc, or the JAX samplers numpyro and blackjax "
                        "(pip install 'bayesnlme[jax]') (default: %(default)s)")
    f.add_argument("--device", choices=DEVICES, default="cpu",
                   help="where a JAX sampler runs; gpu needs JAX's CUDA build (default: %(default)s)")
    f.add_argument("--method", choices=["nuts", "map", "advi"], default="nuts",
                   help="nuts (default), or a quick approximate fit: map (posterior mode + Laplace) or advi")
    f.add_argument("--init", choices=["auto", "prior", "map"], default="auto",
                   help="NUTS start: prior medians or the posterior mode; auto: the mode for a [mixture] "
                   "model, prior medians otherwise (default: %(default)s)")
    f.add_argument("--log-likelihood", choices=["auto", "observation", "subject", "none"], default="auto",
                   help="what fit.nc keeps for LOO/WAIC: every observation's log-likelihood, its sum per "
                   "subject (subject-level comparison only), or none; auto: per observation up to 512 MiB, "
                   "per subject above (default: %(default)s)")
    f.add_argument("--eta-parameterisation", choices=["population", "subject"], default="population",
                   help="how NUTS samples the ETAs: through each ETA's population mean and spread (the same "
                   "posterior, faster mixing of typical values and OMEGAs), or each subject's eta_z "
                   "(default: %(default)s)")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    d = sub.add_parser("diagnose", help="convergence report, goodness-of-fit and ETA plots and tables",
                       description="Read DIR/fit.nc and write into DIR/diagnostics/: convergence.txt and "
                       "convergence.csv, likelihood.csv (-2LL, AIC, BIC by importance sampling), gof.csv (DV, PRED, "
                       "IPRED, IWRES, CWRES, NPDE per observation), "
                       "eta.csv, shrinkage.csv, eta_correlation.csv and PNG plots.",
                       epilog="example:\n  bayesnlme diagnose fits/theo",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("dir", help="fit folder (containing fit.nc)")
    d.add_argument("--npde-sims", type=int, default=1000, help="simulated data sets for NPDE (default: %(default)s)")
    d.add_argument("--is-samples", type=int, default=2000,
                   help="importance samples per subject for the marginal likelihood (-2LL, AIC, BIC), as "
                   "NONMEM's ISAMPLE (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0, help="seed of the NPDE/CWRES simulations (default: %(default)s)")
    _add_compare(sub)
    _add_vpc(sub)
    _add_simulate(sub)
    _add_individualize(sub)
    _add_prior_check(sub)
    _add_eda_report(sub)
    _add_sbc(sub)
    _add_covsearch(sub)
    _add_trial(sub)
    _add_import_nonmem(sub)
    lib = sub.add_parser("library", help="list model_library entries or show one",
                         description="Without NAME: list the model_library entries with their descriptions. "
                         "With NAME: print that entry's TOML (priors explained in its comments).",
                         epilog="examples:\n  bayesnlme library\n  bayesnlme library pk_1cmt_oral\n"
                         "  bayesnlme library pk_1cmt_oral > my_model.toml   start a model of your own",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    lib.add_argument("name", nargs="?", help="entry to show")
    return p


def _add_vpc(subparsers) -> None:
    """Register ``bayesnlme vpc``."""
    p = subparsers.add_parser(
        "vpc", help="visual predictive check (VPC, pcVPC) of a fit",
        description="Simulate the study with new subjects at posterior draws and write DIR/vpc/vpc.csv and "
        "vpc.png (with --pc also pcvpc.csv and pcvpc.png): per time bin the observed percentiles, the "
        "simulated percentiles' prediction interval and median, and OUTSIDE when an observed percentile "
        "falls outside its interval; simulations.csv.gz holds the simulated studies.",
        epilog="examples:\n  bayesnlme vpc fits/theo\n  bayesnlme vpc fits/theo --bins 0,1,2,4,8,12,25 --pc --log"
               "\n  bayesnlme vpc fits/pheno --stratify DOSE --bins NTIME --lloq 0.5"
               "\n  bayesnlme vpc fits/pkpd --dvid 2      # one observation type of a joint fit",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="fit folder (containing fit.nc)")
    p.add_argument("--bins", default="8", help="number of quantile bins of TIME, comma-separated edges, or a "
                   "nominal-time column (default: %(default)s)")
    p.add_argument("--pc", action="store_true", help="also write the prediction-corrected VPC")
    p.add_argument("--varcorr", action="store_true", help="variability correction of the pcVPC")
    p.add_argument("--log", action="store_true", help="logarithmic DV axis")
    p.add_argument("--stratify", help="data column to stratify by (DOSE: first dose amount)")
    p.add_argument("--lloq", type=float, help="lower limit of quantification (BLQ-aware VPC; with a CENS "
                   "column the data's LLOQ is used)")
    p.add_argument("--dvid", type=int, help="observation type to check (required when the fit has several); "
                   "binary/ordinal/count types get a categorical VPC, time-to-event types a Kaplan-Meier VPC; "
                   "files are then named vpc_dvid<k>.csv ...")
    p.add_argument("--pi", type=float, default=90, help="prediction interval, percent (default: %(default)s)")
    p.add_argument("--n-sim", type=int, default=500, help="simulated replicates of the study (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (default: %(default)s)")
    _add_averaging(p)


def _add_averaging(p) -> None:
    """--average/--weights: model-averaged predictions over DIR and other fits of the same data."""
    p.add_argument("--average", nargs="+", metavar="DIR2", help="other fit folders of the same data: "
                   "model-averaged predictions over DIR and these (bayesnlme.evaluate.averaging)")
    p.add_argument("--weights", help="with --average: comma-separated weights of DIR and each DIR2, in order "
                   "(default: stacking weights from a subject-level PSIS-LOO comparison)")


def _add_simulate(subparsers) -> None:
    """Register ``bayesnlme simulate``."""
    p = subparsers.add_parser(
        "simulate", help="steady-state exposure and target attainment of dosing regimens",
        description="Simulate new subjects at posterior draws under each regimen of a TOML file (doses x "
        "intervals, optional weight bands and targets) and write OUT/regimens.csv (summary), "
        "OUT/regimen_metrics.csv (per simulated subject and draw) and OUT/regimens.png.",
        epilog="example:\n  bayesnlme simulate fits/theo --regimens regimens.toml --out fits/theo/simulation\n\n"
               "regimens.toml:\n  doses = [200, 300, 400]      # AMT units\n  intervals = [12, 24]         # h\n"
               "  n_subjects = 200\n  n_draws = 200\n  [[targets]]\n"
               "  metric = \"CTROUGH\"   # AUCTAU, CMAX, CMIN, CTROUGH\n"
               "  above = 5.0",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="fit folder (containing fit.nc)")
    p.add_argument("--regimens", required=True, help="regimen TOML file")
    p.add_argument("--out", help="output folder (default: DIR/simulation)")
    _add_averaging(p)


def _numbers(text: str) -> list[float]:
    """A comma-separated list of positive numbers (``--doses 500,750,1000``)."""
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 500,750,1000; got {text!r}") from None
    if not out or min(out) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return out


def individualize_out(args) -> Path:
    """Output folder of ``bayesnlme individualize``: --out, else SOURCE/individual_<patient> for a fit folder,
    else individual_<patient>."""
    if args.out:
        return Path(args.out)
    name = f"individual_{Path(args.patient).stem}"
    return Path(args.source) / name if Path(args.source).is_dir() else Path(name)


def _add_individualize(subparsers) -> None:
    """Register ``bayesnlme individualize``."""
    p = subparsers.add_parser(
        "individualize",
        help="one patient's individual posterior from measured levels and the dose that reaches a target",
        description="Individualise a dose for one patient (therapeutic drug monitoring): the full-Bayes posterior "
        "of the patient's parameters given their measured levels, with the population's uncertainty carried "
        "through (importance resampling over population draws), the MAP-Bayes estimate, the predicted "
        "profile, and the probability that each candidate steady-state regimen meets the target. Writes "
        "OUT/individual_parameters.csv, profile.csv, profile.png and dose_table.csv and prints the "
        "recommendation in words.",
        epilog="examples:\n  bayesnlme individualize fits/vanco --patient patient.csv --target \"CTROUGH 10-20\"\n"
               "  bayesnlme individualize vanco_published.toml --patient patient.csv --target \"AUC24 400-600\" "
               "--doses 750,1000,1250,1500 --intervals 8,12,24 --out patient_17\n\n"
               "targets: 'METRIC LO-HI', 'METRIC <HI' or 'METRIC >LO' with METRIC one of AUCTAU, AUC24, CMAX, CMIN,\n"
               "CTROUGH (steady state; DV units, x h for AUC); several --target options (or ';') must all hold.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SOURCE", help="a fit folder (containing fit.nc), or a published model as a "
                   ".toml spec (or library entry) whose informative priors stand for the population")
    p.add_argument("--patient", required=True, help="the patient's NONMEM-format CSV (one ID: doses, covariates, "
                   "measured levels)")
    p.add_argument("--target", action="append", required=True, help="exposure target, e.g. \"CTROUGH 10-20\"")
    p.add_argument("--doses", type=_numbers, help="candidate doses, comma-separated (default: the last dose x "
                   "0.5, 0.75, 1, 1.25, 1.5, 2)")
    p.add_argument("--intervals", type=_numbers, help="candidate dosing intervals, comma-separated (default: the "
                   "last dose's II)")
    p.add_argument("--duration", type=float, help="infusion duration of the candidates (default: the last dose's)")
    p.add_argument("--out", help="output folder (default: SOURCE/individual_<patient> for a fit folder, else "
                   "individual_<patient>)")
    p.add_argument("--draws", type=int, default=300, help="population draws (default: %(default)s)")
    p.add_argument("--proposals", type=int, default=200, help="importance proposals per population draw "
                   "(default: %(default)s)")
    p.add_argument("--population", choices=["update", "fixed"], default="update",
                   help="update: the patient's levels also weigh the population draws (as a refit with the patient); "
                   "fixed: they do not (default: %(default)s)")
    p.add_argument("--future-occasion", choices=["new", "last"], default="new",
                   help="with inter-occasion variability (occasions from the patient's OCC column; none: one "
                   "occasion): the KAPPA of the proposed regimen and of the dose table's steady state, a new "
                   "occasion. new: drawn from the population's IOV for each posterior sample (bands widen by the "
                   "IOV); last: the KAPPA of the patient's last occasion with a level (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")


def _add_prior_check(subparsers) -> None:
    """Register ``bayesnlme prior-check``."""
    p = subparsers.add_parser(
        "prior-check", help="prior predictive check: DV simulated from the priors against the data",
        description="Simulate DV from the priors alone and write OUT/prior_check/prior_check.csv (per time "
        "bin: prior predictive percentiles, share of observations inside the band) and prior_check.png.")
    p.add_argument("--model", required=True, help="a .toml spec file or a model_library entry name")
    p.add_argument("--data", required=True, help="NONMEM-format CSV file")
    p.add_argument("--out", default="bayesnlme_fit", help="output folder (default: %(default)s)")
    p.add_argument("--draws", type=int, default=500, help="prior draws (default: %(default)s)")
    p.add_argument("--bins", type=int, default=8, help="TIME bins (default: %(default)s)")
    p.add_argument("--log", action="store_true", help="logarithmic DV axis")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")


def _add_compare(subparsers) -> None:
    """Add the ``compare`` subcommand to a ``bayesnlme`` argument parser's subparsers."""
    p = subparsers.add_parser(
        "compare", help="rank fitted models by predictive accuracy (PSIS-LOO or WAIC)",
        description="Rank fits to the same data by expected log predictive density (ELPD), best first; "
        "print the table, a summary and a Pareto k verdict per model, and write the table to CSV.",
        epilog="example:\n  bayesnlme compare fits/one_cmt fits/two_cmt --level subject --out comparison.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", metavar="DIR", help="fit folders, each holding fit.nc (bayesnlme fit --out DIR)")
    p.add_argument("--level", choices=LEVELS, default="subject", help="leave out one what (default: %(default)s)")
    p.add_argument("--ic", choices=ICS, default="loo", help="information criterion (default: %(default)s)")
    p.add_argument("--out", default="comparison.csv", metavar="CSV", help="table to write (default: %(default)s)")
    p.add_argument("--refit-budget", type=float, default=0.0, metavar="SECONDS",
                   help="subject level: time allowed per model for exact refits of subjects whose Pareto k "
                   "stays high after integrating out their random effects (default: %(default)s, no refits)")


def _add_eda_report(subparsers) -> None:
    """Register the ``eda`` and ``report`` subcommands."""
    e = subparsers.add_parser(
        "eda", help="exploratory analysis of a data file: summary, spaghetti plots, covariates, outliers",
        description="Read a NONMEM-format CSV and write into OUT: data_summary.csv, covariate_summary.csv, "
        "outliers.csv, spaghetti plots (linear, log, dose-normalised, by covariate), covariate box plots, "
        "scatter matrix and correlation heat map (PNG, each with the CSV it draws) and index.html.",
        epilog="example:\n  bayesnlme eda --data theophylline.csv --out eda_theo",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--data", required=True, help="NONMEM-format CSV file")
    e.add_argument("--out", default="bayesnlme_eda", help="output folder (default: %(default)s)")
    r = subparsers.add_parser(
        "report", help="one self-contained HTML report of one or more fits",
        description="Write one HTML file (figures embedded, no external requests) with the data summary and "
        "exploratory figures, the model written out, assumptions and exclusions, estimates, convergence, "
        "goodness of fit, whatever DIR/vpc, DIR/simulation and DIR/prior_check hold, a comparison table "
        "when several fits are given, and a reproducibility record.",
        epilog="examples:\n  bayesnlme report fits/theo --out theo_report.html\n"
        "  bayesnlme report fits/1cmt fits/2cmt --out comparison.html",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("dirs", nargs="+", metavar="DIR", help="fit folder(s) containing fit.nc")
    r.add_argument("--out", default="report.html", help="HTML file to write (default: %(default)s)")
    r.add_argument("--npde-sims", type=int, default=200,
                   help="NPDE simulations when DIR/diagnostics has no plots (default: %(default)s)")
    r.add_argument("--seed", type=int, default=0, help="seed of those simulations (default: %(default)s)")


def _add_runner_options(p) -> None:
    """Options of every many-fits command (bayesnlme.runner)."""
    g = p.add_argument_group("where the fits run (Dask)")
    g.add_argument("--scheduler", help="Dask scheduler address (tcp://HOST:8786), 'local' for a new local cluster "
                   "or 'serial' for no cluster (default: $DASK_SCHEDULER_ADDRESS, else a local cluster)")
    g.add_argument("--workers", type=int, help="local cluster: worker processes (default: one per CPU core)")
    g.add_argument("--memory-limit", help="local cluster: memory per worker, e.g. 4GiB (default: machine memory "
                   "/ workers); a worker above 95%% of it is restarted and its task retried")
    g.add_argument("--retry-failed", action="store_true",
                   help="rerun the tasks that failed in an earlier run of this command (default: keep their errors)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_sbc(subparsers) -> None:
    """Register ``bayesnlme sbc``."""
    p = subparsers.add_parser(
        "sbc", help="simulation-based calibration of a model on a design (many fits on Dask)",
        description="Draw parameters from MODEL's priors, simulate DV at the design's records, fit, and rank "
        "each true population parameter among the posterior draws; N replicates as independent tasks on "
        "Dask. Writes OUT/manifest.json and OUT/tasks/<replicate>/ as each replicate finishes (a rerun "
        "resumes), then OUT/sbc_ranks.csv, sbc_table.csv (per parameter: mean normalised rank, p-value of "
        "the ECDF uniformity test, its Holm adjustment over the parameters, rejected, shape), sbc_fits.csv, "
        "sbc_verdict.txt, sbc_ranks.png and sbc_ecdf.png, and prints the table and the verdict.",
        epilog="examples:\n  bayesnlme sbc pk_1cmt_oral --data theophylline.csv --n 200 --out sbc_1cmt\n"
               "  bayesnlme sbc pk_1cmt_oral --data design.csv --n 100 --fit-model narrow.toml --out sbc_check\n"
               "  bayesnlme sbc my_model.toml --data design.csv --n 500 --scheduler tcp://head:8786 --out sbc_big",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a .toml spec file or a model_library entry name (its priors simulate)")
    p.add_argument("--data", required=True, help="design: NONMEM-format CSV with doses, sampling times and "
                   "covariates (DV values are ignored)")
    p.add_argument("--n", type=int, default=200, help="replicates (default: %(default)s)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--fit-model", help="fit the replicates with this model instead (e.g. other priors): "
                   "checks that model against data from MODEL")
    p.add_argument("--chains", type=int, default=2, help="chains per fit (default: %(default)s)")
    p.add_argument("--draws", type=int, default=500, help="draws per chain (default: %(default)s)")
    p.add_argument("--tune", type=int, default=500, help="warm-up draws per chain (default: %(default)s)")
    p.add_argument("--ranks", type=int, default=100, help="possible ranks L+1, from L thinned draws "
                   "(default: %(default)s)")
    p.add_argument("--alpha", type=float, default=0.01, help="level of the uniformity test (default: %(default)s)")
    p.add_argument("--lloq", type=float, help="censor simulated DV below this LLOQ (DV units; CENS=1, M3 "
                   "likelihood); default: the limits of the design's CENS=1 records, if any")
    p.add_argument("--seed", type=int, default=1, help="run seed (default: %(default)s)")
    _add_runner_options(p)
def _add_import_nonmem(subparsers) -> None:
    """Register ``bayesnlme import-nonmem``."""
    p = subparsers.add_parser(
        "import-nonmem", help="translate a NONMEM control stream into a bayesnlme spec (TOML)",
        description="Read a NONMEM control stream with Pharmpy (pip install 'bayesnlme[nonmem]') and write "
        "the equivalent bayesnlme spec: ADVAN1-4/11/12 (TRANS2/4) structural model, typical values, "
        "exponential/additive ETAs, power/exponential/linear/categorical covariate models, OMEGA blocks, "
        "additive/proportional/combined/exponential error, priors from $THETA/$OMEGA/$SIGMA or the .ext "
        "estimates.  Prints what was translated and, by control-stream line, what was not; by default a "
        "control stream with untranslatable lines is refused (exit status 1) and nothing is written.",
        epilog="examples:\n  bayesnlme import-nonmem run1.mod --out run1.toml\n"
               "  bayesnlme import-nonmem run1.mod --out run1.toml --priors estimates --ext run1.ext\n"
               "  bayesnlme import-nonmem run1.mod --out run1.toml --data-out run1_bayesnlme.csv\n"
               "  bayesnlme fit --model run1.toml --data run1_bayesnlme.csv --out fits/run1",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("control_stream", help="NONMEM control stream (.mod, .ctl)")
    p.add_argument("--out", required=True, help="TOML spec file to write")
    p.add_argument("--priors", choices=["weak", "estimates"], default="weak",
                   help="weak: centred on the initial values; estimates: on the .ext final estimates, "
                   "widths from their standard errors (default: %(default)s)")
    p.add_argument("--ext", help="the run's .ext file, or its .lst listing (default: the control stream's name "
                   "with .ext, else .lst)")
    p.add_argument("--data", help="the data file, if not where $DATA says")
    p.add_argument("--data-out", help="also write the data as bayesnlme reads it (IGNORE applied, columns "
                   "renamed, derived 0/1 columns added) to this CSV")
    p.add_argument("--allow-untranslated", action="store_true",
                   help="write the spec even if some lines do not translate (they are listed at its top)")


def _add_covsearch(subparsers) -> None:
    """Register ``bayesnlme covsearch``."""
    p = subparsers.add_parser(
        "covsearch", help="covariate model building: ETA screening, forward inclusion, backward elimination",
        description="Fit the base MODEL, screen the candidate relations on its ETAs, then add the best "
        "candidate while one passes the rule and remove included ones that fail it, judged by the "
        "integrated subject-level ELPD (each step's fits in parallel on Dask). Writes OUT/steps.csv "
        "(step, direction, candidate, screen_p, elpd_diff, dse, z, p_effect, decision), "
        "OUT/final_model.toml, OUT/covariate_forest.png/.csv, OUT/full_model.csv (every candidate at once under "
        "a regularised horseshoe) and OUT/covsearch.txt, with every fit in "
        "OUT/stepNN_<direction>/tasks/<candidate>/fit.nc; a rerun resumes.",
        epilog="examples:\n  bayesnlme covsearch base.toml --data pheno.csv --candidates \"CL~WT:power V~WT:power "
               "V~APGR\" --out cov_pheno\n  bayesnlme covsearch pk_1cmt_oral --data study.csv --candidates "
               "\"CL~WT CL~AGE:exponential V~SEX:categorical\" --rule elpd --out cov_study\n\n"
               "candidates: PARAMETER~COVARIATE[:kind], kind power, exponential, linear or categorical "
               "(default: categorical for <= 5 integer levels, else power)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="base model: a .toml spec file or a model_library entry name")
    p.add_argument("--data", required=True, help="NONMEM-format CSV file with the covariate columns")
    p.add_argument("--candidates", required=True, help="candidate relations, comma- or space-separated")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--rule", choices=("effect", "elpd"), default="effect",
                   help="effect: include when ELPD improves and the effect's p_effect < alpha; elpd: include "
                   "when elpd_diff > 2 dse (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=0.01, help="p_effect threshold of the effect rule "
                   "(default: %(default)s)")
    p.add_argument("--screen-p", type=float, default=0.2, help="ETA screening p-value threshold; 1 to fit "
                   "every candidate (default: %(default)s)")
    p.add_argument("--no-full-model", action="store_true", help="skip the full model with every candidate under "
                   "a regularised horseshoe prior (OUT/full_model.csv)")
    p.add_argument("--chains", type=int, default=4, help="chains per fit (default: %(default)s)")
    p.add_argument("--draws", type=int, default=500, help="draws per chain (default: %(default)s)")
    p.add_argument("--tune", type=int, default=500, help="warm-up draws per chain (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="run seed (default: %(default)s)")
    _add_runner_options(p)


def _replicates(text: str) -> int:
    """``--n`` of ``bayesnlme trial``: a whole number >= 2."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 2:
        raise argparse.ArgumentTypeError(f"expected a whole number of replicates >= 2, got {text!r}")
    return n


def _dropout(text: str) -> float:
    """``--dropout``: a probability in [0, 1)."""
    try:
        p = float(text)
    except ValueError:
        p = -1.0
    if not 0 <= p < 1:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text!r}")
    return p


TRIAL_RULES = """rules: the same keys on the command line (--rule KEY=VALUE ..., one pair per word: quote a pair with a
space) or in a TOML file (--rule-file, read as data):
  kind=interval      parameter, ci (0.9), lower, upper, scale: relative (default: over its posterior median),
                     exp, truth or natural; success when the ci CrI lies within [lower, upper]
  kind=probability   parameter, threshold (0), above (true), level (0.95); success when P(parameter > threshold)
                     >= level
  kind=attainment    target ("CTROUGH >10", "AUC24 400-600", "CMAX <40"), dose, ii, level (0.9), criterion:
                     mean (default) or lower, ci (0.9), duration (0), cmt (0), n_subjects (100), n_draws (100);
                     success when the steady-state probability of target attainment at the regimen, from the
                     replicate's posterior (new subjects from the design's population), reaches level: its
                     posterior mean, or with criterion=lower the lower end of its ci CrI

a rule file:
  kind = "attainment"
  target = "CTROUGH >10"        # or { metric = "CTROUGH", above = 10 }
  dose = 400
  ii = 12
  level = 0.9
"""


def _add_trial(subparsers) -> None:
    """Register ``bayesnlme trial``."""
    p = subparsers.add_parser(
        "trial", help="replicate trial simulation: probability that a proposed study meets a decision rule",
        description="Simulate N replicate studies of DESIGN from the fit in FIT_DIR (each from its own posterior "
        "draw, with new subjects and optional dropout), analyse each by NUTS or MAP + Laplace, apply the decision "
        "rule to its posterior, and print the probability of success with its Monte Carlo SE. Replicates are "
        "independent tasks on Dask: OUT/manifest.json and OUT/tasks/<replicate>/ (its data.csv and result.json) "
        "are written as each finishes (a rerun resumes), then OUT/replicates.csv (per replicate: truth, estimate, "
        "lower, upper and/or probability, success, subjects and observations after dropout, censored observations, "
        "divergences) and OUT/trial.txt.",
        epilog="examples:\n"
               "  bayesnlme trial fits/theo --design design.csv --n 200 --out trial_cl \\\n"
               "      --rule kind=interval parameter=CL ci=0.95 lower=0.6 upper=1.4\n"
               "  bayesnlme trial fits/vanco --design design.csv --n 200 --covariates resample --out trial_pta \\\n"
               "      --rule kind=attainment \"target=CTROUGH >10\" dose=1000 ii=12 level=0.9\n"
               "  bayesnlme trial fits/theo --design design.csv --n 500 --rule-file rule.toml --analysis map \\\n"
               "      --scheduler tcp://head:8786 --out trial_big\n\n" + TRIAL_RULES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="FIT_DIR", help="fit folder (containing fit.nc): the model the replicates are "
                   "simulated from")
    p.add_argument("--design", required=True, help="the proposed study: NONMEM-format CSV with doses, sampling "
                   "times and covariates of every subject (DV ignored)")
    p.add_argument("--out", required=True, help="run folder")
    rule = p.add_mutually_exclusive_group(required=True)
    rule.add_argument("--rule", nargs="+", metavar="KEY=VALUE", help="the decision rule as keys (see below)")
    rule.add_argument("--rule-file", metavar="RULE.toml", help="the decision rule as a TOML file of the same keys")
    p.add_argument("--n", type=_replicates, default=200, help="replicate studies (default: %(default)s)")
    p.add_argument("--analysis", choices=("nuts", "map"), default="nuts",
                   help="how each replicate is analysed: nuts, or map (posterior mode + Laplace: faster per fit, "
                   "wider intervals) (default: %(default)s)")
    p.add_argument("--analysis-model", help="analyse the replicates with this model (a .toml spec or library "
                   "entry) instead of the fit's")
    p.add_argument("--dropout", type=_dropout, default=0.0, help="probability that a subject drops out before the "
                   "last sampling time (exponential dropout times) (default: %(default)s)")
    p.add_argument("--lloq", type=float, help="censor simulated DV below this LLOQ (DV units; CENS=1) and analyse "
                   "each replicate with the M3 likelihood; default: the limits of the design's CENS=1 records, if any")
    p.add_argument("--covariates", help="'resample': every replicate draws its subjects' covariates from the fitted "
                   "subjects; or a CSV covariate table to draw rows from (matched by ID if it has an ID column) "
                   "(default: the design's own covariates in every replicate)")
    p.add_argument("--chains", type=int, default=2, help="chains per analysis (default: %(default)s)")
    p.add_argument("--draws", type=int, default=500, help="draws per chain (default: %(default)s)")
    p.add_argument("--tune", type=int, default=500, help="warm-up draws per chain (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="run seed (default: %(default)s)")
    _add_runner_options(p)
