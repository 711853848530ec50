"""The Microscope tab's handlers: a text encoded on the chosen layers, then shown: the tokens
shaded by one feature (:mod:`explorer.app.shading`), the tokens x layers heatmap, one token's
features and the whole text's top features. The tab's layout and wiring are in
:mod:`explorer.app.microscope_tab`.

Encoding (the forward pass) and showing are separate: :func:`encode_text` runs the model once,
:func:`show` builds everything on screen from that encoding, so a control (the heatmap's metric,
the density filter, the ranking, the shading feature, the token) applies at once, without
encoding again.

**Strength is relative** (:mod:`explorer.app.strength`): a feature's activation as a % of its
maximum over the store, shown beside the raw activation. Raw activations grow with depth, so a raw
ranking would show almost only the last layer. Every "strongest" here is by relative strength:
the per-token top-k kept by :func:`explorer.encode.encode`, the heatmap, the token table's order
and the whole text's ranking (which search by inference reuses), all on one colour scale
(:func:`explorer.app.render.strength_colour`). The status line says when a fallback was taken (a
feature dead in the store, a layer without store maxima) and when the text goes past a feature's
store maximum.

**Sources.** A text is encoded with one source's dictionaries: the residual SAEs' (``res``) or
the transcoders' (``tc``, each reading its layer's MLP input), chosen beside the layers; the
heatmap then shows that source's layers (every transcoder layer, 18 on the embedded default,
when the bundle's cache holds them) and every table and shading names its features
(``L9 tc #456``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np
import pandas as pd

from explorer.app import render, shading
from explorer.app.context import Context, UserError, parse_float, parse_int
from explorer.app.strength import (
    REL,
    LayerStrength,
    cell_text,
    cells,
    layer_name,
    per_feature,
    rank_scales,
)
from explorer.app.strength import strengths as _strengths
from explorer.encode import EncodeError, Encoding, encode
from explorer.store.schema import RES, SHORT, feature_name

if TYPE_CHECKING:
    import plotly.graph_objects as go

TAB_ID = "microscope"
TOP_PER_TOKEN = 32  # features kept per token and layer for the tables
TEXT_TOP = 50  # rows of "top features for the whole text"
FALLBACK_TEXT = "The cat sat on the mat. It was a sunny day in Paris."
# The heatmap's metrics (API values) and their names on the page.
METRICS = {
    "active features": "active features (how many fire)",
    "max activation": "strongest feature, % of its max",
}
DEFAULT_METRIC = "active features"
AGGREGATES = ("max", "sum")


@dataclass
class MicroscopeView:
    """The microscope's outputs for one encoded text.

    Args:
        highlighted: ``(token, strength 0..1 or None)`` per token: the shading's values.
        tokens_html: the token view, shaded by :attr:`shading`, :attr:`token` outlined.
        heatmap: tokens x layers, active-feature counts or relative strength (0-100).
        text_top: the whole text's strongest features (relative first, raw beside it).
        token: the chosen token; ``token_table`` its features on every layer.
        shade_choices: "Shade tokens by"'s choices: the strongest-feature view, then the whole
            text's top features (``(name, "layer:feature")``).
    """

    highlighted: list[tuple[str, float | None]]
    tokens_html: str
    heatmap: go.Figure
    text_top: pd.DataFrame
    token_choices: list[tuple[str, int]]
    status: str
    encoding: Encoding
    shading: shading.Shading
    token: int
    token_table: pd.DataFrame
    shade_choices: list[tuple[str, str]]


def _layers(ctx: Context, layers: Sequence[Any] | None, source: str = RES) -> list[int]:
    """The chosen layers: ``None`` (an API call that names none) means all, ``[]`` is an error."""
    if layers is None:
        return ctx.source_layers(source)
    if not layers:
        raise UserError("choose at least one layer")
    return [parse_int(n, "layer") for n in layers]


def default_layers(ctx: Context, source: str = RES) -> list[int]:
    """The layers ticked when the page opens: all of them when the bundle's cache holds them
    (the default's 4 SAEs and its 18 transcoders), else as many as it holds, evenly spread (8 of
    Gemma Scope's 26, so the first encoding does not reload SAEs; the others are one tick
    away)."""
    have = ctx.source_layers(source)
    room = max(1, min(len(have), ctx.bundle.max_saes))
    if room >= len(have):
        return have
    picks = sorted({round(i * (len(have) - 1) / max(room - 1, 1)) for i in range(room)})
    return [have[i] for i in picks]


def _density(ctx: Context, max_density_pct: Any) -> float:
    """The density filter as a fraction; ``None`` is the store's own dense threshold."""
    if max_density_pct is None:
        return ctx.dense_threshold
    return parse_float(max_density_pct, "density filter (%)", 0.0, 100.0) / 100.0


def density_input(ctx: Context) -> gr.Number:
    """The "Hide features denser than (%)" box, at the store's dense threshold."""
    return gr.Number(
        round(100 * ctx.dense_threshold, 6), label="Hide features denser than (%)", minimum=0
    )


def check_settings(ctx: Context, metric: str, max_density_pct: Any, aggregate: str) -> None:
    """The heatmap's metric, the density filter and the whole-text ranking, or
    :class:`UserError` (before any forward pass)."""
    _density(ctx, max_density_pct)
    if metric not in METRICS:
        raise UserError(f"the heatmap shows {' or '.join(METRICS)}, not {str(metric)[:40]!r}")
    if aggregate not in AGGREGATES:
        raise UserError(f"rank the whole text by max or sum, not {str(aggregate)[:40]!r}")


def encode_text(
    ctx: Context, text: str, layers: Sequence[Any] | None = None, source: Any = RES
) -> Encoding:
    """The text encoded on the chosen layers of ``source`` (one forward pass): each token's top
    features by relative strength, and every active feature (for shading by any feature
    later)."""
    source = ctx.source(source)
    chosen = _layers(ctx, layers, source)
    try:
        enc = encode(
            ctx.bundle,
            text,
            layers=chosen,
            top_k=TOP_PER_TOKEN,
            scales=rank_scales(ctx, chosen, source),
            keep_active=True,
            source=source,
        )
    except (EncodeError, ValueError) as e:
        raise UserError(str(e)) from None
    if not enc.tokens:
        raise UserError("the text has no tokens to show")
    return enc


def show(
    ctx: Context,
    enc: Encoding,
    metric: str = DEFAULT_METRIC,
    max_density_pct: Any = None,
    aggregate: str = "max",
    shade: Any = None,
    token: Any = 0,
) -> MicroscopeView:
    """Everything on screen for an encoded text, without a forward pass. ``shade`` is a
    "Shade tokens by" value (``"9:123"`` or ``"strongest"``); ``None`` or ``""`` picks the whole
    text's top feature. Features denser than ``max_density_pct`` (%; ``None``: the store's dense
    threshold) are hidden from the tables and the heatmap."""
    check_settings(ctx, metric, max_density_pct, aggregate)
    max_density = _density(ctx, max_density_pct)
    pos = parse_int(token if token not in (None, "") else 0, "token", 0, len(enc.tokens) - 1)
    chosen = list(enc.layers)
    st = _strengths(ctx, enc, max_density)
    c = cells(chosen, st)
    # The people's labels, read once for the whole view (the tables and the shading).
    labels = ctx.labels_for(enc.source).current_all()
    table, no_max = _text_top(ctx, st, aggregate, enc.source, labels)
    feature: tuple[int, int] | None
    if shade in (None, ""):
        feature = (int(table["layer"].iat[0]), int(table["feature"].iat[0])) if len(table) else None
    else:
        feature = _shade_feature(enc, shade)
    if feature is None:
        shaded = shading.by_strongest(enc.tokens, chosen, c, enc.source)
    else:
        label = ctx.shown_label(labels, *feature, enc.source)
        shaded = shading.by_feature(ctx, enc, *feature, label=label)
    if metric == "active features":
        values = np.array([enc.layers[n].n_active.numpy() for n in chosen], dtype=float)
        what, zmax = "active features", float(values.max())
    else:
        values, what, zmax = np.clip(c.rel, 0.0, 100.0), REL, 100.0
    hover = [
        [cell_text(n, int(f), float(r), float(a), enc.source) for f, r, a in zip(*row, strict=True)]
        for n, *row in zip(chosen, c.feature, c.rel, c.act, strict=True)
    ]
    highlighted = [
        (tok, min(float(v), 100.0) / 100.0 if v > 0 else None)
        for tok, v in zip(enc.tokens, shaded.rel, strict=True)
    ]
    names = [layer_name(n, enc.source) for n in chosen]
    return MicroscopeView(
        highlighted=highlighted,
        tokens_html=shaded.html(enc.tokens, pos),
        heatmap=render.heatmap_figure(enc.tokens, chosen, values, what, zmax, hover, names),
        text_top=table,
        token_choices=[(f"{i}: {repr(t)[1:-1]}", i) for i, t in enumerate(enc.tokens)],
        status=_status(ctx, enc, st, max_density, no_max),
        encoding=enc,
        shading=shaded,
        token=pos,
        token_table=_token_table(ctx, st, pos, enc.source, labels),
        shade_choices=shade_choices(table, shaded.feature, enc.source),
    )


def _shade_feature(enc: Encoding, shade: Any) -> tuple[int, int] | None:
    """A "Shade tokens by" value as a feature of the encoding's source, or :class:`UserError`
    (a transcoder feature on a text encoded with the residual SAEs, or the other way round)."""
    found = shading.parse_shade_source(shade)
    if found is None:
        return None
    layer, feature, source = found
    if source != enc.source:
        raise UserError(
            f"{feature_name(layer, feature, source)} is a {SHORT[source]} feature and the text "
            f"is encoded with the {SHORT[enc.source]} layers: choose the source "
            f"{SHORT[source]} to shade by it"
        )
    return layer, feature


def view(
    ctx: Context,
    text: str,
    layers: Sequence[Any] | None = None,
    metric: str = DEFAULT_METRIC,
    max_density_pct: Any = None,
    aggregate: str = "max",
    shade: Any = None,
    token: Any = 0,
    source: Any = RES,
) -> MicroscopeView:
    """Encode ``text`` on the chosen layers of ``source`` and show it (:func:`encode_text`,
    :func:`show`); every setting is checked before the forward pass."""
    check_settings(ctx, metric, max_density_pct, aggregate)
    if shade not in (None, ""):
        shading.parse_shade_source(shade)
    enc = encode_text(ctx, text, layers, source)
    return show(ctx, enc, metric, max_density_pct, aggregate, shade, token)


def shade_choices(
    table: pd.DataFrame, chosen: tuple[int, int] | None = None, source: str = RES
) -> list[tuple[str, str]]:
    """ "Shade tokens by"'s choices: each token's strongest, then the whole text's top features
    (``L9 res #123 · label · 93%``), and ``chosen`` if it is none of them."""
    rel_col = next(c for c in table.columns if c.endswith(REL))
    out = [(shading.STRONGEST_NAME, shading.STRONGEST)]
    for layer, feature, label, rel in zip(
        table["layer"], table["feature"], table["label"], table[rel_col], strict=True
    ):
        short = str(label)[:60] + ("…" if len(str(label)) > 60 else "")
        named = feature_name(int(layer), int(feature), source)
        name = named + (f" · {short}" if short else "") + f" · {rel:g}%"
        out.append((name, shading.shade_value((int(layer), int(feature)), source)))
    value = shading.shade_value(chosen, source)
    if all(v != value for _, v in out):
        out.append((feature_name(*chosen, source) if chosen else value, value))
    return out


def _text_top(
    ctx: Context,
    st: dict[int, LayerStrength],
    aggregate: str,
    source: str = RES,
    labels: dict[tuple[int, int], Any] | None = None,
) -> tuple[pd.DataFrame, int]:
    """The whole text's top features by relative strength (max or sum over its tokens), raw
    beside it; and how many shown features have no store maximum."""
    rel_col, act_col = f"{aggregate} {REL}", f"{aggregate} act"
    agg = per_feature(st, aggregate)
    no_max = int(np.isnan(agg.rel).sum())
    top = agg.order[:TEXT_TOP]
    layer, feature = agg.layer[top], agg.feature[top]
    label, density, src = _describe(ctx, layer, feature, source, labels)
    table = pd.DataFrame(
        {
            "layer": layer,
            "feature": feature,
            "label": label,
            rel_col: agg.rel[top].round(1),
            act_col: agg.act[top].round(3),
            "tokens": agg.tokens[top],
            "density %": density,
            "source": src,
        }
    )
    return table, no_max


def _describe(
    ctx: Context,
    layer: np.ndarray,
    feature: np.ndarray,
    source: str = RES,
    labels: dict[tuple[int, int], Any] | None = None,
) -> tuple[list[str], list[float | None], list[str]]:
    """Each row's label, density (in %) and source, as a table's columns; ``labels``: the
    source's current labels when the caller has read them already."""
    if labels is None:
        labels = ctx.labels_for(source).current_all()
    dens = ctx.densities(source)
    pairs = list(zip(layer.astype(int).tolist(), feature.astype(int).tolist(), strict=True))
    label = [ctx.shown_label(labels, la, f, source) for la, f in pairs]
    density = [round(100 * float(dens[la][f]), 4) if la in dens else None for la, f in pairs]
    return label, density, [SHORT[source]] * len(pairs)


def _status(
    ctx: Context, enc: Encoding, st: dict[int, LayerStrength], max_density: float, no_max: int
) -> str:
    which = "layers" if enc.source == RES else "transcoder (tc) layers"
    status = f"{len(enc.tokens)} tokens × {len(st)} {which}."
    per_text = [str(n) for n, s in st.items() if s.per_text]
    if per_text:
        status += (
            f" The store has no maxima for layer {', '.join(per_text)}: there, strength is % of "
            "the layer's strongest activation on this text."
        )
    if no_max:
        status += (
            f" {no_max} features never fired in the store (no maximum): listed by raw "
            "activation after the others."
        )
    over = [s.rel[s.kept & (s.rel > 100)] for s in st.values() if not s.per_text]
    n_over = sum(len(o) for o in over)
    if n_over:
        top = max(float(o.max()) for o in over if len(o))
        status += (
            f" {n_over} activations go past their feature's maximum over the corpus (up to "
            f"{top:.0f}%): that maximum is the corpus's, a new text can exceed it; the value is "
            "shown as it is, the colour stops at 100%."
        )
    if enc.truncated:
        status += f" The text was cut at {ctx.bundle.spec.max_tokens} tokens."
    hidden = sum(s.hidden for s in st.values())
    if hidden:
        status += (
            f" {hidden} activations of dense features (density above "
            f"{100 * max_density:g}%) are hidden; raise the density filter to see them."
        )
    return status


def _position(enc: Encoding | None, position: Any) -> tuple[Encoding, int]:
    if enc is None:
        raise UserError("encode a text first")
    return enc, parse_int(position, "token", 0, len(enc.tokens) - 1)


def _token_table(
    ctx: Context,
    st: dict[int, LayerStrength],
    pos: int,
    source: str = RES,
    labels: dict[tuple[int, int], Any] | None = None,
) -> pd.DataFrame:
    """The features shown on token ``pos``, every layer together, strongest (relative) first:
    ties and features without a store maximum (NaN) ordered by raw activation."""
    cols = ["layer", "feature", "label", REL, "activation", "density %", "source"]
    parts = [(s, s.kept[pos]) for s in st.values() if s.kept[pos].any()]
    if not parts:
        return pd.DataFrame(columns=cols)
    layer = np.concatenate([np.full(int(k.sum()), s.layer) for s, k in parts])
    feature = np.concatenate([s.ids[pos][k] for s, k in parts])
    rel = np.concatenate([s.rel[pos][k] for s, k in parts]).astype(float)
    act = np.concatenate([s.acts[pos][k] for s, k in parts]).astype(float)
    # Descending by (rel, activation), NaN rel last, stable: as a stable descending sort would.
    order = np.lexsort((np.arange(len(rel)), -act, np.where(np.isnan(rel), np.inf, -rel)))
    layer, feature, rel, act = layer[order], feature[order], rel[order], act[order]
    label, density, src = _describe(ctx, layer, feature, source, labels)
    return pd.DataFrame(
        {
            "layer": layer,
            "feature": feature,
            "label": label,
            REL: rel.round(1),
            "activation": act.round(3),
            "density %": density,
            "source": src,
        }
    )


def token_features(
    ctx: Context, enc: Encoding | None, position: Any, max_density_pct: Any = None
) -> pd.DataFrame:
    """The chosen token's shown features on every encoded layer, strongest (relative) first,
    all layers together; raw activation beside it."""
    enc, pos = _position(enc, position)
    return _token_table(ctx, _strengths(ctx, enc, _density(ctx, max_density_pct)), pos, enc.source)


def token_caption(enc: Encoding | None, position: Any) -> str:
    """The token table's title: which token it lists (plain text: a label is not HTML)."""
    enc, pos = _position(enc, position)
    shown = repr(enc.tokens[pos])[1:-1]
    shown = shown if len(shown) <= 40 else shown[:39] + "…"
    return f"Features on token {pos}: “{shown}” (click a row to shade the text by it)"


def tokens_marked(
    ctx: Context,
    enc: Encoding | None,
    position: Any,
    max_density_pct: Any = None,
    shade: Any = None,
) -> str:
    """The token view with ``position`` outlined (no forward pass: from the encoding), shaded
    by ``shade`` (a "Shade tokens by" value; ``None``: the text's top feature, as :func:`view`)."""
    enc, pos = _position(enc, position)
    return show(ctx, enc, DEFAULT_METRIC, max_density_pct, "max", shade, pos).tokens_html
