"""The encode step's checkpoint files: one shard per range of windows, read back by feature block.

A shard ``shard-NNNNN.npz`` is an uncompressed ``.npz`` (readable with ``np.load``) holding, per
layer, that shard's records in canonical ``(feat, pos)`` order and a feature index:

- ``pos_L`` int64, ``feat_L`` int32, ``act_L`` float32 ``[M]``: the records, sorted;
- ``fptr_L`` int64 ``[F + 1]``: feature ``f``'s records are rows ``fptr_L[f]:fptr_L[f + 1]``;
- ``meta``: the JSON meta (fingerprint, shard number, window range, ``format``).

Because the members are stored uncompressed, :class:`ShardReader` reads one feature range of one
layer with ``np.fromfile`` at the member's offset: only those rows leave the disk. The reduce
reads every shard once per feature block, so its memory is set by the block, not by the run.

The reader opens files through an ``opener`` (a local file by default): the cluster run
(``cluster``) passes one of :class:`~.storage.WorkDir`, so the same reads go
to an fsspec URL (``s3://``, ``gs://``) with ranged reads.

Shards of the first format (unsorted, no ``fptr_L``) carry no ``format`` in their meta: the
encode step sees a meta that differs and recomputes them (``SHARD_FORMAT``).
"""

from __future__ import annotations

import json
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

import numpy as np
from numpy.typing import NDArray

from explorer.files import atomic_writer
from precompute.store_build.records import AccumulateError, Records

SHARD_FORMAT = 2
"""Written into every shard's meta; a shard with another (or no) format is recomputed."""


def save_shard(
    path: Path,
    records: dict[int | str, Records],
    n_features: dict[int | str, int],
    meta: dict[str, Any],
) -> None:
    """Write one shard atomically: each layer's records sorted by ``(feat, pos)`` and indexed.

    Args:
        path: the shard file.
        records: unit (a layer, or ``tc5``: ``job.shard_key``) -> its records of the shard.
        n_features: unit -> the SAE width (the index has ``n_features + 1`` entries).
        meta: JSON-able; ``format`` is added.
    """
    meta = {**meta, "format": SHARD_FORMAT}
    arrays: dict[str, np.ndarray] = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    for layer, r in records.items():
        s = r.canonical()
        arrays[f"pos_{layer}"], arrays[f"feat_{layer}"], arrays[f"act_{layer}"] = (
            s.pos,
            s.feat,
            s.act,
        )
        arrays[f"fptr_{layer}"] = np.searchsorted(
            s.feat, np.arange(n_features[layer] + 1, dtype=np.int32)
        ).astype(np.int64)
    with atomic_writer(path) as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]


Opener = Callable[[Any], IO[bytes]]
"""Opens a shard (a path, or a URL for a :class:`~.storage.WorkDir`'s) for reading."""


def open_binary(path: Any) -> IO[bytes]:
    """The default opener: a local file, read as bytes."""
    return open(path, "rb")


def _name(path: Any) -> str:
    return PurePosixPath(str(path)).name


def shard_meta(path: Path | IO[bytes]) -> dict[str, Any] | None:
    """The shard's meta, or None when it is torn or foreign (then it is recomputed).

    ``path`` may also be an open binary file."""
    try:
        with np.load(path) as z:
            return dict(json.loads(bytes(z["meta"]).decode()))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


@dataclass(frozen=True)
class _Member:
    offset: int  # of the array's first byte in the file
    dtype: np.dtype[Any]
    size: int


def _members(path: Any, opener: Opener = open_binary) -> dict[str, _Member]:
    """Where each ``.npy`` member's data starts in an uncompressed ``.npz``."""
    out: dict[str, _Member] = {}
    with opener(path) as fh, zipfile.ZipFile(fh) as z:
        for info in z.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                raise AccumulateError(
                    f"shard {_name(path)}: member {info.filename} is not a stored .npy"
                )
            fh.seek(info.header_offset)
            local = fh.read(30)
            if local[:4] != b"PK\x03\x04":
                raise AccumulateError(f"shard {_name(path)}: bad zip member header")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            fh.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            if fortran or len(shape) != 1 or dtype.hasobject:
                raise AccumulateError(f"shard {_name(path)}: {info.filename} is not a 1-D array")
            out[info.filename[:-4]] = _Member(fh.tell(), dtype, int(shape[0]))
    return out


@dataclass
class ShardReader:
    """Reads feature ranges of a layer from every shard of a work directory (in shard order).

    Only member offsets are kept (a few numbers per shard); each read goes to the disk.
    """

    paths: list[Any]  # Path, or what ``opener`` takes
    opener: Opener = open_binary
    _index: dict[Any, dict[str, _Member]] = field(default_factory=dict, repr=False)

    def _member(self, path: Any, name: str) -> _Member:
        if path not in self._index:
            self._index[path] = _members(path, self.opener)
        members = self._index[path]
        if name not in members:
            raise AccumulateError(
                f"shard {_name(path)} has no {name} "
                "(an old-format or foreign shard: rerun the encode)"
            )
        return members[name]

    def _read(self, path: Any, name: str, start: int, stop: int) -> NDArray[Any]:
        m = self._member(path, name)
        out = np.empty(stop - start, m.dtype)
        self._read_into(path, name, start, out)
        return out

    def _read_into(self, path: Any, name: str, start: int, out: NDArray[Any]) -> None:
        """Rows ``start:start + len(out)`` of member ``name``, read straight into ``out``."""
        m = self._member(path, name)
        if not 0 <= start <= start + len(out) <= m.size or out.dtype != m.dtype:
            raise AccumulateError(f"shard {_name(path)}: rows {start}:{start + len(out)} of {name}")
        if not len(out):
            return
        with self.opener(path) as fh:
            fh.seek(m.offset + start * m.dtype.itemsize)
            if cast(Any, fh).readinto(out.data.cast("B")) != out.nbytes:
                raise AccumulateError(f"shard {_name(path)}: {name} is truncated")

    def fires(self, layer: int | str, n_features: int) -> NDArray[np.int64]:
        """int64 ``[F]`` records per feature over all shards (one index read per shard)."""
        total = np.zeros(n_features, np.int64)
        for p in self.paths:
            fptr = self._read(p, f"fptr_{layer}", 0, self._member(p, f"fptr_{layer}").size)
            if len(fptr) != n_features + 1:
                raise AccumulateError(
                    f"shard {_name(p)}: layer {layer} has {len(fptr) - 1} features, "
                    f"expected {n_features}"
                )
            total += np.diff(fptr)
        return total

    def block(self, layer: int | str, f0: int, f1: int) -> Records:
        """Every shard's records of features ``[f0, f1)`` of ``layer``, feature ids unchanged.

        The rows are read straight into arrays of the block's size (no per-shard copies).
        """
        spans = []
        for p in self.paths:
            fptr = self._read(p, f"fptr_{layer}", f0, f1 + 1)
            spans.append((p, int(fptr[0]), int(fptr[-1])))
        n = sum(hi - lo for _, lo, hi in spans)
        pos, feat, act = np.empty(n, np.int64), np.empty(n, np.int32), np.empty(n, np.float32)
        at = 0
        for p, lo, hi in spans:
            for name, out in (("pos", pos), ("feat", feat), ("act", act)):
                self._read_into(p, f"{name}_{layer}", lo, out[at : at + hi - lo])
            at += hi - lo
        return Records(pos=pos, feat=feat, act=act)
