"""Every figure the report prints reads on paper: at the width it is printed (at most 7 in, wider
figures are scaled down, text included) no text is smaller than 7 pt and no two texts overlap.

Each figure is built as the report builds it, on small fast inputs: a network trained for a few
steps, few ascent steps, a handful of images. `figures.legibility` measures what is drawn."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from cnnlab.figures import MIN_PRINT_PT, legibility
from trainkit import few_step_model

pytestmark = pytest.mark.mnist


def _metrics(seed: int, epochs: int = 4, per_epoch: int = 4, slow: float = 1.0) -> list[dict]:
    """metrics.csv rows as `read_metrics` returns them: a few steps per epoch, then the epoch."""
    rng = np.random.default_rng(seed)
    rows, n = [], 50_000
    for e in range(epochs):
        for s in range(1, per_epoch + 1):
            f = e + s / per_epoch
            err = 0.02 / f + 0.002 * rng.random()
            rows.append({"kind": "epoch" if s == per_epoch else "step", "epoch": float(f) if s < per_epoch else e + 1,
                         "step": int(f * 391), "images_seen": int(f * n), "lr": 1e-3,
                         "train_loss": 0.3 / f, "train_error": err, "val_loss": 0.25 / f + 0.01,
                         "val_error": err * 1.1, "val_acc": 1 - err * 1.1,
                         "train_time_s": f * 4.1 * slow, "elapsed_s": f * 5.5 * slow})
    return rows


@pytest.fixture(scope="module")
def kit(mnist_split):
    """A network trained for a few Adam steps (so that confident and wrong predictions both show;
    a training step takes ~0.3 s on 2 busy cores), its untrained twin, and an untrained network of
    another seed as the judge / other model: the figures' text, not the networks, is under test."""
    from cnnlab.analysis import untrained_like
    from cnnlab.model import Net

    def train(seed: int, steps: int) -> Net:
        return few_step_model(mnist_split, steps, seed, batch=64)

    model = train(0, 15)
    return {"split": mnist_split, "model": model, "reference": untrained_like(model, 0),
            "other": train(1, 0), "cache": {}}


def _once(kit, key, make):
    if key not in kit["cache"]:
        kit["cache"][key] = make()
    return kit["cache"][key]


def _class_models(kit):
    from cnnlab.analysis.class_models import synthesize, synthesize_regularized
    from cnnlab.analysis.likeness import digit_likeness
    from cnnlab.analysis.natural import PcaPrior, synthesize_natural

    def make():
        m, split = kit["model"], kit["split"]
        plain = synthesize(m, steps=8, seed=0, label="plain class models")
        reg = synthesize_regularized(m, steps=8, seed=0)
        prior = PcaPrior.fit(split, stride=25)
        nat = synthesize_natural(m, prior=prior, seed=0, steps=8, min_prob=None)
        others = {"batch-norm network": kit["other"]}
        like = {k: digit_likeness(r.images, split, models=others, targets=r.targets, n_real=50)
                for k, r in (("plain", plain), ("regularized", reg), ("natural", nat))}
        return plain, reg, nat, like
    return _once(kit, "class_models", make)


def _targeted(kit):
    from cnnlab.analysis._shared import first_image_of
    from cnnlab.analysis.likeness import digit_likeness
    from cnnlab.analysis.targeted import adversarial, beta_sweep

    def make():
        split = kit["split"]
        idx = first_image_of(split.test_y, 2)
        src = split.test_x[idx].float() / 255
        adv = adversarial(kit["model"], src, steps=8, source_label=2, scale="01")
        like = digit_likeness(adv.images, split, targets=adv.targets, n_real=50)
        sweep = beta_sweep(kit["model"], src, steps=4, source_label=2, scale="01")
        return adv, like, sweep
    return _once(kit, "targeted", make)


def _plot_curves(kit):
    from cnnlab.figures import plot_curves
    return plot_curves(_metrics(0), title="plain network, seed 0")


def _plot_predictions(kit):
    from cnnlab.figures import plot_predictions
    return plot_predictions(kit["model"], kit["split"], n=24, seed=0)


def _image_grid_wrong(kit):
    """The appendix of 1.2: the first misclassified test images, as report/training.py draws them."""
    from cnnlab.figures import image_grid
    split = kit["split"]
    x = split.test_x[:2000].float() / 255
    with torch.inference_mode():
        probs = kit["model"](x).softmax(1)
    pred = probs.argmax(1)
    wrong = torch.nonzero(pred != split.test_y[:2000]).flatten()[:16]
    titles = [f"#{int(i)}: {int(split.test_y[i])}→{int(pred[i])}\n{float(probs[i].max()) * 100:.0f}%" for i in wrong]
    return image_grid(x[wrong].squeeze(1).numpy(), titles, ["red"] * len(wrong), ncols=8, size=0.85)


def _plot_bn_comparison(kit):
    from cnnlab.figures import plot_bn_comparison
    return plot_bn_comparison([_metrics(s) for s in range(2)], [_metrics(s + 5, slow=1.3) for s in range(2)])


def _filters(layer, reference=True):
    def build(kit):
        from cnnlab.analysis.filters import filters
        return filters(kit["model"], layer, reference=kit["reference"] if reference else None).figure()
    return build


def _activations(kit):
    from cnnlab.analysis.activations import activations
    split = kit["split"]
    return activations(kit["model"], split.test_x[3].float() / 255, label=int(split.test_y[3]),
                       name="test image #3").figure()


def _occlusion(kit, **kw):
    from cnnlab.analysis.occlusion import occlusion
    split = kit["split"]
    return occlusion(kit["model"], split.test_x[3].float() / 255, target=int(split.test_y[3]),
                     label=int(split.test_y[3]), name="test image #3", **kw).figure()


def _few_targets(kit):
    """What the CLI and the notebook draw too: an ascent over two targets only."""
    from cnnlab.analysis.class_models import synthesize
    return synthesize(kit["model"], targets=[1, 2], steps=2).figure()


def _one_fake(kit):
    from cnnlab.analysis.targeted import adversarial
    return adversarial(kit["model"], kit["split"].test_x[1].float() / 255, targets=[3], steps=2).figure()


def _meaningful(kit):
    from cnnlab.analysis.meaningful import meaningful_experiment
    split = kit["split"]
    x, y = split.test_x[:100, 0].numpy(), split.test_y[:100].numpy()
    return meaningful_experiment(kit["model"], x, y, seed=0, negative=kit["other"], positive=kit["model"],
                                 n_behaviour=30, n_occlusion=4).figure()


def _class_models_figure(which, cost=False):
    def build(kit):
        plain, reg, nat, like = _class_models(kit)
        r = {"plain": plain, "regularized": reg, "natural": nat}[which]
        return r.cost_figure() if cost else r.figure(likeness=like[which])
    return build


def _likeness(kit):
    return _class_models(kit)[3]["plain"].figure()


def _likeness_of_test_images(targets: bool, n: int):
    def build(kit):
        from cnnlab.analysis.likeness import digit_likeness
        split = kit["split"]
        images = split.test_x[:n, 0].numpy().astype(np.float64)
        return digit_likeness(images, split, targets=split.test_y[:n].tolist() if targets else None,
                              n_real=50).figure()
    return build


def _readability(kit):
    from cnnlab.analysis.natural import readability
    plain, reg, nat, _ = _class_models(kit)
    return readability({"plain": plain.images, "regularized": reg.images, "natural": nat.images}, plain.targets,
                       kit["split"], kit["other"], maker=kit["model"], n_real=50,
                       judge_name="a plain network trained with seed 1 (the quick preset)").figure()


def _adversarial(kit):
    adv, like, _ = _targeted(kit)
    return adv.figure(likeness=like)


def _adversarial_cost(kit):
    return _targeted(kit)[0].cost_figure()


def _beta_sweep(kit):
    return _targeted(kit)[2].figure()


def _robustness(attack, targeted=False):
    def build(kit):
        from cnnlab.analysis.robustness import robustness
        split = kit["split"]
        models = {"plain": kit["model"], "batch-norm": kit["other"]}
        return robustness(models, split.test_x[:20].float() / 255, split.test_y[:20], attack=attack,
                          eps_list=(0.0, 0.05, 0.1, 0.2, 0.3), steps=2, targeted=targeted).figure()
    return build


def _anatomy(batch_norm):
    def build(kit):
        from cnnlab.analysis.anatomy import summary
        return summary(batch_norm=batch_norm).figure()
    return build


FIGURES = {
    "plot_curves": _plot_curves,
    "plot_predictions": _plot_predictions,
    "image_grid (misclassified)": _image_grid_wrong,
    "plot_bn_comparison": _plot_bn_comparison,
    "filters conv1": _filters("conv1"),
    "filters conv2": _filters("conv2"),
    "filters conv1 (no reference)": _filters("conv1", reference=False),
    "filters conv2 (no reference)": _filters("conv2", reference=False),
    "activations": _activations,
    "occlusion": _occlusion,
    "occlusion (one patch size)": lambda kit: _occlusion(kit, patch_sizes=(3,)),
    "meaningful": _meaningful,
    "class models (plain)": _class_models_figure("plain"),
    "class models (regularized)": _class_models_figure("regularized"),
    "class models (two targets)": _few_targets,
    "class models cost (plain)": _class_models_figure("plain", cost=True),
    "class models cost (regularized)": _class_models_figure("regularized", cost=True),
    "natural class models": _class_models_figure("natural"),
    "natural class models cost": _class_models_figure("natural", cost=True),
    "likeness": _likeness,
    "likeness (13 test digits, their labels)": _likeness_of_test_images(True, 13),
    "likeness (3 images, no targets)": _likeness_of_test_images(False, 3),
    "readability": _readability,
    "adversarial": _adversarial,
    "adversarial (one target)": _one_fake,
    "adversarial cost": _adversarial_cost,
    "beta sweep": _beta_sweep,
    "robustness fgsm": _robustness("fgsm"),
    "robustness pgd targeted": _robustness("pgd", targeted=True),
    "anatomy": _anatomy(False),
    "anatomy batch-norm": _anatomy(True),
}


@pytest.mark.parametrize("name", list(FIGURES))
def test_figure_reads_at_print_size(kit, name):
    fig = FIGURES[name](kit)
    try:
        m = legibility(fig)
    finally:
        plt.close(fig)
    assert m["min_font_pt"] is not None and m["min_font_pt"] >= MIN_PRINT_PT, (
        f"{name}: smallest text {m['min_font_pt']} pt at print size ({m['width_in']} in wide, printed at "
        f"scale {m['scale']}): {m['smallest_text']!r}")
    assert not m["overlaps"], f"{name}: overlapping texts {m['overlaps'][:5]}"
    # designed to print at full size: nothing is scaled down, so the sizes above are the ones set
    assert m["scale"] == 1.0, f"{name}: {m['width_in']} in wide, printed at scale {m['scale']}"
