"""Where the wall time of `cnnlab train --preset quick` goes, from process start to exit.

    CNNLAB_TEST_DATA=/work/shared/datasets/mnist PYTHONPATH=src \
      python benchmarks/train_wall_profile.py [--preset quick] [--out /tmp/p11-wall]

Times, in one process started by this script: the imports the CLI does (torch, cnnlab.train,
rich), load_split, then train() with every phase wrapped in a timer by patching the module
globals train() looks up (evaluate, _save_state, save_weights, _write_metrics, write_json, the
two figure functions and savefig). `train_steps_s` is train()'s own train_time_s. A second,
separate measurement runs the real CLI (`python -m cnnlab train`) as a subprocess and reports its
wall time for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

T_START = time.perf_counter()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--out", default="/tmp/p11-wall")
    ap.add_argument("--cli", action="store_true", help="also time the real CLI as a subprocess")
    ap.add_argument("--set", nargs="*", default=[], help="key=value TrainConfig overrides")
    ap.add_argument("--eval-batch", type=int, default=0,
                    help="simulate recipe R5: train.evaluate's default batch size (0 = unchanged)")
    ap.add_argument("--no-figures", action="store_true",
                    help="simulate recipe R6: curves.png / predictions.png not drawn by train()")
    args = ap.parse_args(argv)
    phases: dict[str, float] = {}
    t = time.perf_counter()
    import torch  # noqa: F401
    phases["import torch"] = time.perf_counter() - t
    t = time.perf_counter()
    import cnnlab.train as tr
    from cnnlab.config import preset
    phases["import cnnlab.train"] = time.perf_counter() - t
    t = time.perf_counter()
    import rich.table  # noqa: F401  (the CLI's summary table)
    phases["import rich"] = time.perf_counter() - t
    sys.path.insert(0, os.path.dirname(__file__))
    from common import data_dir
    t = time.perf_counter()
    from cnnlab.data import load_split
    split = load_split("mnist", data_dir())
    phases["load_split"] = time.perf_counter() - t

    counts: dict[str, int] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0
                counts[name] = counts.get(name, 0) + 1
        return wrapper

    import matplotlib.figure

    import cnnlab.figures as figs
    evaluate = tr.evaluate
    if args.eval_batch:
        import functools
        evaluate = functools.partial(tr.evaluate, batch_size=args.eval_batch)
    tr.evaluate = timed("evaluate (val + test passes)", evaluate)
    tr.RunWriter.save_state = timed("save_state (per epoch)", tr.RunWriter.save_state)
    tr.save_weights = timed("save_weights (best checkpoint)", tr.save_weights)
    tr.RunWriter.write_metrics = timed("write_metrics", tr.RunWriter.write_metrics)
    tr.write_json = timed("write_json", tr.write_json)
    figs.plot_curves = timed("plot_curves", figs.plot_curves)
    figs.plot_predictions = timed("plot_predictions", figs.plot_predictions)
    matplotlib.figure.Figure.savefig = timed("savefig (2 PNGs)", matplotlib.figure.Figure.savefig)
    if args.no_figures:
        class _NoFigure:
            def savefig(self, *a, **k):
                pass
        figs.plot_curves = lambda *a, **k: _NoFigure()
        figs.plot_predictions = lambda *a, **k: _NoFigure()
    over = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        over[k] = json.loads(v)
    cfg = preset(args.preset, **over)
    t = time.perf_counter()
    res = tr.train(cfg, args.out, split=split, overwrite=True, progress=False, log=lambda s: None)
    phases["train() total"] = time.perf_counter() - t
    phases["train steps (train_time_s)"] = res.info["timing"]["train_time_s"]
    phases["process so far"] = time.perf_counter() - T_START
    out = {"phases_s": {k: round(v, 3) for k, v in phases.items()}, "calls": counts,
           "test_acc": res.info["test"]["accuracy"]}
    if args.cli:
        env = dict(os.environ)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cnnlab", "train", "--preset", args.preset, "--out", args.out + "-cli",
                        "--overwrite", "--quiet"] + (["--data-dir", data_dir()] if data_dir() else []),
                       check=True, env=env, capture_output=True)
        out["cli_wall_s"] = round(time.perf_counter() - t, 2)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
