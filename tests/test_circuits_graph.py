"""Attribution graphs after attribution: circuit-tracer's scores and pruning, checked by hand and
with matrix inverses, and the graph file (the fields and types circuit-tracer's viewer and
Neuronpedia's graph pages read, written down here in our words)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from circuits_helpers import make_transcoders

from explorer.circuits import Graph, GraphFileError, attribute, from_json, prune, scores, to_json
from explorer.circuits.files import cantor
from explorer.circuits.prune import threshold_masks


def hand_graph() -> Graph:
    """One layer, one position: feature F (node 0), error E (1), token T (2), logit L (3).
    L <- F: 3, L <- E: -1, F <- T: 2."""
    a = torch.zeros(4, 4)
    a[3, 0], a[3, 1], a[0, 2] = 3.0, -1.0, 2.0
    return Graph(
        prompt_ids=[7],
        prompt_tokens=["x"],
        features=torch.tensor([[0, 0, 5]]),
        activations=torch.tensor([2.0]),
        logit_ids=[9],
        logit_tokens=["y"],
        logit_probs=torch.tensor([1.0]),
        adjacency=a,
        n_layers=1,
        n_active=1,
    )


def test_scores_by_hand() -> None:
    """Normalised |edges|: L gets 3/4 from F and 1/4 from E; F gets all from T. Influence: F 3/4,
    E 1/4, T 3/4. Replacement: T / (T + E) = 3/4. Completeness: non-error share of each node's
    inputs (F 1, E 1, T 1, L 3/4) weighted by influence + logit weight (3/4, 1/4, 3/4, 1)."""
    got = scores(hand_graph())
    assert got.replacement == pytest.approx(0.75)
    assert got.completeness == pytest.approx((0.75 + 0.25 + 0.75 + 0.75) / 2.75)


def test_node_and_edge_indexing() -> None:
    g = hand_graph()
    assert [g.node(i).kind for i in range(4)] == ["feature", "error", "token", "logit"]
    assert g.node(0) == ("feature", 0, 0, 5) and g.node(3) == ("logit", 1, 0, 9)
    assert g.feature_index(0, 0, 5) == 0 and g.error_index(0, 0) == 1 and g.token_index(0) == 2
    with pytest.raises(KeyError):
        g.feature_index(0, 0, 6)


@pytest.fixture(scope="module")
def graph(gemma3_hf, tokenizer, tmp_path_factory) -> Graph:
    from explorer.hooked import hooked_from_hf

    model = hooked_from_hf(gemma3_hf, tokenizer)
    tcs = make_transcoders(tmp_path_factory.mktemp("tc"), d_model=32, n_layers=4)
    ids = torch.tensor([tokenizer.bos_token_id, *tokenizer("the cat sat on the mat")["input_ids"]])
    return attribute(model, tcs, ids, max_feature_nodes=None, scan="tiny-gemma3")


def exact_influence(adjacency: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``w @ ((I - A)^-1 - I)`` with ``A`` the row-normalised |adjacency|."""
    a = adjacency.abs().double()
    a = a / a.sum(1, keepdim=True).clamp(min=1e-10)
    eye = torch.eye(len(a), dtype=torch.float64)
    return weights.double() @ (torch.linalg.inv(eye - a) - eye)


def test_scores_of_a_real_graph_are_shares(graph) -> None:
    assert graph.scores is not None
    assert 0 < graph.scores.replacement < 1 and 0 < graph.scores.completeness < 1
    infl = exact_influence(graph.adjacency, graph.logit_weights())
    errors = infl[graph.error_start : graph.token_start].sum()
    tokens = infl[graph.token_start : graph.logit_start].sum()
    assert graph.scores.replacement == pytest.approx(float(tokens / (tokens + errors)), rel=1e-4)


@pytest.mark.parametrize(("node_threshold", "edge_threshold"), [(0.8, 0.98), (0.5, 0.9)])
def test_pruning_keeps_the_thresholds_share_of_influence(
    graph, node_threshold, edge_threshold
) -> None:
    nodes, edges, _ = threshold_masks(graph, node_threshold, edge_threshold)
    w = graph.logit_weights()
    infl = exact_influence(graph.adjacency, w)
    assert float(infl[nodes].sum()) >= node_threshold * float(infl.sum()) - 1e-6
    assert nodes.sum() < graph.n_nodes  # it did prune
    kept = graph.adjacency.clone()
    kept[~nodes] = 0
    kept[:, ~nodes] = 0
    a = kept.abs().double()
    a = a / a.sum(1, keepdim=True).clamp(min=1e-10)
    edge_scores = a * (exact_influence(kept, w) + w.double())[:, None]
    assert float(edge_scores[edges].sum()) >= edge_threshold * float(edge_scores.sum()) - 1e-6
    assert edges.sum() < (edge_scores > 0).sum()


def test_pruned_graph_is_connected(graph) -> None:
    pruned = prune(graph)
    nodes, edges = pruned.node_mask, pruned.edge_mask
    assert nodes is not None and edges is not None and pruned.influence is not None
    first_nodes, _, _ = threshold_masks(graph, 0.8, 0.98)
    assert not (nodes & ~first_nodes).any()
    assert nodes[graph.token_start :].all()  # tokens and logits stay
    assert not edges[~nodes].any() and not edges[:, ~nodes].any()
    inner = torch.arange(graph.token_start)
    kept_inner = inner[nodes[: graph.token_start]]
    assert edges[:, kept_inner].any(0).all()  # every kept feature or error feeds something
    kept_features = torch.arange(graph.n_features)[nodes[: graph.n_features]]
    assert len(kept_features) > 0 and edges[kept_features].any(1).all()
    assert pruned.adjacency is graph.adjacency


def test_thresholds_must_be_shares(graph) -> None:
    with pytest.raises(ValueError, match="thresholds"):
        prune(graph, node_threshold=1.5)


# The graph file, in our words. circuit-tracer writes it from pydantic models
# (frontend/graph_models.py); Neuronpedia's graph-schema.json describes the same file.
METADATA_FIELDS: dict[str, Any] = {
    "slug": str,  # the graph's name, also its file name
    "scan": str,  # model + transcoder set; Neuronpedia reads it as the model id
    "transcoder_list": list,  # transcoder ids when not a known scan (empty here)
    "prompt_tokens": list,  # token texts, with ⏎ → ↵ for newline, tab, carriage return
    "prompt": str,
    "node_threshold": float,  # the viewer's default pruning threshold
    "schema_version": int,
}
Q_PARAMS: dict[str, Any] = {
    # The viewer's saved state. circuit-tracer writes these five; Neuronpedia's schema lists the
    # same. ("sparsityThreshold" is in neither and we do not write it.)
    "pinnedIds": list,  # pinned node ids (subgraph)
    "supernodes": list,  # [[name, node_id, ...], ...]
    "linkType": str,  # "both": show incoming and outgoing links of the clicked node
    "clickedId": str,
    "sg_pos": str,  # subgraph layout
}
NODE_FIELDS: dict[str, Any] = {
    "node_id": str,  # feature "{layer}_{feature}_{pos}", error "{layer}_-1_{pos}",
    # token "E_{vocab id}_{pos}", logit "{n_layers + 1}_{vocab id}_{pos}"
    "feature": int,  # feature: cantor(layer, feature); error -1; token pos; logit vocab id
    "layer": str,  # layer as text; "E" for tokens; n_layers + 1 for logits
    "ctx_idx": int,  # position
    "feature_type": str,  # "cross layer transcoder", "mlp reconstruction error",
    # "embedding", "logit"
    "token_prob": float,  # logits: probability; others 0.0
    "is_target_logit": bool,  # the first (most probable) logit
    "run_idx": int,  # 0
    "reverse_ctx_idx": int,  # 0
    "jsNodeId": str,  # the viewer's id: feature "{layer}_{feature}-0", error
    # "{layer}_-1-{pos}", token "E_{vocab id}-{pos}", logit "L_{vocab id}-{pos}"
    "clerp": str,  # the label shown; logits: 'Output "tok" (p=0.123)'
    "influence": (float, type(None)),  # cumulative influence (pruning order); None for logits
    "activation": (float, type(None)),  # features only
}
LINK_FIELDS: dict[str, Any] = {"source": str, "target": str, "weight": float}


def typed(value: Any, kind: Any) -> bool:
    if kind is float:
        return isinstance(value, float | int) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def test_graph_file_has_the_viewers_fields_and_types(graph, tmp_path: Path) -> None:
    labels = {(1, int(graph.features[graph.features[:, 0] == 1][0, 2])): "cats and dogs"}
    data = to_json(
        graph, "tiny-cat", label=lambda layer, f: labels.get((layer, f)), path=tmp_path / "g.json"
    )
    assert json.loads((tmp_path / "g.json").read_text()) == data
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    for key, kind in METADATA_FIELDS.items():
        assert typed(data["metadata"][key], kind), key
    assert data["metadata"]["slug"] == "tiny-cat" and data["metadata"]["scan"] == "tiny-gemma3"
    assert data["metadata"]["prompt_tokens"] == graph.prompt_tokens
    assert data["metadata"]["scores"] == graph.scores._asdict()
    assert {k: type(v) for k, v in data["qParams"].items()} == Q_PARAMS
    for node in data["nodes"]:
        assert set(node) == set(NODE_FIELDS), node
        for key, kind in NODE_FIELDS.items():
            assert typed(node[key], kind), (key, node)
    for link in data["links"]:
        assert set(link) == set(LINK_FIELDS)
        assert all(typed(link[k], kind) for k, kind in LINK_FIELDS.items())
    ids = [n["node_id"] for n in data["nodes"]]
    assert len(set(ids)) == len(ids) and len({n["jsNodeId"] for n in data["nodes"]}) <= len(ids)
    assert {(link["source"], link["target"]) for link in data["links"]} <= {
        (s, t) for s in ids for t in ids
    }


def test_graph_file_holds_the_pruned_graph(graph) -> None:
    pruned = prune(graph)
    data = to_json(pruned, "tiny-cat")
    by_id = {n["node_id"]: n for n in data["nodes"]}
    kinds = [n["feature_type"] for n in data["nodes"]]
    assert kinds.count("embedding") == graph.n_pos and kinds.count("logit") == graph.n_logits
    assert 0 < kinds.count("cross layer transcoder") < graph.n_features
    index_of = {}
    for i in pruned.node_mask.nonzero().flatten().tolist():  # type: ignore[union-attr]
        kind, layer, pos, feature = graph.node(i)
        node_id = {
            "feature": f"{layer}_{feature}_{pos}",
            "error": f"{layer}_-1_{pos}",
            "token": f"E_{feature}_{pos}",
            "logit": f"{graph.n_layers + 1}_{feature}_{pos}",
        }[kind]
        index_of[node_id] = i
    assert set(by_id) <= set(index_of)
    assert len(data["links"]) == int(pruned.edge_mask.sum())  # type: ignore[union-attr]
    for link in data["links"]:
        expected = graph.adjacency[index_of[link["target"]], index_of[link["source"]]]
        assert link["weight"] == pytest.approx(float(expected))
    logits = [n for n in data["nodes"] if n["feature_type"] == "logit"]
    assert [n["is_target_logit"] for n in logits] == [True] + [False] * (len(logits) - 1)
    assert [n["token_prob"] for n in logits] == pytest.approx(graph.logit_probs.tolist())
    assert (
        logits[0]["clerp"]
        == f'Output "{graph.logit_tokens[0]}" (p={float(graph.logit_probs[0]):.3f})'
    )
    feature = next(n for n in data["nodes"] if n["feature_type"] == "cross layer transcoder")
    layer, feat, pos = (int(v) for v in feature["node_id"].split("_"))
    assert feature["feature"] == cantor(layer, feat) and feature["jsNodeId"] == f"{layer}_{feat}-0"
    assert feature["activation"] == pytest.approx(
        float(graph.activations[graph.feature_index(layer, pos, feat)])
    )


def test_labels_are_the_feature_nodes_clerp(graph) -> None:
    data = to_json(graph, "s", label=lambda layer, f: f"L{layer}/F{f}")
    for n in data["nodes"]:
        if n["feature_type"] == "cross layer transcoder":
            layer, feat, _ = n["node_id"].split("_")
            assert n["clerp"] == f"L{layer}/F{feat}"
        elif n["feature_type"] != "logit":
            assert n["clerp"] == ""


def test_reader_loads_a_written_file_back(graph, tmp_path: Path) -> None:
    data = to_json(graph, "tiny-cat", path=tmp_path / "g.json")
    back = from_json(tmp_path / "g.json")
    assert back.metadata == data["metadata"] and back.q_params == data["qParams"]
    assert back.nodes == data["nodes"] and back.links == data["links"]
    assert from_json(json.dumps(data)).nodes == back.nodes
    some = data["nodes"][0]
    assert back.node(some["node_id"]) == some


def test_reader_fills_optional_fields_and_rejects_broken_files(graph) -> None:
    data = to_json(graph, "s")
    minimal = json.loads(json.dumps(data))
    for n in minimal["nodes"]:
        for key in (
            "token_prob",
            "is_target_logit",
            "run_idx",
            "reverse_ctx_idx",
            "influence",
            "activation",
        ):
            del n[key]
    assert from_json(minimal).nodes[0]["run_idx"] == 0
    broken = json.loads(json.dumps(data))
    del broken["nodes"][0]["ctx_idx"]
    with pytest.raises(GraphFileError, match=r"nodes\[0\]\.ctx_idx"):
        from_json(broken)
    dangling = json.loads(json.dumps(data))
    dangling["links"].append(
        {"source": "nope", "target": data["nodes"][0]["node_id"], "weight": 1.0}
    )
    with pytest.raises(GraphFileError, match="not in the file"):
        from_json(dangling)
    with pytest.raises(GraphFileError, match="qParams"):
        from_json({k: v for k, v in data.items() if k != "qParams"})
    with pytest.raises(GraphFileError, match="not JSON"):
        from_json("{")
