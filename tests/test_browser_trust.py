"""The app tried as an attacker and as a careful labeller would, in a real Chromium.

Hostile values go into every surface that echoes input — the link's query, every text box, a label
file's header and cells, the error paths — and the page must not gain a single element from them
(not only: no script runs). Labels must land on the feature on screen, whatever the inputs say. A
link must reproduce the view. Uses the browser fixtures of ``test_browser.py``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from browser_ui import UI, title
from helpers import live_feature

from explorer.app import Context, dashboard
from explorer.explanations import Explanations, NewExplanation

# Every hostile value carries a marker attribute or host: any element built from one is found.
EVIL_LINK = '<a data-evil="1" href="https://evil.example/">LOG IN</a>'
EVIL_BIG = '<b data-evil="1" style="font-size:90px">HUGE</b>'
EVIL_FORM = (
    '<form data-evil="1" action="https://evil.example/"><input data-evil="1" name="pw"></form>'
)
EVIL_IMG = '<img data-evil="1" src="x" onerror="window.__pwned=1">'
EVIL_MD = "[click me](https://evil.example/) **bold**"
HOSTILE = [EVIL_LINK, EVIL_BIG, EVIL_FORM, EVIL_IMG]
# The browser first: without one the tests skip before the app is built.
pytestmark = pytest.mark.usefixtures("browser")
COUNT_EVIL = """() => document.querySelectorAll(
  '[data-evil], a[href*="evil.example"], form[action*="evil.example"]').length"""


def _no_evil(ui: UI, where: str) -> None:
    ui.page.wait_for_timeout(300)  # let a toast or a late update render
    found = ui.page.evaluate(COUNT_EVIL)
    if found:
        ui.shot(f"evil-{where}")
    assert found == 0, f"{where}: {found} element(s) built from hostile input"
    assert ui.page.evaluate("window.__pwned") is None, where


def _choose(ui: UI, elem_id: str, option: str) -> None:
    """Pick ``option`` in the Gradio dropdown ``elem_id``."""
    ui.page.locator(f"#{elem_id} input").click()
    ui.page.get_by_role("option", name=option, exact=True).click()


def test_hostile_values_never_become_markup(ui: UI, ctx: Context, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page = ui.page
    # 1. The link: hostile layer, feature, text and tab values (each named in a warning toast).
    for value in [*HOSTILE, EVIL_MD]:
        ui.open(f"?layer={quote(value)}&feature=1&tab={quote(value)}&text={quote(value)}")
        expect(page.get_by_text("this link has problems").first).to_be_visible()
        _no_evil(ui, "link")
    ui.shot("11-hostile-link-warning")

    # 2. The dashboard's inputs and its error path (a feature that is not a number).
    feature = live_feature(ctx, 2)
    ui.open(f"?layer=2&feature={feature}")
    for value in [*HOSTILE, EVIL_MD]:
        ui.box("quick-label").fill(value)
        page.locator("#quick-save").click()
        expect(page.locator("#label-status")).to_contain_text("Saved label #")
        _no_evil(ui, "saved label status and header")
    expect(page.locator("#dash-header")).to_contain_text(EVIL_MD)
    page.locator("#dash-header").screenshot(path=ui.shots / "12-hostile-header.png")
    page.locator("#d-feature input").fill("")
    page.locator("#test-feature").click()  # the test-text path with a missing feature
    _no_evil(ui, "dashboard error")

    # 3. The microscope and the test text: hostile text becomes tokens, shown as text.
    ui.tab("microscope")
    ui.box("micro-text").fill(" ".join(HOSTILE))
    page.locator("#encode").click()
    expect(page.locator("#micro-status")).to_contain_text("tokens")
    _no_evil(ui, "microscope")

    # 4. Steering: a hostile prompt, and a hostile strength (an error path).
    ui.tab("steer")
    ui.box("steer-prompt").fill(EVIL_LINK)
    page.get_by_label("Strength (blank: the recommended").fill(EVIL_IMG)
    page.locator("#add-steer").click()
    _no_evil(ui, "steering strength error")

    # 5. Browse: a hostile query; hostile explanations (an imported file's), found by a search.
    ui.tab("browse")
    ui.box("b-query").fill(EVIL_FORM)
    ui.box("b-query").press("Enter")
    _no_evil(ui, "browse")
    ctx.explanations = Explanations(tmp_path / "explanations.sqlite")
    evil_text = f"zebra crossings {EVIL_LINK} {EVIL_IMG}"
    ctx.explanations.add(
        [NewExplanation(layer=2, feature=feature, text=evil_text, source="neuronpedia",
                        method="np", model="x")]
    )  # fmt: skip
    ui.box("b-query").fill("zebra")
    ui.box("b-query").press("Enter")  # the tiny store's live features are all dense: hidden
    expect(page.locator("#browse-table")).to_contain_text(
        "Features: none shown; 1 match among the hidden dense or dead (untick Hide dense"
    )
    page.get_by_role("checkbox", name="Hide dense").uncheck()
    page.locator("#browse-btn").click()
    # cut to 80 characters in the table, mid-tag: still text
    expect(page.locator("#browse-table")).to_contain_text(evil_text[:77] + " …")
    _no_evil(ui, "browse explanations")
    ui.shot("14-hostile-explanation")

    # 6. The Label tab: hostile notes, labeller; a label file whose header and cells hold markup.
    ui.tab("label")
    ui.box("l-label").fill(EVIL_BIG)
    page.get_by_label("Notes").fill(EVIL_LINK)
    page.get_by_label("Labeller").fill(EVIL_IMG)
    page.locator("#l-save").click()
    expect(page.locator("#l-status")).to_contain_text("Saved label #")
    _no_evil(ui, "label tab")
    bad = tmp_path / "hostile.csv"
    with bad.open("w", encoding="utf-8", newline="") as f:  # valid CSV, hostile cells
        rows: list[list[Any]] = [["layer", "feature", "label", EVIL_LINK], [EVIL_IMG, 1, "x", "y"]]
        csv.writer(f).writerows([*rows, [2, feature, EVIL_FORM, "z"]])
    page.locator("input[type=file]").last.set_input_files(str(bad))
    page.get_by_role("button", name="Import", exact=True).click()
    expect(page.locator("#imp-status")).to_contain_text("Imported")
    _no_evil(ui, "import report")
    ui.shot("13-hostile-import")
    assert not ui.dialogs


def test_a_label_lands_on_the_feature_shown(ui: UI, ctx: Context) -> None:
    """Open feature A, type B in the Feature box without opening it, save: A gets the label, and
    the header still shows A. The same in the Label tab after changing the layer."""
    from playwright.sync_api import expect

    page = ui.page
    a = live_feature(ctx, 2)
    b = next(f for f in range(48) if f != a)
    ui.open(f"?layer=2&feature={a}")
    expect(page.locator("#dash-header")).to_contain_text(f"Layer 2 · feature {a}")
    page.locator("#d-feature input").fill(str(b))
    ui.box("quick-label").fill("meant for the feature on screen")
    page.locator("#quick-save").click()
    expect(page.locator("#label-status")).to_contain_text(f"L2 res #{a}")
    expect(page.locator("#dash-header")).to_contain_text(f"Layer 2 · feature {a}")
    expect(page.locator("#dash-header")).to_contain_text("meant for the feature on screen")
    assert ctx.labels.current(2, b) is None
    assert ctx.labels.current(2, a).label == "meant for the feature on screen"  # type: ignore[union-attr]

    ui.tab("label")
    expect(ui.panel().locator(".gse-title")).to_contain_text("Layer")
    shown = title(ui)
    other = next(n for n in ctx.layers if n != shown[0])
    _choose(ui, "l-layer", str(other))  # changed, not opened: the shown feature is kept
    page.locator("#l-label").get_by_role("textbox").fill("from the queue, on screen")
    page.locator("#l-save").click()
    expect(page.locator("#l-status")).to_contain_text(f"L{shown[0]} res #{shown[1]}")
    saved = ctx.labels.current(*shown)
    assert saved is not None and saved.label == "from the queue, on screen"
    expect(page.locator("#l-saved")).to_contain_text("from the queue, on screen")
    ui.shot("14-label-lands")


def test_links_reproduce_the_view(ui: UI, ctx: Context) -> None:
    from playwright.sync_api import expect

    page = ui.page
    feature = live_feature(ctx, 2)
    # Opening a feature writes its link into the address bar; the link opens it again.
    ui.open()
    ui.tab("dashboard")
    page.locator("#d-feature input").fill(str(feature))
    _choose(ui, "d-layer", "2")
    page.locator("#open-feature").click()
    expect(page.locator("#dash-header")).to_contain_text(f"Layer 2 · feature {feature}")
    page.wait_for_function(f"() => window.location.search.includes('feature={feature}')")
    link = page.url
    ui.page.goto("about:blank")
    page.goto(link)
    ui.expect_tab("dashboard")
    expect(page.locator("#dash-header")).to_contain_text(f"Layer 2 · feature {feature}")
    want = dashboard.record(ctx, 2, feature)
    expect(page.locator("#top-examples .gse-ex")).to_have_count(len(want.top_examples))

    # A microscope text: encoded again from its link.
    ui.tab("microscope")
    ui.box("micro-text").fill("the big dog ran to the house")
    page.locator("#encode").click()
    page.wait_for_function("() => window.location.search.includes('text=')")
    link = page.url
    page.goto("about:blank")
    page.goto(link)
    ui.expect_tab("microscope")
    expect(ui.box("micro-text")).to_have_value("the big dog ran to the house")
    expect(page.locator("#micro-status")).to_contain_text("tokens")

    # Strict parsing: feature=1e3 is named in a warning and opens nothing.
    ui.open("?layer=2&feature=1e3&feature=4")
    expect(page.get_by_text("this link has problems").first).to_be_visible()
    expect(page.get_by_text("more than once").first).to_be_visible()
    ui.shot("15-link-warning")
