"""What every tab shares: the app's context, the UI's value parsing, and how the context is opened.

:class:`Context` holds the shared, read-only things (the bundle, the store, the label database,
the curated content) and the answers several tabs need (a feature's label, the store's summary
table, a checked ``(layer, feature)``). Inputs arrive as the UI gives them (numbers as floats or
strings, possibly empty) and are checked with :func:`parse_int` / :func:`parse_float`; anything
wrong raises :class:`UserError` with a message for the user, which the app shows as a warning
instead of a traceback. Per-user state (the last encoding, the steering list) is passed in and
returned, never kept here.

Every read of the store's manifest is here, behind :attr:`Context.dense_threshold` and
:attr:`Context.store_tokens`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from explorer import steerability
from explorer.app import relevance
from explorer.app.inputs import UserError, parse_float, parse_int
from explorer.app.policy import WritePolicy
from explorer.bundle import build_bundle, bundle_identity, preset
from explorer.circuits.library import GraphLibrary
from explorer.explanations import ExplanationError, Explanations
from explorer.labels import LabelError, Labels
from explorer.paths import ASSETS_STORE, CURATED
from explorer.store import Store, StoreError
from explorer.store.schema import (
    DEFAULT_DENSE_THRESHOLD,
    RES,
    SHORT,
    TRANSCODER,
    check_source,
    feature_name,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")
AUTO = "[auto] "  # marks an automatic description wherever a table shows it in a label's place

if TYPE_CHECKING:
    import pandas as pd

    from explorer.app.relevance import TokenIndex
    from explorer.bundle import Bundle


DEMO_FIELDS: dict[str, type | tuple[type, ...]] = {
    "prompt": str,
    "layer": int,
    "feature": int,
    "strength": (int, float),
    "method": str,
    "seed": int,
}
"""The fields every steering demo has (``temperature``, ``max_new_tokens``, ``label`` and
``why`` are optional)."""


def load_curated(preset_name: str = "default", path: Path = CURATED) -> dict[str, Any]:
    """The curated example texts, features and steering demos of a preset (``{"texts": [...],
    "features": [...], "steering": [...]}``): what ``curated.json`` holds when its ``preset`` is
    this one, else nothing (the default's features mean nothing in another SAE set). A steering
    demo lacking a field of :data:`DEMO_FIELDS`, or with one of the wrong type, is left out."""
    empty: dict[str, Any] = {"texts": [], "features": [], "steering": []}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return empty
    if not isinstance(data, dict) or data.get("preset", "default") != preset_name:
        return empty
    demos = [
        d
        for d in data.get("steering", [])
        if isinstance(d, dict)
        and all(
            isinstance(d.get(k), t) and not isinstance(d.get(k), bool)
            for k, t in DEMO_FIELDS.items()
        )
    ]
    return {
        "texts": list(data.get("texts", [])),
        "features": list(data.get("features", [])),
        "steering": demos,
    }


@dataclass
class Context:
    """What every tab shares.

    Args:
        bundle: the model and its SAEs.
        store: the precomputed feature store of that bundle (``None``: dashboards unavailable).
        labels: the label database.
        curated: labels shipped with the bundle (``assets/curated.json``), shown where the
            database has none yet.
        content: the curated example texts and features (the Start tab's table, the
            microscope's example texts).
        policy: who may write labels, import and retract (open unless published).
        explanations: generated and imported explanations (``None``: none to show); they are
            the residual SAEs' features' only.
        source_labels: the label database of each other source (``transcoder``): the same file
            as ``labels``, a scope of its own (:func:`source_scope`), so a label saved for
            ``L2 tc #5`` never shows on ``L2 res #5``; opened on first use when not given.
        graphs: the Circuits tab's curated attribution graphs and its cache of computed ones.

    Sources (Neuronpedia's word): the app offers the residual SAEs' features (``res``) always
    and the transcoders' (``transcoder``, ``tc``) when the bundle has transcoders
    (:attr:`sources`); a source's dashboards, browse rows and strengths need the store to hold
    it too (:meth:`reader`), its encoding and steering need only the bundle.
    """

    bundle: Bundle
    store: Store | None
    labels: Labels
    curated: dict[tuple[int, int], str] = field(default_factory=dict)
    content: dict[str, Any] = field(
        default_factory=lambda: {"texts": [], "features": [], "steering": []}
    )
    policy: WritePolicy = field(default_factory=WritePolicy)
    explanations: Explanations | None = None
    source_labels: dict[str, Labels] = field(default_factory=dict)
    graphs: GraphLibrary = field(default_factory=GraphLibrary)
    _summary: dict[str, pd.DataFrame] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _tokens: TokenIndex | None = field(default=None, init=False, repr=False, compare=False)
    _dens: dict[str, dict[int, Any]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _maxes: dict[str, dict[int, Any]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _tc_widths: dict[int, int] = field(default_factory=dict, init=False, repr=False)

    @property
    def layers(self) -> list[int]:
        """The residual SAEs' layers."""
        return list(self.bundle.layers)

    # --- sources ----------------------------------------------------------------------------------

    @property
    def sources(self) -> tuple[str, ...]:
        """The sources the app offers: ``res``, and ``transcoder`` when the bundle has them."""
        spec = getattr(self.bundle, "spec", None)  # a stand-in bundle may have no spec
        return (RES, TRANSCODER) if getattr(spec, "transcoder_layers", ()) else (RES,)

    def source(self, source: Any = RES) -> str:
        """A source as the page, a link or the API names it (``res``, ``tc``, ``transcoder``;
        blank: ``res``), checked against :attr:`sources`; else :class:`UserError`."""
        if source is None or (isinstance(source, str) and not source.strip()):
            return RES
        text = str(source).strip().lower()
        try:
            found = check_source(text)
        except StoreError:
            raise UserError(f"unknown source {str(source)[:40]!r}: use res or tc") from None
        if found not in self.sources:
            raise UserError(
                "this bundle has no transcoders: its features are the residual SAEs' (res)"
            )
        return found

    def source_layers(self, source: str = RES) -> list[int]:
        """The layers of a source's dictionaries in the bundle."""
        if source == RES:
            return self.layers
        return list(self.bundle.spec.transcoder_layers)

    def reader(self, source: str = RES) -> Store | None:
        """The store's reader of ``source`` (``None``: no store, or one without that source)."""
        if self.store is None or source not in self.sources:
            return None
        if source == RES:
            return self.store
        return self.store.source(source) if source in self.store.sources else None

    def need_reader(self, source: str = RES, what: str = "a dashboard") -> Store:
        """:meth:`reader`, or :class:`UserError` saying why there is none and how to build it."""
        found = self.reader(source)
        if found is not None:
            return found
        if self.store is None:
            raise UserError(
                f"this bundle has no feature store, so there is no {what}; build one with "
                "`python -m precompute run`"
            )
        raise UserError(
            f"the feature store has no {source} data, so there is no {what} for {SHORT[source]} "
            "features (they still encode and steer); rebuild the store with `python -m "
            "precompute run` and this bundle, which has transcoders"
        )

    def labels_for(self, source: str = RES) -> Labels:
        """The label database of ``source`` (the transcoders': opened on first use, the same
        file as :attr:`labels`, scope :func:`source_scope`)."""
        if source == RES:
            return self.labels
        if source not in self.source_labels:
            reader = self.reader(source)
            widths = {n: reader.n_features(n) for n in reader.layers} if reader else None
            self.source_labels[source] = Labels(
                self.labels.path, scope=source_scope(self.labels.scope, source), widths=widths
            )
        return self.source_labels[source]

    def read_explanations(self, read: Callable[[Explanations], T], default: T) -> T:
        """``read(explanations)``, or ``default`` without an explanations file or when it cannot
        be read (logged: explanations are an extra, the page still answers)."""
        if self.explanations is None:
            return default
        try:
            return read(self.explanations)
        except ExplanationError as e:
            logger.warning("explanations unavailable: %s", e)
            return default

    # --- the store's manifest: read here only ----------------------------------------------------

    @property
    def dense_threshold(self) -> float:
        """The density above which the store flags a feature dense."""
        if self.store is None:
            return DEFAULT_DENSE_THRESHOLD
        return self.store.manifest.dense_threshold

    @property
    def store_tokens(self) -> int | None:
        """How many corpus tokens the store was computed over (``None``: no store)."""
        if self.store is None:
            return None
        return int(self.store.manifest.tokens or 0)

    # --- features ---------------------------------------------------------------------------------

    def width(self, layer: int, source: str = RES) -> int:
        """The number of features of a layer's dictionary (the store's, else the bundle's)."""
        reader = self.reader(source)
        if reader is not None and layer in reader.layers:
            return reader.n_features(layer)
        if source == RES:
            return self.bundle.width(layer)
        if layer not in self._tc_widths:
            self._tc_widths[layer] = int(self.bundle.transcoder(layer).cfg.d_sae)
        return self._tc_widths[layer]

    def check_feature(self, layer: Any, feature: Any, source: Any = RES) -> tuple[int, int]:
        """``(layer, feature)`` of ``source`` as ints, or :class:`UserError` naming what
        exists."""
        source = self.source(source)
        layer_n = parse_int(layer, "layer")
        have = self.source_layers(source)
        if layer_n not in have:
            what = "SAE" if source == RES else "transcoder"
            shown = ", ".join(map(str, have))
            raise UserError(f"layer {layer_n} has no {what} here; the layers are {shown}")
        width = self.width(layer_n, source)
        feature_n = parse_int(feature, "feature", 0, width - 1)
        return layer_n, feature_n

    def name(self, layer: int, feature: int, source: str = RES) -> str:
        """How the page names a feature: ``L9 res #123``, ``L9 tc #456``."""
        return feature_name(layer, feature, source)

    def summary(self, source: str = RES) -> pd.DataFrame:
        """Every feature of one source in the store, all layers (built once), with each
        feature's ``source``, ``interest`` (:func:`explorer.app.relevance.interest`) and
        ``steer``, its likely-to-steer estimate (:func:`explorer.steerability.estimate`; 0 when
        dead). :meth:`browse_summary` is every source's together."""
        import pandas as pd

        if source in self._summary:
            return self._summary[source]
        store = self.need_reader(source, "browse")
        frames = []
        for layer in store.layers:
            df = store.features(
                layer,
                ["feature", "density", "n_fires", "max_act", "mean_act", "dead", "dense"],
            )
            tokens = store.features(layer, ["top_logits_tokens"])["top_logits_tokens"]
            df.insert(0, "layer", layer)
            df["top_tokens"] = [" ".join(repr(t)[1:-1] for t in list(ts)[:5]) for ts in tokens]
            df["description"] = store.descriptions(layer)
            frames.append(df)
        summary = pd.concat(frames, ignore_index=True)
        summary.insert(2, "source", SHORT[source])
        summary["interest"] = relevance.interest(store, summary)
        summary["steer"] = np.where(summary["dead"], 0.0, steerability.estimate(store))
        self._summary[source] = summary
        return summary

    def browse_sources(self) -> list[str]:
        """The sources the store holds features of, of those offered (``res`` first)."""
        return [s for s in self.sources if self.reader(s) is not None]

    def browse_summary(self) -> pd.DataFrame:
        """:meth:`summary` of every source the store holds (``res``'s rows first): browse's
        table."""
        import pandas as pd

        if "all" not in self._summary:
            sources = self.browse_sources() or [RES]
            frames = [self.summary(s) for s in sources]
            self._summary["all"] = pd.concat(frames, ignore_index=True)
        return self._summary["all"]

    def tokens(self) -> TokenIndex:
        """The tokens a search matches in every feature of :meth:`browse_summary` (built
        once)."""
        if self._tokens is None:
            sources = self.browse_sources()
            if not sources:
                raise UserError("this bundle has no feature store: browse needs one")
            indexes = [relevance.token_index(self.need_reader(s)) for s in sources]
            sizes = [len(self.summary(s)) for s in sources]
            self._tokens = relevance.concat(indexes, sizes)
        return self._tokens

    def summary_layer(self, layer: int, source: str = RES) -> pd.DataFrame:
        s = self.summary(source)
        return s[s["layer"] == layer].reset_index(drop=True)

    def densities(self, source: str = RES) -> dict[int, Any]:
        """``{layer: density per feature}`` (numpy) of one source, from the store, built once
        (``{}`` without that source's data)."""
        return self._per_layer(self._dens, source, "density")

    def max_acts(self, source: str = RES) -> dict[int, Any]:
        """``{layer: max activation per feature}`` (numpy float64) of one source over the
        store, built once: the denominator of the microscope's relative strength (0 for a
        feature dead in the store). ``{}`` without that source's data."""
        return self._per_layer(self._maxes, source, "max_act")

    def _per_layer(self, cache: dict[str, dict[int, Any]], source: str, column: str) -> Any:
        reader = self.reader(source)
        if reader is None:
            return {}
        if source not in cache:
            s = self.summary(source)
            cache[source] = {
                layer: s.loc[s["layer"] == layer, column].to_numpy(dtype=float)
                for layer in reader.layers
            }
        return cache[source]

    # --- labels -----------------------------------------------------------------------------------

    def steer_estimate(self, layer: int, feature: int, source: str = RES) -> float | None:
        """The feature's likely-to-steer estimate (``None`` without the source's data)."""
        reader = self.reader(source)
        if reader is None or layer not in reader.layers:
            return None
        s = self.summary(source)
        row = s.index[(s["layer"] == layer) & (s["feature"] == feature)]
        return float(s.at[row[0], "steer"]) if len(row) else None

    def label_text(
        self, labels: dict[tuple[int, int], Any], layer: int, feature: int, source: str = RES
    ) -> str:
        """The feature's label in ``labels`` (from :meth:`Labels.current_all` of its source),
        else its curated one (the residual SAEs' only), else ``""``."""
        found = labels.get((layer, feature))
        if found is not None:
            return str(found.label)
        return self.curated.get((layer, feature), "") if source == RES else ""

    def description(self, layer: int, feature: int, source: str = RES) -> str:
        """The feature's automatic description from the store (``''`` when none)."""
        reader = self.reader(source)
        if reader is None or layer not in reader.layers:
            return ""
        return reader.description(layer, feature)

    def shown_label(
        self, labels: dict[tuple[int, int], Any], layer: int, feature: int, source: str = RES
    ) -> str:
        """What a table shows in a feature's label column: its label (:meth:`label_text`), else
        its automatic description marked ``[auto]``, else ``""``."""
        label = self.label_text(labels, layer, feature, source)
        if label:
            return label
        auto = self.description(layer, feature, source)
        return AUTO + auto if auto else ""

    def label_of(self, layer: int, feature: int, source: str = RES) -> str:
        """The feature's current label, else its curated one, else ``""``."""
        found = self.labels_for(source).current(layer, feature)
        if found is not None:
            return found.label
        return self.curated.get((layer, feature), "") if source == RES else ""

    def save_label(
        self,
        layer: Any,
        feature: Any,
        label: str,
        notes: str,
        confidence: str,
        labeller: str,
        profile: Any = None,
        key: Any = "",
        source: Any = RES,
    ) -> str:
        """Store a label (the dashboard's quick label and the Label tab) in ``source``'s label
        database; the message to show.

        ``profile`` (a logged-in account) and ``key`` (the owner's key) matter on a public app
        only, where :attr:`policy` decides who may write and under which name.
        """
        source = self.source(source)
        layer_n, feature_n = self.check_feature(layer, feature, source)
        name = self.policy.labeller(labeller, profile, key)
        try:
            saved = self.labels_for(source).add(layer_n, feature_n, label, notes, confidence, name)
        except LabelError as e:
            raise UserError(str(e)) from None
        named = feature_name(layer_n, feature_n, source)
        return f"Saved label #{saved.id} for {named}: {saved.label!r}"


def source_scope(scope: str, source: str) -> str:
    """The label scope of a source: the bundle's scope for ``res`` (as before sources),
    ``<scope>/transcoder`` for the transcoders."""
    return scope if source == RES else f"{scope}/{source}"


def default_labels_path() -> Path:
    """``/data/labels.sqlite`` on a Space with persistent storage, else the user's data dir."""
    if Path("/data").is_dir() and os.access("/data", os.W_OK):
        return Path("/data/labels.sqlite")
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "gemma-scope-explorer" / "labels.sqlite"


def open_explorer(
    preset_name: str,
    store_dir: str | None,
    labels_path: str | None,
    cache_dir: str | None = None,
    public: bool | None = None,
    explanations_path: str | None = None,
) -> Context:
    """Build the bundle, open and check the store, open the labels: the app's context.

    A store that does not match the bundle, or is damaged, stops the start with a message
    naming the problem (a :class:`ValueError`).
    """
    spec = preset(preset_name)
    if store_dir is None and spec.name == "default":
        store_dir = str(ASSETS_STORE)
    # Cheap checks first: a bad store or label file fails before the model loads.
    store = Store.open(store_dir) if store_dir is not None else None
    widths = {n: store.n_features(n) for n in store.layers} if store is not None else None
    labels = Labels(labels_path or default_labels_path(), scope=spec.name, widths=widths)
    explanations = open_explanations(explanations_path, store_dir)
    ident = bundle_identity(spec)
    if store is not None:
        store.check_bundle(ident["model"], ident["model_sha256"], ident["layers"])
    # The embedded default's transcoders are small (18 x ~10 MB): all of them fit at once, so
    # the microscope shows every transcoder layer without reloading.
    room = len(spec.transcoder_layers) if spec.name == "default" else 0
    bundle = build_bundle(spec, cache_dir=cache_dir, max_saes=max(8, room))
    if store is not None:
        layers = {n: {"d_sae": bundle.width(n)} for n in store.layers}
        transcoders: dict[int, dict[str, Any]] | None = None
        if spec.transcoder_layers and TRANSCODER in store.sources:
            transcoders = {n: {} for n in spec.transcoder_layers}
        store.check_bundle(ident["model"], None, layers, transcoders)
    content = load_curated(spec.name)
    return Context(
        bundle=bundle,
        store=store,
        labels=labels,
        curated=curated_labels(content),
        content=content,
        policy=WritePolicy.from_env(public),
        explanations=explanations,
    )


def curated_labels(content: dict[str, Any]) -> dict[tuple[int, int], str]:
    """The labels shipped in ``curated.json``: each curated feature's, and each steering demo's
    for a feature that is not a curated one (so the Steering tab's table and the dashboard name
    a demo's feature); a curated feature's own label wins."""
    out = {
        (d["layer"], d["feature"]): d["label"]
        for d in content["steering"]
        if isinstance(d.get("label"), str) and d["label"]
    }
    out.update({(f["layer"], f["feature"]): f["label"] for f in content["features"]})
    return out


def open_explanations(path: str | None, store_dir: str | None) -> Explanations | None:
    """The explanations file given, else the store's ``explanations.sqlite`` if it has one
    (never created here: the app only reads explanations)."""
    if path is None and store_dir is not None:
        beside = Path(store_dir) / "explanations.sqlite"
        path = str(beside) if beside.exists() else None
    return Explanations(path, create=False) if path is not None else None


__all__ = ["Context", "UserError", "load_curated", "open_explorer", "parse_float", "parse_int"]
