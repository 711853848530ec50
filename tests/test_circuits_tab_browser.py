"""The Circuits tab in a real Chromium, on the tiny Gemma 3 with random transcoders: a curated
graph opens, a click on a node shows its panel, pinning and ablating the top node moves the
target's probability in the sign the graph predicts, the link reproduces the view, and bad input
leaves the screen as it was."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from browser_ui import UI, ablate_top_node
from circuits_app import CURATED_PROMPT
from helpers import serve

from explorer.app import Context

pytestmark = pytest.mark.usefixtures("browser")


@pytest.fixture
def served(circuit_ctx: Context) -> Iterator[str]:
    """The app with transcoders (the ``ui`` fixture drives the app ``served`` yields)."""
    yield from serve(circuit_ctx)


def test_a_curated_graph_opens_and_an_ablation_moves_the_target_as_predicted(
    ui: UI, circuit_ctx: Context
) -> None:
    from playwright.sync_api import expect

    page = ui.page
    _, top = ablate_top_node(ui, circuit_ctx, 0, CURATED_PROMPT, "shipped precomputed")
    expect(page.locator("#circuit-frozen")).to_contain_text("change")
    ui.shot("circuits-ablation")

    # The address holds the view; opening it draws the same graph with the same pin.
    page.wait_for_function("() => window.location.search.includes('pins=')")
    url = page.url
    assert "tab=circuits" in url and re.search(r"pins=" + top.node_id, url)
    ui.page.goto(url)
    ui.expect_tab("circuits")
    expect(page.locator("#circuit-caption")).to_contain_text("shipped precomputed")
    expect(page.locator("#circuit-pins")).to_contain_text(f"Pinned: {top.name} @{top.pos}")

    # Bad input: a toast says why, and the graph on screen stays.
    ui.box("circuit-prompt").fill("")
    page.locator("#circuit-run").click()
    expect(page.get_by_text("the prompt is empty").first).to_be_visible()
    expect(page.locator("#circuit-caption")).to_contain_text("shipped precomputed")
    expect(page.locator("#circuit-pins")).to_contain_text("Pinned:")
    assert not ui.dialogs

    # Steer with these: the Steering tab gets the graph's prompt and the pinned transcoder
    # feature (source tc, add); a bad click (nothing pinned) is refused and changes nothing.
    page.locator("#circuit-steer").click()
    ui.expect_tab("steer")
    expect(ui.box("steer-prompt")).to_have_value(CURATED_PROMPT)
    row = page.locator("#steer-table")
    expect(row).to_contain_text("tc")
    expect(row).to_contain_text(str(top.feature))

    # The node's dashboard link opens that transcoder feature's dashboard.
    ui.page.goto(
        url.split("?")[0] + f"?tab=dashboard&source=tc&layer={top.layer}&feature={top.feature}"
    )
    ui.expect_tab("dashboard")
    expect(page.locator("#dash-header")).to_contain_text(f"L{top.layer} tc #{top.feature}")
    ui.shot("circuits-node-dashboard")
