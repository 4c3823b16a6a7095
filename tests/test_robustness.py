"""FGSM and PGD: hand-computed cases on a linear network, the ε-ball and pixel constraints, an
independent per-image reference loop, robustness tables, frozen weights, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.analysis import robustness
from cnnlab.cli import main
from cnnlab.errors import ConfigError


class OneDirection(nn.Module):
    """logits = [0, w·x, 0, …, 0]: the cross-entropy gradient of class 0 (untargeted) and of class 1
    (targeted) both point along ±w, so FGSM moves every pixel by exactly eps·sign(w)."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(784, generator=g) * 0.01)   # p stays away from 0 and 1

    def forward(self, x):
        s = x.flatten(1) @ self.w
        z = torch.zeros(len(x), 10, dtype=x.dtype)
        return z.index_copy(1, torch.tensor([1]), s[:, None])


def test_fgsm_moves_by_eps_sign_w():
    m = OneDirection()
    x = torch.full((3, 1, 28, 28), 0.5)
    eps = 0.1
    want = (x + eps * m.w.detach().sign().view(1, 1, 28, 28)).clamp(0, 1)
    torch.testing.assert_close(robustness.fgsm(m, x, torch.zeros(3, dtype=torch.long), eps), want)
    # targeted at class 1: descend CE(·, 1) = ascend w·x: the same direction
    torch.testing.assert_close(robustness.fgsm(m, x, torch.ones(3, dtype=torch.long), eps, targeted=True), want)
    # clipping: a black image cannot go below 0
    xb = torch.zeros(1, 1, 28, 28)
    out = robustness.fgsm(m, xb, torch.zeros(1, dtype=torch.long), 0.3)
    assert float(out.min()) == 0 and torch.allclose(out[0, 0].flatten()[m.w > 0], torch.tensor(0.3))


def test_fgsm_matches_a_numpy_gradient_on_a_linear_softmax():
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(784, 10)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(10, 784, generator=g) * 0.05)
    m = nn.Sequential(nn.Flatten(), lin)
    x = torch.rand(4, 1, 28, 28, generator=g)
    y = torch.tensor([0, 3, 7, 9])
    W, b = lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()
    z = x.flatten(1).double().numpy() @ W.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = (p - np.eye(10)[y.numpy()]) @ W          # ∂CE/∂x for softmax regression, by hand
    want = np.clip(x.flatten(1).double().numpy() + 0.07 * np.sign(grad), 0, 1)
    got = robustness.fgsm(m, x, y, 0.07).flatten(1).double().numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)


def _reference_pgd(model, x0, y, eps, alpha, steps, noise, targeted):
    """Madry et al. PGD, one image at a time (the same loop as torchattacks.PGD)."""
    outs = []
    for i in range(len(x0)):
        xi, yi = x0[i:i + 1], y[i:i + 1]
        xa = (xi + noise[i:i + 1]).clamp(0, 1)
        for _ in range(steps):
            xa = xa.clone().requires_grad_(True)
            loss = F.cross_entropy(model(xa), yi)
            cost = -loss if targeted else loss
            (gr,) = torch.autograd.grad(cost, xa)
            xa = xa.detach() + alpha * gr.sign()
            xa = torch.clamp(xi + torch.clamp(xa - xi, -eps, eps), 0, 1)
        outs.append(xa)
    return torch.cat(outs)


@pytest.mark.parametrize("targeted", [False, True])
def test_pgd_equals_reference_loop_and_stays_in_the_ball(tiny_model, targeted):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 28, 28, generator=g)
    y = torch.tensor([0, 1, 2, 3])
    eps, alpha, steps = 0.1, 0.03, 4
    got = robustness.pgd(tiny_model, x, y, eps, alpha, steps, targeted=targeted, seed=7)
    noise = torch.empty(x.shape).uniform_(-eps, eps, generator=torch.Generator().manual_seed(7))
    from cnnlab.analysis._shared import few_threads
    with few_threads(1):
        want = _reference_pgd(tiny_model, x, y, eps, alpha, steps, noise, targeted)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert float((got - x).abs().max()) <= eps + 1e-6
    assert float(got.min()) >= 0 and float(got.max()) <= 1


def test_pgd_one_step_without_start_is_fgsm(tiny_model):
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    y = torch.arange(5)
    torch.testing.assert_close(robustness.pgd(tiny_model, x, y, 0.2, alpha=0.2, steps=1, random_start=False),
                               robustness.fgsm(tiny_model, x, y, 0.2))


def test_errors(tiny_model):
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(ConfigError, match="≤ 1"):
        robustness.fgsm(tiny_model, x, [0, 1], 2.0)
    with pytest.raises(ConfigError, match="finite"):
        robustness.pgd(tiny_model, x, [0, 1], float("nan"))
    with pytest.raises(ConfigError, match="uint8"):
        robustness.fgsm(tiny_model, (x * 255).to(torch.uint8), [0, 1], 0.1)
    with pytest.raises(ConfigError, match="0..9"):
        robustness.fgsm(tiny_model, x, [0, 11], 0.1)
    with pytest.raises(ConfigError, match="attack"):
        robustness.robustness({"m": tiny_model}, x, [0, 1], attack="cw")
    with pytest.raises(ConfigError, match="precision"):
        robustness.robustness({"m": tiny_model}, x, [0, 1], precision="fp8")


@pytest.fixture(scope="module")
def models(mnist_run, mnist_run_bn):
    from cnnlab.runs import open_run
    return {"plain": open_run(mnist_run).load_model(), "batch-norm": open_run(mnist_run_bn).load_model()}


def test_attacks_on_trained_models(models, mnist_split):
    from cnnlab.data import to_float
    from cnnlab.model import weights_digest
    from cnnlab.train import evaluate
    x, y = to_float(mnist_split.test_x[:400]), mnist_split.test_y[:400]
    before = {k: weights_digest(m) for k, m in models.items()}
    fg = robustness.robustness(models, x, y, "fgsm", eps_list=[0, 0.1, 0.25])
    pg = robustness.robustness(models, x, y, "pgd", eps_list=[0.1], steps=10)
    tg = robustness.robustness({"plain": models["plain"]}, x, y, "pgd", eps_list=[0.25], steps=10, targeted=True)
    assert {k: weights_digest(m) for k, m in models.items()} == before
    for name, m in models.items():
        acc = [r["accuracy"] for r in fg.table if r["model"] == name]
        clean = evaluate(m, x, y, precision=fg.params["precision"]).accuracy   # ε = 0: the evaluation, same precision
        assert acc[0] == pytest.approx(clean, abs=1e-6)
        assert acc[0] > 0.95 and acc[0] > acc[1] > acc[2]
        pgd01 = next(r["accuracy"] for r in pg.table if r["model"] == name)
        assert pgd01 <= acc[1] + 0.02                     # PGD is at least as strong as FGSM
    assert tg.table[0]["success_rate"] > 0.5              # most images pushed into label+1
    import json

    import matplotlib.pyplot as plt
    json.dumps(fg.to_dict())
    plt.close(fg.figure()), plt.close(tg.figure())
    assert "batch-norm" in fg.table_text()


def test_cli_robustness(mnist_run, mnist_run_bn, mnist_dir, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["robustness", str(mnist_run), str(mnist_run_bn), "--attack", "pgd", "--eps", "0", "0.1",
                 "--steps", "3", "--n", "200", "--data-dir", str(mnist_dir), "--out", str(out)]) == 0
    assert (out / "robustness_pgd.png").is_file() and (out / "robustness_pgd.json").is_file()
    assert "plain" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["robustness", str(mnist_run), "--eps", "2"])
    assert e.value.code == 2 and "out of range" in capsys.readouterr().err.strip().splitlines()[-1]


def _one_eps_at_a_time(model, x, y, attack, eps_list, steps, targeted, batch_size, seed=0):
    """The robustness table as it was computed before the stacked version: for each ε, batches of
    `batch_size` through the public one-ε `fgsm`/`pgd` (PGD seeded seed + first index of the
    batch), then an fp32 prediction."""
    t = robustness.target_classes(y) if targeted else y
    out = []
    for e in eps_list:
        correct = hit = 0
        for i in range(0, len(x), batch_size):
            xb, yb, tb = x[i:i + batch_size], y[i:i + batch_size], t[i:i + batch_size]
            if e == 0:
                xa = xb
            elif attack == "fgsm":
                xa = robustness.fgsm(model, xb, tb, e, targeted=targeted)
            else:
                xa = robustness.pgd(model, xb, tb, e, alpha=2.5 * e / steps, steps=steps, targeted=targeted,
                                    seed=seed + i)
            with torch.inference_mode():
                pred = model.eval()(xa).argmax(1)
            correct += int((pred == yb).sum())
            hit += int((pred == tb).sum())
        out.append((correct / len(x), hit / len(x)))
    return out


@pytest.mark.parametrize("attack,targeted", [("fgsm", False), ("pgd", False), ("pgd", True)])
def test_stacked_fp32_table_equals_the_one_eps_at_a_time_loop(models, mnist_split, attack, targeted):
    from cnnlab.data import to_float
    x, y = to_float(mnist_split.test_x[:60]), mnist_split.test_y[:60]
    eps = [0, 0.05, 0.1, 0.2]
    res = robustness.robustness(models, x, y, attack, eps_list=eps, steps=5, targeted=targeted, batch_size=25,
                                precision="fp32", chunk=32)      # chunks that cut across ε and batches
    for name, m in models.items():
        got = [(r["accuracy"], r.get("success_rate", r["accuracy"] if not targeted else None))
               for r in res.table if r["model"] == name]
        want = _one_eps_at_a_time(m, x, y, attack, eps, 5, targeted, 25)
        assert [g[0] for g in got] == [w[0] for w in want]
        if targeted:
            assert [g[1] for g in got] == [w[1] for w in want]
    assert res.params["precision"] == "fp32"


@pytest.mark.slow          # ~9 s: six ε, FGSM and PGD, in both precisions
def test_bf16_robustness_is_within_0_02_of_fp32_and_strong_pgd_still_wins(models, mnist_split):
    from cnnlab.data import to_float
    x, y = to_float(mnist_split.test_x[:300]), mnist_split.test_y[:300]
    eps = [0, 0.05, 0.1, 0.15, 0.2, 0.3]
    for attack in ("fgsm", "pgd"):
        exact = robustness.robustness(models, x, y, attack, eps_list=eps, steps=10, precision="fp32")
        fast = robustness.robustness(models, x, y, attack, eps_list=eps, steps=10, precision="bf16")
        assert fast.params["precision"] == "bf16"
        for a, b in zip(exact.table, fast.table):
            assert (a["model"], a["eps"]) == (b["model"], b["eps"])
            assert abs(a["accuracy"] - b["accuracy"]) <= 0.02 + 1e-9, (attack, a, b)   # 6 of 300 images
    # control: the bf16 attack is still an attack: ε = 0.3 PGD leaves < 5% (clean is > 95%)
    for name in models:
        rows = {r["eps"]: r["accuracy"] for r in fast.table if r["model"] == name}
        assert rows[0] > 0.95 and rows[0.3] < 0.05, (name, rows)


def test_cli_robustness_is_fp32_by_default_and_equals_the_single_attack_reference(mnist_run, mnist_dir, mnist_split,
                                                                                    tmp_path, capsys):
    """Numbers a peer can reproduce: the command computes in fp32 unless asked for bf16, and its
    table equals the public one-ε `fgsm` loop on the same weights."""
    import json

    from cnnlab.runs import open_run
    assert main(["robustness", str(mnist_run), "--attack", "fgsm", "--eps", "0", "0.1", "0.2", "--n", "300",
                 "--data-dir", str(mnist_dir), "--out", str(tmp_path / "r"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["params"]["precision"] == "fp32"
    model = open_run(mnist_run).load_model()
    x, y = mnist_split.test_x[:300].float() / 255, mnist_split.test_y[:300]
    ref = _one_eps_at_a_time(model, x, y, "fgsm", [0.0, 0.1, 0.2], 1, False, 1000)
    assert [r["accuracy"] for r in got["table"]] == pytest.approx([a for a, _ in ref], abs=1e-9)
