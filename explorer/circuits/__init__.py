"""Attribution graphs ("why did the model say that?") by circuit-tracer's method.

A graph explains one next-token prediction through a *local replacement model*: each MLP is
replaced by its transcoder plus an error term fixed at the prompt's value, and attention patterns
and normalisation scales are frozen at the prompt's values. What remains is linear, so the direct
effect of every node (token embeddings, active transcoder features, error terms) on every later
node (features, the top logits) is exact, and one backward pass per target gives all its
incoming edges. Ameisen et al. 2025, "Circuit Tracing"; the reference implementation is
safety-research/circuit-tracer (our own code, same method and file format).

- :func:`attribute` builds the graph (bounded: ``max_feature_nodes``, batched, with progress and
  cancellation); :mod:`.linear` records the replacement model, :mod:`.attribution` the edges;
- :func:`prune` keeps the nodes and edges that carry most of the influence on the logits, and
  :func:`scores` gives the replacement and completeness scores (:mod:`.prune`);
- :func:`to_json` / :func:`from_json` write and read the graph file that circuit-tracer's viewer
  and Neuronpedia's graph pages read (:mod:`.files`);
- :func:`intervene` scales features and reports the new next-token distribution, with attention
  frozen and not (:mod:`.intervene`).

Importing this package is cheap: torch and transformer-lens load when a function runs.
"""

from __future__ import annotations

from explorer.circuits.attribution import AttributionCancelled, attribute
from explorer.circuits.files import GraphFile, GraphFileError, from_json, to_json
from explorer.circuits.graph import Graph, Node, Scores
from explorer.circuits.intervene import Intervention, intervene
from explorer.circuits.linear import TranscoderError
from explorer.circuits.prune import prune, scores

__all__ = [
    "AttributionCancelled",
    "Graph",
    "GraphFile",
    "GraphFileError",
    "Intervention",
    "Node",
    "Scores",
    "TranscoderError",
    "attribute",
    "from_json",
    "intervene",
    "prune",
    "scores",
    "to_json",
]
