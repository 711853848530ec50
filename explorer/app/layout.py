"""The app's composition: the tabs in order, under one header, and the wiring between tabs (a
table row opening the Feature tab, a feature sent to the Steering tab), the address bar (a link
reproduces the view: :mod:`explorer.app.links`) and the label API. Each tab lays out and wires
itself (its module's ``layout``); nothing else happens here."""

from __future__ import annotations

from typing import Any

import gradio as gr

from explorer.app import (
    address,
    browse,
    circuits,
    circuits_tab,
    dashboard,
    labelling,
    microscope,
    microscope_tab,
    shading,
    start,
    steering,
)
from explorer.app.context import Context, UserError
from explorer.app.steer_table import MAX_STEERS
from explorer.app.ui import click_js, ui
from explorer.store.schema import TRANSCODER

TITLE = "Gemma Scope Explorer"
TAB_IDS = set(address.TAB_IDS)


def build_app(ctx: Context, title: str = TITLE) -> gr.Blocks:
    """The app over one :class:`Context`: its tabs, and what connects them."""
    layer_names = [str(n) for n in ctx.layers]
    tc_layers = ctx.source_layers("transcoder") if len(ctx.sources) > 1 else []
    tc_line = f" · transcoders (tc) on {len(tc_layers)} layers" if tc_layers else ""
    store_line = (
        f"store: {ctx.store_tokens:,} corpus tokens"
        if ctx.store_tokens is not None
        else "no feature store (dashboards and browse are off)"
    )
    with gr.Blocks(title=title) as demo:
        with gr.Row():
            gr.Markdown(
                f"# {title}\nbundle **{ctx.bundle.spec.name}** · layers "
                f"{', '.join(layer_names)}{tc_line} · {store_line}"
            )
            copy_btn = gr.Button("Copy link", scale=0, size="sm", elem_id="copy-link")
            if ctx.policy.login:
                gr.LoginButton(scale=0)
        # The address bar's value: "hidden", not invisible (an invisible component is not on the
        # page, and its change event never reaches the browser's script that writes the bar).
        link = gr.Textbox(visible="hidden", elem_id="gse-link")
        steer_ran = gr.State(None)  # the steering set-up last generated (its link)
        items: dict[str, gr.Tab] = {}
        with gr.Tabs(selected=start.TAB_ID) as tabs:
            with gr.Tab("Start here", id=start.TAB_ID) as items[start.TAB_ID]:
                start_tab = start.layout(ctx)
            with gr.Tab("Microscope", id=microscope.TAB_ID) as items[microscope.TAB_ID]:
                micro = microscope_tab.layout(ctx)
            with gr.Tab("Feature", id=dashboard.TAB_ID) as items[dashboard.TAB_ID]:
                dash = dashboard.layout(ctx, tabs)
            with gr.Tab("Steering", id=steering.TAB_ID) as items[steering.TAB_ID]:
                steer = steering.layout(ctx)
            with gr.Tab("Browse & search", id=browse.TAB_ID) as items[browse.TAB_ID]:
                found = browse.layout(ctx)
            with gr.Tab("Circuits", id=circuits.TAB_ID) as items[circuits.TAB_ID]:
                circ = circuits_tab.layout(ctx)
            with gr.Tab("Label", id=labelling.TAB_ID) as items[labelling.TAB_ID]:
                label_tab = labelling.layout(ctx)

        # A row of any feature table opens that feature's dashboard (of the row's source: the
        # column ``source_at`` holds it; none: a residual SAE's feature).
        def opener(source_at: int | None) -> Any:
            def open_from_row(evt: gr.SelectData) -> tuple[Any, ...]:
                row = evt.row_value
                source = row[source_at] if source_at is not None else "res"
                return dashboard.open_values(ctx, row[0], row[1], source=source)

            return open_from_row

        for table, source_at in ((start_tab.curated_table, None), (found.table, 2),
                                 (found.si_table, None)):  # fmt: skip
            table.select(ui(opener(source_at)), None, dash.outputs)

        # The microscope's shading feature opens on its own page.
        def open_shaded(view: Any) -> tuple[Any, ...]:
            feature = shading.parse_shade_source((view or {}).get("shade"))
            if feature is None:
                raise UserError("pick a feature to shade the text by first (a row of a table)")
            return dashboard.open_values(ctx, feature[0], feature[1], source=feature[2])

        micro.open_shade.click(ui(open_shaded), [micro.view], dash.outputs)

        # Browse's random feature: a live one of the layer and source its filters show, opened.
        def open_random(layer: Any, source: Any) -> tuple[Any, ...]:
            layer_n, feature_n, picked = dashboard.random_any(ctx, layer, source=source)
            return dashboard.open_values(ctx, layer_n, feature_n, source=picked)

        found.random_btn.click(ui(open_random), [found.layer, found.source], dash.outputs)

        # An example text opens in the microscope, encoded (as if Encode were pressed).
        def open_text(evt: gr.SelectData) -> tuple[Any, ...]:
            return str(evt.row_value[0]), gr.Tabs(selected=microscope.TAB_ID)

        start_tab.texts_table.select(ui(open_text), None, [micro.text, tabs]).then(
            None, None, None, js=click_js("#encode")
        )

        # A steering demo fills the Steering tab and generates (as if Generate were pressed).
        def open_demo(evt: gr.SelectData) -> tuple[Any, ...]:
            return (*steering.demo_values(ctx, evt.index[0]), gr.Tabs(selected=steering.TAB_ID))

        demo_outputs = [
            steer.prompt, steer.steer_table, steer.temperature, steer.max_new, steer.seed,
            steer.freq, tabs,
        ]  # fmt: skip
        for table in (start_tab.demos_table, steer.demos_table):
            table.select(ui(open_demo), None, demo_outputs).then(
                None, None, None, js=click_js("#generate")
            )

        # The dashboard's feature sent to the Steering tab, opened: alone in the table (Steer
        # with this feature), or added to the rows already there (Add it to the steering table).
        def steer_values(table: Any, shown: Any, keep: bool) -> tuple[Any, ...]:
            if not shown:
                raise UserError("open a feature first")
            layer, feature, source = dashboard.shown_feature(shown)
            new = steering.with_feature(ctx, table if keep else None, layer, feature, source=source)
            return new, gr.Tabs(selected=steering.TAB_ID)

        def to_steer(table: Any, shown: Any) -> tuple[Any, ...]:
            return steer_values(table, shown, keep=False)

        def add_to_steer(table: Any, shown: Any) -> tuple[Any, ...]:
            return steer_values(table, shown, keep=True)

        for button, send in ((dash.to_steer_btn, to_steer), (dash.add_steer_btn, add_to_steer)):
            button.click(ui(send), [steer.steer_table, dash.shown], [steer.steer_table, tabs])

        # The Circuits tab's pinned features sent to the Steering tab with the graph's prompt:
        # a transcoder feature steers by adding its decoder direction to its MLP's output.
        def steer_with_pins(circuit: Any, view: Any) -> tuple[Any, ...]:
            chosen = circuits.steer_features(circuit, circuits_tab.pins_of(view))
            if len(chosen) > MAX_STEERS:
                raise UserError(f"at most {MAX_STEERS} steering features; {len(chosen)} pinned")
            table = None
            for layer, feature in chosen:
                table = steering.with_feature(ctx, table, layer, feature, source=TRANSCODER)
            return circuit.prompt, table, gr.Tabs(selected=steering.TAB_ID)

        circ.steer_btn.click(
            ui(steer_with_pins),
            [circ.circuit, circ.view],
            [steer.prompt, steer.steer_table, tabs],
            api_visibility="private",
        )

        setup = [steer.prompt, steer.steer_table, steer.temperature, steer.max_new, steer.seed,
                 steer.freq]  # fmt: skip

        # Named parameters, as /generate's: gradio_client's view_api shows a handler's own names.
        def steer_link(
            prompt: str,
            steering: Any,
            temperature: Any,
            max_new_tokens: Any,
            seed: Any,
            frequency_penalty: Any,
        ) -> Any:
            """The steering set-up as a link (its query string), or nothing while it is not
            valid."""
            return address.steer_link(
                ctx, prompt, steering, temperature, max_new_tokens, seed, frequency_penalty,
                run=True,
            ) or gr.skip()  # fmt: skip

        gr.Button(visible=False).click(steer_link, setup, link, api_name="steer_link")
        copy_btn.click(None, None, None, js=address.COPY_URL)
        parts = address.Parts(
            tabs, items, micro, dash, steer, found, label_tab, circ, link, steer_ran
        )
        address.wire(ctx, demo, parts)

        # The label API: label a feature by number (what the UI does for the feature shown).
        def label_feature(
            layer: int,
            feature: int,
            label: str,
            labeller: str = "",
            key: str = "",
            source: str = "res",
            profile: gr.OAuthProfile | None = None,
        ) -> str:
            """Save a label for (layer, feature) of ``source`` (res or tc); on a public app,
            with a login or the key."""
            return ctx.save_label(
                layer, feature, label, "", "medium", labeller, profile, key, source
            )

        gr.api(ui(label_feature), api_name="label_feature")
    return demo
