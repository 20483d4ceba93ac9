"""Seconds per test file from a JUnit XML report, written as ``tests/file_durations.json``.

The suite runs one test file per worker process (``make test``: ``--dist loadfile``); xdist hands
files out in collection order, and ``tests/conftest.py`` orders the collection longest file first
from this table (longest-processing-time-first: the last file to finish is a short one).  Refresh it
from a fresh-clone run when files are added or grow::

    PYTEST_ADDOPTS="--junitxml=/tmp/junit.xml" make test
    .venv/bin/python .ci/file_durations.py /tmp/junit.xml > tests/file_durations.json

A test's time in the report includes its setup (a module-scoped fit counts in its file's first test).
"""

import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_file(classname: str) -> str | None:
    """``tests.test_fit.TestX`` -> ``tests/test_fit.py`` (the longest prefix that is a file)."""
    parts = classname.split(".")
    for k in range(len(parts), 0, -1):
        path = "/".join(parts[:k]) + ".py"
        if (ROOT / path).is_file():
            return path
    return None


def main(report: str) -> None:
    seconds = defaultdict(float)
    for case in ET.parse(report).getroot().iter("testcase"):
        path = module_file(case.get("classname", ""))
        if path is None:
            raise SystemExit(f"{report}: no test file for classname {case.get('classname')!r}")
        seconds[path] += float(case.get("time", 0.0))
    table = {path: round(s, 1) for path, s in sorted(seconds.items(), key=lambda kv: -kv[1])}
    json.dump(table, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: file_durations.py JUNIT_XML > tests/file_durations.json")
    main(sys.argv[1])
