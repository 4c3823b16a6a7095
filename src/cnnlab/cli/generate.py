"""`cnnlab synthesize` (class models from noise, §3.1) and `cnnlab adversarial` (targeted fakes, §3.2)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import BETA, BETAS, MAX_SEED, REGULARIZED, SIGMA, STEP_SIZE, STEPS, SYNTH_STEP_SIZE
from ..errors import ConfigError
from .common import add_out_flags, console, float_range, int_range, open_run_noted, output_dir, print_json

SCALE_NOTE = ("All pixel quantities are on the 0–255 scale: X starts at 128 + sigma·N(0,1), the "
              "network is fed X/255, dC/dX is taken with respect to X in grey levels.")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "synthesize", help="class models: images the network takes for each digit, from noise (§3.1)",
        description="Gradient ascent on C = logits[target] from Gaussian noise, X ← X + step_size·dC/dX, for every target class in one batch; the weights never change. Writes the images with target/prediction/confidence, the cost curves, synthesize.npz and results.json, and measures how digit-like the images are (correlation with class-mean training images, nearest training image, real-digit reference, transfer to --transfer runs). 'plain' is the assignment's update; 'regularized' adds clipping to [0, 255], L2 decay, "
                    "blur and jitter. " + SCALE_NOTE)
    p.add_argument("run", type=Path, help="run directory (from `cnnlab train`)")
    p.add_argument("--target", type=int_range(0, 9), action="append",
                   help="target class 0–9 (repeat for several; default all ten)")
    p.add_argument("--variant", choices=["plain", "regularized", "both", "natural"], default="both",
                   help="plain: the assignment's update only; regularized: with the image priors below; "
                        "default both, side by side; natural: ascent on the top principal components of "
                        "the run's training images with a Gaussian prior on them (readable digits, "
                        "cnnlab.analysis.natural; --steps, --sigma and --seed apply, --step-size does not)")
    p.add_argument("--steps", type=int_range(1, 100_000), default=STEPS, help=f"gradient steps (default {STEPS})")
    p.add_argument("--step-size", type=float_range(0, lo_open=True),
                   help=f"multiplies dC/dX, X in grey levels (default {SYNTH_STEP_SIZE:g} plain, "
                        f"{REGULARIZED['step_size']:g} regularized)")
    p.add_argument("--sigma", type=float_range(0, 255), default=SIGMA,
                   help=f"std of the starting noise around 128, grey levels (default {SIGMA:g})")
    p.add_argument("--seed", type=int_range(0, MAX_SEED), default=0, help="noise and jitter seed (default 0)")
    g = p.add_argument_group("regularized variant (defaults: the REGULARIZED preset)")
    g.add_argument("--clip", action=argparse.BooleanOptionalAction, default=None,
                   help="clip X to [0, 255] after every step (preset: on)")
    g.add_argument("--l2", type=float_range(0, 0.99), help=f"X ← (1 − l2)·X every step, decay toward black "
                                                          f"(preset {REGULARIZED['l2']:g})")
    g.add_argument("--blur-every", type=int_range(0, 100_000), help=f"blur every k steps, 0 = never "
                                                                   f"(preset {REGULARIZED['blur_every']})")
    g.add_argument("--blur-sigma", type=float_range(0, 10), help=f"blur width in pixels (preset {REGULARIZED['blur_sigma']:g})")
    g.add_argument("--jitter", type=int_range(0, 8), help=f"random shift of up to j pixels before each "
                                                         f"gradient (preset {REGULARIZED['jitter']})")
    _common(p)
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser(
        "adversarial", help="targeted fakes: a real digit the network takes for another class (§3.2)",
        description="Gradient ascent on C = logits[target] − β·MSE(X, source) for every target class in one batch, X ← X + step_size·dC/dX, where source is a real test image (by --source-index, or the first test image of --source-digit). MSE is in grey levels² (mean over the 784 pixels). Writes the fakes with target/prediction/confidence/MSE, cost curves, adversarial.npz, results.json, and with --beta-sweep the fooling-vs-resemblance "
                    "trade-off. " + SCALE_NOTE)
    p.add_argument("run", type=Path)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--source-index", type=int_range(0, 59_999), help="index of the source image in the test set")
    src.add_argument("--source-digit", type=int_range(0, 9), help="use the first test image of this digit")
    p.add_argument("--target", type=int_range(0, 9), action="append",
                   help="target class 0–9 (repeat for several; default all ten)")
    p.add_argument("--beta", type=float_range(0), default=BETA,
                   help=f"weight of the MSE term, per grey level² (default {BETA:g})")
    p.add_argument("--beta-sweep", type=float_range(0), nargs="*", metavar="BETA",
                   help="also sweep β over these values (no values: 0 0.001 0.003 0.01 0.03 0.1)")
    p.add_argument("--steps", type=int_range(1, 100_000), default=STEPS, help=f"gradient steps (default {STEPS})")
    p.add_argument("--step-size", type=float_range(0, lo_open=True), default=STEP_SIZE,
                   help=f"multiplies dC/dX, X in grey levels (default {STEP_SIZE:g})")
    p.add_argument("--init", choices=["noise", "source"], default="noise",
                   help="start from 128 ± sigma noise as §3.1 (default) or from the source image")
    p.add_argument("--sigma", type=float_range(0, 255), default=SIGMA,
                   help=f"std of the starting noise, grey levels (default {SIGMA:g})")
    p.add_argument("--clip", action="store_true", help="clip X to [0, 255] after every step (default off)")
    p.add_argument("--seed", type=int_range(0, MAX_SEED), default=0)
    _common(p)
    p.set_defaults(func=cmd_adversarial)


def _common(p) -> None:
    p.add_argument("--transfer", type=Path, action="append", default=[], metavar="RUN",
                   help="another run (e.g. another seed, the batch-norm network) to classify the images "
                        "with; repeat for several")
    p.add_argument("--data-dir", help="folder with the MNIST IDX files (else cache / CNNLAB_DATA_DIR)")
    add_out_flags(p, "RUN/analysis/<command>")
    p.add_argument("--json", action="store_true", help="print results.json to stdout")


def _transfer_models(paths) -> dict:
    from ..runs import open_run
    out = {}
    for p in paths:
        r = open_run(p)
        out[f"{r.name} ({'batch-norm' if r.batch_norm else 'plain'})"] = r.load_model()
    return out


def _open(args, name: str):
    """The run, its output folder (checked writable before any work), the model, the --transfer
    models and the data split: what both generation commands start from."""
    run = open_run_noted(args.run)
    d = output_dir(args, run, name)
    return run, d, run.load_model(), _transfer_models(args.transfer), run.load_split(args.data_dir)


def _save(fig, d, name: str) -> str:
    d.save_figure(fig, name, dpi=110)
    return name


def cmd_synthesize(args: argparse.Namespace) -> int:
    from ..analysis.class_models import SynthesisResult, synthesize
    from ..analysis.likeness import class_means, digit_likeness, likeness_figure
    from ..analysis.natural import synthesize_natural
    run, d, model, transfer, split = _open(args, "synthesize")
    out = d.path
    targets = sorted(set(args.target)) if args.target else list(range(10))
    means = class_means(split)
    common = dict(steps=args.steps, sigma=args.sigma, seed=args.seed)
    reg = {**REGULARIZED, **{k: v for k, v in dict(clip=args.clip, l2=args.l2, blur_every=args.blur_every,
                                                      blur_sigma=args.blur_sigma, jitter=args.jitter).items()
                                if v is not None}}
    variants = ["plain", "regularized"] if args.variant == "both" else [args.variant]
    results: dict[str, Any] = {"run": str(run.path), "weights": str(run.weights)}
    files: list[str] = []
    rows: list = []
    for v in variants:
        kw = dict(common)
        if v == "regularized":
            kw.update(reg)
        res: SynthesisResult
        if v == "natural":
            res = synthesize_natural(model, targets, split=split, **kw)
        else:
            if args.step_size is not None:
                kw["step_size"] = args.step_size
            res = synthesize(model, targets, label=f"{v} class models", **kw)
        lk = digit_likeness(res.images, split, models=transfer, targets=targets, means=means)
        stem = "synthesize" if v == "plain" else f"synthesize_{v}"
        d.save_npz(f"{stem}.npz", **res.arrays())
        files += [f"{stem}.npz", _save(res.figure(lk), d, f"{stem}.png"),
                  _save(res.cost_figure(), d, f"{stem}_cost.png")]
        results[v] = {**res.to_dict(), "digit_likeness": lk.to_dict()}
        if len(targets) == 10:
            rows.append((v, res.images, lk))
    if rows:
        files.append(_save(likeness_figure(rows, means, "do the class models look like digits?"),
                           d, "likeness.png"))
    results["files"] = files
    return _finish(args, results, d, lambda: _print_synthesis(results, variants, out))


def _finish(args, results: dict, d, show) -> int:
    """results.json, then the results as JSON (--json) or as `show()` prints them."""
    d.write_json("results.json", results)
    if args.json:
        print_json(results)
    else:
        show()
    return 0


def _print_synthesis(results: dict, variants, out: Path) -> None:
    from rich.table import Table
    c = console()
    ref = results[variants[0]]["digit_likeness"]["reference_real_test_digits"]
    t = Table(title="class models (r: correlation with the class-mean training image)")
    for col in ("", "pred=t", "min p", "C end", "r", "mean=t", "1NN=t", "bg"):
        t.add_column(col, no_wrap=True)
    for v in variants:
        d = results[v]
        lk = d["digit_likeness"]["summary"]
        t.add_row(v, f"{d['n_predicted_as_target']}/{len(d['targets'])}", f"{d['min_target_prob']:.4f}",
                  f"{d['cost_end_mean']:.1f}", f"{lk['corr_target_mean_mean']:+.2f}",
                  f"{lk['nearest_is_target_rate'] * 100:.0f}%", f"{lk['nn_label_is_target_rate'] * 100:.0f}%",
                  f"{lk['background_fraction_mean'] * 100:.0f}%")
    t.add_row("real digits", "", "", "", f"{ref['corr_own_mean_mean']:+.2f}",
              f"{ref['nearest_class_accuracy'] * 100:.0f}%", f"{ref['nn_label_accuracy'] * 100:.0f}%",
              f"{ref['background_fraction_mean'] * 100:.0f}%")
    c.print(t)
    c.print("pred=t: predicted as the target; C end: mean final logit of the target; mean=t: the most "
            "correlated class-mean image is the target's; 1NN=t: so is the label of the most correlated "
            "training image; bg: pixels < 32 grey levels")
    for v in variants:
        tr = results[v]["digit_likeness"]["summary"].get("transfer_agree_rate", {})
        if tr:
            c.print(f"transfer ({v}): " + ", ".join(f"{k} predicts the target for {x * 100:.0f}%"
                                                  for k, x in tr.items()))
    c.print(f"wrote {', '.join(results['files'])} and results.json to {out}")


def cmd_adversarial(args: argparse.Namespace) -> int:
    from ..analysis._shared import first_image_of
    from ..analysis.likeness import digit_likeness
    from ..analysis.targeted import adversarial, beta_sweep
    run, d, model, transfer, split = _open(args, "adversarial")
    out = d.path
    n = len(split.test_x)
    if args.source_index is not None:
        if args.source_index >= n:
            raise ConfigError(f"--source-index {args.source_index} is out of range: the test set has "
                              f"{n} images (0..{n - 1})")
        idx = args.source_index
    else:
        idx = first_image_of(split.test_y, args.source_digit)
    source, label = split.test_x[idx, 0], int(split.test_y[idx])
    targets = sorted(set(args.target)) if args.target else list(range(10))
    kw = dict(steps=args.steps, step_size=args.step_size, init=args.init, sigma=args.sigma, seed=args.seed,
              clip=args.clip, source_label=label)
    res = adversarial(model, source, targets, beta=args.beta, **kw)
    lk = digit_likeness(res.images, split, models=transfer, targets=targets)
    src_lk = digit_likeness(res.source[None], split, n_real=100).per_image
    d.save_npz("adversarial.npz", **res.arrays())
    files = ["adversarial.npz", _save(res.figure(lk), d, "adversarial.png"),
             _save(res.cost_figure(), d, "adversarial_cost.png")]
    results = {"run": str(run.path), "source_index": idx, "source_label": label,
               "source_nn_label": src_lk["nn_label"][0], "source_nearest_class_mean": src_lk["nearest_class"][0],
               **res.to_dict(), "looks_like_nn_label": lk.per_image["nn_label"],
               "looks_like_source_rate": float(sum(x == label for x in lk.per_image["nn_label"]) / len(targets)),
               "digit_likeness": lk.to_dict()}
    if args.beta_sweep is not None:
        sw = beta_sweep(model, source, betas=args.beta_sweep or BETAS, targets=targets, **kw)
        results["beta_sweep"] = sw.to_dict()
        files.append(_save(sw.figure(), d, "beta_sweep.png"))
    results["files"] = files
    return _finish(args, results, d, lambda: _print_adversarial(results, res, out))


def _print_adversarial(results: dict, res, out: Path) -> None:
    from rich.table import Table
    c = console()
    t = Table(title=f"targeted fakes of test image #{results['source_index']} (a {results['source_label']}), "
                    f"β = {res.beta:g}, {res.params['steps']} steps from {res.params['init']}")
    for col in ("target", "predicted", "confidence", "MSE to source", "r with source", "looks like", "β"):
        t.add_column(col)
    corr = res.corr_to_source
    for i, tgt in enumerate(res.targets):
        p = int(res.final_pred[i])
        b = res.beta if res.beta_per_target is None else float(res.beta_per_target[i])
        t.add_row(str(int(tgt)), str(p), f"{res.final_prob[i]:.4f}",
                  f"{res.mse[i]:.0f}", f"{corr[i]:.2f}", str(results["looks_like_nn_label"][i]), f"{b:g}")
    c.print(t)
    s = res.summary()
    c.print(f"{s['n_predicted_as_target']}/{len(res.targets)} classified as their target; "
            f"{results['looks_like_source_rate'] * 100:.0f}% look like a {results['source_label']} "
            f"(label of the most correlated training image)")
    if res.adapted or res.not_reached:
        c.print("one β did not reach every target" + res.adapt_note())
    if "beta_sweep" in results:
        for r in results["beta_sweep"]["rows"]:
            c.print(f"  β = {r['beta']:<7g} fooled {r['fooling_rate_other_classes'] * 100:5.1f}%  "
                    f"mean MSE {r['mean_mse_to_source']:8.1f}  mean r with source {r['mean_corr_to_source']:.3f}")
    c.print(f"wrote {', '.join(results['files'])} and results.json to {out}")
