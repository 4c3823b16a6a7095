"""Validated readers for the files cnnlab reads back: run.json, the saved state, any JSON it
parses from a user or a browser, and gzip/tar streams. A leaf module (imports only errors and
config), so every reader shares one set of limits.

Every read is bounded before anything is parsed:
  - a file is read only up to a byte limit (a 3 GB file or a link to /dev/zero costs nothing);
  - JSON nesting is bounded before `json.loads` (whose recursion would otherwise raise
    RecursionError on '[' * 200000);
  - decompression is streamed and stops at a byte limit (a gzip bomb costs at most the limit);
  - every field is type-checked, and a wrong one is a one-line error naming the file and field.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import zipfile
import zlib
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig
from .errors import CnnlabError, ConfigError, RunError

MAX_JSON_BYTES = 16 * 1024 * 1024     # run.json is ~4 KB, state.json ~2 KB; far above both
MAX_JSON_DEPTH = 64                   # cnnlab writes depth ≤ 4; json.loads recurses per level
MAX_STATE_BYTES = 256 * 1024 * 1024   # the training state is ~10 MB (weights + AdamW moments)
_CHUNK = 1 << 20                      # bytes per read / per decompression step

# a JSON string (skipped whole, so brackets inside it are not counted) or one bracket
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


# ---------------------------------------------------------------------------------------------
# Bounded reads
# ---------------------------------------------------------------------------------------------

def read_bytes_limited(path: str | os.PathLike, limit: int, error: type[CnnlabError] = RunError,
                       what: str = "file") -> bytes:
    """The bytes of `path`, refused (as `error`) if it is not a regular file or holds more than
    `limit` bytes. The size is checked before reading, and the read stops at limit + 1 bytes,
    so a file that grows meanwhile (or a device such as /dev/zero) costs at most the limit."""
    p = Path(path)
    try:
        if not p.is_file():
            raise error(f"{p}: no such {what} (or not a regular file)")
        size = p.stat().st_size
        if size > limit:
            raise error(f"{p} is {size:,} bytes, more than the {limit:,}-byte limit for a {what}; "
                        f"refusing to read it (damaged, or not written by cnnlab)")
        with open(p, "rb") as f:
            # in chunks: read(limit + 1) would allocate the whole limit up front, whatever the size
            parts, got = [], 0
            while got <= limit:
                chunk = f.read(min(_CHUNK, limit + 1 - got))
                if not chunk:
                    break
                parts.append(chunk)
                got += len(chunk)
            data = b"".join(parts)
    except OSError as e:
        raise error(f"cannot read {p}: {e.strerror or e}") from None
    if len(data) > limit:
        raise error(f"{p} holds more than {limit:,} bytes; refusing to read it")
    return data


def json_depth(text: str) -> int:
    """The deepest nesting of arrays/objects in JSON `text` (brackets inside strings skipped).
    Linear time and constant stack, so it is safe on input that json.loads would recurse on."""
    depth = deepest = 0
    for m in _TOKENS.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def parse_json(data: bytes | str, where: str, error: type[CnnlabError] = RunError,
               max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON under a size and a nesting-depth limit; any failure is one line of `error`."""
    if len(data) > max_bytes:
        raise error(f"{where}: {len(data):,} bytes of JSON is more than the {max_bytes:,}-byte limit")
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    except UnicodeDecodeError as e:
        raise error(f"{where} is not valid JSON (not UTF-8: {e.reason} at byte {e.start})") from None
    depth = json_depth(text)
    if depth > max_depth:
        raise error(f"{where}: JSON nested {depth} levels deep; at most {max_depth} are accepted")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise error(f"{where} is not valid JSON ({str(e)[:120]})") from None


def read_json(path: str | os.PathLike, error: type[CnnlabError] = RunError,
              max_bytes: int = MAX_JSON_BYTES, what: str = "JSON file") -> Any:
    """A JSON file, read under a size limit and parsed under a depth limit."""
    data = read_bytes_limited(path, max_bytes, error, what)
    return parse_json(data, str(path), error, max_bytes)


# ---------------------------------------------------------------------------------------------
# Typed fields
# ---------------------------------------------------------------------------------------------

def _type_name(v: Any) -> str:
    return "null" if v is None else {bool: "true/false", int: "an integer", float: "a number",
                                     str: "a string", list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


def _fits(v: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(v, bool)
    if kind is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if kind is float:       # JSON writes 1.0 as 1.0 but a user may write 1
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return isinstance(v, kind)


_KIND_TEXT = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
              dict: "an object", list: "a list"}


def field(obj: dict, key: str, kind: type, where: str, error: type[CnnlabError] = RunError) -> Any:
    """`obj[key]`, which must exist and be of `kind` (bool/int/float/str/dict/list)."""
    if key not in obj:
        raise error(f"{where}: the field '{key}' is missing")
    v = obj[key]
    if not _fits(v, kind):
        raise error(f"{where}: '{key}' must be {_KIND_TEXT.get(kind, kind.__name__)}, not "
                    f"{_short(v)} ({_type_name(v)})")
    return v


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "…"


def config_from_dict(d: Any, where: str, error: type[CnnlabError] = RunError) -> TrainConfig:
    """A TrainConfig from a saved dict: every key known, every value of its field's type and in
    its range; otherwise one line naming `where` and the field. Keys a run lacks take their
    defaults (runs written by older versions)."""
    if not isinstance(d, dict):
        raise error(f"{where}: the configuration must be an object, not {_type_name(d)}")
    kinds = {f.name: {"bool": bool, "int": int, "float": float, "str": str}[str(f.type)]
             for f in fields(TrainConfig)}
    unknown = sorted(set(d) - set(kinds))
    if unknown:
        raise error(f"{where}: unknown configuration key(s) {', '.join(unknown)}")
    values = {}
    for key, kind in kinds.items():
        if key in d:
            values[key] = field(d, key, kind, f"{where}: config", error)
            if kind is float:
                values[key] = float(values[key])
    try:
        return TrainConfig(**values)
    except ConfigError as e:            # a value of the right type but out of range
        raise error(f"{where}: config: {e}") from None


# ---------------------------------------------------------------------------------------------
# Bounded decompression
# ---------------------------------------------------------------------------------------------

class LimitExceeded(Exception):
    """Raised by the streaming readers below when more than their limit would come out."""


def gunzip_limited(data: bytes, limit: int) -> bytes:
    """Decompress gzip `data` (all members) without ever holding more than `limit` bytes of
    output; raises LimitExceeded past it, zlib.error / EOFError for a corrupt or cut stream."""
    out = bytearray()
    rest = bytes(data)
    while rest:
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)      # 16+: the gzip wrapper
        buf = rest
        while True:
            # max_length bounds each step's output: at most limit + 1 bytes in all
            chunk = d.decompress(buf, max(1, limit + 1 - len(out)))
            out += chunk
            if len(out) > limit:
                raise LimitExceeded(limit)
            buf = d.unconsumed_tail
            if d.eof or not buf:
                break
        if not d.eof:
            raise EOFError("the gzip stream is truncated")
        rest = d.unused_data.lstrip(b"\0")         # another member (gzip allows several), or padding
    return bytes(out)


class LimitedReader:
    """A read-only file object over `raw` that raises LimitExceeded once more than `limit`
    bytes have been read through it (for tarfile's streaming mode over a gzip stream)."""

    def __init__(self, raw: io.BufferedIOBase, limit: int) -> None:
        self.raw, self.limit, self.count = raw, limit, 0

    def read(self, n: int = -1) -> bytes:
        want = self.limit + 1 - self.count if n is None or n < 0 else min(n, self.limit + 1 - self.count)
        b = self.raw.read(max(want, 1))
        self.count += len(b)
        if self.count > self.limit:
            raise LimitExceeded(self.limit)
        return b



# ---------------------------------------------------------------------------------------------
# .npz files from a user: each array's size read from its header before anything is decompressed
# ---------------------------------------------------------------------------------------------

MAX_NPZ_FILE_BYTES = 256 * 1024 * 1024     # the file itself (compressed)
MAX_NPZ_ARRAY_BYTES = 256 * 1024 * 1024    # one array once decompressed: 70,000 images as int32


def read_npz(path: str | os.PathLike, names: dict[str, int], error: type[CnnlabError] = RunError,
             max_file_bytes: int = MAX_NPZ_FILE_BYTES) -> dict[str, Any]:
    """The arrays `names` (name -> the most elements it may hold) of the .npz at `path`, those
    present; never unpickled. Each array's shape and dtype are read from its .npy header first,
    and one that declares more than its limit, more than MAX_NPZ_ARRAY_BYTES, an object dtype,
    or a size that disagrees with its zip entry is refused before its data is decompressed; the
    decompression itself stops at the declared size (a 368-byte file declaring 10^11 images, or
    1.5 MB of zeros unpacking to 1.8 GB, costs nothing)."""
    p = Path(path)
    data = read_bytes_limited(p, max_file_bytes, error, ".npz file")
    out: dict[str, Any] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            members = {i.filename: i for i in z.infolist()}
            for name, max_items in names.items():
                info = members.get(f"{name}.npy")
                if info is None:
                    continue
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                             else np.lib.format.read_array_header_2_0(f))
                    header = f.tell() if f.seekable() else None
                    items = math.prod(shape)
                    if dtype.hasobject:
                        raise error(f"{p}: '{name}' holds Python objects (a pickle); cnnlab reads plain arrays only")
                    if items > max_items or items * dtype.itemsize > MAX_NPZ_ARRAY_BYTES:
                        raise error(f"{p}: '{name}' declares shape {list(shape)} ({items:,} values); at most "
                                    f"{max_items:,} are read (refused before decompressing it)")
                    nbytes = items * dtype.itemsize
                    if header is not None and info.file_size != header + nbytes:
                        raise error(f"{p}: '{name}' declares {nbytes:,} bytes of data, but its zip entry "
                                    f"holds {info.file_size - header:,}; damaged or crafted")
                    raw = f.read(nbytes + 1)
                if len(raw) != nbytes:
                    raise error(f"{p}: '{name}' holds {len(raw):,} bytes of data, not the {nbytes:,} its header declares")
                arr = np.frombuffer(raw, dtype=dtype)
                out[name] = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
            out["__files__"] = sorted(n[:-4] for n in members if n.endswith(".npy"))
    except CnnlabError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error, OverflowError) as e:
        raise error(f"{p} is not a readable .npz of plain arrays ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:100] if str(e) else 'no detail'})") from None
    return out
