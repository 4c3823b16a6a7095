"""The `cnnlab` command: a thin layer that parses options and calls the library.

Each area registers its subcommands from its own module (core, inspect, generate, predict,
report, explore). Errors of our own types print one line on stderr and exit non-zero; usage
errors exit 2 before any work starts.

The modules that pull in torch (analysis, runs, data, train, predict, report, explore) are imported
inside the command that needs them, so that `cnnlab --help` and usage errors answer at once
instead of after torch's ~1.5 s import; everything light is imported at the top.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from .. import __version__
from ..allocator import keep_freed_memory
from ..errors import CnnlabError, Interrupted
from ..paths import check_args
from .common import printable

# Modules under cnnlab.cli that each define register(subparsers). Missing ones are skipped so
# that an optional area never breaks the others.
AREAS = ("core", "imported", "inspect", "generate", "predict", "report", "explore", "robustness")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnlab",
        description="Train, inspect and attack the EE5179 MNIST CNN: every question of the assignment answered from measurements.")
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for area in AREAS:
        try:
            mod = importlib.import_module(f".{area}", __name__)
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{area}":
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    parser = build_parser()
    args = parser.parse_args(argv)
    keep_freed_memory()      # every command runs tensors of MBs; see cnnlab.allocator
    try:
        check_args(args)     # every path argument, before anything is read or created
        code = args.func(args)
    except CnnlabError as e:
        print(f"cnnlab {args.command}: error: {printable(str(e))}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if e.errno not in (errno.ENAMETOOLONG, errno.ELOOP):
            raise
        print(f"cnnlab {args.command}: error: {printable(str(e.filename))}: {e.strerror}; choose a "
              f"shorter path, or one without a loop of links", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"cnnlab {args.command}: interrupted{': ' + printable(e.message) if e.message else ''}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"cnnlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:      # `cnnlab ... | head`
        return 0
    return int(code or 0)
