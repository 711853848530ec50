"""The Steering tab in a real (headless Debian) Chromium: a refused request keeps the screen, and
Stop ends a generation and leaves the page usable.

The browser, the app and the page come from the fixtures of ``browser_ui.py`` (skipped without
``/usr/bin/chromium``, failed instead where ``GSE_REQUIRE_BROWSER=1``).
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from browser_ui import UI

from explorer.app import Context, steering

# The browser first: without one the test skips before the app is built.
pytestmark = pytest.mark.usefixtures("browser")

PROMPT = "the cat sat on the"
HOSTILE = '<img src=x onerror="window.__pwned=1">'


def _value(ui: UI, elem_id: str) -> str:
    return ui.box(elem_id).input_value()


def _edit_cell(ui: UI, row: int, col: int, text: str) -> None:
    """Type ``text`` into a cell of the steering table, as a user does (double-click, type)."""
    from playwright.sync_api import expect

    cell = ui.cell("steer-table", row, col)
    cell.dblclick()
    # Type only once the cell's editor is open: keys sent before it has focus went to the cell,
    # and "Control+A" then selected nothing, so the text was appended to the old one (CI, stop 18).
    editor = cell.locator("textarea")
    expect(editor).to_be_focused()
    editor.fill(text)
    editor.press("Enter")
    # The selected cell also shows its menu button, so not to_have_text; and not to_contain_text
    # either: "1" is in the old "12abc…", which let a click go out before the edit had landed.
    expect(cell).to_have_text(re.compile(r"^\s*" + re.escape(text) + r"(?![\w<])"))


def test_a_refused_request_keeps_the_screen_and_stop_ends_a_generation(
    ui: UI, ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.sync_api import expect

    real = steering.generate_pair

    def slow_pair(*args: Any) -> Any:  # prompts starting "slowly": 0.25 s a token
        for step in real(*args):
            if args[1].startswith("slowly"):
                time.sleep(0.25)
            yield step

    monkeypatch.setattr(steering, "generate_pair", slow_pair)
    page = ui.page
    status = page.locator("#gen-status")
    ui.open()
    ui.tab("steer")
    page.locator("#add-steer").click()  # layer 2, feature 0, its default strength
    expect(ui.cell("steer-table", 0, 1)).to_have_text("0")
    ui.box("steer-prompt").fill(PROMPT)
    page.locator("#generate").click()
    expect(status).to_contain_text("stopped at the token limit")
    want = list(steering.steer(ctx, PROMPT, [[2, 0]], 0.7, 40, 0, 0.0))[-1]
    expect(ui.box("default-out")).to_have_value(want[0])
    expect(ui.box("steered-out")).to_have_value(want[1])

    # A bad strength in the Add form: a warning, shown as text; the table stays as it was.
    ui.panel().get_by_label(
        "Strength (blank: the recommended strength, else its max activation)"
    ).fill(HOSTILE)
    page.locator("#add-steer").click()
    toast = page.locator('[data-testid="toast-body"]')
    expect(toast).to_contain_text("the new feature: strength must be a number from -10000")
    expect(toast).to_contain_text(HOSTILE)
    expect(toast.locator("img")).to_have_count(0)
    expect(page.locator("#steer-table [role=grid]")).to_have_attribute("aria-rowcount", "2")
    page.locator('[data-testid="toast-close"]').first.click()

    # A bad cell typed into the table: the status line says which, escaped; the table keeps what
    # was typed and the completions on screen stay.
    _edit_cell(ui, 0, 1, "12abc" + HOSTILE)
    page.locator("#generate").click()
    expect(status).to_contain_text("Not generated: row 1: feature must be a whole number such as")
    expect(status).to_contain_text("not '12abc<img src=x onerror=")  # shown as text, cut
    expect(status.locator("img")).to_have_count(0)
    expect(ui.cell("steer-table", 0, 1)).to_contain_text("12abc" + HOSTILE)
    assert (_value(ui, "default-out"), _value(ui, "steered-out")) == want[:2]
    ui.shot("steer-refused")

    # A slow generation, stopped: its partial completions stay, and nothing more arrives.
    _edit_cell(ui, 0, 1, "1")
    ui.box("steer-prompt").fill("slowly " + PROMPT)
    page.locator("#generate").click()
    expect(status).to_contain_text("tokens in")
    page.locator("#stop-generate").click()
    expect(status).to_contain_text("Stopped: the completions are what was generated before Stop")
    partial = _value(ui, "default-out")
    assert partial and len(partial.split()) < 40
    time.sleep(1.0)
    assert _value(ui, "default-out") == partial
    expect(status).to_contain_text("Stopped")
    ui.shot("steer-stopped")

    # The page is usable again: the next generation runs to its end.
    ui.box("steer-prompt").fill(PROMPT)
    page.locator("#generate").click()
    expect(status).to_contain_text("stopped at the token limit")
    again = list(steering.steer(ctx, PROMPT, [[2, 1]], 0.7, 40, 0, 0.0))[-1]
    expect(ui.box("default-out")).to_have_value(again[0])
    assert page.evaluate("window.__pwned") is None
    assert not ui.dialogs
