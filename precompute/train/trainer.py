"""sae-lens glue: train one BatchTopK SAE per layer in lockstep, save, reload, resume.

A shuffling buffer of residuals (:class:`~precompute.train.activations.ActivationStream`) feeds
sae-lens's ``MultiSAETrainer``, which trains one BatchTopK SAE per layer in lockstep (BatchTopK
saves as a JumpReLU SAE: Gemma Scope's own architecture, and a token's features never depend on
the rest of the batch). Shortcuts and why:

- ``b_dec`` starts at the data mean (in the scaled units the trainer sees) or most features die;
  we also fix sae-lens's activation scaler ourselves, from the same batches, so that the mean
  and the scale agree (:func:`~precompute.train.activations.mean_and_scale`).
- Weights are saved with the two big matrices in bfloat16 and the vectors in float32: half the
  bytes in ``assets/`` at a reconstruction cost far below the metrics' precision (the metrics
  are measured on the saved, reloaded SAE).

Training is resumable per layer: a layer whose directory holds a finished SAE with metrics is not
trained again. Each layer's metrics go to ``layer_N/metrics.json``, and all of them with the
provenance to the directory's :class:`~explorer.store.saes.SaeManifest`.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer.files import atomic_write_text, replace_dir
from explorer.store.saes import SaeLayer, SaeManifest
from precompute.train.activations import ActivationStream, mean_and_scale, window_ids
from precompute.train.config import TrainConfig
from precompute.train.evaluate import evaluate, metrics_line

if TYPE_CHECKING:
    from sae_lens import SAE, HookedSAETransformer
    from torch import Tensor

logger = logging.getLogger(__name__)

METRICS = "metrics.json"
ARCHITECTURE = "jumprelu (trained as batchtopk)"


def train_saes(
    cfg: TrainConfig,
    model: HookedSAETransformer,
    tokenizer: Any,
    model_meta: dict[str, Any] | None = None,
) -> dict[int, dict[str, Any]]:
    """Train (or resume) the SAEs of ``cfg.layers`` on ``model`` and save them under
    ``cfg.out_dir``; returns the metrics per layer (trained now or found finished).

    ``model_meta`` names the model in the manifest (``{"model", …}``, e.g.
    ``explorer.gguf_model.embedded_identity()``); without it, ``model.cfg.model_name``.
    """
    import torch
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.training.multi_sae_trainer import MultiSAETrainer

    from explorer.bundle import resolve_device
    from precompute.train.balanced import BalancedBatchTopKTrainingSAE

    meta = dict(model_meta or {})
    model_name = str(meta.pop("model", model.cfg.model_name))
    device = resolve_device(cfg.device)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = {n: m for n in cfg.layers if (m := finished_metrics(out_dir / f"layer_{n}"))}
    todo = [n for n in cfg.layers if n not in done]
    if not todo:
        logger.info("All layers are trained already: %s", ", ".join(map(str, cfg.layers)))
        return done
    logger.info("Training layers %s (finished already: %s)", todo, sorted(done) or "none")
    torch.manual_seed(cfg.seed)
    model.to(device, print_details=False)
    hooks = {n: cfg.hook_name(n) for n in todo}
    keys = {n: str(n) for n in todo}  # sae-lens names each SAE by a string
    d_in = model.cfg.d_model
    stream = ActivationStream(
        model=model,
        hooks=hooks,
        windows=lambda: window_ids(cfg, tokenizer, "train"),
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        special_ids=set(tokenizer.all_special_ids),
        model_batch=cfg.model_batch,
        buffer_batches=cfg.buffer_batches,
        seed=cfg.seed,
        device=device,
    )
    batches = _training_batches(cfg, stream, tokenizer, device)
    warm = [next(batches) for _ in range(max(1, min(64, 200_000 // cfg.batch_size)))]
    stats = mean_and_scale(warm, d_in)
    init = _init_weights(cfg, todo)
    saes = {}
    for layer in todo:
        sae_cfg = BatchTopKTrainingSAEConfig(
            d_in=d_in,
            d_sae=cfg.d_sae,
            k=cfg.k,
            device=device,
            normalize_activations="expected_average_only_in",
            metadata=SAEMetadata(
                hook_name=hooks[layer],
                model_name=model_name,
                context_size=cfg.context_size,
                prepend_bos=True,
                dataset_path=cfg.corpus,
            ),
        )
        mean, scale = stats[layer]
        sae: Any
        if cfg.max_density is not None:
            sae = BalancedBatchTopKTrainingSAE(
                sae_cfg,
                cfg.max_density,
                rate=cfg.balance_rate,
                free=cfg.free_features,
                min_density=cfg.min_density,
            )
        else:
            sae = BatchTopKTrainingSAE(sae_cfg)
        if layer in init:  # TrainConfig checks that init comes with max_density
            sae.load_inference_weights(init[layer], scale)
        else:
            with torch.no_grad():
                sae.b_dec.copy_(mean.to(sae.b_dec.device) * scale)
        saes[keys[layer]] = sae
    steps = cfg.training_tokens // cfg.batch_size
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * cfg.batch_size,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr / 10,
        lr_decay_steps=steps // 5,
        device=device,
        dead_feature_window=max(1, min(1000, steps // 4)),
        feature_sampling_window=max(1, min(2000, steps // 2)),
    )

    def provider() -> Iterator[dict[str, Tensor]]:
        """The stream's batches keyed by hook name, as ``MultiSAETrainer`` looks them up."""
        for batch in itertools.chain(warm, batches):
            yield {hooks[n]: acts for n, acts in batch.items()}

    trainer = MultiSAETrainer(
        cfg=trainer_cfg,
        saes=saes,
        hook_names={keys[n]: hooks[n] for n in todo},
        data_provider=provider(),
    )
    for layer in todo:
        trainer.trainers[keys[layer]].activation_scaler.scaling_factor = stats[layer][1]
    t0 = time.perf_counter()
    trained = trainer.fit()
    seconds = time.perf_counter() - t0
    logger.info(
        "Trained %d SAEs on %d tokens each in %.0f s (%d corpus tokens read)",
        len(trained),
        trainer_cfg.total_training_samples,
        seconds,
        stream.tokens_read,
    )
    results = dict(done)
    for layer in todo:
        path = out_dir / f"layer_{layer}"
        save_compact(trained[keys[layer]], path)
        metrics = evaluate(cfg, model, tokenizer, layer, load_saved(path, device), device)
        metrics.update(
            training_tokens=trainer_cfg.total_training_samples,
            training_seconds=round(seconds, 1),
            device=device,
        )
        atomic_write_text(path / METRICS, json.dumps(metrics, indent=2))
        results[layer] = metrics
        logger.info("layer %d: %s", layer, metrics_line(metrics))
    write_manifest(cfg, results, model_name, meta)
    return results


def _training_batches(
    cfg: TrainConfig, stream: ActivationStream, tokenizer: Any, device: str
) -> Iterator[dict[int, Tensor]]:
    """Shuffled training batches: from the stream, or from ``cfg.activation_cache`` (filled
    first, or resumed, with ``cfg.training_tokens`` rows from an even sample of the windows)."""
    if cfg.activation_cache is None:
        return stream.batches(cfg.batch_size)
    from precompute.train import cache

    path = Path(cfg.activation_cache)
    found = cache.read_info(path)
    if found is not None:
        stride = found.stride  # fill checks the rest of the source, finished cache or not
    else:
        n_windows = sum(1 for _ in window_ids(cfg, tokenizer, "train"))
        stride = max(1, n_windows * (cfg.context_size - 1) // cfg.training_tokens)
    key = {"corpus": cfg.corpus, "preset": cfg.preset, "context_size": cfg.context_size}
    info = cache.fill(path, stream, cfg.training_tokens, stride, key)
    return cache.batches(path, info, tuple(sorted(stream.hooks)), cfg.batch_size, cfg.seed, device)


def _init_weights(cfg: TrainConfig, layers: list[int]) -> dict[int, dict[str, Tensor]]:
    """The saved weights of ``cfg.init`` per layer (empty without one); a missing layer or
    an unfinished directory is an error that names it."""
    if cfg.init is None:
        return {}
    from safetensors.torch import load_file

    out = {}
    for layer in layers:
        path = Path(cfg.init) / f"layer_{layer}"
        if finished_metrics(path) is None:
            raise ValueError(f"no finished SAE of layer {layer} to start from in {cfg.init}")
        out[layer] = load_file(str(path / "sae_weights.safetensors"))
    return out


def finished_metrics(path: Path) -> dict[str, Any] | None:
    """The metrics of a finished layer directory, or ``None`` if it is absent or partial."""
    try:
        if not (path / "cfg.json").is_file() or not (path / "sae_weights.safetensors").is_file():
            return None
        return dict(json.loads((path / METRICS).read_text()))
    except (OSError, ValueError):
        return None


def save_compact(sae: Any, path: Path) -> None:
    """Save ``sae`` in sae-lens's inference format with the matrices in bfloat16.

    Written to a temporary sibling directory and swapped into place, so a killed run never
    leaves a layer directory that looks finished.
    """
    import torch
    from safetensors.torch import load_file, save_file

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    sae.save_inference_model(str(tmp))
    weights = tmp / "sae_weights.safetensors"
    tensors = load_file(str(weights))
    compact = {
        k: (v.to(torch.bfloat16) if v.ndim == 2 else v.float()).contiguous()
        for k, v in tensors.items()
    }
    save_file(compact, str(weights))
    replace_dir(tmp, path)


def load_saved(path: Path, device: str = "cpu") -> SAE:
    """A saved layer directory as an sae-lens ``SAE`` in float32 (the bf16 matrices upcast)."""
    from sae_lens import SAE

    return SAE.load_from_disk(str(path), device=device, dtype="float32")


def architecture(cfg: TrainConfig) -> str:
    """What the saved SAEs are, for the manifest."""
    if cfg.max_density is None:
        return ARCHITECTURE
    floor = f", floor {cfg.min_density:.3%}" if cfg.min_density is not None else ""
    return f"jumprelu (trained as batchtopk, firing rate capped at {cfg.max_density:.2%}{floor})"


def train_record(cfg: TrainConfig) -> dict[str, Any]:
    """The config for the manifest; a fine-tuning stage also records the stage it started
    from (its config and per-layer metrics, from its manifest), so the provenance is whole."""
    out = cfg.to_dict()
    if cfg.init is not None:
        start = SaeManifest.read(Path(cfg.init))
        out["init_stage"] = {
            "architecture": start.architecture,
            "train_config": start.train_config,
            "layers": {str(x.layer): x.metrics for x in start.layers},
        }
    return out


def write_manifest(
    cfg: TrainConfig, metrics: dict[int, dict[str, Any]], model: str, model_info: dict[str, Any]
) -> None:
    """The :class:`~explorer.store.saes.SaeManifest` beside the layer directories: provenance
    (versions, ``model`` and ``model_info``, corpus, config) and each layer's metrics."""
    write_dictionary_manifest(
        Path(cfg.out_dir), architecture(cfg), cfg.corpus, train_record(cfg), metrics, model,
        model_info,
    )  # fmt: skip


def write_dictionary_manifest(
    out_dir: Path,
    architecture: str,
    corpus: str,
    train_config: dict[str, Any],
    metrics: dict[int, dict[str, Any]],
    model: str,
    model_info: dict[str, Any],
) -> None:
    """Write the manifest of a directory of trained dictionaries (SAEs or transcoders), a
    ``layer_N/`` each: versions, model, corpus and its sha256, the config, per-layer metrics."""
    import sae_lens
    import torch

    from explorer import __version__
    from precompute.corpus import corpus_sha256

    SaeManifest(
        package_version=__version__,
        sae_lens_version=sae_lens.__version__,
        torch_version=torch.__version__,
        model=model,
        architecture=architecture,
        corpus=corpus,
        corpus_sha256=corpus_sha256(corpus),
        train_config=train_config,
        layers=tuple(
            SaeLayer(
                layer=n,
                path=f"layer_{n}",
                metrics={k: v for k, v in metrics[n].items() if k not in ("layer", "path")},
            )
            for n in sorted(metrics)
        ),
        model_info=model_info,
    ).write(out_dir)


def train_preset(
    cfg: TrainConfig | list[TrainConfig], cache_dir: str | None = None
) -> dict[int, dict[str, Any]]:
    """Load the preset's model and train its SAEs (the ``train-saes`` command): one config, or
    the stages of a recipe in order (:mod:`precompute.train.recipes`), the model loaded once.
    Returns the last stage's metrics."""
    from explorer.bundle import hooked_from_hf, load_hf_model, preset, resolve_device
    from explorer.gguf_model import embedded_identity

    stages = cfg if isinstance(cfg, list) else [cfg]
    first = stages[0]
    spec = preset(first.preset)
    device = resolve_device(first.device)
    hf_model, tokenizer = load_hf_model(spec.model, cache_dir)
    model = hooked_from_hf(hf_model, tokenizer, device=device, dtype="float32")
    del hf_model
    meta: dict[str, Any] = (
        embedded_identity() if spec.model == "embedded" else {"model": spec.model}
    )
    results: dict[int, dict[str, Any]] = {}
    for stage in stages:
        logger.info("Stage -> %s", stage.out_dir)
        results = train_saes(stage, model, tokenizer, meta)
    return results
