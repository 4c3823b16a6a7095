"""1.1 training curves and test accuracy; 1.2 random test images with true and predicted labels."""

from __future__ import annotations

import torch

from ..figures import image_grid, plot_curves, plot_predictions
from ..runs import open_run
from ..stats import mean_std
from ..train import evaluate, read_metrics
from .base import Context, Section, esc, fig_to_data_uri


def section_1_1(ctx: Context) -> Section:
    """1.1 training curves and test accuracy"""
    p = ctx.printed
    plain = [open_run(r) for r in ctx.runs["plain"]]
    # The paragraph is about the plain network's first seed: its curves, its final errors.
    metrics = read_metrics(plain[0].path / "metrics.csv")
    accs = [r.info["test"]["accuracy"] for r in plain]
    m, s = mean_std(accs)
    cfg = plain[0].info["config"]
    s1 = Section("1.1", "Training curves and test accuracy",
                 "Show the plot of training error, validation error and prediction accuracy as the training "
                 "progresses. At the end of training, report the average prediction accuracy for the whole "
                 "test set of 10000 images.")
    fig = plot_curves(metrics,
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
    p = ctx.printed
    sec = Section("1.2", "Random test images with true and predicted labels",
                  "Plot randomly selected test images showing the true and predicted class labels.")
    n = ctx.analysis.n_random_images
    seed = ctx.best_run.info["config"]["seed"]
    fig = plot_predictions(ctx.best_model, ctx.split, n=n, seed=seed)
    sec.figures.append((fig_to_data_uri(fig), f"{n} test images drawn at random (seed {seed}); "
                                              f"wrong predictions in red. Best model: {esc(ctx.best_run.name)}."))
    # The mistakes are more informative than random hits: show some of them too.
    ev = evaluate(ctx.best_model, ctx.split.test_x, ctx.split.test_y, keep_probs=True)
    wrong = torch.nonzero(ev.predictions != ctx.split.test_y).flatten()[:16]
    probs = ev.probs if ev.probs is not None else torch.ones(len(ev.predictions), 1)   # kept: keep_probs=True
    if len(wrong):
        imgs = ctx.split.test_x[wrong].squeeze(1).float().div(255).numpy()
        titles = [f"#{int(i)} true {int(ctx.split.test_y[i])}\npred {int(ev.predictions[i])} "
                  f"({float(probs[i].max()) * 100:.0f}%)" for i in wrong]
        fig = image_grid(imgs, titles, ["red"] * len(wrong), ncols=8, size=1.4)
        sec.figures.append((fig_to_data_uri(fig), "The first misclassified test images, with the model's confidence."))
    n_wrong = int((ev.predictions != ctx.split.test_y).sum())
    sec.answer.append(f"The best model ({esc(ctx.best_run.name)}) gets {p('1.2.wrong', n_wrong, '{}')} of the "
                      f"10,000 test images wrong; the second figure shows the first of them: most are digits a "
                      f"person could also misread.")
    sec.numbers = {"wrong": n_wrong}
    return sec
