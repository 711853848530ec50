"""Peak memory and time of the precompute's shard writing and reduce at 1x, 4x and 16x tokens.

Run by hand (not a test), from the project root:

    PYTHONPATH=. python bench/bench_reduce_memory.py [--base-tokens 32768] [--scales 1 4 16]
        [--features 4096] [--l0 32] [--budget-mb 64] [--old]

No model: synthetic records (``--l0`` features a token, drawn from a skewed distribution over
``--features``, activations quantized so that ties occur) stand in for one layer's SAE codes.
Each size gets a fresh work directory and fresh subprocesses, whose ``ru_maxrss`` is the peak:

- ``encode``: writes the shards one at a time (``precompute.store_build.shards.save_shard``), as
  the encode step does after each ``shard_tokens`` (the model's own memory, fixed per batch, is
  not in it);
- ``reduce``: the token table plus the block-wise reduce of the layer
  (``precompute.store_build.blocks.reduce_blocks`` with ``--budget-mb``);
- ``old`` (``--old``): the reduce as it was, every record of the layer at once.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from precompute.store_build.records import Records, TokenTable

WINDOW = 128
SHARD_TOKENS = 32_768


def _table(n_positions: int) -> TokenTable:
    from precompute.store_build.records import TokenTable

    starts = np.arange(0, n_positions, WINDOW, dtype=np.int64)
    lengths = np.diff(np.append(starts, n_positions))
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 30_000, n_positions).astype(np.int32)
    special = np.zeros(n_positions, bool)
    special[starts] = True
    return TokenTable(
        token_ids=ids,
        window=np.repeat(np.arange(len(starts), dtype=np.int32), lengths),
        special=special,
        window_start=starts,
        window_doc=[f"d{i // 8}" for i in range(len(starts))],
        window_offset=((np.arange(len(starts)) % 8) * (WINDOW - 1)).astype(np.int32),
    )


def _shard_records(p0: int, p1: int, n_features: int, l0: int, seed: int) -> Records:
    from precompute.store_build.records import POS_BITS, POS_MASK, Records

    rng = np.random.default_rng(seed)
    pos = np.arange(p0, p1, dtype=np.int64)
    pos = pos[pos % WINDOW != 0]  # no record on a BOS
    prob = 1.0 / (np.arange(n_features) + 10.0) ** 0.8
    cdf = np.cumsum(prob / prob.sum())
    feat = np.minimum(np.searchsorted(cdf, rng.random(len(pos) * l0)), n_features - 1)
    key = np.unique((feat.astype(np.int64) << POS_BITS) | np.repeat(pos, l0))  # no duplicates
    act = (np.ceil(rng.lognormal(0.0, 0.7, len(key)) * 64) / 64).astype(np.float32)
    order = rng.permutation(len(key))  # the encode's order is not canonical
    key = key[order]
    return Records(pos=key & POS_MASK, feat=(key >> POS_BITS).astype(np.int32), act=act[order])


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(args: argparse.Namespace) -> dict[str, float]:
    work, n = Path(args.work), args.tokens
    t0 = time.perf_counter()
    out: dict[str, float] = {}
    if args.child == "encode":
        from precompute.store_build.shards import save_shard

        for s, p0 in enumerate(range(0, n, SHARD_TOKENS)):
            r = _shard_records(p0, min(p0 + SHARD_TOKENS, n), args.features, args.l0, s)
            save_shard(work / f"shard-{s:05d}.npz", {0: r}, {0: args.features}, {"shard": s})
            del r
    elif args.child == "reduce":
        from precompute.store_build.accumulate import ReduceConfig
        from precompute.store_build.blocks import BYTES_PER_RECORD, reduce_blocks
        from precompute.store_build.shards import ShardReader

        table = _table(n)
        out["table_mb"] = (
            table.token_ids.nbytes + table.window.nbytes + table.special.nbytes
        ) / 2**20
        reader = ShardReader(sorted(work.glob("shard-*.npz")))
        max_records = int(args.budget_mb * 2**20 / BYTES_PER_RECORD)
        stats, ex, n_blocks = reduce_blocks(
            reader, 0, args.features, table, ReduceConfig(), max_records
        )
        out.update(records=float(stats.n_fires.sum()), blocks=n_blocks, examples=len(ex))
    elif args.child == "old":
        from precompute.store_build.accumulate import ReduceConfig, examples, reduce_layer
        from precompute.store_build.records import Records

        table = _table(n)
        parts = []
        for p in sorted(work.glob("shard-*.npz")):
            with np.load(p) as z:
                parts.append(Records(pos=z["pos_0"], feat=z["feat_0"], act=z["act_0"]))
        records = Records.concat(parts)
        del parts
        stats = reduce_layer(records, args.features, table.n_tokens, ReduceConfig())
        ex = examples(stats, records, table, ReduceConfig())
        out.update(records=float(len(records)), examples=len(ex))
    out["seconds"] = time.perf_counter() - t0
    out["peak_mb"] = _peak_mb()
    return out


def _run(kind: str, work: Path, tokens: int, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", kind, "--work", str(work), "--tokens", str(tokens)]
    cmd += ["--features", str(args.features), "--l0", str(args.l0)]
    cmd += ["--budget-mb", str(args.budget_mb)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-tokens", type=int, default=32_768)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--l0", type=int, default=32)
    parser.add_argument("--budget-mb", type=float, default=64.0)
    parser.add_argument("--old", action="store_true", help="also run the all-at-once reduce")
    parser.add_argument("--child", choices=["encode", "reduce", "old", "baseline"])
    parser.add_argument("--work")
    parser.add_argument("--tokens", type=int)
    args = parser.parse_args()
    if args.child:
        if args.child == "baseline":
            import precompute.store_build.blocks  # noqa: F401  (the imports' own memory)

            print(json.dumps({"peak_mb": _peak_mb()}))
        else:
            print(json.dumps(child(args)))
        return

    base = _run("baseline", Path("."), 0, args)["peak_mb"]
    print(
        f"features {args.features}, L0 {args.l0}, budget {args.budget_mb} MB, "
        f"shards of {SHARD_TOKENS} positions; interpreter + imports alone: {base:.0f} MB"
    )
    head = "| scale | positions | records | blocks | encode peak MB | reduce peak MB | reduce s "
    head += "| token table MB |" + (" old peak MB | old s |" if args.old else "")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for scale in args.scales:
        tokens = args.base_tokens * scale
        work = Path(tempfile.mkdtemp(prefix="bench-reduce-"))
        try:
            enc = _run("encode", work, tokens, args)
            red = _run("reduce", work, tokens, args)
            row = (
                f"| {scale}x | {tokens} | {int(red['records'])} | {int(red['blocks'])} "
                f"| {enc['peak_mb']:.0f} | {red['peak_mb']:.0f} | {red['seconds']:.1f} "
                f"| {red['table_mb']:.1f} |"
            )
            if args.old:
                old = _run("old", work, tokens, args)
                row += f" {old['peak_mb']:.0f} | {old['seconds']:.1f} |"
            print(row, flush=True)
        finally:
            shutil.rmtree(work)


if __name__ == "__main__":
    main()
