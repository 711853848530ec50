"""A transcoder feature through the running app, in Chromium (issue 21 §3): its link opens its
dashboard named ``L… tc #…``, a label saved there lands on the transcoder feature only, and the
microscope shows the transcoder layers. Skips without a browser unless ``GSE_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import pytest
from browser_ui import UI

from explorer.app import Context

TEXT = "the cat sat on the mat"

pytestmark = pytest.mark.usefixtures("browser")


def test_a_transcoder_feature_through_the_app(ui: UI, ctx: Context) -> None:
    from playwright.sync_api import expect

    page = ui.page
    df = ctx.summary_layer(0, "transcoder")
    feature = int(df[~df["dead"]].sort_values("n_fires")["feature"].iat[-1])
    ui.open(f"?tab=dashboard&source=tc&layer=0&feature={feature}")
    ui.expect_tab("dashboard")
    header = page.locator("#dash-header")
    expect(header).to_contain_text(f"L0 tc #{feature}")
    expect(header).to_contain_text("transcoder: reads the MLP's input")
    expect(page.locator("#d-source input[value=tc]")).to_be_checked()
    ui.box("quick-label").fill("a transcoder's label")
    page.locator("#quick-save").click()
    expect(page.locator("#label-status")).to_contain_text(f"for L0 tc #{feature}")
    expect(header).to_contain_text("a transcoder's label")
    ui.shot("tc-dashboard")
    assert ctx.labels_for("transcoder").current(0, feature).label == "a transcoder's label"  # type: ignore[union-attr]
    assert ctx.labels.current(0, feature) is None  # res has no layer 0, nor this label
    assert "source=tc" in page.url and f"feature={feature}" in page.url

    # The microscope on the transcoders: every transcoder layer in the heatmap.
    ui.open(f"?tab=microscope&text={TEXT.replace(' ', '+')}&source=tc&density=100")
    ui.expect_tab("microscope")
    expect(page.locator("#micro-status")).to_contain_text("4 transcoder (tc) layers")
    for n in range(4):
        expect(page.locator("#heatmap")).to_contain_text(f"tc layer {n}")
    expect(page.locator("#shade-caption")).to_contain_text(" tc #")
    ui.shot("tc-microscope")
