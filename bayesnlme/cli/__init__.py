"""The ``bayesnlme`` command line.

Exit status: 0 success, 1 bad input (a one-line message naming the file, row,
column or parameter), 2 internal error (a bug: run again with ``--debug`` for
the traceback).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from bayesnlme.atomic import output_lock, private_temporary_folder
from bayesnlme.cli.parsers import individualize_out, parser
from bayesnlme.errors import BayesNLMEInputError, ConvergenceWarning

# command -> (module of bayesnlme.cli, function)
COMMANDS = {"fit": ("fit", "run_fit"), "diagnose": ("diagnose", "run_diagnose"), "library": ("fit", "run_library"),
            "compare": ("compare", "run"), "vpc": ("vpc", "run"), "simulate": ("simulate", "run"),
            "prior-check": ("prior_check", "run"), "eda": ("report", "run_eda"), "report": ("report", "run"),
            "sbc": ("sbc", "run"), "covsearch": ("covsearch", "run"), "individualize": ("individualize", "run"),
            "import-nonmem": ("importers", "run_import_nonmem"), "trial": ("trial", "run")}


def _dispatch(args, own_process: bool = False) -> int:
    module, function = COMMANDS[args.command]
    # a command's module imports PyMC (seconds); load it only when that command runs, so that
    # `bayesnlme --help` and usage errors answer at once
    command = getattr(importlib.import_module(f"bayesnlme.cli.{module}"), function)
    if own_process:
        # the ~300,000 objects made by the imports live until the process ends: frozen, the cyclic
        # garbage collector stops walking them at each full collection (~0.5 s of a theophylline fit)
        gc.freeze()
    return command(args)


def _output_folder(args) -> Path | None:
    """The folder a command writes into (locked while it runs), or None for commands that write nothing."""
    if args.command in ("fit", "eda", "prior-check", "sbc", "covsearch", "trial"):
        return Path(args.out)
    if args.command in ("diagnose", "vpc"):
        return Path(args.dir)
    if args.command == "individualize":
        return individualize_out(args)
    if args.command == "simulate":
        return Path(args.out) if args.out else Path(args.dir)
    if args.command in ("report", "compare", "import-nonmem"):
        return Path(args.out).parent
    return None


def main(argv=None, *, own_process: bool = False) -> int:
    """Run one ``bayesnlme`` command (``argv``: its arguments, default ``sys.argv[1:]``); returns the exit
    status.  ``own_process``: the process ends when this returns (the console script, :func:`entry`)."""
    args = parser().parse_args(argv)
    warnings.simplefilter("ignore", ConvergenceWarning)  # printed in plain words after the summary
    try:
        folder = _output_folder(args)
        with output_lock(folder) if folder is not None else contextlib.nullcontext():
            return _dispatch(args, own_process)
    except BayesNLMEInputError as exc:
        if args.debug:
            raise
        print(f"bayesnlme: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bayesnlme: interrupted; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:   # output piped into e.g. `head`, which closed it: not an error
        # Python would complain again when flushing stdout at exit; point it at /dev/null
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - anything else is a bug; say so in one line
        if args.debug:
            raise
        print(f"bayesnlme: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return 2


def entry() -> None:
    """The ``bayesnlme`` console script (and ``python -m bayesnlme.cli``): :func:`main`, then exit with its status.

    Everything left is frozen before exiting, so that Python's last garbage collection at shutdown does not
    walk the graphs and modules of the run (~1 s after a fit; nothing of the run is still unwritten by
    then: every output file was written and renamed into place, and exit handlers still run).
    """
    with _private_temporary_folder():
        status = main(own_process=True)
    gc.freeze()
    sys.exit(status)


@contextlib.contextmanager
def _private_temporary_folder():
    """Temporary files of the command (and of the Dask workers it starts) in a folder of its own, removed
    when the command ends.

    PyTensor's numba backend writes the source of each function it builds into a temporary file it never
    deletes (``NamedTemporaryFile(delete=False)``): ~60 files a fit, cached or not, which would pile up in
    the system's temporary folder.  Only the console script does this (it owns its process); the
    command's outputs are written beside their destinations, never here.
    """
    folder = private_temporary_folder()
    before = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir, os.environ["TMPDIR"] = folder, folder
    try:
        yield
    finally:
        tempfile.tempdir = before[0]
        if before[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = before[1]
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    entry()
