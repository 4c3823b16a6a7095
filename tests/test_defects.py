"""Defects found reading the code (part 16), each pinned by a test that failed before its fix."""

from __future__ import annotations

import threading

import pytest
import torch

from cnnlab import stats
from cnnlab.analysis._shared import few_threads
from faultkit import TINY, synthetic_split


def test_training_leaves_the_callers_split_where_it_was(monkeypatch):
    """train() once moved the caller's Split to the training device in place (and left it there
    when training failed); it now trains on its own copy."""
    from cnnlab.data import Split
    from cnnlab.train import train

    def refuse(self, device):
        raise AssertionError("train() moved the caller's split")
    monkeypatch.setattr(Split, "to", refuse)
    split = synthetic_split()
    before = {k: getattr(split, k) for k in ("train_x", "val_x", "test_x")}
    train(TINY, None, split=split, progress=False, log=lambda s: None)
    assert all(getattr(split, k) is v for k, v in before.items())


def test_few_threads_leaves_every_threads_count_as_it_found_it_when_blocks_overlap():
    """Two explorer requests at once (A enters, B enters, A leaves, B leaves), as reported in part
    16. torch's count is per thread, so each block restores its own thread's: this pins it."""
    start = torch.get_num_threads()
    torch.set_num_threads(2)
    seen: dict[str, int] = {}
    try:
        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

        def a():
            torch.set_num_threads(2)
            with few_threads(10):
                seen["a_inside"] = torch.get_num_threads()
                a_in.set()
                b_in.wait(5)
            seen["a_after"] = torch.get_num_threads()
            a_out.set()

        def b():
            torch.set_num_threads(2)
            a_in.wait(5)
            with few_threads(10):
                b_in.set()
                a_out.wait(5)
                seen["b_inside"] = torch.get_num_threads()
            seen["b_after"] = torch.get_num_threads()
        ta, tb = threading.Thread(target=a), threading.Thread(target=b)
        ta.start(), tb.start()
        ta.join(10), tb.join(10)
        assert seen == {"a_inside": 1, "a_after": 2, "b_inside": 1, "b_after": 2}
        assert torch.get_num_threads() == 2
        with few_threads(1000):                               # a large batch keeps every thread
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(start)


@pytest.mark.parametrize("df, exact", [(31, 2.039513), (40, 2.021075), (60, 2.000298), (120, 1.979930),
                                       (1000, 1.962339), (30, 2.042), (2, 4.303)])
def test_t_critical_values_above_30_degrees_of_freedom_are_students_not_the_normals(df, exact):
    """Once 1.96 for every df > 30: a 95% interval from 31 pairs was 4% too narrow."""
    assert stats.t_critical(df) == pytest.approx(exact, abs=2e-5 if df > 30 else 1e-9)


def test_robustness_uses_the_c_kernels_only_for_runs_that_allow_them(monkeypatch):
    """A run trained with fused_kernels=False was still attacked through cnnlab's C kernels in bf16."""
    from cnnlab import fused
    from cnnlab.analysis.robustness import robustness
    from cnnlab.model import Net
    if fused.kernel() is None:
        pytest.skip("cnnlab's C kernels are not built on this machine (no C compiler)")
    calls = {"n": 0}
    real = fused.conv1_pool_relu

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)
    monkeypatch.setattr(fused, "conv1_pool_relu", counting)
    torch.manual_seed(0)
    net = Net().eval()
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    robustness({"m": net}, x, y, attack="fgsm", eps_list=[0.1], precision="bf16", kernels={"m": False})
    assert calls["n"] == 0
    robustness({"m": net}, x, y, attack="fgsm", eps_list=[0.1], precision="bf16")      # control: allowed
    assert calls["n"] > 0
