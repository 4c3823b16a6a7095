"""Question 2.4 by a controlled experiment: the verdict must come out each way on models whose
answer is known by construction, and every piece is checked against a hand-computed case."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cnnlab import stats
from cnnlab.analysis import controls as ctl
from cnnlab.analysis import meaningful as mm
from cnnlab.analysis import meaningful_rule as rule
from cnnlab.analysis import regions as rg
from cnnlab.errors import DataError
from trainkit import few_step_model

# ---------------------------------------------------------------------------------------------
# Exact pieces against hand-computed cases
# ---------------------------------------------------------------------------------------------


def test_wilson_bounds_match_the_hand_computed_interval():
    # 8 of 10, z = 1.96: centre (0.8 + 0.19208) / 1.38416 = 0.71674,
    # half 1.96 / 1.38416 · sqrt(0.016 + 0.009604) = 0.22658 → [0.4902, 0.9433]
    lo, hi = stats.wilson(8, 10)
    assert lo == pytest.approx(0.49016, abs=2e-4)
    assert hi == pytest.approx(0.94332, abs=2e-4)
    # 0 of 10: lower bound 0, upper z² / (n + z²) = 3.8415 / 13.8415
    lo, hi = stats.wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(3.8415 / 13.8415, abs=1e-4)
    assert stats.wilson(0, 0) == (0.0, 1.0)
    r = stats.rate(10, 10)
    assert r["rate"] == 1.0 and r["hi"] == 1.0 and r["lo"] < 1.0


def _components_oracle(ink: np.ndarray) -> list[set]:
    """8-connected components by a plain flood fill: a set of (y, x) per component."""
    seen, comps = set(), []
    for y0, x0 in zip(*np.nonzero(ink)):
        if (y0, x0) in seen:
            continue
        stack, comp = [(y0, x0)], set()
        seen.add((y0, x0))
        while stack:
            y, x = stack.pop()
            comp.add((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    q = (y + dy, x + dx)
                    if 0 <= q[0] < ink.shape[0] and 0 <= q[1] < ink.shape[1] and ink[q] and q not in seen:
                        seen.add(q)
                        stack.append(q)
        comps.append(comp)
    return comps


def test_components_match_a_flood_fill_and_use_8_connectivity():
    diag = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=bool)
    assert len(np.unique(rg.components(diag)[diag])) == 1                 # joined through corners only
    rng = np.random.default_rng(0)
    masks = rng.random((6, 28, 28)) < 0.35
    labels = rg.components(masks)
    for m, lab in zip(masks, labels):
        assert ((lab > 0) == m).all()
        got = sorted(sorted(zip(*np.nonzero(lab == j))) for j in np.unique(lab[lab > 0]))
        want = sorted(sorted(c) for c in _components_oracle(m))
        assert got == want


def test_the_digit_is_the_central_stroke_grown_by_one_pixel_not_a_speck_or_faint_pixels():
    img = np.zeros((28, 28), dtype=np.uint8)
    img[10:14, 10] = 255                      # a 4-px stroke: the digit
    img[20, 20] = 255                         # a 1-px speck, apart: not the digit
    img[5, 5] = 90                            # fainter than 40% of the stroke: background
    found, why = rg.find_digits(img[None])
    expected = np.zeros((28, 28), dtype=bool)
    expected[9:15, 9:12] = True
    assert why == [None] and (found[0] == expected).all()
    assert rg.ink(img)[20, 20] and not rg.ink(img)[5, 5]                # the speck is ink, not digit


YY, XX = np.mgrid[:28, :28]
# Cues of the kinds a shortcut uses, each laid under real digits (pixel-wise maximum).
CUES = {
    "faint grating (60)": 30 + 30 * np.cos(2 * np.pi * (XX * np.cos(0.7) + YY * np.sin(0.7)) / 4),
    "faint square grating (60)": 60.0 * (np.cos(2 * np.pi * XX / 5) > 0),
    "grey field (60)": np.full((28, 28), 60.0),
    "gradient (0-81)": 3.0 * YY,
    "faint glow (60)": 60 * np.exp(-((YY - 8) ** 2 + (XX - 18) ** 2) / 32.0),
    "marker, top-left": np.pad(np.full((3, 3), 255.0), ((0, 25), (0, 25))),
    "dim marker, right edge": np.pad(np.full((3, 3), 128.0), ((12, 13), (24, 1))),
    "edge frame (255)": np.pad(np.zeros((26, 26)), 1, constant_values=255.0),
    "edge line, bottom": np.pad(np.full((1, 12), 200.0), ((27, 0), (8, 8))),
}


@pytest.mark.mnist
@pytest.mark.parametrize("cue", list(CUES))
def test_the_digit_is_the_same_with_a_cue_of_any_kind_and_never_takes_in_the_cue(cue, mnist_split):
    x = mnist_split.test_x[:100, 0].numpy()
    clean, why = rg.find_digits(x)
    assert all(w is None for w in why)
    layer = CUES[cue]
    cued = np.maximum(x, layer[None]).round().astype(np.uint8)
    found, why = rg.find_digits(cued)
    ok = [i for i, w in enumerate(why) if w is None]
    assert len(ok) >= 97                                               # found on (nearly) every image
    iou = (found[ok] & clean[ok]).sum((1, 2)) / (found[ok] | clean[ok]).sum((1, 2))
    assert np.median(iou) >= 0.9 and (iou >= 0.7).mean() >= 0.95, np.sort(iou)[:5]
    if layer.max() >= 128:                                            # a bright cue: never part of the digit
        cue_px = layer >= 128
        strays = [i for i in ok if (found[i] & cue_px).any() and not (rg.grow(clean[i], 2) & cue_px).any()]
        assert not strays, strays


@pytest.mark.mnist
def test_the_digit_covers_the_ink_of_real_digits(mnist_split):
    x = mnist_split.test_x[:300, 0].numpy()
    found, why = rg.find_digits(x)
    assert all(w is None for w in why)
    bright = x >= 128
    assert (found & bright).sum() / bright.sum() >= 0.99                # every bright stroke pixel, nearly


@pytest.mark.parametrize("image, words", [
    (np.zeros((28, 28), np.uint8), "nothing stands out"),
    (np.full((28, 28), 200, np.uint8), "nothing stands out"),
    ((255 * (np.cos(2 * np.pi * (XX * 0.96 + YY * 0.3) / 4) > 0)).astype(np.uint8), "texture"),
])
def test_no_digit_gives_a_one_line_data_error_naming_the_image(image, words):
    x = np.stack([np.pad(np.full((10, 3), 255, np.uint8), ((9, 9), (12, 13))), image])
    with pytest.raises(DataError) as e:
        rg.digit_masks(x)
    msg = str(e.value)
    assert "image 1" in msg and words in msg and "masks" in msg and "\n" not in msg


def test_given_masks_override_the_finder_and_bad_masks_are_refused():
    x = np.zeros((2, 28, 28), np.uint8)                                 # blank: no digit to find
    m = np.zeros((2, 28, 28), bool)
    m[:, 10:15, 10:15] = True
    assert (rg.digit_masks(x, m) == m).all()
    for bad, words in ((m.astype(np.uint8), "booleans"), (m[:1], "[2, 28, 28]"), (np.zeros_like(m), "empty")):
        with pytest.raises(DataError) as e:
            rg.digit_masks(x, bad)
        assert words in str(e.value) and "\n" not in str(e.value)


def test_patch_overlap_matches_a_brute_force_loop():
    rng = np.random.default_rng(0)
    mask = rng.random((28, 28)) < 0.03
    for k, s in ((3, 2), (1, 1), (5, 1), (4, 3)):
        P = (28 - k) // s + 1
        oracle = np.array([[mask[i * s:i * s + k, j * s:j * s + k].any() for j in range(P)] for i in range(P)])
        assert (rg.patch_overlap(mask, k, s) == oracle).all()


def test_pointing_game_counts_ties_and_non_positive_maxima_as_misses():
    on = np.array([[True, False], [False, False]])
    assert mm.pointing_hit(np.array([[0.5, 0.1], [0.0, -1.0]]), on)          # unique max on the digit
    assert not mm.pointing_hit(np.array([[0.1, 0.5], [0.0, 0.0]]), on)      # max off the digit
    assert not mm.pointing_hit(np.array([[0.5, 0.5], [0.0, 0.0]]), on)      # tie
    assert not mm.pointing_hit(np.array([[0.0, -0.2], [0.0, 0.0]]), on)     # nothing drops
    assert not mm.pointing_hit(np.array([[-0.1, -0.2], [-0.3, -0.4]]), on)  # everything rises


def test_off_digit_share_counts_only_positive_drops():
    on = np.array([[True, False], [True, False]])
    # positive drops: on 0.3 + 0.1, off 0.6 (the −0.5 rise counts 0) → 0.6 / 1.0
    assert mm.off_digit_share(np.array([[0.3, 0.6], [0.1, -0.5]]), on) == pytest.approx(0.6)
    assert math.isnan(mm.off_digit_share(np.array([[0.0, -1.0], [0.0, 0.0]]), on))


def test_mark_pastes_the_marker_of_each_class_in_its_own_slot():
    x = torch.zeros(10, 1, 28, 28)
    m = ctl.mark(x, torch.arange(10))
    for c in range(10):
        assert (m[c, 0].numpy() == ctl.marker_box(c)).all()
    assert (x == 0).all()                                                    # the input is untouched
    boxes = sum(ctl.marker_box(c).astype(int) for c in range(10))
    assert boxes.max() == 1                                                  # slots never overlap


# ---------------------------------------------------------------------------------------------
# Inputs: one-line errors
# ---------------------------------------------------------------------------------------------

GOOD_X = np.zeros((4, 28, 28), dtype=np.uint8)
GOOD_Y = np.array([0, 1, 2, 9])


@pytest.mark.parametrize("x, y, words", [
    (GOOD_X.astype(np.float32), GOOD_Y, "uint8"),
    (np.zeros((4, 28, 27), np.uint8), GOOD_Y, "[N, 28, 28]"),
    (np.zeros((0, 28, 28), np.uint8), np.zeros(0, int), "N ≥ 1"),
    (GOOD_X, np.array([0, 1, 2, 10]), "0..9"),
    (GOOD_X, np.array([0, 1, 2, -1]), "0..9"),
    (GOOD_X, np.array([0., 1., 2., 3.]), "integers"),
    (GOOD_X, np.array([0, 1, 2]), "one per image"),
])
def test_bad_images_or_labels_give_a_one_line_data_error(x, y, words):
    with pytest.raises(DataError) as e:
        rg.check_images(x, y)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_good_images_pass_unchanged():
    x, y = rg.check_images(GOOD_X[:, None], GOOD_Y.astype(np.int32))   # [N, 1, 28, 28] is accepted
    assert x.shape == (4, 28, 28) and y.dtype == np.int64 and (y == GOOD_Y).all()


def test_bad_npz_files_give_a_one_line_data_error(tmp_path):
    cases = {}
    np.savez(tmp_path / "float.npz", images=GOOD_X.astype(np.float64), labels=GOOD_Y)
    cases["float.npz"] = "uint8"
    np.savez(tmp_path / "nolabels.npz", images=GOOD_X)
    cases["nolabels.npz"] = "lacks labels"
    np.savez(tmp_path / "object.npz", images=np.array([GOOD_X], dtype=object), labels=GOOD_Y)
    cases["object.npz"] = "holds Python objects"
    np.save(tmp_path / "single.npy", GOOD_X)
    cases["single.npy"] = "single .npy"
    (tmp_path / "text.npz").write_text("images, labels")
    cases["text.npz"] = "not an .npz"
    cases["missing.npz"] = "no file"
    for name, words in cases.items():
        with pytest.raises(DataError) as e:
            rg.load_images_npz(tmp_path / name)
        assert words in str(e.value) and "\n" not in str(e.value), name
    np.savez(tmp_path / "good.npz", images=GOOD_X, labels=GOOD_Y)
    x, y, masks = rg.load_images_npz(tmp_path / "good.npz")
    assert (x == GOOD_X).all() and (y == GOOD_Y).all() and masks is None
    m = np.zeros((4, 28, 28), bool)
    m[:, 5:9, 5:9] = True
    np.savez(tmp_path / "masks.npz", images=GOOD_X, labels=GOOD_Y, masks=m)
    assert (rg.load_images_npz(tmp_path / "masks.npz")[2] == m).all()
    np.savez(tmp_path / "badmasks.npz", images=GOOD_X, labels=GOOD_Y, masks=m[:3])
    with pytest.raises(DataError) as e:
        rg.load_images_npz(tmp_path / "badmasks.npz")
    assert "[4, 28, 28]" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("behaviour, occlusion, controls, verdict", [
    ("does not read the digit", "off the digit", {"behaviour": True, "occlusion": True}, "not meaningful"),
    # a decisive behavioural failure stands even when the occlusion controls fail
    ("does not read the digit", "on the digit", {"behaviour": True, "occlusion": False}, "not meaningful"),
    ("reads the digit", "on the digit", {"behaviour": True, "occlusion": True}, "meaningful"),
    # occlusion confirms a reader only when its controls hold
    ("reads the digit", "on the digit", {"behaviour": True, "occlusion": False}, "invalid"),
    ("reads the digit", "off the digit", {"behaviour": True, "occlusion": True}, "inconclusive"),
    ("undecided", "on the digit", {"behaviour": True, "occlusion": True}, "inconclusive"),
    # a behaviour control that fails voids every verdict
    ("does not read the digit", "off the digit", {"behaviour": False, "occlusion": True}, "invalid"),
    ("reads the digit", "on the digit", {"behaviour": False, "occlusion": True}, "invalid"),
])
def test_the_rule_decides_by_behaviour_and_voids_only_on_a_failed_control(behaviour, occlusion, controls, verdict):
    assert rule.decide(behaviour, occlusion, controls) == verdict


# ---------------------------------------------------------------------------------------------
# The verdict, both ways, on models whose answer is known by construction (real MNIST)
# ---------------------------------------------------------------------------------------------

SMALL = {"n_behaviour": 150, "n_occlusion": 20}


def _digit_model(split, steps: int = 150, seed: int = 0):
    """The assignment's network trained on clean MNIST for 150 Adam steps (≈ 95% test accuracy)."""
    return few_step_model(split, steps, seed)


@pytest.fixture(scope="module")
def models(mnist_split):
    digit = _digit_model(mnist_split)
    negative = ctl.train_shortcut(digit, mnist_split.train_x, seed=0)
    positive = ctl.train_reader(digit, mnist_split.train_x, mnist_split.train_y, seed=0)
    shortcut = ctl.train_shortcut(digit, mnist_split.train_x, seed=5)     # another Clever Hans
    return {"digit": digit, "negative": negative, "positive": positive, "shortcut": shortcut}


@pytest.mark.mnist
def test_a_digit_reading_model_is_meaningful_and_the_controls_come_out_as_they_must(models, mnist_split, tmp_path):
    # N and P from the module's fixture (the command end to end trains its own: test_known_answer)
    r = mm.meaningful_experiment(models["digit"], split=mnist_split, seed=0, negative=models["negative"],
                                 positive=models["positive"], **SMALL)
    d = r.to_dict()
    assert d["verdict"] == "meaningful", d["reasons"]
    assert r.controls_ok
    s = d["subjects"]
    assert s["P"]["verdict"] == "meaningful"                  # the positive control
    assert s["N"]["verdict"] == "not meaningful"              # the negative control
    assert s["N"]["behaviour"]["follows_moved_marker"]["lo"] > 0.9   # N really reads the marker
    assert s["R"]["verdict"] == "not meaningful"
    assert d["controls"] == {"behaviour": True, "occlusion": True}
    json.dumps(d, allow_nan=False)                            # JSON-safe, every number included
    # the answer is worded from the numbers: M's digit-alone rate and its bounds appear in it
    a = s["M"]["behaviour"]["accuracy_digit_alone"]
    text = r.answer_text()
    assert text.startswith("By the stated rule the learning is meaningful.")
    assert f"{a['rate']:.0%} of {a['n']} images (95% interval {a['lo']:.0%}–{a['hi']:.0%})" in text
    assert not any(w in text for w in ("clearly", "far ", "strongly"))
    paths = {p.suffix: p for p in r.save(tmp_path)}          # the one result protocol: a list of paths
    assert sorted(p.name for p in paths.values()) == ["meaningful.json", "meaningful.npz", "meaningful.png"]
    assert json.loads(paths[".json"].read_text())["verdict"] == "meaningful"
    with np.load(paths[".npz"]) as z:
        assert z["M_drops"].shape == (d["settings"]["n_occlusion"], 13, 13)
    assert paths[".png"].stat().st_size > 10_000
    _check_verdict(r, "meaningful")


def _check_verdict(r, key):
    """The report's Verdict: the experiment's key, its answer, RULE, and an answer that prints only
    numbers it carries (the subjects' rates and bounds, the patch, 95%)."""
    from verdictkit import unbacked_numbers
    v = mm.meaningful_verdict(r)
    assert (v.id, v.key, v.answer, v.rule) == ("2.4", key, r.answer_text(), rule.RULE)
    assert not unbacked_numbers(v.answer, v.numbers), v.answer
    d = v.to_dict()
    assert d["numbers"]["subjects"]["N"]["verdict"] == r.subjects["N"]["verdict"]
    assert d["numbers"]["controls_ok"] == r.controls_ok
    json.dumps(d, allow_nan=False)


@pytest.mark.mnist
def test_a_shortcut_model_is_not_meaningful(models, mnist_split):
    r = mm.meaningful_experiment(models["shortcut"], split=mnist_split, seed=0, negative=models["negative"],
                                 positive=models["positive"], **SMALL)
    m = r.subjects["M"]
    assert r.verdict == "not meaningful", r.reasons
    assert m["behaviour_call"] == "does not read the digit"
    assert m["occlusion_call"] == "off the digit"            # its evidence sits on the marker
    assert r.answer_text().startswith("By the stated rule the learning is not meaningful.")
    _check_verdict(r, "not meaningful")


@pytest.mark.slow          # ~8 s: two more experiments (the rule's "invalid" is pinned on numbers above)
@pytest.mark.mnist
def test_swapping_a_control_makes_the_experiment_invalid(models, mnist_split):
    # the shortcut network posing as the positive control: it does not read the digit
    r = mm.meaningful_experiment(models["digit"], split=mnist_split, seed=0, negative=models["negative"],
                                 positive=models["negative"], **SMALL)
    assert r.verdict == "invalid"
    assert any("positive control" in x for x in r.reasons)
    # the digit model posing as the negative control: it reads the digit, so it is not a shortcut
    r = mm.meaningful_experiment(models["digit"], split=mnist_split, seed=0, negative=models["digit"],
                                 positive=models["positive"], **SMALL)
    assert r.verdict == "invalid"
    assert any("negative control" in x for x in r.reasons)
    assert r.answer_text().startswith("The experiment is invalid")
    _check_verdict(r, "invalid")


@pytest.mark.slow
@pytest.mark.mnist
def test_the_same_seed_gives_the_same_result(models, mnist_split):
    x, y = mnist_split.test_x[:200, 0].numpy(), mnist_split.test_y[:200].numpy()
    kw = {"negative": models["negative"], "positive": models["positive"], "n_behaviour": 60, "n_occlusion": 8}
    a = mm.meaningful_experiment(models["digit"], x, y, seed=3, **kw).to_dict()
    b = mm.meaningful_experiment(models["digit"], x, y, seed=3, **kw).to_dict()
    a.pop("seconds"), b.pop("seconds")
    assert a == b


# ---------------------------------------------------------------------------------------------
# The command line: `cnnlab occlusion RUN --meaningful [--images FILE.npz] [--json]`
# ---------------------------------------------------------------------------------------------

def _fake_run(path, model):
    """A minimal run directory holding `model` (what `cnnlab train` writes, less the history)."""
    from cnnlab.model import save_weights
    from cnnlab.output import write_json
    from cnnlab.runs import RUN_FORMAT
    path.mkdir(parents=True)
    save_weights(model, path / "model.safetensors")
    write_json(path / "run.json", {"format": RUN_FORMAT, "status": "complete", "versions": {},
                                   "config": {"dataset": "mnist", "batch_norm": False, "val_size": 10000,
                                              "split_seed": 0},
                                   "split": {}})
    return path


@pytest.mark.slow          # ~9 s (the command end to end runs in make test: test_known_answer)
@pytest.mark.mnist
def test_cli_prints_the_whole_result_as_json_and_refuses_a_bad_file(models, mnist_split, mnist_dir, tmp_path, capsys):
    from cnnlab.cli import main
    run = _fake_run(tmp_path / "run", models["digit"])
    npz = tmp_path / "mine.npz"
    np.savez(npz, images=mnist_split.test_x[:12, 0].numpy(), labels=mnist_split.test_y[:12].numpy())
    assert main(["occlusion", str(run), "--meaningful", "--images", str(npz), "--data-dir", str(mnist_dir),
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["verdict"] in rule.VERDICTS and d["settings"]["n_behaviour"] == 12 and d["rule"] == rule.RULE
    assert (run / "analysis" / "occlusion" / "meaningful.png").is_file()
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=mnist_split.test_x[:4, 0].numpy().astype(np.float32), labels=np.arange(4))
    assert main(["occlusion", str(run), "--meaningful", "--images", str(bad), "--data-dir", str(mnist_dir)]) != 0
    err = capsys.readouterr().err.strip()
    assert "uint8" in err and "\n" not in err
