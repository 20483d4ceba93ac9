"""Pieces every report section uses: tables as template data, figures as base64 PNG, the record of a fit."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

#: Sub-folders of a fit folder whose PNG/CSV outputs are embedded, with their section titles.
EXTRA_SECTIONS = (("vpc", "Visual predictive check"), ("simulation", "Simulation"),
                  ("prior_check", "Prior predictive check"))
MAX_TABLE_ROWS = 60


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)


def table(df: pd.DataFrame, *, index: bool = False, max_rows: int = MAX_TABLE_ROWS, n_total=None) -> dict:
    """A DataFrame as the template's table: text cells (escaped by the template), at most ``max_rows`` rows."""
    shown = df.head(max_rows)
    rows = [(fmt(label), [fmt(v) for v in row]) for label, row in zip(shown.index, shown.itertuples(index=False))]
    total = len(df) if n_total is None else n_total
    return {"columns": [str(c) for c in df.columns], "rows": rows, "truncated": total > len(shown),
            "n_total": total, "index_name": (str(df.index.name or "") if index else None)}


def figure_base64(fig, dpi: int = 90) -> str:
    """A matplotlib figure as base64 PNG text (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def png_file(path: Path, caption: str) -> dict:
    return {"base64": base64.b64encode(path.read_bytes()).decode("ascii"), "caption": caption}


# --------------------------------------------------------------------------- EDA


def record_table(result, folder: Path) -> tuple[pd.DataFrame, str]:
    """Reproducibility record (key/value table) and the spec text stored in the fit."""
    meta = result.metadata
    rows = [("fit folder", str(folder)), ("created", meta.get("created", "")),
            ("command", meta.get("command", "")), ("data file", meta.get("data_source", result.data.source)),
            ("data SHA-256", meta.get("data_sha256", result.data.sha256))]
    rows += [(f"sampler setting: {k}", v) for k, v in (meta.get("settings") or result.settings).items()]
    rows += [(f"version: {k}", v) for k, v in (meta.get("versions") or {}).items()]
    df = pd.DataFrame([(k, v) for k, v in rows if v not in ("", None)], columns=["item", "value"])
    return df, json.dumps(result.spec.to_dict(), indent=2, default=str)
