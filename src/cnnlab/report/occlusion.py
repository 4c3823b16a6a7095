"""2.4 occlusion maps, and whether the drop lies on the digit."""

from __future__ import annotations

from ..analysis import untrained_for_run
from ..analysis.occlusion import meaningfulness_figure, occlusion, occlusion_meaningfulness
from .base import Context, Section, fig_to_data_uri, pick_images


def section_occlusion(ctx: Context) -> Section:
    """2.4 occlusion maps and whether the learning is meaningful"""
    p = ctx.printed
    sec = Section("2.4", "Occluding parts of the image",
                  "Plot the probability of the class of interest as a function of the position of an occluder "
                  "(a grey square of 1 to 5 pixels). Based on this experiment, report if the learning is "
                  "meaningful or not.")
    occ = []
    for i in pick_images(ctx, ctx.analysis.occlusion_images):
        x = ctx.split.test_x[i].float() / 255
        r = occlusion(ctx.best_model, x, target=int(ctx.split.test_y[i]), label=int(ctx.split.test_y[i]),
                      name=f"test image #{i}")
        occ.append(r)
        sec.figures.append((fig_to_data_uri(r.figure(), dpi=90),
                            f"p(class {r.target}) as a grey (0.5) patch of 1–5 pixels slides over test image #{i}; "
                            f"dark = the patch there hurts the prediction."))
    m = occlusion_meaningfulness(ctx.best_model, ctx.split.test_x, ctx.split.test_y, n=ctx.analysis.meaningfulness_n,
                                 reference=untrained_for_run(ctx.best_run, ctx.best_model))
    sec.figures.append((fig_to_data_uri(meaningfulness_figure(m), dpi=90),
                        "Share of the probability drop on the digit, per image: trained vs untrained network, "
                        "against the share expected if every position mattered equally."))
    tr, ur = m["trained"]["digit_region"], m["untrained"]["digit_region"]
    ts = m["trained"]["strokes"]
    lo, hi = tr["share_ci95"]
    meaningful = lo > tr["expected_share_mean"] and tr["share_mean"] > ur["share_mean"]
    sec.answer.append(
        f"Over {p('2.4.n', tr['images'], '{}')} correctly classified test images ({m['patch_size']}×{m['patch_size']} "
        f"grey patch), {p('2.4.share', 100 * tr['share_mean'], '{:.0f}')}% ± {100 * tr['share_std']:.0f}% of the drop "
        f"in the true class's probability falls on the digit (its strokes and {m['digit_margin_px']} px around them; "
        f"bootstrap 95% interval {p('2.4.ci_lo', 100 * lo, '{:.0f}')}–{p('2.4.ci_hi', 100 * hi, '{:.0f}')}%), while that "
        f"region covers {p('2.4.expected', 100 * tr['expected_share_mean'], '{:.0f}')}% of the positions "
        f"(enrichment {p('2.4.enrichment', tr['enrichment_mean'], '{:.2f}')}×). On the stroke pixels alone the share is "
        f"{100 * ts['share_mean']:.0f}% against {100 * ts['expected_share_mean']:.0f}% expected. The untrained network of "
        f"the same seed puts {p('2.4.untrained', 100 * ur['share_mean'], '{:.0f}')}% there "
        f"(enrichment {ur['enrichment_mean']:.2f}×). The median largest drop per image is "
        f"{m['trained']['max_drop_median']:.2f} for the trained network.")
    sec.answer.append("<b>The learning is meaningful:</b> the network's confidence depends on the pixels of the digit, "
                      "far more than chance or an untrained network would give, not on the background."
                      if meaningful else
                      "<b>Not shown by this run:</b> the drop is not concentrated on the digit clearly beyond chance "
                      "and the untrained network, so this experiment does not establish that the learning is meaningful.")
    ctx.results["occlusion"] = {"images": [r.to_dict() for r in occ],
                                "meaningfulness": {k: v for k, v in m.items() if k != "per_image"}}
    sec.numbers = {"meaningful": meaningful, "share_mean": tr["share_mean"], "ci95": [lo, hi],
                   "expected": tr["expected_share_mean"], "untrained_share_mean": ur["share_mean"]}
    return sec
