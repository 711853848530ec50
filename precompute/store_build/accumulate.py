"""Exact per-feature statistics and example selection from sparse activation records.

A run keeps, per layer, every non-zero SAE activation at a non-special position as one record
``(pos, feat, act)`` (:class:`Records`). Shards are merged by concatenation
(:meth:`Records.concat`); :func:`reduce_layer` and :func:`examples` then reduce all records of a
layer at once, vectorized over features (sorts, ``bincount``, ``reduceat``; no Python loop over
features or records). Every result is a function of the *set* of records: both functions first
put the records in canonical ``(feat, pos)`` order, so the shard layout and order never matter,
and every tie is broken by a fixed key:

- top-k: activation descending, then position ascending;
- interval samples: the records with the smallest ``splitmix64(seed ^ splitmix64(feat * 2**40
  + pos))`` keys (a bijection of ``(feat, pos)``, so keys never tie): a seeded uniform sample
  that does not depend on how many records there are or in which order they arrive.

Shortcuts, and why they stay exact: top-k and interval samples are chosen from a small candidate
set (a per-feature threshold on a fine histogram of activations; a per-interval threshold on the
sample key, raised and re-scanned for the rare interval that got too few), and only the
candidates are sorted. Sorting 64M records once costs seconds; sorting them three ways would
cost a minute.

>>> r = Records(pos=np.array([5, 3]), feat=np.array([1, 1]), act=np.array([2.0, 4.0]))
>>> reduce_layer(r, n_features=2, n_tokens=10, cfg=ReduceConfig(top_k=2)).top_pos[1].tolist()
[3, 5]
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from explorer.store.schema import DEFAULT_DENSE_THRESHOLD
from precompute.store_build.records import (
    MAX_FEATURES,
    POS_BITS,
    POS_MASK,
    AccumulateError,
    Records,
    TokenTable,
    chunks,
    sample_key,
)

logger = logging.getLogger(__name__)

_FINE_CELLS = 1 << 24
"""Budget for the top-k filter's fine histogram (features x buckets), and no more cells than
records: a small feature block's histogram stays small (the filter is exact at any size)."""
_FINE_OCTAVE_BITS = 4
"""Fine buckets cover 2**4 octaves below a feature's max (lower activations: the last one)."""
_SAMPLE_OVERSHOOT = 8.0
"""Interval candidates aim at this many times ``per_interval`` (re-scan when short)."""


@dataclass(frozen=True)
class ReduceConfig:
    """What :func:`reduce_layer` and :func:`examples` keep per feature.

    Args:
        top_k: top-activating examples per feature.
        n_bins: activation histogram bins over ``[0, max_act]``.
        n_intervals: equal activation intervals over ``[0, max_act]`` sampled for examples.
        per_interval: examples sampled per interval.
        before: context tokens kept before an example's centre.
        after: context tokens kept after it.
        seed: seed of the interval samples' key.
        dense_threshold: a feature firing on more than this share of tokens is flagged dense.
    """

    top_k: int = 20
    n_bins: int = 50
    n_intervals: int = 5
    per_interval: int = 5
    before: int = 24
    after: int = 8
    seed: int = 0
    dense_threshold: float = DEFAULT_DENSE_THRESHOLD

    def __post_init__(self) -> None:
        limits = {
            "top_k": (0, 2**15 - 1),
            "n_bins": (1, 2**20),
            "n_intervals": (1, 127),
            "per_interval": (0, 2**15 - 1),
            "before": (0, 2**14),
            "after": (0, 2**14),
            "seed": (0, 2**64 - 1),
        }
        for name, (lo, hi) in limits.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not lo <= value <= hi:
                raise AccumulateError(f"reduce config: {name} must be an int in [{lo}, {hi}]")
        if not 0.0 <= self.dense_threshold <= 1.0:
            raise AccumulateError("reduce config: dense_threshold must be in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReduceConfig:
        return cls(**data)


@dataclass(frozen=True)
class LayerStats:
    """Per-feature statistics of one layer (one row per feature, ``F`` features).

    Args:
        n_tokens: non-special tokens seen.
        n_fires: int64 ``[F]`` records per feature.
        density: float64 ``[F]`` ``n_fires / n_tokens``.
        max_act: float32 ``[F]`` (0 for a dead feature).
        mean_act: float32 ``[F]`` mean over fires (0 for a dead feature).
        hist_counts: int64 ``[F, n_bins]``; bin ``min(floor(act / max * n_bins), n_bins - 1)``
            in float64 (so ``act == max`` lands in the last bin).
        interval_counts: int64 ``[F, n_intervals]``, the same rule with ``n_intervals``.
        top_pos: int64 ``[F, top_k]`` positions by activation desc, then pos asc; -1 padded.
        top_act: float32 ``[F, top_k]`` their activations; 0 padded.
        interval_pos: int64 ``[F, n_intervals, per_interval]`` each interval's records with the
            smallest sample keys, in key order; -1 padded.
        dead: bool ``[F]`` ``n_fires == 0``.
        dense: bool ``[F]`` ``density > dense_threshold``.
    """

    n_tokens: int
    n_fires: NDArray[np.int64]
    density: NDArray[np.float64]
    max_act: NDArray[np.float32]
    mean_act: NDArray[np.float32]
    hist_counts: NDArray[np.int64]
    interval_counts: NDArray[np.int64]
    top_pos: NDArray[np.int64]
    top_act: NDArray[np.float32]
    interval_pos: NDArray[np.int64]
    dead: NDArray[np.bool_]
    dense: NDArray[np.bool_]

    @property
    def n_features(self) -> int:
        return len(self.n_fires)

    @property
    def interval_share(self) -> NDArray[np.float64]:
        """float64 ``[F, n_intervals]`` share of a feature's fires in each interval (0 if dead)."""
        return self.interval_counts / np.maximum(self.n_fires, 1)[:, None]


def _first_per_group(group: NDArray[np.int64], limit: int) -> tuple[NDArray[Any], NDArray[Any]]:
    """For sorted ``group`` ids: (indices of each group's first ``limit`` rows, their rank)."""
    n = len(group)
    first = np.ones(n, dtype=bool)
    first[1:] = group[1:] != group[:-1]
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    rank = np.arange(n) - start
    keep = np.flatnonzero(rank < limit)
    return keep, rank[keep]


def reduce_layer(
    records: Records, n_features: int, n_tokens: int, cfg: ReduceConfig, first_feature: int = 0
) -> LayerStats:
    """Exact per-feature statistics, top-k and interval samples of one layer's records.

    Features are independent, so a block of features ``[first_feature, first_feature +
    n_features)`` reduces alone: ``records`` then hold local ids (``feat - first_feature``) and
    only the sample keys, which hash the global id, need ``first_feature``.
    """
    f_n, k, n_int, per = n_features, cfg.top_k, cfg.n_intervals, cfg.per_interval
    if not 1 <= f_n <= MAX_FEATURES - first_feature or first_feature < 0:
        raise AccumulateError(
            f"features [{first_feature}, {first_feature + f_n}) outside [0, {MAX_FEATURES})"
        )
    if n_tokens < 0:
        raise AccumulateError(f"n_tokens must be >= 0, got {n_tokens}")
    if len(records) and int(records.feat.max()) >= f_n:
        raise AccumulateError(
            f"records: feature id {int(records.feat.max())} >= n_features ({f_n})"
        )
    key, act = records._sorted
    m = len(key)
    bounds = np.searchsorted(key, np.arange(f_n + 1, dtype=np.int64) << POS_BITS)
    n_fires = np.diff(bounds).astype(np.int64)
    if m and int(n_fires.max()) > n_tokens:
        raise AccumulateError(
            f"feature {int(n_fires.argmax())} fires {int(n_fires.max())} times "
            f"but only {n_tokens} tokens were seen"
        )
    alive = n_fires > 0
    max_act = np.zeros(f_n, np.float32)
    sums = np.zeros(f_n, np.float64)
    if m:  # canonical order makes the float sums independent of the shard layout
        max_act[alive] = np.maximum.reduceat(act, bounds[:-1][alive])
        sums[alive] = np.add.reduceat(act, bounds[:-1][alive], dtype=np.float64)
    mean_act = (sums / np.maximum(n_fires, 1)).astype(np.float32)

    # Pass 1: histograms, intervals, fine top-k buckets, sample keys. A chunk holds a range of
    # features [f0, f1], so its bincounts only span that range.
    cells = min(max(m, 1), _FINE_CELLS)
    fine_bits = int(np.clip(np.log2(max(cells // f_n, 1)), 5, 12))
    n_fine = 1 << fine_bits if k else 0
    fine_shift = 23 + _FINE_OCTAVE_BITS - fine_bits  # float32: 2**23 ulps an octave
    max_bits = max_act.view(np.int32)
    hist = np.zeros((f_n, cfg.n_bins), np.int64)
    icount = np.zeros((f_n, n_int), np.int64)
    fine = np.zeros((f_n, n_fine), np.int64)
    interval = np.empty(m, np.int8)
    sample = np.empty(m if per else 0, np.uint64)
    for a, c in chunks(key):
        f, x = c >> POS_BITS, act[a : a + len(c)]
        f0, f1 = int(f[0]), int(f[-1]) + 1
        ratio = x / max_act[f].astype(np.float64)
        fl = f - f0
        b = np.minimum((ratio * cfg.n_bins).astype(np.int64), cfg.n_bins - 1)
        _add_counts(hist[f0:f1], fl, b)
        iv = np.minimum((ratio * n_int).astype(np.int64), n_int - 1)
        _add_counts(icount[f0:f1], fl, iv)
        interval[a : a + len(c)] = iv
        if k:
            _add_counts(fine[f0:f1], fl, _fine_bucket(x, max_bits[f], n_fine, fine_shift))
        if per:
            g = c + (first_feature << POS_BITS) if first_feature else c  # the global key
            sample[a : a + len(c)] = sample_key(g, cfg.seed)

    # Top-k threshold: the closest-to-max fine bucket where a feature reaches k records.
    top_thr = np.zeros(f_n, np.int64)
    if k:
        reached = np.cumsum(fine, axis=1, out=fine) >= k  # in place: fine is not read again
        top_thr = np.where(reached.any(axis=1), reached.argmax(axis=1), n_fine - 1)
    # Interval-sample threshold on the key's top 53 bits, for about _SAMPLE_OVERSHOOT * per
    # candidates; an interval that gets fewer than it needs is re-scanned with a higher one.
    counts = icount.ravel()
    need = np.minimum(counts, per)
    mult = np.full(len(counts), _SAMPLE_OVERSHOOT)
    todo = need > 0
    top_idx: list[NDArray[np.intp]] = []
    int_idx: list[NDArray[np.intp]] = []
    first = True
    while first or todo.any():
        share = mult * per / np.maximum(counts, 1)
        thr = np.where(share >= 1, 2.0**53, np.ceil(share * 2.0**53)).astype(np.int64)
        thr[~todo] = 0
        found: list[NDArray[np.intp]] = []
        for a, c in chunks(key):
            f = c >> POS_BITS
            g = f * n_int + interval[a : a + len(c)]
            if per:
                top53 = (sample[a : a + len(c)] >> np.uint64(11)).astype(np.int64)
                found.append(a + np.flatnonzero(top53 < thr[g]))
            if first and k:
                fb = _fine_bucket(act[a : a + len(c)], max_bits[f], n_fine, fine_shift)
                top_idx.append(a + np.flatnonzero(fb <= top_thr[f]))
        idx = np.concatenate(found) if found else np.zeros(0, np.intp)
        g = (key[idx] >> POS_BITS) * n_int + interval[idx]
        short = todo & (np.bincount(g, minlength=len(counts)) < need)
        int_idx.append(idx[~short[g]])
        if short.any():
            logger.debug("interval samples: re-scanning %d short intervals", int(short.sum()))
        todo, mult, first = short, np.where(short, mult * 16, mult), False

    top_pos = np.full((f_n, k), -1, np.int64)
    top_act = np.zeros((f_n, k), np.float32)
    if k and m:
        idx = np.concatenate(top_idx)
        fc, ac, pc = key[idx] >> POS_BITS, act[idx], key[idx] & POS_MASK
        order = np.lexsort((pc, -ac, fc))
        keep, rank = _first_per_group(fc[order], k)
        sel = order[keep]
        top_pos[fc[sel], rank] = pc[sel]
        top_act[fc[sel], rank] = ac[sel]

    interval_pos = np.full((f_n * n_int, per), -1, np.int64)
    if per and m:
        idx = np.concatenate(int_idx)
        gc = (key[idx] >> POS_BITS) * n_int + interval[idx]
        order = np.lexsort((sample[idx], gc))
        keep, rank = _first_per_group(gc[order], per)
        sel = order[keep]
        interval_pos[gc[sel], rank] = key[idx[sel]] & POS_MASK

    density = n_fires / n_tokens if n_tokens else np.zeros(f_n, np.float64)
    return LayerStats(
        n_tokens=n_tokens,
        n_fires=n_fires,
        density=density,
        max_act=max_act,
        mean_act=mean_act,
        hist_counts=hist,
        interval_counts=icount,
        top_pos=top_pos,
        top_act=top_act,
        interval_pos=interval_pos.reshape(f_n, n_int, per),
        dead=n_fires == 0,
        dense=density > cfg.dense_threshold,
    )


def _add_counts(out: NDArray[np.int64], row: NDArray[np.int64], col: NDArray[np.int64]) -> None:
    """``out[row, col] += 1`` for every pair (a 2-D ``bincount``)."""
    n_rows, n_cols = out.shape
    out += np.bincount(row * n_cols + col, minlength=n_rows * n_cols).reshape(out.shape)


def _fine_bucket(
    act: NDArray[np.float32], max_bits: NDArray[np.int32], n: int, shift: int
) -> NDArray[np.int64]:
    """Fine bucket of each activation below its feature's max (0 = closest to the max).

    Buckets are equal steps of the float32 bit pattern (``2**shift`` ulps, a fixed fraction of
    an octave): relative resolution over a wide range. Positive float32 bit patterns are
    monotone in value, so a threshold on the bucket is a threshold on the activation, which is
    all the top-k filter needs.
    """
    dist = max_bits.astype(np.int64) - act.view(np.int32)
    return np.minimum(dist >> shift, n - 1)


@dataclass(frozen=True)
class Examples:
    """A layer's examples, one row each, sorted by ``(feature, group, rank)``.

    Args:
        feature: int32 ``[E]``.
        group: int8 ``[E]`` 0 = top, ``1..n_intervals`` = that interval (1-based).
        rank: int16 ``[E]`` rank within the group.
        pos: int64 ``[E]`` the example's centre position (its activation).
        ctx_start: int64 ``[E]`` first context position: ``max(window_start + 1, pos - before)``
            (never the window's BOS, never another window).
        ctx_len: int16 ``[E]`` context length; it ends at ``min(window_end - 1, pos + after)``.
        acts: ``[E]`` float32 ``[ctx_len]`` the feature's activation at each context position
            (0 where it does not fire); views into one buffer.
    """

    feature: NDArray[np.int32]
    group: NDArray[np.int8]
    rank: NDArray[np.int16]
    pos: NDArray[np.int64]
    ctx_start: NDArray[np.int64]
    ctx_len: NDArray[np.int16]
    acts: list[NDArray[np.float32]]

    def __len__(self) -> int:
        return len(self.feature)


def examples(stats: LayerStats, records: Records, table: TokenTable, cfg: ReduceConfig) -> Examples:
    """Context windows and activations around every top and interval example of ``stats``.

    The context lookups use the canonical order (``feat << 40 | pos``, the spec's
    ``feat * N + pos`` with a fixed ``N``): a feature's records around its example's centre are
    the centre's neighbours in that order, so one ``searchsorted`` per example and one gather
    per context offset find them all. Only building the ``acts`` list (views into one buffer)
    is a Python loop over examples.
    """
    f_n, n_int = stats.n_features, cfg.n_intervals
    want = {
        "top_pos": (f_n, cfg.top_k),
        "interval_pos": (f_n, n_int, cfg.per_interval),
    }
    for name, shape in want.items():
        if getattr(stats, name).shape != shape:
            raise AccumulateError(
                f"stats.{name} has shape {getattr(stats, name).shape}, config wants {shape}"
            )
    n_pos = len(table.token_ids)
    if len(records):
        if int(records.feat.max()) >= f_n:
            raise AccumulateError(f"records: feature id {int(records.feat.max())} >= {f_n}")
        if int(records.pos.max()) >= n_pos:
            raise AccumulateError(
                f"records: pos {int(records.pos.max())} beyond the token table ({n_pos})"
            )
        if bool(table.special[records.pos].any()):
            raise AccumulateError("records: an activation sits on a special (BOS/pad/EOS) position")
    key, act = records._sorted

    cols = np.concatenate([stats.top_pos, stats.interval_pos.reshape(f_n, -1)], axis=1)
    col_group = np.repeat(np.arange(n_int + 1), [cfg.top_k] + [cfg.per_interval] * n_int)
    col_rank = np.concatenate([np.arange(cfg.top_k)] + [np.arange(cfg.per_interval)] * n_int)
    row, col = np.nonzero(cols >= 0)  # row-major: sorted by (feature, group, rank)
    centre = cols[row, col]
    if len(centre) and int(centre.max()) >= n_pos:
        raise AccumulateError(f"stats: example pos {int(centre.max())} beyond the token table")
    ckey = (row.astype(np.int64) << POS_BITS) | centre
    at = np.minimum(np.searchsorted(key, ckey), max(len(key) - 1, 0))
    if len(ckey) and (not len(key) or not np.array_equal(key[at], ckey)):
        raise AccumulateError("stats and records disagree: an example has no record")

    w = table.window[centre]
    if bool(np.any(centre <= table.window_start[w])):
        raise AccumulateError("stats: an example sits on a window's first position (its BOS)")
    lo = np.maximum(table.window_start[w] + 1, centre - cfg.before)
    hi = np.minimum(table.window_end[w] - 1, centre + cfg.after)
    width = cfg.before + cfg.after + 1
    dense = np.zeros((len(centre), width), np.float32)
    for j in range(-cfg.before, cfg.after + 1):  # neighbours in (feat, pos) order
        nb = np.clip(at + j, 0, max(len(key) - 1, 0))
        nk = key[nb]
        npos = nk & POS_MASK
        ok = np.flatnonzero(((nk >> POS_BITS) == row) & (npos >= lo) & (npos <= hi))
        dense[ok, npos[ok] - centre[ok] + cfg.before] = act[nb[ok]]
    first = lo - (centre - cfg.before)
    span = np.arange(width)
    inside = (span >= first[:, None]) & (span < (hi - centre + cfg.before + 1)[:, None])
    ctx_len = (hi - lo + 1).astype(np.int16)
    flat = dense[inside]
    ends = np.cumsum(ctx_len, dtype=np.int64).tolist()
    starts = [0, *ends[:-1]] if ends else []  # no examples at all: a block of dead features
    acts = [flat[a:b] for a, b in zip(starts, ends, strict=True)]  # views, one buffer
    return Examples(
        feature=row.astype(np.int32),
        group=col_group[col].astype(np.int8),
        rank=col_rank[col].astype(np.int16),
        pos=centre.astype(np.int64),
        ctx_start=lo.astype(np.int64),
        ctx_len=ctx_len,
        acts=acts,
    )
