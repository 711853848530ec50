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
from explorer.store import Store
from explorer.store.schema import DEFAULT_DENSE_THRESHOLD

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
        explanations: generated and imported explanations (``None``: none to show).
        graphs: the Circuits tab's curated attribution graphs and its cache of computed ones.
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
    graphs: GraphLibrary = field(default_factory=GraphLibrary)
    _summary: pd.DataFrame | None = field(default=None, init=False, repr=False, compare=False)
    _tokens: TokenIndex | None = field(default=None, init=False, repr=False, compare=False)
    _dens: dict[int, Any] | None = field(default=None, init=False, repr=False, compare=False)
    _maxes: dict[int, Any] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def layers(self) -> list[int]:
        return list(self.bundle.layers)

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

    def width(self, layer: int) -> int:
        if self.store is not None and layer in self.store.layers:
            return self.store.n_features(layer)
        return self.bundle.width(layer)

    def check_feature(self, layer: Any, feature: Any) -> tuple[int, int]:
        """``(layer, feature)`` as ints, or :class:`UserError` naming what exists."""
        layer_n = parse_int(layer, "layer")
        if layer_n not in self.layers:
            have = ", ".join(map(str, self.layers))
            raise UserError(f"layer {layer_n} has no SAE here; the layers are {have}")
        width = self.width(layer_n)
        feature_n = parse_int(feature, "feature", 0, width - 1)
        return layer_n, feature_n

    def summary(self) -> pd.DataFrame:
        """Every feature of the store, all layers: the browse table's source (built once), with
        each feature's ``interest`` (:func:`explorer.app.relevance.interest`) and ``steer``, its
        likely-to-steer estimate (:func:`explorer.steerability.estimate`; 0 when dead)."""
        import pandas as pd

        if self._summary is not None:
            return self._summary
        if self.store is None:
            raise UserError("this bundle has no feature store: browse needs one")
        frames = []
        for layer in self.store.layers:
            df = self.store.features(
                layer,
                ["feature", "density", "n_fires", "max_act", "mean_act", "dead", "dense"],
            )
            tokens = self.store.features(layer, ["top_logits_tokens"])["top_logits_tokens"]
            df.insert(0, "layer", layer)
            df["top_tokens"] = [" ".join(repr(t)[1:-1] for t in list(ts)[:5]) for ts in tokens]
            df["description"] = self.store.descriptions(layer)
            frames.append(df)
        summary = pd.concat(frames, ignore_index=True)
        summary["interest"] = relevance.interest(self.store, summary)
        summary["steer"] = np.where(summary["dead"], 0.0, steerability.estimate(self.store))
        self._summary = summary
        return self._summary

    def tokens(self) -> TokenIndex:
        """The tokens a search matches in every feature of the store (built once)."""
        if self._tokens is None:
            if self.store is None:
                raise UserError("this bundle has no feature store: browse needs one")
            self._tokens = relevance.token_index(self.store)
        return self._tokens

    def summary_layer(self, layer: int) -> pd.DataFrame:
        s = self.summary()
        return s[s["layer"] == layer].reset_index(drop=True)

    def densities(self) -> dict[int, Any]:
        """``{layer: density per feature}`` (numpy), from the store, built once."""
        if self.store is None:
            return {}
        if self._dens is None:
            s = self.summary()
            self._dens = {
                layer: s.loc[s["layer"] == layer, "density"].to_numpy()
                for layer in self.store.layers
            }
        return self._dens

    def max_acts(self) -> dict[int, Any]:
        """``{layer: max activation per feature}`` (numpy float64) over the store, built once: the
        denominator of the microscope's relative strength (0 for a feature dead in the store).
        ``{}`` without a store."""
        if self.store is None:
            return {}
        if self._maxes is None:
            s = self.summary()
            self._maxes = {
                layer: s.loc[s["layer"] == layer, "max_act"].to_numpy(dtype=float)
                for layer in self.store.layers
            }
        return self._maxes

    # --- labels -----------------------------------------------------------------------------------

    def steer_estimate(self, layer: int, feature: int) -> float | None:
        """The feature's likely-to-steer estimate (``None`` without a store)."""
        if self.store is None or layer not in self.store.layers:
            return None
        s = self.summary()
        row = s.index[(s["layer"] == layer) & (s["feature"] == feature)]
        return float(s.at[row[0], "steer"]) if len(row) else None

    def label_text(self, labels: dict[tuple[int, int], Any], layer: int, feature: int) -> str:
        """The feature's label in ``labels`` (from :meth:`Labels.current_all`), else its curated
        one, else ``""``."""
        found = labels.get((layer, feature))
        return found.label if found is not None else self.curated.get((layer, feature), "")

    def description(self, layer: int, feature: int) -> str:
        """The feature's automatic description from the store (``''`` when none)."""
        if self.store is None or layer not in self.store.layers:
            return ""
        return self.store.description(layer, feature)

    def shown_label(self, labels: dict[tuple[int, int], Any], layer: int, feature: int) -> str:
        """What a table shows in a feature's label column: its label (:meth:`label_text`), else
        its automatic description marked ``[auto]``, else ``""``."""
        label = self.label_text(labels, layer, feature)
        if label:
            return label
        auto = self.description(layer, feature)
        return AUTO + auto if auto else ""

    def label_of(self, layer: int, feature: int) -> str:
        """The feature's current label, else its curated one, else ``""``."""
        found = self.labels.current(layer, feature)
        return found.label if found is not None else self.curated.get((layer, feature), "")

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
    ) -> str:
        """Store a label (the dashboard's quick label and the Label tab); the message to show.

        ``profile`` (a logged-in account) and ``key`` (the owner's key) matter on a public app
        only, where :attr:`policy` decides who may write and under which name.
        """
        layer_n, feature_n = self.check_feature(layer, feature)
        name = self.policy.labeller(labeller, profile, key)
        try:
            saved = self.labels.add(layer_n, feature_n, label, notes, confidence, name)
        except LabelError as e:
            raise UserError(str(e)) from None
        return f"Saved label #{saved.id} for layer {layer_n} feature {feature_n}: {saved.label!r}"


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
    bundle = build_bundle(spec, cache_dir=cache_dir)
    if store is not None:
        layers = {n: {"d_sae": bundle.width(n)} for n in store.layers}
        store.check_bundle(ident["model"], None, layers)
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
