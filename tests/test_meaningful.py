"""Question 2.4 by a controlled experiment: the verdict must come out each way on models whose
answer is known by construction, and every piece is checked against a hand-computed case."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cnnlab.analysis import meaningful as mm
from cnnlab.errors import DataError
from trainkit import few_step_model

# ---------------------------------------------------------------------------------------------
# Exact pieces against hand-computed cases
# ---------------------------------------------------------------------------------------------


def test_wilson_bounds_match_the_hand_computed_interval():
    # 8 of 10, z = 1.96: centre (0.8 + 0.19208) / 1.38416 = 0.71674,
    # half 1.96 / 1.38416 · sqrt(0.016 + 0.009604) = 0.22658 → [0.4902, 0.9433]
    lo, hi = mm.wilson(8, 10)
    assert lo == pytest.approx(0.49016, abs=2e-4)
    assert hi == pytest.approx(0.94332, abs=2e-4)
    # 0 of 10: lower bound 0, upper z² / (n + z²) = 3.8415 / 13.8415
    lo, hi = mm.wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(3.8415 / 13.8415, abs=1e-4)
    assert mm.wilson(0, 0) == (0.0, 1.0)
    r = mm.rate(10, 10)
    assert r["rate"] == 1.0 and r["hi"] == 1.0 and r["lo"] < 1.0


def test_largest_component_uses_8_connectivity_and_breaks_ties_in_raster_order():
    ink = np.array([[1, 0, 0, 0, 1],
                    [0, 1, 0, 0, 1],
                    [0, 0, 1, 0, 0],
                    [0, 0, 0, 0, 0],
                    [1, 1, 0, 0, 0]], dtype=bool)
    # the diagonal (3 px, joined only through corners) beats the 2-px pieces
    expected = np.zeros_like(ink)
    expected[0, 0] = expected[1, 1] = expected[2, 2] = True
    assert (mm.largest_component(ink) == expected).all()
    tie = np.array([[1, 1, 0, 0],
                    [0, 0, 0, 0],
                    [0, 0, 1, 1]], dtype=bool)
    first = np.zeros_like(tie)
    first[0, :2] = True
    assert (mm.largest_component(tie) == first).all()
    assert not mm.largest_component(np.zeros((4, 4), dtype=bool)).any()


def test_digit_region_is_the_largest_component_grown_by_one_pixel():
    img = np.zeros((28, 28), dtype=np.uint8)
    img[10:14, 10] = 255                      # a 4-px stroke: the digit
    img[20, 20] = 255                         # a 1-px speck: not the digit
    img[5, 5] = mm.INK_LEVEL - 1              # below the ink level: background
    region = mm.digit_region(img)
    expected = np.zeros((28, 28), dtype=bool)
    expected[9:15, 9:12] = True
    assert (region == expected).all()


def test_patch_overlap_matches_a_brute_force_loop():
    rng = np.random.default_rng(0)
    mask = rng.random((28, 28)) < 0.03
    for k, s in ((3, 2), (1, 1), (5, 1), (4, 3)):
        P = (28 - k) // s + 1
        oracle = np.array([[mask[i * s:i * s + k, j * s:j * s + k].any() for j in range(P)] for i in range(P)])
        assert (mm.patch_overlap(mask, k, s) == oracle).all()


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
    m = mm.mark(x, torch.arange(10))
    for c in range(10):
        assert (m[c, 0].numpy() == mm.marker_box(c)).all()
    assert (x == 0).all()                                                    # the input is untouched
    boxes = sum(mm.marker_box(c).astype(int) for c in range(10))
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
        mm.check_images(x, y)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_good_images_pass_unchanged():
    x, y = mm.check_images(GOOD_X[:, None], GOOD_Y.astype(np.int32))   # [N, 1, 28, 28] is accepted
    assert x.shape == (4, 28, 28) and y.dtype == np.int64 and (y == GOOD_Y).all()


def test_bad_npz_files_give_a_one_line_data_error(tmp_path):
    cases = {}
    np.savez(tmp_path / "float.npz", images=GOOD_X.astype(np.float64), labels=GOOD_Y)
    cases["float.npz"] = "uint8"
    np.savez(tmp_path / "nolabels.npz", images=GOOD_X)
    cases["nolabels.npz"] = "lacks labels"
    np.savez(tmp_path / "object.npz", images=np.array([GOOD_X], dtype=object), labels=GOOD_Y)
    cases["object.npz"] = "not a readable .npz"
    np.save(tmp_path / "single.npy", GOOD_X)
    cases["single.npy"] = "single .npy"
    (tmp_path / "text.npz").write_text("images, labels")
    cases["text.npz"] = "not an .npz"
    cases["missing.npz"] = "no file"
    for name, words in cases.items():
        with pytest.raises(DataError) as e:
            mm.load_images_npz(tmp_path / name)
        assert words in str(e.value) and "\n" not in str(e.value), name
    np.savez(tmp_path / "good.npz", images=GOOD_X, labels=GOOD_Y)
    x, y = mm.load_images_npz(tmp_path / "good.npz")
    assert (x == GOOD_X).all() and (y == GOOD_Y).all()


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
    negative = mm.train_shortcut(digit, mnist_split.train_x, seed=0)
    shortcut = mm.train_shortcut(digit, mnist_split.train_x, seed=5)     # another Clever Hans
    return {"digit": digit, "negative": negative, "shortcut": shortcut}


@pytest.mark.mnist
def test_a_digit_reading_model_is_meaningful_and_the_controls_come_out_as_they_must(models, mnist_split, tmp_path):
    r = mm.meaningful_experiment(models["digit"], split=mnist_split, seed=0, **SMALL)   # trains its own N
    d = r.to_dict()
    assert d["verdict"] == "meaningful", d["reasons"]
    assert r.controls_ok
    s = d["subjects"]
    assert s["P"]["verdict"] == "meaningful"                  # the positive control
    assert s["N"]["verdict"] == "not meaningful"              # the negative control
    assert s["N"]["behaviour"]["follows_moved_marker"]["lo"] > 0.9   # N really reads the marker
    assert s["R"]["verdict"] == "not meaningful"
    json.dumps(d, allow_nan=False)                            # JSON-safe, every number included
    # the answer is worded from the numbers: M's digit-alone rate and its bounds appear in it
    a = s["M"]["behaviour"]["accuracy_digit_alone"]
    text = r.answer_text()
    assert text.startswith("By the stated rule the learning is meaningful.")
    assert f"{a['rate']:.0%} of {a['n']} images (95% interval {a['lo']:.0%}–{a['hi']:.0%})" in text
    assert not any(w in text for w in ("clearly", "far ", "strongly"))
    paths = r.save(tmp_path)
    assert json.loads(paths["json"].read_text())["verdict"] == "meaningful"
    with np.load(paths["npz"]) as z:
        assert z["M_drops"].shape == (d["settings"]["n_occlusion"], 13, 13)
    assert paths["png"].stat().st_size > 10_000
    _check_verdict(r, "meaningful")


def _check_verdict(r, key):
    """The report's Verdict: the experiment's key, its answer, RULE, and an answer that prints only
    numbers it carries (the subjects' rates and bounds, the patch, 95%)."""
    from verdictkit import unbacked_numbers
    v = mm.meaningful_verdict(r)
    assert (v.id, v.key, v.answer, v.rule) == ("2.4", key, r.answer_text(), mm.RULE)
    assert not unbacked_numbers(v.answer, v.numbers), v.answer
    d = v.to_dict()
    assert d["numbers"]["subjects"]["N"]["verdict"] == r.subjects["N"]["verdict"]
    assert d["numbers"]["controls_ok"] == r.controls_ok
    json.dumps(d, allow_nan=False)


@pytest.mark.mnist
def test_a_shortcut_model_is_not_meaningful(models, mnist_split):
    r = mm.meaningful_experiment(models["shortcut"], split=mnist_split, seed=0, negative=models["negative"], **SMALL)
    m = r.subjects["M"]
    assert r.verdict == "not meaningful", r.reasons
    assert m["behaviour_call"] == "does not read the digit"
    assert m["occlusion_call"] == "off the digit"            # its evidence sits on the marker
    assert r.answer_text().startswith("By the stated rule the learning is not meaningful.")
    _check_verdict(r, "not meaningful")


@pytest.mark.mnist
def test_swapping_a_control_makes_the_experiment_invalid(models, mnist_split):
    # the shortcut network posing as the positive control: occlusion finds its evidence off the digit
    r = mm.meaningful_experiment(models["digit"], split=mnist_split, seed=0, negative=models["negative"],
                                 positive=models["negative"], **SMALL)
    assert r.verdict == "invalid"
    assert any("positive control" in x for x in r.reasons)
    # the digit model posing as the negative control: it reads the digit, so it is not a shortcut
    r = mm.meaningful_experiment(models["digit"], split=mnist_split, seed=0, negative=models["digit"], **SMALL)
    assert r.verdict == "invalid"
    assert any("negative control" in x for x in r.reasons)
    assert r.answer_text().startswith("The experiment is invalid")
    _check_verdict(r, "invalid")


@pytest.mark.mnist
def test_the_same_seed_gives_the_same_result(models, mnist_split):
    x, y = mnist_split.test_x[:200, 0].numpy(), mnist_split.test_y[:200].numpy()
    kw = {"negative": models["negative"], "n_behaviour": 60, "n_occlusion": 8}
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


@pytest.mark.mnist
def test_cli_prints_the_whole_result_as_json_and_refuses_a_bad_file(models, mnist_split, mnist_dir, tmp_path, capsys):
    from cnnlab.cli import main
    run = _fake_run(tmp_path / "run", models["digit"])
    npz = tmp_path / "mine.npz"
    np.savez(npz, images=mnist_split.test_x[:12, 0].numpy(), labels=mnist_split.test_y[:12].numpy())
    assert main(["occlusion", str(run), "--meaningful", "--images", str(npz), "--data-dir", str(mnist_dir),
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["verdict"] in mm.VERDICTS and d["settings"]["n_behaviour"] == 12 and d["rule"] == mm.RULE
    assert (run / "analysis" / "occlusion" / "meaningful.png").is_file()
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=mnist_split.test_x[:4, 0].numpy().astype(np.float32), labels=np.arange(4))
    assert main(["occlusion", str(run), "--meaningful", "--images", str(bad), "--data-dir", str(mnist_dir)]) != 0
    err = capsys.readouterr().err.strip()
    assert "uint8" in err and "\n" not in err
