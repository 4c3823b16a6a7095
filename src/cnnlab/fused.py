"""Two blocks of the network as cnnlab's own C kernels, for training on a CPU.

1. conv1 → 2×2 max-pool → ReLU. conv1 has one input channel, so oneDNN's convolution does little
   arithmetic per byte, and its batch-128 output (128×32×28×28, 6.4 MB in bf16) then went through
   memory four more times: max-pool with indices, the pool's backward (a zero-filled gradient of
   the same size, then a scatter) and the convolution's weight gradient. The kernel keeps the four
   candidates of each pooled position in registers and never stores the full-resolution output.
2. pool2 → ReLU → flatten, and the gradient back in one pass (no zero-filled buffer, no int64
   indices, no ReLU or layout copy of its own).

Through torch's operators the conv1 block was more than half of a CPU training step; the kernel
takes about a seventh of that time (BENCHMARKS.md § Part 11, third round).

What they compute is the network's own function, checked against torch's operators. conv1: in fp32
the output matches conv2d → max_pool2d → relu to float rounding (the products are summed in another
order), ties go to the first candidate as in max_pool2d, NaNs propagate as there; under bf16
autocast the output is the fp32 result rounded to bf16 (torch's convolution would round its inputs
to bf16 first, so this is the more exact of the two); its backward gives the weight, bias and
input gradients. pool2: max and ReLU only pick values, so output and gradient are bit for bit
torch's. Net uses them only where gradients are taken (train()'s steps; robustness's bf16 attack
steps) and never with a hook on those layers: predictions and evaluations run torch's operators.

How: the C source ships with the package (cnnlab/csrc/fused.c). On first use it is compiled with
the system's C compiler (`$CC`, else cc, gcc or clang) into the user cache (`cache_dir()/kernels`,
one file per source, compiler, flags and CPU), loaded with ctypes, and checked once against torch's
operators on small batches before it is trusted. Where PyTorch runs on GNU OpenMP the kernels are
built with -fopenmp and run on PyTorch's own OpenMP threads. With no compiler, a failed build or a
failed check, training uses torch's operators and run.json's `hardware.kernels` says why;
`TrainConfig.fused_kernels = False` (`--no-fused-kernels`) turns them off.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.autograd.function import once_differentiable

if TYPE_CHECKING:
    from .model import Net

SOURCE = "fused.c"
IN_SHAPE = (1, 28, 28)     # the network's input: one channel, 28×28 pixels
C_OUT, POOLED = 32, 14     # conv1's channels; the pooled output is 14×14
COMPILE_TIMEOUT = 120      # seconds


@dataclass(frozen=True)
class Kernel:
    lib: ctypes.CDLL
    openmp: bool           # runs on PyTorch's OpenMP threads; else on the calling thread
    description: str       # for run.json: what was built, with what


_kernel: Kernel | None = None
_reason: str | None = None       # why there is no kernel, once one was asked for and refused


def kernel() -> Kernel | None:
    """The compiled kernel, building and checking it on first use; None (and `describe()` says
    why) where it cannot be had. Never raises."""
    global _kernel, _reason
    if _kernel is None and _reason is None:
        try:
            _kernel = build()
        except KernelError as e:
            _reason = str(e)
        except (RuntimeError, OSError, ValueError) as e:      # whatever else: torch's operators still work
            _reason = f"the kernel could not be set up ({type(e).__name__}: {str(e)[:160]})"
    return _kernel


def describe() -> str:
    """Which kernels this process trains with, for run.json."""
    if _kernel is not None:
        return _kernel.description
    return f"torch's operators ({_reason})" if _reason else "torch's operators"


class KernelError(Exception):
    """The kernel could not be built, loaded or trusted (internal: training falls back)."""


def build(cc: str | None = None, cache: Path | None = None) -> Kernel:
    """Compile (or find in the cache), load and check the kernel; KernelError saying why not."""
    from .data import cache_dir
    command = shlex.split(cc or os.environ.get("CC") or "") or [
        next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), "cc, gcc or clang")]
    if not shutil.which(command[0]):
        raise KernelError(f"no C compiler found ({command[0]}); set CC to one")
    source = resources.files("cnnlab").joinpath("csrc").joinpath(SOURCE).read_bytes()
    about = _run(command + ["--version"], 30)
    version = (about.strip().splitlines() or [command[0]])[0][:80]
    # -fopenmp only with GCC, whose libgomp is the runtime PyTorch's own threads already run on
    # (another compiler's -fopenmp would load a second runtime with threads of its own).
    is_gcc = "clang" not in about.lower() and ("gcc" in about.lower() or "free software foundation" in about.lower())
    openmp = is_gcc and _torch_uses_gomp()
    folder = (cache or cache_dir()) / "kernels"
    errors = []
    # -march=native lets the compiler use every vector instruction of this CPU (the cache key holds
    # the CPU's flags, so a shared cache never hands one machine another's build). Each later
    # attempt asks the compiler for less.
    attempts = [(["-march=native"], openmp), ([], openmp)] + ([(["-march=native"], False), ([], False)] if openmp else [])
    where = [source, " ".join(command).encode(), version.encode(), _cpu_flags().encode(), platform.machine().encode()]
    for tune, omp in attempts:
        flags = ["-O3", "-shared", "-fPIC", *tune, *(["-fopenmp"] if omp else [])]
        key = hashlib.sha256(b"\0".join([*where, " ".join(flags).encode()])).hexdigest()[:20]
        path = folder / f"fused-{key}.so"
        try:
            if not _trusted_folder(folder):
                # a cache another user could write into is never loaded from: build privately
                private = Path(tempfile.mkdtemp(prefix="cnnlab-kernels-"))
                path = private / path.name
            if not path.is_file() or not _trusted_file(path):
                _compile(command, flags, source, path)
            k = Kernel(_load(path), omp, f"cnnlab's fused C kernels ({version}, {' '.join(flags[:1] + flags[3:])}"
                                         f"{', on PyTorch OpenMP threads' if omp else ', one thread'})")
            _self_check(k)
            return k
        except CompilerHung as e:       # the next attempt would hang as long again
            raise KernelError(str(e)) from None
        except KernelError as e:
            errors.append(str(e))
    raise KernelError("; ".join(dict.fromkeys(errors)))


class CompilerHung(KernelError):
    """The compiler ran past its time limit (it and its children were stopped)."""


def _run(argv: list[str], timeout: float) -> str:
    """stdout + stderr of `argv`; CompilerHung after `timeout` s, with the whole process group
    stopped (a compiler driver's children — cc1, as, ld — would otherwise keep running)."""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    except OSError as e:
        raise KernelError(f"cannot run {argv[0]}: {e.strerror or e}") from None
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise CompilerHung(f"{argv[0]} ran past {timeout:g} s and was stopped") from None
    if proc.returncode != 0:
        last = (out.strip().splitlines() or ["no message"])[-1]
        raise KernelError(f"{' '.join(argv[:1] + [a for a in argv[1:] if a.startswith('-')])} failed: {last[:200]}")
    return out


def _torch_uses_gomp() -> bool:
    """PyTorch's threads are GNU OpenMP's and its libgomp is loaded: a -fopenmp build then binds to
    that same runtime (by its soname) instead of starting a second pool of threads."""
    if "OpenMP" not in torch.__config__.parallel_info() or not sys.platform.startswith("linux"):
        return False
    try:
        return "libgomp" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _owned_private(st: os.stat_result) -> bool:
    """Owned by this user (or root) and writable by no one else."""
    return st.st_uid in (os.getuid(), 0) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _trusted_folder(folder: Path) -> bool:
    """The kernel cache folder may be loaded from: created here if missing (0700), a real folder
    (not a link) that this user owns and no one else can write, as is every folder above it up to
    the home folder or the file system's root (a sticky /tmp counts: others cannot replace
    what is ours in it)."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode) or not _owned_private(st):
            return False
        for up in folder.resolve().parents:
            st = os.stat(up)
            if not (_owned_private(st) or (st.st_mode & stat.S_ISVTX and st.st_uid == 0)):
                return False
            if up == Path.home():
                break
        return True
    except OSError:
        return False


def _trusted_file(path: Path) -> bool:
    """A cached library may be loaded (its constructors run in this process): a regular file,
    not a link, owned by this user, writable by no one else."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _compile(command: list[str], flags: list[str], source: bytes, path: Path) -> None:
    """Build into a temporary file beside `path`, then rename: a reader sees a whole library or none."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as tmp:
            src, out = Path(tmp) / SOURCE, Path(tmp) / path.name
            src.write_bytes(source)
            _run([*command, *flags, "-o", str(out), str(src)], COMPILE_TIMEOUT)
            os.replace(out, path)
    except OSError as e:
        raise KernelError(f"cannot build into {path.parent}: {e.strerror or e}") from None


def _load(path: Path) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise KernelError(f"cannot load {path.name}: {e}") from None
    try:
        return _bind(lib)
    except AttributeError as e:       # a library without cnnlab's functions: not ours
        raise KernelError(f"{path.name} lacks cnnlab's kernel functions ({e}); not used") from None


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.cnnlab_conv1pool_forward.argtypes = [p, p, p, p, p, i, i, i]
    lib.cnnlab_conv1pool_backward.argtypes = [p, p, p, p, i, i, i, p, p]
    lib.cnnlab_conv1pool_backward_input.argtypes = [p, p, p, p, i, i, i, p]
    lib.cnnlab_pool2_forward.argtypes = [p, p, p, i, i, i]
    lib.cnnlab_pool2_backward.argtypes = [p, p, p, p, i, i, i]
    for f in (lib.cnnlab_conv1pool_forward, lib.cnnlab_conv1pool_backward, lib.cnnlab_conv1pool_backward_input,
              lib.cnnlab_pool2_forward, lib.cnnlab_pool2_backward):
        f.restype = i
    return lib


def _self_check(k: Kernel) -> None:
    """A build is trusted only once it computes what torch's operators compute, here, on this CPU.
    The first use may come inside no_grad, inference_mode or autocast: the check makes its own."""
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
        _check_against_torch(k)


def _check_against_torch(k: Kernel) -> None:
    F = torch.nn.functional
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, *IN_SHAPE, generator=g)
    w = (torch.randn(C_OUT, 1, 3, 3, generator=g) / 3).requires_grad_()
    b = (torch.randn(C_OUT, generator=g) / 10).requires_grad_()
    grad = torch.randn(5, C_OUT, POOLED, POOLED, generator=g)
    x.requires_grad_()
    ref = torch.relu(F.max_pool2d(F.conv2d(x, w, b, padding=1), 2))
    ref_x, ref_w, ref_b = torch.autograd.grad(ref, (x, w, b), grad)
    out = _Conv1PoolReluFn.apply(x, w, b, k, False, True)
    got_x, got_w, got_b = torch.autograd.grad(out, (x, w, b), grad)
    x = x.detach()
    err = max(float((out - ref).detach().abs().max()), *(float((got - r).abs().max() / r.abs().max())
                                                         for got, r in ((got_x, ref_x), (got_w, ref_w), (got_b, ref_b))))
    half = _Conv1PoolReluFn.apply(x, w, b, k, True, False)          # bf16: the fp32 result, rounded
    bad = None if err < 1e-4 else f"max error {err:.2g}"
    if bad is None and not torch.equal(half.view(torch.int16), out.detach().to(torch.bfloat16).view(torch.int16)):
        bad = "its bf16 output is not its fp32 output rounded"
    x[0, 0, 6, 6] = float("nan")                       # the second or later candidate of its windows
    if bad is None and not torch.equal(_Conv1PoolReluFn.apply(x, w, b, k, False, False).isnan(),
                                       F.max_pool2d(F.conv2d(x, w, b, padding=1), 2).isnan()):
        bad = "NaNs do not propagate as through max_pool2d"
    if bad:
        raise KernelError(f"the built conv1 kernel disagrees with torch's operators ({bad}); not used")
    for dtype in (torch.float32, torch.bfloat16):     # max and ReLU only pick values: exact
        y = torch.randn(3, C_OUT, POOLED, POOLED, generator=g).round(decimals=1).to(dtype)
        y[0, 3, 4, 5] = y[1, 2, 4, 5] = y[1, 2, 5, 5] = float("nan")   # NaNs in later candidates
        y = y.contiguous(memory_format=torch.channels_last).requires_grad_()
        grad = torch.randn(3, C_OUT * 49, generator=g).to(dtype)
        ref = torch.relu(F.max_pool2d(y, 2)).flatten(1)
        (ref_y,) = torch.autograd.grad(ref, y, grad)
        out = _Pool2ReluFlattenFn.apply(y, k, True)
        (got_y,) = torch.autograd.grad(out, y, grad)
        if not (torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.nan_to_num(), ref.nan_to_num())
                and torch.equal(got_y, ref_y)):
            raise KernelError(f"the built pool2 kernel disagrees with torch's operators ({dtype}); not used")


class _Conv1PoolReluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, k: Kernel, half: bool,
                track: bool) -> torch.Tensor:
        _expect(x, "x", (x.shape[0], *IN_SHAPE), (torch.float32,))
        _expect(weight, "conv1 weight", (C_OUT, 1, 3, 3), (torch.float32,))
        _expect(bias, "conv1 bias", (C_OUT,), (torch.float32,))
        n = x.shape[0]
        x = x.detach().contiguous()
        wt = weight.detach().reshape(C_OUT, 9).t().contiguous()
        b = bias.detach().contiguous()
        out = torch.empty((n, C_OUT, POOLED, POOLED), dtype=torch.bfloat16 if half else torch.float32,
                          memory_format=torch.channels_last)
        need_grad = track and any(ctx.needs_input_grad[:3])
        winners = torch.empty((n, POOLED, POOLED, C_OUT), dtype=torch.uint8) if need_grad else None
        k.lib.cnnlab_conv1pool_forward(x.data_ptr(), wt.data_ptr(), b.data_ptr(), out.data_ptr(),
                                       winners.data_ptr() if winners is not None else None,
                                       int(half), n, _threads(k))
        if need_grad:
            ctx.save_for_backward(x, wt, out, winners)
            ctx.kernel, ctx.weight_shape = k, weight.shape
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None,
                                                              torch.Tensor | None, None, None, None]:
        x, wt, out, winners = ctx.saved_tensors
        k: Kernel = ctx.kernel
        grad_out = grad_out.to(out.dtype).contiguous(memory_format=torch.channels_last)
        half, n, threads = int(out.dtype == torch.bfloat16), x.shape[0], _threads(k)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:                 # attacks: the gradient of the image
            grad_x = torch.empty((n, *IN_SHAPE))
            k.lib.cnnlab_conv1pool_backward_input(wt.data_ptr(), out.data_ptr(), winners.data_ptr(),
                                                  grad_out.data_ptr(), half, n, threads, grad_x.data_ptr())
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            scratch = torch.empty(threads * 10 * C_OUT)
            grad = torch.empty(10 * C_OUT)
            k.lib.cnnlab_conv1pool_backward(x.data_ptr(), out.data_ptr(), winners.data_ptr(), grad_out.data_ptr(),
                                            half, n, threads, scratch.data_ptr(), grad.data_ptr())
            grad_w, grad_b = grad[:9 * C_OUT].view(9, C_OUT).t().reshape(ctx.weight_shape), grad[9 * C_OUT:]
        return grad_x, grad_w, grad_b, None, None, None


class _Pool2ReluFlattenFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, k: Kernel, track: bool) -> torch.Tensor:
        _expect(y, "conv2 output", (y.shape[0], C_OUT, POOLED, POOLED), (torch.float32, torch.bfloat16))
        if not y.is_contiguous(memory_format=torch.channels_last):
            raise ValueError("the fused pool2 kernel reads conv2's output in channels_last memory format")
        n, half = y.shape[0], y.dtype == torch.bfloat16
        out = torch.empty((n, C_OUT * 49), dtype=y.dtype)
        winners = torch.empty((n, 7, 7, C_OUT), dtype=torch.uint8) if track and ctx.needs_input_grad[0] else None
        k.lib.cnnlab_pool2_forward(y.data_ptr(), out.data_ptr(), winners.data_ptr() if winners is not None else None,
                                   int(half), n, _threads(k))
        if winners is not None:
            ctx.save_for_backward(out, winners)
            ctx.kernel = k
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        out, winners = ctx.saved_tensors
        k: Kernel = ctx.kernel
        grad_out = grad_out.to(out.dtype).contiguous()
        n = out.shape[0]
        grad_y = torch.empty((n, C_OUT, POOLED, POOLED), dtype=out.dtype, memory_format=torch.channels_last)
        k.lib.cnnlab_pool2_backward(out.data_ptr(), winners.data_ptr(), grad_out.data_ptr(), grad_y.data_ptr(),
                                    int(out.dtype == torch.bfloat16), n, _threads(k))
        return grad_y, None, None


def _expect(t: torch.Tensor, name: str, shape: tuple[int, ...], dtypes: tuple[torch.dtype, ...]) -> None:
    """The C code trusts shapes, types and the device: anything else is refused before it runs."""
    if t.device.type != "cpu" or tuple(t.shape) != shape or t.dtype not in dtypes:
        raise ValueError(f"the fused kernels take {name} as a CPU tensor of shape {list(shape)} and type "
                         f"{' or '.join(str(d) for d in dtypes)}; got {t.device.type} {list(t.shape)} {t.dtype}")


def _threads(k: Kernel) -> int:
    return torch.get_num_threads() if k.openmp else 1


def applies(model: Net, x: torch.Tensor) -> bool:
    """Whether the fused kernel can stand in for `model`'s conv1 → pool1 → relu1 on input `x`."""
    w = model.conv1.weight
    return (model.bn1 is None and x.device.type == "cpu" and x.dtype == torch.float32
            and tuple(x.shape[1:]) == IN_SHAPE
            and w.device.type == "cpu" and w.dtype == torch.float32
            and not any(_hooked(m) for m in (model.conv1, model.relu1, model.pool1))
            and kernel() is not None)


def pool2_applies(model: Net, y: torch.Tensor) -> bool:
    """Whether the fused kernel can stand in for `model`'s pool2 → relu2 → flatten on conv2's output `y`."""
    return (model.bn2 is None and y.device.type == "cpu" and y.dtype in (torch.float32, torch.bfloat16)
            and tuple(y.shape[1:]) == (C_OUT, POOLED, POOLED) and y.is_contiguous(memory_format=torch.channels_last)
            and not any(_hooked(m) for m in (model.pool2, model.relu2, model.flatten))
            and kernel() is not None)


def _hooked(m: torch.nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def conv1_pool_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """relu(max_pool2d(conv2d(x, weight, bias, padding=1), 2)) through the kernel (see `applies`).
    Under CPU bf16 autocast the result is bf16, as the convolution's would be."""
    if bias is None:
        bias = weight.new_zeros(C_OUT)
    half = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return _Conv1PoolReluFn.apply(x, weight, bias, _built(), half, torch.is_grad_enabled())


def pool2_relu_flatten(y: torch.Tensor) -> torch.Tensor:
    """relu(max_pool2d(y, 2)).flatten(1) through the kernel (see `pool2_applies`): bit for bit."""
    return _Pool2ReluFlattenFn.apply(y, _built(), torch.is_grad_enabled())


def _built() -> Kernel:
    k = kernel()
    if k is None:
        raise KernelError(describe())
    return k
