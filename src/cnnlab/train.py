"""Training: the loop reads top to bottom like a recipe; evaluation is its own function.

Speed without changing the function: the whole split lives in memory as uint8 tensors (no
DataLoader), bf16 autocast where the hardware has it (AVX-512-bf16/AMX CPUs, CUDA), channels_last
memory format, and max-pool before ReLU (see model.py). All randomness is a function of
(seed, epoch, step), so a run resumed from its saved state continues exactly.
"""

import contextlib
import dataclasses
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import fused
from .allocator import keep_freed_memory
from .checkpoint import CheckedState, RunWriter, check_state, resume_config, saved_config
from .config import TrainConfig
from .data import Split, load_split, to_float
from .device import autocast, resolve_device, resolve_precision
from .errors import CnnlabError, RunError, TrainingError
from .evaluation import EvalResult, evaluate
from .metrics import LoopState, step_time_summary
from .model import Net
from .output import OutputDir
from .run_record import RUN_FORMAT, Best, RunInfo, RunResults, TestScore, Timing
from .runs import RunLock, check_out_dir, hardware, versions

__all__ = ["train", "evaluate", "TrainResult", "StepCallback", "saved_config"]

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


def make_optimizer(model: Net, cfg: TrainConfig,
                   total_steps: int) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.OneCycleLR]:
    # No weight decay on biases and batch-norm parameters (the usual AdamW practice).
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    # The fused kernel updates each tensor in one pass instead of a dozen foreach passes over the
    # 784k fc1 weights (a faster step: BENCHMARKS.md § Part 11).
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
def on_stop_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
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

    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    @contextlib.contextmanager
    def installed(self) -> Iterator["StopFlag"]:
        def handler(signum: int, frame: Any) -> None:
            if self.signal is not None:        # a second Ctrl-C: stop right away
                raise KeyboardInterrupt
            self.signal = signum
        with on_stop_signals(handler):
            yield self


# A hook into the loop, for tests and instrumentation: called once per step, after the loss of
# the batch is computed and before the update, with the loop state (`state.step` = steps done
# before this one) and the loss. Returning a tensor replaces the loss (a test injects a NaN this
# way); returning None keeps it. Side effects (a signal to this process) land inside that step.
StepCallback = Callable[[LoopState, torch.Tensor], "torch.Tensor | None"]


# ---------------------------------------------------------------------------------------------
# The training run
# ---------------------------------------------------------------------------------------------

@dataclass
class TrainResult(RunResults):
    out: Path | None
    model: Net
    config: TrainConfig
    info: RunInfo                                # what run.json holds
    metrics: list[dict] = field(default_factory=list)
    interrupted: bool = False
    signal: int | None = None                    # SIGINT / SIGTERM when a signal stopped it
    # conv1/conv2 weights at initialization and after each epoch ("conv1.epoch0", ...; what
    # filters_by_epoch.safetensors holds); None for a resumed run whose saved state predates them
    filters_by_epoch: dict[str, torch.Tensor] | None = None

    def _record_path(self) -> object:
        return self.out / "run.json" if self.out is not None else "the run's record (not written: no out folder)"

    @property
    def test_accuracy(self) -> float:
        return self.test.accuracy


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
        directory: OutputDir | None = None
        checked: CheckedState | None = None
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
                checked = check_state(out)      # before any data is loaded; read once, used to resume
        return _run(cfg, RunWriter(out, directory, figures, checked), split, data_dir, resume, progress, log, stop_at_step, callback)


def _training_split(cfg: TrainConfig, split: Split | None, data_dir: str | None, log) -> Split:
    if split is None:
        return load_split(cfg.dataset, data_dir, cfg.val_size, cfg.split_seed, cfg.train_subset, log=log)
    if cfg.train_subset and len(split.train_x) > cfg.train_subset:
        # the same first-N rule as data.make_split, applied to a split the caller loaded in full
        split = dataclasses.replace(split, train_x=split.train_x[:cfg.train_subset],
                                    train_y=split.train_y[:cfg.train_subset],
                                    info=dataclasses.replace(split.info, train_size=cfg.train_subset,
                                                             train_subset=cfg.train_subset))
    return split


def _on_device(split: Split, device: torch.device) -> Split:
    """The split's tensors on `device`, as a new Split: the caller's stays where it was."""
    if all(getattr(split, k).device == device for k in SPLIT_TENSORS):
        return split
    return dataclasses.replace(split, **{k: getattr(split, k).to(device) for k in SPLIT_TENSORS})


SPLIT_TENSORS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")


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
    split = _on_device(_training_split(cfg, split, data_dir, log), device)
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
                row = state.metrics_row("epoch" if end_of_epoch else "step", val, float(sched.get_last_lr()[0]),
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

    info = RunInfo(
        format=RUN_FORMAT,
        status="interrupted" if interrupted else "complete",
        config=cfg,
        split=split.info,
        normalization={"mean": split.mean, "std": split.std},
        versions=versions(),
        hardware={**hardware(device), "kernels": kernels},
        device=str(device),
        precision=precision,
        steps=state.step, steps_per_epoch=steps_per_epoch, epochs_done=state.epoch,
        timing=Timing(train_time_s=state.train_time_s, epoch_times_s=state.epoch_times_s,
                      wall_time_s=time.perf_counter() - wall0, test_eval_s=eval_time,
                      images_per_s=state.step * cfg.batch_size / max(state.train_time_s, 1e-9),
                      step_time_s=step_time_summary(state.step_times_s, steps_per_epoch, state.step_times_from)),
        best=Best(epoch=state.best_epoch, step=state.best_step, val_accuracy=best_val[0], val_loss=best_val[1]),
        test=TestScore(accuracy=test.accuracy, loss=test.loss,
                       errors=int((test.predictions != split.test_y.cpu()).sum())),
        params=sum(p.numel() for p in model.parameters()),
    )
    writer.write_records(state)
    writer.finish(info, metrics, model, split, cfg)
    model.fused_kernels = False        # the caller's network computes as a loaded one does
    model.cpu()
    return TrainResult(writer.out, model, cfg, info, metrics, interrupted, stop.signal if interrupted else None,
                       dict(writer.filters) if writer.filters is not None else None)


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


class _Progress:
    """A rich progress bar over all steps, with live loss; silent when not on a terminal."""

    def __init__(self, show: bool, total: int) -> None:
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
