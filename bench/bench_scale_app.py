"""The app on the Gemma Scope-shaped store (26 x 16,384 = 425,984 features) that
``bench/bench_scale.py`` wrote, measured in-process through the handlers the UI calls.

    python bench/bench_scale_app.py [--work /tmp/gse-scale] [--runs 30]

(or ``bench_scale.py --app`` right after the precompute, reusing its model). The model is the
same seeded random Gemma 2 2B shape (shared blocks on this CPU); its SAEs load lazily from
``WORK/saes`` into the bundle's bounded cache (8). Prints: start-up (store open, summary of every
feature, the Gradio app built), resident memory, dashboard open p50/p95, browse and search p50/p95
over all features, and the microscope on 8 and on 26 layers.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _pcts(xs: list[float]) -> str:
    s = sorted(xs)
    return (
        f"p50 {statistics.median(s) * 1e3:.0f} ms, p95 {s[int(0.95 * (len(s) - 1))] * 1e3:.0f} ms"
    )


def _timed(fn: Any, runs: int) -> list[float]:
    """``runs`` timings of ``fn``, without bench_app's warm-up run (a 26-layer microscope takes
    ~40 s here)."""
    from bench_app import _timed as timed

    return list(timed(fn, runs, warmup=False))


def measure_app(bundle: Any, store_dir: Path, runs: int = 30) -> None:
    from bench_app import dashboard_opens
    from memory import rss_gb

    from explorer.app import Context, browse, build_app, microscope
    from explorer.labels import Labels
    from explorer.store import Store

    rss0 = rss_gb()
    t0 = time.perf_counter()
    store = Store.open(store_dir)
    widths = {n: store.n_features(n) for n in store.layers}
    labels = Labels(Path(tempfile.mkdtemp()) / "labels.sqlite", scope="shape", widths=widths)
    ctx = Context(bundle=bundle, store=store, labels=labels)
    summary = ctx.summary()
    t_summary = time.perf_counter() - t0
    build_app(ctx)
    t_start = time.perf_counter() - t0
    print(
        f"app start-up on {len(summary):,} features ({len(store.layers)} layers): store + "
        f"summary {t_summary:.1f} s, with the Gradio app built {t_start:.1f} s; RSS {rss_gb():.2f}"
        f" GB ({rss_gb() - rss0:+.2f} GB over the model alone)"
    )
    first, opens = dashboard_opens(ctx, max(runs, 50), random.Random(0))
    print(
        f"dashboard open: first {first * 1e3:.0f} ms, then {_pcts(opens)} over {len(opens)} "
        "random live features (target p95 <= 100 ms)"
    )
    cases = {
        "browse, all layers, default view": ("all", "", "density", True, True, True, 1),
        "browse, page 200": ("all", "", "density", True, True, True, 200),
        "browse, layer 13, by max act": ("13", "", "max_act", True, True, True, 1),
        "browse, all features (dense, dead shown), by id": ("all", "", "feature", False, 0, 0, 1),
    }
    for name, args in cases.items():
        browse.features(ctx, *args)
        print(f"{name}: {_pcts(_timed(lambda a=args: browse.features(ctx, *a), runs))}")
    words = [w for w in " ".join(summary["top_tokens"].iloc[::9973]).split() if w.isalpha()]
    queries = (words[:8] or ["the"]) + ["zzzz-none"]
    search = []
    hits = []
    for _ in range(max(1, runs // len(queries))):
        for q in queries:
            t = time.perf_counter()
            total = browse.select(ctx, "all", q, "density", True, True, True, 1).total
            search.append(time.perf_counter() - t)
            hits.append(total)
    print(
        f"search over all features ({len(queries)} queries, e.g. {queries[:3]}, "
        f"{min(hits)}–{max(hits)} matches): {_pcts(search)} (target p95 <= 300 ms)"
    )
    text = ("The old house at the end of the road was quiet in the rain. " * 6).strip()
    default_layers = microscope.default_layers(ctx)
    for chosen in ([str(n) for n in default_layers], [str(n) for n in ctx.layers]):
        times = _timed(lambda c=chosen: microscope.view(ctx, text, c), 2)
        print(
            f"microscope, {len(chosen)} layers, ~64 tokens: {min(times):.1f} s (best of 2; "
            f"SAE cache {bundle.max_saes}); RSS {rss_gb():.2f} GB"
        )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--work", type=Path, default=Path("/tmp/gse-scale"))
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--max-saes", type=int, default=8)
    args = p.parse_args()
    from gemma2_shape import build_gemma2_shape
    from memory import rss_gb

    t = time.perf_counter()
    shape = build_gemma2_shape(
        args.work, shared_blocks=True, max_saes=args.max_saes, calibration_tokens=1024
    )
    took = time.perf_counter() - t
    print(f"model built (random, shared blocks) in {took:.0f} s, RSS {rss_gb():.2f} GB")
    measure_app(shape.bundle, args.work / "store", args.runs)


if __name__ == "__main__":
    main()
