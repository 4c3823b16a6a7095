"""Which signal tells a real digit from a drawing of something else? Measures the candidate
"unsure" signals of the explorer on the 10,000 MNIST test digits and on canvas drawings of digits
and of non-digits (dots, letters, smileys, shapes, scribbles: tests/drawings.py), for trained runs.

    PYTHONPATH=src python benchmarks/unsure.py /work/runs/quick-s0 /work/runs/quick-bn-s0 --data-dir DIR

Signals (p = softmax, p1 ≥ p2 the two largest, ε = the run's label smoothing, K = 10 classes):
  margin  (p1 − p2) / (1 − ε)   top-2 margin relative to the largest margin training aims for
  entropy H(p) / ln K
  dist    distance of fc1 (500 ReLU units) to the nearest class mean of the training digits,
          in units of that class's 95th-percentile training distance
For each, the threshold flags 2% of the test digits; the table gives the share of non-digit
drawings flagged at that threshold and the AUROC (test digits vs non-digits)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import drawings  # noqa: E402
from cnnlab.predict import preprocess_bytes  # noqa: E402
from cnnlab.runs import open_run  # noqa: E402


def feats(model, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    out_p, out_f = [], []
    with torch.inference_mode():
        for i in range(0, len(x), 2000):
            f = model.features(x[i:i + 2000])
            out_p.append(f["probs"].double().numpy())
            out_f.append(f["fc1"].float().numpy())
    return np.concatenate(out_p), np.concatenate(out_f)


def signals(p: np.ndarray, f: np.ndarray, eps: float, means: np.ndarray, radius: np.ndarray) -> dict:
    s = np.sort(p, 1)
    d = np.sqrt(((f[:, None, :] - means[None]) ** 2).sum(-1)) / radius[None]
    return {"margin": (s[:, -1] - s[:, -2]) / (1 - eps),
            "entropy": -(p * np.log(np.clip(p, 1e-12, 1))).sum(1) / np.log(p.shape[1]),
            "dist": d.min(1), "pmax": s[:, -1]}


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a non-digit scores more 'unsure' than a digit); pos = non-digits, neg = digits."""
    allv = np.concatenate([neg, pos])
    ranks = allv.argsort().argsort() + 1.0
    return float((ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data-dir", required=True)
    a = ap.parse_args(argv)
    nd = drawings.non_digits()
    nd_x = torch.from_numpy(np.stack([preprocess_bytes(drawings.render(s)) for s in nd.values()]))[:, None]
    dg_x = torch.from_numpy(np.stack([preprocess_bytes(drawings.render(s)) for s in drawings.DIGITS.values()]))[:, None]
    report = {}
    for path in a.runs:
        run = open_run(Path(path))
        eps = float(run.info["config"].get("label_smoothing", 0.0))
        model = run.load_model("cpu").eval().float()
        split = run.load_split(a.data_dir)
        tr_p, tr_f = feats(model, split.train_x.float() / 255)
        ty = split.train_y.numpy()
        means = np.stack([tr_f[ty == k].mean(0) for k in range(10)])
        radius = np.array([np.quantile(np.linalg.norm(tr_f[ty == k] - means[k], axis=1), 0.95) for k in range(10)])
        te = signals(*feats(model, split.test_x.float() / 255), eps, means, radius)
        nds = signals(*feats(model, nd_x.float()), eps, means, radius)
        dgs = signals(*feats(model, dg_x.float()), eps, means, radius)
        rows = {}
        for name, unsure_high in [("margin", False), ("entropy", True), ("dist", True), ("pmax", False)]:
            sign = 1 if unsure_high else -1
            thr = np.quantile(sign * te[name], 0.98)
            rows[name] = {"threshold": float(sign * thr), "test_flagged": float((sign * te[name] > thr).mean()),
                          "non_digits_flagged": float((sign * nds[name] > thr).mean()),
                          "drawn_digits_flagged": int((sign * dgs[name] > thr).sum()),
                          "auroc": auroc(sign * nds[name], sign * te[name])}
        # the rule the explorer uses (stated on the page): unsure when the relative margin < 0.5
        def rule(s):
            return s["margin"] < 0.5
        for lim in (0.4, 0.5, 0.6):
            rows[f"margin<{lim}"] = {"test_flagged": float((te["margin"] < lim).mean()),
                                     "non_digits_flagged": float((nds["margin"] < lim).mean()),
                                     "drawn_digits_flagged": int((dgs["margin"] < lim).sum())}
        combo = (te["margin"] < 0.5) | (te["dist"] > 1.2), (nds["margin"] < 0.5) | (nds["dist"] > 1.2)
        rows["margin<0.5 or dist>1.2"] = {"test_flagged": float(combo[0].mean()), "non_digits_flagged": float(combo[1].mean())}
        rows["rule margin<0.5"] = {"test_flagged": float(rule(te).mean()),
                                               "non_digits_flagged": float(rule(nds).mean()),
                                               "drawn_digits_flagged": int(rule(dgs).sum()),
                                               "missed_non_digits": [k for k, f in zip(nd, rule(nds)) if not f]}
        rows["per_drawing"] = {k: {m: round(float(nds[m][i]), 3) for m in ("margin", "dist", "pmax")}
                               for i, k in enumerate(nd) if not k.startswith("scribble")}
        rows["digits_drawn"] = {k: {m: round(float(dgs[m][i]), 3) for m in ("margin", "dist", "pmax")}
                                for i, k in enumerate(drawings.DIGITS)}
        report[run.name] = {"label_smoothing": eps, "n_test": len(te["margin"]), "n_non_digits": len(nd), **rows}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
