"""The store's names, Arrow schemas and manifest: the one definition both sides use.

``precompute`` writes tables of these schemas (through :mod:`explorer.store.codec`), and
:class:`explorer.store.reader.Store` opens only stores whose manifest has this ``SCHEMA_VERSION``
and whose files have exactly these schemas. Changing a schema means bumping the version.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer.paths import REPO_ROOT

if TYPE_CHECKING:
    import pyarrow as pa

SCHEMA_VERSION = 1
KIND = "store"
MANIFEST = "manifest.json"
TOKENS = "tokens.parquet"
VOCAB = "vocab.parquet"
STEERING = "steering.parquet"
"""Optional: the steering evaluation's rows (``python -m precompute steer-eval --write-store``)."""
TOP = "top"
REBUILD = "rebuild with `python -m precompute run …`"
# Columns compared by :meth:`Store.check_bundle` for each layer, as the manifest names them.
BUNDLE_LAYER_KEYS = ("hook_name", "sae", "d_sae")
DEFAULT_DENSE_THRESHOLD = 0.01


class StoreError(ValueError):
    """A store that cannot be read, or that does not belong to the bundle; one line saying why."""


# Sources (Neuronpedia's word): the kinds of dictionary a store holds features of. ``res``, the
# residual-stream SAEs, is every store's first; ``transcoder`` the per-layer MLP transcoders.
RES = "res"
TRANSCODER = "transcoder"
SOURCES = (RES, TRANSCODER)
SHORT = {RES: "res", TRANSCODER: "tc"}
"""The short name of each source, as a feature's name shows it: ``L9 tc #456``."""
BY_SHORT = {short: source for source, short in SHORT.items()}


def check_source(source: str) -> str:
    """``source`` when it is one of :data:`SOURCES` (or its short name, ``tc``), else a
    :class:`StoreError` naming the known ones."""
    found = BY_SHORT.get(source, source)
    if found not in SOURCES:
        raise StoreError(f"unknown source {source!r}; the sources are {', '.join(SOURCES)}")
    return found


def feature_name(layer: int, feature: int, source: str = RES) -> str:
    """How a feature is named wherever it is shown: ``L9 res #123``, ``L9 tc #456``."""
    return f"L{layer} {SHORT[check_source(source)]} #{feature}"


Unit = tuple[str, int]
"""One dictionary of a store: ``(source, layer)``."""


def as_unit(key: int | tuple[str, int]) -> Unit:
    """A unit from a layer (the residual SAE's, as stores before sources keyed them) or a
    ``(source, layer)`` pair."""
    if isinstance(key, tuple):
        return (check_source(key[0]), int(key[1]))
    return (RES, int(key))


def unit_label(unit: Unit) -> str:
    """``layer 5`` for a residual SAE, ``transcoder layer 5`` for another source."""
    source, layer = unit
    return f"layer {layer}" if source == RES else f"{source} layer {layer}"


def _prefix(source: str) -> str:
    """Where a source's files live: the residual SAEs' at the top (as every store before
    sources had them), another source's under its name (``transcoder/features/…``)."""
    return "" if check_source(source) == RES else f"{source}/"


def features_path(layer: int, source: str = RES) -> str:
    """The features file of ``layer``, relative to the store: ``features/layer=05.parquet``
    (a transcoder's: ``transcoder/features/layer=05.parquet``)."""
    return f"{_prefix(source)}features/layer={layer:02d}.parquet"


def examples_path(layer: int, source: str = RES) -> str:
    """The examples file of ``layer``, relative to the store: ``examples/layer=05.parquet``."""
    return f"{_prefix(source)}examples/layer={layer:02d}.parquet"


def descriptions_path(layer: int, source: str = RES) -> str:
    """The (optional) descriptions file of ``layer``: ``descriptions/layer=05.parquet``."""
    return f"{_prefix(source)}descriptions/layer={layer:02d}.parquet"


def interval_group(k: int) -> str:
    """The ``group`` value of interval ``k`` (1-based): ``interval_group(2) == 'interval 2'``."""
    return f"interval {k}"


def group_names(n_intervals: int) -> list[str]:
    """Every ``group`` value in order: ``group_names(2) == ['top', 'interval 1', 'interval 2']``;
    a group's position in this list is its :func:`group_order`."""
    return [TOP] + [interval_group(k) for k in range(1, n_intervals + 1)]


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
def descriptions_schema() -> pa.Schema:
    """``descriptions/layer=NN.parquet`` (optional; all layers or none): one row per feature,
    sorted by feature, the automatic description ``precompute`` derives from the store itself.

    Over the centres of the feature's stored examples (top and interval samples; ``n_examples``
    distinct positions): ``tokens`` are its most frequent tokens there with their ``counts``;
    ``context`` is ``'after'`` when one token (``context_token``, seen ``context_count`` times)
    precedes at least half of them, else ``'before'`` when one follows at least half of them,
    else ``''`` (token -1);
    ``promoted`` are its top promoted tokens that occur in the corpus (the first of
    ``top_logits``); ``agreement`` the share of the centres whose token, or the token after it,
    is one of its ``top_logits`` (as text: case and surrounding spaces aside), what
    :mod:`explorer.steerability` estimates steering from. ``description`` is the line the app
    shows, ``''`` for a dead feature.
    """
    import pyarrow as pa

    return pa.schema(
        [
            _col("feature", pa.int32()),
            _col("description", pa.string()),
            _col("n_examples", pa.int32()),
            _col("tokens", pa.list_(pa.int32())),
            _col("counts", pa.list_(pa.int32())),
            _col("context", pa.string()),
            _col("context_token", pa.int32()),
            _col("context_count", pa.int32()),
            _col("promoted", pa.list_(pa.int32())),
            _col("agreement", pa.float32()),
        ]
    )


@functools.cache
def older_descriptions_schema() -> pa.Schema:
    """The descriptions of a store described before ``agreement`` was added: still read (the
    lines and their tokens are the same kind), with no agreement; ``python -m precompute
    describe`` rewrites them."""
    import pyarrow as pa

    return pa.schema([f for f in descriptions_schema() if f.name != "agreement"])


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


@functools.cache
def steering_schema() -> pa.Schema:
    """``steering.parquet`` (optional): one row per evaluated (layer, feature, method, strength),
    sorted by (layer, feature, method, strength); method ``none`` with strength 0 is the
    unsteered default. ``multiple`` is the strength in units of the feature's max activation;
    ``concept`` the feature's mean read-back activation on the continuation over its max,
    ``lift`` the rise of P(top promoted tokens), ``perplexity`` and ``repetition`` the fluency
    measures (:mod:`precompute.steer_eval`), means over ``n`` continuations. ``recommended``
    marks the best trade-off per (layer, feature, method): the app's default strength.
    """
    import pyarrow as pa

    return pa.schema(
        [
            _col("layer", pa.int16()),
            _col("feature", pa.int32()),
            _col("method", pa.string()),
            _col("multiple", pa.float32()),
            _col("strength", pa.float32()),
            _col("concept", pa.float32()),
            _col("lift", pa.float32()),
            _col("perplexity", pa.float32()),
            _col("repetition", pa.float32()),
            _col("n", pa.int16()),
            _col("recommended", pa.bool_()),
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


# ------------------------------------------------------------------------------------ manifest


@dataclass(frozen=True)
class StoreLayer:
    """One layer of one source of the bundle a store describes.

    Args:
        layer: the layer index.
        source: the dictionary's source (:data:`SOURCES`): ``res`` (written only when another).
        hook_name: the hook its SAE reads (``blocks.N.hook_resid_post``; a transcoder's input).
        sae: the SAE's reference (:func:`sae_ref`).
        d_sae: the SAE's width (the features table's row count).
        architecture: the SAE's architecture (``jumprelu``…).
        metrics: what is known of the SAE's quality (from its training manifest), as given.
    """

    layer: int
    hook_name: str | None = None
    sae: str | None = None
    d_sae: int | None = None
    architecture: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    source: str = RES

    _KEYS = ("layer", "hook_name", "sae", "d_sae", "architecture", "metrics")

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self._KEYS if getattr(self, k) is not None}
        if self.source != RES:
            out["source"] = self.source
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoreLayer:
        return cls(
            source=check_source(str(data.get("source", RES))),
            layer=int(data["layer"]),
            hook_name=data.get("hook_name"),
            sae=data.get("sae"),
            d_sae=data.get("d_sae"),
            architecture=data.get("architecture"),
            metrics=dict(data.get("metrics") or {}),
        )


@dataclass(frozen=True)
class StoreManifest:
    """``manifest.json``: what a store is, how it was made, and every file with its fingerprint.

    Args:
        layers: the bundle's layers, in order (``bundle.layers`` in the JSON).
        model: the model's name (``gemma-3-270m`` for the embedded one).
        model_sha256: the model's fingerprint when known (the embedded GGUF's sha256).
        preset: the bundle preset the store was built with.
        package_version: this project's version that wrote it.
        created: UTC time of writing (ISO 8601).
        corpus: ``{"spec", "sha256", "split"}`` of the corpus the run read.
        tokens: non-special tokens encoded; ``windows`` the windows they came in.
        context_size: tokens per window, BOS included.
        bos_policy: ``excluded``: BOS never enters statistics or examples.
        seed: the run's seed.
        run: the run's config (``RunConfig.to_dict()``); ``reduce`` the statistics' parameters.
        timing: seconds per stage of the run that wrote it.
        files: per file (relative path): ``{"rows", "bytes", "sha256"}``; filled by the writer.
        extra: keys this version does not know, kept so that nothing is lost on a rewrite.
    """

    layers: tuple[StoreLayer, ...]
    model: str | None = None
    model_sha256: str | None = None
    preset: str | None = None
    package_version: str | None = None
    created: str | None = None
    corpus: dict[str, Any] | None = None
    tokens: int | None = None
    windows: int | None = None
    context_size: int | None = None
    bos_policy: str | None = None
    seed: int | None = None
    run: dict[str, Any] | None = None
    reduce: dict[str, Any] | None = None
    timing: dict[str, Any] | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    _TOP = ("package_version", "created")
    _BUNDLE = ("preset", "model", "model_sha256")
    _REST = (
        "corpus", "tokens", "windows", "context_size", "bos_policy", "seed", "run", "reduce",
        "timing",
    )  # fmt: skip

    @property
    def layer_ids(self) -> tuple[int, ...]:
        """The residual SAEs' layers (every store has them)."""
        return self.source_layers(RES)

    @property
    def sources(self) -> tuple[str, ...]:
        """The sources the store holds, in :data:`SOURCES` order (``res`` first)."""
        held = {x.source for x in self.layers}
        return tuple(s for s in SOURCES if s in held)

    def source_layers(self, source: str) -> tuple[int, ...]:
        """The layers of one source (none when the store does not hold it)."""
        return tuple(sorted(x.layer for x in self.layers if x.source == source))

    def layer(self, layer: int, source: str = RES) -> StoreLayer | None:
        return next((x for x in self.layers if x.layer == layer and x.source == source), None)

    @property
    def dense_threshold(self) -> float:
        """Density above which a feature is flagged dense (the reduce's parameter)."""
        return float((self.reduce or {}).get("dense_threshold", DEFAULT_DENSE_THRESHOLD))

    def with_files(self, files: dict[str, dict[str, Any]]) -> StoreManifest:
        return replace(self, files=files)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (keys whose value is unset are left out; ``model_sha256`` is kept)."""
        out: dict[str, Any] = {"kind": KIND, "schema_version": SCHEMA_VERSION}
        out.update({k: getattr(self, k) for k in self._TOP if getattr(self, k) is not None})
        bundle = {k: getattr(self, k) for k in self._BUNDLE if getattr(self, k) is not None}
        if self.model is not None:
            bundle["model_sha256"] = self.model_sha256
        bundle["layers"] = [x.to_dict() for x in self.layers]
        out["bundle"] = bundle
        out.update({k: getattr(self, k) for k in self._REST if getattr(self, k) is not None})
        out.update(self.extra)
        if self.files:
            out["files"] = self.files
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoreManifest:
        """Parse a manifest object; kind and version are checked by :func:`read_manifest` (and
        the writer), the shape here: a :class:`StoreError` says what is missing."""
        bundle = data.get("bundle")
        bundle = bundle if isinstance(bundle, dict) else {}
        layers = bundle.get("layers")
        files = data.get("files", {})
        if (
            not isinstance(files, dict)
            or not isinstance(layers, list)
            or not layers
            or not all(isinstance(x, dict) and isinstance(x.get("layer"), int) for x in layers)
            or not any(x.get("source", RES) == RES for x in layers)
        ):
            raise StoreError(f"{MANIFEST} lacks 'files' or 'bundle.layers'")
        known = {"kind", "schema_version", "bundle", "files", *cls._TOP, *cls._REST}
        return cls(
            layers=tuple(StoreLayer.from_dict(x) for x in layers),
            **{k: bundle.get(k) for k in cls._BUNDLE},
            **{k: data.get(k) for k in (*cls._TOP, *cls._REST)},
            files=dict(files),
            extra={k: v for k, v in data.items() if k not in known},
        )


def read_manifest(path: Path) -> StoreManifest:
    """Read and check ``path/manifest.json``: a :class:`StoreError` names what is wrong."""
    if not path.exists():
        raise StoreError(f"store directory {path} does not exist; {REBUILD}")
    if not path.is_dir():
        raise StoreError(f"store path {path} is not a directory")
    where = path / MANIFEST
    if not where.is_file():
        raise StoreError(f"store {path} has no {MANIFEST} (an unfinished or foreign directory)")
    try:
        data = json.loads(where.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreError(f"store {path}: {MANIFEST} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise StoreError(f"store {path}: {MANIFEST} is not a JSON object")
    kind = data.get("kind")
    if kind != KIND:
        raise StoreError(
            f"{path} is not a feature store: its manifest kind is {kind!r}, not {KIND!r}"
        )
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"store schema version {version}, this explorer reads version {SCHEMA_VERSION}: "
            f"{REBUILD}"
        )
    if not isinstance(data.get("files"), dict):
        raise StoreError(f"store {path}: {MANIFEST} lacks 'files' or 'bundle.layers'")
    try:
        return StoreManifest.from_dict(data)
    except StoreError as err:
        raise StoreError(f"store {path}: {err}") from None
    except (TypeError, ValueError) as err:
        raise StoreError(f"store {path}: {MANIFEST} is malformed ({err})") from None
