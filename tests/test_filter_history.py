"""2.1, shown on the trained filters: how conv1/conv2 move epoch by epoch (filter_history, from
the run's filters_by_epoch.safetensors) and what each conv1 filter responds to in images
(what_filters_respond_to). Hand-computed oracles on tiny synthetic cases, one real smoke run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cnnlab.analysis import untrained_like
from cnnlab.analysis.filter_history import filter_history, load_filters_by_epoch
from cnnlab.analysis.filter_responses import what_filters_respond_to
from cnnlab.errors import ConfigError
from cnnlab.figures import MIN_PRINT_PT, legibility
from cnnlab.model import Net
from faultkit import fake_run


def _snapshots(*conv1_epochs: np.ndarray, conv2: np.ndarray | None = None) -> dict[str, np.ndarray]:
    snap = {f"conv1.epoch{e}": w for e, w in enumerate(conv1_epochs)}
    c2 = conv2 if conv2 is not None else np.random.default_rng(9).standard_normal((32, 32, 3, 3))
    snap.update({f"conv2.epoch{e}": c2 for e in range(len(conv1_epochs))})
    return snap


def _legible(fig) -> None:
    leg = legibility(fig)
    assert leg["min_font_pt"] >= MIN_PRINT_PT and not leg["overlaps"], leg


# --- filter_history ---------------------------------------------------------------------------

def test_weights_that_never_change_keep_cosine_one():
    w0 = np.random.default_rng(0).standard_normal((32, 1, 3, 3))
    res = filter_history(_snapshots(w0, w0.copy(), w0.copy()))
    assert res is not None and res.epochs == 2
    for layer in ("conv1", "conv2"):
        d = res.layers[layer]
        assert d["mean_cosine_to_init"] == pytest.approx([1.0] * 3, abs=1e-15)
        assert d["min_cosine_to_init"] == pytest.approx([1.0] * 3, abs=1e-15)
        assert d["relative_change"] == [0.0, 0.0, 0.0] and d["epoch_change"] == [0.0, 0.0, 0.0]
        assert d["class_counts"][0] == d["class_counts"][2]


def test_history_by_hand():
    """Scaled ×2: same direction (cosine 1), moved by its own norm (relative change 1). Then −W:
    cosine −1, 2 norms from init, and that epoch moved it 3 norms (from 2W to −W)."""
    w0 = np.random.default_rng(1).standard_normal((32, 1, 3, 3))
    res = filter_history(_snapshots(w0, 2 * w0, -w0))
    d = res.layers["conv1"]
    assert d["mean_cosine_to_init"] == pytest.approx([1.0, 1.0, -1.0])
    assert d["relative_change"] == pytest.approx([0.0, 1.0, 2.0])
    assert d["epoch_change"] == pytest.approx([0.0, 1.0, 3.0])
    # one kernel turned a quarter of the way round: cosine 0 for it, 1 for the 31 others
    w1 = w0.copy()
    k = w0[0, 0].ravel()
    other = np.roll(k, 1) - (np.roll(k, 1) @ k) / (k @ k) * k          # orthogonal to kernel 0
    w1[0, 0] = (other * np.linalg.norm(k) / np.linalg.norm(other)).reshape(3, 3)
    d = filter_history(_snapshots(w0, w1)).layers["conv1"]
    assert d["mean_cosine_to_init"][1] == pytest.approx(31 / 32) and d["min_cosine_to_init"][1] == pytest.approx(0, abs=1e-12)
    # the class counts are kernel_stats' classes: 32 vertical edge kernels are 32 edges
    edge = np.tile(np.array([[-1.0, 0, 1]] * 3), (32, 1, 1, 1))
    d = filter_history(_snapshots(w0, edge)).layers["conv1"]
    assert d["class_counts"][1] == {"edge": 32, "blob": 0, "line": 0, "mixed": 0}
    assert d["gradient_share"][1] == pytest.approx(1.0)


def test_history_protocol_and_figure(tmp_path):
    rng = np.random.default_rng(2)
    w = [rng.standard_normal((32, 1, 3, 3))]
    for _ in range(15):
        w.append(w[-1] + 0.05 * rng.standard_normal(w[0].shape))
    res = filter_history(_snapshots(*w))
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["epochs"] == 15 and len(d["layers"]["conv1"]["mean_cosine_to_init"]) == 16
    assert set(d["layers"]["conv2"]) == {"mean_cosine_to_init", "min_cosine_to_init", "relative_change",
                                         "epoch_change", "class_counts", "low_order_share", "gradient_share"}
    _legible(res.figure())
    names = sorted(p.name for p in res.save(tmp_path))
    assert names == ["filter_history.json", "filter_history.npz", "filter_history.png"]
    assert np.load(tmp_path / "filter_history.npz")["conv1_by_epoch"].shape == (16, 32, 1, 3, 3)


def test_history_of_tensors_and_refusals(tmp_path):
    w0 = torch.randn(32, 1, 3, 3)
    assert filter_history({"conv1.epoch0": w0, "conv1.epoch1": w0}).layers["conv1"]["relative_change"] == [0.0, 0.0]
    with pytest.raises(ConfigError, match="epochs 0..1"):
        filter_history({"conv1.epoch0": w0, "conv1.epoch2": w0})
    with pytest.raises(ConfigError, match="no conv1"):
        filter_history({"conv2.epoch0": torch.randn(32, 32, 3, 3)})
    with pytest.raises(ConfigError, match="different numbers of epochs"):
        filter_history({"conv1.epoch0": w0, "conv1.epoch1": w0, "conv2.epoch0": torch.randn(32, 32, 3, 3)})
    # a run trained before the snapshots were kept: None, everywhere
    old = fake_run(tmp_path / "old")
    assert filter_history(old) is None and load_filters_by_epoch(old) is None and filter_history(None) is None


# --- what_filters_respond_to ------------------------------------------------------------------

def _edge_images() -> torch.Tensor:
    """Two images: V dark left / bright right (a vertical edge between columns 13 and 14), H
    bright top / dark bottom (a horizontal edge between rows 13 and 14)."""
    x = torch.zeros(2, 28, 28, dtype=torch.uint8)
    x[0, :, 14:] = 255
    x[1, :14, :] = 255
    return x


def _edge_net() -> Net:
    """Filter 0: [-1 0 1] in every row (brighter to the right); filter 1: +1 top row, −1 bottom
    row (brighter upwards); the 30 others zero. Input normalized with mean 0.5, std 1, so the
    padding (0) is mid-grey and a 0→1 step gives a response of 3 only at an edge inside the image."""
    net = Net(mean=0.5, std=1.0)
    with torch.no_grad():
        net.conv1.weight.zero_()
        net.conv1.bias.zero_()
        net.conv1.weight[0, 0] = torch.tensor([[-1.0, 0, 1]] * 3)
        net.conv1.weight[1, 0] = torch.tensor([[1.0] * 3, [0.0] * 3, [-1.0] * 3])
    return net


def test_an_edge_filter_responds_most_to_edges_of_its_orientation():
    """Filter 0's response is 3 at exactly 52 places: columns 13 and 14 (patches [0 0 1] and
    [0 1 1] in every row) of rows 1..26 of image V; anything else is at most 2. The mean of those
    52 patches is [0 .5 1] in every row: a pure left-to-right ramp. Filter 1 likewise picks image
    H's rows 13 and 14: mean patch rows 1, .5, 0 (brighter upwards)."""
    res = what_filters_respond_to(_edge_net(), _edge_images(), top=52)
    np.testing.assert_allclose(res.patches[0], [[0, 0.5, 1]] * 3, atol=1e-12)
    np.testing.assert_allclose(res.patches[1], [[1] * 3, [0.5] * 3, [0] * 3], atol=1e-12)
    f0, f1 = res.filters[0], res.filters[1]
    assert f0["patch_class"] == "edge" and f0["patch_non_dc_share"]["gradient"] == pytest.approx(1.0)
    assert f0["patch_direction_deg"] == 0.0 and f0["patch_direction"] == "→"
    assert f1["patch_class"] == "edge" and f1["patch_direction_deg"] == 90.0 and f1["patch_direction"] == "↑"
    assert f0["alignment"] == pytest.approx(1.0) and f1["alignment"] == pytest.approx(1.0)
    assert f0["mean_top_response"] == pytest.approx(3.0) and f0["patch_contrast"] == pytest.approx(1.0)
    assert res.summary["patch_class_counts"]["edge"] >= 2 and res.n_images == 2 and res.top == 52


def test_a_noisy_filter_is_driven_by_smooth_strokes():
    """A kernel that is a vertical edge plus strong noise (not an edge by its weights) still picks
    patches from the edge of V: the image has no other structure to offer."""
    net = _edge_net()
    noise = torch.tensor([[0.9, -0.8, 0.2], [-0.7, 0.6, -0.9], [0.8, -0.6, 0.7]])
    with torch.no_grad():
        net.conv1.weight[2, 0] = torch.tensor([[-1.0, 0, 1]] * 3) * 0.4 + noise
    res = what_filters_respond_to(net, _edge_images(), top=20)
    f2 = res.filters[2]
    assert f2["weight_class"] != "edge" and f2["weight_non_dc_share"]["gradient"] < 0.5
    assert f2["patch_non_dc_share"]["gradient"] > f2["weight_non_dc_share"]["gradient"]


def test_responses_protocol_reference_and_model_untouched(tmp_path, tiny_model):
    rng = np.random.default_rng(3)
    images = (rng.random((40, 28, 28)) < 0.2).astype(np.float32)          # [0, 1] floats
    bn = Net(batch_norm=True).train()
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    res = what_filters_respond_to(bn, images, top=10, reference=untrained_like(bn, seed=1))
    assert bn.training and all(torch.equal(before[k], v) for k, v in bn.state_dict().items())
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["top"] == 10 and len(d["filters"]) == 32 and d["untrained_summary"]["filters"] == 32
    assert res.patches.shape == (32, 3, 3) and res.patches.min() >= 0 - 1e-9 and res.patches.max() <= 1 + 1e-9
    _legible(res.figure())
    names = sorted(p.name for p in res.save(tmp_path))
    assert names == ["filter_responses.json", "filter_responses.npz", "filter_responses.png"]
    with pytest.raises(ConfigError, match="conv1 only"):
        what_filters_respond_to(tiny_model, images, layer="conv2")
    with pytest.raises(ConfigError, match="top"):
        what_filters_respond_to(tiny_model, images, top=0)
    with pytest.raises(ConfigError, match="images"):
        what_filters_respond_to(tiny_model, np.zeros((3, 27, 27)))


# --- end to end: a real smoke run -------------------------------------------------------------

def test_smoke_run_keeps_a_snapshot_per_epoch(tmp_path, mnist_split):
    from cnnlab.config import preset
    from cnnlab.runs import open_run
    from cnnlab.train import train
    out = tmp_path / "run"
    res = train(preset("smoke", epochs=2), out, split=mnist_split, progress=False, log=lambda s: None, figures=False)
    snaps = load_filters_by_epoch(out)
    assert snaps is not None and sorted(snaps) == ["conv1.epoch0", "conv1.epoch1", "conv1.epoch2",
                                                   "conv2.epoch0", "conv2.epoch1", "conv2.epoch2"]
    hist = filter_history(open_run(out))
    assert hist is not None and hist.epochs == 2
    c1 = hist.layers["conv1"]
    assert c1["mean_cosine_to_init"][0] == pytest.approx(1.0) and c1["relative_change"][0] == 0.0
    assert 0 < c1["relative_change"][1] and c1["mean_cosine_to_init"][2] < 1.0
    init = untrained_like(res.model, res.config.seed)
    np.testing.assert_array_equal(snaps["conv1.epoch0"], init.conv1.weight.detach().double().numpy())
    # the last epoch's snapshot is the final weights (the best checkpoint here: accuracy rose)
    if res.info.best.step == res.info.steps:
        np.testing.assert_array_equal(snaps["conv1.epoch2"], res.model.conv1.weight.detach().double().numpy())
    resp = what_filters_respond_to(res.model, mnist_split.test_x[:500], top=50)
    assert resp.summary["filters"] == 32 and resp.n_images == 500
