"""The app's speed on the embedded default with the shipped store (run by hand, not a test).

    python bench/bench_app.py [--runs 20] [--gen-tokens 32] [--startup]

Prints, each with its target from the app issue:
- microscope (64 tokens, all default layers, through the handler the UI calls) p50 vs the bare
  forward pass to the last layer (``stop_at_layer``, no hooks): target ratio <= 1.2;
- feature dashboard open p50 / p95 over random live features (the first open, which loads the
  store's context, reported apart): target p95 <= 40 ms;
- generation, greedy, ``--gen-tokens`` new tokens: plain (one row, our KV-cache loop), a steered
  row alone, default + steered side by side, and transformers' own ``generate`` on the same
  converted model (``Gemma3ForCausalLM`` from the embedded model's cache, float32, its default
  dynamic cache, ``min_new_tokens`` so both make the same number of tokens): target steered alone
  >= 0.95x transformers' ``generate``; transformer-lens's ``HookedTransformer.generate`` for
  reference;
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


def _hf_generate(bundle: Any, prompt: str, n: int) -> Any:
    """transformers' ``generate`` (greedy, exactly ``n`` new tokens) on the embedded model as the
    cache holds it: the weights our model was built from."""
    from transformers import Gemma3ForCausalLM

    from explorer.gguf_model import embedded_model_dir

    hf = Gemma3ForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.float32).eval()
    ids = torch.tensor([bundle.tokenizer(prompt)["input_ids"]])

    def run() -> None:
        with torch.inference_mode():
            out = hf.generate(
                ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, top_p=None, top_k=None
            )
        assert out.shape[1] == ids.shape[1] + n

    return run


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
    parser.add_argument("--gen-rounds", type=int, default=5)
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

    def forward() -> None:
        with torch.inference_mode():
            bundle.model(full, stop_at_layer=stop)

    micro: list[float] = []
    bare: list[float] = []
    microscope.view(ctx, text)  # warm-up
    forward()
    for _ in range(args.runs):  # interleaved, so a change in the machine's load touches both
        micro += _timed(lambda: microscope.view(ctx, text), 1, warmup=False)
        bare += _timed(forward, 1, warmup=False)
    m50, m95 = _pcts(micro)
    b50, _ = _pcts(bare)
    print(
        f"microscope 64 tokens x {len(bundle.layers)} layers: p50 {m50 * 1e3:.0f} ms, "
        f"p95 {m95 * 1e3:.0f} ms; bare forward p50 {b50 * 1e3:.0f} ms; "
        f"ratio {m50 / b50:.2f} (target <= 1.2)"
    )

    rng = random.Random(0)
    first, opens = dashboard_opens(ctx, max(args.runs, 50), rng)
    d50, d95 = _pcts(opens)
    print(
        f"dashboard open: first {first * 1e3:.0f} ms, then p50 {d50 * 1e3:.1f} ms, "
        f"p95 {d95 * 1e3:.1f} ms over {len(opens)} random features (target p95 <= 40 ms)"
    )

    n = args.gen_tokens
    prompt = "The old house at the end of the road"
    cfg = GenerationConfig(max_new_tokens=n, temperature=0.0)
    layer, feature = dashboard.random_feature(ctx, "all", rng)
    steers = steering.add_steer(ctx, [], layer, feature, None, "add")

    def plain() -> None:
        *_, c = generate(bundle, prompt, cfg)
        assert c.n_tokens == [n], f"plain generation stopped early: {c.stop_reason}"

    def steered() -> None:
        for _ in steering.steer(ctx, prompt, steers, 0.0, n, 0, 0.0):
            pass

    def steered_alone() -> None:
        *_, c = generate(bundle, prompt, cfg, [Steer(layer, feature, steers[0].strength)])
        assert c.n_tokens == [n], f"steered generation stopped early: {c.stop_reason}"

    hf_generate = _hf_generate(bundle, prompt, n)
    # Interleaved rounds, so a change in the machine's load touches every variant alike.
    times: dict[str, list[float]] = {"plain": [], "alone": [], "pair": [], "hf": []}
    fns = {"plain": plain, "alone": steered_alone, "pair": steered, "hf": hf_generate}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(args.gen_rounds):
        for key, fn in fns.items():
            times[key] += _timed(fn, 1, warmup=False)
    p, s1, s, hf = (statistics.median(times[k]) for k in fns)
    print(
        f"generation, {n} tokens greedy, median of {args.gen_rounds}: transformers' generate "
        f"{n / hf:.1f} tok/s; plain {n / p:.1f} tok/s ({hf / p:.2f}x transformers); steered alone "
        f"{n / s1:.1f} tok/s ({hf / s1:.2f}x transformers, target >= 0.95; {p / s1:.2f}x plain); "
        f"default + steered side by side {n / s:.1f} tok/s per completion ({p / s:.2f}x plain; "
        f"{2 * n / s:.1f} tok/s in all)"
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
