"""store_build.accumulate against an independent brute force over a dense activation matrix.

The matrix is small (300 positions x 40 features, ~20% non-zero) with BOS and a few pad
positions marked special, dead features and planted ties; the brute force walks it feature by
feature with Python floats and Python integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import pytest

import precompute.store_build.accumulate as acc
import precompute.store_build.records as rec
from precompute.store_build.accumulate import (
    Examples,
    LayerStats,
    ReduceConfig,
    examples,
    reduce_layer,
)
from precompute.store_build.records import Records, TokenTable, splitmix64

U64 = 0xFFFFFFFFFFFFFFFF
WINDOW_LENGTHS = (40, 55, 30, 64, 50, 61)  # 300 positions, BOS first in each window
F = 40
DEAD = (3, 17, 29)
CFG = ReduceConfig(
    top_k=5, n_bins=7, n_intervals=3, per_interval=4, before=6, after=3, seed=123,
    dense_threshold=0.3,
)  # fmt: skip


@dataclass
class Case:
    dense: np.ndarray  # float32 [N, F]
    table: TokenTable
    records: Records


def make_case(seed: int = 0) -> Case:
    rng = np.random.default_rng(seed)
    n = sum(WINDOW_LENGTHS)
    lengths = np.array(WINDOW_LENGTHS)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    special = np.zeros(n, bool)
    special[starts] = True
    special[starts[2] + lengths[2] - 3 : starts[2] + lengths[2]] = True  # trailing pad/EOS
    table = TokenTable(
        token_ids=rng.integers(4, 60, n).astype(np.int32),
        window=np.repeat(np.arange(len(lengths)), lengths).astype(np.int32),
        special=special,
        window_start=starts,
        window_doc=[f"doc{i // 2}" for i in range(len(lengths))],
        window_offset=((np.arange(len(lengths)) % 2) * 127).astype(np.int32),
    )
    dense = np.where(rng.random((n, F)) < 0.2, rng.lognormal(0, 1, (n, F)), 0).astype(np.float32)
    dense[:, list(DEAD)] = 0
    tokens = np.flatnonzero(~special)
    # Planted ties: feature 5 reaches its max three times, and ties inside its top 5.
    dense[tokens[[10, 50, 200]], 5] = 50.0
    dense[tokens[[20, 80, 120, 260]], 5] = 40.0
    dense[:, 7] = np.where(dense[:, 7] > 0, 2.0, 0)  # constant: every fire is the max
    dense[tokens, 9] = rng.uniform(0.5, 1.5, len(tokens))  # fires on every token (dense)
    dense[:, 11] = 0
    dense[tokens[123], 11] = 0.25  # fires once
    dense[:, 13] = np.where(dense[:, 13] > 0, 1.0, 0)
    dense[tokens[:3], 13] = 3.0  # fewer top records than top_k above a big tie
    # On a bin edge: float64 puts 1.4691772 / 3.4280803 * 7 in bin 2, float32 arithmetic in 3.
    dense[:, 21] = 0
    dense[tokens[[5, 6, 7]], 21] = [3.4280803203582764, 1.46917724609375, 1.46917724609375]
    dense[special] = 0
    pos, feat = np.nonzero(dense)
    order = rng.permutation(len(pos))
    records = Records(
        pos=pos[order].astype(np.int64),
        feat=feat[order].astype(np.int32),
        act=dense[pos, feat][order],
    )
    return Case(dense=dense, table=table, records=records)


def py_splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & U64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & U64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & U64
    return x ^ (x >> 31)


def brute_force(case: Case, cfg: ReduceConfig) -> dict[int, dict]:
    """Per feature, by hand: stats, top-k and interval samples."""
    n_tokens = int((~case.table.special).sum())
    out = {}
    for f in range(F):
        fires = [(p, float(case.dense[p, f])) for p in range(len(case.dense)) if case.dense[p, f]]
        top = sorted(fires, key=lambda t: (-t[1], t[0]))[: cfg.top_k]
        mx = max((a for _, a in fires), default=0.0)
        hist = [0] * cfg.n_bins
        ivals: list[list[tuple[int, int]]] = [[] for _ in range(cfg.n_intervals)]
        for p, a in fires:
            hist[min(math.floor(a / mx * cfg.n_bins), cfg.n_bins - 1)] += 1
            iv = min(math.floor(a / mx * cfg.n_intervals), cfg.n_intervals - 1)
            key = py_splitmix64(cfg.seed ^ py_splitmix64(f * 2**40 + p))
            ivals[iv].append((key, p))
        out[f] = {
            "n_fires": len(fires),
            "density": len(fires) / n_tokens,
            "max": mx,
            "mean": math.fsum(a for _, a in fires) / len(fires) if fires else 0.0,
            "hist": hist,
            "interval_counts": [len(v) for v in ivals],
            "share": [len(v) / len(fires) if fires else 0.0 for v in ivals],
            "top": top,
            "samples": [[p for _, p in sorted(v)[: cfg.per_interval]] for v in ivals],
        }
    return out


@pytest.fixture
def case() -> Case:
    return make_case()


@pytest.fixture(params=["default", "stressed"])
def thresholds(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Also run with coarse top-k buckets and too few interval candidates, so that the
    candidate filters' worst paths (big ties in a bucket, re-scans) are exercised."""
    if request.param == "stressed":
        monkeypatch.setattr(acc, "_FINE_CELLS", 1)
        monkeypatch.setattr(acc, "_SAMPLE_OVERSHOOT", 0.01)
        monkeypatch.setattr(rec, "CHUNK", 64)
    return str(request.param)


def test_splitmix64_golden() -> None:
    # The standard SplitMix64 generator seeded with 0 returns these first: splitmix64(x) is
    # the output for state x, i.e. mix(x + golden gamma).
    gamma = 0x9E3779B97F4A7C15
    first = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    states = np.array([0, gamma, (2 * gamma) & U64], dtype=np.uint64)
    assert splitmix64(states).tolist() == first
    assert int(splitmix64(0)) == first[0]
    rng = np.random.default_rng(1)
    xs = rng.integers(0, 2**63, 50, dtype=np.int64).astype(np.uint64) * np.uint64(3)
    assert splitmix64(xs).tolist() == [py_splitmix64(int(x)) for x in xs]
    assert splitmix64(xs).dtype == np.uint64


def test_stats_match_brute_force(case: Case, thresholds: str) -> None:
    stats = reduce_layer(case.records, F, case.table.n_tokens, CFG)
    bf = brute_force(case, CFG)
    assert stats.n_tokens == case.table.n_tokens == 300 - 6 - 3
    for f, want in bf.items():
        assert stats.n_fires[f] == want["n_fires"]
        assert stats.density[f] == want["density"]
        assert float(stats.max_act[f]) == want["max"]
        assert float(stats.mean_act[f]) == pytest.approx(want["mean"], rel=1e-6)
        assert stats.hist_counts[f].tolist() == want["hist"], f
        assert stats.interval_counts[f].tolist() == want["interval_counts"], f
        assert stats.interval_share[f].tolist() == pytest.approx(want["share"])
        assert stats.dead[f] == (want["n_fires"] == 0)
        assert stats.dense[f] == (want["density"] > CFG.dense_threshold)
    assert stats.dead.nonzero()[0].tolist() == list(DEAD)
    assert stats.dense[9] and stats.n_fires[9] == stats.n_tokens


def test_top_k_and_samples_match_brute_force(case: Case, thresholds: str) -> None:
    stats = reduce_layer(case.records, F, case.table.n_tokens, CFG)
    bf = brute_force(case, CFG)
    for f, want in bf.items():
        pad = CFG.top_k - len(want["top"])
        assert stats.top_pos[f].tolist() == [p for p, _ in want["top"]] + [-1] * pad, f
        assert stats.top_act[f].tolist() == [a for _, a in want["top"]] + [0.0] * pad, f
        for k, sample in enumerate(want["samples"]):
            padded = sample + [-1] * (CFG.per_interval - len(sample))
            assert stats.interval_pos[f, k].tolist() == padded, (f, k)
    # The planted ties: equal maxima in position order, then the 40.0 tie, cut at top_k.
    tokens = np.flatnonzero(~case.table.special)
    assert stats.top_pos[5].tolist() == tokens[[10, 50, 200, 20, 80]].tolist()
    assert stats.top_act[13, :3].tolist() == [3.0] * 3 and stats.top_act[13, 3] == 1.0


def test_max_lands_in_last_bin(case: Case) -> None:
    stats = reduce_layer(case.records, F, case.table.n_tokens, CFG)
    alive = ~stats.dead
    assert (stats.hist_counts[alive, -1] >= 1).all()
    assert (stats.interval_counts[alive, -1] >= 1).all()
    assert stats.hist_counts[7, -1] == stats.n_fires[7] == stats.interval_counts[7, -1]
    assert stats.hist_counts.sum(axis=1).tolist() == stats.n_fires.tolist()
    assert stats.hist_counts[21].tolist() == [0, 0, 2, 0, 0, 0, 1]  # float64, as specified


def test_dead_features_are_zero_and_padded(case: Case) -> None:
    stats = reduce_layer(case.records, F, case.table.n_tokens, CFG)
    for f in DEAD:
        assert stats.n_fires[f] == 0 and stats.density[f] == 0
        assert stats.max_act[f] == 0 and stats.mean_act[f] == 0
        assert not stats.hist_counts[f].any() and not stats.interval_counts[f].any()
        assert (stats.top_pos[f] == -1).all() and not stats.top_act[f].any()
        assert (stats.interval_pos[f] == -1).all()
        assert not stats.interval_share[f].any()
    ex = examples(stats, case.records, case.table, CFG)
    assert not np.isin(ex.feature, DEAD).any()


def expected_examples(stats: LayerStats) -> list[tuple[int, int, int, int]]:
    rows = []
    for f in range(F):
        rows += [(f, 0, r, int(p)) for r, p in enumerate(stats.top_pos[f]) if p >= 0]
        for k in range(CFG.n_intervals):
            ps = stats.interval_pos[f, k]
            rows += [(f, k + 1, r, int(p)) for r, p in enumerate(ps) if p >= 0]
    return rows


def test_examples_match_brute_force(case: Case, thresholds: str) -> None:
    stats = reduce_layer(case.records, F, case.table.n_tokens, CFG)
    ex = examples(stats, case.records, case.table, CFG)
    want = expected_examples(stats)
    got = list(
        zip(ex.feature.tolist(), ex.group.tolist(), ex.rank.tolist(), ex.pos.tolist(), strict=True)
    )
    assert got == want
    assert (ex.feature.dtype, ex.group.dtype, ex.rank.dtype) == (np.int32, np.int8, np.int16)
    assert (ex.pos.dtype, ex.ctx_start.dtype, ex.ctx_len.dtype) == (np.int64, np.int64, np.int16)
    starts = case.table.window_start.tolist()
    ends = [*starts[1:], len(case.table.token_ids)]
    top_rows = {
        (f, int(p)): float(a) for f in range(F) for p, a in zip(*_top(stats, f), strict=True)
    }
    for i, (f, group, _, c) in enumerate(want):
        w = max(j for j, s in enumerate(starts) if s <= c)  # the centre's window, by hand
        lo, hi = max(starts[w] + 1, c - CFG.before), min(ends[w] - 1, c + CFG.after)
        assert (ex.ctx_start[i], ex.ctx_len[i]) == (lo, hi - lo + 1)
        ctx = range(ex.ctx_start[i], ex.ctx_start[i] + ex.ctx_len[i])
        assert not any(p in starts for p in ctx)  # never a BOS
        assert {int(case.table.window[p]) for p in ctx} == {w}  # never another window
        assert ex.acts[i].dtype == np.float32
        assert np.array_equal(ex.acts[i], case.dense[lo : hi + 1, f])
        centre = ex.acts[i][c - lo]
        assert centre == case.dense[c, f] > 0
        if group == 0:
            assert centre == top_rows[f, c]


def _top(stats: LayerStats, f: int) -> tuple[np.ndarray, np.ndarray]:
    keep = stats.top_pos[f] >= 0
    return stats.top_pos[f][keep], stats.top_act[f][keep]


def assert_same(a: LayerStats, b: LayerStats, ea: Examples, eb: Examples) -> None:
    for fld in fields(LayerStats):
        x, y = getattr(a, fld.name), getattr(b, fld.name)
        assert np.array_equal(x, y), fld.name
        assert np.asarray(x).dtype == np.asarray(y).dtype, fld.name
    for fld in fields(Examples):
        if fld.name != "acts":
            assert np.array_equal(getattr(ea, fld.name), getattr(eb, fld.name)), fld.name
    assert len(ea.acts) == len(eb.acts)
    assert all(np.array_equal(x, y) for x, y in zip(ea.acts, eb.acts, strict=True))


def test_merge_does_not_depend_on_partition_or_order(case: Case) -> None:
    r = case.records
    stats = reduce_layer(r, F, case.table.n_tokens, CFG)
    ex = examples(stats, r, case.table, CFG)
    rng = np.random.default_rng(7)
    part = rng.integers(0, 3, len(r))
    parts = []
    for k in (2, 0, 1):
        idx = rng.permutation(np.flatnonzero(part == k))
        parts.append(Records(pos=r.pos[idx], feat=r.feat[idx], act=r.act[idx]))
    merged = Records.concat(parts)
    stats2 = reduce_layer(merged, F, case.table.n_tokens, CFG)
    assert_same(stats, stats2, ex, examples(stats2, merged, case.table, CFG))
    canon = merged.canonical()
    assert np.all(np.diff(canon.feat.astype(np.int64) * 2**40 + canon.pos) > 0)
    assert canon.canonical() is canon
    stats3 = reduce_layer(canon, F, case.table.n_tokens, CFG)
    assert_same(stats, stats3, ex, examples(stats3, canon, case.table, CFG))


def test_canonical_order_without_packing() -> None:
    # feature ids near 2**22 and positions near 2**39 do not fit the packed sort: argsort path.
    rng = np.random.default_rng(3)
    feat = rng.choice([5, 2**22 + 1, 2**22 + 9], 200).astype(np.int32)
    pos = rng.choice(2**39, 200, replace=False).astype(np.int64)
    act = rng.uniform(0.1, 1, 200).astype(np.float32)
    canon = Records(pos=pos, feat=feat, act=act).canonical()
    order = np.lexsort((pos, feat))
    assert np.array_equal(canon.pos, pos[order]) and np.array_equal(canon.feat, feat[order])
    assert np.array_equal(canon.act, act[order])


def test_config_limits_and_round_trip() -> None:
    assert ReduceConfig.from_dict(CFG.to_dict()) == CFG
    assert len(Records.concat([])) == 0
    stats = reduce_layer(Records.concat([]), 4, 10, ReduceConfig(top_k=0, per_interval=0))
    assert stats.top_pos.shape == (4, 0) and stats.interval_pos.shape == (4, 5, 0)
    assert stats.dead.all() and not stats.hist_counts.any()
    with pytest.raises(ValueError, match="n_intervals"):
        ReduceConfig(n_intervals=0)
    with pytest.raises(ValueError, match="top_k"):
        ReduceConfig(top_k=-1)
    with pytest.raises(ValueError, match="dense_threshold"):
        ReduceConfig(dense_threshold=2.0)


def records(pos: list[int], feat: list[int], act: list[float]) -> Records:
    return Records(pos=np.array(pos), feat=np.array(feat), act=np.array(act, dtype=np.float32))


@pytest.mark.parametrize(
    ("pos", "feat", "act", "message"),
    [
        ([1, 2, 3], [0, 1], [1.0, 1.0, 1.0], "differ in length"),
        ([1, 2], [0, -1], [1.0, 1.0], "feature ids outside"),
        ([1, -2], [0, 1], [1.0, 1.0], "pos outside"),
        ([1, 2], [0, 1], [1.0, 0.0], "act must be finite and > 0"),
        ([1, 2], [0, 1], [1.0, -3.0], "act must be finite and > 0"),
        ([1, 2], [0, 1], [1.0, float("nan")], "act must be finite and > 0"),
    ],
)
def test_bad_records(pos: list[int], feat: list[int], act: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        records(pos, feat, act)


def test_bad_reduce_input() -> None:
    with pytest.raises(ValueError, match=r"feature id 7 >= n_features \(7\)"):
        reduce_layer(records([1, 2], [0, 7], [1.0, 2.0]), 7, 10, CFG)
    with pytest.raises(ValueError, match="feature 4 appears twice at pos 2"):
        reduce_layer(records([2, 1, 2], [4, 0, 4], [1.0, 2.0, 3.0]), 7, 10, CFG)
    with pytest.raises(ValueError, match="fires 2 times but only 1 tokens"):
        reduce_layer(records([1, 2], [0, 0], [1.0, 2.0]), 7, 1, CFG)
    with pytest.raises(ValueError, match="dtype float64, expected integers"):
        Records(pos=np.array([1.0]), feat=np.array([0]), act=np.array([1.0]))
    with pytest.raises(ValueError, match="1-D"):
        Records(pos=np.zeros((1, 1), np.int64), feat=np.array([0]), act=np.array([1.0]))


def test_bad_examples_input(case: Case) -> None:
    stats = reduce_layer(case.records, F, case.table.n_tokens, CFG)
    bos = records([int(case.table.window_start[1])], [0], [1.0])
    with pytest.raises(ValueError, match="special"):
        examples(reduce_layer(bos, F, 10, CFG), bos, case.table, CFG)
    with pytest.raises(ValueError, match="config wants"):
        examples(stats, case.records, case.table, ReduceConfig(top_k=6))
    r = case.records
    drop = (r.feat == 0) & (r.pos == stats.top_pos[0, 0])
    fewer = Records(pos=r.pos[~drop], feat=r.feat[~drop], act=r.act[~drop])
    with pytest.raises(ValueError, match="disagree"):
        examples(stats, fewer, case.table, CFG)
    with pytest.raises(ValueError, match="disagree"):
        examples(stats, Records.empty(), case.table, CFG)


def test_token_table_checks(case: Case) -> None:
    t = case.table
    with pytest.raises(ValueError, match="window does not match"):
        TokenTable(t.token_ids, np.zeros_like(t.window), t.special, t.window_start,
                   t.window_doc, t.window_offset)  # fmt: skip
    with pytest.raises(ValueError, match="differ in length"):
        TokenTable(t.token_ids, t.window, t.special, t.window_start, t.window_doc[:-1],
                   t.window_offset)  # fmt: skip
    assert t.window_end.tolist() == [*t.window_start[1:].tolist(), 300]
