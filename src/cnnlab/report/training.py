"""1.1 training curves and test accuracy; 1.2 random test images with true and predicted labels."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..evaluation import evaluate
from ..figures import image_grid, plot_curves, plot_predictions
from ..metrics import read_metrics
from ..runs import open_run
from ..stats import mean_std
from .base import Context, Section, esc, fig_to_data_uri


def smoothing_floor(eps: float, n_classes: int = 10) -> float:
    """The lowest training loss label smoothing `eps` allows (nats): the entropy of its target,
    1 − ε + ε/K on the true class and ε/K on each other class."""
    if eps <= 0:
        return 0.0
    hi, lo = 1 - eps + eps / n_classes, eps / n_classes
    return float(-(hi * math.log(hi) + (n_classes - 1) * lo * math.log(lo)))


def _epoch(e: float) -> str:
    """An epoch as a reader counts it: 0.2481 (the first logged step's fraction) reads as 0.25."""
    return f"{round(float(e), 2):g}"


def section_1_1(ctx: Context) -> Section:
    """1.1 training curves and test accuracy"""
    p = ctx.printed
    plain = [open_run(r) for r in ctx.runs["plain"]]
    # The section is about the plain network's first seed: its curves, its final errors.
    run = plain[0]
    if run.imported:
        return _section_1_1_imported(ctx, run)
    metrics = read_metrics(run.path / "metrics.csv")
    accs = [r.test.accuracy for r in plain]
    m, s = mean_std(accs)
    cfg = run.config
    epochs = cfg.epochs
    s1 = Section("1.1", "Training curves and test accuracy",
                 "Show the plot of training error, validation error and prediction accuracy as the training "
                 "progresses. At the end of training, report the average prediction accuracy for the whole "
                 "test set of 10000 images.")
    answer = (f"The plain network classifies <b>{p.pct('1.1.test_acc', accs[0])}</b> of the 10,000 test images "
              f"correctly ({p('1.1.test_errors', run.test.errors, '{}')} wrong), after "
              f"{p('1.1.epochs', epochs, '{}')} epoch{'s' if epochs != 1 else ''} of training.")
    if len(accs) > 1:
        answer += (f" Over {p('1.1.seeds', len(accs), '{}')} seeds it is {p.pct('1.1.test_acc_mean', m)} ± "
                   f"{p('1.1.test_acc_std', 100 * s, '{:.2f}')} points (mean ± standard deviation).")
    first, last = metrics[0], metrics[-1]
    one = next((r for r in metrics if r["epoch"] >= 1), last)
    answer += (f" The validation error falls from {p.pct('1.1.first_val_err', first['val_error'])} at the first "
               f"logged point (epoch {_epoch(first['epoch'])}) to {p.pct('1.1.epoch1_val_err', one['val_error'])} after "
               f"epoch {_epoch(one['epoch'])}")
    if one is not last:
        answer += f" and {p.pct('1.1.final_val_err', last['val_error'])} at the end (epoch {_epoch(last['epoch'])})"
    answer += f", with the training error at {p.pct('1.1.final_train_err', last['train_error'])}."
    s1.answer.append(answer)
    fig = plot_curves(metrics, title=f"plain network, seed {cfg.seed}")
    s1.figures.append((fig_to_data_uri(fig), f"Training and validation loss and error, and validation accuracy, "
                                             f"logged {p('1.1.points', len(metrics), '{}')} times over the "
                                             f"{epochs} epoch{'s' if epochs != 1 else ''} (plain network, seed {cfg.seed})."))
    ls = cfg.label_smoothing
    ev = (f"Training took {p('1.1.train_s', run.timing.train_time_s, '{:.1f}')} s on {esc(str(run.info.device))} "
          f"({p('1.1.steps', run.info.steps, '{}')} steps of {cfg.batch_size} images). The reported accuracy is "
          f"that of the checkpoint with the best validation accuracy "
          f"({p.pct('1.1.val_acc', run.best.val_accuracy)}"
          f"{'' if run.best.epoch is None else f', at epoch {_epoch(run.best.epoch)}'}).")
    if ls > 0:
        floor = smoothing_floor(ls)
        ev += (f" The training loss stays above the validation loss because training used label smoothing "
               f"{p('1.1.label_smoothing', ls, '{:g}')}: the training target gives the true class "
               f"{1 - ls + ls / 10:g} instead of 1, so the training loss cannot fall below "
               f"{p('1.1.loss_floor', floor, '{:.2f}')} nats, while the validation loss is measured against the "
               f"true labels.")
    ev += (" The labels are class indices: cross-entropy on them equals cross-entropy on one-hot labels (the "
           "assignment's note; tested).")
    s1.evidence.append(ev)
    s1.appendix.append(
        f"Training recipe (the run's config, saved in its run.json): AdamW with a one-cycle learning-rate schedule "
        f"peaking at {cfg.lr:g}, weight decay {cfg.weight_decay:g}, batch {cfg.batch_size}, label smoothing "
        f"{ls:g}, {'random shifts and rotations' if cfg.augment else 'no augmentation'}, "
        f"{esc(run.precision)} arithmetic, seed {cfg.seed}; the 60,000 training images split "
        f"50,000/10,000 into training and validation by split seed {cfg.split_seed}. Training error is measured "
        f"on the batches as they are trained (while the weights change), validation error on all 10,000 "
        f"validation images at each logged point.")
    s1.numbers = {"test_accuracy": accs, "test_accuracy_mean": m, "test_accuracy_std": s,
                  "train_time_s": [r.timing.train_time_s for r in plain], "points": len(metrics),
                  "label_smoothing": ls, "loss_floor_nats": smoothing_floor(ls),
                  "test_errors": run.test.errors, "val_error_first": first["val_error"],
                  "val_error_epoch1": one["val_error"], "val_error_final": last["val_error"],
                  "train_error_final": last["train_error"]}
    return s1


def _section_1_1_imported(ctx: Context, run) -> Section:
    """1.1 for a network trained elsewhere: its test accuracy, and its curves when the learner gave them."""
    p = ctx.printed
    sec = Section("1.1", "Training curves and test accuracy",
                  "Show the plot of training error, validation error and prediction accuracy as the training "
                  "progresses. At the end of training, report the average prediction accuracy for the whole "
                  "test set of 10000 images.")
    acc = run.test.accuracy
    src = run.imported
    sec.answer.append(f"The plain network classifies <b>{p.pct('1.1.test_acc', acc)}</b> of the 10,000 test images "
                      f"correctly ({p('1.1.test_errors', run.test.errors, '{}')} wrong). It was trained "
                      f"elsewhere and imported with <code>cnnlab import</code> (input: "
                      f"{esc(src.transform_text)}).")
    numbers: dict = {"test_accuracy": [acc], "test_errors": run.test.errors, "imported": True}
    if (run.path / "metrics.csv").is_file():
        metrics = read_metrics(run.path / "metrics.csv")
        fig = plot_curves(metrics, title="plain network, the learner's own training log")
        sec.figures.append((fig_to_data_uri(fig), f"The learner's training and validation loss and error, as logged in "
                                                  f"{esc(Path(src.metrics or 'metrics.csv').name)} "
                                                  f"({p('1.1.points', len(metrics), '{}')} points)."))
        numbers["points"] = len(metrics)
    else:
        sec.answer.append("The curves of an imported model are not available: it was imported without its training "
                          "log (<code>cnnlab import --metrics FILE</code> adds them).")
    sec.evidence.append("The accuracy is measured by cnnlab on the test set, with the learner's weights and input "
                        "transform; how the network was trained (epochs, optimizer, time) is not known to cnnlab.")
    sec.numbers = numbers
    return sec


def section_1_2(ctx: Context) -> Section:
    """1.2 random test images with true and predicted labels"""
    p = ctx.printed
    sec = Section("1.2", "Random test images with true and predicted labels",
                  "Plot randomly selected test images showing the true and predicted class labels.")
    # The network of 1.1 (the plain network, first seed), so that the two sections agree.
    run = open_run(ctx.runs["plain"][0])
    model = run.load_model()
    n = ctx.analysis.n_random_images
    seed = run.config.seed
    # in the precision the run was tested in, so that the count is 1.1's
    ev = evaluate(model, ctx.split.test_x, ctx.split.test_y, keep_probs=True, precision=run.precision)
    wrong_mask = ev.predictions != ctx.split.test_y
    n_wrong = int(wrong_mask.sum())
    fig = plot_predictions(model, ctx.split, n=n, seed=seed)
    sec.figures.append((fig_to_data_uri(fig), f"{n} test images drawn at random (seed {seed}) with their true label "
                                              f"and the plain network's prediction and confidence; wrong ones in red."))
    sec.answer.append(f"The figure shows {p('1.2.n', n, '{}')} random test images with their true and predicted "
                      f"labels. The plain network of 1.1 gets {p('1.2.wrong', n_wrong, '{}')} of all 10,000 test "
                      f"images wrong; the appendix shows the first of them.")
    wrong = torch.nonzero(wrong_mask).flatten()[:16]
    probs = ev.probs if ev.probs is not None else torch.ones(len(ev.predictions), 1)   # kept: keep_probs=True
    if len(wrong):
        imgs = ctx.split.test_x[wrong].squeeze(1).float().div(255).numpy()
        titles = [f"#{int(i)}: {int(ctx.split.test_y[i])}→{int(ev.predictions[i])}\n"
                  f"{float(probs[i].max()) * 100:.0f}%" for i in wrong]
        fig = image_grid(imgs, titles, ["red"] * len(wrong), ncols=8, size=0.85)
        sec.appendix_figures.append((fig_to_data_uri(fig), "The first misclassified test images of the plain network: "
                                                           "test index, true → predicted label, confidence."))
    sec.numbers = {"wrong": n_wrong, "run": run.name}
    return sec
