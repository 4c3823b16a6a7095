"""cnnlab.fused: the C kernels for conv1 → 2×2 max-pool → ReLU and pool2 → ReLU → flatten, against
torch's operators (the oracle).

The kernels must compute the network's own function (values, the tie rule of max_pool2d, NaNs), its
weight and bias gradients, stand aside wherever it does not apply, and fall back to torch's
operators, saying why, where it cannot be built."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from cnnlab import fused
from cnnlab.model import Net

CC = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler here: training uses torch's operators")


@pytest.fixture(autouse=True, scope="module")
def _kernel_is_built():
    """Where there is a compiler the kernels must build and pass their check (after conftest has
    pointed the cache at a temporary folder): a refused build fails here instead of skipping."""
    assert fused.kernel() is not None, fused.describe()


def reference(x, w, b):
    return F.relu(F.max_pool2d(F.conv2d(x, w, b, padding=1), 2))


def weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return ((torch.randn(32, 1, 3, 3, generator=g) / 3).requires_grad_(),
            (torch.randn(32, generator=g) / 10).requires_grad_())


def digits_like(n, seed=0):
    """Sparse strokes on a constant background, normalized as the network does: most pooled
    windows are flat background, where all four candidates tie."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 1, 28, 28, generator=g) > 0.8).float() * torch.rand(n, 1, 28, 28, generator=g)
    return (x - 0.1307) / 0.3081


def grads(fn, x, w, b, gout):
    w.grad = b.grad = None
    out = fn(x, w, b)
    out.backward(gout.to(out.dtype))
    return out.detach(), w.grad.clone(), b.grad.clone()


@pytest.mark.parametrize("n", [1, 3, 128])
def test_fp32_forward_and_gradients_match_torchs_operators(n):
    x, (w, b) = digits_like(n), weights()
    gout = torch.randn(n, 32, 14, 14, generator=torch.Generator().manual_seed(1))
    ref, ref_w, ref_b = grads(reference, x, w, b, gout)
    out, got_w, got_b = grads(fused.conv1_pool_relu, x, w, b, gout)
    # the input's gradient (what attacks follow), with the weights frozen as an attack holds them
    xs = [x.clone().requires_grad_() for _ in range(2)]
    for xi, fn in zip(xs, (reference, fused.conv1_pool_relu)):
        fn(xi, w.detach(), b.detach()).backward(gout)
    torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-5, atol=1e-5 * float(xs[0].grad.abs().max()))
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=2e-6)        # summed in another order
    torch.testing.assert_close(got_w, ref_w, rtol=1e-5, atol=1e-5 * float(ref_w.abs().max()))
    torch.testing.assert_close(got_b, ref_b, rtol=1e-5, atol=1e-5 * float(ref_b.abs().max()))


def test_ties_go_to_the_first_candidate_as_in_max_pool2d():
    """Only the centre tap is non-zero, so a 2×2 block of equal pixels gives four equal candidates
    whose other taps see different pixels: the gradient of those taps tells which one won."""
    g = torch.Generator().manual_seed(2)
    blocks = torch.randint(0, 3, (4, 1, 14, 14), generator=g).float()
    x = blocks.repeat_interleave(2, 2).repeat_interleave(2, 3)
    x[:, :, ::3, 1::5] += 7.0              # pixels the centre tap never ties on, seen by the off-centre taps
    w = torch.zeros(32, 1, 3, 3)
    w[:, 0, 1, 1] = torch.linspace(0.5, 2.0, 32)
    w.requires_grad_()
    b = torch.zeros(32, requires_grad=True)
    gout = torch.rand(4, 32, 14, 14, generator=g)
    ref, ref_w, _ = grads(reference, x, w, b, gout)
    out, got_w, _ = grads(fused.conv1_pool_relu, x, w, b, gout)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(got_w, ref_w, rtol=1e-5, atol=1e-4)
    # The control: the last candidate winning ties instead would route other pixels.
    last = F.relu(F.max_pool2d(F.conv2d(x, w, b, padding=1).flip(2, 3), 2)).flip(2, 3)
    w.grad = None
    last.backward(gout)
    assert (w.grad - ref_w).abs().max() > 1.0


def test_nans_propagate_as_through_torchs_operators():
    x, (w, b) = digits_like(2), weights()
    x[0, 0, 6, 6] = float("nan")        # feeds later candidates of its windows (a first NaN wins anyway)
    x[1, 0, 9, 9] = x[1, 0, 10, 10] = float("nan")
    with torch.no_grad():
        ref, out = reference(x, w, b), fused.conv1_pool_relu(x, w, b)
    assert torch.equal(ref.isnan(), out.isnan()) and int(out.isnan().sum()) > 0
    torch.testing.assert_close(out.nan_to_num(), ref.nan_to_num(), rtol=1e-6, atol=2e-6)


def test_under_bf16_autocast_the_output_is_the_fp32_result_rounded_to_bf16():
    x, (w, b) = digits_like(16), weights()
    with torch.no_grad():
        exact = fused.conv1_pool_relu(x, w, b)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = fused.conv1_pool_relu(x, w, b)
    assert half.dtype == torch.bfloat16
    assert torch.equal(half.view(torch.int16), exact.to(torch.bfloat16).view(torch.int16))   # bit for bit
    # and within bf16 rounding of torch's own bf16 convolution, which rounds its inputs first
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch_half = reference(x, w, b)
    assert float((half.float() - torch_half.float()).abs().max()) < 0.05 * float(exact.abs().max())


def test_bf16_gradients_match_the_fp32_kernels_within_bf16_rounding():
    x, (w, b) = digits_like(32), weights()
    gout = torch.randn(32, 32, 14, 14, generator=torch.Generator().manual_seed(3))
    _, w32, b32 = grads(fused.conv1_pool_relu, x, w, b, gout)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, w16, b16 = grads(fused.conv1_pool_relu, x, w, b, gout)
    assert float((w16 - w32).abs().max()) < 1e-2 * float(w32.abs().max())
    assert float((b16 - b32).abs().max()) < 1e-2 * float(b32.abs().max())


def test_a_training_step_through_the_kernel_equals_one_through_torchs_operators(monkeypatch):
    torch.manual_seed(0)
    plain = Net().train()
    fast = Net().train()
    fast.load_state_dict(plain.state_dict())
    fast.fused_kernels = True
    x = (digits_like(64, seed=4) * 0.3081 + 0.1307).clamp(0, 1)
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(5))
    ran: list[str] = []
    for fn in (fused._Conv1PoolReluFn, fused._Pool2ReluFlattenFn):
        monkeypatch.setattr(fn, "apply", staticmethod(lambda *a, _r=fn.apply, _n=fn.__name__: ran.append(_n) or _r(*a)))
    for m in (plain, fast):
        F.cross_entropy(m(x), y).backward()
    assert ran == ["_Conv1PoolReluFn", "_Pool2ReluFlattenFn"]         # the kernels did run
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5 * float(p.grad.abs().max()), msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pool2_is_bit_for_bit_torchs_pool_relu_flatten_ties_and_nans_included(dtype):
    g = torch.Generator().manual_seed(6)
    y = torch.randint(-3, 4, (9, 32, 14, 14), generator=g).to(dtype)       # small integers: many ties
    y[0, 3, 4, 5] = float("nan")                     # a later candidate: the NaN must still win
    y[1, 2, 4, 5] = y[1, 2, 5, 5] = float("nan")     # two NaNs: the last one takes the gradient
    y = y.contiguous(memory_format=torch.channels_last).requires_grad_()
    gout = torch.randn(9, 32 * 49, generator=g).to(dtype)
    ref = F.relu(F.max_pool2d(y, 2)).flatten(1)
    (ref_y,) = torch.autograd.grad(ref, y, gout)
    out = fused.pool2_relu_flatten(y)
    (got_y,) = torch.autograd.grad(out, y, gout)
    assert out.dtype == dtype and out.shape == (9, 32 * 49) and out.is_contiguous()
    assert torch.equal(out.isnan(), ref.isnan()) and int(out.isnan().sum()) == 2
    assert torch.equal(out.nan_to_num(), ref.nan_to_num())
    assert torch.equal(got_y, ref_y) and got_y.is_contiguous(memory_format=torch.channels_last)
    # the control: the gradient of the last tied candidate winning differs
    last = F.relu(F.max_pool2d(y.flip(2, 3), 2)).flip(2, 3).flatten(1)
    (last_y,) = torch.autograd.grad(last, y, gout)
    assert not torch.equal(last_y, ref_y)


@pytest.mark.parametrize("case", ["pool2 hooked", "not channels_last", "float16"])
def test_the_pool2_kernel_stands_aside_where_it_does_not_apply(case):
    m = Net()
    y = torch.rand(2, 32, 14, 14).contiguous(memory_format=torch.channels_last)
    assert fused.pool2_applies(m, y)                  # the control
    if case == "pool2 hooked":
        m.pool2.register_forward_hook(lambda *a: None)
    if case == "not channels_last":
        y = y.contiguous()
    if case == "float16":
        y = y.half()
    assert not fused.pool2_applies(m, y)


@pytest.mark.parametrize("case", ["no gradients (evaluation)", "flag off", "hook on conv1", "batch-norm",
                                  "float64", "eval mode with gradients (attack steps)", "input needs its gradient"])
def test_the_kernel_stands_aside_where_it_does_not_apply(case, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(fused, "conv1_pool_relu", lambda *a: calls.append("conv1") or reference(*a))
    monkeypatch.setattr(fused, "pool2_relu_flatten",
                        lambda y: calls.append("pool2") or F.relu(F.max_pool2d(y, 2)).flatten(1))
    m = Net(batch_norm=case == "batch-norm").train().to(memory_format=torch.channels_last)
    m.fused_kernels = case != "flag off"
    x = torch.rand(2, 1, 28, 28)
    if case.startswith("eval mode"):
        m.eval()
    if case == "input needs its gradient":
        x.requires_grad_()
    if case == "hook on conv1":                     # activations and anatomy read conv1's output
        m.conv1.register_forward_hook(lambda *a: None)
    if case == "float64":
        m, x = m.double(), x.double()
    with torch.set_grad_enabled(case != "no gradients (evaluation)"):
        m(x)
    expected = {"hook on conv1": ["pool2"], "eval mode with gradients (attack steps)": ["conv1", "pool2"],
                "input needs its gradient": ["conv1", "pool2"]}.get(case, [])
    assert calls == expected
    # the control: the same model and input where both apply
    calls.clear()
    ok = Net().train().to(memory_format=torch.channels_last)
    ok.fused_kernels = True
    ok(torch.rand(2, 1, 28, 28))
    assert calls == ["conv1", "pool2"]


def test_without_a_compiler_there_is_no_kernel_and_the_reason_is_given(tmp_path):
    with pytest.raises(fused.KernelError, match="no C compiler"):
        fused.build(cc=str(tmp_path / "no-such-cc"), cache=tmp_path)
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'fake cc 1.0' && exit 0\necho 'fatal: out of luck' >&2; exit 1\n")
    broken.chmod(0o755)
    with pytest.raises(fused.KernelError, match="fatal: out of luck"):
        fused.build(cc=str(broken), cache=tmp_path)
    assert not list((tmp_path / "kernels").glob("*.so"))            # nothing half-built is left


def test_a_build_is_cached_and_reused(tmp_path):
    k = fused.build(cache=tmp_path)
    built = list((tmp_path / "kernels").glob("fused-*.so"))
    assert len(built) == 1 and "fused C kernel" in k.description
    stamp = built[0].stat().st_mtime_ns
    fused.build(cache=tmp_path)
    assert [p.stat().st_mtime_ns for p in (tmp_path / "kernels").glob("fused-*.so")] == [stamp]


def test_a_library_that_computes_something_else_is_refused(tmp_path, monkeypatch):
    """The self-check is a real check: a build whose forward is off by a little is not trusted."""
    real = fused._Conv1PoolReluFn.forward

    def off(ctx, *a):
        return real(ctx, *a) * 1.001
    monkeypatch.setattr(fused._Conv1PoolReluFn, "forward", staticmethod(off))
    with pytest.raises(fused.KernelError, match="disagrees"):
        fused.build(cache=tmp_path)


@pytest.mark.mnist
def test_run_json_says_which_conv1_trained(tmp_path, mnist_small):
    from cnnlab.config import preset
    from cnnlab.train import train
    for name, overrides in [("on", {}), ("off", {"fused_kernels": False})]:
        cfg = preset("smoke", train_subset=512, **overrides)
        train(cfg, split=mnist_small, out=tmp_path / name, progress=False, log=lambda s: None, figures=False)
    info = {n: json.loads((tmp_path / n / "run.json").read_text())["hardware"]["kernels"] for n in ("on", "off")}
    assert info["on"].startswith("cnnlab's fused C kernels")
    assert info["off"] == "torch's operators (fused_kernels is off)"


@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "autocast"])
def test_a_first_use_inside_no_grad_inference_or_autocast_builds_and_checks(tmp_path, context):
    ctx = {"no_grad": torch.no_grad(), "inference_mode": torch.inference_mode(),
           "autocast": torch.autocast("cpu", dtype=torch.bfloat16)}[context]
    with ctx:
        k = fused.build(cache=tmp_path)
    assert "fused C kernels" in k.description


def test_a_build_for_the_baseline_instruction_set_computes_the_same(tmp_path):
    """Without -march=native (the fallback build, and what a CPU without AVX-512 gets) the
    compiler emulates the 16-lane vectors; the result must still pass the check against torch."""
    path = tmp_path / "baseline.so"
    fused._compile([CC], ["-O3", "-shared", "-fPIC", "-march=x86-64"] if fused.platform.machine() == "x86_64"
                   else ["-O3", "-shared", "-fPIC"], (fused.resources.files("cnnlab") / "csrc" / "fused.c").read_bytes(),
                   path)
    k = fused.Kernel(fused._load(path), openmp=False, description="baseline")
    fused._self_check(k)                      # raises KernelError if it computes anything else
    x, (w, b) = digits_like(7), weights()
    with torch.no_grad():
        torch.testing.assert_close(fused._Conv1PoolReluFn.apply(x, w, b, k, False, False), reference(x, w, b),
                                   rtol=1e-6, atol=2e-6)


@pytest.mark.parametrize("case", ["x 10×10", "x on the meta device", "bias of 31", "y in NCHW", "y float16"])
def test_the_c_code_is_never_handed_what_it_does_not_expect(case):
    x, (w, b) = digits_like(2), weights()
    y = torch.rand(2, 32, 14, 14).contiguous(memory_format=torch.channels_last)
    if case == "x 10×10":
        x = torch.rand(2, 1, 10, 10)
    if case == "x on the meta device":
        x = x.to("meta")
    if case == "bias of 31":
        b = b[:31]
    if case == "y in NCHW":
        y = y.contiguous()
    if case == "y float16":
        y = y.half()
    with pytest.raises(ValueError, match="fused"):
        if case.startswith("y"):
            fused.pool2_relu_flatten(y)
        else:
            fused.conv1_pool_relu(x, w, b)
    # the control: the same calls with what they expect
    fused.conv1_pool_relu(digits_like(2), *weights())
    fused.pool2_relu_flatten(torch.rand(2, 32, 14, 14).contiguous(memory_format=torch.channels_last))


def test_a_second_derivative_through_the_kernels_is_refused_not_silently_zero():
    """A gradient penalty through the kernel must fail loudly: without once_differentiable its
    term would silently count as a constant."""
    y = torch.rand(2, 32, 14, 14).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = fused.pool2_relu_flatten(y)
    (g,) = torch.autograd.grad(out.pow(2).sum(), y, create_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        (out.sum() + g.pow(2).sum()).backward()
    # the control: through torch's operators the same penalty has a gradient
    ref = torch.relu(F.max_pool2d(y, 2)).flatten(1)
    (g2,) = torch.autograd.grad(ref.pow(2).sum(), y, create_graph=True)
    (ref.sum() + g2.pow(2).sum()).backward()
    assert y.grad is not None and float(y.grad.abs().sum()) > 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_hanging_compiler_is_stopped_with_its_children(tmp_path, monkeypatch):
    pids = tmp_path / "pids"
    hang = tmp_path / "cc"
    hang.write_text(f"#!/bin/sh\n[ \"$1\" = --version ] && echo 'gcc (fake) 1.0' && exit 0\n"
                    f"sleep 60 & echo $! >> {pids}\nwait\n")
    hang.chmod(0o755)
    monkeypatch.setattr(fused, "COMPILE_TIMEOUT", 1)
    t0 = time.monotonic()
    with pytest.raises(fused.KernelError, match="ran past 1 s"):
        fused.build(cc=str(hang), cache=tmp_path)
    assert time.monotonic() - t0 < 10                       # one attempt, not one per flag set
    child = int(pids.read_text().split()[0])
    time.sleep(0.2)
    assert _gone(child), "the compiler's child is still running"


def _gone(pid: int) -> bool:
    """No such process, or only its exit status left for a parent to collect (a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_cc_may_carry_arguments_and_a_build_failing_its_check_falls_back(tmp_path, monkeypatch):
    real, calls = fused._self_check, []

    def fail_first(k):
        calls.append(k.description)
        if len(calls) == 1:
            raise fused.KernelError("pretend the -march=native build computes something else")
        real(k)
    monkeypatch.setattr(fused, "_self_check", fail_first)
    k = fused.build(cc=f"env {CC}", cache=tmp_path)
    assert "-march=native" in calls[0] and "-march=native" not in k.description and len(calls) == 2
