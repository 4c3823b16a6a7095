"""run.json's typed record (cnnlab.run_record): what training writes is what open_run reads back,
byte for byte; nothing a run.json holds is lost on the way through RunInfo (unknown keys, absent
fields, nulls); and every wrong field is one RunError line naming it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from cnnlab.errors import RunError
from cnnlab.output import dumps
from cnnlab.run_record import RUN_FORMAT, RunInfo
from cnnlab.runs import open_run
from faultkit import TINY, fake_run, synthetic_split


def one_line(msg: str) -> None:
    assert msg and "\n" not in msg.strip() and "Traceback" not in msg, msg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained by cnnlab (one epoch of the synthetic split) and its TrainResult."""
    from cnnlab.train import train
    out = tmp_path_factory.mktemp("rec") / "run"
    res = train(TINY.replace(epochs=1), out, split=synthetic_split(), progress=False, log=lambda s: None,
                figures=False)
    return out, res


# An imported run's record, as `cnnlab import` writes it: a partial config, no timing, no steps,
# best.epoch null, the import's own record (file null for a state dict).
IMPORTED = {
    "format": RUN_FORMAT, "status": "imported",
    "config": {"dataset": "mnist", "batch_norm": False, "label_smoothing": 0.0, "augment": False, "seed": 0,
               "split_seed": 0, "val_size": 10000, "device": "cpu", "precision": "fp32"},
    "imported": {"file": None, "format": "state dict (Python)",
                 "transform": {"pixel_max": 1.0, "mean": 0.0, "std": 1.0, "describe": "pixels in [0, 1]",
                               "input_mean": 0.0, "input_std": 1.0},
                 "layers": {"conv1": "features.0"}, "notes": [], "metrics": None},
    "split": {"dataset": "mnist", "split_seed": 0, "train_size": 50000, "val_size": 10000, "test_size": 10000},
    "versions": {"cnnlab": "0"}, "hardware": {"device": "cpu"}, "device": "cpu", "precision": "fp32",
    "best": {"val_accuracy": 0.9, "val_loss": 0.3, "epoch": None},
    "test": {"accuracy": 0.91, "loss": 0.28, "errors": 900},
}


# --- what training writes, open_run reads back ---------------------------------------------

def test_run_json_is_the_record_training_built(trained):
    out, res = trained
    text = (out / "run.json").read_text()
    assert text == dumps(res.info.to_dict()) + "\n"
    run = open_run(out)
    assert run.info == res.info                          # parsed back into the very same record
    assert dumps(run.info.to_dict()) + "\n" == text      # and written again: the same bytes


def test_the_record_reads_as_attributes(trained):
    out, res = trained
    run = open_run(out)
    raw = json.loads((out / "run.json").read_text())
    assert run.config.epochs == raw["config"]["epochs"] == 1
    assert run.test.accuracy == raw["test"]["accuracy"] and run.test.errors == raw["test"]["errors"]
    assert run.best.val_accuracy == raw["best"]["val_accuracy"] and run.best.step == raw["best"]["step"]
    assert run.timing.epoch_times_s == raw["timing"]["epoch_times_s"]
    assert run.info.split.val_size == raw["split"]["val_size"] == 128
    assert run.info.kernels == raw["hardware"]["kernels"]
    assert run.precision == raw["precision"] == "fp32"
    assert run.info.total_steps == raw["steps"] == 8 and run.info.finished and run.status_note() is None
    assert res.test_accuracy == res.test.accuracy == run.test.accuracy


# --- nothing lost: round trips of records trained, imported, hand-made and from the future -------

def test_imported_record_round_trips_with_its_partial_config():
    info = RunInfo.from_dict(copy.deepcopy(IMPORTED), "run.json")
    assert info.to_dict() == IMPORTED
    assert info.config.epochs == 12                      # the keys it lacks read as the defaults ...
    assert "epochs" not in info.to_dict()["config"]      # ... and are not written
    assert info.best is not None and info.best.epoch is None and "step" not in info.to_dict()["best"]
    assert info.imported is not None and info.imported.file is None
    assert info.imported.transform_text == "pixels in [0, 1]"
    assert info.timing is None and info.steps is None and info.total_steps is None


def test_minimal_record_round_trips():
    d = {"format": RUN_FORMAT, "status": "complete", "config": TINY.to_dict(), "split": {}, "versions": {}}
    info = RunInfo.from_dict(copy.deepcopy(d), "run.json")
    assert info.to_dict() == d
    assert info.test is None and info.best is None and info.timing is None and info.kernels is None


def test_unknown_keys_are_kept_everywhere(trained):
    out, _ = trained
    d = json.loads((out / "run.json").read_text())
    d["written_by_a_newer_cnnlab"] = {"x": [1, 2]}
    for part in ("split", "timing", "best", "test"):
        d[part]["note"] = f"a {part} note"
    imported = copy.deepcopy(IMPORTED)
    imported["imported"]["learner"] = "someone"
    for record in (d, imported):
        assert RunInfo.from_dict(copy.deepcopy(record), "run.json").to_dict() == record
    info = RunInfo.from_dict(copy.deepcopy(d), "run.json")
    assert info.extra == {"written_by_a_newer_cnnlab": {"x": [1, 2]}}
    assert info.test is not None and info.test.extra == {"note": "a test note"}


# --- every wrong field: one line naming it ---------------------------------------------------

def _set(path: str, value):
    """An edit of the imported record: `path` ("test.errors") set to `value` (deleted if DELETE)."""
    def edit(d):
        *parents, key = path.split(".")
        for p in parents:
            d = d[p]
        if value is DELETE:
            del d[key]
        else:
            d[key] = value
    return edit


DELETE = object()
MALFORMED = {   # the edit -> the words the one line must hold
    "test.errors a word": (_set("test.errors", "many"), "test: 'errors' must be an integer"),
    "test.errors missing": (_set("test.errors", DELETE), "test: the field 'errors' is missing"),
    "test.loss a list": (_set("test.loss", [0.3]), "test: 'loss' must be a finite number"),
    "best.val_accuracy missing": (_set("best.val_accuracy", DELETE), "best: the field 'val_accuracy' is missing"),
    "best.epoch a word": (_set("best.epoch", "first"), "best: 'epoch' must be a finite number"),
    "best.step a float": (_set("best.step", 2.5), "best: 'step' must be an integer"),
    "timing without epochs": (_set("timing", {"train_time_s": 1.0}), "timing: the field 'epoch_times_s' is missing"),
    "timing.epoch_times_s words": (_set("timing", {"train_time_s": 1.0, "epoch_times_s": ["1 s"], "wall_time_s": 2.0,
                                                   "test_eval_s": 0.1, "images_per_s": 9.0}),
                                   "'epoch_times_s' must be a list of numbers"),
    "split.test_size a string": (_set("split.test_size", "10000"), "split: 'test_size' must be an integer"),
    "split.files_sha256 a list": (_set("split.files_sha256", []), "split: 'files_sha256' must be an object"),
    "steps a string": (_set("steps", "8"), "'steps' must be an integer"),
    "device a number": (_set("device", 0), "'device' must be a string"),
    "precision null": (_set("precision", None), "'precision' must be a string"),
    "versions a list": (_set("versions", []), "'versions' must be an object"),
    "normalization a number": (_set("normalization", 0.5), "'normalization' must be an object"),
    "imported.format missing": (_set("imported.format", DELETE), "imported: the field 'format' is missing"),
    "imported.notes a string": (_set("imported.notes", "none"), "imported: 'notes' must be a list"),
    "imported.transform undescribed": (_set("imported.transform.describe", DELETE),
                                       "imported: transform: the field 'describe' is missing"),
    # the checks open_run made before the record existed, with their messages unchanged
    "test not an object": (_set("test", [1]), "run.json: 'test' must be an object, not list"),
    "hardware not an object": (_set("hardware", "x86"), "run.json: 'hardware' must be an object, not str"),
    "test.accuracy above 1": (_set("test.accuracy", 1.5), "run.json: 'test.accuracy' must be a number in [0, 1], not 1.5"),
    "status unknown": (_set("status", "done"), "run.json: 'status' is 'done'; it must be one of 'complete', "
                                               "'imported', 'interrupted' (was it edited by hand?)"),
    "format 2": (_set("format", 2), "run.json has format 2; this cnnlab reads format 1 (a newer or older cnnlab wrote it)"),
    "split a string": (_set("split", "x"), "run.json: 'split' must be an object, not str"),
    "config.seed a word": (_set("config.seed", "zero"), "run.json: config: 'seed' must be an integer"),
    "versions missing": (_set("versions", DELETE), "run.json lacks the field(s) versions; was it written by cnnlab?"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_each_malformed_field_is_one_line_naming_it(name):
    edit, needle = MALFORMED[name]
    d = copy.deepcopy(IMPORTED)
    edit(d)
    with pytest.raises(RunError) as e:
        RunInfo.from_dict(d, "run.json")
    one_line(str(e.value))
    assert needle in str(e.value), str(e.value)


def test_not_an_object_is_one_line():
    with pytest.raises(RunError, match=r"^R must hold a JSON object$"):
        RunInfo.from_dict([1, 2], "R")


def test_a_malformed_run_json_is_refused_by_open_run_naming_the_file(tmp_path):
    run = fake_run(tmp_path / "run", test={"accuracy": 0.9, "loss": 0.3, "errors": "many"})
    with pytest.raises(RunError) as e:
        open_run(run)
    one_line(str(e.value))
    assert str(Path(run) / "run.json") in str(e.value) and "'errors'" in str(e.value)


def test_a_run_just_trained_and_a_run_on_disk_read_their_results_the_same_way(tmp_path):
    """TrainResult and Run share one definition of test/best/timing (run_record.RunResults): a
    record without them is the same one line for both (TrainResult used to assert)."""
    from cnnlab.model import Net
    from cnnlab.runs import Run
    from cnnlab.train import TrainResult
    run = open_run(fake_run(tmp_path / "run"))
    res = TrainResult(out=tmp_path / "run", model=Net(), config=run.config, info=run.info)
    for part in ("test", "best", "timing"):
        assert getattr(TrainResult, part) is getattr(Run, part)
        with pytest.raises(RunError, match=f"holds no '{part}' record") as e:
            getattr(res, part)
        assert str(tmp_path / "run" / "run.json") in str(e.value)
        one_line(str(e.value))


def test_results_a_run_lacks_are_one_line_when_needed(tmp_path):
    """A hand-made run opens (explore and the analyses need no results); code that needs its test
    score, its best checkpoint or its timing gets one line, not a KeyError."""
    run = open_run(fake_run(tmp_path / "run"))
    assert run.info.test is None and run.precision == "fp32"
    for part in ("test", "best", "timing"):
        with pytest.raises(RunError, match=f"holds no '{part}' record") as e:
            getattr(run, part)
        one_line(str(e.value))
