"""Reading a learner's weights file: the tensors of a state dict, nothing else unpickled.

`torch.save(model.state_dict(), ...)` files are read with `torch.load(weights_only=True)` after
their zip is checked (no TorchScript, a data.pkl, bounded content); `.safetensors` files with
safetensors' own parser. Checkpoint dicts that hold a state dict under a usual key are unwrapped.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import WeightsImportError
from .schema import read_bytes_limited

MAX_WEIGHTS_BYTES = 64 * 1024 * 1024   # the assignment's network is 3.3 MB in fp32 (6.7 MB in fp64)
SAVE_HINT = "save the weights with torch.save(model.state_dict(), 'model.pt')"
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights")


def read_weights(path: str | Path) -> tuple[OrderedDict[str, torch.Tensor], str, str]:
    """The tensors of a state dict file (torch.save or safetensors), its format's name, its SHA-256."""
    path = Path(path)
    data = read_bytes_limited(path, MAX_WEIGHTS_BYTES, WeightsImportError, what="weights file")
    digest = hashlib.sha256(data).hexdigest()
    if data[:4] == b"PK\x03\x04":
        return flatten_state_dict(_torch_load(data, path), path), "torch.save", digest
    if len(data) >= 10 and data[8:9] == b"{":          # an 8-byte header length, then its JSON
        return _read_safetensors(data, path), "safetensors", digest
    if data[:1] == b"\x80":                            # torch.save's legacy (pre-1.6, non-zip) format
        return flatten_state_dict(_torch_load(data, path), path), "torch.save (legacy)", digest
    raise WeightsImportError(f"{path} is neither a torch.save file nor a .safetensors file "
                             f"(it starts with {data[:8]!r}); {SAVE_HINT}")


def _torch_load(data: bytes, path: Path) -> Any:
    if data[:4] == b"PK\x03\x04":
        _check_zip(data, path)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:          # noqa: BLE001  (any failure of the restricted unpickler is one line)
        text = str(e)
        if "Unsupported global" in text or "Weights only load failed" in text:
            what = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            found = f" (it needs {what.group(1)})" if what else ""
            raise WeightsImportError(f"{path} holds a whole pickled model or other objects{found}, not a state dict; "
                                     f"cnnlab never unpickles code: {SAVE_HINT}") from None
        raise WeightsImportError(f"{path} is not a readable torch.save file ({type(e).__name__}: "
                                 f"{text.splitlines()[0][:120] if text else 'no message'})") from None


def _check_zip(data: bytes, path: Path) -> None:
    """A torch.save zip before torch opens it: no TorchScript, a data.pkl, bounded content."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise WeightsImportError(f"{path} is a damaged zip file ({str(e)[:100]})") from None
    names = [i.filename for i in infos]
    if any("/code/" in n or n.endswith("constants.pkl") for n in names):
        raise WeightsImportError(f"{path} is a TorchScript file (torch.jit.save), not a state dict; {SAVE_HINT}")
    if not any(n.endswith("data.pkl") for n in names):
        raise WeightsImportError(f"{path} is a zip archive but not a torch.save file (no data.pkl); {SAVE_HINT}")
    if sum(i.file_size for i in infos) > MAX_WEIGHTS_BYTES:
        raise WeightsImportError(f"{path} unpacks to more than {MAX_WEIGHTS_BYTES:,} bytes; refusing to read it")


def _read_safetensors(data: bytes, path: Path) -> OrderedDict[str, torch.Tensor]:
    from safetensors.torch import load
    try:
        tensors = load(data)
    except Exception as e:          # noqa: BLE001  (safetensors' parser: one line for any malformed file)
        raise WeightsImportError(f"{path} is not a valid safetensors file ({type(e).__name__}: "
                                 f"{str(e)[:120]})") from None
    # A safetensors header does not keep the writer's order: names in natural order stand in for it.
    return OrderedDict(sorted(tensors.items(), key=lambda kv: _natural(kv[0])))


def _natural(name: str) -> list:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


def flatten_state_dict(obj: Any, path: Path | str) -> OrderedDict[str, torch.Tensor]:
    """A state dict from what torch.load returned: a mapping of tensors, possibly nested, or a
    checkpoint dict holding one under a usual key ("model_state_dict", "state_dict", ...)."""
    if not isinstance(obj, Mapping):
        raise WeightsImportError(f"{path} holds a {type(obj).__name__}, not a state dict; {SAVE_HINT}")
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        if inner:
            obj = obj[inner[0]]
    out: OrderedDict[str, torch.Tensor] = OrderedDict()

    def walk(d: Mapping, prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, torch.Tensor):
                out[key] = v
            elif isinstance(v, Mapping):
                walk(v, key + ".")
            else:
                raise WeightsImportError(f"{path}: entry {key!r} is a {type(v).__name__}, not a tensor; a state "
                                         f"dict holds only tensors ({SAVE_HINT})")
    walk(obj, "")
    if not out:
        raise WeightsImportError(f"{path} holds no tensors; {SAVE_HINT}")
    return out
