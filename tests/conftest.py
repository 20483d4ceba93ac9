import warnings

import pytest

from bayesnlme.errors import ConvergenceWarning


@pytest.fixture(autouse=True)
def _quiet_convergence_warnings():
    # short test chains trip the ESS check by design; tests that care assert on result.problems
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield
