"""The report: the whole assignment answered in one command, as HTML, PDF, a notebook and results.json.

Every sentence that states a finding is generated from this run's measurements; where the
evidence does not decide a question, the text says so. Each printed number is registered in
`results.json["printed"]`, so a test can check that the HTML shows exactly the measured values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ..config import ANALYSIS_PRESETS, AnalysisConfig
from ..config import preset as make_preset
from ..data import load_split
from ..errors import CnnlabError, ConfigError, Interrupted, OutputError, RunError
from ..notebook import dumps
from ..output import OutputDir, atomic_write_bytes
from ..runs import Run, open_run, versions
from ..train import on_stop_signals, train
from . import activations, anatomy, batch_norm, class_models, filters, occlusion, robustness, targeted, training
from .base import ASSIGNMENT, GLOSSARY, Context, Printed, Section
from .notebook import executed_notebook
from .notebook_run import NOTEBOOK, NOTEBOOK_PDF, NotebookError, notebook_pdf

if TYPE_CHECKING:
    from types import FrameType

# The report's sections in the assignment's order; each builder returns a Section or a list of them.
SECTIONS: list[Callable[[Context], Any]] = [
    training.section_1_1,               # 1.1 training curves and test accuracy
    training.section_1_2,               # 1.2 random test images, true and predicted labels
    anatomy.section_anatomy,            # 1.3–1.5 layer shapes, parameters, neurons
    batch_norm.section_1_6,             # 1.6 batch-normalization
    filters.section_filters,            # 2.1–2.2 filters
    activations.section_activations,    # 2.3 activations
    occlusion.section_occlusion,        # 2.4 occlusion
    class_models.section_class_models,  # 3.1 class models
    targeted.section_targeted,          # 3.2 targeted fakes
    robustness.section_robustness,      # 4.1 robustness (beyond the assignment)
]


class Stages:
    """Prints each stage with the time it took; keeps the timings for the report."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.times: dict[str, float] = {}
        self.t_start = time.perf_counter()

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        self.log(f"▶ {name} …")
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        self.times[name] = dt
        self.log(f"  ✓ {name} ({dt:.1f} s)")
        return out

    @property
    def total(self) -> float:
        return time.perf_counter() - self.t_start


def _train_all(out: Path, preset_name: str, seeds: int, split, overrides: dict, log) -> dict[str, list]:
    runs: dict[str, list] = {"plain": [], "batch_norm": []}
    for seed in range(seeds):
        for key, bn in (("plain", False), ("batch_norm", True)):
            cfg = make_preset(preset_name, **{**overrides, "seed": seed, "batch_norm": bn})
            run_dir = out / "runs" / f"{'bn' if bn else 'plain'}-seed{seed}"
            t0 = time.perf_counter()
            # no curves.png / predictions.png in the run directories: sections 1.1 and 1.2 draw
            # their own, and the two figures cost ~1.3 s per network
            res = train(cfg, run_dir, split=split, overwrite=True, progress=False, log=log, figures=False)
            if res.interrupted:      # no analysis or verdict is ever computed from a stopped run
                raise Interrupted(res.signal or signal.SIGINT, f"training of {run_dir.name} stopped at step "
                                  f"{res.info.steps} of {res.info.total_steps}")
            log(f"    {run_dir.name}: test accuracy {res.test_accuracy * 100:.2f}%, "
                f"training {res.timing.train_time_s:.1f} s (wall {time.perf_counter() - t0:.1f} s)")
            runs[key].append(run_dir)
    return runs


REPORT_FILES = ("report.html", "results.json", "report.ipynb", "report-notebook.pdf", "report.pdf")   # in the order written


def build_report(out: str | Path = "reports/latest", preset: str = "standard", seeds: int = 1,
                 data_dir: str | None = None, log: Callable[[str], None] | None = None,
                 train_overrides: dict | None = None, analysis: AnalysisConfig | None = None,
                 pdf: bool = True, command: str | None = None, overwrite: bool = False,
                 runs: Sequence[str | Path] | None = None) -> dict:
    """Train plain and batch-norm networks, run every analysis, write report.html/.pdf/.ipynb and results.json.

    Returns results.json as a dict. `train_overrides` change the training preset (e.g.
    {"train_subset": 4000} for a smoke run); `analysis` sets how much analysis runs. `runs`: answer
    from these existing runs (a plain one, and optionally a batch-norm one; trained or imported)
    instead of training; they are copied into OUT/runs and `preset` sets only the analysis budget.

    `out` must be absent or empty unless `overwrite` (it holds runs and a report: an earlier
    report, its runs, or any other file is never replaced silently). The first SIGINT / SIGTERM
    stops the report (Interrupted, exit 130 / 143): a training run in progress stops after its
    step and is marked interrupted, and no report file is written after that point, except that
    a report.html and results.json written before the stop are marked incomplete inside, naming
    the files that are missing (with `overwrite`, the earlier report's files are deleted once this
    report is complete, or once a stop leaves new runs beside them; only those cnnlab wrote).
    """
    if seeds < 1:
        raise ConfigError(f"--seeds must be ≥ 1 (got {seeds})")
    given = _given_runs(runs) if runs else None       # checked before the report folder is touched
    d = _report_dir(Path(out), overwrite)
    with _stop_on_signal():
        try:
            return _build_report(d, preset, seeds, data_dir, log, train_overrides, analysis, pdf, command, given)
        except Interrupted as e:
            expected = [n for n in REPORT_FILES if pdf or not n.endswith(".pdf")]
            written = [n for n in expected if n in d.written]
            missing = [n for n in expected if n not in written]
            what = ("every report file was written before the stop" if not missing else
                    f"the report is incomplete: only {', '.join(written)} written" if written else "no report written")
            if "report.html" in written and missing:
                with contextlib.suppress(CnnlabError, OSError, ValueError):   # best effort: the stop is the news
                    _mark_incomplete(d, missing)
            if (d.path / "runs").is_dir():     # new runs replaced what an earlier report of cnnlab's described
                with contextlib.suppress(CnnlabError, OSError):
                    d.sweep()
            runs = f"; the runs trained so far are in {d.path / 'runs'}" if (d.path / "runs").is_dir() else ""
            raise Interrupted(e.signum, f"{e.message + '; ' if e.message else ''}{what}{runs}") from None


def _mark_incomplete(d: OutputDir, missing: list[str], why: str = "it was interrupted") -> None:
    """Say inside report.html and results.json that the report stopped before `missing` were written
    (they were complete when written; only the stop after them is news)."""
    note = f"This report is incomplete: {why} before writing {', '.join(missing)}."
    html = (d.path / "report.html").read_text(encoding="utf-8")
    if "<body>" in html and 'class="incomplete"' not in html:
        d.write_text("report.html", html.replace("<body>", f'<body>\n<p class="incomplete" role="alert"><strong>'
                                                 f"{note}</strong></p>", 1))
    results = d.path / "results.json"
    if results.is_file():
        info = json.loads(results.read_text(encoding="utf-8"))
        info["incomplete"] = {"missing": missing, "note": note}
        d.write_json("results.json", info)


def _report_dir(out: Path, overwrite: bool) -> OutputDir:
    """The checked report folder, before any work: absent or empty, or --overwrite."""
    d = OutputDir(out, overwrite=overwrite)
    if not overwrite and out.is_dir():
        held = [n for n in (*REPORT_FILES, "runs") if (out / n).exists() or (out / n).is_symlink()]
        if held:
            raise OutputError(f"{out} already holds a report or its runs ({', '.join(held)}); pass "
                              f"--overwrite to replace them, or choose another --out")
    if (out / "runs").is_symlink():
        raise OutputError(f"{out / 'runs'} is a symbolic link; cnnlab never writes through a link it did not "
                          f"create: remove it (its target is left alone) or choose another --out")
    d.prepare()
    if overwrite:       # an earlier report's files (cnnlab's only) go once this one is written: sweep()
        d.retire(*REPORT_FILES)
    return d


@contextlib.contextmanager
def _stop_on_signal():
    """The first SIGINT or SIGTERM raises Interrupted where the report is (training installs its
    own handler, which finishes the current step first; _train_all then raises)."""
    def handler(signum: int, frame: FrameType | None) -> NoReturn:
        raise Interrupted(signum)
    with on_stop_signals(handler):
        yield


def _given_runs(paths: Sequence[str | Path]) -> dict[str, Run]:
    """--runs PLAIN [BN]: the plain run first, then optionally a batch-norm one."""
    if len(paths) > 2:
        raise ConfigError(f"--runs takes one or two runs (PLAIN [BN]), not {len(paths)}")
    opened = [open_run(p) for p in paths]
    stopped = [str(r.path) for r in opened if r.interrupted]
    if stopped:
        raise RunError(f"{', '.join(stopped)} did not finish training; no analysis is computed from an interrupted run")
    if opened[0].batch_norm:
        raise ConfigError(f"{opened[0].path} is a batch-norm network; --runs takes the plain network first (PLAIN [BN])")
    if len(opened) == 2 and not opened[1].batch_norm:
        raise ConfigError(f"{opened[1].path} is a plain network; the second of --runs must be the batch-norm network")
    return {"plain": opened[0], **({"batch_norm": opened[1]} if len(opened) == 2 else {})}


RUN_FILES = ("run.json", "model.safetensors", "metrics.csv", "step_times.npy", "filters_by_epoch.safetensors")


def _copy_runs(d: OutputDir, given: dict[str, Run]) -> dict[str, list]:
    """The given runs' files, copied into OUT/runs/ so the report folder stands on its own."""
    from ..model import MAX_CHECKPOINT_BYTES
    from ..schema import read_bytes_limited
    runs: dict[str, list] = {"plain": [], "batch_norm": []}
    for key, run in given.items():
        name = f"{'bn' if key == 'batch_norm' else 'plain'}-{run.name}"
        for f in RUN_FILES:
            if (run.path / f).is_file():
                d.write_bytes(f"runs/{name}/{f}", read_bytes_limited(run.path / f, MAX_CHECKPOINT_BYTES, RunError, f))
        runs[key].append(d.path / "runs" / name)
    return runs


def _build_report(d: OutputDir, preset: str, seeds: int, data_dir: str | None,
                  log: Callable[[str], None] | None, train_overrides: dict | None,
                  analysis: AnalysisConfig | None, pdf: bool, command: str | None,
                  given: dict[str, Run] | None = None) -> dict:
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    out = d.path
    analysis = analysis or ANALYSIS_PRESETS.get(preset, AnalysisConfig())
    stages = Stages(log)
    overrides = dict(train_overrides or {})

    if given:
        # the maker's own config means nothing for an imported network: a judge is trained with `preset`
        if analysis.judge_preset == "same":
            analysis = dataclasses.replace(analysis, judge_preset=preset)
        cfg = given["plain"].config
        split = stages.run(f"data: fetch and verify {cfg.dataset}", lambda: load_split(
            cfg.dataset, data_dir, cfg.val_size, cfg.split_seed, cfg.train_subset, log=log))
        runs = stages.run("copy the given runs (no training)", lambda: _copy_runs(d, given))
        seeds = 1
    else:
        base = make_preset(preset, **overrides)          # validates the overrides before any work
        split = stages.run(f"data: fetch and verify {base.dataset}", lambda: load_split(
            base.dataset, data_dir, base.val_size, base.split_seed, base.train_subset, log=log))
        runs = stages.run(f"train plain and batch-norm networks ({seeds} seed{'s' if seeds > 1 else ''}, preset {preset})",
                          lambda: _train_all(out, preset, seeds, split, overrides, log))
    all_runs = [open_run(p) for p in runs["plain"] + runs["batch_norm"]]
    stopped = [r.name for r in all_runs if r.interrupted]
    if stopped:
        raise RunError(f"the run(s) {', '.join(stopped)} did not finish training; no analysis is "
                       f"computed from an interrupted run")
    best = max(all_runs, key=lambda r: (r.best.val_accuracy, -all_runs.index(r)))
    ctx = Context(out, split, runs, best, best.load_model(), analysis, Printed(),
                  results={"assignment": ASSIGNMENT, "preset": preset, "seeds": seeds,
                           "analysis": dataclasses.asdict(analysis), "notebook": NOTEBOOK},
                  trainer=train)

    sections: list[Section] = []
    by_builder: list[tuple[Callable[[Context], Any], list[Section]]] = []     # for report.ipynb's cells
    for builder in SECTIONS:
        title = (builder.__doc__ or builder.__name__).strip().splitlines()[0]
        produced = stages.run(title, functools.partial(builder, ctx))
        by_builder.append((builder, produced if isinstance(produced, list) else [produced]))
        sections.extend(by_builder[-1][1])

    ctx.results["stage_seconds"] = stages.times
    ctx.results["total_seconds"] = stages.total
    ctx.results["provenance"] = _provenance(ctx, command)
    ctx.results["sections"] = {s.id: {"title": s.title, "numbers": s.numbers} for s in sections}
    ctx.results["printed"] = ctx.printed.strings
    ctx.results["verdicts"] = {v.id: v.to_dict() for s in sections for v in s.verdicts}
    # how each figure reads at print size (tests hold every figure to ≥ 7 pt with no overlapping text)
    ctx.results["figures"] = [{"section": s.id, "caption": re.sub(r"<[^>]+>", "", cap)[:80],
                               **getattr(uri, "legibility", {})}
                              for s in sections for uri, cap in [*s.figures, *s.appendix_figures]]
    html_text = render_html(sections, ctx)
    d.write_text("report.html", html_text)
    d.write_json("results.json", ctx.results)
    # The code behind every answer, executed now in a kernel of this Python with the report folder as its
    # working directory (see report/notebook.py); a failed cell stops the report, and the files above say so.
    try:
        notebook = stages.run("run the notebook report.ipynb", lambda: executed_notebook(by_builder, out, data_dir))
    except NotebookError:
        _mark_incomplete(d, [n for n in (NOTEBOOK, NOTEBOOK_PDF, "report.pdf") if pdf or not n.endswith(".pdf")],
                         why="its notebook failed to run")
        raise
    d.write_text(NOTEBOOK, dumps(notebook))
    if pdf:
        stages.run(f"render the notebook's PDF {NOTEBOOK_PDF}", lambda: notebook_pdf(notebook, d.target(NOTEBOOK_PDF), out))
        d.record(NOTEBOOK_PDF)
    if pdf:
        stages.run("render the PDF (WeasyPrint)", lambda: render_pdf(out / "report.html", d.target("report.pdf")))
        d.record("report.pdf")
    d.sweep()
    log(f"report: {(out / 'report.html').resolve()}  ({stages.total:.0f} s in all)")
    return ctx.results


def _provenance(ctx: Context, command: str | None) -> dict:
    info = ctx.best_run.info
    return {"command": command or " ".join(sys.argv), "versions": versions(), "hardware": info.hardware,
            "device": info.device, "precision": info.precision,
            "split": info.split.to_dict(), "best_run": str(ctx.best_run.path.relative_to(ctx.out)),
            "runs": {k: [str(Path(p).relative_to(ctx.out)) for p in v] for k, v in ctx.runs.items()},
            "config": info.config.to_dict(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def render_html(sections: list[Section], ctx: Context) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape
    env = Environment(loader=PackageLoader("cnnlab", "templates"), autoescape=select_autoescape(["html", "j2"]))
    sections = sorted(sections, key=lambda s: [int(x) for x in s.id.split(".") if x.isdigit()] or [99])
    tpl = env.get_template("report.html.j2")
    prov = ctx.results["provenance"]
    best = ctx.best_run
    best_text = (f"Parts 2 and 3 use the network with the highest validation accuracy, as the assignment asks: the "
                 f"{'batch-norm' if best.batch_norm else 'plain'} network {best.name} "
                 f"({100 * best.best.val_accuracy:.2f}% validation, "
                 f"{100 * best.test.accuracy:.2f}% test accuracy).")
    if best.imported:
        best_text += (" It was trained elsewhere and imported (`cnnlab import`), so it may have been trained on the "
                      "validation images.")
    return tpl.render(title="cnnlab report", assignment=ASSIGNMENT, sections=sections, prov=prov,
                      glossary=GLOSSARY, best_text=best_text,
                      results=ctx.results, stage_seconds=ctx.results["stage_seconds"],
                      total_seconds=ctx.results["total_seconds"])


def render_pdf(html_path: Path, pdf_path: Path) -> None:
    from weasyprint import HTML
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    atomic_write_bytes(pdf_path, HTML(filename=str(html_path)).write_pdf())
