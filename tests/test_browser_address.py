"""The address bar follows the view, in a real Chromium: it changes with the tab, the
microscope's token and feature, a search and its page, the steering set-up before Generate and
the label form's feature; "Copy link" copies what is on screen; and opening each address again
rebuilds its view. Old links keep working."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from browser_ui import UI
from helpers import live_feature

from explorer.app import Context, browse, microscope

TEXT = "the cat sat on the mat and the dog ran"
pytestmark = pytest.mark.usefixtures("browser")


def query(ui: UI) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(ui.page.url).query).items()}


def wait_query(ui: UI, **want: str | None) -> dict[str, str]:
    """Wait until the address holds every ``want`` (key: value; ``None``: the key is absent)."""
    checks = " && ".join(
        f"q.get({k!r}) === null" if v is None else f"q.get({k!r}) === {v!r}"
        for k, v in want.items()
    )
    ui.page.wait_for_function(
        f"() => {{ const q = new URLSearchParams(window.location.search); return {checks}; }}"
    )
    return query(ui)


def reopen(ui: UI, url: str) -> None:
    ui.page.goto("about:blank")
    ui.page.goto(url)
    ui.page.locator('button[role="tab"]').first.wait_for()


def test_the_address_follows_every_view_and_reopens_it(
    ui: UI, ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.sync_api import expect

    monkeypatch.setattr(browse, "BROWSE_ROWS", 20)  # several pages of the tiny store
    page = ui.page
    ui.page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    ui.open()

    # Microscope: the text, then the token and the shading feature, as they change.
    ui.tab("microscope")
    wait_query(ui, tab="microscope")
    ui.box("micro-text").fill(TEXT)
    ui.panel().get_by_label("Hide features denser than (%)").fill("100")
    page.locator("#encode").click()
    want = microscope.view(ctx, TEXT, ["1", "2"], max_density_pct=100)
    first = want.shading.feature
    assert first is not None
    wait_query(ui, text=TEXT, token="0", shade=f"{first[0]}:{first[1]}", density="100")
    page.locator("#tokens .gse-tok").nth(3).click()
    wait_query(ui, token="3")
    layer, feature = (int(want.text_top[c].iat[2]) for c in ("layer", "feature"))
    ui.cell("text-top", 2, 2).click()
    wait_query(ui, token="3", shade=f"{layer}:{feature}")
    micro_url = page.url

    # Browse: switching tab writes the browse view (Copy link copied a dashboard link); a search
    # and its page follow.
    ui.tab("browse")
    wait_query(ui, tab="browse", text=None)
    page.locator("#copy-link").click()
    assert page.evaluate("navigator.clipboard.readText()") == page.url
    ui.panel().get_by_label("Hide dense").uncheck()
    ui.box("b-query").fill("a")
    page.locator("#browse-btn").click()
    wait_query(ui, q="a", hide_dense="0", browse_page=None)
    page.locator("#browse-next").click()
    wait_query(ui, q="a", hide_dense="0", browse_page="2")
    expect(ui.panel().get_by_text("Features 21–")).to_be_visible()
    browse_url, browse_first = page.url, ui.cell("browse-table", 0, 1).inner_text()

    # Feature: nothing open yet, then a feature.
    ui.tab("dashboard")
    wait_query(ui, tab="dashboard", layer=None)
    live = live_feature(ctx, 2)
    page.locator("#d-feature input").fill(str(live))
    page.locator("#d-layer input").click()
    page.get_by_role("option", name="2", exact=True).click()
    page.locator("#open-feature").click()
    wait_query(ui, tab="dashboard", layer="2", feature=str(live))
    dash_url = page.url

    # Steering: the set-up is in the address before Generate (run=0), and Generate drops run=0.
    page.locator("#to-steer").click()
    ui.expect_tab("steer")
    ui.box("steer-prompt").fill("the dog sat")
    q = wait_query(ui, tab="steer", prompt="the dog sat", run="0")
    assert q["steer"].startswith(f"2:{live}:")
    steer_url = page.url

    # Label: the queue's feature.
    ui.tab("label")
    q = wait_query(ui, tab="label")
    label_title = ui.panel().locator(".gse-title").inner_text()
    shown = re.search(r"Layer (\d+) · feature (\d+)", label_title.strip())
    assert shown and q["layer"] == shown[1] and q["feature"] == shown[2]
    label_url = page.url

    # Each address rebuilds its view.
    reopen(ui, micro_url)
    ui.expect_tab("microscope")
    expect(ui.box("micro-text")).to_have_value(TEXT)
    expect(page.locator("#shade-caption")).to_contain_text(f"layer {layer} · feature {feature}")
    expect(page.locator("#tokens [aria-current=true]")).to_have_text("on")
    expect(page.locator("#token-table")).to_contain_text("Features on token 3")
    wait_query(ui, token="3", shade=f"{layer}:{feature}")

    reopen(ui, browse_url)
    ui.expect_tab("browse")
    expect(ui.box("b-query")).to_have_value("a")
    expect(ui.panel().get_by_text("Features 21–")).to_be_visible()
    expect(ui.cell("browse-table", 0, 1)).to_have_text(browse_first)
    assert query(ui)["browse_page"] == "2"

    reopen(ui, dash_url)
    ui.expect_tab("dashboard")
    expect(page.locator("#dash-header")).to_contain_text(f"Layer 2 · feature {live}")

    reopen(ui, steer_url)
    ui.expect_tab("steer")
    expect(ui.box("steer-prompt")).to_have_value("the dog sat")
    expect(ui.cell("steer-table", 0, 1)).to_have_text(str(live))
    page.wait_for_timeout(1500)
    expect(ui.box("default-out")).to_have_value("")  # run=0: set up, not generated
    assert query(ui).get("run") == "0"

    reopen(ui, label_url)
    ui.expect_tab("label")
    expect(ui.panel().locator(".gse-title")).to_have_text(label_title)
    assert not ui.dialogs


def test_old_links_keep_working(ui: UI, ctx: Context) -> None:
    from playwright.sync_api import expect

    page = ui.page
    live = live_feature(ctx, 2)
    ui.open(f"?layer=2&feature={live}")
    ui.expect_tab("dashboard")
    expect(page.locator("#dash-header")).to_contain_text(f"Layer 2 · feature {live}")
    ui.open(f"?tab=microscope&text={TEXT.replace(' ', '+')}")
    ui.expect_tab("microscope")
    expect(page.locator("#micro-status")).to_contain_text("tokens ×")
    wait_query(ui, text=TEXT, token="0")
    ui.open(f"?tab=steer&prompt=the+cat&steer=2:{live}:3:add&temperature=0&max_new_tokens=4&seed=1")
    ui.expect_tab("steer")
    expect(page.locator("#gen-status")).to_contain_text("stopped at the")  # it generates
    wait_query(ui, tab="steer", prompt="the cat", run=None)
    assert not ui.dialogs


def test_export_is_one_click(ui: UI, ctx: Context, tmp_path: Path) -> None:
    live = live_feature(ctx, 2)
    ctx.labels.add(2, live, "a label to export", labeller="tester")
    page = ui.page
    ui.open()
    ui.tab("label")
    for button, name in (("#export-csv", "labels.csv"), ("#export-json", "labels.json")):
        with page.expect_download() as event:
            page.locator(button).click()
        got = event.value
        assert got.suggested_filename == name
        got.save_as(tmp_path / name)
        assert "a label to export" in (tmp_path / name).read_text(encoding="utf-8")
