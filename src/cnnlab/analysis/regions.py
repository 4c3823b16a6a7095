"""Where things are in an image: "ink", "the digit", patch footprints and occluded copies — the one
definition that occlusion (2.4's maps) and the 2.4 experiment both use.

A reader finds the digit as the main bright stroke against the image's own background, not as every
pixel above a fixed grey level (that counts a faint grating or a grey background as digit, and a
separate bright marker too). So, per image on the [0, 1] scale:

 1. background = the grey-scale opening of the image by a 7×7 square (a rolling-ball estimate:
    what is wider than the square). A 2–4 px stroke is narrower, so it stays foreground; a flat
    or slowly varying background, a grey field and a broad glow are background.
 2. contrast c = image − background (≥ 0); the image's stroke level S = its 5th largest contrast (a
    few hot pixels cannot set it). No digit when S < MIN_CONTRAST.
 3. ink = c ≥ INK_SHARE·S and c ≥ MIN_CONTRAST: anything fainter than 40% of the image's own
    strokes is background, whatever its absolute grey level (so is a faint texture or grating,
    whose fine lines survive step 1).
 4. the digit = the 8-connected ink component with the largest contrast mass weighted by
    centrality (full weight within 7 px of the centre, falling to none at 13 px: MNIST centres
    the digit's mass and leaves the 4-px border empty, and a reader looks for the digit in the
    middle; ink beyond 13 px, the outer ring and the corners, belongs to no component, so a line
    along the edge cannot join a digit that touches it), plus the pieces of stroke within 2 px of it (a broken stroke: not at the border,
    line-like rather than a blob);
    separate markers, frames, blobs and specks stay out. Grown by 1 px to take in the
    anti-aliased edge.
 5. no digit when nothing central has contrast, or when ink covers more than 45% of the image
    or "the digit" more than 60% (a texture, or a frame touching the digit).

Where the user knows better (`--images` with `masks`), `digit_masks(images, masks)` takes the given
masks instead. Images where no digit can be found raise a one-line DataError naming the image.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from ..model import IMAGE_SIZE, N_CLASSES
from ..schema import read_npz

if TYPE_CHECKING:
    import numpy.typing as npt

BG_WINDOW = 7            # px: side of the square of the opening that estimates the background
INK_SHARE = 0.4          # ink: contrast ≥ this share of the image's stroke level S
MIN_CONTRAST = 0.25      # [0, 1] scale (64/255): a stroke must stand out by at least this much
STROKE_RANK = 5          # S = the 5th largest contrast of the image
CENTRE_FULL, CENTRE_NONE = 7.0, 13.0    # px from the centre: full weight within, none beyond
JOIN_PX = 2              # components within this many px of the main one are part of the digit
DIGIT_GROW = 1           # px: the digit's outline grown by this much (anti-aliased edge)
MAX_AREA = 0.6           # a "digit" (grown 1 px) covering more of the image than this is a texture
MAX_INK = 0.45           # so is ink covering more of it (MNIST digits: at most 0.30)


def _as_batch(images) -> tuple[torch.Tensor, bool]:
    """[N, 28, 28] float on the [0, 1] scale from uint8 pixels or floats in [0, 1]; and whether
    one image was given."""
    a = np.asarray(images)
    x = torch.from_numpy(a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32))
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    single = x.ndim == 2
    return (x[None] if single else x), single


def contrast(images: npt.ArrayLike) -> np.ndarray:
    """Foreground contrast c = image − background, ≥ 0, [N, 28, 28] (or [28, 28] for one image).
    The background is the image's grey-scale opening by a BG_WINDOW² square (the minimum over
    the square, then the maximum over it): the white top-hat, which keeps what is narrower than
    the square (strokes) and drops what is wider (fields, gradients, broad glows)."""
    x, single = _as_batch(images)
    pad = BG_WINDOW // 2
    xb = x[:, None]
    eroded = -F.max_pool2d(F.pad(-xb, (pad,) * 4, mode="replicate"), BG_WINDOW, stride=1)
    bg = F.max_pool2d(F.pad(eroded, (pad,) * 4, mode="replicate"), BG_WINDOW, stride=1)
    c = (xb - bg).clamp_min(0)[:, 0].numpy()
    return c[0] if single else c


def stroke_level(c: np.ndarray) -> np.ndarray:
    """S per image: the STROKE_RANK-th largest contrast of c [N, 28, 28]."""
    flat = np.asarray(c).reshape(len(c), -1)
    return np.sort(flat, axis=1)[:, -STROKE_RANK]


def ink(images: npt.ArrayLike) -> np.ndarray:
    """Stroke pixels: contrast ≥ 40% of the image's stroke level and ≥ MIN_CONTRAST (bool, same
    leading shape as the input; all False on a blank image)."""
    c = contrast(images)
    single = c.ndim == 2
    cb = c[None] if single else c
    s = stroke_level(cb)[:, None, None]
    m = (cb >= INK_SHARE * s) & (cb >= MIN_CONTRAST)
    return m[0] if single else m


def grow(mask: np.ndarray, px: int) -> np.ndarray:
    """Square dilation by `px` pixels (a (2px+1)² structuring element) of [H, W] or [N, H, W]."""
    m = np.asarray(mask, dtype=bool)
    if px <= 0:
        return m.copy()
    t = torch.from_numpy(m.astype(np.float32))
    t = t[None, None] if m.ndim == 2 else t[:, None]
    g = F.max_pool2d(t, 2 * px + 1, stride=1, padding=px)[:, 0].numpy() > 0
    return g[0] if m.ndim == 2 else g


def components(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels of bool [N, H, W] (or [H, W]): 0 = background, each component
    labelled by 1 + the raster index of its last pixel. Labels spread by 3×3 max-pooling inside
    the mask until nothing changes (at most one step per pixel of the longest path)."""
    m = np.asarray(mask, dtype=bool)
    single = m.ndim == 2
    mb = torch.from_numpy(m[None] if single else m)
    n, h, w = mb.shape
    lab = torch.where(mb, torch.arange(1, h * w + 1, dtype=torch.float32).reshape(1, h, w).expand(n, h, w),
                      torch.zeros(()))
    while True:
        nxt = torch.where(mb, F.max_pool2d(lab[:, None], 3, stride=1, padding=1)[:, 0], torch.zeros(()))
        if torch.equal(nxt, lab):
            break
        lab = nxt
    out = lab.to(torch.int64).numpy()
    return out[0] if single else out


def _centrality() -> np.ndarray:
    yy, xx = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    c = (IMAGE_SIZE - 1) / 2
    d = np.hypot(yy - c, xx - c)
    return np.clip((CENTRE_NONE - d) / (CENTRE_NONE - CENTRE_FULL), 0.0, 1.0)


CENTRALITY = _centrality()


def _stroke_like(m: np.ndarray) -> bool:
    """A piece of stroke, not a blob: elongated (bounding box ≥ 2:1) or filling under half of its
    bounding box (a bent or diagonal line). A square or round marker is neither."""
    ys, xs = np.nonzero(m)
    h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
    return max(h, w) >= 2 * min(h, w) or len(ys) < 0.5 * h * w


def find_digits(images: npt.ArrayLike) -> tuple[np.ndarray, list[str | None]]:
    """The digit of each image ([N, 28, 28] bool, grown 1 px) and, per image, None or why no
    digit was found (then its mask is all False). See the module docstring for the steps."""
    c = contrast(images)
    if c.ndim == 2:
        c = c[None]
    s = stroke_level(c)
    inkm = (c >= INK_SHARE * s[:, None, None]) & (c >= MIN_CONTRAST)
    labels = components(inkm & (CENTRALITY > 0))     # the outer ring and the corners join nothing
    out = np.zeros(inkm.shape, dtype=bool)
    why: list[str | None] = []
    for i in range(len(c)):
        if s[i] < MIN_CONTRAST:
            why.append(f"nothing stands out from its background (strongest stroke contrast {s[i] * 255:.0f}/255, "
                       f"a digit needs ≥ {MIN_CONTRAST * 255:.0f}/255)")
            continue
        ids, inv = np.unique(labels[i], return_inverse=True)        # ids[0] = 0, the background
        inv = inv.reshape(IMAGE_SIZE, IMAGE_SIZE)
        mass = np.bincount(inv.ravel(), weights=c[i].ravel(), minlength=len(ids))
        score = np.bincount(inv.ravel(), weights=(c[i] * CENTRALITY).ravel(), minlength=len(ids))
        score[0] = 0.0
        if len(ids) < 2 or score.max() <= 0:
            why.append("all its strokes lie at the border, none near the centre")
            continue
        best = int(np.argmax(score))
        keep = inv == best
        near = grow(keep, JOIN_PX)
        for j in np.unique(inv[near & (inv > 0)]):
            if j != best and score[j] >= 0.25 * mass[j] and _stroke_like(inv == j):
                keep |= inv == j
        digit = grow(keep, DIGIT_GROW)
        if digit.mean() > MAX_AREA or inkm[i].mean() > MAX_INK:
            why.append(f"its strokes cover {inkm[i].mean():.0%} of the image and its brightest structure "
                       f"{digit.mean():.0%} (a texture or frame, not a digit: at most {MAX_INK:.0%} and "
                       f"{MAX_AREA:.0%})")
            continue
        out[i] = digit
        why.append(None)
    return out, why


def digit_masks(images: npt.ArrayLike, masks: npt.ArrayLike | None = None) -> np.ndarray:
    """bool [N, 28, 28]: `masks` where given (checked), else the digit found in each image; a
    one-line DataError for the first image without one."""
    x, _ = _as_batch(images)
    n = len(x)
    if masks is not None:
        m = np.asarray(masks)
        if m.dtype != np.bool_:
            raise DataError(f"masks must be booleans (True = the digit), not {m.dtype}; save masks=(m > 0)")
        if m.shape != (n, IMAGE_SIZE, IMAGE_SIZE):
            raise DataError(f"masks must have shape [{n}, 28, 28] (one per image), not {list(m.shape)}")
        empty = np.nonzero(~m.reshape(n, -1).any(1))[0]
        if len(empty):
            raise DataError(f"mask {int(empty[0])} is empty ({len(empty)} of {n} are): each mask must mark the "
                            f"digit's pixels")
        return m.copy()
    found, why = find_digits(x.numpy())
    bad = [i for i, w in enumerate(why) if w is not None]
    if bad:
        raise DataError(f"no digit found in image {bad[0]} ({len(bad)} of {n} images): {why[bad[0]]}; "
                        f"drop it, or give its digit as 'masks' (bool [N, 28, 28]) in the .npz")
    return found


def patch_overlap(mask: np.ndarray, k: int, stride: int) -> np.ndarray:
    """[P, P] booleans: does the k×k patch at each position (top-left = stride·index) touch `mask`."""
    m = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    return F.max_pool2d(m, k, stride=stride)[0, 0].numpy() > 0


def occluded(image: torch.Tensor, k: int, stride: int, fill: float) -> torch.Tensor:
    """All occluded copies [P·P, 1, 28, 28] of `image` ([28, 28] or [1, 28, 28]): a k×k patch of
    `fill` at every position (top-left = stride·index), row-major over positions."""
    img = image.reshape(IMAGE_SIZE, IMAGE_SIZE)
    P = (IMAGE_SIZE - k) // stride + 1
    starts = torch.arange(P) * stride
    idx = torch.arange(IMAGE_SIZE)
    inside = (idx[None, :] >= starts[:, None]) & (idx[None, :] < starts[:, None] + k)   # [P, 28]
    m = inside[:, None, :, None] & inside[None, :, None, :]                              # [P, P, 28, 28]
    return torch.where(m, torch.tensor(fill, dtype=img.dtype), img).reshape(P * P, 1, IMAGE_SIZE, IMAGE_SIZE)


# ---------------------------------------------------------------------------------------------
# Images the user gives (--images F.npz)
# ---------------------------------------------------------------------------------------------

def check_images(images: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, 28, 28] images (0 = background) and integer labels [N] in 0..9, or a DataError."""
    x, y = np.asarray(images), np.asarray(labels)
    if x.dtype != np.uint8:
        raise DataError(f"images must be uint8 pixels 0..255 (0 = background), not {x.dtype}; "
                        f"convert with (x * 255).round().astype(np.uint8) if they are floats in [0, 1]")
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or len(x) == 0:
        raise DataError(f"images must have shape [N, 28, 28] with N ≥ 1, not {list(x.shape)}")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels must be integers 0..9, not {y.dtype}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"labels must have shape [{len(x)}] (one per image), not {list(y.shape)}")
    if y.min() < 0 or y.max() >= N_CLASSES:
        raise DataError(f"labels must lie in 0..9; found {int(y.min())}..{int(y.max())}")
    return np.ascontiguousarray(x), y.astype(np.int64)


MAX_NPZ_IMAGES = 70_000      # images read from an --images .npz: all of MNIST's


def load_images_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """`images`, `labels` and the optional `masks` (bool [N, 28, 28], True = the digit) from an .npz
    file (never unpickled), checked by `check_images` and `regions.digit_masks`."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"no file at {p}: give an .npz holding 'images' (uint8 [N, 28, 28]) and 'labels' (int [N])")
    try:
        with open(p, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise DataError(f"cannot read {p}: {e.strerror or e}") from None
    if head.startswith(b"\x93NUMPY"):
        raise DataError(f"{p} is a single .npy array, not an .npz with 'images' and 'labels'")
    if not head.startswith(b"PK"):
        raise DataError(f"{p} is not an .npz file (no zip header); save with np.savez(path, images=..., labels=...)")
    # every array's size read from its header and bounded before it is decompressed (schema.read_npz)
    z = read_npz(p, {"images": MAX_NPZ_IMAGES * 28 * 28, "labels": MAX_NPZ_IMAGES,
                     "masks": MAX_NPZ_IMAGES * 28 * 28}, DataError)
    missing = [k for k in ("images", "labels") if k not in z]
    if missing:
        raise DataError(f"{p} lacks {', '.join(missing)} (holds: {', '.join(z['__files__']) or 'nothing'}); "
                        f"save with np.savez(path, images=..., labels=...)")
    x, y, masks = z["images"], z["labels"], z.get("masks")
    x, y = check_images(x, y)
    if masks is not None:
        masks = digit_masks(x, masks)
    return x, y, masks
