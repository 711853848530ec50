"""Precompute throughput vs the bare forward pass it needs, on the same batches.

Run by hand (not a test):  python bench/bench_precompute.py [--tokens 8192] [--batch-windows 32]
Both sides run the embedded default on the same windows: the bare side runs the model to the
last SAE layer (``stop_at_layer``, no hooks, no logits); the precompute side runs
``precompute.store_build.job.encode_batch`` (hooks, every SAE, sparse records). Prints tokens/s
and the ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--batch-windows", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from explorer.bundle import build_bundle, preset
    from precompute.store_build.job import RunConfig, collect_windows, encode_batch

    bundle = build_bundle(preset("default"), device=args.device, dtype="float32")
    layers = list(bundle.layers)
    for layer in layers:
        bundle.sae(layer)
    table = collect_windows(RunConfig(tokens=args.tokens), bundle.tokenizer)
    n_windows = len(table.window_start)
    batches = [
        range(a, min(a + args.batch_windows, n_windows))
        for a in range(0, n_windows, args.batch_windows)
    ]
    ends = table.window_end
    stop = max(layers) + 1

    def bare(windows: range) -> None:
        s, e = table.window_start[windows.start : windows.stop], ends[windows.start : windows.stop]
        ids = torch.zeros((len(s), int((e - s).max())), dtype=torch.long)
        for row, (a, b) in enumerate(zip(s, e, strict=True)):
            ids[row, : b - a] = torch.from_numpy(table.token_ids[a:b].astype(np.int64))
        with torch.inference_mode():
            bundle.model(ids.to(bundle.device), stop_at_layer=stop)

    def timed(fn) -> float:  # type: ignore[no-untyped-def]
        fn(batches[0])  # warm-up
        t = time.perf_counter()
        for b in batches:
            fn(b)
        return time.perf_counter() - t

    t_bare = timed(bare)
    t_pre = timed(lambda b: encode_batch(bundle, table, b, layers))
    n = table.n_tokens
    print(f"torch threads {torch.get_num_threads()}, {n} tokens, {len(batches)} batches")
    print(f"bare forward to layer {stop - 1}: {n / t_bare:.0f} tok/s")
    print(f"precompute encode ({len(layers)} layers): {n / t_pre:.0f} tok/s")
    print(f"ratio precompute / bare: {t_bare / t_pre:.2f} (target >= 0.75)")


if __name__ == "__main__":
    main()
