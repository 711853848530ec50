"""The address bar: it follows the view, and opening it rebuilds the view.

Every view a user can reach is written into the address bar as it changes (the query formats are
:mod:`explorer.app.links`'): the tab, and that tab's view, read from what the tab records as on
screen: the microscope's ``view`` (text, settings, token, shading feature), the feature shown on
the dashboard or in the label form, the browse table's criteria and page, the steering set-up
(with ``run=0`` until it is generated). Selecting a tab writes that tab's view; a change in a tab
writes it only while that tab is the one on screen (``active``, kept per session), so a tab
filled in the background (the label queue, on every page load) never takes the address over.

Opening a link (:func:`opened`) fills every tab it names, selects its tab and, for a text or a
steering set-up, presses Encode or Generate as a user would. Plotly draws a colour bar's gradient
through a ``url(<page address>#id)``; after the address changes such a reference points to
another page and the bar goes blank, so writing the address also points the plots on the page to
the new one (:data:`SET_URL`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from explorer.app import (
    browse,
    circuits,
    dashboard,
    labelling,
    links,
    microscope,
    start,
    steering,
)
from explorer.app.browse import BrowseTab
from explorer.app.circuits_tab import CircuitsTab
from explorer.app.context import Context, UserError
from explorer.app.dashboard import DashboardTab
from explorer.app.labelling import LabellingTab
from explorer.app.microscope_tab import MicroscopeTab
from explorer.app.steering import SteeringTab
from explorer.app.ui import warn
from explorer.store.schema import RES, SHORT

TAB_IDS = (
    start.TAB_ID, microscope.TAB_ID, dashboard.TAB_ID, steering.TAB_ID, browse.TAB_ID,
    labelling.TAB_ID, circuits.TAB_ID,
)  # fmt: skip
# Writes the query string the server computed into the address bar (no reload, no history
# entry), then re-points every plot's url(...#id) paint (a colour bar's gradient) at it.
SET_URL = """(q) => {
  if (!q) { return []; }
  window.history.replaceState(null, '', q);
  const here = window.location.href.split('#')[0];
  document.querySelectorAll('.js-plotly-plot [style*="url("]').forEach((e) => {
    for (const p of ['fill', 'stroke']) {
      const v = e.style.getPropertyValue(p);
      if (v.includes('url(')) {
        e.style.setProperty(p, v.replace(/url\\("?[^#"]*#/, 'url("' + here + '#'));
      }
    }
  });
  return [];
}"""
COPY_URL = "() => { navigator.clipboard && navigator.clipboard.writeText(window.location.href); }"
# After a link is opened, press what it asks for (the server says which: "encode", "generate").
_AUTORUN = """(what) => {
  const gseClick = (id, tries = 100) => {
    const b = document.querySelector(id);
    if (b) { b.click(); } else if (tries > 0) { setTimeout(() => gseClick(id, tries - 1), 100); }
  };
  if ((what || '').includes('encode')) { gseClick('#encode'); }
  if ((what || '').includes('generate')) { gseClick('#generate'); }
  if ((what || '').includes('graph')) { gseClick('#circuit-run'); }
  return [];
}"""


@dataclass
class Parts:
    """What the address bar reads and fills: the tabs, their records of what is on screen."""

    tabs: gr.Tabs
    tab_items: dict[str, gr.Tab]
    micro: MicroscopeTab
    dash: DashboardTab
    steer: SteeringTab
    found: BrowseTab
    label: LabellingTab
    circ: CircuitsTab
    link: gr.Textbox
    steer_ran: gr.State  # the steering set-up last generated, as its link (None: none yet)


def micro_defaults(ctx: Context, source: str = RES) -> dict[str, Any]:
    """The microscope's settings when the page opens (a link names only those that differ);
    ``source``'s default layers."""
    return {
        "layers": microscope.default_layers(ctx, source),
        "metric": microscope.DEFAULT_METRIC,
        "density": round(100 * ctx.dense_threshold, 6),
        "aggregate": "max",
    }


def micro_link(ctx: Context, view: dict[str, Any] | None) -> str:
    if not view or not view.get("text"):
        return links.tab_query(microscope.TAB_ID)
    source = links.SOURCE_NAMES.get(str(view.get("source") or RES), RES)
    return links.microscope_query(view, micro_defaults(ctx, source))


def shown_link(shown: Any, tab: str) -> str:
    """The dashboard's or the label form's feature (``shown``) as a link."""
    if not shown:
        return links.tab_query(tab)
    layer, feature, source = dashboard.shown_feature(shown)
    return links.feature_query(layer, feature, tab=tab, source=source)


def browse_link(
    layer: Any, query: Any, sort_by: Any, desc: Any, dense: Any, dead: Any, page: Any,
    source: Any = "all",
) -> str:  # fmt: skip
    criteria = {"layer": layer, "query": (query or "").strip(), "sort_by": sort_by,
                "descending": bool(desc), "hide_dense": bool(dense), "hide_dead": bool(dead),
                "page": int(page) if page not in (None, "") else 1,
                "source": source or "all"}  # fmt: skip
    return links.browse_query(criteria)


def steer_link(
    ctx: Context,
    prompt: str,
    steering_rows: Any,
    temperature: Any,
    max_new_tokens: Any,
    seed: Any,
    frequency_penalty: Any,
    run: bool,
) -> str | None:
    """The steering set-up as a link, ``None`` while a cell or setting is not valid (the
    generation says what is wrong; the address keeps the last good set-up)."""
    try:
        steers = steering.parse_steers(ctx, steering_rows)
        values = {
            "temperature": float(temperature),
            "max_new_tokens": float(max_new_tokens),
            "seed": float(seed),
            "frequency_penalty": float(frequency_penalty),
        }
    except (UserError, TypeError, ValueError):
        return None
    rows = [(s.layer, s.feature, s.strength, s.method, s.source) for s in steers]
    return links.steer_query(prompt or "", rows, run=run, **values)


def wire(ctx: Context, demo: gr.Blocks, p: Parts) -> None:
    """Connect the address bar: the events that write it, and the page load that reads it."""
    active = gr.State(None)
    autorun = gr.Textbox(visible="hidden", elem_id="gse-autorun")
    p.link.change(None, [p.link], None, js=SET_URL)
    criteria = [p.found.layer, p.found.query, p.found.sort, p.found.desc, p.found.dense,
                p.found.dead, p.found.page, p.found.source]  # fmt: skip
    setup: list[Any] = [p.steer.prompt, p.steer.steer_table, p.steer.temperature, p.steer.max_new,
             p.steer.seed, p.steer.freq]  # fmt: skip

    def link_for(tab: str, view: Any, dash_shown: Any, label_shown: Any, ran: Any,
                 circ_view: Any, *rest: Any) -> str | None:  # fmt: skip
        """Tab ``tab``'s view as a link (``rest``: the browse criteria, then the set-up)."""
        if tab == circuits.TAB_ID:
            return links.circuit_query(circ_view) if circ_view else links.tab_query(tab)
        if tab == microscope.TAB_ID:
            return micro_link(ctx, view)
        if tab in (dashboard.TAB_ID, labelling.TAB_ID):
            return shown_link(dash_shown if tab == dashboard.TAB_ID else label_shown, tab)
        if tab == browse.TAB_ID:
            return browse_link(*rest[: len(criteria)])
        if tab == steering.TAB_ID:
            made = setup_link(*rest[len(criteria) :])
            if made is None:
                return links.tab_query(tab)
            # ``ran`` is the set-up last generated: any other is not generated yet.
            return made if made == ran else made + "&run=0"
        return links.tab_query(tab)

    everything = [p.micro.view, p.dash.shown, p.label.shown, p.steer_ran, p.circ.view, *criteria,
                  *setup]  # fmt: skip
    for tab_id, item in p.tab_items.items():

        def select(current: Any, *values: Any, _tab: str = tab_id) -> tuple[Any, Any]:
            if current is None and _tab == start.TAB_ID:
                # The first tab's select as the page opens: the link is read, not written over.
                return gr.skip(), gr.skip()
            return link_for(_tab, *values) or gr.skip(), _tab

        item.select(select, [active, *everything], [p.link, active], api_visibility="private")

    def follow(tab: str, current: Any, *values: Any) -> Any:
        """A change in tab ``tab``: the address follows it while that tab is on screen."""
        return (link_for(tab, *values) or gr.skip()) if current == tab else gr.skip()

    def follower(tab: str) -> Any:
        def changed(current: Any, *values: Any) -> Any:
            return follow(tab, current, *values)

        changed.__name__ = f"follow_{tab}"
        return changed

    for trigger, tab_id in (
        (p.micro.view.change, microscope.TAB_ID),
        (p.dash.shown.change, dashboard.TAB_ID),
        (p.label.shown.change, labelling.TAB_ID),
        (p.found.table.change, browse.TAB_ID),
        (p.circ.view.change, circuits.TAB_ID),
    ):
        trigger(follower(tab_id), [active, *everything], p.link, api_visibility="private")

    def setup_link(*values: Any) -> str | None:
        prompt, rows, temperature, max_new, seed, freq = values
        return steer_link(ctx, prompt, rows, temperature, max_new, seed, freq, run=True)

    # The steering set-up: Generate records it as generated; a change shows whether the set-up
    # on screen is still the one generated (whatever order the two events are answered in).
    def generated(current: Any, *values: Any) -> tuple[Any, Any]:
        made = setup_link(*values[-len(setup) :])
        return follow(steering.TAB_ID, current, *_with_ran(values, made)), made

    for control in setup:
        control.change(follower(steering.TAB_ID), [active, *everything], p.link,
                       api_visibility="private")  # fmt: skip
    p.steer.gen_btn.click(generated, [active, *everything], [p.link, p.steer_ran],
                          api_visibility="private")  # fmt: skip

    outputs = [*p.dash.outputs, p.micro.text, p.micro.source, p.micro.layers, p.micro.metric,
               p.micro.density,
               p.micro.aggregate, p.micro.view, *setup, p.steer_ran, *criteria, p.found.table,
               *p.label.outputs, p.circ.prompt, p.circ.target, p.circ.threshold, p.circ.view,
               active, autorun]  # fmt: skip

    def from_url(request: gr.Request) -> tuple[Any, ...]:
        pairs = list(request.query_params.multi_items()) if request else []
        found = links.parse(pairs)
        values = opened(ctx, found, p)
        if found.problems:
            warn("this link has problems: " + "; ".join(found.problems))
        return values

    demo.load(from_url, None, outputs, api_visibility="private").then(
        None, [autorun], None, js=_AUTORUN
    )


def _with_ran(values: tuple[Any, ...], ran: Any) -> tuple[Any, ...]:
    """``values`` (as ``everything``) with the set-up last generated replaced."""
    return (*values[:3], ran, *values[4:])


def _tab(found: links.Link) -> str:
    """The tab a link opens: its ``tab``, else the one its other keys belong to."""
    if found.tab in TAB_IDS:
        return found.tab
    if found.tab is not None:
        found.problems.append(f"unknown tab {found.tab[:40]!r}")
    if found.feature is not None:
        return dashboard.TAB_ID
    if found.text is not None:
        return microscope.TAB_ID
    if found.circuit:
        return circuits.TAB_ID
    if found.prompt is not None or found.steers:
        return steering.TAB_ID
    if found.browse:
        return browse.TAB_ID
    return start.TAB_ID


def opened(ctx: Context, found: links.Link, p: Parts) -> tuple[Any, ...]:
    """The values of every tab a link names (``gr.skip()`` where it names nothing), in the order
    of :func:`wire`'s load outputs; problems are added to ``found.problems``."""
    tab = _tab(found)
    dash_values: list[Any] = [gr.skip() for _ in p.dash.outputs]
    label_feature = found.feature if tab == labelling.TAB_ID else None
    if found.feature is not None and label_feature is None:
        try:
            dash_values = list(dashboard.open_values(ctx, *found.feature, source=found.source))
        except UserError as e:
            found.problems.append(f"cannot open the feature: {e}")
    dash_values[-1] = gr.Tabs(selected=tab) if tab != start.TAB_ID else gr.skip()
    micro_values = _micro_values(ctx, found)
    steer_values = _steer_values(ctx, found, tab)
    browse_values = _browse_values(ctx, found)
    try:
        label_values = list(
            labelling.show_values(ctx, *label_feature, found.source)
            if label_feature
            else labelling.first_values(ctx)
        )
    except UserError as e:
        if label_feature:
            found.problems.append(f"cannot open the feature: {e}")
        label_values = [gr.skip() for _ in p.label.outputs]
    autorun = []
    if found.text is not None and tab == microscope.TAB_ID:
        autorun.append("encode")
    if (found.prompt is not None or found.steers) and found.run and tab == steering.TAB_ID:
        autorun.append("generate")
    circuit_values = _circuit_values(ctx, found, tab)
    if tab == circuits.TAB_ID and found.prompt is not None and circuits.missing(ctx) is None:
        autorun.append("graph")
    # The tab on screen, for the changes that follow it (left as it is for a plain page: a tab
    # the user picked while the page opened stays the one on screen).
    active = tab if tab != start.TAB_ID else gr.skip()
    return (*dash_values, *micro_values, *steer_values, *browse_values, *label_values,
            *circuit_values, active, ",".join(autorun))  # fmt: skip


def _micro_values(ctx: Context, found: links.Link) -> list[Any]:
    """The microscope's text, source, layers, metric, density, ranking and view record from a
    link."""
    if found.text is None:
        return [gr.skip() for _ in range(7)]
    asked = found.micro
    try:
        source = ctx.source(found.source)
    except UserError as e:
        found.problems.append(str(e))
        source = RES
    have = ctx.source_layers(source)
    layers = asked.get("layers")
    if layers is not None and not set(layers) <= set(have):
        found.problems.append(f"layers must be among {', '.join(map(str, have))}")
        layers = None
    metric, aggregate = asked.get("metric"), asked.get("aggregate")
    if metric is not None and metric not in microscope.METRICS:
        found.problems.append(f"heatmap must be {' or '.join(microscope.METRICS)}")
        metric = None
    if aggregate is not None and aggregate not in microscope.AGGREGATES:
        found.problems.append("rank must be max or sum")
        aggregate = None
    density = asked.get("density")
    if density is not None and not 0 <= density <= 100:
        found.problems.append("density must be a % from 0 to 100")
        density = None
    view = {"text": found.text, "token": asked.get("token"), "shade": asked.get("shade"),
            "source": SHORT[source]}  # fmt: skip

    def given(value: Any) -> Any:
        return value if value is not None else gr.skip()

    ticked = [str(n) for n in (layers or microscope.default_layers(ctx, source))]
    shown = gr.CheckboxGroup(choices=[str(n) for n in have], value=ticked)
    if source == RES and not layers:
        shown = gr.skip()
    return [found.text, SHORT[source] if source != RES else gr.skip(), shown, given(metric),
            given(density), given(aggregate), view]  # fmt: skip


def _circuit_values(ctx: Context, found: links.Link, tab: str) -> list[Any]:
    """The Circuits tab's prompt, target, threshold and view record from a link (its pins are
    applied once the graph is drawn: :mod:`explorer.app.circuits_tab`)."""
    if tab != circuits.TAB_ID:
        return [gr.skip() for _ in range(4)]
    why = circuits.missing(ctx)
    if why is not None:
        found.problems.append(why)
        return [gr.skip() for _ in range(4)]
    asked = found.circuit
    if found.prompt is None:  # nothing to draw: the tab as it is
        return [gr.skip() for _ in range(4)]
    threshold = asked.get("threshold", circuits.NODE_THRESHOLD)
    view = {"prompt": found.prompt or "", "target": asked.get("target", ""),
            "pins": asked.get("pins", []), "threshold": threshold}  # fmt: skip
    return [
        found.prompt,
        gr.Dropdown(value=asked.get("target") or None, allow_custom_value=True),
        threshold,
        view,
    ]


def _steer_values(ctx: Context, found: links.Link, tab: str) -> list[Any]:
    """The Steering tab's inputs from a link (skips where the link says nothing; a graph's
    prompt is the Circuits tab's), and the set-up last generated (none yet)."""
    prompt = found.prompt if tab != circuits.TAB_ID else None
    values: list[Any] = [prompt if prompt is not None else gr.skip()]
    if found.steers:
        rows: list[Any] = []
        for layer, feature, strength, method, source in found.steers:
            try:
                rows = steering.add_steer(ctx, rows, layer, feature, strength, method, source)
            except UserError as e:
                prefix = "" if source == RES else SHORT[source]
                found.problems.append(f"steer {prefix}{layer}:{feature}: {e}")
        values.append(steering.to_table(ctx, rows))
    else:
        values.append(gr.skip())
    for key in links.SETTINGS:
        value = found.settings.get(key)
        values.append(value if value is not None else gr.skip())
    return [*values, None]


def _browse_values(ctx: Context, found: links.Link) -> list[Any]:
    """The browse criteria, page and table: the link's, else the defaults (the first page)."""
    criteria = {**links.BROWSE_DEFAULTS, **found.browse}
    try:
        page = browse.select(ctx, **criteria)
    except UserError as e:
        found.problems.append(f"cannot search: {e}")
        criteria = dict(links.BROWSE_DEFAULTS)
        try:
            page = browse.select(ctx, **criteria)
        except UserError:
            return [gr.skip() for _ in range(9)]
    table = gr.Dataframe(value=page.table, label=browse.page_caption(*page[1:]))
    layer = criteria["layer"]
    return [
        str(layer), criteria["query"], criteria["sort_by"], criteria["descending"],
        criteria["hide_dense"], criteria["hide_dead"], page.page, criteria["source"], table,
    ]  # fmt: skip
