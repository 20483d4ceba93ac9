"""The capability matrix (tests/capability_matrix.py): every library model through every capability.

``make test`` runs one cell (a PK model with 25% BLQ records) and
checks that ``docs/capabilities.md`` covers every library entry with no refused cell. The whole
matrix (about 70 minutes on 2 cores) runs with ``make capabilities``, or here with
``BAYESNLME_CAPABILITIES=1``.
"""

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import capability_matrix as cm  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "capabilities.md"
FULL = os.environ.get("BAYESNLME_CAPABILITIES") == "1"


def _check(cell: dict) -> None:
    bad = {c: v for c, v in cell.items() if c in cm.CAPABILITIES and v != "ok" and not str(v).startswith("n/a")}
    assert not bad, bad


@pytest.mark.slow
@pytest.mark.validation
def test_capability_cell(tmp_path):
    """One cell end to end: a PK model with 25% BLQ records through every command."""
    _check(cm.run_cell("pk_1cmt_iv", True, tmp_path))


@pytest.mark.slow
@pytest.mark.skipif(not FULL, reason="the whole matrix: make capabilities (or BAYESNLME_CAPABILITIES=1)")
@pytest.mark.parametrize("name,blq", cm.models())
def test_capability_matrix(name, blq, tmp_path):
    _check(cm.run_cell(name, blq, tmp_path))


def test_simulated_studies_censor_a_quarter():
    data = cm.simulate_study("pk_1cmt_iv", blq=True)
    obs = data[data["EVID"] == 0]
    assert 0.2 <= obs["CENS"].mean() <= 0.3
    assert (obs.loc[obs["CENS"] == 1, "DV"] == obs.loc[obs["CENS"] == 1, "DV"].iloc[0]).all()   # at the LLOQ


def test_capabilities_doc_covers_every_library_model_without_refusals():
    text = DOC.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    seen = {(r.split("|")[1].strip(), r.split("|")[2].strip() == "25%") for r in rows}
    assert seen == set(cm.models()), sorted(set(cm.models()) ^ seen)
    for r in rows:
        cells = [c.strip() for c in r.split("|")[3:3 + len(cm.CAPABILITIES)]]
        assert all(c == "ok" or c.startswith("n/a") for c in cells), r
    assert re.search(r"(\d+) of \1 cells ok", text)
