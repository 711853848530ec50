"""The Browse & search tab: the store's features as a table (filtered, searched by label,
explanation, automatic description or top token, sorted), and search by inference (the features
most active on a text).

The table holds every source the store has (the residual SAEs' features, ``res``, and the
transcoders', ``tc``), with a ``source`` column and a source filter; a search, "interesting
first" and the random feature cover them all."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any, NamedTuple

import gradio as gr
import numpy as np
import pandas as pd

from explorer.app import microscope, relevance, render
from explorer.app.context import Context, UserError, parse_int
from explorer.app.ui import ui
from explorer.explanations import Explanation, FeatureHits
from explorer.labels import LabelError
from explorer.store.schema import BY_SHORT, RES, SHORT

TAB_ID = "browse"
BROWSE_ROWS = 500  # rows a page of the browse table shows (never the whole store)
EXPLANATION_HITS = 5000  # explanations a search takes from the full-text index, best first
# An explanation in the table is cut to this many characters, at a word (the dashboard shows it
# whole): a 300-character one pushed density and max far off the screen's right edge.
EXPLANATION_CHARS = 80
AUTO_COLUMN = "automatic description"
STEER_COLUMN = "likely to steer"  # the estimate, 0 to 1 (explorer.steerability)
SORTS = {  # what the Sort by menu shows -> the summary's column
    "interesting first": "interest",
    "likely to steer": "steer",
    "density": "density",
    "max act": "max_act",
    "fires": "n_fires",
    "feature": "feature",
}


KEY = 1 << 32  # (source, layer, feature) as one int64: (source * SOURCE_KEY + layer) * KEY + f
SOURCE_KEY = 1 << 16
SOURCE_FILTER = ("all", SHORT[RES], "tc")  # the source filter's values


def _keys(layers: Any, features: Any, sources: Any = 0) -> np.ndarray:
    """Each feature as one int64; ``sources`` is 0 for a ``res`` feature, 1 for a ``tc`` one."""
    src = np.asarray(sources, dtype=np.int64) * SOURCE_KEY
    return (src + np.asarray(layers, dtype=np.int64)) * KEY + np.asarray(features, dtype=np.int64)


Labelled = dict[tuple[int, int, int], str]
"""``{(source index, layer, feature): label text}``: source 0 is ``res``, 1 ``tc``."""


def _split3(pairs: list[tuple[int, int, int]]) -> tuple[list[int], list[int], list[int]]:
    return [b for _, b, _ in pairs], [c for _, _, c in pairs], [a for a, _, _ in pairs]


def _explained(ctx: Context, query: str) -> FeatureHits:
    """The features with an explanation containing ``query``, best match first (none without
    readable explanations: the rest of the search still answers)."""
    return ctx.read_explanations(
        lambda x: x.search_features(query, limit=EXPLANATION_HITS), FeatureHits([], 0, True)
    )


def _partial(hits: FeatureHits) -> str:
    """What the caption says when a search took only the first explanations that matched."""
    if hits.complete:
        return ""
    of = f"{hits.matched:,}" if hits.matched is not None else "more"
    return f"only the first {EXPLANATION_HITS:,} of {of} matching explanations searched"


def _split(pairs: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    return [a for a, _ in pairs], [b for _, b in pairs]


def _tiers(
    ctx: Context, query: str, keys: np.ndarray, labelled: Labelled
) -> tuple[np.ndarray, np.ndarray, str]:
    """:func:`relevance.tiers` of ``query`` over the summary's rows (``keys``): people's labels
    and notes through the label index (ranked by bm25), then any label holding the query (the
    curated ones too); explanations through theirs; tokens through :meth:`Context.tokens`.
    The third value says whether the explanations were cut short (:func:`_partial`)."""
    hits: list[tuple[tuple[int, int, int], str]] = []
    for i, source in enumerate(ctx.browse_sources()):
        try:
            found = ctx.labels_for(source).search(query, limit=BROWSE_ROWS)
        except LabelError as e:
            raise UserError(str(e)) from None
        hits += [((i, h.layer, h.feature), f"{h.label} {h.notes}") for h in found]
    q = relevance.normalize(query)
    hits += [(k, text) for k, text in labelled.items() if q in relevance.normalize(text)]
    best: dict[tuple[int, int, int], str] = {}
    for k, text in hits:  # each feature once, at its best place
        best.setdefault(k, text)
    label_keys = _keys(*_split3(list(best))).tolist()
    explained = _explained(ctx, query)
    tier, within = relevance.tiers(
        keys,
        query,
        list(zip(label_keys, best.values(), strict=True)),
        _keys(*_split(explained.features)).tolist(),
        ctx.tokens(),
    )
    return tier, within, _partial(explained)


class BrowsePage(NamedTuple):
    table: pd.DataFrame
    total: int  # the features that match and are shown by the filters, on every page
    page: int  # the page shown (1 first)
    hidden: int = 0  # features a search matches that the Hide dense / Hide dead boxes leave out
    partial: str = ""  # how a search was cut short ("" when it was not)


def select(
    ctx: Context,
    layer: Any = "all",
    query: str = "",
    sort_by: str = "interest",
    descending: bool = True,
    hide_dense: bool = True,
    hide_dead: bool = True,
    page: Any = 1,
    source: Any = "all",
) -> BrowsePage:
    """One page of :func:`features` (``BROWSE_ROWS`` rows), the number of matching features,
    the page number shown (a page past the end shows the last one) and, for a search, how many
    more features match among those Hide dense / Hide dead leave out. ``source`` shows one
    source's features (``res``, ``tc``; ``"all"``: every source the store holds).

    Vectorized over the store's features (425,984 for Gemma Scope's 26 x 16k): masks, one stable
    sort of row numbers, and per-row Python only for the rows of the page.
    """
    df = ctx.browse_summary()
    in_layer = np.ones(len(df), dtype=bool)
    layers = df["layer"].to_numpy()
    src = (df["source"].to_numpy() != SHORT[RES]).astype(np.int64)
    if source not in (None, "", "all"):
        in_layer &= df["source"].to_numpy() == SHORT[ctx.source(source)]
    if layer not in (None, "", "all"):
        layer_n = parse_int(layer, "layer")
        if layer_n not in browse_layers(ctx):
            raise UserError(f"layer {layer_n} has no SAE here")
        in_layer &= layers == layer_n
    mask = in_layer.copy()
    if hide_dense:
        mask &= ~df["dense"].to_numpy(dtype=bool)
    if hide_dead:
        mask &= ~df["dead"].to_numpy(dtype=bool)
    hidden = 0
    partial = ""
    page_n = parse_int(page if page not in (None, "") else 1, "page", 1)
    q = (query or "").strip().lower()
    if len(q) > 200:
        raise UserError("the search text is too long (200 characters at most)")
    if sort_by not in SORTS.values():
        raise UserError(f"cannot sort by {str(sort_by)[:40]!r}; choose one of {', '.join(SORTS)}")
    shorts = [SHORT[s] for s in ctx.browse_sources()]
    labels = {short: ctx.labels_for(BY_SHORT[short]).current_all() for short in shorts}
    keys = _keys(layers, df["feature"].to_numpy(), src)
    labelled: Labelled = {(0, a, b): text for (a, b), text in ctx.curated.items()}
    for i, short in enumerate(shorts):
        labelled.update({(i, a, b): v.label for (a, b), v in labels[short].items()})
    values = df[sort_by].to_numpy(dtype=float)
    if sort_by == "interest":  # labelled features first: people found them worth naming
        values = values + np.isin(keys, _keys(*_split3(list(labelled))))
    sort_key = -values if descending else values
    if q:
        tier, within, partial = _tiers(ctx, query.strip(), keys, labelled)
        hit = tier < relevance.TIER_NONE
        rows = np.flatnonzero(mask & hit)
        hidden = int(np.count_nonzero(in_layer & ~mask & hit))
        # lexsort is stable: ties keep the summary's (layer, feature) order
        order = rows[np.lexsort((sort_key[rows], within[rows], tier[rows]))]
    else:
        rows = np.flatnonzero(mask)
        order = rows[np.argsort(sort_key[rows], kind="stable")]
    n_pages = max(1, -(-len(order) // BROWSE_ROWS))
    page_n = min(page_n, n_pages)
    shown = df.iloc[order[(page_n - 1) * BROWSE_ROWS : page_n * BROWSE_ROWS]]
    shown = shown.assign(
        label=[
            ctx.label_text(labels.get(c, {}), int(a), int(b), BY_SHORT[c])
            for a, b, c in zip(shown["layer"], shown["feature"], shown["source"], strict=True)
        ]
    )
    cols = [
        "layer", "feature", "source", "label", "description", "density", "max_act", "n_fires",
        "steer", "top_tokens",
    ]  # fmt: skip
    if ctx.explanations is not None:  # the best explanation of each res row shown, cut short
        pairs = [
            (int(a), int(b))
            for a, b, c in zip(shown["layer"], shown["feature"], shown["source"], strict=True)
            if c == SHORT[RES]
        ]
        best: dict[tuple[int, int], Explanation] = ctx.read_explanations(
            lambda x: x.best_many(pairs), {}
        )
        shown = shown.assign(
            explanation=[
                textwrap.shorten(best[(int(a), int(b))].text, EXPLANATION_CHARS, placeholder=" …")
                if c == SHORT[RES] and (int(a), int(b)) in best
                else ""
                for a, b, c in zip(shown["layer"], shown["feature"], shown["source"], strict=True)
            ]
        )
        cols.insert(4, "explanation")
    out = pd.DataFrame(shown[cols]).reset_index(drop=True)
    out["density"] = (100 * out["density"]).round(4)
    out["max_act"] = out["max_act"].astype(float).round(3)
    out["steer"] = out["steer"].astype(float).round(2)
    out = out.rename(
        columns={
            "density": "density %", "max_act": "max act", "description": AUTO_COLUMN,
            "steer": STEER_COLUMN,
        }
    )  # fmt: skip
    return BrowsePage(out, len(order), page_n, hidden, partial)


def browse_layers(ctx: Context) -> list[int]:
    """Every layer of a source the store holds (the layer filter's choices)."""
    found = {n for s in ctx.browse_sources() for n in ctx.source_layers(s)}
    return sorted(found or ctx.layers)


def features(ctx: Context, *criteria: Any, **named: Any) -> pd.DataFrame:
    """Features of the store as a table: filtered, searched by label, explanation, automatic
    description or top token, sorted, one page of ``BROWSE_ROWS`` at a time (page 1 first); the
    arguments are :func:`select`'s. With an explanations file, an ``explanation`` column holds
    each row's best explanation.

    The defaults show the interesting ones first: dense features (firing on more than the
    store's threshold of tokens, rarely interpretable) and dead ones are hidden, and the rest
    come labelled first, then by :func:`explorer.app.relevance.interest` (features that fire on
    a rare token in most of their examples). A search ranks by relevance
    (:func:`explorer.app.relevance.tiers`), the chosen order breaking ties.
    """
    return select(ctx, *criteria, **named)[0]


def page_caption(total: int, page: int, hidden: int = 0, partial: str = "") -> str:
    """The table's caption: which rows of how many are shown, how many more a search found
    among the hidden dense or dead features, and whether it was cut short."""
    untick = "untick Hide dense or Hide dead to see them"
    cut = f"; {partial}: refine the search" if partial else ""
    if total == 0 and hidden:
        return (
            f"Features: none shown; {hidden:,} match among the hidden dense or dead ({untick})"
            + cut
        )
    if total == 0:
        return f"Features: none match{cut} (click a row to open)"
    more = f"; {hidden:,} more among the hidden dense or dead: {untick}" if hidden else ""
    first = (page - 1) * BROWSE_ROWS + 1
    last = min(page * BROWSE_ROWS, total)
    n_pages = -(-total // BROWSE_ROWS)
    return (
        f"Features {first:,}–{last:,} of {total:,} (page {page:,} of {n_pages:,}{more}{cut}; "
        "click a row to open)"
    )


def table_update(ctx: Context, *args: Any) -> Any:
    """The browse table as the page shows it: one page, its caption saying which rows of how
    many (the API returns the table alone)."""
    found = select(ctx, *args)
    return gr.Dataframe(value=found.table, label=page_caption(*found[1:]))


SI_RANK = f"max {microscope.REL}"  # search by inference ranks by the microscope's "max"


def search_by_inference(ctx: Context, text: str, max_density_pct: Any = None) -> pd.DataFrame:
    """The features most active on ``text``, all layers: the microscope's whole-text ranking by
    relative strength (each feature's peak on the text as a % of its maximum over the store, so
    early layers are not drowned by the larger raw activations of late ones), raw beside it;
    features denser than ``max_density_pct`` (%; ``None``: the store's threshold) left out."""
    return microscope.view(ctx, text, max_density_pct=max_density_pct, aggregate="max").text_top


@dataclass
class BrowseTab:
    source: gr.Dropdown
    layer: gr.Dropdown
    query: gr.Textbox
    sort: gr.Dropdown
    desc: gr.Checkbox
    dense: gr.Checkbox
    dead: gr.Checkbox
    btn: gr.Button
    page: gr.Number
    random_btn: gr.Button
    table: gr.Dataframe
    si_text: gr.Textbox
    si_density: gr.Number
    si_btn: gr.Button
    si_table: gr.Dataframe


def layout(ctx: Context) -> BrowseTab:
    """The tab's components and its own events (search, search by inference); the random
    feature button opens the Feature tab, which :mod:`explorer.app.layout` wires."""
    layer_names = [str(n) for n in browse_layers(ctx)]
    with gr.Row():
        b_source = gr.Dropdown(
            list(SOURCE_FILTER), value="all", label="Source", elem_id="b-source",
            visible=len(ctx.browse_sources()) > 1,
        )  # fmt: skip
        b_layer = gr.Dropdown(["all", *layer_names], value="all", label="Layer", elem_id="b-layer")
        searched = "labels, explanations," if ctx.explanations is not None else "labels,"
        b_query = gr.Textbox(
            label=f"Search {searched} automatic descriptions and top tokens", elem_id="b-query"
        )
        b_sort = gr.Dropdown(
            list(SORTS.items()), value="interest", label="Sort by", elem_id="b-sort"
        )
        b_desc = gr.Checkbox(True, label="Descending")
        b_dense = gr.Checkbox(True, label="Hide dense")
        b_dead = gr.Checkbox(True, label="Hide dead")
    with gr.Row():
        b_btn = gr.Button("Search", variant="primary", elem_id="browse-btn", scale=3)
        b_prev = gr.Button("◀ Previous", elem_id="browse-prev", scale=1)
        b_page = gr.Number(1, label="Page", minimum=1, precision=0, elem_id="browse-page", scale=1)
        b_next = gr.Button("Next ▶", elem_id="browse-next", scale=1)
        b_random = gr.Button("Open a random feature", elem_id="browse-random", scale=1)
    b_table = gr.Dataframe(
        label="Features (click to open)", interactive=False, elem_id="browse-table"
    )
    gr.Markdown(render.AUTO_LEGEND, elem_id="browse-legend", elem_classes="gse-legend")
    gr.Markdown("### Search by inference: which features are most active on a text?")
    with gr.Row():
        si_text = gr.Textbox(label="Text", scale=4)
        si_density = microscope.density_input(ctx)
        si_btn = gr.Button("Find features", scale=1)
    si_table = gr.Dataframe(
        headers=["layer", "feature", "label", SI_RANK, "max act", "tokens", "density %"],
        label="Most active features (click to open)",
        interactive=False,
    )

    def browse(
        layer: Any = "all",
        query: str = "",
        sort_by: str = "interest",
        descending: bool = True,
        hide_dense: bool = True,
        hide_dead: bool = True,
        page: Any = 1,
        source: Any = "all",
    ) -> pd.DataFrame:
        """Features of the store as a table: filtered, searched by label, explanation,
        automatic description or top token, sorted; one page of at most 500 rows (``page`` 1
        first); ``source`` res, tc or all."""
        return features(ctx, layer, query, sort_by, descending, hide_dense, hide_dead, page, source)

    def search(
        layer: Any, query: str, sort_by: str, desc: bool, dense: bool, dead: bool, source: Any
    ) -> tuple[Any, int]:
        # new criteria: back to the first page
        return table_update(ctx, layer, query, sort_by, desc, dense, dead, 1, source), 1

    def turn(step: int) -> Any:
        def go(
            layer: Any, query: str, sort_by: str, desc: bool, dense: bool, dead: bool, page: Any,
            source: Any,
        ) -> tuple[Any, int]:  # fmt: skip
            wanted = max(1, parse_int(page or 1, "page") + step)
            found = select(ctx, layer, query, sort_by, desc, dense, dead, wanted, source)
            return gr.Dataframe(value=found.table, label=page_caption(*found[1:])), found.page

        return go

    criteria = [b_layer, b_query, b_sort, b_desc, b_dense, b_dead]
    # The API's endpoint returns the table alone; the page's own events also set its caption
    # (which rows of how many) and the page number.
    api = gr.Button(visible=False)
    api.click(ui(browse), [*criteria, b_page, b_source], b_table, api_name="browse")
    for event in (b_btn.click, b_query.submit, b_source.input):  # back to the first page
        event(ui(search), [*criteria, b_source], [b_table, b_page], api_visibility="private")
    for event, step in ((b_prev.click, -1), (b_next.click, 1), (b_page.submit, 0)):
        event(
            ui(turn(step)), [*criteria, b_page, b_source], [b_table, b_page],
            api_visibility="private",
        )  # fmt: skip

    def search_inference(text: str, max_density_pct: Any) -> Any:
        return render.shade_column(search_by_inference(ctx, text, max_density_pct), SI_RANK)

    si_btn.click(ui(search_inference), [si_text, si_density], si_table, api_name="search_inference")
    return BrowseTab(
        source=b_source,
        layer=b_layer,
        query=b_query,
        sort=b_sort,
        desc=b_desc,
        dense=b_dense,
        dead=b_dead,
        btn=b_btn,
        page=b_page,
        random_btn=b_random,
        table=b_table,
        si_text=si_text,
        si_density=si_density,
        si_btn=si_btn,
        si_table=si_table,
    )
