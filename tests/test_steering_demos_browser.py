"""The curated steering demos in a real (headless Debian) Chromium: shown on the Start screen
and the Steering tab, and one click fills the Steering tab and generates.

The browser, the app and the page come from the fixtures of ``browser_ui.py`` (skipped without
``/usr/bin/chromium``, failed instead where ``GSE_REQUIRE_BROWSER=1``).
"""

from __future__ import annotations

from typing import Any

import pytest
from browser_ui import UI

from explorer.app import Context
from explorer.steer import GenerationConfig, Steer, generate_pair

pytestmark = pytest.mark.usefixtures("browser")

DEMOS: list[dict[str, Any]] = [
    {"label": "first demo", "prompt": "the cat sat", "layer": 2, "feature": 3, "strength": 4.5,
     "method": "add", "seed": 0, "temperature": 0.0, "max_new_tokens": 6},
    {"label": "second demo", "prompt": "a dog ran to", "layer": 1, "feature": 5, "strength": 2.0,
     "method": "clamp", "seed": 7, "temperature": 0.0, "max_new_tokens": 5},
]  # fmt: skip


@pytest.fixture
def ctx(ctx: Context) -> Context:
    """The test app's context with two steering demos (the tiny preset has none of its own)."""
    ctx.content = {"texts": [], "features": [], "steering": DEMOS}
    return ctx


@pytest.mark.parametrize(("table", "row"), [("start-demos", 1), ("steer-demos", 0)])
def test_a_demo_click_fills_the_steering_tab_and_generates(
    ui: UI, ctx: Context, table: str, row: int
) -> None:
    from playwright.sync_api import expect

    demo = DEMOS[row]
    ui.open()
    if table == "steer-demos":
        ui.tab("steer")
    for r, d in enumerate(DEMOS):
        expect(ui.cell(table, r, 0)).to_have_text(d["label"])
        expect(ui.cell(table, r, 2)).to_have_text(f"{d['layer']}:{d['feature']}")
    ui.cell(table, row, 1).click()
    ui.expect_tab("steer")
    expect(ui.box("steer-prompt")).to_have_value(demo["prompt"])
    expect(ui.cell("steer-table", 0, 1)).to_have_text(str(demo["feature"]))
    expect(ui.cell("steer-table", 0, 3)).to_have_text(demo["method"])
    cfg = GenerationConfig(
        max_new_tokens=demo["max_new_tokens"], temperature=0.0, seed=demo["seed"]
    )
    steer = Steer(demo["layer"], demo["feature"], demo["strength"], demo["method"])
    *_, want = generate_pair(ctx.bundle, demo["prompt"], cfg, [steer])
    expect(ui.page.locator("#gen-status")).to_contain_text("stopped at the")
    expect(ui.box("default-out")).to_have_value(want.texts[0])
    expect(ui.box("steered-out")).to_have_value(want.texts[1])
