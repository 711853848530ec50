"""A transformers Gemma model as an unprocessed transformer-lens ``HookedSAETransformer``.

transformer-lens only knows Gemma configs by their official hub names; deriving the config from the
model's own HF config lets one path serve Gemma 2 2B, the embedded Gemma 3 270M, local fine-tunes
and the tiny random test models (the tests check that the derived config equals transformer-lens's
own for the official names, and that ``blocks.N.hook_resid_post`` equals transformers'
``hidden_states[N + 1]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sae_lens import HookedSAETransformer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class ModelTypeError(ValueError):
    """A model this explorer cannot load (not a Gemma 2 or Gemma 3 text model)."""


def hooked_config(hf_config: Any, device: str = "cpu", dtype: str = "float32") -> Any:
    """A ``HookedTransformerConfig`` for a Gemma 2 or Gemma 3 text model, from its HF config.

    Mirrors transformer-lens's hard-coded configs for the official Gemma names, field by field.
    """
    import torch
    from transformer_lens import HookedTransformerConfig

    model_type = hf_config.model_type
    if model_type not in ("gemma2", "gemma3_text"):
        raise ModelTypeError(
            f"model type {model_type!r} is not supported: this explorer loads Gemma 2 and "
            "Gemma 3 text models"
        )
    gemma3 = model_type == "gemma3_text"
    layer_types = list(getattr(hf_config, "layer_types", None) or [])
    rope = getattr(hf_config, "rope_parameters", None) or {}
    if gemma3 and "full_attention" in rope:
        rotary_base = rope["full_attention"]["rope_theta"]
        rotary_base_local = rope.get("sliding_attention", {}).get("rope_theta", 10000.0)
    else:
        flat = rope.get("rope_theta") if isinstance(rope, dict) else None
        rotary_base = flat or getattr(hf_config, "rope_theta", 10000.0)
        rotary_base_local = None
    cfg: dict[str, Any] = {
        "d_model": hf_config.hidden_size,
        "d_head": hf_config.head_dim,
        "n_heads": hf_config.num_attention_heads,
        "d_mlp": hf_config.intermediate_size,
        "n_layers": hf_config.num_hidden_layers,
        "n_ctx": min(hf_config.max_position_embeddings, 8192),
        "eps": hf_config.rms_norm_eps,
        "d_vocab": hf_config.vocab_size,
        "act_fn": hf_config.hidden_activation,
        "initializer_range": hf_config.initializer_range,
        "normalization_type": "RMS",
        "rotary_base": rotary_base,
        "positional_embedding_type": "rotary",
        "use_attn_scale": True,
        "attn_scale": float(hf_config.query_pre_attn_scalar) ** 0.5,
        "n_key_value_heads": hf_config.num_key_value_heads,
        "window_size": hf_config.sliding_window,
        "use_local_attn": True,
        "attn_types": ["local" if t == "sliding_attention" else "global" for t in layer_types],
        "gated_mlp": True,
        "final_rms": True,
        "use_normalization_before_and_after": True,
        "original_architecture": "Gemma3ForCausalLM" if gemma3 else "Gemma2ForCausalLM",
        "model_name": getattr(hf_config, "_name_or_path", "") or model_type,
        "device": device,
        "dtype": getattr(torch, dtype),
        "init_weights": False,
        "default_prepend_bos": True,
    }
    if gemma3:
        cfg["use_qk_norm"] = True
        cfg["rotary_base_local"] = rotary_base_local
    else:
        cfg["attn_scores_soft_cap"] = hf_config.attn_logit_softcapping
        cfg["output_logits_soft_cap"] = hf_config.final_logit_softcapping
    return HookedTransformerConfig(**cfg)


def hooked_from_hf(
    hf_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    device: str = "cpu",
    dtype: str = "float32",
) -> HookedSAETransformer:
    """Wrap a transformers Gemma model as an unprocessed ``HookedSAETransformer``.

    No folding or centering: ``blocks.N.hook_resid_post`` equals ``hidden_states[N + 1]``.
    """
    from sae_lens import HookedSAETransformer
    from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights

    cfg = hooked_config(hf_model.config, device=device, dtype=dtype)
    model = HookedSAETransformer(cfg, tokenizer, move_to_device=False)
    state_dict = convert_gemma_weights(hf_model, cfg)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    model.to(device, print_details=False)
    model.eval()
    transpose_weights_once(model)
    return model


# Weights that transformer-lens 3.9 multiplies as ``F.linear(x, W.T.contiguous())``.
_LINEAR_T_WEIGHTS = ("W_U", "W_gate", "W_in", "W_out")
# Attention weights it rearranges (a copy each call) before ``F.linear``: the dimension order in
# which each is laid out so that the rearrangement is a view. ``[head, d_model, d_head] ->
# (head d_head) d_model`` for the query, key and value; ``[head, d_head, d_model] -> d_model
# (head d_head)`` for the output.
_ATTN_LAYOUTS = {"W_Q": (0, 2, 1), "W_K": (0, 2, 1), "W_V": (0, 2, 1), "_W_K": (0, 2, 1),
                 "_W_V": (0, 2, 1), "W_O": (2, 0, 1)}  # fmt: skip


def transpose_weights_once(model: Any) -> int:
    """Store ``W_U``, the MLP and the attention matrices in the memory layout that
    transformer-lens's forward pass multiplies them in.

    transformer-lens calls ``F.linear(x, W.T.contiguous())`` on every forward pass; with ``W``
    contiguous that copies the matrix each time: 670 MB for Gemma 3's 262k-token unembedding and
    16 MB per MLP layer, which made generation crawl (about 2 s a token here). Keeping the same
    values in the transposed memory layout makes ``.contiguous()`` a no-op. Likewise the
    attention's ``einops.rearrange`` of ``W_Q``, ``W_K``, ``W_V`` and ``W_O`` copied each matrix
    at every step of a generation (a sixth of a step's time on the embedded default); laid out in
    the order the rearrangement reads them, it is a view. Results are bit-identical: ``F.linear``
    gets the same values in the same layout as the copy it was given before. Returns how many
    were changed.
    """
    import torch

    changed = 0
    for module in model.modules():
        params = getattr(module, "_parameters", {})
        for name in _LINEAR_T_WEIGHTS:
            p = params.get(name)
            if isinstance(p, torch.nn.Parameter) and p.dim() == 2 and not p.T.is_contiguous():
                p.data = p.data.T.contiguous().T
                changed += 1
        for name, order in _ATTN_LAYOUTS.items():
            p = params.get(name)
            if not isinstance(p, torch.nn.Parameter) or p.dim() != 3:
                continue
            laid = p.data.permute(*order)
            if not laid.is_contiguous():
                inverse = sorted(range(3), key=order.__getitem__)
                p.data = laid.contiguous().permute(*inverse)
                changed += 1
    return changed
