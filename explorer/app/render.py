"""Pure functions from data to HTML strings and plotly figures; nothing here touches a model.

Every piece of text that came from a user, a corpus or a tokenizer goes through :func:`esc`:
token strings and labels are shown, never interpreted as markup. Whitespace tokens are made
visible (a newline shows as ``↵``), as Neuronpedia does, so a feature that fires on newlines can
be seen firing.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from explorer import steerability
from explorer.store.schema import feature_name

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go
    from pandas.io.formats.style import Styler

    from explorer.store import Example, FeatureRecord

ACT_RGB = "255, 140, 0"  # the histogram's bars: the scale's orange
MARK = "#b30000"

# THE colour scale of strength (0 = none, 1 = the feature's maximum): white, through orange, to a
# deep orange-red that black text still reads on. Token shading, table cells and the heatmap all
# map through it (plotly interpolates a colorscale linearly in RGB, as :func:`strength_colour`).
SCALE_STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (255, 255, 255)),
    (0.5, (255, 176, 64)),
    (1.0, (230, 81, 0)),
)
COLOURSCALE: list[list[float | str]] = [
    [pos, "rgb({}, {}, {})".format(*rgb)] for pos, rgb in SCALE_STOPS
]


def esc(text: str) -> str:
    """Escape for HTML text and attributes; newlines and tabs shown as ``↵`` and ``⇥``."""
    return html.escape(text, quote=True).replace("\n", "↵").replace("\t", "⇥")


def plot_text(text: str) -> str:
    """Text for a plotly label: plotly draws a markup subset (``<b>``, ``<br>``, ``<a href>``…)
    in tick labels and hover text, so ``<``, ``>`` and ``&`` are written as entities, which it
    shows as the characters themselves."""
    return html.escape(text, quote=False)


def strength_colour(x: float) -> str:
    """The colour of strength ``x`` (a fraction of the maximum; clipped to [0, 1], NaN as 0),
    linear in RGB between :data:`SCALE_STOPS`: ``strength_colour(0.5) == "rgb(255, 176, 64)"``."""
    x = 0.0 if math.isnan(x) else min(1.0, max(0.0, x))
    for (lo, a), (hi, b) in itertools.pairwise(SCALE_STOPS):
        if x <= hi:
            t = (x - lo) / (hi - lo)
            r, g, bl = (round(u + t * (v - u)) for u, v in zip(a, b, strict=True))
            return f"rgb({r}, {g}, {bl})"
    raise AssertionError("unreachable: the stops end at 1")


def token_spans(
    tokens: Sequence[str],
    acts: Sequence[float],
    scale: float,
    mark: int | None = None,
    titles: Sequence[str] | None = None,
) -> str:
    """Tokens as inline spans shaded by ``act / scale`` on :func:`strength_colour`; ``mark`` gets
    a red outline (and ``aria-current``).

    Each span carries its position (``data-pos``) for click handlers; its tooltip is the token
    and its activation, or ``titles[i]`` (plain text, escaped here).
    """
    out = []
    for i, (tok, act) in enumerate(zip(tokens, acts, strict=True)):
        strength = 0.0 if scale <= 0 else float(act) / scale
        style = f"background: {strength_colour(strength)};"
        extra = ""
        if i == mark:
            style += f" outline: 2px solid {MARK}; font-weight: 600;"
            extra = ' aria-current="true"'
        title = esc(titles[i]) if titles is not None else f"{esc(repr(tok))}: {float(act):.3g}"
        out.append(
            f'<span class="gse-tok" data-pos="{i}" style="{style}" title="{title}"{extra}>'
            f"{esc(tok)}</span>"
        )
    return "".join(out)


def example_html(ex: Example, scale: float) -> str:
    """One example context; its centre (the activation it was chosen for) outlined."""
    peak = ex.acts[ex.max_pos] if 0 <= ex.max_pos < len(ex.acts) else 0.0
    body = token_spans(ex.tokens, ex.acts, scale, mark=ex.max_pos)
    return (
        f'<div class="gse-ex"><span class="gse-act">{peak:.2f}</span>'
        f'<span class="gse-ctx">{body}</span></div>'
    )


def examples_html(examples: Sequence[Example], scale: float, empty: str = "no examples") -> str:
    if not examples:
        return f'<div class="gse-empty">{esc(empty)}</div>'
    return "".join(example_html(ex, scale) for ex in examples)


def intervals_html(rec: FeatureRecord) -> str:
    """Neuronpedia's interval groups: ``Interval a–b (contains x%)`` with its sampled examples."""
    parts = []
    for group in reversed(rec.intervals):  # strongest first, as the top examples
        head = (
            f"Interval {group.lo:.2f}–{group.hi:.2f} "
            f"(contains {100 * group.share:.1f}% of activations, {group.count:,} fires)"
        )
        body = examples_html(group.examples, rec.max_act, "no activations in this interval")
        parts.append(f'<div class="gse-group"><div class="gse-head">{esc(head)}</div>{body}</div>')
    return "".join(parts)


AUTO_NOTE = (
    "Derived by the precompute job from this feature's stored examples (their most frequent "
    "tokens, with counts) and its promoted tokens; not a person's label."
)
AUTO_LEGEND = (
    "How to read an automatic description (derived from the store; no person, no LLM): "
    '"fires on" names the tokens its stored examples are centred on, with how many of them; '
    '"mostly after" / "mostly before" a token that precedes / follows most of them; '
    '"pushes toward" its top promoted tokens (what its decoder direction raises through the '
    "unembedding) that occur in the corpus. Promoted tokens the corpus never contains (scripts "
    "and word pieces of the 262k-token vocabulary that the unembedding ranks high by chance) "
    "are left out."
)


STEER_NOTE = (
    "An estimate from the store alone (no generation): features whose promoted tokens are the "
    "tokens they fire on, or the tokens that follow where they fire, tend to pull the text when "
    "steered; features whose promoted tokens are noise do not. docs/steering.md gives how well "
    "it predicts the steering evaluation."
)


def steer_text(estimate: float | None) -> str:
    """A feature's likely-to-steer estimate as text: ``"likely to steer (0.62)"``."""
    if estimate is None or estimate != estimate:
        return ""
    likely = "likely" if estimate >= steerability.LIKELY else "unlikely"
    return f"{likely} to steer ({estimate:.2f})"


def badges_html(
    rec: FeatureRecord,
    label: str | None,
    dense_threshold: float,
    curated: bool = False,
    auto: str = "",
    steer: float | None = None,
) -> str:
    """The dashboard header: id, label (``curated`` marks one shipped with the app rather than a
    person's here), the automatic description ``auto`` (marked as such, below the label, never
    in its place) with its legend, density, max, mean, dead / dense badges and the
    likely-to-steer estimate ``steer``."""
    badges = []
    if rec.dead:
        badges.append('<span class="gse-badge gse-dead">dead: never fired</span>')
    if rec.dense:
        badges.append(
            f'<span class="gse-badge gse-dense">dense: fires on more than '
            f"{100 * dense_threshold:g}% of tokens</span>"
        )
    shown = esc(label) if label else '<span class="gse-muted">unlabelled</span>'
    if label and curated:
        shown += ' <span class="gse-badge gse-curated">curated label</span>'
    described = (
        f'<div class="gse-auto"><span class="gse-badge gse-auto-badge" title="{AUTO_NOTE}">'
        f"automatic</span> {esc(auto)}</div>"
        f'<div class="gse-legend">{esc(AUTO_LEGEND)}</div>'
        if auto
        else ""
    )
    if steer is not None and not rec.dead:
        badges.append(
            f'<span class="gse-badge gse-steer" title="{esc(STEER_NOTE)}">'
            f"{esc(steer_text(steer))}</span>"
        )
    return (
        f'<div class="gse-header"><div class="gse-title">{title(rec)}</div>'
        f"<div class='gse-label'>{shown}</div>{described}"
        f'<div class="gse-stats">density {100 * rec.density:.4f}% · {rec.n_fires:,} fires · '
        f"max {rec.max_act:.3f} · mean {rec.mean_act:.3f} {''.join(badges)}</div></div>"
    )


SOURCE_WORDS = {
    "res": "residual stream SAE",
    "transcoder": "transcoder: reads the MLP's input, writes its output",
}


def title(rec: FeatureRecord) -> str:
    """A dashboard's title: the feature's name (``L9 tc #456``), then its source in words, its
    layer and number."""
    name = feature_name(rec.layer, rec.feature, rec.source)
    words = SOURCE_WORDS.get(rec.source, rec.source)
    return (
        f'{esc(name)} <span class="gse-muted">{esc(words)} · Layer {rec.layer} · feature '
        f"{rec.feature}</span>"
    )


def histogram_figure(
    rec: FeatureRecord, marks: Sequence[float] = (), log_counts: bool = False
) -> go.Figure:
    """The activation histogram (non-zero activations, 0 to max); ``marks`` as vertical lines;
    ``log_counts`` draws the counts on a log axis (rare strong activations become visible)."""
    import plotly.graph_objects as go

    edges = rec.hist_edges
    centres = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
    width = (edges[1] - edges[0]) if len(edges) > 1 else 1.0
    fig = go.Figure(
        go.Bar(
            x=centres,
            y=rec.hist_counts,
            width=width,
            marker_color=f"rgb({ACT_RGB})",
            hovertemplate="activation %{x:.3f}<br>%{y:,} tokens<extra></extra>",
        )
    )
    for value in marks:
        fig.add_vline(x=value, line_color=MARK, line_dash="dash")
        fig.add_annotation(
            x=value, y=1, yref="paper", text=f"your text: {value:.2f}", showarrow=False
        )
    fig.update_layout(
        xaxis_title="activation",
        yaxis_title="tokens (log scale)" if log_counts else "tokens",
        yaxis_type="log" if log_counts else "linear",
        height=260,
        margin={"l": 50, "r": 10, "t": 10, "b": 40},
        bargap=0.05,
    )
    return fig


def logits_figure(tokens: Sequence[str], values: Sequence[float], positive: bool) -> go.Figure:
    """Horizontal bars of the tokens a feature promotes (``positive``) or suppresses."""
    import plotly.graph_objects as go

    shown = [plot_text(repr(t)[1:-1]) for t in tokens]  # quotes off, whitespace visible
    fig = go.Figure(
        go.Bar(
            x=list(values)[::-1],
            y=[f"{i}. {t}" for i, t in enumerate(shown, 1)][::-1],
            orientation="h",
            marker_color="#2e7d32" if positive else "#c62828",
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    fig.update_layout(height=300, margin={"l": 10, "r": 10, "t": 30, "b": 30})
    fig.update_yaxes(automargin=True)
    return fig


def heatmap_figure(
    tokens: Sequence[str],
    layers: Sequence[int],
    values: Any,
    what: str,
    zmax: float,
    hover: Sequence[Sequence[str]] | None = None,
    names: Sequence[str] | None = None,
) -> go.Figure:
    """Tokens (x) × layers (y) on :data:`COLOURSCALE` from 0 to ``zmax``; ``values`` is
    ``[n_layers, n_tokens]``, ``hover`` (same shape, plain text) says more about each cell;
    ``names`` are the rows' names (``layer 9``, ``tc layer 9``; default ``layer N``)."""
    import plotly.graph_objects as go

    x = [f"{i}:{plot_text(repr(t)[1:-1])}" for i, t in enumerate(tokens)]
    extra = "<br>%{text}" if hover is not None else ""
    heatmap = {
        "type": "heatmap",
        "z": values,
        "x": x,
        "y": [plot_text(n) for n in names] if names else [f"layer {n}" for n in layers],
        "zmin": 0.0,
        "zmax": zmax if zmax > 0 else 1.0,
        "colorscale": [list(stop) for stop in COLOURSCALE],
        "hovertemplate": "%{x} · %{y}<br>" + what + ": %{z:.3g}" + extra + "<extra></extra>",
        "colorbar": {"title": {"text": what}},
    }
    if hover is not None:
        heatmap["text"] = [[esc(h) for h in row] for row in hover]
    layout = {
        "height": 120 + 28 * len(layers),
        "margin": {"l": 10, "r": 10, "t": 10, "b": 10},
        "xaxis": {"showticklabels": len(tokens) <= 60, "tickangle": -60},
    }
    # Built from plain values, so plotly's per-property validation (two thirds of a microscope
    # view's drawing time) is skipped; the JSON is the same as the validated figure's.
    return go.Figure({"data": [heatmap], "layout": layout}, _validate=False)


def shade_column(table: pd.DataFrame, column: str, full: float = 100.0) -> Styler:
    """``table`` with ``column``'s cells shaded by :func:`strength_colour` of ``value / full``
    (empty cells stay white): a Gradio Dataframe shows the colours when it is not editable.

    Numbers are shown as the table holds them (already rounded: ``89.8``, not the Styler's
    ``89.800000``); a missing value is blank.
    """
    floats = [c for c in table.columns if table[c].dtype.kind == "f"]
    return table.style.map(
        lambda v: f"background-color: {strength_colour(float(v) / full if v == v else 0.0)}",
        subset=[column],
    ).format(lambda v: "" if v != v else repr(float(v)), subset=floats)


CSS = """
.gse-tok { white-space: pre-wrap; border-radius: 3px; padding: 0 1px; }
#tokens .gse-tok { cursor: pointer; }
.gse-ex { font-family: ui-monospace, monospace; font-size: 0.85em; padding: 3px 0;
  border-bottom: 1px solid #eee; }
.gse-act { display: inline-block; min-width: 3.5em; color: #666; margin-right: 0.5em; }
.gse-head { font-weight: 600; margin-top: 0.6em; }
.gse-title { font-size: 1.3em; font-weight: 700; }
.gse-label { font-size: 1.1em; margin: 0.2em 0; }
.gse-muted, .gse-empty { color: #888; font-style: italic; }
.gse-badge { border-radius: 4px; padding: 1px 6px; margin-left: 6px; font-size: 0.85em; }
.gse-dead { background: #eceff1; color: #37474f; }
.gse-dense { background: #fff3e0; color: #e65100; }
.gse-curated { background: #e3f2fd; color: #0d47a1; }
.gse-auto { color: #555; font-size: 0.9em; margin: 2px 0 4px; }
.gse-auto-badge { background: #eeeeee; color: #555; border: 1px dashed #999; }
.gse-legend, .gse-legend p { color: #666; font-size: 0.85em; }
.gse-steer { background: #e8f5e9; color: #1b5e20; }
.gse-status { white-space: pre-wrap; }
.gse-text { font-family: ui-monospace, monospace; line-height: 1.9; }
"""
