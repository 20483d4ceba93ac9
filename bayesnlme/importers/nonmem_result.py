"""What an import returns (:class:`ImportResult`), its error, and the control-stream lines of statements.

Pharmpy keeps the text of each record and, for $PK/$ERROR, which parse-tree nodes each statement came
from; the line of a statement is counted from those texts (no second parser).  Where that link is
missing the line is found with a small regular expression on the assigned name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.spec import ModelSpec


class NonmemImportError(BayesNLMEInputError):
    """The control stream cannot be imported (or, when strict, not all of it translates)."""


@dataclass(frozen=True)
class Item:
    """A control-stream line that was not translated (or left out), with the reason."""
    line: int | None
    text: str
    reason: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "(no line)"
        return f"{where} `{self.text}`: {self.reason}"


@dataclass
class ImportResult:
    """A translated control stream.

    Attributes
    ----------
    spec : ModelSpec
        The validated bayesnlme specification.
    toml : str
        The same as TOML text, with comments saying where each entry came from.
    columns : dict
        Data-file column (Pharmpy's ``$INPUT`` name, in file order) -> bayesnlme column, None if dropped.
    derived : dict
        0/1 columns the categorical effects use -> their NONMEM condition, e.g. ``{"SEXEQ1": "SEX.EQ.1"}``.
    log_dv : bool
        The data's DV is log-transformed (``Y = LOG(F) + EPS``); :attr:`data` has it exponentiated.
    data : pandas.DataFrame or None
        The ``$DATA`` file read as NONMEM reads it (IGNORE/ACCEPT applied, ``.`` read as 0), columns
        renamed, derived columns added: ready for :func:`bayesnlme.inference.fit.fit_model`.  None
        when the file cannot be read (the reason is in :attr:`notes`).
    mapped : list of str
        What was translated, one line each (``THETA(1) POP_CL -> CL typical value``).
    untranslated : list of Item
        What has no bayesnlme equivalent, by control-stream line, with the reason.
    notes : list of Item
        What was left out because it is not part of the model (guards, outputs, $ESTIMATION ...).
    dose_scale : float
        Factor on AMT (and RATE) that makes the spec's prediction (amount / V) the control stream's
        ``F``: 1000 for ``S2 = V/1000`` (dose mg, DV ng/mL).  :attr:`data` already has it applied.
    """
    spec: ModelSpec
    toml: str
    columns: dict
    derived: dict
    log_dv: bool
    data: object
    mapped: list
    untranslated: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    dose_scale: float = 1.0


def omega_records(control_stream) -> list:
    """The ``$OMEGA`` record of each ETA, in ETA order (a ``BLOCK SAME`` repeats the size of the block before)."""
    out, size = [], 0
    for rec in control_stream.get_records("OMEGA"):
        for names, _, _, same in rec.parse():
            size = size if same else len(names)
            out += [rec] * size
    return out


def _one_line(text: str) -> str:
    text = " ".join(part.split(";")[0].strip() for part in text.strip().splitlines())
    return " ".join(text.split())


class Lines:
    """Line numbers and texts of a control stream's records and $PK/$ERROR statements."""

    def __init__(self, control_stream, path: Path):
        # lines are counted in the text Pharmpy parsed (upper-cased, MIN/MAX written with ABS: the same
        # lines) and quoted from the file as written
        self.text = str(control_stream)
        self.written = path.read_text().splitlines() if path.is_file() else []
        self.starts, self.code = {}, {}
        offset = 0
        for rec in control_stream.records:
            self.starts[id(rec)] = offset
            offset += len(str(rec))
        for key, rec in (("PK", control_stream.get_pred_pk_record()), ("ERROR", control_stream.get_error_record())):
            self.code[key] = self._statements(rec) if rec is not None else []

    def _line_at(self, offset: int) -> int:
        return self.text.count("\n", 0, offset) + 1

    def _as_written(self, line: int, parsed: str) -> str:
        """The file's own text of the lines that ``parsed`` (starting at ``line``) was read from."""
        n = parsed.strip().count("\n") + 1
        if self.written and 1 <= line and line + n - 1 <= len(self.written):
            return _one_line("\n".join(self.written[line - 1:line - 1 + n]))
        return _one_line(parsed)

    def record(self, rec, reason: str) -> Item:
        """An item for a whole record: its first line."""
        start = self.starts.get(id(rec), 0)
        body = str(rec)
        first = body.strip().splitlines()[0] if body.strip() else f"${rec.name}"
        line = self._line_at(start + len(body) - len(body.lstrip())) if self.text else None
        return Item(line, self._as_written(line, first) if line else _one_line(first), reason)

    def _statements(self, rec) -> list:
        """(line, text) of each statement of a code record, in Pharmpy's statement order."""
        out = []
        base = self.starts.get(id(rec), 0) + len(rec.raw_name)
        try:   # Pharmpy's link of statements to parse-tree nodes (ni, nj, si, sj)
            children = [str(c) for c in rec.root.children]
            offsets = [0]
            for c in children:
                offsets.append(offsets[-1] + len(c))
            for ni, nj, si, sj in rec._index:
                chunk = "".join(children[ni:nj])
                lead = len(chunk) - len(chunk.lstrip())
                for _ in range(si, sj):
                    line = self._line_at(base + offsets[ni] + lead)
                    out.append((line, self._as_written(line, chunk)))
        except (AttributeError, TypeError, ValueError):
            out = []
        if len(out) != len(rec.statements):   # fall back on the assigned name
            out = [self._find(rec, s) for s in rec.statements]
        return out

    def _find(self, rec, statement) -> tuple:
        name = str(getattr(statement, "symbol", ""))
        body = str(rec)
        m = re.search(rf"^[^;\n]*\b{re.escape(name)}\s*=.*$", body, flags=re.MULTILINE) if name else None
        if m is None:
            return None, f"{name} = ..."
        line = self._line_at(self.starts.get(id(rec), 0) + m.start())
        return line, self._as_written(line, m.group(0))

    def statement(self, record: str, index: int, reason: str) -> Item:
        """An item for statement ``index`` of $PK (``record="PK"``) or $ERROR."""
        stmts = self.code.get(record, [])
        line, text = stmts[index] if 0 <= index < len(stmts) else (None, "?")
        return Item(line, text, reason)
