"""Files written atomically (temp file, fsync, rename), the output folders they go into, and
JSON helpers; a leaf module.

A process killed mid-write leaves the previous version of the file intact. Every file cnnlab
writes goes through here: run directories, reports, analysis results, the data cache.

Output folders (`OutputDir`): every command that writes files (train, report, the analysis
commands, predict --explain) writes through one. It
  - refuses, before any work, a folder holding files cnnlab did not write there, unless
    --overwrite (ownership is the folder's manifest, `.cnnlab-manifest.json`: the relative name
    of every file cnnlab wrote into it, recorded after each write);
  - never replaces a file it did not write (without --overwrite), never writes or creates a
    folder through a symbolic link (a link where a file or a subfolder would go is refused, not
    followed), and deletes only what the manifest listed before this command (or this command
    wrote): names relative and inside the folder, regular files, never through a link;
  - updates the manifest under a lock on the folder, merging with what is on disk, and records a
    name before its file is written (a full disk between the two never orphans a file);
  - checks the folder is writable (a probe file) before the caller computes anything;
  - turns every OS error into one line naming the path (read-only, full, name too long, ...).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import OutputError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MANIFEST = ".cnnlab-manifest.json"
_MAX_MANIFEST_BYTES = 16 * 1024 * 1024
_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")     # ".<name>.<random>.tmp", ours

_REASONS = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENAMETOOLONG: "the name is too long for the file system",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.EEXIST: "something of that name already exists",
    errno.ELOOP: "it is a symbolic link (cnnlab does not follow links it did not create)",
    errno.EDQUOT: "the disk quota is exceeded",
}


def os_error(e: OSError, path: str | os.PathLike, doing: str = "write",
             existed: bool | None = None) -> OutputError:
    """One line for an OSError met while writing `path`: what failed, where and why. `existed`:
    whether a previous version of the file was there (said only when known)."""
    if e.errno == errno.ENOSPC:
        kept = {True: "; the previous version of the file is intact",
                False: "; no file was left there"}.get(existed, "") if existed is not None else ""
        return OutputError(f"no space left on the device while writing {path}{kept}")
    reason = _REASONS.get(e.errno or -1, e.strerror or str(e))
    return OutputError(f"cannot {doing} {path}: {reason}")


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()      # read once at import: os.umask can only be read by setting it


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is always either the old file or the complete new one.

    A symbolic link at `path` is replaced by the new file (the rename replaces the link itself; its
    target is never opened); a folder or device there is refused. `OutputDir.target` refuses a
    link before this is reached unless --overwrite."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_error(e, path.parent, "create the folder") from None
    _refuse_link(path)
    existed = os.path.lexists(path)
    # The temp file's name is bounded (a 250-character name + ".<random>.tmp" would pass the file
    # system's 255-byte limit); mkstemp opens it with O_EXCL, which never follows a link.
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name[:200] + ".", suffix=".tmp")
    except OSError as e:
        raise os_error(e, path, existed=existed) from None
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp creates the file 0600; give it the mode an ordinary write would (0666 less
            # the umask), so a report or run is as readable as any other file the user makes.
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise os_error(e, path, existed=existed) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _refuse_link(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    except OSError as e:
        raise os_error(e, path) from None
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
        raise OutputError(f"{path} exists and is not a regular file; remove it or choose another folder")


def _link_error(q: Path) -> OutputError:
    return OutputError(f"{q} is a symbolic link; cnnlab never writes through a link it did not "
                       f"create: remove it or choose another folder")


def _check_folder(q: Path) -> bool:
    """True if `q` is a real folder, False if absent; OutputError if a link or anything else."""
    try:
        st = os.lstat(q)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise os_error(e, q, "use the folder") from None
    if stat.S_ISLNK(st.st_mode):
        raise _link_error(q)
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{q} exists and is not a folder")
    return True


def make_dir(path: Path, root: Path | None = None) -> Path:
    """Create folder `path`; refuse, before creating anything, if it or any folder between `root`
    and it is a symbolic link or not a folder (files written there would land elsewhere). The
    folders above `root` (or above `path` without one) are the user's choice and are followed."""
    path = Path(path)
    chain = [path]
    if root is not None:
        root = Path(root)
        p = path
        while p != root and p.parent != p and root in p.parents:
            p = p.parent
            chain.append(p)
        chain = [q for q in chain if q != root]
    chain.reverse()                     # top down: each folder is checked before one is made in it
    try:
        (root if root is not None else path.parent).mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"cannot create the folder {path}: a file of that name exists") from None
    except OSError as e:
        raise os_error(e, path, "create the folder") from None
    for q in chain:
        if _check_folder(q):
            continue
        try:
            os.mkdir(q)
        except FileExistsError:
            pass
        except OSError as e:
            raise os_error(e, q, "create the folder") from None
        _check_folder(q)                # raced: something else appeared there meanwhile
    return path


def valid_name(name: object) -> bool:
    """A name cnnlab may own in a folder: relative, '/'-separated, normalized (no '', '.', '..'),
    not the manifest itself. A manifest entry that is not one is ignored."""
    if not isinstance(name, str) or not name or "\0" in name or name.startswith("/") or name == MANIFEST:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


# The names a run directory written before manifests existed may be adopted under: what cnnlab
# writes there, and no other (a user's state/state-mybackup.safetensors or notes.txt stays theirs).
_RUN_NAMES = re.compile(r"^(run\.json|model\.safetensors|metrics\.csv|curves\.png|predictions\.png|"
                        r"step_times\.npy|filters_by_epoch\.safetensors|state/(state|config)\.json|"
                        r"state/state(-\d+)?\.safetensors)$")


@contextlib.contextmanager
def _folder_lock(path: Path):
    """An exclusive flock on the folder itself (no file is left behind): the manifest's
    read-merge-write is never interleaved with another process's."""
    try:
        import fcntl
    except ImportError:         # not POSIX: no lock
        yield
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise os_error(e, path, "lock the folder") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)            # closing releases the lock


class OutputDir:
    """A folder cnnlab writes into (see the module docstring for the rules).

    `overwrite`: write even though the folder holds files cnnlab did not write (files of the same
    names are replaced; others are left alone). `adopt`: the folder belongs to cnnlab whatever its
    manifest says (a run's own `analysis/` folders, a run written before manifests existed):
    files present are recorded as ours."""

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False, adopt: bool = False,
                 flag: str = "--overwrite") -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.adopt = adopt
        self.flag = flag
        self._owned: set[str] | None = None
        self._before: frozenset[str] = frozenset()   # the manifest as this command found it
        self.written: set[str] = set()               # names this command wrote
        self._targeted: set[str] = set()             # names `target` handed out to write
        self._retired: set[str] = set()              # to delete at sweep() unless rewritten

    # --- ownership ------------------------------------------------------------------------------
    def owned(self) -> set[str]:
        if self._owned is None:
            self._owned = _read_manifest(self.path / MANIFEST)
            self._before = frozenset(self._owned)   # what this command may delete
        return self._owned

    def owns(self, name: str) -> bool:
        return name in self.owned()

    def has_manifest(self) -> bool:
        return (self.path / MANIFEST).is_file()

    def foreign(self, limit: int = 3, ignore: tuple[str, ...] = ()) -> list[str]:
        """Up to `limit` entries of the folder (relative names) that cnnlab did not write: files
        missing from the manifest, and every link. Stops at `limit`, so `--out ~` costs little."""
        found: list[str] = []
        owned = self.owned() | set(ignore)

        def walk(d: Path, rel: str) -> None:
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError as e:
                raise os_error(e, d, "read the folder") from None
            for ent in entries:
                if len(found) >= limit:
                    return
                name = rel + ent.name
                if name == MANIFEST or _TEMP_NAME.match(ent.name):
                    continue
                if ent.is_symlink():
                    found.append(name)
                elif ent.is_dir(follow_symlinks=False):
                    walk(Path(ent.path), name + "/")
                elif name not in owned:
                    found.append(name)
        if self.path.is_dir():
            walk(self.path, "")
        return found

    def prepare(self, *, check_foreign: bool = True, ignore: tuple[str, ...] = ()) -> OutputDir:
        """Create the folder, refuse it if it holds files cnnlab did not write (unless overwrite or
        adopt), and check it is writable; all before the caller computes anything."""
        p = self.path
        try:
            if os.path.lexists(p) and not p.is_dir():
                raise OutputError(f"{p} exists and is not a folder; choose another output folder")
        except OSError as e:        # ENAMETOOLONG and the like come from stat itself
            raise os_error(e, p, "use the folder") from None
        make_dir(p)
        if self.adopt:
            self._adopt()
        elif check_foreign and not self.overwrite:
            foreign = self.foreign(ignore=ignore)
            if foreign:
                more = ", …" if len(foreign) >= 3 else ""
                raise OutputError(f"{p} holds files cnnlab did not write there ({', '.join(foreign)}{more}); "
                                  f"pass {self.flag} to write into it anyway (files of the same names "
                                  f"are replaced), or choose another folder")
        self.probe()
        return self

    def probe(self) -> None:
        """Create and remove a small file: a read-only, full or forbidden folder fails here."""
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".cnnlab-probe.", suffix=".tmp")
            try:
                os.write(fd, b"cnnlab")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(tmp)
        except OSError as e:
            raise os_error(e, self.path, "write into") from None

    def _adopt(self) -> None:
        """Record as ours the files of a run written before manifests existed: only the names a
        run holds (`_RUN_NAMES`), real files, not through a link."""
        found = [q.name for q in self.path.iterdir()]
        state = self.path / "state"
        if state.is_dir() and not state.is_symlink():
            found += [f"state/{q.name}" for q in state.iterdir()]
        have = {n for n in found if _RUN_NAMES.match(n) and _regular_file(self.path, n)}
        self.owned()
        self._before |= have            # adopted: as if the manifest had listed them
        if have - self.owned():
            self._update(add=have)

    # --- writing -------------------------------------------------------------------------------
    def target(self, name: str) -> Path:
        """The path to write `name` (relative, '/'-separated) at, after checking that its folders
        are real folders of ours and that no file of that name that cnnlab did not write (or a
        link) is there. Call `record(name)` after writing."""
        if not valid_name(name):
            raise OutputError(f"cannot write {name!r} into {self.path}: not a plain relative name")
        path = self.path / name
        if path.parent != self.path:
            make_dir(path.parent, root=self.path)
        _refuse_link(path)
        if path.is_symlink() and not self.overwrite:
            raise OutputError(f"{path} is a symbolic link; cnnlab never writes through a link: pass "
                              f"{self.flag} to replace the link itself (its target is left alone), or "
                              f"choose another folder")
        if os.path.lexists(path) and not self.overwrite and not self.adopt and not self.owns(name):
            raise OutputError(f"{path} exists and was not written by cnnlab; pass {self.flag} to "
                              f"replace it, or choose another folder")
        self._targeted.add(name)
        return path

    def record(self, *names: str) -> None:
        """List `names` as cnnlab's; those written through `target` count as written by this command."""
        self.written.update(n for n in names if n in self._targeted)
        new = set(names) - self.owned()
        if new:
            self._update(add=new)

    def forget(self, *names: str) -> None:
        gone = set(names) & self.owned()
        if gone:
            self._update(drop=gone)

    def may_delete(self, name: str) -> bool:
        """Whether `name` is cnnlab's to delete: listed in the manifest before this command, or
        written by it; a plain relative name; a regular file reached through no link."""
        self.owned()
        return (valid_name(name) and (name in self._before or name in self.written)
                and _regular_file(self.path, name))

    def remove(self, name: str) -> None:
        """Delete `name` if `may_delete(name)`; anything else is left alone."""
        if self.may_delete(name):
            path = self.path / name
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise os_error(e, path, "remove") from None
        self.forget(name)

    def retire(self, *names: str) -> None:
        """Mark files of an earlier output to delete once this command's output exists
        (`sweep`); a name this command writes again is simply replaced."""
        self._retired.update(names)

    def sweep(self) -> list[str]:
        """Delete the retired files this command did not write again (only cnnlab's: `remove`)."""
        gone = sorted(n for n in self._retired - self.written if self.may_delete(n))
        for n in gone:
            self.remove(n)
        self._retired.clear()
        return gone

    def _update(self, add: set[str] = frozenset(), drop: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """The manifest on disk, merged with `add` less `drop`, under the folder's lock (another
        process may have recorded its own files meanwhile)."""
        add = {n for n in add if valid_name(n)}
        with _folder_lock(self.path):
            on_disk = _read_manifest(self.path / MANIFEST)
            files = (on_disk | add) - set(drop)
            text = json.dumps({"format": 1, "written_by": "cnnlab", "files": sorted(files)}, indent=1)
            atomic_write_text(self.path / MANIFEST, text + "\n")
            self._owned = files

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write `name` atomically; its name goes into the manifest first, so a file is never left
        unlisted (a failed write takes a name it added out again)."""
        path = self.target(name)
        new = name not in self.owned()
        if new:
            self._update(add={name})
        try:
            atomic_write_bytes(path, data)
        except BaseException:
            if new and not os.path.lexists(path):
                with contextlib.suppress(OSError, OutputError):
                    self._update(drop={name})
            raise
        self.record(name)
        return path

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode("utf-8"))

    def write_json(self, name: str, obj: Any) -> Path:
        return self.write_bytes(name, (dumps(obj) + "\n").encode("utf-8"))

    def save_figure(self, fig: Figure, name: str, dpi: int = 110, **kwargs: Any) -> Path:
        return self.write_bytes(name, figure_png(fig, dpi, **kwargs))

    def save_npz(self, name: str, **arrays: Any) -> Path:
        return self.write_bytes(name, npz_bytes(**arrays))

    def subdir(self, name: str) -> Path:
        return make_dir(self.path / name, root=self.path)


def _regular_file(root: Path, name: str) -> bool:
    """`root/name` is a regular file, and no folder between `root` and it is a link."""
    q = root
    parts = name.split("/")
    try:
        for part in parts[:-1]:
            q = q / part
            if not stat.S_ISDIR(os.lstat(q).st_mode):
                return False
        return stat.S_ISREG(os.lstat(q / parts[-1]).st_mode)
    except OSError:
        return False


def _read_manifest(path: Path) -> set[str]:
    """The plain relative names a manifest lists; a missing, oversized or damaged one lists nothing
    (so every file counts as not ours: the safe reading)."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > _MAX_MANIFEST_BYTES:
            return set()
        d = json.loads(path.read_bytes()[:_MAX_MANIFEST_BYTES])
        files = d.get("files") if isinstance(d, dict) else None
        return {f for f in files if valid_name(f)} if isinstance(files, list) else set()
    except (OSError, ValueError, RecursionError):
        return set()


def as_output_dir(directory: str | os.PathLike | OutputDir) -> OutputDir:
    """An OutputDir for `directory`; a plain path (the Python API's `save(dir)`) gets the default
    rules: created if missing, and no file cnnlab did not write is replaced."""
    if isinstance(directory, OutputDir):
        return directory
    d = OutputDir(directory)
    make_dir(d.path)
    return d


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, dumps(obj) + "\n")


def jsonable(v: Any) -> Any:
    """`v` as plain JSON values, the one conversion every JSON cnnlab writes goes through: NumPy and
    torch scalars and arrays → Python numbers and lists, paths → strings, tuples → lists, and a
    non-finite float → None (json would write the bare token NaN, which no JSON parser accepts)."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):      # NumPy and torch values
        return jsonable(v.tolist())
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def dumps(obj: Any) -> str:
    """JSON text for `obj` (through `jsonable`: always valid JSON)."""
    return json.dumps(jsonable(obj), indent=2, allow_nan=False)


def figure_png(fig: Figure, dpi: int = 110, **kwargs: Any) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, **kwargs)
    finally:
        plt.close(fig)
    return buf.getvalue()


def npz_bytes(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def save_figure(fig: Figure, path: Path, dpi: int = 110, **kwargs: Any) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    atomic_write_bytes(path, figure_png(fig, dpi, **kwargs))


def save_npz(path: Path, **arrays: Any) -> None:
    """Write a compressed .npz atomically."""
    atomic_write_bytes(path, npz_bytes(**arrays))
