"""Named multi-stage trainings: how a shipped set of SAEs is made, by one command.

``python -m precompute train-saes --recipe default`` runs every stage of the recipe in order; a
stage after the first starts from the SAEs of the stage before (``TrainConfig.init``). Stages
before the last are written under ``--work`` (not into ``assets/``), the last one to ``--out``.
Every stage resumes per layer like a single training, so a finished stage is never trained again
(and a stage's output copied in from elsewhere is used as is).

The ``default`` recipe:

1. ``batchtopk``: BatchTopK, k = 64, 16M tokens from a random init (278 s on an H100): the SAEs
   shipped before issue 13;
2. ``capped``: from those, k = 48 with every feature's firing rate held between a floor of
   0.01% and a cap of 0.7%, except the 200 densest (:mod:`precompute.train.balanced`), on 1M
   tokens (29 min on a 2-core CPU from an activation cache): the SAEs shipped in
   ``assets/saes``. Over an even sample of 200k training tokens they meet issue 13's targets on
   every layer (docs/steering.md, "Sparser SAEs"); a cap of 0.8% left layer 9 at 10.9% of its
   features above 1%: the cap packs hundreds of features just under it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from precompute.train.config import TrainConfig


@dataclass(frozen=True)
class Stage:
    """One stage: a name (its directory under the work directory) and what it changes in the
    :class:`TrainConfig` given on the command line."""

    name: str
    changes: dict[str, Any]


RECIPES: dict[str, tuple[Stage, ...]] = {
    "default": (
        Stage(
            "batchtopk",
            {
                "k": 64,
                "training_tokens": 16_000_000,
                "model_batch": 128,
                "max_density": None,
                "min_density": None,
            },
        ),
        Stage(
            "capped",
            {
                "k": 48,
                "max_density": 0.007,
                "min_density": 0.0001,
                "free_features": 200,
                "training_tokens": 1_000_000,
                "lr": 2e-4,
                "balance_rate": 0.05,
            },
        ),
    ),
}


def stage_configs(recipe: str, base: TrainConfig, work_dir: Path) -> list[TrainConfig]:
    """The configs of ``recipe``'s stages on top of ``base``: the last stage writes to
    ``base.out_dir``, the others to ``work_dir/<stage>``; each later stage starts from the one
    before. The activation cache, when asked for, is used by the stages that start from one
    (the first stage trains on 16M tokens: it streams)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}: expected one of {', '.join(RECIPES)}")
    stages = RECIPES[recipe]
    out: list[TrainConfig] = []
    for i, stage in enumerate(stages):
        last = i == len(stages) - 1
        cfg = dataclasses.replace(
            base,
            **stage.changes,
            out_dir=base.out_dir if last else str(work_dir / stage.name),
            init=out[-1].out_dir if out else None,
            activation_cache=base.activation_cache if out else None,
        )
        out.append(cfg)
    return out
