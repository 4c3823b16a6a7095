"""Beyond the assignment: FGSM and PGD robustness curves of one or more networks."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..config import EPS_FGSM, EPS_PGD, PGD_STEPS
from ..device import autocast, resolve_precision
from ..errors import ConfigError
from ._shared import CPU_CHUNK, AnalysisResult, check_int, check_number, chunk_for, few_threads, frozen
from .verdict import Verdict

if TYPE_CHECKING:
    import numpy.typing as npt
    from matplotlib.figure import Figure


def _check_eps(eps) -> float:
    e = check_number("eps", eps, 0.0)
    if e > 1:
        raise ConfigError(f"eps is on the [0, 1] pixel scale and must be ≤ 1; got {e:g}")
    return e


def _check_xy(model, x: torch.Tensor, y) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.dtype == torch.uint8:
        raise ConfigError("x must be float pixels in [0, 1], not uint8 (use cnnlab.data.to_float)")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise ConfigError(f"x must be [N, 1, 28, 28] pixels in [0, 1]; got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all() or float(x.min()) < 0 or float(x.max()) > 1:
        raise ConfigError("x must hold finite pixels in [0, 1]")
    y = torch.as_tensor(y).long().reshape(-1)
    if len(y) != len(x):
        raise ConfigError(f"{len(y)} labels for {len(x)} images")
    if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
        raise ConfigError("labels/targets must be classes 0..9")
    dev = next(model.parameters()).device
    return x.to(dev, torch.float32), y.to(dev)


def _loss_grad(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇ₓ of the summed cross-entropy (each image's own gradient: eval mode, no mixing)."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    return g


def fgsm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | npt.ArrayLike, eps: float,
         targeted: bool = False) -> torch.Tensor:
    """One signed-gradient step of size `eps` ([0, 1] scale), clipped to [0, 1].

    Untargeted: `y` are the true labels and the step increases their loss. Targeted: `y` are the
    target classes and the step decreases their loss. Returns the adversarial images (detached).
    """
    eps = _check_eps(eps)
    x, y = _check_xy(model, x, y)
    with frozen(model), few_threads(len(x) if x.device.type == "cpu" else 10**9):
        g = _loss_grad(model, x, y)
    sign = -1.0 if targeted else 1.0
    return (x + sign * eps * g.sign()).clamp(0.0, 1.0).detach()


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | npt.ArrayLike, eps: float, alpha: float | None = None, steps: int = PGD_STEPS,
        targeted: bool = False, random_start: bool = True, seed: int = 0) -> torch.Tensor:
    """Projected gradient descent in the L∞ ball of radius `eps` ([0, 1] scale).

    Each step: x ← x ± alpha·sign(∇ₓ L) (+ untargeted, − targeted), then projection onto
    [x₀ − eps, x₀ + eps] and clipping to [0, 1]. `alpha` defaults to 2.5·eps/steps. With
    `random_start`, x starts at x₀ + U(−eps, eps) (clipped), drawn from a generator seeded with
    `seed`, so the same call gives the same images.
    """
    eps = _check_eps(eps)
    steps = check_int("steps", steps, 1)
    alpha = 2.5 * eps / steps if alpha is None else check_number("alpha", alpha, 0.0)
    seed = check_int("seed", seed, 0)
    x0, y = _check_xy(model, x, y)
    sign = -1.0 if targeted else 1.0
    xa = x0.clone()
    if random_start and eps > 0:
        g = torch.Generator().manual_seed(seed)
        noise = torch.empty(x0.shape, dtype=torch.float32).uniform_(-eps, eps, generator=g)
        xa = (x0 + noise.to(x0.device)).clamp(0.0, 1.0)
    with frozen(model), few_threads(len(x0) if x0.device.type == "cpu" else 10**9):
        for _ in range(steps):
            grad = _loss_grad(model, xa, y)
            xa = xa + sign * alpha * grad.sign()
            xa = torch.min(torch.max(xa, x0 - eps), x0 + eps).clamp(0.0, 1.0).detach()
    return xa


def target_classes(y: torch.Tensor) -> torch.Tensor:
    """The targets of targeted attacks in `robustness`: (true label + 1) mod 10, deterministic."""
    return (y + 1) % 10


@dataclass
class RobustnessResult(AnalysisResult):
    """Accuracy against ε. `table`: one row per (model, ε) with accuracy and, for targeted
    attacks, the fraction classified as the target (success)."""
    attack: str
    targeted: bool
    eps_list: list[float]
    table: list[dict]
    params: dict
    n: int
    seconds: float = 0.0
    stem: ClassVar[str] = "robustness"

    def models(self) -> list[str]:
        return list(dict.fromkeys(r["model"] for r in self.table))

    def to_dict(self) -> dict:
        return {"attack": self.attack, "targeted": self.targeted, "norm": "Linf",
                "pixel_scale": "[0, 1]", "n_images": self.n, "eps": self.eps_list, "params": self.params,
                "seconds": round(self.seconds, 2), "table": self.table}

    def table_text(self) -> str:
        names = self.models()
        head = "eps    " + "".join(f"{n[:22]:>24}" for n in names)
        lines = [head]
        for e in self.eps_list:
            cells = []
            for n in names:
                r = next(r for r in self.table if r["model"] == n and r["eps"] == e)
                c = f"{r['accuracy'] * 100:.2f}%"
                if self.targeted:
                    c += f" (hit {r['success_rate'] * 100:.1f}%)"
                cells.append(f"{c:>24}")
            lines.append(f"{e:<7g}" + "".join(cells))
        return "\n".join(lines)

    def figure(self) -> Figure:
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6.2, 4))
        for i, name in enumerate(self.models()):
            rows = [r for r in self.table if r["model"] == name]
            e = [r["eps"] for r in rows]
            ax.plot(e, [100 * r["accuracy"] for r in rows], "o-", color=f"C{i}", label=f"{name}: accuracy")
            if self.targeted:
                ax.plot(e, [100 * r["success_rate"] for r in rows], "s--", color=f"C{i}", alpha=0.6,
                        label=f"{name}: classified as target")
        kind = "targeted (target = label+1 mod 10)" if self.targeted else "untargeted"
        extra = f", {self.params['steps']} steps, α = {self.params['alpha_per_eps']:.3g}·ε" if self.attack == "pgd" else ""
        ax.set(xlabel="ε (L∞, pixels on the [0, 1] scale; 0.1 ≈ 25 grey levels)", ylabel="% of test images",
               title=f"{self.attack.upper()} {kind}{extra}\n{self.n} test images", ylim=(-2, 102))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig


# Stacked rows per attack step: `chunk_for` (128 on a CPU). 128 images × 32 × 28 × 28 conv1
# activations (6.4 MB in bf16) stay in cache through the forward and backward; chunks of 500 took
# twice as long and the old one-ε batches of 1000 ×6–7 as long (benchmarks/FINDINGS-p11.md § 4).


def robustness(models: Mapping[str, torch.nn.Module], x: torch.Tensor, y: torch.Tensor | npt.ArrayLike, attack: str = "fgsm",
               eps_list: Sequence[float] | None = None, steps: int = PGD_STEPS, alpha_per_eps: float | None = None,
               targeted: bool = False, batch_size: int = 1000, seed: int = 0, precision: str = "auto",
               chunk: int | None = None, kernels: Mapping[str, bool] | None = None) -> RobustnessResult:
    """Accuracy of each model (name → Net) on `x` ([N, 1, 28, 28] in [0, 1]) under `attack`
    ("fgsm" or "pgd") at each ε in `eps_list` ([0, 1] scale). Each model is attacked with its own
    gradients (white box). Targeted attacks aim at (y + 1) mod 10 and also report the fraction
    classified as that target. PGD: `steps` iterations of α = alpha_per_eps·ε (default 2.5/steps),
    random start drawn per `batch_size` images from a generator seeded `seed + i` (i = the batch's
    first image), as `pgd(…, seed=seed + i)` on that batch would draw it.

    Every (ε, image) pair is one row of a stacked batch; rows are attacked `chunk` at a time
    (default 128 on a CPU) on a channels_last copy of each network, in `precision`: "auto" (bf16
    where the hardware has it natively, else fp32), "bf16" or "fp32". In fp32 the table equals
    the one-ε-at-a-time `fgsm`/`pgd` loop (tested); bf16 computes the same attack with bf16
    activations and gradients, which flips the sign of a few near-zero gradient pixels and moves
    an accuracy by ≤ 0.02 (measured: 0.5 points at most on 1000 images for one pair of networks,
    1.3 points, 4 of 300 images, at FGSM ε = 0.2 for another; tested at 0.02 on 300).
    `kernels`: name → whether that model's bf16 attack steps may run cnnlab's C kernels (a run
    trained with fused_kernels=False says no: pass its config's value); default yes for all."""
    if attack not in ("fgsm", "pgd"):
        raise ConfigError(f"attack must be 'fgsm' or 'pgd'; got {attack!r}")
    if not models:
        raise ConfigError("give at least one model")
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"precision {precision!r} is not understood: give auto, fp32 or bf16")
    eps_list = [_check_eps(e) for e in (eps_list if eps_list is not None else (EPS_FGSM if attack == "fgsm" else EPS_PGD))]
    if not eps_list:
        raise ConfigError("eps_list is empty")
    steps = check_int("steps", steps, 1)
    a_per = 2.5 / steps if alpha_per_eps is None else check_number("alpha_per_eps", alpha_per_eps, 0.0, lo_open=True)
    batch_size = check_int("batch_size", batch_size, 1)
    if chunk is not None:
        chunk = check_int("chunk", chunk, 1)
    first = next(iter(models.values()))
    x, y = _check_xy(first, x, y)
    x, y = x.cpu(), y.cpu()
    t_all = target_classes(y) if targeted else y
    n = len(x)
    nz = [e for e in eps_list if e > 0]                # ε = 0 rows are the clean images: no attack
    E = torch.tensor(nz, dtype=torch.float32).repeat_interleave(n).view(-1, 1, 1, 1)
    X0, Y, T = x.repeat(len(nz), 1, 1, 1), y.repeat(len(nz)), t_all.repeat(len(nz))
    start = X0
    if attack == "pgd" and nz:
        noise = []
        for e in nz:
            for i in range(0, n, batch_size):
                g = torch.Generator().manual_seed(seed + i)
                noise.append(torch.empty((min(batch_size, n - i), *x.shape[1:])).uniform_(-e, e, generator=g))
        start = (X0 + torch.cat(noise)).clamp(0.0, 1.0)
    sign = -1.0 if targeted else 1.0
    table = []
    prec, step_rows = "fp32", chunk or CPU_CHUNK
    t0 = time.perf_counter()
    for name, model in models.items():
        dev = next(model.parameters()).device
        prec = resolve_precision(precision, dev)
        prec = prec if prec in ("fp32", "bf16") else "fp32"
        fmt = torch.channels_last if dev.type == "cpu" else torch.contiguous_format
        step_rows = chunk or chunk_for(dev)
        net = copy.deepcopy(model).to(memory_format=fmt)  # type: ignore[call-overload]  # torch's stubs omit memory_format
        # bf16 attack steps on a CPU run conv1's and pool2's blocks as cnnlab's C kernels (the
        # predictions stay on torch's operators, so the ε = 0 row is evaluate()'s; fp32 stays exact
        # against the one-attack-at-a-time functions).
        allowed = True if kernels is None else bool(kernels.get(name, True))
        net.fused_kernels = allowed and prec == "bf16" and dev.type == "cpu" and hasattr(net, "fused_kernels")
        correct = torch.zeros(len(nz), dtype=torch.long)
        hit = torch.zeros(len(nz), dtype=torch.long)

        def predict(xa: torch.Tensor, net: torch.nn.Module = net, dev: torch.device = dev, prec: str = prec,
                    fmt: torch.memory_format = fmt, step_rows: int = step_rows) -> torch.Tensor:
            with torch.inference_mode(), autocast(dev, prec):
                return torch.cat([net(xa[i:i + step_rows].to(dev).contiguous(memory_format=fmt)).argmax(1).cpu()
                                  for i in range(0, len(xa), step_rows)])

        with frozen(net):
            clean = predict(x) if len(nz) < len(eps_list) else torch.empty(0, dtype=torch.long)
            for i in range(0, len(X0), step_rows):
                x0, tb, er = X0[i:i + step_rows].to(dev), T[i:i + step_rows].to(dev), E[i:i + step_rows].to(dev)
                xa = start[i:i + step_rows].to(dev)
                for _ in range(1 if attack == "fgsm" else steps):
                    xg = xa.detach().contiguous(memory_format=fmt).requires_grad_(True)
                    with autocast(dev, prec):
                        logits = net(xg)
                    (grad,) = torch.autograd.grad(F.cross_entropy(logits.float(), tb, reduction="sum"), xg)
                    if attack == "fgsm":
                        xa = (x0 + sign * er * grad.sign()).clamp(0.0, 1.0)
                    else:
                        xa = xa + sign * (a_per * er) * grad.sign()
                        xa = torch.min(torch.max(xa, x0 - er), x0 + er).clamp(0.0, 1.0)
                pred = predict(xa.detach())
                row = torch.div(torch.arange(i, i + len(pred)), n, rounding_mode="floor")
                correct.index_add_(0, row, (pred == Y[i:i + step_rows]).long())
                hit.index_add_(0, row, (pred == T[i:i + step_rows]).long())
        k = 0
        for e in eps_list:
            if e > 0:
                c, h = int(correct[k]), int(hit[k])
                k += 1
            else:
                c, h = int((clean == y).sum()), int((clean == t_all).sum())
            r: dict[str, Any] = {"model": name, "eps": e, "accuracy": c / n}
            if targeted:
                r["success_rate"] = h / n
            table.append(r)
    params: dict[str, Any] = {"batch_size": batch_size, "seed": seed, "precision": prec, "chunk": step_rows}
    if attack == "pgd":
        params.update(steps=steps, alpha_per_eps=a_per, random_start=True)
    return RobustnessResult(attack, bool(targeted), eps_list, table, params, n, time.perf_counter() - t0)


FRAGILE = 0.5   # the attack leaves less than half of the clean accuracy
ROBUST = 0.9    # the attack leaves at least 90% of the clean accuracy

ROBUSTNESS_RULE = (
    f"At the ε shown, for each model: retained = accuracy under PGD / accuracy at ε = 0. 'fragile' when "
    f"retained < {FRAGILE:g} for every model, 'robust' when retained ≥ {ROBUST:g} for every model, otherwise "
    "'partly robust'. PGD is 'stronger' than FGSM when its accuracy is at most FGSM's for every model.")


def _acc(table: Sequence[Mapping], model: str, eps: float) -> float:
    for r in table:
        if r["model"] == model and abs(float(r["eps"]) - eps) < 1e-12:
            return float(r["accuracy"])
    raise ConfigError(f"no accuracy for model {model!r} at eps {eps:g}: run the attack with eps 0 and {eps:g}")


def robustness_verdict(fgsm_table: Sequence[Mapping], pgd_table: Sequence[Mapping], eps: float) -> Verdict:
    """4.1 "How much does an L∞-bounded perturbation lower test accuracy?" from the `table` of an
    FGSM and a PGD `robustness()` result (rows: model, eps, accuracy; both need ε = 0 and `eps`)."""
    models = list(dict.fromkeys(r["model"] for r in pgd_table))
    if not models:
        raise ConfigError("the PGD table is empty")
    rows, parts = {}, []
    for m in models:
        clean, fg, pg = _acc(pgd_table, m, 0.0), _acc(fgsm_table, m, eps), _acc(pgd_table, m, eps)
        rows[m] = {"clean": clean, "fgsm": fg, "pgd": pg, "retained_pgd": pg / clean if clean > 0 else 0.0}
        parts.append(f"{m}: {100 * clean:.1f}% clean, {100 * fg:.1f}% under FGSM, {100 * pg:.1f}% under PGD")
    kept = [r["retained_pgd"] for r in rows.values()]
    key = "fragile" if max(kept) < FRAGILE else "robust" if min(kept) >= ROBUST else "partly robust"
    stronger = all(r["pgd"] <= r["fgsm"] for r in rows.values())
    head = {"fragile": f"Fragile: at ε = {eps:g} ({eps * 255:.0f} grey levels per pixel) PGD leaves every network "
                       f"less than half of its clean accuracy",
            "robust": f"Robust: at ε = {eps:g} ({eps * 255:.0f} grey levels per pixel) PGD leaves every network "
                      f"at least {100 * ROBUST:.0f}% of its clean accuracy",
            "partly robust": f"Partly robust: at ε = {eps:g} ({eps * 255:.0f} grey levels per pixel) PGD leaves "
                             + (f"every network between half and {100 * ROBUST:.0f}% of its clean accuracy"
                                if min(kept) >= FRAGILE and max(kept) < ROBUST else
                                f"the networks different shares of their clean accuracy (from {100 * min(kept):.0f}% "
                                f"to {100 * max(kept):.0f}%)")}[key]
    text = (f"{head} ({'; '.join(parts)}). The iterative attack is "
            + ("stronger than" if stronger else "not stronger than") + " the one-step one for "
            + ("every" if stronger else "some") + " model.")
    numbers = {"eps": eps, "grey_levels": eps * 255, "models": rows, "fragile_below": FRAGILE,
               "robust_from": ROBUST, "pgd_stronger": stronger}
    return Verdict("4.1", key, text, ROBUSTNESS_RULE, numbers)
