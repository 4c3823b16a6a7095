"""Contract tests for cnnlab.analysis (anatomy, filters, activations, occlusion) and their commands: counts against independent counts and
torchinfo, occlusion against a one-image-at-a-time loop, hand-computed tiny cases, CLI errors,
and weights that never change."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cnnlab.analysis import _shared as shared
from cnnlab.analysis import activations, anatomy, filters, occlusion
from cnnlab.cli import main
from cnnlab.errors import ConfigError
from cnnlab.model import Net, weights_digest


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- anatomy -------------------------------------------------------------------------------

def test_summary_pins_the_counts_and_shapes():
    s = anatomy.summary()
    rows = {r["name"]: r for r in s.layers}
    assert [r["name"] for r in s.layers] == ["input", "conv1", "relu1", "pool1", "conv2", "relu2", "pool2",
                                            "flatten", "fc1", "relu3", "fc2", "softmax"]
    assert {k: rows[k]["params"] for k in ("conv1", "conv2", "fc1", "fc2")} == \
        {"conv1": 320, "conv2": 9248, "fc1": 784500, "fc2": 5010}
    assert s.params == {"total": 799078, "conv": 9568, "fc": 789510, "batch_norm": 0}
    assert rows["conv1"]["output_shape"] == [32, 28, 28]
    assert rows["pool1"]["output_shape"] == [32, 14, 14]
    assert rows["pool2"]["output_shape"] == [32, 7, 7]
    assert rows["flatten"]["output_shape"] == [1568]
    assert rows["fc1"]["output_shape"] == [500]
    assert rows["softmax"]["output_shape"] == [10]
    assert s.neurons == {"total": 32 * 28 * 28 + 32 * 14 * 14 + 500 + 10, "conv": 31360, "fc": 510}
    assert s.neurons_with_pooling["pool"] == 32 * 14 * 14 + 32 * 7 * 7
    d = json.loads(json.dumps(s.to_dict()))
    assert set(d) >= {"layers", "params", "neurons"}
    assert all(set(r) >= {"name", "kind", "input_shape", "output_shape", "params", "neurons"} for r in d["layers"])


def test_batch_norm_adds_128_learnable_parameters_in_diagram_order():
    s = anatomy.summary(batch_norm=True)
    assert s.params["batch_norm"] == 128
    assert s.params["total"] == 799078 + 128
    assert [r["name"] for r in s.layers][1:5] == ["conv1", "bn1", "relu1", "pool1"]


@pytest.mark.parametrize("bn", [False, True])
def test_param_counts_match_independent_count_and_torchinfo(bn):
    torchinfo = pytest.importorskip("torchinfo")
    net = Net(batch_norm=bn)
    by_type = {"conv": 0, "fc": 0, "batch_norm": 0}
    for m in net.modules():
        n = sum(p.numel() for p in m.parameters(recurse=False))
        if isinstance(m, nn.Conv2d):
            by_type["conv"] += n
        elif isinstance(m, nn.Linear):
            by_type["fc"] += n
        elif isinstance(m, nn.BatchNorm2d):
            by_type["batch_norm"] += n
    s = anatomy.summary(batch_norm=bn)
    assert {k: s.params[k] for k in by_type} == by_type
    assert s.params["total"] == sum(p.numel() for p in net.parameters())
    net.pool_before_relu = False        # the diagram's order, as the layer table uses
    stats = torchinfo.summary(net, input_size=(1, 1, 28, 28), verbose=0, device="cpu")
    assert stats.trainable_params == s.params["total"]
    hooked = {r["name"]: r["output_shape"] for r in s.layers}
    for info in stats.summary_list:
        if info.var_name in hooked and info.depth == 1:
            assert list(info.output_size[1:]) == hooked[info.var_name], info.var_name


def test_summary_of_a_given_model_leaves_it_untouched():
    net = Net(batch_norm=True).train()
    before = weights_digest(net)
    anatomy.summary(model=net)
    assert weights_digest(net) == before and net.training and net.pool_before_relu


# --- filters -------------------------------------------------------------------------------

def test_kernel_stats_on_hand_made_kernels():
    prewitt_x = np.array([[-1, 0, 1]] * 3, float)                          # w = x: brighter to the right
    st = filters.kernel_stats(prewitt_x)
    assert st["class"] == "edge" and st["share"]["gradient"] == pytest.approx(1.0)
    assert st["gradient_direction_deg"] == pytest.approx(0.0)
    assert filters.kernel_stats(-prewitt_x.T)["gradient_direction_deg"] == pytest.approx(90.0)  # brighter upward
    # Sobel = x·(2 − y²): its x·y² part holds 1/9 of the energy (by hand: 32/36 vs 4/36)
    sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)
    assert filters.kernel_stats(sobel_x)["share"]["gradient"] == pytest.approx(8 / 9)
    lap = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], float)
    assert filters.kernel_stats(lap)["class"] == "blob"
    saddle = np.array([[-1, 0, 1], [0, 0, 0], [1, 0, -1]], float)           # w = x·y: diagonal lines
    assert filters.kernel_stats(saddle)["class"] == "line"
    bar = np.array([[-1, 2, -1]] * 3, float)     # 2 − 3x² = half isotropic (x²+y²), half oriented (x²−y²)
    assert filters.kernel_stats(bar)["share"]["line"] == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    w = rng.normal(size=(500, 3, 3))
    st = filters.kernel_stats(w)
    total = sum(st["share"][g] for g in ("dc", "gradient", "center_surround", "line", "higher"))
    np.testing.assert_allclose(total, 1.0)                                   # the basis is orthonormal
    np.testing.assert_allclose(st["energy"], (w ** 2).sum((1, 2)))


def test_untrained_reference_reproduces_the_init_of_the_seed():
    torch.manual_seed(5)
    direct = Net()
    ref = shared.untrained_like(Net(), seed=5)
    assert weights_digest(ref) == weights_digest(direct)
    other = Net()
    state = torch.random.get_rng_state()
    shared.untrained_like(other, seed=7)
    assert torch.equal(state, torch.random.get_rng_state())                 # global RNG untouched


def test_filters_layers_and_errors(tiny_model):
    ref = shared.untrained_like(tiny_model, 1)
    r1 = filters.filters(tiny_model, "conv1", ref)
    assert len(r1.kernels) == 32 and r1.weights.shape == (32, 1, 3, 3)
    assert sum(r1.trained["class_counts"].values()) == 32
    r2 = filters.filters(tiny_model, "conv2", ref)
    assert len(r2.kernels) == 32 and sum(r2.trained["class_counts"].values()) == 1024
    assert all(1 <= k["effective_inputs"] <= 32 for k in r2.kernels)
    json.dumps(r2.to_dict())
    with pytest.raises(ConfigError):
        filters.filters(tiny_model, "fc1")


# --- activations ---------------------------------------------------------------------------

def test_activations_shapes_and_numbers_against_features(tiny_model):
    img = torch.zeros(28, 28)
    img[6:22, 12:15] = 1.0                                                  # a "1"
    res = activations.activations(tiny_model, img[None])
    feats = tiny_model.features(img[None, None])
    for layer, shape in {"conv1": [32, 28, 28], "pool1": [32, 14, 14], "conv2": [32, 14, 14], "pool2": [32, 7, 7]}.items():
        assert res.stats[layer]["shape"] == shape
        a = feats[layer][0].detach().numpy()
        assert res.stats[layer]["active_fraction"] == pytest.approx(float((a > 0).mean()))
    assert [res.stats[k]["receptive_field"] for k in shared.FEATURE_LAYERS] == [3, 4, 8, 10]
    with pytest.raises(ConfigError):
        activations.activations(tiny_model, torch.zeros(3, 28, 28))


# --- occlusion -----------------------------------------------------------------------------

def test_occlusion_matches_a_one_image_at_a_time_loop(tiny_model):
    torch.manual_seed(1)
    img = torch.rand(28, 28)
    res = occlusion.occlusion(tiny_model, img, target=3, patch_sizes=(1, 2, 3, 4, 5), stride=1, fill=0.5,
                              precision="fp32")
    for k in (1, 2, 3, 4, 5):
        assert res.prob[k].shape == (28 - k + 1, 28 - k + 1)
    k = 4
    oracle = np.zeros((25, 25))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # 625 one-image forwards: threads only add overhead here
    try:
        with torch.no_grad():
            for y in range(25):
                for x in range(25):
                    occ = img.clone()
                    occ[y:y + k, x:x + k] = 0.5
                    oracle[y, x] = torch.softmax(tiny_model(occ[None, None]), 1)[0, 3].item()
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(res.prob[k], oracle, atol=1e-5)
    strided = occlusion.occlusion(tiny_model, img, target=3, patch_sizes=(3,), stride=2, precision="fp32")
    assert strided.prob[3].shape == ((28 - 3) // 2 + 1,) * 2
    np.testing.assert_allclose(strided.prob[3], res.prob[3][::2, ::2], atol=1e-5)


def test_occlusion_in_bf16_is_within_5e_3_of_fp32_with_the_same_predicted_class(mnist_run, mnist_split):
    from cnnlab.runs import open_run
    from cnnlab.train import evaluate
    model = open_run(mnist_run).load_model()
    for i in (0, 1, 2):
        img = mnist_split.test_x[i]
        exact = occlusion.occlusion(model, img, precision="fp32")
        fast = occlusion.occlusion(model, img, precision="bf16")
        assert (exact.precision, fast.precision) == ("fp32", "bf16")
        assert fast.base_pred == exact.base_pred and fast.target == exact.target
        assert abs(fast.base_prob - exact.base_prob) < 5e-3
        for k in exact.prob:
            # bf16 rounds every layer's inputs to 8 mantissa bits: a logit error of ~0.03 moves p by
            # up to 0.25 × 0.03 where p ≈ 0.5 (measured: 7.1e-3 at 2 of 576 positions of image 1,
            # k = 5, on this fixture's network with foreach AdamW; 1.2e-2 at image 2, k = 4, with
            # the fused AdamW's slightly different weights; ≤ 2.1e-3 elsewhere)
            d = np.abs(fast.prob[k] - exact.prob[k])
            assert (d <= 5e-3).mean() >= 0.99 and d.max() <= 2e-2, (i, k, d.max())
            assert (fast.pred[k] == exact.pred[k]).mean() >= 0.98     # near-ties may flip a position or two
    # control: the tolerance does tell maps apart. On the least confident correctly classified of
    # the first 300 test images the maps vary, and the transposed map (the occluder's effect put
    # where the strokes are not) is far outside 5e-3.
    ev = evaluate(model, mnist_split.test_x[:300], mnist_split.test_y[:300], keep_probs=True)
    assert ev.probs is not None
    conf = torch.where(ev.predictions == mnist_split.test_y[:300], ev.probs.max(1).values, torch.tensor(2.0))
    img = mnist_split.test_x[int(conf.argmin())]
    exact = occlusion.occlusion(model, img, precision="fp32")
    fast = occlusion.occlusion(model, img, precision="bf16")
    assert fast.base_pred == exact.base_pred
    assert max(float(np.abs(fast.prob[k] - exact.prob[k].T).max()) for k in exact.prob) > 5e-2


def test_forward_in_chunks_equals_one_forward(tiny_model):
    x = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    with shared.evaluating(tiny_model):
        want = tiny_model(x).double()
        got = occlusion.forward_chunks(tiny_model, x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert occlusion.forward_chunks(tiny_model, x[:0]).shape == (0, 10)


def test_occlusion_fill_mean_and_argument_errors(tiny_model):
    img = torch.zeros(1, 28, 28)
    res = occlusion.occlusion(tiny_model, img, patch_sizes=(2,), fill="mean")
    assert res.fill == pytest.approx(float(tiny_model.input_mean))
    assert res.target == res.base_pred
    for bad in (dict(patch_sizes=(9,)), dict(patch_sizes=(0,)), dict(stride=0), dict(fill="grey"),
                dict(target=10), dict(fill=float("nan")), dict(precision="fp8")):
        with pytest.raises(ConfigError):
            occlusion.occlusion(tiny_model, img, **bad)


def test_drop_attribution_and_stroke_share_by_hand():
    # 2×2 patch, stride 1 on a 3×3 "image": positions 2×2; only position (0, 0) drops, by 0.4
    drop = np.array([[0.4, 0.0], [0.0, 0.0]])
    a = occlusion.drop_attribution(drop, 2, 1, size=3)
    np.testing.assert_allclose(a, [[0.1, 0.1, 0], [0.1, 0.1, 0], [0, 0, 0]])
    img = np.zeros((28, 28))
    img[0, 0] = 1.0                                                          # one stroke pixel in the corner
    prob = np.ones((27, 27))
    prob[0, 0] = 0.6                                                         # only the patch over it matters
    share, expected = occlusion.stroke_share(prob, 1.0, img, 2)
    assert share == pytest.approx(0.25)                                      # 1 of its 4 pixels is stroke
    assert expected == pytest.approx(1 / (4 * 27 * 27))                     # corner pixel: covered once


def test_grey_map_descriptive_numbers_by_hand():
    # A 4-px vertical stroke (the digit) and a 1-px speck (other ink); 1×1 patches, so the map is the image grid.
    img = np.zeros((28, 28))
    img[10:14, 10] = 1.0
    img[20, 20] = 1.0
    prob = np.full((28, 28), 0.9)
    prob[11, 10] = 0.2                        # the lowest p: on the stroke
    prob[20, 20] = 0.5                        # a drop on the speck
    prob[0, 0] = prob[0, 1] = 0.95            # two background positions raise p
    prob[5, 5] = 0.8                          # one background position lowers p (pure ink insertion)
    res = occlusion.OcclusionResult(img, 3, 0.9, 3, 0.5, "0.5", 1, {1: prob}, {1: np.zeros((28, 28), int)}, 0.0)
    d = res.descriptive()[1]
    assert d["lowest_p_falls_on"] == "digit" and d["min_at_top_left_yx"] == [11, 10]
    assert d["largest_drop"] == pytest.approx(0.7)
    assert d["positions"] == 784 and d["positions_where_grey_raises_p"] == 2
    assert d["positions_where_grey_lowers_p"] == 3
    assert d["positions_with_ink_under_patch"] == 5 and d["positions_on_background_only"] == 779
    assert d["background_positions_that_lower_p"] == 1
    assert d["mean_drop_ink_under_patch"] == pytest.approx((0.7 + 0.4) / 5)
    assert d["mean_drop_pure_ink_insertion"] == pytest.approx((-0.05 - 0.05 + 0.1) / 779, abs=1e-12)
    # the control: the lowest p on the speck is "other ink", and a map with no drop says "none"
    prob2 = prob.copy()
    prob2[11, 10] = 0.9
    prob2[20, 20] = 0.1
    res.prob = {1: prob2}
    assert res.descriptive()[1]["lowest_p_falls_on"] == "other ink"
    res.prob = {1: np.full((28, 28), 0.95)}
    assert res.descriptive()[1]["lowest_p_falls_on"] == "none"
    assert res.to_dict()["patch_sizes"]["1"]["positions_where_grey_raises_p"] == 784


def test_occlusion_and_friends_never_change_a_model_in_train_mode():
    torch.manual_seed(0)
    net = Net(batch_norm=True).train()
    before = weights_digest(net)
    img = torch.rand(28, 28)
    occlusion.occlusion(net, img, patch_sizes=(5,))
    activations.activations(net, img)
    filters.filters(net, "conv2", shared.untrained_like(net, 0))
    assert weights_digest(net) == before and net.training


def test_occlusion_save_writes_npz_png_and_json(tiny_model, tmp_path):
    res = occlusion.occlusion(tiny_model, torch.rand(28, 28), target=1, patch_sizes=(1, 5), stride=1, fill=0.25)
    paths = res.save(tmp_path, "o")
    assert sorted(p.name for p in paths) == ["o.json", "o.npz", "o.png"]
    assert json.loads((tmp_path / "o.json").read_text())["target"] == 1
    assert (tmp_path / "o.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))                 # atomic: no temporary files left
    z = np.load(tmp_path / "o.npz")
    assert z["prob_1"].shape == (28, 28) and z["prob_5"].shape == (24, 24)
    assert z["image"].shape == (28, 28) and int(z["target"]) == 1
    assert float(z["fill"]) == pytest.approx(0.25) and int(z["stride"]) == 1


# --- on a trained run ------------------------------------------------------------------------

def test_cli_commands_write_outputs_and_keep_weights(mnist_run, mnist_dir, tmp_path, capsys):
    from cnnlab.runs import open_run
    run = open_run(mnist_run)
    h, d = sha(run.weights), weights_digest(run.load_model())
    data = ["--data-dir", str(mnist_dir)]
    assert main(["summary", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"]["total"] == 799078
    assert main(["filters", str(mnist_run), "--layer", "conv1"]) == 0
    assert (mnist_run / "analysis" / "filters" / "filters_conv1.png").is_file()
    assert main(["filters", str(mnist_run), "--layer", "conv2", "--out", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f" / "filters_conv2.json").is_file()
    assert main(["activations", str(mnist_run), "--index", "0", "--index", "7", *data]) == 0
    assert (mnist_run / "analysis" / "activations" / "activations_7.png").is_file()
    out = tmp_path / "occ"
    assert main(["occlusion", str(mnist_run), "--index", "3", "--patch", "2", "--patch", "5", "--stride", "1",
                 "--out", str(out), *data]) == 0
    z = np.load(out / "test-3" / "occlusion.npz")
    assert z["prob_2"].shape == (27, 27) and z["prob_5"].shape == (24, 24)
    assert int(z["target"]) == int(run.load_split(mnist_dir).test_y[3])
    assert (out / "occlusion_summary.json").is_file() and (out / "test-3" / "occlusion.png").is_file()
    capsys.readouterr()
    assert sha(run.weights) == h and weights_digest(run.load_model()) == d


def test_cli_errors_are_one_line(mnist_run, mnist_dir, tmp_path, capsys):
    data = ["--data-dir", str(mnist_dir)]
    assert main(["occlusion", str(mnist_run), "--index", "10000", *data]) != 0
    err = capsys.readouterr().err.strip()
    assert "out of range" in err and "\n" not in err and "Traceback" not in err
    assert main(["occlusion", str(mnist_run), "--images", str(tmp_path / "x.npz"), *data]) != 0
    err = capsys.readouterr().err.strip()
    assert "--meaningful" in err and "\n" not in err
    assert main(["activations", str(tmp_path / "missing"), "--index", "0"]) != 0
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and "\n" not in err
    with pytest.raises(SystemExit) as e:
        main(["occlusion", str(mnist_run), "--patch", "9"])
    assert e.value.code != 0
    assert "out of range" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["filters", str(mnist_run), "--layer", "fc1"])
