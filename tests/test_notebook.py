"""notebooks/01-analyze-generations.ipynb runs top to bottom, headless, against tiny runs
(pointed at them through $DEPENC_NOTEBOOK_RUNS), in a kernel of this interpreter."""

import os
import sys
from pathlib import Path

import pytest

from conftest import REPO

NOTEBOOK = REPO / "notebooks" / "01-analyze-generations.ipynb"


def test_notebook_parameters_cell():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    src = tagged[0].source
    assert "RUN_DIRS = None" in src and 'RUNS_ROOT = "runs"' in src


def test_notebook_runs_headless_on_tiny_runs(compare_runs, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager

    # the env's (sys.prefix) kernel specs before any user-level one, so "python3" is ipykernel's
    # spec, whose argv "python" jupyter_client replaces with sys.executable (this venv)
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "1")
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] in ("python", "python3", sys.executable), (
        f"kernel spec python3 runs {spec.argv[0]}, not this interpreter ({sys.executable})")

    runs = [compare_runs["depenc"][0], compare_runs["baseline_matched"][0]]
    monkeypatch.setenv("DEPENC_NOTEBOOK_RUNS", os.pathsep.join(str(p) for p in runs))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=180, allow_errors=False,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError with the failing cell's traceback

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert f"kernel python: {sys.executable}" in text or f"kernel python: {Path(sys.executable).resolve()}" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5, f"{len(images)} figures"  # lengths, lexical, grammar, alignment, arcs
    html = "".join(o["data"].get("text/html", "") for o in outputs if "data" in o)
    markdown = "".join(o["data"].get("text/markdown", "") for o in outputs if "data" in o)
    for run in runs:
        assert run.name in markdown  # the runs table
    assert "<table>" in html  # generations side by side
    assert "align/synthetic/parser/uuas" in markdown and "—" in markdown
