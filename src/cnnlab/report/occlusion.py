"""2.4 occlusion maps, and whether the learning is meaningful (the controlled experiment)."""

from __future__ import annotations

from ..analysis.meaningful import meaningful_experiment, meaningful_verdict
from ..analysis.occlusion import occlusion
from .base import Context, Section, esc, fig_to_data_uri, pick_images

SUBJECT_NAMES = {"M": "M (the model under test)", "N": "N (shortcut control)", "P": "P (digit-only control)",
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
    occ, rows, described = [], [], []
    for i in pick_images(ctx, a.occlusion_images):
        x = ctx.split.test_x[i].float() / 255
        r = occlusion(ctx.best_model, x, target=int(ctx.split.test_y[i]), label=int(ctx.split.test_y[i]),
                      name=f"test image #{i}")
        occ.append(r)
        sec.figures.append((fig_to_data_uri(r.figure()),
                            f"p(class {r.target}) as a grey (0.5) patch of 1–5 pixels slides over test image #{i}; "
                            f"dark = the patch there lowers p. Bottom row: the drop p(clean) − p(occluded)."))
        desc = r.descriptive()
        for k, d in desc.items():
            rows.append([f"#{i} ({r.label})", f"{k}×{k}", f"{r.base_prob:.4f}", f"{d['min_prob']:.4f}",
                         d["lowest_p_falls_on"], f"{d['positions_where_grey_raises_p']} of {d['positions']}",
                         f"{d['positions_with_ink_under_patch']}", f"{d['mean_drop_ink_under_patch']:.2g}",
                         f"{d['positions_on_background_only']}", f"{d['mean_drop_pure_ink_insertion']:.2g}",
                         f"{d['background_positions_that_lower_p']}"])
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
    sec.tables.append({"caption": "The grey-patch maps, described: where the lowest p falls ('digit' = the largest "
                                  "ink component grown 1 px), how many positions the grey patch raises p, and the "
                                  "mean drop p(clean) − p(occluded) with ink under the patch against positions "
                                  "where the patch lies on background only (pure ink insertion).",
                       "header": ["image (label)", "patch", "p clean", "lowest p", "lowest p on",
                                  "positions raising p", "positions with ink under", "mean drop there",
                                  "background-only positions", "mean drop there", "of them lowering p"],
                       "rows": rows})

    # The judgment: the controlled experiment (behaviour first, then occlusion, with controls).
    res = meaningful_experiment(ctx.best_model, split=ctx.split, seed=0, n_behaviour=a.meaningful_n_behaviour,
                                n_occlusion=a.meaningful_n_occlusion)
    v = meaningful_verdict(res)
    sec.figures.append((fig_to_data_uri(res.figure()),
                        "Is the learning meaningful? One marked test image for the model M and the three controls "
                        "(rows): the input, the assignment's grey-patch maps k = 1…5, the black 3×3 drop map the "
                        "rule uses; bottom: the rule's five measurements with 95% Wilson intervals against its "
                        "thresholds."))
    sec.answer.append(
        f"How it is decided: a single occlusion map cannot tell a network that reads the digit from one that "
        f"reads something else near it, so each test image gets a small white marker whose position encodes its "
        f"label, and four networks are tested on the same {p('2.4.n_behaviour', res.settings['n_behaviour'], '{}')} "
        f"images: M, a shortcut control N trained for {res.settings['shortcut_steps']} steps "
        f"({res.seconds['train_negative']:.1f} s) on labels that only the marker carries, a digit-only control P "
        f"(M on the digit's ink alone) and the untrained R. Behaviour first (digit alone, digit erased, marker "
        f"moved), then erasing 3×3 patches of {p('2.4.n_occlusion', res.settings['n_occlusion'], '{}')} marked "
        f"images M classifies correctly.")
    sec.answer.append(v)
    nb, no = res.subjects["N"]["behaviour"], res.subjects["N"]["occlusion"]
    sec.answer.append(
        f"The shortcut control N, shown in the second row of the figure and the table below, is the case the test "
        f"must reject: it gives the label with the digit alone on "
        f"{p.pct('2.4.N.digit_alone', nb['accuracy_digit_alone']['rate'], 0)} of the images, follows a moved "
        f"marker on {p.pct('2.4.N.follows', nb['follows_moved_marker']['rate'], 0)}, and its largest drop falls on "
        f"the digit on {p.pct('2.4.N.hit', no['largest_drop_on_digit']['rate'], 0)}; the rule calls it "
        f"<b>{esc(res.subjects['N']['verdict'])}</b>"
        f"{'' if res.subjects['N']['verdict'] == 'not meaningful' else ', so the experiment is invalid'}.")
    sec.answer.extend(described)
    trows = []
    for name, sub in res.subjects.items():
        b, o = sub["behaviour"], sub["occlusion"]
        trows.append([SUBJECT_NAMES[name], _pc(b["accuracy_marked"]), _pc(b["accuracy_digit_alone"]),
                      _pc(b["accuracy_digit_removed"]), _pc(b["follows_moved_marker"]),
                      _pc(o["largest_drop_on_digit"]), _pc(o["most_drop_mass_off_digit"]),
                      sub["behaviour_call"], sub["occlusion_call"], sub["verdict"]])
    th = res.settings["thresholds"]
    sec.tables.append({"caption": f"The rule's measurements per network: share of images with its 95% Wilson "
                                  f"interval ({res.settings['n_behaviour']} images for behaviour, "
                                  f"{res.settings['n_occlusion']} for occlusion; {res.seconds['total']:.1f} s in all, "
                                  f"control training included).",
                       "header": ["network", "accuracy, marked", f"digit alone (≥ {th['acc_min']:g})",
                                  f"digit erased (≤ {th['removed_max']:g})", f"follows moved marker (≤ {th['follow_max']:g})",
                                  f"largest drop on digit (≥ {th['hit_min']:g})",
                                  f"most drop off digit (≤ {th['off_max']:g})", "behaviour", "occlusion", "verdict"],
                       "rows": trows})
    ctx.results["occlusion"] = {"images": [r.to_dict() for r in occ], "meaningful": res.to_dict()}
    sec.numbers = {"verdict": res.verdict, "controls_ok": res.controls_ok,
                   "subjects": {n: s["verdict"] for n, s in res.subjects.items()}}
    return sec
