"""The app's composition: the tabs in order, under one header, and the wiring between tabs (a
table row opening the Feature tab, a feature sent to the Steering tab), the address bar (a link
reproduces the view: :mod:`explorer.app.links`) and the label API. Each tab lays out and wires
itself (its module's ``layout``); nothing else happens here."""

from __future__ import annotations

from typing import Any

import gradio as gr

from explorer.app import browse, dashboard, labelling, links, microscope, start, steering
from explorer.app.context import Context, UserError
from explorer.app.ui import ui, warn

TITLE = "Gemma Scope Explorer"
TAB_IDS = {
    start.TAB_ID,
    microscope.TAB_ID,
    dashboard.TAB_ID,
    steering.TAB_ID,
    browse.TAB_ID,
    labelling.TAB_ID,
}
# Writes the query string the server computed into the address bar (no reload, no history entry).
_SET_URL = "(q) => { if (q) { window.history.replaceState(null, '', q); } return []; }"
_COPY_URL = "() => { navigator.clipboard && navigator.clipboard.writeText(window.location.href); }"
# Clicks a button once its tab is on the page (Gradio mounts a tab's components when it is first
# shown, so right after a tab switch the button may not exist yet: retry for up to 10 s).
_CLICK = """const gseClick = (id, tries = 100) => {
  const b = document.querySelector(id);
  if (b) { b.click(); } else if (tries > 0) { setTimeout(() => gseClick(id, tries - 1), 100); }
};"""
# After a link is loaded, run the microscope / the generation it describes, as a click would.
_RUN_FROM_URL = (
    "() => {"
    + _CLICK
    + """
  const q = new URLSearchParams(window.location.search);
  if (q.get('text')) { gseClick('#encode'); }
  if (q.get('prompt')) { gseClick('#generate'); }
  return [];
}"""
)
_ENCODE = "() => {" + _CLICK + " gseClick('#encode'); return []; }"
_GENERATE = "() => {" + _CLICK + " gseClick('#generate'); return []; }"


def build_app(ctx: Context, title: str = TITLE) -> gr.Blocks:
    """The app over one :class:`Context`: its tabs, and what connects them."""
    layer_names = [str(n) for n in ctx.layers]
    store_line = (
        f"store: {ctx.store_tokens:,} corpus tokens"
        if ctx.store_tokens is not None
        else "no feature store (dashboards and browse are off)"
    )
    with gr.Blocks(title=title) as demo:
        with gr.Row():
            gr.Markdown(
                f"# {title}\nbundle **{ctx.bundle.spec.name}** · layers "
                f"{', '.join(layer_names)} · {store_line}"
            )
            copy_btn = gr.Button("Copy link", scale=0, size="sm", elem_id="copy-link")
            if ctx.policy.login:
                gr.LoginButton(scale=0)
        link = gr.Textbox(visible=False, elem_id="gse-link")
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
                label_tab = labelling.layout(ctx)

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

        # Browse's random feature: a live one of the layer its filter shows, opened.
        def open_random(layer: Any) -> tuple[Any, ...]:
            return dashboard.open_values(ctx, *dashboard.random_feature(ctx, layer))

        found.random_btn.click(ui(open_random), [found.layer], dash.outputs)

        # An example text opens in the microscope, encoded (as if Encode were pressed).
        def open_text(evt: gr.SelectData) -> tuple[Any, ...]:
            return str(evt.row_value[0]), gr.Tabs(selected=microscope.TAB_ID)

        start_tab.texts_table.select(ui(open_text), None, [micro.text, tabs]).then(
            None, None, None, js=_ENCODE
        )

        # A steering demo fills the Steering tab and generates (as if Generate were pressed).
        def open_demo(evt: gr.SelectData) -> tuple[Any, ...]:
            return (*steering.demo_values(ctx, evt.index[0]), gr.Tabs(selected=steering.TAB_ID))

        demo_outputs = [
            steer.prompt, steer.steer_table, steer.temperature, steer.max_new, steer.seed,
            steer.freq, tabs,
        ]  # fmt: skip
        for table in (start_tab.demos_table, steer.demos_table):
            table.select(ui(open_demo), None, demo_outputs).then(None, None, None, js=_GENERATE)

        # The dashboard's feature sent to the Steering tab, opened: alone in the table (Steer
        # with this feature), or added to the rows already there (Add it to the steering table).
        def steer_values(table: Any, shown: Any, keep: bool) -> tuple[Any, ...]:
            if not shown:
                raise UserError("open a feature first")
            new = steering.with_feature(ctx, table if keep else None, shown[0], shown[1])
            return new, gr.Tabs(selected=steering.TAB_ID)

        def to_steer(table: Any, shown: Any) -> tuple[Any, ...]:
            return steer_values(table, shown, keep=False)

        def add_to_steer(table: Any, shown: Any) -> tuple[Any, ...]:
            return steer_values(table, shown, keep=True)

        for button, send in ((dash.to_steer_btn, to_steer), (dash.add_steer_btn, add_to_steer)):
            button.click(ui(send), [steer.steer_table, dash.shown], [steer.steer_table, tabs])

        # The address bar follows the view: a feature opened, a text encoded, a generation.
        def feature_link(shown: Any) -> Any:
            return links.feature_query(*shown) if shown else gr.skip()

        dash.header.change(feature_link, [dash.shown], link)

        def text_link(text: str) -> str:
            return links.text_query(text or "")

        micro.encode_btn.click(text_link, [micro.text], link)

        # Named parameters, as /generate's: gradio_client's view_api shows a handler's own names
        # (a ``*settings`` showed as param_2 … param_5). The module is bound before the name
        # ``steering`` becomes the table's.
        parse_steers = steering.parse_steers

        def steer_link(
            prompt: str,
            steering: Any,
            temperature: Any,
            max_new_tokens: Any,
            seed: Any,
            frequency_penalty: Any,
        ) -> Any:
            try:
                steers = parse_steers(ctx, steering)
                values = {
                    "temperature": float(temperature),
                    "max_new_tokens": float(max_new_tokens),
                    "seed": float(seed),
                    "frequency_penalty": float(frequency_penalty),
                }
            except (UserError, TypeError, ValueError):
                return gr.skip()  # the generation reports what is wrong; the link stays
            rows = [(s.layer, s.feature, s.strength, s.method) for s in steers]
            return links.steer_query(prompt or "", rows, **values)

        steer.gen_btn.click(
            steer_link,
            [steer.prompt, steer.steer_table, steer.temperature, steer.max_new, steer.seed,
             steer.freq],
            link,
        )  # fmt: skip
        link.change(None, [link], None, js=_SET_URL)
        copy_btn.click(None, None, None, js=_COPY_URL)

        # A link reproduces a view; the Label tab opens on a feature of the queue.
        steer_inputs = [
            steer.prompt,
            steer.steer_table,
            steer.temperature,
            steer.max_new,
            steer.seed,
            steer.freq,
        ]
        load_outputs = [*dash.outputs, micro.text, *steer_inputs, *label_tab.outputs]

        def from_url(request: gr.Request) -> tuple[Any, ...]:
            pairs = list(request.query_params.multi_items()) if request else []
            found = links.parse(pairs)
            dash_values: list[Any] = [gr.skip() for _ in dash.outputs]
            if found.feature is not None:
                try:
                    dash_values = list(dashboard.open_values(ctx, *found.feature))
                except UserError as e:
                    found.problems.append(f"cannot open the feature: {e}")
            if found.tab in TAB_IDS:
                dash_values[-1] = gr.Tabs(selected=found.tab)
            elif found.tab is not None:
                found.problems.append(f"unknown tab {found.tab[:40]!r}")
            micro_values = [found.text if found.text is not None else gr.skip()]
            steer_values = _steer_values(ctx, found)
            try:
                label_values = list(labelling.first_values(ctx))
            except UserError:
                label_values = [gr.skip() for _ in label_tab.outputs]
            if found.problems:
                warn("this link has problems: " + "; ".join(found.problems))
            return (*dash_values, *micro_values, *steer_values, *label_values)

        demo.load(from_url, None, load_outputs).then(None, None, None, js=_RUN_FROM_URL)

        def first_page() -> Any:
            return browse.table_update(ctx)

        demo.load(ui(first_page), None, found.table)

        # The label API: label a feature by number (what the UI does for the feature shown).
        def label_feature(
            layer: int,
            feature: int,
            label: str,
            labeller: str = "",
            key: str = "",
            profile: gr.OAuthProfile | None = None,
        ) -> str:
            """Save a label for (layer, feature); on a public app, with a login or the key."""
            return ctx.save_label(layer, feature, label, "", "medium", labeller, profile, key)

        gr.api(ui(label_feature), api_name="label_feature")
    return demo


def _steer_values(ctx: Context, found: links.Link) -> list[Any]:
    """The Steering tab's inputs from a link (skips where the link says nothing)."""
    values: list[Any] = [found.prompt if found.prompt is not None else gr.skip()]
    if found.steers:
        rows: list[Any] = []
        for layer, feature, strength, method in found.steers:
            try:
                rows = steering.add_steer(ctx, rows, layer, feature, strength, method)
            except UserError as e:
                found.problems.append(f"steer {layer}:{feature}: {e}")
        values.append(steering.to_table(ctx, rows))
    else:
        values.append(gr.skip())
    for key in ("temperature", "max_new_tokens", "seed", "frequency_penalty"):
        value = found.settings.get(key)
        values.append(value if value is not None else gr.skip())
    return values
