"""The gradient ascent on a class score: one loop, two ways to make the image from what it moves.

Class models (§3.1, plain and regularized), targeted fakes (§3.2) and the natural class models
(3.1.3) all climb

    C = logits[target](X) − penalty

with the network frozen (`_shared.frozen`): only the parameters z that make the image move. What
differs is z, and it is the `param` argument of `ascend`:

  Pixels           z = X itself (0–255); penalty β·MSE(X, source); X ← X + step_size·dC/dX, then the
                   optional regularizers (L2 decay, a blur every k steps, clip), the gradient taken
                   at a randomly shifted copy of X (jitter)
  PcaCoefficients  z = w, whitened PCA coefficients; X(w) = clip(mean + w·(scale·basis), 0, 255);
                   penalty λ·½‖w‖², λ weakened for the images the network still doubts; Adam on w

`ascend` records C, the target's logit and probability and the predicted class at X_0 … X_steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import BLUR_SIGMA, NOISE_MEAN, SIGMA
from ..errors import ConfigError
from ._shared import device_of, few_threads, frozen


def initial_noise(n: int, sigma: float = SIGMA, seed: int = 0, mean: float = NOISE_MEAN) -> torch.Tensor:
    """[n, 28, 28] copies of ONE seeded noise image, mean + sigma·N(0, 1) on the 0–255 scale.

    Every target starts from the same noise, so a class model depends only on (seed, target):
    running one target alone gives the same image as that target's row of a full batch.
    """
    g = torch.Generator().manual_seed(int(seed))
    x = mean + sigma * torch.randn(28, 28, generator=g, dtype=torch.float64)
    return x.float().expand(n, 28, 28).clone()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [N, 28, 28] (radius 3σ, edges replicated)."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    h = F.pad(x.unsqueeze(1), (r, r, r, r), mode="replicate")
    h = F.conv2d(h, k.view(1, 1, 1, -1))
    h = F.conv2d(h, k.view(1, 1, -1, 1))
    return h.squeeze(1)


@dataclass
class Trace:
    images: torch.Tensor     # final X, [T, 28, 28], 0–255 scale
    cost: np.ndarray         # [steps+1, T]
    logit: np.ndarray        # [steps+1, T]  logits[target]
    prob: np.ndarray         # [steps+1, T]  softmax probability of the target
    pred: np.ndarray         # [steps+1, T]  predicted class
    mse: np.ndarray          # [steps+1, T]  MSE to the source (grey levels²); zeros without one
    initial: torch.Tensor    # X_0, [T, 28, 28], 0–255 scale


class Parametrization:
    """How the image X is made from the parameters z that the ascent moves, what C subtracts from
    the target's logit, and how z takes one step uphill. One object serves one `ascend` call."""

    def start(self, device: torch.device) -> None:
        """Put z on `device`; called once, inside the frozen model's context, before any step."""
        raise NotImplementedError

    def image(self) -> torch.Tensor:
        """X(z), [T, 28, 28] on the 0–255 scale, differentiable in z."""
        raise NotImplementedError

    def network_input(self, x: torch.Tensor, climbing: bool) -> torch.Tensor:
        """What the network is fed (0–255) for the gradient at X; X itself unless overridden."""
        return x

    def penalty(self, x: torch.Tensor) -> torch.Tensor:
        """[T] float32, subtracted from logits[target] in C."""
        raise NotImplementedError

    def recorded(self, logit: torch.Tensor, penalty: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """C and the MSE to a source (grey levels²) as the trace records them, [T] float64 each;
        `logit`: logits[target] of X itself."""
        return (logit - penalty).double(), torch.zeros(len(logit), dtype=torch.float64, device=logit.device)

    def climb(self, cost: torch.Tensor, k: int, steps: int, prob: np.ndarray) -> None:
        """One step uphill on C [T] (a graph back to z) at step k of `steps`; `prob`: the target's
        probability at X_k."""
        raise NotImplementedError


class Pixels(Parametrization):
    """z = X (0–255), from `x0` [T, 28, 28]. C = logits[target] − β·MSE(X, source) (`beta`: one β or
    one per target; no penalty without `source`), X ← X + step_size·dC/dX, then in this order
    X ← (1 − l2)·X, a Gaussian blur of `blur_sigma` pixels every `blur_every` steps, a clip to
    [0, 255]. `jitter` j: the gradient is taken at X shifted by one seeded (dx, dy) in [−j, j]²
    for the whole batch; the trace records X itself."""

    def __init__(self, x0: torch.Tensor, *, step_size: float, source: torch.Tensor | None = None,
                 beta: float | np.ndarray = 0.0, clip: bool = False, l2: float = 0.0, blur_every: int = 0,
                 blur_sigma: float = BLUR_SIGMA, jitter: int = 0, seed: int = 0) -> None:
        self.x = x0
        self.step_size, self.clip, self.l2 = step_size, clip, l2
        self.blur_every, self.blur_sigma, self.jitter = blur_every, blur_sigma, jitter
        self.source, self.beta_in = source, beta
        self.shifts = torch.Generator().manual_seed(int(seed) + 1)

    def start(self, device: torch.device) -> None:
        self.x = self.x.to(device=device, dtype=torch.float32).clone()
        self.beta = torch.as_tensor(np.asarray(self.beta_in, dtype=np.float64), device=device)   # scalar or [T]
        self.src = self.source.to(device=device, dtype=torch.float32) if self.source is not None else None

    def image(self) -> torch.Tensor:
        return self.x.requires_grad_(True)

    def network_input(self, x: torch.Tensor, climbing: bool) -> torch.Tensor:
        if not (self.jitter and climbing):
            return x
        dx, dy = (int(v) for v in torch.randint(-self.jitter, self.jitter + 1, (2,), generator=self.shifts))
        return torch.roll(x, shifts=(dy, dx), dims=(1, 2))

    def mse(self, x: torch.Tensor) -> torch.Tensor:
        if self.src is None:
            return torch.zeros(len(x), device=x.device)
        return ((x - self.src) ** 2).mean(dim=(1, 2))

    def penalty(self, x: torch.Tensor) -> torch.Tensor:
        return self.beta.float() * self.mse(x)

    def recorded(self, logit: torch.Tensor, penalty: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mse = self.mse(x).detach().double()
        return logit.double() - self.beta * mse, mse            # C in float64, unlike the float32 C climbed

    def climb(self, cost: torch.Tensor, k: int, steps: int, prob: np.ndarray) -> None:
        (d,) = torch.autograd.grad(cost.sum(), self.x)          # images independent in eval mode
        with torch.no_grad():
            x = self.x.detach() + self.step_size * d
            if self.l2:
                x.mul_(1.0 - self.l2)                            # decay toward black (0)
            if self.blur_every and (k + 1) % self.blur_every == 0:
                x = gaussian_blur(x, self.blur_sigma)
            if self.clip:
                x.clamp_(0.0, 255.0)
        self.x = x


class PcaCoefficients(Parametrization):
    """z = w [T, K], whitened coefficients on a PCA basis, from `w0`: X(w) = clip(mean +
    w @ scale_basis, 0, 255) (`mean` [784], `scale_basis` [K, 784], grey levels). C = logits[target]
    − λ·½‖w‖², λ = `prior_weight` per image; from step steps // 2 on, every `adapt_every` steps, the
    images whose target probability is below `min_prob` have their λ multiplied by `adapt_factor`
    (none with `min_prob` None). Adam on w with learning rate `lr`; `lam` holds the final λ."""

    def __init__(self, w0: np.ndarray, mean: np.ndarray, scale_basis: np.ndarray, *, lr: float,
                 prior_weight: float, min_prob: float | None, adapt_every: int, adapt_factor: float) -> None:
        self.w0, self.mean0, self.sb0 = w0, mean, scale_basis
        self.lr, self.prior_weight = lr, prior_weight
        self.min_prob, self.adapt_every, self.adapt_factor = min_prob, adapt_every, adapt_factor

    def start(self, device: torch.device) -> None:
        self.mean = torch.as_tensor(self.mean0, dtype=torch.float32, device=device)
        self.sb = torch.as_tensor(self.sb0, dtype=torch.float32, device=device)
        self.w = torch.as_tensor(self.w0, dtype=torch.float32, device=device).requires_grad_(True)
        self.lam = torch.full((len(self.w),), self.prior_weight, device=device)
        self.opt = torch.optim.Adam([self.w], lr=self.lr)      # only w: the network's parameters are not in it

    def image(self) -> torch.Tensor:
        return (self.mean + self.w @ self.sb).clamp(0.0, 255.0).reshape(-1, 28, 28)    # grey levels

    def penalty(self, x: torch.Tensor) -> torch.Tensor:
        return self.lam * 0.5 * (self.w ** 2).sum(1)

    def climb(self, cost: torch.Tensor, k: int, steps: int, prob: np.ndarray) -> None:
        if self.min_prob and k >= steps // 2 and k % self.adapt_every == 0:
            # second half: where the network is still below min_prob, weaken that image's prior
            # (this step's gradient still uses the λ its C was computed with)
            doubt = torch.as_tensor(prob < self.min_prob, device=self.lam.device)
            self.lam = torch.where(doubt, self.lam * self.adapt_factor, self.lam)
        self.opt.zero_grad(set_to_none=True)
        (-cost.sum()).backward()                                 # images are independent
        self.opt.step()


def ascend(model: nn.Module, targets: list[int], param: Parametrization, *, steps: int) -> Trace:
    """`steps` steps of gradient ascent on C = logits[target] − param.penalty(X), all targets in one
    batch, the model frozen. Records C, the target's logit and probability, the predicted class and
    the MSE to a source at X_0 … X_steps (the network fed X/255: it takes [0, 1] pixels)."""
    device = device_of(model)
    T = len(targets)
    idx = torch.tensor(targets, device=device)
    rows = torch.arange(T, device=device)
    hist = {k: np.zeros((steps + 1, T), dtype=np.float64) for k in ("cost", "logit", "prob", "mse")}
    hist["pred"] = np.zeros((steps + 1, T), dtype=np.int64)

    with frozen(model), few_threads(T if device.type == "cpu" else 10**9):
        param.start(device)
        initial = param.image().detach().cpu().clone()
        if len(initial) != T:
            raise ConfigError(f"the ascent starts from {len(initial)} images for {T} targets")
        for k in range(steps + 1):
            climbing = k < steps
            x = param.image()
            xin = param.network_input(x, climbing)
            logits = model((xin / 255.0).unsqueeze(1))
            penalty = param.penalty(x)
            cost = logits[rows, idx] - penalty
            if xin is not x:                                     # fed a shifted copy: record X itself
                with torch.no_grad():
                    seen = model((x / 255.0).unsqueeze(1))
            else:
                seen = logits.detach()
            logit_t = seen[rows, idx]
            recorded_cost, mse = param.recorded(logit_t.detach(), penalty.detach(), x.detach())
            hist["cost"][k] = recorded_cost.cpu().numpy()
            hist["logit"][k] = logit_t.double().cpu().numpy()
            hist["prob"][k] = seen.double().softmax(1)[rows, idx].cpu().numpy()
            hist["pred"][k] = seen.argmax(1).cpu().numpy()
            hist["mse"][k] = mse.cpu().numpy()
            if not climbing:                                     # X_steps: record only
                break
            param.climb(cost, k, steps, hist["prob"][k])
        images = x.detach().cpu()
    return Trace(images, hist["cost"], hist["logit"], hist["prob"], hist["pred"], hist["mse"], initial)
