"""The loop's bookkeeping: its position and running means (LoopState, saved with every
checkpoint), the metrics.csv rows it logs and reads back, and the per-step time summary."""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CnnlabError, RunError
from .evaluation import EvalResult

# Steps whose seconds are recorded one by one (run.json's timing.step_time_s, step_times.npy): the
# first 500,000 (a 15-epoch run has 5,865), which keeps state.json under 10 MB.
MAX_TIMED_STEPS = 500_000
FILTER_LAYERS = ("conv1", "conv2")   # whose weights filters_by_epoch.safetensors holds, per epoch

METRIC_FIELDS = ("kind", "epoch", "step", "images_seen", "lr", "train_loss", "train_error",
                 "val_loss", "val_error", "val_acc", "train_time_s", "elapsed_s")


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
