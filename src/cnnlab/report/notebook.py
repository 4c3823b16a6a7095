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

`cnnlab report` executes the notebook in a fresh kernel of the same Python (`run_notebook`, with
the report folder as its working directory), so every code cell has its execution count and
the outputs are what running it printed; then `notebook_pdf` renders the executed notebook as
report-notebook.pdf. A cell that fails stops the report with a NotebookError naming the cell.

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
import os
import re
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import AnalysisConfig
from ..data import load_split
from ..errors import CnnlabError, RunError
from ..notebook import COLAB_NOTE, Cells, dumps
from ..runs import open_run
from .base import Context, Printed, Section

NOTEBOOK = "report.ipynb"
NOTEBOOK_PDF = "report-notebook.pdf"
CELL_TIMEOUT_S = 600          # per cell; every cell of the report's notebook takes seconds


class NotebookError(CnnlabError):
    """report.ipynb could not be executed: a cell failed (named in the message) or no kernel started."""


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
    cfg = best.info["config"]
    split = load_split(cfg["dataset"], data_dir, cfg["val_size"], cfg["split_seed"], cfg["train_subset"])
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
    """NumPy arrays and scalars, tensors and tuples as JSON values (lists, floats, ints)."""
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        v = v.tolist()
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


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

    def __init__(self, results: dict[str, Any]):
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


# ---------------------------------------------------------------------------------------------
# The cells, per question
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    what: str                            # one sentence: what the code below does
    cells: tuple[tuple[str, str], ...]   # (name, source) of each code cell


SETUP = """\
# On Colab or any fresh environment, uncomment and point at the repository (or a local checkout),
# and upload this report folder (report.ipynb, results.json, runs/):
# %pip install -q "cnnlab @ git+https://github.com/<you>/cnnlab"
%matplotlib inline
import json
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from cnnlab.report.notebook import Checks, open_report, show_source
from cnnlab.train import train

# The report folder is the folder this notebook is in. DATA_DIR: where the MNIST files are
# (None: CNNLAB_DATA_DIR or cnnlab's cache, as for `cnnlab train`).
DATA_DIR = {data_dir}
R = open_report(".", data_dir=DATA_DIR, trainer=train)   # the report's runs, data split and analysis settings
results = json.loads(Path("results.json").read_text(encoding="utf-8"))   # what report.html prints
check = Checks(results)                           # compares this notebook's numbers with results.json
model, split, A = R.best_model, R.split, R.analysis
print("best network:", R.best_run.name, "| runs:", {{k: [p.name for p in v] for k, v in R.runs.items()}})
"""

ANSWERS: dict[str, Answer] = {
    "1.1": Answer(
        "The network is `cnnlab.model.Net` (below); `cnnlab.train.train` ran the loop shown below for every "
        "network in `runs/` (its logged points are the curves), and `evaluate` gives the test accuracy of the best "
        "checkpoint.",
        (("the network", """\
from cnnlab.model import Net

show_source(Net)
print(Net())          # the plain network's layers; Net(batch_norm=True) adds bn1 and bn2
"""), ("the training loop", """\
from cnnlab import train as T

show_source(T._run, between=("# --- the loop", "# --- the end"))
"""), ("test accuracy and curves", """\
from cnnlab.figures import plot_curves
from cnnlab.runs import open_run

plain = open_run(R.runs["plain"][0])              # the network of 1.1: plain, first seed
plain_net = plain.load_model()
# the whole test set, in the precision the run was tested in when it was trained
test = T.evaluate(plain_net, split.test_x, split.test_y, precision=plain.info["precision"])
check("test accuracy of the plain network", test.accuracy, "sections/1.1/numbers/test_accuracy/0", "{:.2%}")
if (plain.path / "metrics.csv").is_file():          # an imported network has curves only when it came with them
    from cnnlab.metrics import read_metrics
    plot_curves(read_metrics(plain.path / "metrics.csv"), title=f"plain network, seed {plain.info['config']['seed']}")
    plt.show()
"""))),
    "1.2": Answer(
        "Test images drawn at random with the run's seed, labelled by the plain network of 1.1; its predictions on "
        "the whole test set are the ones computed above.",
        (("random test images", """\
from cnnlab.figures import plot_predictions

plot_predictions(plain_net, split, n=A.n_random_images, seed=plain.info["config"]["seed"])
plt.show()
check("test images the plain network gets wrong", int((test.predictions != split.test_y).sum()),
      "sections/1.2/numbers/wrong")
"""),)),
    "1.3": Answer(
        "`summary` registers a forward hook on every layer, runs one image through the network and records each "
        "layer's input and output shape.",
        (("layer shapes by forward hooks", """\
from cnnlab.analysis.anatomy import summary

show_source(summary)
plain_net, bn_net = summary(batch_norm=False), summary(batch_norm=True)
print(bn_net.table_text())
check("output shape of each layer (batch-norm network)", [l["output_shape"] for l in bn_net.layers],
      "summary/batch_norm/layers/*/output_shape")
"""),)),
    "1.4": Answer(
        "The same `summary` counts every learnable tensor of each layer (`module.parameters()`), above.",
        (("parameters", """\
for name, s in (("plain", plain_net), ("batch_norm", bn_net)):
    check(f"parameters, {name} network", s.params, f"summary/{name}/params", "{:,}")
"""),)),
    "1.5": Answer(
        "`summary` counts a neuron per output unit of each conv and fully connected layer (above); counting the "
        "pooling outputs too is the second line.",
        (("neurons", """\
check("neurons", plain_net.neurons, "summary/plain/neurons", "{:,}")
check("neurons, pooling outputs counted too", plain_net.neurons_with_pooling,
      "summary/plain/neurons_with_pooling", "{:,}")
"""),)),
    "1.6": Answer(
        "The batch-norm network is the same `Net(batch_norm=True)` trained with the same loop; here it classifies "
        "the test set again, and the report's exact McNemar test and rule run on the two networks' answers.",
        (("batch-norm against plain", """\
from cnnlab.analysis.batch_norm import accuracy_verdict
from cnnlab.stats import mcnemar

show_source(mcnemar, accuracy_verdict)
plain_runs = [open_run(p) for p in R.runs["plain"]]
bn_runs = [open_run(p) for p in R.runs["batch_norm"]]
y = split.test_y
if not bn_runs:
    print("the report was given no batch-norm network (cnnlab report --runs PLAIN BN)")
else:
    bn_test = T.evaluate(bn_runs[0].load_model(), split.test_x, y, precision=bn_runs[0].info["precision"])
    check("test accuracy, batch-norm network", bn_test.accuracy, "batch_norm/test_acc_bn/0", "{:.2%}")
    mc = mcnemar((test.predictions == y).tolist(), (bn_test.predictions == y).tolist())
    check("right only for plain, right only for batch-norm, McNemar p", [mc["only_a"], mc["only_b"], mc["p_value"]],
          ["batch_norm/mcnemar_seed0/only_a", "batch_norm/mcnemar_seed0/only_b", "batch_norm/mcnemar_seed0/p_value"], "{:.4g}")
    acc_plain = [r.info["test"]["accuracy"] for r in plain_runs]   # every seed, as measured after training
    acc_bn = [r.info["test"]["accuracy"] for r in bn_runs]
    check.verdict(accuracy_verdict(acc_plain, acc_bn, mc))
    if all("timing" in r.info for r in plain_runs + bn_runs):     # imported networks were not timed by cnnlab
        epoch_s = {name: [sum(r.info["timing"]["epoch_times_s"]) / len(r.info["timing"]["epoch_times_s"]) for r in runs]
                   for name, runs in (("plain", plain_runs), ("batch-norm", bn_runs))}
        print("seconds per epoch (run.json):", {k: [round(s, 2) for s in v] for k, v in epoch_s.items()})
        check.report_verdict("1.6.time")
"""),)),
    "2.1": Answer(
        "`filters` reads conv1's 32 kernels, sorts each by the pattern that holds most of its energy, and compares "
        "them with the same kernels before training (the untrained network of the run's seed).",
        (("conv1 filters", """\
from cnnlab.analysis import untrained_for_run
from cnnlab.analysis.filters import filters, patterns_verdict

show_source(filters)
untrained = untrained_for_run(R.best_run, model)    # the network as it was before training
f1 = filters(model, "conv1", reference=untrained)
f1.figure()
plt.show()
check("conv1 kernels by kind", f1.trained["class_counts"], "filters/conv1/trained/class_counts")
check.verdict(patterns_verdict(f1))
"""),)),
    "2.2": Answer(
        "The same `filters` on conv2's 32×32 kernels, compared with conv1's.",
        (("conv2 filters", """\
f2 = filters(model, "conv2", reference=untrained)
f2.figure()
plt.show()
check("share of conv2's kernel energy in smooth low-order patterns", f2.trained["low_order_share"],
      "filters/conv2/trained/low_order_share", "{:.3f}")
check.verdict(patterns_verdict(f2, compare=f1))
"""),)),
    "2.3": Answer(
        "`Net.features` runs the layers one by one and keeps every intermediate; `activations` takes the maps after "
        "ReLU for the report's test images and measures how they change with depth.",
        (("activations", """\
from cnnlab.analysis.activations import activations, depth_verdict
from cnnlab.report.base import pick_images

show_source(Net.features, activations)
acts = [activations(model, split.test_x[i].float() / 255, label=int(split.test_y[i]), name=f"test image #{i}")
        for i in pick_images(R, A.activation_images)]
acts[0].figure()
plt.show()
for n, a in enumerate(acts):
    check(f"{a.name}: share of active units in conv1, pool1, conv2, pool2",
          [s["active_fraction"] for s in a.stats.values()], f"activations/{n}/layers/*/active_fraction", "{:.3f}")
check.verdict(depth_verdict([a.stats for a in acts]))
"""),)),
    "2.4": Answer(
        "`occlusion` builds every occluded copy of the image (a grey 0.5 patch of k×k pixels at each position, "
        "k = 1…5) and runs them through the network; one map runs here. Whether the learning is meaningful is "
        "decided by a controlled experiment (`meaningful_experiment`, below), which the report ran; its numbers "
        "are read from results.json.",
        (("occlusion map", """\
from cnnlab.analysis import occlusion as O
from cnnlab.analysis import regions

show_source(regions.occluded, O.occlusion)
i = pick_images(R, A.occlusion_images)[0]
occ = O.occlusion(model, split.test_x[i].float() / 255, target=int(split.test_y[i]), label=int(split.test_y[i]),
                  name=f"test image #{i}")
occ.figure()
plt.show()
check(f"p(class {occ.target}) of test image #{i} without a patch", occ.base_prob,
      "occlusion/images/0/base_prob", "{:.4f}")
check("lowest p under the patch, k = 1…5", [float(occ.prob[k].min()) for k in sorted(occ.prob)],
      "occlusion/images/0/patch_sizes/*/min_prob", "{:.4f}")
"""), ("is the learning meaningful", """\
from cnnlab.analysis.meaningful import meaningful_experiment, meaningful_verdict

show_source(meaningful_experiment, meaningful_verdict)
# Not re-run here (it trains the shortcut control N): the report's result, from results.json.
m = results["occlusion"]["meaningful"]
for name, s in m["subjects"].items():
    print(f"{name}: behaviour {s['behaviour_call']!r}, occlusion {s['occlusion_call']!r} -> {s['verdict']}")
print("verdict:", m["verdict"])
check.report_verdict("2.4")
"""))),
    "3.1.1": Answer(
        "`ascend` is the gradient ascent: inside `frozen` no weight of the network requires a gradient, and each "
        "step adds step_size · dC/dX to the image X, with C = logits[target]; `synthesize` starts it from Gaussian "
        "noise around 128 for the ten classes at once, with the report's settings.",
        (("class models", """\
from cnnlab.analysis._shared import ascend, frozen
from cnnlab.analysis.class_models import synthesize

show_source(frozen, ascend, synthesize)
syn = synthesize(model, steps=A.synth_steps, seed=0, label="plain class models")
syn.figure()
plt.show()
check("p(target) of each class model, targets 0–9", syn.final_prob, "class_models/plain/final_target_prob", "{:.4f}")
"""),)),
    "3.1.2": Answer(
        "The class models' predicted classes, and the report's confidence rule applied to them.",
        (("confidence", """\
from cnnlab.analysis.class_models import confidence_verdict

check("predicted class of each class model", syn.final_pred, "class_models/plain/final_pred")
check.verdict(confidence_verdict(syn.to_dict(), results["class_models"]["regularized"]))
"""),)),
    "3.1.3": Answer(
        "Whether the class models look like digits is judged by what did not make them (the nearest training "
        "image and a second network); the judge's counts and the natural class models (`synthesize_natural`, "
        "below) come from the report, and the report's rule runs here on those counts.",
        (("do they look like digits", """\
from cnnlab.analysis.natural import readable_verdict, synthesize_natural

show_source(synthesize_natural)
judged = results["class_models"]["readability"]
counts = {name: row["counts"] for name, row in judged["rows"].items()}
for name, c in counts.items():
    print(f"{name:12s} readable {c['readable']}/{c['n']}  near a training digit {c['near_training_digit']}/{c['n']}  "
          f"named by the judge {c['named_by_judge']}/{c['n']}")
check.verdict(readable_verdict(counts, judged["reference_real_test_digits"], judged["threshold_grey_levels"],
                               judge=results["class_models"]["judge"]["name"]))
check.report_verdict("3.1.3")
"""),)),
    "3.1.4": Answer(
        "The cost C = logits[target] that `ascend` recorded at every step of the class models above.",
        (("cost", """\
from cnnlab.analysis.class_models import cost_verdict

syn.cost_figure()
plt.show()
check("mean C on the noise and after the last step", [syn.cost[0].mean(), syn.cost[-1].mean()],
      ["class_models/plain/cost_start_mean", "class_models/plain/cost_end_mean"], "{:.3f}")
check.verdict(cost_verdict(syn.cost))
"""),)),
    "3.2.1": Answer(
        "`adversarial` runs the same `ascend` (above) with C = logits[target] − β·MSE(X, source): the MSE to an "
        "image of the source digit pulls X towards it while the logit of the target rises.",
        (("targeted fakes", """\
from cnnlab.analysis._shared import first_image_of
from cnnlab.analysis.targeted import adversarial

show_source(adversarial)
d = A.adv_source_digit
idx = first_image_of(split.test_y, d)
adv = adversarial(model, split.test_x[idx].float() / 255, steps=A.adv_steps, source_label=d, scale="01")
adv.figure()
plt.show()
check("p(target) of each fake, targets 0–9", adv.final_prob, "targeted/result/final_target_prob", "{:.4f}")
check("mean squared distance to the source (grey levels²)", adv.mse, "targeted/result/mse_to_source", "{:.1f}")
check.report_verdict("3.2.1")
print("β sweep (results.json):")
for r in results["targeted"]["beta_sweep"]["rows"]:
    print(f"  β = {r['beta']:<6g} fooled {r['fooling_rate_other_classes']:.0%}, mean p(target) "
          f"{r['mean_target_prob']:.3f}, mean MSE to the source {r['mean_mse_to_source']:.1f}")
"""),)),
    "4.1": Answer(
        "FGSM and PGD (below) perturb each test image within an L∞ ball of radius ε; the report ran them on both "
        "networks and its accuracy table is read from results.json.",
        (("robustness", """\
from cnnlab.analysis.robustness import fgsm, pgd

show_source(fgsm, pgd)
for attack in ("fgsm", "pgd") if "robustness" in results else ():      # measured when both networks were given
    for r in results["robustness"][attack]["table"]:
        print(f"{attack.upper():4s} {r['model']:10s} ε = {r['eps']:<5g} accuracy {r['accuracy']:.1%}")
check.report_verdict("4.1")
"""),)),
}

WIDGET_NOTE = """\
## Try it yourself: the explorer

Draw a digit (or pick a test image) and watch the prediction, the feature maps, the occlusion map and a
targeted attack update: the same page as `cnnlab explore`, inside the notebook (it needs the notebook
extra, `pip install 'cnnlab[notebook]'`). In a code cell:

```python
from cnnlab.explore import widget
widget(R.best_run.path, data_dir=DATA_DIR)
```"""


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


# ---------------------------------------------------------------------------------------------
# Executing the notebook and rendering its PDF (when the report is written)
# ---------------------------------------------------------------------------------------------

def _kernel_manager_class(tmp: Path) -> type:
    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import AsyncKernelManager

    class ThisPython(AsyncKernelManager):
        """A kernel of the Python running cnnlab (never a `python3` kernelspec that points elsewhere),
        its connection file in `tmp` (removed afterwards, even when the kernel was killed)."""

        def __init__(self, **kwargs: Any):
            super().__init__(**kwargs)
            self.connection_file = str(tmp / "kernel.json")

        @property
        def kernel_spec(self) -> KernelSpec:
            if self._kernel_spec is None:
                self._kernel_spec = KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                               display_name="Python 3", language="python", metadata={})
            return self._kernel_spec

    return ThisPython


def run_notebook(nb: dict[str, Any], folder: str | Path, timeout: float = CELL_TIMEOUT_S) -> dict[str, Any]:
    """Execute `nb` top to bottom in a fresh kernel of this Python, with `folder` as its working
    directory; returns the executed notebook (execution counts and outputs filled in).

    A cell that fails (or runs past `timeout` seconds, or kills its kernel) is a NotebookError
    naming the cell: "report.ipynb: cell 14 (2.4 occlusion map) failed: ValueError: …". The
    kernel runs in a thread, so this process's SIGINT/SIGTERM handlers stay in place (nbclient
    would replace them in the main thread): a stop signal raises here as usual, and the kernel
    is killed on the way out."""
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError as e:
        raise NotebookError(f"{NOTEBOOK} cannot be executed: {e.name} is not installed for {sys.executable} "
                            f"(pip install nbformat nbclient ipykernel)") from None

    node = nbformat.reads(dumps(nb), as_version=4)      # sources as strings, as nbclient wants them
    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix="cnnlab-kernel-") as tmp:
        env = _kernel_env(Path(tmp))
        client = NotebookClient(node, timeout=timeout, startup_timeout=120, kernel_name="python3",
                                kernel_manager_class=_kernel_manager_class(Path(tmp)), allow_errors=False,
                                shutdown_kernel="immediate",        # its work is done: no graceful wait
                                resources={"metadata": {"path": str(folder)}})
        stderr_path = Path(tmp) / "kernel-stderr.txt"
        outcome: dict[str, BaseException] = {}

        def execute() -> None:
            with open(stderr_path, "w", encoding="utf-8") as stderr:
                try:
                    client.execute(env=env, stderr=stderr)
                except BaseException as e:       # handed to the main thread
                    outcome["error"] = e

        worker = threading.Thread(target=execute, name="report.ipynb", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.2)
        except BaseException:                    # a stop signal (Interrupted): the kernel goes too
            _kill_kernel(client)
            raise
        if "error" in outcome:
            raise _notebook_error(node, outcome["error"], stderr_path, timeout) from None
    return node


def _kernel_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    # the cnnlab this process runs, whatever the kernel's own sys.path would find first
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
    env["IPYTHONDIR"] = str(tmp / "ipython")         # no user profile or startup files change the answers
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"      # debugpy's warning about frozen modules
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"   # not the CLI's Agg: figures are outputs
    return env


def _kill_kernel(client: Any) -> None:
    proc = getattr(getattr(getattr(client, "km", None), "provisioner", None), "process", None)
    if proc is not None:
        try:
            proc.kill()
        except OSError:
            pass


def _notebook_error(node: Any, e: BaseException, stderr_path: Path, timeout: float) -> NotebookError:
    """One line: which cell failed and how; or why the kernel did not run."""
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    index = next((i for i, cell in enumerate(node.cells) if cell.cell_type == "code"
                  and any(o.get("output_type") == "error" for o in cell.get("outputs", []))), None)
    if isinstance(e, CellExecutionError):
        what = f"{e.ename}: {_first_line(e.evalue)}" if getattr(e, "ename", None) else _first_line(str(e))
    elif isinstance(e, CellTimeoutError):
        what = f"it ran for more than {timeout:g} s"
    elif isinstance(e, DeadKernelError):
        what = "the kernel died" + _stderr_tail(stderr_path)
    else:
        what = f"{type(e).__name__}: {_first_line(str(e))}"
    if index is None and isinstance(e, (CellTimeoutError, DeadKernelError)):
        index = _running(node)
    if index is not None:
        name = node.cells[index].get("metadata", {}).get("cnnlab", {}).get("cell", "")
        return NotebookError(f"{NOTEBOOK}: cell {index + 1}{f' ({name})' if name else ''} failed: {what}")
    if not any(cell.get("execution_count") for cell in node.cells if cell.cell_type == "code"):
        return NotebookError(f"{NOTEBOOK}: no Python kernel ran it ({what}{_stderr_tail(stderr_path)}); ipykernel and "
                             f"nbclient must be installed for {sys.executable} (pip install ipykernel nbclient)")
    return NotebookError(f"{NOTEBOOK} could not be executed: {what}")


def _running(node: Any) -> int | None:
    """The first code cell without an execution count: the one that was running."""
    return next((i for i, cell in enumerate(node.cells) if cell.cell_type == "code" and not cell.get("execution_count")),
                None)


def _first_line(s: str) -> str:
    s = " ".join(str(s).strip().splitlines()[:1]) or "(no message)"
    return s if len(s) <= 300 else s[:297] + "…"


def _stderr_tail(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f": {_first_line(lines[-1])}" if lines else ""


PRINT_CSS = """
@page { size: A4; margin: 15mm 14mm 16mm 14mm;
        @bottom-center { content: "report.ipynb, executed — page " counter(page) " of " counter(pages);
                         font: 7.5pt sans-serif; color: #777; } }
body { font: 9.5pt/1.4 "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; color: #111; margin: 0; }
h1 { font-size: 16pt; margin: 0 0 0.5em; } h2 { font-size: 12.5pt; margin: 1.2em 0 0.3em; break-after: avoid; }
h3 { font-size: 11pt; break-after: avoid; }
.anchor-link { display: none; }
.cnnlab-source > p { break-after: avoid; }
blockquote { margin: 0.4em 0; padding: 0.1em 0.8em; border-left: 3px solid #bbb; color: #333; }
code { font: 8.5pt "DejaVu Sans Mono", monospace; background: #f3f3f3; padding: 0 2px; }
pre { font: 7.4pt/1.32 "DejaVu Sans Mono", monospace; white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; }
pre code { background: none; padding: 0; }
.cell { margin: 0.35em 0; }
.text_cell .prompt { display: none; }
.prompt { font: 7pt "DejaVu Sans Mono", monospace; color: #3949ab; margin: 0.5em 0 1px; break-after: avoid; }
.output_prompt { display: none; }
.input_area { border: 1px solid #cfd4da; background: #f7f8fa; padding: 4px 6px; border-radius: 2px; }
.output_area { margin: 3px 0 0 0; }
.output_subarea { padding: 0 0 0 6px; border-left: 2px solid #e3e6ea; margin: 2px 0; }
.output_stderr { color: #a00; }
.output_png img, img { max-width: 100%; max-height: 125mm; width: auto; height: auto; break-inside: avoid; }
table { border-collapse: collapse; font-size: 8pt; } td, th { border: 1px solid #ddd; padding: 1px 4px; }
"""


def notebook_pdf(nb: dict[str, Any], pdf_path: str | Path, base_url: str | Path | None = None) -> None:
    """The executed notebook as an A4 PDF: nbconvert's basic HTML (each code cell with its "In [n]:"
    prompt, the outputs as stored), a print style sheet of its own that wraps long code lines,
    WeasyPrint. Nothing is fetched from the network and no script runs."""
    import logging

    import nbformat
    from nbconvert import HTMLExporter
    from pygments.formatters import HtmlFormatter
    from weasyprint import HTML

    from ..output import atomic_write_bytes

    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    node = nbformat.from_dict(nb)
    body, _ = HTMLExporter(template_name="basic").from_notebook_node(node)
    body = re.sub(r"<script\b.*?</script>", "", body, flags=re.S | re.I)
    code_css = HtmlFormatter(style="default").get_style_defs(".highlight")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>report.ipynb</title>'
            f"<style>{code_css}\n{PRINT_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")
    pdf = HTML(string=page, base_url=str(base_url) if base_url is not None else None).write_pdf()
    atomic_write_bytes(Path(pdf_path), pdf)


def executed_notebook(groups: Sequence[tuple[Callable[[Context], Any], Sequence[Section]]], out: Path,
                      data_dir: str | Path | None) -> dict[str, Any]:
    """The report's notebook, built and executed in the report folder `out` (not yet written)."""
    return run_notebook(report_notebook(groups, data_dir), out)
