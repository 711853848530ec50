"""The app's speed on the embedded default with the shipped store (run by hand, not a test).

    python bench/bench_app.py [--runs 20] [--gen-tokens 32] [--startup]

Prints, each with its target from the app issue:
- microscope (64 tokens, all default layers, through the handler the UI calls) p50 vs the bare
  forward pass to the last layer (``stop_at_layer``, no hooks): target ratio <= 1.5;
- feature dashboard open p50 / p95 over random live features (the first open, which loads the
  store's context, reported apart): target p95 <= 100 ms;
- steered generation (default + steered rows, greedy) tokens/s of the steered row vs plain
  generation (one row, our KV-cache loop) and vs transformer-lens's ``HookedTransformer.generate``:
  target ratio >= 0.9;
- with ``--startup``: ``python -m explorer`` start-up time until the page answers, and its
  resident memory then and after a microscope call.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _pcts(xs: list[float]) -> tuple[float, float]:
    s = sorted(xs)
    return statistics.median(s), s[int(0.95 * (len(s) - 1))]


def _timed(fn, runs: int, warmup: bool = True) -> list[float]:  # type: ignore[no-untyped-def]
    if warmup:
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def dashboard_opens(ctx: Any, n: int, rng: random.Random) -> tuple[float, list[float]]:
    """Seconds of the first dashboard open (it loads the store's context), then of ``n`` more,
    each of a random live feature."""
    from explorer.app import dashboard

    t = time.perf_counter()
    dashboard.view(ctx, *dashboard.random_feature(ctx, "all", rng))
    first = time.perf_counter() - t
    opens = []
    for _ in range(n):
        layer, feature = dashboard.random_feature(ctx, "all", rng)
        t = time.perf_counter()
        dashboard.view(ctx, layer, feature)
        opens.append(time.perf_counter() - t)
    return first, opens


def startup() -> None:
    from app_process import app_process, rss_mb
    from gradio_client import Client

    with app_process() as app:
        rss = rss_mb(app.pid)
        client = Client(app.url, verbose=False)
        client.predict(
            "The cat sat on the mat.",
            ["5", "9", "12", "15"],
            "max activation",
            1,
            "max",
            api_name="/microscope",
        )
        print(f"start-up (python -m explorer until the page answers): {app.ready_s:.1f} s")
        print(f"resident memory: {rss:.0f} MB at start, {rss_mb(app.pid):.0f} MB after a call")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--gen-tokens", type=int, default=32)
    parser.add_argument("--startup", action="store_true")
    args = parser.parse_args()

    from explorer.app import dashboard, microscope, open_explorer, steering
    from explorer.steer import GenerationConfig, Steer, generate

    t0 = time.perf_counter()
    ctx = open_explorer("default", None, str(Path(tempfile.mkdtemp()) / "labels.sqlite"))
    print(
        f"torch threads: {torch.get_num_threads()}; open (model, SAEs, store): "
        f"{time.perf_counter() - t0:.1f} s"
    )
    bundle = ctx.bundle
    words = ("The quick brown fox jumps over the lazy dog while the cat sleeps. " * 20).strip()
    ids = bundle.tokenizer(words, add_special_tokens=False)["input_ids"][:63]
    text = bundle.tokenizer.decode(ids)
    full = torch.tensor([[bundle.tokenizer.bos_token_id, *ids]])
    stop = max(bundle.layers) + 1

    micro = _timed(lambda: microscope.view(ctx, text), args.runs)
    with torch.inference_mode():
        bare = _timed(lambda: bundle.model(full, stop_at_layer=stop), args.runs)
    m50, m95 = _pcts(micro)
    b50, _ = _pcts(bare)
    print(
        f"microscope 64 tokens x {len(bundle.layers)} layers: p50 {m50 * 1e3:.0f} ms, "
        f"p95 {m95 * 1e3:.0f} ms; bare forward p50 {b50 * 1e3:.0f} ms; "
        f"ratio {m50 / b50:.2f} (target <= 1.5)"
    )

    rng = random.Random(0)
    first, opens = dashboard_opens(ctx, max(args.runs, 50), rng)
    d50, d95 = _pcts(opens)
    print(
        f"dashboard open: first {first * 1e3:.0f} ms, then p50 {d50 * 1e3:.1f} ms, "
        f"p95 {d95 * 1e3:.1f} ms over {len(opens)} random features (target p95 <= 100 ms)"
    )

    n = args.gen_tokens
    prompt = "The old house at the end of the road"
    cfg = GenerationConfig(max_new_tokens=n, temperature=0.0)
    layer, feature = dashboard.random_feature(ctx, "all", rng)
    steers = steering.add_steer(ctx, [], layer, feature, None, "add")

    def plain() -> None:
        for _ in generate(bundle, prompt, cfg):
            pass

    def steered() -> None:
        for _ in steering.steer(ctx, prompt, steers, 0.0, n, 0, 0.0):
            pass

    def steered_alone() -> None:
        for _ in generate(bundle, prompt, cfg, [Steer(layer, feature, steers[0].strength)]):
            pass

    p = statistics.median(_timed(plain, 3))
    s1 = statistics.median(_timed(steered_alone, 3))
    s = statistics.median(_timed(steered, 3))
    print(
        f"generation, {n} tokens greedy: plain {n / p:.1f} tok/s; steered alone {n / s1:.1f} "
        f"tok/s (ratio {p / s1:.2f}, target >= 0.9); default + steered side by side "
        f"{n / s:.1f} tok/s per completion (ratio {p / s:.2f}; {2 * n / s:.1f} tok/s in all)"
    )
    tl_n = 8
    with torch.inference_mode():
        t = time.perf_counter()
        bundle.model.generate(
            torch.tensor([bundle.tokenizer(prompt)["input_ids"]]),
            max_new_tokens=tl_n,
            do_sample=False,
            verbose=False,
        )
        tl = time.perf_counter() - t
    print(f"transformer-lens HookedTransformer.generate: {tl_n / tl:.1f} tok/s ({tl_n} tokens)")
    if args.startup:
        startup()


if __name__ == "__main__":
    main()
