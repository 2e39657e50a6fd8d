"""A strict, bounded GGUF reader: metadata, tensor table, and dequantisation of F32, F16, Q8_0 and Q4_1 tensors.

Written here (not the `gguf` package) because a model file is untrusted input: every count, length and offset is
checked against the file before anything is allocated, unknown types are refused, and nothing is ever executed.
Only the types the SmolLM2 GGUF uses are decoded; any other is a ProbeError naming it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aegis_proxy.probe.errors import INSTALL_HINT, ProbeError, ProbeUnavailable

MAGIC = b"GGUF"
MAX_COUNT = 100_000  # tensors or metadata keys
MAX_STRING = 1 << 24
MAX_ARRAY = 1 << 24
MAX_DIMS = 4
DEFAULT_ALIGNMENT = 32

# ggml tensor types we decode: (name, elements per block, bytes per block)
TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 3: ("Q4_1", 32, 20), 8: ("Q8_0", 32, 34)}

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # torch order (slowest first), e.g. (vocab, hidden)
    type_id: int
    offset: int  # absolute, in the file
    size: int  # bytes


class _Cursor:
    def __init__(self, data: memoryview, path: Path) -> None:
        self.data = data
        self.pos = 0
        self.path = path

    def take(self, size: int) -> memoryview:
        if size < 0 or self.pos + size > len(self.data):
            raise ProbeError(f"GGUF file {self.path} is truncated at byte {self.pos}", hint="restore the model file")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        size = self.scalar("<Q")
        if size > MAX_STRING:
            raise ProbeError(f"GGUF file {self.path}: a string of {size} bytes", hint="the file is corrupt")
        try:
            return bytes(self.take(size)).decode("utf-8")
        except UnicodeDecodeError:
            raise ProbeError(f"GGUF file {self.path}: a string is not UTF-8", hint="the file is corrupt") from None

    def value(self, kind: int, depth: int = 0) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY and depth == 0:
            item = self.scalar("<I")
            count = self.scalar("<Q")
            if count > MAX_ARRAY:
                raise ProbeError(f"GGUF file {self.path}: an array of {count} items", hint="the file is corrupt")
            if item in _SCALARS and item != 7:  # fast path for numeric arrays (token types, scores)
                fmt = _SCALARS[item]
                raw = self.take(count * struct.calcsize(fmt))
                return list(struct.unpack(f"<{count}{fmt[1]}", raw))
            return [self.value(item, depth + 1) for _ in range(count)]
        raise ProbeError(f"GGUF file {self.path}: unknown metadata type {kind}", hint="the file is corrupt")


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]

    def tensor(self, name: str) -> Any:
        """One tensor, dequantised to a float32 torch tensor."""
        info = self.tensors.get(name)
        if info is None:
            raise ProbeError(
                f"GGUF file {self.path} has no tensor {name!r}", hint="is this a llama-architecture model?"
            )
        return dequantize(self.path, info)


def read(path: Path) -> GGUFFile:
    """Parse the header and tensor table; check every tensor lies inside the file. Tensors are read on demand."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProbeError(f"cannot read GGUF file {path}: {exc.strerror}", hint="give an existing .gguf file") from None
    cursor = _Cursor(memoryview(raw), path)
    if bytes(cursor.take(4)) != MAGIC:
        raise ProbeError(f"{path} is not a GGUF file (bad magic)", hint="give a .gguf model file")
    version = cursor.scalar("<I")
    if version not in (2, 3):
        raise ProbeError(f"GGUF file {path} has version {version}", hint="only GGUF v2 and v3 are read")
    tensor_count = cursor.scalar("<Q")
    kv_count = cursor.scalar("<Q")
    if tensor_count > MAX_COUNT or kv_count > MAX_COUNT:
        raise ProbeError(f"GGUF file {path} claims {tensor_count} tensors, {kv_count} keys", hint="the file is corrupt")
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = cursor.string()
        metadata[key] = cursor.value(cursor.scalar("<I"))
    infos = []
    for _ in range(tensor_count):
        name = cursor.string()
        dims = cursor.scalar("<I")
        if not 1 <= dims <= MAX_DIMS:
            raise ProbeError(f"GGUF file {path}: tensor {name!r} has {dims} dimensions", hint="the file is corrupt")
        ne = [cursor.scalar("<Q") for _ in range(dims)]
        type_id = cursor.scalar("<I")
        offset = cursor.scalar("<Q")
        infos.append((name, ne, type_id, offset))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ProbeError(f"GGUF file {path}: alignment {alignment!r}", hint="the file is corrupt")
    start = -(-cursor.pos // alignment) * alignment
    tensors: dict[str, TensorInfo] = {}
    for name, ne, type_id, offset in infos:
        if type_id not in TYPES:
            raise ProbeError(
                f"GGUF file {path}: tensor {name!r} has ggml type {type_id}, which is not decoded here",
                hint=f"decoded types: {', '.join(t[0] for t in TYPES.values())}",
            )
        _, block, block_bytes = TYPES[type_id]
        count = 1
        for n in ne:
            if n <= 0 or n > 1 << 32:
                raise ProbeError(f"GGUF file {path}: tensor {name!r} has shape {ne}", hint="the file is corrupt")
            count *= n
        if count % block:
            raise ProbeError(f"GGUF file {path}: tensor {name!r} is not whole blocks", hint="the file is corrupt")
        size = count // block * block_bytes
        begin = start + offset
        if begin + size > len(raw):
            raise ProbeError(f"GGUF file {path}: tensor {name!r} runs past the end", hint="the file is truncated")
        tensors[name] = TensorInfo(name, tuple(reversed(ne)), type_id, begin, size)
    return GGUFFile(path, metadata, tensors)


def dequantize(path: Path, info: TensorInfo) -> Any:
    try:
        import numpy as np
        import torch
    except ImportError as exc:
        raise ProbeUnavailable(f"reading GGUF needs numpy and torch ({exc})", hint=INSTALL_HINT) from None
    with path.open("rb") as stream:
        stream.seek(info.offset)
        data = stream.read(info.size)
    if len(data) != info.size:
        raise ProbeError(f"GGUF file {path}: tensor {info.name!r} is truncated", hint="restore the model file")
    name = TYPES[info.type_id][0]
    if name == "F32":
        values = np.frombuffer(data, dtype="<f4").astype(np.float32)
    elif name == "F16":
        values = np.frombuffer(data, dtype="<f2").astype(np.float32)
    elif name == "Q8_0":
        blocks = np.frombuffer(data, dtype=np.dtype([("d", "<f2"), ("q", "i1", 32)]))
        values = (blocks["d"].astype(np.float32)[:, None] * blocks["q"].astype(np.float32)).reshape(-1)
    else:  # Q4_1: x = d * nibble + m; low nibbles are elements 0..15 of a block, high nibbles 16..31
        blocks = np.frombuffer(data, dtype=np.dtype([("d", "<f2"), ("m", "<f2"), ("q", "u1", 16)]))
        low = (blocks["q"] & 0x0F).astype(np.float32)
        high = (blocks["q"] >> 4).astype(np.float32)
        nibbles = np.concatenate([low, high], axis=1)
        values = (blocks["d"].astype(np.float32)[:, None] * nibbles + blocks["m"].astype(np.float32)[:, None]).reshape(
            -1
        )
    if not np.isfinite(values).all():
        raise ProbeError(f"GGUF file {path}: tensor {info.name!r} holds NaN or infinity", hint="the file is corrupt")
    return torch.from_numpy(values.reshape(info.shape).copy())
