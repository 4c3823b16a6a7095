"""The notebook runs top to bottom (small configuration), so it can never rot."""

from pathlib import Path

import pytest

from cnnlab.notebook import assignment_notebook, dumps

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "assignment.ipynb"


def test_notebook_is_committed_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow          # ~35 s: the whole assignment notebook in a kernel (make test-all; report.ipynb runs in make test)
def test_notebook_executes(mnist_dir, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("CNNLAB_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("CNNLAB_DATA_DIR", str(mnist_dir))
    monkeypatch.setenv("CNNLAB_NOTEBOOK_OUT", str(tmp_path / "runs"))
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "test accuracy" in outputs
    assert (tmp_path / "runs" / "plain" / "model.safetensors").exists()
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert images >= 8
    # the explorer widget cell ran and left a widget view
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
               for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_assignment_notebook_is_what_the_builder_writes():
    """tools/make_notebook.py writes notebooks/assignment.ipynb from cnnlab.notebook: they must agree."""
    committed = NOTEBOOK.read_text(encoding="utf-8")
    built = dumps(assignment_notebook())
    assert committed == built, "run `python tools/make_notebook.py` and commit notebooks/assignment.ipynb"
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.reads(built, as_version=4)
    nbformat.validate(nb)
    sources = ["".join(c.source) for c in nb.cells]
    assert any("from cnnlab.explore import widget" in s for s in sources)
    ids = [c.id for c in nb.cells]
    assert len(set(ids)) == len(ids)
    # control: a changed cell is noticed
    changed = assignment_notebook()
    changed["cells"][1]["source"] = ["print('hi')\n"]
    assert dumps(changed) != committed
