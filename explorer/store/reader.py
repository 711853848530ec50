"""Read-only access to a feature store directory (written by ``precompute/store_build/write.py``).

The reader rebuilds dense examples and the features' ``*_logits_tokens`` through
:mod:`explorer.store.codec`, so callers see the same records as if everything were stored in
full. Tokens and vocab are loaded once per :class:`Store`, on first use.

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

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from explorer.files import file_sha256
from explorer.store.codec import FeatureRecord, TokenContext, feature_record
from explorer.store.schema import (
    BUNDLE_LAYER_KEYS,
    MANIFEST,
    REBUILD,
    RES,
    SCHEMA_VERSION,
    STEERING,
    TOKENS,
    VOCAB,
    StoreError,
    StoreManifest,
    check_source,
    descriptions_path,
    descriptions_schema,
    examples_path,
    examples_schema,
    features_path,
    features_schema,
    older_descriptions_schema,
    read_manifest,
    sae_ref,
    steering_schema,
    tokens_schema,
    vocab_schema,
)

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

logger = logging.getLogger(__name__)


class Store:
    """Read-only access to a store directory; safe to share between threads (Gradio sessions).

    Build it with :meth:`open`. Per layer, the features table (small) and the examples index are
    loaded on first use and kept. A store holds one or more sources (``res``, ``transcoder``):
    the object :meth:`open` returns reads the residual SAEs' features, and
    :meth:`source` returns the same reader for another source (sharing files, windows and
    vocabulary); ``layers`` and every per-layer method are its source's.
    """

    def __init__(
        self,
        path: Path,
        manifest: StoreManifest,
        files: dict[str, pq.ParquetFile],
        source: str = RES,
        shared: Store | None = None,
    ):
        self.path = path
        self.manifest = manifest
        self.source_name = source
        self.layers: tuple[int, ...] = manifest.source_layers(source)
        self._files = files
        self._features: dict[int, pa.Table] = {}
        self._index: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._descriptions: dict[int, list[str]] = {}
        self._lock = threading.Lock()
        # What every source shares: windows and vocabulary, the steering table, file locks.
        self._root: Store = shared if shared is not None else self
        self._views: dict[str, Store] = {source: self}
        if shared is None:
            self._context: TokenContext | None = None
            self._recommended: dict[tuple[int, int, str], float] | None = None
            self._context_lock = threading.Lock()
            # One reader per file is not safe to share between threads: reads of a file take
            # turns.
            self._file_locks = {name: threading.Lock() for name in files}

    @property
    def sources(self) -> tuple[str, ...]:
        """The sources this store holds (``res`` first)."""
        return self.manifest.sources

    def source(self, source: str) -> Store:
        """The reader of one source's features (``res`` is this one; ``tc`` names the
        transcoders too); a :class:`StoreError` when the store does not hold it."""
        source = check_source(source)
        root = self._root
        with root._lock:
            if source not in root._views:
                if source not in self.manifest.sources:
                    raise StoreError(
                        f"store {self.path} has no {source} features (its sources: "
                        f"{', '.join(self.manifest.sources)}); rebuild it with `python -m "
                        "precompute run` and a bundle that has them"
                    )
                root._views[source] = Store(
                    self.path, self.manifest, self._files, source, shared=root
                )
            return root._views[source]

    @classmethod
    def open(cls, path: str | Path, verify: bool = False) -> Store:
        """Open and validate the store at ``path``; ``verify`` also checks every file's sha256."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        t0 = time.perf_counter()
        path = Path(path)
        manifest = read_manifest(path)
        listed: dict[str, Any] = manifest.files
        schemas = {TOKENS: tokens_schema(), VOCAB: vocab_schema()}
        optional = {STEERING: steering_schema()}
        units = [(x.source, x.layer) for x in manifest.layers]
        for source, layer in units:
            schemas[features_path(layer, source)] = features_schema()
            schemas[examples_path(layer, source)] = examples_schema()
        for source in manifest.sources:  # optional, but then for every layer of the source
            layers = manifest.source_layers(source)
            if any(descriptions_path(n, source) in listed for n in layers):
                for layer in layers:
                    schemas[descriptions_path(layer, source)] = descriptions_schema()
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
            expected = schemas.get(name, optional.get(name))
            if expected == descriptions_schema() and pf.schema_arrow.equals(
                older_descriptions_schema()
            ):
                expected = pf.schema_arrow  # described before agreement: read without it
            if expected is not None and not pf.schema_arrow.equals(expected):
                raise StoreError(
                    f"store {path}: {name} has columns {pf.schema_arrow.names}, schema version "
                    f"{SCHEMA_VERSION} has {expected.names}; {REBUILD}"
                )
            rows = pf.metadata.num_rows
            if rows != info.get("rows"):
                raise StoreError(
                    f"store {path}: {name} has {rows} rows, the manifest says {info.get('rows')} "
                    f"(truncated or replaced); {REBUILD}"
                )
            opened[name] = pf
        n_windows = opened[TOKENS].metadata.num_rows
        for entry in manifest.layers:
            for per_feature in (features_path, descriptions_path):
                name = per_feature(entry.layer, entry.source)
                if name not in opened:
                    continue
                rows = opened[name].metadata.num_rows
                if isinstance(entry.d_sae, int) and rows != entry.d_sae:
                    raise StoreError(
                        f"store {path}: {name} has {rows} features, the "
                        f"layer's SAE has d_sae {entry.d_sae}; {REBUILD}"
                    )
            name = examples_path(entry.layer, entry.source)
            lo, hi = _column_range(opened[name], "window")
            if lo < 0 or hi >= n_windows:
                raise StoreError(
                    f"store {path}: {name} points at windows {lo}..{hi}, {TOKENS} has "
                    f"{n_windows} rows; {REBUILD}"
                )
        store = cls(path, manifest, opened)
        logger.info(
            "opened store %s: %s in %.1f ms",
            path,
            "; ".join(
                f"{s} layers {', '.join(map(str, manifest.source_layers(s)))}"
                for s in manifest.sources
            ),
            1000 * (time.perf_counter() - t0),
        )
        return store

    def _check_layer(self, layer: int) -> None:
        if layer not in self.layers:
            what = "" if self.source_name == RES else f"{self.source_name} "
            raise StoreError(
                f"{what}layer {layer} is not in store {self.path}; its {what}layers are "
                + ", ".join(map(str, self.layers))
            )

    def _read(self, name: str, what: str, read: Any) -> Any:
        """Run ``read()`` on a file, turning I/O and checksum failures into a StoreError."""
        import pyarrow as pa

        try:
            with self._root._file_locks[name]:
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
                name = features_path(layer, self.source_name)
                pf = self._files[name]
                table = self._read(name, "the features", lambda: pf.read())
                table = table.replace_schema_metadata(None)
                self._features[layer] = self._load_context().with_logit_texts(table)
            return self._features[layer]

    def features_arrow(self, layer: int) -> pa.Table:
        """The features table of ``layer`` as Arrow, with the logits' texts (read once)."""
        return self._features_table(layer)

    def token_context(self) -> TokenContext:
        """The store's windows and vocabulary (read once)."""
        return self._load_context()

    @property
    def has_descriptions(self) -> bool:
        """Whether the store carries automatic descriptions (``descriptions/``)."""
        return (
            bool(self.layers) and descriptions_path(self.layers[0], self.source_name) in self._files
        )

    def descriptions(self, layer: int) -> list[str]:
        """Every feature's automatic description on ``layer``, in feature order (read once);
        all ``''`` for a store without descriptions."""
        self._check_layer(layer)
        with self._lock:
            if layer not in self._descriptions:
                name = descriptions_path(layer, self.source_name)
                if name in self._files:
                    pf = self._files[name]
                    table = self._read(
                        name, "the descriptions", lambda: pf.read(columns=["description"])
                    )
                    self._descriptions[layer] = table.column("description").to_pylist()
                else:
                    self._descriptions[layer] = [""] * self.n_features(layer)
            return self._descriptions[layer]

    def description(self, layer: int, feature: int) -> str:
        """The automatic description of one feature (``''`` when none)."""
        found = self.descriptions(layer)
        return found[feature] if 0 <= feature < len(found) else ""

    def description_fields(self, layer: int) -> pa.Table | None:
        """What ``layer``'s descriptions were derived from (the descriptions table without its
        ``description`` line, one row per feature), or ``None`` for a store without them."""
        self._check_layer(layer)
        name = descriptions_path(layer, self.source_name)
        if name not in self._files:
            return None
        pf = self._files[name]
        columns = [c for c in pf.schema_arrow.names if c != "description"]
        return self._read(name, "the descriptions", lambda: pf.read(columns=columns))

    def _load_context(self) -> TokenContext:
        """Tokens and vocab, read once (for every source)."""
        root = self._root
        with root._context_lock:
            if root._context is None:
                root._context = self._read_context()
            return root._context

    def _read_context(self) -> TokenContext:
        tokens = self._read(TOKENS, "the windows", lambda: self._files[TOKENS].read())
        vocab = self._read(VOCAB, "the vocabulary", lambda: self._files[VOCAB].read())
        return TokenContext.from_tables(self.path, tokens, vocab)

    def recommended_strength(self, layer: int, feature: int, method: str = "add") -> float | None:
        """The steering evaluation's recommended strength for the feature (``steering.parquet``'s
        row marked ``recommended``), or ``None``: not evaluated, no readable strength beat the
        default, or a store without the table (or a source other than ``res``: only the residual
        SAEs' steering is evaluated)."""
        if self.source_name != RES:
            return None
        with self._lock:
            if self._recommended is None:
                self._recommended = {}
                if STEERING in self._files:
                    pf = self._files[STEERING]
                    t = self._read(STEERING, "the steering evaluation", lambda: pf.read())
                    d = t.filter(t["recommended"]).to_pydict()
                    keys = zip(d["layer"], d["feature"], d["method"], strict=True)
                    for (n, f, m), s in zip(keys, d["strength"], strict=True):
                        self._recommended[(int(n), int(f), str(m))] = float(s)
            return self._recommended.get((int(layer), int(feature), method))

    def features(self, layer: int, columns: list[str] | None = None) -> pd.DataFrame:
        """The features table of ``layer`` (one row per feature) for search and sort."""
        table = self._features_table(layer)
        return table.select(columns).to_pandas() if columns else table.to_pandas()

    def n_features(self, layer: int) -> int:
        """The number of features (the SAE's width) of ``layer``."""
        self._check_layer(layer)
        return int(self._files[features_path(layer, self.source_name)].metadata.num_rows)

    def _examples_index(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(feature → first row, ``[F + 1]``; row group → first row, ``[G + 1]``) of ``layer``."""
        with self._lock:
            if layer in self._index:
                return self._index[layer]
            name = examples_path(layer, self.source_name)
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
        starts, groups = self._examples_index(layer)
        lo, hi = int(starts[feature]), int(starts[feature + 1])
        if lo == hi:
            return None
        first = int(np.searchsorted(groups, lo, side="right")) - 1
        last = int(np.searchsorted(groups, hi - 1, side="right")) - 1
        name = examples_path(layer, self.source_name)
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
        rows = self._example_rows(layer, feature_id)
        examples = self._load_context().examples(rows) if rows is not None else []
        return feature_record(layer, feature_id, row, examples, source=self.source_name)

    def check_bundle(
        self,
        model: str,
        model_sha256: str | None,
        layers: dict[int, dict[str, Any]],
        transcoders: dict[int, dict[str, Any]] | None = None,
    ) -> None:
        """Fail unless this store was built with this bundle.

        ``layers`` maps each of the bundle's layers to what is known of it under the manifest's
        names (``hook_name``, ``sae``, ``d_sae``); a key left out is not compared (``d_sae`` is
        only known once the SAE is loaded). The model sha256 is compared when both sides have one.
        SAE paths are compared through :func:`sae_ref`. ``transcoders`` does the same for the
        store's transcoder layers (not compared when ``None``; a store's transcoders that the
        bundle lacks are then simply not shown).
        """
        manifest = self.manifest
        hint = "use the matching bundle or rebuild the store"
        if manifest.model != model:
            raise StoreError(
                f"store {self.path} was built with model {manifest.model!r}, the bundle has "
                f"{model!r}; {hint}"
            )
        stored_sha = manifest.model_sha256
        if stored_sha and model_sha256 and stored_sha != model_sha256:
            raise StoreError(
                f"store {self.path} was built with model sha256 {stored_sha}, the bundle's is "
                f"{model_sha256}; {hint}"
            )
        for entry in sorted(manifest.layers, key=lambda x: (x.source != RES, x.layer)):
            layer = entry.layer
            known = layers if entry.source == RES else transcoders
            what = "layer" if entry.source == RES else f"{entry.source} layer"
            if known is None:
                continue
            if layer not in known:
                raise StoreError(
                    f"store {self.path} has {what} {layer}, the bundle has {what}s "
                    f"{', '.join(map(str, sorted(known))) or 'none'}; {hint}"
                )
            for key in BUNDLE_LAYER_KEYS:
                if key not in known[layer]:
                    continue
                ours, theirs = getattr(entry, key), known[layer][key]
                if key == "sae" and isinstance(ours, str) and isinstance(theirs, str):
                    same = sae_ref(ours) == sae_ref(theirs)
                else:
                    same = ours == theirs
                if not same:
                    raise StoreError(
                        f"store {self.path} {what} {layer} has {key} {ours!r}, the bundle has "
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
