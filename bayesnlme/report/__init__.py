"""Self-contained HTML reports of fits, and the exploratory-analysis folder.

:func:`render_report` turns one or more fit folders (``DIR/fit.nc`` plus
whatever ``bayesnlme diagnose``, ``vpc``, ``simulate`` and ``prior-check``
wrote next to it) into one HTML file: images are embedded as base64 PNG, there
are no scripts and no external requests.  A section appears only when its
content exists.  Templates are jinja2 with autoescaping, so every user-supplied
string (IDs, column names, file names, spec text) is shown as text.

:func:`write_eda` writes the tables and figures of :mod:`bayesnlme.eda` into a
folder with an ``index.html``.
"""

from __future__ import annotations

import base64
import datetime as _dt
from pathlib import Path

import numpy as np
import pandas as pd

from bayesnlme import __version__, eda
from bayesnlme.atomic import write_atomic, write_text_atomic
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.evaluate.compare import compare, describe_comparison
from bayesnlme.inference import FitResult
from bayesnlme.report.fit_section import fit_section
from bayesnlme.report.html import figure_base64, table


def _env():
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("bayesnlme.report", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


def eda_figures(data) -> list[tuple[str, str, object, pd.DataFrame]]:
    """The standard exploratory figures as ``(file stem, caption, fig, table)``.

    Figures with nothing to show (no categorical covariate, one dose amount) are left out.
    """

    data = eda._data(data)
    kinds = eda.covariate_kinds(data)
    out = [("spaghetti", "DV versus time, one line per subject", *eda.plot_spaghetti(data)),
           ("spaghetti_log", "DV versus time, log scale", *eda.plot_spaghetti(data, log=True))]
    n_amounts = len(np.unique(np.round(data.dose_amt[data.dose_valid], 6)))
    if n_amounts > 1:
        out.append(("spaghetti_dose_normalised", "DV divided by the latest dose, log scale",
                    *eda.plot_spaghetti(data, log=True, dose_normalised=True)))
    if 1 < n_amounts <= 2 * eda.MAX_CATEGORIES:   # dose groups (a weight-based dose gives one per subject)
        out.append(("spaghetti_by_dose", "DV versus time by first dose amount",
                    *eda.plot_spaghetti(data, log=True, by="dose")))
    by = next((c for c, k in kinds.items() if k == "categorical"), next(iter(kinds), None))
    if by is not None:
        out.append((f"spaghetti_by_{by}", f"DV versus time coloured by {by}",
                    *eda.plot_spaghetti(data, log=True, by=by)))
    out += [("covariate_boxplots", "Continuous covariates by categorical covariates",
             *eda.plot_covariate_boxplots(data)),
            ("covariate_scatter", "Scatter matrix of baseline covariates", *eda.plot_covariate_scatter(data)),
            ("covariate_correlation", "Correlation of baseline covariates (Pearson r)",
             *eda.plot_covariate_correlation(data)),
            ("outlier_plot", "Flagged observations (red circles), log scale", *eda.plot_outliers(data))]
    return [o for o in out if o[2] is not None]


def _write_html(path: Path, html: str) -> Path:
    def write(tmp):
        Path(tmp).write_text(html, encoding="utf-8")
        Path(tmp).chmod(0o644)   # a report is for sharing; mkstemp files start private

    return write_atomic(path, write)


def _safe_stem(stem: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)


def write_eda(data, out) -> list[Path]:
    """Write the exploratory tables (CSV), figures (PNG) and ``index.html`` into folder ``out``.

    Returns
    -------
    list of pathlib.Path
        The files written.
    """

    data = eda._data(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables = {"data_summary.csv": eda.data_summary(data), "covariate_summary.csv": eda.covariate_summary(data),
              "outliers.csv": eda.outlier_table(data)}
    written = []
    for name, df in tables.items():
        written.append(write_text_atomic(out / name, df.to_csv(index=False)))
    figures = []
    for stem, caption, fig, df in eda_figures(data):
        stem = _safe_stem(stem)
        written.append(write_text_atomic(out / f"{stem}.csv", df.to_csv(index=df.index.name is not None)))
        png = base64.b64decode(figure_base64(fig, dpi=100))
        written.append(write_atomic(out / f"{stem}.png", lambda tmp, b=png: Path(tmp).write_bytes(b)))
        figures.append({"file": f"{stem}.png", "table": f"{stem}.csv", "caption": caption})
    html = _env().get_template("eda_index.html.j2").render(
        source=data.source, summary=table(tables["data_summary.csv"]),
        covariates=table(tables["covariate_summary.csv"]) if len(tables["covariate_summary.csv"]) else None,
        outliers=table(tables["outliers.csv"]), figures=figures, files=sorted(p.name for p in written))
    written.append(_write_html(out / "index.html", html))
    return [Path(p) for p in written]


def _data_section(data) -> dict:

    cov = eda.covariate_summary(data)
    return {"summary": table(eda.data_summary(data)), "covariates": table(cov) if len(cov) else None,
            "outliers": table(eda.outlier_table(data)),
            "figures": [{"base64": figure_base64(fig), "caption": caption} for _, caption, fig, _ in eda_figures(data)]}


def render_report(dirs, out, *, command: str | None = None, npde_sims: int = 200, seed: int = 0) -> Path:
    """Write one self-contained HTML report of the fits in ``dirs``.

    Parameters
    ----------
    dirs : list of path
        Fit folders (each with ``fit.nc``); several give a comparison table.
    out : path
        The HTML file to write (atomically).
    command : str, optional
        The command line, recorded in the report.
    npde_sims, seed : int
        Simulations for NPDE when the report computes goodness-of-fit itself
        (only when ``DIR/diagnostics`` has no plots).

    Returns
    -------
    pathlib.Path
    """

    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise BayesNLMEInputError("report needs at least one fit folder")
    results = [FitResult.load(d / "fit.nc" if d.is_dir() else d) for d in dirs]
    fits = [fit_section(r, d if d.is_dir() else d.parent, npde_sims=npde_sims, seed=seed)
            for r, d in zip(results, dirs)]
    context = {"title": " vs ".join(f["name"] for f in fits), "fits": fits, "command": command,
               "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "version": __version__, "data": _data_section(results[0].data),
               "comparison": _comparison(results, fits) if len(results) > 1 else None}
    html = _env().get_template("report.html.j2").render(**context)
    return _write_html(Path(out), html)


def _comparison(results, fits) -> dict:

    named = {}
    for r, f in zip(results, fits):
        key, i = f["name"], 2
        while key in named:
            key, i = f"{f['name']}_{i}", i + 1
        named[key] = r
    try:
        df = compare(named, level="subject")
    except BayesNLMEInputError as exc:   # e.g. fits to different data: say why there is no ranking
        return {"text": f"No comparison: {exc}", "table": None}
    return {"text": describe_comparison(df), "table": table(df, index=True)}
