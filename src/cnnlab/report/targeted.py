"""3.2 targeted fakes: an image of one digit classified as another."""

from __future__ import annotations

from ..analysis._shared import first_image_of
from ..analysis.likeness import digit_likeness
from ..analysis.targeted import adversarial, beta_sweep, resemblance_verdict
from ..config import BETA
from .base import Context, Section, drop_images, fig_to_data_uri


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
    sec.answer.append(resemblance_verdict(d, adv.targets.tolist(), nearest, nn_label, adv.final_pred.tolist()))
    sec.answer.append(
        f"The MSE term pulls the image towards the {d}; what is left over, the difference from the source, is a "
        f"perturbation that moves the logits: a targeted adversarial example. The β sweep below shows the "
        f"trade-off between fooling the network and resembling the source.")
    rows = sweep.to_dict()["rows"]
    sec.tables.append({"caption": "β sweep (same noise, same targets).",
                       "header": ["β", "fooled (other classes)", "mean p(target)", "mean MSE to source", "mean corr to source"],
                       "rows": [[f"{r['beta']:g}", f"{100 * r['fooling_rate_other_classes']:.0f}%",
                                 f"{r['mean_target_prob']:.3f}", f"{r['mean_mse_to_source']:.1f}",
                                 f"{r['mean_corr_to_source']:.2f}"] for r in rows]})
    ctx.results["targeted"] = {"source_index": idx, "source_digit": d, "result": adv.to_dict(),
                               "likeness": drop_images(like), "beta_sweep": sweep.to_dict(), "default_beta": BETA}
    sec.numbers = {"summary": s, "nearest_class": nearest, "nn_label": nn_label}
    return sec
