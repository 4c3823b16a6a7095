"""The report: the whole assignment answered in one command, as HTML, PDF and results.json.

Every sentence that states a finding is generated from this run's measurements; where the
evidence does not decide a question, the text says so. Each printed number is registered in
`results.json["printed"]`, so a test can check that the HTML shows exactly the measured values.
"""

from __future__ import annotations

import base64
import html
import io
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .config import preset as make_preset
from .errors import ConfigError
from .runs import open_run, versions, write_json
from .stats import mcnemar, mean_std, paired_ci

ASSIGNMENT = "EE5179 Deep Learning for Imaging — Programming Assignment 2: Convolutional Neural Networks"


@dataclass(frozen=True)
class AnalysisConfig:
    """How much analysis the report runs (the `quick`/`full` presets set these)."""
    n_random_images: int = 24        # random test images shown with true/predicted labels (1.2)
    activation_images: int = 2       # test images whose feature maps are shown (2.3)
    occlusion_images: int = 3        # test images with full occlusion maps (2.4)
    meaningfulness_n: int = 100      # correctly classified test images in the meaningfulness statistic
    synth_steps: int = 200           # gradient steps for class models (3.1)
    adv_steps: int = 200             # gradient steps for targeted fakes (3.2)
    adv_source_digit: int = 2        # the assignment's example: an image of 2 classified as 5
    robustness_n: int = 1000         # test images in the FGSM/PGD robustness curves
    pgd_steps: int = 10


ANALYSIS_PRESETS = {
    "smoke": AnalysisConfig(n_random_images=16, activation_images=1, occlusion_images=1, meaningfulness_n=20,
                            synth_steps=60, adv_steps=60, robustness_n=200, pgd_steps=5),
    "quick": AnalysisConfig(),
    "full": AnalysisConfig(occlusion_images=4, meaningfulness_n=300, robustness_n=2000, pgd_steps=20),
}


# ---------------------------------------------------------------------------------------------
# Building blocks of a section
# ---------------------------------------------------------------------------------------------

def fig_to_data_uri(fig, dpi: int = 110) -> str:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_file_to_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


@dataclass
class Section:
    id: str                      # "1.1", "2.4", "3.1.2", ...
    title: str
    question: str                # the assignment's words
    answer: list[str] = field(default_factory=list)            # paragraphs (HTML-safe)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (data URI, caption)
    tables: list[dict] = field(default_factory=list)            # {"caption", "header", "rows"}
    numbers: dict = field(default_factory=dict)


class Printed:
    """Formats numbers for the text and remembers each formatted string for results.json."""

    def __init__(self):
        self.values: dict[str, Any] = {}
        self.strings: dict[str, str] = {}

    def __call__(self, key: str, value, fmt: str = "{:.2f}") -> str:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            s = "n/a"
        else:
            s = fmt.format(value)
        self.values[key] = value
        self.strings[key] = s
        return s

    def pct(self, key: str, frac: float, digits: int = 2) -> str:
        return self(key, 100.0 * frac if frac is not None else None, "{:.%df}%%" % digits)


def esc(s: Any) -> str:
    return html.escape(str(s))


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------

class Stages:
    """Prints each stage with the time it took; keeps the timings for the report."""

    def __init__(self, log: Callable[[str], None]):
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
    from .train import train
    runs: dict[str, list] = {"plain": [], "batch_norm": []}
    for seed in range(seeds):
        for key, bn in (("plain", False), ("batch_norm", True)):
            cfg = make_preset(preset_name, **{**overrides, "seed": seed, "batch_norm": bn})
            run_dir = out / "runs" / f"{'bn' if bn else 'plain'}-seed{seed}"
            t0 = time.perf_counter()
            res = train(cfg, run_dir, split=split, overwrite=True, progress=False, log=log)
            log(f"    {run_dir.name}: test accuracy {res.test_accuracy * 100:.2f}%, "
                f"training {res.info['timing']['train_time_s']:.1f} s (wall {time.perf_counter() - t0:.1f} s)")
            runs[key].append(run_dir)
    return runs


def _time_to_reach(metrics: list[dict], target: float) -> float | None:
    """Training seconds until validation accuracy first reached `target` (None if never)."""
    for m in metrics:
        if m["val_acc"] >= target:
            return m["train_time_s"]
    return None


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------

@dataclass
class Context:
    out: Path
    split: Any
    runs: dict[str, list[Path]]
    best_run: Any
    best_model: Any
    analysis: AnalysisConfig
    printed: Printed
    results: dict


def build_report(out: str | Path = "reports/latest", preset: str = "quick", seeds: int = 1,
                 data_dir: str | None = None, log: Callable[[str], None] | None = None,
                 train_overrides: dict | None = None, analysis: AnalysisConfig | None = None,
                 pdf: bool = True, command: str | None = None) -> dict:
    """Train plain and batch-norm networks, run every analysis, write report.html/.pdf/results.json.

    Returns results.json as a dict. `train_overrides` change the training preset (e.g.
    {"train_subset": 4000} for a smoke run); `analysis` sets how much analysis runs.
    """
    from .data import load_split
    if seeds < 1:
        raise ConfigError(f"--seeds must be ≥ 1 (got {seeds})")
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    analysis = analysis or ANALYSIS_PRESETS.get(preset, AnalysisConfig())
    stages = Stages(log)
    overrides = dict(train_overrides or {})

    base = make_preset(preset, **overrides)          # validates the overrides before any work
    split = stages.run(f"data: fetch and verify {base.dataset}", lambda: load_split(
        base.dataset, data_dir, base.val_size, base.split_seed, base.train_subset, log=log))
    runs = stages.run(f"train plain and batch-norm networks ({seeds} seed{'s' if seeds > 1 else ''}, preset {preset})",
                      lambda: _train_all(out, preset, seeds, split, overrides, log))
    all_runs = [open_run(p) for p in runs["plain"] + runs["batch_norm"]]
    best = max(all_runs, key=lambda r: (r.info["best"]["val_accuracy"], -all_runs.index(r)))
    ctx = Context(out, split, runs, best, best.load_model(), analysis, Printed(),
                  results={"assignment": ASSIGNMENT, "preset": preset, "seeds": seeds})

    sections: list[Section] = []
    for builder in _builders():
        title = builder.__doc__.strip().splitlines()[0]
        produced = stages.run(title, lambda b=builder: b(ctx))
        sections.extend(produced if isinstance(produced, list) else [produced])

    ctx.results["stage_seconds"] = stages.times
    ctx.results["total_seconds"] = stages.total
    ctx.results["provenance"] = _provenance(ctx, command)
    ctx.results["sections"] = {s.id: {"title": s.title, "numbers": s.numbers} for s in sections}
    ctx.results["printed"] = ctx.printed.strings
    html_text = render_html(sections, ctx)
    (out / "report.html").write_text(html_text, encoding="utf-8")
    write_json(out / "results.json", ctx.results)
    if pdf:
        stages.run("render the PDF (WeasyPrint)", lambda: render_pdf(out / "report.html", out / "report.pdf"))
    log(f"report: {(out / 'report.html').resolve()}  ({stages.total:.0f} s in all)")
    return ctx.results


def _provenance(ctx: Context, command: str | None) -> dict:
    info = ctx.best_run.info
    return {"command": command or " ".join(sys.argv), "versions": versions(), "hardware": info.get("hardware"),
            "device": info.get("device"), "precision": info.get("precision"),
            "split": info.get("split"), "best_run": str(ctx.best_run.path.relative_to(ctx.out)),
            "runs": {k: [str(Path(p).relative_to(ctx.out)) for p in v] for k, v in ctx.runs.items()},
            "config": info.get("config"), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


# ---------------------------------------------------------------------------------------------
# Part 1: MNIST classification
# ---------------------------------------------------------------------------------------------

def section_1_1(ctx: Context) -> Section:
    """1.1 training curves and test accuracy"""
    from .figures import plot_curves
    from .train import read_metrics
    p = ctx.printed
    run = ctx.best_run
    metrics = read_metrics(run.path / "metrics.csv")
    plain = [open_run(r) for r in ctx.runs["plain"]]
    accs = [r.info["test"]["accuracy"] for r in plain]
    m, s = mean_std(accs)
    cfg = plain[0].info["config"]
    s1 = Section("1.1", "Training curves and test accuracy",
                 "Show the plot of training error, validation error and prediction accuracy as the training "
                 "progresses. At the end of training, report the average prediction accuracy for the whole "
                 "test set of 10000 images.")
    fig = plot_curves(read_metrics(plain[0].path / "metrics.csv"),
                      title=f"plain network, seed {plain[0].info['config']['seed']}")
    s1.figures.append((fig_to_data_uri(fig), "Training and validation loss and error, and validation accuracy, "
                                             "logged four times per epoch (plain network, first seed)."))
    t = plain[0].info["timing"]
    text = (f"The plain network trained for {p('1.1.epochs', cfg['epochs'], '{}')} epoch{'s' if cfg['epochs'] != 1 else ''} "
            f"({p('1.1.steps', plain[0].info['steps'], '{}')} steps of {cfg['batch_size']} images, AdamW with a one-cycle "
            f"schedule peaking at lr {cfg['lr']:g}) in {p('1.1.train_s', t['train_time_s'], '{:.1f}')} s of training on "
            f"{esc(plain[0].info['device'])} ({esc(plain[0].info['precision'])}). "
            f"The checkpoint with the best validation accuracy "
            f"({p.pct('1.1.val_acc', plain[0].info['best']['val_accuracy'])}, epoch {plain[0].info['best']['epoch']}) "
            f"classifies <b>{p.pct('1.1.test_acc', accs[0])}</b> of the 10,000 test images correctly "
            f"({p('1.1.test_errors', plain[0].info['test']['errors'], '{}')} errors).")
    if len(accs) > 1:
        text += (f" Over {len(accs)} seeds the test accuracy is {p.pct('1.1.test_acc_mean', m)} ± "
                 f"{p('1.1.test_acc_std', 100 * s, '{:.2f}')} points (mean ± sample standard deviation).")
    last = metrics[-1]
    gap = last["val_error"] - last["train_error"]
    text += (f" At the end of training the training error is {p.pct('1.1.final_train_err', last['train_error'])} "
             f"and the validation error {p.pct('1.1.final_val_err', last['val_error'])}"
             + (" — a small generalization gap" if abs(gap) < 0.01 else f" — a gap of {100 * gap:.2f} points") + ".")
    s1.answer.append(text)
    s1.numbers = {"test_accuracy": accs, "test_accuracy_mean": m, "test_accuracy_std": s,
                  "train_time_s": [r.info["timing"]["train_time_s"] for r in plain]}
    return s1


def section_1_2(ctx: Context) -> Section:
    """1.2 random test images with true and predicted labels"""
    from .figures import plot_predictions
    p = ctx.printed
    sec = Section("1.2", "Random test images with true and predicted labels",
                  "Plot randomly selected test images showing the true and predicted class labels.")
    n = ctx.analysis.n_random_images
    seed = ctx.best_run.info["config"]["seed"]
    fig = plot_predictions(ctx.best_model, ctx.split, n=n, seed=seed)
    sec.figures.append((fig_to_data_uri(fig), f"{n} test images drawn at random (seed {seed}); "
                                              f"wrong predictions in red. Best model: {esc(ctx.best_run.name)}."))
    # The mistakes are more informative than random hits: show some of them too.
    from .figures import image_grid
    from .train import evaluate
    ev = evaluate(ctx.best_model, ctx.split.test_x, ctx.split.test_y, keep_probs=True)
    wrong = torch.nonzero(ev.predictions != ctx.split.test_y).flatten()[:16]
    if len(wrong):
        imgs = ctx.split.test_x[wrong].squeeze(1).float().div(255).numpy()
        titles = [f"#{int(i)} true {int(ctx.split.test_y[i])}\npred {int(ev.predictions[i])} "
                  f"({float(ev.probs[i].max()) * 100:.0f}%)" for i in wrong]
        fig = image_grid(imgs, titles, ["red"] * len(wrong), ncols=8, size=1.4)
        sec.figures.append((fig_to_data_uri(fig), "The first misclassified test images, with the model's confidence."))
    n_wrong = int((ev.predictions != ctx.split.test_y).sum())
    sec.answer.append(f"The best model ({esc(ctx.best_run.name)}) gets {p('1.2.wrong', n_wrong, '{}')} of the "
                      f"10,000 test images wrong; the second figure shows the first of them: most are digits a "
                      f"person could also misread.")
    sec.numbers = {"wrong": n_wrong}
    return sec


def section_1_6(ctx: Context) -> Section:
    """1.6 batch-normalization study"""
    from .train import evaluate, read_metrics
    p = ctx.printed
    sec = Section("1.6", "Batch-normalization: accuracy and training time",
                  "Use batch-normalization. Does it improve the test accuracy? Does it affect training time?")
    plain = [open_run(r) for r in ctx.runs["plain"]]
    bn = [open_run(r) for r in ctx.runs["batch_norm"]]
    acc_p = [r.info["test"]["accuracy"] for r in plain]
    acc_b = [r.info["test"]["accuracy"] for r in bn]
    ep_p = [float(np.mean(r.info["timing"]["epoch_times_s"])) for r in plain]
    ep_b = [float(np.mean(r.info["timing"]["epoch_times_s"])) for r in bn]
    reach = []
    for rp, rb in zip(plain, bn):
        mp = read_metrics(rp.path / "metrics.csv")
        mb = read_metrics(rb.path / "metrics.csv")
        target = mp[-1]["val_acc"]
        reach.append({"target": target, "plain_s": _time_to_reach(mp, target), "bn_s": _time_to_reach(mb, target)})
    n = len(plain)

    rows = []
    for i, (rp, rb) in enumerate(zip(plain, bn)):
        rows.append([str(rp.info["config"]["seed"]), f"{acc_p[i] * 100:.2f}%", f"{acc_b[i] * 100:.2f}%",
                     f"{ep_p[i]:.2f}", f"{ep_b[i]:.2f}",
                     _fmt_s(reach[i]["plain_s"]), _fmt_s(reach[i]["bn_s"])])
    sec.tables.append({"caption": "Plain vs batch-norm network, same split, seeds, budget and schedule. "
                                  "Reach = training seconds until validation accuracy first reached the plain "
                                  "model's final validation accuracy.",
                       "header": ["seed", "test acc (plain)", "test acc (BN)", "s/epoch (plain)", "s/epoch (BN)",
                                  "reach (plain)", "reach (BN)"], "rows": rows})

    mp_, sp_ = mean_std(acc_p)
    mb_, sb_ = mean_std(acc_b)
    diff = paired_ci(acc_p, acc_b)
    # Paired exact test on the test images for the first seed (works with one seed).
    ev_p = evaluate(plain[0].load_model(), ctx.split.test_x, ctx.split.test_y)
    ev_b = evaluate(bn[0].load_model(), ctx.split.test_x, ctx.split.test_y)
    y = ctx.split.test_y
    mc = mcnemar((ev_p.predictions == y).tolist(), (ev_b.predictions == y).tolist())
    d_pts = 100 * diff["mean"]
    if n > 1:
        acc_text = (f"Test accuracy over {n} seeds: plain {p.pct('1.6.acc_plain_mean', mp_)} ± "
                    f"{p('1.6.acc_plain_std', 100 * sp_, '{:.2f}')}, batch-norm {p.pct('1.6.acc_bn_mean', mb_)} ± "
                    f"{p('1.6.acc_bn_std', 100 * sb_, '{:.2f}')} (mean ± sd). The paired difference (BN − plain) is "
                    f"{p('1.6.acc_diff', d_pts, '{:+.2f}')} points, 95% CI "
                    f"[{p('1.6.acc_diff_lo', 100 * diff['ci_low'], '{:+.2f}')}, {p('1.6.acc_diff_hi', 100 * diff['ci_high'], '{:+.2f}')}]. ")
        decided = diff["ci_low"] > 0 or diff["ci_high"] < 0
    else:
        acc_text = (f"Test accuracy: plain {p.pct('1.6.acc_plain_mean', mp_)}, batch-norm "
                    f"{p.pct('1.6.acc_bn_mean', mb_)}, a difference of {p('1.6.acc_diff', d_pts, '{:+.2f}')} points "
                    f"from a single seed. ")
        decided = mc["p_value"] < 0.05
    acc_text += (f"On the same 10,000 test images (seed {plain[0].info['config']['seed']}), "
                 f"{p('1.6.only_plain', mc['only_a'], '{}')} are right only for the plain model and "
                 f"{p('1.6.only_bn', mc['only_b'], '{}')} only for the batch-norm model "
                 f"(exact McNemar test p = {p('1.6.mcnemar_p', mc['p_value'], '{:.3g}')}). ")
    if decided and d_pts > 0:
        verdict = (f"<b>Yes: batch-normalization improved test accuracy</b> in this run, by "
                   f"{abs(d_pts):.2f} points{' on average' if n > 1 else ''}.")
    elif decided and d_pts < 0:
        verdict = (f"<b>No: batch-normalization lowered test accuracy</b> in this run, by {abs(d_pts):.2f} points"
                   f"{' on average' if n > 1 else ''}.")
    else:
        verdict = ("<b>Inconclusive:</b> the difference is within what seed-to-seed and test-sampling noise "
                   "produce, so this run does not show that batch-normalization changes test accuracy"
                   + (" (run with more seeds, e.g. --seeds 3, to narrow it down)." if n < 3 else "."))
    sec.answer.append(acc_text + verdict)

    ratio = float(np.mean(ep_b) / np.mean(ep_p))
    reach_b = [r["bn_s"] for r in reach if r["bn_s"] is not None]
    reach_p = [r["plain_s"] for r in reach if r["plain_s"] is not None]
    time_text = (f"Training time: one epoch takes {p('1.6.epoch_s_plain', float(np.mean(ep_p)), '{:.2f}')} s without and "
                 f"{p('1.6.epoch_s_bn', float(np.mean(ep_b)), '{:.2f}')} s with batch-normalization "
                 f"(×{p('1.6.epoch_ratio', ratio, '{:.2f}')} per epoch"
                 + ("; the two normalization layers add their own forward and backward work). " if ratio > 1.05 else
                    "; within the noise of the measurement). " if ratio > 0.95 else "). "))
    if reach_b and len(reach_b) == n:
        rb, rp = float(np.mean(reach_b)), float(np.mean(reach_p))
        faster = rb < rp
        time_text += (f"But to reach the plain model's final validation accuracy the batch-norm model needs "
                      f"{p('1.6.reach_bn', rb, '{:.1f}')} s against {p('1.6.reach_plain', rp, '{:.1f}')} s for the plain one, "
                      + ("so it gets there sooner: it converges in fewer steps." if faster else
                         "so it is not faster to that accuracy in this run."))
    else:
        time_text += (f"The batch-norm model did not reach the plain model's final validation accuracy in "
                      f"{n - len(reach_b)} of {n} seed(s) within the same budget.")
    sec.answer.append(time_text)
    sec.numbers = {"test_acc_plain": acc_p, "test_acc_bn": acc_b, "epoch_s_plain": ep_p, "epoch_s_bn": ep_b,
                   "reach": reach, "paired_diff": diff, "mcnemar_seed0": mc, "epoch_time_ratio": ratio}
    ctx.results["batch_norm"] = sec.numbers

    from .figures import plot_bn_comparison
    fig = plot_bn_comparison([read_metrics(r.path / "metrics.csv") for r in plain],
                             [read_metrics(r.path / "metrics.csv") for r in bn])
    sec.figures.append((fig_to_data_uri(fig), "Validation accuracy against training seconds, every seed; "
                                              "plain in blue, batch-norm in orange."))
    return sec


def _fmt_s(x):
    return "never" if x is None else f"{x:.1f} s"


def _builders() -> list[Callable[[Context], Any]]:
    from . import report_generate, report_inspect
    return [section_1_1, section_1_2, *report_inspect.BUILDERS[:1], section_1_6, *report_inspect.BUILDERS[1:],
            *report_generate.BUILDERS]


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

def render_html(sections: list[Section], ctx: Context) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape
    env = Environment(loader=PackageLoader("cnnlab", "templates"), autoescape=select_autoescape(["html", "j2"]))
    sections = sorted(sections, key=lambda s: [int(x) for x in s.id.split(".") if x.isdigit()] or [99])
    tpl = env.get_template("report.html.j2")
    prov = ctx.results["provenance"]
    return tpl.render(title="cnnlab report", assignment=ASSIGNMENT, sections=sections, prov=prov,
                      results=ctx.results, stage_seconds=ctx.results["stage_seconds"],
                      total_seconds=ctx.results["total_seconds"])


def render_pdf(html_path: Path, pdf_path: Path) -> None:
    from weasyprint import HTML
    import logging
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    HTML(filename=str(html_path)).write_pdf(str(pdf_path))
