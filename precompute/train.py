"""Train a bundle's SAEs with sae-lens (the embedded default's SAEs come from here).

One forward pass per batch of corpus windows captures the residual stream of every layer being
trained; BOS and padding positions are dropped; a shuffling buffer feeds sae-lens's
``MultiSAETrainer``, which trains one BatchTopK SAE per layer in lockstep (BatchTopK saves as a
JumpReLU SAE: Gemma Scope's own architecture, and a token's features never depend on the rest
of the batch). Shortcuts and why:

- Gemma 3 270M's residual stream is dominated by its mean (about 98% of the norm at layer 9):
  we initialise ``b_dec`` at the data mean (in the scaled units the trainer sees) or most
  features die. We also fix sae-lens's activation scaler ourselves, from the same batches, so
  that the mean and the scale agree.
- Weights are saved with the two big matrices in bfloat16 and the vectors in float32: half the
  bytes in ``assets/`` at a reconstruction cost far below the metrics' precision (the metrics
  are measured on the saved, reloaded SAE).

Metrics are measured on held-out windows: explained variance, L0, dead fraction, and next-token
cross-entropy with the reconstruction spliced in versus the clean model (Gemma Scope's headline
metric). Training is resumable per layer: a layer whose directory holds a finished SAE with
metrics is not trained again.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sae_lens import SAE, HookedSAETransformer
    from torch import Tensor

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
METRICS = "metrics.json"


@dataclass(frozen=True)
class TrainConfig:
    """How to train a bundle's SAEs.

    Args:
        preset: the bundle preset whose model is used (its SAE sources name the output dirs).
        layers: layers to train (``blocks.N.hook_resid_post``).
        d_sae: SAE width.
        k: BatchTopK's average number of active features per token (the target L0).
        training_tokens: activation vectors each SAE sees.
        batch_size: activation vectors per optimizer step.
        lr: Adam learning rate (constant, then linear decay over the last 20%).
        context_size: tokens per window, BOS included.
        model_batch: windows per forward pass.
        buffer_batches: forward passes mixed in the shuffling buffer.
        corpus: corpus spec (see ``precompute.corpus.iter_documents``).
        eval_tokens: held-out tokens used for the metrics.
        seed: seeds torch, the buffer shuffling and the SAE init.
        device: ``auto``, ``cpu`` or ``cuda``.
        out_dir: where ``layer_N/`` directories and the manifest are written.
    """

    preset: str = "default"
    layers: tuple[int, ...] = (5, 9, 12, 15)
    d_sae: int = 4096
    k: int = 32
    training_tokens: int = 2_000_000
    batch_size: int = 4096
    lr: float = 4e-4
    context_size: int = 128
    model_batch: int = 32
    buffer_batches: int = 16
    corpus: str = "default"
    eval_tokens: int = 100_000
    seed: int = 0
    device: str = "auto"
    out_dir: str = "assets/saes"

    def __post_init__(self) -> None:
        if not self.layers or any(n < 0 for n in self.layers):
            raise ValueError("layers must be a non-empty list of non-negative layer indices")
        for name in ("d_sae", "k", "training_tokens", "batch_size", "context_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.k >= self.d_sae:
            raise ValueError("k must be smaller than d_sae")
        if self.context_size < 2:
            raise ValueError("context_size must be at least 2 (BOS and a token)")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ValueError("lr must be a positive number")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["layers"] = list(self.layers)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        data["layers"] = tuple(data.get("layers", ()))
        return cls(**data)


@dataclass
class ActivationStream:
    """Residual activations of several hooks from one forward pass per batch of windows.

    ``batches()`` yields ``{hook_name: [batch_size, d_model]}`` dicts from a shuffling buffer,
    BOS and padding removed. The window order and the shuffling are seeded.
    """

    model: HookedSAETransformer
    hook_names: list[str]
    windows: Callable[[], Iterator[list[int]]]
    pad_id: int
    special_ids: set[int]
    model_batch: int = 32
    buffer_batches: int = 16
    seed: int = 0
    device: str = "cpu"
    tokens_read: int = field(default=0, init=False)

    def forward(self, windows: list[list[int]]) -> dict[str, Tensor]:
        """One forward pass; returns each hook's activations at non-special positions."""
        import torch

        from precompute.corpus import pad_windows

        ids, keep = pad_windows(windows, self.pad_id, self.special_ids)
        stop = max(int(n.split(".")[1]) for n in self.hook_names) + 1
        captured: dict[str, Tensor] = {}

        def capture(act: Tensor, hook: Any) -> None:
            captured[hook.name] = act

        with torch.inference_mode():
            self.model.run_with_hooks(
                ids.to(self.device),
                fwd_hooks=[(n, capture) for n in self.hook_names],
                stop_at_layer=stop,
                return_type=None,
            )
        keep_dev = keep.to(self.device)
        self.tokens_read += int(keep.sum())
        return {n: captured[n][keep_dev].float() for n in self.hook_names}

    def raw_batches(self) -> Iterator[dict[str, Tensor]]:
        """Forward passes in corpus order, unshuffled."""
        chunk: list[list[int]] = []
        for window in self.windows():
            chunk.append(window)
            if len(chunk) == self.model_batch:
                yield self.forward(chunk)
                chunk = []
        if chunk:
            yield self.forward(chunk)

    def batches(self, batch_size: int) -> Iterator[dict[str, Tensor]]:
        """Shuffled training batches; reads the corpus again from the start when it runs out."""
        import torch

        gen = torch.Generator().manual_seed(self.seed)
        while True:
            source = self.raw_batches()
            exhausted = False
            yielded = 0
            while not exhausted:
                parts: list[dict[str, Tensor]] = []
                for _ in range(self.buffer_batches):
                    try:
                        parts.append(next(source))
                    except StopIteration:
                        exhausted = True
                        break
                if not parts:
                    break
                buffer = {n: torch.cat([p[n] for p in parts]) for n in self.hook_names}
                size = next(iter(buffer.values())).shape[0]
                order = torch.randperm(size, generator=gen).to(self.device)
                for start in range(0, size - batch_size + 1, batch_size):
                    idx = order[start : start + batch_size]
                    yielded += 1
                    yield {n: buffer[n][idx] for n in self.hook_names}
            if yielded == 0:
                raise ValueError(
                    f"the corpus gives fewer than batch_size={batch_size} tokens per buffer: "
                    "use a larger corpus or a smaller batch size"
                )


def window_ids(cfg: TrainConfig, tokenizer: Any, split: str) -> Iterator[list[int]]:
    """Token-id windows (BOS first) of the configured corpus split."""
    from precompute.corpus import iter_documents, token_windows

    for window in token_windows(iter_documents(cfg.corpus, split), tokenizer, cfg.context_size):
        yield list(window.token_ids)


def _mean_and_scale(batches: list[dict[str, Tensor]], d_in: int) -> dict[str, tuple[Tensor, float]]:
    """Per hook: the mean activation and sae-lens's scaling factor ``sqrt(d_in) / mean norm``."""
    import torch

    out = {}
    for name in batches[0]:
        acts = torch.cat([b[name] for b in batches]).double()
        mean = acts.mean(0)
        scale = d_in**0.5 / float(acts.norm(dim=-1).mean())
        out[name] = (mean.float(), scale)
    return out


def train_saes(
    cfg: TrainConfig,
    model: HookedSAETransformer,
    tokenizer: Any,
    model_meta: dict[str, Any] | None = None,
) -> dict[int, dict[str, Any]]:
    """Train (or resume) the SAEs of ``cfg.layers`` on ``model`` and save them under
    ``cfg.out_dir``; returns the metrics per layer (trained now or found finished)."""
    import torch
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.training.multi_sae_trainer import MultiSAETrainer

    from explorer.bundle import resolve_device

    device = resolve_device(cfg.device)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = {n: m for n in cfg.layers if (m := finished_metrics(out_dir / f"layer_{n}"))}
    todo = [n for n in cfg.layers if n not in done]
    if not todo:
        logger.warning("All layers are trained already: %s", ", ".join(map(str, cfg.layers)))
        return done
    logger.warning("Training layers %s (finished already: %s)", todo, sorted(done) or "none")
    torch.manual_seed(cfg.seed)
    model.to(device, print_details=False)
    hooks = {str(n): f"blocks.{n}.hook_resid_post" for n in todo}
    d_in = model.cfg.d_model
    stream = ActivationStream(
        model=model,
        hook_names=list(hooks.values()),
        windows=lambda: window_ids(cfg, tokenizer, "train"),
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        special_ids=set(tokenizer.all_special_ids),
        model_batch=cfg.model_batch,
        buffer_batches=cfg.buffer_batches,
        seed=cfg.seed,
        device=device,
    )
    batches = stream.batches(cfg.batch_size)
    warm = [next(batches) for _ in range(max(1, min(64, 200_000 // cfg.batch_size)))]
    stats = _mean_and_scale(warm, d_in)
    saes = {}
    for key, hook in hooks.items():
        sae_cfg = BatchTopKTrainingSAEConfig(
            d_in=d_in,
            d_sae=cfg.d_sae,
            k=cfg.k,
            device=device,
            normalize_activations="expected_average_only_in",
            metadata=SAEMetadata(
                hook_name=hook,
                model_name=(model_meta or {}).get("model", model.cfg.model_name),
                context_size=cfg.context_size,
                prepend_bos=True,
                dataset_path=cfg.corpus,
            ),
        )
        sae = BatchTopKTrainingSAE(sae_cfg)
        mean, scale = stats[hook]
        with torch.no_grad():
            sae.b_dec.copy_(mean.to(sae.b_dec.device) * scale)
        saes[key] = sae
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
        yield from warm
        yield from batches

    trainer = MultiSAETrainer(
        cfg=trainer_cfg, saes=saes, hook_names=hooks, data_provider=provider()
    )
    for key, hook in hooks.items():
        trainer.trainers[key].activation_scaler.scaling_factor = stats[hook][1]
    t0 = time.perf_counter()
    trained = trainer.fit()
    seconds = time.perf_counter() - t0
    logger.warning(
        "Trained %d SAEs on %d tokens each in %.0f s (%d corpus tokens read)",
        len(trained),
        trainer_cfg.total_training_samples,
        seconds,
        stream.tokens_read,
    )
    results = dict(done)
    for key, sae in trained.items():
        layer = int(key)
        path = out_dir / f"layer_{layer}"
        save_compact(sae, path)
        metrics = evaluate(cfg, model, tokenizer, layer, load_saved(path, device), device)
        metrics.update(
            training_tokens=trainer_cfg.total_training_samples,
            training_seconds=round(seconds, 1),
            device=device,
        )
        (path / METRICS).write_text(json.dumps(metrics, indent=2))
        results[layer] = metrics
        logger.warning("layer %d: %s", layer, _fmt(metrics))
    write_manifest(cfg, results, model_meta or {})
    return results


def _fmt(m: dict[str, Any]) -> str:
    return (
        f"EV {m['explained_variance']:.3f}  L0 {m['l0']:.1f}  dead {m['dead_fraction']:.3f}  "
        f"CE {m['ce_clean']:.3f} -> {m['ce_spliced']:.3f} (+{m['ce_delta']:.3f})"
    )


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

    Written to a temporary sibling directory and renamed into place, so a killed run never
    leaves a layer directory that looks finished.
    """
    from safetensors.torch import load_file, save_file

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    sae.save_inference_model(str(tmp))
    weights = tmp / "sae_weights.safetensors"
    tensors = load_file(str(weights))
    import torch

    compact = {
        k: (v.to(torch.bfloat16) if v.ndim == 2 else v.float()).contiguous()
        for k, v in tensors.items()
    }
    save_file(compact, str(weights))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def load_saved(path: Path, device: str = "cpu") -> SAE:
    from sae_lens import SAE

    return SAE.load_from_disk(str(path), device=device, dtype="float32")


def evaluate(
    cfg: TrainConfig,
    model: HookedSAETransformer,
    tokenizer: Any,
    layer: int,
    sae: SAE,
    device: str,
) -> dict[str, Any]:
    """Held-out metrics of one SAE: explained variance, L0, dead fraction, CE clean/spliced."""
    import torch
    import torch.nn.functional as F

    from precompute.corpus import pad_windows

    hook = f"blocks.{layer}.hook_resid_post"
    special = set(tokenizer.all_special_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sse = torch.zeros((), dtype=torch.float64)
    sum_x = torch.zeros(model.cfg.d_model, dtype=torch.float64)
    sum_x2 = torch.zeros((), dtype=torch.float64)
    l0_sum = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    ce_clean = ce_spliced = 0.0
    n_tok = n_ce = 0
    windows = window_ids(cfg, tokenizer, "heldout")
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
            spliced_logits = model.run_with_hooks(
                ids_d, fwd_hooks=[(hook, splice)], return_type="logits"
            )
        m = keep.to(device)
        x = recon["x"][m].double().cpu()
        x_hat = recon["x_hat"][m].double().cpu()
        feats = recon["feats"][m].cpu()
        sse += ((x - x_hat) ** 2).sum()
        sum_x += x.sum(0)
        sum_x2 += (x**2).sum()
        l0_sum += float((feats > 0).sum())
        fired |= (feats > 0).any(0)
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
    mean = sum_x / n_tok
    total_var = float(sum_x2 - n_tok * (mean**2).sum())
    return {
        "layer": layer,
        "hook_name": hook,
        "eval_tokens": n_tok,
        "explained_variance": round(1.0 - float(sse) / total_var, 4),
        "l0": round(l0_sum / n_tok, 2),
        "dead_fraction": round(1.0 - float(fired.float().mean()), 4),
        "ce_clean": round(ce_clean / max(n_ce, 1), 4),
        "ce_spliced": round(ce_spliced / max(n_ce, 1), 4),
        "ce_delta": round((ce_spliced - ce_clean) / max(n_ce, 1), 4),
    }


def write_manifest(
    cfg: TrainConfig, metrics: dict[int, dict[str, Any]], meta: dict[str, Any]
) -> None:
    """``manifest.json`` beside the layer directories: provenance and metrics."""
    import sae_lens
    import torch

    from explorer import __version__
    from precompute.corpus import corpus_sha256

    out_dir = Path(cfg.out_dir)
    manifest = {
        "schema_version": 1,
        "kind": "saes",
        "package_version": __version__,
        "sae_lens_version": sae_lens.__version__,
        "torch_version": torch.__version__,
        **meta,
        "architecture": "jumprelu (trained as batchtopk)",
        "corpus": cfg.corpus,
        "corpus_sha256": corpus_sha256(cfg.corpus),
        "train_config": cfg.to_dict(),
        "layers": [{"layer": n, "path": f"layer_{n}", **metrics[n]} for n in sorted(metrics)],
    }
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(out_dir / MANIFEST)


def train_preset(cfg: TrainConfig, cache_dir: str | None = None) -> dict[int, dict[str, Any]]:
    """Load the preset's model and train its SAEs (the ``train-saes`` command)."""
    from explorer.bundle import hooked_from_hf, load_hf_model, preset, resolve_device

    spec = preset(cfg.preset)
    device = resolve_device(cfg.device)
    hf_model, tokenizer = load_hf_model(spec.model, cache_dir)
    model = hooked_from_hf(hf_model, tokenizer, device=device, dtype="float32")
    del hf_model
    meta: dict[str, Any] = {"model": spec.model if spec.model != "embedded" else "gemma-3-270m"}
    if spec.model == "embedded":
        from explorer.gguf_model import GGUF_PACKAGE, gguf_sha256

        meta.update(model_source=GGUF_PACKAGE, gguf_sha256=gguf_sha256())
    return train_saes(cfg, model, tokenizer, meta)
