"""What every button of the app does, as plain functions of their inputs (tested without Gradio).

:class:`Explorer` holds the shared, read-only things (the bundle, the store, the label database)
and answers each UI action with plain data: HTML strings, plotly figures, pandas tables. Inputs
arrive as the UI gives them (numbers as floats or strings, possibly empty) and are checked here;
anything wrong raises :class:`UserError` with a message for the user, which the app shows as a
warning instead of a traceback. Per-user state (the last encoding, the steering list) is passed in
and returned, never kept here.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer import render

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from explorer.bundle import Bundle
    from explorer.encode import Encoding
    from explorer.labels import Labels
    from explorer.store import FeatureRecord, Store

TOP_PER_TOKEN = 32  # features kept per token and layer in the microscope
TEXT_TOP = 50  # rows of "top features for the whole text"
BROWSE_ROWS = 500  # rows shown by the browse table (the search narrows it)


CURATED = Path(__file__).resolve().parent.parent / "assets" / "curated.json"


def load_curated(path: Path = CURATED) -> dict[str, Any]:
    """The curated example texts and features (``{"texts": [...], "features": [...]}``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"texts": [], "features": []}
    return {"texts": list(data.get("texts", [])), "features": list(data.get("features", []))}


class UserError(ValueError):
    """A request the app cannot serve; the message is meant for the user."""


def parse_int(value: Any, what: str, lo: int | None = None, hi: int | None = None) -> int:
    """A whole number from a UI value (int, float like ``3.0``, or text), range-checked."""
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{what} is missing: enter a whole number")
    try:
        number = float(value) if not isinstance(value, int) else value
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a whole number, not {str(value)[:40]!r}") from None
    if isinstance(number, float):
        if not math.isfinite(number) or number != int(number):
            raise UserError(f"{what} must be a whole number, not {str(value)[:40]!r}")
        number = int(number)
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        span = f"from {lo} to {hi}" if hi is not None else f"at least {lo}"
        raise UserError(f"{what} must be {span}, not {number}")
    return number


def parse_float(value: Any, what: str, lo: float, hi: float) -> float:
    """A finite number from a UI value, within ``[lo, hi]``."""
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{what} is missing: enter a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number, not {str(value)[:40]!r}") from None
    if not math.isfinite(number) or not lo <= number <= hi:
        raise UserError(f"{what} must be a number from {lo:g} to {hi:g}, not {value}")
    return number


@dataclass
class MicroscopeView:
    """The microscope's outputs for one text."""

    highlighted: list[tuple[str, float | None]]
    heatmap: go.Figure
    text_top: pd.DataFrame
    token_choices: list[tuple[str, int]]
    status: str
    encoding: Encoding


@dataclass
class DashboardView:
    """A feature's dashboard."""

    layer: int
    feature: int
    header: str
    histogram: go.Figure
    promoted: go.Figure
    suppressed: go.Figure
    neighbours: pd.DataFrame
    top_examples: str
    intervals: str
    test: str = ""
    label: str = ""


@dataclass
class Explorer:
    """The app's shared, read-only context and its handlers.

    Args:
        bundle: the model and its SAEs.
        store: the precomputed feature store of that bundle (``None``: dashboards unavailable).
        labels: the label database.
        curated: labels shipped with the bundle (``assets/curated.json``), shown where the
            database has none yet.
    """

    bundle: Bundle
    store: Store | None
    labels: Labels
    curated: dict[tuple[int, int], str] = field(default_factory=dict)
    _summary: pd.DataFrame | None = field(default=None, repr=False)
    _dens: dict[int, Any] | None = field(default=None, repr=False)

    # --- shared ---------------------------------------------------------------------------------

    @property
    def layers(self) -> list[int]:
        return list(self.bundle.layers)

    @property
    def dense_threshold(self) -> float:
        if self.store is None:
            return 0.01
        return self.store.manifest.dense_threshold

    def width(self, layer: int) -> int:
        if self.store is not None and layer in self.store.layers:
            return self.store.n_features(layer)
        return int(self.bundle.sae(layer).cfg.d_sae)

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
        """Every feature of the store, all layers: the browse table's source (built once)."""
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
            frames.append(df)
        self._summary = pd.concat(frames, ignore_index=True)
        return self._summary

    def _density(self, layer: int, feature: int) -> float | None:
        if self.store is None or layer not in self.store.layers:
            return None
        return float(self.summary_layer(layer)["density"].iat[feature])

    def summary_layer(self, layer: int) -> pd.DataFrame:
        s = self.summary()
        return s[s["layer"] == layer].reset_index(drop=True)

    def _label_text(self, labels: dict[tuple[int, int], Any], layer: int, feature: int) -> str:
        """The feature's current label, else its curated one, else ``""``."""
        found = labels.get((layer, feature))
        return found.label if found is not None else self.curated.get((layer, feature), "")

    def label_of(self, layer: int, feature: int) -> str:
        found = self.labels.current(layer, feature)
        return found.label if found is not None else self.curated.get((layer, feature), "")

    # --- microscope -----------------------------------------------------------------------------

    def microscope(
        self,
        text: str,
        layers: Sequence[Any] | None = None,
        metric: str = "max activation",
        max_density_pct: Any = 1.0,
        aggregate: str = "max",
    ) -> MicroscopeView:
        """Encode ``text`` on the chosen layers; heatmap, token highlights, top features."""
        import numpy as np
        import pandas as pd

        from explorer.encode import EncodeError, encode

        chosen = [parse_int(n, "layer") for n in layers] if layers else self.layers
        if not chosen:
            raise UserError("choose at least one layer")
        max_density = parse_float(max_density_pct, "density filter (%)", 0.0, 100.0) / 100.0
        try:
            enc = encode(self.bundle, text, layers=chosen, top_k=TOP_PER_TOKEN)
        except (EncodeError, ValueError) as e:
            raise UserError(str(e)) from None
        if not enc.tokens:
            raise UserError("the text has no tokens to show")
        dens = self._densities()
        hidden = 0
        values = np.zeros((len(chosen), len(enc.tokens)))
        frames = []
        for row, layer in enumerate(chosen):
            la = enc.layers[layer]
            ids, acts = la.feature_ids.numpy(), la.acts.numpy()
            kept = acts > 0
            if layer in dens:
                dense = dens[layer][ids] > max_density
                hidden += int((kept & dense).sum())
                kept &= ~dense
            shown = np.where(kept, acts, 0.0)
            if metric == "active features":
                values[row] = la.n_active.numpy()
            else:
                values[row] = shown.max(axis=1)
            f, a = ids[kept], acts[kept]
            if len(f):
                frames.append(pd.DataFrame({"layer": layer, "feature": f, "act": a}))
        peak = values.max(axis=0) if metric != "active features" else values.sum(axis=0)
        top = float(peak.max()) or 1.0
        highlighted = [
            (tok, float(v / top) if v > 0 else None)
            for tok, v in zip(enc.tokens, peak, strict=True)
        ]
        col = aggregate + " act"
        columns = ["layer", "feature", "label", col, "tokens", "density %"]
        if frames:
            grouped = pd.concat(frames).groupby(["layer", "feature"], sort=True)["act"]
            table = grouped.agg(["max" if aggregate == "max" else "sum", "size"]).reset_index()
            table.columns = ["layer", "feature", col, "tokens"]
            table = table.sort_values(col, ascending=False, kind="stable").head(TEXT_TOP)
            labels = self.labels.current_all()
            table[col] = table[col].astype(float).round(3)
            table["label"] = [
                self._label_text(labels, int(la_), int(f_))
                for la_, f_ in zip(table["layer"], table["feature"], strict=True)
            ]
            table["density %"] = [
                round(100 * float(dens[int(la_)][int(f_)]), 4) if int(la_) in dens else None
                for la_, f_ in zip(table["layer"], table["feature"], strict=True)
            ]
            table = table[columns]
        else:
            table = pd.DataFrame(columns=columns)
        what = "active features" if metric == "active features" else "max activation"
        status = f"{len(enc.tokens)} tokens × {len(chosen)} layers."
        if enc.truncated:
            status += f" The text was cut at {self.bundle.spec.max_tokens} tokens."
        if hidden:
            status += (
                f" {hidden} activations of dense features (density above "
                f"{100 * max_density:g}%) are hidden; raise the density filter to see them."
            )
        return MicroscopeView(
            highlighted=highlighted,
            heatmap=render.heatmap_figure(enc.tokens, chosen, values, what),
            text_top=table.reset_index(drop=True),
            token_choices=[(f"{i}: {repr(t)[1:-1]}", i) for i, t in enumerate(enc.tokens)],
            status=status,
            encoding=enc,
        )

    def _densities(self) -> dict[int, Any]:
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

    def token_features(
        self, enc: Encoding | None, position: Any, max_density_pct: Any = 1.0
    ) -> pd.DataFrame:
        """The chosen token's active features on every encoded layer, strongest first (all layers
        together)."""
        import pandas as pd

        if enc is None:
            raise UserError("encode a text first")
        pos = parse_int(position, "token", 0, len(enc.tokens) - 1)
        max_density = parse_float(max_density_pct, "density filter (%)", 0.0, 100.0) / 100.0
        dens = self._densities()
        labels = self.labels.current_all()
        rows = []
        for layer, la in enc.layers.items():
            for f, a in la.top(pos):
                d = dens.get(layer)
                density = None if d is None else float(d[f])
                if density is not None and density > max_density:
                    continue
                rows.append(
                    {
                        "layer": layer,
                        "feature": f,
                        "label": self._label_text(labels, layer, f),
                        "activation": round(a, 3),
                        "density %": None if density is None else round(100 * density, 4),
                    }
                )
        cols = ["layer", "feature", "label", "activation", "density %"]
        table = pd.DataFrame(rows, columns=cols)
        return table.sort_values("activation", ascending=False, kind="stable").reset_index(
            drop=True
        )

    # --- dashboard ------------------------------------------------------------------------------

    def record(self, layer: Any, feature: Any) -> FeatureRecord:
        from explorer.store import StoreError

        layer_n, feature_n = self.check_feature(layer, feature)
        if self.store is None:
            raise UserError(
                "this bundle has no feature store, so there is no dashboard; build one with "
                "`python -m precompute run`"
            )
        try:
            return self.store.feature(layer_n, feature_n)
        except StoreError as e:
            raise UserError(str(e)) from None

    def header(self, layer: Any, feature: Any) -> str:
        """The dashboard's header alone (after a label is saved, only it changes)."""
        rec = self.record(layer, feature)
        return render.badges_html(
            rec, self.label_of(rec.layer, rec.feature) or None, self.dense_threshold
        )

    def dashboard(self, layer: Any, feature: Any, test_text: str = "") -> DashboardView:
        """Everything about one feature; ``test_text`` (optional) is marked on its histogram."""
        import pandas as pd

        rec = self.record(layer, feature)
        label = self.label_of(rec.layer, rec.feature)
        marks: list[float] = []
        test = ""
        if test_text and test_text.strip():
            tokens, acts, truncated = self._feature_acts(rec.layer, rec.feature, test_text)
            peak = max(acts, default=0.0)
            marks = [peak] if peak > 0 else []
            test = (
                f'<div class="gse-text">{render.token_spans(tokens, acts, rec.max_act or peak)}'
                f"</div><p>max on your text: {peak:.3f}"
                + (" (text cut at the token limit)" if truncated else "")
                + ("" if peak > 0 else " — the feature does not fire on it")
                + "</p>"
            )
        labels = self.labels.current_all(rec.layer)
        neighbours = pd.DataFrame(
            {
                "feature": rec.neighbours,
                "cosine": [round(float(c), 3) for c in rec.neighbour_cos],
                "label": [self._label_text(labels, rec.layer, f) for f in rec.neighbours],
            }
        )
        return DashboardView(
            layer=rec.layer,
            feature=rec.feature,
            header=render.badges_html(rec, label or None, self.dense_threshold),
            histogram=render.histogram_figure(rec, marks),
            promoted=render.logits_figure(rec.top_logits_tokens, rec.top_logits_values, True),
            suppressed=render.logits_figure(
                rec.bottom_logits_tokens, rec.bottom_logits_values, False
            ),
            neighbours=neighbours,
            top_examples=render.examples_html(rec.top_examples, rec.max_act, "never fired"),
            intervals=render.intervals_html(rec),
            test=test,
            label=label,
        )

    def _feature_acts(
        self, layer: int, feature: int, text: str
    ) -> tuple[list[str], list[float], bool]:
        from explorer.encode import EncodeError, feature_activations

        try:
            return feature_activations(self.bundle, text, layer, feature)
        except (EncodeError, ValueError) as e:
            raise UserError(str(e)) from None

    # --- steering -------------------------------------------------------------------------------

    def default_strength(self, layer: Any, feature: Any) -> float:
        """A feature's max activation in the store: adding it once is a visible but sane push."""
        layer_n, feature_n = self.check_feature(layer, feature)
        if self.store is None:
            return 10.0
        value = float(self.summary_layer(layer_n)["max_act"].iat[feature_n])
        return round(value, 2) if value > 0 else 10.0

    def add_steer(
        self,
        steers: list[dict[str, Any]] | None,
        layer: Any,
        feature: Any,
        strength: Any,
        method: str,
    ) -> list[dict[str, Any]]:
        """The steering list with one more feature (a new list; at most 8)."""
        from explorer.steer import MAX_STRENGTH, METHODS

        layer_n, feature_n = self.check_feature(layer, feature)
        if method not in METHODS:
            raise UserError(f"method must be one of {', '.join(METHODS)}")
        if strength is None or (isinstance(strength, str) and not strength.strip()):
            value = self.default_strength(layer_n, feature_n)
        else:
            value = parse_float(strength, "strength", -MAX_STRENGTH, MAX_STRENGTH)
        current = list(steers or [])
        if len(current) >= 8:
            raise UserError("at most 8 steering features at once: remove one first")
        label = self.label_of(layer_n, feature_n)
        current.append(
            {
                "layer": layer_n,
                "feature": feature_n,
                "strength": value,
                "method": method,
                "label": label,
            }
        )
        return current

    def steer(
        self,
        prompt: str,
        steers: list[dict[str, Any]] | None,
        temperature: Any = 0.7,
        max_new_tokens: Any = 40,
        seed: Any = 0,
        freq_penalty: Any = 0.0,
    ) -> Iterator[tuple[str, str, str]]:
        """Stream ``(default, steered, status)`` as the two completions grow."""
        from explorer.steer import (
            MAX_FREQ_PENALTY,
            MAX_NEW_TOKENS,
            MAX_SEED,
            MAX_TEMPERATURE,
            GenerationConfig,
            Steer,
            SteerError,
            generate_pair,
        )

        try:
            cfg = GenerationConfig(
                max_new_tokens=parse_int(max_new_tokens, "max new tokens", 1, MAX_NEW_TOKENS),
                temperature=parse_float(temperature, "temperature", 0.0, MAX_TEMPERATURE),
                seed=parse_int(seed, "seed", 0, MAX_SEED),
                freq_penalty=parse_float(
                    freq_penalty, "frequency penalty", -MAX_FREQ_PENALTY, MAX_FREQ_PENALTY
                ),
            )
            chosen = [
                Steer(int(s["layer"]), int(s["feature"]), float(s["strength"]), str(s["method"]))
                for s in steers or []
            ]
            if not chosen:
                raise UserError("add at least one feature to steer with")
            stream = generate_pair(self.bundle, prompt, cfg, chosen)
            for c in stream:
                status = f"{max(c.n_tokens)} tokens in {c.seconds:.1f} s"
                if c.done:
                    why = {"eos": "end of text", "length": "token limit", "time": "time limit"}
                    status += f" — stopped at the {why.get(c.stop_reason, c.stop_reason)}"
                if c.prompt_truncated:
                    status += " (only the end of the prompt was used)"
                yield c.texts[0], c.texts[1], status
        except SteerError as e:
            raise UserError(str(e)) from None

    # --- browse & search ------------------------------------------------------------------------

    def browse(
        self,
        layer: Any = "all",
        query: str = "",
        sort_by: str = "density",
        descending: bool = True,
        hide_dense: bool = False,
        hide_dead: bool = True,
    ) -> pd.DataFrame:
        """Features of the store as a table: filtered, searched by label or top token, sorted."""
        import pandas as pd

        df = self.summary()
        if layer not in (None, "", "all"):
            layer_n = parse_int(layer, "layer")
            if layer_n not in self.layers:
                raise UserError(f"layer {layer_n} has no SAE here")
            df = df[df["layer"] == layer_n]
        if hide_dense:
            df = df[~df["dense"]]
        if hide_dead:
            df = df[~df["dead"]]
        labels = self.labels.current_all()
        label_col = [
            self._label_text(labels, int(a), int(b))
            for a, b in zip(df["layer"], df["feature"], strict=True)
        ]
        df = df.assign(label=label_col)
        q = (query or "").strip().lower()
        if len(q) > 200:
            raise UserError("the search text is too long (200 characters at most)")
        if q:
            hit = df["label"].str.lower().str.contains(q, regex=False) | df[
                "top_tokens"
            ].str.lower().str.contains(q, regex=False)
            df = df[hit]
        if sort_by not in df.columns:
            raise UserError(f"cannot sort by {sort_by!r}")
        df = df.sort_values([sort_by, "layer", "feature"], ascending=[not descending, True, True])
        cols = ["layer", "feature", "label", "density", "max_act", "n_fires", "top_tokens"]
        out = pd.DataFrame(df[cols].head(BROWSE_ROWS)).reset_index(drop=True)
        out["density"] = (100 * out["density"]).round(4)
        out["max_act"] = out["max_act"].astype(float).round(3)
        return out.rename(columns={"density": "density %", "max_act": "max act"})

    def random_feature(
        self, layer: Any = "all", rng: random.Random | None = None
    ) -> tuple[int, int]:
        """A random live feature (fired at least once), of one layer or any."""
        df = self.summary()
        df = df[~df["dead"]]
        if layer not in (None, "", "all"):
            df = df[df["layer"] == parse_int(layer, "layer")]
        if df.empty:
            raise UserError("no live features to choose from")
        i = (rng or random.Random()).randrange(len(df))
        return int(df["layer"].iat[i]), int(df["feature"].iat[i])

    # --- labelling ------------------------------------------------------------------------------

    def next_unlabelled(
        self, layer: Any = "all", band: str = "any", rng: random.Random | None = None
    ) -> tuple[int, int]:
        """A random live, unlabelled feature in a density band (the labelling queue)."""
        df = self.summary()
        df = df[~df["dead"]]
        if layer not in (None, "", "all"):
            df = df[df["layer"] == parse_int(layer, "layer")]
        lo, hi = DENSITY_BANDS.get(band, (None, None)) if band != "any" else (0.0, 1.0)
        if lo is None or hi is None:
            raise UserError(f"unknown density band {band!r}")
        df = df[(df["density"] > lo) & (df["density"] <= hi)]
        done = set(self.labels.current_all())
        todo = [
            (int(a), int(b))
            for a, b in zip(df["layer"], df["feature"], strict=True)
            if (int(a), int(b)) not in done
        ]
        if not todo:
            raise UserError("every feature in this selection is labelled")
        return (rng or random.Random()).choice(todo)

    def save_label(
        self, layer: Any, feature: Any, label: str, notes: str, confidence: str, labeller: str
    ) -> str:
        from explorer.labels import LabelError

        layer_n, feature_n = self.check_feature(layer, feature)
        try:
            saved = self.labels.add(layer_n, feature_n, label, notes, confidence, labeller)
        except LabelError as e:
            raise UserError(str(e)) from None
        return f"Saved label #{saved.id} for layer {layer_n} feature {feature_n}: {saved.label!r}"

    def label_history(self, layer: Any, feature: Any) -> pd.DataFrame:
        import pandas as pd

        layer_n, feature_n = self.check_feature(layer, feature)
        rows = [
            {
                "when": h.created_at,
                "label": h.label,
                "notes": h.notes,
                "confidence": h.confidence,
                "by": h.labeller,
            }
            for h in self.labels.history(layer_n, feature_n)
        ]
        return pd.DataFrame(rows, columns=["when", "label", "notes", "confidence", "by"])


DENSITY_BANDS: dict[str, tuple[float, float]] = {
    "rare (≤ 0.01%)": (0.0, 1e-4),
    "sparse (0.01–0.1%)": (1e-4, 1e-3),
    "common (0.1–1%)": (1e-3, 1e-2),
    "dense (> 1%)": (1e-2, 1.0),
}
