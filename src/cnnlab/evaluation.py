"""Evaluation: loss, accuracy and predictions of a network on a set of images."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import to_float
from .device import autocast
from .model import Net


@dataclass
class EvalResult:
    loss: float          # mean cross-entropy, nats
    accuracy: float      # fraction correct, 0..1
    predictions: torch.Tensor
    probs: torch.Tensor | None = None

    @property
    def error(self) -> float:
        return 1.0 - self.accuracy


def evaluate(model: Net, x: torch.Tensor, y: torch.Tensor, *, precision: str = "fp32",
             batch_size: int = 128, keep_probs: bool = False) -> EvalResult:
    """Loss and accuracy of `model` on images x (uint8 or [0,1] floats, [N,1,28,28]) and labels y.

    Batches of 128 with the model and inputs in channels_last: the conv1 activations of 128
    images (13 MB in fp32, half in bf16) stay in cache; larger batches or contiguous weights were
    several times slower with identical predictions (BENCHMARKS.md § Measurements behind defaults).
    """
    device = next(model.parameters()).device
    if device.type != "mps" and not _is_channels_last(model):
        # A private channels_last copy: the caller's model keeps its memory format.
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit memory_format
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        return _evaluate(model, x, y, device, precision, batch_size, keep_probs, was_training)


def _is_channels_last(model: nn.Module) -> bool:
    return all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)


def _evaluate(model, x, y, device, precision, batch_size, keep_probs, was_training) -> EvalResult:
    total_loss, preds, probs = 0.0, [], []
    for i in range(0, len(x), batch_size):
        xb = to_float(x[i:i + batch_size].to(device))
        yb = y[i:i + batch_size].to(device)
        if device.type != "mps":
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = model(xb)
        logits = logits.float()
        total_loss += F.cross_entropy(logits, yb, reduction="sum").item()
        preds.append(logits.argmax(1).cpu())
        if keep_probs:
            probs.append(logits.softmax(1).cpu())
    model.train(was_training)
    pred = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)
    acc = (pred == y.cpu()).float().mean().item() if len(y) else float("nan")
    return EvalResult(total_loss / max(len(x), 1), acc, pred, torch.cat(probs) if keep_probs else None)
