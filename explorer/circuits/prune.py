"""Pruning by influence on the logits, and the graph's scores (circuit-tracer's ``graph.py``).

**Influence.** Normalise the absolute adjacency so that each node's incoming edges sum to 1
(``A``). A logit's weight is its probability; the influence of a node is the weight that reaches
it when pushed back along all paths: ``w @ (A + A^2 + A^3 + ...)`` (finite: the graph has no
cycles).

**Pruning** (defaults 0.8 / 0.98): keep the most influential nodes until they hold
``node_threshold`` of the total (tokens and logits always stay); recompute influence on the graph
of those, score each edge as its normalised weight times its target's influence (plus the target's
own logit weight), keep the best edges until they hold ``edge_threshold`` of the total score; then
drop feature and error nodes left without outgoing edges and features without incoming ones,
repeatedly, until nothing changes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from explorer.circuits.graph import Graph, Scores

if TYPE_CHECKING:
    from torch import Tensor

NODE_THRESHOLD = 0.8
EDGE_THRESHOLD = 0.98


def normalized(adjacency: Tensor) -> Tensor:
    """``|A|`` with each row (a target's incoming edges) scaled to sum 1 (zero rows stay 0)."""
    a = adjacency.abs()
    return a / a.sum(dim=1, keepdim=True).clamp(min=1e-10)


def influence(a: Tensor, weights: Tensor, max_iter: int = 10_000) -> Tensor:
    """``weights @ (a + a^2 + ...)``: what reaches each node from ``weights`` along ``a``."""
    frontier = weights @ a
    total = frontier.clone()
    for _ in range(max_iter):
        if not frontier.any():
            return total
        frontier = frontier @ a
        total += frontier
    raise RuntimeError(f"influence did not converge in {max_iter} steps (a cycle?)")


def node_influence(graph: Graph) -> Tensor:
    """Each node's influence on the logits (circuit-tracer's ``compute_node_influence``)."""
    return influence(normalized(graph.adjacency), graph.logit_weights())


def threshold_of(scores: Tensor, share: float) -> float:
    """The smallest score among the fewest top scores that hold ``share`` of their sum."""
    import torch

    ordered = scores.flatten().sort(descending=True).values
    cumulative = ordered.cumsum(0) / ordered.sum().clamp(min=1e-30)
    at = min(
        int(torch.searchsorted(cumulative, torch.tensor(share, dtype=cumulative.dtype))),
        len(ordered) - 1,
    )
    return float(ordered[at])


def threshold_masks(
    graph: Graph, node_threshold: float, edge_threshold: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(node_mask, edge_mask, node_influence)`` from the thresholds alone, before the dangling
    nodes are removed."""
    if not (0.0 <= node_threshold <= 1.0 and 0.0 <= edge_threshold <= 1.0):
        raise ValueError("thresholds must lie in [0, 1]")
    weights = graph.logit_weights()
    infl = node_influence(graph)
    nodes = infl >= threshold_of(infl, node_threshold)
    nodes[graph.token_start :] = True
    kept = graph.adjacency.clone()
    kept[~nodes] = 0
    kept[:, ~nodes] = 0
    a = normalized(kept)
    edge_scores = a * (influence(a, weights) + weights)[:, None]
    edges = edge_scores >= threshold_of(edge_scores, edge_threshold)
    return nodes, edges & (edge_scores > 0), infl


def prune(
    graph: Graph, node_threshold: float = NODE_THRESHOLD, edge_threshold: float = EDGE_THRESHOLD
) -> Graph:
    """``graph`` with ``node_mask``, ``edge_mask`` and ``influence`` set (the adjacency is kept
    whole; the file writer writes only what the masks keep)."""
    import torch

    nodes, edges, infl = threshold_masks(graph, node_threshold, edge_threshold)
    inner = graph.token_start  # features and errors: must feed something kept
    while True:
        before = nodes.clone()
        edges[~nodes] = False
        edges[:, ~nodes] = False
        nodes[:inner] &= edges[:, :inner].any(0)
        nodes[: graph.n_features] &= edges[: graph.n_features].any(1)
        if torch.equal(nodes, before):
            break
    order = infl.argsort(descending=True)
    cumulative = torch.zeros_like(infl)
    cumulative[order] = infl[order].cumsum(0) / infl.sum().clamp(min=1e-30)
    return replace(
        graph,
        node_mask=nodes,
        edge_mask=edges,
        influence=cumulative,
        settings={
            **graph.settings,
            "node_threshold": node_threshold,
            "edge_threshold": edge_threshold,
        },
    )


def scores(graph: Graph) -> Scores:
    """Replacement and completeness scores of the (unpruned) graph; see :class:`Scores`."""
    weights = graph.logit_weights()
    a = normalized(graph.adjacency)
    infl = influence(a, weights)
    errors = slice(graph.error_start, graph.token_start)
    tokens = slice(graph.token_start, graph.logit_start)
    from_tokens, from_errors = float(infl[tokens].sum()), float(infl[errors].sum())
    replacement = from_tokens / max(from_tokens + from_errors, 1e-30)
    non_error = 1 - a[:, errors].sum(dim=1)
    out = infl + weights
    completeness = float((non_error * out).sum() / out.sum())
    return Scores(replacement=replacement, completeness=completeness)
