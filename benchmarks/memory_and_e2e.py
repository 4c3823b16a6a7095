"""Peak memory of training (a child process's max RSS) and `cnnlab report` end to end.

    python benchmarks/memory_and_e2e.py [--report quick|full|none]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from common import data_dir, machine


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
        # The peak is read by the training process itself (VmHWM of its own memory map): the
        # rusage of children would count the pages of this big parent process shared at fork.
        wrapper = ("import atexit, sys, runpy\n"
                   "def peak():\n"
                   "    for l in open('/proc/self/status'):\n"
                   "        if l.startswith('VmHWM'): print('PEAK_KB', l.split()[1], file=sys.stderr)\n"
                   "atexit.register(peak)\n"
                   f"sys.argv = ['cnnlab', 'train', '--preset', 'quick', '--out', '{tmp}/q', '--quiet']\n"
                   "runpy.run_module('cnnlab', run_name='__main__')\n")
        env = {**os.environ, **({"CNNLAB_DATA_DIR": data_dir()} if data_dir() else {})}
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", wrapper], env=env, capture_output=True, text=True)
        secs = time.perf_counter() - t0
        peak_kb = [int(l.split()[1]) for l in r.stderr.splitlines() if l.startswith("PEAK_KB")]
        if r.returncode != 0 or not peak_kb:
            raise SystemExit(f"training for the memory measurement failed: {r.stderr[-2000:]}")
        res["train_quick"] = {"wall_s": secs, "peak_rss_mb": peak_kb[0] / 1024,
                              "note": "VmHWM (peak resident set) of the training process, cnnlab train --preset quick"}
        if args.report != "none":
            secs, _ = cnnlab("report", "--preset", args.report, "--out", f"{tmp}/report")
            res[f"report_{args.report}"] = {"wall_s": secs}
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
