"""The Browse & search tab: the store's features as a table (filtered, searched by label,
automatic description or top token, sorted), and search by inference (the features most active
on a text)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from explorer.app import microscope, render
from explorer.app.context import Context, UserError, parse_int
from explorer.app.ui import ui
from explorer.labels import LabelError

TAB_ID = "browse"
BROWSE_ROWS = 500  # rows shown by the browse table (the search narrows it)
AUTO_COLUMN = "automatic description"


def features(
    ctx: Context,
    layer: Any = "all",
    query: str = "",
    sort_by: str = "density",
    descending: bool = True,
    hide_dense: bool = True,
    hide_dead: bool = True,
) -> pd.DataFrame:
    """Features of the store as a table: filtered, searched by label, automatic description
    or top token, sorted.

    The defaults show the interesting ones first: dense features (firing on more than the
    store's threshold of tokens, rarely interpretable) and dead ones are hidden, and the rest
    are sorted by density, the most frequent first.
    """
    df = ctx.summary()
    if layer not in (None, "", "all"):
        layer_n = parse_int(layer, "layer")
        if layer_n not in ctx.layers:
            raise UserError(f"layer {layer_n} has no SAE here")
        df = df[df["layer"] == layer_n]
    if hide_dense:
        df = df[~df["dense"]]
    if hide_dead:
        df = df[~df["dead"]]
    labels = ctx.labels.current_all()
    label_col = [
        ctx.label_text(labels, int(a), int(b))
        for a, b in zip(df["layer"], df["feature"], strict=True)
    ]
    df = df.assign(label=pd.Series(label_col, index=df.index, dtype=object))
    q = (query or "").strip().lower()
    if len(q) > 200:
        raise UserError("the search text is too long (200 characters at most)")
    if sort_by not in df.columns:
        raise UserError(f"cannot sort by {sort_by!r}")
    if q:
        # People's labels and notes through the label database's full-text index (FTS5, ranked
        # by bm25); curated labels and top tokens as plain substrings. Label hits come first, in
        # rank order, then the rest in the chosen order.
        try:
            found = ctx.labels.search(query.strip(), limit=BROWSE_ROWS)
        except LabelError as e:
            raise UserError(str(e)) from None
        ranked = {(hit.layer, hit.feature): i for i, hit in enumerate(found)}
        keys = zip(df["layer"].tolist(), df["feature"].tolist(), strict=True)
        rank = pd.Series([ranked.get((a, b), len(ranked)) for a, b in keys], index=df.index)
        hit = (
            (rank < len(ranked))
            | df["label"].str.lower().str.contains(q, regex=False)
            | df["description"].str.lower().str.contains(q, regex=False)
            | df["top_tokens"].str.lower().str.contains(q, regex=False)
        )
        df = df.assign(_rank=rank)[hit]
        df = df.sort_values(
            ["_rank", sort_by, "layer", "feature"], ascending=[True, not descending, True, True]
        )
    else:
        df = df.sort_values([sort_by, "layer", "feature"], ascending=[not descending, True, True])
    cols = [
        "layer",
        "feature",
        "label",
        "description",
        "density",
        "max_act",
        "n_fires",
        "top_tokens",
    ]
    out = pd.DataFrame(df[cols].head(BROWSE_ROWS)).reset_index(drop=True)
    out["density"] = (100 * out["density"]).round(4)
    out["max_act"] = out["max_act"].astype(float).round(3)
    return out.rename(
        columns={"density": "density %", "max_act": "max act", "description": AUTO_COLUMN}
    )


SI_RANK = f"max {microscope.REL}"  # search by inference ranks by the microscope's "max"


def search_by_inference(ctx: Context, text: str, max_density_pct: Any) -> pd.DataFrame:
    """The features most active on ``text``, all layers: the microscope's whole-text ranking by
    relative strength (each feature's peak on the text as a % of its maximum over the store, so
    early layers are not drowned by the larger raw activations of late ones), raw beside it."""
    return microscope.view(ctx, text, max_density_pct=max_density_pct, aggregate="max").text_top


@dataclass
class BrowseTab:
    layer: gr.Dropdown
    query: gr.Textbox
    sort: gr.Dropdown
    desc: gr.Checkbox
    dense: gr.Checkbox
    dead: gr.Checkbox
    btn: gr.Button
    table: gr.Dataframe
    si_text: gr.Textbox
    si_density: gr.Number
    si_btn: gr.Button
    si_table: gr.Dataframe


def layout(ctx: Context) -> BrowseTab:
    """The tab's components and its own events (search, search by inference)."""
    layer_names = [str(n) for n in ctx.layers]
    with gr.Row():
        b_layer = gr.Dropdown(["all", *layer_names], value="all", label="Layer")
        b_query = gr.Textbox(
            label="Search labels, automatic descriptions and top tokens", elem_id="b-query"
        )
        b_sort = gr.Dropdown(
            ["density", "max_act", "n_fires", "feature"],
            value="density",
            label="Sort by",
        )
        b_desc = gr.Checkbox(True, label="Descending")
        b_dense = gr.Checkbox(True, label="Hide dense")
        b_dead = gr.Checkbox(True, label="Hide dead")
    b_btn = gr.Button("Search", variant="primary", elem_id="browse-btn")
    b_table = gr.Dataframe(
        label="Features (click to open)", interactive=False, elem_id="browse-table"
    )
    gr.Markdown("### Search by inference: which features are most active on a text?")
    with gr.Row():
        si_text = gr.Textbox(label="Text", scale=4)
        si_density = gr.Number(1.0, label="Hide features denser than (%)", minimum=0)
        si_btn = gr.Button("Find features", scale=1)
    si_table = gr.Dataframe(
        headers=["layer", "feature", "label", SI_RANK, "max act", "tokens", "density %"],
        label="Most active features (click to open)",
        interactive=False,
    )

    def browse(
        layer: Any = "all",
        query: str = "",
        sort_by: str = "density",
        descending: bool = True,
        hide_dense: bool = True,
        hide_dead: bool = True,
    ) -> pd.DataFrame:
        """Features of the store as a table: filtered, searched by label or top token, sorted."""
        return features(ctx, layer, query, sort_by, descending, hide_dense, hide_dead)

    inputs = [b_layer, b_query, b_sort, b_desc, b_dense, b_dead]
    b_btn.click(ui(browse), inputs, b_table, api_name="browse")
    b_query.submit(ui(browse), inputs, b_table)  # Enter searches too

    def search_inference(t: str, d: Any) -> Any:
        return render.shade_column(search_by_inference(ctx, t, d), SI_RANK)

    si_btn.click(ui(search_inference), [si_text, si_density], si_table, api_name="search_inference")
    return BrowseTab(
        layer=b_layer,
        query=b_query,
        sort=b_sort,
        desc=b_desc,
        dense=b_dense,
        dead=b_dead,
        btn=b_btn,
        table=b_table,
        si_text=si_text,
        si_density=si_density,
        si_btn=si_btn,
        si_table=si_table,
    )
