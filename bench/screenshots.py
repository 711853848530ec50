"""The screenshots of the README and docs/app.md: the real app on the embedded default, driven
in headless Chromium.

    python bench/screenshots.py [--out docs/screenshots]

Starts the app in-process on 127.0.0.1 (a temporary label database), then, as a user would:
encodes the first curated text (shaded by its strongest feature), opens the strongest feature of
its first token, tests it on the text,
runs the first steering demo, browses, and opens the labelling queue; one PNG per tab. Needs
Debian chromium and the playwright package (``pip install -e ".[test]"``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import expect, sync_playwright

    from explorer.app import build_app, open_explorer
    from explorer.app.render import CSS

    ctx = open_explorer("default", None, str(Path(tempfile.mkdtemp()) / "labels.sqlite"))
    curated = ctx.content
    text = curated["texts"][0]
    feature = curated["features"][0]
    # Steer with the curated feature that says to try steering with it.
    steer = next((f for f in curated["features"] if "steering" in f["why"]), feature)
    ctx.labels.add(feature["layer"], feature["feature"], feature["label"], labeller="curated")
    demo = build_app(ctx)
    from app_process import free_port

    port = free_port()
    demo.queue().launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=CSS
    )
    url = f"http://127.0.0.1:{port}/"
    expect.set_options(timeout=120_000)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})

            def tab(tab_id: str) -> None:
                page.locator(f'button[role="tab"][data-tab-id="{tab_id}"]').click()

            def shot(name: str) -> None:
                page.wait_for_timeout(800)  # plotly's transitions
                page.screenshot(path=str(out / f"{name}.png"), full_page=True)

            page.goto(url)
            expect(page.locator("#curated")).to_contain_text(feature["label"])
            shot("1-start")
            tab("microscope")
            page.locator("#micro-text").get_by_role("textbox").fill(text)
            page.locator("#encode").click()
            expect(page.locator("#micro-status")).to_contain_text("tokens ×")
            expect(page.locator("#shade-caption")).to_contain_text("Shaded by")
            shot("2-microscope")
            # A row shades the text by its feature; the button opens the feature's page.
            page.locator("#token-table [data-testid='cell-0-0']").click()
            page.locator("#open-shade").click()
            expect(page.locator("#dash-header")).to_contain_text("feature")
            page.get_by_label("Test this feature on your text").fill(text)
            page.locator("#test-feature").click()
            expect(page.get_by_text("max on your text")).to_be_visible()
            shot("3-feature")
            page.goto(f"{url}?layer={steer['layer']}&feature={steer['feature']}")
            expect(page.locator("#dash-header")).to_contain_text(f"feature {steer['feature']}")
            page.locator("#to-steer").click()
            # The Steering tab as a teacher uses it: one click on the first curated steering
            # demo fills it and generates.
            page.locator("#steer-demos [data-testid='cell-0-1']").click()
            prompt = page.locator("#steer-prompt textarea")
            expect(prompt).to_have_value(curated["steering"][0]["prompt"])
            expect(page.locator("#gen-status")).to_contain_text("stopped", timeout=300_000)
            shot("4-steering")
            tab("browse")
            page.locator("#browse-btn").click()
            expect(page.locator("#browse-table [data-testid='cell-0-0']")).to_be_visible()
            shot("5-browse")
            tab("label")
            page.locator("#next-unlabelled").click()
            expect(page.locator("#l-header")).to_contain_text("feature")
            shot("6-label")
            browser.close()
    finally:
        demo.close()
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main()
