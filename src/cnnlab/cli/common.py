"""Argument types and helpers shared by the subcommands: values are checked at parse time, so a
bad option is one clear line and exit status 2 before any work starts."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import TrainConfig, check_field, setting
from ..errors import ConfigError
from ..output import dumps

if TYPE_CHECKING:
    import os
    from pathlib import Path

    from rich.console import Console
    from rich.text import Text

    from ..output import OutputDir
    from ..runs import Run


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{v} is out of range: expected {_range_text(lo, hi)}")
        return v
    return parse


def float_range(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Callable[[str], float]:
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{s!r} is not a finite number")
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise argparse.ArgumentTypeError(f"{v} is out of range: expected {'>' if lo_open else '≥'} {lo}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"{v} is out of range: expected ≤ {hi}")
        return v
    return parse


def _range_text(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"{lo}..{hi}"
    return f"≥ {lo}" if lo is not None else f"≤ {hi}"


def out_path(s: str) -> Path:
    """An output folder argument: an empty string is refused (it would mean the current folder)."""
    from pathlib import Path
    if not s.strip():
        raise argparse.ArgumentTypeError("an empty path; name a folder (use '.' for the current one)")
    return Path(s)


def add_out_flags(parser: argparse.ArgumentParser, default_text: str) -> None:
    """--out FOLDER and --overwrite, the same for every command that writes files."""
    parser.add_argument("--out", type=out_path, help=f"output folder (default {default_text}); a folder "
                        f"holding files cnnlab did not write is refused unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into --out even though it holds files cnnlab did not write "
                             "(files of the same names are replaced, others left alone)")


def output_dir(args: argparse.Namespace, run: Run | None = None, name: str = "") -> OutputDir:
    """The checked output folder of an analysis command, before anything is computed: --out
    (refused if it holds files cnnlab did not write, unless --overwrite), else RUN/analysis/NAME.
    Says first, on stderr, when the run was interrupted."""
    from ..output import OutputDir
    if args.out is not None:
        return OutputDir(args.out, overwrite=args.overwrite).prepare()
    return run.output_dir(name)  # type: ignore[union-attr]  # every caller passes the run


def open_run_noted(path: str | os.PathLike[str]) -> Run:
    """open_run, which says on stderr, first, when the run was stopped early: no analysis of an
    interrupted run is shown without saying so."""
    from ..runs import open_run
    return open_run(path)


def print_json(obj: Any) -> None:
    """`obj` as JSON on stdout, converted as every JSON file cnnlab writes (output.jsonable: a
    non-finite float is null)."""
    sys.stdout.write(dumps(obj) + "\n")


def console() -> Console:
    """The terminal console. Markup and emoji codes are off: the lines printed hold the user's
    paths and file names, and a name such as '[/]7.png' or '[bold red]x.png' must print as
    written, never be parsed (a MarkupError) or restyled; control characters are made visible."""
    from rich.console import Console

    class _Plain(Console):
        def render_str(self, text: str, **kwargs: Any) -> Text:     # every str printed, table cells too
            return super().render_str(printable(text), **kwargs)

    return _Plain(stderr=False, highlight=False, soft_wrap=True, markup=False, emoji=False)


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7f, 0xa0)] if c not in (0x09, 0x0a)}


def printable(text: str) -> str:
    """`text` with terminal control characters (ESC, CR, BEL, ...) shown as \\xNN, so a file name
    cannot move the cursor, recolour or clear the terminal."""
    return text.translate(_CONTROL)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field: help and accepted values from the field's own metadata (so a
    bad value is refused by argparse, before any work, with the config's words)."""
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        meta = setting(f.name)
        text = f"{meta['help']} ({meta['accepts']})".replace("%", "%%")
        if f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{meta['help']} (default: the preset's)".replace("%", "%%"))
        elif meta["choices"]:
            parser.add_argument(flag, dest=f.name, choices=meta["choices"], help=text)
        else:
            parser.add_argument(flag, dest=f.name, type=config_value(f.name, int if f.type in ("int", int) else float),
                                help=text)


def config_value(name: str, kind: type) -> Callable[[str], int | float]:
    def parse(s: str) -> int | float:
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not {'an integer' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{s!r} is not a finite number")
        try:
            check_field(name, v)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return v
    return parse
