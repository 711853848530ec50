"""Links: every view's query string parses back to the view it was written from, defaults are
left out, Gradio's own keys are never used, and bad values are named, not applied."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlparse

import pytest

from explorer.app import links

DEFAULTS = {"layers": [1, 2], "metric": "active features", "density": 1.0, "aggregate": "max"}


def parsed(query: str) -> links.Link:
    return links.parse(parse_qsl(urlparse(query).query, keep_blank_values=True))


def test_a_microscope_view_round_trips_and_leaves_defaults_out() -> None:
    view = {"text": "the cat & <dog>", "token": 3, "shade": "2:17", **DEFAULTS}
    query = links.microscope_query(view, DEFAULTS)
    assert "layers" not in query and "heatmap" not in query and "density" not in query
    found = parsed(query)
    assert (found.tab, found.text, found.micro) == (
        "microscope", "the cat & <dog>", {"token": 3, "shade": "2:17"},
    )  # fmt: skip
    other = {**view, "layers": [2], "metric": "max activation", "density": 0.5, "aggregate": "sum"}
    again = parsed(links.microscope_query(other, DEFAULTS))
    assert again.micro == {
        "token": 3, "shade": "2:17", "layers": [2], "metric": "max activation", "density": 0.5,
        "aggregate": "sum",
    }  # fmt: skip
    assert not again.problems


def test_a_browse_view_round_trips_without_gradios_page_key() -> None:
    criteria = {**links.BROWSE_DEFAULTS, "query": "cat", "page": 3, "hide_dense": False}
    query = links.browse_query(criteria)
    keys = dict(parse_qsl(urlparse(query).query))
    assert "page" not in keys  # Gradio's: ?page=… asks for a page of a multipage app
    assert keys == {"tab": "browse", "q": "cat", "browse_page": "3", "hide_dense": "0"}
    assert parsed(query).browse == {"query": "cat", "page": 3, "hide_dense": False}
    assert links.browse_query(links.BROWSE_DEFAULTS) == "?tab=browse"


def test_a_steering_set_up_is_marked_not_generated() -> None:
    query = links.steer_query("hi", [(2, 5, 40.0, "add")], run=False, temperature=0.7, seed=1)
    found = parsed(query)
    assert found.run is False and found.steers == [(2, 5, 40.0, "add", "res")]
    assert parsed(links.steer_query("hi", [], temperature=0)).run is True  # old links generate


def test_the_label_forms_feature_and_a_plain_tab() -> None:
    found = parsed(links.feature_query(2, 7, tab="label"))
    assert (found.tab, found.feature) == ("label", (2, 7))
    assert parsed(links.tab_query("start")).tab == "start"


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("?token=1e3", "token must be a whole number"),
        ("?shade=<b>", "shade must be layer:feature or strongest"),
        ("?layers=1,x", "layers must be a whole number"),
        ("?density=abc", "density must be a plain number"),
        ("?desc=yes", "desc must be 0 or 1"),
        ("?browse_page=-2", "browse_page must be a whole number"),
        ("?run=2", "run must be 0 or 1"),
        ("?q=" + "x" * 201, "the search is longer than 200 characters"),
    ],
)
def test_a_bad_value_is_named_and_not_applied(query: str, problem: str) -> None:
    found = parsed(query)
    assert any(problem in p for p in found.problems), found.problems
    assert "token" not in found.micro and "shade" not in found.micro
    assert "page" not in found.browse and "descending" not in found.browse
