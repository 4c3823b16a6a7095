"""Report sections 3.1.1–3.1.4, 3.2.1 (images the network believes in) and 4.1 (robustness).

The best model (highest validation accuracy) is attacked; its weights are never changed. The
other trained models serve as independent judges (transfer).
"""

from __future__ import annotations

import torch

from .report import Context, Section, fig_to_data_uri


def _other_models(ctx: Context) -> dict:
    from .runs import open_run
    out = {}
    for p in ctx.runs["plain"] + ctx.runs["batch_norm"]:
        r = open_run(p)
        if r.path.resolve() != ctx.best_run.path.resolve():
            out[r.name] = r.load_model()
    return out


def section_class_models(ctx: Context) -> list[Section]:
    """3.1 class models from noise"""
    from .generate import digit_likeness, synthesize, synthesize_regularized
    p = ctx.printed
    steps = ctx.analysis.synth_steps
    plain = synthesize(ctx.best_model, steps=steps, seed=0, label="plain class models")
    reg = synthesize_regularized(ctx.best_model, steps=steps, seed=0)
    others = _other_models(ctx)
    like_p = digit_likeness(plain.images, ctx.split, models=others, targets=plain.targets)
    like_r = digit_likeness(reg.images, ctx.split, models=others, targets=reg.targets)
    ctx.results["class_models"] = {"plain": plain.to_dict(), "regularized": reg.to_dict(),
                                   "likeness_plain": _drop_images(like_p), "likeness_regularized": _drop_images(like_r)}
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
        f"(mean {p.pct('3.1.2.mean_prob', sp['mean_target_prob'], 4)}). "
        + ("<b>Yes: the network is always sure.</b> " if sp["all_predicted_as_target"] and sp["min_target_prob"] >= 0.99 else
           "<b>Not always.</b> ")
        + f"The regularized ones reach {sr['n_predicted_as_target']}/10 with minimum confidence "
          f"{p.pct('3.1.2.min_prob_reg', sr['min_target_prob'], 2)}.")
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
    looks = lp["corr_target_mean_mean"] >= ref["corr_own_mean_p05"]
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
    s3.answer.append(
        ("<b>No, the plain images do not look like digits</b>" if not looks else
         "<b>The plain images carry some digit shape</b>")
        + ": the network is certain while the images stay far from real digits. The reason is that nothing in "
          "C = logits[target] asks X to be a natural image: the classifier only learned to separate ten classes "
          "of real digits, so it responds to any pattern that pushes its (piecewise-linear) logit up — small, "
          "spread-out, high-frequency changes over the whole image add up to a large logit. The MNIST images "
          "occupy a tiny part of the 784-dimensional input space and the network's behaviour outside it is "
          "unconstrained. Adding image priors (the regularized row) moves the images towards digit shapes, "
          "as the numbers above show.")
    s3.numbers = {"plain": lp, "regularized": lr, "reference": ref}

    s4 = Section("3.1.4", "The cost function",
                 "Plot the cost function. Is it increasing or decreasing?")
    s4.figures.append((fig_to_data_uri(plain.cost_figure()), "C = logits[target] against step, one line per class."))
    rises = sp["fraction_of_steps_cost_rises"]
    s4.answer.append(
        f"The cost {'<b>increases</b>' if sp['cost_end_mean'] > sp['cost_start_mean'] else '<b>does not increase</b>'}: "
        f"from a mean of {p('3.1.4.start', sp['cost_start_mean'], '{:.2f}')} on the noise to "
        f"{p('3.1.4.end', sp['cost_end_mean'], '{:.1f}')} after {prm['steps']} steps, rising on "
        f"{p.pct('3.1.4.rises', rises, 1)} of the steps. That is expected of gradient <i>ascent</i>: each step moves X "
        f"along dC/dX. It keeps rising instead of levelling off because the logit of a ReLU network grows roughly "
        f"linearly along such a direction, unbounded unless the pixels are clipped.")
    s4.numbers = {"start": sp["cost_start_mean"], "end": sp["cost_end_mean"], "fraction_rising": rises}
    return [s1, s2, s3, s4]


def section_targeted(ctx: Context) -> Section:
    """3.2.1 targeted fakes"""
    from .generate import BETA, adversarial, beta_sweep, digit_likeness
    p = ctx.printed
    d = ctx.analysis.adv_source_digit
    idx = int(torch.nonzero(ctx.split.test_y == d)[0])
    src = ctx.split.test_x[idx].float() / 255
    adv = adversarial(ctx.best_model, src, steps=ctx.analysis.adv_steps, source_label=d, scale="01")
    like = digit_likeness(adv.images, ctx.split, targets=adv.targets)
    sweep = beta_sweep(ctx.best_model, src, steps=ctx.analysis.adv_steps, source_label=d, scale="01")
    sec = Section("3.2.1", "Targeted fakes: an image of one digit classified as another",
                  "C = logits[target_class] − β × MSE(generated_image, target_image). Show the generated image for "
                  "each of the MNIST classes. Does the generated image resemble a digit? If so, then what digit "
                  "does it resemble?")
    sec.figures.append((fig_to_data_uri(adv.figure()),
                        f"Source: test image #{idx} (a {d}). Each fake starts from noise and maximizes its target's "
                        f"logit minus β = {adv.beta:g} × MSE to the source (0–255 scale)."))
    sec.figures.append((fig_to_data_uri(adv.cost_figure()), "The cost C against step for each target class."))
    sec.figures.append((fig_to_data_uri(sweep.figure()),
                        "How β trades fooling the network against resembling the source."))
    s = adv.summary()
    sec.answer.append(
        f"With β = {p('3.2.1.beta', adv.beta, '{:g}')}, {p('3.2.1.n_fooled', s['n_predicted_as_target'], '{}')} of the 10 "
        f"fakes are classified as their target (lowest target probability "
        f"{p.pct('3.2.1.min_prob', s['min_target_prob'], 2)}), while their root-mean-square distance to the "
        f"source {d} is {p('3.2.1.rmse', s['mean_rmse_to_source'], '{:.1f}')} grey levels and their correlation "
        f"with it {p('3.2.1.corr', s['mean_corr_to_source'], '{:.2f}')} on average (lowest "
        f"{p('3.2.1.corr_min', s['min_corr_to_source'], '{:.2f}')}).")
    nearest = like["images"]["nearest_class"]
    nn_label = like["images"]["nn_label"]
    by_mean = sum(1 for c in nearest if c == d)
    by_nn = sum(1 for c in nn_label if c == d)
    resembles = max(by_mean, by_nn) >= 5
    sec.answer.append(
        (f"<b>They resemble the digit {d}</b>, not their target" if resembles else
         f"<b>Most do not clearly resemble the {d}</b> by our measures")
        + f": the most similar single training image (Pearson r over the 784 pixels) is a {d} for "
        f"{p('3.2.1.nn_source', by_nn, '{}')} of the 10 fakes (labels: {', '.join(str(int(c)) for c in nn_label)}), "
        f"and the nearest class-mean image is the {d}'s for {p('3.2.1.nearest_source', by_mean, '{}')} of 10 "
        f"(nearest classes: {', '.join(str(int(c)) for c in nearest)}), while the network reads them as "
        f"{', '.join(str(int(c)) for c in adv.final_pred)} (targets 0–9). "
        f"The MSE term pulls the image towards the {d}; what is left over, the difference from the source, is a "
        f"structured perturbation that moves the logits: a targeted adversarial example. The β sweep below shows "
        f"the trade-off: small β fools the network into every class but lets the noise stay; large β reproduces "
        f"the {d} and stops fooling it.")
    rows = sweep.to_dict()["rows"]
    sec.tables.append({"caption": "β sweep (same noise, same targets).",
                       "header": ["β", "fooled (other classes)", "mean p(target)", "mean MSE to source", "mean corr to source"],
                       "rows": [[f"{r['beta']:g}", f"{100 * r['fooling_rate_other_classes']:.0f}%",
                                 f"{r['mean_target_prob']:.3f}", f"{r['mean_mse_to_source']:.1f}",
                                 f"{r['mean_corr_to_source']:.2f}"] for r in rows]})
    ctx.results["targeted"] = {"source_index": idx, "source_digit": d, "result": adv.to_dict(),
                               "likeness": _drop_images(like), "beta_sweep": sweep.to_dict(), "default_beta": BETA}
    sec.numbers = {"summary": s, "nearest_class": nearest, "nn_label": nn_label}
    return sec


def section_robustness(ctx: Context) -> Section:
    """4.1 robustness to standard attacks"""
    from .attacks import robustness
    from .runs import open_run
    p = ctx.printed
    n = ctx.analysis.robustness_n
    x = ctx.split.test_x[:n].float() / 255
    y = ctx.split.test_y[:n]
    models = {"plain": open_run(ctx.runs["plain"][0]).load_model(),
              "batch-norm": open_run(ctx.runs["batch_norm"][0]).load_model()}
    fg = robustness(models, x, y, attack="fgsm")
    pg = robustness(models, x, y, attack="pgd", steps=ctx.analysis.pgd_steps)
    sec = Section("4.1", "Robustness to standard attacks (FGSM, PGD)",
                  "Beyond the assignment: how much does an L∞-bounded perturbation (on the [0, 1] pixel scale) "
                  "lower test accuracy, for the plain and the batch-norm network?")
    sec.figures.append((fig_to_data_uri(fg.figure()), "FGSM, untargeted."))
    sec.figures.append((fig_to_data_uri(pg.figure()), f"PGD-{ctx.analysis.pgd_steps}, untargeted, random start."))
    eps = [e for e in pg.eps_list]
    rows = []
    for e in eps:
        row = [f"{e:g} ({e * 255:.0f} grey levels)"]
        for res in (fg, pg):
            for name in models:
                r = next(r for r in res.table if r["model"] == name and r["eps"] == e)
                row.append(f"{100 * r['accuracy']:.1f}%")
        rows.append(row)
    sec.tables.append({"caption": f"Accuracy on the first {n} test images.",
                       "header": ["ε", "FGSM plain", "FGSM BN", "PGD plain", "PGD BN"], "rows": rows})
    at = lambda res, name, e: next(r["accuracy"] for r in res.table if r["model"] == name and r["eps"] == e)  # noqa: E731
    e1 = 0.1 if 0.1 in eps else eps[len(eps) // 2]
    sec.answer.append(
        f"At ε = {e1:g} ({e1 * 255:.0f} grey levels per pixel, still plainly the same digit to a person) FGSM leaves "
        f"{p.pct('4.1.fgsm_plain', at(fg, 'plain', e1), 1)} accuracy for the plain and "
        f"{p.pct('4.1.fgsm_bn', at(fg, 'batch-norm', e1), 1)} for the batch-norm network; PGD leaves "
        f"{p.pct('4.1.pgd_plain', at(pg, 'plain', e1), 1)} and {p.pct('4.1.pgd_bn', at(pg, 'batch-norm', e1), 1)}. "
        f"Neither network was trained to resist attacks, and the iterative attack is "
        f"{'stronger' if at(pg, 'plain', e1) <= at(fg, 'plain', e1) else 'not stronger'} than the one-step one, as expected.")
    ctx.results["robustness"] = {"fgsm": fg.to_dict(), "pgd": pg.to_dict()}
    sec.numbers = {"fgsm": fg.to_dict(), "pgd": pg.to_dict()}
    return sec


def _drop_images(d: dict) -> dict:
    """digit_likeness output without the per-pixel lists (results.json stays small)."""
    return {k: v for k, v in d.items() if k != "images"} | {"nearest_class": d["images"].get("nearest_class")}


BUILDERS = [section_class_models, section_targeted, section_robustness]
