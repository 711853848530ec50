"""The graph file that circuit-tracer's viewer and Neuronpedia's graph pages read, and a reader.

The format is circuit-tracer's (``frontend/graph_models.py``, written by
``utils/create_graph_files.py``), which Neuronpedia's ``graph-schema.json`` also describes:

- ``metadata``: ``slug``, ``scan`` (Neuronpedia reads it as the model id), ``transcoder_list``,
  ``prompt_tokens`` (newlines, tabs and carriage returns shown as ⏎ → ↵), ``prompt``,
  ``node_threshold``, ``schema_version``; we add ``info.generator``, ``generation_settings``,
  ``pruning_settings`` (all in Neuronpedia's schema) and ``scores``;
- ``qParams``: the viewer's saved state: ``pinnedIds``, ``supernodes``, ``linkType``,
  ``clickedId``, ``sg_pos``;
- ``nodes``: the pruned graph's nodes (features and errors only when an edge still touches
  them; every token and logit): ``node_id``, ``feature``, ``layer`` (a string: ``"E"`` for
  tokens, ``n_layers + 1`` for logits), ``ctx_idx``, ``feature_type``, ``token_prob``,
  ``is_target_logit``, ``run_idx``, ``reverse_ctx_idx``, ``jsNodeId``, ``clerp`` (the label),
  ``influence``, ``activation``;
- ``links``: the kept edges, ``source`` / ``target`` node ids and ``weight``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from explorer import __version__
from explorer.circuits.graph import Graph

Label = Callable[[int, int], str | None]
"""``label(layer, feature)``: the text shown for a feature node (its ``clerp``), or None."""

FEATURE_TYPES = {
    "feature": "cross layer transcoder",
    "error": "mlp reconstruction error",
    "token": "embedding",
    "logit": "logit",
}


class GraphFileError(ValueError):
    """A graph file that does not have the expected fields."""


def shown(token: str) -> str:
    """A token as the viewer shows it (circuit-tracer's ``process_token``)."""
    return token.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def cantor(x: int, y: int) -> int:
    """One integer for a (layer, feature) pair, as circuit-tracer numbers features."""
    return (x + y) * (x + y + 1) // 2 + y


def _node(graph: Graph, index: int, label: Label | None) -> dict[str, Any]:
    kind, layer, pos, feature = graph.node(index)
    influence = None if graph.influence is None else float(graph.influence[index])
    node: dict[str, Any] = {
        "feature_type": FEATURE_TYPES[kind],
        "ctx_idx": pos,
        "token_prob": 0.0,
        "is_target_logit": False,
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "clerp": "",
        "influence": influence,
        "activation": None,
    }
    if kind == "feature":
        node_id = f"{layer}_{feature}_{pos}"
        text = label(layer, feature) if label is not None else None
        activation = float(graph.activations[index])
        node.update(
            feature=cantor(layer, feature), layer=str(layer), jsNodeId=f"{layer}_{feature}-0"
        )
        node.update(clerp=text or "", activation=activation)
    elif kind == "error":
        node_id = f"{layer}_-1_{pos}"
        node.update(feature=-1, layer=str(layer), jsNodeId=f"{layer}_-1-{pos}")
    elif kind == "token":
        node_id = f"E_{feature}_{pos}"
        node.update(feature=pos, layer="E", jsNodeId=f"E_{feature}-{pos}")
    else:
        k = index - graph.logit_start
        prob = float(graph.logit_probs[k])
        node_id = f"{graph.n_layers + 1}_{feature}_{pos}"
        node.update(feature=feature, layer=str(graph.n_layers + 1), jsNodeId=f"L_{feature}-{pos}")
        node.update(token_prob=prob, is_target_logit=k == 0, influence=None)
        node["clerp"] = f'Output "{shown(graph.logit_tokens[k])}" (p={prob:.3f})'
    return {"node_id": node_id, **node}


def to_json(
    graph: Graph,
    slug: str,
    *,
    label: Label | None = None,
    path: Path | None = None,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> dict[str, Any]:
    """The graph file as a dict (written to ``path`` when given). An unpruned graph is pruned
    with the thresholds first; ``label`` supplies feature labels (``clerp``)."""
    from explorer.circuits.prune import prune

    if graph.node_mask is None or graph.edge_mask is None:
        graph = prune(graph, node_threshold, edge_threshold)
    assert graph.node_mask is not None and graph.edge_mask is not None
    kept = graph.node_mask.nonzero(as_tuple=True)[0].tolist()
    nodes = {i: _node(graph, i, label) for i in kept}
    targets, sources = graph.edge_mask.nonzero(as_tuple=True)
    weights = graph.adjacency[targets, sources].tolist()
    links = [
        {"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": w}
        for t, s, w in zip(targets.tolist(), sources.tolist(), weights, strict=True)
        if s in nodes and t in nodes
    ]
    linked = {link["source"] for link in links} | {link["target"] for link in links}
    always = (FEATURE_TYPES["token"], FEATURE_TYPES["logit"])
    settings = dict(graph.settings)
    data = {
        "metadata": {
            "slug": slug,
            "scan": graph.scan,
            "transcoder_list": [],
            "prompt_tokens": [shown(t) for t in graph.prompt_tokens],
            "prompt": graph.prompt,
            "node_threshold": settings.get("node_threshold", node_threshold),
            "schema_version": 1,
            "info": {
                "generator": {"name": "gemma-scope-explorer", "version": __version__},
                "create_time_ms": int(time.time() * 1000),
            },
            "generation_settings": {
                k: settings[k]
                for k in ("max_n_logits", "desired_logit_prob", "batch_size", "max_feature_nodes")
                if k in settings
            },
            "pruning_settings": {
                "node_threshold": settings.get("node_threshold", node_threshold),
                "edge_threshold": settings.get("edge_threshold", edge_threshold),
            },
            "scores": None if graph.scores is None else graph.scores._asdict(),
        },
        "qParams": {
            "pinnedIds": [],
            "supernodes": [],
            "linkType": "both",
            "clickedId": "",
            "sg_pos": "",
        },
        "nodes": [
            n for n in nodes.values() if n["node_id"] in linked or n["feature_type"] in always
        ],
        "links": links,
    }
    if path is not None:
        from explorer.files import atomic_writer

        with atomic_writer(path) as f:
            f.write(json.dumps(data).encode())
    return data


@dataclass(frozen=True)
class GraphFile:
    """A graph file read back: its four parts, checked (nodes and links as dicts)."""

    metadata: dict[str, Any]
    q_params: dict[str, Any]
    nodes: list[dict[str, Any]]
    links: list[dict[str, Any]]

    def node(self, node_id: str) -> dict[str, Any]:
        for n in self.nodes:
            if n["node_id"] == node_id:
                return n
        raise KeyError(node_id)


_NODE_FIELDS: dict[str, tuple[type, ...]] = {
    "node_id": (str,),
    "feature": (int, type(None)),
    "layer": (str, int),
    "ctx_idx": (int,),
    "feature_type": (str,),
    "jsNodeId": (str,),
}
_NODE_DEFAULTS = {
    "token_prob": 0.0,
    "is_target_logit": False,
    "run_idx": 0,
    "reverse_ctx_idx": 0,
    "clerp": "",
    "influence": None,
    "activation": None,
}


def from_json(source: Path | str | Mapping[str, Any]) -> GraphFile:
    """Read a graph file (a path, JSON text or the parsed dict); :class:`GraphFileError` names
    the first field that is missing or of the wrong type. Optional node fields get their
    defaults (circuit-tracer's)."""
    if isinstance(source, Mapping):
        data: Any = dict(source)
    else:
        text = source.read_text() if isinstance(source, Path) else source
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GraphFileError(f"not JSON: {e}") from e
    if not isinstance(data, dict):
        raise GraphFileError("a graph file is a JSON object")
    for part in ("metadata", "qParams", "nodes", "links"):
        if part not in data:
            raise GraphFileError(f"missing {part!r}")
    meta = data["metadata"]
    for key, kind in (("slug", str), ("scan", str), ("prompt", str), ("prompt_tokens", list)):
        if not isinstance(meta.get(key), kind):
            raise GraphFileError(f"metadata.{key} must be a {kind.__name__}")
    nodes = []
    for i, raw in enumerate(data["nodes"]):
        for key, kinds in _NODE_FIELDS.items():
            value = raw.get(key)
            if key not in raw or isinstance(value, bool) or not isinstance(value, kinds):
                raise GraphFileError(f"nodes[{i}].{key} is missing or not {kinds[0].__name__}")
        nodes.append({**_NODE_DEFAULTS, **raw})
    ids = {n["node_id"] for n in nodes}
    links = []
    for i, raw in enumerate(data["links"]):
        if raw.get("source") not in ids or raw.get("target") not in ids:
            raise GraphFileError(f"links[{i}] joins a node that is not in the file")
        if not isinstance(raw.get("weight"), int | float):
            raise GraphFileError(f"links[{i}].weight must be a number")
        links.append(dict(raw))
    return GraphFile(metadata=dict(meta), q_params=dict(data["qParams"]), nodes=nodes, links=links)
