"""`cnnlab explore`: a local web page where you draw a digit and watch one or two trained networks think.

The server is a small FastAPI app; the page is static HTML/JS/CSS shipped in `cnnlab/static`, with
no outside fonts, scripts or styles, so it works with no internet at all. Every number the page
shows comes from the functions the CLI and the report use — `cnnlab.predict` (the MNIST-style
preprocessing and the decoder guards), `cnnlab.analysis` (layer table, filters, activations,
occlusion, class models, targeted fakes). This module only moves arrays
between them and the browser; it implements none of them a second time. What the page says about
confidence and about the unsure rule is measured on the runs it shows (`Explorer.calibration`),
never carried over from another run.

Security: binds 127.0.0.1 unless told otherwise; never opens a path the browser sends (the only
files served are the three page files, by fixed name); every request body is size-limited while
it is read, before anything decodes it; images are decoded only by `cnnlab.predict`'s guards. The
weights are loaded once, frozen (`requires_grad=False`) and only used for inference or input-only
gradients.

Images travel as base64 PNG data URLs (made here with Pillow, colour-mapped with matplotlib's
lookup tables); the 28×28 input travels as 784 base64 bytes, so what the page shows is exactly
what the network saw.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import random
import socket
import sys
import threading
import time
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import config
from .analysis import activations, anatomy, class_models, filters, natural, occlusion, targeted
from .analysis._shared import FEATURE_LAYERS, first_image_of, mosaic
from .data import cache_dir, get_spec
from .errors import CnnlabError, ConfigError, ImageError, RunError
from .output import write_json
from .predict import preprocess_bytes
from .runs import open_run

try:    # the optional `explore` extra; FastAPI resolves the (string) annotations in this module
    from fastapi import Request
except ImportError:                     # pragma: no cover - `cnnlab explore` says how to install
    Request = None  # type: ignore[misc,assignment]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8179                     # EE5179; `--port 0` picks a free one
MAX_BODY_BYTES = 8 * 1024 * 1024        # largest request body read (uploads, drawn canvases)
MAX_JSON_BYTES = 12 * 1024 * 1024       # a canvas/photo data URL is base64: 4/3 of the bytes
STATIC_FILES = {"explore.html": "text/html; charset=utf-8",
                "explore.js": "text/javascript; charset=utf-8",
                "explore.css": "text/css; charset=utf-8"}
CACHE_VERSION = 3                       # bump when the cached beliefs change meaning
# "Unsure" when the top-2 margin is under half of the largest margin training aims for:
# (p1 − p2) / (1 − ε) < UNSURE_MARGIN, ε = the run's label smoothing. How often it fires differs
# from run to run (benchmarks/unsure.py compares runs), so the page quotes only the rates measured
# on the runs it shows (Explorer.calibration).
UNSURE_MARGIN = 0.5
# The page's sentences on confidence and on the unsure rule are measured on every loaded run:
# on CALIBRATION_IMAGES of its test images, evenly spread (every k-th: MNIST's test set is ordered,
# its first half the easier), and on the shipped drawings of non-digits (tools/make_non_digits.py).
CALIBRATION_IMAGES = 2000
CALIBRATION_VERSION = 1                 # bump when the cached measurements change meaning
NON_DIGITS_FILE = "non_digits.npz"
INSTALL_HINT = "pip install 'cnnlab[explore]'"
N_CLASSES = 10


# ---------------------------------------------------------------------------------------------
# Pictures for the browser: arrays → PNG data URLs
# ---------------------------------------------------------------------------------------------

@cache
def _lut(cmap: str) -> np.ndarray:
    """uint8 [256, 3] colour lookup table of a matplotlib colormap ('gray' is exact)."""
    if cmap == "gray":
        return np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    import matplotlib
    return (matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def png_url(arr: np.ndarray) -> str:
    """A uint8 [H, W] (grey), [H, W, 3] or [H, W, 4] array as a PNG data URL."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def colorize(x: np.ndarray, vmin: float, vmax: float, cmap: str = "gray",
             mask: np.ndarray | None = None) -> np.ndarray:
    """Values → RGBA uint8 through `cmap` on [vmin, vmax]; pixels where mask is False are transparent."""
    x = np.asarray(x, dtype=np.float64)
    span = vmax - vmin if vmax > vmin else 1.0
    idx = np.clip(np.nan_to_num((x - vmin) / span) * 255 + 0.5, 0, 255).astype(np.uint8)
    rgba = np.empty(x.shape + (4,), dtype=np.uint8)
    rgba[..., :3] = _lut(cmap)[idx]
    rgba[..., 3] = 255 if mask is None else np.where(mask, 255, 0)
    return rgba


def image_url(img28: np.ndarray) -> str:
    """An image on [0, 1] (what the network sees) as a grey PNG."""
    return png_url(np.clip(np.asarray(img28, dtype=np.float64) * 255 + 0.5, 0, 255).astype(np.uint8))


def colorbar_url(cmap: str, width: int = 128) -> str:
    return png_url(np.repeat(_lut(cmap)[np.linspace(0, 255, width).astype(int)][None], 8, axis=0))


# ---------------------------------------------------------------------------------------------
# The 28×28 input: uint8 on the wire, [0, 1] float32 for the network
# ---------------------------------------------------------------------------------------------

def quantize(img: np.ndarray) -> np.ndarray:
    """[28, 28] on [0, 1] → uint8, the form every input takes here (lossless on the wire)."""
    img = np.asarray(img, dtype=np.float64)
    if img.shape != (28, 28) or not np.isfinite(img).all():
        raise ImageError(f"expected a finite 28×28 image, got shape {list(img.shape)}")
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def encode_pixels(u8: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(u8, dtype=np.uint8).tobytes()).decode("ascii")


def decode_pixels(text: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise ImageError("'pixels' must be base64 of 784 bytes (a 28×28 uint8 image)") from None
    if len(raw) != 784:
        raise ImageError(f"'pixels' holds {len(raw)} bytes; a 28×28 image is 784")
    return np.frombuffer(raw, dtype=np.uint8).reshape(28, 28).copy()


def decode_data_url(text: str, limit: int = MAX_BODY_BYTES) -> bytes:
    """The bytes of a `data:image/...;base64,` URL (the canvas or a photo); never a path or a URL."""
    if not isinstance(text, str) or not text.startswith("data:") or ";base64," not in text[:100]:
        raise ImageError("'image' must be a base64 data URL (data:image/png;base64,...)")
    payload = text.split(",", 1)[1]
    if len(payload) > (limit * 4) // 3 + 4:
        raise ImageError(f"the image is larger than {limit // (1024 * 1024)} MiB")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("'image' is not valid base64") from None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The explorer: framework-free, so the page's numbers can be tested without a server
# ---------------------------------------------------------------------------------------------


def _write_cache(path_of, data) -> None:
    """Write `data` as JSON to the cache file `path_of()` names; an unwritable cache only costs a
    recomputation next time."""
    try:
        path = path_of()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, data)
    except OSError:
        pass

class RunView:
    """One run as the page sees it: frozen model, layer table and filters (computed once)."""

    def __init__(self, path: Path):
        self.run = open_run(path)
        self.model = self.run.load_model("cpu").eval()
        # The layer table counts parameters with requires_grad, so it is measured before freezing.
        self.summary = anatomy.summary(batch_norm=self.run.batch_norm, model=self.model).to_dict()
        for p in self.model.parameters():           # inference and input-only gradients only
            p.requires_grad_(False)
        self.weights_sha256 = file_sha256(self.run.weights)
        self.lock = threading.Lock()                # one belief computation at a time per run
        self._static: dict | None = None

    @property
    def label_smoothing(self) -> float:
        return float(self.run.info["config"].get("label_smoothing", 0.0) or 0.0)

    @property
    def label(self) -> str:
        return f"{self.run.name} ({'batch-norm' if self.run.batch_norm else 'plain'})"

    def static_info(self) -> dict:
        """Name, accuracy, layer table and filter pictures: what does not depend on the input."""
        if self._static is None:
            pictures = {layer: filter_picture(filters.filters(self.model, layer=layer))
                       for layer in ("conv1", "conv2")}
            test = self.run.info.get("test") or {}
            self._static = {"name": self.run.name, "label": self.label, "path": str(self.run.path),
                            "batch_norm": self.run.batch_norm,
                            "test_accuracy": test.get("accuracy"),
                            "label_smoothing": self.label_smoothing,
                            # what training aims for on the right class, 1 − ε + ε/K: a target,
                            # not a ceiling (calibration() measures how far above it a run goes)
                            "training_target": 1 - self.label_smoothing + self.label_smoothing / N_CLASSES,
                            "dataset": self.run.info["config"].get("dataset", "mnist"),
                            "summary": self.summary, "filters": pictures}
        return self._static


def filter_picture(res) -> dict:
    """A FilterResult as a picture. conv1: 32 kernels in rows of 8; conv2: a 32×32 grid (row =
    output filter, column = input channel); one symmetric diverging scale per layer so the sign
    of every weight reads the same. Plus analysis.filters' count of edge/blob/line detectors."""
    w = np.asarray(res.weights, dtype=np.float64)            # [out, in, 3, 3]
    out_c, in_c, kh, kw = w.shape
    if in_c == 1:
        tiles, ncols = w[:, 0], 8
    else:
        tiles, ncols = w.reshape(out_c * in_c, kh, kw), in_c
    vmax = float(np.abs(w).max()) or 1.0
    grid = mosaic(tiles, ncols)
    mask = ~np.isnan(grid)
    grid = np.nan_to_num(grid)
    return {"png": png_url(colorize(grid, -vmax, vmax, "RdBu_r", mask)), "shape": [out_c, in_c, kh, kw],
            "vmax": vmax, "class_counts": res.trained.get("class_counts", {})}


class Explorer:
    """Everything the page asks for, as plain dicts of numbers and PNG data URLs."""

    def __init__(self, runs: list[Path], data_dir: str | Path | None = None):
        if not 1 <= len(runs) <= 2:
            raise ConfigError(f"explore takes one or two runs, got {len(runs)}")
        self.views = [RunView(Path(r)) for r in runs]
        datasets = {v.run.info["config"].get("dataset", "mnist") for v in self.views}
        if len(datasets) > 1:
            raise ConfigError(f"the runs were trained on different datasets ({', '.join(sorted(datasets))}); "
                              f"compare runs of one dataset")
        self.dataset = datasets.pop()
        self.class_names = list(get_spec(self.dataset).class_names)
        self.data_dir = data_dir
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None
        self._prior: natural.PcaPrior | None = None     # fitted once, with the test set's load
        self._test_lock = threading.Lock()
        self._test_error: str | None = None
        self._beliefs: dict[int, dict] = {}
        self._info: dict | None = None
        self._calibration: dict | None = None
        self._calibration_lock = threading.Lock()

    # -- inputs ---------------------------------------------------------------------------------

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 10,000 test images (uint8 [N, 1, 28, 28]) and labels, loaded and verified once."""
        with self._test_lock:
            if self._test is None:
                split = self.views[0].run.load_split(self.data_dir)
                self._test = (split.test_x.cpu(), split.test_y.cpu())
                # the natural class models' image prior: PCA of the training images (≈ 0.2 s), kept
                # instead of the 50,000 training images themselves
                self._prior = natural.PcaPrior.fit(split)
            return self._test

    def prior(self) -> natural.PcaPrior:
        """The PCA image prior of the natural class models, fitted once per explorer."""
        self.test_set()
        if self._prior is None:         # test_set() fits it; only a failed load leaves it unset
            raise ConfigError("the training images for the natural class models' prior could not be loaded")
        return self._prior

    def preload_test_set(self) -> None:
        """Load the test set in the background so the first 'test image' click is instant, then
        measure what the page quotes about each run (unless the cache already holds it)."""
        def work():
            try:
                self.test_set()
                self.calibration()
            except CnnlabError as e:
                self._test_error = str(e)
        threading.Thread(target=work, name="cnnlab-explore-test-set", daemon=True).start()

    def test_image(self, index: int | None) -> tuple[np.ndarray, dict]:
        x, y = self.test_set()
        n = len(x)
        if index is None:
            index = random.randrange(n)
        if not isinstance(index, int) or not 0 <= index < n:
            raise ImageError(f"test image index {index!r} is out of range: expected 0..{n - 1}")
        return x[index, 0].numpy().astype(np.uint8), {"kind": "test", "index": index, "label": int(y[index])}

    def image_from_bytes(self, data: bytes) -> np.ndarray:
        """An uploaded photo or the drawn canvas → the 28×28 the network sees, through predict's
        decoder guards and MNIST-style preprocessing."""
        return quantize(np.asarray(preprocess_bytes(data, max_bytes=MAX_BODY_BYTES), dtype=np.float64))

    def resolve_input(self, req: dict) -> tuple[np.ndarray, dict]:
        """The request's one input: `pixels` (784 base64 bytes), `image` (a data URL), or `test`
        (an index, or "random")."""
        given = [k for k in ("pixels", "image", "test") if req.get(k) is not None]
        if len(given) != 1:
            raise ImageError("give exactly one of 'pixels', 'image' or 'test'")
        kind = given[0]
        if kind == "pixels":
            return decode_pixels(req["pixels"]), {"kind": "pixels"}
        if kind == "image":
            source = req.get("source") if req.get("source") in ("drawing", "upload") else "image"
            return self.image_from_bytes(decode_data_url(req["image"])), {"kind": source}
        t = req["test"]
        if t == "random":
            return self.test_image(None)
        if isinstance(t, bool) or not isinstance(t, int):
            raise ImageError("'test' must be an image index or \"random\"")
        return self.test_image(t)

    # -- the live analysis ------------------------------------------------------------------------

    def analyze(self, u8: np.ndarray, source: dict, target: int | None = None, patch: int = 3,
                occlusion: bool = True) -> dict:
        """Probabilities, feature maps and (unless `occlusion=False`: the page skips it while a
        stroke is still being drawn) the occlusion map of every run for one 28×28 input."""
        if target is not None and not (isinstance(target, int) and 0 <= target < len(self.class_names)):
            raise ImageError(f"target class must be 0..{len(self.class_names) - 1}, got {target!r}")
        if not (isinstance(patch, int) and 1 <= patch <= 5):
            raise ImageError(f"patch size must be 1..5 pixels, got {patch!r}")
        t0 = time.perf_counter()
        image = u8.astype(np.float32) / 255.0
        out: dict[str, Any] = {"input": {"pixels": encode_pixels(u8), "png": png_url(u8), **source}, "runs": []}
        for view in self.views:
            out["runs"].append(self._analyze_one(view, image, target, patch, occlusion))
        out["seconds"] = round(time.perf_counter() - t0, 4)
        return out

    def _analyze_one(self, view: RunView, image: np.ndarray, target: int | None, patch: int,
                     with_occlusion: bool) -> dict:
        act = activations.activations(view.model, image)
        probs = np.asarray(act.probs, dtype=np.float64)
        maps = {}
        for layer in FEATURE_LAYERS:
            a = np.asarray(act.maps[layer], dtype=np.float64)          # [C, h, w] after ReLU
            st = act.stats[layer]
            vmax = float(a.max())
            grid = mosaic(a, 8)
            mask = ~np.isnan(grid)
            grid = np.nan_to_num(grid)
            maps[layer] = {"png": png_url(colorize(grid, 0.0, vmax if vmax > 0 else 1.0, "magma", mask)),
                           "shape": list(a.shape), "max": vmax, "active_channels": st["active_channels"],
                           "active_fraction": st["active_fraction"], "receptive_field": st["receptive_field"]}
        out = {"probs": [round(float(p), 6) for p in probs], "pred": act.pred, "features": maps,
               "unsure": uncertainty(probs, view.label_smoothing)}
        if not with_occlusion:
            return out
        occ = occlusion.occlusion(view.model, image, target=target, patch_sizes=(patch,))
        pmap = np.asarray(occ.prob[patch], dtype=np.float64)             # [P, P], P = 29 − patch
        # Shown on the 28×28 grid at each patch's centre, so the map lines up with the input;
        # the (patch − 1) border rows/columns no patch is centred on stay transparent.
        off = (patch - 1) // 2
        full = np.full((28, 28), np.nan)
        full[off:off + pmap.shape[0], off:off + pmap.shape[1]] = pmap
        share, even = occ.stroke_shares()[patch]
        iy, ix = np.unravel_index(int(np.argmin(pmap)), pmap.shape)
        lo, hi = float(pmap.min()), float(pmap.max())
        out["occlusion"] = {"target": occ.target, "patch": patch, "base_prob": occ.base_prob,
                            "min": lo, "max": hi, "min_at": [int(iy), int(ix)],
                            # the patch's centre pixel: where the map draws that value
                            "min_center": [int(iy) + off, int(ix) + off],
                            "stroke_share": None if np.isnan(share) else share, "even_share": even,
                            # on the fixed 0–1 scale, and stretched to the map's own range (a
                            # confident network's map is otherwise one colour)
                            "png": png_url(colorize(full, 0.0, 1.0, "viridis", ~np.isnan(full))),
                            "png_stretched": png_url(colorize(full, lo, hi, "viridis", ~np.isnan(full)))}
        return out

    # -- the images the network believes in (part 3) ------------------------------------------------

    def beliefs_path(self, view: RunView) -> Path:
        """The beliefs cache: in the user cache dir, never in the run directory (which is the
        user's and may be read-only), one file per weights file."""
        return cache_dir() / "explore" / f"beliefs-{view.weights_sha256[:32]}.json"

    def beliefs_cached(self, index: int) -> bool:
        view = self._view(index)
        return index in self._beliefs or self._beliefs_file(view) is not None

    def _beliefs_key(self, view: RunView) -> dict:
        # The cache holds for these weights and these settings of the analysis defaults (config.py).
        return {"version": CACHE_VERSION, "weights_sha256": view.weights_sha256,
                "settings": {"steps": config.STEPS, "step_size": config.STEP_SIZE, "synth_step_size": config.SYNTH_STEP_SIZE,
                             "sigma": config.SIGMA, "beta": config.BETA}}

    def _beliefs_file(self, view: RunView) -> dict | None:
        cached = _read_json(self.beliefs_path(view))
        key = self._beliefs_key(view)
        return cached if cached and all(cached.get(k) == v for k, v in key.items()) else None

    def beliefs(self, index: int) -> dict:
        """The ten class models (plain and natural) and the targeted fakes of run `index`: computed on first request
        (a POST: heavy work never starts on a GET) and kept in memory and in the user cache
        (keyed on the weights file's SHA-256)."""
        view = self._view(index)
        with view.lock:
            if index in self._beliefs:
                return {**self._beliefs[index], "cached": True}
            key = self._beliefs_key(view)
            cached = self._beliefs_file(view)
            if cached:
                self._beliefs[index] = cached
                return {**cached, "cached": True}
            t0 = time.perf_counter()
            syn = class_models.synthesize(view.model, targets=range(10))
            nat = natural.synthesize_natural(view.model, range(10), prior=self.prior())
            source_u8, source_info = self.fake_source()
            adv = targeted.adversarial(view.model, source_u8, targets=range(10), scale="255",
                                       source_label=source_info["label"])
            result = {**key,
                      "class_models": _belief_rows(view.model, syn), "natural": _belief_rows(view.model, nat),
                      "fakes": _belief_rows(view.model, adv),
                      "fake_source": {**source_info, "png": png_url(source_u8)},
                      "seconds": round(time.perf_counter() - t0, 2)}
            self._beliefs[index] = result
            _write_cache(functools.partial(self.beliefs_path, view), result)
            return {**result, "cached": False}

    # -- what the page says about confidence and the unsure rule, measured on each run ------------

    def calibration_path(self, view: RunView) -> Path:
        return cache_dir() / "explore" / f"calibration-{view.weights_sha256[:32]}.json"

    def _calibration_key(self, view: RunView) -> dict:
        drawings = non_digit_drawings() if self.dataset == "mnist" else None
        return {"version": CALIBRATION_VERSION, "weights_sha256": view.weights_sha256, "dataset": self.dataset,
                "label_smoothing": view.label_smoothing, "unsure_margin": UNSURE_MARGIN,
                "images": CALIBRATION_IMAGES, "non_digits_sha256": drawings[2] if drawings else None}

    def _calibration_file(self, view: RunView) -> dict | None:
        cached = _read_json(self.calibration_path(view))
        key = self._calibration_key(view)
        ok = cached and all(cached.get(k) == v for k, v in key.items()) and isinstance(cached.get("test"), dict)
        return cached if ok else None

    def calibrated(self) -> dict | None:
        """The measurements of every run and the page's sentences, if already measured (in memory
        or in the user cache); None otherwise. Never computes: /api/info is a GET."""
        if self._calibration is None:
            runs = [self._calibration_file(v) for v in self.views]
            if all(runs):
                self._calibration = self._calibration_answer(runs)     # type: ignore[arg-type]
        return self._calibration

    def calibration(self) -> dict:
        """Measure, once per run (cached in the user cache, keyed on the weights' SHA-256), the
        numbers the page quotes: the unsure rule's flag rate on the run's test images and on the
        shipped non-digit drawings, and the top probability's spread on both."""
        with self._calibration_lock:
            if self.calibrated() is not None:
                return self._calibration        # type: ignore[return-value]
            x, _ = self.test_set()
            step = max(1, len(x) // CALIBRATION_IMAGES)
            sample = x[::step][:CALIBRATION_IMAGES, 0].numpy()
            runs = []
            for view in self.views:
                cached = self._calibration_file(view)
                if cached is None:
                    cached = {**self._calibration_key(view),
                              **measure_run(view.model, view.label_smoothing, sample, len(x), step,
                                            non_digit_drawings()[0] if self.dataset == "mnist" else None)}
                    _write_cache(functools.partial(self.calibration_path, view), cached)
                runs.append(cached)
            self._calibration = self._calibration_answer(runs)
            return self._calibration

    def _calibration_answer(self, runs: list[dict]) -> dict:
        names = [v.run.name for v in self.views] if len(self.views) > 1 else [None]
        noun = "digits" if self.dataset == "mnist" else "images"
        return {"runs": runs,
                "notes": {"confidence": [confidence_note(r, n, noun) for r, n in zip(runs, names)],
                          "unsure": [unsure_note(r, n, noun) for r, n in zip(runs, names)]}}

    def fake_source(self) -> tuple[np.ndarray, dict]:
        """The digit the cached targeted fakes start from: the first test image of a 2, as in the
        assignment's example (an image of 2 that the network should call 5)."""
        x, y = self.test_set()
        idx = first_image_of(y, 2) if (y == 2).any() else 0
        return x[idx, 0].numpy().astype(np.uint8), {"kind": "test", "index": idx, "label": int(y[idx])}

    def attack(self, u8: np.ndarray, beta: float | None = None) -> dict:
        """The targeted attack from this input, toward every class, on every run (input-only
        gradients, starting from the input itself: init="source"); `beta` weighs the likeness to
        the input (default config.BETA)."""
        beta = config.BETA if beta is None else beta
        t0 = time.perf_counter()
        runs = []
        for view in self.views:
            adv = targeted.adversarial(view.model, u8, targets=range(10), beta=beta, scale="255", init="source")
            runs.append({"rows": _belief_rows(view.model, adv), "params": adv.params})
        return {"input": {"pixels": encode_pixels(u8), "png": png_url(u8)}, "runs": runs,
                "seconds": round(time.perf_counter() - t0, 2)}

    def info(self) -> dict:
        if self._info is None:
            self._info = self._make_info()
        return {**self._info, "beliefs_cached": [self.beliefs_cached(i) for i in range(len(self.views))],
                "calibration": self.calibrated()}

    def _make_info(self) -> dict:
        return {"runs": [v.static_info() for v in self.views], "class_names": self.class_names,
                "unsure_margin": UNSURE_MARGIN, "attack_steps": config.STEPS,
                "natural_components": natural.COMPONENTS,
                "betas": [b for b in config.BETAS if b > 0], "beta": config.BETA,
                "dataset": self.dataset, "limits": {"max_upload_bytes": MAX_BODY_BYTES},
                "occlusion_colorbar": colorbar_url("viridis"), "activation_colorbar": colorbar_url("magma")}

    # -- one entry point for both transports (the HTTP server and the notebook widget) -----------

    def request(self, method: str, path: str, req: dict | None) -> dict:
        """Answer one page request. GET only reads what is already computed; everything that
        computes is a POST (the server checks its Origin)."""
        req = req if isinstance(req, dict) else {}
        if method == "GET" and path == "/api/info":
            return self.info()
        if method != "POST":
            raise ImageError(f"{method} {path} is not an explorer request")
        if path == "/api/analyze":
            target, patch = request_options(req)
            u8, source = self.resolve_input(req)
            return self.analyze(u8, source, target, patch, occlusion=req.get("occlusion", True) is not False)
        if path == "/api/attack":
            u8, _ = self.resolve_input({"pixels": req.get("pixels")})
            beta = req.get("beta")
            if beta is not None and (isinstance(beta, bool) or not isinstance(beta, (int, float))):
                raise ImageError("'beta' must be a number")
            return self.attack(u8, None if beta is None else float(beta))
        if path == "/api/calibration":
            return self.calibration()
        if path.startswith("/api/beliefs/") and path.rsplit("/", 1)[1].isdigit():
            return self.beliefs(int(path.rsplit("/", 1)[1]))
        raise ImageError(f"POST {path} is not an explorer request")

    def _view(self, index: int) -> RunView:
        if not isinstance(index, int) or not 0 <= index < len(self.views):
            raise ConfigError(f"run index must be 0..{len(self.views) - 1}, got {index!r}")
        return self.views[index]


def uncertainty(probs, label_smoothing: float = 0.0) -> dict:
    """The page's "unsure" cue: the top-2 margin relative to the largest margin training aims
    for, 1 − ε (with label smoothing ε the right class is trained toward 1 − ε + ε/K and the
    others toward ε/K). Unsure when it is below UNSURE_MARGIN."""
    p = np.sort(np.asarray(probs, dtype=np.float64))
    rel = float((p[-1] - p[-2]) / max(1e-9, 1.0 - label_smoothing))
    return {"margin": round(rel, 4), "unsure": rel < UNSURE_MARGIN}


@cache
def non_digit_drawings() -> tuple[np.ndarray, tuple[str, ...], str]:
    """The shipped drawings of non-digits (uint8 [N, 28, 28], as the page's preprocessing made
    them: tools/make_non_digits.py), their names, and the file's SHA-256."""
    raw = files("cnnlab").joinpath("static").joinpath(NON_DIGITS_FILE).read_bytes()
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        images, names = np.asarray(z["images"], dtype=np.uint8), tuple(str(n) for n in z["names"])
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(names):
        raise ConfigError(f"{NON_DIGITS_FILE}: expected N 28×28 images with N names; reinstall cnnlab")
    return images, names, hashlib.sha256(raw).hexdigest()


def probabilities(model, u8: np.ndarray, batch: int = 500) -> np.ndarray:
    """float64 [N, K] softmax of uint8 [N, 28, 28] images, fed on [0, 1] as everywhere here."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(u8), batch):
            x = torch.from_numpy(np.ascontiguousarray(u8[i:i + batch])).float().div(255).unsqueeze(1)
            out.append(torch.softmax(model(x).double(), 1).numpy())
    return np.concatenate(out) if out else np.zeros((0, N_CLASSES))


def _spread(top: np.ndarray) -> dict:
    return {"median": float(np.median(top)), "p10": float(np.quantile(top, 0.1)), "max": float(top.max())}


def measure_run(model, label_smoothing: float, test_u8: np.ndarray, of: int, step: int,
                non_digits: np.ndarray | None) -> dict:
    """What the page quotes about one run: on its test images (`test_u8`, every `step`-th of
    `of`), how many the unsure rule flags and how high the top probability goes (and, with label
    smoothing, how many exceed the training target 1 − ε + ε/K); the same on the non-digits."""
    def flagged(p: np.ndarray) -> int:
        return sum(uncertainty(row, label_smoothing)["unsure"] for row in p)
    p = probabilities(model, test_u8)
    top = p.max(1)
    n = len(p)
    test: dict[str, Any] = {"n": n, "of": of, "step": step, "unsure": flagged(p),
                            "top_prob": _spread(top), "above_target": None}
    test["unsure_rate"] = test["unsure"] / n
    if label_smoothing > 0:
        target = 1 - label_smoothing + label_smoothing / p.shape[1]
        above = int((top > target).sum())
        test["above_target"] = {"threshold": target, "count": above, "rate": above / n}
    out: dict[str, Any] = {"test": test, "non_digits": None}
    if non_digits is not None and len(non_digits):
        q = probabilities(model, non_digits)
        k = flagged(q)
        out["non_digits"] = {"n": len(q), "unsure": k, "unsure_rate": k / len(q), "top_prob": _spread(q.max(1))}
    return out


def pct(p: float) -> str:
    """A probability as the page writes it (explore.js's pct)."""
    if p >= 0.9995:
        return ">99.9%"
    if p < 0.0005:
        return "<0.1%" if p > 0 else "0%"
    s = f"{100 * p:.{1 if p >= 0.1 else 2}f}"
    return (s.rstrip("0").rstrip(".") if "." in s else s) + "%"


def _ordinal(k: int) -> str:
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def _sample(test: dict, noun: str) -> str:
    """'2,000 test digits (every 5th of the 10,000)'."""
    if test["step"] == 1 and test["n"] == test["of"]:
        return f"the {test['n']:,} test {noun}"
    return f"{test['n']:,} test {noun} (every {_ordinal(test['step'])} of the {test['of']:,})"


def confidence_note(cal: dict, name: str | None = None, noun: str = "digits") -> str:
    """The page's sentence on how confident this run is, from its measurements only."""
    t, nd, eps = cal["test"], cal["non_digits"], cal["label_smoothing"]
    top = t["top_prob"]
    who = f"{name}: " if name else ""
    if eps > 0:
        above = t["above_target"]
        text = (f"{who}Trained with label smoothing ε = {eps:g} (run.json), which aims the right class at "
                f"1 − ε + ε/10 = {pct(above['threshold'])} — a target, not a ceiling: of {_sample(t, noun)}, "
                f"{pct(above['rate'])} get a top probability above it (median {pct(top['median'])}, "
                f"highest {pct(top['max'])}).")
    else:
        text = (f"{who}Trained without label smoothing (run.json), so training pushes the right class "
                f"toward 100%: of {_sample(t, noun)}, the top probability has median {pct(top['median'])}, "
                f"10th percentile {pct(top['p10'])}, highest {pct(top['max'])}.")
    if nd:
        text += (f" The {nd['n']} non-digit drawings shipped with cnnlab get a median top probability of "
                 f"{pct(nd['top_prob']['median'])} (highest {pct(nd['top_prob']['max'])}).")
    return text


def unsure_note(cal: dict, name: str | None = None, noun: str = "digits") -> str:
    """The page's sentence on how often the unsure rule fires for this run, as measured."""
    t, nd = cal["test"], cal["non_digits"]
    text = (f"On {name or 'this run'}, the rule flags {pct(t['unsure_rate'])} ({t['unsure']:,}) of "
            f"{_sample(t, noun)}")
    if nd:
        text += (f" and {nd['unsure']} of the {nd['n']} non-digit drawings shipped with cnnlab (letters, "
                 f"shapes, scribbles, a dot); the other {nd['n'] - nd['unsure']} are not flagged")
    return text + "."


def request_options(req: dict) -> tuple[int | None, int]:
    target, patch = req.get("target"), req.get("patch", 3)
    if target is not None and (isinstance(target, bool) or not isinstance(target, int)):
        raise ImageError("'target' must be a class index or null")
    if isinstance(patch, bool) or not isinstance(patch, int):
        raise ImageError("'patch' must be an integer 1..5")
    return target, patch


def _belief_rows(model, res) -> list[dict]:
    """One {target, png, pred, confidence, target_prob} per generated image. `targeted` keeps the
    target's probability per step; the full distribution of the final image is one forward pass
    of the image as the network was fed it (X / 255, unclipped)."""
    images = np.asarray(res.images).astype(np.float32).reshape(-1, 28, 28)          # 0–255 scale
    with torch.inference_mode():
        probs = torch.softmax(model(torch.from_numpy(images / 255.0).unsqueeze(1)).float(), 1).numpy()
    rows = []
    for img, p, t in zip(images, probs, np.asarray(res.targets).tolist()):
        rows.append({"target": int(t), "png": image_url(np.clip(img / 255.0, 0, 1)), "pred": int(p.argmax()),
                     "confidence": float(p.max()), "target_prob": float(p[int(t)])})
    return rows


def _read_json(path: Path) -> dict | None:
    from .schema import read_json
    try:        # a damaged or planted cache file is recomputed, never a crash
        obj = read_json(path, RunError, what="explorer cache file")
    except RunError:
        return None
    return obj if isinstance(obj, dict) else None


# ---------------------------------------------------------------------------------------------
# The web app
# ---------------------------------------------------------------------------------------------

class _TooLarge(Exception):
    pass


async def _read_body(request, limit: int) -> bytes:
    """The request body, refused as soon as it is known to exceed `limit` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _TooLarge()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def create_app(runs: list[Path], data_dir: str | Path | None = None,
               allowed_hosts: tuple[str, ...] | None = None):
    """The FastAPI app serving the page and its JSON API for one or two runs.

    `allowed_hosts`: Host header names to answer (any port); `serve` passes the loopback names
    when it binds 127.0.0.1, so a web page that rebinds its own DNS name to 127.0.0.1 gets no
    answer. Cross-site POSTs (an Origin header naming another site) are refused either way."""
    try:
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse, Response
        from starlette.concurrency import run_in_threadpool
    except ImportError:
        raise CnnlabError(f"the explorer needs its optional dependencies: {INSTALL_HINT}") from None

    explorer = Explorer(runs, data_dir=data_dir)
    explorer.info()                 # layer tables and filters once, and any API mismatch at start
    explorer.preload_test_set()
    app = FastAPI(title="cnnlab explore", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.explorer = explorer

    def error(status: int, msg: str) -> JSONResponse:
        return JSONResponse({"error": msg}, status_code=status)

    @app.middleware("http")
    async def same_site_only(request: Request, call_next):
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if allowed_hosts is not None and name not in allowed_hosts:
            return error(400, f"unexpected Host {host!r}: open the explorer at the address it printed")
        origin = request.headers.get("origin")
        if request.method == "POST" and origin is not None and origin.split("://", 1)[-1] != host:
            return error(403, "cross-site request refused")
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(_TooLarge)
    async def too_large(request, exc):
        return error(413, f"the upload is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB; "
                          f"choose a smaller image")

    @app.exception_handler(CnnlabError)
    async def user_error(request, exc):
        return error(400, str(exc))

    async def json_body(request: Request) -> dict:
        raw = await _read_body(request, MAX_JSON_BYTES)
        from .schema import parse_json
        # depth-limited before json.loads (which would recurse: '[' * 200000 → RecursionError → 500)
        obj = parse_json(raw or b"{}", "the request body", ImageError, max_bytes=MAX_JSON_BYTES)
        if not isinstance(obj, dict):
            raise ImageError("the request body must be a JSON object")
        return obj

    @app.get("/")
    async def page():
        return _static_response("explore.html", Response)

    @app.get("/static/{name}")
    async def static(name: str):
        if name not in STATIC_FILES:            # a fixed list: no path from the browser is opened
            return error(404, "not found")
        return _static_response(name, Response)

    @app.get("/api/info")
    async def api_info():
        return explorer.request("GET", "/api/info", None)

    @app.post("/api/analyze")
    async def api_analyze(request: Request):
        req = await json_body(request)
        request_options(req)                    # a bad option is refused before any work
        return await run_in_threadpool(explorer.request, "POST", "/api/analyze", req)

    @app.post("/api/upload")
    async def api_upload(request: Request, target: int | None = None, patch: int = 3):
        data = await _read_body(request, MAX_BODY_BYTES)
        if not data:
            raise ImageError("the upload is empty; choose an image file")

        def work():
            u8 = explorer.image_from_bytes(data)
            return explorer.analyze(u8, {"kind": "upload"}, target, patch)
        return await run_in_threadpool(work)

    # Beliefs take seconds to minutes the first time: a POST (Origin-checked), never a GET.
    @app.post("/api/beliefs/{index}")
    async def api_beliefs(request: Request, index: int):
        await json_body(request)
        return await run_in_threadpool(explorer.request, "POST", f"/api/beliefs/{index}", {})

    # Measured on the first request when the cache does not hold it yet (seconds): a POST.
    @app.post("/api/calibration")
    async def api_calibration(request: Request):
        await json_body(request)
        return await run_in_threadpool(explorer.request, "POST", "/api/calibration", {})

    @app.post("/api/attack")
    async def api_attack(request: Request):
        req = await json_body(request)
        return await run_in_threadpool(explorer.request, "POST", "/api/attack", req)

    return app


def _static_response(name: str, Response):
    body = files("cnnlab").joinpath("static").joinpath(name).read_bytes()
    return Response(body, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})


# Everything from this server; images only from it or inline data URLs. The CSP makes the
# "no outside requests" promise hold even if a future edit slipped a CDN link in.
# frame-ancestors 'none' (and X-Frame-Options for older browsers): no other page may frame the
# explorer and click its buttons for the user. Sent on every response, the API's included.
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY",
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "Cross-Origin-Resource-Policy": "same-origin"}


def app_fragment() -> str:
    """The page's markup without the standalone document around it (the notebook widget mounts
    this same fragment)."""
    html = files("cnnlab").joinpath("static").joinpath("explore.html").read_text(encoding="utf-8")
    start, end = html.index("<!-- app -->") + len("<!-- app -->"), html.index("<!-- /app -->")
    return html[start:end].strip()


def serve(runs: list[Path], host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          data_dir: str | Path | None = None, open_browser: bool = False,
          log=lambda s: print(s, file=sys.stderr)) -> None:
    """Serve the explorer until Ctrl-C. `port=0` picks a free port; the URL is printed on stdout."""
    try:
        import uvicorn
    except ImportError:
        raise CnnlabError(f"the explorer needs its optional dependencies: {INSTALL_HINT}") from None
    if host not in ("127.0.0.1", "localhost", "::1"):    # the default binds this machine only
        log(f"warning: serving on {host}: anyone who can reach this address can use the explorer "
            f"(it reads no files the browser names, but it runs the model for them); the default "
            f"127.0.0.1 keeps it on this machine")
    loopback = host in ("127.0.0.1", "localhost", "::1")
    app = create_app(runs, data_dir=data_dir, allowed_hosts=LOOPBACK_HOSTS if loopback else None)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise RunError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass another --port "
                       f"(0 picks a free one)") from None
    sock.listen(64)
    sock.setblocking(False)
    actual = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{actual}/"
    print(f"cnnlab explore: serving {', '.join(v.label for v in app.state.explorer.views)} at {url} "
          f"(Ctrl-C to stop)", flush=True)
    if open_browser:
        import webbrowser
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    server_config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(server_config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def widget(run: str | Path, run2: str | Path | None = None, data_dir: str | Path | None = None):
    """The same explorer inline in a notebook (Jupyter, JupyterLab, VS Code, Colab): see
    cnnlab.widget.widget. Imported here lazily: cnnlab.widget builds on this module."""
    from .widget import widget as make
    return make(run, run2, data_dir=data_dir)
