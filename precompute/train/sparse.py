"""Sparse training steps for dictionaries on a CPU: the batch's top-k from its likely
candidates, and autograd functions whose gradients touch only the firing (row, feature) pairs.

A BatchTopK dictionary fires ``k`` of ``d_sae`` features per row; autograd through the dense
products (or through an index) does ``d_sae / k`` times the needed work in the backward pass.
These give the same values and gradients (the tests compare them with dense autograd) from
sparse products.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor


def batch_topk(score: Tensor, n: int, theta: float) -> Any:
    """``score.topk(n)``, from the scores above half the running threshold when there are
    enough of them (a few times ``n`` instead of all ``batch × d_sae``: the same answer)."""
    import torch

    if theta > 0:
        candidates = (score > 0.5 * theta).nonzero().squeeze(-1)
        if len(candidates) >= n:
            top = score[candidates].topk(n)
            return torch.return_types.topk((top.values, candidates[top.indices]))
    return score.topk(n)


def _sparse(rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    import torch

    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), values, shape, is_coalesced=False, check_invariants=False
    )


def _autograd_function() -> Any:
    import torch

    return torch.autograd.Function


class SparseEncode(_autograd_function()):  # type: ignore[misc]
    """The firing pairs' pre-activations ``x[row] · W_enc[:, col] + b_enc[col]`` (given, from
    the dense pass), with their gradients to ``W_enc`` and ``b_enc`` as sparse products: on a
    CPU, autograd through the dense product or an index costs 5–20 times more."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w_enc: Tensor, b_enc: Tensor, row: Tensor, col: Tensor,
                values: Tensor) -> Tensor:  # fmt: skip
        ctx.save_for_backward(x, row, col)
        ctx.shape = w_enc.shape
        return values.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        import torch

        x, row, col = ctx.saved_tensors
        _, width = ctx.shape
        g = _sparse(col, row, grad, (width, x.shape[0]))
        grad_w = torch.sparse.mm(g, x).T
        grad_b = torch.bincount(col, weights=grad, minlength=width).to(grad.dtype)
        return None, grad_w, grad_b, None, None, None


class SparseDecode(_autograd_function()):  # type: ignore[misc]
    """``sum over firing pairs of value × W_dec[col]`` into each row, as a sparse product,
    with the gradients to the values and ``W_dec`` as sparse products too."""

    @staticmethod
    def forward(ctx: Any, vals: Tensor, w_dec: Tensor, row: Tensor, col: Tensor,
                batch: int) -> Tensor:  # fmt: skip
        import torch

        ctx.save_for_backward(vals, w_dec, row, col)
        ctx.batch = batch
        return torch.sparse.mm(_sparse(row, col, vals, (batch, w_dec.shape[0])), w_dec)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        import torch

        vals, w_dec, row, col = ctx.saved_tensors
        grad_vals = (grad[row] * w_dec[col]).sum(-1)
        grad_w = torch.sparse.mm(_sparse(col, row, vals, (w_dec.shape[0], ctx.batch)), grad)
        return grad_vals, grad_w, None, None, None
