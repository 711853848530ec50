"""The local replacement model of one prompt, as one recorded forward pass.

The real model runs once on the prompt. Hooks on its forward pass make the recorded autograd
graph that of the *local replacement model* (circuit-tracer's, from Ameisen et al. 2025):

- every MLP's output is replaced by a constant equal to its value on the prompt (so the forward
  pass computes exactly what the real model computes), plus the transcoder's skip path when it
  has one (``W_skip``, linear in the MLP's input). That constant is a leaf tensor: the gradient
  that reaches it is the gradient at that MLP's output, which is what every source node there
  (its features, through their decoder rows; its error term) is contracted with;
- attention patterns and every normalisation denominator (the RMSNorm scales before and after
  attention and MLP, and the final norm) are detached: frozen at the prompt's values. Gemma 3's
  qk-norm and Gemma 2's attention soft-cap act only on the patterns, so they are frozen with them;
- the token embeddings are leaf tensors (the token nodes).

With those freezes everything between the embeddings / MLP outputs and the next MLP inputs /
the logits is linear, so a gradient injected at a target's input direction (a feature's encoder
row, a logit's unembedding column) and contracted with a source's output vector is exactly the
direct effect of that source on that target. Transcoders read ``blocks.N.ln2.hook_normalized``
and write ``blocks.N.hook_mlp_out`` (after Gemma's post-MLP norm), circuit-tracer's hooks for
Gemma Scope transcoders. Note that in transformer-lens ``hook_normalized`` is ``x / rms(x)``,
before the norm's weight multiplies it: the MLP itself reads ``hook_normalized * w``.

Hooks are routed to this call only (:mod:`explorer.hooks`), so a shared model keeps serving
other users unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from explorer.hooks import routed

if TYPE_CHECKING:
    from torch import Tensor

FREEZE = frozenset({"attention", "norms"})
"""What the replacement model freezes. Only tests pass less (to show that their checks notice)."""

ZERO_POSITIONS = 1
"""Leading positions whose features and errors are not nodes (BOS), as in circuit-tracer: the
first position is an attention sink where hundreds of features fire; its MLP outputs stay in the
model as fixed terms."""


class TranscoderError(ValueError):
    """Transcoders that do not fit the model (count, widths, normalisation)."""


@dataclass
class Linearized:
    """The recorded pass. Shapes: ``n`` positions, ``d`` = d_model, ``L`` layers.

    Args:
        logits: ``[d_vocab]`` the real model's logits at the last position.
        acts: per layer ``[n, d_sae]`` feature activations (BOS row zeroed).
        errors: ``[L, n, d]`` MLP output minus transcoder output (BOS row zeroed).
        token_vecs: ``[n, d]`` the input embeddings.
        targets: per layer the ``[1, n, d]`` transcoder input (``ln2.hook_normalized``), then the
            final norm's normalised output; gradients are injected here.
        sources: per layer the ``[1, n, d]`` MLP-output leaf, then the embedding leaf; gradients
            are read here.
        final_w: ``[d]`` the final norm's weight (the logit directions are scaled by it).
    """

    logits: Tensor
    acts: list[Tensor]
    errors: Tensor
    token_vecs: Tensor
    targets: list[Tensor]
    sources: list[Tensor]
    final_w: Tensor


def check_transcoders(model: Any, transcoders: Sequence[Any]) -> None:
    """Raise :class:`TranscoderError` unless there is one plain transcoder per layer."""
    cfg = model.cfg
    if len(transcoders) != cfg.n_layers:
        raise TranscoderError(
            f"need {cfg.n_layers} transcoders (one per layer), got {len(transcoders)}"
        )
    for layer, tc in enumerate(transcoders):
        d_in, d_out = tc.W_enc.shape[0], tc.W_dec.shape[1]
        if d_in != cfg.d_model or d_out != cfg.d_model:
            raise TranscoderError(
                f"layer {layer}: transcoder maps {d_in} -> {d_out}, model is {cfg.d_model}"
            )
        if getattr(tc.cfg, "normalize_activations", "none") != "none":
            raise TranscoderError(f"layer {layer}: input normalisation is not supported")


def skip_out(tc: Any, x: Tensor) -> Tensor | None:
    """The transcoder's linear skip path ``x @ W_skip.T``, or None without one."""
    w_skip = getattr(tc, "W_skip", None)
    return None if w_skip is None else x @ w_skip.detach().T


def linearize(
    model: Any, transcoders: Sequence[Any], ids: Tensor, freeze: frozenset[str] = FREEZE
) -> Linearized:
    """Run ``model`` on ``ids`` (``[n]``) once, recording the local replacement model."""
    import torch

    n_layers = model.cfg.n_layers
    hn: list[Tensor | None] = [None] * n_layers
    leaves: list[Tensor | None] = [None] * n_layers
    acts: list[Tensor | None] = [None] * n_layers
    errors = torch.zeros(n_layers, len(ids), model.cfg.d_model, device=ids.device)
    found: dict[str, Tensor] = {}

    def detach(x: Tensor, hook: Any) -> Tensor:
        return x.detach()

    def embed(x: Tensor, hook: Any) -> Tensor:
        found["embed"] = x.detach().requires_grad_(True)
        return found["embed"]

    def mlp_in(x: Tensor, hook: Any) -> Tensor:
        hn[hook.layer()] = x
        return x

    def mlp_out(x: Tensor, hook: Any) -> Tensor:
        layer = hook.layer()
        tc, x_in = transcoders[layer], hn[layer]
        assert x_in is not None
        skip = skip_out(tc, x_in)
        with torch.no_grad():
            a = tc.encode(x_in.detach())[0]
            recon = tc.decode(a) + (0 if skip is None else skip[0])
            err = x[0].detach() - recon
            a[:ZERO_POSITIONS] = 0
            err[:ZERO_POSITIONS] = 0
            acts[layer], errors[layer] = a, err
        const = (x if skip is None else x - skip).detach().requires_grad_(True)
        leaves[layer] = const
        return const if skip is None else skip + const

    def final(x: Tensor, hook: Any) -> Tensor:
        found["final"] = x
        return x

    hooks: dict[str, Any] = {"hook_embed": embed, "ln_final.hook_normalized": final}
    for layer in range(n_layers):
        hooks[f"blocks.{layer}.ln2.hook_normalized"] = mlp_in
        hooks[f"blocks.{layer}.hook_mlp_out"] = mlp_out
        if "attention" in freeze:
            hooks[f"blocks.{layer}.attn.hook_pattern"] = detach
        if "norms" in freeze:
            for norm in ("ln1", "ln2", "ln1_post", "ln2_post"):
                hooks[f"blocks.{layer}.{norm}.hook_scale"] = detach
    if "norms" in freeze:
        hooks["ln_final.hook_scale"] = detach
    hooks = {name: fn for name, fn in hooks.items() if name in model.hook_dict}
    with torch.enable_grad(), routed(model, hooks):
        logits = model(ids[None], return_type="logits")
    assert all(t is not None for t in hn + leaves + acts)
    return Linearized(
        logits=logits[0, -1].detach(),
        acts=[a for a in acts if a is not None],
        errors=errors,
        token_vecs=found["embed"][0].detach(),
        targets=[t for t in hn if t is not None] + [found["final"]],
        sources=[t for t in leaves if t is not None] + [found["embed"]],
        final_w=model.ln_final.w.detach(),
    )
