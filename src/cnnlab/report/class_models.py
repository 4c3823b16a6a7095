"""3.1 class models from noise, plain and regularized, and whether they look like digits."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..analysis.class_models import confidence_verdict, cost_verdict, synthesize, synthesize_regularized
from ..analysis.likeness import digit_likeness, looks_like_digits
from ..analysis.natural import PcaPrior, readability, readable_verdict, rms_grey_levels, synthesize_natural
from ..config import preset as make_preset
from ..errors import RunError
from ..runs import open_run
from .base import Context, Section, drop_images, esc, fig_to_data_uri, other_models

if TYPE_CHECKING:
    from torch import nn


def choose_judge(ctx: Context) -> tuple[nn.Module, dict[str, Any]]:
    """The network that judges 3.1.3's images without having made them, and what it is.

    In order: a plain network of another seed that the report trained (--seeds ≥ 2); else, with
    `analysis.judge_preset`, a plain network trained now with seed + 1 and that preset ("same": the
    maker's config; in memory; its cost and accuracy are recorded); else the report's other network
    (same seed, the other architecture), said so in the text and in results.json."""
    best = ctx.best_run.path.resolve()
    seed = ctx.best_run.config.seed
    for p in ctx.runs["plain"]:
        r = open_run(p)
        if r.config.seed != seed:
            s = r.config.seed
            return r.load_model(), {"name": f"a plain network of seed {s}", "source": "report run", "seed": s,
                                    "another_seed": True, "run": str(Path(p).relative_to(ctx.out)), "seconds": 0.0}
    if ctx.analysis.judge_preset is not None:
        name = ctx.analysis.judge_preset
        if name == "same":
            cfg = dataclasses.replace(ctx.best_run.config, seed=seed + 1, batch_norm=False)
            how = "the maker's config"
        else:
            cfg = make_preset(name, seed=seed + 1, **{k: getattr(ctx.best_run.config, k) for k in (
                "device", "threads", "dataset", "val_size", "split_seed")})     # the maker's data, as trained
            how = f"the {name} preset"
        if ctx.trainer is None:
            raise RunError("3.1.3 needs a judge network trained with another seed, and this report was opened "
                           "without a trainer (pass trainer=cnnlab.train.train)")
        t0 = time.perf_counter()
        res = ctx.trainer(cfg, None, split=ctx.split, progress=False, log=lambda s: None)
        return res.model, {"name": f"a plain network trained with seed {seed + 1} ({how})",
                           "source": "trained for the judge", "seed": seed + 1, "preset": name, "another_seed": True,
                           "test_accuracy": res.test_accuracy, "seconds": round(time.perf_counter() - t0, 2)}
    for p in ctx.runs["plain"] + ctx.runs["batch_norm"]:
        r = open_run(p)
        if r.path.resolve() != best:
            kind = "batch-norm" if r.batch_norm else "plain"
            return r.load_model(), {
                "name": f"the report's {kind} network", "source": "report run", "seed": r.config.seed,
                "another_seed": False, "run": str(Path(p).relative_to(ctx.out)), "seconds": 0.0,
                "note": (f"Not a network of another seed: the report trained one seed and was asked to train no "
                         f"judge (AnalysisConfig.judge_preset = None). The {kind} network (seed {seed}, the other "
                         f"architecture, trained separately from the maker) judges instead; run with --seeds 2 for a "
                         f"judge of another seed.")}
    raise RunError("3.1.3 needs a judge network besides the one that made the images; the report trained only one")


def section_class_models(ctx: Context) -> list[Section]:
    """3.1 class models from noise"""
    p = ctx.printed
    steps = ctx.analysis.synth_steps
    plain = synthesize(ctx.best_model, steps=steps, seed=0, label="plain class models")
    reg = synthesize_regularized(ctx.best_model, steps=steps, seed=0)
    others = other_models(ctx)
    like_p = digit_likeness(plain.images, ctx.split, models=others, targets=plain.targets)
    like_r = digit_likeness(reg.images, ctx.split, models=others, targets=reg.targets)
    t_prior = time.perf_counter()
    prior = PcaPrior.fit(ctx.split)            # the image prior: PCA of the training images, labels unread
    prior_seconds = time.perf_counter() - t_prior
    nat = synthesize_natural(ctx.best_model, prior=prior, seed=0)
    like_n = digit_likeness(nat.images, ctx.split, models=others, targets=nat.targets)
    judge, judge_info = choose_judge(ctx)
    judged = readability({"plain": plain.images, "regularized": reg.images, "natural": nat.images}, plain.targets,
                         ctx.split, judge, maker=ctx.best_model, judge_name=judge_info["name"])
    ctx.results["class_models"] = {"plain": plain.to_dict(), "regularized": reg.to_dict(), "natural": nat.to_dict(),
                                   "likeness_plain": drop_images(like_p), "likeness_regularized": drop_images(like_r),
                                   "likeness_natural": drop_images(like_n),
                                   "readability": judged.to_dict(), "judge": judge_info}
    prm = plain.params
    counts = {name: judged.counts(name) for name in ("plain", "regularized", "natural")}

    s1 = Section("3.1.1", "Generated image for each class",
                 "Initialize a matrix of the size of an MNIST image with Gaussian noise centred around 128 … "
                 "maximize C = logits[target_class] by X = X + stepsize × dC/dX. Show the generated image for "
                 "each of the classes of MNIST.")
    s1.answer.append(
        f"The figure shows the image generated for each class 0–9: X starts as Gaussian noise around 128 "
        f"(standard deviation {p('3.1.1.sigma', prm['sigma'], '{:g}')} grey levels) and takes "
        f"{p('3.1.1.steps', prm['steps'], '{}')} steps of X ← X + {prm['step_size']:g} × dC/dX with "
        f"C = logits[target]; only X changes, never the network's weights.")
    s1.figures.append((fig_to_data_uri(plain.figure(likeness=like_p)),
                       "Plain gradient ascent, exactly as the assignment asks, shown clipped to the valid pixel "
                       "range 0–255; the network sees X/255, as it saw its training images."))
    s1.evidence.append(f"All ten images were made together in {p('3.1.1.seconds', plain.seconds, '{:.2f}')} s "
                       f"(one batch; gradients with respect to the input only).")
    s1.appendix_figures.append((fig_to_data_uri(reg.figure(likeness=like_r)),
                                "Beyond the assignment: regularized class models (clip to 0–255, decay towards "
                                "black, blur every few steps, 1-pixel jitter): the same cost, with image priors."))

    s2 = Section("3.1.2", "Is the target predicted with high confidence?",
                 "Is the network always predicting target_class with high confidence for the generated images?")
    sp, sr = plain.summary(), reg.summary()
    cv = s2.verdict(confidence_verdict(plain.to_dict(), reg.to_dict()))
    clipped = counts["plain"]
    shown = p("3.1.2.min_prob", sp["min_target_prob"], "{:.3f}")
    lowest = f"{shown} to three decimals" if sp["min_target_prob"] >= 0.9995 else f"at least {shown}"
    if cv.key == "yes":
        first = (f"<b>Yes</b>: all {p('3.1.2.n_hit', sp['n_predicted_as_target'], '{}')} images X are predicted as "
                 f"their target, with probability {lowest}.")
    else:
        first = (f"<b>Not always</b>: {p('3.1.2.n_hit', sp['n_predicted_as_target'], '{}')} of the 10 images X are "
                 f"predicted as their target, and the lowest probability of the target is {shown}.")
    if "maker_min_prob" in clipped:
        first += (f" That holds for X as generated, whose pixels leave the range 0–255. Clipped to valid pixel values, "
                  f"as the figure shows them, {p('3.1.2.clipped_ge_0_9', clipped['maker_prob_ge_0_9'], '{}')} of 10 "
                  f"keep a target probability of at least 0.9 (lowest "
                  f"{p('3.1.2.clipped_min_prob', clipped['maker_min_prob'], '{:.2f}')}).")
    s2.answer.append(first)
    s2.tables.append({"caption": "Prediction and target probability per class, for X as generated.",
                      "header": ["target"] + [str(int(t)) for t in plain.targets],
                      "rows": [["predicted"] + [str(int(v)) for v in plain.final_pred],
                               ["p(target)"] + [f"{v:.3f}" for v in plain.final_prob]]})
    s2.appendix.append(f"Regularized class models (appendix A.3.1.1): {sr['n_predicted_as_target']} of 10 predicted "
                       f"as their target, lowest probability {100 * sr['min_target_prob']:.2f}%.")
    s2.numbers = {"plain": sp, "regularized": sr, "plain_clipped": clipped}

    s3 = Section("3.1.3", "Do the generated images look like digits?",
                 "Do the generated images look like a number? If not, can you think of some reason?")
    ref = like_p.reference
    lp, lr, ln = like_p.summary, like_r.summary, like_n.summary
    looks = s3.verdict(looks_like_digits({"plain": lp, "regularized": lr, "natural": ln}, ref))
    readable = s3.verdict(readable_verdict(counts, judged.reference, judged.threshold, judge=judge_info["name"]))
    cp, cn = counts["plain"], counts["natural"]
    rms = rms_grey_levels(judged.threshold)
    head = ("<b>No</b>" if readable.key.startswith("not readable") else
            "<b>Only partly</b>" if readable.key.startswith("partly") else "<b>Yes</b>")
    s3.answer.append(
        f"{head}: {p('3.1.3.readable_plain', cp['readable'], '{}')} of the 10 plain class models read as their digit. "
        f"An image counts as readable when its nearest training image has the target's label and is about as close "
        f"as real test digits are to theirs (root-mean-square difference at most "
        f"{p('3.1.3.rms_threshold', rms, '{:.0f}')} grey levels per pixel), and when {esc(judge_info['name'])}, which "
        f"did not make the images, names the target.")
    if not (looks.key == "yes" and readable.key.startswith("readable")):
        s3.answer.append(
            "Why: nothing in C = logits[target] asks X to look like a digit, or even to stay within 0–255. The "
            "network learned only to separate ten kinds of real digits; its logit is piecewise linear in X, so "
            "gradient ascent keeps raising it by pushing pixels all over the image far outside the valid range "
            "(the figure shows them clipped), towards patterns no real digit has, where nothing in training "
            "constrains the output."
            + (f" Kept among digit-like images (X restricted to the main patterns of the training images), the same "
               f"network and cost make {p('3.1.3.readable_natural', cn['readable'], '{}')} of 10 readable digits: "
               f"the network does hold a digit shape for each class, plain gradient ascent just never needs it."
               if readable.key.endswith("/shown") else ""))
    s3.appendix_figures.append((fig_to_data_uri(judged.figure()),
                       "Plain, regularized and natural class models (rows), each titled with the label of its nearest "
                       "training image; green frame = readable."))
    s3.appendix_figures.append((fig_to_data_uri(nat.figure(likeness=like_n)),
                                f"Natural class models: the same network and cost, with X kept on the span of the "
                                f"training images' {nat.params['components']} main patterns (a PCA prior, labels never "
                                f"read), {nat.params['steps']} steps."))
    s3.appendix_tables.append({
        "caption": f"The judges' table (images clipped to 0–255). Near a training digit = nearest training image has "
                   f"the target's label and lies within {rms:.0f} grey levels per pixel (RMS; 95% of real test digits "
                   f"are that close to theirs); named = {judge_info['name']} predicts the target; maker p = the "
                   f"generating network's target probability.",
        "header": ["row", "readable", "near a training digit", "named by the judge", "nearest label = target",
                   "median RMS distance", "maker: min p", "maker: p ≥ 0.9"],
        "rows": [[name, f"{c['readable']}/{c['n']}", f"{c['near_training_digit']}/{c['n']}",
                  f"{c['named_by_judge']}/{c['n']}", f"{c['nn_label_is_target']}/{c['n']}",
                  f"{rms_grey_levels(c['median_nn_distance']):.0f}", f"{c['maker_min_prob']:.3f}",
                  f"{c['maker_prob_ge_0_9']}/{c['n']}"] for name, c in counts.items()]})
    s3.appendix.append(
        f"A second measure, likeness to the class's average training image: a real test digit correlates "
        f"r = {ref['corr_own_mean_p50']:.2f} (median) with its class's average image. The plain class models "
        f"reach r = {lp['corr_target_mean_mean']:.2f} on average with their target's average image, the regularized "
        f"{lr['corr_target_mean_mean']:.2f} and the natural {ln['corr_target_mean_mean']:.2f}.")
    if not judge_info["another_seed"]:
        s3.appendix.append(judge_info["note"])
    s3.numbers = {"plain": lp, "regularized": lr, "natural": ln, "reference": ref,
                  "readability": {"counts": counts, "threshold_grey_levels": judged.threshold,
                                  "threshold_rms_grey_levels": rms,
                                  "reference": judged.reference, "judge": judge_info},
                  "seconds": {"natural": nat.seconds, "natural_prior_fit": prior_seconds,
                              "judge_training": judge_info["seconds"]}}

    s4 = Section("3.1.4", "The cost function",
                 "Plot the cost function. Is it increasing or decreasing?")
    s4.figures.append((fig_to_data_uri(plain.cost_figure()), "C = logits[target] against step, one line per class."))
    rises = sp["fraction_of_steps_cost_rises"]
    cv4 = s4.verdict(cost_verdict(plain.cost))
    word = {"increasing": "<b>Increasing</b>", "decreasing": "<b>Decreasing</b>",
            "neither": "<b>Neither steadily increasing nor decreasing</b>"}[cv4.key.split("/")[0]]
    s4.answer.append(
        f"{word}: the mean cost goes from {p('3.1.4.start', sp['cost_start_mean'], '{:.2f}')} on the noise to "
        f"{p('3.1.4.end', sp['cost_end_mean'], '{:.1f}')} after {prm['steps']} steps, and rises on "
        f"{p.pct('3.1.4.rises', rises, 1)} of the steps."
        + (" That is what gradient <i>ascent</i> does: each step moves X along dC/dX"
           + (", and since the network is piecewise linear in X and X is not clipped, nothing stops C from rising."
              if cv4.numbers.get("still_rising") else ".") if cv4.key.startswith("increasing") else ""))
    s4.numbers = {"start": sp["cost_start_mean"], "end": sp["cost_end_mean"], "fraction_rising": rises}
    return [s1, s2, s3, s4]
