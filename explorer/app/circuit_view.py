"""The Circuits tab's drawing: the graph as a plotly figure, a node's panel, the intervention's
tables. Pure functions of a :class:`explorer.app.circuits.Circuit` -> figures, escaped HTML and
DataFrames (no Gradio).

The figure: x is the token position, y the layer (embeddings at the bottom, the target at the
top); a node's size grows with its influence on the target, its colour says its kind; an edge's
width grows with its weight, blue when it pushes its target up, red when down. Several nodes of
one (position, layer) cell are spread side by side. Each node carries its id (``customdata``):
a click on it selects it (:mod:`explorer.app.circuits_tab`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from explorer.app.circuits import Circuit, NodeInfo, Outcome, dashboard_query
from explorer.app.render import esc, plot_text

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

KIND_COLOURS = {
    "feature": "#5e81ac",
    "dense": "#b7c9e2",
    "error": "#9e9e9e",
    "token": "#2e7d32",
    "logit": "#e65100",
}
KIND_NAMES = {
    "feature": "transcoder feature",
    "dense": "dense feature (on over {pct:g}% of tokens: bias-like)",
    "error": "error (what the transcoder misses)",
    "token": "token embedding",
    "logit": "target (next token)",
}
UP, DOWN = "33, 102, 172", "178, 24, 43"
WIDTHS = (0.6, 1.4, 2.6, 4.2)  # an edge's width by its weight's quarter of the largest
# Where a feature node's "Open its dashboard" link opens (its URL: circuits.dashboard_query, the
# Feature tab's transcoder source): a new browser tab, so the graph stays on screen.
DASHBOARD_TARGET = "_blank"
PINNED = "#ffb300"
SELECTED = "#000000"


def _token(text: str) -> str:
    return repr(text)[1:-1]


def describe(info: NodeInfo, circuit: Circuit, text: str = "") -> str:
    """One node in plain text (hover and panel): its name, place and numbers."""
    tokens = circuit.file.metadata["prompt_tokens"]
    at = _token(tokens[info.pos]) if 0 <= info.pos < len(tokens) else "?"
    lines = [f"{info.name} at position {info.pos} ({at!r})"]
    if info.kind == "logit":
        lines = [f"output {circuit.target_token!r}: the token this graph explains"]
    elif info.kind == "feature":
        lines.append(f"label: {text or 'none yet'}")
    if info.activation is not None:
        lines.append(f"activation {info.activation:.3g}")
    if info.influence is not None:
        lines.append(f"cumulative influence {info.influence:.3f}")
    if info.kind != "logit":
        lines.append(f"effect on {circuit.target_token!r}: {info.effect:+.3g}")
    return "\n".join(lines)


def _places(nodes: Sequence[NodeInfo]) -> dict[str, tuple[float, float]]:
    """``node_id -> (x, y)``: the nodes of one (position, layer) cell on a small grid around
    it (up to 0.4 to either side, 0.3 up and down), most influential first."""
    cells: dict[tuple[int, int], list[NodeInfo]] = defaultdict(list)
    for n in nodes:
        cells[(n.pos, n.layer)].append(n)
    out = {}
    for (pos, layer), members in cells.items():
        members.sort(key=lambda n: (n.influence if n.influence is not None else 0.0, n.node_id))
        cols = max(1, math.ceil(math.sqrt(2 * len(members))))
        rows = math.ceil(len(members) / cols)
        dx, dy = min(0.8 / cols, 0.16), min(0.6 / rows, 0.3)
        for k, n in enumerate(members):
            row, col = divmod(k, cols)
            width = min(cols, len(members) - row * cols)
            x = pos + (col - (width - 1) / 2) * dx
            out[n.node_id] = (x, layer + ((rows - 1) / 2 - row) * dy)
    return out


def figure(
    circuit: Circuit,
    threshold: float,
    pins: Sequence[str] = (),
    selected: str | None = None,
    labels: dict[str, str] | None = None,
    dense: Collection[str] = (),
    dense_at: float = 0.01,
) -> go.Figure:
    """The graph at node threshold ``threshold``, pinned nodes ringed in amber and the selected
    one in black. ``labels``: a feature node's text by id (else its file label); ``dense``: the
    ids of feature nodes the store finds dense (density above ``dense_at``), drawn paler as a
    kind of their own."""
    import plotly.graph_objects as go

    nodes = circuit.shown(threshold)
    n_layers = max((n.layer for n in nodes if n.kind == "logit"), default=0)
    where = _places(nodes)
    fig = go.Figure()
    shown = set(where)
    links = [lk for lk in circuit.file.links if lk["source"] in shown and lk["target"] in shown]
    biggest = max((abs(float(lk["weight"])) for lk in links), default=1.0) or 1.0
    for sign, rgb in ((1, UP), (-1, DOWN)):
        for k, width in enumerate(WIDTHS):
            xs: list[float | None] = []
            ys: list[float | None] = []
            for lk in links:
                w = float(lk["weight"])
                band = min(int(4 * abs(w) / biggest), 3)
                if (w > 0) != (sign > 0) or band != k:
                    continue
                (x0, y0), (x1, y1) = where[lk["source"]], where[lk["target"]]
                xs += [x0, x1, None]
                ys += [y0, y1, None]
            if xs:
                alpha = 0.25 + 0.2 * k
                fig.add_trace(
                    go.Scatter(
                        x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                        line={"width": width, "color": f"rgba({rgb}, {alpha})"},
                    )
                )  # fmt: skip
    labels = labels or {}
    pinned = set(pins)
    dense = set(dense)

    def kind_of(n: NodeInfo) -> str:
        return "dense" if n.kind == "feature" and n.node_id in dense else n.kind

    for kind, colour in KIND_COLOURS.items():
        members = [n for n in nodes if kind_of(n) == kind]
        if not members:
            continue
        sizes = [
            14.0 if n.influence is None else 7.0 + 20.0 * max(0.0, 1.0 - n.influence)
            for n in members
        ]
        rings = [
            SELECTED if n.node_id == selected else PINNED if n.node_id in pinned else "white"
            for n in members
        ]
        fig.add_trace(
            go.Scatter(
                x=[where[n.node_id][0] for n in members],
                y=[where[n.node_id][1] for n in members],
                mode="markers",
                name=KIND_NAMES[kind].format(pct=100 * dense_at),
                customdata=[n.node_id for n in members],
                text=[
                    plot_text(describe(n, circuit, labels.get(n.node_id, n.label))).replace(
                        "\n", "<br>"
                    )
                    for n in members
                ],
                hovertemplate="%{text}<extra></extra>",
                marker={
                    "size": sizes,
                    "color": colour,
                    "line": {"width": [3 if r != "white" else 1 for r in rings], "color": rings},
                },
            )
        )
    tokens = circuit.file.metadata["prompt_tokens"]
    fig.update_xaxes(
        tickvals=list(range(len(tokens))),
        ticktext=[plot_text(f"{i}:{_token(t)}") for i, t in enumerate(tokens)],
        tickangle=-45,
        range=[-0.6, len(tokens) - 0.4],
        showgrid=False,
        zeroline=False,
    )
    fig.update_yaxes(
        tickvals=list(range(-1, n_layers + 1)),
        ticktext=["emb", *[f"L{n}" for n in range(n_layers)], "out"],
        range=[-1.6, n_layers + 0.6],
        showgrid=True,
        gridcolor="#f0f0f0",
        zeroline=False,
    )
    fig.update_layout(
        height=240 + 24 * n_layers,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        legend={"orientation": "h", "y": 1.06, "x": 0},
        plot_bgcolor="white",
        clickmode="event",
        dragmode=False,
        hovermode="closest",
    )
    return fig


def caption(circuit: Circuit, threshold: float, dense: Collection[str] = ()) -> str:
    """One paragraph of plain text: what the graph explains and what is drawn (``dense``: the
    ids of the feature nodes the store finds dense)."""
    shown = circuit.shown(threshold)
    features = sum(n.kind == "feature" for n in shown)
    errors = sum(n.kind == "error" for n in shown)
    dense = set(dense)
    n_dense = sum(n.kind == "feature" and n.node_id in dense for n in shown)
    of_them = f" ({n_dense} of them dense)" if n_dense else ""
    scores = circuit.file.metadata.get("scores") or {}
    p = next((q for i, _, q in circuit.top if i == circuit.target_id), None)
    prob = f" (p = {p:.2f})" if p is not None else ""
    where = "shipped precomputed" if circuit.curated else "computed here"
    text = (
        f"Why the model predicts {circuit.target_token!r}{prob} after this prompt: {features} "
        f"features{of_them} and {errors} error nodes up to node threshold {threshold:g}, graph "
        f"{where}."
    )
    if scores:
        text += (
            f" Replacement score {scores.get('replacement', 0):.2f}, completeness "
            f"{scores.get('completeness', 0):.2f} (1 = fully explained by features)."
        )
    if circuit.caption:
        text += f" Curated: {circuit.caption}"
    return text


def panel(
    circuit: Circuit,
    info: NodeInfo | None,
    text: str = "",
    density: tuple[float, float] | None = None,
) -> str:
    """The node panel's HTML (every value escaped): what the node is, its numbers, and for a
    feature how often it fires over the store's corpus (``density``: its share of tokens and the
    store's dense threshold) and its dashboard link (the Feature tab's ``tc`` source)."""
    if info is None:
        return '<div class="gse-muted">Click a node of the graph (or pick one above).</div>'
    rows = [f'<div class="gse-title">{esc(info.name)}</div>']
    if info.kind == "error":
        rows.append(
            '<div class="gse-label">An error node: what the transcoder misses of this MLP\'s '
            "output here. It has no dashboard: it is not a feature.</div>"
        )
    elif info.kind == "token":
        rows.append(
            '<div class="gse-label">A token embedding: the input itself. It has no dashboard.</div>'
        )
    elif info.kind == "logit":
        rows.append('<div class="gse-label">The target: the next token this graph explains.</div>')
    for line in describe(info, circuit, text).split("\n")[1 if info.kind != "logit" else 0 :]:
        rows.append(f"<div>{esc(line)}</div>")
    if info.kind == "feature":
        rows.append(f"<div>layer {info.layer} · feature {info.feature} · position {info.pos}</div>")
    if info.kind == "feature" and density is not None:
        share, dense_at = density
        rows.append(f"<div>fires on {100 * share:.3g}% of the corpus's tokens</div>")
        if share > dense_at:
            where = ", almost everywhere" if share > 0.5 else ""
            rows.append(
                '<div class="gse-label"><span class="gse-badge gse-dense">dense</span> It fires on '
                f"more than {100 * dense_at:g}% of tokens{where}: a feature this common acts more "
                "like a bias than a concept, its description says little, and it is strong in "
                "many graphs. Look past it for the features specific to this prompt.</div>"
            )
    query = dashboard_query(info)
    if query is not None:
        rows.append(
            f'<div><a id="circuit-dash-link" href="{esc(query)}" '
            f'target="{DASHBOARD_TARGET}" rel="noopener">Open its dashboard</a></div>'
        )
    return '<div class="gse-circuit-node">' + "".join(rows) + "</div>"


def pins_line(circuit: Circuit, pins: Sequence[str]) -> str:
    """The pinned nodes, in plain text."""
    if not pins:
        return "No pinned nodes: click a node, then Pin it (pinned nodes are ringed in amber)."
    names = [f"{circuit.nodes[p].name} @{circuit.nodes[p].pos}" for p in pins if p in circuit.nodes]
    return "Pinned: " + ", ".join(names)


def node_choices(circuit: Circuit, threshold: float) -> list[tuple[str, str]]:
    """``(name, node id)`` of the nodes drawn, most influential first (the node picker)."""
    nodes = sorted(
        circuit.shown(threshold),
        key=lambda n: (n.influence if n.influence is not None else -1.0, n.node_id),
    )
    tokens = circuit.file.metadata["prompt_tokens"]
    return [
        (f"{n.name} @{n.pos} {_token(tokens[n.pos])!r}"[:80], n.node_id)
        for n in nodes
        if 0 <= n.pos < len(tokens)
    ]


def predictions_table(
    predictions: Sequence[tuple[int, str, float]], before: dict[int, float] | None = None
) -> pd.DataFrame:
    """Top tokens as a table: token, probability, and (``before`` given) the change from the
    original (``new`` for a token that was not in the original's top)."""
    import pandas as pd

    rows = []
    for tid, text, p in predictions:
        row: dict[str, Any] = {"token": _token(text), "p": round(p, 4)}
        if before is not None:
            row["change"] = f"{p - before[tid]:+.4f}" if tid in before else "new"
        rows.append(row)
    return pd.DataFrame(rows)


def outcome_tables(outcome: Outcome) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(original, attention frozen, attention unfrozen)`` top-10 tables."""
    r = outcome.result
    before = {t: p for t, _, p in r.baseline}
    return (
        predictions_table(r.baseline),
        predictions_table(r.frozen, before),
        predictions_table(r.unfrozen, before),
    )


def outcome_line(circuit: Circuit, outcome: Outcome) -> str:
    """What the intervention did to the target, against what the graph predicts (plain text)."""
    names = ", ".join(f"{n.name} @{n.pos}" for n in outcome.nodes)
    base, frozen, unfrozen = outcome.result.watched[0]
    verb = "ablated" if outcome.scale == 0 else f"scaled by {outcome.scale:g}"
    direction = "up" if outcome.predicted > 0 else "down" if outcome.predicted < 0 else "unchanged"
    text = (
        f"{names} {verb}. The graph predicts the logit of {circuit.target_token!r} goes "
        f"{direction} by {abs(outcome.predicted):.3g} (scale - 1 times their effects through the "
        f"graph). Its probability: {base:.4f} before, {frozen:.4f} with attention frozen, "
        f"{unfrozen:.4f} unfrozen."
    )
    if outcome.left_out:
        text += f" Not scaled (not features): {', '.join(outcome.left_out)}."
    return text
