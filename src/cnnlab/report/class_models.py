"""3.1 class models from noise, plain and regularized, and whether they look like digits."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ..analysis.class_models import confidence_verdict, cost_verdict, synthesize, synthesize_regularized
from ..analysis.likeness import digit_likeness, looks_like_digits
from ..analysis.natural import PcaPrior, readability, readable_verdict, synthesize_natural
from ..config import preset as make_preset
from ..errors import RunError
from ..runs import open_run
from ..schema import config_from_dict
from ..train import train
from .base import Context, Section, drop_images, fig_to_data_uri, other_models


def choose_judge(ctx: Context):
    """The network that judges 3.1.3's images without having made them, and what it is.

    In order: a plain network of another seed that the report trained (--seeds ≥ 2); else, with
    `analysis.judge_preset`, a plain network trained now with seed + 1 and that preset ("same": the
    maker's config; in memory; its cost and accuracy are recorded); else the report's other network
    (same seed, the other architecture), said so in the text and in results.json."""
    best = ctx.best_run.path.resolve()
    maker_cfg = ctx.best_run.info["config"]
    seed = int(maker_cfg.get("seed", 0))
    for p in ctx.runs["plain"]:
        r = open_run(p)
        if int(r.info["config"].get("seed", 0)) != seed:
            s = int(r.info["config"]["seed"])
            return r.load_model(), {"name": f"a plain network of seed {s}", "source": "report run", "seed": s,
                                    "another_seed": True, "run": str(Path(p).relative_to(ctx.out)), "seconds": 0.0}
    if ctx.analysis.judge_preset is not None:
        name = ctx.analysis.judge_preset
        if name == "same":
            cfg = dataclasses.replace(config_from_dict(maker_cfg, "the maker's config"), seed=seed + 1, batch_norm=False)
            how = "the maker's config"
        else:
            cfg = make_preset(name, seed=seed + 1, **{k: maker_cfg.get(k) for k in (
                "device", "threads", "dataset", "val_size", "split_seed")})     # the maker's data, as trained
            how = f"the {name} preset"
        t0 = time.perf_counter()
        res = train(cfg, None, split=ctx.split, progress=False, log=lambda s: None)
        return res.model, {"name": f"a plain network trained with seed {seed + 1} ({how})",
                           "source": "trained for the judge", "seed": seed + 1, "preset": name, "another_seed": True,
                           "test_accuracy": res.test_accuracy, "seconds": round(time.perf_counter() - t0, 2)}
    for p in ctx.runs["plain"] + ctx.runs["batch_norm"]:
        r = open_run(p)
        if r.path.resolve() != best:
            kind = "batch-norm" if r.batch_norm else "plain"
            return r.load_model(), {
                "name": f"the report's {kind} network", "source": "report run", "seed": int(r.info["config"].get("seed", 0)),
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

    s1 = Section("3.1.1", "Generated image for each class",
                 "Initialize a matrix of the size of an MNIST image with Gaussian noise centred around 128 … "
                 "maximize C = logits[target_class] by X = X + stepsize × dC/dX. Show the generated image for "
                 "each of the classes of MNIST.")
    s1.figures.append((fig_to_data_uri(plain.figure(likeness=like_p)),
                       f"Plain gradient ascent, exactly as the assignment asks: X starts at 128 ± {prm['sigma']:g} "
                       f"grey levels, {prm['steps']} steps of size {prm['step_size']:g} on the 0–255 scale; the network "
                       f"sees X/255, as it saw its training images. r = correlation with the class's mean training image."))
    s1.figures.append((fig_to_data_uri(reg.figure(likeness=like_r)),
                       "Regularized class models (clip to [0, 255], L2 decay towards black, blur every few steps, "
                       "1-pixel jitter): the same cost, with image priors."))
    s1.answer.append(f"Each image was made in {p('3.1.1.seconds', plain.seconds, '{:.2f}')} s for all ten classes "
                     f"together (one batch, gradients with respect to the input only; the weights never change). "
                     f"The pixel scale is kept right by construction: the noise lives on 0–255 like the "
                     f"assignment's, and is divided by 255 before the network's own normalization.")

    s2 = Section("3.1.2", "Is the target predicted with high confidence?",
                 "Is the network always predicting target_class with high confidence for the generated images?")
    sp, sr = plain.summary(), reg.summary()
    s2.answer.append(
        f"For the plain class models, {p('3.1.2.n_hit', sp['n_predicted_as_target'], '{}')} of 10 are predicted as their "
        f"target, with confidence at least {p.pct('3.1.2.min_prob', sp['min_target_prob'], 4)} "
        f"(mean {p.pct('3.1.2.mean_prob', sp['mean_target_prob'], 4)}); the regularized ones reach "
        f"{sr['n_predicted_as_target']}/10 with minimum confidence {p.pct('3.1.2.min_prob_reg', sr['min_target_prob'], 2)}.")
    s2.answer.append(confidence_verdict(plain.to_dict(), reg.to_dict()))
    s2.tables.append({"caption": "Final prediction and target probability per class.",
                      "header": ["target"] + [str(int(t)) for t in plain.targets],
                      "rows": [["plain: pred"] + [str(int(v)) for v in plain.final_pred],
                               ["plain: p(target)"] + [f"{v:.4f}" for v in plain.final_prob],
                               ["regularized: pred"] + [str(int(v)) for v in reg.final_pred],
                               ["regularized: p(target)"] + [f"{v:.4f}" for v in reg.final_prob]]})
    s2.numbers = {"plain": sp, "regularized": sr}

    s3 = Section("3.1.3", "Do the generated images look like digits?",
                 "Do the generated images look like a number? If not, can you think of some reason?")
    ref = like_p["reference_real_test_digits"]
    lp, lr, ln = like_p["summary"], like_r["summary"], like_n["summary"]
    s3.figures.append((fig_to_data_uri(judged.figure()),
                       "The three rows side by side, each image judged by what did not make it: title = label and "
                       "distance (grey levels) of its nearest training image; below = the judge network's "
                       "prediction; frame green = readable (both pass)."))
    s3.figures.append((fig_to_data_uri(nat.figure(likeness=like_n)),
                       f"Natural class models: the same network and objective, X = clip(mean + PCA-"
                       f"{nat.params['components']} basis · w) with a Gaussian prior on w fitted to the training "
                       f"images (labels never read), Adam on w for {nat.params['steps']} steps."))
    counts = {name: judged.counts(name) for name in ("plain", "regularized", "natural")}
    s3.tables.append({"caption": f"The judges' table. Readable = nearest training image has the target's label and "
                                 f"lies within {judged.threshold:.0f} grey levels (95th percentile of real test "
                                 f"digits) and {judge_info['name']} names the target; maker p = the generating "
                                 f"network's target probability on the clipped image.",
                      "header": ["row", "readable", "near a training digit", "named by the judge",
                                 "nearest label = target", "median distance", "maker: min p", "maker: p ≥ 0.9"],
                      "rows": [[name, f"{c['readable']}/{c['n']}", f"{c['near_training_digit']}/{c['n']}",
                                f"{c['named_by_judge']}/{c['n']}", f"{c['nn_label_is_target']}/{c['n']}",
                                f"{c['median_nn_distance']:.0f}", f"{c['maker_min_prob']:.3f}",
                                f"{c['maker_prob_ge_0_9']}/{c['n']}"] for name, c in counts.items()]})
    transfer_txt = ""
    if "transfer_agree_rate" in lp:
        parts = [f"{name} {p.pct(f'3.1.3.transfer.{name}', v, 0)}" for name, v in lp["transfer_agree_rate"].items()]
        parts_r = [p.pct(f"3.1.3.transfer_reg.{name}", v, 0) for name, v in lr.get("transfer_agree_rate", {}).items()]
        transfer_txt = (f" Independently trained networks agree with the target for "
                        f"{', '.join(parts)} of the plain images (regularized: {', '.join(parts_r)}).")
    s3.answer.append(
        f"Measured, not eyeballed: a real test digit correlates r = {p('3.1.3.real_r', ref['corr_own_mean_p50'], '{:.2f}')} "
        f"(median) with its class's mean training image, and the nearest class mean names its class "
        f"{p.pct('3.1.3.real_nc_acc', ref['nearest_class_accuracy'], 0)} of the time. The plain class models reach "
        f"r = {p('3.1.3.plain_r', lp['corr_target_mean_mean'], '{:.2f}')} on average with their target's mean, and the "
        f"nearest class mean is the target for {p.pct('3.1.3.plain_nearest', lp['nearest_is_target_rate'], 0)} of them "
        f"(chance: 10%); their median rank among real digits of the class is the "
        f"{p('3.1.3.plain_pct', lp['real_percentile_median'], '{:.0f}')}th percentile. Regularized: r = "
        f"{p('3.1.3.reg_r', lr['corr_target_mean_mean'], '{:.2f}')}, nearest class = target for "
        f"{p.pct('3.1.3.reg_nearest', lr['nearest_is_target_rate'], 0)}. Natural: r = "
        f"{p('3.1.3.nat_r', ln['corr_target_mean_mean'], '{:.2f}')}, nearest class = target for "
        f"{p.pct('3.1.3.nat_nearest', ln['nearest_is_target_rate'], 0)}." + transfer_txt)
    # "plain" stays the first row: the key answers the assignment's question for its class models.
    looks = looks_like_digits({"plain": lp, "regularized": lr, "natural": ln}, ref)
    s3.answer.append(looks)
    readable = readable_verdict(counts, judged.reference, judged.threshold, judge=judge_info["name"])
    s3.answer.append(readable)
    if not judge_info["another_seed"]:
        s3.answer.append(judge_info["note"])
    reason = ("Why: nothing in C = logits[target] asks X to be a natural image. The classifier only learned to "
              "separate ten classes of real digits, so it responds to any pattern that pushes its (piecewise-linear) "
              "logit up: small, spread-out changes over the whole image add up to a large logit. MNIST images occupy "
              "a small part of the 784-dimensional input space and the network's behaviour outside it is "
              "unconstrained by training.")
    if looks.key == "yes" and readable.key.startswith("readable"):   # a reason only if they do not look like digits
        reason = ""
    moved = lr["corr_target_mean_mean"] > lp["corr_target_mean_mean"]
    reason += (f"{' ' if reason else ''}Adding pixel priors (the regularized row) {'raises' if moved else 'does not raise'} the mean r "
               f"with the target's class mean ({lp['corr_target_mean_mean']:.2f} → {lr['corr_target_mean_mean']:.2f}), "
               f"and {counts['regularized']['readable']} of {counts['regularized']['n']} of its images are readable.")
    if readable.key.endswith("/shown"):
        reason += (f" Keeping X among likely digit images (the natural row: {counts['natural']['readable']} of "
                   f"{counts['natural']['n']} readable, the generating network's lowest target probability "
                   f"{counts['natural']['maker_min_prob']:.3f}) makes the same network, with the same objective, draw "
                   f"digits a person can read: it does hold a digit-shaped model of each class; plain gradient ascent "
                   f"never needs it, because the steepest way up the logit leaves the images digits occupy.")
    else:
        reason += (f" The natural row ({counts['natural']['readable']} of {counts['natural']['n']} readable, lowest "
                   f"target probability {counts['natural']['maker_min_prob']:.3f}) does not meet the bar here, so "
                   f"this run does not show that an image prior alone is the missing piece.")
    s3.answer.append(reason)
    s3.numbers = {"plain": lp, "regularized": lr, "natural": ln, "reference": ref,
                  "readability": {"counts": counts, "threshold_grey_levels": judged.threshold,
                                  "reference": judged.reference, "judge": judge_info},
                  "seconds": {"natural": nat.seconds, "natural_prior_fit": prior_seconds,
                              "judge_training": judge_info["seconds"]}}

    s4 = Section("3.1.4", "The cost function",
                 "Plot the cost function. Is it increasing or decreasing?")
    s4.figures.append((fig_to_data_uri(plain.cost_figure()), "C = logits[target] against step, one line per class."))
    rises = sp["fraction_of_steps_cost_rises"]
    cv = cost_verdict(plain.cost)
    s4.answer.append(
        f"Mean cost {p('3.1.4.start', sp['cost_start_mean'], '{:.2f}')} on the noise and "
        f"{p('3.1.4.end', sp['cost_end_mean'], '{:.1f}')} after {prm['steps']} steps, rising on "
        f"{p.pct('3.1.4.rises', rises, 1)} of the steps.")
    s4.answer.append(cv)
    if cv.key == "increasing":
        s4.answer.append("That is what gradient <i>ascent</i> does: each step moves X along dC/dX"
                         + (", and the logit of a ReLU network is piecewise linear in X, so nothing bounds it "
                            "unless the pixels are clipped." if cv.numbers["still_rising"] else "."))
    s4.numbers = {"start": sp["cost_start_mean"], "end": sp["cost_end_mean"], "fraction_rising": rises}
    return [s1, s2, s3, s4]
