"""Held-out metrics of one trained SAE: explained variance, L0, dead and dense fractions, and
next-token cross-entropy with the reconstruction spliced in versus the clean model (Gemma Scope's
headline metric).

The splice goes through the same routed hooks as the rest of the explorer (:mod:`explorer.hooks`):
only this evaluation's forward pass sees it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from explorer.store.schema import DEFAULT_DENSE_THRESHOLD
from precompute.train.activations import window_ids

if TYPE_CHECKING:
    from sae_lens import SAE, HookedSAETransformer
    from torch import Tensor

    from precompute.train.config import TrainConfig


def evaluate(
    cfg: TrainConfig,
    model: HookedSAETransformer,
    tokenizer: Any,
    layer: int,
    sae: SAE,
    device: str,
) -> dict[str, Any]:
    """Held-out metrics of the SAE of ``layer`` on ``cfg.eval_tokens`` tokens of the corpus's
    held-out split (BOS and pad left out of every metric).

    Returns ``{"layer", "hook_name", "eval_tokens", "explained_variance", "l0",
    "dead_fraction", "dense_fraction", "ce_clean", "ce_spliced", "ce_delta"}``.
    """
    import torch
    import torch.nn.functional as F

    from explorer.hooks import routed
    from precompute.corpus import pad_windows

    hook = cfg.hook_name(layer)
    special = set(tokenizer.all_special_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sse = torch.zeros((), dtype=torch.float64)
    sum_x = torch.zeros(model.cfg.d_model, dtype=torch.float64)
    sum_x2 = torch.zeros((), dtype=torch.float64)
    l0_sum = 0.0
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.int64)  # tokens each feature fired on
    ce_clean = ce_spliced = 0.0
    n_tok = n_ce = 0
    # mixed: the first eval_tokens of the held-out split in file order are one source
    windows = window_ids(cfg, tokenizer, "heldout", mixed=True)
    while n_tok < cfg.eval_tokens:
        # small batches: two [batch, pos, vocab] logit tensors are held at once
        chunk = [w for _, w in zip(range(min(cfg.model_batch, 16)), windows, strict=False)]
        if not chunk:
            break
        ids, keep = pad_windows(chunk, pad, special)
        ids_d = ids.to(device)
        recon: dict[str, Tensor] = {}

        def splice(
            act: Tensor, hook: Any, keep: Tensor = keep, recon: dict[str, Tensor] = recon
        ) -> Tensor:
            feats = sae.encode(act.float())
            out = sae.decode(feats).to(act.dtype)
            recon["feats"], recon["x"], recon["x_hat"] = feats, act.float(), out.float()
            mask = keep.to(act.device).unsqueeze(-1)
            return torch.where(mask, out, act)  # BOS/pad keep their clean residual

        with torch.inference_mode():
            clean_logits = model(ids_d, return_type="logits")
            with routed(model, {hook: splice}):
                spliced_logits = model(ids_d, return_type="logits")
        m = keep.to(device)
        x = recon["x"][m].double().cpu()
        x_hat = recon["x_hat"][m].double().cpu()
        feats = recon["feats"][m].cpu()
        sse += ((x - x_hat) ** 2).sum()
        sum_x += x.sum(0)
        sum_x2 += (x**2).sum()
        l0_sum += float((feats > 0).sum())
        fires += (feats > 0).sum(0)
        n_tok += int(x.shape[0])
        # next-token loss where both the position and its target are real tokens
        tgt = ids_d[:, 1:]
        valid = keep.to(device)[:, 1:]
        for logits, acc in ((clean_logits, "clean"), (spliced_logits, "spliced")):
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                tgt.reshape(-1),
                reduction="none",
            ).reshape(tgt.shape)
            total = float(loss[valid].sum())
            if acc == "clean":
                ce_clean += total
            else:
                ce_spliced += total
        n_ce += int(valid.sum())
    if n_tok == 0:
        raise ValueError("the held-out split is empty: cannot evaluate")
    # dense as the store flags it: on more than 1% of tokens (the microscope hides them)
    dense = fires > DEFAULT_DENSE_THRESHOLD * n_tok
    mean = sum_x / n_tok
    total_var = float(sum_x2 - n_tok * (mean**2).sum())
    return {
        "layer": layer,
        "hook_name": hook,
        "eval_tokens": n_tok,
        "explained_variance": round(1.0 - float(sse) / total_var, 4),
        "l0": round(l0_sum / n_tok, 2),
        "dead_fraction": round(float((fires == 0).float().mean()), 4),
        "dense_fraction": round(float(dense.float().mean()), 4),
        "ce_clean": round(ce_clean / max(n_ce, 1), 4),
        "ce_spliced": round(ce_spliced / max(n_ce, 1), 4),
        "ce_delta": round((ce_spliced - ce_clean) / max(n_ce, 1), 4),
    }


# The metrics a training run reports, in the log (a line a layer) and the CLI's table:
# (heading, key of evaluate's dict, table width, format).
METRIC_COLUMNS = (
    ("EV", "explained_variance", 6, ".3f"),
    ("L0", "l0", 6, ".1f"),
    ("dead", "dead_fraction", 6, ".3f"),
    ("dense", "dense_fraction", 6, ".3f"),
    ("CE clean", "ce_clean", 9, ".3f"),
    ("spliced", "ce_spliced", 8, ".3f"),
    ("delta", "ce_delta", 7, "+.3f"),
)


def _metric(m: dict[str, Any], key: str) -> float:
    return float(m.get(key, float("nan")))  # dense_fraction: absent from older metrics files


def metrics_line(m: dict[str, Any]) -> str:
    """One layer's metrics on one line (the training log)."""
    return "  ".join(f"{name} {_metric(m, key):{fmt}}" for name, key, _, fmt in METRIC_COLUMNS)


def metrics_table(results: dict[int, dict[str, Any]]) -> str:
    """Every layer's metrics as a table, a row a layer (``train-saes``' output)."""
    head = f"{'layer':>5} " + " ".join(f"{name:>{w}}" for name, _, w, _ in METRIC_COLUMNS)
    rows = [
        f"{layer:>5} "
        + " ".join(format(_metric(m, key), fmt).rjust(w) for _, key, w, fmt in METRIC_COLUMNS)
        for layer, m in sorted(results.items())
    ]
    return "\n".join([head, *rows])
