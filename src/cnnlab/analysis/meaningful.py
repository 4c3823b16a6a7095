"""Question 2.4 — "is the learning meaningful?" — decided by a controlled experiment.

An occlusion map alone cannot decide it: a network that reads only a label-encoding marker still
has most of its drop "near ink", and an untrained network's map looks like the digit too. So the
verdict comes from interventions first and occlusion second, with controls whose answers are known
without the model under test M (analysis/controls.py: N reads a marker, P reads the digit, R is
untrained):

1. Behaviour: on a seeded sample, each image marked with the marker of its own label — accuracy
   with the digit alone, with the digit removed, and how often a moved marker takes the prediction.
   "The digit" is found by analysis/regions.py, or given as `masks`.
2. Occlusion on marked copies of correctly classified images (3×3 patch of 0, stride 2, drop of
   log p(label)): the pointing game and the share of drop mass off the digit, per image.

Every rate is a share of independent images with a 95% Wilson interval; RULE, quoted in every
result, compares those bounds with fixed thresholds. A decisive behavioural failure decides "not
meaningful"; a failed control makes the verdict "invalid". The method, its references and its
limits in full: docs/meaningful.md.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..model import IMAGE_SIZE, N_CLASSES
from ..output import jsonable
from ..stats import rate
from . import regions as rg
from ._shared import AnalysisResult, device_of
from .controls import (
    MARKER,
    MARKER_SLOTS,
    READER_STEPS,
    SHORTCUT_STEPS,
    fresh_copy,
    log_probs,
    mark,
    marker_box,
    train_reader,
    train_shortcut,
)
from .meaningful_rule import (
    ACC_MIN,
    FOLLOW_MAX,
    HIT_MIN,
    OFF_MAX,
    REMOVED_MAX,
    RULE,
    behaviour_call,
    controls_held,
    decide,
    occlusion_call,
    subject_verdict,
)
from .occlusion import describe_patch_map
from .regions import occluded, patch_overlap
from .verdict import Verdict

if TYPE_CHECKING:
    import numpy.typing as npt
    from matplotlib.figure import Figure

    from ..data import Split

OCC_PATCH, OCC_STRIDE, OCC_FILL = 3, 2, 0.0
GREY_FILL, GREY_SIZES = 0.5, (1, 2, 3, 4, 5)




# ---------------------------------------------------------------------------------------------
# Small exact pieces: the pointing game
# ---------------------------------------------------------------------------------------------

def pointing_hit(drop: np.ndarray, on_digit: np.ndarray, rtol: float = 1e-9) -> bool:
    """The pointing game on a [P, P] drop map: hit iff the largest drop is positive, unique (no
    other position within a relative 1e-9 of it) and at a position marked `on_digit`."""
    d = np.asarray(drop, dtype=np.float64)
    top = float(d.max())
    if not top > 0:
        return False
    ties = np.abs(d - top) <= rtol * abs(top)
    if int(ties.sum()) != 1:
        return False
    return bool(on_digit.reshape(-1)[int(np.argmax(d))])


def off_digit_share(drop: np.ndarray, on_digit: np.ndarray) -> float:
    """Share of the positive drop mass at positions off the digit; NaN when nothing drops."""
    d = np.clip(np.asarray(drop, dtype=np.float64), 0, None)
    total = d.sum()
    return float(d[~on_digit].sum() / total) if total > 0 else float("nan")


# ---------------------------------------------------------------------------------------------
# The models of the experiment
# ---------------------------------------------------------------------------------------------

@dataclass
class Subject:
    """A model of the experiment and the labels it is scored against (M, N, R: the images' labels;
    P: its own readings of the unmarked images)."""
    name: str
    net: nn.Module
    labels: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------
# The measurements
# ---------------------------------------------------------------------------------------------

def _behaviour(net: nn.Module, x: torch.Tensor, y: torch.Tensor, moved: torch.Tensor, region: torch.Tensor) -> dict:
    marked = mark(x, y)
    variants = {"marked": marked, "digit_alone": marked * region, "digit_removed": marked * (1 - region),
                "marker_moved": mark(x, moved)}
    n = len(y)
    pred = {k: log_probs(net, v).argmax(1) for k, v in variants.items()}
    return {"accuracy_marked": rate(int((pred["marked"] == y).sum()), n),
            "accuracy_digit_alone": rate(int((pred["digit_alone"] == y).sum()), n),
            "accuracy_digit_removed": rate(int((pred["digit_removed"] == y).sum()), n),
            "follows_moved_marker": rate(int((pred["marker_moved"] == moved).sum()), n),
            "keeps_label_when_marker_moved": rate(int((pred["marker_moved"] == y).sum()), n)}


def _occlusion(net: nn.Module, x: torch.Tensor, y: torch.Tensor, regions: np.ndarray) -> dict:
    """Fill-0 occlusion of marked copies: per image the drop map of log p(label), the pointing
    hit and the off-digit share."""
    k, st = OCC_PATCH, OCC_STRIDE
    P = (IMAGE_SIZE - k) // st + 1
    marked = mark(x, y)
    base = log_probs(net, marked)
    drops, hits, shares = [], [], []
    chunk = 12                                   # images per forward pass: 12 × 169 copies
    for i0 in range(0, len(y), chunk):
        idx = range(i0, min(i0 + chunk, len(y)))
        occ = torch.cat([occluded(marked[i], k, st, OCC_FILL) for i in idx])
        lp = log_probs(net, occ).reshape(len(idx), P * P, -1)
        for j, i in enumerate(idx):
            t = int(y[i])
            d = (base[i, t] - lp[j, :, t]).numpy().reshape(P, P)
            on = patch_overlap(regions[i], k, st) & ~patch_overlap(marker_box(t), k, st)
            drops.append(d)
            hits.append(pointing_hit(d, on))
            shares.append(off_digit_share(d, on))
    sh = np.array(shares, dtype=np.float64)
    mostly_off = int(np.sum(~(sh <= 0.5)))      # NaN (no positive drop) counts as off
    n = len(y)
    finite = sh[np.isfinite(sh)]
    return {"images": n, "accuracy_marked": rate(int((base.argmax(1) == y).sum()), n),
            "largest_drop_on_digit": rate(int(np.sum(hits)), n),
            "most_drop_mass_off_digit": rate(mostly_off, n),
            "off_digit_share_mean": float(finite.mean()) if len(finite) else float("nan"),
            "off_digit_share_median": float(np.median(finite)) if len(finite) else float("nan"),
            "images_without_positive_drop": int(np.sum(~np.isfinite(sh))),
            "max_drop_median": float(np.median([d.max() for d in drops])) if drops else float("nan"),
            "_drops": np.stack(drops) if drops else np.zeros((0, P, P)), "_hits": np.array(hits, dtype=bool),
            "_shares": sh}


def _grey_maps(net: nn.Module, img: torch.Tensor, target: int, region: np.ndarray) -> dict:
    """The assignment's plot for one marked image: p(target) under a 0.5 patch, k = 1..5, stride 1,
    and the descriptive numbers."""
    batches = [occluded(img, k, 1, GREY_FILL) for k in GREY_SIZES]
    x = torch.cat(batches)
    lp = log_probs(net, x)
    base = float(log_probs(net, img[None])[0, target].exp())
    ink = rg.ink(img[0].numpy())
    mbox = marker_box(target)
    maps, stats, at = {}, {}, 0
    for k, b in zip(GREY_SIZES, batches):
        P = IMAGE_SIZE - k + 1
        p = lp[at:at + len(b), target].exp().numpy().reshape(P, P)
        at += len(b)
        maps[k] = p
        stats[str(k)] = describe_patch_map(p, base, ink, region, k, 1, marker=mbox)
    return {"base_prob": base, "patch_sizes": stats, "_maps": maps}


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------

@dataclass
class MeaningfulResult(AnalysisResult):
    """The experiment's result, in the one protocol (to_dict, figure, arrays, save: meaningful.*)."""
    stem: ClassVar[str] = "meaningful"
    verdict: str
    reasons: list[str]
    subjects: dict[str, dict]          # name -> {"role", "behaviour", "occlusion", "grey", calls, verdict}
    controls_ok: bool
    settings: dict
    seconds: dict
    example: dict                      # the one marked image of the grey maps
    maps: dict = field(repr=False, default_factory=dict)     # drop maps, hits, images (the .npz)
    controls: dict = field(default_factory=dict)             # {"behaviour": bool, "occlusion": bool}

    def to_dict(self) -> dict:
        def public(d: Any) -> Any:          # keys starting with "_" hold arrays, saved in the .npz instead
            if isinstance(d, dict):
                return {k: public(v) for k, v in d.items() if not str(k).startswith("_")}
            return [public(v) for v in d] if isinstance(d, (list, tuple)) else d
        return jsonable(public({"question": "2.4: is the learning meaningful?", "verdict": self.verdict,
                      "answer": self.answer_text(), "rule": RULE, "reasons": self.reasons,
                      "controls_ok": self.controls_ok, "controls": self.controls, "subjects": self.subjects, "settings": self.settings,
                      "example": self.example, "seconds": self.seconds}))

    def answer_text(self) -> str:
        m, n, p, r = (self.subjects[k] for k in ("M", "N", "P", "R"))
        b, o = m["behaviour"], m["occlusion"]

        def pc(x: dict[str, Any]) -> str:
            return (f"{x['rate']:.0%} of {x['n']} images (95% interval {x['lo']:.0%}–{x['hi']:.0%})"
                    if x["n"] else "none of 0 images")
        head = {"meaningful": "By the stated rule the learning is meaningful.",
                "not meaningful": "By the stated rule the learning is not meaningful.",
                "inconclusive": "By the stated rule the experiment does not decide whether the learning is meaningful.",
                "invalid": "The experiment is invalid, so it does not answer whether the learning is meaningful."}[self.verdict]
        s = [head,
             f"With only the digit left, the model gives the label on {pc(b['accuracy_digit_alone'])}; "
             f"with the digit erased, on {pc(b['accuracy_digit_removed'])}; a marker moved to another class's "
             f"position takes the prediction on {pc(b['follows_moved_marker'])} (behaviour: {m['behaviour_call']}).",
             f"Erasing 3×3 patches of marked images, the largest drop of log p(label) falls on the digit on "
             f"{pc(o['largest_drop_on_digit'])} and most of the drop lies off the digit on "
             f"{pc(o['most_drop_mass_off_digit'])} (occlusion: {m['occlusion_call']}).",
             f"Controls, trained here without M: the marker-trained network N follows a moved marker on "
             f"{pc(n['behaviour']['follows_moved_marker'])} and its largest drop falls on the digit on "
             f"{pc(n['occlusion']['largest_drop_on_digit'])} ({n['verdict']}); the digit-trained network P keeps "
             f"its reading with the digit alone on {pc(p['behaviour']['accuracy_digit_alone'])} and its largest "
             f"drop falls on the digit on {pc(p['occlusion']['largest_drop_on_digit'])} ({p['verdict']}); "
             f"the untrained network R gives the label with the digit alone on "
             f"{pc(r['behaviour']['accuracy_digit_alone'])} ({r['verdict']}) while its largest drop falls on "
             f"the digit on {pc(r['occlusion']['largest_drop_on_digit'])}."]
        if self.reasons:
            s.append("Why: " + "; ".join(self.reasons) + ".")
        return " ".join(s)

    def figure(self) -> Figure:
        return _plot(self)

    def arrays(self) -> dict[str, np.ndarray]:
        return self.maps


def meaningful_verdict(result: MeaningfulResult) -> Verdict:
    """2.4's answer as a Verdict: key = the experiment's verdict, the answer sentence of
    `answer_text`, RULE, and every number the rule reads (per subject: the five rates with their
    Wilson bounds, the calls and the subject's verdict; the thresholds; which control groups held)."""
    rates = ("accuracy_digit_alone", "accuracy_digit_removed", "follows_moved_marker")
    occ = ("largest_drop_on_digit", "most_drop_mass_off_digit")
    subjects = {}
    for name, sub in result.subjects.items():
        subjects[name] = {**{k: sub["behaviour"][k] for k in rates}, **{k: sub["occlusion"][k] for k in occ},
                          "accuracy_marked": sub["behaviour"]["accuracy_marked"],
                          "behaviour_call": sub["behaviour_call"], "occlusion_call": sub["occlusion_call"],
                          "verdict": sub["verdict"]}
    numbers = {"subjects": subjects, "controls_ok": result.controls_ok, "controls": dict(result.controls),
               "thresholds": dict(result.settings["thresholds"]), "confidence": 0.95,
               "occlusion_patch": OCC_PATCH, "occlusion_stride": OCC_STRIDE,
               "n_behaviour": result.settings["n_behaviour"], "n_occlusion": result.settings["n_occlusion"]}
    return Verdict("2.4", result.verdict, result.answer_text(), RULE, numbers)


# ---------------------------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------------------------

def _sample_regions(x_u8: np.ndarray, take: np.ndarray, masks) -> np.ndarray:
    """"The digit" of each sampled image: the given masks, else regions.digit_masks; a DataError
    names the image by its index in the images given."""
    if masks is not None:
        return rg.digit_masks(x_u8, masks)[take]
    found, why = rg.find_digits(x_u8[take])
    bad = [i for i, w in enumerate(why) if w is not None]
    if bad:
        raise DataError(f"no digit found in image {int(take[bad[0]])} ({len(bad)} of the {len(take)} sampled): "
                        f"{why[bad[0]]}; drop it, or give the digits as 'masks' (bool [N, 28, 28]) in the .npz")
    return found


def meaningful_experiment(model: nn.Module, images: npt.ArrayLike | None = None, labels: npt.ArrayLike | None = None, *,
                          masks: npt.ArrayLike | None = None, split: Split | None = None, seed: int = 0,
                          n_behaviour: int = 500, n_occlusion: int = 50, negative: nn.Module | None = None,
                          positive: nn.Module | None = None, untrained: nn.Module | None = None,
                          shortcut_steps: int = SHORTCUT_STEPS, reader_steps: int = READER_STEPS) -> MeaningfulResult:
    """Run the controlled experiment of question 2.4 on `model` (M).

    images, labels: uint8 [N, 28, 28] and int [N] in 0..9; default: the test images of `split`.
    masks: optional bool [N, 28, 28], "the digit" of each image where the caller knows it (else
    found by analysis/regions.py). split: a cnnlab.data.Split; its training images train the
    controls N and P (needed unless both are given). negative / positive / untrained replace N, P
    and R (for tests, and for swapping a control on purpose). Sample sizes: `n_behaviour` images
    for the interventions, up to `n_occlusion` of them (correctly classified when marked) per
    network for occlusion. Seeded: same inputs, same result.
    """
    t0 = time.perf_counter()
    if images is None and labels is None:
        if split is None:
            raise ConfigError("give images and labels, or a split whose test images to use")
        x_u8, y_np = rg.check_images(split.test_x.numpy(), split.test_y.numpy())
    elif images is None or labels is None:
        raise ConfigError("give both images and labels (or neither, to use the split's test images)")
    else:
        x_u8, y_np = rg.check_images(images, labels)
    for name, v in (("n_behaviour", n_behaviour), ("n_occlusion", n_occlusion), ("shortcut_steps", shortcut_steps),
                    ("reader_steps", reader_steps)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ConfigError(f"{name} must be an integer ≥ 1, not {v!r}")
    if (negative is None or positive is None) and split is None:
        raise ConfigError("the controls N and P are trained on the dataset's training images: pass split= "
                          "(cnnlab.data.load_split('mnist')) or trained negative= and positive=")
    was_training = model.training
    model.eval()
    dev = device_of(model)
    with torch.no_grad():
        out_classes = model(torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE, device=dev)).shape[-1]
    if out_classes != N_CLASSES:
        raise ConfigError(f"the model has {out_classes} outputs; this experiment needs 10 classes (one marker slot each)")

    # The sample: seeded, the same images for every network.
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y_np))
    take = order[:min(n_behaviour, len(order))]
    regions = _sample_regions(x_u8, take, masks)
    x_all = torch.from_numpy(x_u8[take]).float().div(255.0)[:, None]
    y_all = torch.from_numpy(y_np[take])
    region_t = torch.from_numpy(regions).float()[:, None]
    shift = torch.from_numpy(rng.integers(1, N_CLASSES, len(take)))     # the moved marker: another class

    t1 = time.perf_counter()
    p_given = positive is not None
    if negative is None:
        negative = train_shortcut(model, split.train_x, seed=seed, steps=shortcut_steps)  # type: ignore[union-attr]  # split checked above
    t_neg = time.perf_counter()
    if positive is None:
        positive = train_reader(model, split.train_x, split.train_y, seed=seed, steps=reader_steps)  # type: ignore[union-attr]  # split checked above
    t_pos = time.perf_counter()
    nets = {"M": model, "N": negative, "P": positive,
            "R": untrained if untrained is not None else fresh_copy(model, seed + 2)}
    # Work on channels_last copies (faster on CPU, same function): the caller's models stay as given.
    copies: dict[int, nn.Module] = {}
    for key, net in list(nets.items()):
        if id(net) not in copies:
            c = copy.deepcopy(net).eval()
            if device_of(c).type == "cpu":
                c = c.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit memory_format
            copies[id(net)] = c
        nets[key] = copies[id(net)]
    # P is scored against its own readings of the unmarked images: its answer is known on any labels.
    subjects = {k: Subject(k, net, y_all) for k, net in nets.items()}
    subjects["P"].labels = log_probs(nets["P"], x_all).argmax(1)

    roles = {"M": "the model under test",
             "N": "negative control: trained on labels only a marker carries (digits shuffled)",
             "P": "positive control (given)" if p_given else
                  "positive control: trained on the true labels, markers in random slots",
             "R": "M's architecture, untrained"}
    res: dict[str, dict] = {}
    arrays: dict[str, np.ndarray] = {}
    seconds = {"train_negative": t_neg - t1, "train_positive": t_pos - t_neg}
    occ_idx = {}
    for name, s in subjects.items():
        ts = time.perf_counter()
        y = s.labels if s.labels is not None else y_all
        moved = (y + shift) % N_CLASSES
        b = _behaviour(s.net, x_all, y, moved, region_t)
        correct = np.nonzero((log_probs(s.net, mark(x_all, y)).argmax(1) == y).numpy())[0][:n_occlusion]
        occ_idx[name] = correct
        o = _occlusion(s.net, x_all[correct], y[correct], regions[correct])
        bc, oc = behaviour_call(b), occlusion_call(o)
        res[name] = {"role": roles[name], "behaviour": b, "occlusion": o,
                     "behaviour_call": bc, "occlusion_call": oc, "verdict": subject_verdict(bc, oc)}
        arrays[f"{name}_drops"] = o["_drops"].astype(np.float32)
        arrays[f"{name}_hits"] = o["_hits"]
        arrays[f"{name}_off_digit_share"] = o["_shares"].astype(np.float32)
        arrays[f"{name}_occlusion_indices"] = take[correct].astype(np.int64)
        seconds[name] = time.perf_counter() - ts
    # The grey maps of one marked image M gets right (the first image if it gets none right).
    example_i = int(occ_idx["M"][0]) if len(occ_idx["M"]) else 0
    for name, s in subjects.items():
        y = s.labels if s.labels is not None else y_all
        t = int(y[example_i])
        g = _grey_maps(s.net, mark(x_all[example_i:example_i + 1], y[example_i:example_i + 1])[0], t,
                       regions[example_i])
        res[name]["grey"] = g
        res[name]["grey_label"] = t
        for k, mp in g["_maps"].items():
            arrays[f"{name}_grey_k{k}"] = mp.astype(np.float32)
    model.train(was_training)

    controls, reasons = controls_held(res)
    m_ = res["M"]
    verdict = decide(str(m_["behaviour_call"]), str(m_["occlusion_call"]), controls)
    if controls["behaviour"] and verdict == "not meaningful":
        reasons = []          # decided by M's behaviour; occlusion controls do not bear on it
    if verdict == "inconclusive":
        reasons.append(f"behaviour: {m_['behaviour_call']}, occlusion: {m_['occlusion_call']}")
    seconds["total"] = time.perf_counter() - t0
    cm = occ_idx["M"]
    arrays.update(images=x_u8[take[cm]], labels=y_np[take[cm]], regions=regions[cm],
                  sample_indices=take.astype(np.int64), occlusion_indices=take[cm].astype(np.int64))
    settings = {"seed": int(seed), "images_given": len(y_np), "n_behaviour": len(take),
                "n_occlusion": len(cm), "shortcut_steps": int(shortcut_steps), "reader_steps": int(reader_steps),
                "digit": ("given masks" if masks is not None else
                          {"finder": "analysis/regions.py", "background": f"opening by {rg.BG_WINDOW}×{rg.BG_WINDOW}",
                           "ink_share_of_stroke_level": rg.INK_SHARE,
                           "min_contrast": rg.MIN_CONTRAST, "join_px": rg.JOIN_PX, "grow_px": rg.DIGIT_GROW}),
                "marker_px": MARKER, "marker_slots_yx": [list(v) for v in MARKER_SLOTS],
                "occlusion": {"patch": OCC_PATCH, "stride": OCC_STRIDE, "fill": OCC_FILL,
                              "measure": "log p(label) clean-marked − occluded"},
                "grey": {"fill": GREY_FILL, "patch_sizes": list(GREY_SIZES), "stride": 1},
                "thresholds": {"acc_min": ACC_MIN, "follow_max": FOLLOW_MAX, "removed_max": REMOVED_MAX,
                               "hit_min": HIT_MIN, "off_max": OFF_MAX, "interval": "Wilson 95%"},
                "torch_threads": torch.get_num_threads()}
    example = {"sample_index": int(take[example_i]), "label": int(y_all[example_i]),
               "image": x_u8[take[example_i]].tolist(), "region": regions[example_i].astype(int).tolist()}
    return MeaningfulResult(verdict, reasons, res, controls["behaviour"] and controls["occlusion"], settings,
                            seconds, example, arrays, controls)


# ---------------------------------------------------------------------------------------------
# The figure
# ---------------------------------------------------------------------------------------------

def _plot(r: MeaningfulResult):
    """Rows M, N, P, R: the marked input, the grey-patch maps k = 1…5 (under each: the lowest p and
    what the patch there covers) and the black 3×3 drop map the rule uses; below, the rule's five
    measurements. Designed 6.8 in wide: printed at full size, no text under 7 pt."""
    import matplotlib.pyplot as plt

    from ..figures import FIG_WIDTH_IN, wrap_text
    names = ("M", "N", "P", "R")
    roles = {"M": "model under test", "N": "shortcut control", "P": "digit-reading control", "R": "untrained"}
    img = np.array(r.example["image"], dtype=np.float64) / 255.0
    t = r.example["label"]
    region = np.array(r.example["region"], dtype=bool)

    def marked(c: int) -> np.ndarray:
        out = img.copy()
        y0, x0 = MARKER_SLOTS[c]
        out[y0:y0 + MARKER, x0:x0 + MARKER] = 1.0
        return out
    ncol = 2 + len(GREY_SIZES)                  # input, grey maps, black drop map
    fig = plt.figure(figsize=(FIG_WIDTH_IN, 8.4), layout="constrained")
    gs = fig.add_gridspec(len(names) + 2, ncol + 1, width_ratios=[1.25] + [1] * ncol,
                          height_ratios=[1] * len(names) + [0.25, 2.1])
    im = None
    for row, name in enumerate(names):
        sub = r.subjects[name]
        lab = fig.add_subplot(gs[row, 0])
        lab.axis("off")
        lab.text(1.0, 0.5, f"{name}\n{wrap_text(roles[name], 0.9, 8)}\n{sub['verdict']}\n"
                           f"p({sub['grey_label']}) = {sub['grey']['base_prob']:.3f}",
                 transform=lab.transAxes, ha="right", va="center", fontsize=8)
        ax = fig.add_subplot(gs[row, 1])
        ax.imshow(marked(sub["grey_label"]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.contour(region.astype(float), levels=[0.5], colors="#33ccff", linewidths=0.8)
        ax.set_xticks([]), ax.set_yticks([])
        if row == 0:
            ax.set_title("input", fontsize=8)
        for j, k in enumerate(GREY_SIZES, start=2):
            ax = fig.add_subplot(gs[row, j])
            p = np.array(sub["grey"]["_maps"][k])
            c0 = (k - 1) / 2
            im = ax.imshow(p, cmap="magma", vmin=0, vmax=1, interpolation="nearest",
                           extent=(c0 - 0.5, c0 + p.shape[1] - 0.5, c0 + p.shape[0] - 0.5, c0 - 0.5))
            ax.contour(region.astype(float), levels=[0.5], colors="#33ccff", linewidths=0.6)
            ax.set_xlim(-0.5, 27.5), ax.set_ylim(27.5, -0.5)
            ax.set_xticks([]), ax.set_yticks([])
            st = sub["grey"]["patch_sizes"][str(k)]
            ax.set_xlabel(f"{st['min_prob']:.2f}\n{st['lowest_p_falls_on']}", fontsize=7.5, labelpad=2)
            if row == 0:
                ax.set_title(f"grey {k}×{k}", fontsize=8)
        ax = fig.add_subplot(gs[row, ncol])
        d = r.maps[f"{name}_drops"]
        scale = "none"
        if len(d):
            dm = d[0]
            P = dm.shape[0]
            c0 = (OCC_PATCH - 1) / 2
            vmax = max(float(np.abs(dm).max()), 1e-12)       # its own scale: red raises, blue lowers p
            ax.imshow(dm, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest",
                      extent=(c0 - 1, c0 + (P - 1) * OCC_STRIDE + 1, c0 + (P - 1) * OCC_STRIDE + 1, c0 - 1))
            scale = f"±{vmax:.2g}"
        ax.contour(region.astype(float), levels=[0.5], colors="k", linewidths=0.6)
        ax.set_xlim(-0.5, 27.5), ax.set_ylim(27.5, -0.5)
        ax.set_xticks([]), ax.set_yticks([])
        o = sub["occlusion"]
        ax.set_xlabel(f"{scale}\ndigit {o['largest_drop_on_digit']['rate']:.0%}", fontsize=7.5, labelpad=2)
        if row == 0:
            ax.set_title("black 3×3\ndrop of log p", fontsize=8)
    cax = fig.add_subplot(gs[len(names), 2:ncol])
    if im is not None:
        fig.colorbar(im, cax=cax, orientation="horizontal")
    cax.set_xlabel(f"p(the row's class: {t}, for P its own reading) with a grey (0.5) patch centred there",
                   fontsize=8.5)

    items = [("digit alone:\naccuracy", "behaviour", "accuracy_digit_alone", ACC_MIN, "≥"),
             ("digit removed:\naccuracy", "behaviour", "accuracy_digit_removed", REMOVED_MAX, "≤"),
             ("marker moved:\nfollowed", "behaviour", "follows_moved_marker", FOLLOW_MAX, "≤"),
             ("largest drop\non the digit", "occlusion", "largest_drop_on_digit", HIT_MIN, "≥"),
             ("most drop mass\noff the digit", "occlusion", "most_drop_mass_off_digit", OFF_MAX, "≤")]
    ax = fig.add_subplot(gs[len(names) + 1, :])
    width = 0.19
    colors = {"M": "C0", "N": "C3", "P": "C2", "R": "C7"}
    for si, name in enumerate(names):
        for ii, (_, part, key, _, _) in enumerate(items):
            v = r.subjects[name][part][key]
            xpos = ii + (si - 1.5) * width
            ax.bar(xpos, v["rate"] if v["n"] else 0, width * 0.9, color=colors[name],
                   label=name if ii == 0 else None)
            if v["n"]:
                ax.errorbar(xpos, v["rate"], yerr=[[max(0.0, v["rate"] - v["lo"])], [max(0.0, v["hi"] - v["rate"])]],
                            color="k", capsize=2, lw=0.8)
    for ii, (_, _, _, thr, op) in enumerate(items):
        ax.hlines(thr, ii - 0.45, ii + 0.45, colors="k", linestyles="--", lw=0.8)
        ax.text(ii + 0.47, thr, f"{op}{thr:g}", fontsize=7.5, va="center",
                bbox=dict(facecolor="white", edgecolor="none", pad=0.5))
    ax.set_xticks(range(len(items)), [it[0] for it in items], fontsize=8)
    ax.set_xlim(-0.55, len(items) - 0.2)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of images\n(95% Wilson)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(wrap_text(f"the rule's measurements: {r.settings['n_behaviour']} images for behaviour, "
                           f"{r.settings['n_occlusion']} for occlusion (dashed: thresholds on the interval bounds)",
                           FIG_WIDTH_IN - 1.0, 9), fontsize=9)
    fig.suptitle(wrap_text(
        f"2.4 is the learning meaningful? verdict: {r.verdict.upper()}{'' if r.controls_ok else ' (controls failed)'}"
        f" — one marked test image (label {t}, marker of class {t} in its slot; outline = 'the digit'). Rows: "
        "the model M and the controls N, P, R; columns: the input, the assignment's grey-patch maps (under each: "
        "the lowest p and what the patch there covers), the black-patch drop the rule uses (on its own scale, "
        "red = the patch lowers log p; under it: the scale, and the share of the occluded images whose largest "
        "drop is on the digit).", fontsize=9), fontsize=9)
    return fig
