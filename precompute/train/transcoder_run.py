"""The ``train-transcoders`` command: cache, train every layer, measure, write the manifest.

Stages, each resumable (:mod:`precompute.train.transcoders` says how):

1. cache the inputs and outputs of every layer's MLP on the train split (``work_dir/train``)
   and the held-out split (``work_dir/eval``), each read in the documents' representative
   order (:func:`precompute.corpus.run_documents`): one forward pass per batch of windows for
   all layers;
2. train each layer in turn from the cache (a checkpoint every few steps); a finished layer is
   skipped;
3. per-layer metrics on the held-out cache (EV of the MLP output, L0, dead, dense), then the
   whole replacement model's cross-entropy and top-1 agreement, into ``metrics.json`` of each
   layer and the manifest (:class:`~explorer.store.saes.SaeManifest`, as ``assets/saes`` has).
"""

from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer.files import atomic_write_text
from explorer.store.schema import DEFAULT_DENSE_THRESHOLD
from precompute.train.trainer import METRICS, finished_metrics
from precompute.train.transcoders import (
    INPUT_HOOK,
    OUTPUT_HOOK,
    TranscoderConfig,
    architecture,
    hooks_of,
    in_key,
    load_rows,
    load_transcoder,
    out_key,
    save_transcoder,
    train_layer,
)

if TYPE_CHECKING:
    from sae_lens import HookedSAETransformer

    from precompute.train.cache import CacheInfo

logger = logging.getLogger(__name__)

REPLACEMENT = "replacement.json"


def _window_cfg(cfg: TranscoderConfig) -> Any:
    """A :class:`~precompute.train.config.TrainConfig` with the corpus fields of ``cfg``, for
    :func:`~precompute.train.activations.window_ids`."""
    from precompute.train.config import TrainConfig

    return TrainConfig(
        preset=cfg.preset, corpus=cfg.corpus, context_size=cfg.context_size, seed=cfg.seed
    )


def fill_caches(
    cfg: TranscoderConfig, model: HookedSAETransformer, tokenizer: Any, device: str
) -> tuple[CacheInfo, CacheInfo]:
    """Fill (or resume) the train and held-out caches of every layer's MLP input and output."""
    from precompute.train import cache
    from precompute.train.activations import ActivationStream, window_ids

    wcfg = _window_cfg(cfg)
    work = Path(cfg.work_dir)
    out = []
    for split, tokens in (("train", cfg.training_tokens), ("heldout", cfg.eval_tokens)):
        # both in the documents' representative order: any prefix mixes the corpus's sources
        # in their shares, so the cache takes the first windows (stride 1) and stopping early
        # still gives an even sample
        stream = ActivationStream(
            model=model,
            hooks=hooks_of(cfg.layers),
            windows=partial(window_ids, wcfg, tokenizer, split, mixed=True),
            pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            special_ids=set(tokenizer.all_special_ids),
            model_batch=cfg.model_batch,
            device=device,
        )
        path = work / ("train" if split == "train" else "eval")
        stride = 1
        key = {"corpus": cfg.corpus, "preset": cfg.preset, "context_size": cfg.context_size}
        logger.info("Caching %s activations in %s", split, path)
        out.append(cache.fill(path, stream, tokens, stride, {**key, "split": split}))
    return out[0], out[1]


def layer_metrics(cfg: TranscoderConfig, layer: int, tc: Any, info: CacheInfo) -> dict[str, Any]:
    """Held-out metrics of one transcoder from the eval cache: explained variance of the MLP
    output, L0, dead and dense (the store's threshold) shares."""
    import torch

    path = Path(cfg.work_dir) / "eval"
    n = min(info.tokens, cfg.eval_tokens)
    x = load_rows(path, in_key(layer), info, n)
    y = load_rows(path, out_key(layer), info, n)
    sse = torch.zeros((), dtype=torch.float64)
    sum_y = torch.zeros(y.shape[1], dtype=torch.float64)
    sum_y2 = torch.zeros((), dtype=torch.float64)
    fires = torch.zeros(tc.cfg.d_sae, dtype=torch.int64)
    l0 = 0.0
    with torch.inference_mode():
        for start in range(0, n, 4096):
            xb, yb = x[start : start + 4096].float(), y[start : start + 4096].double()
            y_hat, acts = tc.forward_with_activations(xb)
            sse += (yb - y_hat.double()).pow(2).sum()
            sum_y += yb.sum(0)
            sum_y2 += yb.pow(2).sum()
            on = acts > 0
            fires += on.sum(0)
            l0 += float(on.sum())
    mean = sum_y / n
    total = float(sum_y2 - n * mean.pow(2).sum())
    return {
        "layer": layer,
        "hook_name": tc.cfg.metadata.hook_name,
        "hook_name_out": tc.cfg.metadata.hook_name_out,
        "eval_tokens": n,
        "explained_variance": round(1 - float(sse) / total, 4),
        "l0": round(l0 / n, 2),
        "dead_fraction": round(float((fires == 0).float().mean()), 4),
        "dense_fraction": round(float((fires > DEFAULT_DENSE_THRESHOLD * n).float().mean()), 4),
    }


def replacement_hooks(transcoders: dict[int, Any], keep: Any) -> dict[str, Any]:
    """Routed hooks that replace each layer's MLP output by its transcoder's reading of the
    layer's MLP input, where ``keep`` (``[batch, pos]``) is true; elsewhere (BOS, pad) the
    model's own output stays."""
    import torch

    seen: dict[int, Any] = {}
    hooks: dict[str, Any] = {}
    for layer, tc in transcoders.items():

        def read(act: Any, hook: Any, layer: int = layer) -> None:
            seen[layer] = act

        def write(act: Any, hook: Any, layer: int = layer, tc: Any = tc) -> Any:
            out = tc(seen[layer].float()).to(act.dtype)
            return torch.where(keep.unsqueeze(-1), out, act)

        hooks[INPUT_HOOK.format(layer=layer)] = read
        hooks[OUTPUT_HOOK.format(layer=layer)] = write
    return hooks


def replacement_metrics(
    cfg: TranscoderConfig,
    model: HookedSAETransformer,
    tokenizer: Any,
    transcoders: dict[int, Any],
    device: str,
) -> dict[str, Any]:
    """The replacement model (every MLP of ``transcoders`` replaced by its transcoder, no
    error terms; BOS and pad keep their own MLP output) against the original on ``ce_tokens``
    held-out tokens: next-token cross-entropy of each, the increase, and the share of
    positions where both predict the same top token."""
    import torch
    import torch.nn.functional as F

    from explorer.hooks import routed
    from precompute.corpus import pad_windows
    from precompute.train.activations import window_ids

    wcfg = _window_cfg(cfg)
    special = set(tokenizer.all_special_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    windows = window_ids(wcfg, tokenizer, "heldout", mixed=True)
    ce = {"clean": 0.0, "replaced": 0.0}
    agree = n = 0
    while n < cfg.ce_tokens:
        chunk = [w for _, w in zip(range(8), windows, strict=False)]
        if not chunk:
            break
        ids, keep = pad_windows(chunk, pad, special)
        ids_d, keep_d = ids.to(device), keep.to(device)
        hooks = replacement_hooks(transcoders, keep_d)
        with torch.inference_mode():
            clean = model(ids_d, return_type="logits")
            with routed(model, hooks):
                replaced = model(ids_d, return_type="logits")
        tgt = ids_d[:, 1:]
        valid = keep_d[:, 1:] & keep_d[:, :-1]
        for name, logits in (("clean", clean), ("replaced", replaced)):
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                tgt.reshape(-1),
                reduction="none",
            ).reshape(tgt.shape)
            ce[name] += float(loss[valid].sum())
        same = clean[:, :-1].argmax(-1) == replaced[:, :-1].argmax(-1)
        agree += int(same[valid].sum())
        n += int(valid.sum())
    if n == 0:
        raise ValueError("the held-out split is empty: cannot evaluate")
    return {
        "layers": sorted(transcoders),
        "ce_tokens": n,
        "ce_clean": round(ce["clean"] / n, 4),
        "ce_replaced": round(ce["replaced"] / n, 4),
        "ce_delta": round((ce["replaced"] - ce["clean"]) / n, 4),
        "top1_agreement": round(agree / n, 4),
    }


def train_transcoders(
    cfg: TranscoderConfig,
    model: HookedSAETransformer,
    tokenizer: Any,
    model_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train (or resume) the transcoders of ``cfg.layers`` and write them with their metrics
    and the manifest under ``cfg.out_dir``; returns ``{"layers": {n: metrics}, "replacement":
    {...}}``."""
    import torch

    from explorer.bundle import resolve_device

    meta = dict(model_meta or {})
    model_name = str(meta.pop("model", model.cfg.model_name))
    device = resolve_device(cfg.device)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model.to(device, print_details=False)
    results: dict[int, dict[str, Any]] = {}
    todo = [n for n in cfg.layers if finished_metrics(out_dir / f"layer_{n}") is None]
    if todo:
        train_info, eval_info = fill_caches(cfg, model, tokenizer, device)
    for layer in cfg.layers:
        path = out_dir / f"layer_{layer}"
        done = finished_metrics(path)
        if done is not None:
            results[layer] = done
            continue
        rows = min(train_info.tokens, cfg.training_tokens)
        x = load_rows(work / "train", in_key(layer), train_info, rows)
        y = load_rows(work / "train", out_key(layer), train_info, rows)
        t0 = time.perf_counter()
        weights = train_layer(cfg, x, y, layer, work / f"checkpoint_layer_{layer}.pt", device)
        seconds = time.perf_counter() - t0
        del x, y
        save_transcoder(weights, path, layer, model_name, cfg)
        metrics = layer_metrics(cfg, layer, load_transcoder(path), eval_info)
        metrics.update(training_tokens=rows * cfg.epochs, training_seconds=round(seconds, 1))
        metrics["device"] = device
        atomic_write_text(path / METRICS, json.dumps(metrics, indent=2))
        (work / f"checkpoint_layer_{layer}.pt").unlink(missing_ok=True)
        results[layer] = metrics
        logger.info(
            "layer %d: EV %.3f  L0 %.1f  dead %.3f  dense %.3f  (%.0f s)",
            layer,
            metrics["explained_variance"],
            metrics["l0"],
            metrics["dead_fraction"],
            metrics["dense_fraction"],
            seconds,
        )
    replacement_path = out_dir / REPLACEMENT
    try:
        replacement = json.loads(replacement_path.read_text())
        if replacement.get("layers") != sorted(cfg.layers):
            raise ValueError("other layers")
    except (OSError, ValueError):
        tcs = {n: load_transcoder(out_dir / f"layer_{n}", device) for n in cfg.layers}
        with torch.inference_mode():
            replacement = replacement_metrics(cfg, model, tokenizer, tcs, device)
        atomic_write_text(replacement_path, json.dumps(replacement, indent=2))
    write_manifest(cfg, results, replacement, model_name, meta)
    return {"layers": results, "replacement": replacement}


def write_manifest(
    cfg: TranscoderConfig,
    metrics: dict[int, dict[str, Any]],
    replacement: dict[str, Any],
    model: str,
    model_info: dict[str, Any],
) -> None:
    """The manifest beside the layer directories (an :class:`SaeManifest`, as the SAEs'), the
    replacement model's metrics in its config record."""
    from precompute.train.trainer import write_dictionary_manifest

    record = {**cfg.to_dict(), "replacement_model": replacement}
    write_dictionary_manifest(
        Path(cfg.out_dir), architecture(cfg), cfg.corpus, record, metrics, model, model_info
    )


def train_transcoder_preset(cfg: TranscoderConfig, cache_dir: str | None = None) -> dict[str, Any]:
    """Load the preset's model and train its transcoders (the ``train-transcoders`` command)."""
    from explorer.bundle import hooked_from_hf, load_hf_model, preset, resolve_device
    from explorer.gguf_model import embedded_identity

    spec = preset(cfg.preset)
    hf_model, tokenizer = load_hf_model(spec.model, cache_dir)
    model = hooked_from_hf(hf_model, tokenizer, device=resolve_device(cfg.device))
    del hf_model
    meta: dict[str, Any] = (
        embedded_identity() if spec.model == "embedded" else {"model": spec.model}
    )
    return train_transcoders(cfg, model, tokenizer, meta)


def metrics_table(results: dict[str, Any]) -> str:
    """Every layer's metrics, a row a layer, then the replacement model's line."""
    head = f"{'layer':>5} {'EV':>6} {'L0':>6} {'dead':>6} {'dense':>6}"
    rows = [
        f"{n:>5} {m['explained_variance']:>6.3f} {m['l0']:>6.1f} {m['dead_fraction']:>6.3f} "
        f"{m['dense_fraction']:>6.3f}"
        for n, m in sorted(results["layers"].items())
    ]
    r = results["replacement"]
    tail = (
        f"replacement model ({len(r['layers'])} layers, {r['ce_tokens']:,} tokens): CE "
        f"{r['ce_clean']:.3f} -> {r['ce_replaced']:.3f} ({r['ce_delta']:+.3f}), top-1 "
        f"agreement {r['top1_agreement']:.1%}"
    )
    return "\n".join([head, *rows, tail])
