"""The explorer: everything the page asks for, as plain dicts of numbers and PNG data URLs;
framework-free, so the page's numbers can be tested without a server."""

from __future__ import annotations

import functools
import random
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import config
from ..analysis import activations, anatomy, class_models, filters, natural, occlusion, targeted
from ..analysis._shared import FEATURE_LAYERS, first_image_of, mosaic
from ..data import cache_dir, get_spec
from ..errors import CnnlabError, ConfigError, ImageError, RunError
from ..output import write_json
from ..predict import preprocess_bytes
from ..runs import open_run
from .calibration import (
    CALIBRATION_IMAGES,
    CALIBRATION_VERSION,
    N_CLASSES,
    UNSURE_MARGIN,
    confidence_note,
    measure_run,
    non_digit_drawings,
    uncertainty,
    unsure_note,
)
from .images import (
    MAX_BODY_BYTES,
    colorbar_url,
    colorize,
    decode_data_url,
    decode_pixels,
    encode_pixels,
    file_sha256,
    image_url,
    png_url,
    quantize,
)

if TYPE_CHECKING:
    from ..analysis.filters import FilterResult

CACHE_VERSION = 3                       # bump when the cached beliefs change meaning
# Decoding an upload holds its full-size pixels (a 25-megapixel RGB image is 75 MB): at most
# DECODE_SLOTS at once, whatever the number of requests, and no more than MAX_UPLOAD_PIXELS each.
DECODE_SLOTS = 2
MAX_UPLOAD_PIXELS = 25_000_000
_decoding = threading.BoundedSemaphore(DECODE_SLOTS)


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

    def __init__(self, path: Path) -> None:
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
        return self.run.config.label_smoothing

    @property
    def label(self) -> str:
        return f"{self.run.name} ({'batch-norm' if self.run.batch_norm else 'plain'})"

    def static_info(self) -> dict:
        """Name, accuracy, layer table and filter pictures: what does not depend on the input."""
        if self._static is None:
            pictures = {layer: filter_picture(filters.filters(self.model, layer=layer))
                       for layer in ("conv1", "conv2")}
            test = self.run.info.test
            self._static = {"name": self.run.name, "label": self.label, "path": str(self.run.path),
                            "status": self.run.info.status, "status_note": self.run.status_note(),
                            "batch_norm": self.run.batch_norm,
                            "test_accuracy": test.accuracy if test else None,
                            "label_smoothing": self.label_smoothing,
                            # what training aims for on the right class, 1 − ε + ε/K: a target,
                            # not a ceiling (calibration() measures how far above it a run goes)
                            "training_target": 1 - self.label_smoothing + self.label_smoothing / N_CLASSES,
                            "dataset": self.run.config.dataset,
                            "summary": self.summary, "filters": pictures}
        return self._static


def filter_picture(res: FilterResult) -> dict:
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

    def __init__(self, runs: list[Path], data_dir: str | Path | None = None) -> None:
        if not 1 <= len(runs) <= 2:
            raise ConfigError(f"explore takes one or two runs, got {len(runs)}")
        self.views = [RunView(Path(r)) for r in runs]
        datasets = {v.run.config.dataset for v in self.views}
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
        def work() -> None:
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
        with _decoding:
            digit = preprocess_bytes(data, max_bytes=MAX_BODY_BYTES, max_pixels=MAX_UPLOAD_PIXELS)
        return quantize(np.asarray(digit, dtype=np.float64))

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
                "dataset": self.dataset, "limits": {"max_upload_bytes": MAX_BODY_BYTES, "max_upload_pixels": MAX_UPLOAD_PIXELS},
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
    from ..schema import read_json
    try:        # a damaged or planted cache file is recomputed, never a crash
        obj = read_json(path, RunError, what="explorer cache file")
    except RunError:
        return None
    return obj if isinstance(obj, dict) else None

