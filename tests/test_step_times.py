"""What a run records beyond its weights: the seconds of every optimizer step (run.json's
timing.step_time_s, step_times.npy) and conv1/conv2 at initialization and after every epoch
(filters_by_epoch.safetensors); both survive a stop and --resume exactly."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cnnlab.analysis import untrained_like
from cnnlab.errors import RunError
from cnnlab.metrics import LoopState, step_time_summary
from cnnlab.model import weights_digest
from cnnlab.train import train
from faultkit import STEPS_PER_EPOCH, TINY, synthetic_split

STEPS = TINY.epochs * STEPS_PER_EPOCH


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread, as the hardening tests use: the tiny runs are faster and the stopped and
    resumed runs compute with the same numerics as the reference."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _train(out, **kw):
    # figures=False: the run's two PNGs took 1.4 of a tiny run's 2.1 s; what these tests check is
    # the loop, its state and its files (the figures are written and checked in test_train.py)
    kw.setdefault("figures", False)
    return train(kw.pop("cfg", TINY), out, split=synthetic_split(), progress=False, log=lambda s: None, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    res = _train(out)
    return {"out": out, "res": res, "filters": load_file(out / "filters_by_epoch.safetensors")}


# --- the summary ------------------------------------------------------------------------------

def test_summary_by_hand():
    # 5 steps, 2 per epoch: the first epoch is steps 1-2, the rest 3-5; one 100 s outlier
    s = step_time_summary([1.0, 2.0, 3.0, 4.0, 100.0], steps_per_epoch=2)
    assert s["n"] == 5 and s["first_step"] == 1
    assert s["median"] == 3.0 and s["mean"] == 22.0                  # the outlier moves only the mean
    assert s["p10"] == pytest.approx(1.4) and s["p90"] == pytest.approx(61.6)   # linear interpolation
    assert s["first_epoch_median"] == 1.5 and s["rest_median"] == 4.0
    # times known only from step 4 on (a resumed old state): none of the first epoch
    s = step_time_summary([3.0, 5.0], steps_per_epoch=2, first=3)
    assert s["first_step"] == 4 and s["first_epoch_median"] is None and s["rest_median"] == 4.0
    empty = step_time_summary([], steps_per_epoch=2)
    assert empty["n"] == 0 and empty["median"] is None
    json.dumps(empty, allow_nan=False)


def test_loop_state_records_every_step_and_round_trips():
    s = LoopState()
    for sec in (0.01, 0.0123456789, 0.5):
        s.record_step(1.0, 0.0, 4, sec)
    assert s.step_times_s == [0.01, 0.0123457, 0.5]
    assert s.train_time_s == pytest.approx(0.5223456789)
    assert LoopState.from_dict(json.loads(json.dumps(s.to_dict()))) == s


# --- a run's records --------------------------------------------------------------------------

def test_run_records_step_times_and_filters(reference):
    out, res = reference["out"], reference["res"]
    st = res.info.timing.step_time_s
    assert st["n"] == STEPS and st["first_step"] == 1 and st["file"] == "step_times.npy"
    assert st["p10"] <= st["median"] <= st["p90"]
    assert json.loads((out / "run.json").read_text())["timing"]["step_time_s"] == st
    t = np.load(out / "step_times.npy", allow_pickle=False)
    assert t.dtype == np.float32 and t.shape == (STEPS,) and (t > 0).all()
    assert float(t.sum()) == pytest.approx(res.info.timing.train_time_s, rel=1e-4)      # the same seconds
    assert float(t[:STEPS_PER_EPOCH].sum()) == pytest.approx(res.info.timing.epoch_times_s[0], rel=1e-4)
    assert st["median"] == pytest.approx(float(np.median(t)), rel=1e-6)

    f = reference["filters"]
    assert sorted(f) == sorted(f"{layer}.epoch{e}" for layer in ("conv1", "conv2") for e in range(TINY.epochs + 1))
    assert f["conv1.epoch0"].shape == (32, 1, 3, 3) and f["conv2.epoch3"].shape == (32, 32, 3, 3)
    init = untrained_like(res.model, TINY.seed)          # epoch 0 is the initialization, exactly
    assert torch.equal(f["conv1.epoch0"], init.conv1.weight.detach())
    assert torch.equal(f["conv2.epoch0"], init.conv2.weight.detach())
    assert not torch.equal(f["conv1.epoch1"], f["conv1.epoch0"])                   # training moved them
    assert res.filters_by_epoch is not None and all(torch.equal(res.filters_by_epoch[k], f[k]) for k in f)
    manifest = json.loads((out / ".cnnlab-manifest.json").read_text())["files"]
    assert {"step_times.npy", "filters_by_epoch.safetensors"} <= set(manifest)


def test_in_memory_run_keeps_the_snapshots():
    res = train(TINY.replace(epochs=1), split=synthetic_split(), progress=False, log=lambda s: None)
    assert res.filters_by_epoch is not None and sorted(res.filters_by_epoch) == [
        "conv1.epoch0", "conv1.epoch1", "conv2.epoch0", "conv2.epoch1"]
    assert res.info.timing.step_time_s["n"] == STEPS_PER_EPOCH


@pytest.mark.parametrize("stop_at", [5, pytest.param(STEPS_PER_EPOCH, marks=pytest.mark.slow),
                                     pytest.param(13, marks=pytest.mark.slow)])
def test_stop_and_resume_keeps_every_record(stop_at, tmp_path, reference):
    out = tmp_path / "run"
    res = _train(out, stop_at_step=stop_at)
    assert res.info.timing.step_time_s["n"] == stop_at
    assert np.load(out / "step_times.npy").shape == (stop_at,)
    assert len(load_file(out / "filters_by_epoch.safetensors")) == 2 * (stop_at // STEPS_PER_EPOCH + 1)
    before = np.load(out / "step_times.npy")
    res = _train(out, resume=True)
    assert weights_digest(res.model) == weights_digest(reference["res"].model)
    t = np.load(out / "step_times.npy")
    assert t.shape == (STEPS,) and np.array_equal(t[:stop_at], before)   # the stopped run's steps are kept
    assert res.info.timing.step_time_s["n"] == STEPS and res.info.timing.step_time_s["first_step"] == 1
    f = load_file(out / "filters_by_epoch.safetensors")
    assert sorted(f) == sorted(reference["filters"])
    assert all(torch.equal(f[k], reference["filters"][k]) for k in f)


def _edit_state(out, pos_edit=None, drop_filters=False):
    meta = json.loads((out / "state" / "state.json").read_text())
    if pos_edit:
        meta["pos"] = pos_edit(meta["pos"])
    if drop_filters:
        path = out / "state" / meta["tensors"]
        tensors = {k: v for k, v in load_file(path).items() if not k.startswith("filters.")}
        save_file(tensors, path)
        meta["tensors_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (out / "state" / "state.json").write_text(json.dumps(meta))


def test_resume_of_a_state_saved_before_these_records(tmp_path, reference):
    """A state written by an earlier cnnlab (no step times, no filter snapshots) resumes exactly;
    the summary covers the steps timed after the resume, and no filter history is claimed."""
    out = tmp_path / "run"
    _train(out, stop_at_step=10)
    _edit_state(out, lambda p: {k: v for k, v in p.items() if k not in ("step_times_s", "step_times_from")},
                drop_filters=True)
    res = _train(out, resume=True)
    assert weights_digest(res.model) == weights_digest(reference["res"].model)
    st = res.info.timing.step_time_s
    assert st["n"] == STEPS - 10 and st["first_step"] == 11 and st["first_epoch_median"] is None
    assert np.load(out / "step_times.npy").shape == (STEPS - 10,)
    assert res.filters_by_epoch is None
    assert not (out / "filters_by_epoch.safetensors").exists()     # the stopped part's file: partial


@pytest.mark.parametrize("edit, match", [
    (lambda p: {**p, "step_times_s": p["step_times_s"][:-1]}, "step_times_s holds 4 step times"),
    (lambda p: {**p, "step_times_s": p["step_times_s"][:-1] + [-0.5]}, "negative"),
    (lambda p: {**p, "step_times_s": "fast"}, "pos.step_times_s must be a list"),
    (lambda p: {k: v for k, v in p.items() if k != "step_times_from"}, "pos.step_times_from is missing"),
])
def test_edited_step_times_are_refused_in_one_line(edit, match, tmp_path):
    out = tmp_path / "run"
    _train(out, stop_at_step=5)
    _edit_state(out, edit)
    with pytest.raises(RunError, match="cannot resume") as e:
        _train(out, resume=True)
    assert match in str(e.value) and "\n" not in str(e.value)


def test_damaged_filter_snapshots_are_refused(tmp_path):
    out = tmp_path / "run"
    _train(out, stop_at_step=9)
    meta = json.loads((out / "state" / "state.json").read_text())
    path = out / "state" / meta["tensors"]
    tensors = load_file(path)
    del tensors["filters.conv2.epoch1"]
    save_file(tensors, path)
    meta["tensors_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (out / "state" / "state.json").write_text(json.dumps(meta))
    with pytest.raises(RunError, match="filter snapshots are not those of epochs 0..1"):
        _train(out, resume=True)


def test_load_step_times(tmp_path, reference):
    from cnnlab.analysis.batch_norm import load_step_times, time_verdict_steps
    from cnnlab.runs import open_run
    from faultkit import fake_run
    t = load_step_times(open_run(reference["out"]))
    assert t is not None and t.dtype == np.float64 and t.shape == (STEPS,)
    assert np.array_equal(t, np.load(reference["out"] / "step_times.npy").astype(np.float64))
    v = time_verdict_steps(t, t)                      # a run against itself: ratio 1 (24 steps: a wide interval)
    assert v.numbers["ratio"] == 1.0 and v.key in ("same", "inconclusive") and v.numbers["ci_low"] <= 1 <= v.numbers["ci_high"]
    old = fake_run(tmp_path / "old")
    assert load_step_times(old) is None                                 # trained before steps were timed
    np.save(old / "step_times.npy", np.array([[1.0, 2.0]]))
    with pytest.raises(RunError, match="not a list of step times"):
        load_step_times(old)
    (old / "step_times.npy").write_bytes(b"not numpy")
    with pytest.raises(RunError, match="damaged"):
        load_step_times(old)
