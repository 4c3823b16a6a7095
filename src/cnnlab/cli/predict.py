"""`cnnlab predict RUN IMAGE...`: classify the user's own digit images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError
from .common import add_out_flags, console, int_range, open_run_noted, output_dir, print_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("predict", help="classify your own digit images (PNG, JPEG, ...)",
                       description="Convert each image the way MNIST digits were made (grey, dark background, digit fitted into 20×20, centred by its centre of mass in 28×28) and classify it with the run's network. Files that cannot be read get one line each; the others are still classified; the exit status is 1 if any file failed.")
    p.add_argument("run", type=Path, help="run directory (from `cnnlab train`)")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    p.add_argument("--json", action="store_true",
                   help='print a JSON list of {"file", "prediction", "probabilities"} (or {"file", "error"})')
    p.add_argument("--top", type=int_range(1, 10), default=3, help="classes shown per image (1..10, default 3)")
    p.add_argument("--explain", action="store_true",
                   help="save each preprocessed image beside its occlusion map")
    add_out_flags(p, "RUN/analysis/predict; used with --explain")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from ..data import DATASETS
    from ..predict import predict_files
    if args.out is not None and not args.explain:
        raise ConfigError("--out is only used with --explain")
    run = open_run_noted(args.run)
    out = output_dir(args, run, "predict") if args.explain else None   # checked before any work
    model = run.load_model()
    names = DATASETS[run.config.dataset].class_names if run.config.dataset in DATASETS else None
    results = predict_files(model, args.images, keep_images=args.explain)
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"cnnlab predict: error: {r['file']}: {r['error']}", file=sys.stderr)

    saved = []
    if args.explain:
        saved = _explain(model, [r for r in results if "error" not in r], out)

    if args.json:
        print_json([{k: v for k, v in r.items() if k != "image"} for r in results])
    else:
        _print_table(results, args.top, names)
        for path in saved:
            console().print(f"saved {path}")
    return 1 if failed else 0


def _print_table(results: list[dict], top: int, names=None) -> None:
    from rich.table import Table
    t = Table(title="predictions")
    t.add_column("file")
    t.add_column("prediction", justify="center")
    t.add_column(f"top {top} (probability)")
    for r in results:
        if "error" in r:
            t.add_row(r["file"], "—", f"error: {r['error']}")
            continue
        probs = r["probabilities"]
        order = sorted(range(len(probs)), key=lambda c: -probs[c])[:top]
        label = (lambda c: names[c]) if names else str
        t.add_row(r["file"], f"{label(r['prediction'])}",
                  ", ".join(f"{label(c)} {probs[c] * 100:.1f}%" for c in order))
    console().print(t)


def _explain(model, results: list[dict], out) -> list[Path]:
    """For each classified image, a figure: the preprocessed 28×28 digit beside the occlusion
    maps (probability of the predicted class as a function of the occluder's position)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from ..analysis.occlusion import occlusion
    paths, used = [], set()
    for r in results:
        stem = Path(r["file"]).stem or "image"
        name, i = stem, 2
        while name in used:                       # a/1.png and b/1.png must not collide
            name, i = f"{stem}-{i}", i + 1
        used.add(name)
        res = occlusion(model, r["image"], target=r["prediction"])
        maps = sorted(res.prob.items()) if isinstance(res.prob, dict) else list(enumerate(res.prob, 1))
        fig, axes = plt.subplots(1, 1 + len(maps), figsize=(2.2 * (1 + len(maps)), 2.6))
        axes = np.atleast_1d(axes)
        axes[0].imshow(r["image"], cmap="gray", vmin=0, vmax=1)
        axes[0].set_title(f"preprocessed\npredicted {r['prediction']} "
                          f"({r['probabilities'][r['prediction']] * 100:.1f}%)", fontsize=8)
        for ax, (k, m) in zip(axes[1:], maps):
            im = ax.imshow(np.asarray(m), cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"P({r['prediction']}), {k}×{k} occluder", fontsize=8)
        if maps:
            fig.colorbar(im, ax=list(axes[1:]), shrink=0.8)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        path = out.save_figure(fig, f"{name}-explain.png", dpi=110)
        paths.append(path)
    return paths
