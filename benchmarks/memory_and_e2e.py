"""Peak memory of training (a child process's max RSS) and `cnnlab report` end to end.

    python benchmarks/memory_and_e2e.py [--report quick|full|none]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, data_dir, machine


def cnnlab(*args, cwd=None) -> tuple[float, int]:
    env = {**os.environ}
    if data_dir():
        env["CNNLAB_DATA_DIR"] = data_dir()
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cnnlab", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"cnnlab {' '.join(args)} failed: {r.stderr[-2000:]}")
    return time.perf_counter() - t0, r.returncode


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--report", default="quick", choices=["quick", "full", "none"])
    args = ap.parse_args(argv)
    res = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        secs, _ = cnnlab("train", "--preset", "quick", "--out", f"{tmp}/q", "--quiet")
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        res["train_quick"] = {"wall_s": secs, "peak_rss_mb": peak_kb / 1024,
                              "note": "max RSS of the training process (ru_maxrss of children)"}
        if before > peak_kb:
            res["train_quick"]["note"] += "; an earlier child had a larger peak"
        if args.report != "none":
            secs, _ = cnnlab("report", "--preset", args.report, "--out", f"{tmp}/report")
            res[f"report_{args.report}"] = {"wall_s": secs}
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
