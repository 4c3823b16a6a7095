"""`cnnlab robustness`: accuracy against ε under FGSM or PGD (L∞, [0, 1] pixel scale)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import EPS_FGSM, MAX_SEED, PGD_STEPS
from .common import add_out_flags, console, float_range, int_range, open_run_noted, output_dir, print_json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "robustness", help="accuracy against ε under FGSM / PGD attacks, one or more runs side by side",
        description="White-box L∞ attacks on the test set: FGSM (one signed-gradient step) or PGD (iterated, projected onto the ε-ball, random start), untargeted or targeted at (label + 1) mod 10. ε is on the [0, 1] pixel scale (0.1 ≈ 25 grey levels); images are always clipped to [0, 1]. Give the plain and the batch-norm run to compare them. Writes robustness.png and robustness.json.")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--attack", choices=["fgsm", "pgd"], default="fgsm")
    p.add_argument("--eps", type=float_range(0, 1), nargs="+",
                   help=f"ε values on the [0, 1] scale (default {' '.join(f'{e:g}' for e in EPS_FGSM)})")
    p.add_argument("--targeted", action="store_true", help="aim at (label + 1) mod 10 instead of any wrong class")
    p.add_argument("--steps", type=int_range(1, 10_000), default=PGD_STEPS,
                   help=f"PGD iterations (default {PGD_STEPS}); step α = 2.5·ε/steps")
    p.add_argument("--n", type=int_range(1, 60_000), help="attack only the first N test images (default: all 10,000; "
                                                  "PGD costs `steps` forward+backward passes per image and ε)")
    p.add_argument("--batch-size", type=int_range(1, 100_000), default=1000)
    p.add_argument("--seed", type=int_range(0, MAX_SEED), default=0, help="PGD random start (default 0)")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                   help="arithmetic of the attack (default fp32: the numbers a peer library reproduces; bf16 is "
                        "faster on CPUs that have it and may differ by a few images)")
    p.add_argument("--data-dir", help="folder with the MNIST IDX files (else cache / CNNLAB_DATA_DIR)")
    add_out_flags(p, "FIRST_RUN/analysis/robustness")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_robustness)


def cmd_robustness(args: argparse.Namespace) -> int:
    from ..analysis.robustness import robustness
    from ..data import to_float
    runs = [open_run_noted(p) for p in args.runs]
    d = output_dir(args, runs[0], "robustness")    # checked writable before the attack is computed
    models, kernels = {}, {}
    for r in runs:
        name = f"{r.name} ({'batch-norm' if r.batch_norm else 'plain'})"
        name = name if name not in models else f"{r.path} ({'batch-norm' if r.batch_norm else 'plain'})"
        models[name] = r.load_model()
        kernels[name] = r.config.fused_kernels     # as the run was trained
    split = runs[0].load_split(args.data_dir)
    n = min(args.n or len(split.test_x), len(split.test_x))
    x, y = to_float(split.test_x[:n]), split.test_y[:n]
    res = robustness(models, x, y, attack=args.attack, eps_list=args.eps, steps=args.steps,
                     targeted=args.targeted, batch_size=args.batch_size, seed=args.seed, precision=args.precision,
                     kernels=kernels)
    out = d.path
    stem = f"robustness_{args.attack}{'_targeted' if args.targeted else ''}"
    d.save_figure(res.figure(), f"{stem}.png", dpi=110)
    numbers = {**res.to_dict(), "runs": [str(r.path) for r in runs]}
    d.write_json(f"{stem}.json", numbers)
    if args.json:
        print_json(numbers)
        return 0
    c = console()
    c.print(f"{args.attack.upper()} {'targeted' if args.targeted else 'untargeted'}, {n} test images, "
            f"{res.params['precision']}, "
            f"{res.seconds:.1f} s — accuracy{' (classified as target)' if args.targeted else ''}:")
    c.print(res.table_text())
    c.print(f"wrote {stem}.png and {stem}.json to {out}")
    return 0
