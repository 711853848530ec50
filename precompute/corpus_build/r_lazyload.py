"""Read the objects of an R package's lazy-load database (``data/Rdata.rdx`` + ``.rdb``).

Two corpus sources (``austen``, ``melville``) ship their texts as R data inside Debian packages;
this reads them with the ``rdata`` package, without R.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import warnings
import zlib
from pathlib import Path
from typing import Any

from precompute.corpus import CorpusError


def read_r_lazyload(base: Path, source: str) -> dict[str, Any]:
    """Objects of an R lazy-load database (``base.rdx`` index + ``base.rdb`` blobs), with rdata.

    Each blob is a 4-byte big-endian length then a zlib stream (or, after a type byte, bzip2 /
    xz / none); the index is a gzip- or zlib-compressed serialized list of ``(offset, length)``.
    """
    try:
        from rdata.conversion import convert
        from rdata.parser import parse_data
    except ImportError as e:
        raise CorpusError(f"source {source!r} needs the rdata package: pip install rdata") from e

    def unpack(blob: bytes) -> bytes:
        if blob[:2] == b"\x1f\x8b":
            return gzip.decompress(blob)
        kind = blob[4:5]
        if kind == b"Z":
            return bz2.decompress(blob[5:])
        if kind == b"X":
            return lzma.decompress(blob[5:])
        if kind == b"0":
            return blob[5:]
        return zlib.decompress(blob[4:])

    def load(data: bytes) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Unknown file type: assumed RDS": expected here
            return convert(parse_data(data))

    try:
        index = load(unpack(base.with_suffix(".rdx").read_bytes()))
        rdb = base.with_suffix(".rdb").read_bytes()
        out = {}
        for name, (off, length) in index["variables"].items():
            out[str(name)] = load(unpack(rdb[int(off) : int(off) + int(length)]))
    except (OSError, ValueError, KeyError, zlib.error, lzma.LZMAError) as e:
        raise CorpusError(f"source {source!r}: cannot read R data {base}: {e}") from e
    return out


def r_text(value: Any) -> str:
    """An R character vector (NA → empty line) as one ``\\n``-joined string."""
    return "\n".join("" if (x is None or not isinstance(x, str)) else x for x in value)
