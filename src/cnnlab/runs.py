"""Run directories: the unit every command after `train` takes.

A run directory holds `model.safetensors` (best weights), `run.json` (config, versions, device,
split, timings, results), `metrics.csv`, `curves.png`, `predictions.png`, and while training is
resumable, `state/` (last weights, optimizer state, loop position). Every write is atomic (temp
file, fsync, rename), so a process killed mid-write leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
import torch

from . import __version__
from .config import TrainConfig
from .data import Split, load_split
from .errors import RunError
from .model import Net, load_weights
from .output import OutputDir, make_dir, os_error
from .run_record import RUN_FORMAT as RUN_FORMAT  # re-exported: where callers have always found it
from .run_record import Imported, RunInfo, RunResults
from .schema import read_json


def versions() -> dict[str, str]:

    return {"cnnlab": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "platform": platform.platform()}


def hardware(device: torch.device | str) -> dict[str, Any]:
    import torch

    from . import allocator
    info = {"device": str(device), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "malloc": allocator.describe()}
    if getattr(device, "type", str(device)) == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class RunLock:
    """An exclusive lock on a run directory, so two processes never train into the same one.

    The lock file is never followed or clobbered: a `.lock` that is a symbolic link, a hard link
    (a second name of some other file), or not a regular file is refused before it is opened
    for anything, and an existing `.lock` is only locked, never truncated (its PID is written only
    into a lock file this process created)."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / ".lock"
        self.fd: int | None = None
        self.created = False

    def __enter__(self) -> RunLock:
        import fcntl  # POSIX only: imported where used so that importing runs works everywhere
        make_dir(self.path.parent)
        nofollow = getattr(os, "O_NOFOLLOW", 0)
        try:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | nofollow, 0o644)
                self.created = True
            except FileExistsError:
                fd = os.open(self.path, os.O_RDWR | nofollow | getattr(os, "O_NONBLOCK", 0))
        except OSError as e:
            if e.errno == errno.ELOOP or self.path.is_symlink():
                raise RunError(f"{self.path} is a symbolic link; cnnlab never opens a lock file it did "
                               f"not create: remove it (the link's target is untouched)") from None
            if e.errno == errno.EISDIR or self.path.is_dir():
                raise RunError(f"{self.path} is a folder, where cnnlab keeps its lock file; move it "
                               f"away (it is left as it is) or choose another --out") from None
            raise RunError(f"cannot use {self.path.parent} as a run directory: "
                           f"{os_error(e, self.path, 'open').args[0].split(': ', 1)[-1]}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            raise RunError(f"{self.path} is not a lock file cnnlab made ("
                           f"{'a hard link to another file' if stat.S_ISREG(st.st_mode) else 'not a regular file'}); "
                           f"remove it and try again")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunError(f"{self.path.parent} is in use by another cnnlab process (lock held on "
                           f"{self.path}); wait for it to finish or choose another --out") from None
        try:                    # the name may have been unlinked by a refused holder (discard)
            now = os.lstat(self.path)
            same = (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
        except OSError:
            same = False
        if not same:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise RunError(f"{self.path.parent} is in use by another cnnlab process (its lock was just "
                           f"replaced); wait for it to finish or choose another --out")
        if self.created:
            os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def discard(self) -> None:
        """Remove the lock file this process created (a refused folder is left as it was found);
        unlinked while still held, so a process that opened it meanwhile sees a stale name."""
        if self.created and self.fd is not None:
            with contextlib.suppress(OSError):
                mine, there = os.fstat(self.fd), os.lstat(self.path)
                if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):   # never another's lock
                    os.unlink(self.path)

    def __exit__(self, *exc) -> None:
        import fcntl  # POSIX only: imported where used so that importing runs works everywhere
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def check_out_dir(out: Path, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse to train into a directory that holds another run, unless told to; and, before
    anything in it is read or deleted, one that is (or holds at state/) a symbolic link."""
    out = Path(out)
    for q in (out, out / "state"):
        if q.is_symlink():
            raise RunError(f"{q} is a symbolic link; cnnlab never reads, writes or deletes through a "
                           f"link it did not create, with or without --overwrite: remove the link (its "
                           f"target is left alone) or choose another --out")
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a directory")
    holds_run = _is_file(out / "run.json") or _is_file(out / "model.safetensors")
    resumable = _is_file(out / "state" / "state.json")
    if resume:
        if not resumable:
            raise RunError(f"nothing to resume in {out}: no state/state.json (train without --resume"
                           f"{', with --overwrite to replace what is there' if holds_run else ''})")
        return
    if holds_run and not overwrite:
        if resumable:
            raise RunError(f"{out} already holds a run; pass --overwrite to replace it, --resume to "
                           f"continue it, or choose another --out")
        raise RunError(f"{out} already holds a run that cannot be resumed (it has no saved training "
                       f"state); pass --overwrite to replace it, or choose another --out")


def _is_file(p: Path) -> bool:
    """A regular file, not a link to one."""
    try:
        return stat.S_ISREG(os.lstat(p).st_mode)
    except OSError:
        return False


@dataclass
class Run(RunResults):
    """A trained run on disk: its directory, its run.json (typed and checked once, by open_run),
    and the path of its weights."""
    path: Path
    info: RunInfo

    @property
    def config(self) -> TrainConfig:
        return self.info.config

    def _record_path(self) -> Path:
        return self.path / "run.json"

    @property
    def precision(self) -> str:
        """The arithmetic the run was trained and tested in (fp32 where run.json does not say)."""
        return self.info.precision or "fp32"

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def batch_norm(self) -> bool:
        return self.config.batch_norm

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def imported(self) -> Imported | None:
        """How `cnnlab import` made the run (file, format, input transform); None for a trained run."""
        return self.info.imported

    def load_model(self, device: torch.device | str = "cpu") -> Net:
        return load_weights(self.weights, batch_norm=self.batch_norm, device=device)

    def load_split(self, data_dir: str | Path | None = None) -> Split:
        """The run's own 50k/10k/10k split (same dataset, validation size and split seed)."""
        cfg = self.config
        return load_split(cfg.dataset, data_dir, cfg.val_size, cfg.split_seed)

    @property
    def interrupted(self) -> bool:
        """True unless run.json says the run finished (open_run refuses any other status)."""
        return not self.info.finished

    def status_note(self) -> str | None:
        """One line saying that the run was stopped early, or None for a finished run."""
        if not self.interrupted:
            return None
        steps, total = self.info.steps, self.info.total_steps
        where = f" after {steps} of {total} steps" if steps is not None and total else ""
        return (f"{self.path} is an INTERRUPTED run (training stopped{where}): these results describe "
                f"a partly trained network; finish it with `cnnlab train --out {self.path} --resume`")

    def analysis_dir(self, *parts: str) -> Path:
        """RUN/analysis/PARTS, created; it belongs to cnnlab (no ownership check), but a link or a
        file on the way is refused, and a read-only run is one line."""
        return make_dir(self.path.joinpath("analysis", *parts), root=self.path)

    def output_dir(self, *parts: str) -> OutputDir:
        """RUN/analysis/PARTS as an OutputDir (adopted: the run's own folder), checked writable."""
        return OutputDir(self.analysis_dir(*parts), adopt=True).prepare()


def open_run(path: str | os.PathLike) -> Run:
    """The run in `path`, after checking run.json and that the weights file exists. A run that
    did not finish is said so on stderr, whoever opens it."""
    p = Path(path)
    if not p.exists():
        raise RunError(f"run directory {p} does not exist; train one with `cnnlab train --out {p}`")
    if not p.is_dir():
        raise RunError(f"{p} is not a run directory")
    rj = p / "run.json"
    if not rj.is_file():
        raise RunError(f"{p} holds no run.json: not a cnnlab run directory (or training never "
                       f"got far enough to write one)")
    # size- and depth-limited, then every field checked: one-line errors naming the field
    info = RunInfo.from_dict(read_json(rj, RunError, what="run.json"), str(rj))
    if not (p / "model.safetensors").is_file():
        raise RunError(f"{p} holds no checkpoint (model.safetensors); training may have stopped "
                       f"before the first evaluation — resume it with `cnnlab train --out {p} --resume`")
    run = Run(p, info)
    note = run.status_note()
    if note:        # so every command, notebook cell and server that opens it says so
        print(f"warning: {note}", file=sys.stderr, flush=True)
    return run
