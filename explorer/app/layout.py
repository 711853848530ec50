"""The app's composition: the tabs in order, under one header, and the wiring between tabs (a
table row opening the Feature tab, a feature sent to the Steering tab, a feature link in the
URL). Each tab lays out and wires itself (its module's ``layout``); nothing else happens here."""

from __future__ import annotations

from typing import Any

import gradio as gr

from explorer.app import browse, dashboard, labelling, microscope, start, steering
from explorer.app.context import Context, UserError
from explorer.app.ui import ui

TITLE = "Gemma Scope Explorer"


def build_app(ctx: Context, title: str = TITLE) -> gr.Blocks:
    """The app over one :class:`Context`: its tabs, and what connects them."""
    layer_names = [str(n) for n in ctx.layers]
    store_line = (
        f"store: {ctx.store_tokens:,} corpus tokens"
        if ctx.store_tokens is not None
        else "no feature store (dashboards and browse are off)"
    )
    with gr.Blocks(title=title) as demo:
        gr.Markdown(
            f"# {title}\nbundle **{ctx.bundle.spec.name}** · layers {', '.join(layer_names)} · "
            f"{store_line}"
        )
        with gr.Tabs(selected=start.TAB_ID) as tabs:
            with gr.Tab("Start here", id=start.TAB_ID):
                start_tab = start.layout(ctx)
            with gr.Tab("Microscope", id=microscope.TAB_ID):
                micro = microscope.layout(ctx)
            with gr.Tab("Feature", id=dashboard.TAB_ID):
                dash = dashboard.layout(ctx, tabs)
            with gr.Tab("Steering", id=steering.TAB_ID):
                steer = steering.layout(ctx)
            with gr.Tab("Browse & search", id=browse.TAB_ID):
                found = browse.layout(ctx)
            with gr.Tab("Label", id=labelling.TAB_ID):
                labelling.layout(ctx)

        # A row of any feature table opens that feature's dashboard.
        def open_from_row(evt: gr.SelectData) -> tuple[Any, ...]:
            row = evt.row_value
            return dashboard.open_values(ctx, row[0], row[1])

        for table in (
            micro.token_table,
            micro.text_top,
            start_tab.curated_table,
            found.table,
            found.si_table,
        ):
            table.select(ui(open_from_row), None, dash.outputs)

        # The dashboard's feature, added to the steering table, and the Steering tab opened.
        def to_steer(table: Any, layer: Any, feature: Any) -> tuple[Any, ...]:
            return steering.with_feature(ctx, table, layer, feature), gr.Tabs(
                selected=steering.TAB_ID
            )

        dash.to_steer_btn.click(
            ui(to_steer), [steer.steer_table, dash.layer, dash.feature], [steer.steer_table, tabs]
        )

        # A link ``?layer=N&feature=M`` opens that feature's dashboard.
        def from_url(request: gr.Request) -> tuple[Any, ...]:
            params = dict(request.query_params) if request else {}
            if "feature" not in params:
                return tuple(gr.skip() for _ in dash.outputs)
            layer = params.get("layer", layer_names[-1])
            try:
                return dashboard.open_values(ctx, layer, params["feature"])
            except UserError as e:
                gr.Warning(f"cannot open the feature in the link: {e}")
                return tuple(gr.skip() for _ in dash.outputs)

        demo.load(from_url, None, dash.outputs)
    return demo
