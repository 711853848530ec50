"""Atomic store writer: Parquet tables plus ``manifest.json``, never half-written.

Everything goes into a temporary sibling directory (``.tmp-<name>-…``): the tables are validated
against the schema of :mod:`explorer.store` (the one source of truth) and against each other
(examples inside their windows, every token id in the vocab), the examples are sorted by
(feature, group, rank) and written in row groups that never split a feature, every file is
fsynced, its row count, size and sha256 go into ``manifest["files"]``, the manifest is written
last, and the directory is renamed into place. An existing store at the destination is replaced
only once the new one is complete (moved aside, the new one renamed in, the old one deleted: a
crash between those two renames leaves both, complete, as hidden siblings).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from explorer.files import atomic_write_text, file_sha256, fsync_dir, replace_dir
from explorer.store.schema import (
    KIND,
    MANIFEST,
    RES,
    SCHEMA_VERSION,
    SOURCES,
    STEERING,
    TOKENS,
    VOCAB,
    StoreError,
    StoreManifest,
    Unit,
    as_unit,
    descriptions_path,
    descriptions_schema,
    examples_path,
    examples_schema,
    features_path,
    features_schema,
    group_order,
    read_manifest,
    steering_schema,
    tokens_schema,
    unit_label,
    vocab_schema,
)

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

# Examples per row group, at least: 1024 rows is about 23 features of 45 examples, so reading one
# feature decompresses about 1k rows (a millisecond or two) while the footer stays small.
ROWS_PER_GROUP = 1024
# Brotli at its highest level: 15% smaller than zstd on the shipped store (which must fit the
# assets budget), and still decompressed in a millisecond or two per feature read.
COMPRESSION = "brotli"
COMPRESSION_LEVEL = 11
# Sorted, distinct ids (the vocabulary's) cost 0.7 MB dictionary-encoded, a tenth of that as deltas.
DELTA_COLUMNS = {VOCAB: ["token_id"]}
STORE_ENTRIES = {MANIFEST, TOKENS, VOCAB, "features", "examples", "descriptions", *SOURCES[1:]}


Tables = Mapping[int, "pa.Table | pd.DataFrame"] | Mapping[Unit, "pa.Table | pd.DataFrame"]
"""Per unit: keyed by layer (a residual SAE's) or by ``(source, layer)``."""


class WriteError(ValueError):
    """Tables or a destination that cannot make a store; the message says which and why."""


def write_store(
    out_dir: Path,
    manifest: StoreManifest | Mapping[str, Any],
    features: Tables,
    examples: Tables,
    tokens: pa.Table | pd.DataFrame,
    vocab: pa.Table | pd.DataFrame,
    rows_per_group: int = ROWS_PER_GROUP,
    descriptions: Mapping[int, pa.Table] | Mapping[Unit, pa.Table] | None = None,
) -> Path:
    """Write a store to ``out_dir`` atomically and return ``out_dir``.

    Args:
        out_dir: the store directory; an existing store there is replaced (any other non-empty
            directory is refused).
        manifest: everything but ``files``, which is filled here (the argument is left as is);
            a :class:`StoreManifest`, or its JSON object (``schema_version`` and ``kind`` are set
            if absent and must be right if given); its layers must be exactly those of
            ``features``.
        features: per layer (a residual SAE's) or ``(source, layer)``, the features table
            (:func:`explorer.store.features_schema`); ``examples`` and ``descriptions`` are
            keyed alike.
        examples: per layer, the examples table (:func:`explorer.store.examples_schema`), in
            any row order; each inside its window of ``tokens``.
        tokens: the run's windows (:func:`explorer.store.tokens_schema`), ``window`` 0..W-1.
        vocab: the text of every token id of ``tokens`` and of the features' logit columns
            (:func:`explorer.store.vocab_schema`).
        rows_per_group: minimum examples per Parquet row group (a feature is never split).
        descriptions: optional, per layer (all of them, every source), the automatic descriptions
            (:func:`explorer.store.descriptions_schema`, ``precompute.describe``).
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    units = {as_unit(k): v for k, v in features.items()}
    unit_examples = {as_unit(k): v for k, v in examples.items()}
    manifest = _check_manifest(manifest, units, unit_examples)
    _check_destination(out_dir)
    d_sae = {(e.source, e.layer): e.d_sae for e in manifest.layers}
    windows = _conform(tokens, tokens_schema(), "tokens")
    window_len = _check_tokens(windows)
    vocab_table = _conform(vocab, vocab_schema(), "vocab")
    known = _check_vocab(vocab_table)
    _check_ids(windows.column("token_ids").combine_chunks().flatten().to_numpy(), known, "tokens")
    tables = {}
    for unit in sorted(units):
        what = unit_label(unit)
        feats = _conform(units[unit], features_schema(), f"{what} features")
        _check_features(feats, what)
        for side in ("top_logits", "bottom_logits"):
            ids = feats.column(side).combine_chunks().flatten().to_numpy()
            _check_ids(ids, known, f"{what} features {side}")
        if isinstance(d_sae[unit], int) and d_sae[unit] != feats.num_rows:
            raise WriteError(
                f"{what} features have {feats.num_rows} rows, its d_sae is {d_sae[unit]}"
            )
        exs = _conform(unit_examples[unit], examples_schema(), f"{what} examples")
        tables[unit] = (feats, _sort_examples(exs, feats, window_len, what))
    described: dict[Unit, pa.Table] = {}
    if descriptions:
        described_units = {as_unit(k): v for k, v in descriptions.items()}
        if set(described_units) != set(tables):
            raise WriteError("descriptions must be given for every layer of the store or none")
        for unit, table in described_units.items():
            what = unit_label(unit)
            described[unit] = _conform(table, descriptions_schema(), f"{what} descriptions")
            if described[unit].num_rows != tables[unit][0].num_rows:
                raise WriteError(f"{what} descriptions need one row per feature")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        files: dict[str, dict[str, Any]] = {
            TOKENS: write_parquet(tmp, TOKENS, [windows]),
            VOCAB: write_parquet(tmp, VOCAB, [vocab_table]),
        }
        for (source, layer), (feats, exs) in tables.items():
            files[features_path(layer, source)] = write_parquet(
                tmp, features_path(layer, source), [feats]
            )
            files[examples_path(layer, source)] = write_parquet(
                tmp, examples_path(layer, source), _feature_aligned_chunks(exs, rows_per_group)
            )
        for (source, layer), table in described.items():
            name = descriptions_path(layer, source)
            files[name] = write_parquet(tmp, name, [table])
        text = json.dumps(manifest.with_files(files).to_dict(), indent=2, ensure_ascii=False)
        atomic_write_text(tmp / MANIFEST, text + "\n")
        for sub in sorted({(tmp / name).parent for name in files}, reverse=True):
            fsync_dir(sub)
        fsync_dir(tmp)
        replace_dir(tmp, out_dir)
    except BaseException:
        _cleanup(tmp)
        raise
    logger.info(
        "wrote store %s: %d layers, %.1f MB in %.1f s",
        out_dir,
        len(tables),
        sum((out_dir / name).stat().st_size for name in files) / 1e6,
        time.perf_counter() - t0,
    )
    return out_dir


def _check_manifest(
    manifest: StoreManifest | Mapping[str, Any],
    features: Mapping[Unit, Any],
    examples: Mapping[Unit, Any],
) -> StoreManifest:
    if not isinstance(manifest, StoreManifest):
        for key, value in (("schema_version", SCHEMA_VERSION), ("kind", KIND)):
            if manifest.get(key, value) != value:
                raise WriteError(
                    f"manifest {key} is {manifest[key]!r}, this writer writes {value!r}"
                )
        try:
            manifest = StoreManifest.from_dict(dict(manifest))
        except StoreError:
            raise WriteError("manifest has no bundle.layers list") from None
    if set(features) != set(examples) or not features:
        raise WriteError(
            f"features have layers {_names(features)}, examples have layers {_names(examples)}"
        )
    named = sorted((e.source, e.layer) for e in manifest.layers)
    if named != sorted(features):
        raise WriteError(
            f"manifest bundle.layers are {_names(named)}, the tables' are {_names(features)}"
        )
    return manifest


def _names(units: Any) -> list[int] | list[str]:
    """Units as a message shows them: plain layers when all are the residual SAEs'."""
    units = sorted(units)
    if all(source == RES for source, _ in units):
        return [layer for _, layer in units]
    return [unit_label(u) for u in units]


def _check_destination(out_dir: Path) -> None:
    """Refuse to replace anything but a store (or an empty directory): it gets deleted."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise WriteError(f"{out_dir} exists and is not a directory")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in STORE_ENTRIES)
    if foreign:
        raise WriteError(
            f"{out_dir} exists and does not look like a store (it holds {', '.join(foreign[:3])}); "
            "remove it or write elsewhere"
        )


def _conform(data: pa.Table | pd.DataFrame, schema: pa.Schema, what: str) -> pa.Table:
    """``data`` as a table of exactly ``schema`` (columns reordered, safe casts only), no nulls."""
    if isinstance(data, pa.Table):
        table = data
    else:
        table = pa.Table.from_pandas(data, preserve_index=False)
    missing = [n for n in schema.names if n not in table.column_names]
    extra = [n for n in table.column_names if n not in schema.names]
    if missing or extra:
        raise WriteError(f"{what}: missing columns {missing}, unexpected columns {extra}")
    columns = []
    for field in schema:
        column = table.column(field.name)
        if column.null_count:
            raise WriteError(f"{what}: column {field.name} has {column.null_count} nulls")
        if not column.type.equals(field.type):
            problem = "" if _castable(column.type, field.type) else "not convertible"
            if not problem:
                try:
                    column = column.cast(field.type, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                    problem = str(err).splitlines()[0]
            if problem:
                raise WriteError(
                    f"{what}: column {field.name} is {column.type}, the schema says {field.type} "
                    f"({problem})"
                )
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def _castable(src: pa.DataType, dst: pa.DataType) -> bool:
    """Whether ``src`` may become ``dst`` without a change of meaning (ints narrowed only if the
    values fit, which the safe cast checks); text never becomes numbers, nor numbers text."""
    t = pa.types
    if t.is_null(src):
        return True
    if t.is_list(dst):
        listy = t.is_list(src) or t.is_large_list(src) or t.is_fixed_size_list(src)
        return listy and _castable(src.value_type, dst.value_type)
    if t.is_integer(dst):
        return t.is_integer(src)
    if t.is_floating(dst):
        return t.is_integer(src) or t.is_floating(src)
    if t.is_string(dst):
        return t.is_string(src) or t.is_large_string(src)
    return bool(src.equals(dst))


def _list_lengths(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(pc.list_value_length(table.column(name)).to_numpy(zero_copy_only=False))


def _check_features(table: pa.Table, what: str) -> None:
    feature = table.column("feature").to_numpy()
    if not np.array_equal(feature, np.arange(len(feature))):
        raise WriteError(f"{what} features: 'feature' must be 0..{len(feature) - 1} in order")
    for name in ("hist_counts", "interval_counts"):
        lengths = _list_lengths(table, name)
        if lengths.size and (lengths.min() != lengths.max() or lengths[0] == 0):
            raise WriteError(f"{what} features: {name} lists differ in length or are empty")


def _check_tokens(table: pa.Table) -> np.ndarray:
    """Check ``window`` is 0..W-1 in order; return each window's length (BOS dropped)."""
    window = table.column("window").to_numpy()
    if not np.array_equal(window, np.arange(len(window))):
        raise WriteError(f"tokens: 'window' must be 0..{len(window) - 1} in order")
    return _list_lengths(table, "token_ids")


def _check_vocab(table: pa.Table) -> np.ndarray:
    """Check the vocab's ids are unique; return them sorted."""
    ids = np.sort(table.column("token_id").to_numpy())
    if np.any(ids[1:] == ids[:-1]):
        raise WriteError("vocab: a token_id appears twice")
    return ids


def _check_ids(ids: np.ndarray, known: np.ndarray, what: str) -> None:
    missing = np.setdiff1d(ids, known)
    if missing.size:
        raise WriteError(f"{what}: token id {int(missing[0])} is not in the vocab")


def _sort_examples(
    table: pa.Table, features: pa.Table, window_len: np.ndarray, unit: str
) -> pa.Table:
    """Check the examples of ``unit`` (``layer 5``) and sort them by (feature, group, rank)."""
    what = f"{unit} examples"
    n_features = features.num_rows
    n_intervals = len(features.column("interval_counts")[0]) if n_features else 0
    feature = table.column("feature").to_numpy()
    if feature.size and (feature.min() < 0 or feature.max() >= n_features):
        raise WriteError(f"{what}: 'feature' must lie in [0, {n_features})")
    names = pc.unique(table.column("group")).to_pylist()
    orders = np.array([group_order(g) for g in names], dtype=np.int64)
    bad = [g for g, k in zip(names, orders, strict=True) if not 0 <= k <= n_intervals]
    if bad:
        raise WriteError(
            f"{what}: unknown group {bad[0]!r} (expected 'top' or 'interval 1'..'interval "
            f"{n_intervals}')"
        )
    group = orders[pc.index_in(table.column("group"), pa.array(names)).to_numpy()]
    rank = table.column("rank").to_numpy()
    order = np.lexsort((rank, group, feature))
    key = np.stack([feature[order], group[order], rank[order]])
    steps_differ = np.any(np.diff(key, axis=1) != 0, axis=0)
    if not steps_differ.all():
        raise WriteError(f"{what}: two examples share a (feature, group, rank)")
    window = table.column("window").to_numpy()
    if window.size and (window.min() < 0 or window.max() >= len(window_len)):
        raise WriteError(f"{what}: 'window' must lie in [0, {len(window_len)}) (the tokens' rows)")
    start = table.column("start").to_numpy().astype(np.int64)
    n_ctx = table.column("length").to_numpy().astype(np.int64)
    if np.any((start < 0) | (n_ctx < 1) | (start + n_ctx > window_len[window])):
        raise WriteError(f"{what}: a context (start, length) does not lie inside its window")
    max_pos = table.column("max_pos").to_numpy()
    if np.any((max_pos < 0) | (max_pos >= n_ctx)):
        raise WriteError(f"{what}: max_pos must index into the context")
    n_acts = _list_lengths(table, "act_pos")
    if not np.array_equal(n_acts, _list_lengths(table, "act_val")):
        raise WriteError(f"{what}: act_pos and act_val differ in length")
    act_pos = table.column("act_pos").combine_chunks().flatten().to_numpy().astype(np.int64)
    if np.any((act_pos < 0) | (act_pos >= np.repeat(n_ctx, n_acts))):
        raise WriteError(f"{what}: act_pos must index into the context")
    act_val = table.column("act_val").combine_chunks().flatten().to_numpy()
    if not np.all(np.isfinite(act_val)):
        raise WriteError(f"{what}: act_val must be finite (float16 holds up to 65504)")
    if np.any(np.diff(order) != 1):
        table = table.take(pa.array(order))
    return table


def _feature_aligned_chunks(table: pa.Table, rows_per_group: int) -> list[pa.Table]:
    """Consecutive slices of at least ``rows_per_group`` rows that never split a feature.

    E.g. features with 3, 3, 3 rows and ``rows_per_group=4`` → slices of 6 and 3 rows.
    """
    if table.num_rows == 0:
        return [table]
    feature = table.column("feature").to_numpy()
    starts = np.flatnonzero(np.r_[True, feature[1:] != feature[:-1]])
    cuts, last = [0], 0
    # Loop over row groups (a few hundred per layer), not features: jump to the first feature
    # boundary at least rows_per_group past the last cut.
    while True:
        i = int(np.searchsorted(starts, last + rows_per_group, side="left"))
        if i >= len(starts):
            break
        last = int(starts[i])
        cuts.append(last)
    cuts.append(table.num_rows)
    return [table.slice(a, b - a) for a, b in itertools.pairwise(cuts)]


def write_parquet(root: Path, name: str, chunks: list[pa.Table]) -> dict[str, Any]:
    """Write ``chunks`` as one row group each; fsync; return the manifest's entry for the file."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = chunks[0].schema
    delta = DELTA_COLUMNS.get(name, [])
    writer = pq.ParquetWriter(
        path,
        schema,
        compression=COMPRESSION,
        compression_level=COMPRESSION_LEVEL,
        use_dictionary=[c for c in schema.names if c not in delta],
        column_encoding=dict.fromkeys(delta, "DELTA_BINARY_PACKED") or None,
        write_page_checksum=True,
        # Statistics only where they help a reader (list columns' would bloat the footer).
        write_statistics=["feature", "group", "rank", "window"],
    )
    try:
        for chunk in chunks:
            writer.write_table(chunk, row_group_size=max(chunk.num_rows, 1))
    finally:
        writer.close()
    with path.open("rb") as f:
        os.fsync(f.fileno())
    return {
        "rows": sum(c.num_rows for c in chunks),
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
    }


def add_to_store(store_dir: Path, tables: Mapping[str, pa.Table]) -> dict[str, dict[str, Any]]:
    """Add (or replace) optional tables of an existing store and list them in its manifest.

    ``tables`` maps a file name relative to the store (``steering.parquet``,
    ``descriptions/layer=05.parquet``) to its table. Nothing else in the store changes: the other
    files keep their bytes and manifest entries, the manifest its keys in their order. Each table
    is written beside the store, then moved over its final name, and the manifest rewritten
    atomically last, so an interrupted call leaves a store that reads as before. Returns the new
    files' manifest entries.
    """
    store_dir = Path(store_dir)
    try:
        manifest = read_manifest(store_dir)
    except StoreError as err:
        raise WriteError(str(err)) from None
    tmp = store_dir / f".tmp-{uuid.uuid4().hex[:8]}"
    entries: dict[str, dict[str, Any]] = {}
    try:
        for name, table in tables.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            entries[name] = write_parquet(tmp, name, [table])
        for name in tables:
            final = store_dir / name
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / name, final)
            fsync_dir(final.parent)
    finally:
        _cleanup(tmp)
    data = json.loads((store_dir / MANIFEST).read_text(encoding="utf-8"))
    data["files"] = {**manifest.files, **entries}
    atomic_write_text(store_dir / MANIFEST, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    fsync_dir(store_dir)
    return entries


def write_steering(store_dir: Path, table: pa.Table | pd.DataFrame) -> dict[str, Any]:
    """Add (or replace) a store's optional ``steering.parquet`` (:func:`add_to_store`); returns
    the file's manifest entry."""
    rows = _conform(table, steering_schema(), "steering")
    rows = rows.sort_by([(c, "ascending") for c in ("layer", "feature", "method", "strength")])
    return add_to_store(store_dir, {STEERING: rows})[STEERING]


def _cleanup(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
