"""The user's own digits: read an image file safely and turn it into an MNIST digit.

Untrusted files are decoded under explicit limits: at most MAX_IMAGE_BYTES of file, at most
MAX_IMAGE_PIXELS pixels (checked from the header, before any pixel is decoded: a decompression
bomb never reaches the decoder), only the formats in FORMATS (no EPS, whose Pillow plugin runs
Ghostscript), truncated data is an error rather than grey padding. Every failure is an ImageError
with one line that names the file.

The conversion follows how MNIST was made (LeCun et al.): grey levels, ink bright on a dark
background, the digit's bounding box fitted into 20×20 preserving its aspect ratio (anti-aliased),
then placed in a 28×28 field so that its centre of mass sits at the centre (MNIST's own digits
have their centre of mass at (14.0, 14.0) ± 0.3 px in index coordinates; measured on 10,000
training images).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

from .errors import ImageError

if TYPE_CHECKING:
    from torch import nn

MAX_IMAGE_BYTES = 25 * 1024 * 1024        # bytes of file; a 48-megapixel phone JPEG is ~15 MB
MAX_IMAGE_PIXELS = 50_000_000             # width × height, read from the header before decoding
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
WORK_SIDE = 1024                          # px; larger images are reduced first (a digit needs far less)
BOX, SIDE = 20, 28                        # MNIST: digit fitted into 20×20, placed in 28×28
CENTRE = 14.0                             # target centre of mass (row, col), index coordinates
MIN_CONTRAST = 0.08                       # ink must differ from the background by ≥ 8% of full scale


def _read_limited(path: Path, max_bytes: int) -> bytes:
    try:
        if not path.exists():
            raise ImageError(f"{path}: no such file")
        if not path.is_file():
            raise ImageError(f"{path}: not a regular file")
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageError(f"{path}: {size} bytes is larger than the {max_bytes}-byte limit for images")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)      # the file may grow between stat and read
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror or e})") from None
    return data


def load_image(path_or_bytes: str | os.PathLike[str] | bytes | bytearray | memoryview, max_bytes: int = MAX_IMAGE_BYTES,
               max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image file (a path, or the file's bytes) under the limits above.

    Returns a fully decoded PIL image, EXIF orientation applied (phone photos store it there).
    Raises ImageError, and nothing else, for anything that is not a readable image within limits.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        name, data = "upload", bytes(path_or_bytes)
    elif isinstance(path_or_bytes, (str, os.PathLike)):
        name = str(path_or_bytes)
        data = _read_limited(Path(path_or_bytes), max_bytes)
    else:
        raise ImageError(f"expected a file path or bytes, got {type(path_or_bytes).__name__}")
    if len(data) == 0:
        raise ImageError(f"{name}: empty file (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError(f"{name}: larger than the {max_bytes}-byte limit for images")
    try:
        with warnings.catch_warnings():
            # Pillow warns (rather than fails) between its own limit and twice it: make it fail.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
            w, h = img.size
            if w < 1 or h < 1:
                raise ImageError(f"{name}: the image has no pixels ({w}×{h})")
            if w * h > max_pixels:
                raise ImageError(f"{name}: {w}×{h} pixels is more than the {max_pixels:,}-pixel "
                                 f"limit (a decompression bomb, or a photo far larger than needed); "
                                 f"scale it down first")
            if img.format == "JPEG" and max(w, h) > 2 * WORK_SIDE:
                img.draft("RGB" if img.mode == "RGB" else img.mode, (WORK_SIDE, WORK_SIDE))  # DCT-domain downscale: cheap
            img.load()
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:     # a malformed EXIF block: keep the pixels as stored
                pass
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable image: an unknown format or a damaged header "
                         f"(cnnlab reads {', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({e})") from None
    except OSError as e:
        msg = str(e)
        if any(w in msg.lower() for w in ("truncated", "broken data stream", "eof")):
            raise ImageError(f"{name}: the image data is truncated or corrupt ({msg})") from None
        raise ImageError(f"{name}: cannot decode the image ({msg})") from None
    except Exception as e:     # decoders raise a zoo of types (SyntaxError, struct.error, ValueError…)
        raise ImageError(f"{name}: cannot decode the image ({type(e).__name__}: {e})") from None
    return img


def preprocess_bytes(data: bytes, max_bytes: int = MAX_IMAGE_BYTES,
                     max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An uploaded file's bytes -> the MNIST-style float32 [28, 28] digit (same guards as files)."""
    return _digit(data, max_bytes, max_pixels)


def _digit(source, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """load_image + to_mnist, where anything but an ImageError (a pixel format the conversion
    does not expect: Pillow and numpy raise ValueError, TypeError, ...) also becomes one
    ImageError, so one odd file never stops the others or becomes an HTTP 500."""
    try:
        return to_mnist(load_image(source, max_bytes=max_bytes, max_pixels=max_pixels))
    except ImageError:
        raise
    except (ValueError, TypeError, ArithmeticError, IndexError) as e:
        name = "upload" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
        raise ImageError(f"{name}: cannot convert this image to a digit ({type(e).__name__}: "
                         f"{str(e)[:120]})") from None


def _grey(img: Image.Image) -> np.ndarray:
    """float64 [H, W] grey levels in [0, 1]. Transparency is flattened onto a contrasting colour
    (a digit drawn on a transparent canvas has its ink only in the alpha channel)."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(img.convert("F"), dtype=np.float64)
        if not np.isfinite(a).all():      # a float TIFF may hold NaN/inf: no grey level to read
            raise ImageError("the image holds NaN or infinite pixel values; save it with "
                             "ordinary (8- or 16-bit) grey levels")
        if img.mode == "F" and a.max() <= 1.0:
            return np.clip(a, 0, 1)       # float images on the [0, 1] scale
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        return np.clip(a / hi, 0, 1)
    if img.mode == "P" or "A" in img.getbands() or img.mode in ("LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        arr = np.asarray(rgba, dtype=np.float64) / 255.0
        alpha = arr[..., 3]
        lum = arr[..., :3] @ np.array([0.299, 0.587, 0.114])
        if alpha.min() < 1.0:
            opaque_lum = (lum * alpha).sum() / max(alpha.sum(), 1e-9)
            bg = 1.0 if opaque_lum < 0.5 else 0.0      # dark ink -> white paper, and vice versa
            return lum * alpha + bg * (1 - alpha)
        return lum
    return np.asarray(img.convert("L"), dtype=np.float64) / 255.0


def to_mnist(img: Image.Image) -> np.ndarray:
    """A decoded image -> float32 [28, 28] in [0, 1]: white digit on black, 20×20 box, centred
    by centre of mass. Raises ImageError when no digit can be found (a blank image)."""
    if not isinstance(img, Image.Image):
        raise ImageError(f"expected a PIL image, got {type(img).__name__}")
    if max(img.size) > WORK_SIDE:                      # speed only: reduce huge photos first
        # reduce() makes a new image a factor smaller (no full-size copy); thumbnail finishes the job
        factor = max(img.size) // WORK_SIDE
        try:
            img = img.reduce(factor) if factor > 1 else img.copy()
        except ValueError:                             # a mode reduce() lacks (palette, 1-bit)
            img = img.copy()
        img.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BOX)
    g = _grey(img)

    # Background: the median of the outer ring (the paper around the digit). A light one is
    # inverted, so ink is bright on dark like MNIST.
    h, w = g.shape
    r = max(1, min(h, w) // 20)
    ring = np.concatenate([g[:r].ravel(), g[-r:].ravel(), g[:, :r].ravel(), g[:, -r:].ravel()])
    bg = float(np.median(ring))
    if bg > 0.5:
        g, bg = 1.0 - g, 1.0 - bg
    peak = float(g.max())
    if peak - bg < MIN_CONTRAST:
        raise ImageError("no digit found: the image is (nearly) uniform; it needs dark strokes on "
                         "light paper or light strokes on a dark background")
    # Contrast stretch: background -> 0, strongest ink -> 1; paper texture and shading below
    # 25% of the ink's strength is treated as background.
    ink = np.clip((g - bg) / (peak - bg), 0, 1)
    ink = np.clip((ink - 0.25) / 0.75, 0, 1)

    # The bounding box comes from a median-filtered copy, so that specks of grain or dust far
    # from the digit do not stretch it (the box decides the digit's scale).
    k = 5 if min(h, w) >= 100 else 3
    denoised = Image.fromarray((ink * 255).astype(np.uint8)).filter(ImageFilter.MedianFilter(k))
    rows, cols = np.nonzero(np.asarray(denoised) > 25)
    if rows.size == 0:
        rows, cols = np.nonzero(ink > 0)
    crop = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    ch, cw = crop.shape
    scale = BOX / max(ch, cw)
    nh, nw = max(1, round(ch * scale)), max(1, round(cw * scale))
    resized = Image.fromarray(crop.astype(np.float32)).resize((nw, nh), Image.Resampling.LANCZOS)
    small = np.clip(np.asarray(resized, dtype=np.float64), 0, 1)    # Lanczos rings slightly below 0
    if small.max() <= 0:
        raise ImageError("no digit found after scaling the image down")
    small /= small.max()                                          # MNIST strokes saturate at 1

    # Place so that the centre of mass lands on (14, 14), integer shift like MNIST, kept inside.
    yy, xx = np.mgrid[0:nh, 0:nw]
    mass = small.sum()
    cy, cx = (small * yy).sum() / mass, (small * xx).sum() / mass
    top = int(np.clip(round(CENTRE - cy), 0, SIDE - nh))
    left = int(np.clip(round(CENTRE - cx), 0, SIDE - nw))
    out = np.zeros((SIDE, SIDE), dtype=np.float32)
    out[top:top + nh, left:left + nw] = small
    return out


@torch.inference_mode()
def predict(model: nn.Module, images: Sequence[np.ndarray]) -> list[dict]:
    """Classify MNIST-style digits (each float [28, 28] in [0, 1]).

    Returns one {"prediction": int, "probabilities": [10 floats]} per image, in order. A network
    that computes a non-finite probability is a CheckpointError, never a NaN in the output.
    """
    if len(images) == 0:
        return []
    x = torch.as_tensor(np.stack([np.asarray(a, dtype=np.float32) for a in images]))
    if x.ndim != 3 or x.shape[1:] != (SIDE, SIDE):
        raise ImageError(f"expected images of shape [28, 28], got {list(x.shape[1:])}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs = model(x.unsqueeze(1).to(device)).float().softmax(1).cpu()
    model.train(was_training)
    if not torch.isfinite(probs).all():
        from .errors import CheckpointError
        raise CheckpointError("the network computed non-finite probabilities (NaN or inf): its "
                              "weights are damaged or out of range; retrain or use another run")
    return [{"prediction": int(p.argmax()), "probabilities": [float(v) for v in p]} for p in probs]


PREDICT_BATCH = 256      # images per forward pass: memory stays flat in the number of files


def predict_files(model: nn.Module, paths: Sequence, keep_images: bool = False,
                  batch_size: int = PREDICT_BATCH) -> list[dict]:
    """Classify image files. One dict per path, in order: {"file", "prediction", "probabilities"},
    or {"file", "error"} for a file that could not be read (the others are still classified).
    `keep_images=True` adds "image", the preprocessed float32 [28, 28] digit.

    Files are read and classified `batch_size` at a time, so 20,000 files need the memory of
    one batch (plus the small result dicts), not of all their images at once."""
    results: list[dict] = []
    for start in range(0, len(paths), batch_size):
        ok: list[int] = []
        arrays: list[np.ndarray] = []
        for p in paths[start:start + batch_size]:
            try:
                a = _digit(p)
            except ImageError as e:
                msg = str(e)
                prefix = f"{p}: "
                results.append({"file": str(p), "error": msg[len(prefix):] if msg.startswith(prefix) else msg})
                continue
            ok.append(len(results))
            arrays.append(a)
            results.append({"file": str(p)})
        for i, a, r in zip(ok, arrays, predict(model, arrays)):
            results[i].update(r)
            if keep_images:
                results[i]["image"] = a
    return results
