"""The microscope in a real Chromium: what only a browser shows.

Contrast (the token colours the browser computes spread: most tokens light under the default
shading, against a dark strongest-feature view), the heatmap (its colour bar drawn after an
in-app encode and after the address changes, no badge over its layer labels), controls that
apply at once without another forward pass, example texts that encode, and a refused action that
leaves the screen as it was (a toast, no red "Error" badge, nothing wiped) in every tab.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from browser_ui import UI

from explorer.app import Context, microscope

TEXT = "the cat sat on the mat and the dog ran"
pytestmark = pytest.mark.usefixtures("browser")

# The background colour of every token, as the browser computed it: [[r, g, b], …].
TOKEN_COLOURS = """() => Array.from(document.querySelectorAll('#tokens .gse-tok')).map(
  e => getComputedStyle(e).backgroundColor.match(/[0-9.]+/g).slice(0, 3).map(Number))"""
# Gradio's red "Error" badges (a status tracker in its error state) anywhere on the page.
ERROR_BADGES = """() => Array.from(document.querySelectorAll('.error, [class*="error"]'))
  .filter(e => e.offsetParent !== null && /^\\s*Error\\s*$/.test(e.textContent)).length"""


def _encode(ui: UI, text: str = TEXT) -> None:
    from playwright.sync_api import expect

    ui.tab("microscope")
    ui.box("micro-text").fill(text)
    ui.panel().get_by_label("Hide features denser than (%)").fill("100")
    ui.page.locator("#encode").click()
    expect(ui.page.locator("#micro-status")).to_contain_text("tokens ×")


def _shares(colours: list[list[float]]) -> tuple[float, float]:
    """``(light, dark)``: the share of tokens shaded under 40% of the colour scale, and at 60% or
    more (the scale's green channel falls from 255 at 0 through 176 at 50% to 81 at 100%)."""
    from explorer.app.render import strength_colour

    light_g = int(re.findall(r"\d+", strength_colour(0.4))[1])
    dark_g = int(re.findall(r"\d+", strength_colour(0.6))[1])
    n = len(colours)
    return sum(g > light_g for _, g, _ in colours) / n, sum(g <= dark_g for _, g, _ in colours) / n


def test_the_tokens_show_contrast_and_a_feature_picked_shades_them(ui: UI, ctx: Context) -> None:
    from playwright.sync_api import expect

    page = ui.page
    ui.open()
    _encode(ui)
    want = microscope.view(ctx, TEXT, ["1", "2"], max_density_pct=100)
    first = want.shading.feature
    assert first is not None
    expect(page.locator("#shade-by input")).to_have_value(
        re.compile(f"L{first[0]} res #{first[1]}")
    )
    expect(page.locator("#tokens .gse-tok")).to_have_count(len(want.encoding.tokens))
    light, dark = _shares(page.evaluate(TOKEN_COLOURS))
    strongest = microscope.view(ctx, TEXT, ["1", "2"], max_density_pct=100, shade="strongest")
    assert light == pytest.approx(float((want.shading.rel < 40).mean()))
    ui.shot("micro-contrast-default")

    # The strongest-feature view stays as one choice: darker everywhere.
    page.locator("#shade-by input").fill("strongest")
    page.locator("#shade-by input").press("Enter")
    expect(page.locator("#shade-caption")).to_contain_text("each token's strongest feature")
    light_s, dark_s = _shares(page.evaluate(TOKEN_COLOURS))
    assert light_s == pytest.approx(float((strongest.shading.rel < 40).mean()))
    assert light > light_s and dark < dark_s

    # A row of the whole-text table shades the text by its feature, and the tab stays.
    row = 2
    layer, feature = (int(want.text_top[c].iat[row]) for c in ("layer", "feature"))
    ui.cell("text-top", row, 2).click()
    expect(page.locator("#shade-caption")).to_contain_text(f"layer {layer} · feature {feature}")
    ui.expect_tab("microscope")
    picked = microscope.view(
        ctx, TEXT, ["1", "2"], max_density_pct=100, shade=f"{layer}:{feature}"
    ).shading
    light_p, _ = _shares(page.evaluate(TOKEN_COLOURS))
    assert light_p == pytest.approx(float((picked.rel < 40).mean()))
    # A typed layer:feature shades too; its page opens from the button.
    page.locator("#shade-by input").fill(f"{layer}:{feature}")
    page.locator("#open-shade").click()
    ui.expect_tab("dashboard")
    expect(page.locator("#dash-header")).to_contain_text(f"Layer {layer} · feature {feature}")
    assert not ui.dialogs


def test_controls_apply_at_once_without_encoding_again(
    ui: UI, ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.sync_api import expect

    calls: list[str] = []
    real = microscope.encode

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(microscope, "encode", counted)
    page = ui.page
    ui.open()
    _encode(ui)
    assert len(calls) == 1
    colorbar = page.locator("#heatmap .colorbar .gtitle, #heatmap .cbtitle text")
    expect(colorbar.first).to_have_text("active features")
    ui.panel().get_by_label(microscope.METRICS["max activation"]).check()
    expect(colorbar.first).to_have_text("% of max")
    ui.panel().get_by_label("sum").check()
    expect(page.locator("#text-top")).to_contain_text("sum % of max")
    page.locator("#tokens .gse-tok").nth(3).click()
    expect(page.locator("#token-table")).to_contain_text("Features on token 3")
    assert len(calls) == 1  # none of these encoded the text again

    # An example text encodes at once (the box alone used to change).
    example = ctx.content["texts"][0] if ctx.content["texts"] else microscope.FALLBACK_TEXT
    page.get_by_role("button", name=re.compile("^" + re.escape(example[:20]))).first.click()
    expect(ui.box("micro-text")).to_have_value(example)
    expect(page.locator("#micro-status")).to_contain_text(
        f"{len(real(ctx.bundle, example).tokens)} tokens"
    )
    assert calls[-1] == example


def test_the_colour_bar_is_drawn_and_no_badge_covers_the_layers(ui: UI) -> None:
    from playwright.sync_api import expect

    page = ui.page
    ui.open()
    _encode(ui)
    ui.panel().get_by_label(microscope.METRICS["max activation"]).check()
    expect(page.locator("#heatmap .cbfill")).to_have_count(1)
    page.locator("#tokens .gse-tok").nth(2).click()  # the address changes again
    expect(page.locator("#token-table")).to_contain_text("Features on token 2")
    page.wait_for_timeout(500)
    # The colour bar's gradient is referenced by a URL: it must point into this very page (a
    # stale address draws the bar blank).
    fill, here = page.evaluate(
        """() => [getComputedStyle(document.querySelector('#heatmap .cbfill')).fill,
                  window.location.href.split('#')[0]]"""
    )
    found = re.fullmatch(r'url\("?(.*)#([^")]+)"?\)', fill)
    assert found, fill
    assert found[1] in ("", here), (fill, here)
    assert page.locator(f"#heatmap linearGradient#{found[2]}").count() == 1
    # Nothing covers the heatmap: no badge of the block (its label sat over the top layer's
    # name) overlaps a layer's name or the cells.
    covered = page.evaluate(
        """() => {
             const over = (a, b) => a.x < b.x + b.width && b.x < a.x + a.width
                                 && a.y < b.y + b.height && b.y < a.y + a.height;
             const badges = Array.from(document.querySelectorAll(
               '#heatmap [data-testid="block-label"], #heatmap label'))
               .filter(b => b.offsetParent !== null).map(b => b.getBoundingClientRect());
             const drawn = '#heatmap .ytick text, #heatmap .heatmaplayer image';
             return Array.from(document.querySelectorAll(drawn))
               .filter(t => badges.some(b => over(b, t.getBoundingClientRect())))
               .map(t => t.textContent || t.tagName);
           }"""
    )
    assert covered == []


def test_a_refused_action_keeps_the_screen_in_every_tab(ui: UI, ctx: Context) -> None:
    from playwright.sync_api import expect

    page = ui.page
    toast = page.locator('[data-testid="toast-body"]')

    def refused(message: str) -> None:
        expect(toast.filter(has_text=message).first).to_be_visible()
        page.wait_for_timeout(500)
        assert page.evaluate(ERROR_BADGES) == 0
        for close in page.locator('[data-testid="toast-close"]').all():
            close.click()

    ui.open()
    # Microscope: an empty text. The previous result stays, with no error badge.
    _encode(ui)
    tokens = page.locator("#tokens .gse-tok").all_inner_texts()
    ui.box("micro-text").fill("   ")
    page.locator("#encode").click()
    refused("the text is empty")
    assert page.locator("#tokens .gse-tok").all_inner_texts() == tokens
    expect(page.locator("#heatmap .main-svg").first).to_be_visible()
    expect(page.locator("#text-top [data-testid='cell-0-1']")).to_be_visible()
    # No layer ticked.
    for box in ui.panel().locator("#m-layers input[type=checkbox]").all():
        box.uncheck()
    refused("choose at least one layer")
    assert page.locator("#tokens .gse-tok").all_inner_texts() == tokens

    # Feature: a feature past the SAE's width.
    ui.tab("dashboard")
    page.locator("#d-feature input").fill("4000")
    page.locator("#open-feature").click()
    refused("feature must be from 0 to 47")
    # Steering: "Steer with this feature" before any feature is open.
    page.locator("#to-steer").click()
    refused("open a feature first")
    # Browse: a search far too long; the table stays.
    ui.tab("browse")
    ui.panel().get_by_label("Hide dense").uncheck()  # every feature of the tiny store is dense
    page.locator("#browse-btn").click()
    # The search's table, not the one the page opened with (the tiny store's transcoder
    # features are not all dense, so that one has rows too).
    live = int((~ctx.browse_summary()["dead"]).sum())
    expect(page.locator("#browse-table")).to_contain_text(f"of {live:,} (page 1 of 1")
    first = ui.cell("browse-table", 0, 1).inner_text()
    ui.box("b-query").fill("x" * 201)
    page.locator("#browse-btn").click()
    refused("the search text is too long")
    expect(ui.cell("browse-table", 0, 1)).to_have_text(first)
    # Label: the retract box opens without an error, and a bad id is refused.
    ui.tab("label")
    expect(page.locator("#retract-id textarea, #retract-id input").first).to_have_value("")
    assert (
        page.locator("#retract-id .validation-error, #retract-id [aria-invalid=true]").count() == 0
    )
    ui.box("retract-id").fill("abc")
    page.locator("#retract-label").click()
    refused("label id must be a whole number")
    assert not ui.dialogs
