"""Every judgment answer of the report, tested both ways on hand-built inputs (no training).

Each verdict function must come out one way on inputs built to be clear cases and the other way
on the control; every number in its answer must be one it carries (verdictkit.unbacked_numbers).
"""

import json

import numpy as np
import pytest
import torch

from cnnlab.analysis import untrained_like
from cnnlab.analysis.activations import activations, depth_verdict
from cnnlab.analysis.batch_norm import accuracy_verdict, time_verdict, time_verdict_steps
from cnnlab.analysis.class_models import confidence_verdict, cost_verdict
from cnnlab.analysis.filters import filters, patterns_verdict
from cnnlab.analysis.likeness import digit_likeness, looks_like_digits
from cnnlab.analysis.natural import readable_verdict
from cnnlab.analysis.robustness import robustness_verdict
from cnnlab.analysis.targeted import resemblance_verdict
from cnnlab.analysis.verdict import Verdict
from cnnlab.errors import ConfigError
from cnnlab.model import Net
from cnnlab.stats import mcnemar
from verdictkit import unbacked_numbers


def check(v: Verdict) -> Verdict:
    """The contract every verdict keeps: a key, a rule, an answer whose numbers it carries, JSON."""
    assert v.key and v.rule and v.answer
    assert not unbacked_numbers(v.answer, v.numbers), (v.answer, unbacked_numbers(v.answer, v.numbers))
    d = json.loads(json.dumps(v.to_dict(), allow_nan=False))
    assert d["key"] == v.key and d["rule"] == v.rule and d["answer"] == v.answer
    for word in ("far ", "clearly", "strongly"):
        assert word not in v.answer.lower(), word
    return v


# --- 1.6 batch-normalization: accuracy ------------------------------------------------------

def _correct(n_both: int, only_plain: int, only_bn: int) -> tuple[list[bool], list[bool]]:
    a = [True] * n_both + [True] * only_plain + [False] * only_bn
    b = [True] * n_both + [False] * only_plain + [True] * only_bn
    return a, b


@pytest.mark.parametrize("only_plain, only_bn, key", [(5, 60, "yes"), (60, 5, "no"), (20, 24, "inconclusive")])
def test_bn_accuracy_one_seed_is_decided_by_exact_mcnemar(only_plain, only_bn, key):
    a, b = _correct(9800, only_plain, only_bn)
    n = len(a)
    v = check(accuracy_verdict([sum(a) / n], [sum(b) / n], mcnemar(a, b)))
    assert v.key == key
    assert v.answer.startswith({"yes": "Yes", "no": "No", "inconclusive": "Inconclusive"}[key])
    assert (v.numbers["mcnemar_p"] < 0.05) == (key != "inconclusive")


@pytest.mark.parametrize("plain, bn, key", [
    ([0.9900, 0.9910, 0.9895], [0.9930, 0.9938, 0.9921], "yes"),       # every seed +0.26..0.30 points
    ([0.9930, 0.9938, 0.9921], [0.9900, 0.9910, 0.9895], "no"),
    ([0.9900, 0.9910, 0.9895], [0.9930, 0.9890, 0.9899], "inconclusive"),  # +0.30, −0.20, +0.04
])
def test_bn_accuracy_several_seeds_is_decided_by_the_paired_ci(plain, bn, key):
    v = check(accuracy_verdict(plain, bn, {"only_a": 0, "only_b": 0, "p_value": 1.0}))   # McNemar ignored
    assert v.key == key
    assert (v.numbers["ci_low_points"] > 0 or v.numbers["ci_high_points"] < 0) == (key != "inconclusive")


def test_bn_accuracy_refuses_unpaired_inputs():
    with pytest.raises(ConfigError):
        accuracy_verdict([0.99, 0.98], [0.99], {"only_a": 0, "only_b": 0, "p_value": 1.0})


# --- 1.6 batch-normalization: training time -------------------------------------------------

@pytest.mark.parametrize("bn_epoch, reach_bn, key", [
    (1.30, 4.0, "slower/sooner"),          # 30% slower per epoch, but reaches the accuracy first
    (0.80, 9.0, "faster/not sooner"),
    (1.02, None, "same/not reached"),     # within ±5%
])
def test_bn_time_each_way(bn_epoch, reach_bn, key):
    v = check(time_verdict([1.0, 1.0], [bn_epoch, bn_epoch],
                           [{"plain_s": 6.0, "bn_s": reach_bn}, {"plain_s": 6.0, "bn_s": reach_bn}]))
    assert v.key == key


def _steps(n: int, ms: float, rng, sd: float = 0.01) -> np.ndarray:
    """n step times around `ms` milliseconds (relative noise sd), in seconds."""
    return ms / 1000 * (1 + sd * rng.standard_normal(n))


@pytest.mark.parametrize("bn_ms, n, sd, key", [
    (13.0, 391, 0.01, "slower"),            # ×1.30, tight: the whole interval above 1.05
    (8.0, 391, 0.01, "faster"),
    (10.1, 391, 0.01, "same"),              # ×1.01: the whole interval within ±5%
    (10.5, 30, 0.30, "inconclusive"),       # 30 noisy steps: the interval straddles 1.05
])
def test_bn_step_time_each_way(bn_ms, n, sd, key):
    rng = np.random.default_rng(0)
    v = check(time_verdict_steps(_steps(n, 10.0, rng, sd), _steps(n, bn_ms, rng, sd)))
    assert v.key == key and v.id == "1.6.time"
    lo, hi = v.numbers["ci_low"], v.numbers["ci_high"]
    assert lo <= v.numbers["ratio"] <= hi
    assert {"slower": lo > 1.05, "faster": hi < 0.95, "same": 0.95 <= lo and hi <= 1.05,
            "inconclusive": lo < 1.05 < hi or lo < 0.95 < hi}[key]
    assert v.answer.startswith("Per step, " + {"slower": "batch-normalization is slower",
                                               "faster": "batch-normalization is faster",
                                               "same": "the two take the same time",
                                               "inconclusive": "timing noise decides"}[key])


def test_bn_step_time_one_slow_interval_fools_the_mean_not_the_median():
    """Four quarter-epoch intervals at the plain network's pace and one at 4×: the mean (and so
    the mean epoch time) says 'slower' (×1.6), the median step says 'same', and the answer says
    that the mean would have answered otherwise."""
    rng = np.random.default_rng(1)
    plain = _steps(500, 10.0, rng)
    bn = np.concatenate([_steps(400, 10.0, rng), _steps(100, 40.0, rng)])
    old = time_verdict([float(plain.sum())], [float(bn.sum())], [{"plain_s": 1.0, "bn_s": 1.0}])
    assert old.key.startswith("slower/") and old.numbers["ratio"] == pytest.approx(1.6, abs=0.01)
    v = check(time_verdict_steps(plain, bn))
    assert v.key == "same" and v.numbers["ratio"] == pytest.approx(1.0, abs=0.01)
    assert v.numbers["mean_key"] == "slower" and v.numbers["mean_disagrees"]
    assert v.numbers["mean_ratio"] == pytest.approx(1.6, abs=0.01)
    assert "would have answered 'slower'" in v.answer and "×1.60" in v.answer
    # a control without the slow interval: mean and median agree, and the answer says so
    v = check(time_verdict_steps(plain, _steps(500, 10.0, rng)))
    assert v.key == "same" and not v.numbers["mean_disagrees"] and "the same answer as the medians" in v.answer


def test_bn_step_time_several_seeds():
    rng = np.random.default_rng(2)
    plain = [_steps(391, 10.0, rng) for _ in range(3)]
    v = check(time_verdict_steps(plain, [_steps(391, ms, rng) for ms in (12.0, 12.2, 11.8)]))
    assert v.key == "slower" and v.numbers["seeds"] == 3 and len(v.numbers["per_seed_ratio"]) == 3
    # seeds that disagree (×0.96, ×1.25, ×1.10): resampling the seeds widens the interval past 1.05
    v = check(time_verdict_steps(plain, [_steps(391, ms, rng) for ms in (9.6, 12.5, 11.0)]))
    assert v.key == "inconclusive" and v.numbers["ci_low"] < 1.05 < v.numbers["ci_high"]
    # with reach: the key carries the time-to-accuracy part, as time_verdict's does
    reach = [{"plain_s": 6.0, "bn_s": 4.0}] * 3
    v = check(time_verdict_steps(plain, [_steps(391, 12.0, rng) for _ in range(3)], reach))
    assert v.key == "slower/sooner"
    # seeded: the same inputs give the same interval
    a = time_verdict_steps(plain[0], plain[1], seed=5).numbers
    assert a == time_verdict_steps(plain[0], plain[1], seed=5).numbers


@pytest.mark.parametrize("plain, bn", [
    ([[0.01] * 5, [0.01] * 5], [[0.01] * 5]),                     # 2 seeds against 1
    ([0.01, -0.01], [0.01, 0.01]),                                # a negative time
    ([], [0.01]),
    (np.zeros((2, 2, 2)), [0.01]),
])
def test_bn_step_time_refuses_bad_inputs(plain, bn):
    with pytest.raises(ConfigError):
        time_verdict_steps(plain, bn)


# --- 2.1 / 2.2 filter patterns --------------------------------------------------------------

def _edge_kernels(n: int, rng) -> np.ndarray:
    """[n, 3, 3] Sobel-like oriented edge detectors at random angles and scales."""
    yy, xx = np.mgrid[1:-2:-1, -1:2]           # y up, x right on the 3×3 grid
    ang = rng.uniform(0, 2 * np.pi, n)
    return np.stack([rng.uniform(0.2, 0.5) * (np.cos(a) * xx + np.sin(a) * yy) for a in ang])


def _with_conv(net: Net, layer: str, w: np.ndarray) -> Net:
    with torch.no_grad():
        getattr(net, layer).weight.copy_(torch.as_tensor(w, dtype=torch.float32))
    return net


def test_filter_patterns_edge_detectors_vs_random_vs_unchanged():
    rng = np.random.default_rng(0)
    ref = untrained_like(Net(), seed=0)
    edges = _with_conv(untrained_like(ref, 0), "conv1", _edge_kernels(32, rng)[:, None])
    v = check(patterns_verdict(filters(edges, "conv1", reference=ref)))
    assert v.key == "yes" and v.numbers["class_counts"]["edge"] == 32
    assert v.numbers["mean_cosine_to_init"] < 0.8 and "reshaped" in v.answer

    random = untrained_like(ref, seed=123)                         # i.i.d. kernels of another seed
    v = check(patterns_verdict(filters(random, "conv1", reference=ref)))
    assert v.key == "no" and v.answer.startswith("No shift")

    w0 = ref.conv1.weight.detach().numpy()
    barely = _with_conv(untrained_like(ref, 0), "conv1", w0 + 0.01 * rng.standard_normal(w0.shape))
    v = check(patterns_verdict(filters(barely, "conv1", reference=ref)))
    assert v.key == "no" and v.numbers["mean_cosine_to_init"] >= 0.8 and "stayed close" in v.answer


def test_filter_patterns_conv2_both_ways():
    rng = np.random.default_rng(1)
    ref = untrained_like(Net(), seed=0)
    edges = _with_conv(untrained_like(ref, 0), "conv2", _edge_kernels(32 * 32, rng).reshape(32, 32, 3, 3))
    f1 = filters(ref, "conv1", reference=ref)
    v = check(patterns_verdict(filters(edges, "conv2", reference=ref), compare=f1))
    assert v.id == "2.2" and v.key == "yes"
    v = check(patterns_verdict(filters(untrained_like(ref, 7), "conv2", reference=ref), compare=f1))
    assert v.key == "no"


# --- 2.3 depth ------------------------------------------------------------------------------

def _stats(a1, a2, s1, s2) -> dict:
    layer = lambda a, s, size, rf: {"shape": [32, size, size], "receptive_field": rf, "active_fraction": a,   # noqa: E731
                                    "spread": s, "stroke_mass_share": 0.6, "stroke_area_share": 0.3}
    return {"conv1": layer(a1, s1, 28, 3), "pool1": layer(a1, s1, 14, 4),
            "conv2": layer(a2, s2, 14, 8), "pool2": layer(a2, s2, 7, 10)}


@pytest.mark.parametrize("a2, s2, key", [(0.20, 0.10, "sparser/more localized"), (0.60, 0.60, "denser/more spread"),
                                         (0.41, 0.31, "similar/similar")])
def test_depth_each_way(a2, s2, key):
    v = check(depth_verdict([_stats(0.40, a2, 0.30, s2), _stats(0.40, a2, 0.30, s2)]))
    assert v.key == key


def test_depth_on_a_real_forward_pass_matches_its_own_numbers(tiny_model):
    img = torch.zeros(28, 28)
    img[6:22, 12:16] = 1.0                                  # a bar, a "1"
    r = activations(tiny_model, img)
    v = check(depth_verdict([r.stats]))
    a1, a2 = r.stats["conv1"]["active_fraction"], r.stats["conv2"]["active_fraction"]
    assert v.key.split("/")[0] == ("sparser" if a2 < a1 - 0.02 else "denser" if a2 > a1 + 0.02 else "similar")
    assert v.numbers["map_sizes"] == [28, 14, 14, 7]


# --- 3.1.2 confidence -----------------------------------------------------------------------

def test_confidence_each_way():
    t = list(range(10))
    sure = {"targets": t, "final_pred": t, "final_target_prob": [0.999] * 10}
    assert check(confidence_verdict(sure, sure)).key == "yes"
    unsure = {**sure, "final_target_prob": [0.999] * 9 + [0.60]}          # right, but one at 60%
    v = check(confidence_verdict(unsure))
    assert v.key == "no" and "60.000%" in v.answer
    wrong = {**sure, "final_pred": [1] + t[1:]}                            # sure, but one predicted wrong
    v = check(confidence_verdict(wrong))
    assert v.key == "no" and v.numbers["n_predicted_as_target"] == 9


# --- 3.1.3 readable by judges that did not make the images ---------------------------------

def _judged(readable: int, maker: float, n: int = 10) -> dict:
    """ReadabilityResult.counts of a row: `readable` of n pass both judges; every image is named by
    the judge, so the distance condition decides (as it does for the plain class models)."""
    return {"n": n, "readable": readable, "near_training_digit": readable, "named_by_judge": n,
            "nn_label_is_target": readable, "median_nn_distance": 1200.0, "maker_min_prob": maker}


REAL_REFERENCE = {"judge_accuracy": 0.988, "near_training_digit_rate": 0.927}


@pytest.mark.parametrize("plain, natural, key", [
    ((0, 0.998), (10, 0.934), "not readable/shown"),         # quick-s0 as measured
    ((2, 0.998), (8, 0.95), "not readable/shown"),           # both bars exactly met
    ((3, 0.998), (10, 0.95), "partly readable/shown"),
    ((0, 0.998), (10, 0.85), "not readable/not shown"),      # readable, but the maker no longer believes it
    ((0, 0.998), (7, 0.99), "not readable/not shown"),       # believed, but only 7 of 10 readable
    ((10, 0.99), (10, 0.99), "readable/shown"),
])
def test_readable_each_way(plain, natural, key):
    rows = {"plain": _judged(*plain), "regularized": _judged(1, 0.227), "natural": _judged(*natural)}
    v = check(readable_verdict(rows, REAL_REFERENCE, 1549.5, judge="a plain network of seed 1"))
    assert v.key == key
    assert v.answer.startswith({"readable": "Yes", "partly readable": "Only partly", "not readable": "No"}[key.split("/")[0]])
    assert (v.numbers["shown_by"] == "natural") == key.endswith("/shown")
    assert "at most 55 grey levels per pixel (root-mean-square)" in v.answer and "a plain network of seed 1" in v.answer


def test_readable_one_row_and_bad_input():
    assert check(readable_verdict({"real": _judged(8, 0.9)}, REAL_REFERENCE, 1549.5)).key == "readable"
    assert check(readable_verdict({"noise": _judged(0, 0.1)}, REAL_REFERENCE, 1549.5)).key == "not readable"
    with pytest.raises(ConfigError, match="at least one"):
        readable_verdict({}, REAL_REFERENCE, 1549.5)
    with pytest.raises(ConfigError, match="no images"):
        readable_verdict({"empty": _judged(0, 0.5, n=0)}, REAL_REFERENCE, 1549.5)


# --- 3.1.3 looks like digits ----------------------------------------------------------------

def test_looks_like_digits_real_digits_vs_noise(mnist_split):
    real = mnist_split.test_x[:10].reshape(10, 28, 28).double().numpy()
    labels = mnist_split.test_y[:10].tolist()
    noise = 128 + 40 * np.random.default_rng(0).standard_normal((10, 28, 28))
    lr = digit_likeness(real, mnist_split, targets=labels, n_real=200)
    ln = digit_likeness(noise, mnist_split, targets=labels, n_real=200)
    ref = lr.reference
    v = check(looks_like_digits({"real": lr.summary, "noise": ln.summary}, ref))
    assert v.key == "yes"
    assert v.numbers["rows"]["real"]["digit_like"] and not v.numbers["rows"]["noise"]["digit_like"]
    v = check(looks_like_digits({"noise": ln.summary, "real": lr.summary, "again": ln.summary}, ref))
    assert v.key == "no" and len(v.numbers["rows"]) == 3         # any number of rows; the first decides


def test_looks_like_digits_needs_both_conditions():
    ref = {"corr_own_mean_p05": 0.3, "nearest_class_accuracy": 0.8}
    shape_only = {"corr_target_mean_mean": 0.5, "nearest_is_target_rate": 0.2}    # r high, wrong class
    class_only = {"corr_target_mean_mean": 0.1, "nearest_is_target_rate": 0.9}
    both = {"corr_target_mean_mean": 0.5, "nearest_is_target_rate": 0.9}
    assert check(looks_like_digits({"a": shape_only}, ref)).key == "no"
    assert check(looks_like_digits({"a": class_only}, ref)).key == "no"
    assert check(looks_like_digits({"a": both}, ref)).key == "yes"


# --- 3.1.4 cost -----------------------------------------------------------------------------

def test_cost_each_way():
    rng = np.random.default_rng(0)
    steps = np.arange(101)[:, None]
    noise = 0.05 * rng.standard_normal((101, 10))
    v = check(cost_verdict(0.5 * steps + noise))
    assert v.key == "increasing" and v.numbers["still_rising"]
    v = check(cost_verdict(-0.5 * steps + noise))
    assert v.key == "decreasing" and not v.numbers["still_rising"]
    v = check(cost_verdict(10 * (1 - np.exp(-steps / 5.0)) + noise))     # rises, then levels off in noise
    assert v.key == "increasing" and not v.numbers["still_rising"]
    v = check(cost_verdict(noise))                                       # flat: no direction
    assert v.key == "neither"


# --- 3.2.1 resemblance ----------------------------------------------------------------------

def test_resemblance_each_way():
    t = list(range(10))
    pred = t
    v = check(resemblance_verdict(3, t, [3] * 10, [3] * 8 + [5, 8], pred))
    assert v.key == "source" and v.answer.startswith("They resemble the digit 3")
    v = check(resemblance_verdict(3, t, t, t, pred))
    assert v.key == "target"
    v = check(resemblance_verdict(3, t, [3, 3, 3, 3, 0, 0, 0, 0, 0, 0], [8] * 10, pred))   # 4 of 10: not enough
    assert v.key == "neither"


# --- 4.1 robustness -------------------------------------------------------------------------

def _tables(clean, fgsm, pgd):
    """FGSM and PGD tables for two models: `fgsm`, `pgd` = (plain, batch-norm) accuracies at ε = 0.1."""
    mk = lambda acc: [r for m, a in zip(("plain", "batch-norm"), acc)                        # noqa: E731
                      for r in ({"model": m, "eps": 0.0, "accuracy": clean}, {"model": m, "eps": 0.1, "accuracy": a})]
    return mk(fgsm), mk(pgd)


@pytest.mark.parametrize("fgsm, pgd, key, stronger", [
    ((0.30, 0.25), (0.02, 0.01), "fragile", True),
    ((0.97, 0.96), (0.95, 0.94), "robust", True),
    ((0.60, 0.20), (0.70, 0.10), "partly robust", False),   # plain keeps 71%, BN 10%; PGD weaker on plain
    ((0.80, 0.80), (0.70, 0.75), "partly robust", True),    # both keep between half and 90%
])
def test_robustness_each_way(fgsm, pgd, key, stronger):
    fg, pg = _tables(0.99, fgsm, pgd)
    v = check(robustness_verdict(fg, pg, 0.1))
    assert v.key == key and v.numbers["pgd_stronger"] == stronger
    assert ("stronger than the one-step one for every model" in v.answer) == stronger


def test_robustness_needs_the_clean_accuracy():
    fg, pg = _tables(0.99, (0.5, 0.5), (0.1, 0.1))
    with pytest.raises(ConfigError):
        robustness_verdict(fg, [r for r in pg if r["eps"] != 0.0], 0.1)
