"""cnnlab.allocator: glibc keeps freed tensor memory, so training steps stop page-faulting."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

# A few batch-128 training steps of the assignment's network as train() runs them (bf16 autocast
# where the CPU has it, channels_last) in a fresh process; prints minor page faults per step over
# the last 10 steps and whether the allocator tuning is in effect.
PROBE = r"""
import json, resource, sys, torch
import torch.nn.functional as F
from cnnlab.allocator import keep_freed_memory
from cnnlab.model import Net
from cnnlab.device import cpu_has_bf16
applied = keep_freed_memory()
torch.manual_seed(0)
m = Net().to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
x, y = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_has_bf16()):
        logits = m(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(10):
    step()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(json.dumps({"applied": applied, "faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 20}))
"""


def _run(code: str, malloc: str | None, **glibc_env: str) -> str:
    """stdout of `code` in a fresh Python with this checkout's cnnlab, CNNLAB_MALLOC=`malloc`
    (None: unset) and no allocator settings but `glibc_env`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env.pop("CNNLAB_MALLOC", None)
    if malloc is not None:
        env["CNNLAB_MALLOC"] = malloc
    env.update(glibc_env)
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def _probe(malloc: str | None, **glibc_env: str) -> dict:
    return json.loads(_run(PROBE, malloc, **glibc_env).strip().splitlines()[-1])


GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.slow          # ~8 s: two child processes train and count their page faults
@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt: Linux with glibc only")
def test_tuned_allocator_keeps_training_steps_free_of_page_faults():
    """Untuned glibc faults 0–3,400 times per step here, depending on the heap's layout, so the
    control is glibc held at its starting thresholds (128 KiB, no dynamic raise): it must show
    the faults (the probe can see them), and the tuned process must not."""
    control = _probe("default", MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    tuned = _probe(None)
    assert control["applied"] is False and tuned["applied"] is True
    if control["faults_per_step"] < 1000:   # e.g. transparent huge pages always on: big pages, few faults
        pytest.skip(f"the control faults only {control['faults_per_step']:.0f} times per step here; nothing to show")
    assert tuned["faults_per_step"] <= min(200, control["faults_per_step"] / 20), (control, tuned)


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt: Linux with glibc only")
def test_cnnlab_malloc_default_leaves_the_allocator_alone():
    code = "from cnnlab.allocator import keep_freed_memory as k, describe as d; print(k(), d())"
    assert _run(code, "default").split() == ["False", "default"]
    assert _run(code, None).startswith("True glibc")      # the control: without the variable it applies


def test_run_json_records_the_allocator(mnist_run):
    info = json.loads((mnist_run / "run.json").read_text())
    assert info["hardware"]["malloc"] in ("default", "glibc, freed memory kept (cnnlab.allocator)")
    if GLIBC and os.environ.get("CNNLAB_MALLOC", "").lower() != "default":
        assert info["hardware"]["malloc"].startswith("glibc")
