"""Encode latency on the embedded default: load time, p50 encode for 64 tokens, bare forward.

Run by hand (not a test):  python bench/bench_encode.py [--runs 20] [--tokens 64]
Prints the cached load time, encode p50/p95 over all default layers, the bare forward pass to
the last default layer (``stop_at_layer``, no hooks, no logits) and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()

    from explorer.bundle import build_bundle, preset
    from explorer.encode import encode

    t0 = time.perf_counter()
    bundle = build_bundle(preset("default"), device="cpu", dtype="float32")
    for layer in bundle.layers:
        bundle.sae(layer)
    load_s = time.perf_counter() - t0

    words = ("The quick brown fox jumps over the lazy dog while the cat sleeps. " * 20).strip()
    ids = bundle.tokenizer(words, add_special_tokens=False)["input_ids"][: args.tokens - 1]
    text = bundle.tokenizer.decode(ids)
    n_tok = len(bundle.tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
    stop = max(bundle.layers) + 1
    full = torch.tensor([[bundle.tokenizer.bos_token_id, *ids]])

    def timed(fn) -> list[float]:  # type: ignore[no-untyped-def]
        fn()  # warm-up
        out = []
        for _ in range(args.runs):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return out

    enc = timed(lambda: encode(bundle, text, top_k=10))
    with torch.inference_mode():
        bare = timed(lambda: bundle.model(full, stop_at_layer=stop))
    p50 = statistics.median(enc)
    p95 = sorted(enc)[int(0.95 * (len(enc) - 1))]
    b50 = statistics.median(bare)
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"cached load (model + {len(bundle.layers)} SAEs): {load_s:.1f} s")
    print(
        f"encode {n_tok} tokens, layers {list(bundle.layers)}: "
        f"p50 {p50 * 1e3:.0f} ms, p95 {p95 * 1e3:.0f} ms"
    )
    print(f"bare forward to layer {stop - 1}: p50 {b50 * 1e3:.0f} ms")
    print(f"ratio encode / bare forward: {p50 / b50:.2f}x")


if __name__ == "__main__":
    main()
