"""render: every string from a user, a corpus or a tokenizer is escaped; figures carry the data."""

from __future__ import annotations

import html
import re

import pandas as pd

from explorer.app import render
from explorer.store import Example

HOSTILE = ["<script>alert(1)</script>", '" onmouseover="alert(1)', "a&b", "\n", "\t", "'x'"]


def test_token_spans_escape_text_and_titles_and_shade_by_activation() -> None:
    out = render.token_spans(HOSTILE, [0.0, 1.0, 2.0, 4.0, 0.5, 8.0], scale=4.0, mark=3)
    assert "<script>" not in out and 'onmouseover="' not in out
    assert "&lt;script&gt;" in out and "a&amp;b" in out
    assert "↵" in out and "⇥" in out  # whitespace made visible
    colours = re.findall(r"background: (rgb\([^)]*\))", out)
    # act / scale on the one colour scale, clipped to [0, 1]
    assert colours == [render.strength_colour(x) for x in (0.0, 0.25, 0.5, 1.0, 0.125, 1.0)]
    assert colours[0] == "rgb(255, 255, 255)" and colours[3] == colours[5] == "rgb(230, 81, 0)"
    assert out.count("outline") == 1 and out.count('aria-current="true"') == 1
    assert re.findall(r'data-pos="(\d+)"', out) == [str(i) for i in range(len(HOSTILE))]
    # The browser's view of the text is the tokens, exactly.
    text = html.unescape(re.sub(r"<[^>]+>", "", out))
    assert text == "".join(HOSTILE).replace("\n", "↵").replace("\t", "⇥")


def test_example_marks_its_peak() -> None:
    ex = Example("d", 0, ["a", "<b>", "c"], [1, 2, 3], [0.0, 3.0, 1.0], 1)
    out = render.example_html(ex, 3.0)
    assert '<span class="gse-act">3.00</span>' in out
    assert "outline" in out.split("&lt;b&gt;")[0].rsplit("<span", 1)[1]


def test_logits_figure_lists_tokens_in_rank_order() -> None:
    # Plotly draws a markup subset (<b>, <a href>) in labels: a token's < > & become entities,
    # which plotly shows as the characters.
    fig = render.logits_figure(["<x>", " the", "\n"], [3.0, 2.0, 1.0], positive=True)
    assert list(fig.data[0].y) == ["3. \\n", "2.  the", "1. &lt;x&gt;"]
    assert list(fig.data[0].x) == [1.0, 2.0, 3.0]


def test_one_colour_scale_for_tokens_tables_and_heatmap() -> None:
    """strength_colour is linear in RGB between the stops, as plotly reads COLOURSCALE."""
    assert render.strength_colour(0.0) == "rgb(255, 255, 255)"
    assert render.strength_colour(0.5) == "rgb(255, 176, 64)"
    assert render.strength_colour(1.0) == "rgb(230, 81, 0)"
    assert render.strength_colour(0.25) == "rgb(255, 216, 160)"  # halfway to the middle stop
    assert render.strength_colour(0.75) == "rgb(242, 128, 32)"  # 242.5, 128.5: halves to even
    assert (
        render.strength_colour(-3) == render.strength_colour(float("nan")) == "rgb(255, 255, 255)"
    )
    assert render.strength_colour(7) == "rgb(230, 81, 0)"
    for pos, colour in render.COLOURSCALE:
        assert render.strength_colour(float(pos)) == colour
    # Tables: the shaded column's cells, NaN left white; other columns untouched.
    table = pd.DataFrame({"feature": [1, 2, 3], "% of max": [100.0, 50.0, float("nan")]})
    styles = render.shade_column(table, "% of max")._compute().ctx
    assert [styles[(i, 1)] for i in range(3)] == [
        [("background-color", render.strength_colour(x))] for x in (1.0, 0.5, 0.0)
    ]
    assert not any(col == 0 for _, col in styles)
    shown = render.shade_column(table, "% of max").to_html()
    assert ">100.0<" in shown and ">50.0<" in shown and "50.000000" not in shown
    # The heatmap: that colorscale, from 0 to zmax.
    fig = render.heatmap_figure(["<a>", "b"], [1, 2], [[0, 50], [100, 25]], "% of max", 100.0)
    heat = fig.data[0]
    assert [list(s) for s in heat.colorscale] == render.COLOURSCALE
    assert (heat.zmin, heat.zmax) == (0.0, 100.0)
    assert list(heat.x) == ["0:&lt;a&gt;", "1:b"]  # tick labels are text (plotly reads tags)
