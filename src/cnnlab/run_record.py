"""run.json as a typed record: parsed and checked once (`RunInfo.from_dict`, by `open_run`), written
by `RunInfo.to_dict` (by training and by `cnnlab import`). Code elsewhere reads attributes, never the
JSON's keys.

A field that some run.json lacks (an imported run was never timed; a hand-made or older file has
fewer fields) is None and left out again by `to_dict`; keys this cnnlab does not know are kept in
`extra`, so a record read and written again loses nothing. Every wrong field is one RunError line
naming the file and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar, overload

from .config import TrainConfig
from .errors import RunError
from .schema import config_from_dict
from .schema import field as checked

RUN_FORMAT = 1
REQUIRED_FIELDS = ("format", "config", "split", "versions", "status")
# "status": a run that finished ("complete"; "imported" by `cnnlab import`) or one stopped early
# ("interrupted"); anything else is refused, never taken for finished.
FINISHED = ("complete", "imported")
STATUSES = (*FINISHED, "interrupted")


def _known(kind: type, *, required: bool = False, nullable: bool = False) -> Any:
    """A field of a record: its JSON kind; a required one is always written (null allowed only
    when `nullable`), an optional one is None when absent and then not written."""
    meta = {"kind": kind, "required": required, "nullable": nullable}
    return field(metadata=meta) if required else field(default=None, metadata=meta)


R = TypeVar("R", bound="_Record")


@dataclass(frozen=True, kw_only=True)
class _Record:
    """The parse/write pair shared by the parts of run.json (split, timing, best, test, imported):
    the fields declared with `_known`, and `extra`, the keys this cnnlab does not know."""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls: type[R], d: dict[str, Any], where: str) -> R:
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra" or (f.name not in d and not f.metadata["required"]):
                continue                                    # absent and optional: None
            if f.metadata["nullable"] and f.name in d and d[f.name] is None:
                values[f.name] = None
            else:
                values[f.name] = checked(d, f.name, f.metadata["kind"], where)
        names = {f.name for f in fields(cls)}
        record = cls(**values, extra={k: v for k, v in d.items() if k not in names})
        record._check(where)
        return record

    def _check(self, where: str) -> None:
        """Checks beyond each field's JSON kind (list items, nested keys)."""

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name != "extra" and (f.metadata["required"] or getattr(self, f.name) is not None)}
        return {**out, **self.extra}


@dataclass(frozen=True, kw_only=True)
class SplitInfo(_Record):
    """Which images trained, validated and tested the run (data.Split.info, as written)."""
    dataset: str | None = _known(str)
    source: str | None = _known(str)
    split_seed: int | None = _known(int)
    train_size: int | None = _known(int)
    val_size: int | None = _known(int)
    test_size: int | None = _known(int)
    val_indices_sha256: str | None = _known(str)
    train_subset: int | None = _known(int)
    files_sha256: dict[str, str] | None = _known(dict)


@dataclass(frozen=True, kw_only=True)
class Timing(_Record):
    """Seconds the training took (a run trained by cnnlab; an imported one has none)."""
    train_time_s: float = _known(float, required=True)             # the training steps, no validation
    epoch_times_s: list[float] = _known(list, required=True)       # one per finished epoch
    wall_time_s: float = _known(float, required=True)              # the whole loop, validation and saving too
    test_eval_s: float = _known(float, required=True)
    images_per_s: float = _known(float, required=True)
    step_time_s: dict[str, Any] | None = _known(dict)              # metrics.step_time_summary

    def _check(self, where: str) -> None:
        if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in self.epoch_times_s):
            raise RunError(f"{where}: 'epoch_times_s' must be a list of numbers")


@dataclass(frozen=True, kw_only=True)
class Best(_Record):
    """The checkpoint kept (model.safetensors): the best validation accuracy, and when."""
    epoch: float | None = _known(float, required=True, nullable=True)   # None: trained elsewhere
    step: int | None = _known(int)
    val_accuracy: float = _known(float, required=True)
    val_loss: float | None = _known(float, required=True, nullable=True)


@dataclass(frozen=True, kw_only=True)
class TestScore(_Record):
    """The kept checkpoint on the test set."""
    __test__ = False                # not a pytest test class, whatever its name
    accuracy: float = _known(float, required=True)
    loss: float | None = _known(float, required=True, nullable=True)
    errors: int = _known(int, required=True)


@dataclass(frozen=True, kw_only=True)
class Imported(_Record):
    """How `cnnlab import` made the run: the weights' file and format, the learner's input
    transform (imported.InputTransform.to_dict), which module became which layer."""
    file: str | None = _known(str, required=True, nullable=True)     # None: a state dict in Python
    format: str = _known(str, required=True)
    sha256: str | None = _known(str)
    transform: dict[str, Any] = _known(dict, required=True)
    layers: dict[str, str] = _known(dict, required=True)
    notes: list[str] = _known(list, required=True)
    metrics: str | None = _known(str, required=True, nullable=True)  # the learner's training log

    def _check(self, where: str) -> None:
        checked(self.transform, "describe", str, f"{where}: transform")

    @property
    def transform_text(self) -> str:
        """The learner's input transform in words ("Normalize(0.1307, 0.3081) of pixels in [0, 1]")."""
        return self.transform["describe"]


# the parts of run.json that are records, and the JSON kinds of its other fields
_PARTS: dict[str, type[_Record]] = {"split": SplitInfo, "timing": Timing, "best": Best, "test": TestScore,
                                    "imported": Imported}
_SCALARS: dict[str, type] = {"device": str, "precision": str, "steps": int, "steps_per_epoch": int,
                             "epochs_done": int, "params": int, "versions": dict, "normalization": dict}


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """What run.json holds. The parts a run may lack are None (see the module's docstring); the
    fields are in the order training writes them (`imported`, which a trained run lacks, after
    `config`)."""
    format: int
    status: str                          # one of STATUSES
    config: TrainConfig
    imported: Imported | None = None
    split: SplitInfo
    normalization: dict[str, float] | None = None     # the input mean and std Net was built with
    versions: dict[str, Any]
    hardware: dict[str, Any] | None = None            # runs.hardware, and which kernels trained
    device: str | None = None
    precision: str | None = None         # the arithmetic of training and of the test evaluation
    steps: int | None = None
    steps_per_epoch: int | None = None
    epochs_done: int | None = None
    timing: Timing | None = None
    best: Best | None = None
    test: TestScore | None = None
    params: int | None = None
    # not a key: the config keys run.json names (None: all). An imported run names only those
    # that describe it; the others were never used and are not written.
    config_keys: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def total_steps(self) -> int | None:
        """The optimizer steps of the whole training (None where run.json does not say)."""
        return self.steps_per_epoch * self.config.epochs if self.steps_per_epoch else None

    @property
    def kernels(self) -> str | None:
        """Which kernels ran the training steps (train._kernel_choice), None when not recorded."""
        kernels = (self.hardware or {}).get("kernels")
        return kernels if isinstance(kernels, str) else None

    @overload
    def require(self, name: Literal["test"], where: object) -> TestScore: ...
    @overload
    def require(self, name: Literal["best"], where: object) -> Best: ...
    @overload
    def require(self, name: Literal["timing"], where: object) -> Timing: ...

    def require(self, name: str, where: object) -> Any:
        """The result part `name` ("test", "best", "timing"), or one RunError line naming `where`
        (the run.json) when the record lacks it: an imported run was never timed, and a hand-made
        run.json may hold no results at all."""
        part = getattr(self, name)
        if part is None:
            why = ("a run made by `cnnlab import` was not trained by cnnlab" if self.imported else
                   "was it written by cnnlab? (training writes every record)")
            raise RunError(f"{where} holds no '{name}' record; {why}")
        return part

    def to_dict(self) -> dict[str, Any]:
        """The JSON object run.json holds (as training and `cnnlab import` write it)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("config_keys", "extra") or v is None:
                continue
            if f.name == "config":
                v = {k: x for k, x in v.to_dict().items() if self.config_keys is None or k in self.config_keys}
            out[f.name] = v.to_dict() if isinstance(v, _Record) else v
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, info: Any, where: str) -> RunInfo:
        """The record of a run.json object, every field checked; `where` names the file in errors."""
        if not isinstance(info, dict):
            raise RunError(f"{where} must hold a JSON object")
        missing = [k for k in REQUIRED_FIELDS if k not in info]
        if missing:
            raise RunError(f"{where} lacks the field(s) {', '.join(missing)}; was it written by cnnlab?")
        if not isinstance(info["status"], str) or info["status"] not in STATUSES:
            raise RunError(f"{where}: 'status' is {repr(info['status'])[:40]}; it must be one of "
                           f"{', '.join(map(repr, STATUSES))} (was it edited by hand?)")
        if info["format"] != RUN_FORMAT:
            raise RunError(f"{where} has format {repr(info['format'])[:40]}; this cnnlab reads format "
                           f"{RUN_FORMAT} (a newer or older cnnlab wrote it)")
        for key in ("config", "split"):
            if not isinstance(info[key], dict):
                raise RunError(f"{where}: '{key}' must be an object, not {type(info[key]).__name__}")
        # Every config field typed and in range (a hand-edited seed:"zero" or val_size:5000.5 is one
        # line naming the field); keys a run lacks take their defaults.
        config = config_from_dict(info["config"], where)
        for key in ("test", "best", "timing", "hardware", "imported"):
            if key in info and not isinstance(info[key], dict):
                raise RunError(f"{where}: '{key}' must be an object, not {type(info[key]).__name__}")
        acc = info.get("test", {}).get("accuracy")
        if acc is not None and not (isinstance(acc, (int, float)) and not isinstance(acc, bool) and 0 <= acc <= 1):
            raise RunError(f"{where}: 'test.accuracy' must be a number in [0, 1], not {repr(acc)[:40]}")
        values: dict[str, Any] = {key: checked(info, key, kind, where)
                                  for key, kind in _SCALARS.items() if key in info}
        values.update({key: part.from_dict(info[key], f"{where}: {key}")
                       for key, part in _PARTS.items() if key in info})
        known = {f.name for f in fields(cls)} - {"config_keys", "extra"}
        keys = tuple(info["config"])
        return cls(format=info["format"], status=info["status"], config=config, hardware=info.get("hardware"),
                   config_keys=None if set(keys) == set(config.to_dict()) else keys,
                   extra={k: v for k, v in info.items() if k not in known}, **values)


class RunResults:
    """`test`, `best` and `timing` of a class holding a RunInfo as `info` (a run on disk, a run just
    trained): one definition, failing in one line (`RunInfo.require`) when run.json lacks the part."""
    info: RunInfo

    def _record_path(self) -> object:
        """The run.json the record came from, for the error message."""
        return "the run's record"

    @property
    def test(self) -> TestScore:
        return self.info.require("test", self._record_path())

    @property
    def best(self) -> Best:
        return self.info.require("best", self._record_path())

    @property
    def timing(self) -> Timing:
        return self.info.require("timing", self._record_path())
