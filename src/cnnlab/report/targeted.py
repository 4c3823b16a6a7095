"""3.2 targeted fakes: an image of one digit classified as another."""

from __future__ import annotations

from ..analysis._shared import first_image_of
from ..analysis.likeness import digit_likeness
from ..analysis.targeted import adversarial, beta_sweep, resemblance_verdict
from ..config import BETA
from .base import Context, Section, drop_images, esc, fig_to_data_uri


def section_targeted(ctx: Context) -> Section:
    """3.2.1 targeted fakes"""
    p = ctx.printed
    d = ctx.analysis.adv_source_digit
    idx = first_image_of(ctx.split.test_y, d)
    src = ctx.split.test_x[idx].float() / 255
    adv = adversarial(ctx.best_model, src, steps=ctx.analysis.adv_steps, source_label=d, scale="01")
    like = digit_likeness(adv.images, ctx.split, targets=adv.targets)
    sweep = beta_sweep(ctx.best_model, src, steps=ctx.analysis.adv_steps, source_label=d, scale="01")
    sec = Section("3.2.1", "Targeted fakes: an image of one digit classified as another",
                  "C = logits[target_class] − β × MSE(generated_image, target_image). Show the generated image for "
                  "each of the MNIST classes. Does the generated image resemble a digit? If so, then what digit "
                  "does it resemble?")
    s = adv.summary()
    nearest = like.per_image["nearest_class"]
    nn_label = like.per_image["nn_label"]
    v = sec.verdict(resemblance_verdict(d, adv.targets.tolist(), nearest, nn_label, adv.final_pred.tolist()))
    n = v.numbers
    fooled = (f"{p('3.2.1.n_fooled', s['n_predicted_as_target'], '{}')} of the 10 fakes are classified as their "
              f"target (lowest target probability {p.pct('3.2.1.min_prob', s['min_target_prob'], 2)})")
    look = {"source": lambda: f"<b>Yes, they resemble a digit: the {d} they were pulled towards</b>, not the class the network "
                      f"reads. {fooled[0].upper() + fooled[1:]}, yet the most similar training image is a {d} for "
                      f"{p('3.2.1.nn_is_source', n['nn_is_source'], '{}')} of them (and the nearest class-average "
                      f"image is the {d}'s for {p('3.2.1.nearest_is_source', n['nearest_is_source'], '{}')}).",
            "target": lambda: f"<b>Yes, but they resemble their target classes</b>, not the {d}: {fooled}, and the most "
                      f"similar training image carries the target's label for "
                      f"{p('3.2.1.nn_is_target', n['nn_is_target'], '{}')} of them.",
            "neither": lambda: f"<b>Not clearly</b>: {fooled}, but most of them resemble neither the {d} nor their target "
                       f"(the most similar training image is a {d} for {p('3.2.1.nn_is_source', n['nn_is_source'], '{}')}"
                       f" and has the target's label for {p('3.2.1.nn_is_target', n['nn_is_target'], '{}')})."}[v.key]()
    sec.answer.append(look)
    if adv.adapted or adv.not_reached:      # one β for all did not reach every target: say which
        sec.answer.append(f"One β did not reach every target{esc(adv.adapt_note())}.")
    sec.figures.append((fig_to_data_uri(adv.figure()),
                        f"Source: test image #{idx} (a {d}). Each fake starts from noise and maximizes its target's "
                        f"logit minus β = {adv.beta:g} × MSE to the source (0–255 scale); title: the network's "
                        f"prediction and confidence."))
    sec.evidence.append(
        f"With β = {p('3.2.1.beta', adv.beta, '{:g}')}, the fakes differ from the source {d} by "
        f"{p('3.2.1.rmse', s['mean_rmse_to_source'], '{:.1f}')} grey levels per pixel (root-mean-square) and "
        f"correlate with it at r = {p('3.2.1.corr', s['mean_corr_to_source'], '{:.2f}')} on average. The MSE term "
        f"pulls each image towards the {d}; what is left, the difference from the source, is a perturbation that "
        f"moves the logits: a targeted adversarial example. A larger β keeps the fake closer to the {d} but "
        f"fools the network less often (appendix).")
    sec.appendix_figures.append((fig_to_data_uri(adv.cost_figure()), "The cost C against step for each target class."))
    sec.appendix_figures.append((fig_to_data_uri(sweep.figure()),
                                 "How β trades fooling the network against resembling the source."))
    rows = sweep.to_dict()["rows"]
    sec.appendix_tables.append({"caption": "β sweep (same noise, same targets).",
                                "header": ["β", "fooled (other classes)", "mean p(target)", "mean MSE to source",
                                           "mean corr to source"],
                                "rows": [[f"{r['beta']:g}", f"{100 * r['fooling_rate_other_classes']:.0f}%",
                                          f"{r['mean_target_prob']:.3f}", f"{r['mean_mse_to_source']:.1f}",
                                          f"{r['mean_corr_to_source']:.2f}"] for r in rows]})
    ctx.results["targeted"] = {"source_index": idx, "source_digit": d, "result": adv.to_dict(),
                               "likeness": drop_images(like), "beta_sweep": sweep.to_dict(), "default_beta": BETA}
    sec.numbers = {"summary": s, "nearest_class": nearest, "nn_label": nn_label}
    return sec
