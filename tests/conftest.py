import json
import statistics
import warnings
from pathlib import Path

import pytest

from bayesnlme.errors import ConvergenceWarning

#: Seconds per test file on a fresh clone (``.ci/file_durations.py`` makes it from a JUnit report).
_DURATIONS = Path(__file__).with_name("file_durations.json")


def pytest_collection_modifyitems(session, config, items):
    """Longest test file first.  ``make test`` hands whole files to two worker processes in collection
    order (``--dist loadfile --no-loadscope-reorder``); longest first, the last file to finish is a short
    one and neither worker idles while the other runs a long file.  Files not in the table (new ones) take
    the median; the order of tests within a file is unchanged (a stable sort)."""
    if not _DURATIONS.is_file():
        return
    seconds = json.loads(_DURATIONS.read_text())
    default = statistics.median(seconds.values()) if seconds else 0.0
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::")[0], default))


@pytest.fixture(autouse=True)
def _quiet_convergence_warnings():
    # short test chains trip the ESS check by design; tests that care assert on result.problems
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield
