"""`cnnlab report`: the whole assignment answered in one command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import setting
from .common import config_value, int_range, out_path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("report", help="train, analyse and write the full report (HTML, PDF, notebook, results.json)",
                       description="Train the network with and without batch-normalization, run every analysis on the best model and write DIR/report.html, DIR/report.pdf, DIR/report.ipynb (the code behind every answer, executed) with its PDF DIR/report-notebook.pdf, and DIR/results.json.")
    p.add_argument("--out", type=out_path, default=Path("reports/latest"),
                   help="output folder (default reports/latest); must be absent or empty unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the report and runs already in --out (other files are left alone)")
    p.add_argument("--preset", default="standard", choices=["smoke", "quick", "standard", "full"],
                   help="training and analysis budget (default standard: 5 epochs per network, about two minutes "
                        "on a 2-core CPU; quick: 1 epoch; full: 15 epochs with augmentation)")
    p.add_argument("--seeds", type=int_range(1, 20), default=1,
                   help="train both networks for N seeds and report mean ± sd (default 1)")
    p.add_argument("--data-dir", help="folder holding the four MNIST IDX files (else cache, npm, ...)")
    p.add_argument("--no-pdf", action="store_true", help="skip the PDF")
    p.add_argument("--train-subset", type=int_range(0, 60_000), default=None, help="train on N images only (smoke tests)")
    p.add_argument("--epochs", type=config_value("epochs", int), default=None,
                   help=f"override the preset's epochs ({setting('epochs')['accepts']})")
    p.add_argument("--runs", nargs="+", type=Path, metavar="RUN",
                   help="PLAIN [BN]: answer from these runs (trained, or made by `cnnlab import`) instead of "
                        "training; --preset then sets only the analysis budget")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import build_report
    overrides = {k: v for k, v in (("train_subset", args.train_subset), ("epochs", args.epochs)) if v is not None}
    build_report(args.out, preset=args.preset, seeds=args.seeds, data_dir=args.data_dir,
                 train_overrides=overrides, pdf=not args.no_pdf, overwrite=args.overwrite, command="cnnlab " + " ".join(sys.argv[1:]),
                 runs=args.runs)
    return 0
