"""Readable class models (3.1.3): the prior against a numpy oracle, the nearest-training judge on a
hand-made case, frozen weights, argument errors; on real MNIST the judges pass real digits and fail
noise and the plain class models, and natural class models of a trained network pass them."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cnnlab.analysis import class_models as G
from cnnlab.analysis import natural as N
from cnnlab.cli import main
from cnnlab.errors import ConfigError
from cnnlab.model import Net, weights_digest


def _fake_split(n_train=200, seed=0):
    """Random uint8 images in the layout of data.Split (only the fields the module reads)."""
    g = torch.Generator().manual_seed(seed)
    return SimpleNamespace(train_x=torch.randint(0, 256, (n_train, 1, 28, 28), generator=g, dtype=torch.uint8),
                           train_y=torch.arange(n_train) % 10,
                           test_x=torch.randint(0, 256, (50, 1, 28, 28), generator=g, dtype=torch.uint8),
                           test_y=torch.arange(50) % 10)


# ---------------------------------------------------------------------------------------------
# Without MNIST: oracles and contracts
# ---------------------------------------------------------------------------------------------

def test_prior_matches_numpy_svd_and_round_trips():
    split = _fake_split(300)
    prior = N.PcaPrior.fit(split, components=20, stride=1)
    x = split.train_x.reshape(300, -1).numpy().astype(np.float64)
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    np.testing.assert_allclose(prior.mean, x.mean(0), atol=1e-9)
    np.testing.assert_allclose(prior.scale, s[:20] / np.sqrt(299), rtol=1e-8)
    # basis rows equal the right singular vectors up to sign
    np.testing.assert_allclose(np.abs((prior.basis * vt[:20]).sum(1)), 1.0, atol=1e-8)
    full = N.PcaPrior.fit(split, components=299, stride=1)   # rank of 300 centred images: all of them
    back = full.decode(full.encode(x[:5]))
    np.testing.assert_allclose(back.reshape(5, -1), x[:5], atol=1e-6)


def test_nearest_training_on_a_hand_made_case():
    train = torch.zeros(3, 784, dtype=torch.float64)
    train[1, :4] = 10.0                      # distance from 0 to it: sqrt(4·100) = 20
    train[2, :] = 1.0                        # distance from 0: sqrt(784) = 28
    y = np.array([7, 3, 5])
    x = np.zeros((2, 784))
    x[1, :4] = 9.0                           # nearest is train[1] at distance sqrt(4·1) = 2
    lab, d = N._nearest_training(x, train, (train ** 2).sum(1), y, chunk=2)   # two chunks
    assert lab.tolist() == [7, 3]
    np.testing.assert_allclose(d, [0.0, 2.0], atol=1e-9)


def test_ascent_changes_only_the_image(tiny_model):
    prior = N.PcaPrior.fit(_fake_split(), components=10, stride=1)
    flags = [p.requires_grad for p in tiny_model.parameters()]
    before = weights_digest(tiny_model)
    res = N.synthesize_natural(tiny_model, [0, 3], prior=prior, steps=5)
    assert weights_digest(tiny_model) == before
    assert [p.requires_grad for p in tiny_model.parameters()] == flags
    assert all(p.grad is None for p in tiny_model.parameters())
    assert res.images.shape == (2, 28, 28) and res.cost.shape == (6, 2) and res.prob.shape == (6, 2)
    assert 0 <= res.images.min() and res.images.max() <= 255
    # the trace's probability is the network's own on the returned image
    with torch.no_grad():
        p = tiny_model(torch.as_tensor(res.images, dtype=torch.float32)[:, None] / 255).softmax(1)
    np.testing.assert_allclose(res.final_prob, p[[0, 1], [0, 3]].numpy(), rtol=1e-4)


def test_same_keys_as_the_plain_npz(tiny_model, tmp_path):
    prior = N.PcaPrior.fit(_fake_split(), components=10, stride=1)
    nat = N.synthesize_natural(tiny_model, [1], prior=prior, steps=3)
    plain = G.synthesize(tiny_model, [1], steps=3)
    nat.save(tmp_path / "n"), plain.save(tmp_path / "p")
    with np.load(tmp_path / "n" / "class_models.npz") as a, np.load(tmp_path / "p" / "class_models.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        assert a["images"].shape == b["images"].shape and a["targets"].tolist() == [1]


@pytest.mark.parametrize("kwargs, needle", [
    (dict(), "exactly one of split= "),
    (dict(split="S", prior="P"), "exactly one of split= "),
    (dict(prior=object()), "prior must be a PcaPrior"),
    (dict(prior="P", targets=[10]), "out of range"),
    (dict(prior="P", steps=0), "steps must be an integer ≥ 1"),
    (dict(prior="P", lr=0.0), "lr must be > 0"),
    (dict(prior="P", min_prob=1.0), "min_prob is a probability"),
    (dict(prior="P", prior_weight=float("nan")), "finite"),
])
def test_synthesize_natural_rejects_bad_arguments(tiny_model, kwargs, needle):
    prior = N.PcaPrior.fit(_fake_split(), components=5, stride=1)
    kw = {k: (prior if v == "P" else _fake_split() if v == "S" else v) for k, v in kwargs.items()}
    with pytest.raises(ConfigError) as e:
        N.synthesize_natural(tiny_model, **kw)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


@pytest.mark.parametrize("images, targets, judge, needle", [
    (np.zeros((2, 28, 28)), [0, 1, 2], "M", "2 images for 3 targets"),
    (np.full((1, 28, 28), np.nan), [0], "M", "NaN"),
    (np.zeros((1, 27, 27)), [0], "M", "shape [n, 28, 28]"),
    (np.zeros((1, 28, 28)), [0], None, "judge_model must be a trained network"),
    ({}, [0], "M", "at least one set"),
])
def test_readability_rejects_bad_arguments(tiny_model, images, targets, judge, needle):
    with pytest.raises(ConfigError) as e:
        N.readability(images, targets, _fake_split(), tiny_model if judge == "M" else judge)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_cli_offers_natural(capsys):
    with pytest.raises(SystemExit):
        main(["synthesize", "--help"])
    assert "natural" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# On real MNIST: the judges and the method
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def maker_judge(mnist_run, mnist_run_bn):
    """Maker: the 1-epoch plain network. Judge: a network that did not make the images (the
    batch-norm variant; a different architecture and initialization is a stricter judge than
    another seed)."""
    from cnnlab.runs import open_run
    return open_run(mnist_run).load_model(), open_run(mnist_run_bn).load_model()


def _first_of_each_class(split) -> np.ndarray:
    idx = [int((split.test_y == c).nonzero()[0]) for c in range(10)]
    return split.test_x[idx, 0].numpy().astype(np.float64)


@pytest.mark.mnist
def test_judges_pass_real_digits_and_fail_noise_and_plain_class_models(mnist_split, maker_judge, tmp_path):
    maker, judge = maker_judge
    g = np.random.default_rng(0)
    noise = 128 + 32 * g.standard_normal((10, 28, 28))
    plain = G.synthesize(maker, steps=200).images
    r = N.readability({"real": _first_of_each_class(mnist_split), "noise": noise,
                       "uniform noise": g.uniform(0, 255, (10, 28, 28)), "plain": plain},
                      range(10), mnist_split, judge, maker=maker, n_real=300)
    # control: real digits pass. By construction ~95% of them are near enough, and the label of the
    # nearest training image is right for ~97%: over 300 digits about 9 in 10 pass both judges
    assert r.reference["near_training_digit_rate"] >= 0.88
    assert r.reference["judge_accuracy"] >= 0.95
    assert r.counts("real")["readable"] >= 7          # the first test digit of each class: 7/10 measured
    assert r.counts("noise")["readable"] == 0
    assert r.counts("uniform noise")["readable"] == 0
    assert r.counts("plain")["near_training_digit"] <= 2             # the assignment's images are not digits
    assert r.counts("plain")["readable"] <= 2
    assert r.counts("plain")["maker_min_prob"] > 0.5                 # ... though the maker believes them
    files = r.save(tmp_path)
    d = json.loads((tmp_path / "readability.json").read_text())
    assert [p.name for p in files] == ["readability.json", "readability.png"] and set(d["rows"]) == {"real", "noise",
                                                                                   "uniform noise", "plain"}
    assert d["rows"]["real"]["readable"] == r.row("real").verdicts(r.targets, r.threshold)["readable"].tolist()
    assert "0 of 10" in r.answer_text() or "1 of 10" in r.answer_text() or "2 of 10" in r.answer_text()
    assert not list(tmp_path.glob(".*.tmp"))                        # atomic writes leave no temp file


@pytest.mark.mnist
def test_readable_verdict_passes_real_digits_and_fails_noise_and_plain(mnist_split, maker_judge):
    """The verdict on judges' counts, both ways: 100 seeded real test digits (as targets, their
    labels) come out 'readable'; noise and the plain class models 'not readable'."""
    maker, judge = maker_judge
    idx = np.random.default_rng(1).choice(len(mnist_split.test_x), 100, replace=False)
    real = mnist_split.test_x[idx, 0].numpy().astype(np.float64)
    labels = mnist_split.test_y[idx].tolist()
    noise = 128 + 32 * np.random.default_rng(0).standard_normal((100, 28, 28))
    r = N.readability({"real": real, "noise": noise}, labels, mnist_split, judge, n_real=300)
    v = N.readable_verdict({"real": r.counts("real")}, r.reference, r.threshold)
    assert v.key == "readable", r.counts("real")
    assert N.readable_verdict({"noise": r.counts("noise")}, r.reference, r.threshold).key == "not readable"
    plain = G.synthesize(maker, steps=200).images
    r = N.readability({"plain": plain}, range(10), mnist_split, judge, maker=maker, n_real=300)
    v = N.readable_verdict({"plain": r.counts("plain")}, r.reference, r.threshold)
    assert v.key == "not readable" and v.answer.startswith("No")


@pytest.mark.mnist
def test_natural_class_models_are_readable_and_an_untrained_makers_are_not(mnist_split, maker_judge):
    """The verdict both ways, on all ten digits: the 1-epoch network's natural class models come
    out 'readable' (≥ 8 of 10); an untrained network's, with the same prior and judge, 'not
    readable' (the prior alone does not draw the target). Measured on networks trained on 1 and 2
    threads (their weights differ by rounding, as between CPUs): 10/10 each, untrained 0/10."""
    maker, judge = maker_judge
    torch.manual_seed(0)
    untrained = Net().eval()
    verdicts, counts = {}, {}
    for name, net in (("trained", maker), ("untrained", untrained)):
        before = weights_digest(net)
        res = N.synthesize_natural(net, range(10), split=mnist_split)
        assert weights_digest(net) == before
        assert res.seconds < 20.0                                    # ≈ 1 s for 10 targets, 1 thread
        r = N.readability({"natural": res.images}, range(10), mnist_split, judge, maker=net, n_real=300)
        counts[name] = c = r.counts("natural")
        verdicts[name] = N.readable_verdict({"natural": c}, r.reference, r.threshold).key
        np.testing.assert_allclose(r.row("natural").maker_prob, res.final_prob, rtol=1e-4)
    assert verdicts == {"trained": "readable", "untrained": "not readable"}, counts
    assert counts["trained"]["maker_min_prob"] >= 0.9


@pytest.mark.mnist
def test_cli_variant_natural_writes_the_same_keys(mnist_run, mnist_dir, tmp_path):
    out = tmp_path / "s"
    assert main(["synthesize", str(mnist_run), "--variant", "natural", "--target", "4", "--steps", "20",
                 "--data-dir", str(mnist_dir), "--out", str(out)]) == 0
    with np.load(out / "synthesize_natural.npz") as z:
        assert set(z.files) == {"images", "targets", "cost", "prob", "initial", "pred"}
        assert z["images"].shape == (1, 28, 28) and z["targets"].tolist() == [4]
        assert 0 <= z["images"].min() and z["images"].max() <= 255
    res = json.loads((out / "results.json").read_text())
    assert res["natural"]["params"]["method"] == "PCA Gaussian prior"
    assert (out / "synthesize_natural.png").is_file() and (out / "synthesize_natural_cost.png").is_file()
