"""The Microscope tab: a text encoded on the chosen layers; token highlights, the tokens x layers
heatmap, one token's features and the whole text's top features.

**Strength is relative** (:mod:`explorer.app.strength`): a feature's activation as a % of its
maximum over the store, shown beside the raw activation. Raw activations grow with depth, so a raw
ranking would show almost only the last layer. Every "strongest" here is by relative strength:
the per-token top-k kept by :func:`explorer.encode.encode`, the token shading, the heatmap, the
token table's order and the whole text's ranking (which search by inference reuses), all on one
colour scale (:func:`explorer.app.render.strength_colour`). The status line says when a
fallback was taken (a feature dead in the store, a layer without store maxima).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np
import pandas as pd

from explorer.app import render
from explorer.app.context import Context, UserError, parse_float, parse_int
from explorer.app.strength import (
    REL,
    Cells,
    LayerStrength,
    cell_text,
    cells,
    per_feature,
    rank_scales,
    strengths,
)
from explorer.app.ui import status_box, status_line, ui
from explorer.encode import EncodeError, Encoding, encode

if TYPE_CHECKING:
    import plotly.graph_objects as go

TAB_ID = "microscope"
TOP_PER_TOKEN = 32  # features kept per token and layer in the microscope
TEXT_TOP = 50  # rows of "top features for the whole text"
FALLBACK_TEXT = "The cat sat on the mat. It was a sunny day in Paris."
# The heatmap's metrics (API values) and their names on the page.
METRICS = {
    "max activation": "strongest feature, % of its max",
    "active features": "active features",
}
AGGREGATES = ("max", "sum")

# The token view reports a click as a select event with the token's position, as Gradio's own
# HighlightedText does (keyboard users pick tokens with the Token dropdown).
TOKENS_JS = """
element.addEventListener('click', (e) => {
  const t = e.target.closest('[data-pos]');
  if (t) trigger('select', {index: Number(t.dataset.pos), value: t.textContent, selected: true});
});
"""


def token_html(
    tokens: Sequence[str], layers: Sequence[int], c: Cells, mark: int | None = None
) -> str:
    """The tokens shaded by their strongest feature over all layers (relative, on the one
    colour scale), each one's tooltip naming it; ``mark`` (the chosen token) outlined."""
    best = c.rel.argmax(axis=0)
    cols = np.arange(len(tokens))
    rel = c.rel[best, cols]
    titles = [
        f"{i}: {repr(t)[1:-1]} · "
        + cell_text(layers[b], int(c.feature[b, i]), float(c.rel[b, i]), float(c.act[b, i]))
        for i, (t, b) in enumerate(zip(tokens, best, strict=True))
    ]
    return render.token_spans(tokens, np.clip(rel, 0.0, 100.0).tolist(), 100.0, mark, titles)


@dataclass
class MicroscopeView:
    """The microscope's outputs for one text.

    Args:
        highlighted: ``(token, strength 0..1 or None)`` per token, the shading's values.
        tokens_html: the token view (the first token marked, as the token table shows it).
        heatmap: tokens x layers, relative strength (0-100) or active-feature counts.
        text_top: the whole text's strongest features (relative first, raw beside it).
    """

    highlighted: list[tuple[str, float | None]]
    tokens_html: str
    heatmap: go.Figure
    text_top: pd.DataFrame
    token_choices: list[tuple[str, int]]
    status: str
    encoding: Encoding


def _layers(ctx: Context, layers: Sequence[Any] | None) -> list[int]:
    """The chosen layers: ``None`` (an API call that names none) means all, ``[]`` is an error."""
    if layers is None:
        return ctx.layers
    if not layers:
        raise UserError("choose at least one layer")
    return [parse_int(n, "layer") for n in layers]


def default_layers(ctx: Context) -> list[int]:
    """The layers ticked when the page opens: all of them when the bundle's SAE cache holds them
    (the default's 4), else as many as it holds, evenly spread (8 of Gemma Scope's 26, so the
    first encoding does not reload SAEs; the others are one tick away)."""
    have = ctx.layers
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


def view(
    ctx: Context,
    text: str,
    layers: Sequence[Any] | None = None,
    metric: str = "max activation",
    max_density_pct: Any = None,
    aggregate: str = "max",
) -> MicroscopeView:
    """Encode ``text`` on the chosen layers; heatmap, token highlights, top features. Features
    denser than ``max_density_pct`` (%; ``None``: the store's dense threshold) are hidden."""
    chosen = _layers(ctx, layers)
    if metric not in METRICS:
        raise UserError(f"the heatmap shows {' or '.join(METRICS)}, not {str(metric)[:40]!r}")
    if aggregate not in AGGREGATES:
        raise UserError(f"rank the whole text by max or sum, not {str(aggregate)[:40]!r}")
    max_density = _density(ctx, max_density_pct)
    try:
        enc = encode(
            ctx.bundle,
            text,
            layers=chosen,
            top_k=TOP_PER_TOKEN,
            scales=rank_scales(ctx, chosen),
        )
    except (EncodeError, ValueError) as e:
        raise UserError(str(e)) from None
    if not enc.tokens:
        raise UserError("the text has no tokens to show")
    st = strengths(ctx, enc, max_density)
    c = cells(chosen, st)
    if metric == "active features":
        values = np.array([enc.layers[n].n_active.numpy() for n in chosen], dtype=float)
        what, zmax = "active features", float(values.max())
    else:
        values, what, zmax = np.clip(c.rel, 0.0, 100.0), REL, 100.0
    hover = [
        [cell_text(n, int(f), float(r), float(a)) for f, r, a in zip(*row, strict=True)]
        for n, *row in zip(chosen, c.feature, c.rel, c.act, strict=True)
    ]
    peak = c.rel.max(axis=0)
    highlighted = [
        (tok, min(float(v), 100.0) / 100.0 if v > 0 else None)
        for tok, v in zip(enc.tokens, peak, strict=True)
    ]
    table, no_max = _text_top(ctx, st, aggregate)
    return MicroscopeView(
        highlighted=highlighted,
        tokens_html=token_html(enc.tokens, chosen, c, mark=0),
        heatmap=render.heatmap_figure(enc.tokens, chosen, values, what, zmax, hover),
        text_top=table,
        token_choices=[(f"{i}: {repr(t)[1:-1]}", i) for i, t in enumerate(enc.tokens)],
        status=_status(ctx, enc, st, max_density, no_max),
        encoding=enc,
    )


def _text_top(
    ctx: Context, st: dict[int, LayerStrength], aggregate: str
) -> tuple[pd.DataFrame, int]:
    """The whole text's top features by relative strength (max or sum over its tokens), raw
    beside it; and how many shown features have no store maximum."""
    rel_col, act_col = f"{aggregate} {REL}", f"{aggregate} act"
    columns = ["layer", "feature", "label", rel_col, act_col, "tokens", "density %"]
    agg = per_feature(st, aggregate)
    no_max = int(np.isnan(agg.rel).sum())
    top = agg.order[:TEXT_TOP]
    table = pd.DataFrame(
        {
            "layer": agg.layer[top],
            "feature": agg.feature[top],
            rel_col: agg.rel[top].round(1),
            act_col: agg.act[top].round(3),
            "tokens": agg.tokens[top],
        }
    )
    _describe(ctx, table)
    return table[columns].reset_index(drop=True), no_max


def _describe(ctx: Context, table: pd.DataFrame) -> None:
    """Add each row's label and density (in %) to ``table`` (in place)."""
    labels = ctx.labels.current_all()
    dens = ctx.densities()
    pairs = list(zip(table["layer"].astype(int), table["feature"].astype(int), strict=True))
    table["label"] = [ctx.shown_label(labels, la, f) for la, f in pairs]
    table["density %"] = [
        round(100 * float(dens[la][f]), 4) if la in dens else None for la, f in pairs
    ]


def _status(
    ctx: Context, enc: Encoding, st: dict[int, LayerStrength], max_density: float, no_max: int
) -> str:
    status = f"{len(enc.tokens)} tokens × {len(st)} layers."
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


def token_features(
    ctx: Context, enc: Encoding | None, position: Any, max_density_pct: Any = None
) -> pd.DataFrame:
    """The chosen token's shown features on every encoded layer, strongest (relative) first,
    all layers together; raw activation beside it."""
    enc, pos = _position(enc, position)
    st = strengths(ctx, enc, _density(ctx, max_density_pct))
    cols = ["layer", "feature", "label", REL, "activation", "density %"]
    frames = [
        pd.DataFrame(
            {
                "layer": s.layer,
                "feature": s.ids[pos][s.kept[pos]],
                REL: s.rel[pos][s.kept[pos]],
                "activation": s.acts[pos][s.kept[pos]],
            }
        )
        for s in st.values()
        if s.kept[pos].any()
    ]
    if not frames:
        return pd.DataFrame(columns=cols)
    table = pd.concat(frames, ignore_index=True)
    table = table.sort_values(
        [REL, "activation"], ascending=False, na_position="last", kind="stable"
    )
    table[REL] = table[REL].astype(float).round(1)
    table["activation"] = table["activation"].astype(float).round(3)
    _describe(ctx, table)
    return table[cols].reset_index(drop=True)


def token_caption(enc: Encoding | None, position: Any) -> str:
    """The token table's title: which token it lists (plain text: a label is not HTML)."""
    enc, pos = _position(enc, position)
    shown = repr(enc.tokens[pos])[1:-1]
    shown = shown if len(shown) <= 40 else shown[:39] + "…"
    return f"Features on token {pos}: “{shown}” (click a row to open its dashboard)"


def tokens_marked(
    ctx: Context, enc: Encoding | None, position: Any, max_density_pct: Any = None
) -> str:
    """The token view with ``position`` outlined (no forward pass: from the encoding)."""
    enc, pos = _position(enc, position)
    layers = list(enc.layers)
    return token_html(
        enc.tokens, layers, cells(layers, strengths(ctx, enc, _density(ctx, max_density_pct))), pos
    )


@dataclass
class MicroscopeTab:
    enc_state: gr.State
    text: gr.Textbox
    layers: gr.CheckboxGroup
    metric: gr.Radio
    density: gr.Number
    aggregate: gr.Radio
    encode_btn: gr.Button
    status: gr.HTML
    tokens_view: gr.HTML
    heatmap: gr.Plot
    token_pick: gr.Dropdown
    token_table: gr.Dataframe
    text_top: gr.Dataframe


def token_outputs(ctx: Context, enc: Encoding | None, position: Any, d: Any) -> tuple[Any, ...]:
    """The token table (titled with its token, shaded) and the token view marking the token."""
    table = token_features(ctx, enc, position, d)
    return (
        gr.Dataframe(render.shade_column(table, REL), label=token_caption(enc, position)),
        tokens_marked(ctx, enc, position, d),
    )


def layout(ctx: Context) -> MicroscopeTab:
    """The tab's components and its own events (encode, pick a token)."""
    texts = ctx.content["texts"] or [FALLBACK_TEXT]
    layer_names = [str(n) for n in ctx.layers]
    enc_state = gr.State(None)
    text = gr.Textbox(texts[0], lines=3, label="Text", elem_id="micro-text")
    gr.Examples([[t] for t in texts], inputs=text, label="Example texts")
    with gr.Row():
        ticked = [str(n) for n in default_layers(ctx)]
        layers = gr.CheckboxGroup(layer_names, value=ticked, label="Layers")
        metric = gr.Radio(
            [(name, value) for value, name in METRICS.items()],
            value="max activation",
            label="Heatmap shows",
        )
        density = density_input(ctx)
        aggregate = gr.Radio(list(AGGREGATES), value="max", label="Whole-text ranking")
    encode_btn = gr.Button("Encode", variant="primary", elem_id="encode")
    status = status_box("micro-status")
    gr.Markdown(
        "**Strength** is a feature's activation as a % of its maximum over the corpus (the "
        "store), so every layer reads on the same 0–100% scale; the raw activation is beside "
        "it. Tokens are shaded by their strongest feature (click one); BOS is not shown."
    )
    tokens_view = gr.HTML("", elem_id="tokens", js_on_load=TOKENS_JS, elem_classes="gse-text")
    heatmap = gr.Plot(label="Tokens × layers: the strongest feature, or how many are active")
    token_pick = gr.Dropdown(label="Token", choices=[], elem_id="token-pick")
    token_table = gr.Dataframe(
        label="Features on this token (click a row to open its dashboard)",
        interactive=False,
        elem_id="token-table",
    )
    text_top = gr.Dataframe(
        label="Top features for the whole text (click to open)",
        interactive=False,
        elem_id="text-top",
    )

    def run_microscope(
        text: str, layers: list[str], metric: str, max_density_pct: Any, aggregate: str
    ) -> tuple[Any, ...]:
        v = view(ctx, text, layers, metric, max_density_pct, aggregate)
        table = token_features(ctx, v.encoding, 0, max_density_pct)
        return (
            v.tokens_html,
            v.heatmap,
            render.shade_column(v.text_top, f"{aggregate} {REL}"),
            status_line(v.status),
            v.encoding,
            gr.Dropdown(choices=v.token_choices, value=0),
            gr.Dataframe(render.shade_column(table, REL), label=token_caption(v.encoding, 0)),
        )

    encode_btn.click(
        ui(run_microscope),
        [text, layers, metric, density, aggregate],
        [tokens_view, heatmap, text_top, status, enc_state, token_pick, token_table],
        api_name="microscope",
    )

    def show_token(enc: Encoding | None, position: Any, max_density_pct: Any = None) -> Any:
        """The chosen token's features on every encoded layer, strongest first (all layers
        together), and the token view marking it."""
        return token_outputs(ctx, enc, position, max_density_pct)

    token_pick.input(
        ui(show_token),
        [enc_state, token_pick, density],
        [token_table, tokens_view],
        api_name="token_features",
    )

    def pick_token(enc: Any, max_density_pct: Any, evt: gr.SelectData) -> tuple[Any, ...]:
        return (gr.Dropdown(value=evt.index), *token_outputs(ctx, enc, evt.index, max_density_pct))

    tokens_view.select(ui(pick_token), [enc_state, density], [token_pick, token_table, tokens_view])
    return MicroscopeTab(
        enc_state=enc_state,
        text=text,
        layers=layers,
        metric=metric,
        density=density,
        aggregate=aggregate,
        encode_btn=encode_btn,
        status=status,
        tokens_view=tokens_view,
        heatmap=heatmap,
        token_pick=token_pick,
        token_table=token_table,
        text_top=text_top,
    )
