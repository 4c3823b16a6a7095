"""report.ipynb: the code behind every answer, executed when the report is written (execution
counts, outputs from running it, no errors), with the numbers of results.json; its PDF,
report-notebook.pdf; a cell that fails is a one-line error naming the cell, and the files already
written say the report is incomplete."""

import json
import math
from pathlib import Path

import pytest

from cnnlab.config import AnalysisConfig
from cnnlab.report import build_report
from cnnlab.report import notebook as N

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

QUESTIONS = ["1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "2.1", "2.2", "2.3", "2.4",
             "3.1.1", "3.1.2", "3.1.3", "3.1.4", "3.2.1", "4.1"]
TINY = AnalysisConfig(n_random_images=8, activation_images=1, occlusion_images=1, meaningful_n_behaviour=100,
                      meaningful_n_occlusion=10,
                      synth_steps=40, adv_steps=40, robustness_n=100, pgd_steps=3)
# verdicts the notebook computes itself (the rest it reads from results.json)
RECOMPUTED = {"1.6.accuracy", "2.1", "2.2", "2.3", "3.1.2", "3.1.3.readable", "3.1.4"}


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, mnist_dir) -> Path:
    """A smoke report with its notebook and the notebook's PDF (report.pdf itself, tested in
    test_report.py, is left out here: a stub saves its seconds)."""
    import cnnlab.report.build as B
    out = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(B, "render_pdf", lambda html, pdf: pdf.write_bytes(b"%PDF-1.7 stub"))
        build_report(out, preset="smoke", data_dir=str(mnist_dir), analysis=TINY, pdf=True,
                     train_overrides={"train_subset": 3000}, log=lambda s: None, command="pytest")
    return out


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def outputs_of(nb) -> list[dict]:
    return [o for c in code_cells(nb) for o in c.get("outputs", [])]


def meta(o: dict) -> dict:
    return o.get("metadata", {}).get("cnnlab", {})


def text_of(o: dict) -> str:
    if o.get("output_type") == "stream":
        return "".join(o.get("text", ""))
    return "".join(o.get("data", {}).get("text/plain", ""))


def test_the_notebook_was_executed_and_shows_the_code(report_dir):
    nb = nbformat.read(report_dir / "report.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3" and nb.metadata.language_info.name == "python"
    # executed, top to bottom, by a kernel: every code cell has its count, nothing failed
    counts = [c.execution_count for c in code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), counts
    assert not [o for o in outputs_of(nb) if o.get("output_type") == "error"]
    assert all(c.metadata.get("execution") for c in code_cells(nb))          # nbclient's timestamps
    # the questions in the report's order, each with its heading
    headings = [c.source.split("\n", 1)[0] for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## ")]
    assert [h.split()[1] for h in headings if h.split()[1][0].isdigit()] == QUESTIONS
    # the code of the network, the training loop, the hooks, the occlusion loop and the gradient ascent
    shown = "\n".join(text_of(o) for o in outputs_of(nb) if "source" in meta(o))
    for needle in ("class Net(nn.Module):", "self.conv1 = nn.Conv2d(1, 32, kernel_size=3",    # the network
                   "loss.backward()", "opt.step()",                                          # the training step
                   "register_forward_hook",                                                  # 1.3 shapes
                   "def features(self",                                                      # 2.3 activations
                   "def occluded(", "torch.where(m, torch.tensor(fill",                              # 2.4 occluded copies
                   "p.requires_grad_(False)", "torch.autograd.grad(cost.sum(), x)",          # 3.1 frozen weights, dC/dX
                   "cost = logits[rows, idx] - beta_t.float() * mse",                                # 3.1 / 3.2 the cost
                   "x = x.detach() + step_size * d",                                         # the ascent step
                   "def adversarial(", "def meaningful_experiment(", "def fgsm("):
        assert needle in shown, needle
    # the runs are found by relative path: nothing in the code names the report folder
    code = "".join(c.source for c in code_cells(nb))
    assert str(report_dir) not in code and 'open_report(".",' in code
    # figures produced by the kernel (matplotlib inline), not copied from the HTML
    pngs = [o["data"]["image/png"] for o in outputs_of(nb) if "image/png" in o.get("data", {})]
    assert len(pngs) >= 8
    html = (report_dir / "report.html").read_text(encoding="utf-8")
    assert not any(p[:4000] in html for p in pngs)


def test_the_numbers_it_computes_are_the_reports(report_dir):
    nb = nbformat.read(report_dir / "report.ipynb", as_version=4)
    results = json.loads((report_dir / "results.json").read_text(encoding="utf-8"))
    assert results["notebook"] == "report.ipynb" and "incomplete" not in results
    checks = [meta(o) for o in outputs_of(nb) if "check" in meta(o)]
    assert len(checks) >= 18
    for c in checks:                       # every number has its counterpart, and they agree
        assert c["status"] == "same", c
        want = [N.lookup(results, p) for p in c["paths"]]
        want = want[0] if len(c["paths"]) == 1 else want
        assert want is not N._MISSING
        assert _close(c["got"], want), (c["check"], c["got"], want)
    checked = {p.split("/")[0] for c in checks for p in c["paths"]}
    assert checked >= {"sections", "summary", "batch_norm", "filters", "activations", "occlusion", "class_models", "targeted"}
    # the verdicts it recomputes have the report's keys (results.json records every verdict)
    verdicts = {meta(o)["verdict"]: meta(o) for o in outputs_of(nb) if "verdict" in meta(o)}
    assert set(verdicts) == RECOMPUTED
    if results.get("verdicts"):
        for vid, m in verdicts.items():
            assert m["status"] == "same" and m["key"] == results["verdicts"][vid]["key"], vid
    summary = [text_of(o) for o in outputs_of(nb) if meta(o).get("summary")]
    assert len(summary) == 1 and summary[0].startswith(f"{len(checks) + len(verdicts)} numbers and verdicts")


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == pytest.approx(b, rel=1e-5, abs=1e-7)


def test_the_notebook_pdf_is_the_executed_notebook_on_a4(report_dir):
    pdfium = pytest.importorskip("pypdfium2")
    path = report_dir / "report-notebook.pdf"
    assert path.read_bytes()[:5] == b"%PDF-"
    pdf = pdfium.PdfDocument(str(path))
    try:
        assert len(pdf) >= 8
        text = ""
        for i in range(len(pdf)):
            page = pdf[i]
            w, h = page.get_size()
            assert (round(w), round(h)) == (595, 842), (w, h)         # A4, in points
            tp = page.get_textpage()
            text += tp.get_text_range()
            # no text runs past the right margin (long code lines wrap)
            rights = [tp.get_rect(k)[2] for k in range(tp.count_rects())]
            assert rights and max(rights) <= w - 20, (i, max(rights))
        flat = " ".join(text.split())
        assert "In [1]:" in flat and "In [12]:" in flat                # the execution counts
        assert "class Net(nn.Module):" in flat and "same as the report" in flat
    finally:
        pdf.close()


def test_a_failing_cell_is_one_line_naming_the_cell(report_dir, mnist_dir, monkeypatch):
    from cnnlab.report.base import Section
    monkeypatch.setitem(N.ANSWERS, "2.4", N.Answer("fails on purpose", (("occlusion map", "import math\nmath.sqrt(-1)"),)))
    nb = N.report_notebook([(None, [Section("2.4", "Occluding parts of the image", "Plot the probability …")])], mnist_dir)
    with pytest.raises(N.NotebookError) as e:
        N.run_notebook(nb, report_dir)
    msg = str(e.value)
    assert msg == "report.ipynb: cell 4 (2.4 occlusion map) failed: ValueError: math domain error", msg


def test_a_failed_notebook_leaves_the_report_marked_incomplete(report_dir, tmp_path, mnist_dir, monkeypatch, capsys):
    """Through the CLI: exit 2 and one line naming the cell; report.html and results.json, written
    before the notebook, say the report is incomplete and what is missing; no notebook is written."""
    import shutil

    import cnnlab.report.build as B
    from cnnlab.cli import main
    from cnnlab.report import anatomy

    def reuse_runs(out, *args):        # the module's trained runs: this test is about the notebook
        shutil.copytree(report_dir / "runs", out / "runs")
        return {"plain": [out / "runs" / "plain-seed0"], "batch_norm": [out / "runs" / "bn-seed0"]}
    monkeypatch.setattr(B, "_train_all", reuse_runs)
    monkeypatch.setattr(B, "SECTIONS", [anatomy.section_anatomy])
    monkeypatch.setitem(N.ANSWERS, "1.4", N.Answer("fails on purpose", (("parameters", "raise KeyError('params')"),)))
    monkeypatch.setenv("CNNLAB_DATA_DIR", str(mnist_dir))
    out = tmp_path / "R"
    code = main(["report", "--preset", "smoke", "--out", str(out), "--train-subset", "3000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == "cnnlab report: error: report.ipynb: cell 6 (1.4 parameters) failed: KeyError: 'params'", err[-1]
    assert not (out / "report.ipynb").exists() and not (out / "report-notebook.pdf").exists()
    assert 'class="incomplete"' in (out / "report.html").read_text(encoding="utf-8")
    info = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert info["incomplete"]["missing"] == ["report.ipynb", "report-notebook.pdf", "report.pdf"]
    assert "its notebook failed to run before writing report.ipynb" in info["incomplete"]["note"]


# ---------------------------------------------------------------------------------------------
# The helpers the notebook uses (no kernel)
# ---------------------------------------------------------------------------------------------

def test_lookup_and_checks(capsys):
    results = {"a": {"b": [1, 2.5], "c": {"x": {"v": 1}, "y": {"v": 2}}}, "s": {"1.1": {"n": [0.9]}}}
    assert N.lookup(results, "a/b/1") == 2.5
    assert N.lookup(results, "a/c/*/v") == [1, 2]
    assert N.lookup(results, "s/1.1/n/0") == 0.9
    assert N.lookup(results, "a/z") is N._MISSING and N.lookup(results, "a/b/7") is N._MISSING
    check = N.Checks(results)
    check("b", [1.0, 2.5 + 1e-9], "a/b")
    check("not there", 3, "a/zz")
    assert [e["status"] for e in check.log] == ["same", "missing"]
    with pytest.raises(N.NotebookMismatch, match=r"b1: this notebook computed 2\.6 but results\.json \(a/b/1\) holds 2\.5"):
        check("b1", 2.6, "a/b/1")
    out = capsys.readouterr().out
    assert "✓ same as the report (results.json: a/b)" in out and "results.json holds no a/zz" in out


def test_show_source_is_the_code_that_runs():
    from cnnlab.analysis.occlusion import occlusion
    from cnnlab.train import _run
    b = N.source_bundle(occlusion)
    assert b["text/plain"].startswith("# cnnlab.analysis.occlusion.occlusion (cnnlab/analysis/occlusion.py, lines ")
    assert "def occlusion(" in b["text/plain"] and "white-space:pre-wrap" in b["text/html"]
    part = N.source_bundle(_run, between=("# --- the loop", "# --- the end"))["text/plain"]
    assert "loss.backward()" in part and "# --- the end" not in part and "# --- set up" not in part
    assert N.source_bundle(len)["text/plain"].startswith("(the source of builtins.len is not available here")
