"""The Circuits tab's layout and wiring (handlers: :mod:`explorer.app.circuits`, drawing:
:mod:`explorer.app.circuit_view`).

Draw (the button, a curated graph, a link) opens the graph of (prompt, target): a curated or
cached one at once, else computed with a progress bar. The graph stays in the session
(``circuit``); the threshold, a node picked (a click on the plot, or the node picker), pins and
interventions apply to it. ``view`` (a ``gr.State``) records what is on screen (prompt, target,
pins, threshold): the address bar is written from it, and drawing the same graph again keeps its
pins. A bundle without a transcoder on every layer shows one line saying what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from explorer.app import circuit_view, circuits
from explorer.app.circuits import Circuit
from explorer.app.context import Context, UserError
from explorer.app.ui import click_js, status_box, status_line, ui

# The node panel binds the graph's clicks (plotly's own event, on the plot's div, re-bound
# whenever the plot is drawn anew) and reports the node's id as the panel's select event.
PLOT_CLICKS = """
const bind = () => {
  const gd = document.querySelector('#circuit-graph .js-plotly-plot');
  if (gd && gd.on && gd._gseOn !== gd.on) {
    gd._gseOn = gd.on;
    gd.on('plotly_click', (ev) => {
      const p = ev && ev.points && ev.points[0];
      if (p && typeof p.customdata === 'string') {
        trigger('select', {index: p.pointNumber, value: p.customdata, selected: true});
      }
    });
  }
};
setInterval(bind, 300);
"""
HOW_TO_READ = (
    "**How to read it:** each dot is a node: green the prompt's tokens (bottom row), blue "
    "transcoder features (by layer, at the token where they fire; pale blue: dense ones, which "
    "fire on many tokens and act more like biases), grey the error terms (what the transcoders "
    "miss), orange the target at the top. A line is a direct effect: blue pushes "
    "its target up, red down, wider is stronger; bigger dots matter more for the target. Lower "
    "the node threshold to keep only the most influential nodes. Click a node for its panel; pin "
    "features and scale them (0 ablates) to test what the graph claims."
)


@dataclass
class CircuitsTab:
    circuit: gr.State
    view: gr.State
    selected: gr.State
    curated: gr.Dataframe
    prompt: gr.Textbox
    target: gr.Dropdown
    run_btn: gr.Button
    status: gr.HTML
    caption: gr.HTML
    threshold: gr.Slider
    plot: gr.Plot
    node_pick: gr.Dropdown
    pin_btn: gr.Button
    clear_btn: gr.Button
    pins: gr.HTML
    panel: gr.HTML
    scale: gr.Slider
    intervene_btn: gr.Button
    steer_btn: gr.Button
    outcome: gr.HTML
    original: gr.Dataframe
    frozen: gr.Dataframe
    unfrozen: gr.Dataframe
    download: gr.DownloadButton

    @property
    def shown(self) -> list[Any]:
        """What drawing a graph updates, in the order of :func:`drawn`'s values."""
        return [
            self.plot, self.caption, self.status, self.target, self.node_pick, self.panel,
            self.pins, self.download, self.circuit, self.view, self.selected,
        ]  # fmt: skip


def drawn(
    ctx: Context,
    c: Circuit,
    threshold: float,
    pins: list[str],
    selected: str | None,
    status: str = "",
) -> tuple[Any, ...]:
    """The values of :attr:`CircuitsTab.shown` for graph ``c``."""
    info = c.nodes.get(selected) if selected else None
    choices = [(f"{t!r} p={p:.3f}"[:60], t) for _, t, p in c.top]
    dense = circuits.dense_nodes(ctx, c)
    return (
        circuit_view.figure(
            c, threshold, pins, selected, dense=dense, dense_at=ctx.dense_threshold
        ),
        status_line(circuit_view.caption(c, threshold, dense)),
        status_line(status),
        gr.Dropdown(choices=choices, value=c.target or None, allow_custom_value=True),
        gr.Dropdown(choices=circuit_view.node_choices(c, threshold), value=selected),
        circuit_view.panel(c, info, _text(ctx, info), circuits.feature_density(ctx, info)),
        status_line(circuit_view.pins_line(c, pins)),
        str(circuits.download(c)),
        c,
        circuits.view_record(c, pins, threshold),
        selected,
    )


def _text(ctx: Context, info: circuits.NodeInfo | None) -> str:
    return circuits.feature_text(ctx, info) if info is not None else ""


def pins_of(view: Any) -> list[str]:
    return list((view or {}).get("pins") or [])


def layout(ctx: Context) -> CircuitsTab:
    """The tab's components and its own events."""
    why = circuits.missing(ctx)
    if why is not None:
        gr.Markdown(why, elem_id="circuits-missing")
    with gr.Column(visible=why is None):
        gr.Markdown(
            "An **attribution graph** shows why the model predicts its next token: which "
            "tokens and transcoder features pushed it there, and through which paths "
            "(circuit-tracer's method). A curated graph opens at once; a new one takes a while."
        )
        curated = gr.Dataframe(
            circuits.curated_rows(ctx) if why is None else [],
            headers=["prompt", "target", "what the graph shows"],
            label="Curated graphs (click one to open it)",
            interactive=False,
            elem_id="circuit-curated",
        )
        with gr.Row():
            prompt = gr.Textbox(
                label=f"Prompt (at most {circuits.MAX_TOKENS} tokens)",
                lines=2,
                scale=3,
                elem_id="circuit-prompt",
            )
            target = gr.Dropdown(
                label="Target (blank: the top prediction; pick one of the top 10 or type a token)",
                choices=[],
                allow_custom_value=True,
                scale=2,
                elem_id="circuit-target",
            )
        run_btn = gr.Button("Draw the graph", variant="primary", elem_id="circuit-run")
        status = status_box("circuit-status")
        caption = status_box("circuit-caption")
        gr.Markdown(HOW_TO_READ)
        threshold = gr.Slider(
            0.05, 1.0, circuits.NODE_THRESHOLD, step=0.05, label="Node threshold (cumulative "
            "influence kept)", elem_id="circuit-threshold",
        )  # fmt: skip
        plot = gr.Plot(show_label=False, elem_id="circuit-graph")
        with gr.Row():
            node_pick = gr.Dropdown(label="Node", choices=[], scale=3, elem_id="circuit-node")
            pin_btn = gr.Button("Pin / unpin this node", scale=1, elem_id="circuit-pin")
            clear_btn = gr.Button("Clear pins", scale=1, elem_id="circuit-clear-pins")
        pins = status_box("circuit-pins")
        panel = gr.HTML("", js_on_load=PLOT_CLICKS, elem_id="circuit-node-panel")
        gr.Markdown(
            "**Intervene:** scale the pinned features (0 ablates them, 2 doubles them) and "
            "compare the next tokens, with attention frozen at the prompt's (as in the graph) "
            "and unfrozen (the real model)."
        )
        with gr.Row():
            scale = gr.Slider(0.0, circuits.MAX_SCALE, 0.0, step=0.25, label="Scale",
                              elem_id="circuit-scale")  # fmt: skip
            intervene_btn = gr.Button("Scale the pinned features", elem_id="circuit-intervene")
            steer_btn = gr.Button("Steer with these", elem_id="circuit-steer")
        outcome = status_box("circuit-outcome")
        with gr.Row():
            original = gr.Dataframe(label="Original", interactive=False, elem_id="circuit-original")
            frozen = gr.Dataframe(
                label="Attention frozen", interactive=False, elem_id="circuit-frozen"
            )
            unfrozen = gr.Dataframe(
                label="Attention unfrozen", interactive=False, elem_id="circuit-unfrozen"
            )
        download = gr.DownloadButton("Download the JSON", elem_id="circuit-download")
    tab = CircuitsTab(
        circuit=gr.State(None), view=gr.State(None), selected=gr.State(None), curated=curated,
        prompt=prompt, target=target, run_btn=run_btn, status=status, caption=caption,
        threshold=threshold, plot=plot, node_pick=node_pick, pin_btn=pin_btn,
        clear_btn=clear_btn, pins=pins, panel=panel, scale=scale, intervene_btn=intervene_btn,
        steer_btn=steer_btn, outcome=outcome, original=original, frozen=frozen,
        unfrozen=unfrozen, download=download,
    )  # fmt: skip
    _wire(ctx, tab)
    return tab


def _wire(ctx: Context, tab: CircuitsTab) -> None:
    shown = tab.shown

    def circuit(
        prompt: str,
        target: Any,
        node_threshold: Any,
        before: Any = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008  (Gradio's way to ask for one)
    ) -> tuple[Any, ...]:
        """Draw the attribution graph of the prompt's next token (the target, else the top
        prediction); the same graph again keeps its pins."""
        threshold = circuits.check_threshold(node_threshold)

        def report(done: int, total: int) -> None:
            progress(done / max(total, 1), desc=f"attributing: {done} of {total} nodes")

        c = circuits.open_graph(ctx, prompt, target, report)
        kept = before or {}
        pins: list[str] = []
        note = ""
        if kept.get("prompt") == c.prompt and (kept.get("target") or "") == c.target:
            pins, problems = circuits.parse_pins(c, pins_of(kept))
            note = "; ".join(problems)
        return drawn(ctx, c, threshold, pins, None, note)

    tab.run_btn.click(
        ui(circuit),
        [tab.prompt, tab.target, tab.threshold, tab.view],
        shown,
        api_name="circuit",
        concurrency_limit=1,
    )

    def redraw(c: Circuit | None, view: Any, selected: Any, node_threshold: Any) -> Any:
        if c is None:
            return tuple(gr.skip() for _ in shown)
        threshold = circuits.check_threshold(node_threshold)
        return drawn(ctx, c, threshold, pins_of(view), selected)

    tab.threshold.release(
        ui(redraw), [tab.circuit, tab.view, tab.selected, tab.threshold], shown,
        api_visibility="private", trigger_mode="always_last",
    )  # fmt: skip

    def pick(c: Circuit | None, view: Any, node_threshold: Any, node_id: Any) -> Any:
        if c is None:
            raise UserError("draw a graph first")
        circuits.node(c, node_id)
        return redraw(c, view, str(node_id), node_threshold)

    def pick_clicked(c: Circuit | None, view: Any, node_threshold: Any, evt: gr.SelectData) -> Any:
        return pick(c, view, node_threshold, evt.value)

    tab.panel.select(
        ui(pick_clicked), [tab.circuit, tab.view, tab.threshold], shown, api_visibility="private"
    )
    tab.node_pick.input(
        ui(pick), [tab.circuit, tab.view, tab.threshold, tab.node_pick], shown,
        api_visibility="private",
    )  # fmt: skip

    def pin(c: Circuit | None, view: Any, selected: Any, node_threshold: Any) -> Any:
        if c is None or not selected:
            raise UserError("pick a node first: click it in the graph")
        pins = circuits.toggle_pin(c, pins_of(view), selected)
        return drawn(ctx, c, circuits.check_threshold(node_threshold), pins, selected)

    def clear(c: Circuit | None, selected: Any, node_threshold: Any) -> Any:
        if c is None:
            return tuple(gr.skip() for _ in shown)
        return drawn(ctx, c, circuits.check_threshold(node_threshold), [], selected)

    tab.pin_btn.click(
        ui(pin), [tab.circuit, tab.view, tab.selected, tab.threshold], shown,
        api_visibility="private",
    )  # fmt: skip
    tab.clear_btn.click(
        ui(clear), [tab.circuit, tab.selected, tab.threshold], shown, api_visibility="private"
    )

    def scaled(c: Circuit | None, view: Any, scale: Any) -> tuple[Any, ...]:
        if c is None:
            raise UserError("draw a graph first")
        outcome = circuits.intervention(ctx, c, pins_of(view), scale)
        return (
            status_line(circuit_view.outcome_line(c, outcome)),
            *circuit_view.outcome_tables(outcome),
        )

    tab.intervene_btn.click(
        ui(scaled), [tab.circuit, tab.view, tab.scale],
        [tab.outcome, tab.original, tab.frozen, tab.unfrozen], api_visibility="private",
    )  # fmt: skip

    def open_curated(evt: gr.SelectData) -> tuple[Any, ...]:
        prompt, target = circuits.curated_entry(ctx, evt.index[0])
        return prompt, gr.Dropdown(value=target or None, allow_custom_value=True)

    tab.curated.select(
        ui(open_curated), None, [tab.prompt, tab.target], api_visibility="private"
    ).then(None, None, None, js=click_js("#circuit-run"))
