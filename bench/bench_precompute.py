"""Precompute throughput vs the bare forward pass it needs, on the same batches, per source.

Run by hand (not a test):  python bench/bench_precompute.py [--tokens 8192] [--batch-windows 32]
Every side runs the embedded default on the same windows, batch by batch and interleaved (so
that other load on the machine hits them alike):

- ``bare to layer N``: the model to layer N (``stop_at_layer``, no hooks, no logits);
- ``res``: ``precompute.store_build.job.encode_batch`` with the residual SAEs (hooks, every SAE,
  sparse records), against the bare forward to the last SAE layer;
- ``res + transcoder`` (when the bundle has transcoders, ``assets/transcoders``): both sources
  from one forward pass, against the bare forward to the last layer a transcoder needs.

Prints tokens/s of each and the ratios (target >= 0.75) and the peak resident memory.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--batch-windows", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from memory import peak_rss_gb

    from explorer.bundle import build_bundle, preset
    from explorer.store.schema import RES, TRANSCODER, Unit
    from precompute.store_build.job import (
        RunConfig,
        collect_windows,
        dictionary,
        encode_batch,
        hold_dictionaries,
    )

    bundle = build_bundle(preset("default"), device=args.device, dtype="float32")
    res: list[Unit] = [(RES, n) for n in bundle.layers]
    both: list[Unit] = res + [(TRANSCODER, n) for n in bundle.spec.transcoder_layers]
    hold_dictionaries(bundle)
    for unit in both:
        dictionary(bundle, unit)  # every dictionary resident, as a run holds them
    table = collect_windows(RunConfig(tokens=args.tokens), bundle.tokenizer)
    n_windows = len(table.window_start)
    batches = [
        range(a, min(a + args.batch_windows, n_windows))
        for a in range(0, n_windows, args.batch_windows)
    ]
    ends = table.window_end

    def bare(stop: int) -> Callable[[range], None]:
        def run(windows: range) -> None:
            s, e = (
                table.window_start[windows.start : windows.stop],
                ends[windows.start : windows.stop],
            )
            ids = torch.zeros((len(s), int((e - s).max())), dtype=torch.long)
            for row, (a, b) in enumerate(zip(s, e, strict=True)):
                ids[row, : b - a] = torch.from_numpy(table.token_ids[a:b].astype(np.int64))
            with torch.inference_mode():
                bundle.model(ids.to(bundle.device), stop_at_layer=stop, return_type=None)

        return run

    def encode(units: list[Unit]) -> Callable[[range], None]:
        def run(windows: range) -> None:
            encode_batch(bundle, table, windows, units)

        return run

    last_res = max(bundle.layers)
    last_all = max(n for _, n in both)
    sides: dict[str, Callable[[range], None]] = {
        f"bare forward to layer {last_res}": bare(last_res + 1),
        f"res ({len(res)} SAEs)": encode(res),
    }
    if len(both) > len(res):
        sides[f"bare forward to layer {last_all}"] = bare(last_all + 1)
        sides[f"res + transcoder ({len(res)} SAEs, {len(both) - len(res)} transcoders)"] = encode(
            both
        )
    for fn in sides.values():
        fn(batches[0])  # warm-up
    took = dict.fromkeys(sides, 0.0)
    for b in batches:
        for name, fn in sides.items():
            t = time.perf_counter()
            fn(b)
            took[name] += time.perf_counter() - t
    n = table.n_tokens
    print(f"torch threads {torch.get_num_threads()}, {n} tokens, {len(batches)} batches")
    for name, seconds in took.items():
        print(f"{name}: {n / seconds:.0f} tok/s ({seconds:.1f} s)")
    names = list(sides)
    print(
        f"ratio res / bare to layer {last_res}: {took[names[0]] / took[names[1]]:.2f} "
        "(target >= 0.75)"
    )
    if len(names) == 4:
        print(
            f"ratio res + transcoder / bare to layer {last_all}: "
            f"{took[names[2]] / took[names[3]]:.2f} (target >= 0.75)"
        )
    print(f"peak RSS {peak_rss_gb():.1f} GB")


if __name__ == "__main__":
    main()
