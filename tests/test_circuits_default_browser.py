"""The Circuits tab in a real Chromium on the embedded default (Gemma 3 270M, its shipped
transcoders, store and curated graphs): the first curated graph opens, its top feature node shows
the store's description of that transcoder feature and links to its dashboard, which opens on the
shipped store, and ablating that node moves the target's probability in the sign the graph
predicts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_ui import UI, ablate_top_node
from helpers import serve

from explorer.app import Context, circuits
from explorer.paths import ASSETS_SAES
from explorer.store.schema import TRANSCODER

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("browser")]

GRAPHS = ASSETS_SAES.parent / "graphs"
# The name of the plot's trace (a node kind) that holds a node.
TRACE_OF = """(id) => {
  const gd = document.querySelector('#circuit-graph .js-plotly-plot');
  const tr = gd._fullData.find((t) => Array.from(t.customdata || []).includes(id));
  return tr ? tr.name : null;
}"""


@pytest.fixture(scope="module")
def default_ctx(embedded_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Context:
    """``python -m explorer``'s own start-up path on the embedded default."""
    from explorer.app import open_explorer

    labels = tmp_path_factory.mktemp("labels") / "labels.sqlite"
    return open_explorer("default", None, str(labels), str(embedded_cache))


@pytest.fixture
def served(default_ctx: Context) -> Iterator[str]:
    yield from serve(default_ctx)


def test_a_curated_graph_of_the_embedded_default_opens_and_its_top_node_ablates(
    ui: UI, default_ctx: Context
) -> None:
    from playwright.sync_api import expect

    first = json.loads((GRAPHS / "index.json").read_text())["graphs"][0]
    assert default_ctx.graphs is not None and default_ctx.bundle.spec.transcoders
    c, top = ablate_top_node(ui, default_ctx, 0, first["prompt"], first["caption"])
    page = ui.page
    description = default_ctx.description(top.layer, top.feature, TRANSCODER)
    assert description  # every live transcoder feature of the shipped store is described
    expect(page.locator("#circuit-node-panel")).to_contain_text(description[:40])
    expect(page.locator("#circuit-caption")).to_contain_text(repr(c.target_token))
    n_dense = len(circuits.dense_nodes(default_ctx, c) & {n.node_id for n in c.shown(0.8)})
    expect(page.locator("#circuit-caption")).to_contain_text(f"({n_dense} of them dense)")
    # How often the feature fires over the shipped store's corpus; a dense one is flagged.
    found = circuits.feature_density(default_ctx, top)
    assert found is not None
    share, dense_at = found
    expect(page.locator("#circuit-node-panel")).to_contain_text(
        f"fires on {100 * share:.3g}% of the corpus's tokens"
    )
    badge = page.locator("#circuit-node-panel .gse-dense")
    expect(badge).to_have_count(1 if share > dense_at else 0)
    # On the plot, a dense feature is drawn as its own (paler) kind.
    trace = page.evaluate(TRACE_OF, top.node_id)
    want = "dense feature (on over 1% of tokens" if share > dense_at else "transcoder feature"
    assert str(trace).startswith(want)
    ui.shot("circuits-default-ablation")

    ui.open(f"?tab=dashboard&source=tc&layer={top.layer}&feature={top.feature}")
    ui.expect_tab("dashboard")
    expect(page.locator("#dash-header")).to_contain_text(f"L{top.layer} tc #{top.feature}")
    assert default_ctx.store is not None
    record = default_ctx.store.source("tc").feature(top.layer, top.feature)
    assert not record.dead and record.top_examples
    ui.shot("circuits-default-node-dashboard")
