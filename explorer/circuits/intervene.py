"""Scale transcoder features on a prompt and see what the model predicts next.

For each chosen node ``(layer, position, feature)`` with activation ``a`` on the prompt, a hook on
``blocks.{layer}.hook_mlp_out`` adds ``(scale - 1) * a * W_dec[feature]`` at that position: the
feature's decoder contribution becomes ``scale`` times what it was (0 ablates it; 2 doubles it).
The rest of the real model runs on: later MLPs, norms and attention all respond. The change is
reported twice:

- **unfrozen**: the real model with the change, nothing else touched;
- **frozen**: the same with every attention pattern held at the prompt's (circuit-tracer's
  ``freeze_attention``), so the change travels only along the paths an attribution graph follows
  through attention; comparing the two shows how much the graph's frozen-attention view misses.

The activation ``a`` is read on the unchanged prompt, so scaling several features adds fixed
amounts even when one of them sits downstream of another.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from explorer.hooks import routed

if TYPE_CHECKING:
    from torch import Tensor

TOP_K = 10

Prediction = tuple[int, str, float]
"""``(token id, token text, probability)``."""


@dataclass(frozen=True)
class Intervention:
    """Top next tokens: ``baseline`` (the prompt unchanged), ``frozen`` and ``unfrozen`` (see the
    module's docstring), most probable first; ``activations`` are the nodes' activations on the
    prompt, in the order given; ``watched`` holds, for each token id in ``watch``, its
    probability ``(baseline, frozen, unfrozen)`` wherever it ranks."""

    baseline: list[Prediction]
    frozen: list[Prediction]
    unfrozen: list[Prediction]
    activations: list[float]
    watched: list[tuple[float, float, float]] = field(default_factory=list)


def _top(logits: Tensor, tokenizer: Any, k: int) -> list[Prediction]:
    import torch

    probs = torch.softmax(logits.float(), dim=-1)
    p, i = probs.topk(min(k, probs.numel()))
    text = (lambda t: tokenizer.decode([t])) if tokenizer is not None else str
    return [(int(t), text(int(t)), float(q)) for t, q in zip(i, p, strict=True)]


def intervene(
    model: Any,
    transcoders: Sequence[Any],
    prompt_ids: Sequence[int] | Tensor,
    nodes: Sequence[tuple[int, int, int]],
    scale: float,
    *,
    top_k: int = TOP_K,
    watch: Sequence[int] = (),
) -> Intervention:
    """Scale the decoder contributions of ``nodes`` (``(layer, position, feature)``) by
    ``scale`` and return the top ``top_k`` next tokens, with attention frozen and not, and the
    probabilities of the token ids in ``watch`` (e.g. a graph's target) wherever they rank."""
    import torch

    ids = torch.as_tensor(prompt_ids, dtype=torch.long).flatten().to(model.cfg.device)
    n_layers, n_pos = model.cfg.n_layers, len(ids)
    if not math.isfinite(scale):
        raise ValueError("scale must be a finite number")
    for layer, pos, feature in nodes:
        if not (0 <= layer < n_layers and 0 <= pos < n_pos):
            raise ValueError(f"node {(layer, pos, feature)} is outside the model or the prompt")
        if not 0 <= feature < transcoders[layer].W_dec.shape[0]:
            raise ValueError(f"layer {layer} has no feature {feature}")
    for token in watch:
        if not 0 <= token < model.cfg.d_vocab:
            raise ValueError(f"{token} is not a token id (vocabulary {model.cfg.d_vocab})")
    layers = sorted({layer for layer, _, _ in nodes})
    inputs: dict[int, Tensor] = {}
    patterns: dict[str, Tensor] = {}

    def keep_input(x: Tensor, hook: Any) -> None:
        inputs[hook.layer()] = x[0]

    def keep_pattern(x: Tensor, hook: Any) -> None:
        patterns[hook.name] = x

    pattern_names = [f"blocks.{i}.attn.hook_pattern" for i in range(n_layers)]
    clean_hooks = {f"blocks.{i}.ln2.hook_normalized": keep_input for i in layers}
    clean_hooks.update(dict.fromkeys(pattern_names, keep_pattern))
    with torch.inference_mode():
        with routed(model, clean_hooks):
            baseline = model(ids[None], return_type="logits")[0, -1]
        deltas = {i: torch.zeros(n_pos, model.cfg.d_model, device=ids.device) for i in layers}
        activations = []
        for layer, pos, feature in nodes:
            tc = transcoders[layer]
            a = float(tc.encode(inputs[layer][pos : pos + 1])[0, feature])
            activations.append(a)
            deltas[layer][pos] += (scale - 1) * a * tc.W_dec[feature].to(deltas[layer].dtype)

        def add(x: Tensor, hook: Any) -> Tensor:
            return x + deltas[hook.layer()].to(x.dtype)

        def frozen_pattern(x: Tensor, hook: Any) -> Tensor:
            return patterns[hook.name]

        steer = {f"blocks.{i}.hook_mlp_out": add for i in layers}
        with routed(model, steer):
            unfrozen = model(ids[None], return_type="logits")[0, -1]
        with routed(model, {**steer, **dict.fromkeys(pattern_names, frozen_pattern)}):
            frozen = model(ids[None], return_type="logits")[0, -1]
    tokenizer = getattr(model, "tokenizer", None)
    p_base, p_frozen, p_unfrozen = (
        torch.softmax(x.float(), dim=-1) for x in (baseline, frozen, unfrozen)
    )
    watched = [(float(p_base[t]), float(p_frozen[t]), float(p_unfrozen[t])) for t in watch]
    return Intervention(
        baseline=_top(baseline, tokenizer, top_k),
        frozen=_top(frozen, tokenizer, top_k),
        unfrozen=_top(unfrozen, tokenizer, top_k),
        activations=activations,
        watched=watched,
    )
