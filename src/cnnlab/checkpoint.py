"""The run directory: every file the loop writes (config, resumable state, best checkpoint,
metrics, run.json, figures) and the checks that make --resume continue exactly or refuse."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_safetensors

from .config import TrainConfig
from .data import Split
from .errors import CnnlabError, RunError, StateDamagedError
from .metrics import MAX_TIMED_STEPS, METRIC_FIELDS, LoopState, read_metrics
from .model import Net, load_weights, parse_safetensors, save_weights, state_tensors, tensor_problems
from .output import OutputDir
from .run_record import RunInfo

FILTER_LAYERS = ("conv1", "conv2")   # whose weights filters_by_epoch.safetensors holds, per epoch


class RunWriter:
    """Writes a run directory: config, resumable state, the best checkpoint, metrics, run.json and
    figures. Without a directory (`out=None`) it keeps the best weights in memory instead.

    Every file goes through one `OutputDir` (output.py): atomic, never through a link, recorded
    in the folder's manifest; only files the manifest lists are ever deleted."""

    def __init__(self, out: Path | None, directory: OutputDir | None = None, figures: bool = True,
                 checked: CheckedState | None = None) -> None:
        self.out = out
        self.figures = figures
        self.checked = checked          # the saved state, already read and checked by train() on resume
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

    def start(self, cfg: TrainConfig, resume: bool, model: Net, opt: torch.optim.Optimizer,
              sched: torch.optim.lr_scheduler.LRScheduler,
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
            # only files this folder's manifest says cnnlab wrote are removed; the figures too, so
            # that a run without figures never sits beside an earlier run's curves
            for stale in ("state/state.json", "run.json", "model.safetensors", "metrics.csv", "step_times.npy",
                          "filters_by_epoch.safetensors", "curves.png", "predictions.png"):
                d.remove(stale)
            d.write_json("state/config.json", cfg.to_dict())
            return LoopState(), []
        pos, saved_filters = _load_state(out, model, opt, sched, self.checked)
        self.checked = None             # its bytes (~10 MB) are loaded: not kept for the whole run
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

    def save_state(self, model: Net, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                   state: LoopState) -> None:
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

    def finish(self, info: RunInfo, metrics: list[dict], model: Net, split: Split, cfg: TrainConfig) -> None:
        """run.json, curves.png and predictions.png."""
        if self.out is None:
            return
        assert self.dir is not None
        self.dir.write_json("run.json", info.to_dict())
        if not self.figures:
            return
        from .figures import plot_curves, plot_predictions  # matplotlib (~0.3 s) only when a run is written
        self.dir.save_figure(plot_curves(metrics, title=_title(cfg, info)), "curves.png", dpi=110)
        self.dir.save_figure(plot_predictions(model, split, seed=cfg.seed), "predictions.png", dpi=110)


@dataclass(frozen=True)
class CheckedState:
    """The saved training state as checked before any data is loaded: state.json, the bytes of the
    tensors file it names (read once, hashed once, and parsed from these very bytes)."""
    meta: dict
    tensors_path: Path
    blob: bytes


def check_state(out: Path) -> CheckedState:
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
        missing = [key for key in ("pos", "sched", "param_groups") if key not in meta]
        if missing:
            raise ValueError(f"state.json lacks {', '.join(missing)}")
        if not isinstance(meta["pos"], dict):
            raise ValueError("pos must be an object")
        # the loop position's types, and metrics.csv, before any data is loaded (their agreement
        # with the run's size is checked once the split is known: _loop_state)
        _upgrade_pos(meta["pos"])
        _same_shape(meta["pos"], _pos_shape(meta["pos"]), out, "pos")
        if (out / "metrics.csv").exists():
            read_metrics(out / "metrics.csv", RunError)
    except StateDamagedError:
        raise                                   # already says what is damaged, and how to recover
    except RunError as e:
        raise RunError(f"cannot resume {out}: {str(e)[:300]}") from None
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise RunError(f"cannot resume {out}: the saved training state is damaged ({str(e)[:200]}); "
                       f"train again with --overwrite") from None
    return CheckedState(meta, tensors_path, blob)


def _load_state(out: Path, model: Net, opt, sched,
                checked: CheckedState | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Loads the saved weights, optimizer and schedule from the state `check_state` read (read now
    when not given); returns the loop position (unchecked: _loop_state) and the saved filter
    snapshots ("conv1.epoch0": tensor, ...)."""
    checked = checked or check_state(out)
    meta, tensors_path = checked.meta, checked.tensors_path
    try:
        tensors, _ = parse_safetensors(checked.blob, tensors_path)
    except CnnlabError as e:
        raise RunError(f"cannot resume {out}: the saved training state is damaged ({str(e)[:200]}); "
                       f"train again with --overwrite") from None
    # Every tensor checked before any reaches the model, the optimizer or the C kernels (a moment
    # of the wrong shape is a segmentation fault in the fused AdamW step, not an error).
    problems = state_tensor_problems(tensors, model, opt, meta["pos"].get("step"))
    if problems:
        raise RunError(f"cannot resume {out}: the saved training state is damaged ({tensors_path.name}: "
                       f"{' | '.join(problems)[:400]}); restore it or train again with --overwrite")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
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


ADAMW_STATE = ("step", "exp_avg", "exp_avg_sq")     # per parameter, as torch's AdamW saves it


def state_tensor_problems(tensors: dict[str, torch.Tensor], model: Net, opt: torch.optim.Optimizer,
                          step: Any) -> list[str]:
    """What is wrong with a saved training state's tensors (model.*, opt.<i>.*; the filters.*
    snapshots are checked by _saved_filters): names, shapes, dtypes and finiteness by
    model.tensor_problems, then AdamW's invariants: exp_avg_sq ≥ 0, and every parameter's step
    count the loop position's step (a whole number ≥ 0)."""
    expected: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    params = [p for g in opt.param_groups for p in g["params"]]
    if any(k.startswith("opt.") for k in tensors):        # none before the first step
        for i, p in enumerate(params):
            expected[f"opt.{i}.step"] = torch.zeros((), dtype=torch.float32)
            expected[f"opt.{i}.exp_avg"] = expected[f"opt.{i}.exp_avg_sq"] = p.detach()
    saved = {k: v for k, v in tensors.items() if not k.startswith("filters.")}
    problems = tensor_problems(saved, expected)
    if problems:
        return problems
    neg = [k for k in saved if k.endswith(".exp_avg_sq") and bool((saved[k] < 0).any())]
    if neg:
        problems.append(f"negative second moments in {', '.join(neg[:4])} (AdamW's exp_avg_sq is ≥ 0)")
    steps = {float(v) for k, v in saved.items() if k.endswith(".step")}
    if steps and (type(step) is not int or steps != {float(step)}):
        problems.append(f"the optimizer's step count {sorted(steps)[:3]} does not fit the loop position's step {step}")
    return problems


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
    raise StateDamagedError(f"cannot resume {out}: the saved training state is damaged (state/state.json: "
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


def _title(cfg: TrainConfig, info: RunInfo) -> str:
    acc = f" · test acc {info.test.accuracy * 100:.2f}%" if info.test else ""
    return f"{'batch-norm' if cfg.batch_norm else 'plain'} network · seed {cfg.seed} · {info.precision} on {info.device}{acc}"
