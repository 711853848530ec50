"""The Circuits tab's handlers on the tiny Gemma 3 with random transcoders (no Gradio server):
curated graphs open without computing, computed ones are cached (bounded), bad input gets a
clear message, the threshold, pins and link round trip, and interventions against the graph's
prediction."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from circuits_app import CAPTION, CURATED_PROMPT
from helpers import serve

from explorer.app import Context, UserError, circuit_view, circuits, links
from explorer.app.circuits import Circuit
from explorer.circuits import attribute, from_json, intervene, prune, to_json
from explorer.circuits.library import GraphLibrary

PROMPT = "the quick fox jumped over the"


def _no_attribution(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []
    import explorer.circuits.cli as cli

    real = cli.build_graph

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[1].prompt)
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "build_graph", counted)
    return calls


def test_a_curated_graph_opens_from_its_file_without_computing(
    circuit_ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _no_attribution(monkeypatch)
    rows = circuits.curated_rows(circuit_ctx)
    assert rows == [[CURATED_PROMPT, "(top prediction)", CAPTION]]
    assert circuits.curated_entry(circuit_ctx, 0) == (CURATED_PROMPT, "")
    c = circuits.open_graph(circuit_ctx, CURATED_PROMPT, "")
    assert c.curated and c.caption == CAPTION and not calls
    assert c.target_id == c.top[0][0]  # the top prediction by default
    assert "shipped precomputed" in circuit_view.caption(c, 0.8)
    # The same graph computed now is the same file, up to its creation time.
    fresh = circuits.compute(circuit_ctx, CURATED_PROMPT, "", c.ids)
    for data in (fresh.data, c.data):
        data["metadata"]["info"].pop("create_time_ms")
    assert fresh.data["nodes"] == c.data["nodes"] and fresh.data["links"] == c.data["links"]


def test_computed_graphs_are_cached_in_a_bounded_lru(
    circuit_ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _no_attribution(monkeypatch)
    circuit_ctx.graphs = GraphLibrary(circuit_ctx.graphs.directory, max_cached=2)
    seen: list[tuple[int, int]] = []
    first = circuits.open_graph(circuit_ctx, PROMPT, "", lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1]  # progress reached the end
    assert circuits.open_graph(circuit_ctx, PROMPT, "") is first and len(calls) == 1
    target = first.top[3][1]
    other = circuits.open_graph(circuit_ctx, PROMPT, target)
    assert other.target_id == first.top[3][0] and other.target_token == target
    circuits.open_graph(circuit_ctx, "the dog ran", "")
    assert len(circuit_ctx.graphs) == 2
    circuits.open_graph(circuit_ctx, PROMPT, "")  # evicted: computed again
    assert calls == [PROMPT, PROMPT, "the dog ran", PROMPT]


@pytest.mark.parametrize(
    ("prompt", "target", "message"),
    [
        ("   ", "", "the prompt is empty"),
        ("the cat " * 20, "", f"at most {circuits.MAX_TOKENS}"),
        (PROMPT, "quick fox", "is 2 tokens"),
        (PROMPT, "zebra", "not in the model's vocabulary"),
    ],
)
def test_bad_input_gets_a_clear_message(
    circuit_ctx: Context, monkeypatch: pytest.MonkeyPatch, prompt: str, target: str, message: str
) -> None:
    calls = _no_attribution(monkeypatch)
    with pytest.raises(UserError, match=message):
        circuits.open_graph(circuit_ctx, prompt, target)
    assert not calls and not len(circuit_ctx.graphs)


def test_a_bundle_without_transcoders_says_what_is_missing(ctx: Context) -> None:
    assert circuits.missing(ctx) is None  # the tiny bundle has one on each of its 4 layers
    bare = replace(ctx.bundle.spec, transcoders=())
    ctx.bundle = replace(ctx.bundle, spec=bare)
    assert "has none" in (circuits.missing(ctx) or "")
    partial = replace(ctx.bundle.spec, transcoders=tuple(ctx.bundle.spec.saes))
    ctx.bundle = replace(ctx.bundle, spec=partial)
    assert circuits.missing(ctx) == (
        "Circuits needs a transcoder on every layer; bundle 'tiny' has none on layers 0, 3."
    )
    with pytest.raises(UserError, match="layers 0, 3"):
        circuits.open_graph(ctx, PROMPT, "")


def test_the_threshold_keeps_the_most_influential_nodes(circuit_ctx: Context) -> None:
    c = circuits.open_graph(circuit_ctx, CURATED_PROMPT, "")
    counts = [len(c.shown(t)) for t in (0.05, 0.3, 0.6, 0.8, 1.0)]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    tokens = {n.node_id for n in c.nodes.values() if n.kind in ("token", "logit")}
    assert tokens <= {n.node_id for n in c.shown(0.05)}
    fig = circuit_view.figure(c, 0.3)
    drawn = [i for t in fig.data if t.customdata is not None for i in t.customdata]
    assert sorted(drawn) == sorted(n.node_id for n in c.shown(0.3))
    for bad in (0, 1.5, "x"):
        with pytest.raises(UserError, match="node threshold"):
            circuits.check_threshold(bad)


def test_effects_are_the_graphs_all_path_effects(circuit_ctx: Context) -> None:
    """On a file that keeps every node and edge, a node's effect on the target is the graph's
    total effect (tests/test_circuits.py's ``total_effects``)."""
    from test_circuits import total_effects

    bundle = circuit_ctx.bundle
    c = circuits.open_graph(circuit_ctx, CURATED_PROMPT, "")
    tcs = [bundle.transcoder(n) for n in range(4)]
    graph = attribute(bundle.model, tcs, c.ids, max_n_logits=1, max_feature_nodes=None)
    whole = from_json(to_json(prune(graph, 1.0, 1.0), "all"))
    effects = circuits.effects_on(whole, next(n["node_id"] for n in whole.nodes if "logit" in
                                              n["feature_type"]))  # fmt: skip
    want = total_effects(graph)[graph.logit_start]
    for i in range(graph.n_features):
        layer, pos, feature = (int(v) for v in graph.features[i])
        got = effects.get(f"{layer}_{feature}_{pos}")
        if got is not None:
            assert got == pytest.approx(float(want[i]), abs=1e-4)


def test_pins_toggle_and_round_trip_through_a_link(circuit_ctx: Context) -> None:
    c = circuits.open_graph(circuit_ctx, CURATED_PROMPT, "")
    top = c.top_feature
    assert top is not None
    pins = circuits.toggle_pin(c, [], top.node_id)
    error = next(n for n in c.nodes.values() if n.kind == "error")
    pins = circuits.toggle_pin(c, pins, error.node_id)
    assert pins == [top.node_id, error.node_id]
    assert circuits.toggle_pin(c, pins, top.node_id) == [error.node_id]
    with pytest.raises(UserError, match="no node"):
        circuits.toggle_pin(c, pins, "99_1_1")
    view = circuits.view_record(c, pins, 0.6)
    query = links.circuit_query({**view, "target": " cat"})
    found = links.parse(parse_qsl(query[1:]))
    assert found.tab == "circuits" and found.prompt == CURATED_PROMPT and not found.problems
    assert found.circuit == {"target": " cat", "pins": pins, "threshold": 0.6}
    assert links.circuit_query(view) == (
        f"?tab=circuits&prompt={CURATED_PROMPT.replace(' ', '+')}&pins="
        + "%2C".join(pins)
        + "&threshold=0.6"
    )
    bad = links.parse([("tab", "circuits"), ("pins", "9_1_2,<b>"), ("threshold", "3")])
    assert bad.circuit == {"pins": ["9_1_2"]} and len(bad.problems) == 2
    kept, problems = circuits.parse_pins(c, ["9_1_2", top.node_id])
    assert kept == [top.node_id] and "'9_1_2' is not a node" in problems[0]


def test_an_ablation_moves_the_target_as_the_graph_predicts(circuit_ctx: Context) -> None:
    c = circuits.open_graph(circuit_ctx, CURATED_PROMPT, "")
    top = c.top_feature
    assert top is not None and top.effect != 0
    error = next(n for n in c.nodes.values() if n.kind == "error")
    out = circuits.intervention(circuit_ctx, c, [top.node_id, error.node_id], 0)
    assert out.left_out == [error.name] and out.predicted == pytest.approx(-top.effect)
    base, frozen, _ = out.result.watched[0]
    assert base == pytest.approx(c.top[0][2], abs=1e-5)
    assert (frozen - base) * out.predicted > 0  # the sign the graph predicts
    tcs = [circuit_ctx.bundle.transcoder(n) for n in range(4)]
    same = intervene(circuit_ctx.bundle.model, tcs, c.ids, [(top.layer, top.pos, top.feature)], 0)
    original, frozen_t, unfrozen_t = circuit_view.outcome_tables(out)
    assert len(original) == 10 and list(frozen_t.columns) == ["token", "p", "change"]
    assert list(frozen_t["p"]) == [round(p, 4) for _, _, p in same.frozen]
    assert list(unfrozen_t["p"]) == [round(p, 4) for _, _, p in same.unfrozen]
    line = circuit_view.outcome_line(c, out)
    assert "ablated" in line and ("goes down" in line or "goes up" in line)
    assert f"Not scaled (not features): {error.name}" in line
    with pytest.raises(UserError, match="pin one or more feature nodes"):
        circuits.intervention(circuit_ctx, c, [error.node_id], 0)
    with pytest.raises(UserError, match="scale"):
        circuits.intervention(circuit_ctx, c, [top.node_id], 11)


def test_the_panel_and_hover_are_escaped_text(circuit_ctx: Context) -> None:
    c = circuits.open_graph(circuit_ctx, CURATED_PROMPT, "")
    top = c.top_feature
    assert top is not None
    hostile = '<img src=x onerror="alert(1)">'
    html = circuit_view.panel(c, top, hostile)
    assert hostile not in html and "&lt;img" in html
    assert f"?tab=dashboard&amp;source=tc&amp;layer={top.layer}&amp;feature={top.feature}" in html
    assert f"L{top.layer} tc #{top.feature}" in html
    error = next(n for n in c.nodes.values() if n.kind == "error")
    assert "no dashboard" in circuit_view.panel(c, error) and "href" not in circuit_view.panel(
        c, error
    )
    token = next(n for n in c.nodes.values() if n.kind == "token")
    assert "no dashboard" in circuit_view.panel(c, token)
    fig = circuit_view.figure(c, 0.8, selected=top.node_id, labels={top.node_id: hostile})
    texts = [t for trace in fig.data if trace.text is not None for t in trace.text]
    assert not any("<img" in t for t in texts) and any("&lt;img" in t for t in texts)


def test_the_panel_says_how_often_a_feature_fires_and_flags_a_dense_one(
    circuit_ctx: Context,
) -> None:
    from explorer.store.schema import TRANSCODER

    c = circuits.open_graph(circuit_ctx, CURATED_PROMPT, "")
    top = c.top_feature
    assert top is not None
    found = circuits.feature_density(circuit_ctx, top)
    assert found is not None
    share, dense_at = found
    assert share == float(circuit_ctx.densities(TRANSCODER)[top.layer][top.feature])
    assert dense_at == circuit_ctx.dense_threshold
    rare = circuit_view.panel(c, top, "", (0.004, 0.01))
    assert "fires on 0.4% of the corpus's tokens" in rare and "dense" not in rare
    common = circuit_view.panel(c, top, "", (0.2, 0.01))
    assert "fires on 20% of" in common and "gse-dense" in common
    assert "almost everywhere" not in common
    always = circuit_view.panel(c, top, "", (1.0, 0.01))
    assert "more than 1% of tokens, almost everywhere" in always
    error = next(n for n in c.nodes.values() if n.kind == "error")
    assert circuits.feature_density(circuit_ctx, error) is None
    assert "fires on" not in circuit_view.panel(c, error, "", None)


def test_dense_feature_nodes_are_drawn_as_their_own_kind(circuit_ctx: Context) -> None:
    c = circuits.open_graph(circuit_ctx, CURATED_PROMPT, "")
    features = [n for n in c.shown(1.0) if n.kind == "feature"]
    assert len(features) >= 2
    want = {n.node_id for n in features if (f := circuits.feature_density(circuit_ctx, n))
            and f[0] > f[1]}  # fmt: skip
    assert circuits.dense_nodes(circuit_ctx, c) == want
    dense = {features[0].node_id}
    fig = circuit_view.figure(c, 1.0, dense=dense)
    by_name = {t.name: list(t.customdata) for t in fig.data if t.customdata is not None}
    assert by_name["dense feature (on over 1% of tokens: bias-like)"] == [features[0].node_id]
    assert features[0].node_id not in by_name[circuit_view.KIND_NAMES["feature"]]
    assert features[1].node_id in by_name[circuit_view.KIND_NAMES["feature"]]
    plain = circuit_view.figure(c, 1.0)
    assert not any(str(t.name).startswith("dense") for t in plain.data)
    n = len(features)
    assert f"{n} features (1 of them dense) and" in circuit_view.caption(c, 1.0, dense)
    assert f"{n} features and" in circuit_view.caption(c, 1.0)


def test_the_download_is_the_graph_file(circuit_ctx: Context) -> None:
    c: Circuit = circuits.open_graph(circuit_ctx, CURATED_PROMPT, "")
    path = circuits.download(c)
    assert path.name == f"{c.slug}.json" and circuits.download(c) == path  # written once
    back = from_json(path)
    assert back.metadata["prompt"] == CURATED_PROMPT and back.nodes == c.file.nodes
    assert json.loads(path.read_text())["links"] == c.data["links"]


def test_curated_graphs_of_another_preset_are_refused_and_not_listed(
    circuit_ctx: Context, tmp_path: Path
) -> None:
    from explorer.bundle import BundleError
    from explorer.circuits.cli import write_curated

    index = {"preset": "default", "graphs": [{"slug": "x", "prompt": "the cat", "target": None,
                                               "caption": "c"}]}  # fmt: skip
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(BundleError, match="preset 'default', not 'tiny'"):
        write_curated(circuit_ctx.bundle, tmp_path)
    assert GraphLibrary(tmp_path).curated("tiny") == []


@pytest.fixture
def circuit_served(circuit_ctx: Context) -> Iterator[str]:
    yield from serve(circuit_ctx)


def test_a_graph_over_http_is_computed_with_progress(
    circuit_served: str, circuit_ctx: Context
) -> None:
    from gradio_client import Client

    client = Client(circuit_served, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    params = [p["parameter_name"] for p in api["/circuit"]["parameters"]]
    assert params == ["prompt", "target", "node_threshold"]
    job = client.submit(PROMPT, "", 0.5, api_name="/circuit")
    out = job.result()
    assert "graph computed here" in out[1] and len(circuit_ctx.graphs) == 1
    with pytest.raises(Exception, match="the prompt is empty"):
        client.predict("  ", "", 0.5, api_name="/circuit")


def test_a_link_fills_the_tab_or_says_what_is_missing(circuit_ctx: Context, ctx: Context) -> None:
    from explorer.app import address

    query = "?tab=circuits&prompt=the+dog+ran&target=cat&pins=1_2_3&threshold=0.4"
    found = links.parse(parse_qsl(query[1:]))
    assert address._tab(found) == "circuits"
    prompt, target, threshold, view = address._circuit_values(circuit_ctx, found, "circuits")
    assert (prompt, target.value, threshold) == ("the dog ran", "cat", 0.4)
    assert view == {"prompt": "the dog ran", "target": "cat", "pins": ["1_2_3"], "threshold": 0.4}
    # The prompt is the graph's, not the Steering tab's.
    assert address._steer_values(circuit_ctx, found, "circuits")[0] is not found.prompt
    ctx.bundle = replace(ctx.bundle, spec=replace(ctx.bundle.spec, transcoders=()))
    address._circuit_values(ctx, found, "circuits")  # no transcoders: said, nothing filled
    assert found.problems == [circuits.missing(ctx)] and found.problems[0]


def test_steer_with_these_takes_the_pinned_features_once_each(circuit_ctx: Context) -> None:
    c = circuits.open_graph(circuit_ctx, CURATED_PROMPT, "")
    features = [n for n in c.nodes.values() if n.kind == "feature"]
    tokens = [n for n in c.nodes.values() if n.kind == "token"]
    a = features[0]
    twin = next((n for n in features if (n.layer, n.feature) == (a.layer, a.feature) and n != a), a)
    b = next(n for n in features if (n.layer, n.feature) != (a.layer, a.feature))
    pins = [a.node_id, tokens[0].node_id, twin.node_id, b.node_id]
    assert circuits.steer_features(c, pins) == [(a.layer, a.feature), (b.layer, b.feature)]
    with pytest.raises(UserError, match="pin one or more feature nodes"):
        circuits.steer_features(c, [tokens[0].node_id])
    with pytest.raises(UserError, match="draw a graph"):
        circuits.steer_features(None, [a.node_id])
