"""Bad input and faults, as tables: each case must end in one clear error of cnnlab's own types
(one line, no traceback, non-zero exit for the CLI) and must lose no data. Every case counts on
the scorecard printed at the end of `make test` (tests/scorecard.py)."""

from __future__ import annotations

import errno
import functools
import gzip
import hashlib
import http.server
import io
import json
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab import data
from cnnlab.cli import main as cli_main
from cnnlab.errors import (CheckpointError, DataError, IdxFormatError, ImageError,
                           RunError, TrainingError)
from cnnlab.model import Net, load_weights, weights_digest
from cnnlab.runs import RunLock, open_run

from faultkit import (STEPS_PER_EPOCH, TINY, comparable_metrics, fake_run, sha, snapshot,
                      state_digest, synthetic_split, tensors_digest)

pytestmark = pytest.mark.fault
TESTS = Path(__file__).resolve().parent
PY = sys.executable


def one_line(msg: str) -> None:
    assert msg and "\n" not in msg.strip() and "Traceback" not in msg, msg


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """`cnnlab argv` in-process: (exit status, stdout, stderr); argparse's exit counts as one."""
    try:
        code = cli_main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


# =============================================================================================
# IDX files
# =============================================================================================

def idx(arr: np.ndarray, code: int = 0x08) -> bytes:
    dt = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    return bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.astype(dt).tobytes()


GOOD = idx(np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28))

IDX_CASES = {
    "wrong magic":            (b"\x08\x03" + GOOD[2:], "magic"),
    "wrong magic 2nd byte":   (b"\x00\x01" + GOOD[2:], "magic"),
    "wrong dtype code":       (GOOD[:2] + b"\x07" + GOOD[3:], "data type"),
    "dtype code 0xff":        (GOOD[:2] + b"\xff" + GOOD[3:], "data type"),
    "zero dimensions":        (GOOD[:3] + b"\x00" + GOOD[4:], "dimensions"),
    "five dimensions":        (GOOD[:3] + b"\x05" + GOOD[4:], "dimensions"),
    "empty":                  (b"", "too short"),
    "header only 3 bytes":    (GOOD[:3], "too short"),
    "truncated header":       (GOOD[:9], "truncated header"),
    "truncated data":         (GOOD[:-1], "truncated"),
    "half the data":          (GOOD[:len(GOOD) // 2], "truncated"),
    "trailing bytes":         (GOOD + b"\x00\x00", "trailing"),
    "declares 2^31×2^31":     (bytes([0, 0, 8, 2]) + struct.pack(">II", 2**31, 2**31) + b"\0" * 8, "truncated"),
    "declares 4×2^32-1 dims": (bytes([0, 0, 0x0E, 4]) + struct.pack(">IIII", *[2**32 - 1] * 4), "truncated"),
    "not bytes":              ("a string", "expected bytes"),
}


@pytest.mark.parametrize("name", list(IDX_CASES))
def test_idx_parser_refuses(name, monkeypatch):
    raw, needle = IDX_CASES[name]
    # "checked before allocating anything": no array may be made from a refused file
    monkeypatch.setattr(np, "frombuffer", lambda *a, **k: pytest.fail("allocated before checking"))
    with pytest.raises(IdxFormatError, match=needle) as e:
        data.parse_idx(raw, "f")
    one_line(str(e.value))


def _pair(n_img=3, n_lab=3, label=1):
    return {"train_images": np.zeros((n_img, 28, 28), np.uint8), "train_labels": np.full(n_lab, label, np.uint8),
            "test_images": np.zeros((2, 28, 28), np.uint8), "test_labels": np.zeros(2, np.uint8)}


@pytest.mark.parametrize("arrays, needle", [
    (_pair(label=10), "out of range"),
    (_pair(label=255), "out of range"),
    (_pair(n_img=3, n_lab=4), "3 images but 4 labels"),
    (_pair(n_img=5, n_lab=0), "5 images but 0 labels"),
    ({**_pair(), "train_images": np.zeros((3, 27, 28), np.uint8)}, "28, 28"),
    ({**_pair(), "train_labels": np.zeros((3, 1), np.uint8)}, "labels"),
], ids=["label 10", "label 255", "counts disagree", "no labels", "27×28 images", "2-d labels"])
def test_idx_contents_refused(arrays, needle):
    with pytest.raises(IdxFormatError, match=needle) as e:
        data._check_pair(data.get_spec("mnist"), arrays)
    one_line(str(e.value))


@pytest.mark.parametrize("case", ["truncated gzip", "not gzip", "gzip bomb", "missing", "directory", "too large raw"])
def test_read_bytes_refuses(case, tmp_path):
    p = tmp_path / "f.gz"
    limit = data.MAX_IDX_BYTES
    if case == "truncated gzip":
        p.write_bytes(gzip.compress(GOOD)[:-12])
    elif case == "not gzip":
        p.write_bytes(b"hello, not gzip")
    elif case == "gzip bomb":
        p.write_bytes(gzip.compress(b"\0" * 100_000))
        limit = 1000
    elif case == "missing":
        p = tmp_path / "nothing.gz"
    elif case == "directory":
        p = tmp_path / "d.gz"
        p.mkdir()
    elif case == "too large raw":
        p = tmp_path / "raw"
        p.write_bytes(b"\0" * 2000)
        limit = 1000
    with pytest.raises(DataError) as e:
        data.read_bytes(p, limit=limit)
    one_line(str(e.value))
    if case in ("gzip bomb", "too large raw"):
        assert "larger" in str(e.value) or "more than" in str(e.value)


# =============================================================================================
# Downloads: a tiny dataset with its own spec, served by a local HTTP server
# =============================================================================================

def _tiny_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {"train_images": idx(rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)),
            "train_labels": idx(rng.integers(0, 10, 5, dtype=np.uint8)),
            "test_images": idx(rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)),
            "test_labels": idx(rng.integers(0, 10, 3, dtype=np.uint8))}


TINY_FILES = _tiny_files()
TINY_SPEC = data.DatasetSpec("tiny", {k: hashlib.sha256(v).hexdigest() for k, v in TINY_FILES.items()},
                             tuple(str(i) for i in range(10)))
BY_NAME = {TINY_SPEC.file_name(k) + ".gz": gzip.compress(v) for k, v in TINY_FILES.items()}


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        kind, _, name = self.path.strip("/").partition("/")
        body = BY_NAME.get(name)
        if body is None or kind == "404":
            self.send_error(404)
            return
        length = len(body)
        if kind == "bad":            # a different file: valid gzip, wrong content
            body = gzip.compress(TINY_FILES["test_labels"] + b"\x00")
            length = len(body)
        elif kind == "short":        # the connection drops before Content-Length bytes arrive
            length, body = len(body), body[: len(body) // 2]
        elif kind == "truncgz":      # an honest length, but a cut gzip stream
            body = body[: len(body) - 10]
            length = len(body)
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        if kind == "short":
            self.close_connection = True


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def hanging():
    """A server that accepts connections (the kernel does) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


@pytest.fixture
def tiny_dataset(monkeypatch, tmp_path):
    monkeypatch.setitem(data.DATASETS, "tiny", TINY_SPEC)
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "tiny"


def _mirror(base: str, timeout: float = 1.0) -> data.Source:
    return data.Source(f"mirror {base}", lambda: data._from_mirror(TINY_SPEC, base + "/", timeout), cache=True)


def _refused_port() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("kinds, needle", [
    (["bad"], "SHA-256"),
    (["short"], "truncated"),
    (["truncgz"], "gzip"),
    (["404"], "Not Found"),
    (["hang"], "timed out"),
    (["refused"], "refused"),
    (["bad", "short", "hang", "404"], "SHA-256"),
    ([], "no source at all"),
], ids=["checksum mismatch", "truncated download", "truncated gzip", "404", "hanging source",
        "connection refused", "all four fail", "no source at all"])
def test_download_faults(kinds, needle, server, hanging, tiny_dataset):
    urls = {"hang": hanging, "refused": _refused_port()}
    sources = [_mirror(urls.get(k, f"{server}/{k}"), timeout=0.5) for k in kinds]
    with pytest.raises(DataError) as e:
        data.fetch("tiny", sources=sources)
    msg = str(e.value)
    one_line(msg)
    assert needle in msg
    for s in sources:                       # the message lists every source tried
        assert s.label in msg
    # the cache never holds an unverified file (nor a temp file)
    assert not tiny_dataset.exists() or list(tiny_dataset.iterdir()) == []


def test_download_good_source_after_bad_ones_is_verified_and_cached(server, hanging, tiny_dataset):
    sources = [_mirror(f"{server}/bad"), _mirror(hanging, 0.5), _mirror(f"{server}/good")]
    raw = data.fetch("tiny", sources=sources)
    assert raw.source.startswith(f"mirror {server}/good")
    assert sorted(p.name for p in tiny_dataset.iterdir()) == sorted(TINY_SPEC.file_name(k) for k in data.FILE_KEYS)
    for k in data.FILE_KEYS:
        assert sha(tiny_dataset / TINY_SPEC.file_name(k)) == TINY_SPEC.sha256[k]
    # and the cache is now a source of its own, offline
    assert data.fetch("tiny").source.startswith("cache")


def test_full_disk_while_caching_leaves_no_file(server, tiny_dataset, monkeypatch):
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(DataError, match="no space left") as e:
        data.fetch("tiny", sources=[_mirror(f"{server}/good")])
    one_line(str(e.value))
    assert not tiny_dataset.exists() or list(tiny_dataset.iterdir()) == []


# =============================================================================================
# Checkpoints and run directories
# =============================================================================================

class _Planted:
    """Unpickling this creates a file: the proof that something ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _pickle_file(path: Path, marker: Path, protocol: int) -> None:
    path.write_bytes(pickle.dumps({"conv1.weight": _Planted(marker)}, protocol=protocol))


def _torch_save_file(path: Path, marker: Path) -> None:
    buf = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(1), "evil": _Planted(marker)}, buf)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("kind", [f"pickle protocol {p}" for p in range(pickle.HIGHEST_PROTOCOL + 1)] + ["torch.save zip"])
@pytest.mark.parametrize("via", ["load_weights", "cli predict", "cli evaluate"])
def test_pickles_are_refused_and_never_executed(kind, via, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    run = fake_run(tmp_path / "run")
    ckpt = run / "model.safetensors"
    if kind.startswith("pickle"):
        _pickle_file(ckpt, marker, int(kind.split()[-1]))
    else:
        _torch_save_file(ckpt, marker)
    assert not marker.exists()
    if via == "load_weights":
        with pytest.raises(CheckpointError) as e:
            load_weights(ckpt)
        one_line(str(e.value))
    else:
        img = tmp_path / "x.png"
        from PIL import Image
        Image.new("L", (40, 40), 255).save(img)
        argv = ["predict", run, img] if via == "cli predict" else ["evaluate", run]
        code, out, err = run_cli(argv, capsys)
        assert code != 0 and "error:" in err
        one_line(err)
    assert not marker.exists(), "something in the file was executed"


def _tensors(bn=False):
    from cnnlab.model import state_tensors
    torch.manual_seed(0)
    return state_tensors(Net(batch_norm=bn))


def _write_st(path, tensors):
    from safetensors.torch import save_file
    save_file(tensors, str(path))


CKPT_CASES = {
    "bn checkpoint as plain": (lambda p: _write_st(p, _tensors(True)), False, "batch-norm network but the plain"),
    "plain checkpoint as bn": (lambda p: _write_st(p, _tensors(False)), True, "plain network but the batch-norm"),
    "missing tensor": (lambda p: _write_st(p, {k: v for k, v in _tensors().items() if k != "fc2.bias"}), None, "missing fc2.bias"),
    "extra tensor": (lambda p: _write_st(p, {**_tensors(), "fc3.weight": torch.zeros(2)}), None, "unexpected fc3.weight"),
    "wrong shape": (lambda p: _write_st(p, {**_tensors(), "fc1.weight": torch.zeros(500, 10)}), None, "wrong shape fc1.weight"),
    "non-finite weights": (lambda p: _write_st(p, {**_tensors(), "fc2.bias": torch.full((10,), float("nan"))}), None, "non-finite"),
    "empty file": (lambda p: p.write_bytes(b""), None, "not a valid safetensors"),
    "random bytes": (lambda p: p.write_bytes(os.urandom(4096)), None, "not a valid safetensors"),
    "text file": (lambda p: p.write_text("these are not the weights you are looking for\n"), None, "not a valid safetensors"),
    "truncated safetensors": (lambda p: (_write_st(p, _tensors()), p.write_bytes(p.read_bytes()[:5000])), None, "not a valid safetensors"),
    "header length lies": (lambda p: p.write_bytes(struct.pack("<Q", 2**40) + b"{}"), None, "not a valid safetensors"),
    "zip archive": (lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 100), None, "pickle/torch.save"),
    "missing file": (lambda p: None, None, "no checkpoint"),
    "directory": (lambda p: p.mkdir(), None, "no checkpoint"),
}


@pytest.mark.parametrize("name", list(CKPT_CASES))
def test_checkpoint_refused_with_the_difference_named(name, tmp_path):
    make, bn, needle = CKPT_CASES[name]
    p = tmp_path / "model.safetensors"
    make(p)
    with pytest.raises(CheckpointError) as e:
        load_weights(p, batch_norm=bn)
    one_line(str(e.value))
    assert needle in str(e.value)


def _edit_run_json(run: Path, edit) -> None:
    rj = run / "run.json"
    if edit is None:
        rj.unlink()
    elif isinstance(edit, str):
        rj.write_text(edit)
    else:
        info = json.loads(rj.read_text())
        edit(info)
        rj.write_text(json.dumps(info))


RUN_CASES = {
    "no run.json": (None, "no run.json"),
    "malformed JSON": ('{"format": 1, "config": {', "not valid JSON"),
    "not UTF-8": ("\udcff", None),
    "a list": ("[1, 2, 3]", "JSON object"),
    "empty object": ("{}", "lacks the field(s) format, config, split, versions, status"),
    **{f"missing {f}": ((lambda f: lambda i: i.pop(f))(f), f"lacks the field(s) {f}")
       for f in ("format", "config", "split", "versions", "status")},
    "config not an object": (lambda i: i.update(config=[1]), "'config' must be an object"),
    "split not an object": (lambda i: i.update(split="x"), "'split' must be an object"),
    "future format": (lambda i: i.update(format=99), "format 99"),
    "batch_norm not a bool": (lambda i: i["config"].update(batch_norm="yes"), "batch_norm"),
    "says bn, weights plain": (lambda i: i["config"].update(batch_norm=True), "plain network but the batch-norm"),
    "no weights": ("weights", "no checkpoint"),
}


@pytest.mark.parametrize("name", list(RUN_CASES))
def test_damaged_run_directory(name, tmp_path, capsys):
    edit, needle = RUN_CASES[name]
    run = fake_run(tmp_path / "run")
    if edit == "weights":
        (run / "model.safetensors").unlink()
    elif edit == "\udcff":
        (run / "run.json").write_bytes(b"\xff\xfe{not utf-8")
    else:
        _edit_run_json(run, edit)
    with pytest.raises((RunError, CheckpointError)) as e:
        open_run(run).load_model()
    one_line(str(e.value))
    if needle:
        assert needle in str(e.value)
    # and the CLI says the same in one line, exit non-zero
    img = tmp_path / "x.png"
    from PIL import Image
    Image.new("L", (40, 40), 0).save(img)
    code, out, err = run_cli(["predict", run, img], capsys)
    assert code == 2 and err.startswith("cnnlab predict: error:")
    one_line(err)


# =============================================================================================
# Training faults
# =============================================================================================

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: these tiny runs are 10× faster on a busy 2-core machine, and the
    stopped-and-resumed runs must use the same numerics as the reference (children do too)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _train(out, **kw):
    from cnnlab.train import train
    return train(kw.pop("cfg", TINY), out, split=kw.pop("split", None) or synthetic_split(),
                 progress=False, log=lambda s: None, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny run: what every stopped-and-resumed run must equal exactly."""
    out = tmp_path_factory.mktemp("ref") / "run"
    res = _train(out)
    return {"out": out, "best": tensors_digest(out / "model.safetensors"), "state": state_digest(out),
            "digest": weights_digest(res.model), "metrics": comparable_metrics(out),
            "test": res.info["test"]}


def assert_same_as_reference(out: Path, reference: dict, res=None) -> None:
    assert state_digest(out) == reference["state"], "final weights/optimizer state differ"
    assert tensors_digest(out / "model.safetensors") == reference["best"], "best checkpoint differs"
    assert comparable_metrics(out) == reference["metrics"], "metrics.csv differs"
    if res is not None:
        assert weights_digest(res.model) == reference["digest"]
        assert res.info["test"] == reference["test"]
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("stop_at", [1, 5, STEPS_PER_EPOCH, 13])
def test_stop_and_resume_is_exact(stop_at, tmp_path, reference):
    """Ctrl-C after step N (the test hook), then --resume: identical to never stopping. Step 1 is
    before the first evaluation; step 8 is an epoch's end; 5 and 13 are mid-epoch."""
    out = tmp_path / "run"
    res = _train(out, stop_at_step=stop_at)
    assert res.interrupted and res.info["steps"] == stop_at
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    open_run(out).load_model()                      # an interrupted run opens and loads
    res = _train(out, resume=True)
    assert_same_as_reference(out, reference, res)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
@pytest.mark.timeout(120)
def test_signal_stops_after_the_current_step_and_resume_is_exact(sig, tmp_path, reference):
    out = tmp_path / "run"
    p = subprocess.run([PY, TESTS / "faultkit.py", "signal", out, sig, "6"],
                       capture_output=True, text=True, timeout=110)
    assert p.returncode == 130, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == {"interrupted": True, "steps": 6}
    # everything is written: the state of step 6, the metrics so far, run.json, the checkpoint
    assert json.loads((out / "state" / "state.json").read_text())["pos"]["step"] == 6
    assert [r["step"] for r in comparable_metrics(out)] == [3, 6]
    open_run(out).load_model()
    res = _train(out, resume=True)
    assert_same_as_reference(out, reference, res)


@pytest.mark.parametrize("target, nth, how", [
    ("model.safetensors", 2, "before-rename"),
    ("model.safetensors", 3, "mid-write"),
    ("state-", 2, "before-rename"),
    ("state-", 1, "mid-write"),
    ("state.json", 2, "before-rename"),
    ("metrics.csv", 4, "mid-write"),
])
@pytest.mark.timeout(120)
def test_sigkill_while_saving_keeps_the_previous_file(target, nth, how, tmp_path, reference):
    out = tmp_path / "run"
    p = subprocess.run([PY, TESTS / "faultkit.py", "kill", out, target, str(nth), how],
                       capture_output=True, text=True, timeout=110)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    killed = json.loads((tmp_path / "killed.json").read_text())
    assert sha(killed["dst"]) == killed["sha"], "the file being replaced was damaged"
    if (out / "model.safetensors").exists():
        load_weights(out / "model.safetensors")      # the previous checkpoint loads
    if (out / "state" / "state.json").exists():
        res = _train(out, resume=True)               # and the run resumes, exactly
        assert_same_as_reference(out, reference, res)


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path):
    out, seen = tmp_path / "run", {}

    def poison(state, loss):
        if state.step == 11:                         # step 12, in the second epoch
            seen.update(snapshot(out))
            return loss * float("nan")
        return None
    with pytest.raises(TrainingError, match="step 12") as e:
        _train(out, callback=poison)
    one_line(str(e.value))
    assert "model.safetensors" in seen
    after = snapshot(out)
    assert {k: after.get(k) for k in seen if k != "metrics.csv"} == {k: v for k, v in seen.items() if k != "metrics.csv"}
    m = load_weights(out / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in m.state_dict().values())
    assert max(r["step"] for r in comparable_metrics(out)) < 12


@pytest.mark.parametrize("target, nth", [("model.safetensors", 4), ("state-", 2), ("state.json", 2),
                                         ("metrics.csv", 5), ("run.json", 1)])
def test_full_disk_leaves_previous_files_intact(target, nth, tmp_path, monkeypatch, reference):
    out = tmp_path / "run"
    real_fsync, count, before = os.fsync, {"n": 0}, {}

    def fsync(fd):
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if name.startswith("." + target):
            count["n"] += 1
            if count["n"] == nth:
                before.update(snapshot(out))
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(RunError, match="no space left") as e:
        _train(out)
    one_line(str(e.value))
    assert snapshot(out) == before, "a file changed"
    assert not list(out.rglob("*.tmp")), "a temp file was left behind"
    monkeypatch.setattr(os, "fsync", real_fsync)     # space freed: resume finishes, exactly
    res = _train(out, resume=True)
    assert_same_as_reference(out, reference, res)


def test_second_trainer_is_refused_by_the_lock(tmp_path, capsys):
    out = fake_run(tmp_path / "run")
    with RunLock(out):
        before = snapshot(out)
        # another process (the real CLI), even with --overwrite
        p = subprocess.run([PY, "-m", "cnnlab", "train", "--preset", "smoke", "--out", out, "--overwrite"],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and "in use by another cnnlab process" in p.stderr, p.stderr
        one_line(p.stderr)
        # and in this process too (flock locks are per open file, not per process)
        with pytest.raises(RunError, match="in use"):
            _train(out, overwrite=True)
    assert snapshot(out) == before, "nothing may be overwritten"


@pytest.mark.timeout(200)
def test_cli_sigint_then_resume(tmp_path, mnist_dir):
    """The real command: Ctrl-C during training exits 130 with everything written; --resume
    finishes the run."""
    out = tmp_path / "run"
    argv = [PY, "-m", "cnnlab", "train", "--preset", "smoke", "--train-subset", "1024", "--batch-size", "64",
            "--epochs", "2", "--precision", "fp32", "--out", str(out), "--data-dir", str(mnist_dir), "--quiet"]
    env = {**os.environ, "CNNLAB_OFFLINE": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        import time
        deadline = time.monotonic() + 150
        while not (out / "metrics.csv").exists():     # training has begun: the handler is in place
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "interrupted" and info["steps"] < 2 * 16
    p = subprocess.run(argv + ["--resume"], capture_output=True, text=True, env=env, timeout=150)
    assert p.returncode == 0, p.stderr
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and info["steps"] == 2 * 16


@pytest.mark.parametrize("case", ["holds a run", "holds a run (weights only)", "is a file",
                                  "resume nothing", "resume damaged state", "resume damaged config"])
def test_output_folder_refused_before_any_work(case, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--preset", "smoke", "--out", out]
    if case.startswith("holds a run"):
        fake_run(out)
        if "weights only" in case:
            (out / "run.json").unlink()
    elif case == "is a file":
        out.write_text("a file")
    elif case == "resume nothing":
        out.mkdir()
        argv.append("--resume")
    else:
        _train(out, stop_at_step=3)
        name = "state.json" if case == "resume damaged state" else "config.json"
        (out / "state" / name).write_text("{damaged")
        argv.append("--resume")
    before = snapshot(out) if out.is_dir() else None
    before and before.pop(".lock", None)
    # No data is reachable here (offline, empty cache): a refusal that came after loading data
    # would read "could not obtain mnist" instead.
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and err.startswith("cnnlab train: error:"), err
    one_line(err)
    assert "could not obtain" not in err
    if before is not None:
        after = snapshot(out)
        after.pop(".lock", None)
        assert after == before


# =============================================================================================
# The command line
# =============================================================================================

CLI_CASES = {
    "unknown option": (["train", "--bogus"], "unrecognized arguments"),
    "unknown command": (["frobnicate"], "invalid choice"),
    "epochs 0": (["train", "--epochs", "0"], "--epochs"),
    "epochs -3": (["train", "--epochs", "-3"], "--epochs"),
    "epochs not a number": (["train", "--epochs", "two"], "--epochs"),
    "batch size 0": (["train", "--batch-size", "0"], "--batch-size"),
    "batch size 60001": (["train", "--batch-size", "60001"], "--batch-size"),
    "lr NaN": (["train", "--lr", "nan"], "not a finite number"),
    "lr inf": (["train", "--lr", "inf"], "not a finite number"),
    "lr 0": (["train", "--lr", "0"], "--lr"),
    "lr negative": (["train", "--lr", "-1e-3"], "--lr"),
    "weight decay < 0": (["train", "--weight-decay", "-1"], "--weight-decay"),
    "label smoothing 1": (["train", "--label-smoothing", "1"], "--label-smoothing"),
    "seed -1": (["train", "--seed", "-1"], "--seed"),
    "device tpu": (["train", "--device", "tpu"], "invalid choice"),
    "preset huge": (["train", "--preset", "huge"], "invalid choice"),
    "predict: no images": (["predict", "runs/x"], "required"),
    "predict: top 0": (["predict", "runs/x", "a.png", "--top", "0"], "--top"),
    "predict: top 11": (["predict", "runs/x", "a.png", "--top", "11"], "--top"),
    "predict: no such run": (["predict", "/nonexistent/run", "a.png"], "does not exist"),
    "predict: --out without --explain": (["predict", "/nonexistent/run", "a.png", "--out", "x"], "--explain"),
    "evaluate: no run": (["evaluate"], "required"),
    "evaluate: no such run": (["evaluate", "/nonexistent/run"], "does not exist"),
    "data: unknown dataset": (["data", "--dataset", "cifar"], "invalid choice"),
    # the occlusion command (issue 3) validates at parse time too
    "occlusion: patch size 9": (["occlusion", "runs/x", "--patch", "9"], "--patch"),
    "occlusion: class 12": (["occlusion", "runs/x", "--target", "12"], "--target"),
    "occlusion: stride 0": (["occlusion", "runs/x", "--stride", "0"], "--stride"),
}


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_cli_bad_input_is_one_clear_line(name, capsys):
    argv, needle = CLI_CASES[name]
    code, out, err = run_cli(argv, capsys)
    assert code == 2, (code, err)
    assert needle in err, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("cnnlab")   # argparse prints usage, then one error line


# =============================================================================================
# User images (the files themselves; predict.py's conversion is tested in test_predict.py)
# =============================================================================================

def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w×h pixels and holds a few bytes of image data: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))


def _image_bytes(fmt: str, size=(64, 64)) -> bytes:
    from PIL import Image, ImageDraw
    img = Image.new("L", size, 255)
    ImageDraw.Draw(img).line([(10, 10), (50, 54)], fill=0, width=6)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def _real_bomb() -> bytes:
    """A real 10000×10000 PNG (100 megapixels, 100 MB decoded) of zeros: ~100 KB of file."""
    z = zlib.compressobj(9)
    row = b"\0" * 10001                             # one filter byte + 10000 pixels
    raw = b"".join(z.compress(row) for _ in range(10000)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", 10000, 10000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", raw) + _png_chunk(b"IEND", b"")


IMAGE_CASES = {
    "empty file": (lambda: b"", "empty"),
    "text file": (lambda: b"7\n", "not a readable image"),
    "html": (lambda: b"<html><body>7</body></html>", "not a readable image"),
    "svg": (lambda: b'<svg xmlns="http://www.w3.org/2000/svg"><text>7</text></svg>', "not a readable image"),
    "random bytes": (lambda: np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "not a readable image"),
    "PNG signature only": (lambda: b"\x89PNG\r\n\x1a\n", "not a readable image"),
    "truncated PNG": (lambda: _image_bytes("PNG")[:-40], "truncated"),
    "PNG, data cut in half": (lambda: (lambda b: b[:len(b) // 2])(_image_bytes("PNG")), "truncated"),
    "PNG with bad CRC": (lambda: (lambda b: b[:40] + bytes([b[40] ^ 0xFF]) + b[41:])(_image_bytes("PNG")), "damaged header"),
    "truncated JPEG": (lambda: _image_bytes("JPEG")[:300], "truncated"),
    "truncated GIF": (lambda: _image_bytes("GIF")[:60], "truncated"),
    "bomb header 100000×100000": (lambda: png_header_only(100_000, 100_000), "bomb"),
    "bomb header 8000×8000": (lambda: png_header_only(8000, 8000), "pixel"),
    "real 100-megapixel bomb": (_real_bomb, "bomb"),
    "EPS (would run Ghostscript)": (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "not a readable image"),
    "zero-width PNG": (lambda: png_header_only(0, 10), "not a readable image"),
    "blank white image": (lambda: _blank(255), "no digit"),
    "blank black image": (lambda: _blank(0), "no digit"),
    "near-uniform noise": (lambda: _blank(128, noise=2), "no digit"),
}


def _blank(level: int, noise: int = 0) -> bytes:
    from PIL import Image
    a = np.full((50, 50), level, np.int16) + np.random.default_rng(0).integers(-noise, noise + 1, (50, 50))
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name", list(IMAGE_CASES))
@pytest.mark.parametrize("via", ["file", "bytes"])
@pytest.mark.timeout(60)
def test_bad_images_one_line_each(name, via, tmp_path):
    from cnnlab.predict import load_image, preprocess_bytes, to_mnist
    make, needle = IMAGE_CASES[name]
    blob = make()
    with pytest.raises(ImageError) as e:
        if via == "file":
            p = tmp_path / "digit.png"
            p.write_bytes(blob)
            to_mnist(load_image(p))
        else:
            preprocess_bytes(blob)
    msg = str(e.value)
    one_line(msg)
    assert needle in msg, msg


@pytest.mark.parametrize("case", ["missing", "directory", "over the byte limit", "not a path"])
def test_unreadable_image_sources(case, tmp_path):
    from cnnlab.predict import load_image, preprocess_bytes
    with pytest.raises(ImageError) as e:
        if case == "missing":
            load_image(tmp_path / "nope.png")
        elif case == "directory":
            load_image(tmp_path)
        elif case == "over the byte limit":
            preprocess_bytes(_image_bytes("PNG"), max_bytes=100)
        else:
            load_image(12345)
    one_line(str(e.value))


def test_cli_predict_mixed_files_each_failure_one_line(tmp_path, capsys):
    """Bad files get one line each on stderr; the good one is still classified; exit 1."""
    run = fake_run(tmp_path / "run")
    files = {}
    for name, blob in [("good.png", _image_bytes("PNG")), ("empty.png", b""), ("notes.txt", b"7"),
                       ("cut.jpg", _image_bytes("JPEG")[:300]), ("bomb.png", png_header_only(100_000, 100_000)),
                       ("good.jpg", _image_bytes("JPEG"))]:
        files[name] = tmp_path / name
        files[name].write_bytes(blob)
    files["missing.png"] = tmp_path / "missing.png"
    code, out, err = run_cli(["predict", run, *files.values(), "--json"], capsys)
    assert code == 1
    results = json.loads(out)
    assert [r["file"] for r in results] == [str(p) for p in files.values()]
    for r in results:
        good = Path(r["file"]).name.startswith("good")
        assert set(r) == ({"file", "prediction", "probabilities"} if good else {"file", "error"})
    lines = err.strip().splitlines()
    assert len(lines) == 5 and all(line.startswith("cnnlab predict: error: ") for line in lines)
    assert "Traceback" not in err
