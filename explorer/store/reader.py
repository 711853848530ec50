"""The feature store: its schema (the one source of truth, versioned) and read-only access to it.

A store is a directory written by ``precompute`` (``precompute/write.py``) and only read here::

    manifest.json                 provenance, and every file with its row count, size and sha256
    tokens.parquet                one row per window of the run, BOS dropped (:func:`tokens_schema`)
    vocab.parquet                 the text of every token id the store uses (:func:`vocab_schema`)
    features/layer=NN.parquet     one row per feature, sorted by feature (:func:`features_schema`)
    examples/layer=NN.parquet     one row per example, sorted by (feature, group, rank)
                                  (:func:`examples_schema`); groups run 'top', 'interval 1', …

An example does not repeat its context: it points into ``tokens.parquet`` (window, start,
length) and keeps only the feature's non-zero activations (``act_pos``/``act_val``, float16);
token texts live once in ``vocab.parquet``. The reader rebuilds the dense ``Example`` (ids, texts,
activations with zeros elsewhere) and the features' ``*_logits_tokens`` from those, so callers see
the same records as if everything were stored in full. Tokens and vocab are loaded once per
:class:`Store`, on first use.

One feature's dashboard is one cheap read: the examples file is written in row groups that never
split a feature, and a feature → rows index is derived from the ``feature`` column (one column,
read once per layer on first use), so :meth:`Store.feature` reads the one or two row groups that
hold the feature from a memory-mapped file.

:meth:`Store.open` checks what is cheap and catches what happens in practice: the manifest (kind,
schema version), every listed file present with the recorded size, a readable Parquet footer, the
declared schema and the recorded row count. It does not hash the files by default (``verify=True``
does, at about 1-2 s per GB): the size and footer checks catch truncated and replaced files, and
pages carry CRC checksums that are verified whenever they are read, so a flipped bit surfaces as
a :class:`StoreError` on the feature that holds it instead of as wrong numbers.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer.files import file_sha256
from explorer.paths import REPO_ROOT

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
KIND = "store"
MANIFEST = "manifest.json"
TOKENS = "tokens.parquet"
VOCAB = "vocab.parquet"
TOP = "top"
REBUILD = "rebuild with `python -m precompute run …`"
# Columns compared by :meth:`Store.check_bundle` for each layer, as the manifest names them.
BUNDLE_LAYER_KEYS = ("hook_name", "sae", "d_sae")


class StoreError(ValueError):
    """A store that cannot be read, or that does not belong to the bundle; one line saying why."""


def features_path(layer: int) -> str:
    """The features file of ``layer``, relative to the store: ``features/layer=05.parquet``."""
    return f"features/layer={layer:02d}.parquet"


def examples_path(layer: int) -> str:
    """The examples file of ``layer``, relative to the store: ``examples/layer=05.parquet``."""
    return f"examples/layer={layer:02d}.parquet"


def interval_group(k: int) -> str:
    """The ``group`` value of interval ``k`` (1-based): ``interval_group(2) == 'interval 2'``."""
    return f"interval {k}"


def group_order(group: str) -> int:
    """Sort key of a ``group`` value: 'top' → 0, 'interval k' → k; -1 for anything else."""
    if group == TOP:
        return 0
    name, _, k = group.partition(" ")
    return int(k) if name == "interval" and k.isdigit() and int(k) > 0 else -1


def _col(name: str, typ: pa.DataType) -> pa.Field:
    """A non-nullable column: the store has no missing values."""
    import pyarrow as pa

    return pa.field(name, typ, nullable=False)


@functools.cache
def features_schema() -> pa.Schema:
    """``features/layer=NN.parquet``: one row per feature, sorted by feature (0..d_sae-1).

    ``hist_counts`` has ``n_bins`` entries over ``[0, max_act]`` split equally (the edges are
    implied: ``linspace(0, max_act, n_bins + 1)``); ``interval_counts`` likewise with
    ``n_intervals``. ``top_logits``/``bottom_logits`` are token ids with their values (10 each; the
    reader adds their texts from ``vocab.parquet`` as ``*_logits_tokens``); ``neighbours`` are
    feature ids with their decoder cosine (10).
    """
    import pyarrow as pa

    return pa.schema(
        [
            _col("feature", pa.int32()),
            _col("density", pa.float64()),
            _col("n_fires", pa.int64()),
            _col("max_act", pa.float32()),
            _col("mean_act", pa.float32()),
            _col("dead", pa.bool_()),
            _col("dense", pa.bool_()),
            _col("hist_counts", pa.list_(pa.int64())),
            _col("interval_counts", pa.list_(pa.int64())),
            _col("top_logits", pa.list_(pa.int32())),
            _col("top_logits_values", pa.list_(pa.float16())),
            _col("bottom_logits", pa.list_(pa.int32())),
            _col("bottom_logits_values", pa.list_(pa.float16())),
            _col("neighbours", pa.list_(pa.int32())),
            _col("neighbour_cos", pa.list_(pa.float16())),
        ]
    )


@functools.cache
def examples_schema() -> pa.Schema:
    """``examples/layer=NN.parquet``: one row per example, sorted by (feature, group, rank).

    ``group`` is 'top' or 'interval k' (1-based, in that order); interval k covers activations
    in ``[max_act * (k-1) / n, max_act * k / n]`` (derived, not stored). The context is
    ``tokens.parquet``'s row ``window``, ``token_ids[start : start + length]``; ``max_pos`` is
    the index of the example's centre inside the context. ``act_pos`` are the context indices
    where the feature fires and ``act_val`` its activations there (float16: about 3 significant
    digits, which is what a dashboard shows); it is 0 everywhere else.
    """
    import pyarrow as pa

    return pa.schema(
        [
            _col("feature", pa.int32()),
            _col("group", pa.string()),
            _col("rank", pa.int16()),
            _col("window", pa.int32()),
            _col("start", pa.int16()),
            _col("length", pa.int16()),
            _col("max_pos", pa.int16()),
            _col("act_pos", pa.list_(pa.int16())),
            _col("act_val", pa.list_(pa.float16())),
        ]
    )


@functools.cache
def tokens_schema() -> pa.Schema:
    """``tokens.parquet``: one row per window of the run, in run order (``window`` = 0..W-1).

    ``token_ids`` is the window without its BOS; ``offset`` is the offset of its first token in
    document ``doc_id``.
    """
    import pyarrow as pa

    return pa.schema(
        [
            _col("window", pa.int32()),
            _col("doc_id", pa.string()),
            _col("offset", pa.int32()),
            _col("token_ids", pa.list_(pa.int32())),
        ]
    )


@functools.cache
def vocab_schema() -> pa.Schema:
    """``vocab.parquet``: the text (the tokenizer's decode of the single id) of every token id in
    ``tokens.parquet`` and in the features' logit columns; ids unique."""
    import pyarrow as pa

    return pa.schema(
        [
            _col("token_id", pa.int32()),
            _col("text", pa.string()),
        ]
    )


def sae_ref(sae: str) -> str:
    """An SAE reference that compares equal across machines.

    A local directory inside this repository (the default bundle's ``assets/saes/layer_N``) is
    written relative to the repository root; anything else (a sae-lens ``release/id``, another
    path) is kept as given. Stores built elsewhere then still match the default bundle.
    """
    path = Path(sae)
    if path.is_absolute() or path.exists():
        try:
            return path.resolve().relative_to(REPO_ROOT).as_posix()
        except ValueError:
            return sae
    return sae


@dataclass(frozen=True)
class Example:
    """One example context of a feature.

    Args:
        doc_id: the document it comes from.
        start: offset (in tokens) of the first context token in that document.
        tokens: the context's tokens as text.
        token_ids: their ids.
        acts: the feature's activation on each context token (0 where it does not fire).
        max_pos: index of the example's centre (the activation it was chosen for) in the context.
    """

    doc_id: str
    start: int
    tokens: list[str]
    token_ids: list[int]
    acts: list[float]
    max_pos: int


@dataclass(frozen=True)
class IntervalGroup:
    """Examples drawn uniformly from one activation interval ``[lo, hi)`` of a feature.

    Args:
        lo: the interval's lower bound.
        hi: its upper bound (the last interval includes max_act).
        share: the fraction of the feature's fires in this interval (count / n_fires).
        examples: up to ``per_interval`` examples, in rank order.
        count: how many fires fall in this interval.
    """

    lo: float
    hi: float
    share: float
    examples: list[Example]
    count: int


@dataclass(frozen=True)
class FeatureRecord:
    """Everything a feature's dashboard shows: its statistics and its examples.

    The statistics mirror the columns of :func:`features_schema` (see there); ``hist_edges`` adds
    the histogram's ``n_bins + 1`` implied edges.

    Args:
        layer: the layer.
        feature: the feature's index in that layer's SAE.
        top_examples: the strongest activations, strongest first.
        intervals: one group per activation interval, lowest first (empty ones included).
    """

    layer: int
    feature: int
    density: float
    n_fires: int
    max_act: float
    mean_act: float
    dead: bool
    dense: bool
    hist_counts: list[int]
    hist_edges: list[float]
    interval_counts: list[int]
    top_logits: list[int]
    top_logits_tokens: list[str]
    top_logits_values: list[float]
    bottom_logits: list[int]
    bottom_logits_tokens: list[str]
    bottom_logits_values: list[float]
    neighbours: list[int]
    neighbour_cos: list[float]
    top_examples: list[Example]
    intervals: list[IntervalGroup]


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise StoreError(f"store directory {path} does not exist; {REBUILD}")
    if not path.is_dir():
        raise StoreError(f"store path {path} is not a directory")
    where = path / MANIFEST
    if not where.is_file():
        raise StoreError(f"store {path} has no {MANIFEST} (an unfinished or foreign directory)")
    try:
        manifest = json.loads(where.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreError(f"store {path}: {MANIFEST} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise StoreError(f"store {path}: {MANIFEST} is not a JSON object")
    kind = manifest.get("kind")
    if kind != KIND:
        raise StoreError(
            f"{path} is not a feature store: its manifest kind is {kind!r}, not {KIND!r}"
        )
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"store schema version {version}, this explorer reads version {SCHEMA_VERSION}: "
            f"{REBUILD}"
        )
    bundle, files = manifest.get("bundle"), manifest.get("files")
    layers = bundle.get("layers") if isinstance(bundle, dict) else None
    if (
        not isinstance(files, dict)
        or not isinstance(layers, list)
        or not layers
        or not all(isinstance(x, dict) and isinstance(x.get("layer"), int) for x in layers)
    ):
        raise StoreError(f"store {path}: {MANIFEST} lacks 'files' or 'bundle.layers'")
    return manifest


class Store:
    """Read-only access to a store directory; safe to share between threads (Gradio sessions).

    Build it with :meth:`open`. Per layer, the features table (small) and the examples index are
    loaded on first use and kept.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], files: dict[str, pq.ParquetFile]):
        self.path = path
        self.manifest = manifest
        self.layers: tuple[int, ...] = tuple(
            sorted(x["layer"] for x in manifest["bundle"]["layers"])
        )
        self._files = files
        self._features: dict[int, pa.Table] = {}
        self._index: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._context: _Context | None = None
        self._lock = threading.Lock()
        self._context_lock = threading.Lock()
        # One reader per file is not safe to share between threads: reads of a file take turns.
        self._file_locks = {name: threading.Lock() for name in files}

    @classmethod
    def open(cls, path: str | Path, verify: bool = False) -> Store:
        """Open and validate the store at ``path``; ``verify`` also checks every file's sha256."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        t0 = time.perf_counter()
        path = Path(path)
        manifest = _read_manifest(path)
        listed: dict[str, Any] = manifest["files"]
        schemas = {TOKENS: tokens_schema(), VOCAB: vocab_schema()}
        for entry in manifest["bundle"]["layers"]:
            layer = entry["layer"]
            schemas[features_path(layer)] = features_schema()
            schemas[examples_path(layer)] = examples_schema()
        for name in schemas:
            if name not in listed:
                raise StoreError(f"store {path}: {MANIFEST} lists no {name}; {REBUILD}")
        opened: dict[str, pq.ParquetFile] = {}
        for name, info in listed.items():
            where = path / name
            if not where.is_file():
                raise StoreError(f"store {path}: {name} is missing; {REBUILD}")
            size = where.stat().st_size
            if isinstance(info.get("bytes"), int) and size != info["bytes"]:
                raise StoreError(
                    f"store {path}: {name} has {size} bytes, the manifest says {info['bytes']} "
                    f"(truncated or modified); {REBUILD}"
                )
            if verify and file_sha256(where) != info.get("sha256"):
                raise StoreError(f"store {path}: {name} does not match its sha256; {REBUILD}")
            if not name.endswith(".parquet"):
                continue
            try:
                pf = pq.ParquetFile(where, memory_map=True, page_checksum_verification=True)
            except (OSError, pa.ArrowException) as err:
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise StoreError(
                    f"store {path}: {name} is not a readable Parquet file ({first}); {REBUILD}"
                ) from None
            if name in schemas and not pf.schema_arrow.equals(schemas[name]):
                raise StoreError(
                    f"store {path}: {name} has columns {pf.schema_arrow.names}, schema version "
                    f"{SCHEMA_VERSION} has {schemas[name].names}; {REBUILD}"
                )
            rows = pf.metadata.num_rows
            if rows != info.get("rows"):
                raise StoreError(
                    f"store {path}: {name} has {rows} rows, the manifest says {info.get('rows')} "
                    f"(truncated or replaced); {REBUILD}"
                )
            opened[name] = pf
        n_windows = opened[TOKENS].metadata.num_rows
        for entry in manifest["bundle"]["layers"]:
            rows = opened[features_path(entry["layer"])].metadata.num_rows
            if isinstance(entry.get("d_sae"), int) and rows != entry["d_sae"]:
                raise StoreError(
                    f"store {path}: {features_path(entry['layer'])} has {rows} features, the "
                    f"layer's SAE has d_sae {entry['d_sae']}; {REBUILD}"
                )
            name = examples_path(entry["layer"])
            lo, hi = _column_range(opened[name], "window")
            if lo < 0 or hi >= n_windows:
                raise StoreError(
                    f"store {path}: {name} points at windows {lo}..{hi}, {TOKENS} has "
                    f"{n_windows} rows; {REBUILD}"
                )
        store = cls(path, manifest, opened)
        logger.info(
            "opened store %s: layers %s in %.1f ms",
            path,
            ", ".join(map(str, store.layers)),
            1000 * (time.perf_counter() - t0),
        )
        return store

    def _check_layer(self, layer: int) -> None:
        if layer not in self.layers:
            raise StoreError(
                f"layer {layer} is not in store {self.path}; its layers are "
                + ", ".join(map(str, self.layers))
            )

    def _read(self, name: str, what: str, read: Any) -> Any:
        """Run ``read()`` on a file, turning I/O and checksum failures into a StoreError."""
        import pyarrow as pa

        try:
            with self._file_locks[name]:
                return read()
        except (OSError, pa.ArrowException) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise StoreError(
                f"store {self.path}: cannot read {what} from {name} ({first}); {REBUILD}"
            ) from None

    def _features_table(self, layer: int) -> pa.Table:
        self._check_layer(layer)
        with self._lock:
            if layer not in self._features:
                name = features_path(layer)
                pf = self._files[name]
                table = self._read(name, "the features", lambda: pf.read())
                self._features[layer] = self._with_logit_texts(table.replace_schema_metadata(None))
            return self._features[layer]

    def _with_logit_texts(self, table: pa.Table) -> pa.Table:
        """``table`` with ``top_logits_tokens``/``bottom_logits_tokens`` (texts from the vocab)
        after their id columns, as :class:`FeatureRecord` has them."""
        import pyarrow as pa

        context = self._load_context()
        for side in ("top", "bottom"):
            ids = table.column(f"{side}_logits").combine_chunks()
            texts = context.texts(ids.values.to_numpy(zero_copy_only=False), f"{side}_logits")
            column = pa.ListArray.from_arrays(ids.offsets, pa.array(texts, pa.string()))
            at = table.schema.get_field_index(f"{side}_logits") + 1
            table = table.add_column(at, f"{side}_logits_tokens", column)
        return table

    def _load_context(self) -> _Context:
        """Tokens and vocab, read once."""
        with self._context_lock:
            if self._context is None:
                self._context = self._read_context()
            return self._context

    def _read_context(self) -> _Context:
        import numpy as np

        tokens = self._read(TOKENS, "the windows", lambda: self._files[TOKENS].read())
        vocab = self._read(VOCAB, "the vocabulary", lambda: self._files[VOCAB].read())
        ids = tokens.column("token_ids").combine_chunks()
        vocab_ids = vocab.column("token_id").to_numpy()
        order = np.argsort(vocab_ids, kind="stable")
        return _Context(
            path=self.path,
            flat=ids.values.to_numpy(zero_copy_only=False),
            offsets=ids.offsets.to_numpy(),
            doc_id=tokens.column("doc_id").to_pylist(),
            offset=tokens.column("offset").to_numpy(),
            vocab_ids=vocab_ids[order],
            vocab_text=np.array(vocab.column("text").to_pylist(), dtype=object)[order],
        )

    def features(self, layer: int, columns: list[str] | None = None) -> pd.DataFrame:
        """The features table of ``layer`` (one row per feature) for search and sort."""
        table = self._features_table(layer)
        return table.select(columns).to_pandas() if columns else table.to_pandas()

    def n_features(self, layer: int) -> int:
        """The number of features (the SAE's width) of ``layer``."""
        self._check_layer(layer)
        return int(self._files[features_path(layer)].metadata.num_rows)

    def _examples_index(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(feature → first row, ``[F + 1]``; row group → first row, ``[G + 1]``) of ``layer``."""
        import numpy as np

        with self._lock:
            if layer in self._index:
                return self._index[layer]
            name = examples_path(layer)
            pf = self._files[name]
            column = self._read(name, "the feature column", lambda: pf.read(columns=["feature"]))
            feature = column.column("feature").to_numpy()
            n = self.n_features(layer)
            if feature.size and (
                np.any(np.diff(feature) < 0) or feature[0] < 0 or feature[-1] >= n
            ):
                raise StoreError(
                    f"store {self.path}: {name} is not sorted by feature within [0, {n}); {REBUILD}"
                )
            starts = np.searchsorted(feature, np.arange(n + 1), side="left")
            sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
            groups = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
            self._index[layer] = (starts, groups)
            return self._index[layer]

    def _example_rows(self, layer: int, feature: int) -> pa.Table | None:
        import numpy as np

        starts, groups = self._examples_index(layer)
        lo, hi = int(starts[feature]), int(starts[feature + 1])
        if lo == hi:
            return None
        first = int(np.searchsorted(groups, lo, side="right")) - 1
        last = int(np.searchsorted(groups, hi - 1, side="right")) - 1
        name = examples_path(layer)
        pf = self._files[name]
        table = self._read(
            name,
            f"the examples of feature {feature}",
            lambda: pf.read_row_groups(list(range(first, last + 1))),
        )
        rows: pa.Table = table.slice(lo - int(groups[first]), hi - lo)
        return rows

    def feature(self, layer: int, feature_id: int) -> FeatureRecord:
        """One feature's statistics and examples (top first, then each interval), in rank order."""
        table = self._features_table(layer)
        if not 0 <= feature_id < table.num_rows:
            raise StoreError(
                f"feature {feature_id} is not in layer {layer}; its features are "
                f"0..{table.num_rows - 1}"
            )
        row: dict[str, Any] = table.slice(feature_id, 1).to_pylist()[0]
        by_group: dict[int, list[tuple[dict[str, Any], Example]]] = {}
        rows = self._example_rows(layer, feature_id)
        if rows is not None:
            context = self._load_context()
            for ex in context.examples(rows):
                by_group.setdefault(group_order(ex[0]["group"]), []).append(ex)
        for group in by_group.values():
            group.sort(key=lambda ex: ex[0]["rank"])

        max_act, n_fires = float(row["max_act"]), int(row["n_fires"])
        n_bins, counts = len(row["hist_counts"]), row["interval_counts"]
        intervals = []
        for k, count in enumerate(counts, start=1):
            got = by_group.get(k, [])
            lo, hi = max_act * (k - 1) / len(counts), max_act * k / len(counts)
            share = count / n_fires if n_fires else 0.0
            intervals.append(IntervalGroup(lo, hi, share, [ex for _, ex in got], count))
        del row["feature"]
        return FeatureRecord(
            layer=layer,
            feature=feature_id,
            hist_edges=[max_act * i / n_bins for i in range(n_bins + 1)],
            top_examples=[ex for _, ex in by_group.get(0, [])],
            intervals=intervals,
            **row,
        )

    def check_bundle(
        self, model: str, model_sha256: str | None, layers: dict[int, dict[str, Any]]
    ) -> None:
        """Fail unless this store was built with this bundle.

        ``layers`` maps each of the bundle's layers to what is known of it under the manifest's
        names (``hook_name``, ``sae``, ``d_sae``); a key left out is not compared (``d_sae`` is
        only known once the SAE is loaded). The model sha256 is compared when both sides have one.
        SAE paths are compared through :func:`sae_ref`.
        """
        bundle = self.manifest["bundle"]
        hint = "use the matching bundle or rebuild the store"
        if bundle.get("model") != model:
            raise StoreError(
                f"store {self.path} was built with model {bundle.get('model')!r}, the bundle has "
                f"{model!r}; {hint}"
            )
        stored_sha = bundle.get("model_sha256")
        if stored_sha and model_sha256 and stored_sha != model_sha256:
            raise StoreError(
                f"store {self.path} was built with model sha256 {stored_sha}, the bundle's is "
                f"{model_sha256}; {hint}"
            )
        for entry in sorted(bundle["layers"], key=lambda x: x["layer"]):
            layer = entry["layer"]
            if layer not in layers:
                raise StoreError(
                    f"store {self.path} has layer {layer}, the bundle has layers "
                    f"{', '.join(map(str, sorted(layers)))}; {hint}"
                )
            for key in BUNDLE_LAYER_KEYS:
                if key not in layers[layer]:
                    continue
                ours, theirs = entry.get(key), layers[layer][key]
                if key == "sae" and isinstance(ours, str) and isinstance(theirs, str):
                    same = sae_ref(ours) == sae_ref(theirs)
                else:
                    same = ours == theirs
                if not same:
                    raise StoreError(
                        f"store {self.path} layer {layer} has {key} {ours!r}, the bundle has "
                        f"{theirs!r}; {hint}"
                    )


def _column_range(pf: pq.ParquetFile, column: str) -> tuple[int, int]:
    """(min, max) of an int column from the row groups' statistics; (0, -1) when empty or when a
    row group has none (nothing to check cheaply)."""
    at = pf.schema_arrow.get_field_index(column)
    lo, hi = 0, -1
    for i in range(pf.num_row_groups):
        group = pf.metadata.row_group(i)
        if group.num_rows == 0:
            continue
        stats = group.column(at).statistics
        if stats is None or not stats.has_min_max:
            return 0, -1
        lo, hi = (stats.min, stats.max) if hi < lo else (min(lo, stats.min), max(hi, stats.max))
    return int(lo), int(hi)


@dataclass(frozen=True)
class _Context:
    """The store's windows and vocabulary in memory, to rebuild examples from.

    Args:
        path: the store (for messages).
        flat: int32 ``[N]`` every window's token ids, BOS dropped, window after window.
        offsets: int32 ``[W + 1]`` window ``w`` is ``flat[offsets[w] : offsets[w + 1]]``.
        doc_id: ``[W]`` each window's document.
        offset: int32 ``[W]`` offset of each window's first token in its document.
        vocab_ids: int32 ``[V]`` sorted token ids; ``vocab_text`` their texts.
    """

    path: Path
    flat: np.ndarray
    offsets: np.ndarray
    doc_id: list[str]
    offset: np.ndarray
    vocab_ids: np.ndarray
    vocab_text: np.ndarray

    def texts(self, ids: np.ndarray, what: str) -> list[str]:
        import numpy as np

        at = np.searchsorted(self.vocab_ids, ids)
        at = np.minimum(at, len(self.vocab_ids) - 1) if len(self.vocab_ids) else at
        if len(ids) and (not len(self.vocab_ids) or np.any(self.vocab_ids[at] != ids)):
            raise StoreError(
                f"store {self.path}: {what} use token ids missing from {VOCAB}; {REBUILD}"
            )
        texts: list[str] = self.vocab_text[at].tolist()
        return texts

    def examples(self, rows: pa.Table) -> list[tuple[dict[str, Any], Example]]:
        """Each row's (group, rank, interval bounds) and its rebuilt :class:`Example`."""
        import numpy as np

        window = rows.column("window").to_numpy()
        start = rows.column("start").to_numpy().astype(np.int64)
        length = rows.column("length").to_numpy().astype(np.int64)
        max_pos = rows.column("max_pos").to_numpy()
        act_pos = rows.column("act_pos").combine_chunks()
        act_val = rows.column("act_val").combine_chunks()
        first = self.offsets[window] + start
        if np.any(first + length > self.offsets[window + 1]):
            raise StoreError(
                f"store {self.path}: an example reaches past its window in {TOKENS}; {REBUILD}"
            )
        # One gather for every context of the feature, then one vocab lookup.
        bounds = np.concatenate([[0], np.cumsum(length)])
        idx = np.repeat(first - bounds[:-1], length) + np.arange(bounds[-1])
        ids = self.flat[idx]
        texts = self.texts(ids, "examples")
        acts = np.zeros(bounds[-1], dtype=np.float32)
        n_acts = np.diff(act_pos.offsets.to_numpy())
        acts[np.repeat(bounds[:-1], n_acts) + act_pos.flatten().to_numpy()] = (
            act_val.flatten().to_numpy().astype(np.float32)
        )
        ids_list, acts_list = ids.tolist(), acts.tolist()
        meta = rows.select(["group", "rank"]).to_pylist()
        out = []
        for i, (m, w) in enumerate(zip(meta, window.tolist(), strict=True)):
            a, b = int(bounds[i]), int(bounds[i + 1])
            example = Example(
                doc_id=self.doc_id[w],
                start=int(self.offset[w]) + int(start[i]),
                tokens=texts[a:b],
                token_ids=ids_list[a:b],
                acts=acts_list[a:b],
                max_pos=int(max_pos[i]),
            )
            out.append((m, example))
        return out
