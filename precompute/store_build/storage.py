"""The shard directory a cluster run shares: a local or NFS path, or an fsspec URL.

Every worker of a Ray run writes its shards here and the reduce tasks read them back, so all of
them must reach the same storage: an NFS (or other shared) path mounted at the same place on every
machine, or an object store URL (``s3://bucket/run.work``, ``gs://…``, with ``s3fs``/``gcsfs``
installed and credentials in the workers' environment). A plain path on a one-machine cluster is
a local directory.

**Atomic shards.** A shard is first written whole to a local temporary file, uploaded to a
temporary name beside its final one (``.shard-00003.npz.<random>.tmp``) and then moved to its
final name. On a file system the move is a rename; on an object store it is a server-side copy,
and an object appears whole or not at all. Readers never see a partial shard under its final name,
and a shard that is unreadable anyway (torn by a crash of the storage itself) has no valid meta,
so the run encodes it again. Temporary names left by a killed worker are ignored and swept up by
the next run.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import IO, Any

from precompute.store_build.shards import shard_meta

SHARD_GLOB = "shard-*.npz"


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.npz"


class WorkDir:
    """A run's shard directory at ``url`` (a path or an fsspec URL); picklable, so the Ray
    workers get it as an argument."""

    def __init__(self, url: str | Path) -> None:
        import fsspec

        self.url = str(url)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.root = self.root.rstrip("/")
        self.fs.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"WorkDir({self.url!r})"

    def path(self, name: str) -> str:
        """The full path (in :attr:`fs`) of the file ``name``."""
        return f"{self.root}/{name}"

    def shards(self) -> list[str]:
        """The full paths of the shards present, in shard order."""
        return sorted(str(p) for p in self.fs.glob(self.path(SHARD_GLOB)))

    def open(self, path: Any) -> IO[bytes]:
        """Open a full path for reading (the :class:`~.shards.ShardReader` opener)."""
        return self.fs.open(path, "rb")

    def meta(self, shard: int) -> dict[str, Any] | None:
        """A shard's meta, or None when it is missing, torn or foreign."""
        try:
            with self.open(self.path(shard_name(shard))) as f:
                return shard_meta(f)
        except FileNotFoundError:
            return None

    def put(self, local: Path, shard: int) -> None:
        """Upload a local shard file under its final name atomically (see the module's text)."""
        final = self.path(shard_name(shard))
        tmp = self.path(f".{shard_name(shard)}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            self.fs.put_file(str(local), tmp)
            self.fs.mv(tmp, final)
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise

    def sweep(self, n_shards: int) -> None:
        """Remove shards past ``n_shards`` (from an earlier, longer run) and stale temporaries."""
        keep = {self.path(shard_name(s)) for s in range(n_shards)}
        for p in self.shards():
            if p not in keep:
                self.fs.rm(p)
        for p in self.fs.glob(self.path(".shard-*.tmp")):
            self.fs.rm(p)
