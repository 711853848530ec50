"""render: every string from a user, a corpus or a tokenizer is escaped; figures carry the data."""

from __future__ import annotations

import html
import re

from explorer.app import render
from explorer.store import Example

HOSTILE = ["<script>alert(1)</script>", '" onmouseover="alert(1)', "a&b", "\n", "\t", "'x'"]


def test_token_spans_escape_text_and_titles_and_shade_by_activation() -> None:
    out = render.token_spans(HOSTILE, [0.0, 1.0, 2.0, 4.0, 0.5, 8.0], scale=4.0, mark=3)
    assert "<script>" not in out and 'onmouseover="' not in out
    assert "&lt;script&gt;" in out and "a&amp;b" in out
    assert "↵" in out and "⇥" in out  # whitespace made visible
    alphas = [float(a) for a in re.findall(r"rgba\([^)]*, ([0-9.]+)\)", out)]
    assert alphas == [0.0, 0.25, 0.5, 1.0, 0.12, 1.0]  # act / scale, clipped to [0, 1]
    assert out.count("outline") == 1
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
