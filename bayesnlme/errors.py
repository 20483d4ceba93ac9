"""Exceptions raised for bad user input.

Everything a user can get wrong (a data file, a specification, a command-line
option) raises a subclass of :class:`BayesNLMEInputError`, whose message names
the file, row, column or parameter at fault.  The command line prints that
message on one line and exits with status 1; any other exception is a bug.
"""

from __future__ import annotations


class BayesNLMEInputError(ValueError):
    """Base class for errors caused by user input (data, spec or options)."""


class DataError(BayesNLMEInputError):
    """A NONMEM-format data set is malformed.

    Parameters
    ----------
    message : str
        What is wrong.
    source : str, optional
        File name (or ``"<DataFrame>"``) the data came from.
    row : int, optional
        1-based row number as in the file (the header is row 0, the first
        data record row 1) -- the number a user sees in a spreadsheet minus one.
    column : str, optional
        Column name.
    """

    def __init__(self, message: str, *, source: str | None = None,
                 row: int | None = None, column: str | None = None):
        where = []
        if source:
            where.append(str(source))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column}")
        self.source, self.row, self.column = source, row, column
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class SpecError(BayesNLMEInputError):
    """A model specification is invalid (unknown name, impossible prior, ...)."""


class StartPointError(BayesNLMEInputError):
    """The log-density or its gradient is not finite where sampling would start (the message names why)."""


class SamplingError(BayesNLMEInputError):
    """The sampler stopped; the message says what happened and what to try, in one line."""


class ConvergenceWarning(UserWarning):
    """The sampler output shows a convergence problem (R-hat, ESS, divergences, modes)."""
