"""The Circuits tab in a real Chromium, on the tiny Gemma 3 with random transcoders: a curated
graph opens, a click on a node shows its panel, pinning and ablating the top node moves the
target's probability in the sign the graph predicts, the link reproduces the view, and bad input
leaves the screen as it was."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from browser_ui import UI
from circuits_app import CURATED_PROMPT
from helpers import serve

from explorer.app import Context, circuits

pytestmark = pytest.mark.usefixtures("browser")


@pytest.fixture
def served(circuit_ctx: Context) -> Iterator[str]:
    """The app with transcoders (the ``ui`` fixture drives the app ``served`` yields)."""
    yield from serve(circuit_ctx)


# Where a node is drawn on the page: the plot's own axes map its (x, y) to pixels.
NODE_XY = """(id) => {
  const gd = document.querySelector('#circuit-graph .js-plotly-plot');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const box = gd.getBoundingClientRect();
  for (const tr of gd._fullData) {
    const k = Array.from(tr.customdata || []).indexOf(id);
    if (k >= 0) {
      return [box.left + xa._offset + xa.l2p(tr.x[k]), box.top + ya._offset + ya.l2p(tr.y[k])];
    }
  }
  return null;
}"""


def test_a_curated_graph_opens_and_an_ablation_moves_the_target_as_predicted(
    ui: UI, circuit_ctx: Context
) -> None:
    from playwright.sync_api import expect

    page = ui.page
    ui.open()
    ui.tab("circuits")
    ui.cell("circuit-curated", 0, 0).click()
    expect(page.locator("#circuit-caption")).to_contain_text("shipped precomputed")
    expect(ui.box("circuit-prompt")).to_have_value(CURATED_PROMPT)
    c = circuits.open_graph(circuit_ctx, CURATED_PROMPT, "")
    top = c.top_feature
    assert top is not None
    page.locator("#circuit-graph .js-plotly-plot .scatterlayer").first.wait_for()
    page.wait_for_timeout(500)  # the click binding is checked every 300 ms
    page.locator("#circuit-graph").scroll_into_view_if_needed()
    xy = page.evaluate(NODE_XY, top.node_id)
    assert xy is not None
    page.mouse.move(xy[0], xy[1])
    page.mouse.click(xy[0], xy[1])
    panel = page.locator("#circuit-node-panel")
    expect(panel).to_contain_text(f"L{top.layer} tc #{top.feature}")
    expect(panel).to_contain_text(f"activation {top.activation:.3g}")
    link = page.locator("#circuit-dash-link")
    expect(link).to_have_attribute(
        "href", f"?tab=dashboard&source=tc&layer={top.layer}&feature={top.feature}"
    )
    page.locator("#circuit-pin").click()
    expect(page.locator("#circuit-pins")).to_contain_text(f"Pinned: {top.name} @{top.pos}")
    page.locator("#circuit-intervene").click()  # the scale starts at 0: an ablation
    out = circuits.intervention(circuit_ctx, c, [top.node_id], 0)
    base, frozen, unfrozen = out.result.watched[0]
    outcome = page.locator("#circuit-outcome")
    expect(outcome).to_contain_text(f"{base:.4f} before, {frozen:.4f} with attention frozen")
    expect(outcome).to_contain_text(f"{unfrozen:.4f} unfrozen")
    direction = "down" if out.predicted < 0 else "up"
    expect(outcome).to_contain_text(f"goes {direction}")
    assert (frozen - base) * out.predicted > 0  # the graph's sign, measured
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
