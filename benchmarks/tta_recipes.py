"""Time to 99.0% test accuracy for candidate training recipes, through cnnlab.train.train itself.

    python benchmarks/tta_recipes.py --seeds 0,1,2,3,4 epochs=1 batch_size=256 lr=4e-3

Every key=value is a TrainConfig field on top of the `quick` preset. Seconds are training steps
only (TrainResult.info["timing"]["train_time_s"], evaluation excluded), as in time_to_accuracy.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from common import load_split


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("set", nargs="*", help="key=value TrainConfig overrides")
    args = ap.parse_args(argv)
    from cnnlab.config import preset
    from cnnlab.train import train
    over = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        over[k] = json.loads(v) if v not in ("True", "False") else v == "True"
    split = load_split()
    rows = []
    for s in map(int, args.seeds.split(",")):
        cfg = preset(args.preset, seed=s, **over)
        t0 = time.perf_counter()
        res = train(cfg, split=split, progress=False, log=lambda m: None)
        rows.append({"seed": s, "train_s": round(res.info["timing"]["train_time_s"], 2),
                     "wall_s": round(time.perf_counter() - t0, 2),
                     "test_acc": round(res.info["test"]["accuracy"] * 100, 2)})
        print(json.dumps(rows[-1]), flush=True)
    out = {"overrides": over, "rows": rows,
           "mean_train_s": round(statistics.mean(r["train_s"] for r in rows), 2),
           "mean_acc": round(statistics.mean(r["test_acc"] for r in rows), 3),
           "min_acc": min(r["test_acc"] for r in rows)}
    print("SUMMARY", json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
