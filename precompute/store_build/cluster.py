"""The precompute run on a Ray cluster (``python -m precompute run … --ray local|ADDRESS``).

The same three stages as :class:`precompute.store_build.job.Job`, spread over the cluster:

1. **Encode** on Ray actors, one per GPU when the cluster has GPUs, one per CPU otherwise (or
   ``workers``). Each actor builds the bundle once, from a picklable factory (the preset's name,
   never a pickled model), and takes shards from the driver one at a time; it writes each shard
   to the shared :class:`~.storage.WorkDir` atomically. Shards already there with this
   run's meta are skipped, so rerunning the command after the driver died redoes only the shards
   that were not written. When an actor dies (its process killed, its machine lost), the shard it
   held goes back to the queue and a new actor takes its place.
2. **Reduce** as one Ray task per (layer, feature block) (:func:`~.blocks.plan_blocks`
   cuts the blocks to ``reduce_memory_mb``, which bounds each task's memory), all submitted at
   once; each reads its block from every shard of the shared directory.
3. **Write**: the driver gathers the blocks in feature order and writes the store with the
   single-process writer.

Every reduction is exact and the shards' layout does not change the result (``job``),
so the store equals the single-process store. Ray is an optional extra and is imported only here,
when a run asks for it.
"""

from __future__ import annotations

import logging
import socket
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from explorer.bundle import Bundle, build_bundle, preset
from explorer.store.schema import Unit
from precompute.store_build.accumulate import Examples, LayerStats, ReduceConfig
from precompute.store_build.blocks import (
    BYTES_PER_RECORD,
    concat_examples,
    concat_stats,
    plan_blocks,
    reduce_block,
)
from precompute.store_build.job import (
    Job,
    RunConfig,
    bundle_meta,
    collect_windows,
    dictionary,
    encode_shard,
    hold_dictionaries,
    shard_key,
    shard_ranges,
)
from precompute.store_build.records import TokenTable
from precompute.store_build.shards import SHARD_FORMAT, ShardReader, save_shard
from precompute.store_build.storage import WorkDir, shard_name

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[cluster]"'


class ClusterError(RuntimeError):
    """The cluster cannot run the job (no Ray, an unreachable address, every worker lost)."""


@dataclass(frozen=True)
class PresetBundle:
    """A picklable bundle factory: each worker builds the preset's bundle itself."""

    preset: str
    device: str = "auto"
    cache_dir: str | None = None

    def __call__(self) -> Bundle:
        spec = preset(self.preset)
        return build_bundle(spec, device=self.device, dtype="float32", cache_dir=self.cache_dir)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast on an unreachable ``host:port`` (``ray.init`` would retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"bad Ray address {address!r}: expected local, auto or HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from e


def connect(address: str, **init: Any) -> None:
    """Start a local Ray cluster (``local``) or join one (``auto`` or ``HOST:PORT``, the head's
    GCS address, or ``ray://HOST:PORT`` for Ray Client); a no-op when Ray is initialized."""
    ray = _ray()
    if ray.is_initialized():
        return
    if address == "local":
        ray.init(include_dashboard=False, **init)
        return
    if address != "auto":
        _probe(address)
    try:
        ray.init(address=address, **init)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(f"cannot join the Ray cluster at {address}: {e}") from e


class EncodeWorker:
    """A Ray actor's state: the bundle, built once, and the run's windows."""

    def __init__(
        self, factory: Any, table: TokenTable, cfg: RunConfig, units: list[Unit], work: WorkDir
    ) -> None:
        self.bundle = factory()
        hold_dictionaries(self.bundle)
        self.table, self.cfg, self.units, self.work = table, cfg, units, work
        self.widths = {shard_key(u): int(dictionary(self.bundle, u).cfg.d_sae) for u in units}

    def encode(self, shard: int, windows: tuple[int, int], meta: dict[str, Any]) -> int:
        records = encode_shard(self.bundle, self.table, windows, self.units, self.cfg)
        with tempfile.TemporaryDirectory(prefix="precompute-shard-") as tmp:
            local = Path(tmp) / shard_name(shard)
            save_shard(local, records, self.widths, meta)
            self.work.put(local, shard)
        return shard


def _reduce_task(
    work: WorkDir,
    paths: list[str],
    key: int | str,
    block: tuple[int, int],
    table: TokenTable,
    cfg: ReduceConfig,
) -> tuple[LayerStats, Examples]:
    return reduce_block(ShardReader(paths, work.open), key, *block, table, cfg)


@dataclass
class ClusterJob(Job):
    """:class:`Job` on the connected Ray cluster (call :func:`connect` first).

    Args (besides :class:`Job`'s):
        factory: builds the bundle in each worker (picklable, e.g. :class:`PresetBundle`).
        work_url: the shared shard directory (path or fsspec URL); default ``OUT.work``.
        workers: encode actors; default one per GPU of the cluster, or one per CPU.
        max_lost: workers that may die before the run gives up.

    After :meth:`run`, ``submitted`` counts the shards handed to workers and ``lost`` the
    workers that died holding one.
    """

    factory: Any = None
    work_url: str | None = None
    workers: int | None = None
    max_lost: int = 8
    submitted: int = 0
    lost: int = 0
    _reduce_refs: dict[Unit, tuple[list[tuple[int, int]], list[Any]]] = field(
        default_factory=dict, repr=False
    )

    def run(self) -> Path:
        ray = _ray()
        if self.factory is None:
            raise ValueError("ClusterJob needs a bundle factory")
        table = collect_windows(self.cfg, self.bundle.tokenizer)
        work = WorkDir(self.work_url or str(self.out_dir.with_name(self.out_dir.name + ".work")))
        table_ref = ray.put(table)
        self.encode_on_cluster(table, table_ref, work)
        reader = ShardReader(work.shards(), work.open)
        self._submit_reduce(reader, table_ref, work)
        return self.reduce_shards(table, reader)

    def _worker_options(self) -> tuple[int, dict[str, Any]]:
        resources = _ray().cluster_resources()
        gpus = int(resources.get("GPU", 0))
        n = self.workers or gpus or max(int(resources.get("CPU", 1)), 1)
        return n, ({"num_gpus": 1} if gpus else {"num_cpus": 1})

    def encode_on_cluster(self, table: TokenTable, table_ref: Any, work: WorkDir) -> None:
        """Encode every shard missing from ``work`` on actors; survive lost actors."""
        ray = _ray()
        ranges = shard_ranges(table, self.cfg.shard_tokens)

        def meta(s: int) -> dict[str, Any]:
            return {"fingerprint": self.fingerprint, "shard": s, "windows": list(ranges[s])}

        todo = deque(
            s for s in range(len(ranges)) if work.meta(s) != {**meta(s), "format": SHARD_FORMAT}
        )
        logger.info("%d of %d shards to encode in %s", len(todo), len(ranges), work.url)
        n, options = self._worker_options()
        actor_cls = ray.remote(max_restarts=0, max_task_retries=0, **options)(EncodeWorker)

        def new_actor() -> Any:
            return actor_cls.remote(self.factory, table_ref, self.cfg, self.units, work)

        inflight: dict[Any, tuple[Any, int]] = {}

        def submit(actor: Any) -> None:
            s = todo.popleft()
            inflight[actor.encode.remote(s, ranges[s], meta(s))] = (actor, s)
            self.submitted += 1

        for actor in [new_actor() for _ in range(min(n, len(todo)))]:
            submit(actor)
        while inflight:
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            actor, s = inflight.pop(ref)
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as e:
                self.lost += 1
                logger.warning("worker lost on shard %d (%s); shard requeued", s, type(e).__name__)
                if self.lost > self.max_lost:
                    cause = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    raise ClusterError(f"{self.lost} workers lost, giving up: {cause}") from e
                todo.appendleft(s)
                ray.kill(actor)
                actor = new_actor()
            if todo:
                submit(actor)
            else:
                ray.kill(actor)
        work.sweep(len(ranges))

    def _submit_reduce(self, reader: ShardReader, table_ref: Any, work: WorkDir) -> None:
        """Submit every (unit, block) reduce task at once; :meth:`reduce_layer` gathers."""
        task = _ray().remote(num_cpus=1, max_retries=3)(_reduce_task)
        max_records = int(self.cfg.reduce_memory_mb * 2**20 / BYTES_PER_RECORD)
        for unit in self.units:
            key = shard_key(unit)
            blocks = plan_blocks(reader.fires(key, self.width(unit)), max_records)
            refs = [
                task.remote(work, reader.paths, key, b, table_ref, self.cfg.reduce) for b in blocks
            ]
            self._reduce_refs[unit] = (blocks, refs)

    def reduce_layer(
        self, reader: ShardReader, unit: Unit, table: TokenTable, max_records: int
    ) -> tuple[LayerStats, Examples, int]:
        blocks, refs = self._reduce_refs.pop(unit)
        parts = _ray().get(refs)
        return (
            concat_stats([s for s, _ in parts]),
            concat_examples([(f0, ex) for (f0, _), (_, ex) in zip(blocks, parts, strict=True)]),
            len(blocks),
        )


def run_cluster(
    address: str,
    preset_name: str,
    cfg: RunConfig,
    out_dir: Path,
    device: str = "auto",
    cache_dir: str | None = None,
    work_url: str | None = None,
    workers: int | None = None,
) -> Path:
    """The ``run --ray`` command: connect, build the bundle on the driver and the workers, run."""
    connect(address)
    factory = PresetBundle(preset_name, device, cache_dir)
    bundle = factory()
    job = ClusterJob(
        cfg,
        bundle,
        out_dir,
        bundle_meta=bundle_meta(bundle),
        factory=factory,
        work_url=work_url,
        workers=workers,
    )
    return job.run()
