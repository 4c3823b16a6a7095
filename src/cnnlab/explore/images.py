"""Pictures for the browser (arrays → PNG data URLs) and the 28×28 input on the wire."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from functools import cache
from pathlib import Path

import numpy as np

from ..errors import ImageError

MAX_BODY_BYTES = 8 * 1024 * 1024        # largest request body read (uploads, drawn canvases)

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

