"""The precompute run: corpus → one forward pass per batch → SAE codes → sparse shards → store.

The run has two stages that talk through files (as the rest of the project does):

1. **Encode.** Windows are cut from the corpus in a fixed order and numbered by global position
   (see ``accumulate``). Each batch runs the model once for all layers, stopped after
   the last one, and every layer's SAE encodes it; the non-zero activations at non-special
   positions are kept as sparse records. Every ``shard_tokens`` tokens a shard is written
   atomically (temporary file, then rename) to the work directory, so a killed run resumes at
   the first missing shard and redoes at most one shard of work.
2. **Reduce.** Each layer is reduced exactly, vectorized over features, one feature block at a
   time (``blocks``): a block's records are read from every shard (each shard keeps
   its records sorted by feature, with an index, ``shards``), and blocks are cut so
   that each holds about ``reduce_memory_mb`` of records. Logit effects (``W_dec @ W_U``) and
   decoder neighbours are computed from the weights; the store is written atomically.

Memory: the encode holds one shard's records, the reduce one block's; what grows with the run
is the token table (9 bytes a position, ``TokenTable``) and the store's token column.

Because the reduction sorts records by global position, the store does not depend on the shard
layout nor on the blocks: shards computed by separate processes or machines and copied into one
work directory reduce to exactly the single-run result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from explorer import __version__
from explorer.bundle import TRANSCODER_IN, Bundle, build_bundle, bundle_identity, preset
from explorer.encode import activations
from explorer.paths import ASSETS_SAES, ASSETS_TRANSCODERS
from explorer.store.codec import (
    FeatureColumns,
    TokenContext,
    examples_table,
    features_table,
    tokens_table,
    vocab_table,
)
from explorer.store.saes import SAES_MANIFEST, SaeManifest
from explorer.store.schema import (
    RES,
    SHORT,
    SOURCES,
    TRANSCODER,
    StoreLayer,
    StoreManifest,
    Unit,
    check_source,
    sae_ref,
    unit_label,
)
from precompute.corpus import corpus_sha256, pad_windows, run_documents, token_windows
from precompute.describe import describe_layer
from precompute.store_build.accumulate import Examples, LayerStats, ReduceConfig
from precompute.store_build.blocks import BYTES_PER_RECORD, reduce_blocks
from precompute.store_build.features import logit_effects, neighbours
from precompute.store_build.records import Records, TokenTable
from precompute.store_build.shards import SHARD_FORMAT, ShardReader, save_shard, shard_meta
from precompute.store_build.write import write_store

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """What a precompute run reads and how.

    Args:
        corpus: corpus spec (``default``, a local file, or ``hf:NAME``).
        split: ``train``, ``heldout`` or ``all`` (held-out documents first, see
            :func:`precompute.corpus.run_documents`).
        tokens: non-special tokens to process (whole windows: the last one may go past it).
        layers: the residual SAEs' layers to precompute; empty means all of the bundle's.
        sources: the sources to precompute (``res``, ``transcoder``); empty means every source
            the bundle has (its residual SAEs, and its transcoders when it has them, on all
            their layers). One forward pass serves them all.
        context_size: tokens per window, BOS included.
        batch_windows: windows per forward pass.
        shard_tokens: tokens per checkpointed shard.
        reduce_memory_mb: records the reduce holds at once (a feature block's, about
            ``BYTES_PER_RECORD`` each); more blocks, not more memory, for a longer run.
        seed: seeds the document order and the interval sampling.
        reduce: the statistics' parameters (top-k, bins, intervals, context, dense threshold).
    """

    corpus: str = "default"
    split: str = "all"
    tokens: int = 1_000_000
    layers: tuple[int, ...] = ()
    sources: tuple[str, ...] = ()
    context_size: int = 128
    batch_windows: int = 32
    shard_tokens: int = 65_536
    reduce_memory_mb: float = 1024.0
    seed: int = 0
    reduce: ReduceConfig = field(default_factory=ReduceConfig)

    def __post_init__(self) -> None:
        if self.tokens <= 0:
            raise ValueError("tokens must be positive")
        if self.context_size < 2:
            raise ValueError("context_size must be at least 2 (BOS and a token)")
        if self.batch_windows <= 0 or self.shard_tokens <= 0:
            raise ValueError("batch_windows and shard_tokens must be positive")
        if not self.reduce_memory_mb > 0:
            raise ValueError("reduce_memory_mb must be positive")
        for source in self.sources:
            check_source(source)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["layers"] = list(self.layers)
        out["sources"] = list(self.sources)
        return out

    def fingerprint(self, bundle_id: str) -> str:
        """Shards are reusable only by a run with the same inputs and model (not the reduce's
        parameters)."""
        d = self.to_dict()
        d.pop("reduce")
        d.pop("reduce_memory_mb")
        blob = json.dumps([d, bundle_id], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def collect_windows(cfg: RunConfig, tokenizer: Any) -> TokenTable:
    """The run's windows in order, as a :class:`TokenTable`, until ``cfg.tokens`` are reached."""
    special = set(tokenizer.all_special_ids)
    ids: list[np.ndarray] = []  # int32 per window: Python ints would cost ~36 bytes a token
    docs: list[str] = []
    offsets: list[int] = []
    n = 0
    for w in token_windows(
        run_documents(cfg.corpus, cfg.split, cfg.seed), tokenizer, cfg.context_size
    ):
        ids.append(np.asarray(w.token_ids, dtype=np.int32))
        docs.append(w.doc_id)
        offsets.append(w.start)
        n += sum(1 for t in w.token_ids if t not in special)
        if n >= cfg.tokens:
            break
    if not ids:
        raise ValueError(f"corpus {cfg.corpus!r} (split {cfg.split}) gave no windows")
    if n < cfg.tokens:
        logger.warning("corpus ran out at %d tokens (asked for %d)", n, cfg.tokens)
    lengths = np.array([len(w) for w in ids], dtype=np.int64)
    flat = np.concatenate(ids)
    n_windows = len(ids)
    del ids
    return TokenTable(
        token_ids=flat,
        window=np.repeat(np.arange(n_windows, dtype=np.int32), lengths),
        special=np.isin(flat, np.array(sorted(special), dtype=np.int32)),
        window_start=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
        window_doc=docs,
        window_offset=np.asarray(offsets, dtype=np.int32),
    )


def shard_ranges(table: TokenTable, shard_tokens: int) -> list[tuple[int, int]]:
    """Consecutive window ranges ``[a, b)`` of about ``shard_tokens`` positions each."""
    n_windows = len(table.window_start)
    ends = table.window_end
    ranges, a = [], 0
    for w in range(n_windows):
        if ends[w] - table.window_start[a] >= shard_tokens or w == n_windows - 1:
            ranges.append((a, w + 1))
            a = w + 1
    return ranges


def shard_key(unit: Unit) -> int | str:
    """A unit's name in the shard files: the layer for a residual SAE (as shards had before
    sources), ``tc5`` for a transcoder."""
    source, layer = unit
    return layer if source == RES else f"{SHORT[source]}{layer}"


def hold_dictionaries(bundle: Bundle) -> None:
    """Raise the bundle's cache so that it holds every SAE and every transcoder at once: a run
    uses each dictionary on every batch (the cache is per kind, ``max_saes`` each)."""
    spec = bundle.spec
    bundle.max_saes = max(bundle.max_saes, len(spec.layers), len(spec.transcoders))


def dictionary(bundle: Bundle, unit: Unit) -> Any:
    """The SAE or transcoder of a unit."""
    source, layer = unit
    return bundle.sae(layer) if source == RES else bundle.transcoder(layer)


def input_hook(bundle: Bundle, unit: Unit) -> str:
    """The hook a unit's dictionary reads: the residual stream, or the MLP's normalized input."""
    source, layer = unit
    return bundle.spec.hook_name(layer) if source == RES else TRANSCODER_IN.format(layer=layer)


def encode_batch(
    bundle: Bundle, table: TokenTable, windows: range, units: list[Unit]
) -> dict[int | str, Records]:
    """One forward pass over ``windows``; each unit's non-zero codes as Records, keyed by
    :func:`shard_key`."""
    import torch

    starts = table.window_start[windows.start : windows.stop]
    ends = table.window_end[windows.start : windows.stop]
    ids, keep = pad_windows(
        [table.token_ids[s:e].tolist() for s, e in zip(starts, ends, strict=True)],
        bundle.tokenizer.pad_token_id or 0,
        bundle.special_ids,
    )
    # global position of every cell; pad cells get positions too, but keep drops them
    pos = torch.from_numpy(starts).unsqueeze(1) + torch.arange(ids.shape[1])
    acts = activations(bundle, ids, {input_hook(bundle, u): u for u in units})
    out: dict[int | str, Records] = {}
    keep_d = keep.to(bundle.device)
    for unit in units:
        sae = dictionary(bundle, unit)
        with torch.inference_mode():
            feats = sae.encode(acts[unit].to(sae.dtype)).float()  # [B, T, F]
        feats = feats * keep_d.unsqueeze(-1)
        b, t, f = torch.nonzero(feats > 0, as_tuple=True)
        out[shard_key(unit)] = Records(
            pos=pos[b.cpu(), t.cpu()].numpy(),
            feat=f.cpu().numpy().astype(np.int32),
            act=feats[b, t, f].cpu().numpy().astype(np.float32),
        )
    return out


def build_tables(
    stats: LayerStats,
    ex: Examples,
    table: TokenTable,
    cfg: ReduceConfig,
    logits: tuple[np.ndarray, ...],
    neighbours: tuple[np.ndarray, np.ndarray],
) -> tuple[pa.Table, pa.Table]:
    """The features and examples tables of one layer, in the store's schema (through the codec).

    An example's context is given by its window and its start inside the window without BOS.
    """
    top_i, top_v, bot_i, bot_v = logits
    features = features_table(
        FeatureColumns(
            density=stats.density,
            n_fires=stats.n_fires,
            max_act=stats.max_act,
            mean_act=stats.mean_act,
            dead=stats.dead,
            dense=stats.dense,
            hist_counts=stats.hist_counts,
            interval_counts=stats.interval_counts,
            top_logits=top_i,
            top_values=top_v,
            bottom_logits=bot_i,
            bottom_values=bot_v,
            neighbours=neighbours[0],
            neighbour_cos=neighbours[1],
        )
    )
    win = table.window[ex.ctx_start]
    examples = examples_table(
        feature=ex.feature,
        group=ex.group,
        rank=ex.rank,
        window=win,
        start=ex.ctx_start - table.window_start[win] - 1,  # in the window without its BOS
        max_pos=ex.pos - ex.ctx_start,
        acts=ex.acts,
        n_intervals=cfg.n_intervals,
    )
    return features, examples


def store_tokens(table: TokenTable) -> pa.Table:
    """The store's ``tokens.parquet``: every window of the run without its BOS."""
    keep = np.ones(len(table.token_ids), dtype=bool)
    keep[table.window_start] = False  # each window's BOS
    return tokens_table(
        table.token_ids[keep],
        table.window_end - table.window_start - 1,
        table.window_doc,
        table.window_offset,
    )


def encode_shard(
    bundle: Bundle, table: TokenTable, windows: tuple[int, int], units: list[Unit], cfg: RunConfig
) -> dict[int | str, Records]:
    """Each unit's records of the windows ``[a, b)`` of one shard, a batch at a time."""
    a, b = windows
    parts: dict[int | str, list[Records]] = {shard_key(u): [] for u in units}
    for w0 in range(a, b, cfg.batch_windows):
        batch = encode_batch(bundle, table, range(w0, min(w0 + cfg.batch_windows, b)), units)
        for n, r in batch.items():
            parts[n].append(r)
    return {n: Records.concat(p) for n, p in parts.items()}


@dataclass
class Job:
    """``Job(cfg, bundle, out_dir).run()``: encode (resumable) then reduce and write the store."""

    cfg: RunConfig
    bundle: Bundle
    out_dir: Path
    work_dir: Path | None = None
    bundle_meta: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        hold_dictionaries(self.bundle)

    @property
    def layers(self) -> list[int]:
        """The residual SAEs' layers."""
        return self.bundle.check_layers(list(self.cfg.layers) or None)

    @property
    def units(self) -> list[Unit]:
        """Every ``(source, layer)`` the run encodes: the residual SAEs first."""
        want = self.cfg.sources or SOURCES
        units: list[Unit] = [(RES, n) for n in self.layers] if RES in want else []
        if TRANSCODER in want:
            if self.bundle.spec.transcoders:
                units += [(TRANSCODER, n) for n in self.bundle.spec.transcoder_layers]
            elif TRANSCODER in self.cfg.sources:
                raise ValueError(f"preset {self.bundle.spec.name!r} has no transcoders")
        if not units:
            raise ValueError("the run has no source to precompute")
        return units

    def width(self, unit: Unit) -> int:
        return int(dictionary(self.bundle, unit).cfg.d_sae)

    def run(self) -> Path:
        t0 = time.perf_counter()
        table = collect_windows(self.cfg, self.bundle.tokenizer)
        self.timing["tokenize_s"] = round(time.perf_counter() - t0, 2)
        work = self.work_dir or self.out_dir.with_name(self.out_dir.name + ".work")
        work.mkdir(parents=True, exist_ok=True)
        self.encode(table, work)
        return self.reduce(table, work)

    @property
    def fingerprint(self) -> str:
        """What a shard's meta must carry to be reused by this run (the units included)."""
        units = [list(u) for u in self.units]
        return self.cfg.fingerprint(json.dumps([self.bundle_meta, units], sort_keys=True))

    def encode(self, table: TokenTable, work: Path) -> None:
        """Write every missing shard (existing valid shards of the same run are kept)."""
        from tqdm.auto import tqdm

        fingerprint = self.fingerprint
        ranges = shard_ranges(table, self.cfg.shard_tokens)
        widths = {shard_key(u): self.width(u) for u in self.units}
        ends = table.window_end
        tokens_in = [
            int((~table.special[table.window_start[a] : ends[b - 1]]).sum()) for a, b in ranges
        ]
        t0 = time.perf_counter()
        done_tokens = 0
        with tqdm(total=table.n_tokens, unit="tok", unit_scale=True, desc="precompute") as bar:
            for s, (a, b) in enumerate(ranges):
                path = work / f"shard-{s:05d}.npz"
                meta = {"fingerprint": fingerprint, "shard": s, "windows": [a, b]}
                if shard_meta(path) == {**meta, "format": SHARD_FORMAT}:
                    bar.update(tokens_in[s])
                    continue
                records = encode_shard(self.bundle, table, (a, b), self.units, self.cfg)
                save_shard(path, records, widths, meta)
                done_tokens += tokens_in[s]
                bar.update(tokens_in[s])
        seconds = time.perf_counter() - t0
        self.timing["encode_s"] = round(seconds, 2)
        if done_tokens:
            self.timing["encode_tokens_per_s"] = round(done_tokens / max(seconds, 1e-9), 1)
        for stale in sorted(work.glob("shard-*.npz"))[len(ranges) :]:
            stale.unlink()  # from an earlier, longer run

    def reduce_layer(
        self, reader: ShardReader, unit: Unit, table: TokenTable, max_records: int
    ) -> tuple[LayerStats, Examples, int]:
        """One unit's statistics and examples, one feature block after another (the cluster
        run reduces the blocks in parallel instead)."""
        return reduce_blocks(
            reader, shard_key(unit), self.width(unit), table, self.cfg.reduce, max_records
        )

    def reduce(self, table: TokenTable, work: Path) -> Path:
        """Reduce the shards of every layer and write the store atomically."""
        return self.reduce_shards(table, ShardReader(sorted(work.glob("shard-*.npz"))))

    def reduce_shards(self, table: TokenTable, reader: ShardReader) -> Path:
        """Reduce the shards ``reader`` reads, every layer, and write the store atomically."""
        t0 = time.perf_counter()
        max_records = int(self.cfg.reduce_memory_mb * 2**20 / BYTES_PER_RECORD)
        features: dict[Unit, Any] = {}
        example_tables: dict[Unit, Any] = {}
        logit_ids: list[np.ndarray] = []
        layer_meta: list[StoreLayer] = []
        for unit in self.units:
            sae = dictionary(self.bundle, unit)
            stats, ex, n_blocks = self.reduce_layer(reader, unit, table, max_records)
            logger.info(
                "%s: %d records reduced in %d feature blocks",
                unit_label(unit),
                int(stats.n_fires.sum()),
                n_blocks,
            )
            logits = logit_effects(self.bundle, sae)
            logit_ids.extend([logits[0].reshape(-1), logits[2].reshape(-1)])
            features[unit], example_tables[unit] = build_tables(
                stats,
                ex,
                table,
                self.cfg.reduce,
                logits=logits,
                neighbours=neighbours(sae),
            )
            layer_meta.append(self.store_layer(unit, sae))
        tokens = store_tokens(table)
        used = tokens.column("token_ids").combine_chunks().flatten().to_numpy()
        vocab = vocab_table(np.concatenate([used, *logit_ids]), self._token_text)
        context = TokenContext.from_tables(self.out_dir, tokens, vocab)
        descriptions = {
            unit: describe_layer(features[unit], example_tables[unit], context)
            for unit in self.units
        }
        self.timing["reduce_s"] = round(time.perf_counter() - t0, 2)
        manifest = StoreManifest(
            layers=tuple(layer_meta),
            preset=self.bundle.spec.name,
            model=self.bundle_meta.get("model", self.bundle.spec.model),
            model_sha256=self.bundle_meta.get("model_sha256"),
            package_version=__version__,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            corpus={
                "spec": self.cfg.corpus,
                "sha256": corpus_sha256(self.cfg.corpus),
                "split": self.cfg.split,
            },
            tokens=int(table.n_tokens),
            windows=len(table.window_start),
            context_size=self.cfg.context_size,
            bos_policy="excluded",
            seed=self.cfg.seed,
            run=self.cfg.to_dict(),
            reduce=asdict(self.cfg.reduce),
            timing=self.timing,
        )
        return write_store(
            self.out_dir,
            manifest,
            features,
            example_tables,
            tokens,
            vocab,
            descriptions=descriptions,
        )

    def store_layer(self, unit: Unit, sae: Any) -> StoreLayer:
        """What the manifest says of one unit's dictionary."""
        source, layer = unit
        spec = self.bundle.spec
        described = spec.source(layer) if source == RES else spec.transcoder_source(layer)
        key = "metrics" if source == RES else "transcoder_metrics"
        return StoreLayer(
            layer=layer,
            source=source,
            hook_name=input_hook(self.bundle, unit),
            sae=sae_ref(described.describe()),
            d_sae=int(sae.cfg.d_sae),
            architecture=sae.cfg.architecture(),
            metrics=self.bundle_meta.get(key, {}).get(str(layer), {}),
        )

    _cache: dict[int, str] = field(default_factory=dict, repr=False)

    def _token_text(self, ids: np.ndarray) -> list[str]:
        decode = self.bundle.tokenizer.decode
        out = []
        for t in ids.tolist():
            if t not in self._cache:
                self._cache[t] = str(decode([t]))
            out.append(self._cache[t])
        return out


def bundle_meta(bundle: Bundle) -> dict[str, Any]:
    """What the store records about the bundle it describes (and checks at app start)."""
    ident = bundle_identity(bundle.spec)
    meta: dict[str, Any] = {"model": ident["model"], "model_sha256": ident["model_sha256"]}
    if bundle.spec.name == "default" and (ASSETS_SAES / SAES_MANIFEST).is_file():
        saes = SaeManifest.read(ASSETS_SAES)
        meta["metrics"] = {str(x.layer): x.to_dict() for x in saes.layers}
    shipped = (ASSETS_TRANSCODERS / SAES_MANIFEST).is_file()
    if bundle.spec.name == "default" and bundle.spec.transcoders and shipped:
        tcs = SaeManifest.read(ASSETS_TRANSCODERS)
        meta["transcoder_metrics"] = {str(x.layer): x.to_dict() for x in tcs.layers}
    return meta


def run_preset(
    preset_name: str,
    cfg: RunConfig,
    out_dir: Path,
    device: str = "auto",
    cache_dir: str | None = None,
    work_dir: Path | None = None,
) -> Path:
    """Build the preset's bundle and run the job (the ``run`` command)."""
    bundle = build_bundle(preset(preset_name), device=device, dtype="float32", cache_dir=cache_dir)
    job = Job(cfg, bundle, out_dir, work_dir=work_dir, bundle_meta=bundle_meta(bundle))
    return job.run()
