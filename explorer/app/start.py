"""The Start tab: what an SAE feature is, a guided path, and the curated features to open."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from explorer.app.context import Context

TAB_ID = "start"

INTRO = """\
## What is an SAE feature?
A language model turns each token into a long vector of numbers (the *residual stream*). A
**sparse autoencoder (SAE)** rewrites that vector as a sum of a few directions out of thousands —
its **features**. Each feature fires on some tokens and not others, and many of them mean
something a person can name: "the word *near*", "Python keywords", "speech after a quote".
This explorer shows which features fire on your text, what each feature fires on across a corpus,
and what happens when you push the model along a feature's direction (*steering*).

**A guided path:** 1. click an example text below: it opens in the *Microscope*, encoded and
shaded by its strongest feature; 2. click a token, then a row of its table: the text is shaded by
that feature, and **Open this feature's page** opens it; 3. read the feature's top examples and
interval samples on its page; 4. press **Steer with this feature** and compare the two
completions.
Or click a curated feature to open its page, or a steering demo to see a feature pull the
model's text toward its concept.
"""


def curated_rows(content: dict[str, Any]) -> list[list[Any]]:
    """The curated features as table rows: layer, feature, label, why it is interesting."""
    return [
        [f["layer"], f["feature"], f.get("label", ""), f.get("why", "")]
        for f in content["features"]
    ]


DEMO_HEADERS = ["steering demo (click: it opens in Steering and generates)", "prompt", "feature",
                "strength", "method", "seed"]  # fmt: skip


def demo_rows(content: dict[str, Any]) -> list[list[Any]]:
    """The curated steering demos as table rows: label, prompt, ``layer:feature``, strength,
    method, seed (the Start tab's and the Steering tab's demo tables)."""
    return [
        [d.get("label", ""), d["prompt"], f"{d['layer']}:{d['feature']}", d["strength"],
         d["method"], d["seed"]]
        for d in content.get("steering", [])
    ]  # fmt: skip


def demo_table(ctx: Context, elem_id: str) -> gr.Dataframe:
    """The steering demos' table (hidden when the preset has none)."""
    rows = demo_rows(ctx.content)
    return gr.Dataframe(
        rows,
        headers=DEMO_HEADERS,
        label="Steering demos, chosen by the steering evaluation (click a row)",
        interactive=False,
        visible=bool(rows),
        elem_id=elem_id,
    )


@dataclass
class StartTab:
    texts_table: gr.Dataframe
    curated_table: gr.Dataframe
    demos_table: gr.Dataframe


def layout(ctx: Context) -> StartTab:
    """The tab's components (a click on a row is wired by the layout: it opens another tab).
    A preset without curated content shows neither table."""
    gr.Markdown(INTRO)
    texts = ctx.content["texts"]
    texts_table = gr.Dataframe(
        [[t] for t in texts],
        headers=["example text (click to open it in the microscope)"],
        label="Example texts",
        interactive=False,
        visible=bool(texts),
        elem_id="start-texts",
    )
    curated_table = gr.Dataframe(
        curated_rows(ctx.content),
        headers=["layer", "feature", "label", "why it is interesting"],
        label="Curated features (click a row to open it)",
        interactive=False,
        visible=bool(ctx.content["features"]),
        elem_id="curated",
    )
    demos_table = demo_table(ctx, "start-demos")
    return StartTab(texts_table=texts_table, curated_table=curated_table, demos_table=demos_table)
