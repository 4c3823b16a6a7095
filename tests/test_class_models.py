"""Class models (§3.1) and targeted fakes (§3.2): exact cases on a linear network, the batch vs
one-at-a-time oracle, frozen weights, file formats, the done-when numbers on a trained run, CLI."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from cnnlab import config
from cnnlab.analysis import ascent, class_models, likeness, targeted
from cnnlab.cli import main
from cnnlab.errors import ConfigError
from cnnlab.model import weights_digest
from handmade import Linear28

# ---------------------------------------------------------------------------------------------
# Exact cases
# ---------------------------------------------------------------------------------------------

def test_class_model_on_linear_network_is_closed_form():
    m = Linear28().eval()
    steps, step = 7, 50.0
    r = class_models.synthesize(m, targets=[3, 8], steps=steps, step_size=step, sigma=20.0, seed=4)
    W = m.fc.weight.detach().double().numpy()
    x0 = ascent.initial_noise(1, 20.0, 4)[0].double().numpy().ravel()
    for i, t in enumerate([3, 8]):
        # dC/dX = W[t] / 255 whatever X is, so X_k = X_0 + k·step·W[t]/255.
        want = x0 + steps * step * W[t] / 255.0
        np.testing.assert_allclose(r.images[i].ravel(), want, rtol=0, atol=1e-3)
        logit = np.array([(x0 + k * step * W[t] / 255.0) / 255.0 @ W[t] for k in range(steps + 1)]) + float(m.fc.bias[t].detach())
        np.testing.assert_allclose(r.cost[:, i], logit, rtol=1e-5, atol=1e-5)
    assert r.cost.shape == r.prob.shape == r.pred.shape == (steps + 1, 2)
    np.testing.assert_array_equal(r.initial[0], r.initial[1])     # same noise for every target


def test_targeted_fake_on_linear_network_matches_a_float64_loop():
    m = Linear28(1).eval()
    src = np.random.default_rng(0).integers(0, 256, (28, 28)).astype(np.uint8)
    beta, step, steps = 0.05, 200.0, 12
    r = targeted.adversarial(m, src, targets=[0, 5], beta=beta, steps=steps, step_size=step, sigma=10.0, seed=2, adapt=0)
    W = m.fc.weight.detach().double().numpy()
    S = src.astype(np.float64).ravel()
    for i, t in enumerate([0, 5]):
        x = ascent.initial_noise(1, 10.0, 2)[0].double().numpy().ravel()
        for _ in range(steps):     # d/dX [W_t·X/255 − β·mean((X−S)²)] = W_t/255 − 2β(X−S)/784
            x = x + step * (W[t] / 255.0 - 2 * beta * (x - S) / 784.0)
        np.testing.assert_allclose(r.images[i].ravel(), x, atol=1e-2)
        np.testing.assert_allclose(r.mse[i], np.mean((x - S) ** 2), rtol=1e-4)
    np.testing.assert_array_equal(r.source, src.astype(np.float32))


def test_network_is_fed_x_over_255():
    seen = []

    class Spy(Linear28):
        def forward(self, x):
            seen.append(x.detach().clone())
            return super().forward(x)

    class_models.synthesize(Spy().eval(), targets=[0], steps=1, step_size=1.0, sigma=10.0)
    x = seen[0]
    assert x.shape == (1, 1, 28, 28)
    assert abs(float(x.mean()) - 128 / 255) < 0.02       # noise centred at 128 on 0–255 → ≈ 0.5
    assert float(x.std()) == pytest.approx(10 / 255, rel=0.1)


def test_batch_of_ten_equals_one_at_a_time(tiny_model):
    kw = dict(steps=6, step_size=2000.0, seed=3, clip=True, l2=0.01, blur_every=2, jitter=2)
    batch = class_models.synthesize(tiny_model, range(10), **kw)
    for t in (0, 4, 9):
        one = class_models.synthesize(tiny_model, [t], **kw)
        np.testing.assert_allclose(one.images[0], batch.images[t], atol=1e-3)
        np.testing.assert_allclose(one.cost[:, 0], batch.cost[:, t], atol=1e-4)
    src = np.linspace(0, 1, 784).reshape(28, 28)
    adv = targeted.adversarial(tiny_model, src, range(10), steps=5, step_size=2000.0)
    one = targeted.adversarial(tiny_model, src, [7], steps=5, step_size=2000.0)
    np.testing.assert_allclose(one.images[0], adv.images[7], atol=1e-3)


def test_seeded_and_regularizers_keep_pixels_valid(tiny_model):
    a = class_models.synthesize(tiny_model, [1, 2], steps=5, **config.REGULARIZED)
    b = class_models.synthesize(tiny_model, [1, 2], steps=5, **config.REGULARIZED)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.min() >= 0 and a.images.max() <= 255
    c = class_models.synthesize(tiny_model, [1, 2], steps=5, seed=1)
    assert not np.allclose(c.initial, a.initial)


def test_blur_keeps_constants_and_mass():
    x = torch.full((2, 28, 28), 77.0)
    torch.testing.assert_close(ascent.gaussian_blur(x, 1.0), x)
    d = torch.zeros(1, 28, 28)
    d[0, 14, 14] = 1.0
    assert float(ascent.gaussian_blur(d, 0.7).sum()) == pytest.approx(1.0, abs=1e-6)


def test_pearson_and_likeness_oracle(mnist_split):
    a = np.random.default_rng(0).normal(size=(3, 784))
    b = np.random.default_rng(1).normal(size=(4, 784))
    want = np.corrcoef(np.vstack([a, b]))[:3, 3:]
    np.testing.assert_allclose(likeness.pearson(a, b), want, atol=1e-12)
    means = likeness.class_means(mnist_split)
    lk = likeness.digit_likeness(means, mnist_split, targets=range(10), n_real=200, means=means)
    np.testing.assert_allclose(lk.per_image["corr_target_mean"], 1.0, atol=1e-9)
    assert lk.per_image["nearest_class"] == list(range(10))
    ref = lk.reference
    assert 0.75 < ref["nearest_class_accuracy"] < 0.95 and ref["nn_label_accuracy"] > 0.9


def test_likeness_figure_draws_any_images_and_colours_each_by_its_own_target(mnist_split):
    """Ten test digits (7, 2, 1, 0, 4, 1, 4, 9, 5, 9), one replaced by noise: a title is green
    exactly when the nearest class mean is that image's target (not the column's class), and any
    number of images, with or without targets, draws and saves (three once raised IndexError)."""
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt
    images = mnist_split.test_x[:10, 0].numpy().astype(np.float64)
    images[5] = np.random.default_rng(0).uniform(0, 255, (28, 28))
    targets = mnist_split.test_y[:10].tolist()
    lk = likeness.digit_likeness(images, mnist_split, targets=targets, n_real=50)
    assert lk.per_image["target"] == targets and lk.targets == targets
    fig = lk.figure()
    titles = [ax.title for ax in fig.axes if ax.title.get_text().startswith("for ")]
    green = [mcolors.same_color(t.get_color(), "tab:green") for t in titles]
    want = [n == t for n, t in zip(lk.per_image["nearest_class"], targets)]
    assert green == want and not all(want)                       # the noise is not read as its target
    plt.close(fig)
    for n, with_targets in ((3, False), (3, True), (70, True)):
        small = likeness.digit_likeness(mnist_split.test_x[:n, 0].numpy().astype(np.float64), mnist_split,
                                        targets=mnist_split.test_y[:n].tolist() if with_targets else None, n_real=50)
        fig = small.figure()
        drawn = sum(bool(ax.images) for ax in fig.axes) - 10          # less the class-mean row
        assert drawn == min(n, likeness.FIGURE_MAX)
        assert ("first 60 of 70" in fig.texts[0].get_text()) == (n == 70)
        plt.close(fig)


def test_source_scales_and_errors(tiny_model):
    u8 = np.full((28, 28), 255, np.uint8)
    assert float(targeted.as_image_255(u8).max()) == 255
    assert float(targeted.as_image_255(np.ones((28, 28)) * 1.0).max()) == 255       # [0, 1] float
    assert float(targeted.as_image_255(np.ones(784) * 1.0, scale="255").max()) == 1
    with pytest.raises(ConfigError, match="784"):
        targeted.as_image_255(np.zeros((28, 27)))
    with pytest.raises(ConfigError, match="out of range"):
        class_models.synthesize(tiny_model, [12])
    with pytest.raises(ConfigError, match="finite"):
        class_models.synthesize(tiny_model, [1], step_size=float("nan"))
    with pytest.raises(ConfigError, match="beta"):
        targeted.adversarial(tiny_model, u8, beta=-1)
    with pytest.raises(ConfigError, match="overshoot"):
        targeted.adversarial(tiny_model, u8, beta=1.0, step_size=1000)
    with pytest.raises(ConfigError, match="init"):
        targeted.adversarial(tiny_model, u8, init="zeros")


# ---------------------------------------------------------------------------------------------
# On a trained run: the done-when numbers, frozen weights, files
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(mnist_run):
    from cnnlab.runs import open_run
    run = open_run(mnist_run)
    return run, run.load_model()


def test_class_models_reach_the_target_and_weights_never_change(trained, mnist_split, tmp_path):
    run, model = trained
    file_hash = hashlib.sha256(run.weights.read_bytes()).hexdigest()
    digest, params = weights_digest(model), [p.detach().clone() for p in model.parameters()]
    flags = [p.requires_grad for p in model.parameters()]
    model.train()                                   # restored afterwards, eval inside
    res = class_models.synthesize(model)
    assert model.training
    model.eval()
    assert (res.final_pred == np.arange(10)).all()
    assert res.final_prob.min() >= 0.99
    assert (np.diff(res.cost, axis=0) > 0).mean() > 0.95 and (res.cost[-1] > res.cost[0] + 5).all()
    reg = class_models.synthesize_regularized(model)
    assert (reg.final_pred == np.arange(10)).all() and reg.final_prob.min() >= 0.9
    lk_plain = likeness.digit_likeness(res.images, mnist_split, targets=range(10), n_real=200)
    lk_reg = likeness.digit_likeness(reg.images, mnist_split, targets=range(10), n_real=200)
    # The plain class models look like no digit; the regularized ones are markedly closer.
    assert lk_plain.summary["corr_target_mean_mean"] < 0.25
    assert lk_reg.summary["corr_target_mean_mean"] > lk_plain.summary["corr_target_mean_mean"] + 0.15
    src = mnist_split.test_x[1, 0]
    adv = targeted.adversarial(model, src, source_label=int(mnist_split.test_y[1]))
    assert hashlib.sha256(run.weights.read_bytes()).hexdigest() == file_hash
    assert weights_digest(model) == digest
    assert all(torch.equal(a, b.detach()) for a, b in zip(params, model.parameters()))
    assert [p.requires_grad for p in model.parameters()] == flags
    # Targeted fakes: every target fooled (with β lowered for a target that β alone left short: on
    # the Intel CPU's rounding of this fixture, the 2 aimed at 1), and still close to the source.
    assert (adv.final_pred == adv.targets).all() and adv.not_reached == []
    kept = adv.beta_per_target == adv.beta
    assert kept.sum() >= 8 and adv.final_prob[kept].min() >= 0.9
    # Measured on the 1-epoch fixture (seed 0): r = 0.38–0.78 with the source; the nearest-training
    # label test below is the sharper check that they still look like the source.
    assert adv.corr_to_source.min() > 0.3 and np.median(adv.corr_to_source) > 0.5
    lk = likeness.digit_likeness(adv.images, mnist_split, n_real=50)
    assert np.mean(np.array(lk.per_image["nn_label"]) == adv.source_label) >= 0.8
    # npz formats, keys exactly as the issue
    res.save(tmp_path, "synthesize")
    with np.load(tmp_path / "synthesize.npz") as z:
        assert {"images", "targets", "cost", "prob", "initial"} <= set(z.files)
        assert z["images"].shape == (10, 28, 28) and z["cost"].shape == (201, 10) and z["prob"].shape == (201, 10)
        assert z["initial"].shape == (10, 28, 28) and z["targets"].tolist() == list(range(10))
    adv.save(tmp_path)
    with np.load(tmp_path / "adversarial.npz") as z:
        assert {"images", "targets", "source", "cost", "prob", "beta"} <= set(z.files)
        assert z["source"].shape == (28, 28) and float(z["beta"]) == config.BETA
    import json
    json.dumps(res.to_dict()), json.dumps(adv.to_dict()), json.dumps(lk_reg.to_dict())


def test_beta_sweep_trades_fooling_for_resemblance(trained, mnist_split):
    _, model = trained
    sw = targeted.beta_sweep(model, mnist_split.test_x[0, 0], betas=(0.0, 0.03), targets=[3, 5], steps=60,
                      source_label=int(mnist_split.test_y[0]))
    rows = sw.to_dict()["rows"]
    assert rows[0]["mean_corr_to_source"] < rows[1]["mean_corr_to_source"]
    assert rows[0]["mean_mse_to_source"] > rows[1]["mean_mse_to_source"]
    assert rows[0]["mean_target_prob"] >= rows[1]["mean_target_prob"]
    import matplotlib.pyplot as plt
    plt.close(sw.figure())


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def test_cli_synthesize_and_adversarial(mnist_run, mnist_dir, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["synthesize", str(mnist_run), "--steps", "10", "--data-dir", str(mnist_dir),
                 "--out", str(out), "--transfer", str(mnist_run)]) == 0
    for f in ("synthesize.npz", "synthesize_regularized.npz", "synthesize.png", "synthesize_cost.png",
              "likeness.png", "results.json"):
        assert (out / f).is_file(), f
    out = tmp_path / "a"
    assert main(["adversarial", str(mnist_run), "--source-digit", "2", "--target", "5", "--target", "7",
                 "--steps", "20", "--beta-sweep", "0", "0.01", "--data-dir", str(mnist_dir),
                 "--out", str(out)]) == 0
    with np.load(out / "adversarial.npz") as z:
        assert z["images"].shape == (2, 28, 28) and z["targets"].tolist() == [5, 7]
    assert (out / "beta_sweep.png").is_file()


@pytest.mark.parametrize("argv, needle", [
    (["synthesize", "RUN", "--target", "12"], "out of range"),
    (["synthesize", "RUN", "--step-size", "nan"], "not a finite number"),
    (["adversarial", "RUN", "--source-digit", "3", "--beta", "-1"], "out of range"),
    (["adversarial", "RUN", "--source-digit", "3", "--step-size", "inf"], "not a finite number"),
    (["adversarial", "RUN"], "required"),
])
def test_cli_rejects_bad_options(argv, needle, capsys, tmp_path):
    argv = [str(tmp_path) if a == "RUN" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert needle in err[-1]


def test_cli_bad_index_is_one_line(mnist_run, mnist_dir, capsys):
    code = main(["adversarial", str(mnist_run), "--source-index", "10000", "--data-dir", str(mnist_dir)])
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out of range" in err[0] and "0..9999" in err[0]


def test_targeted_fakes_lower_beta_only_for_targets_it_leaves_unreached_and_name_those_never_reached(trained):
    """Control: a β whose pull to the source overwhelms every target's logit leaves targets
    unreached; the result names them, halves their β each round, and runs them longer."""
    _, model = trained
    src = np.zeros((28, 28), dtype=np.uint8)
    src[6:22, 12:16] = 255                                       # a bar: a 1 to the network
    strong = targeted.adversarial(model, src, targets=[1, 3, 8], beta=0.3, step_size=1000.0, steps=20, adapt=2)
    assert strong.not_reached and set(strong.not_reached) <= {3, 8}
    for t, b, n in zip(strong.targets, strong.beta_per_target, strong.steps_per_target):
        if int(t) in strong.adapted:
            assert b < 0.3 and n > 20
        else:
            assert b == 0.3 and n == 20
    assert set(strong.not_reached) <= set(strong.adapted)
    assert strong.cost.shape[0] == strong.steps_per_target.max() + 1
    assert "not reached" in strong.adapt_note() and strong.summary()["not_reached"] == strong.not_reached
    plain = targeted.adversarial(model, src, targets=[1, 3, 8], beta=0.3, step_size=1000.0, steps=20, adapt=0)
    assert plain.adapted == [] and (plain.beta_per_target == 0.3).all() and plain.cost.shape[0] == 21
    # without adapting, the same first 20 steps
    np.testing.assert_allclose(strong.cost[:21], plain.cost, rtol=1e-5, atol=1e-4)
