"""3.1 class models from noise, plain and regularized, and whether they look like digits."""

from __future__ import annotations

from ..analysis.class_models import confidence_verdict, cost_verdict, synthesize, synthesize_regularized
from ..analysis.likeness import digit_likeness, looks_like_digits
from .base import Context, Section, drop_images, fig_to_data_uri, other_models


def section_class_models(ctx: Context) -> list[Section]:
    """3.1 class models from noise"""
    p = ctx.printed
    steps = ctx.analysis.synth_steps
    plain = synthesize(ctx.best_model, steps=steps, seed=0, label="plain class models")
    reg = synthesize_regularized(ctx.best_model, steps=steps, seed=0)
    others = other_models(ctx)
    like_p = digit_likeness(plain.images, ctx.split, models=others, targets=plain.targets)
    like_r = digit_likeness(reg.images, ctx.split, models=others, targets=reg.targets)
    ctx.results["class_models"] = {"plain": plain.to_dict(), "regularized": reg.to_dict(),
                                   "likeness_plain": drop_images(like_p), "likeness_regularized": drop_images(like_r)}
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
    lp, lr = like_p["summary"], like_r["summary"]
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
        f"{p.pct('3.1.3.reg_nearest', lr['nearest_is_target_rate'], 0)}." + transfer_txt)
    # More rows (e.g. natural-image priors) join here: looks_like_digits takes any number of them.
    looks = looks_like_digits({"plain": lp, "regularized": lr}, ref)
    s3.answer.append(looks)
    reason = ("Why: nothing in C = logits[target] asks X to be a natural image. The classifier only learned to "
              "separate ten classes of real digits, so it responds to any pattern that pushes its (piecewise-linear) "
              "logit up: small, spread-out changes over the whole image add up to a large logit. MNIST images occupy "
              "a small part of the 784-dimensional input space and the network's behaviour outside it is "
              "unconstrained by training.")
    if looks.key == "yes":      # the assignment asks for a reason only if they do not look like digits
        reason = ""
    moved = lr["corr_target_mean_mean"] > lp["corr_target_mean_mean"]
    reason += (f"{' ' if reason else ''}Adding image priors (the regularized row) {'raises' if moved else 'does not raise'} the mean r "
               f"with the target's class mean ({lp['corr_target_mean_mean']:.2f} → {lr['corr_target_mean_mean']:.2f}).")
    s3.answer.append(reason)
    s3.numbers = {"plain": lp, "regularized": lr, "reference": ref}

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
