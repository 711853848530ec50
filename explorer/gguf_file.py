"""Read a GGUF file: its metadata, its tensor table, and each tensor dequantized to float32.

``gguf.GGUFReader`` builds a numpy view for every element of every metadata array, which for
Gemma 3's 262,144-token vocabulary (tokens, scores, token types) takes 20 s or more on two
cores, and transformers' GGUF loader builds one each time it reads the file (twice for a model,
once more for its tokenizer). The format is small (a header, key/value metadata, a tensor table,
aligned data: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), so this module reads it
directly in well under a second: numeric arrays in one ``numpy.frombuffer``, strings in one pass.
The tensors are the same views ``GGUFReader`` makes (same dtype, same shape) handed to
``gguf.quants.dequantize``, so the values are those transformers gets.

    gguf = read_gguf(Path("model.gguf"))
    gguf.metadata["general.architecture"]    # "gemma3"
    gguf.dequantized("token_embd.weight")    # float32, shape (262144, 640)
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class GGUFError(ValueError):
    """The file is not a GGUF this reader understands (with what it found, in one line)."""


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table: ``shape`` in numpy order (GGUF lists it innermost first)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the file


@dataclass
class GGUFFile:
    """A GGUF file's metadata (``{key: value}``; arrays as lists, numeric ones as numpy arrays) and
    tensor table, with the file mapped read-only for :meth:`dequantized`."""

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    _buffer: mmap.mmap

    def raw(self, name: str) -> np.ndarray:
        """The tensor as stored, the view ``GGUFReader`` gives: float32/float16 values, or the
        quantized blocks as uint8 rows (``(..., bytes per row)``)."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import quant_shape_to_byte_shape

        info = self.tensors[name]
        qtype = GGMLQuantizationType(info.ggml_type)
        n_elements = int(np.prod(info.shape))
        if qtype == GGMLQuantizationType.F32:
            return self._array(info.offset, np.float32, n_elements).reshape(info.shape)
        if qtype == GGMLQuantizationType.F16:
            return self._array(info.offset, np.float16, n_elements).reshape(info.shape)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        if block_size == 1:  # other unquantized integer or float types: not in a model's weights
            raise GGUFError(f"tensor {name}: unsupported type {qtype.name}")
        data = self._array(info.offset, np.uint8, n_elements // block_size * type_size)
        return data.reshape(quant_shape_to_byte_shape(info.shape, qtype))

    def dequantized(self, name: str) -> np.ndarray:
        """The tensor's values in float32, by ``gguf.quants.dequantize`` (numpy shape)."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        values = dequantize(self.raw(name), GGMLQuantizationType(self.tensors[name].ggml_type))
        return np.asarray(values, dtype=np.float32)

    def _array(self, offset: int, dtype: type, count: int) -> np.ndarray:
        end = offset + np.dtype(dtype).itemsize * count
        if end > len(self._buffer):
            raise GGUFError(f"{self.path}: truncated (a tensor ends at byte {end:,})")
        return np.frombuffer(self._buffer, dtype=dtype, count=count, offset=offset)


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}
_SCALARS |= {11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    """Sequential little-endian reads from a buffer."""

    def __init__(self, buffer: mmap.mmap, path: Path) -> None:
        self.buffer, self.path, self.pos = buffer, path, 0

    def unpack(self, fmt: str) -> Any:
        try:
            (value,) = struct.unpack_from(fmt, self.buffer, self.pos)
        except struct.error:
            raise GGUFError(f"{self.path}: truncated header at byte {self.pos:,}") from None
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        raw = self.buffer[self.pos : self.pos + n]
        if len(raw) != n:
            raise GGUFError(f"{self.path}: truncated string at byte {self.pos:,}")
        self.pos += n
        return raw.decode("utf-8")

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, n = self.unpack("<I"), self.unpack("<Q")
            if itype == _STRING:
                return [self.string() for _ in range(n)]
            if itype in _SCALARS:
                dtype = np.dtype(_SCALARS[itype])
                if self.pos + dtype.itemsize * n > len(self.buffer):
                    raise GGUFError(f"{self.path}: truncated array at byte {self.pos:,}")
                out = np.frombuffer(self.buffer, dtype=dtype, count=n, offset=self.pos).copy()
                self.pos += dtype.itemsize * n
                return out
            return [self.value(itype) for _ in range(n)]  # nested arrays: rare, small
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        raise GGUFError(f"{self.path}: unknown metadata type {vtype} at byte {self.pos:,}")


def read_gguf(path: Path) -> GGUFFile:
    """Parse ``path``'s header, metadata and tensor table (versions 2 and 3, little-endian)."""
    from gguf import GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC

    with open(path, "rb") as f:
        try:
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise GGUFError(f"{path}: empty file, not a GGUF") from None
    cur = _Cursor(buffer, path)
    if len(buffer) < 24 or cur.unpack("<I") != GGUF_MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (bad magic)")
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise GGUFError(f"{path}: GGUF version {version} (this reader knows 2 and 3)")
    n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.unpack("<I"))
    table = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("<I")
        dims = [cur.unpack("<Q") for _ in range(n_dims)]
        table.append((name, tuple(reversed(dims)), cur.unpack("<I"), cur.unpack("<Q")))
    alignment = int(metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT))
    if alignment <= 0 or alignment & (alignment - 1):
        raise GGUFError(f"{path}: alignment {alignment} is not a power of two")
    start = -(-cur.pos // alignment) * alignment
    tensors = {name: TensorInfo(name, shape, t, start + off) for name, shape, t, off in table}
    if len(tensors) != len(table):
        raise GGUFError(f"{path}: duplicate tensor names")
    return GGUFFile(path, metadata, tensors, buffer)
