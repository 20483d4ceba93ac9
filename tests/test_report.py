"""HTML report: sections present/absent, numbers, escaping, self-containment, headless-Chromium rendering, CLI."""

import hashlib
import html as html_lib
import json
import os
import re
import shutil
import subprocess

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from bayesnlme import report
from bayesnlme.cli import main
from bayesnlme.datasets import dataset_path
from bayesnlme.errors import BayesNLMEInputError
from bayesnlme.inference.fit import fit_model
from bayesnlme.spec import load_spec

HOSTILE_ID = '<script>alert("id")</script>'
HOSTILE_COLUMN = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    """Theophylline with a script-tag ID, an HTML column name and file name; a short 2-chain fit saved three
    times: fit_a bare (the report computes GOF), fit_b and fit_c with (hand-made, to save time) diagnostics
    plots, fit_b also with a vpc/ folder."""
    root = tmp_path_factory.mktemp("report")
    df = pd.read_csv(dataset_path("theophylline"))
    df["ID"] = df["ID"].astype(str).replace({"1": HOSTILE_ID})
    df[HOSTILE_COLUMN] = 1.0
    src = root / "theo<b>.csv"
    df.to_csv(src, index=False)
    result = fit_model(load_spec("pk_1cmt_oral"), src, chains=2, draws=100, tune=150, seed=3, progress=False)
    result.metadata["command"] = "bayesnlme fit <test>"
    one, two, three = root / "fit_a", root / "fit_b", root / "fit_c"
    for d in (one, two, three):
        d.mkdir()
        result.save(d / "fit.nc")
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    for png in (two / "vpc" / "vpc.png", two / "diagnostics" / "gof_qq.png", three / "diagnostics" / "gof_qq.png"):
        png.parent.mkdir(exist_ok=True)
        fig.savefig(png)
    plt.close(fig)
    pd.DataFrame({"BIN": [1, 2], "STATISTIC": ["P50", "P50"]}).to_csv(two / "vpc" / "vpc.csv", index=False)
    single = root / "single.html"
    assert main(["report", str(one), "--out", str(single), "--npde-sims", "20"]) == 0
    both = report.render_report([two, three], root / "both.html", npde_sims=20)
    return {"result": result, "src": src, "dirs": (one, two), "single": single.read_text(encoding="utf-8"),
            "both": both.read_text(encoding="utf-8"), "single_path": single}


def test_sections_present_and_absent(fits):
    single, both = fits["single"], fits["both"]
    for sid in ("data", "fit1-model", "fit1-assumptions", "fit1-estimates", "fit1-convergence", "fit1-gof",
                "fit1-reproducibility"):
        assert f'id="{sid}"' in single
    assert 'id="comparison"' not in single and 'id="fit1-vpc"' not in single and "placeholder" not in single.lower()
    assert 'id="comparison"' in both and 'id="fit1-vpc"' in both and 'id="fit2-vpc"' not in both
    assert both.count('id="fit1-gof"') == both.count('id="fit2-gof"') == 1 and "Computed for this report" not in both
    assert "ELPD" in both                       # describe_comparison's sentence
    assert "TVCL_i = THETA_CL" in single and "CL_i = TVCL_i · exp(ETA_CL,i)" in single
    assert "ETA_KA,i ~ Normal(0, omega_KA²)" in single


def test_estimates_and_record_match_the_fit(fits):
    result, single = fits["result"], fits["single"]
    s = result.summary()
    for name in ("CL", "V", "KA", "omega_CL"):
        row = re.search(rf"<tr><th>{name}</th>(.*?)</tr>", single).group(1)
        cells = re.findall(r"<td>(.*?)</td>", row)
        assert cells[:3] == [f"{s.loc[name, q]:.4g}" for q in ("q50", "q5", "q95")]
    cv = re.findall(r"<td>(.*?)</td>", re.search(r"<tr><th>omega_CL</th>(.*?)</tr>", single).group(1))[4]
    assert float(cv) == pytest.approx(s.loc["omega_CL", "cv_percent"], rel=1e-3)
    from bayesnlme.evaluate.diagnostics import shrinkage

    cells = re.findall(r"<td>(.*?)</td>", re.search(r"<tr><th>omega_V</th>(.*?)</tr>", single).group(1))
    assert float(cells[7]) == pytest.approx(100 * shrinkage(result)["V"], rel=1e-3)
    digest = hashlib.sha256(fits["src"].read_bytes()).hexdigest()
    assert digest in single and "seed" in single and "nutpie" in single.lower() and "pymc" in single


def test_user_strings_are_escaped(fits):
    for text in (fits["single"], fits["both"]):
        assert "<script" not in text.lower() and "<img src=x" not in text
        assert html_lib.escape(HOSTILE_COLUMN) in text          # column name shown as text (covariates)
        assert "theo&lt;b&gt;.csv" in text and "&lt;test&gt;" in text
    assert "&lt;script&gt;alert(" in fits["single"] and HOSTILE_ID in html_lib.unescape(fits["single"])   # ETA table


def test_self_contained(fits):
    for text in (fits["single"], fits["both"]):
        assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text)
        assert "@import" not in text and "url(" not in text
        srcs = re.findall(r'<img src="([^"]*)"', text)
        assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    # single: EDA + 4 computed GOF plots; both: EDA + one diagnostics plot per fit + fit_b's VPC
    assert len(re.findall(r"<img ", fits["both"])) == len(re.findall(r"<img ", fits["single"])) - 4 + 3


def _chromium():
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


PROBE_HEAD = """<script>window.__errs=[];window.addEventListener('error',function(e){
window.__errs.push(String(e.message||(e.target&&(e.target.src||'').slice(0,40))||'error'))},true);
var _ce=console.error;console.error=function(){window.__errs.push([].join.call(arguments,' '));
_ce.apply(console,arguments)};</script>"""
PROBE_TAIL = """<script>window.addEventListener('load',function(){var im=[].slice.call(document.images);
var bad=im.filter(function(i){return !(i.complete&&i.naturalWidth>0)}).length;var d=document.createElement('pre');
d.id='probe';d.textContent=JSON.stringify({images:im.length,broken:bad,errors:window.__errs});
document.body.appendChild(d)});</script>"""


@pytest.mark.skipif(_chromium() is None and not os.environ.get("CI"), reason="chromium not installed (CI installs it)")
def test_renders_in_headless_chromium(fits, tmp_path):
    browser = _chromium()
    assert browser is not None, "CI must have chromium (.ci/run installs it)"
    text = fits["single"].replace("</head>", PROBE_HEAD + "</head>", 1).replace("</body>", PROBE_TAIL + "</body>", 1)
    page = tmp_path / "probe.html"
    page.write_text(text, encoding="utf-8")
    run = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
                          f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                          "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    probe = re.search(r'<pre id="probe">(.*?)</pre>', run.stdout, re.S)
    assert probe, f"no probe result; chromium said: {run.stderr[-2000:]}"
    result = json.loads(html_lib.unescape(probe.group(1)))
    assert result["images"] == len(re.findall(r"<img ", fits["single"])) > 5
    assert result["broken"] == 0 and result["errors"] == []
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []
    assert HOSTILE_ID in html_lib.unescape(run.stdout)       # the ID is text in the rendered page


def test_cli_exit_codes(fits, tmp_path, monkeypatch):
    one, _ = fits["dirs"]
    with pytest.raises(SystemExit) as exc:
        main(["report"])                                     # usage error = bad input
    assert exc.value.code == 1
    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r.html")]) == 1
    with pytest.raises(BayesNLMEInputError):
        main(["--debug", "report", str(tmp_path / "nothing")])

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr("bayesnlme.cli.report.render_report", broken)   # the name the command calls
    assert main(["report", str(one), "--out", str(tmp_path / "r.html")]) == 2
    assert not (tmp_path / "r.html").exists()
    assert oct(fits["single_path"].stat().st_mode & 0o777) == "0o644"


def test_assumptions_name_exclusions_and_blq_handling():
    from types import SimpleNamespace

    from bayesnlme.data import read_nonmem
    from bayesnlme.report.fit_section import assumptions

    df = pd.read_csv(dataset_path("theophylline"))
    df["CENS"] = 0
    last = df.groupby("ID").tail(1).index
    df.loc[last[:3], "CENS"] = 1              # the last sample of IDs 1-3 below LOQ
    df.loc[5, "MDV"] = 1                      # one sample not used
    spec = load_spec("pk_1cmt_oral")
    text = " ".join(assumptions(SimpleNamespace(data=read_nonmem(df), spec=spec)))
    assert "131 observations" in text and "1 observation record(s) with MDV=1" in text and "records 6" in text
    assert "3 observation(s) below the limit of quantification (CENS=1)" in text and "M3" in text
    plain = " ".join(assumptions(SimpleNamespace(data=read_nonmem(dataset_path("theophylline")), spec=spec)))
    assert "CENS" not in plain and "MDV=1" not in plain


def test_model_written_out_with_covariates():
    from bayesnlme.report.model_text import covariate_table, equations, parameter_table
    from bayesnlme.spec import ModelSpec, library_path

    text = library_path("pk_1cmt_oral").read_text() + """
[[covariates]]
parameter = "CL"
covariate = "WT"
type = "power"
reference = 70
fixed = 0.75

[[covariates]]
parameter = "V"
covariate = "AGE"
type = "linear"
reference = 40
prior = { dist = "normal", mu = 0.0, sigma = 0.05 }
"""
    spec = ModelSpec.from_toml_text(text)
    eq = equations(spec)
    assert "TVCL_i = THETA_CL · (WT / 70)^0.75" in eq and "TVV_i = THETA_V · (1 + AGE_on_V · (AGE − 40))" in eq
    cov = covariate_table(spec)
    assert list(cov["prior"]) == ["fixed at 0.75", "normal(mu=0, sigma=0.05)"]
    par = parameter_table(spec).set_index("parameter")
    assert par.loc["KA", "typical value (THETA)"] == "lognormal(median=1, sigma=1)" and par.loc["CL", "unit"] == "L/h"
