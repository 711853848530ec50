"""The running app driven like a user, in a real (headless Debian) Chromium through Playwright.

``test_app.py`` drives the same app over HTTP with ``gradio_client``; this file proves what only a
browser can: that the clicks are wired (a table row opens its feature, a button switches tab), that
streamed output reaches the page, and that hostile labels and tokens are shown as text by the
browser's own HTML parser, not run. Each tab is screenshotted (full page, 1280x900) into
``$GSE_SCREENSHOTS`` if set, else the test's ``tmp_path``.

Without ``/usr/bin/chromium`` (or when it cannot start) the tests skip, unless
``GSE_REQUIRE_BROWSER=1`` (CI sets it), where they fail: CI can never silently skip them.
"""

from __future__ import annotations

import pytest
from browser_ui import UI, title
from helpers import live_feature

from explorer.app import Context, dashboard, microscope, render, steering

TEXT = "the cat sat on the mat and the dog ran"
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1;alert(1)</script>'

# The browser first: without one the tests skip before the app is built.
pytestmark = pytest.mark.usefixtures("browser")


def test_a_user_goes_from_text_to_feature_label_steering_and_browse(ui: UI, ctx: Context) -> None:
    from playwright.sync_api import expect

    page = ui.page
    ui.open()
    ui.expect_tab("start")
    ui.shot("01-start")

    # Microscope: encode a text with no density filter (every feature in the tiny store is dense).
    ui.tab("microscope")
    ui.box("micro-text").fill(TEXT)
    ui.panel().get_by_label("Hide features denser than (%)").fill("100")
    page.locator("#encode").click()
    want = microscope.view(ctx, TEXT, ["1", "2"], max_density_pct=100)
    expect(page.locator("#micro-status")).to_contain_text(f"{len(want.highlighted)} tokens")
    expect(page.locator("#tokens .gse-tok")).to_have_text([t for t, _ in want.highlighted])
    # Clicking a token lists that token's features.
    page.locator("#tokens .gse-tok").nth(2).click()
    expect(page.locator("#token-pick").get_by_role("combobox")).to_have_value("2: sat")
    # The clicked token is outlined (and only it), and the table says which token it lists.
    expect(page.locator("#tokens [aria-current=true]")).to_have_text("sat")
    expect(page.locator("#tokens [aria-current=true]")).to_have_count(1)
    expect(page.locator("#token-table")).to_contain_text("Features on token 2: “sat”")
    rows = microscope.token_features(ctx, want.encoding, 2, 100)
    grid = page.locator("#token-table [role=grid]")
    expect(grid).to_have_attribute("aria-rowcount", str(len(rows) + 1))  # + the header row
    layer, feature = int(rows["layer"].iat[0]), int(rows["feature"].iat[0])
    expect(ui.cell("token-table", 0, 1)).to_have_text(str(feature))
    ui.shot("02-microscope")

    # A row shades the text by its feature; the button opens the feature's dashboard.
    ui.cell("token-table", 0, 1).click()
    expect(page.locator("#shade-caption")).to_contain_text(f"layer {layer} · feature {feature}")
    page.locator("#open-shade").click()
    ui.expect_tab("dashboard")
    expect(page.locator("#dash-header")).to_contain_text(f"Layer {layer} · feature {feature}")
    rec = dashboard.record(ctx, layer, feature)
    expect(page.locator("#top-examples .gse-ex")).to_have_count(len(rec.top_examples))

    # A quick label is stored, and the header shows it once the feature is opened again.
    label = "browser test: a label typed by a user"
    ui.box("quick-label").fill(label)
    page.locator("#quick-save").click()
    expect(ui.panel().get_by_text("Saved label #")).to_be_visible()
    stored = ctx.labels.current(layer, feature)
    assert stored is not None and stored.label == label
    page.locator("#open-feature").click()
    expect(page.locator("#dash-header")).to_contain_text(label)
    ui.shot("03-dashboard")

    # Steer with it: the steering tab opens with the feature at its default strength.
    page.locator("#to-steer").click()
    ui.expect_tab("steer")
    expect(ui.cell("steer-table", 0, 0)).to_have_text(str(layer))
    expect(ui.cell("steer-table", 0, 1)).to_have_text(str(feature))
    prompt = "the cat sat on the"
    ui.box("steer-prompt").fill(prompt)
    page.locator("#generate").click()
    expect(page.locator("#gen-status")).to_contain_text("stopped at the")
    # The page shows what the handler makes of the same request (the app's default settings).
    steers = steering.add_steer(ctx, [], layer, feature, None, "add")
    default, steered, _ = list(steering.steer(ctx, prompt, steers, 0.7, 40, 0, 0.0))[-1]
    assert default and steered
    expect(ui.box("default-out")).to_have_value(default)
    expect(ui.box("steered-out")).to_have_value(steered)
    ui.shot("04-steer")
    # The table says how likely each feature is to steer (an estimate from the store).
    estimate = render.steer_text(ctx.steer_estimate(layer, feature))
    expect(ui.cell("steer-table", 0, 5)).to_have_text(estimate)
    expect(page.locator("#steer-table")).to_contain_text("steering estimate")

    # Back on the dashboard (which shows the estimate too): "Add it to the steering table" keeps
    # the row and adds the feature again; "Steer with this feature" leaves it alone in the table.
    ui.tab("dashboard")
    expect(page.locator("#dash-header .gse-steer")).to_have_text(estimate)
    expect(page.locator("#dash-header .gse-legend")).to_contain_text("pushes toward")
    page.locator("#to-steer-add").click()
    ui.expect_tab("steer")
    grid = page.locator("#steer-table [role=grid]")
    expect(grid).to_have_attribute("aria-rowcount", "3")  # the header and two rows
    ui.tab("dashboard")
    page.locator("#to-steer").click()
    ui.expect_tab("steer")
    expect(grid).to_have_attribute("aria-rowcount", "2")
    expect(ui.cell("steer-table", 0, 1)).to_have_text(str(feature))

    # Browse finds the feature by its new label; its row opens the dashboard again.
    ui.tab("browse")
    ui.panel().get_by_label("Hide dense").uncheck()  # every feature of the tiny store is dense
    ui.box("b-query").fill("typed by a user")
    page.locator("#browse-btn").click()
    expect(page.locator("#browse-table [role=grid]")).to_have_attribute("aria-rowcount", "2")
    expect(ui.cell("browse-table", 0, 1)).to_have_text(str(feature))
    expect(ui.cell("browse-table", 0, 2)).to_have_text("res")
    expect(ui.cell("browse-table", 0, 3)).to_have_text(label)
    expect(ui.panel().get_by_text("Features 1–1 of 1 (page 1 of 1")).to_be_visible()
    ui.shot("05-browse")
    ui.cell("browse-table", 0, 1).click()
    ui.expect_tab("dashboard")
    expect(page.locator("#dash-header")).to_contain_text(f"Layer {layer} · feature {feature}")
    # Browse explains its automatic descriptions, and opens a random feature of its layer.
    ui.tab("browse")
    expect(page.locator("#browse-legend")).to_contain_text("pushes toward")
    other = 1 if layer == 2 else 2
    page.locator("#b-layer input").click()
    page.get_by_role("option", name=str(other), exact=True).click()
    page.locator("#browse-random").click()
    ui.expect_tab("dashboard")
    expect(page.locator("#dash-header")).to_contain_text(f"Layer {other} · feature ")

    # The labelling queue: the tab opens on an unlabelled feature, which is labelled and stored.
    # (Next unlabelled would replace it asynchronously; the handler test covers that button.)
    ui.tab("label")
    expect(ui.panel().locator(".gse-title")).to_contain_text("Layer")
    q_layer, q_feature = title(ui)
    assert ctx.labels.current(q_layer, q_feature) is None
    ui.box("l-label").fill("browser test: from the queue")
    page.locator("#l-save").click()
    expect(ui.panel().get_by_text("Saved label #")).to_be_visible()
    queued = ctx.labels.current(q_layer, q_feature)
    assert queued is not None and queued.label == "browser test: from the queue"
    ui.shot("06-label")
    assert not ui.dialogs


def test_a_feature_link_opens_its_dashboard(ui: UI, ctx: Context) -> None:
    from playwright.sync_api import expect

    feature = live_feature(ctx, 2)
    ui.open(f"?layer=2&feature={feature}")
    ui.expect_tab("dashboard")
    expect(ui.page.locator("#dash-header")).to_contain_text(f"Layer 2 · feature {feature}")
    rec = dashboard.record(ctx, 2, feature)
    expect(ui.page.locator("#top-examples .gse-ex")).to_have_count(len(rec.top_examples))
    ui.shot("07-feature-link")


def test_hostile_text_and_labels_are_shown_as_text(ui: UI, ctx: Context) -> None:
    """Markup in a text or a label is shown, never run: no script, no dialog, no ``<img>``."""
    from playwright.sync_api import expect

    page = ui.page
    text = f"{TEXT} {HOSTILE}"
    # A layer-2 feature that fires on the text, other than the one test_app labels.
    want = microscope.view(ctx, text, ["1", "2"], max_density_pct=100)
    top = want.text_top
    row = next(
        i
        for i in range(len(top))
        if top["layer"].iat[i] == 2 and top["feature"].iat[i] != live_feature(ctx, 2)
    )
    feature = int(top["feature"].iat[row])

    # The label, saved from the dashboard, then shown where labels are HTML: the header.
    ui.open(f"?layer=2&feature={feature}")
    header = page.locator("#dash-header")
    expect(header).to_contain_text(f"Layer 2 · feature {feature}")
    ui.box("quick-label").fill(HOSTILE)
    page.locator("#quick-save").click()
    expect(ui.panel().get_by_text("Saved label #")).to_be_visible()
    stored = ctx.labels.current(2, feature)
    assert stored is not None and stored.label == HOSTILE
    page.locator("#open-feature").click()
    expect(header).to_contain_text(HOSTILE)
    assert "<script>" in header.inner_text()
    expect(header.locator("img, script")).to_have_count(0)
    ui.shot("08-hostile-dashboard")

    # The microscope: the text's tokens (the tiny tokenizer hides the markup as <unk>, a special
    # token) and the label again, in the whole-text table.
    ui.tab("microscope")
    ui.box("micro-text").fill(text)
    ui.panel().get_by_label("Hide features denser than (%)").fill("100")
    page.locator("#encode").click()
    expect(page.locator("#tokens .gse-tok")).to_have_text([t for t, _ in want.highlighted])
    expect(ui.cell("text-top", row, 1)).to_have_text(str(feature))
    expect(ui.cell("text-top", row, 2)).to_have_text(HOSTILE)
    expect(page.locator("#tokens img, #text-top img")).to_have_count(0)
    ui.shot("09-hostile-microscope")

    # Browse: the label is a table cell, as text.
    ui.tab("browse")
    ui.panel().get_by_label("Hide dense").uncheck()
    ui.box("b-query").fill("window.__pwned")
    page.locator("#browse-btn").click()
    expect(ui.cell("browse-table", 0, 3)).to_contain_text("<script>")
    n_rows = int(page.locator("#browse-table [role=grid]").get_attribute("aria-rowcount") or 0)
    shown = {ui.cell("browse-table", r, 1).inner_text(): r for r in range(n_rows - 1)}
    assert str(feature) in shown
    expect(ui.cell("browse-table", shown[str(feature)], 3)).to_have_text(HOSTILE)
    expect(page.locator("#browse-table img, #browse-table script")).to_have_count(0)
    ui.shot("10-hostile-browse")

    assert page.evaluate("window.__pwned") is None
    assert not ui.dialogs
