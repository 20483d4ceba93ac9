import warnings

import pytest

from bayesnlme.errors import ConvergenceWarning


@pytest.fixture(autouse=True)
def _quiet_convergence_warnings():
    # short test chains trip the ESS check by design; tests that care assert on result.problems
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


# The heaviest test files first (measured: their summed test time, heaviest first).  `make test` runs whole
# files on two workers (pytest-xdist --dist loadfile), which take files in collection order; starting the
# long ones first keeps both workers busy to the end instead of leaving one alone with a late heavy file.
HEAVY_FIRST = ("test_case_studies.py", "test_covsearch.py", "test_trial.py", "test_sbc.py", "test_engines.py",
               "test_ode.py", "test_mixture.py", "test_population.py", "test_reproducible.py", "test_fit.py",
               "test_faults.py", "test_likelihood.py", "test_compare.py", "test_structural_3cmt_ss.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: a file's own order is kept
