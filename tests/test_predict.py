"""`cnnlab predict`: the MNIST-style conversion of the user's own images, checked against hand
computations and against MNIST itself, and a photo-like digit classified right."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from cnnlab.analysis import occlusion as occlusion_module
from cnnlab.cli import main as cli_main
from cnnlab.predict import load_image, predict, predict_files, preprocess_bytes, to_mnist
from faultkit import fake_run


def run_cli(argv, capsys):
    try:
        code = cli_main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def centre_of_mass(a: np.ndarray) -> tuple[float, float]:
    yy, xx = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    return float((a * yy).sum() / a.sum()), float((a * xx).sum() / a.sum())


def box(a: np.ndarray, thr: float = 0.0) -> tuple[int, int]:
    rows, cols = np.nonzero(a > thr)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


# ---------------------------------------------------------------------------------------------
# The conversion, against hand-computed cases
# ---------------------------------------------------------------------------------------------

def test_contract_shape_range_box_and_centre():
    # A dark 60×30 bar (rows × cols) on white, off-centre in a 200×300 image.
    g = np.full((200, 300), 255, np.uint8)
    g[20:80, 200:230] = 0
    a = to_mnist(Image.fromarray(g))
    assert a.shape == (28, 28) and a.dtype == np.float32
    assert a.min() == 0.0 and a.max() == 1.0
    assert box(a) == (20, 10)                       # longer side 20, aspect ratio kept
    cy, cx = centre_of_mass(a)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
    # a uniform bar stays uniform inside (no ringing in the middle)
    np.testing.assert_allclose(a[a > 0][a[a > 0] > 0.9], 1.0, atol=0.02)


def test_wide_digit_fits_by_its_width():
    g = np.zeros((100, 100), np.uint8)
    g[45:55, 10:90] = 255                            # light on dark, 10×80
    a = to_mnist(Image.fromarray(g))
    h, w = box(a)
    assert w == 20 and 2 <= h <= 4


def test_light_and_dark_backgrounds_give_the_same_digit():
    img = _digit_photo(3, dark_on_light=True, noise=0.0)
    a = to_mnist(img)
    b = to_mnist(ImageOps.invert(img))
    np.testing.assert_allclose(a, b, atol=0.02)


def test_colour_and_grey_give_the_same_digit():
    grey = _digit_photo(5, noise=0.0)
    colour = Image.merge("RGB", [grey, grey, grey])
    np.testing.assert_allclose(to_mnist(grey), to_mnist(colour), atol=1e-6)


def test_transparent_canvas_with_ink_in_alpha():
    """A digit drawn on a transparent canvas (as browsers and drawing apps export)."""
    a = np.zeros((80, 80, 4), np.uint8)               # transparent black everywhere
    a[10:70, 35:45] = (0, 0, 0, 255)                  # an opaque black "1"
    out = to_mnist(Image.fromarray(a, "RGBA"))
    h, w = box(out)
    assert h == 20                                    # the long side is scaled to 20 px, as MNIST's
    assert abs(w - 20 * 10 / 60) <= 1                 # the 10:60 aspect kept: 3.3 px wide (± 1 px of resampling)


def test_16_bit_and_palette_images(tmp_path):
    g = np.full((64, 64), 60000, np.uint16)
    g[10:54, 28:36] = 1000
    p = tmp_path / "deep.png"
    Image.fromarray(g).save(p)
    a = to_mnist(load_image(p))
    assert box(a)[0] == 20
    pal = Image.fromarray((g // 256).astype(np.uint8)).convert("P")
    b = to_mnist(pal)
    np.testing.assert_allclose(a, b, atol=0.05)


def test_exif_orientation_is_applied(tmp_path):
    """A phone photo stored sideways with an EXIF 'rotate 90' tag reads upright."""
    upright = _digit_photo(7, noise=0.0)
    stored = upright.transpose(Image.Transpose.ROTATE_90)     # how the sensor stored it (90° CCW)
    exif = Image.Exif()
    exif[0x0112] = 6                                          # orientation 6: rotate 90° CW to view
    p = tmp_path / "phone.jpg"
    stored.save(p, exif=exif.tobytes(), quality=95)
    np.testing.assert_allclose(to_mnist(load_image(p)), to_mnist(upright), atol=0.12)


def test_formats_round_trip(tmp_path):
    img = _digit_photo(2, noise=0.0)
    ref = to_mnist(img)
    for fmt in ("PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM"):
        buf = io.BytesIO()
        img.save(buf, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        np.testing.assert_allclose(preprocess_bytes(buf.getvalue()), ref, atol=0.02, err_msg=fmt)


def test_huge_photo_is_reduced_quickly_and_the_same():
    small = _digit_photo(4, size=300, noise=0.0)
    big = small.resize((small.width * 8, small.height * 8), Image.Resampling.BICUBIC)   # 2400×3120
    a, b = to_mnist(big), to_mnist(small)
    assert abs(box(a)[0] - box(b)[0]) <= 1 and abs(box(a)[1] - box(b)[1]) <= 1
    # the same digit (up to resampling, and the ±1 px of MNIST's integer centring)
    best = max(np.corrcoef(np.roll(a, (dy, dx), (0, 1)).ravel(), b.ravel())[0, 1]
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    assert best > 0.85


def test_predict_shapes_and_probabilities(tiny_model):
    out = predict(tiny_model, [np.zeros((28, 28), np.float32), np.ones((28, 28), np.float32)])
    assert len(out) == 2
    for r in out:
        assert set(r) == {"prediction", "probabilities"} and len(r["probabilities"]) == 10
        assert abs(sum(r["probabilities"]) - 1) < 1e-5
        assert r["prediction"] == int(np.argmax(r["probabilities"]))
    # oracle: the network's own softmax
    x = torch.ones(1, 1, 28, 28)
    np.testing.assert_allclose(out[1]["probabilities"], tiny_model(x).softmax(1)[0].detach().numpy(), atol=1e-6)
    assert predict(tiny_model, []) == []


# ---------------------------------------------------------------------------------------------
# Photo-like digits: drawn, rotated, larger than 28×28, on uneven paper with grain
# ---------------------------------------------------------------------------------------------

# Strokes of each digit as polylines in a unit box.
STROKES = {
    0: [(0.5, 0.05), (0.8, 0.2), (0.85, 0.5), (0.8, 0.8), (0.5, 0.95), (0.2, 0.8), (0.15, 0.5), (0.2, 0.2), (0.5, 0.05)],
    1: [(0.35, 0.2), (0.55, 0.05), (0.55, 0.95)],
    2: [(0.2, 0.25), (0.35, 0.08), (0.65, 0.08), (0.8, 0.25), (0.75, 0.45), (0.2, 0.92), (0.85, 0.92)],
    3: [(0.2, 0.1), (0.8, 0.1), (0.45, 0.45), (0.75, 0.6), (0.75, 0.85), (0.5, 0.95), (0.2, 0.88)],
    4: [(0.65, 0.95), (0.65, 0.05), (0.15, 0.65), (0.85, 0.65)],
    5: [(0.8, 0.08), (0.25, 0.08), (0.2, 0.45), (0.6, 0.4), (0.8, 0.6), (0.7, 0.88), (0.4, 0.95), (0.2, 0.85)],
    6: [(0.75, 0.08), (0.4, 0.25), (0.2, 0.6), (0.3, 0.9), (0.6, 0.92), (0.75, 0.7), (0.55, 0.5), (0.25, 0.6)],
    7: [(0.15, 0.08), (0.85, 0.08), (0.4, 0.95)],
    8: [(0.5, 0.5), (0.25, 0.3), (0.5, 0.06), (0.75, 0.3), (0.5, 0.5), (0.2, 0.72), (0.5, 0.95), (0.8, 0.72), (0.5, 0.5)],
    9: [(0.75, 0.4), (0.5, 0.5), (0.25, 0.35), (0.45, 0.08), (0.75, 0.2), (0.75, 0.4), (0.7, 0.95)],
}


def _digit_photo(d: int, size: int = 300, angle: float = 10, dark_on_light: bool = True,
                 colour: bool = False, noise: float = 0.03) -> Image.Image:
    """A digit drawn with a thick pen, rotated, blurred, on paper lit unevenly, with grain."""
    rng = np.random.default_rng(d)
    w, h = size, int(size * 1.3)
    ink_img = Image.new("L", (w, h), 0)
    x0, y0, bw, bh = w * 0.25, h * 0.2, w * 0.5, h * 0.55          # off-centre, like a real photo
    ImageDraw.Draw(ink_img).line([(x0 + x * bw, y0 + y * bh) for x, y in STROKES[d]],
                                 fill=255, width=int(0.07 * size), joint="curve")
    ink_img = ink_img.rotate(angle, resample=Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(1.5))
    ink = np.asarray(ink_img, np.float64) / 255
    shade = np.linspace(0, 1, h)[:, None]
    grain = noise * rng.standard_normal((h, w))
    if dark_on_light:
        g = (0.85 - 0.1 * shade + grain) * (1 - ink) + 0.15 * ink         # pencil on paper
    else:
        g = 0.1 + 0.05 * shade + grain + 0.7 * ink                        # chalk on a blackboard
    g = np.clip(g, 0, 1)
    if colour:                                                            # warm paper, bluish ink
        rgb = np.stack([g * 0.95, g * 0.9, g * 0.8 + 0.05], -1)
        return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8), "RGB")
    return Image.fromarray((g * 255).astype(np.uint8), "L")


@pytest.fixture(scope="module")
def trained(mnist_run):
    from cnnlab.runs import open_run
    return open_run(mnist_run).load_model()


def test_photo_like_digits_are_classified_right(trained, tmp_path, capsys, mnist_run):
    """Each digit drawn dark on light (and light on dark), grey and colour, rotated ±10°, 300×390
    pixels, saved as PNG and JPEG and classified through the real command."""
    files, truth = [], []
    for d in range(10):
        for dark_on_light in (True, False):
            for colour in (False, True):
                img = _digit_photo(d, angle=10 * (-1) ** d, dark_on_light=dark_on_light, colour=colour)
                p = tmp_path / f"{d}-{'dark' if dark_on_light else 'light'}-{'rgb' if colour else 'grey'}.{'jpg' if colour else 'png'}"
                img.save(p)
                files.append(p)
                truth.append(d)
    code, out, err = run_cli(["predict", mnist_run, *files, "--json"], capsys)
    assert code == 0, err
    results = json.loads(out)
    got = [r["prediction"] for r in results]
    wrong = [(Path(r["file"]).name, r["prediction"]) for r, t in zip(results, truth) if r["prediction"] != t]
    # The case (dark on light, grey, rotated, larger than 28×28): every digit right.
    for d in range(10):
        i = files.index(tmp_path / f"{d}-dark-grey.png")
        assert got[i] == d, wrong
    assert len(wrong) <= 2, wrong


def test_mnist_digits_survive_the_round_trip(trained, mnist_split):
    """Oracle: MNIST's own test digits, enlarged ×8 and printed dark on light, must come back
    close to the original and be classified as well as the original."""
    x, y = mnist_split.test_x[:200, 0].numpy(), mnist_split.test_y[:200].numpy()
    back = []
    for a in x:
        big = Image.fromarray(255 - a).resize((224, 224), Image.Resampling.BICUBIC)
        back.append(to_mnist(big))
    back = np.stack(back)
    pred_orig = np.array([r["prediction"] for r in predict(trained, list(x.astype(np.float32) / 255))])
    pred_back = np.array([r["prediction"] for r in predict(trained, list(back))])
    assert (pred_back == y).mean() >= (pred_orig == y).mean() - 0.03
    corr = np.mean([np.corrcoef(b.ravel(), a.ravel())[0, 1] for a, b in zip(x.astype(float), back)])
    assert corr > 0.8


# ---------------------------------------------------------------------------------------------
# predict_files and the command
# ---------------------------------------------------------------------------------------------

def _save(img: Image.Image, path: Path) -> Path:
    img.save(path)
    return path


def test_predict_files_keeps_order_and_reports_errors(tiny_model, tmp_path):
    good = _save(_digit_photo(1, size=120), tmp_path / "one.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    res = predict_files(tiny_model, [good, bad, good], keep_images=True)
    assert [r["file"] for r in res] == [str(good), str(bad), str(good)]
    assert set(res[1]) == {"file", "error"} and "not a readable image" in res[1]["error"]
    assert not res[1]["error"].startswith(str(bad))          # the file is named once, in "file"
    assert res[0]["probabilities"] == res[2]["probabilities"]
    assert res[0]["image"].shape == (28, 28)


def test_cli_table_and_top(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake_run(tmp_path / "run")
    _save(_digit_photo(8, size=120), tmp_path / "eight.png")
    code, out, err = run_cli(["predict", "run", "eight.png", "--top", "2"], capsys)
    assert code == 0 and err == ""
    assert "eight.png" in out and "top 2" in out and out.count("%") == 2


def test_cli_json_shape(tmp_path, capsys):
    run = fake_run(tmp_path / "run", batch_norm=True)
    img = _save(_digit_photo(0, size=120), tmp_path / "zero.png")
    code, out, _ = run_cli(["predict", run, img, "--json"], capsys)
    assert code == 0
    (r,) = json.loads(out)
    assert set(r) == {"file", "prediction", "probabilities"} and len(r["probabilities"]) == 10


class _FakeOcclusion:
    """Stands in for cnnlab.analysis.occlusion.occlusion with its contract."""

    def __init__(self, image, patch_sizes):
        self.prob = {k: np.full((28, 28), 0.5) for k in patch_sizes}

    def figure(self):  # pragma: no cover - not used by predict
        raise NotImplementedError


def test_cli_explain_against_the_occlusion_contract(tmp_path, capsys, monkeypatch):
    calls = []

    def occlusion(model, image, target=None, patch_sizes=(1, 2, 3, 4, 5), stride=1, fill=0.5):
        calls.append((image.shape, target))
        return _FakeOcclusion(image, patch_sizes)
    monkeypatch.setattr(occlusion_module, "occlusion", occlusion)
    run = fake_run(tmp_path / "run")
    a = _save(_digit_photo(1, size=120), tmp_path / "a.png")
    (tmp_path / "b").mkdir()
    b = _save(_digit_photo(2, size=120), tmp_path / "b" / "a.png")    # same stem: no clobbering
    bad = tmp_path / "c.png"
    bad.write_bytes(b"")
    code, out, err = run_cli(["predict", run, a, b, bad, "--explain", "--out", tmp_path / "ex"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == [".cnnlab-manifest.json", "a-2-explain.png", "a-explain.png"]
    assert len(calls) == 2 and all(shape == (28, 28) for shape, _ in calls)


def test_cli_explain_with_the_real_occlusion(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    a = _save(_digit_photo(7, size=120), tmp_path / "seven.png")
    code, out, err = run_cli(["predict", run, a, "--explain"], capsys)
    assert code == 0, err
    assert (run / "analysis" / "predict" / "seven-explain.png").is_file()
