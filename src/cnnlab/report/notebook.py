"""report.ipynb: the report as a notebook that re-runs in place.

Each of the report's section builders (`build.SECTIONS`, in the assignment's order) gets one code
cell that calls it on the report's own runs and shows what it returns:

    from cnnlab.report.filters import section_filters
    show(section_filters(R))

The cell's outputs are attached when the report is written, from the very Section objects the
HTML and PDF were rendered from, through the same `section_outputs` that `show` displays in a
kernel. So the stored outputs are exactly what re-running the cell prints (same runs, same seeds,
same analysis settings, read back from results.json), and writing the notebook costs no second
analysis pass (executing it at report time would repeat every analysis: as long again as the
report's analysis stages). tests/test_report_notebook.py re-runs a smoke report's notebook with
nbclient and compares the verdicts and figures with the stored ones.

`open_report(".")` rebuilds the report's Context from the folder the notebook sits in: the runs
by their paths relative to it (so a moved report folder still works), the data split from the
best run's config, the analysis settings from results.json.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..analysis.verdict import Verdict
from ..config import AnalysisConfig
from ..data import load_split
from ..errors import RunError
from ..notebook import COLAB_NOTE, WIDGET_MD, Cells, display_output, report_note, widget_cell
from ..runs import open_run
from .base import Context, Printed, Section

NOTEBOOK = "report.ipynb"


def open_report(path: str | Path = ".", data_dir: str | Path | None = None) -> Context:
    """The Context a report's sections were built with, from the report folder `path`.

    `data_dir`: where the MNIST files are (default: CNNLAB_DATA_DIR or the cache, as for `cnnlab
    train`). The split is rebuilt from the best run's config, so it is the report's split."""
    out = Path(path)
    try:
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{out.resolve()} has no results.json: open the folder `cnnlab report` wrote "
                       f"(report.ipynb is meant to run in place, next to its runs/ folder)") from None
    prov = results["provenance"]
    runs = {k: [out / p for p in v] for k, v in prov["runs"].items()}
    best = open_run(out / prov["best_run"])
    cfg = best.info["config"]
    split = load_split(cfg["dataset"], data_dir, cfg["val_size"], cfg["split_seed"], cfg["train_subset"])
    analysis = analysis_config_from(results["analysis"])
    return Context(out, split, runs, best, best.load_model(), analysis, Printed(),
                   results={k: results[k] for k in ("assignment", "preset", "seeds", "analysis")})


def analysis_config_from(saved: dict[str, Any]) -> AnalysisConfig:
    """The AnalysisConfig a results.json records; a report written before 3.1.3's judge had a
    preset (`train_judge`: True meant the maker's own config, False the report's other network)
    opens too, and fields this version does not know are ignored."""
    saved = dict(saved)
    if "train_judge" in saved:
        saved.setdefault("judge_preset", "same" if saved.pop("train_judge") else None)
    known = {f.name for f in dataclasses.fields(AnalysisConfig)}
    return AnalysisConfig(**{k: v for k, v in saved.items() if k in known})


def show(produced: Section | Sequence[Section]) -> None:
    """Display a section builder's answer in a notebook: question, answer, verdicts, tables, figures."""
    from IPython.display import display
    for out in section_outputs(produced):
        display(_joined(out["data"]), raw=True, metadata=out["metadata"])


def _joined(data: dict[str, Any]) -> dict[str, Any]:
    return {k: "".join(v) if isinstance(v, list) else v for k, v in data.items()}


def section_outputs(produced: Section | Sequence[Section]) -> list[dict[str, Any]]:
    """The display_data outputs of one builder's sections, in the HTML report's order."""
    outs: list[dict[str, Any]] = []
    for s in [produced] if isinstance(produced, Section) else produced:
        outs.append(display_output({"text/markdown": f"### {s.id} {s.title}\n\n> {s.question}",
                                    "text/plain": f"{s.id} {s.title}\n{s.question}"},
                                   {"cnnlab": {"section": s.id}}))
        for para in s.answer:
            if isinstance(para, Verdict):
                outs.append(display_output(
                    {"text/html": f"<p><b>{html.escape(para.answer)}</b></p>\n"
                                  f"<p><small>Rule ({html.escape(para.id)}): {html.escape(para.rule)}</small></p>",
                     "text/plain": f"{para.answer}\nRule ({para.id}): {para.rule}"},
                    {"cnnlab": {"section": s.id, "verdict": para.id, "key": para.key}}))
            else:
                outs.append(display_output({"text/html": f"<p>{para}</p>", "text/plain": _plain(para)},
                                           {"cnnlab": {"section": s.id}}))
        for t in s.tables:
            outs.append(display_output({"text/html": _table_html(t), "text/plain": _table_text(t)},
                                       {"cnnlab": {"section": s.id, "table": True}}))
        for uri, caption in s.figures:
            png = uri.split(",", 1)[1]           # "data:image/png;base64,<png>"
            outs.append(display_output({"image/png": png, "text/plain": _plain(caption)},
                                       {"cnnlab": {"section": s.id, "figure": True}}))
            outs.append(display_output({"text/html": f"<p><small>{caption}</small></p>", "text/plain": _plain(caption)},
                                       {"cnnlab": {"section": s.id}}))
    return outs


def _plain(s: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", s))


def _table_html(t: dict) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(h))}</th>" for h in t["header"])
    rows = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in t["rows"])
    cap = f"<caption>{e(t['caption'])}</caption>" if t.get("caption") else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _table_text(t: dict) -> str:
    rows = [[str(h) for h in t["header"]]] + [[str(c) for c in r] for r in t["rows"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return (t.get("caption", "") + "\n" if t.get("caption") else "") + "\n".join(lines)


def report_notebook(groups: Sequence[tuple[Callable[[Context], Any], Sequence[Section]]],
                    data_dir: str | Path | None = None) -> dict[str, Any]:
    """The notebook for one report: one cell per section builder, with that builder's outputs."""
    c = Cells("report")
    c.md(f"""
# EE5179 Programming Assignment 2 — the report as a notebook

Every question of the assignment, answered by the same calls that wrote report.html and
report.pdf, on the networks this report trained (in `runs/` next to this notebook). The outputs
below are the report's own; **Kernel → Restart & Run All** recomputes them in place from those
runs, with the same seeds, and gives the same answers.

{COLAB_NOTE}
""")
    # absolute: the notebook runs with the report folder as its working directory
    dd = repr(str(Path(data_dir).resolve())) if data_dir is not None else "None"
    c.code(f"""
# On Colab or any fresh environment, uncomment and point at the repository (or a local checkout):
# %pip install -q "cnnlab @ git+https://github.com/<you>/cnnlab"
%matplotlib inline
from cnnlab.report.notebook import open_report, show

# The report folder is the folder this notebook is in. DATA_DIR: where the MNIST files are
# (None: CNNLAB_DATA_DIR or cnnlab's cache, as for `cnnlab train`).
DATA_DIR = {dd}
R = open_report(".", data_dir=DATA_DIR)
print("best model:", R.best_run.name, "| runs:", {{k: [p.name for p in v] for k, v in R.runs.items()}})
""")
    for builder, sections in groups:
        c.md("## " + " · ".join(f"{s.id} {s.title}" for s in sections))
        c.code(f"from {builder.__module__} import {builder.__name__}\nshow({builder.__name__}(R))",
               section_outputs(list(sections)))
    c.md(WIDGET_MD)
    c.code(widget_cell("R.best_run.path", "DATA_DIR"))
    c.md(report_note(" This notebook is report.ipynb."))
    return c.notebook()
