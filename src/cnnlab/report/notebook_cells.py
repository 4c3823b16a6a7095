"""The cells of report.ipynb, per question: what each code cell shows, runs and checks."""

from __future__ import annotations

from dataclasses import dataclass


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
test = T.evaluate(plain_net, split.test_x, split.test_y, precision=plain.info.precision)
check("test accuracy of the plain network", test.accuracy, "sections/1.1/numbers/test_accuracy/0", "{:.2%}")
if (plain.path / "metrics.csv").is_file():          # an imported network has curves only when it came with them
    from cnnlab.metrics import read_metrics
    plot_curves(read_metrics(plain.path / "metrics.csv"), title=f"plain network, seed {plain.config.seed}")
    plt.show()
"""))),
    "1.2": Answer(
        "Test images drawn at random with the run's seed, labelled by the plain network of 1.1; its predictions on "
        "the whole test set are the ones computed above.",
        (("random test images", """\
from cnnlab.figures import plot_predictions

plot_predictions(plain_net, split, n=A.n_random_images, seed=plain.config.seed)
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
    bn_test = T.evaluate(bn_runs[0].load_model(), split.test_x, y, precision=bn_runs[0].info.precision)
    check("test accuracy, batch-norm network", bn_test.accuracy, "batch_norm/test_acc_bn/0", "{:.2%}")
    mc = mcnemar((test.predictions == y).tolist(), (bn_test.predictions == y).tolist())
    check("right only for plain, right only for batch-norm, McNemar p", [mc["only_a"], mc["only_b"], mc["p_value"]],
          ["batch_norm/mcnemar_seed0/only_a", "batch_norm/mcnemar_seed0/only_b", "batch_norm/mcnemar_seed0/p_value"], "{:.4g}")
    acc_plain = [r.info.test.accuracy for r in plain_runs]   # every seed, as measured after training
    acc_bn = [r.info.test.accuracy for r in bn_runs]
    check.verdict(accuracy_verdict(acc_plain, acc_bn, mc))
    if all(r.info.timing for r in plain_runs + bn_runs):     # imported networks were not timed by cnnlab
        epoch_s = {name: [sum(r.info.timing.epoch_times_s) / len(r.info.timing.epoch_times_s) for r in runs]
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
        "`ascend` is the gradient ascent: inside `frozen` no weight of the network requires a gradient, and with "
        "`Pixels` each step adds step_size · dC/dX to the image X, with C = logits[target]; `synthesize` starts it "
        "from Gaussian noise around 128 for the ten classes at once, with the report's settings.",
        (("class models", """\
from cnnlab.analysis._shared import frozen
from cnnlab.analysis.ascent import Pixels, ascend
from cnnlab.analysis.class_models import synthesize

show_source(frozen, ascend, Pixels, synthesize)
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
        "`adversarial` runs the same `ascend` and `Pixels` (above) with C = logits[target] − β·MSE(X, source): the "
        "MSE to an image of the source digit pulls X towards it while the logit of the target rises.",
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
