"""The attribution graph: its nodes, in a fixed order, and one dense matrix of direct effects.

Nodes come in four kinds, always in this order (circuit-tracer's, so that its pruning and file
format carry over unchanged):

1. **features**: active transcoder features, ``(layer, position, feature index)``, sorted;
2. **errors**: one per ``(layer, position)``, layer-major (``layer * n_pos + position``): what
   the transcoder misses of that MLP's output on this prompt;
3. **tokens**: the input embeddings, one per position;
4. **logits**: the attributed next-token logits at the last position.

``adjacency[target, source]`` is the direct effect of ``source`` on ``target`` in the local
replacement model (see :mod:`explorer.circuits.attribution`): for a feature target, the part of
its pre-activation that ``source`` writes; for a logit target, the part of
``logit - mean(logits)``. Rows of error and token nodes are zero (nothing is attributed to them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:
    from torch import Tensor

NodeKind = Literal["feature", "error", "token", "logit"]


class Node(NamedTuple):
    """One node, decoded from its index: ``feature`` is the transcoder feature (features), the
    vocabulary id (tokens, logits) or -1 (errors)."""

    kind: NodeKind
    layer: int
    pos: int
    feature: int


class Scores(NamedTuple):
    """circuit-tracer's two graph scores (``graph.py``, ``compute_graph_scores``).

    ``replacement``: of the influence on the logits that reaches the inputs, the share that
    starts at token nodes rather than error nodes. ``completeness``: over all nodes, weighted by
    their influence on the logits (plus the logits' own weight), the share of incoming edge mass
    that comes from non-error nodes. Both are 1.0 for a perfect replacement model.
    """

    replacement: float
    completeness: float


@dataclass(frozen=True)
class Graph:
    """An attribution graph for one prompt.

    Args:
        prompt_ids: the prompt's token ids (position 0 is BOS).
        prompt_tokens: the same, as text.
        features: ``[n_features, 3]`` long: ``(layer, position, feature)`` of each feature node.
        activations: ``[n_features]`` their activations on the prompt.
        logit_ids: vocabulary ids of the logit nodes, most probable first.
        logit_tokens: the same, as text.
        logit_probs: ``[n_logits]`` their probabilities under the real model.
        adjacency: ``[n_nodes, n_nodes]`` direct effects, rows = targets, columns = sources.
        n_layers: the model's layer count (error nodes are ``n_layers * n_pos``).
        n_active: active features on the prompt before ``max_feature_nodes`` kept some.
        prompt: the prompt as text.
        scan: what identifies the model and transcoders (Neuronpedia's ``scan``).
        settings: generation settings, written to the file's metadata.
        scores: :class:`Scores` of the unpruned graph.
        node_mask, edge_mask, influence: set by :func:`explorer.circuits.prune`: the nodes and
            edges kept, and each node's cumulative influence rank (circuit-tracer's
            ``cumulative_scores``: the share of total influence held by nodes at least as
            influential; small = important).
    """

    prompt_ids: list[int]
    prompt_tokens: list[str]
    features: Tensor
    activations: Tensor
    logit_ids: list[int]
    logit_tokens: list[str]
    logit_probs: Tensor
    adjacency: Tensor
    n_layers: int
    n_active: int
    prompt: str = ""
    scan: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    scores: Scores | None = None
    node_mask: Tensor | None = None
    edge_mask: Tensor | None = None
    influence: Tensor | None = None

    @property
    def n_pos(self) -> int:
        return len(self.prompt_ids)

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_logits(self) -> int:
        return len(self.logit_ids)

    @property
    def n_nodes(self) -> int:
        return int(self.adjacency.shape[0])

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    def error_index(self, layer: int, pos: int) -> int:
        return self.error_start + layer * self.n_pos + pos

    def token_index(self, pos: int) -> int:
        return self.token_start + pos

    def logit_index(self, k: int) -> int:
        return self.logit_start + k

    def feature_index(self, layer: int, pos: int, feature: int) -> int:
        """The node index of a feature node; ``KeyError`` when it is not in the graph."""
        hits = (self.features == self.features.new_tensor([layer, pos, feature])).all(dim=1)
        found = hits.nonzero()
        if found.numel() == 0:
            raise KeyError((layer, pos, feature))
        return int(found[0, 0])

    def node(self, index: int) -> Node:
        """Decode a node index."""
        if not 0 <= index < self.n_nodes:
            raise IndexError(index)
        if index < self.error_start:
            layer, pos, feature = (int(v) for v in self.features[index])
            return Node("feature", layer, pos, feature)
        if index < self.token_start:
            layer, pos = divmod(index - self.error_start, self.n_pos)
            return Node("error", layer, pos, -1)
        if index < self.logit_start:
            pos = index - self.token_start
            return Node("token", -1, pos, self.prompt_ids[pos])
        k = index - self.logit_start
        return Node("logit", self.n_layers, self.n_pos - 1, self.logit_ids[k])

    def logit_weights(self) -> Tensor:
        """``[n_nodes]``: each logit node's probability, 0 elsewhere (influence starts here)."""
        import torch

        w = torch.zeros(self.n_nodes, dtype=self.adjacency.dtype)
        w[self.logit_start :] = self.logit_probs.to(w.dtype)
        return w
