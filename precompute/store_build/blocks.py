"""The reduce of one layer in feature blocks, so that its memory does not grow with the run.

Every statistic, top-k, interval sample and example of a feature depends only on that feature's
records, so the features split into contiguous blocks ``[f0, f1)`` that reduce one at a time with
the same exact functions (:func:`reduce_layer`, :func:`examples`, given local feature ids and
``first_feature=f0`` for the sample keys); the blocks' results concatenate in feature order. The
result is the one-block result, whatever the blocks.

:func:`plan_blocks` cuts the blocks from the exact per-feature record counts (the shards' indexes)
so that each holds at most ``max_records``: the reduce holds one block's records at a time (about
:data:`BYTES_PER_RECORD` each, all temporaries counted), plus per-feature arrays and the token
table. A single feature with more records than the budget gets a block of its own: that block,
and only it, exceeds the budget.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from precompute.store_build.accumulate import (
    Examples,
    LayerStats,
    ReduceConfig,
    examples,
    reduce_layer,
)
from precompute.store_build.records import Records, TokenTable
from precompute.store_build.shards import ShardReader

BYTES_PER_RECORD = 48
"""Peak bytes per record of a block in the reduce: the read arrays (16), the canonical key and
activations (12), interval and sample keys (9), candidates and chunk temporaries."""


def plan_blocks(fires: NDArray[np.int64], max_records: int) -> list[tuple[int, int]]:
    """Contiguous feature ranges covering ``[0, F)``, each with at most ``max_records`` records
    (or a single feature that alone has more).

    >>> plan_blocks(np.array([3, 3, 0, 5, 1]), max_records=6)
    [(0, 3), (3, 5)]
    >>> plan_blocks(np.array([2, 9, 1]), max_records=4)  # feature 1 alone is over the budget
    [(0, 1), (1, 2), (2, 3)]
    """
    cum = np.concatenate([[0], np.cumsum(fires, dtype=np.int64)])
    n, blocks, f0 = len(fires), [], 0
    while f0 < n:
        f1 = int(np.searchsorted(cum, cum[f0] + max(max_records, 0), side="right")) - 1
        f1 = min(max(f1, f0 + 1), n)
        blocks.append((f0, f1))
        f0 = f1
    return blocks


def concat_stats(parts: list[LayerStats]) -> LayerStats:
    """Blocks' statistics in feature order as one layer's."""
    first = parts[0]
    return LayerStats(
        n_tokens=first.n_tokens,
        **{
            name: np.concatenate([getattr(p, name) for p in parts])
            for name in (
                "n_fires",
                "density",
                "max_act",
                "mean_act",
                "hist_counts",
                "interval_counts",
                "top_pos",
                "top_act",
                "interval_pos",
                "dead",
                "dense",
            )
        },
    )


def concat_examples(parts: list[tuple[int, Examples]]) -> Examples:
    """Blocks' examples ``(first_feature, examples with local ids)`` as one layer's."""
    return Examples(
        feature=np.concatenate([ex.feature + np.int32(f0) for f0, ex in parts]).astype(np.int32),
        group=np.concatenate([ex.group for _, ex in parts]),
        rank=np.concatenate([ex.rank for _, ex in parts]),
        pos=np.concatenate([ex.pos for _, ex in parts]),
        ctx_start=np.concatenate([ex.ctx_start for _, ex in parts]),
        ctx_len=np.concatenate([ex.ctx_len for _, ex in parts]),
        acts=[a for _, ex in parts for a in ex.acts],
    )


def reduce_blocks(
    reader: ShardReader,
    layer: int | str,
    n_features: int,
    table: TokenTable,
    cfg: ReduceConfig,
    max_records: int,
) -> tuple[LayerStats, Examples, int]:
    """One layer's exact statistics and examples, block by block; also the number of blocks."""
    blocks = plan_blocks(reader.fires(layer, n_features), max_records)
    parts = [reduce_block(reader, layer, f0, f1, table, cfg) for f0, f1 in blocks]
    return (
        concat_stats([s for s, _ in parts]),
        concat_examples([(f0, ex) for (f0, _), (_, ex) in zip(blocks, parts, strict=True)]),
        len(blocks),
    )


def reduce_block(
    reader: ShardReader, layer: int | str, f0: int, f1: int, table: TokenTable, cfg: ReduceConfig
) -> tuple[LayerStats, Examples]:
    """The statistics and examples of features ``[f0, f1)`` of ``layer`` (local feature ids)."""
    r = reader.block(layer, f0, f1)
    r.feat[:] -= np.int32(f0)  # local ids, in place (the arrays are this block's own)
    local = Records(pos=r.pos, feat=r.feat, act=r.act)
    del r
    s = reduce_layer(local, f1 - f0, table.n_tokens, cfg, first_feature=f0)
    return s, examples(s, local, table, cfg)
