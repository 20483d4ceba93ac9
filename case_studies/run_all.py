"""Execute every case-study notebook with full sampler settings and write HTML copies (``make case-studies``).

Usage: python case_studies/run_all.py [OUT_DIR]   (default case_studies/html; the notebooks themselves are
left unchanged, so git keeps them without outputs).  Reduced settings for a quick run come from the
environment (BAYESNLME_DRAWS, BAYESNLME_TUNE, BAYESNLME_CHAINS), as in the test suite.
"""

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter

HERE = Path(__file__).resolve().parent


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter()
    for path in sorted(HERE.glob("*.ipynb")):
        start = time.time()
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
        body, _ = exporter.from_notebook_node(nb)
        target = out / f"{path.stem}.html"
        tmp = target.with_suffix(".html.tmp")
        tmp.write_text(body, encoding="utf-8")
        tmp.replace(target)   # atomic: a failed run never leaves half a page
        print(f"{path.name}: {time.time() - start:.0f} s -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "html"))
