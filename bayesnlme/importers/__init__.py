"""Models written for other software, translated into bayesnlme specifications.

:func:`import_nonmem` reads a NONMEM control stream (with Pharmpy, an optional dependency:
``pip install 'bayesnlme[nonmem]'``) and returns an :class:`ImportResult`: the validated
:class:`~bayesnlme.spec.ModelSpec`, its TOML text, the data column mapping, the data read as NONMEM
reads it, and every line that does not translate.  Modules: :mod:`~bayesnlme.importers.nonmem` (the
entry point), ``nonmem_pk`` ($PK), ``nonmem_error`` ($ERROR), ``nonmem_priors`` (priors, ``.ext``),
``nonmem_data`` ($DATA/$INPUT), ``nonmem_build``/``nonmem_assemble`` (the translation steps),
``nonmem_result`` (the result and control-stream lines); the TOML writer is :mod:`bayesnlme.spec.toml_text`.
"""

from bayesnlme.importers.nonmem import import_nonmem
from bayesnlme.importers.nonmem_priors import read_ext
from bayesnlme.importers.nonmem_result import ImportResult, Item, NonmemImportError

__all__ = ["import_nonmem", "ImportResult", "Item", "NonmemImportError", "read_ext"]
