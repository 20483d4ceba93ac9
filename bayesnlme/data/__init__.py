"""What the data are: NONMEM-format event records read and validated into :class:`NMData`.

Modules: :mod:`~bayesnlme.data.reader` (:func:`read_nonmem`: parsing, validation, the column
conventions), :mod:`~bayesnlme.data.nmdata` (:class:`NMData`, the dense arrays a likelihood needs).
"""

from bayesnlme.data.nmdata import NUMERIC_COLUMNS, REQUIRED_COLUMNS, RESERVED_COLUMNS, NMData, record_columns
from bayesnlme.data.reader import MAX_ADDL, read_nonmem

__all__ = ["NMData", "read_nonmem", "record_columns", "NUMERIC_COLUMNS", "REQUIRED_COLUMNS", "RESERVED_COLUMNS",
           "MAX_ADDL"]
