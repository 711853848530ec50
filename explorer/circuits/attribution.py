"""Attribution graphs by circuit-tracer's method: direct effects in the local replacement model.

In the replacement model of one prompt (:mod:`explorer.circuits.linear`) the path from any
node's output to any later node's input is linear. So one backward pass from a *target* gives
its incoming edges from every source at once (:mod:`explorer.circuits.rows`):

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
one recorded forward pass, so memory is one pass's activations, one batch's gradients and the
edge rows: ``(max_feature_nodes + n_logits) x (active features + (n_layers + 1) x n_pos)``
floats, the one part that grows with the prompt past the cap (active features do). When the
prompt has more active features than ``max_feature_nodes``, the logits are attributed first and
features are then expanded in order of their (partial) influence on the logits, re-ranked every
``update_interval`` batches; features never expanded are dropped from the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from explorer.circuits.graph import Graph
from explorer.circuits.linear import FREEZE, check_transcoders, linearize
from explorer.circuits.rows import Rows

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


def _partial_influence(rows: Tensor, row_nodes: Tensor, start: Tensor) -> Tensor:
    """Influence on the logits of every column, through the rows known so far: ``start`` (the
    logit probabilities) is pushed back along |edges|, each row normalised to sum 1, until it
    has passed every known path (the graph has no cycles). |rows| is taken a slice at a time,
    never copied whole (the rows are the largest thing held)."""
    import torch

    step = 256

    def through(weights: Tensor) -> Tensor:  # weights @ |rows|
        out = torch.zeros(rows.shape[1])
        for s in range(0, len(rows), step):
            out += weights[s : s + step] @ rows[s : s + step].abs()
        return out

    sums = torch.cat([rows[s : s + step].abs().sum(1) for s in range(0, len(rows), step)])
    sums = sums.clamp(min=1e-8)
    total = torch.zeros_like(start)
    frontier = start
    for _ in range(10_000):
        frontier = through(frontier[row_nodes] / sums)
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
        update_interval: re-rank features by influence after this many batches (with a cap).
        scan: what identifies the model and transcoders (the graph file's ``scan``).
        progress: called after each batch as ``progress(done, total)``.
        cancel: checked before each batch; :class:`AttributionCancelled` when it says stop.
    """
    import torch

    check_transcoders(model, transcoders)
    if model.cfg.dtype != torch.float32:
        raise ValueError(f"attribution runs in float32; the model is {model.cfg.dtype}")
    ids = torch.as_tensor(prompt_ids, dtype=torch.long).flatten().to(model.cfg.device)
    if batch_size < 1 or update_interval < 1 or (max_feature_nodes or 0) < 0:
        raise ValueError("batch_size and update_interval must be >= 1, max_feature_nodes >= 0")
    if target is not None and not 0 <= target < model.cfg.d_vocab:
        raise ValueError(f"target {target} is not a token id (vocabulary {model.cfg.d_vocab})")
    if _stopped(cancel):
        raise AttributionCancelled("attribution cancelled before it started")
    lin = linearize(model, transcoders, ids, FREEZE)  # looked up here: tests swap it
    rows = Rows(lin, transcoders)
    logits = lin.logits.float().cpu()
    if target is None:
        logit_ids, logit_probs = salient_logits(logits, max_n_logits, desired_logit_prob)
    else:
        logit_ids = torch.tensor([target])
        logit_probs = torch.softmax(logits, dim=-1)[logit_ids]
    w_u = model.W_U.detach()
    logit_vecs = (w_u[:, logit_ids] - w_u.mean(dim=1, keepdim=True)).T * lin.final_w
    cap = rows.n_active if max_feature_nodes is None else min(max_feature_nodes, rows.n_active)
    edges, row_nodes, selected = _expand(
        rows, logit_vecs, logit_probs, cap, batch_size, update_interval, progress, cancel
    )
    return _package(
        model,
        ids,
        rows,
        logit_ids,
        logit_probs,
        edges,
        row_nodes,
        selected,
        scan=scan,
        settings={
            "max_n_logits": max_n_logits,
            "desired_logit_prob": desired_logit_prob,
            "batch_size": batch_size,
            "max_feature_nodes": max_feature_nodes,
            "target": target,
        },
    )


def _expand(
    rows: Rows,
    logit_vecs: Tensor,
    logit_probs: Tensor,
    cap: int,
    batch_size: int,
    update_interval: int,
    progress: Progress | None,
    cancel: Cancel | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Attribute the logits, then ``cap`` features, most influential first: ``(edge rows
    [done, n_sources + n_logits], the node of each row, the expanded features)``. Logit ``k`` is
    node ``n_sources + k``; feature ``i`` is node ``i``."""
    import torch

    n_logits, n_active, n_layers = len(logit_vecs), rows.n_active, rows.n_layers
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
        last = torch.full_like(k, rows.n_pos - 1)
        run(
            torch.full_like(k, n_layers),
            last,
            logit_vecs[k.to(logit_vecs.device)],
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
            room = min(update_interval * batch_size, cap - int(visited.sum()))
            pending = order[~visited[order]][:room]
            # Batches of nearby layers: a backward pass only runs below its highest target.
            pending = pending[rows.features[pending, 0].argsort(stable=True)]
        for s in range(0, len(pending), batch_size):
            idx = pending[s : s + batch_size]
            run(rows.features[idx, 0], rows.features[idx, 1], rows.encoders(idx), idx)
            visited[idx] = True
    return edges[:done], row_nodes[:done], visited.nonzero(as_tuple=True)[0]


def _package(
    model: Any,
    ids: Tensor,
    rows: Rows,
    logit_ids: Tensor,
    logit_probs: Tensor,
    edges: Tensor,
    row_nodes: Tensor,
    selected: Tensor,
    scan: str,
    settings: dict[str, Any],
) -> Graph:
    """The :class:`Graph`: expanded features' columns kept, rows in node order, scores set."""
    import torch

    from explorer.circuits.prune import scores

    n_cols = edges.shape[1]
    keep = torch.cat([selected, torch.arange(rows.n_active, n_cols)])
    adjacency = torch.zeros(len(keep), len(keep))
    node_of_col = torch.full((n_cols,), -1, dtype=torch.long)
    node_of_col[keep] = torch.arange(len(keep))
    adjacency[node_of_col[row_nodes]] = edges[:, keep]
    tokenizer = getattr(model, "tokenizer", None)

    def text(i: int) -> str:
        return tokenizer.decode([i]) if tokenizer is not None else str(i)

    graph = Graph(
        prompt_ids=ids.tolist(),
        prompt_tokens=[text(i) for i in ids.tolist()],
        features=rows.features[selected],
        activations=rows.values.cpu()[selected],
        logit_ids=logit_ids.tolist(),
        logit_tokens=[text(i) for i in logit_ids.tolist()],
        logit_probs=logit_probs,
        adjacency=adjacency,
        n_layers=rows.n_layers,
        n_active=rows.n_active,
        prompt=tokenizer.decode(ids.tolist()) if tokenizer is not None else "",
        scan=scan,
        settings=settings,
    )
    return replace(graph, scores=scores(graph))
