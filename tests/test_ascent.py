"""The one gradient-ascent engine (analysis/ascent.py): a step of each parametrization against a
hand computation on a linear network, Adam against torch.optim.Adam, the adaptive prior weight,
what the trace records, and a model that never changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab.analysis.ascent import PcaCoefficients, Pixels, ascend, initial_noise
from cnnlab.errors import ConfigError
from cnnlab.model import Net, weights_digest
from handmade import Linear28


def _wb(m: Linear28) -> tuple[np.ndarray, np.ndarray]:
    return m.fc.weight.detach().double().numpy(), m.fc.bias.detach().double().numpy()


def _pca(T: int, K: int = 4, seed: int = 0):
    """A mean image around 128 and a small basis, so X(w) stays inside (0, 255): no clip."""
    g = np.random.default_rng(seed)
    mean = 128.0 + g.normal(0, 5, 784)
    sb = g.normal(0, 3, (K, 784))
    w0 = g.normal(0, 1, (T, K))
    return mean, sb, w0


# ---------------------------------------------------------------------------------------------
# Pixels: X ← X + step_size·dC/dX, then decay, clip
# ---------------------------------------------------------------------------------------------

def test_one_pixel_step_is_x_plus_step_size_times_the_hand_gradient():
    m = Linear28().eval()
    W, b = _wb(m)
    targets, beta, step, l2 = [2, 7], 0.3, 2000.0, 0.05      # step·β·2/784 > 1: overshoots the source, so clips
    x0 = initial_noise(2, 40.0, seed=1)
    src = torch.as_tensor(np.random.default_rng(3).uniform(0, 255, (28, 28)), dtype=torch.float32)
    tr = ascend(m, targets, Pixels(x0, step_size=step, source=src, beta=beta, l2=l2, clip=True), steps=1)
    X, S = x0.double().numpy().reshape(2, -1), src.double().numpy().ravel()
    for i, t in enumerate(targets):
        grad = W[t] / 255.0 - beta * 2.0 * (X[i] - S) / 784.0      # d/dX [W_t·X/255 + b_t − β·mean((X − S)²)]
        want = np.clip((1.0 - l2) * (X[i] + step * grad), 0.0, 255.0)
        assert 0 < (want == 0).sum() + (want == 255).sum() < 784  # the clip did something, not everything
        np.testing.assert_allclose(tr.images[i].double().numpy().ravel(), want, rtol=0, atol=2e-3)
        mse0 = np.mean((X[i] - S) ** 2)
        np.testing.assert_allclose(tr.mse[0, i], mse0, rtol=1e-6)
        np.testing.assert_allclose(tr.cost[0, i], X[i] @ W[t] / 255.0 + b[t] - beta * mse0, rtol=1e-5)
    assert tr.cost.shape == tr.logit.shape == tr.prob.shape == tr.pred.shape == tr.mse.shape == (2, 2)
    torch.testing.assert_close(tr.initial, x0)


def test_blur_every_k_steps_and_no_penalty_without_a_source():
    m = Linear28().eval()
    x0 = initial_noise(1, 30.0, seed=0)
    plain = ascend(m, [4], Pixels(x0, step_size=100.0, beta=5.0), steps=3)        # β without a source: no pull
    np.testing.assert_array_equal(plain.mse, 0.0)
    np.testing.assert_allclose(plain.cost, plain.logit, rtol=0, atol=0)
    blurred = ascend(m, [4], Pixels(x0, step_size=100.0, blur_every=3, blur_sigma=1.0), steps=3)
    from cnnlab.analysis.ascent import gaussian_blur
    torch.testing.assert_close(blurred.images, gaussian_blur(plain.images, 1.0))   # linear model: blur once at the end


def test_jitter_feeds_a_shifted_copy_but_records_x_itself():
    seen = []

    class Spy(Linear28):
        def forward(self, x):
            seen.append(x.detach().clone())
            return super().forward(x)

    m = Spy().eval()
    x0 = initial_noise(1, 30.0, seed=0)
    tr = ascend(m, [1], Pixels(x0, step_size=10.0, jitter=3, seed=5), steps=2)
    fed = seen[0][0, 0] * 255.0
    assert not torch.allclose(fed, x0[0])                              # the gradient's input was shifted ...
    shifted = [torch.roll(x0[0], (dy, dx), (0, 1)) for dy in range(-3, 4) for dx in range(-3, 4)]
    assert any(torch.allclose(fed, s, atol=1e-4) for s in shifted)     # ... by at most 3 pixels
    W, b = _wb(m)
    np.testing.assert_allclose(tr.logit[0, 0], x0.double().numpy().ravel() @ W[1] / 255.0 + b[1], rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# PCA coefficients: X(w) = clip(mean + w @ scale_basis), Adam on w, C = logit − λ·½‖w‖²
# ---------------------------------------------------------------------------------------------

def _hand_gradient(W, t, sb, w, lam):
    """dC/dw of C = W_t·(mean + w·SB)/255 + b_t − λ·½‖w‖² (no pixel clipped)."""
    return sb @ W[t] / 255.0 - lam * w


def test_one_adam_step_on_pca_coefficients_is_the_hand_formula():
    m = Linear28(1).eval()
    W, b = _wb(m)
    targets, lr, lam = [0, 9], 0.05, 0.2
    mean, sb, w0 = _pca(2)
    param = PcaCoefficients(w0, mean, sb, lr=lr, prior_weight=lam, min_prob=None, adapt_every=1, adapt_factor=0.5)
    tr = ascend(m, targets, param, steps=1)
    w1 = param.w.detach().double().numpy()
    for i, t in enumerate(targets):
        g = _hand_gradient(W, t, sb, w0[i], lam)
        # Adam's first step: m̂ = g, v̂ = g², so w ← w + lr·g / (|g| + ε) (uphill: Adam descends −C)
        np.testing.assert_allclose(w1[i], w0[i] + lr * g / (np.abs(g) + 1e-8), rtol=0, atol=1e-5)
        x = mean + w0[i] @ sb
        np.testing.assert_allclose(tr.cost[0, i], x @ W[t] / 255.0 + b[t] - lam * 0.5 * w0[i] @ w0[i], rtol=1e-5)
    np.testing.assert_allclose(tr.initial.double().numpy().reshape(2, -1), mean + w0 @ sb, rtol=1e-6)
    np.testing.assert_allclose(tr.images.double().numpy().reshape(2, -1), mean + w1 @ sb, rtol=1e-5)
    np.testing.assert_array_equal(tr.mse, 0.0)


def test_three_adam_steps_match_torch_optim_adam_fed_the_hand_gradient():
    m = Linear28(2).eval()
    W, _ = _wb(m)
    targets, lr, lam = [3, 5, 6], 0.1, 0.1
    mean, sb, w0 = _pca(3, seed=1)
    param = PcaCoefficients(w0, mean, sb, lr=lr, prior_weight=lam, min_prob=None, adapt_every=1, adapt_factor=0.5)
    ascend(m, targets, param, steps=3)
    w = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(3):
        g = np.stack([_hand_gradient(W, t, sb, w.detach().numpy()[i], lam) for i, t in enumerate(targets)])
        w.grad = -torch.from_numpy(g)              # the optimizer descends −C
        opt.step()
    np.testing.assert_allclose(param.w.detach().double().numpy(), w.detach().numpy(), rtol=0, atol=1e-5)


def test_prior_weight_is_weakened_only_in_the_second_half_and_only_where_doubted():
    m = Linear28().eval()
    mean, sb, w0 = _pca(2)
    doubted = PcaCoefficients(w0, mean, sb, lr=0.01, prior_weight=0.4, min_prob=0.999999, adapt_every=2,
                              adapt_factor=0.5)
    ascend(m, [0, 1], doubted, steps=8)           # steps 4 and 6 of 8 (second half, every 2nd)
    np.testing.assert_allclose(doubted.lam.numpy(), [0.1, 0.1], rtol=1e-6)
    sure = PcaCoefficients(w0, mean, sb, lr=0.01, prior_weight=0.4, min_prob=1e-9, adapt_every=2, adapt_factor=0.5)
    ascend(m, [0, 1], sure, steps=8)
    np.testing.assert_allclose(sure.lam.numpy(), [0.4, 0.4], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# The network is only read
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_norm", [False, True])
def test_the_network_never_changes(batch_norm):
    torch.manual_seed(0)
    net = Net(batch_norm=batch_norm).train()       # train mode: batch norm would update its statistics
    flags = [p.requires_grad for p in net.parameters()]
    before = weights_digest(net)
    src = torch.full((28, 28), 100.0)
    ascend(net, [1, 2], Pixels(initial_noise(2), step_size=1000.0, source=src, beta=0.01, clip=True, l2=0.01,
                               blur_every=2, jitter=1), steps=3)
    mean, sb, w0 = _pca(2)
    ascend(net, [3, 4], PcaCoefficients(w0, mean, sb, lr=0.1, prior_weight=0.1, min_prob=0.99, adapt_every=1,
                                        adapt_factor=0.7), steps=3)
    assert weights_digest(net) == before
    assert net.training and [p.requires_grad for p in net.parameters()] == flags
    assert all(p.grad is None for p in net.parameters())


def test_a_start_that_does_not_match_the_targets_is_refused():
    with pytest.raises(ConfigError, match="2 images for 3 targets"):
        ascend(Linear28().eval(), [0, 1, 2], Pixels(initial_noise(2), step_size=1.0), steps=1)
