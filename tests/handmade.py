"""A network whose input gradient is known by hand, for oracle tests of the gradient ascent."""

from __future__ import annotations

import torch
from torch import nn


class Linear28(nn.Module):
    """logits = W · (X / 255) + b on the flattened image: dlogits[t]/dX = W[t] / 255 exactly."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(784, 10)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(10, 784, generator=g) * 0.01)
            self.fc.bias.copy_(torch.randn(10, generator=g) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))
