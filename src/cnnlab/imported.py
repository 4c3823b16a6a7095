"""A network trained elsewhere, made into a cnnlab run: the learner's own model.

A state dict saved with `torch.save(model.state_dict(), ...)` (read with `torch.load(...,
weights_only=True)`, which unpickles tensors and nothing else) or a `.safetensors` file, with
whatever key names the learner's module had, is matched to the assignment's network by layer order
and shape (`match_layers`), its input transform is folded into Net's `input_mean`/`input_std`
buffers (`InputTransform`), and the run is written with its test accuracy (`import_weights`).
Every analysis then reads it like a trained run, in plain [0, 1] pixel space.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .config import TrainConfig
from .errors import WeightsImportError
from .evaluation import evaluate
from .metrics import METRIC_FIELDS
from .model import Net, state_tensors
from .output import OutputDir
from .run_record import RUN_FORMAT, Best, Imported, RunInfo, TestScore
from .runs import Run, hardware, open_run, versions
from .weights_file import flatten_state_dict, read_weights

if TYPE_CHECKING:
    from .data import Split

MAX_METRICS_ROWS = 100_000
CHANCE_LIMIT = 0.3                     # test accuracy below this: the transform is probably wrong
# Keys under which checkpoint dicts commonly keep the model's weights beside optimizer state.
# (cnnlab name, weight shape) of the assignment's layers, in order.
LAYERS = (("conv1", (32, 1, 3, 3)), ("conv2", (32, 32, 3, 3)), ("fc1", (500, 32 * 7 * 7)), ("fc2", (10, 500)))
BN_LEAVES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# ---------------------------------------------------------------------------------------------
# The input transform
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputTransform:
    """What the learner's model was fed: pixels scaled to [0, pixel_max], then (x − mean) / std."""
    pixel_max: float = 1.0     # 1: transforms.ToTensor(); 255: raw bytes as floats
    mean: float = 0.0          # transforms.Normalize's mean, on that scale
    std: float = 1.0

    def __post_init__(self) -> None:
        if self.pixel_max not in (1.0, 255.0):
            raise WeightsImportError(f"pixel_max must be 1 or 255, not {self.pixel_max!r}")
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise WeightsImportError(f"--normalize needs a finite mean and a std > 0 (got {self.mean:g}, {self.std:g})")

    def buffers(self) -> tuple[float, float]:
        """Net's (input_mean, input_std) on the [0, 1] scale: (255x − m)/s = (x − m/255)/(s/255)."""
        return self.mean / self.pixel_max, self.std / self.pixel_max

    @property
    def normalized(self) -> bool:
        return (self.mean, self.std) != (0.0, 1.0)

    def describe(self) -> str:
        pixels = "pixels in [0, 1]" if self.pixel_max == 1 else "pixels in [0, 255]"
        return f"Normalize({self.mean:g}, {self.std:g}) of {pixels}" if self.normalized else pixels

    def flags(self) -> str:
        parts = ["--pixel-max 255"] if self.pixel_max == 255 else []
        parts += [f"--normalize {self.mean:g} {self.std:g}"] if self.normalized else []
        return " ".join(parts) or "no transform flag"

    def to_dict(self) -> dict[str, Any]:
        mean, std = self.buffers()
        return {"pixel_max": self.pixel_max, "mean": self.mean, "std": self.std, "describe": self.describe(),
                "input_mean": mean, "input_std": std}


# What a learner most likely used, tried in this order when the given transform scores near chance.
ALTERNATIVES = (InputTransform(), InputTransform(1.0, 0.1307, 0.3081), InputTransform(255.0),
                InputTransform(1.0, 0.5, 0.5))


# ---------------------------------------------------------------------------------------------
# Matching the learner's layers to the assignment's network
# ---------------------------------------------------------------------------------------------

@dataclass
class Matched:
    """The learner's tensors under cnnlab's names, and where each came from."""
    state: dict[str, torch.Tensor]              # Net's state dict, buffers for the transform excluded
    batch_norm: bool
    sources: dict[str, str]                     # cnnlab layer → the learner's module name
    notes: list[str] = field(default_factory=list)


def match_layers(tensors: Mapping[str, torch.Tensor], where: str = "the state dict") -> Matched:
    """Map a state dict of any key names onto Net's, by layer order and shape. The first
    difference from the assignment's network is a WeightsImportError naming it."""
    groups: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
    for key, t in tensors.items():
        prefix, _, leaf = key.rpartition(".")
        groups.setdefault(prefix, {})[leaf] = t
    convs, linears, norms = [], [], []
    for prefix, g in groups.items():
        if "running_mean" in g or "running_var" in g:
            norms.append(prefix)
        elif "weight" in g and g["weight"].dim() == 4:
            convs.append(prefix)
        elif "weight" in g and g["weight"].dim() == 2:
            linears.append(prefix)
        else:
            key, t = next(iter(g.items()))
            name = f"{prefix}.{key}" if prefix else key
            raise WeightsImportError(f"{where}: unexpected tensor {name} {list(t.shape)}; the assignment's network "
                                     f"has only convolutions, batch-norm and fully connected layers")
    # Where the order says little (a safetensors file, a class that defines fc2 first), the one
    # unambiguous shape decides: conv1 takes 1 channel, fc2 gives 10 outputs. The sort is stable.
    convs.sort(key=lambda p: groups[p]["weight"].shape[1] != 1)
    linears.sort(key=lambda p: groups[p]["weight"].shape[0] == 10)
    sources: dict[str, str] = {}
    state: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    for found, names, word in ((convs, ("conv1", "conv2"), "convolution"),
                               (linears, ("fc1", "fc2"), "fully connected layer")):
        for i, name in enumerate(names):
            if i >= len(found):
                raise WeightsImportError(f"{where} has {len(found)} {word}{'s' if len(found) != 1 else ''}; the "
                                         f"assignment's network has 2 ({', '.join(names)})")
            _check_weight(name, found[i], groups[found[i]], state, where, notes)
            sources[name] = found[i]
        if len(found) > 2:
            extra = found[2]
            raise WeightsImportError(f"{where} has a {word} more than the assignment's network: {extra} "
                                     f"{list(groups[extra]['weight'].shape)} after {names[-1]}")
    conv_bn = [p for p in norms if _features(groups[p]) == 32]
    fc_bn = [p for p in norms if _features(groups[p]) == 500]
    for p in norms:
        if p not in conv_bn + fc_bn:
            raise WeightsImportError(f"{where}: batch-norm {p} has {_features(groups[p])} features; the assignment's "
                                     f"network has 32 channels after each convolution and 500 units after fc1")
    if len(conv_bn) not in (0, 2):
        raise WeightsImportError(f"{where} has {len(conv_bn)} batch-norm layer(s) over 32 channels ({', '.join(conv_bn)}); "
                                 f"the assignment's batch-norm network has two, one after each convolution")
    if len(fc_bn) > 1:
        raise WeightsImportError(f"{where} has {len(fc_bn)} batch-norm layers over 500 units; at most one (after fc1) "
                                 f"can be folded into fc1")
    for name, prefix in zip(("bn1", "bn2"), conv_bn):
        state.update({f"{name}.{k}": v for k, v in _batch_norm(prefix, groups[prefix], 32, where).items()})
        sources[name] = prefix
    if fc_bn:
        _fold_into_fc1(state, _batch_norm(fc_bn[0], groups[fc_bn[0]], 500, where))
        sources["fc1 batch-norm"] = fc_bn[0]
        notes.append(f"{fc_bn[0]}: the batch-norm after fc1 is folded into fc1 (the same function in evaluation "
                     f"mode, when it sits before fc1's ReLU)")
    return Matched(state, bool(conv_bn), sources, notes)


def _features(g: dict[str, torch.Tensor]) -> int:
    t = g.get("running_mean", g.get("running_var"))
    return int(t.numel()) if t is not None else -1


def _check_weight(name: str, prefix: str, g: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
                  where: str, notes: list[str]) -> None:
    want = dict(LAYERS)[name]
    w = g["weight"]
    extra = sorted(set(g) - {"weight", "bias"})
    if extra:
        raise WeightsImportError(f"{where}: {name} ({prefix}) holds {', '.join(extra)} besides weight and bias; "
                                 f"the assignment's network has plain layers")
    got = tuple(w.shape)
    if got != want:
        raise WeightsImportError(f"{where}: {_shape_difference(name, got, want)}")
    state[f"{name}.weight"] = _float(f"{name}.weight ({prefix}.weight)", w)
    if "bias" in g:
        b = g["bias"]
        if tuple(b.shape) != (want[0],):
            raise WeightsImportError(f"{where}: {name}'s bias ({prefix}.bias) has shape {list(b.shape)}, the "
                                     f"assignment's network has [{want[0]}]")
        state[f"{name}.bias"] = _float(f"{name}.bias ({prefix}.bias)", b)
    else:
        state[f"{name}.bias"] = torch.zeros(want[0])
        notes.append(f"{name} ({prefix}) has no bias (bias=False): cnnlab's {name} gets a bias of 0, the same function")


def _shape_difference(name: str, got: tuple, want: tuple) -> str:
    if len(got) != len(want):
        return f"{name} has weight shape {list(got)}, the assignment's network has {list(want)}"
    if name.startswith("conv"):
        if got[1] != want[1]:
            return f"{name} takes {got[1]} input channels, the assignment's network takes {want[1]}"
        if got[0] != want[0]:
            return f"{name} has {got[0]} filters, the assignment's network has {want[0]}"
        return f"{name} has {got[2]}×{got[3]} kernels, the assignment's network has 3×3"
    if got[1] != want[1]:
        return f"{name} has {_inputs(got[1])} inputs, the assignment's network has {_inputs(want[1])}"
    return f"{name} has {got[0]} outputs, the assignment's network has {want[0]}"


def _inputs(n: int) -> str:
    """1568 → '32·7·7' (channels · height · width of pool2's output) where it factors so."""
    for c in (32, 64, 16, 128, 8):
        side = math.isqrt(n // c) if n % c == 0 else 0
        if side and side * side * c == n:
            return f"{c}·{side}·{side}"
    return str(n)


def _float(name: str, t: torch.Tensor) -> torch.Tensor:
    if not t.is_floating_point():
        raise WeightsImportError(f"{name} is {str(t.dtype).replace('torch.', '')}; the weights must be floating point")
    out = t.detach().to("cpu", torch.float32).contiguous().clone()
    if not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).sum())
        raise WeightsImportError(f"{name} holds {bad} non-finite value(s) (NaN or Inf, or beyond float32's range); "
                                 f"the network diverged or the file is damaged")
    return out


def _batch_norm(prefix: str, g: dict[str, torch.Tensor], n: int, where: str) -> dict[str, torch.Tensor]:
    extra = sorted(set(g) - set(BN_LEAVES))
    if extra:
        raise WeightsImportError(f"{where}: batch-norm {prefix} holds unexpected tensors {', '.join(extra)}")
    missing = [k for k in ("running_mean", "running_var") if k not in g]
    if missing:
        raise WeightsImportError(f"{where}: batch-norm {prefix} has no {missing[0]} (track_running_stats=False); "
                                 f"it cannot be evaluated on single images")
    out = {}
    for k in ("weight", "bias", "running_mean", "running_var"):
        if k in g and tuple(g[k].shape) != (n,):
            raise WeightsImportError(f"{where}: {prefix}.{k} has shape {list(g[k].shape)}, expected [{n}]")
        out[k] = _float(f"{prefix}.{k}", g[k]) if k in g else (torch.ones(n) if k == "weight" else torch.zeros(n))
    if (out["running_var"] < 0).any():
        raise WeightsImportError(f"{where}: {prefix}.running_var holds negative variances (must be ≥ 0)")
    nbt = g.get("num_batches_tracked", torch.tensor(0))
    if nbt.is_floating_point() or nbt.numel() != 1:
        raise WeightsImportError(f"{where}: {prefix}.num_batches_tracked must be one integer")
    out["num_batches_tracked"] = nbt.to(torch.long).reshape(())
    return out


def _fold_into_fc1(state: dict[str, torch.Tensor], bn: dict[str, torch.Tensor], eps: float = 1e-5) -> None:
    """fc1 followed by BatchNorm1d (evaluation mode) is one linear layer: scale rows, shift bias."""
    scale = bn["weight"] / torch.sqrt(bn["running_var"] + eps)
    state["fc1.weight"] = state["fc1.weight"] * scale[:, None]
    state["fc1.bias"] = (state["fc1.bias"] - bn["running_mean"]) * scale + bn["bias"]


def build_net(matched: Matched, transform: InputTransform) -> Net:
    mean, std = transform.buffers()
    net = Net(batch_norm=matched.batch_norm, mean=mean, std=std)
    full = {**net.state_dict(), **matched.state}
    net.load_state_dict(full, strict=True)
    return net.eval()


# ---------------------------------------------------------------------------------------------
# The learner's curves
# ---------------------------------------------------------------------------------------------

LEARNER_COLUMNS = ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "seconds")


def read_learner_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The learner's CSV (columns: LEARNER_COLUMNS; `epoch` and one loss or accuracy at least;
    accuracies as fractions in [0, 1]) as cnnlab metrics.csv rows."""
    from .schema import read_bytes_limited
    path = Path(path)
    raw = read_bytes_limited(path, 16 * 1024 * 1024, WeightsImportError, "metrics file")
    try:
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    except (UnicodeDecodeError, csv.Error) as e:
        raise WeightsImportError(f"{path} is not a CSV text file ({str(e)[:80]})") from None
    if not rows:
        raise WeightsImportError(f"{path} is empty; the header must name epoch and some of {', '.join(LEARNER_COLUMNS[2:])}")
    header = [h.strip() for h in rows[0]]
    unknown = [h for h in header if h not in LEARNER_COLUMNS]
    if unknown or "epoch" not in header or not set(header) & {"train_loss", "train_acc", "val_loss", "val_acc"}:
        raise WeightsImportError(f"{path}: the header must be epoch and some of {', '.join(LEARNER_COLUMNS[1:])} "
                                 f"(got {','.join(header)[:80]})")
    if len(rows) - 1 > MAX_METRICS_ROWS or len(rows) < 2:
        raise WeightsImportError(f"{path} has {len(rows) - 1} rows; expected 1 to {MAX_METRICS_ROWS:,}")
    out = []
    for line, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise WeightsImportError(f"{path} line {line}: {len(r)} values, expected {len(header)}")
        d: dict[str, float] = {}
        for k, v in zip(header, r):
            try:
                d[k] = float(v) if v.strip() != "" else math.nan
            except ValueError:
                raise WeightsImportError(f"{path} line {line}: {k} {v[:20]!r} is not a number") from None
            if k.endswith("_acc") and not (math.isnan(d[k]) or 0 <= d[k] <= 1):
                raise WeightsImportError(f"{path} line {line}: {k} {v[:20]} is not in [0, 1]; give accuracies as "
                                         f"fractions (0.975, not 97.5)")
            if not math.isnan(d[k]) and (not math.isfinite(d[k]) or (k != "train_loss" and k != "val_loss" and d[k] < 0)):
                raise WeightsImportError(f"{path} line {line}: {k} {v[:20]} is out of range")
        if math.isnan(d["epoch"]):
            raise WeightsImportError(f"{path} line {line}: epoch is empty")
        nan = math.nan
        step = d.get("step", line - 1)
        out.append({"kind": "epoch", "epoch": d["epoch"], "step": int(step) if math.isfinite(step) else line - 1,
                    # images_seen ∝ epoch, so the curves' x axis reads in epochs
                    "images_seen": int(round(d["epoch"] * 60_000)), "lr": nan,
                    "train_loss": d.get("train_loss", nan), "train_error": 1 - d.get("train_acc", nan),
                    "val_loss": d.get("val_loss", nan), "val_error": 1 - d.get("val_acc", nan),
                    "val_acc": d.get("val_acc", nan), "train_time_s": d.get("seconds", nan),
                    "elapsed_s": d.get("seconds", nan)})
    return out


def metrics_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(METRIC_FIELDS)
    for r in rows:
        w.writerow(["" if isinstance(r[k], float) and math.isnan(r[k]) else r[k] for k in METRIC_FIELDS])
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

@dataclass
class ImportResult:
    run: Run
    model: Net
    test_accuracy: float
    notes: list[str]


def import_weights(source: str | Path | Mapping[str, torch.Tensor] | nn.Module, out: str | Path,
                   transform: InputTransform | None = None, *, metrics: str | Path | None = None,
                   split: Split | None = None, data_dir: str | None = None, overwrite: bool = False,
                   log: Callable[[str], None] | None = None) -> ImportResult:
    """Make the run `out` from weights trained elsewhere; nothing is written unless every check passes.

    `source`: a weights file, a state dict, or the learner's module itself (then cnnlab also
    checks that the imported network computes what the module computes)."""
    log = log or (lambda s: None)
    transform = transform or InputTransform()
    module = source if isinstance(source, nn.Module) else None
    if isinstance(source, (str, Path)):
        tensors, fmt, digest = read_weights(source)
        origin: dict[str, Any] = {"file": str(Path(source).resolve()), "format": fmt, "sha256": digest}
        where = str(source)
    else:
        sd = source.state_dict() if isinstance(source, nn.Module) else source
        tensors = flatten_state_dict(sd, "the state dict")
        origin = {"file": None, "format": "state dict (Python)"}
        where = "the state dict"
    matched = match_layers(tensors, where)
    rows = read_learner_metrics(metrics) if metrics is not None else None
    d = OutputDir(out, overwrite=overwrite)
    _refuse_existing_run(Path(out), overwrite)
    created = not Path(out).exists()
    d.prepare()                           # refused before any evaluation
    try:
        net, test, val, split = _evaluated(matched, transform, module, split, data_dir, log)
    except BaseException:
        if created:                       # a refused import leaves no trace, not even an empty folder
            with contextlib.suppress(OSError):
                Path(out).rmdir()
        raise
    # only the settings that describe the network and how cnnlab evaluated it (the others, epochs
    # to threads, were never used and are not written)
    described: dict[str, Any] = {
        "dataset": "mnist", "batch_norm": matched.batch_norm, "label_smoothing": 0.0, "augment": False,
        "seed": 0, "val_size": split.info.val_size, "split_seed": split.info.split_seed,
        "device": "cpu", "precision": "fp32"}
    info = RunInfo(
        format=RUN_FORMAT, status="imported", config=TrainConfig(**described), config_keys=tuple(described),
        imported=Imported(**origin, transform=transform.to_dict(), layers=matched.sources, notes=matched.notes,
                          metrics=str(Path(metrics).resolve()) if metrics is not None else None),
        split=split.info, versions=versions(), device="cpu", precision="fp32",
        hardware=hardware(torch.device("cpu")),
        # the learner may have trained on these images: cnnlab's validation split is part of MNIST's training set
        best=Best(val_accuracy=val.accuracy, val_loss=val.loss, epoch=None),
        test=TestScore(accuracy=test.accuracy, loss=test.loss, errors=int((test.predictions != split.test_y).sum())),
    )
    from safetensors.torch import save
    meta = {"format": "cnnlab.Net", "batch_norm": str(int(matched.batch_norm)), "imported": "1"}
    d.write_bytes("model.safetensors", save(state_tensors(net), metadata=meta))
    if rows is not None:
        d.write_text("metrics.csv", metrics_csv(rows))
    for stale in ("metrics.csv", "step_times.npy", "filters_by_epoch.safetensors", "curves.png", "predictions.png"):
        if stale != "metrics.csv" or rows is None:
            d.remove(stale)               # an earlier run's, when --overwrite replaces it (only files cnnlab wrote)
    d.write_json("run.json", info.to_dict())
    run = open_run(out)
    for note in matched.notes:
        log(f"note: {note}")
    return ImportResult(run, net, test.accuracy, matched.notes)


def _evaluated(matched: Matched, transform: InputTransform, module: nn.Module | None, split, data_dir, log):
    """The Net, its test and validation results and the split, after every check that needs data."""
    from .data import load_split
    split = split if split is not None else load_split("mnist", data_dir)
    net = build_net(matched, transform)
    if module is not None:
        _check_same_function(module, net, split.test_x[:500], transform)
    test = evaluate(net, split.test_x, split.test_y)
    if test.accuracy < CHANCE_LIMIT:
        _near_chance(matched, transform, test.accuracy, split, log)
    _check_bn_placement(net, matched, split.test_x[:1000])
    return net, test, evaluate(net, split.val_x, split.val_y), split


def _refuse_existing_run(out: Path, overwrite: bool) -> None:
    if not overwrite and ((out / "run.json").exists() or (out / "model.safetensors").exists()):
        raise WeightsImportError(f"{out} already holds a run; pass --overwrite to replace it, or choose another --out")


def _near_chance(matched: Matched, transform: InputTransform, acc: float, split, log) -> None:
    """Near-chance accuracy: name the transform that works, or say that none does."""
    tried = []
    for alt in ALTERNATIVES:
        if alt == transform:
            continue
        a = evaluate(build_net(matched, alt), split.test_x[:2000], split.test_y[:2000]).accuracy
        tried.append((a, alt))
    best_acc, best = max(tried, key=lambda t: t[0])
    if best_acc >= CHANCE_LIMIT and best_acc > acc + 0.2:
        raise WeightsImportError(f"test accuracy {100 * acc:.1f}% with {transform.describe()} is near chance: the input "
                                 f"transform is probably wrong; with {best.describe()} it is {100 * best_acc:.1f}% "
                                 f"(pass {best.flags()})")
    log(f"warning: test accuracy {100 * acc:.1f}% is near chance with every usual input transform; the network may "
        f"be untrained (imported anyway)")


def _check_bn_placement(net: Net, matched: Matched, x_uint8: torch.Tensor) -> None:
    """A state dict does not say where a batch-norm sat, but its running mean is the mean of what it
    normalized: compare it with the channel means of each place, on real images."""
    if not net.batch_norm:
        return
    h = net.normalize(x_uint8.float() / 255)
    with torch.no_grad():
        for name, conv, bn, pool in (("bn1", net.conv1, net.bn1, net.pool1), ("bn2", net.conv2, net.bn2, net.pool2)):
            if bn is None:
                return
            z = conv(h)
            rm = bn.get_buffer("running_mean")
            places = {"before ReLU": z, "after ReLU": torch.relu(z), "after ReLU and pooling": pool(torch.relu(z)),
                      "after pooling, before ReLU": pool(z)}
            err = {k: float((v.mean((0, 2, 3)) - rm).norm() / (rm.norm() + 1e-12)) for k, v in places.items()}
            where = min(err, key=lambda k: err[k])
            fits = err[where] < 0.5 * err["before ReLU"]
            # conv → pool → BN is conv → BN → pool when every channel's scale is positive (max commutes with it)
            if where == "after pooling, before ReLU" and bool((bn.weight > 0).all()):
                fits = False
            if where != "before ReLU" and fits:
                raise WeightsImportError(
                    f"{matched.sources[name]} normalizes the convolution's output {where} (its running mean matches "
                    f"that); the assignment's network, like cnnlab's Net, has batch-norm between the convolution and "
                    f"ReLU, so this network cannot be represented exactly")
            h = pool(torch.relu(bn(z)))


def _check_same_function(module: nn.Module, net: Net, x_uint8: torch.Tensor, transform: InputTransform) -> None:
    """The learner's module and the imported Net must give the same logits on the same images."""
    x = x_uint8.float() / 255
    fed = (x * transform.pixel_max - transform.mean) / transform.std
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            theirs = module(fed.to(next(module.parameters()).device)).float().cpu()
            ours = net(x)
    except Exception as e:          # noqa: BLE001  (the learner's forward: any failure is one line)
        raise WeightsImportError(f"your module failed on MNIST images shaped [N, 1, 28, 28] "
                                 f"({type(e).__name__}: {str(e)[:100]})") from None
    finally:
        module.train(was)
    if theirs.shape != ours.shape:
        raise WeightsImportError(f"your module returns {list(theirs.shape[1:])} per image; the assignment's network "
                                 f"returns 10 logits")
    diff = float((theirs - ours).abs().max())
    scale = float(ours.abs().max()) or 1.0
    if diff > 1e-3 * max(scale, 1.0):
        raise WeightsImportError(f"the imported network computes something else than your module (logits differ by "
                                 f"up to {diff:.3g}): its layers hold the assignment's shapes but in another "
                                 f"arrangement (batch-norm after ReLU, another activation, a softmax in forward, "
                                 f"or another input transform than {transform.describe()})")


def import_state_dict(state_dict: Mapping[str, torch.Tensor] | nn.Module, out: str | Path = "runs/imported",
                      normalize: tuple[float, float] | None = None, pixel_max: float = 1.0,
                      metrics: str | Path | None = None, overwrite: bool = False,
                      data_dir: str | None = None) -> Run:
    """The run `out` made from your own network's weights (`model.state_dict()`, or the model).

    `normalize=(mean, std)`: the transforms.Normalize your model was trained with; `pixel_max=255`
    if it was fed raw 0–255 pixels. Prints the test accuracy; returns the run for every analysis."""
    mean, std = normalize if normalize is not None else (0.0, 1.0)
    res = import_weights(state_dict, out, InputTransform(float(pixel_max), float(mean), float(std)),
                         metrics=metrics, overwrite=overwrite, data_dir=data_dir, log=print)
    print(f"imported into {res.run.path}: test accuracy {100 * res.test_accuracy:.2f}% "
          f"({'batch-norm' if res.run.batch_norm else 'plain'} network)")
    return res.run
