"""Helpers for the hardening tests: a tiny synthetic split, a tiny training config, fake run
directories, and a child-process entry point that trains and then dies or is signalled at a
chosen moment (`python tests/faultkit.py MODE OUT ...`)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cnnlab.config import TrainConfig  # noqa: E402
from cnnlab.data import Split  # noqa: E402
from cnnlab.run_record import SplitInfo  # noqa: E402

# 512 training images in batches of 64: 8 steps per epoch, 24 in all; a log point every 3 steps.
TINY = TrainConfig(epochs=3, batch_size=64, augment=True, precision="fp32", log_every=3, seed=0)
STEPS_PER_EPOCH = 8


def synthetic_split(seed: int = 0) -> Split:
    """Noise images whose class is a bright 7×7 block at one of 10 places: learnable in a few
    steps (so validation accuracy improves and the best checkpoint is saved several times),
    deterministic, and milliseconds per step."""
    g = torch.Generator().manual_seed(seed)
    def part(n):
        y = torch.randint(0, 10, (n,), generator=g)
        x = torch.randint(0, 200, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
        for i, c in enumerate(y.tolist()):
            r, col = (c // 4) * 9 + 1, (c % 4) * 7
            x[i, 0, r:r + 7, col:col + 7] += 25
        return x, y
    (tx, ty), (vx, vy), (sx, sy) = part(512), part(128), part(128)
    info = SplitInfo(dataset="mnist", source="synthetic", split_seed=0, train_size=512, val_size=128,
                     test_size=128, val_indices_sha256="synthetic", train_subset=0, files_sha256={})
    return Split("mnist", tuple(str(i) for i in range(10)), tx, ty, vx, vy, sx, sy,
                 mean=float(tx.float().mean() / 255), std=float(tx.float().std() / 255), info=info)


def fake_run(path: Path, batch_norm: bool = False, seed: int = 0, **info_overrides) -> Path:
    """A run directory with an untrained network (seeded) and a minimal valid run.json."""
    from cnnlab.model import Net, save_weights
    from cnnlab.output import write_json
    from cnnlab.runs import RUN_FORMAT
    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    save_weights(Net(batch_norm=batch_norm), path / "model.safetensors")
    info = {"format": RUN_FORMAT, "status": "complete",
            "config": TINY.replace(batch_norm=batch_norm).to_dict(), "split": {"val_size": 128},
            "versions": {}, **info_overrides}
    write_json(path / "run.json", info)
    return path


def sha(path: Path) -> str | None:
    path = Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under `directory` (relative name -> SHA-256), except temp files being written."""
    directory = Path(directory)
    return {str(p.relative_to(directory)): sha(p) for p in sorted(directory.rglob("*"))
            if p.is_file() and not p.name.endswith(".tmp")}


def tensors_digest(path: Path) -> str:
    """SHA-256 over the tensors of a safetensors file (its bytes are not canonical: the metadata
    is written in hash-map order)."""
    from cnnlab.model import read_safetensors
    tensors, _ = read_safetensors(path)
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].numpy().tobytes())
    return h.hexdigest()


def state_digest(out: Path) -> str:
    """SHA-256 over the saved training state (weights and optimizer tensors) of a run."""
    meta = json.loads((Path(out) / "state" / "state.json").read_text())
    return tensors_digest(Path(out) / "state" / meta["tensors"])


def comparable_metrics(out: Path) -> list[dict]:
    """metrics.csv without the wall-clock columns."""
    from cnnlab.metrics import read_metrics
    return [{k: v for k, v in r.items() if k not in ("train_time_s", "elapsed_s")}
            for r in read_metrics(Path(out) / "metrics.csv")]


def _die_on(target: str, nth: int, how: str, record: Path) -> None:
    """SIGKILL this process the `nth` time a file whose name starts with `target` is saved:
    how="before-rename": the temp file is complete and fsynced, the rename has not happened;
    how="mid-write": at fsync, after cutting the temp file to half its length."""
    count = {"n": 0}
    real_replace, real_fsync = os.replace, os.fsync

    def note_and_die(dst: str) -> None:
        record.write_text(json.dumps({"dst": dst, "sha": sha(Path(dst))}))
        os.kill(os.getpid(), signal.SIGKILL)

    def replace(src, dst, *a, **k):
        if how == "before-rename" and Path(dst).name.startswith(target):
            count["n"] += 1
            if count["n"] == nth:
                note_and_die(str(dst))
        return real_replace(src, dst, *a, **k)

    def fsync(fd):
        tmp = os.readlink(f"/proc/self/fd/{fd}")
        name = Path(tmp).name                       # ".<name>.<random>.tmp"
        if how == "mid-write" and name.startswith("." + target):
            count["n"] += 1
            if count["n"] == nth:
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                note_and_die(str(Path(tmp).parent / name[1:].rsplit(".", 2)[0]))
        return real_fsync(fd)

    os.replace, os.fsync = replace, fsync


def _child(argv: list[str]) -> int:
    import cnnlab.train as T
    torch.set_num_threads(1)           # as test_hardening.py: the same numerics as the parent
    mode, out = argv[0], Path(argv[1])
    split = synthetic_split()
    if mode == "signal":                    # deliver a real signal to ourselves during step K
        signum, k = getattr(signal, argv[2]), int(argv[3])

        def during_step(state, loss):
            if state.step == k - 1:         # `state.step` counts steps done: this is step K
                os.kill(os.getpid(), signum)
        res = T.train(TINY, out, split=split, progress=False, log=lambda s: None, callback=during_step)
        print(json.dumps({"interrupted": res.interrupted, "steps": res.info.steps}))
        return 130 if res.interrupted else 0
    if mode == "kill":
        _die_on(argv[2], int(argv[3]), argv[4], out.parent / "killed.json")
        T.train(TINY, out, split=split, progress=False, log=lambda s: None)
        return 0
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
