"""How to train a bundle's SAEs: :class:`TrainConfig`, a frozen, validated, serialisable config."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    """How to train a bundle's SAEs.

    Args:
        preset: the bundle preset whose model is used; its spec names the hook each SAE reads
            (:meth:`hook_name`).
        layers: layers to train.
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
        max_density: cap every feature's firing rate at this fraction of tokens
            (:mod:`precompute.train.balanced`); ``None`` trains plain BatchTopK.
        balance_rate: the cap's largest threshold change per step, in units of the threshold.
        free_features: how many features the cap leaves alone (the densest ones).
        min_density: a floor under every feature's firing rate (needs ``max_density``): a
            feature firing less often is selected more until it does; ``None``: no floor.
        init: a directory of trained SAEs (layer_N/ and a manifest) to start from instead of a
            random init: a fine-tuning stage (:mod:`precompute.train.recipes`).
        activation_cache: a directory where the training activations are cached on the first
            pass and read from afterwards (:mod:`precompute.train.cache`): worth it where the
            model's forward pass is the cost (a CPU); ``None`` streams them.
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
    max_density: float | None = None
    balance_rate: float = 0.05
    free_features: int = 0
    min_density: float | None = None
    init: str | None = None
    activation_cache: str | None = None

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
        if self.max_density is not None and not 0 < self.max_density < 1:
            raise ValueError("max_density must be a fraction between 0 and 1")
        if self.min_density is not None and not (
            self.max_density is not None and 0 < self.min_density < self.max_density
        ):
            raise ValueError("min_density needs max_density, and must be between 0 and it")
        if self.init is not None and self.max_density is None:
            raise ValueError("starting from trained SAEs (init) needs max_density")
        if not 0 <= self.free_features < self.d_sae:
            raise ValueError("free_features must be between 0 and d_sae - 1")
        if self.balance_rate <= 0 or not math.isfinite(self.balance_rate):
            raise ValueError("balance_rate must be a positive number")

    def hook_name(self, layer: int) -> str:
        """The hook the SAE of ``layer`` reads: the preset spec's (``blocks.9.hook_resid_post``).

        An unknown preset is a ``BundleError`` that lists the known ones.
        """
        from explorer.bundle import preset

        return preset(self.preset).hook_name(layer)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["layers"] = list(self.layers)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        data["layers"] = tuple(data.get("layers", ()))
        return cls(**data)
