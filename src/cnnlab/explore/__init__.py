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

from pathlib import Path
from typing import TYPE_CHECKING

from .calibration import CALIBRATION_IMAGES, N_CLASSES, UNSURE_MARGIN, confidence_note, measure_run, pct, uncertainty, unsure_note
from .explorer import CACHE_VERSION, Explorer, RunView, filter_picture
from .images import MAX_BODY_BYTES, decode_data_url, decode_pixels, encode_pixels, png_url, quantize
from .server import DEFAULT_HOST, DEFAULT_PORT, LOOPBACK_HOSTS, STATIC_FILES, app_fragment, create_app, serve

if TYPE_CHECKING:
    from .jupyter import ExplorerWidget

__all__ = ["CACHE_VERSION", "CALIBRATION_IMAGES", "DEFAULT_HOST", "DEFAULT_PORT", "LOOPBACK_HOSTS",
           "MAX_BODY_BYTES", "N_CLASSES", "STATIC_FILES", "UNSURE_MARGIN", "Explorer", "RunView",
           "app_fragment", "confidence_note", "create_app", "decode_data_url", "decode_pixels",
           "encode_pixels", "filter_picture", "measure_run", "pct", "png_url", "quantize", "serve",
           "uncertainty", "unsure_note", "widget"]


def widget(run: str | Path, run2: str | Path | None = None, data_dir: str | Path | None = None) -> ExplorerWidget:
    """The same explorer inline in a notebook (Jupyter, JupyterLab, VS Code, Colab): see
    cnnlab.explore.jupyter. Imported when called: anywidget is an optional dependency."""
    from .jupyter import widget as make
    return make(run, run2, data_dir=data_dir)
