"""Defects found reading the code (part 16), each pinned by a test that failed before its fix."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
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


def _strict(text: str):
    """json.loads that refuses the bare NaN/Infinity tokens, as every other JSON parser does."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def test_json_files_hold_null_where_a_number_is_not_finite(tmp_path):
    """OutputDir.write_json and write_json once wrote the bare token NaN into .json files (which no
    JSON parser but Python's accepts), while --json printed null; every JSON cnnlab writes now goes
    through output.jsonable."""
    from cnnlab.output import OutputDir, dumps, write_json
    obj = {"loss": float("nan"), "rates": np.array([0.5, np.inf]), "n": np.int64(3), "t": torch.tensor(-np.inf),
           "where": tmp_path, "pair": (1, float("nan"))}
    want = {"loss": None, "rates": [0.5, None], "n": 3, "t": None, "where": str(tmp_path), "pair": [1, None]}
    (tmp_path / "out").mkdir()
    d = OutputDir(tmp_path / "out")
    assert _strict(d.write_json("a.json", obj).read_text(encoding="utf-8")) == want
    write_json(tmp_path / "b.json", obj)
    assert _strict((tmp_path / "b.json").read_text(encoding="utf-8")) == want
    assert _strict(dumps(obj)) == want


def test_cli_json_and_verdict_numbers_use_the_same_conversion(capsys):
    from cnnlab.analysis.verdict import Verdict
    from cnnlab.cli.common import print_json
    v = Verdict("2.4", "invalid", "x", "rule", {"rate": np.float64("nan"), "k": np.int32(2)})
    assert v.to_dict()["numbers"] == {"rate": None, "k": 2}
    print_json({"a": float("inf"), "b": [np.float32(0.25)]})
    assert _strict(capsys.readouterr().out) == {"a": None, "b": [0.25]}


def test_resume_reads_the_saved_state_once_and_loads_the_bytes_it_hashed(tmp_path, monkeypatch):
    """On resume, train() checked the saved state before loading data, then _load_state checked,
    read and hashed it again (and loaded the second read, not the bytes it had hashed)."""
    import builtins

    from cnnlab.train import train
    out = tmp_path / "run"
    train(TINY, out, split=synthetic_split(), progress=False, log=lambda s: None, stop_at_step=5,
          figures=False)
    opened = []
    real_open = builtins.open

    def counting_open(file, *a, **k):
        if str(file).endswith(".safetensors") and "state" in Path(file).parent.name:
            opened.append(Path(file).name)
        return real_open(file, *a, **k)
    monkeypatch.setattr(builtins, "open", counting_open)
    res = train(TINY, out, split=synthetic_split(), progress=False, log=lambda s: None, resume=True,
                figures=False)
    assert res.info.status == "complete"
    assert len([n for n in opened if n.startswith("state")]) == 1, opened


def test_a_damaged_state_json_is_named_once_and_not_by_its_prefix(tmp_path):
    """check_state branched on its error message's prefix ("cannot resume") and used a bare
    expression to raise KeyError for a missing field; a missing field is now named."""
    import json as _json

    from cnnlab.errors import RunError
    from cnnlab.train import train
    out = tmp_path / "run"
    train(TINY, out, split=synthetic_split(), progress=False, log=lambda s: None, stop_at_step=5,
          figures=False)
    meta = _json.loads((out / "state" / "state.json").read_text(encoding="utf-8"))
    del meta["sched"]
    (out / "state" / "state.json").write_text(_json.dumps(meta), encoding="utf-8")
    with pytest.raises(RunError) as e:
        train(TINY, out, split=synthetic_split(), progress=False, log=lambda s: None, resume=True,
                figures=False)
    msg = str(e.value)
    assert msg.count("cannot resume") == 1 and "state.json lacks sched" in msg, msg


def test_a_bug_inside_the_safetensors_parser_is_not_called_a_bad_file(tmp_path, monkeypatch):
    """model.read_safetensors caught every Exception: a programming error (here a ZeroDivisionError
    raised inside the parser) was reported as "not a valid safetensors file"."""
    import safetensors.torch

    from cnnlab.model import Net, read_safetensors, save_weights
    save_weights(Net(), tmp_path / "m.safetensors")

    def broken(data):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(safetensors.torch, "load", broken)
    with pytest.raises(ZeroDivisionError):
        read_safetensors(tmp_path / "m.safetensors")
