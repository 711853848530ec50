"""Browser fixtures for the UI tests: Debian's Chromium through Playwright, one page per test on
the app that the ``served`` fixture starts, with the dialogs it raised and its screenshots.

Without ``/usr/bin/chromium`` (or when it cannot start) the tests skip, unless
``GSE_REQUIRE_BROWSER=1`` (CI sets it), where they fail: CI can never silently skip them.
Registered for every test module by ``conftest.py``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page, ViewportSize

CHROMIUM = "/usr/bin/chromium"
VIEWPORT: ViewportSize = {"width": 1280, "height": 900}
WAIT_MS = 30_000  # Gradio answers asynchronously; a loaded 2-core CI machine is slow


def _unavailable(reason: str) -> NoReturn:
    """Skip for lack of a browser, or fail where CI said one must be there."""
    if os.environ.get("GSE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"GSE_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import Error, expect, sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as pw:
        try:
            # No sandbox: tests run as root in CI containers, where Chromium refuses to start
            # with one; the page is our own app on 127.0.0.1.
            found = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
            )
        except Error as e:
            _unavailable(f"Playwright cannot launch {CHROMIUM}: {e.message.splitlines()[0]}")
        yield found
        found.close()


@dataclass
class UI:
    """One browser page on the app, the dialogs it raised and where its screenshots go."""

    page: Page
    url: str
    shots: Path
    dialogs: list[str] = field(default_factory=list)

    def open(self, query: str = "") -> None:
        self.page.goto(self.url + query)
        self.page.locator('button[role="tab"]').first.wait_for()

    def tab(self, tab_id: str) -> None:
        self.page.locator(f'button[role="tab"][data-tab-id="{tab_id}"]').click()
        self.expect_tab(tab_id)

    def expect_tab(self, tab_id: str) -> None:
        from playwright.sync_api import expect

        tab = self.page.locator(f'button[role="tab"][data-tab-id="{tab_id}"]')
        expect(tab).to_have_attribute("aria-selected", "true")

    def panel(self) -> Locator:
        """The tab panel on screen (Gradio keeps visited tabs in the page, hidden)."""
        return self.page.locator('[role="tabpanel"]:visible')

    def box(self, elem_id: str) -> Locator:
        """The text field of the Textbox ``elem_id`` (an input or a textarea)."""
        return self.page.locator(f"#{elem_id}").get_by_role("textbox")

    def cell(self, elem_id: str, row: int, col: int) -> Locator:
        return self.page.locator(f'#{elem_id} [data-testid="cell-{row}-{col}"]')

    def shot(self, name: str) -> None:
        self.page.screenshot(path=self.shots / f"{name}.png", full_page=True)


@pytest.fixture
def ui(browser: Browser, served: str, tmp_path: Path) -> Iterator[UI]:
    shots = Path(os.environ.get("GSE_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    found = UI(page=page, url=served, shots=shots)

    def on_dialog(dialog: Any) -> None:
        found.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    yield found
    context.close()


def title(ui: UI) -> tuple[int, int]:
    """``(layer, feature)`` from the header on screen (``L2 res #5 Layer 2 · feature 5 · …``)."""
    text = ui.panel().locator(".gse-title").inner_text()
    found = re.search(r"Layer (\d+) · feature (\d+)", text.strip())
    assert found, text
    return int(found[1]), int(found[2])


# Where a circuit node is drawn on the page: the plot's own axes map its (x, y) to pixels.
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


def ablate_top_node(ui: UI, ctx: Any, row: int, prompt: str, caption: str) -> tuple[Any, Any]:
    """On the Circuits tab: open curated graph ``row`` (its caption contains ``caption``), click
    its top feature node on the plot (its panel names it, with its activation and a dashboard
    link), pin it and ablate it (the scale starts at 0); the outcome shows the target's
    probabilities that :func:`explorer.app.circuits.intervention` computes, and the frozen change
    has the sign the graph predicts. Returns ``(the graph's view, its top node)``."""
    from playwright.sync_api import expect

    from explorer.app import circuits

    page = ui.page
    ui.open()
    ui.tab("circuits")
    ui.cell("circuit-curated", row, 0).click()
    expect(page.locator("#circuit-caption")).to_contain_text(caption)
    expect(ui.box("circuit-prompt")).to_have_value(prompt)
    c = circuits.open_graph(ctx, prompt, "")
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
    page.locator("#circuit-intervene").click()
    out = circuits.intervention(ctx, c, [top.node_id], 0)
    base, frozen, unfrozen = out.result.watched[0]
    outcome = page.locator("#circuit-outcome")
    expect(outcome).to_contain_text(f"{base:.4f} before, {frozen:.4f} with attention frozen")
    expect(outcome).to_contain_text(f"{unfrozen:.4f} unfrozen")
    direction = "down" if out.predicted < 0 else "up"
    expect(outcome).to_contain_text(f"goes {direction}")
    assert (frozen - base) * out.predicted > 0  # the graph's sign, measured
    return c, top
