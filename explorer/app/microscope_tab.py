"""The Microscope tab's layout and wiring (its handlers are :mod:`explorer.app.microscope`).

Encode (the button, an example text, a ticked layer) runs the model once and keeps the encoding
in the session; every other control applies at once from it: the heatmap's metric, the density
filter, the whole-text ranking, the shading feature (a row of either table, or "Shade tokens by")
and the token (a click on it, or the Token box). ``view`` (a ``gr.State``) records what is on
screen (text, settings, shading feature, token): the address bar is written from it, and
encoding the same text again keeps its token and feature. The source choice (residual SAEs or
transcoders, when the bundle has them) offers that source's layers and encodes the text on screen
again with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from explorer.app import microscope, render, shading, sources
from explorer.app.context import Context, UserError
from explorer.app.microscope import METRICS, REL, MicroscopeView
from explorer.app.ui import click_js, status_box, status_line, ui, warn
from explorer.encode import Encoding
from explorer.store.schema import RES, SHORT

# The token view reports a click as a select event with the token's position, as Gradio's own
# HighlightedText does (keyboard users pick tokens with the Token dropdown).
TOKENS_JS = """
element.addEventListener('click', (e) => {
  const t = e.target.closest('[data-pos]');
  if (t) trigger('select', {index: Number(t.dataset.pos), value: t.textContent, selected: true});
});
"""
NOTE = (
    "**Strength** is a feature's activation as a % of its maximum over the corpus (the store), "
    "so every layer reads on the same scale; the raw activation is beside it. 100% is the "
    "strongest activation the corpus showed, not a ceiling: a new text can go past it (the value "
    "is shown as it is, e.g. 117%, the colour stops at 100%). **The text is shaded by one "
    "feature**, at first its strongest: click a row of either table, or pick or type one "
    "(layer:feature) in *Shade tokens by*, to see where another fires. Click a token to list its "
    "features. BOS is not shown."
)


@dataclass
class MicroscopeTab:
    enc_state: gr.State
    view: gr.State
    text: gr.Textbox
    source: gr.Radio
    layers: gr.CheckboxGroup
    metric: gr.Radio
    density: gr.Number
    aggregate: gr.Radio
    encode_btn: gr.Button
    status: gr.HTML
    shade_by: gr.Dropdown
    open_shade: gr.Button
    shade_caption: gr.HTML
    tokens_view: gr.HTML
    heatmap: gr.Plot
    token_pick: gr.Dropdown
    token_table: gr.Dataframe
    text_top: gr.Dataframe

    @property
    def outputs(self) -> list[Any]:
        """What showing an encoding updates, in the order of :func:`shown`'s values."""
        return [
            self.tokens_view, self.shade_caption, self.shade_by, self.heatmap, self.text_top,
            self.token_pick, self.token_table, self.status, self.enc_state, self.view,
        ]  # fmt: skip


def view_record(
    text: str, layers: Any, metric: str, density: Any, aggregate: str, v: MicroscopeView
) -> dict[str, Any]:
    """What is on screen, as the address bar and a later encoding read it."""
    return {
        "text": text,
        "layers": [int(n) for n in v.encoding.layers] if layers is not None else None,
        "metric": metric,
        "density": density,
        "aggregate": aggregate,
        "shade": v.shading.value,
        "token": v.token,
        "source": SHORT[v.encoding.source],
    }


def shown(v: MicroscopeView, record: dict[str, Any]) -> tuple[Any, ...]:
    """The values of :attr:`MicroscopeTab.outputs` for a view."""
    rank = f"{record['aggregate']} {REL}"
    return (
        v.tokens_html,
        status_line(v.shading.caption),
        gr.Dropdown(choices=v.shade_choices, value=v.shading.value),
        v.heatmap,
        render.shade_column(v.text_top, rank),
        gr.Dropdown(choices=v.token_choices, value=v.token),
        _token_table(v),
        status_line(v.status),
        v.encoding,
        record,
    )


def _token_table(v: MicroscopeView) -> Any:
    caption = microscope.token_caption(v.encoding, v.token)
    return gr.Dataframe(render.shade_column(v.token_table, REL), label=caption)


def kept_choices(enc: Encoding, before: dict[str, Any] | None, text: str) -> tuple[Any, Any]:
    """The shading feature and token to keep when ``text`` is encoded again (the same text: its
    token and feature stay, where they still exist), else ``(None, 0)`` (the defaults)."""
    if not before or before.get("text") != text:
        return None, 0
    token = before.get("token", 0)
    token = token if isinstance(token, int) and 0 <= token < len(enc.tokens) else 0
    try:
        found = shading.parse_shade_source(before.get("shade"))
    except UserError:
        return None, token
    if found is None:
        return shading.STRONGEST, token
    if found[0] not in enc.layers or found[2] != enc.source:
        return None, token
    return shading.shade_value(found[:2], found[2]), token


def layout(ctx: Context) -> MicroscopeTab:
    """The tab's components and its own events (encode, redraw, shade, pick a token)."""
    texts = ctx.content["texts"] or [microscope.FALLBACK_TEXT]
    layer_names = [str(n) for n in ctx.layers]
    enc_state = gr.State(None)
    view = gr.State(None)
    text = gr.Textbox(texts[0], lines=3, label="Text", elem_id="micro-text")
    examples = gr.Examples(
        [[t] for t in texts], inputs=text, label="Example texts (click: encoded)"
    )
    with gr.Row():
        source = sources.radio(ctx, "m-source", "Features of")
        ticked = [str(n) for n in microscope.default_layers(ctx)]
        layers = gr.CheckboxGroup(layer_names, value=ticked, label="Layers", elem_id="m-layers")
        metric = gr.Radio(
            [(name, value) for value, name in METRICS.items()],
            value=microscope.DEFAULT_METRIC,
            label="Heatmap shows",
            elem_id="m-metric",
        )
        density = microscope.density_input(ctx)
        aggregate = gr.Radio(list(microscope.AGGREGATES), value="max", label="Whole-text ranking")
    encode_btn = gr.Button("Encode", variant="primary", elem_id="encode")
    status = status_box("micro-status")
    gr.Markdown(NOTE)
    with gr.Row():
        shade_by = gr.Dropdown(
            label="Shade tokens by (pick, or type layer:feature and press Enter)",
            choices=[(shading.STRONGEST_NAME, shading.STRONGEST)],
            allow_custom_value=True,
            elem_id="shade-by",
            scale=4,
        )
        open_shade = gr.Button("Open this feature's page", elem_id="open-shade", scale=1)
    shade_caption = status_box("shade-caption")
    tokens_view = gr.HTML("", elem_id="tokens", js_on_load=TOKENS_JS, elem_classes="gse-text")
    gr.Markdown(
        "**Tokens × layers:** how many features fire on each token, or its strongest feature's "
        "% of max (hover a cell for the feature)."
    )
    heatmap = gr.Plot(show_label=False, elem_id="heatmap")
    token_pick = gr.Dropdown(label="Token", choices=[], elem_id="token-pick")
    token_table = gr.Dataframe(
        label="Features on this token (click a row to shade the text by it)",
        interactive=False,
        elem_id="token-table",
    )
    text_top = gr.Dataframe(
        label="Top features for the whole text (click a row to shade the text by it)",
        interactive=False,
        elem_id="text-top",
    )
    if len(ctx.sources) > 1:
        gr.Markdown(sources.TC_NOTE)
    tab = MicroscopeTab(
        enc_state=enc_state, view=view, text=text, source=source, layers=layers, metric=metric,
        density=density, aggregate=aggregate, encode_btn=encode_btn, status=status,
        shade_by=shade_by, open_shade=open_shade, shade_caption=shade_caption,
        tokens_view=tokens_view, heatmap=heatmap, token_pick=token_pick,
        token_table=token_table, text_top=text_top,
    )  # fmt: skip
    outputs = tab.outputs
    settings = [layers, metric, density, aggregate]

    def run_microscope(
        text: str,
        layers: list[str],
        metric: str,
        max_density_pct: Any,
        aggregate: str,
        before: dict[str, Any] | None = None,
        source: Any = RES,
    ) -> tuple[Any, ...]:
        """Encode the text on the chosen layers of ``source`` (res or tc) and show it (the same
        text keeps its token and shading feature)."""
        microscope.check_settings(ctx, metric, max_density_pct, aggregate)
        enc = microscope.encode_text(ctx, text, layers, source)
        shade, token = kept_choices(enc, before, text)
        try:
            v = microscope.show(ctx, enc, metric, max_density_pct, aggregate, shade, token)
        except UserError as e:
            if shade is None:
                raise
            warn(f"the text is shaded by its strongest feature: cannot shade by {shade}: {e}")
            v = microscope.show(ctx, enc, metric, max_density_pct, aggregate, None, token)
        return shown(v, view_record(text, layers, metric, max_density_pct, aggregate, v))

    encode_btn.click(
        ui(run_microscope), [text, *settings, view, source], outputs, api_name="microscope"
    )
    examples.load_input_event.then(None, None, None, js=click_js("#encode"))

    def redraw(
        enc: Encoding | None,
        before: dict[str, Any] | None,
        metric: str,
        max_density_pct: Any,
        aggregate: str,
        shade: Any,
        token: Any,
    ) -> tuple[Any, ...]:
        """The view on screen with new settings, shading feature or token (no forward pass)."""
        if enc is None or not before:
            return tuple(gr.skip() for _ in outputs)
        v = microscope.show(ctx, enc, metric, max_density_pct, aggregate, shade, token)
        record = view_record(
            before["text"], before["layers"], metric, max_density_pct, aggregate, v
        )
        return shown(v, record)

    def with_settings(
        enc: Encoding | None,
        before: dict[str, Any] | None,
        metric: str,
        max_density_pct: Any,
        aggregate: str,
    ) -> tuple[Any, ...]:
        if not before:
            return tuple(gr.skip() for _ in outputs)
        shade, token = before["shade"], before["token"]
        return redraw(enc, before, metric, max_density_pct, aggregate, shade, token)

    for control in (metric, density, aggregate):
        control.input(
            ui(with_settings),
            [enc_state, view, metric, density, aggregate],
            outputs,
            api_visibility="private",
            trigger_mode="always_last",
        )

    def reencode(
        text: str,
        layers: list[str],
        metric: str,
        max_density_pct: Any,
        aggregate: str,
        before: dict[str, Any] | None,
        source: Any,
    ) -> tuple[Any, ...]:
        """A layer ticked or unticked: the text on screen is encoded again on the new layers."""
        if not before:
            return tuple(gr.skip() for _ in outputs)
        return run_microscope(text, layers, metric, max_density_pct, aggregate, before, source)

    layers.input(
        ui(reencode),
        [text, *settings, view, source],
        outputs,
        api_visibility="private",
        trigger_mode="always_last",
    )

    def switch_source(
        text: str, metric: str, max_density_pct: Any, aggregate: str, before: Any, source: Any
    ) -> tuple[Any, ...]:
        """Another source: its layers (those the cache holds ticked), and the text on screen
        encoded again with them."""
        ticked = [str(n) for n in microscope.default_layers(ctx, ctx.source(source))]
        names = sources.layer_names(ctx, source)
        update = gr.CheckboxGroup(choices=names, value=ticked)
        if not before:
            return (update, *(gr.skip() for _ in outputs))
        again = run_microscope(text, ticked, metric, max_density_pct, aggregate, before, source)
        return (update, *again)

    source.input(
        ui(switch_source),
        [text, metric, density, aggregate, view, source],
        [layers, *outputs],
        api_visibility="private",
    )

    def with_shade(enc: Encoding | None, before: dict[str, Any] | None, shade: Any) -> Any:
        if not before:
            raise UserError("encode a text first")
        return redraw(
            enc, before, before["metric"], before["density"], before["aggregate"], shade,
            before["token"],
        )  # fmt: skip

    shade_by.input(ui(with_shade), [enc_state, view, shade_by], outputs, api_visibility="private")

    def shade_row(enc: Encoding | None, before: dict[str, Any] | None, evt: gr.SelectData) -> Any:
        row = evt.row_value
        source = enc.source if enc is not None else RES
        return with_shade(enc, before, shading.shade_value((int(row[0]), int(row[1])), source))

    for table in (token_table, text_top):
        table.select(ui(shade_row), [enc_state, view], outputs, api_visibility="private")

    def with_token(enc: Encoding | None, before: dict[str, Any] | None, token: Any) -> Any:
        if not before:
            raise UserError("encode a text first")
        return redraw(
            enc, before, before["metric"], before["density"], before["aggregate"],
            before["shade"], token,
        )  # fmt: skip

    token_pick.input(
        ui(with_token), [enc_state, view, token_pick], outputs, api_visibility="private"
    )

    def pick_token(enc: Encoding | None, before: dict[str, Any] | None, evt: gr.SelectData) -> Any:
        return with_token(enc, before, evt.index)

    tokens_view.select(ui(pick_token), [enc_state, view], outputs, api_visibility="private")

    return tab
