"""`cnnlab explore RUN [RUN2]`: the local web page (needs the optional `explore` extra)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from .common import int_range


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("explore", help="draw a digit in the browser and watch the network think",
                       description="Serve a local web page: draw, pick a test image or upload a photo and see, live, the probabilities, feature maps, occlusion map, filters, layer table, class models and targeted fakes of one run, or of two side by side. Works offline; binds 127.0.0.1 unless --host says otherwise.")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN",
                   help="run directory; give two (e.g. plain and batch-norm) to compare them")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int_range(0, 65535), default=8179,
                   help="port (default 8179; 0 picks a free one)")
    p.add_argument("--data-dir", help="folder holding the MNIST files (for the test images)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.set_defaults(func=cmd_explore)


def cmd_explore(args: argparse.Namespace) -> int:
    if len(args.runs) > 2:
        print("cnnlab explore: error: give one or two runs", file=sys.stderr)
        return 2
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"cnnlab explore needs {' and '.join(missing)}: pip install 'cnnlab[explore]'",
              file=sys.stderr)
        return 3
    from ..explore import serve
    try:
        serve(args.runs, host=args.host, port=args.port, data_dir=args.data_dir, open_browser=args.open)
    except KeyboardInterrupt:
        pass
    return 0
