"""Attribution graphs by circuit-tracer's method: direct effects in the local replacement model.

In the replacement model of one prompt (:mod:`explorer.circuits.linear`) the path from any
node's output to any later node's input is linear. So one backward pass from a *target* gives
its incoming edges from every source at once:

- a **logit** target injects ``w_final * (W_U[:, t] - mean_v W_U[:, v])`` at the final norm's
  output: the attributed quantity is the logit minus the mean logit (circuit-tracer's
  demeaned unembedding), before any soft-cap;
- a **feature** target injects its encoder row ``W_enc[:, f]`` at its layer's transcoder input:
  the attributed quantity is its pre-activation, which equals its activation while it is active
  (a JumpReLU passes its input unchanged above the threshold);
- the gradient reaching each MLP output is contracted with ``activation * W_dec[f]`` for each
  active feature there and with the error vector there; the gradient reaching the embeddings
  with the token embeddings.

Targets are processed in batches (one vectorised backward pass each, ``is_grads_batched``) over
one recorded forward pass, so memory is one pass's activations plus the edge matrix. When the
prompt has more active features than ``max_feature_nodes``, the logits are attributed first and
features are then expanded in order of their (partial) influence on the logits, re-ranked every
``update_interval`` batches; features never expanded are dropped from the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from explorer.circuits.graph import Graph
from explorer.circuits.linear import FREEZE, Linearized, check_transcoders, linearize

if TYPE_CHECKING:
    from torch import Tensor

MAX_FEATURE_NODES = 1024
BATCH_SIZE = 32
MAX_N_LOGITS = 10
DESIRED_LOGIT_PROB = 0.95
UPDATE_INTERVAL = 4

Progress = Callable[[int, int], None]
"""``progress(done, total)``: target nodes attributed so far, of all that will be."""


class _Event(Protocol):
    def is_set(self) -> bool: ...


Cancel = Callable[[], bool] | _Event
"""A callable that returns True, or an event (``threading.Event``) that is set, to stop."""


class AttributionCancelled(RuntimeError):
    """Raised by :func:`attribute` when its ``cancel`` asked it to stop."""


def _stopped(cancel: Cancel | None) -> bool:
    if cancel is None:
        return False
    is_set = getattr(cancel, "is_set", None)
    return bool(is_set()) if callable(is_set) else bool(cancel())  # type: ignore[operator]


def salient_logits(
    logits: Tensor, max_n_logits: int = MAX_N_LOGITS, desired_prob: float = DESIRED_LOGIT_PROB
) -> tuple[Tensor, Tensor]:
    """The most probable tokens until their probabilities add up to ``desired_prob``, at most
    ``max_n_logits`` of them: ``(ids, probs)``."""
    import torch

    probs = torch.softmax(logits.float(), dim=-1)
    top_p, top_i = probs.topk(min(max_n_logits, probs.numel()))
    keep = int(torch.searchsorted(top_p.cumsum(0), torch.tensor(desired_prob))) + 1
    return top_i[:keep], top_p[:keep]


class _Rows:
    """Computes edge rows (incoming edges of a batch of targets) from one recorded pass.

    Encoder and decoder rows are gathered from the transcoders per batch, never for all active
    features at once: memory stays at one batch's gradients plus index lists.
    """

    def __init__(self, lin: Linearized, transcoders: Sequence[Any]) -> None:
        import torch

        self.lin, self.tcs = lin, transcoders
        self.n_layers = len(lin.acts)
        self.n_pos = lin.token_vecs.shape[0]
        found = [a.nonzero(as_tuple=True) for a in lin.acts]
        counts = torch.tensor([len(p) for p, _ in found])
        layer_of = torch.repeat_interleave(torch.arange(self.n_layers), counts)
        self.features = torch.stack(
            [layer_of, torch.cat([p for p, _ in found]), torch.cat([f for _, f in found])], dim=1
        )
        self.values = torch.cat([a[p, f] for a, (p, f) in zip(lin.acts, found, strict=True)])
        self.n_active = len(self.values)
        # Features are sorted by (layer, position): each (layer, position) is one column range.
        per_layer: list[list[tuple[int, int, int]]] = [[] for _ in range(self.n_layers)]
        key = self.features[:, 0] * self.n_pos + self.features[:, 1]
        blocks, sizes = key.unique_consecutive(return_counts=True)
        start = 0
        for k, size in zip(blocks.tolist(), sizes.tolist(), strict=True):
            per_layer[k // self.n_pos].append((k % self.n_pos, start, start + size))
            start += size
        self.blocks = per_layer
        self.n_sources = self.n_active + (self.n_layers + 1) * self.n_pos

    def encoders(self, idx: Tensor) -> Tensor:
        """``[len(idx), d]`` the encoder rows of active features ``idx`` (their input side)."""
        import torch

        out = torch.empty(len(idx), self.lin.token_vecs.shape[1])
        layers = self.features[idx, 0]
        for layer in layers.unique().tolist():
            rows = (layers == layer).nonzero(as_tuple=True)[0]
            out[rows] = self.tcs[layer].W_enc.detach()[:, self.features[idx[rows], 2]].T
        return out

    def __call__(self, layers: Tensor, positions: Tensor, vectors: Tensor) -> Tensor:
        """``[B, n_sources]`` incoming edges of targets injected at ``(layer, position)`` with
        ``vectors`` (layer ``n_layers`` = the final norm's output)."""
        import torch

        lin, b = self.lin, len(layers)
        outputs, grad_outputs = [], []
        for layer in layers.unique().tolist():
            rows = (layers == layer).nonzero(as_tuple=True)[0]
            g = torch.zeros((b, *lin.targets[layer].shape), dtype=vectors.dtype)
            g[rows, 0, positions[rows]] = vectors[rows]
            outputs.append(lin.targets[layer])
            grad_outputs.append(g)
        grads = torch.autograd.grad(
            outputs,
            lin.sources,
            grad_outputs,
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=True,
        )
        out = torch.zeros(b, self.n_sources)
        err0 = self.n_active
        for layer in range(self.n_layers):
            if grads[layer] is None:  # at or after every target's layer
                continue
            g = grads[layer][:, 0]  # [B, n, d]
            w_dec = self.tcs[layer].W_dec.detach()
            for pos, s, e in self.blocks[layer]:
                out[:, s:e] = (g[:, pos] @ w_dec[self.features[s:e, 2]].T) * self.values[s:e]
            col = err0 + layer * self.n_pos
            out[:, col : col + self.n_pos] = (g * lin.errors[layer]).sum(-1)
        tok = err0 + self.n_layers * self.n_pos
        out[:, tok:] = (grads[-1][:, 0] * lin.token_vecs).sum(-1)
        return out


def _partial_influence(rows: Tensor, row_nodes: Tensor, start: Tensor) -> Tensor:
    """Influence on the logits of every column, through the rows known so far: ``start`` (the
    logit probabilities) is pushed back along |edges|, each row normalised to sum 1, until it
    has passed every known path (the graph has no cycles)."""
    import torch

    a = rows.abs()
    a = a / a.sum(dim=1, keepdim=True).clamp(min=1e-8)
    total = torch.zeros_like(start)
    frontier = start
    for _ in range(10_000):
        frontier = frontier[row_nodes] @ a
        if not frontier.any():
            return total
        total += frontier
    raise RuntimeError("influence did not converge (a cycle in the edge rows?)")


def attribute(
    model: Any,
    transcoders: Sequence[Any],
    prompt_ids: Sequence[int] | Tensor,
    *,
    target: int | None = None,
    max_feature_nodes: int | None = MAX_FEATURE_NODES,
    batch_size: int = BATCH_SIZE,
    max_n_logits: int = MAX_N_LOGITS,
    desired_logit_prob: float = DESIRED_LOGIT_PROB,
    update_interval: int = UPDATE_INTERVAL,
    scan: str = "",
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> Graph:
    """The attribution graph of the next token after ``prompt_ids`` (position 0 should be BOS).

    Args:
        model: a transformer-lens ``HookedSAETransformer`` (:func:`explorer.hooked.hooked_from_hf`).
        transcoders: one sae-lens transcoder per layer, reading ``blocks.N.ln2.hook_normalized``
            and writing ``blocks.N.hook_mlp_out``.
        target: attribute this vocabulary id only; default: the most probable tokens up to
            ``desired_logit_prob`` cumulative probability, at most ``max_n_logits``.
        max_feature_nodes: at most this many feature nodes (the most influential); None: all.
        batch_size: targets per backward pass.
        progress: called after each batch as ``progress(done, total)``.
        cancel: checked before each batch; :class:`AttributionCancelled` when it says stop.
    """
    import torch

    from explorer.circuits.prune import scores

    check_transcoders(model, transcoders)
    ids = torch.as_tensor(prompt_ids, dtype=torch.long).flatten().to(model.cfg.device)
    if _stopped(cancel):
        raise AttributionCancelled("attribution cancelled before it started")
    lin = linearize(model, transcoders, ids, FREEZE)  # looked up here: tests swap it
    rows = _Rows(lin, transcoders)
    n_layers, n_pos, n_active = rows.n_layers, rows.n_pos, rows.n_active

    if target is None:
        logit_ids, logit_probs = salient_logits(lin.logits, max_n_logits, desired_logit_prob)
    else:
        logit_ids = torch.tensor([int(target)])
        logit_probs = torch.softmax(lin.logits.float(), -1)[logit_ids]
    w_u = model.W_U.detach()
    logit_vecs = (w_u[:, logit_ids] - w_u.mean(dim=1, keepdim=True)).T * lin.final_w
    n_logits = len(logit_ids)
    cap = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)
    n_cols = rows.n_sources + n_logits
    edges = torch.zeros(n_logits + cap, n_cols)
    row_nodes = torch.zeros(n_logits + cap, dtype=torch.long)
    total, done = n_logits + cap, 0

    def run(layers: Tensor, positions: Tensor, vectors: Tensor, nodes: Tensor) -> None:
        nonlocal done
        if _stopped(cancel):
            raise AttributionCancelled(f"attribution cancelled after {done} of {total} nodes")
        edges[done : done + len(nodes), : rows.n_sources] = rows(layers, positions, vectors)
        row_nodes[done : done + len(nodes)] = nodes
        done += len(nodes)
        if progress is not None:
            progress(done, total)

    for s in range(0, n_logits, batch_size):
        k = torch.arange(s, min(n_logits, s + batch_size))
        run(
            torch.full_like(k, n_layers),
            torch.full_like(k, n_pos - 1),
            logit_vecs[k],
            rows.n_sources + k,
        )

    visited = torch.zeros(n_active, dtype=torch.bool)
    start = torch.zeros(n_cols)
    start[rows.n_sources :] = logit_probs
    while int(visited.sum()) < cap:
        if cap == n_active:
            pending = torch.arange(n_active)
        else:
            influence = _partial_influence(edges[:done], row_nodes[:done], start)[:n_active]
            order = influence.argsort(descending=True)
            pending = order[~visited[order]][
                : min(update_interval * batch_size, cap - int(visited.sum()))
            ]
        for s in range(0, len(pending), batch_size):
            idx = pending[s : s + batch_size]
            run(rows.features[idx, 0], rows.features[idx, 1], rows.encoders(idx), idx)
            visited[idx] = True

    selected = visited.nonzero(as_tuple=True)[0]
    keep_cols = torch.cat([selected, torch.arange(n_active, n_cols)])
    n_nodes = len(keep_cols)
    adjacency = torch.zeros(n_nodes, n_nodes)
    node_of_col = torch.full((n_cols,), -1, dtype=torch.long)
    node_of_col[keep_cols] = torch.arange(n_nodes)
    adjacency[node_of_col[row_nodes[:done]]] = edges[:done][:, keep_cols]

    tokenizer = getattr(model, "tokenizer", None)

    def text(i: int) -> str:
        return tokenizer.decode([i]) if tokenizer is not None else str(i)

    graph = Graph(
        prompt_ids=ids.tolist(),
        prompt_tokens=[text(i) for i in ids.tolist()],
        features=rows.features[selected],
        activations=rows.values[selected],
        logit_ids=logit_ids.tolist(),
        logit_tokens=[text(i) for i in logit_ids.tolist()],
        logit_probs=logit_probs,
        adjacency=adjacency,
        n_layers=n_layers,
        n_active=n_active,
        prompt=tokenizer.decode(ids.tolist()) if tokenizer is not None else "",
        scan=scan,
        settings={
            "max_n_logits": max_n_logits,
            "desired_logit_prob": desired_logit_prob,
            "batch_size": batch_size,
            "max_feature_nodes": max_feature_nodes,
            "target": target,
        },
    )
    from dataclasses import replace

    return replace(graph, scores=scores(graph))
