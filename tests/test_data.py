"""Data: IDX parsing against hand-made files, verification, sources in order, the split."""

import gzip
import hashlib
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab import data
from cnnlab.errors import DataError, IdxFormatError


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    dt = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    return bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.astype(dt).tobytes()


def test_parse_idx_hand_made_case():
    # 2 images of 2×3, written byte by byte: the header is big-endian.
    raw = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(12))
    a = data.parse_idx(raw)
    assert a.shape == (2, 2, 3) and a.dtype == np.uint8
    assert a[1, 1, 2] == 11 and a[0, 0, 1] == 1


def test_parse_idx_big_endian_int32_and_float():
    x = np.array([[1, -2], [300000, 4]], dtype=np.int32)
    np.testing.assert_array_equal(data.parse_idx(idx_bytes(x, 0x0C)), x)
    f = np.array([0.5, -1.25], dtype=np.float64)
    np.testing.assert_array_equal(data.parse_idx(idx_bytes(f, 0x0E)), f)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"\x01" + b[1:], "magic"),
    (lambda b: b[:2] + b"\x07" + b[3:], "data type"),
    (lambda b: b[:-1], "truncated"),
    (lambda b: b + b"\x00", "trailing"),
    (lambda b: b[:3] + b"\x00" + b[4:], "dimensions"),
    (lambda b: b[:2], "too short"),
])
def test_parse_idx_rejects(mutate, message):
    good = idx_bytes(np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(IdxFormatError, match=message):
        data.parse_idx(mutate(good))


def test_declared_size_checked_before_allocation():
    # Claims 2^31 × 2^31 bytes: must be refused from the header, without trying to allocate.
    raw = bytes([0, 0, 8, 2]) + struct.pack(">II", 2**31, 2**31) + b"\x00" * 10
    with pytest.raises(IdxFormatError, match="truncated"):
        data.parse_idx(raw)


def _fake_dataset(tmp_path, monkeypatch, gz: bool):
    """A synthetic MNIST-format dataset with its own spec (hashes of these files)."""
    rng = np.random.default_rng(0)
    arrays = {"train_images": rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
              "train_labels": rng.integers(0, 10, 60).astype(np.uint8),
              "test_images": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
              "test_labels": rng.integers(0, 10, 20).astype(np.uint8)}
    content = {k: idx_bytes(v) for k, v in arrays.items()}
    spec = data.DatasetSpec(name="fake", sha256={k: hashlib.sha256(v).hexdigest() for k, v in content.items()},
                            class_names=tuple("0123456789"))
    monkeypatch.setitem(data.DATASETS, "fake", spec)
    for k, v in content.items():
        name = spec.file_name(k)
        if gz:
            (tmp_path / (name + ".gz")).write_bytes(gzip.compress(v))
        else:
            (tmp_path / name).write_bytes(v)
    return arrays, spec


@pytest.mark.parametrize("gz", [True, False])
def test_fetch_from_data_dir(tmp_path, monkeypatch, gz):
    arrays, _ = _fake_dataset(tmp_path, monkeypatch, gz)
    raw = data.fetch("fake", tmp_path)
    np.testing.assert_array_equal(raw.train_images, arrays["train_images"])
    np.testing.assert_array_equal(raw.test_labels, arrays["test_labels"])
    assert raw.source.startswith("data dir")


def test_checksum_mismatch_names_file_and_is_never_used(tmp_path, monkeypatch):
    _, spec = _fake_dataset(tmp_path, monkeypatch, gz=False)
    p = tmp_path / spec.file_name("test_labels")
    b = bytearray(p.read_bytes())
    b[-1] ^= 1
    p.write_bytes(bytes(b))
    with pytest.raises(DataError) as e:
        data.fetch("fake", tmp_path)
    assert "t10k-labels-idx1-ubyte" in str(e.value) and "SHA-256" in str(e.value)
    assert "data dir" in str(e.value)   # the message lists what was tried


def test_sources_are_tried_in_order_and_winner_is_cached(tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    _, spec = _fake_dataset(tmp_path / "src", monkeypatch, gz=True)
    calls = []

    def failing():
        calls.append("first")
        raise DataError("unreachable")

    def good():
        calls.append("second")
        return data._verified_from_dir(spec, tmp_path / "src")

    raw = data.fetch("fake", sources=[data.Source("a", failing, cache=True), data.Source("b", good, cache=True)])
    assert calls == ["first", "second"]
    cached = data.cache_dir() / "fake"
    assert sorted(p.name for p in cached.iterdir()) == sorted(spec.file_name(k) for k in data.FILE_KEYS)
    # and the cache alone now serves it
    again = data.fetch("fake", sources=[data.Source("cache", lambda: data._verified_from_dir(spec, cached), cache=False)])
    np.testing.assert_array_equal(again.train_images, raw.train_images)


def test_no_source_at_all_lists_what_was_tried(monkeypatch):
    with pytest.raises(DataError, match="tried: x: nope"):
        data.fetch("mnist", sources=[data.Source("x", lambda: (_ for _ in ()).throw(DataError("nope")), cache=False)])


def test_unknown_dataset():
    with pytest.raises(DataError, match="known datasets"):
        data.fetch("cifar")


def test_real_mnist(mnist_split):
    s = mnist_split
    assert (len(s.train_x), len(s.val_x), len(s.test_x)) == (50_000, 10_000, 10_000)
    assert s.train_x.shape[1:] == (1, 28, 28) and s.train_x.dtype == torch.uint8
    assert s.test_y[:5].tolist() == [7, 2, 1, 0, 4]          # the canonical first test labels
    assert abs(s.mean - 0.1307) < 0.002 and abs(s.std - 0.3081) < 0.002
    # what run.json's "split" holds, typed: read by attribute, written by to_dict with the same keys
    assert (s.info.train_size, s.info.val_size, s.info.test_size, s.info.split_seed) == (50_000, 10_000, 10_000, 0)
    assert list(s.info.to_dict()) == ["dataset", "source", "split_seed", "train_size", "val_size", "test_size",
                                      "val_indices_sha256", "train_subset", "files_sha256"]
    assert s.info.val_indices_sha256 == data.indices_hash(data.split_indices(60_000, 10_000, 0)[1])


def test_split_is_seeded_disjoint_and_recorded():
    tr, va = data.split_indices(60_000, 10_000, 0)
    tr2, va2 = data.split_indices(60_000, 10_000, 0)
    assert np.array_equal(va, va2) and len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 60_000
    _, va3 = data.split_indices(60_000, 10_000, 1)
    assert data.indices_hash(va) != data.indices_hash(va3)


def test_one_hot_is_equivalent_to_class_indices():
    torch.manual_seed(0)
    logits, y = torch.randn(7, 10), torch.tensor([0, 3, 9, 1, 1, 5, 2])
    oh = data.one_hot(y, 10)
    assert oh.shape == (7, 10) and oh.sum(1).eq(1).all() and oh.argmax(1).equal(y)
    assert torch.allclose(F.cross_entropy(logits, y), F.cross_entropy(logits, oh))
    with pytest.raises(DataError):
        data.one_hot([10], 10)
