"""`cnnlab summary`, `cnnlab filters`, `cnnlab activations`, `cnnlab occlusion`: thin wrappers
around cnnlab.analysis that write PNG + JSON/NPZ into RUN/analysis/<command>/ (or --out)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import PATCH_SIZES
from ..errors import ConfigError
from .common import add_out_flags, console, float_range, int_range, open_run_noted, output_dir, print_json


def _fill(s: str):
    if s == "mean":
        return "mean"
    return float_range()(s)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("summary", help="layer table, parameter and neuron counts (questions 1.3–1.5)",
                       description="One row per layer with shapes measured by forward hooks; totals of learnable parameters (conv / fc / batch-norm) and neurons. A neuron is one output unit of a conv or fully connected layer.")
    p.add_argument("--batch-norm", action="store_true", help="the network with BatchNorm2d after each conv")
    p.add_argument("--json", action="store_true", help="print the table and totals as JSON")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("filters", help="plot and measure conv1/conv2 kernels against the untrained network",
                       description="Kernels on one shared symmetric colour scale, each decomposed into gradient (edge), centre-surround (blob) and line energy, next to the untrained network of the run's seed.")
    p.add_argument("run", type=Path)
    p.add_argument("--layer", choices=["conv1", "conv2"], default="conv1")
    add_out_flags(p, "RUN/analysis/filters")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.set_defaults(func=cmd_filters)

    p = sub.add_parser("activations", help="feature maps of conv1, pool1, conv2, pool2 for test images")
    p.add_argument("run", type=Path)
    p.add_argument("--index", type=int_range(0, 59_999), action="append",
                   help="test-set image index (repeatable; default 0)")
    p.add_argument("--data-dir", help="folder with the MNIST IDX files (default: cache / CNNLAB_DATA_DIR)")
    add_out_flags(p, "RUN/analysis/activations")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_activations)

    p = sub.add_parser("occlusion", help="probability of the class as a patch slides over test images",
                       description="Slide a square patch over every position of each image and record p(class) (the "
                                   "assignment's maps). With --meaningful: decide whether the learning is meaningful "
                                   "by a controlled experiment with a shortcut-trained, a digit-trained and an untrained "
                                   "control, none of them derived from the model under test.")
    p.add_argument("run", type=Path)
    p.add_argument("--index", type=int_range(0, 59_999), action="append",
                   help="test-set image index (repeatable; default 0)")
    p.add_argument("--patch", type=int_range(1, 5), action="append",
                   help="patch size in pixels, 1..5 (repeatable; default all five)")
    p.add_argument("--stride", type=int_range(1, 27), default=1, help="pixels between positions (default 1)")
    p.add_argument("--fill", type=_fill, default=0.5,
                   help="patch value on the [0, 1] pixel scale, or 'mean' (training-pixel mean); default 0.5")
    p.add_argument("--target", type=int_range(0, 9), help="class of interest (default: the true class)")
    p.add_argument("--meaningful", action="store_true",
                   help="decide 2.4 by the controlled experiment (behaviour, then occlusion, with a "
                        "shortcut, a digit-reading and an untrained control, trained here) and print its verdict")
    p.add_argument("--images", type=Path, metavar="FILE.npz",
                   help="with --meaningful: test these images instead of MNIST's test set (.npz with "
                        "'images' uint8 [N, 28, 28], 0 = background, 'labels' int [N] in 0..9, and optionally "
                        "'masks' bool [N, 28, 28], True on the digit, where the digit finder should not decide)")
    p.add_argument("--data-dir")
    add_out_flags(p, "RUN/analysis/occlusion")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_occlusion)


def cmd_summary(args: argparse.Namespace) -> int:
    from ..analysis.anatomy import summary
    s = summary(batch_norm=args.batch_norm)
    if args.json:
        print_json(s.to_dict())
        return 0
    from rich.table import Table
    t = Table(title=f"the {'batch-norm' if s.batch_norm else 'plain'} network, layer by layer "
                    f"(shapes per image, from forward hooks)")
    for col in ("layer", "kind", "input", "output", "params", "neurons", "detail"):
        t.add_column(col, justify="right" if col in ("params", "neurons") else "left")
    shp = lambda v: "×".join(map(str, v))  # noqa: E731
    for r in s.layers:
        t.add_row(r["name"], r["kind"], shp(r["input_shape"]), shp(r["output_shape"]), f"{r['params']:,}",
                  f"{r['neurons']:,}", r.get("detail", ""))
    c = console()
    c.print(t)
    p, n, q = s.params, s.neurons, s.neurons_with_pooling
    c.print(f"learnable parameters: {p['total']:,} = conv {p['conv']:,} + fully connected "
            f"{p['fc']:,}" + (f" + batch-norm {p['batch_norm']:,}" if s.batch_norm else ""))
    c.print(f"neurons: {n['total']:,} = conv {n['conv']:,} + fully connected {n['fc']:,}")
    c.print("  (a neuron is one output unit of a conv or fully connected layer: a conv layer has "
            "channels × height × width of them)")
    c.print(f"counting the max-pooling outputs as neurons too: {q['total']:,} (+{q['pool']:,})")
    return 0


def _open(args):
    run = open_run_noted(args.run)
    return run, run.load_model()


def _open_with_images(args, name: str):
    """The run, its model, its split, the checked test indices (default: image 0) and the output
    folder (checked writable before anything is computed)."""
    run = open_run_noted(args.run)
    d = _out_dir(args, run, name)
    model = run.load_model()
    split = run.load_split(args.data_dir)
    return run, model, split, _check_indices(args.index or [0], split), d


def _out_dir(args, run, name: str):
    return output_dir(args, run, name)


def _check_indices(indices, split) -> list[int]:
    n = len(split.test_x)
    for i in indices:
        if not 0 <= i < n:
            raise ConfigError(f"test index {i} is out of range: the test set has {n} images (0..{n - 1})")
    return list(dict.fromkeys(indices))


def cmd_filters(args: argparse.Namespace) -> int:

    from ..analysis import untrained_for_run
    from ..analysis.filters import filters
    run, model = _open(args)
    d = _out_dir(args, run, "filters")
    out = d.path
    res = filters(model, args.layer, reference=untrained_for_run(run, model))
    res.save(d, f"filters_{args.layer}")
    if args.json:
        print_json(res.to_dict())
        return 0
    t, u = res.trained, res.untrained_numbers
    c = console()
    cc, uc = t["class_counts"], u["class_counts"]
    c.print(f"{args.layer}: {t['kernels']} kernels 3×3 — edge {cc['edge']}, blob {cc['blob']}, line {cc['line']}, "
            f"mixed {cc['mixed']} (untrained: {uc['edge']}, {uc['blob']}, {uc['line']}, {uc['mixed']})")
    c.print(f"mean energy share in gradient (edges) {t['mean_share']['gradient']:.0%} vs "
            f"{u['mean_share']['gradient']:.0%} untrained (chance {2 / 9:.0%}); low-order (mean + gradient) "
            f"{t['low_order_share']:.0%} vs {u['low_order_share']:.0%}"
            + ("" if run.imported else f"; cosine to initial kernels {t['mean_cosine_to_init']:.2f}"))
    if run.imported:        # its own initial weights were never saved
        c.print("imported network: 'untrained' is a fresh network of the same layers, not its own initial weights")
    if args.layer == "conv2":
        c.print(f"effective input channels per output filter {t['mean_effective_inputs']:.1f} of 32 "
                f"(untrained {u['mean_effective_inputs']:.1f})")
    c.print(f"wrote {out / f'filters_{args.layer}.png'} (+ .json, .npz)")
    return 0


def cmd_activations(args: argparse.Namespace) -> int:

    from ..analysis.activations import activations
    run, model, split, indices, d = _open_with_images(args, "activations")
    out = d.path
    results = {}
    c = console()
    for i in indices:
        res = activations(model, split.test_x[i], label=int(split.test_y[i]), name=f"test image #{i}")
        res.save(d, f"activations_{i}")
        results[str(i)] = res.to_dict()
        if not args.json:
            row = "; ".join(f"{layer} {'×'.join(map(str, st['shape']))}: {st['active_fraction']:.0%} active, "
                            f"spread {st['spread']:.0%}" for layer, st in res.stats.items())
            c.print(f"#{i} (true {res.label}, predicted {res.pred}): {row}")
    d.write_json("activations.json", results)
    if args.json:
        print_json(results)
    else:
        c.print(f"wrote {len(indices)} figure(s) activations_<index>.png (+ .npz) and activations.json to {out}")
    return 0


def cmd_occlusion(args: argparse.Namespace) -> int:
    if args.meaningful:
        return _cmd_meaningful(args)
    if args.images is not None:
        raise ConfigError("--images is used by --meaningful (the controlled experiment); add --meaningful")
    from ..analysis.occlusion import occlusion
    run, model, split, indices, od = _open_with_images(args, "occlusion")
    out = od.path
    sizes = sorted(set(args.patch)) if args.patch else list(PATCH_SIZES)
    c = console()
    results = {}
    for i in indices:
        label = int(split.test_y[i])
        target = label if args.target is None else args.target
        res = occlusion(model, split.test_x[i], target=target, patch_sizes=sizes, stride=args.stride,
                        fill=args.fill, label=label, name=f"test image #{i}")
        d = out / f"test-{i}"
        res.save(od, f"test-{i}/occlusion")
        results[str(i)] = res.to_dict()
        if not args.json:
            mins = ", ".join(f"{k}×{k} {res.prob[k].min():.3f}" for k in sizes)
            c.print(f"#{i} (true {label}): p({target}) = {res.base_prob:.4f} unoccluded; lowest with a patch: "
                    f"{mins} — {res.seconds:.2f} s for {sum(p.size for p in res.prob.values())} occluded copies "
                    f"→ {d}/occlusion.png")
    summary = {"images": results}
    od.write_json("occlusion_summary.json", summary)
    if args.json:
        print_json(summary)
    return 0


def _cmd_meaningful(args) -> int:
    """`cnnlab occlusion RUN --meaningful [--images FILE.npz] [--json]`: the controlled experiment."""
    from ..analysis.meaningful import meaningful_experiment
    from ..analysis.regions import load_images_npz
    run, model = _open(args)
    out = _out_dir(args, run, "occlusion")
    images = labels = masks = None
    if args.images is not None:
        images, labels, masks = load_images_npz(args.images)
    if not args.json:
        print("training the controls N and P and measuring M, N, P, R…", file=sys.stderr)
    res = meaningful_experiment(model, images, labels, masks=masks, split=run.load_split(args.data_dir))
    paths = res.save(out)
    if args.json:
        print_json(res.to_dict())
        return 0
    c = console()
    c.print(f"is the learning meaningful? {res.verdict} ({res.seconds['total']:.0f} s)")
    c.print(res.answer_text())
    c.print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0
