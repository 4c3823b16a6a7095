"""report.ipynb's helpers, without a kernel: lookups into results.json, the checks the notebook
prints, and the source it shows. The executed notebook of a real report is tested in
test_report.py (on the one shared smoke report)."""


import pytest

from cnnlab.report import notebook as N

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

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
