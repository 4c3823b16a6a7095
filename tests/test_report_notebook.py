"""report.ipynb: the report's questions in order, answered, with outputs; it re-runs in place with
nbclient and gives the same verdicts and figures."""

import json
import shutil
from pathlib import Path

import pytest

from cnnlab.config import AnalysisConfig
from cnnlab.report import build_report

nbformat = pytest.importorskip("nbformat")

QUESTIONS = ["1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "2.1", "2.2", "2.3", "2.4",
             "3.1.1", "3.1.2", "3.1.3", "3.1.4", "3.2.1", "4.1"]
TINY = AnalysisConfig(n_random_images=8, activation_images=1, occlusion_images=1, meaningful_n_behaviour=100,
                      meaningful_n_occlusion=10,
                      synth_steps=40, adv_steps=40, robustness_n=100, pgd_steps=3)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, mnist_dir) -> Path:
    out = tmp_path_factory.mktemp("report")
    build_report(out, preset="smoke", data_dir=str(mnist_dir), analysis=TINY, pdf=False,
                 train_overrides={"train_subset": 3000}, log=lambda s: None, command="pytest")
    return out


def outputs_of(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def cnnlab_meta(nb, key: str) -> list:
    return [o["metadata"]["cnnlab"][key] for o in outputs_of(nb)
            if o.get("output_type") == "display_data" and key in o.get("metadata", {}).get("cnnlab", {})]


def verdicts(nb) -> dict[str, tuple[str, str]]:
    return {o["metadata"]["cnnlab"]["verdict"]: (o["metadata"]["cnnlab"]["key"], "".join(o["data"]["text/plain"]))
            for o in outputs_of(nb) if "verdict" in o.get("metadata", {}).get("cnnlab", {})}


def figures_per_section(nb) -> dict[str, int]:
    out: dict[str, int] = {}
    for o in outputs_of(nb):
        if o.get("metadata", {}).get("cnnlab", {}).get("figure"):
            assert o["data"]["image/png"]                       # a real PNG, base64
            out[o["metadata"]["cnnlab"]["section"]] = out.get(o["metadata"]["cnnlab"]["section"], 0) + 1
    return out


def test_report_notebook_has_every_question_in_order_answered(report_dir):
    nb = nbformat.read(report_dir / "report.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    assert cnnlab_meta(nb, "section")[:1] == ["1.1"]
    order = list(dict.fromkeys(cnnlab_meta(nb, "section")))       # first appearance of each question
    assert order == QUESTIONS
    results = json.loads((report_dir / "results.json").read_text())
    assert results["notebook"] == "report.ipynb"
    # every verdict of results.json is in the notebook, with the same key and sentence
    got = verdicts(nb)
    assert set(got) == set(results["verdicts"])
    for vid, v in results["verdicts"].items():
        assert got[vid][0] == v["key"] and got[vid][1].startswith(v["answer"]), vid
    # each question has an answer paragraph, and the figures are the HTML report's figures
    answered = {o["metadata"]["cnnlab"]["section"] for o in outputs_of(nb)
                if "text/html" in o["data"] and "figure" not in o["metadata"]["cnnlab"]
                and "table" not in o["metadata"]["cnnlab"] and "### " not in "".join(o["data"].get("text/markdown", ""))}
    assert answered >= set(QUESTIONS)
    html = (report_dir / "report.html").read_text()
    pngs = [o["data"]["image/png"] for o in outputs_of(nb) if "image/png" in o["data"]]
    assert pngs and all(p in html for p in pngs)
    assert len(pngs) == html.count("<figure>")
    # the runs are found by relative path: nothing in the code cells names the report folder
    code = "".join("".join(c.source) for c in nb.cells if c.cell_type == "code")
    assert str(report_dir) not in code and 'open_report(".",' in code


def test_report_notebook_reruns_in_place_with_the_same_answers(report_dir, mnist_dir, tmp_path):
    """Moved to another folder (relative paths only) and re-run top to bottom: same verdicts, same figures."""
    nbclient = pytest.importorskip("nbclient")
    moved = tmp_path / "moved"
    shutil.copytree(report_dir, moved)
    stored = nbformat.read(moved / "report.ipynb", as_version=4)
    nb = nbformat.read(moved / "report.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(moved)}})
    client.execute()                                             # raises CellExecutionError on any error
    errors = [o for o in outputs_of(nb) if o.get("output_type") == "error"]
    assert not errors
    assert verdicts(nb) == verdicts(stored)
    assert figures_per_section(nb) == figures_per_section(stored)
    assert cnnlab_meta(nb, "section") == cnnlab_meta(stored, "section")
    # the widget cell ran and shows a widget
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs_of(nb))
