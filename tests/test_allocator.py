"""cnnlab.allocator: glibc keeps freed tensor memory, so training steps stop page-faulting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# A few batch-128 training steps of the assignment's network in a fresh process; prints minor page
# faults per step over the last 10 steps and whether the allocator tuning is in effect.
PROBE = r"""
import json, resource, sys, torch
import torch.nn.functional as F
from cnnlab.allocator import keep_freed_memory
from cnnlab.model import Net
applied = keep_freed_memory()
torch.manual_seed(0)
m = Net().to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
x, y = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
def step():
    loss = F.cross_entropy(m(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(5):
    step()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(json.dumps({"applied": applied, "faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 10}))
"""


def _probe(malloc: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("CNNLAB_MALLOC", None)
    if malloc is not None:
        env["CNNLAB_MALLOC"] = malloc
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_tuned_allocator_removes_the_page_faults_of_a_training_step():
    default = _probe("default")             # the control: glibc as it comes
    tuned = _probe(None)
    assert default["applied"] is False and tuned["applied"] is True
    if default["faults_per_step"] < 100:
        pytest.skip(f"this libc faults only {default['faults_per_step']:.0f} times per step untuned; nothing to remove")
    assert tuned["faults_per_step"] <= default["faults_per_step"] / 10, (default, tuned)


def test_run_json_records_the_allocator(mnist_run):
    info = json.loads((mnist_run / "run.json").read_text())
    assert info["hardware"]["malloc"] in ("default", "glibc, freed memory kept (cnnlab.allocator)")
    if sys.platform.startswith("linux") and os.environ.get("CNNLAB_MALLOC", "").lower() != "default":
        assert info["hardware"]["malloc"].startswith("glibc")
