"""One check of every path a command is given, run before anything is read or created.

A name longer than the file system allows makes `Path.exists()` raise ENAMETOOLONG (a
traceback, not a "no"), so every path argument is measured first: each name at most NAME_MAX
bytes, the whole absolute path under PATH_MAX. Output folders are checked further by
`output.OutputDir` and `output.make_dir` (no link at or below the output folder).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import PathError

NAME_MAX = 255      # bytes in one name: ext4, xfs, btrfs, APFS, NTFS (in UTF-16 units)
PATH_MAX = 4096     # bytes in a whole path, Linux's limit (macOS allows 1024: the OS says so then)

# argparse destinations that hold paths but are parsed as plain strings
PATH_DESTS = ("data_dir", "out", "run", "runs", "images", "files", "transfer")


def _limit(name: str, default: int, where: str) -> int:
    try:
        return int(os.pathconf(where, name))
    except (OSError, ValueError, AttributeError):
        return default


def check_path(path: str | os.PathLike, what: str = "path") -> Path:
    """`path` as a Path, or PathError if a name in it or the whole of it is too long to use."""
    p = Path(path)
    name_max = _limit("PC_NAME_MAX", NAME_MAX, "/")
    for part in p.parts:
        n = len(os.fsencode(part))
        if n > name_max:
            raise PathError(f"the {what} {_short(p)} is too long: it has a name of {n} bytes "
                            f"({_short(Path(part))}), and the file system allows {name_max}; choose a shorter name")
    n = len(os.fsencode(os.path.abspath(p)))
    if n >= PATH_MAX:
        raise PathError(f"the {what} {_short(p)} is too long: {n} bytes as an absolute path, and the "
                        f"system allows under {PATH_MAX}; choose a shorter path")
    return p


def check_out(path: str | os.PathLike) -> Path:
    """An output folder: `check_path`, and not itself a symbolic link (files written there would
    land elsewhere; the folders below it are checked as they are made: output.make_dir)."""
    p = check_path(path)
    if p.is_symlink():
        raise PathError(f"the output folder {_short(p)} is a symbolic link; cnnlab never writes "
                        f"through a link it did not create: give the folder it points to, or another")
    return p


def check_args(args: Any) -> None:
    """Every path among a command's parsed arguments (Path values, and the PATH_DESTS strings)
    checked by `check_path`, and --out by `check_out`, before the command runs."""
    for dest, value in vars(args).items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, Path) or (isinstance(v, str) and dest in PATH_DESTS):
                check_out(v) if dest == "out" else check_path(v)


def _short(p: Path) -> str:
    return repr(str(p))
