"""The Microscope tab: a text encoded on the chosen layers; token highlights, the tokens x layers
heatmap, one token's features and the whole text's top features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np
import pandas as pd

from explorer.app import render
from explorer.app.context import Context, UserError, parse_float, parse_int
from explorer.app.ui import ui
from explorer.encode import EncodeError, Encoding, encode

if TYPE_CHECKING:
    import plotly.graph_objects as go

TAB_ID = "microscope"
TOP_PER_TOKEN = 32  # features kept per token and layer in the microscope
TEXT_TOP = 50  # rows of "top features for the whole text"
FALLBACK_TEXT = "The cat sat on the mat. It was a sunny day in Paris."


@dataclass
class MicroscopeView:
    """The microscope's outputs for one text."""

    highlighted: list[tuple[str, float | None]]
    heatmap: go.Figure
    text_top: pd.DataFrame
    token_choices: list[tuple[str, int]]
    status: str
    encoding: Encoding


def view(
    ctx: Context,
    text: str,
    layers: Sequence[Any] | None = None,
    metric: str = "max activation",
    max_density_pct: Any = 1.0,
    aggregate: str = "max",
) -> MicroscopeView:
    """Encode ``text`` on the chosen layers; heatmap, token highlights, top features."""
    chosen = [parse_int(n, "layer") for n in layers] if layers else ctx.layers
    if not chosen:
        raise UserError("choose at least one layer")
    max_density = parse_float(max_density_pct, "density filter (%)", 0.0, 100.0) / 100.0
    try:
        enc = encode(ctx.bundle, text, layers=chosen, top_k=TOP_PER_TOKEN)
    except (EncodeError, ValueError) as e:
        raise UserError(str(e)) from None
    if not enc.tokens:
        raise UserError("the text has no tokens to show")
    dens = ctx.densities()
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
        (tok, float(v / top) if v > 0 else None) for tok, v in zip(enc.tokens, peak, strict=True)
    ]
    col = aggregate + " act"
    columns = ["layer", "feature", "label", col, "tokens", "density %"]
    if frames:
        grouped = pd.concat(frames).groupby(["layer", "feature"], sort=True)["act"]
        table = grouped.agg(["max" if aggregate == "max" else "sum", "size"]).reset_index()
        table.columns = ["layer", "feature", col, "tokens"]
        table = table.sort_values(col, ascending=False, kind="stable").head(TEXT_TOP)
        labels = ctx.labels.current_all()
        table[col] = table[col].astype(float).round(3)
        table["label"] = [
            ctx.label_text(labels, int(la_), int(f_))
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
        status += f" The text was cut at {ctx.bundle.spec.max_tokens} tokens."
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


def token_features(
    ctx: Context, enc: Encoding | None, position: Any, max_density_pct: Any = 1.0
) -> pd.DataFrame:
    """The chosen token's active features on every encoded layer, strongest first (all layers
    together)."""
    if enc is None:
        raise UserError("encode a text first")
    pos = parse_int(position, "token", 0, len(enc.tokens) - 1)
    max_density = parse_float(max_density_pct, "density filter (%)", 0.0, 100.0) / 100.0
    dens = ctx.densities()
    labels = ctx.labels.current_all()
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
                    "label": ctx.label_text(labels, layer, f),
                    "activation": round(a, 3),
                    "density %": None if density is None else round(100 * density, 4),
                }
            )
    cols = ["layer", "feature", "label", "activation", "density %"]
    table = pd.DataFrame(rows, columns=cols)
    return table.sort_values("activation", ascending=False, kind="stable").reset_index(drop=True)


@dataclass
class MicroscopeTab:
    enc_state: gr.State
    text: gr.Textbox
    layers: gr.CheckboxGroup
    metric: gr.Radio
    density: gr.Number
    aggregate: gr.Radio
    encode_btn: gr.Button
    status: gr.Markdown
    tokens_view: gr.HighlightedText
    heatmap: gr.Plot
    token_pick: gr.Dropdown
    token_table: gr.Dataframe
    text_top: gr.Dataframe


def layout(ctx: Context) -> MicroscopeTab:
    """The tab's components and its own events (encode, pick a token)."""
    texts = ctx.content["texts"] or [FALLBACK_TEXT]
    layer_names = [str(n) for n in ctx.layers]
    enc_state = gr.State(None)
    text = gr.Textbox(texts[0], lines=3, label="Text", elem_id="micro-text")
    gr.Examples([[t] for t in texts], inputs=text, label="Example texts")
    with gr.Row():
        layers = gr.CheckboxGroup(layer_names, value=layer_names, label="Layers")
        metric = gr.Radio(
            ["max activation", "active features"],
            value="max activation",
            label="Heatmap shows",
        )
        density = gr.Number(1.0, label="Hide features denser than (%)", minimum=0)
        aggregate = gr.Radio(["max", "sum"], value="max", label="Whole-text ranking")
    encode_btn = gr.Button("Encode", variant="primary", elem_id="encode")
    status = gr.Markdown(elem_id="micro-status")
    tokens_view = gr.HighlightedText(
        label="Tokens, shaded by their strongest feature (click one)",
        show_legend=False,
        elem_id="tokens",
    )
    gr.Markdown(
        "Token × layer: the strongest non-dense feature's activation, or how "
        "many features are active. BOS is not shown."
    )
    heatmap = gr.Plot(label="Tokens × layers")
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

    def run_microscope(t: str, ls: list[str], m: str, d: Any, agg: str) -> tuple[Any, ...]:
        v = view(ctx, t, ls, m, d, agg)
        first = v.token_choices[0][1] if v.token_choices else None
        return (
            v.highlighted,
            v.heatmap,
            v.text_top,
            v.status,
            v.encoding,
            gr.Dropdown(choices=v.token_choices, value=first),
            token_features(ctx, v.encoding, first, d),
        )

    encode_btn.click(
        ui(run_microscope),
        [text, layers, metric, density, aggregate],
        [tokens_view, heatmap, text_top, status, enc_state, token_pick, token_table],
        api_name="microscope",
    )

    def show_token(enc: Encoding | None, position: Any, max_density_pct: Any = 1.0) -> Any:
        """The chosen token's active features on every encoded layer, strongest first (all layers
        together)."""
        return token_features(ctx, enc, position, max_density_pct)

    token_pick.input(
        ui(show_token),
        [enc_state, token_pick, density],
        token_table,
        api_name="token_features",
    )

    def pick_token(enc: Any, d: Any, evt: gr.SelectData) -> tuple[Any, ...]:
        return gr.Dropdown(value=evt.index), token_features(ctx, enc, evt.index, d)

    tokens_view.select(ui(pick_token), [enc_state, density], [token_pick, token_table])
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
