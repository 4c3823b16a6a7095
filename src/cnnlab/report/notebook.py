"""report.ipynb: the code behind every answer of the report, executed when the report is written.

Each question gets a Markdown cell (the assignment's words, one sentence on what the code does)
and short code cells that

- display the source of the cnnlab function that computes the answer (`show_source`: the very
  code the report ran, read with `inspect`, so nothing is written twice),
- call that function on the report's own trained network, with the report's settings, where it
  is cheap (hooks on one forward pass, one occlusion map, the ten class models, the targeted
  fakes, one training step), and
- compare what they computed with results.json, the numbers report.html prints (`Checks`: a
  line with ✓, or an error: a notebook that disagrees with its report does not get written).

The expensive analyses (the controlled experiment of 2.4, the natural class models and their
judge, the robustness curves, the training runs themselves) show their code and read their
numbers from results.json.

The cells themselves are in notebook_cells.py. `cnnlab report` executes the notebook in a fresh
kernel of the same Python (notebook_run.py: `run_notebook`, with the report folder as its working
directory), so every code cell has its execution count and the outputs are what running it
printed; then `notebook_pdf` renders it as report-notebook.pdf. A cell that fails stops the report
with a NotebookError naming the cell.

`open_report(".")` rebuilds the report's Context from the folder the notebook sits in: the runs
by their paths relative to it (so a moved report folder still works), the data split from the
best run's config, the analysis settings from results.json.
"""

from __future__ import annotations

import dataclasses
import html
import inspect
import json
import math
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import AnalysisConfig
from ..data import load_split
from ..errors import CnnlabError, RunError
from ..notebook import COLAB_NOTE, Cells
from ..output import jsonable
from ..runs import open_run
from .base import Context, Printed, Section
from .notebook_cells import ANSWERS, SETUP, WIDGET_NOTE
from .notebook_run import NOTEBOOK_PDF, run_notebook


class NotebookMismatch(CnnlabError):
    """A number or verdict computed in the notebook differs from the one results.json holds."""


# ---------------------------------------------------------------------------------------------
# Used inside the notebook
# ---------------------------------------------------------------------------------------------

def open_report(path: str | Path = ".", data_dir: str | Path | None = None,
                trainer: Callable[..., Any] | None = None) -> Context:
    """The Context a report's sections were built with, from the report folder `path`.

    `data_dir`: where the MNIST files are (default: CNNLAB_DATA_DIR or the cache, as for `cnnlab
    train`). The split is rebuilt from the best run's config, so it is the report's split.
    `trainer` (cnnlab.train.train): for the sections that train a network of their own (3.1.3's judge)."""
    out = Path(path)
    try:
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{out.resolve()} has no results.json: open the folder `cnnlab report` wrote "
                       f"(report.ipynb is meant to run in place, next to its runs/ folder)") from None
    prov = results["provenance"]
    runs = {k: [out / p for p in v] for k, v in prov["runs"].items()}
    best = open_run(out / prov["best_run"])
    cfg = best.config
    split = load_split(cfg.dataset, data_dir, cfg.val_size, cfg.split_seed, cfg.train_subset)
    analysis = analysis_config_from(results["analysis"])
    return Context(out, split, runs, best, best.load_model(), analysis, Printed(),
                   results={k: results[k] for k in ("assignment", "preset", "seeds", "analysis")}, trainer=trainer)


def analysis_config_from(saved: dict[str, Any]) -> AnalysisConfig:
    """The AnalysisConfig a results.json records; a report written before 3.1.3's judge had a
    preset (`train_judge`: True meant the maker's own config, False the report's other network)
    opens too, and fields this version does not know are ignored."""
    saved = dict(saved)
    if "train_judge" in saved:
        saved.setdefault("judge_preset", "same" if saved.pop("train_judge") else None)
    known = {f.name for f in dataclasses.fields(AnalysisConfig)}
    return AnalysisConfig(**{k: v for k, v in saved.items() if k in known})


def show_source(*objs: Any, between: tuple[str, str] | None = None) -> None:
    """Display the source code of each of `objs` (functions, classes, methods), highlighted.

    `between=(start, end)`: only the lines from the first one containing `start` up to the one
    before the next line containing `end` (a part of a long function). Where the source cannot be
    read (cnnlab installed without its .py files), a one-line note says so."""
    from IPython.display import display
    for obj in objs:
        display(source_bundle(obj, between), raw=True, metadata={"cnnlab": {"source": _qualname(obj)}})


def source_bundle(obj: Any, between: tuple[str, str] | None = None) -> dict[str, str]:
    """`show_source`'s MIME bundle for one object: text/html (highlighted, wrapped) and text/plain."""
    name = _qualname(obj)
    try:
        lines, first = inspect.getsourcelines(obj)
        file = inspect.getsourcefile(obj) or "?"
    except (OSError, TypeError) as e:
        note = f"(the source of {name} is not available here: {e})"
        return {"text/plain": note, "text/html": f"<p><i>{html.escape(note)}</i></p>"}
    if between is not None:
        lines, first = _between(lines, first, *between)
    src = textwrap.dedent("".join(lines)).rstrip("\n")
    where = f"{_shown_path(file)}, lines {first}–{first + len(lines) - 1}"
    return {"text/plain": f"# {name} ({where})\n{src}",
            "text/html": (f'<div class="cnnlab-source"><p style="margin:0.3em 0"><code>{html.escape(name)}</code> '
                          f'<small style="color:#666">{html.escape(where)}</small></p>'
                          f'<pre style="white-space:pre-wrap;overflow-wrap:anywhere;background:#f6f8fa;'
                          f'border:1px solid #e1e4e8;padding:6px 8px;margin:0;line-height:1.3">'
                          f"{_highlight(src)}</pre></div>")}


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', repr(obj)))}"


def _between(lines: list[str], first: int, start: str, end: str) -> tuple[list[str], int]:
    i = next((k for k, line in enumerate(lines) if start in line), None)
    if i is None:
        return lines, first
    j = next((k for k in range(i + 1, len(lines)) if end in lines[k]), len(lines))
    part = lines[i:j]
    while part and not part[-1].strip():
        part = part[:-1]
    return part, first + i


def _shown_path(file: str) -> str:
    """src/cnnlab/x.py as cnnlab/x.py (relative to the folder that holds the package)."""
    root = Path(__file__).resolve().parents[2]
    try:
        return Path(file).resolve().relative_to(root).as_posix()
    except ValueError:
        return Path(file).name


def _highlight(src: str) -> str:
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer
    except ImportError:
        return html.escape(src)
    return highlight(src, PythonLexer(), HtmlFormatter(noclasses=True, nowrap=True, style="default")).rstrip("\n")


_MISSING = object()


def lookup(data: Any, path: str) -> Any:
    """The value at a '/'-separated `path` of results.json ("summary/plain/params/total"); a list
    index is a number, "*" takes every element (list) or value (dict). `_MISSING` if absent."""
    def walk(node: Any, parts: list[str]) -> Any:
        if not parts:
            return node
        key, rest = parts[0], parts[1:]
        if key == "*" and isinstance(node, (dict, list)):
            items = [walk(v, rest) for v in (node.values() if isinstance(node, dict) else node)]
            return _MISSING if any(v is _MISSING for v in items) else items
        if isinstance(node, dict) and key in node:
            return walk(node[key], rest)
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            return walk(node[int(key)], rest)
        return _MISSING
    return walk(data, path.split("/"))


def plain(v: Any) -> Any:
    """A value as results.json holds it (output.jsonable: NumPy and torch values as lists and
    numbers, NaN as null)."""
    return jsonable(v)


def agree(a: Any, b: Any, rtol: float = 1e-5, atol: float = 1e-7) -> bool:
    """Equal, numbers within `rtol`/`atol` (NaN equals NaN), lists and dicts element by element."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(agree(a[k], b[k], rtol, atol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(agree(x, y, rtol, atol) for x, y in zip(a, b))
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)
    return bool(a == b)


def shown(v: Any, fmt: str = "{}") -> str:
    """A value as the notebook prints it: numbers through `fmt`, lists in brackets, dicts as k=v."""
    if isinstance(v, dict):
        return ", ".join(f"{k} {shown(x, fmt)}" for k, x in v.items())
    if isinstance(v, list):
        return "[" + ", ".join(shown(x, fmt) for x in v) + "]"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        try:
            return fmt.format(v)
        except (ValueError, TypeError):
            return str(v)
    return str(v)


class Checks:
    """Compares what the notebook computes with results.json (the numbers report.html prints).

    `check(what, got, path, fmt)` prints one line, "what: value ✓ same in results.json (path)",
    and raises NotebookMismatch when they differ; `path` may be a list of paths (then `got` is a
    list of the same length). A path that results.json does not hold is said so, not failed (a
    report written by another version of cnnlab opens too). `check.verdict(v)` prints a Verdict
    computed here and compares its key with the report's; `check.report_verdict(id)` prints one
    the report computed (for the analyses this notebook does not re-run)."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        self.log: list[dict[str, Any]] = []

    def __call__(self, what: str, got: Any, path: str | Sequence[str], fmt: str = "{}",
                 rtol: float = 1e-5, atol: float = 1e-7) -> None:
        got = plain(got)
        paths = [path] if isinstance(path, str) else list(path)
        wants = [lookup(self.results, p) for p in paths]
        want = wants[0] if isinstance(path, str) else wants
        where = ", ".join(paths)
        if any(w is _MISSING for w in wants):
            status, line = "missing", f"{what}: {shown(got, fmt)}  (results.json holds no {where} to compare with)"
        elif agree(got, want, rtol, atol):
            status, line = "same", f"{what}: {shown(got, fmt)}  ✓ same as the report (results.json: {where})"
        else:
            raise NotebookMismatch(f"{what}: this notebook computed {shown(got, fmt)} but results.json ({where}) "
                                   f"holds {shown(want, fmt)}")
        self._emit(line, {"check": what, "paths": paths, "got": got, "status": status})

    def verdict(self, v: Any) -> None:
        """A Verdict computed in this notebook: its answer, and whether the report's has the same key."""
        saved = self.results.get("verdicts", {}).get(v.id)
        if saved is None:
            status, tail = "missing", f"(results.json records no verdict {v.id} to compare with)"
        elif saved.get("key") == v.key:
            status, tail = "same", f"✓ same verdict as the report (results.json: {v.id} = {v.key})"
        else:
            raise NotebookMismatch(f"verdict {v.id}: this notebook decided {v.key!r} but results.json holds "
                                   f"{saved.get('key')!r}")
        self._emit(f"{v.id}: {v.answer}\n{tail}", {"verdict": v.id, "key": v.key, "status": status})

    def report_verdict(self, vid: str) -> None:
        """A verdict of an analysis this notebook does not re-run, as results.json records it."""
        saved = self.results.get("verdicts", {}).get(vid)
        line = (f"{vid} (from results.json): {saved['answer']}" if saved else
                f"{vid}: results.json records no verdict {vid}; see report.html")
        self._emit(line, {"report_verdict": vid, "status": "read" if saved else "missing"})

    def summary(self) -> None:
        same = sum(1 for e in self.log if e.get("status") == "same")
        missing = [e.get("check") or e.get("verdict") for e in self.log
                   if e.get("status") == "missing" and "report_verdict" not in e]
        line = (f"{same} numbers and verdicts computed in this notebook are the same as in results.json, "
                f"the numbers report.html prints")
        line += f"; nothing to compare with for {', '.join(map(str, missing))}." if missing else "."
        self._emit(line, {"summary": True, "same": same, "missing": len(missing)})

    def _emit(self, line: str, meta: dict[str, Any]) -> None:
        from IPython.display import display
        self.log.append(meta)
        ok = meta.get("status") == "same"
        body = html.escape(line).replace("✓", '<span style="color:#1a7f37;font-weight:bold">✓</span>')
        display({"text/plain": line, "text/html": f'<pre style="white-space:pre-wrap;margin:0.2em 0">{body}</pre>'},
                raw=True, metadata={"cnnlab": {**meta, "ok": ok}})


def report_notebook(groups: Sequence[tuple[Callable[[Context], Any], Sequence[Section]]],
                    data_dir: str | Path | None = None) -> dict[str, Any]:
    """The notebook for one report (not yet executed): for each of the report's sections, in the
    report's order, its question and the code cells of `ANSWERS`."""
    c = Cells("report")
    c.md(f"""
# EE5179 Programming Assignment 2 — the code behind the report

Every question of the assignment, with the code that answers it. Each section shows the source of
the cnnlab function that computed the answer in report.html (read from the installed package, so
it is the code that ran), runs it on the network this report trained (in `runs/` next to this
notebook), with the report's settings, and checks that the numbers are the ones in results.json.
The expensive analyses (the training itself, the controlled experiment of 2.4, the natural class
models, the robustness curves) show their code and read their numbers from results.json. This
notebook was executed when the report was written; **Kernel → Restart & Run All** runs it again.

{COLAB_NOTE}
""")
    # absolute: the notebook runs with the report folder as its working directory
    dd = repr(str(Path(data_dir).resolve())) if data_dir is not None else "None"
    c.code(SETUP.format(data_dir=dd), name="setup")
    for s in (s for _, sections in groups for s in sections):
        a = ANSWERS.get(s.id)
        question = "\n".join("> " + line for line in s.question.splitlines())
        c.md(f"## {s.id} {s.title}\n\n{question}\n\n"
             + (a.what if a else "report.html answers this question; this notebook has no code for it."))
        for name, source in a.cells if a else ():
            c.code(source, name=f"{s.id} {name}")
    c.md("## Summary")
    c.code("check.summary()", name="summary")
    c.md(WIDGET_NOTE)
    c.md("## The whole report in one command\n\n`cnnlab report` (or `cnnlab.report.build_report(...)`) "
         "trains both networks and writes report.html, report.pdf, results.json, this notebook (executed) and "
         f"its PDF, {NOTEBOOK_PDF}.")
    return c.notebook()


def executed_notebook(groups: Sequence[tuple[Callable[[Context], Any], Sequence[Section]]], out: Path,
                      data_dir: str | Path | None) -> dict[str, Any]:
    """The report's notebook, built and executed in the report folder `out` (not yet written)."""
    return run_notebook(report_notebook(groups, data_dir), out)
