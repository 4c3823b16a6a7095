"""The known-answer suite of 2.4: the experiment's verdict on networks whose answer is known by
construction (tests/knownkit.py: shortcut networks with cues of several kinds, places and
strengths, true labels with a cue, digit readers, untrained networks), and its confusion table.

    python benchmarks/known_answer.py                 # every case: table, times, results/known_answer.json
    python benchmarks/known_answer.py --only grating  # the cases whose name contains "grating"
    python benchmarks/known_answer.py --cli           # also time `cnnlab occlusion RUN --meaningful
                                                      #   --images F.npz --json` on a quick-preset run

Each case: train its network (seconds), write its images (the cue of each image's label laid
under a test digit; 500 images) to an .npz, run `meaningful_experiment` with the product's
defaults (the controls N and P trained inside, as the command does), and compare the verdict with
the truth that `knownkit.ground_truth` establishes from the generator's exact parts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from common import ROOT, data_dir, load_split, machine

sys.path.insert(0, str(ROOT / "tests"))
import knownkit  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
VERDICTS = ("meaningful", "not meaningful", "inconclusive", "invalid")


def _machine() -> dict:
    try:
        return machine()
    except ImportError as e:         # a helper moved between modules: record what is known
        import os
        import platform
        return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                "torch": torch.__version__, "note": f"common.machine() failed: {e}"}


def run_case(case, split, n_images: int = 500, seed: int = 0) -> dict:
    from cnnlab.analysis.meaningful import meaningful_experiment
    net, t_train = knownkit.train_case(case, split, seed=seed)
    truth = knownkit.ground_truth(case, net, split, seed=seed)
    x, y = knownkit.case_images(case, split, n_images, seed=seed)
    t0 = time.perf_counter()
    r = meaningful_experiment(net, x, y, split=split, seed=seed)
    wall = time.perf_counter() - t0
    m = r.subjects["M"]
    return {"case": case.name, "kind": case.kind, **truth, "verdict": r.verdict, "reasons": r.reasons,
            "controls": r.controls, "behaviour_call": m["behaviour_call"], "occlusion_call": m["occlusion_call"],
            "rates": {k: round(m["behaviour"][k]["rate"], 3) for k in
                      ("accuracy_marked", "accuracy_digit_alone", "accuracy_digit_removed", "follows_moved_marker")},
            "train_s": round(t_train, 2), "experiment_s": round(wall, 2),
            "seconds": {k: round(v, 2) for k, v in r.seconds.items()}}


def confusion(rows: list[dict]) -> str:
    truths = sorted({r["truth"] for r in rows}, key=lambda t: (t != "meaningful", t))
    count = Counter((r["truth"], r["verdict"]) for r in rows)
    lines = ["| truth \\ verdict | " + " | ".join(VERDICTS) + " |", "| --- |" + " --- |" * len(VERDICTS)]
    for t in truths:
        lines.append(f"| {t} | " + " | ".join(str(count[(t, v)]) for v in VERDICTS) + " |")
    return "\n".join(lines)


def cases_table(rows: list[dict]) -> str:
    lines = ["| network | truth | verdict | digit alone | digit erased | follows marker | clean acc | cue alone | "
             "train s | experiment s |", "| --- |" + " --- |" * 9]
    for r in rows:
        ok = "" if r["verdict"] == r["truth"] else " **(wrong)**"
        cue = "—" if r["cue_only_accuracy"] != r["cue_only_accuracy"] else f"{r['cue_only_accuracy']:.0%}"
        q = r["rates"]
        lines.append(f"| {r['case']} | {r['truth']} | {r['verdict']}{ok} | {q['accuracy_digit_alone']:.0%} | "
                     f"{q['accuracy_digit_removed']:.0%} | {q['follows_moved_marker']:.0%} | "
                     f"{r['clean_accuracy']:.0%} | {cue} | {r['train_s']:.1f} | {r['experiment_s']:.1f} |")
    return "\n".join(lines)


def time_cli(split, repeats: int = 2) -> dict:
    """`cnnlab occlusion RUN --meaningful --images F.npz --json` on quick-preset runs (plain and
    batch-norm) and 500 clean test images, process start to exit, `repeats` times each."""
    import os
    env = {**os.environ, **({"CNNLAB_DATA_DIR": data_dir()} if data_dir() else {})}
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        x, y = split.test_x[:500, 0].numpy(), split.test_y[:500].numpy()
        np.savez(f"{tmp}/clean.npz", images=x, labels=y)
        for name, flag in (("quick", "--no-batch-norm"), ("quick batch-norm", "--batch-norm")):
            run = f"{tmp}/{name.replace(' ', '-')}"
            subprocess.run([sys.executable, "-m", "cnnlab", "train", "--preset", "quick", flag, "--out", run,
                            "--quiet"], env=env, check=True, capture_output=True)
            walls, verdicts = [], []
            for i in range(repeats):
                t0 = time.perf_counter()
                r = subprocess.run([sys.executable, "-m", "cnnlab", "occlusion", run, "--meaningful", "--images",
                                    f"{tmp}/clean.npz", "--json", "--out", f"{run}-o{i}"],
                                   env=env, capture_output=True, text=True)
                walls.append(round(time.perf_counter() - t0, 2))
                if r.returncode != 0:
                    raise SystemExit(f"cnnlab occlusion failed: {r.stderr[-2000:]}")
                d = json.loads(r.stdout)
                verdicts.append(d["verdict"])
            out[name] = {"wall_s": walls, "verdicts": verdicts,
                         "experiment_seconds": {k: round(v, 2) for k, v in d["seconds"].items()}}
    out["quick_preset_wall_s"] = out["quick"]["wall_s"] + out["quick batch-norm"]["wall_s"]
    out["verdicts"] = out["quick"]["verdicts"] + out["quick batch-norm"]["verdicts"]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", help="run the cases whose name contains this")
    ap.add_argument("--images", type=int, default=500, help="images per case (default 500)")
    ap.add_argument("--cli", action="store_true", help="also time the command on quick-preset runs")
    ap.add_argument("--cli-only", action="store_true", help="only time the command (no cases)")
    args = ap.parse_args(argv)
    split = load_split()
    cases = [] if args.cli_only else [c for c in knownkit.CASES if not args.only or args.only in c.name]
    rows = []
    t0 = time.perf_counter()
    for c in cases:
        r = run_case(c, split, args.images)
        rows.append(r)
        print(f"{c.name}: truth {r['truth']}, verdict {r['verdict']} ({r['experiment_s']:.1f} s; "
              f"train {r['train_s']:.1f} s){'' if r['verdict'] == r['truth'] else '  <-- WRONG ' + str(r['reasons'])}",
              flush=True)
    res = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": _machine(),
           "torch_threads": torch.get_num_threads(), "images": args.images, "rows": rows,
           "right": sum(r["verdict"] == r["truth"] for r in rows), "cases": len(rows),
           "total_s": round(time.perf_counter() - t0, 1)}
    if args.cli or args.cli_only:
        res["cli"] = time_cli(split)
        print("cli:", res["cli"])
    print(confusion(rows))
    print()
    print(cases_table(rows))
    RESULTS.mkdir(exist_ok=True)
    name = ("known_answer-cli.json" if args.cli_only else "known_answer.json" if not args.only
            else f"known_answer-{args.only.replace(' ', '_')}.json")
    (RESULTS / name).write_text(json.dumps(res, indent=1, default=str))
    return res


if __name__ == "__main__":
    main()
