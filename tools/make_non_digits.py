"""Make src/cnnlab/static/non_digits.npz: the drawings of things that are not digits on which the
explorer measures its "unsure" rule for each run it loads (cnnlab.explore.Explorer.calibration).

    PYTHONPATH=src python tools/make_non_digits.py

Each drawing is a set of strokes on the explorer's 280×280 canvas (tests/drawings.py: letters,
shapes, a dot, random scribbles, plus the extra letters and shapes below), rendered as the
canvas draws it (white, 20 px round brush, on black) and turned into the 28×28 the network sees
by the page's own preprocessing (cnnlab.predict.preprocess_bytes). Letters and shapes that read
as a digit (O, I, l, S, Z, a circle) are left out. Deterministic: the same file every time for
the same Pillow and numpy."""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import drawings  # noqa: E402
from cnnlab.predict import preprocess_bytes  # noqa: E402

OUT = ROOT / "src" / "cnnlab" / "static" / "non_digits.npz"

EXTRA_LETTERS: dict[str, list[drawings.Stroke]] = {
    "N": [[(80, 240), (80, 40), (200, 240), (200, 40)]],
    "R": [[(80, 240), (80, 40), (170, 45), (195, 90), (170, 135), (80, 140)], [(130, 140), (205, 240)]],
    "T": [[(50, 45), (230, 45)], [(140, 45), (140, 240)]],
    "V": [[(60, 40), (140, 240), (220, 40)]],
    "Y": [[(60, 40), (140, 140), (220, 40)], [(140, 140), (140, 240)]],
}

EXTRA_SHAPES: dict[str, list[drawings.Stroke]] = {
    "plus": [[(140, 40), (140, 240)], [(40, 140), (240, 140)]],
    "arrow": [[(40, 140), (240, 140)], [(180, 80), (240, 140), (180, 200)]],
    "tick": [[(50, 150), (110, 220), (240, 50)]],
    "heart": [[(140, 230), (50, 130), (60, 70), (100, 50), (140, 90), (180, 50), (220, 70), (230, 130), (140, 230)]],
    "dash": [[(120, 140), (160, 140)]],
}


def drawn() -> dict[str, list[drawings.Stroke]]:
    dot = next(iter(drawings.dots().values()))          # every dot becomes the same disc
    return {"dot": dot, **drawings.LETTERS, **EXTRA_LETTERS, **drawings.SHAPES, **EXTRA_SHAPES,
            **drawings.scribbles(20, seed=0)}


def main() -> int:
    items = drawn()
    images = np.stack([np.clip(preprocess_bytes(drawings.render(s)) * 255 + 0.5, 0, 255).astype(np.uint8)
                       for s in items.values()])
    names = np.array(list(items), dtype=str)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images, names=names)
    OUT.write_bytes(buf.getvalue())
    print(f"{OUT.relative_to(ROOT)}: {len(names)} drawings, {OUT.stat().st_size} bytes")
    assert math.isfinite(float(images.mean()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
