"""Training: the loop reads top to bottom like a recipe; evaluation is its own function.

Speed without changing the function: the whole split lives in memory as uint8 tensors (no
DataLoader), bf16 autocast where the hardware has it (AVX-512-bf16/AMX CPUs, CUDA), channels_last
memory format, and max-pool before ReLU (see model.py). All randomness is a function of
(seed, epoch, step), so a run resumed from its saved state continues exactly.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import hashlib
import io
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save as save_safetensors
from torch import nn

from . import fused
from .allocator import keep_freed_memory
from .config import TrainConfig
from .data import Split, load_split, to_float
from .errors import CnnlabError, ConfigError, RunError, TrainingError
from .model import Net, load_weights, read_safetensors, save_weights, state_tensors
from .output import OutputDir
from .runs import RUN_FORMAT, RunLock, check_out_dir, hardware, versions

# Steps whose seconds are recorded one by one (run.json's timing.step_time_s, step_times.npy): the
# first 500,000 (a 15-epoch run has 5,865), which keeps state.json under 10 MB.
MAX_TIMED_STEPS = 500_000
FILTER_LAYERS = ("conv1", "conv2")   # whose weights filters_by_epoch.safetensors holds, per epoch

METRIC_FIELDS = ("kind", "epoch", "step", "images_seen", "lr", "train_loss", "train_error",
                 "val_loss", "val_error", "val_acc", "train_time_s", "elapsed_s")


# ---------------------------------------------------------------------------------------------
# Device and precision
# ---------------------------------------------------------------------------------------------

def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA GPU "
                          f"(torch {torch.__version__}); install a CUDA build of torch or use --device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps was asked for but Apple's MPS backend is not available")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX-512-bf16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise ConfigError("--precision fp16 is for GPUs; on a CPU use bf16 or fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_bf16():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

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
    images (13 MB in fp32, half in bf16) stay in cache. Measured on the 2-core EPYC (bf16, 10,000
    validation images, 3 alternating rounds): 0.18–0.19 s at 128, 0.20–0.27 s at 256, 0.50–0.56 s
    at 500, identical predictions; contiguous weights or batches of 2500 were 4–9× slower still.
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


# ---------------------------------------------------------------------------------------------
# Small pieces of the loop
# ---------------------------------------------------------------------------------------------

def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def augment(x: torch.Tensor, cfg: TrainConfig, step: int) -> torch.Tensor:
    """Random shift (±max_shift px) and rotation (±max_rotate°) per image, one affine resample.

    Used on training batches only; the network is unchanged. Seeded by (seed, step) so that a
    resumed run sees the same augmented images.
    """
    n = x.shape[0]
    g = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(cfg.max_rotate)
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * cfg.max_shift * 2 / 28   # px -> [-1,1] units
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def make_optimizer(model: Net, cfg: TrainConfig, total_steps: int):
    # No weight decay on biases and batch-norm parameters (the usual AdamW practice).
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    # The fused kernel updates each tensor in one pass instead of a dozen foreach passes over the
    # 784k fc1 weights: 7.7–8.0 against 8.5–9.0 ms per batch-128 step (BENCHMARKS.md, part 11).
    one_pass = next(model.parameters()).device.type in ("cpu", "cuda")
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, fused=one_pass or None)
    # OneCycleLR divides by (pct_start × total_steps − 1), zero when the warm-up is exactly one step
    # (pct_start 0.25 of 4 steps). A billionth of a step more gives the schedule's limit from above:
    # the learning rates of any slightly longer warm-up (pct_start 0.2500001 of 4 steps).
    pct_start = cfg.pct_start * (1 + 1e-9) if cfg.pct_start * total_steps - 1 == 0 else cfg.pct_start
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps,
                                                pct_start=pct_start, anneal_strategy="cos",
                                                div_factor=25.0, final_div_factor=1e3)
    return opt, sched


@contextlib.contextmanager
def on_stop_signals(handler):
    """`handler(signum, frame)` for SIGINT and SIGTERM inside the block; the caller's handlers
    come back after it. Outside the main thread signals stay with the caller."""
    old = {}
    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, handler)
    except ValueError:
        pass
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class StopFlag:
    """Set by SIGINT/SIGTERM: the loop finishes the current step, saves, and stops."""

    def __init__(self):
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    @contextlib.contextmanager
    def installed(self):
        def handler(signum, frame):
            if self.signal is not None:        # a second Ctrl-C: stop right away
                raise KeyboardInterrupt
            self.signal = signum
        with on_stop_signals(handler):
            yield self


# ---------------------------------------------------------------------------------------------
# The loop's state: everything a resumed run needs besides the tensors (saved as JSON)
# ---------------------------------------------------------------------------------------------

@dataclass
class LoopState:
    """Where the loop is. Saved in state/state.json (under "pos") with every checkpoint of the
    loop, so that `--resume` continues exactly."""
    epoch: int = 0                  # epochs completed
    batch: int = 0                  # batches done in the current epoch
    step: int = 0                   # optimizer steps done
    images: int = 0                 # training images seen
    best_val_acc: float = -1.0      # best validation accuracy so far (0..1)
    best_epoch: float = 0           # when it was reached, in passes over the training set
    best_step: int = 0
    train_time_s: float = 0.0       # seconds inside training steps (evaluation and saving excluded)
    epoch_time_s: float = 0.0       # the same, for the current epoch
    epoch_times_s: list[float] = field(default_factory=list)
    run_loss: float = 0.0           # sums since the last logged point: loss × images, errors, images
    run_err: float = 0.0
    run_n: int = 0
    # Seconds of every optimizer step after the first `step_times_from` steps, up to
    # MAX_TIMED_STEPS of them (rounded to 0.1 µs, finer than the float32 step_times.npy keeps;
    # ~18 bytes a step in state.json). `step_times_from` is nonzero only for a run resumed from a
    # state saved before steps were timed.
    step_times_from: int = 0
    step_times_s: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        return cls(**d)

    def record_step(self, loss: float, errors: float, n: int, seconds: float) -> None:
        self.run_loss += loss * n
        self.run_err += errors
        self.run_n += n
        self.images += n
        self.batch += 1
        self.step += 1
        self.train_time_s += seconds
        self.epoch_time_s += seconds
        if len(self.step_times_s) < MAX_TIMED_STEPS:
            self.step_times_s.append(round(seconds, 7))

    def end_epoch(self) -> None:
        self.epoch_times_s.append(self.epoch_time_s)
        self.epoch_time_s = 0.0
        self.epoch += 1
        self.batch = 0

    def metrics_row(self, kind: str, val: EvalResult, lr: float, steps_per_epoch: int, elapsed_s: float) -> dict:
        """One metrics.csv row; starts the next running means."""
        # epoch as a fraction of passes over the training set (1.25 = a quarter into the second)
        row = {"kind": kind, "epoch": round(self.step / steps_per_epoch, 4), "step": self.step,
               "images_seen": self.images, "lr": lr,
               "train_loss": self.run_loss / max(self.run_n, 1),
               "train_error": self.run_err / max(self.run_n, 1),
               "val_loss": val.loss, "val_error": val.error, "val_acc": val.accuracy,
               "train_time_s": self.train_time_s, "elapsed_s": elapsed_s}
        self.run_loss = self.run_err = 0.0
        self.run_n = 0
        return row

    def improves(self, row: dict) -> bool:
        """True (and remembered) when this row's validation accuracy is the best so far."""
        if row["val_acc"] > self.best_val_acc:
            self.best_val_acc, self.best_epoch, self.best_step = row["val_acc"], row["epoch"], row["step"]
            return True
        return False


# A hook into the loop, for tests and instrumentation: called once per step, after the loss of
# the batch is computed and before the update, with the loop state (`state.step` = steps done
# before this one) and the loss. Returning a tensor replaces the loss (a test injects a NaN this
# way); returning None keeps it. Side effects (a signal to this process) land inside that step.
StepCallback = Callable[[LoopState, torch.Tensor], "torch.Tensor | None"]


# ---------------------------------------------------------------------------------------------
# The run directory: every file the loop writes, behind one object (safetensors + JSON; never pickle)
# ---------------------------------------------------------------------------------------------

class RunWriter:
    """Writes a run directory: config, resumable state, the best checkpoint, metrics, run.json and
    figures. Without a directory (`out=None`) it keeps the best weights in memory instead.

    Every file goes through one `OutputDir` (output.py): atomic, never through a link, recorded
    in the folder's manifest; only files the manifest lists are ever deleted."""

    def __init__(self, out: Path | None, directory: OutputDir | None = None, figures: bool = True):
        self.out = out
        self.figures = figures
        self.dir = directory if directory is not None or out is None else OutputDir(out)
        self._best_in_memory: dict[str, torch.Tensor] = {}
        # conv1's and conv2's weights at initialization and after every epoch ("conv1.epoch0", ...),
        # copies taken outside the computation; None when a resumed state predates them (unknown)
        self.filters: dict[str, torch.Tensor] | None = {}

    def _write(self, name: str, data: bytes) -> None:
        assert self.dir is not None
        self.dir.write_bytes(name, data)

    def has_checkpoint(self) -> bool:
        if self.out is None:
            return bool(self._best_in_memory)
        return (self.out / "model.safetensors").is_file()

    def start(self, cfg: TrainConfig, resume: bool, model: Net, opt, sched,
              log: Callable[[str], None]) -> tuple[LoopState, list[dict]]:
        """A fresh state (stale files of an earlier run removed), or the saved one on resume."""
        if self.out is None or not resume:
            self.filters = {}
            self.snapshot_filters(model, 0)
        if self.out is None:
            return LoopState(), []
        out, d = self.out, self.dir
        assert d is not None
        if not resume:
            # only files this folder's manifest says cnnlab wrote are removed
            for stale in ("state/state.json", "run.json", "model.safetensors", "metrics.csv", "step_times.npy",
                          "filters_by_epoch.safetensors"):
                d.remove(stale)
            d.write_json("state/config.json", cfg.to_dict())
            return LoopState(), []
        pos, saved_filters = _load_state(out, model, opt, sched)
        state = _loop_state(pos, cfg, sched, out)
        self.filters = _saved_filters(saved_filters, state, model, out)
        metrics = read_metrics(out / "metrics.csv", RunError) if (out / "metrics.csv").exists() else []
        # Rows logged after the saved state (a process killed mid-epoch) are logged again.
        metrics = [m for m in metrics if m["step"] <= state.step]
        log(f"resuming {out} at epoch {state.epoch + 1}, step {state.step}")
        return state, metrics

    def snapshot_filters(self, model: Net, epoch: int) -> None:
        """Keep a copy of each FILTER_LAYERS weight as it is after `epoch` epochs (0: initialized)."""
        if self.filters is not None:
            for layer in FILTER_LAYERS:
                w = getattr(model, layer).weight.detach()
                self.filters[f"{layer}.epoch{epoch}"] = w.to("cpu", torch.float32, copy=True).contiguous()

    def write_records(self, state: LoopState) -> None:
        """step_times.npy (float32 seconds of the timed steps, in order) and
        filters_by_epoch.safetensors (when the whole history is known)."""
        if self.out is None:
            return
        assert self.dir is not None
        buf = io.BytesIO()
        np.save(buf, np.asarray(state.step_times_s, dtype=np.float32), allow_pickle=False)
        self._write("step_times.npy", buf.getvalue())
        if self.filters:
            meta = {"format": "cnnlab.filters_by_epoch", "layers": ",".join(FILTER_LAYERS),
                    "epochs": str(state.epoch)}
            self._write("filters_by_epoch.safetensors", save_safetensors(self.filters, metadata=meta))
        else:       # resumed from a state without them: a file from before would be partial
            self.dir.remove("filters_by_epoch.safetensors")

    def keep_best(self, model: Net) -> None:
        if self.out is not None:
            self._save_weights(model)
        else:
            self._best_in_memory = {k: v.clone() for k, v in model.state_dict().items()}

    def write_metrics(self, rows: list[dict]) -> None:
        if self.out is None:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
        self._write("metrics.csv", buf.getvalue().encode("utf-8"))

    def save_state(self, model: Net, opt, sched, state: LoopState) -> None:
        if self.out is None:
            return
        tensors = {f"model.{k}": v for k, v in state_tensors(model).items()}
        tensors.update({f"filters.{k}": v for k, v in (self.filters or {}).items()})
        opt_state = opt.state_dict()
        for pid, st in opt_state["state"].items():
            for k, v in st.items():
                tensors[f"opt.{pid}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous().clone()
        assert self.dir is not None
        # The tensors go to a file named after the step, and state.json (written last) names that
        # file and its hash: a process killed between the two writes leaves the previous
        # state.json pointing at the previous, still present, tensors. Only then are older tensor
        # files removed.
        name = f"state-{state.step}.safetensors"
        blob = save_safetensors(tensors)
        self._write(f"state/{name}", blob)
        meta = {"tensors": name, "tensors_sha256": hashlib.sha256(blob).hexdigest(), "pos": state.to_dict(),
                "sched": {k: v for k, v in sched.state_dict().items() if k != "anneal_func"},
                "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in opt_state["param_groups"]]}
        self.dir.write_json("state/state.json", meta)     # written last: it marks the state complete
        for old in sorted(self.dir.owned()):      # only tensor files cnnlab wrote here are removed
            if old.startswith("state/state") and old.endswith(".safetensors") and old != f"state/{name}":
                self.dir.remove(old)

    def keep_weights_if_none(self, model: Net) -> None:
        """Stopped before the first evaluation: keep the current weights so the run opens. No
        metrics row and no change to the saved state, so that --resume continues exactly as if
        never stopped."""
        if self.out is not None and not (self.out / "model.safetensors").exists():
            self._save_weights(model)

    def _save_weights(self, model: Net) -> None:
        assert self.dir is not None
        save_weights(model, self.dir.target("model.safetensors"))
        self.dir.record("model.safetensors")

    def restore_best(self, model: Net, cfg: TrainConfig, device: torch.device) -> None:
        """Load the best checkpoint's weights into `model`."""
        if self.out is None:
            if self._best_in_memory:
                model.load_state_dict(self._best_in_memory)
        elif (self.out / "model.safetensors").exists():
            best = load_weights(self.out / "model.safetensors", batch_norm=cfg.batch_norm, device=device)
            model.load_state_dict(best.state_dict())

    def finish(self, info: dict, metrics: list[dict], model: Net, split: Split, cfg: TrainConfig) -> None:
        """run.json, curves.png and predictions.png."""
        if self.out is None:
            return
        assert self.dir is not None
        self.dir.write_json("run.json", info)
        if not self.figures:
            return
        from .figures import plot_curves, plot_predictions  # matplotlib (~0.3 s) only when a run is written
        self.dir.save_figure(plot_curves(metrics, title=_title(cfg, info)), "curves.png", dpi=110)
        self.dir.save_figure(plot_predictions(model, split, seed=cfg.seed), "predictions.png", dpi=110)


def _check_state(out: Path) -> tuple[dict, Path]:
    """state.json and the tensors file it names, checked (before any data is loaded)."""
    from .schema import MAX_STATE_BYTES, read_bytes_limited, read_json
    try:
        # Both reads are size-limited before anything is parsed or hashed (a 3 GB sparse file or
        # a link to /dev/zero is refused at once), and state.json's nesting depth is bounded.
        meta = read_json(out / "state" / "state.json", RunError, what="state.json")
        name = meta.get("tensors", "state.safetensors")
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
            raise ValueError(f"state.json names the tensors file {str(name)[:60]!r}, not a file in state/")
        tensors_path = out / "state" / name
        blob = read_bytes_limited(tensors_path, MAX_STATE_BYTES, RunError, "training state file")
        if "tensors_sha256" in meta and hashlib.sha256(blob).hexdigest() != meta["tensors_sha256"]:
            raise ValueError(f"{tensors_path.name} does not have the hash state.json records")
        for key in ("pos", "sched", "param_groups"):
            meta[key]
        if not isinstance(meta["pos"], dict):
            raise ValueError("pos must be an object")
        # the loop position's types, and metrics.csv, before any data is loaded (their agreement
        # with the run's size is checked once the split is known: _loop_state)
        _upgrade_pos(meta["pos"])
        _same_shape(meta["pos"], _pos_shape(meta["pos"]), out, "pos")
        if (out / "metrics.csv").exists():
            read_metrics(out / "metrics.csv", RunError)
    except RunError as e:
        if str(e).startswith("cannot resume"):
            raise
        raise RunError(f"cannot resume {out}: {str(e)[:300]}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise RunError(f"cannot resume {out}: the saved training state is damaged ({str(e)[:200]}); "
                       f"train again with --overwrite") from None
    return meta, tensors_path


def _load_state(out: Path, model: Net, opt, sched) -> tuple[dict, dict[str, torch.Tensor]]:
    """Loads the saved weights, optimizer and schedule; returns the loop position (unchecked:
    _loop_state) and the saved filter snapshots ("conv1.epoch0": tensor, ...)."""
    meta, tensors_path = _check_state(out)
    try:
        tensors, _ = read_safetensors(tensors_path)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, CnnlabError) as e:
        raise RunError(f"cannot resume {out}: the saved training state is damaged ({str(e)[:200]}); "
                       f"train again with --overwrite") from None
    sd = opt.state_dict()
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    fresh_sched = {k: v for k, v in sched.state_dict().items() if k != "anneal_func"}
    # A hand-edited state.json (pos.step "11", sched.total_steps "lots", a group's lr a word) is
    # one line naming the field, never a TypeError from deep inside torch.
    _same_shape(meta["param_groups"], [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]],
                out, "param_groups")
    _same_shape(meta["sched"], fresh_sched, out, "sched")
    if meta["sched"]["total_steps"] != fresh_sched["total_steps"]:
        _damaged(out, f"sched.total_steps is {meta['sched']['total_steps']}, but this run has "
                      f"{fresh_sched['total_steps']} steps")
    for g, saved in zip(sd["param_groups"], meta["param_groups"]):
        g.update(saved)
    sd["state"] = state
    opt.load_state_dict(sd)
    # Saved moments are contiguous; the fused AdamW kernel walks a moment and its parameter as
    # one flat buffer, so each moment must have its parameter's layout (channels_last conv weights).
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    opt.state[p][k] = torch.empty_like(p).copy_(v)
    sched_state = sched.state_dict()
    sched_state.update(meta["sched"])
    sched.load_state_dict(sched_state)
    return meta["pos"], {k[8:]: v for k, v in tensors.items() if k.startswith("filters.")}


def _saved_filters(saved: dict[str, torch.Tensor], state: LoopState, model: Net,
                   out: Path) -> dict[str, torch.Tensor] | None:
    """The filter snapshots of a saved state: one per layer for epochs 0..state.epoch, each the
    layer's shape. None when the state has none (saved before they were kept: history unknown)."""
    if not saved:
        return None
    want = {f"{layer}.epoch{e}": tuple(getattr(model, layer).weight.shape)
            for layer in FILTER_LAYERS for e in range(state.epoch + 1)}
    if set(saved) != set(want):
        missing, extra = sorted(set(want) - set(saved)), sorted(set(saved) - set(want))
        _damaged(out, f"the filter snapshots are not those of epochs 0..{state.epoch} "
                      f"(missing {', '.join(missing[:3]) or 'none'}; unexpected {', '.join(extra[:3]) or 'none'})")
    for k, shape in want.items():
        v = saved[k]
        if tuple(v.shape) != shape or v.dtype != torch.float32 or not bool(torch.isfinite(v).all()):
            _damaged(out, f"the filter snapshot {k} is not a finite float32 tensor of shape {list(shape)}")
    return {k: saved[k].contiguous() for k in sorted(want, key=_filter_order)}


def _filter_order(key: str) -> tuple[int, int]:
    layer, epoch = key.split(".epoch")
    return int(epoch), FILTER_LAYERS.index(layer)      # the order a run adds them in


def _damaged(out: Path, what: str):
    raise RunError(f"cannot resume {out}: the saved training state is damaged (state/state.json: "
                   f"{what}); restore it or train again with --overwrite")


def _same_shape(saved: Any, fresh: Any, out: Path, where: str) -> None:
    """`saved` (from state.json) has the structure and JSON types of `fresh` (what this torch
    writes): the same keys, list lengths, and kinds of value (an int may stand for a float)."""
    if isinstance(fresh, dict):
        if not isinstance(saved, dict):
            _damaged(out, f"{where} must be an object")
        for k, v in fresh.items():
            if k not in saved:
                _damaged(out, f"{where}.{k} is missing")
            _same_shape(saved[k], v, out, f"{where}.{k}")
    elif isinstance(fresh, (list, tuple)):
        if not isinstance(saved, list) or len(saved) != len(fresh):
            _damaged(out, f"{where} must be a list of {len(fresh)}")
        for i, (a, b) in enumerate(zip(saved, fresh)):
            _same_shape(a, b, out, f"{where}[{i}]")
    elif isinstance(fresh, bool) or fresh is None:
        if type(saved) is not type(fresh) and not (fresh is None and saved is None):
            if fresh is None:
                return              # optional values (e.g. a group's `maximize` default) stay free
            _damaged(out, f"{where} must be true or false, not {str(saved)[:40]!r}")
    elif isinstance(fresh, (int, float)):
        ok = isinstance(saved, (int, float)) and not isinstance(saved, bool) and math.isfinite(saved)
        if not ok or (isinstance(fresh, int) and not isinstance(saved, int)):
            _damaged(out, f"{where} must be {'an integer' if isinstance(fresh, int) else 'a number'}, "
                          f"not {str(saved)[:40]!r}")
    elif isinstance(fresh, str) and not isinstance(saved, str):
        _damaged(out, f"{where} must be a string, not {str(saved)[:40]!r}")


def _pos_shape(pos: dict) -> dict:
    """What a saved loop position must look like: LoopState's fields, each typed by its
    annotation (best_epoch defaults to the int 0), its lists as long as the saved ones."""
    fresh = LoopState().to_dict()
    typed = {f.name: 0.0 if f.type == "float" else fresh[f.name] for f in dataclasses.fields(LoopState)}
    for key in ("epoch_times_s", "step_times_s"):
        saved = pos.get(key)
        typed[key] = [0.0] * (len(saved) if isinstance(saved, list) else 0)
    return typed


def _upgrade_pos(pos: Any) -> None:
    """A position saved before per-step times were recorded (neither step_times field): resumable,
    with the times of its steps so far unknown (`step_times_from` = the steps already done)."""
    if (isinstance(pos, dict) and "step_times_s" not in pos and "step_times_from" not in pos
            and type(pos.get("step")) is int):
        pos.update(step_times_from=pos["step"], step_times_s=[])


def _loop_state(pos: Any, cfg: TrainConfig, sched, out: Path) -> LoopState:
    """The saved loop position, every field typed, and consistent with the run's size."""
    if not isinstance(pos, dict):
        _damaged(out, "pos must be an object")
    fresh = LoopState().to_dict()
    unknown = sorted(set(pos) - set(fresh))
    if unknown:
        _damaged(out, f"pos has unknown field(s) {', '.join(unknown)}")
    _same_shape(pos, _pos_shape(pos), out, "pos")
    state = LoopState.from_dict(pos)
    total = sched.total_steps
    per = total // cfg.epochs
    if not (0 <= state.step <= total and 0 <= state.epoch <= cfg.epochs and 0 <= state.batch < per
            and state.step == state.epoch * per + state.batch and state.images >= 0
            and len(state.epoch_times_s) == state.epoch):
        _damaged(out, f"pos (epoch {state.epoch}, batch {state.batch}, step {state.step}) does not "
                      f"fit a run of {cfg.epochs} epochs of {per} steps")
    if not (0 <= state.step_times_from <= state.step
            and len(state.step_times_s) == min(state.step - state.step_times_from, MAX_TIMED_STEPS)):
        _damaged(out, f"pos.step_times_s holds {len(state.step_times_s)} step times, but steps "
                      f"{state.step_times_from + 1}..{state.step} were timed")
    if any(t < 0 for t in state.step_times_s):
        _damaged(out, "pos.step_times_s holds a negative time")
    if state.step != sched.last_epoch:
        _damaged(out, f"pos.step {state.step} disagrees with the schedule's step {sched.last_epoch}")
    return state


MAX_METRICS_BYTES = 64 * 1024 * 1024     # ~100 bytes a row: far above any run's metrics.csv


def read_metrics(path: Path, error: type[CnnlabError] = RunError) -> list[dict]:
    """metrics.csv, every row checked: the header is METRIC_FIELDS, `kind` is step/epoch, `step`
    and `images_seen` are integers, the rest numbers (empty = NaN). Anything else (an edited step
    "eight", a missing column, random bytes) is one line of `error` naming the file and line."""
    from .schema import read_bytes_limited
    raw = read_bytes_limited(path, MAX_METRICS_BYTES, error, "metrics file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path} is not a cnnlab metrics file (not UTF-8 text); restore it or train "
                    f"again with --overwrite") from None
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if header is None or tuple(header) != METRIC_FIELDS:
            missing = [f for f in METRIC_FIELDS if f not in (header or [])]
            raise ValueError(f"line 1: the header must be {','.join(METRIC_FIELDS)}"
                             + (f" (missing {', '.join(missing)})" if missing else ""))
        out = []
        for line, r in enumerate(reader, start=2):
            if len(r) != len(METRIC_FIELDS):
                raise ValueError(f"line {line}: {len(r)} values, expected {len(METRIC_FIELDS)}")
            d: dict[str, Any] = {}
            for k, v in zip(METRIC_FIELDS, r):
                if k == "kind":
                    if v not in ("step", "epoch"):
                        raise ValueError(f"line {line}: kind {v[:20]!r} is not step or epoch")
                    d[k] = v
                elif k in ("step", "images_seen"):
                    if not v.isdigit() or len(v) > 18:
                        raise ValueError(f"line {line}: {k} {v[:20]!r} is not a whole number")
                    d[k] = int(v)
                else:
                    try:
                        d[k] = float(v) if v != "" else float("nan")
                    except ValueError:
                        raise ValueError(f"line {line}: {k} {v[:20]!r} is not a number") from None
            out.append(d)
    except (ValueError, csv.Error) as e:
        raise error(f"{path} is damaged ({str(e)[:160]}); restore it or train again with --overwrite") from None
    return out


# ---------------------------------------------------------------------------------------------
# The training run
# ---------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    out: Path | None
    model: Net
    config: TrainConfig
    info: dict                                   # what run.json holds
    metrics: list[dict] = field(default_factory=list)
    interrupted: bool = False
    signal: int | None = None                    # SIGINT / SIGTERM when a signal stopped it
    # conv1/conv2 weights at initialization and after each epoch ("conv1.epoch0", ...; what
    # filters_by_epoch.safetensors holds); None for a resumed run whose saved state predates them
    filters_by_epoch: dict[str, torch.Tensor] | None = None

    @property
    def test_accuracy(self) -> float:
        return self.info["test"]["accuracy"]


def train(cfg: TrainConfig, out: str | Path | None = None, *, split: Split | None = None,
          data_dir: str | None = None, resume: bool = False, overwrite: bool = False,
          progress: bool | None = None, log: Callable[[str], None] | None = None,
          stop_at_step: int | None = None, callback: StepCallback | None = None,
          figures: bool = True) -> TrainResult:
    """Train the network of the assignment with `cfg`; write the run to `out` (if given).

    `figures=False` leaves curves.png and predictions.png out of the run directory (~1.3 s with
    matplotlib's import; the report draws its own from metrics.csv and the model).

    `stop_at_step` stops after that global step as if Ctrl-C had been pressed (for tests);
    `callback` is called once per step (see `StepCallback`).
    """
    log = log or (lambda s: print(s, file=sys.stderr))
    out = Path(out) if out is not None else None
    if out is not None and out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a directory")
    # The lock comes first: a second process must not even look at (or clean) a directory that
    # another one is training into. (RunLock refuses a linked or foreign-looking .lock unopened.)
    lock = RunLock(out) if out is not None else contextlib.nullcontext()
    with lock:
        directory = None
        if out is not None:
            created = isinstance(lock, RunLock) and lock.created
            try:
                check_out_dir(out, overwrite=overwrite, resume=resume)
                directory = OutputDir(out, overwrite=overwrite, adopt=resume and not OutputDir(out).has_manifest())
                # A folder holding files cnnlab did not write is refused (unless --overwrite); a
                # run being resumed is ours (one written before manifests existed is adopted).
                directory.prepare(check_foreign=not resume, ignore=(".lock",) if created else ())
            except CnnlabError:
                if isinstance(lock, RunLock):
                    lock.discard()          # refused: leave the folder as it was found
                raise
            if created:
                directory.record(".lock")
            if resume:
                cfg = resume_config(out, cfg, log)
                _check_state(out)
        return _run(cfg, RunWriter(out, directory, figures), split, data_dir, resume, progress, log, stop_at_step, callback)


# Fields that may differ on --resume: where and how fast the run computes, not what it computes
# (each changes only the rounding: the order of float sums, or conv1 in fp32 rather than bf16).
# They are applied (and said so); any other difference is refused, naming the fields.
RESUME_SAFE_FIELDS = ("device", "threads", "fused_kernels")


def resume_config(out: Path, cfg: TrainConfig, log: Callable[[str], None] | None = None) -> TrainConfig:
    """The saved configuration of the run in `out`, with `cfg`'s RESUME_SAFE_FIELDS (device,
    threads, fused_kernels); RunError naming every other field where `cfg` differs from it."""
    saved = _saved_config(out)
    differ = [f.name for f in dataclasses.fields(TrainConfig)
              if getattr(cfg, f.name) != getattr(saved, f.name) and f.name not in RESUME_SAFE_FIELDS]
    if differ:
        shown = ", ".join(f"{_flag(k, getattr(cfg, k))} (saved: {_flag_value(getattr(saved, k))})" for k in differ)
        raise RunError(f"--resume continues {out} exactly as it was saved, but these settings differ "
                       f"from it: {shown}; drop them, or train a new run with another --out")
    safe = {k: getattr(cfg, k) for k in RESUME_SAFE_FIELDS if getattr(cfg, k) != getattr(saved, k)}
    if safe and log is not None:
        log("resuming with " + ", ".join(_flag(k, v) for k, v in safe.items())
            + " (saved: " + ", ".join(_flag_value(getattr(saved, k)) for k in safe) + "): safe to change")
    return saved.replace(**safe)


def _flag(name: str, value: Any) -> str:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else "--no-" + name.replace("_", "-")
    return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:g}" if isinstance(value, float) else str(value)


def saved_config(out: Path) -> TrainConfig:
    """The configuration a resumable run in `out` was started with (state/config.json)."""
    return _saved_config(Path(out))


def _saved_config(out: Path) -> TrainConfig:
    path = out / "state" / "config.json"
    from .schema import config_from_dict, read_json
    try:
        return config_from_dict(read_json(path, RunError, what="config.json"), str(path))
    except RunError as e:
        raise RunError(f"cannot resume {out}: {path} is missing or damaged ({e})") from None


def _training_split(cfg: TrainConfig, split: Split | None, data_dir: str | None, log) -> Split:
    if split is None:
        return load_split(cfg.dataset, data_dir, cfg.val_size, cfg.split_seed, cfg.train_subset, log=log)
    if cfg.train_subset and len(split.train_x) > cfg.train_subset:
        # the same first-N rule as data.make_split, applied to a split the caller loaded in full
        split = dataclasses.replace(split, train_x=split.train_x[:cfg.train_subset],
                                    train_y=split.train_y[:cfg.train_subset],
                                    info={**split.info, "train_size": cfg.train_subset, "train_subset": cfg.train_subset})
    return split


def validate(model: Net, split: Split, precision: str) -> EvalResult:
    """Loss and accuracy on the validation images (the model's mode is restored afterwards)."""
    return evaluate(model, split.val_x, split.val_y, precision=precision)


def _run(cfg: TrainConfig, writer: RunWriter, split: Split | None, data_dir: str | None, resume: bool,
         progress: bool | None, log, stop_at_step: int | None, callback: StepCallback | None) -> TrainResult:
    # --- set up: device, precision, seeds, data, model, optimizer, state --------------------
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    keep_freed_memory()      # no page faults on every step's tensors (see cnnlab.allocator)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    split = _training_split(cfg, split, data_dir, log)
    split.to(device)
    n_train = len(split.train_x)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    log_every = cfg.log_every or max(1, steps_per_epoch // 4)
    memory_format = torch.channels_last if (cfg.channels_last and device.type != "mps") else torch.contiguous_format

    model = Net(batch_norm=cfg.batch_norm, mean=split.mean, std=split.std).to(device)
    model = model.to(memory_format=memory_format)  # type: ignore[call-overload]  # torch's stubs omit memory_format
    model.fused_kernels, kernels = _kernel_choice(cfg, device)
    opt, sched = make_optimizer(model, cfg, total_steps)
    state, metrics = writer.start(cfg, resume, model, opt, sched, log)

    show = progress if progress is not None else sys.stderr.isatty()
    stop = StopFlag()
    wall0 = time.perf_counter()
    bar = _Progress(show, total_steps)
    bar.advance_to(state.step)
    interrupted = False
    perm = None

    # --- the loop: batch, loss, update, bookkeeping, maybe validate, maybe save --------------
    with stop.installed():
        model.train()
        while state.epoch < cfg.epochs:
            t0 = time.perf_counter()
            if perm is None:
                perm = epoch_permutation(n_train, cfg.seed, state.epoch).to(device)
            idx = perm[state.batch * cfg.batch_size:(state.batch + 1) * cfg.batch_size]
            x, y = to_float(split.train_x[idx]), split.train_y[idx]
            if cfg.augment:
                x = augment(x, cfg, state.step)
            x = x.contiguous(memory_format=memory_format)

            with autocast(device, precision):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            if callback is not None and (replaced := callback(state, loss)) is not None:
                loss = replaced
            # The one CPU-GPU sync point of a step: loss and error count come back together.
            loss_value, errors = torch.stack([loss.detach(), (logits.argmax(1) != y).sum().to(loss.dtype)]).tolist()
            if not math.isfinite(loss_value):
                bar.close()
                writer.write_metrics(metrics)
                raise TrainingError(_diverged_message(loss_value, state, writer, precision))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()

            state.record_step(loss_value, errors, len(y), time.perf_counter() - t0)
            bar.step(loss_value)
            end_of_epoch = state.batch == steps_per_epoch
            if end_of_epoch:
                state.end_epoch()
                writer.snapshot_filters(model, state.epoch)
                perm = None
            # A logged point within half an interval of the epoch's end is skipped: the end-of-epoch
            # point follows a few steps later (each validation pass costs ~0.3–0.5 s on a CPU).
            if end_of_epoch or (state.step % log_every == 0
                                and steps_per_epoch - state.batch >= (log_every + 1) // 2):
                val = validate(model, split, precision)
                row = state.metrics_row("epoch" if end_of_epoch else "step", val, sched.get_last_lr()[0],
                                        steps_per_epoch, time.perf_counter() - wall0)
                metrics.append(row)
                if state.improves(row):
                    writer.keep_best(model)
                writer.write_metrics(metrics)
                bar.note(f"val acc {val.accuracy * 100:.2f}%")
            stopping = bool(stop) or (stop_at_step is not None and state.step >= stop_at_step)
            if end_of_epoch or stopping:
                writer.save_state(model, opt, sched, state)
            if stopping:
                writer.keep_weights_if_none(model)
                interrupted = state.step < total_steps
                break
    bar.close()

    # --- the end: best checkpoint on the test set, run.json, figures ------------------------
    writer.restore_best(model, cfg, device)
    model.eval()
    t0 = time.perf_counter()
    test = evaluate(model, split.test_x, split.test_y, precision=precision)
    eval_time = time.perf_counter() - t0
    # The best checkpoint was validated when it was kept: its row in `metrics` holds the numbers
    # (no second validation pass). Only a run stopped before its first logged point has none.
    best_row = next((m for m in metrics if m["step"] == state.best_step), None) if state.best_val_acc >= 0 else None
    best_val = (state.best_val_acc, best_row["val_loss"]) if best_row else _val_numbers(validate(model, split, precision))

    info = {
        "format": RUN_FORMAT,
        "status": "interrupted" if interrupted else "complete",
        "config": cfg.to_dict(),
        "split": split.info,
        "normalization": {"mean": split.mean, "std": split.std},
        "versions": versions(),
        "hardware": {**hardware(device), "kernels": kernels},
        "device": str(device),
        "precision": precision,
        "steps": state.step, "steps_per_epoch": steps_per_epoch, "epochs_done": state.epoch,
        "timing": {"train_time_s": state.train_time_s, "epoch_times_s": state.epoch_times_s,
                   "wall_time_s": time.perf_counter() - wall0, "test_eval_s": eval_time,
                   "images_per_s": state.step * cfg.batch_size / max(state.train_time_s, 1e-9),
                   "step_time_s": step_time_summary(state.step_times_s, steps_per_epoch, state.step_times_from)},
        "best": {"epoch": state.best_epoch, "step": state.best_step, "val_accuracy": best_val[0],
                 "val_loss": best_val[1]},
        "test": {"accuracy": test.accuracy, "loss": test.loss, "errors": int((test.predictions != split.test_y.cpu()).sum())},
        "params": sum(p.numel() for p in model.parameters()),
    }
    writer.write_records(state)
    writer.finish(info, metrics, model, split, cfg)
    model.fused_kernels = False        # the caller's network computes as a loaded one does
    model.cpu()
    split.to("cpu")
    return TrainResult(writer.out, model, cfg, info, metrics, interrupted, stop.signal if interrupted else None,
                       dict(writer.filters) if writer.filters is not None else None)


def step_time_summary(times: Any, steps_per_epoch: int, first: int = 0) -> dict[str, Any]:
    """run.json's timing.step_time_s: median, 10th and 90th percentile and mean of the seconds of
    the timed optimizer steps (`times`, in order, after the first `first` steps), their count n,
    the first timed step (1-based), and the medians of the first epoch's steps and of the rest
    (None when no step of that part was timed). One slow stretch moves the mean, not the median."""
    t = np.asarray(times, dtype=np.float64)
    idx = first + np.arange(t.size)                    # 0-based global step of each time
    part = lambda m: float(np.median(t[m])) if m.any() else None  # noqa: E731
    if t.size == 0:
        return {"n": 0, "first_step": first + 1, "median": None, "p10": None, "p90": None, "mean": None,
                "first_epoch_median": None, "rest_median": None, "file": "step_times.npy"}
    p10, med, p90 = (float(v) for v in np.percentile(t, [10, 50, 90]))
    return {"n": int(t.size), "first_step": first + 1, "median": med, "p10": p10, "p90": p90,
            "mean": float(t.mean()), "first_epoch_median": part(idx < steps_per_epoch),
            "rest_median": part(idx >= steps_per_epoch), "file": "step_times.npy"}


def _diverged_message(loss_value: float, state: LoopState, writer: RunWriter, precision: str) -> str:
    """What happened, what is kept, and what to try: only advice that applies (no "--precision
    fp32" when fp32 is in use, no checkpoint claimed when none was saved)."""
    where = f" in {writer.out}" if writer.out else ""
    if writer.has_checkpoint():
        kept = f"The last good checkpoint (step {state.best_step}) is kept{where}"
    else:
        kept = "No checkpoint was saved (it diverged before the first evaluation)"
    advice = "a smaller --lr" + (" or --precision fp32" if precision != "fp32" else "")
    return (f"the training loss became {loss_value} at step {state.step + 1} (epoch {state.epoch + 1}); "
            f"stopped. {kept}. Try {advice}")


def _kernel_choice(cfg: TrainConfig, device: torch.device) -> tuple[bool, str]:
    """Whether the training steps run cnnlab.fused's kernels for conv1's and pool2's blocks, and
    what run.json says of it (which ran, and why)."""
    if not cfg.fused_kernels:
        why = "fused_kernels is off"
    elif device.type != "cpu":
        why = f"they are for CPUs, this ran on {device.type}"
    elif cfg.batch_norm:
        why = "batch-norm sits between each convolution and its pool"
    else:   # built (or found in the cache) and checked now, not inside the first timed step
        return fused.kernel() is not None, fused.describe()
    return False, f"torch's operators ({why})"


def _val_numbers(val: EvalResult) -> tuple[float, float]:
    return val.accuracy, val.loss


def _title(cfg: TrainConfig, info: dict) -> str:
    return (f"{'batch-norm' if cfg.batch_norm else 'plain'} network · seed {cfg.seed} · "
            f"{info['precision']} on {info['device']} · test acc {info['test']['accuracy'] * 100:.2f}%")


class _Progress:
    """A rich progress bar over all steps, with live loss; silent when not on a terminal."""

    def __init__(self, show: bool, total: int):
        self.p = None
        self.extra = ""
        if show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self.p = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
            self.p.start()
            self.task = self.p.add_task("train", total=total, info="")
        self.loss = float("nan")

    def advance_to(self, n: int) -> None:
        if self.p:
            self.p.update(self.task, completed=n)

    def step(self, loss: float) -> None:
        self.loss = loss if math.isnan(self.loss) else 0.9 * self.loss + 0.1 * loss
        if self.p:
            self.p.update(self.task, advance=1, info=f"loss {self.loss:.4f} {self.extra}")

    def note(self, s: str) -> None:
        self.extra = s

    def close(self) -> None:
        if self.p:
            self.p.stop()
