"""2.4 occlusion maps, and whether the learning is meaningful (the controlled experiment)."""

from __future__ import annotations

from ..analysis.meaningful import meaningful_experiment, meaningful_verdict
from ..analysis.occlusion import occlusion
from .base import Context, Section, esc, fig_to_data_uri, pick_images

SUBJECT_NAMES = {"M": "M (the model under test)", "N": "N (shortcut control)", "P": "P (digit-reading control)",
                 "R": "R (untrained)"}


def _pc(r: dict) -> str:
    """A rate as printed in the table: '93% (88–96%)', or 'n/a' over 0 images."""
    return f"{r['rate']:.0%} ({r['lo']:.0%}–{r['hi']:.0%})" if r["n"] else "n/a"


def section_occlusion(ctx: Context) -> Section:
    """2.4 occlusion maps and whether the learning is meaningful"""
    p = ctx.printed
    a = ctx.analysis
    sec = Section("2.4", "Occluding parts of the image",
                  "Plot the probability of the class of interest as a function of the position of an occluder "
                  "(a grey square of 1 to 5 pixels). Based on this experiment, report if the learning is "
                  "meaningful or not.")

    # The assignment's plot: grey (0.5) patches of 1..5 px over a few test images, with numbers
    # that describe each map (no verdict: one image's map cannot decide the question).
    occ, maps_a, maps_b, described = [], [], [], []
    for j, i in enumerate(pick_images(ctx, a.occlusion_images)):
        x = ctx.split.test_x[i].float() / 255
        r = occlusion(ctx.best_model, x, target=int(ctx.split.test_y[i]), label=int(ctx.split.test_y[i]),
                      name=f"test image #{i}")
        occ.append(r)
        fig = (fig_to_data_uri(r.figure()),
               f"p(class {r.target}) as a grey (0.5) patch of 1–5 pixels slides over test image #{i}; dark = the "
               f"patch there lowers p. Bottom row: the drop p(clean) − p(occluded).")
        (sec.figures if j == 0 else sec.appendix_figures).append(fig)
        desc = r.descriptive()
        for k, d in desc.items():
            maps_a.append([f"#{i} ({r.label})", f"{k}×{k}", f"{r.base_prob:.4f}", f"{d['min_prob']:.4f}",
                           d["lowest_p_falls_on"], f"{d['positions_where_grey_raises_p']} of {d['positions']}"])
            maps_b.append([f"#{i} ({r.label})", f"{k}×{k}", f"{d['positions_with_ink_under_patch']}",
                           f"{d['mean_drop_ink_under_patch']:.2g}", f"{d['positions_on_background_only']}",
                           f"{d['mean_drop_pure_ink_insertion']:.2g}", f"{d['background_positions_that_lower_p']}"])
        on = [k for k, d in desc.items() if d["lowest_p_falls_on"] == "digit"]
        raises = [desc[k]["positions_where_grey_raises_p"] for k in desc]
        ks = f" (k = {', '.join(map(str, on))})" if on else ""
        described.append(
            f"Test image #{i} (a {r.label}, p({r.target}) = {r.base_prob:.4f} without a patch): the lowest p "
            f"under a grey patch falls on the digit for {len(on)} of the {len(desc)} patch sizes"
            f"{ks}; the patch raises p at {min(raises)}–{max(raises)} "
            f"positions, depending on k. With a 3×3 patch, the mean drop is "
            f"{desc[3]['mean_drop_ink_under_patch']:.2g} where ink lies under the patch and "
            f"{desc[3]['mean_drop_pure_ink_insertion']:.2g} where the patch only adds ink to background."
            if 3 in desc else f"Test image #{i}: see the table below.")

    # The judgment: the controlled experiment (behaviour first, then occlusion, with controls).
    res = meaningful_experiment(ctx.best_model, split=ctx.split, seed=0, n_behaviour=a.meaningful_n_behaviour,
                                n_occlusion=a.meaningful_n_occlusion)
    v = sec.verdict(meaningful_verdict(res))
    m = res.subjects["M"]
    b, o = m["behaviour"], m["occlusion"]
    head = {"meaningful": "<b>Yes, the learning is meaningful</b>: the network reads the digit, not the background.",
            "not meaningful": "<b>No, the learning is not meaningful</b>: the network does not read the digit.",
            "inconclusive": "<b>Undecided</b>: the measurements do not settle whether the network reads the digit.",
            "invalid": "<b>No answer</b>: a control network came out wrong, so this run's measurement cannot be trusted."
            }[v.key]
    sec.answer.append(
        f"{head} With everything but the digit erased it still names the digit on "
        f"{p.pct('2.4.M.digit_alone', b['accuracy_digit_alone']['rate'], 0)} of "
        f"{p('2.4.n_behaviour', res.settings['n_behaviour'], '{}')} test images; with the digit erased, on only "
        f"{p.pct('2.4.M.digit_erased', b['accuracy_digit_removed']['rate'], 0)}; and the position where a patch "
        f"lowers its confidence most lies on the digit for "
        f"{p.pct('2.4.M.hit', o['largest_drop_on_digit']['rate'], 0)} of "
        f"{p('2.4.n_occlusion', res.settings['n_occlusion'], '{}')} images.")
    r0 = occ[0]
    d3 = r0.descriptive().get(3)
    if d3 is not None:
        sec.evidence.append(
            f"The grey-patch maps the question asks for cannot decide it alone: in the map above (a {r0.label}), a "
            f"3×3 grey patch lowers p({r0.target}) by "
            f"{p('2.4.map.drop_ink', d3['mean_drop_ink_under_patch'], '{:.2g}')} on average where it covers the "
            f"digit's ink and by {p('2.4.map.drop_bg', d3['mean_drop_pure_ink_insertion'], '{:.2g}')} where it lies on "
            f"the black background, where it adds grey ink that was not there. So the answer above comes from "
            f"erasing instead: everything but the digit, the digit itself, and 3×3 patches set to 0.")
    nb = res.subjects["N"]["behaviour"]
    sec.evidence.append(
        f"One map cannot decide the question, so the same measurements were made on a network built to cheat: "
        f"it was trained on labels that only a small white marker carries. It follows a moved marker on "
        f"{p.pct('2.4.N.follows', nb['follows_moved_marker']['rate'], 0)} of the images, and the rule calls it "
        f"{esc(res.subjects['N']['verdict'])}"
        + (", as it must." if res.subjects["N"]["verdict"] == "not meaningful" else
           ", where it should say not meaningful: that is why this run's answer is withheld.")
        + " The rule, the other controls and every rate with its interval are in the appendix.")

    sec.appendix.append(
        f"How it is decided: each test image gets a small white marker whose position encodes its label, and four "
        f"networks are tested on the same {res.settings['n_behaviour']} images: M (the model), the shortcut "
        f"network N (trained {res.settings['shortcut_steps']} steps, {res.seconds['train_negative']:.1f} s, on "
        f"labels only the marker carries), P (trained {res.settings['reader_steps']} steps, "
        f"{res.seconds['train_positive']:.1f} s, on the true labels with markers in random slots: it reads the digit, "
        f"scored against its own readings) "
        f"and R (untrained). Behaviour first: the digit alone, the digit erased, the marker moved. Then 3×3 "
        f"patches of 0 are slid over {res.settings['n_occlusion']} marked images M gets right, and the drop of "
        f"log p(label) is measured at each position. Each rate is a share of images with its 95% Wilson interval "
        f"(appendix B). {res.seconds['total']:.1f} s in all.")
    th = res.settings["thresholds"]
    brows, orows = [], []
    for name, sub in res.subjects.items():
        bb, oo = sub["behaviour"], sub["occlusion"]
        brows.append([SUBJECT_NAMES[name], _pc(bb["accuracy_marked"]), _pc(bb["accuracy_digit_alone"]),
                      _pc(bb["accuracy_digit_removed"]), _pc(bb["follows_moved_marker"]), sub["behaviour_call"]])
        orows.append([SUBJECT_NAMES[name], _pc(oo["largest_drop_on_digit"]), _pc(oo["most_drop_mass_off_digit"]),
                      sub["occlusion_call"], sub["verdict"]])
    sec.appendix_tables.append({"caption": f"Behaviour: share of {res.settings['n_behaviour']} images (95% interval).",
                                "header": ["network", "right, marked", f"digit alone (≥ {th['acc_min']:g})",
                                           f"digit erased (≤ {th['removed_max']:g})",
                                           f"follows moved marker (≤ {th['follow_max']:g})", "behaviour"],
                                "rows": brows})
    sec.appendix_tables.append({"caption": f"Occlusion and verdict: share of {res.settings['n_occlusion']} images "
                                           f"(95% interval).",
                                "header": ["network", f"largest drop on digit (≥ {th['hit_min']:g})",
                                           f"most drop off digit (≤ {th['off_max']:g})", "occlusion", "verdict"],
                                "rows": orows})
    sec.appendix_figures.append((fig_to_data_uri(res.figure()),
                                 "One marked test image for M and the three controls (rows): the input, the "
                                 "grey-patch maps k = 1…5, and the 3×3 erasing map the rule uses."))
    sec.appendix.extend(described)
    sec.appendix_tables.append({"caption": "The grey-patch maps: where the lowest p falls ('digit' = the largest "
                                           "ink component grown 1 px) and how many positions the grey patch raises p.",
                                "header": ["image (label)", "patch", "p clean", "lowest p", "lowest p on",
                                           "positions raising p"], "rows": maps_a})
    sec.appendix_tables.append({"caption": "The mean drop p(clean) − p(occluded) where ink lies under the patch, and "
                                           "where the patch lies on background only (it adds grey ink there).",
                                "header": ["image (label)", "patch", "positions with ink under", "mean drop there",
                                           "background-only positions", "mean drop there", "of them lowering p"],
                                "rows": maps_b})
    ctx.results["occlusion"] = {"images": [r.to_dict() for r in occ], "meaningful": res.to_dict()}
    sec.numbers = {"verdict": res.verdict, "controls_ok": res.controls_ok,
                   "subjects": {n: s["verdict"] for n, s in res.subjects.items()}}
    return sec
