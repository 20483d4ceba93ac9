"""Fuzzing: every generated input either works or raises the project's input error naming where.

Targets: the NONMEM data reader (mutations of the theophylline file: cell edits with odd values, dropped,
duplicated and renamed columns and rows, truncation, other separators, stray bytes, scaled columns),
the spec parser (mutations of library specs: values of wrong types and ranges, unknown and missing
keys) and the regimen file reader (random TOML documents).  Properties:

* the only exception is :class:`~bayesnlme.errors.BayesNLMEInputError`, and its message names the file
  (data, regimens) or the spec source, and a row, column, parameter or key where one applies;
* accepted data hold only finite numbers where the model reads them (DV, TIME, doses, covariates), so an
  accepted file cannot make the log-density non-finite through a value the reader let through.

``make test`` runs a short deterministic run (``BAYESNLME_FUZZ_EXAMPLES``, default 60 per target, derandomised);
``make fuzz`` runs 10,000 cases per target with random seeds and prints hypothesis' statistics
(docs/reliability.md).
"""

import copy
import math
import os
import tomllib

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayesnlme.data import read_nonmem
from bayesnlme.datasets import dataset_path
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.regimens import load_regimens
from bayesnlme.spec import ModelSpec, library_names, load_spec

EXAMPLES = int(os.environ.get("BAYESNLME_FUZZ_EXAMPLES", "60"))
LONG = EXAMPLES > 1000
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not LONG, database=None,
                suppress_health_check=list(HealthCheck))

THEO_TEXT = dataset_path("theophylline").read_text()
THEO_ROWS = THEO_TEXT.splitlines()
WEIRD = st.sampled_from(["", ".", "NA", "nan", "inf", "-inf", "1e308", "-1e308", "1e-320", "0", "-0", "-1",
                         "1e999", "abc", "1,5", " 3 ", "2.5.1", "\u00e9", "\x00", "TRUE", "0x10", "1_000",
                         "--5", "+7", "3e", "NaN", "Infinity", "-Infinity", "1/2", "'4'", '"5"'])
CELL = st.one_of(WEIRD, st.floats(allow_nan=True, allow_infinity=True).map(repr),
                 st.integers(-10**20, 10**20).map(str), st.text(max_size=6))


@st.composite
def mutated_data(draw):
    """The theophylline file with 1-4 mutations, as bytes."""
    header, rows = THEO_ROWS[0].split(","), [r.split(",") for r in THEO_ROWS[1:]]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["cell", "cell", "cell", "drop_col", "dup_col", "rename_col", "drop_row",
                                     "dup_row", "swap_rows", "scale_col", "empty_col"]))
        n_col = len(header)
        if not rows or not n_col:
            break
        if kind == "cell":
            r, c = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, n_col - 1))
            if c < len(rows[r]):
                rows[r][c] = draw(CELL).replace(",", ";").replace("\n", " ").replace("\r", " ")
        elif kind == "drop_col" and n_col > 1:
            c = draw(st.integers(0, n_col - 1))
            header.pop(c)
            for row in rows:
                if c < len(row):
                    row.pop(c)
        elif kind == "dup_col":
            c = draw(st.integers(0, n_col - 1))
            header.append(header[c])
            for row in rows:
                row.append(row[c] if c < len(row) else "")
        elif kind == "rename_col":
            header[draw(st.integers(0, n_col - 1))] = draw(st.sampled_from(
                ["id", "Time", "DV ", "EVID", "XYZ", "", "AMT", "CENS", "DVID", "OCC", "SS", "II", "ADDL", "RATE"]))
        elif kind == "drop_row":
            rows.pop(draw(st.integers(0, len(rows) - 1)))
        elif kind == "dup_row":
            r = draw(st.integers(0, len(rows) - 1))
            rows.insert(draw(st.integers(0, len(rows))), list(rows[r]))
        elif kind == "swap_rows" and len(rows) > 1:
            a, b = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, len(rows) - 1))
            rows[a], rows[b] = rows[b], rows[a]
        elif kind == "scale_col":
            c = draw(st.integers(0, n_col - 1))
            factor = draw(st.sampled_from([-1.0, 0.0, 1e-300, 1e300, 1000.0]))
            for row in rows:
                try:
                    row[c] = repr(float(row[c]) * factor)
                except (ValueError, IndexError):
                    pass
        elif kind == "empty_col":
            c = draw(st.integers(0, n_col - 1))
            for row in rows:
                if c < len(row):
                    row[c] = ""
    sep = draw(st.sampled_from([",", ",", ",", ";", "\t", " "]))
    text = "\n".join(sep.join(r) for r in [header] + rows) + "\n"
    data = text.encode(draw(st.sampled_from(["utf-8", "utf-8", "latin-1", "utf-16"])), errors="replace")
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]   # truncated file
    if draw(st.integers(0, 9)) == 0:
        pos = draw(st.integers(0, len(data)))
        data = data[:pos] + draw(st.binary(min_size=1, max_size=4)) + data[pos:]   # stray bytes
    return data


@FUZZ
@given(content=mutated_data())
def test_fuzz_data_reader(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fuzz") / "mutated.csv"
    path.write_bytes(content)
    try:
        data = read_nonmem(path)
    except BayesNLMEInputError as exc:
        assert str(exc).startswith("mutated.csv") or "mutated.csv" in str(exc), str(exc)
        return
    # accepted: what the model reads is finite
    assert np.isfinite(data.obs_dv).all() and np.isfinite(data.obs_time).all()
    for name in ("dose_time", "dose_amt", "dose_rate"):
        assert np.isfinite(getattr(data, name)[data.dose_valid]).all(), name
    for c in data.covariate_names:
        col = data.frame[c]
        if pd.api.types.is_numeric_dtype(col):
            assert not np.isinf(col.to_numpy(float)).any(), c


SPECS = [load_spec(n).to_dict() for n in library_names()]
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=8), st.sampled_from(["lognormal", "halfnormal", "normal", "combined",
                                                         "additive", "1cmt_oral", "CL", "m3", "power"]),
                   st.lists(st.integers(0, 3), max_size=3),
                   st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


def _paths(d, prefix=()):
    out = [prefix] if prefix else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def mutated_specs(draw):
    d = copy.deepcopy(draw(st.sampled_from(SPECS)))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(d)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = d
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["set", "set", "delete", "add"]))
        if action == "set":
            parent[path[-1]] = draw(VALUES)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "prior", "omega", "fixed", "iiv", "blq", "type"]))] = draw(VALUES)
    return d


@FUZZ
@given(d=mutated_specs())
def test_fuzz_spec_parser(d):
    try:
        ModelSpec.from_dict(d, source="fuzz.toml")
    except BayesNLMEInputError as exc:
        assert str(exc).startswith("fuzz.toml"), str(exc)
        assert "malformed spec" not in str(exc), f"a check should name the key: {exc}\n{d}"


TOML_VALUES = st.one_of(st.integers(-3, 1000), st.floats(-10, 1e6, allow_nan=False), st.text(max_size=5),
                        st.booleans(), st.lists(st.integers(-2, 500), max_size=4),
                        st.lists(st.floats(-1, 500, allow_nan=False), max_size=3))
REGIMEN_KEYS = st.sampled_from(["doses", "intervals", "duration", "cmt", "n_subjects", "n_doses", "n_draws",
                                "seed", "grid_points", "credible_interval", "targets", "bands", "covariates",
                                "unknown"])


def _toml(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "nan"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


@st.composite
def regimen_texts(draw):
    lines = ["doses = [100]", "intervals = [12]"] if draw(st.booleans()) else []
    for key, value in draw(st.dictionaries(REGIMEN_KEYS, TOML_VALUES, max_size=5)).items():
        lines.append(f"{key} = {_toml(value)}")
    if draw(st.booleans()):
        lines += ["[[targets]]", f"metric = {_toml(draw(st.sampled_from(['CTROUGH', 'AUC', 'CMAX', 'X'])))}"]
        lines += [f"{k} = {_toml(draw(TOML_VALUES))}" for k in draw(st.lists(st.sampled_from(
            ["above", "below", "between", "metric", "x"]), max_size=2, unique=True))]
    if draw(st.integers(0, 4)) == 0:
        lines.append(draw(st.text(max_size=10)))   # not TOML at all
    return "\n".join(lines) + "\n"


@FUZZ
@given(text=regimen_texts())
def test_fuzz_regimen_file(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "regimens.toml"
    path.write_text(text, encoding="utf-8", errors="replace")
    try:
        out = load_regimens(path)
    except BayesNLMEInputError as exc:
        assert str(exc).startswith(str(path)), str(exc)
        return
    assert out["doses"] and all(x > 0 for x in out["doses"]) and all(x > 0 for x in out["intervals"])
    tomllib.loads(text)   # it was valid TOML
