"""`cnnlab import`: a network trained elsewhere as a cnnlab run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import console, float_range, out_path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("import", help="make a run from your own network's state dict (trained elsewhere)",
                       description="Read a state dict saved with torch.save(model.state_dict(), F) or a .safetensors "
                                   "file (any key names), match its layers to the assignment's network by order and "
                                   "shape, evaluate it on the test set and write a run every other command reads.")
    p.add_argument("weights", type=Path, metavar="WEIGHTS", help="the state dict file (.pt/.pth or .safetensors)")
    p.add_argument("--out", type=out_path, required=True, help="the run directory to write")
    p.add_argument("--normalize", nargs=2, type=float_range(), metavar=("MEAN", "STD"),
                   help="the transforms.Normalize(MEAN, STD) your model was trained with (e.g. 0.1307 0.3081)")
    p.add_argument("--pixel-max", choices=["1", "255"], default="1",
                   help="the pixel range your model was fed: 1 for transforms.ToTensor() (default), 255 for raw "
                        "0–255 values; --normalize applies on that scale")
    p.add_argument("--metrics", type=Path, metavar="FILE",
                   help="your training curves, a CSV with columns epoch and some of step, train_loss, train_acc, "
                        "val_loss, val_acc, seconds (accuracies as fractions); the report's 1.1 draws them")
    p.add_argument("--data-dir", help="folder holding the four MNIST IDX files (else cache, npm, ...)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    from ..imported import InputTransform, import_weights
    mean, std = args.normalize if args.normalize else (0.0, 1.0)
    transform = InputTransform(float(args.pixel_max), mean, std)
    res = import_weights(args.weights, args.out, transform, metrics=args.metrics, data_dir=args.data_dir,
                         overwrite=args.overwrite, log=lambda s: print(s, file=sys.stderr))
    run = res.run
    console().print(f"{run.path}: imported {'batch-norm' if run.batch_norm else 'plain'} network from {args.weights} "
                    f"({transform.describe()}); test accuracy {100 * res.test_accuracy:.2f}% "
                    f"({run.test.errors} of 10,000 wrong)")
    print(f"next: cnnlab report --runs {run.path} --out reports/mine   (or cnnlab occlusion {run.path} --meaningful)")
    return 0
