"""Training a bundle's SAEs with sae-lens (the embedded default's SAEs come from here).

One concept per module:

- :mod:`~precompute.train.config`: :class:`TrainConfig`, what to train and how.
- :mod:`~precompute.train.activations`: the activation stream: residuals of every trained layer
  from one forward pass per batch of corpus windows (through ``explorer.hooks``' routed hooks,
  as ``explorer.encode`` reads them), BOS and padding dropped, shuffled in a seeded buffer.
- :mod:`~precompute.train.trainer`: the sae-lens glue: train (and resume) one BatchTopK SAE per
  layer, save it compactly, reload it, write ``metrics.json`` and the SAE manifest.
- :mod:`~precompute.train.evaluate`: held-out metrics: explained variance, L0, dead fraction and
  next-token cross-entropy with the reconstruction spliced in.

What this room may import: ``explorer`` (bundle specs and model loading, routed hooks, files,
the SAE manifest, the embedded model's identity) and ``precompute.corpus``; ``sae_lens``,
``torch`` and ``safetensors`` only inside functions, so importing it (the CLI does, for
``TrainConfig``'s defaults) stays light. Nothing else imports from here but the CLI and tests.
"""

from precompute.train.activations import ActivationStream, window_ids
from precompute.train.config import TrainConfig
from precompute.train.evaluate import evaluate
from precompute.train.trainer import (
    finished_metrics,
    load_saved,
    save_compact,
    train_preset,
    train_saes,
)

__all__ = [
    "ActivationStream",
    "TrainConfig",
    "evaluate",
    "finished_metrics",
    "load_saved",
    "save_compact",
    "train_preset",
    "train_saes",
    "window_ids",
]
