"""Hand-drawing stand-ins on the explorer's 280×280 canvas: digits and things that are not digits
(dots, letters, smileys, scribbles, shapes), as polylines in canvas pixels. The same strokes are
rendered with Pillow (for measuring the unsure rule, benchmarks/unsure.py) and drawn with the
mouse in the browser tests, so both see the same drawings."""

from __future__ import annotations

import io
import math
import random

Stroke = list[tuple[float, float]]

# Digits as a person draws them on the canvas (control: these must NOT be flagged as non-digits).
DIGITS: dict[str, list[Stroke]] = {
    "0": [[(140 + 60 * math.sin(t / 20 * 2 * math.pi), 140 - 95 * math.cos(t / 20 * 2 * math.pi)) for t in range(21)]],
    "1": [[(140, 40), (138, 240)]],
    "2": [[(80, 90), (110, 50), (170, 50), (195, 95), (170, 150), (80, 235), (205, 235)]],
    "3": [[(80, 60), (190, 55), (130, 130), (195, 175), (170, 230), (80, 230)]],
    "4": [[(170, 235), (170, 40), (70, 170), (210, 170)]],
    "5": [[(200, 45), (95, 45), (85, 125), (170, 120), (200, 175), (170, 230), (85, 225)]],
    "6": [[(180, 45), (110, 110), (85, 190), (130, 235), (185, 200), (170, 145), (100, 160)]],
    "7": [[(70, 50), (210, 50), (120, 240)]],
    "8": [[(185, 75), (140, 40), (95, 75), (185, 185), (140, 235), (95, 185), (185, 75)]],
    "9": [[(190, 80), (140, 45), (95, 85), (130, 130), (190, 90), (175, 240)]],
}


def _circle(cx, cy, r, n=24, start=0.0, end=2 * math.pi) -> Stroke:
    return [(cx + r * math.cos(start + (end - start) * i / n), cy + r * math.sin(start + (end - start) * i / n))
            for i in range(n + 1)]


LETTERS: dict[str, list[Stroke]] = {
    "A": [[(70, 240), (140, 40), (210, 240)], [(100, 160), (180, 160)]],
    "E": [[(200, 40), (80, 40), (80, 240), (200, 240)], [(80, 140), (180, 140)]],
    "F": [[(200, 40), (80, 40), (80, 240)], [(80, 140), (180, 140)]],
    "H": [[(80, 40), (80, 240)], [(200, 40), (200, 240)], [(80, 140), (200, 140)]],
    "K": [[(80, 40), (80, 240)], [(200, 40), (80, 150)], [(120, 120), (200, 240)]],
    "M": [[(50, 240), (70, 40), (140, 170), (210, 40), (230, 240)]],
    "W": [[(40, 50), (90, 240), (140, 100), (190, 240), (240, 50)]],
    "X": [[(60, 40), (220, 240)], [(220, 40), (60, 240)]],
}

SHAPES: dict[str, list[Stroke]] = {
    "smiley": [_circle(140, 140, 100, 36), [(105, 105), (105.5, 105)], [(175, 105), (175.5, 105)],
               _circle(140, 150, 55, 12, 0.2 * math.pi, 0.8 * math.pi)],
    "small smiley": [_circle(140, 140, 45, 24), [(125, 128), (125.5, 128)], [(155, 128), (155.5, 128)],
                     _circle(140, 145, 22, 8, 0.2 * math.pi, 0.8 * math.pi)],
    "hash": [[(100, 40), (90, 240)], [(180, 40), (170, 240)], [(50, 100), (230, 100)], [(50, 180), (230, 180)]],
    "star": [[(140, 30), (140, 250)], [(40, 140), (240, 140)], [(65, 65), (215, 215)], [(215, 65), (65, 215)]],
    "box": [[(60, 60), (220, 60), (220, 220), (60, 220), (60, 60)]],
    "triangle": [[(140, 40), (230, 230), (50, 230), (140, 40)]],
    "zigzag": [[(30, 100), (80, 180), (130, 100), (180, 180), (230, 100), (260, 160)]],
    "spiral": [[(140 + 8 * t * math.cos(t), 140 + 8 * t * math.sin(t)) for t in [i * 0.3 for i in range(45)]]],
    "wave": [[(20 + 8 * i, 140 + 50 * math.sin(i / 3)) for i in range(31)]],
}


def dots() -> dict[str, list[Stroke]]:
    """A single click anywhere becomes a filled disc after cropping (a common accident)."""
    return {f"dot {x},{y}": [[(x, y), (x + 0.5, y)]] for x, y in [(140, 140), (60, 70), (220, 210), (90, 200)]}


def scribbles(n: int, seed: int = 0) -> dict[str, list[Stroke]]:
    """Random walks: one stroke of 12–30 segments with big random turns."""
    rng = random.Random(seed)
    out = {}
    for k in range(n):
        x, y, pts = rng.uniform(60, 220), rng.uniform(60, 220), []
        for _ in range(rng.randint(12, 30)):
            pts.append((x, y))
            x = min(260, max(20, x + rng.uniform(-70, 70)))
            y = min(260, max(20, y + rng.uniform(-70, 70)))
        out[f"scribble {k}"] = [pts]
    return out


def non_digits(n_scribbles: int = 40, seed: int = 0) -> dict[str, list[Stroke]]:
    return {**dots(), **LETTERS, **SHAPES, **scribbles(n_scribbles, seed)}


def render(strokes: list[Stroke], brush: float = 20, size: int = 280) -> bytes:
    """The canvas as the page sends it: white round-capped strokes on black, as a PNG."""
    from PIL import Image, ImageDraw
    im = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(im)
    r = brush / 2
    for s in strokes:
        if len(s) > 1:
            d.line(s, fill=255, width=int(brush), joint="curve")
        for x, y in s:                                  # round caps and joins, as the canvas draws
            d.ellipse([x - r, y - r, x + r, y + r], fill=255)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
