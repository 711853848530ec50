"""Per-feature properties that come from the weights alone, not from the corpus: the tokens a
feature's decoder direction promotes and suppresses through the unembedding, and the features
whose decoder directions are nearest (cosine). Chunked over features, so memory stays at one
``[chunk, d_vocab]`` block (256 x 262k floats for Gemma 3)."""

from __future__ import annotations

from typing import Any

import numpy as np

from explorer.bundle import Bundle


def logit_effects(bundle: Bundle, sae: Any, k: int = 10) -> tuple[np.ndarray, ...]:
    """Per feature the ``k`` most promoted and most suppressed tokens of ``W_dec[f] @ W_U``
    (``sae`` an SAE or a transcoder: both write into the residual stream)."""
    import torch

    w_u = bundle.model.W_U.detach().float()  # [d_model, d_vocab]
    top_i, top_v, bot_i, bot_v = [], [], [], []
    with torch.inference_mode():
        for chunk in sae.W_dec.detach().float().split(256):
            logits = chunk.to(w_u.device) @ w_u
            v, i = logits.topk(k, dim=-1)
            top_i.append(i.cpu())
            top_v.append(v.cpu())
            v, i = logits.topk(k, dim=-1, largest=False)
            bot_i.append(i.cpu())
            bot_v.append(v.cpu())
    return tuple(torch.cat(x).numpy() for x in (top_i, top_v, bot_i, bot_v))


def neighbours(sae: Any, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Per feature the ``k`` other features with the most similar decoder direction (cosine)."""
    import torch

    w = torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=-1)
    idx, val = [], []
    with torch.inference_mode():
        for start in range(0, w.shape[0], 1024):
            sim = w[start : start + 1024] @ w.T
            rows = torch.arange(start, min(start + 1024, w.shape[0]))
            sim[rows - start, rows] = -2.0  # never a feature's own neighbour
            v, i = sim.topk(k, dim=-1)
            idx.append(i.cpu())
            val.append(v.cpu())
    return torch.cat(idx).numpy().astype(np.int32), torch.cat(val).numpy().astype(np.float32)
