"""Edge rows: the incoming edges of a batch of targets, from one recorded replacement model.

A target is injected as a gradient at its input (a feature's encoder row at its layer's
transcoder input; a logit's direction at the final norm's output). One vectorised backward pass
(``torch.autograd.grad(..., is_grads_batched=True)``) carries a batch of such injections back
through the linear replacement model to every MLP output and to the embeddings, where each
source's output vector is contracted with the gradient:

- an active feature: ``activation * W_dec[feature]`` at its MLP output and position (one matrix
  product per (layer, position): the features there share the gradient row);
- an error node: the error vector at its MLP output and position;
- a token: its embedding.

Decoder and encoder rows are gathered from the transcoders per batch, never held for all active
features: besides the recorded pass, memory is one batch's gradients (``B x n_pos x d_model``
per layer) and the output rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from explorer.circuits.linear import Linearized


class Rows:
    """The active features of a recorded pass, and ``rows(...)`` for batches of targets.

    Attributes:
        features: ``[n_active, 3]`` long, on the CPU: ``(layer, position, feature)``, sorted.
        values: ``[n_active]`` their activations (on the model's device).
        n_sources: columns of a row: active features, then errors (layer-major), then tokens.
    """

    def __init__(self, lin: Linearized, transcoders: Sequence[Any]) -> None:
        import torch

        self.lin, self.tcs = lin, transcoders
        self.n_layers = len(lin.acts)
        self.n_pos = lin.token_vecs.shape[0]
        self.device = lin.token_vecs.device
        found = [a.nonzero(as_tuple=True) for a in lin.acts]
        counts = torch.tensor([len(p) for p, _ in found])
        layer_of = torch.repeat_interleave(torch.arange(self.n_layers), counts)
        pos = torch.cat([p for p, _ in found]).cpu()
        self.features = torch.stack([layer_of, pos, torch.cat([f for _, f in found]).cpu()], dim=1)
        self.values = torch.cat([a[p, f] for a, (p, f) in zip(lin.acts, found, strict=True)])
        self.n_active = len(self.values)
        self.n_sources = self.n_active + (self.n_layers + 1) * self.n_pos
        # Features are sorted by (layer, position): each (layer, position) is one column range.
        self.blocks: list[list[tuple[int, int, int]]] = [[] for _ in range(self.n_layers)]
        key = self.features[:, 0] * self.n_pos + self.features[:, 1]
        keys, sizes = key.unique_consecutive(return_counts=True)
        start = 0
        for k, size in zip(keys.tolist(), sizes.tolist(), strict=True):
            self.blocks[k // self.n_pos].append((k % self.n_pos, start, start + size))
            start += size

    def encoders(self, idx: Tensor) -> Tensor:
        """``[len(idx), d]`` the encoder rows of active features ``idx`` (their input side)."""
        import torch

        out = torch.empty(len(idx), self.lin.token_vecs.shape[1], device=self.device)
        layers = self.features[idx, 0]
        for layer in layers.unique().tolist():
            rows = (layers == layer).nonzero(as_tuple=True)[0]
            w_enc = self.tcs[layer].W_enc.detach()
            out[rows.to(self.device)] = w_enc[:, self.features[idx[rows], 2]].T.float()
        return out

    def __call__(self, layers: Tensor, positions: Tensor, vectors: Tensor) -> Tensor:
        """``[B, n_sources]`` (on the CPU) incoming edges of the targets injected at
        ``(layer, position)`` with ``vectors`` (layer ``n_layers``: the final norm's output)."""
        import torch

        lin, b = self.lin, len(layers)
        outputs, grad_outputs = [], []
        for layer in layers.unique().tolist():
            rows = (layers == layer).nonzero(as_tuple=True)[0]
            target = lin.targets[layer]
            g = torch.zeros((b, *target.shape), dtype=target.dtype, device=target.device)
            g[rows, 0, positions[rows]] = vectors[rows.to(vectors.device)].to(target.dtype)
            outputs.append(target)
            grad_outputs.append(g)
        grads = torch.autograd.grad(
            outputs,
            lin.sources,
            grad_outputs,
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=True,
        )
        out = torch.zeros(b, self.n_sources, device=self.device)
        for layer in range(self.n_layers):
            if grads[layer] is None:  # at or after every target's layer
                continue
            g = grads[layer][:, 0].float()  # [B, n, d]
            w_dec = self.tcs[layer].W_dec.detach()
            for pos, s, e in self.blocks[layer]:
                dec = w_dec[self.features[s:e, 2]].float()
                out[:, s:e] = (g[:, pos] @ dec.T) * self.values[s:e]
            col = self.n_active + layer * self.n_pos
            out[:, col : col + self.n_pos] = (g * lin.errors[layer]).sum(-1)
        out[:, self.n_sources - self.n_pos :] = (grads[-1][:, 0].float() * lin.token_vecs).sum(-1)
        return out.cpu()
