"""The block-wise reduce (store_build.blocks over store_build.shards) against the one-shot reduce.

The one-shot reduce (``reduce_layer`` and ``examples`` over every record of the layer) is what
built the shipped store and is itself checked against a brute force in ``test_accumulate``.
"""

from __future__ import annotations

import itertools
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from test_accumulate import CFG, F, make_case

from precompute.store_build.accumulate import Examples, LayerStats, examples, reduce_layer
from precompute.store_build.blocks import plan_blocks, reduce_blocks
from precompute.store_build.records import AccumulateError, Records
from precompute.store_build.shards import SHARD_FORMAT, ShardReader, save_shard, shard_meta


def _write_shards(tmp: Path, records: Records, cuts: list[int]) -> ShardReader:
    """Records split by position at ``cuts`` (unsorted inside), one shard each, layer 3."""
    edges = [0, *cuts, int(records.pos.max()) + 1]
    paths = []
    for s, (a, b) in enumerate(itertools.pairwise(edges)):
        m = (records.pos >= a) & (records.pos < b)
        part = Records(pos=records.pos[m], feat=records.feat[m], act=records.act[m])
        path = tmp / f"shard-{s:05d}.npz"
        save_shard(path, {3: part}, {3: F}, {"shard": s})
        paths.append(path)
    return ShardReader(paths)


def _assert_same(got: tuple[LayerStats, Examples], want: tuple[LayerStats, Examples]) -> None:
    pairs: list[tuple[LayerStats | Examples, LayerStats | Examples]] = [
        (got[0], want[0]),
        (got[1], want[1]),
    ]
    for obj_got, obj_want in pairs:
        for f in fields(obj_want):
            a, b = getattr(obj_got, f.name), getattr(obj_want, f.name)
            if f.name == "acts":
                assert len(a) == len(b)
                for x, y in zip(a, b, strict=True):
                    assert x.dtype == y.dtype and np.array_equal(x, y)
            elif isinstance(b, np.ndarray):
                assert a.dtype == b.dtype and a.shape == b.shape, f.name
                assert np.array_equal(a, b), f.name
            else:
                assert a == b, f.name


@pytest.mark.parametrize("max_records", [0, 1, 37, 200, 10**9])
@pytest.mark.parametrize("cuts", [[], [90, 91, 200], [17, 140]])
def test_blocks_equal_the_one_shot_reduce(
    tmp_path: Path, max_records: int, cuts: list[int]
) -> None:
    case = make_case()
    reader = _write_shards(tmp_path, case.records, cuts)
    stats = reduce_layer(case.records, F, case.table.n_tokens, CFG)
    want = (stats, examples(stats, case.records, case.table, CFG))
    s, ex, n_blocks = reduce_blocks(reader, 3, F, case.table, CFG, max_records)
    assert n_blocks == len(plan_blocks(stats.n_fires, max_records))
    assert (n_blocks == 1) == (max_records >= len(case.records))
    _assert_same((s, ex), want)


def test_interval_samples_hash_the_global_feature(tmp_path: Path) -> None:
    """Without ``first_feature`` a block's samples would differ: the check above can fail."""
    case = make_case()
    f0 = 20
    m = case.records.feat >= f0
    local = Records(
        pos=case.records.pos[m], feat=case.records.feat[m] - f0, act=case.records.act[m]
    )
    whole = reduce_layer(case.records, F, case.table.n_tokens, CFG)
    right = reduce_layer(local, F - f0, case.table.n_tokens, CFG, first_feature=f0)
    wrong = reduce_layer(local, F - f0, case.table.n_tokens, CFG)
    assert np.array_equal(right.interval_pos, whole.interval_pos[f0:])
    assert not np.array_equal(wrong.interval_pos, whole.interval_pos[f0:])


def test_plan_blocks_covers_every_feature_within_the_budget() -> None:
    rng = np.random.default_rng(1)
    fires = rng.integers(0, 50, 300)
    fires[[7, 100]] = [500, 0]
    for budget in (0, 10, 49, 120, 1000, 10**6):
        blocks = plan_blocks(fires, budget)
        assert blocks[0][0] == 0 and blocks[-1][1] == 300
        assert all(a < b for a, b in blocks)
        assert all(b == c for (_, b), (c, _) in itertools.pairwise(blocks))
        for a, b in blocks:  # within the budget, or one feature alone
            assert fires[a:b].sum() <= budget or b - a == 1
        for a, b in blocks[:-1]:
            assert fires[a : b + 1].sum() > budget  # greedy: the next feature did not fit


def test_a_shard_reads_back_by_feature_range(tmp_path: Path) -> None:
    case = make_case()
    reader = _write_shards(tmp_path, case.records, [150])
    got = reader.block(3, 5, 12)
    m = (case.records.feat >= 5) & (case.records.feat < 12)
    want = Records(pos=case.records.pos[m], feat=case.records.feat[m], act=case.records.act[m])
    a, b = got.canonical(), want.canonical()
    assert np.array_equal(a.pos, b.pos) and np.array_equal(a.feat, b.feat)
    assert np.array_equal(a.act, b.act)
    assert np.array_equal(reader.fires(3, F), np.bincount(case.records.feat, minlength=F))
    assert shard_meta(reader.paths[0]) == {"shard": 0, "format": SHARD_FORMAT}
    with np.load(reader.paths[1]) as z:  # a plain .npz, sorted by (feat, pos) inside
        key = z["feat_3"].astype(np.int64) << 40 | z["pos_3"]
        assert np.all(np.diff(key) > 0)


def test_an_old_format_shard_is_refused_in_one_line(tmp_path: Path) -> None:
    case = make_case()
    old = tmp_path / "shard-00000.npz"
    r = case.records
    np.savez(
        old, meta=np.frombuffer(b'{"shard": 0}', np.uint8), pos_3=r.pos, feat_3=r.feat, act_3=r.act
    )
    with pytest.raises(AccumulateError, match="old-format"):
        ShardReader([old]).fires(3, F)
    assert shard_meta(old) == {"shard": 0}  # no format: the encode step recomputes it
