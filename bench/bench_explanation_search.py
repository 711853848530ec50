"""Browse & search with an explanations file at Gemma Scope's size: one explanation per feature of
26 x 16,384 = 425,984 (Neuronpedia's gemma-2-2b export has about one a feature), in a real SQLite
file with its FTS5 trigram index.

    python bench/bench_explanation_search.py [--features 425984] [--runs 30] [--work DIR]

Prints p50/p95 of the two calls a browse search adds: the full-text search
(``search_features``: up to ``browse.EXPLANATION_HITS`` matches ranked by bm25, else the first
that many; beside it ``search``, whole rows always ranked) and a page's best explanations
(``best_many``, 500 features), then of the whole ``browse.select`` on the embedded default's
store (4 x 4,096) with and without one explanation per feature. The texts are 6-12 words drawn
from the embedded corpus's 5,000 most frequent words, as often as their rank says (Zipf), so
queries hit from a handful to most rows. Target: a browse search p95 <= 300 ms
(docs/speed-and-scale.md, the app at scale).
"""

from __future__ import annotations

import argparse
import collections
import json
import lzma
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def _pcts(xs: list[float]) -> str:
    s = sorted(xs)
    return (
        f"p50 {statistics.median(s) * 1e3:.1f} ms, p95 {s[int(0.95 * (len(s) - 1))] * 1e3:.1f} ms"
    )


def _words(n: int = 5000) -> list[str]:
    """The ``n`` most frequent lower-case words of the embedded corpus (3+ letters)."""
    counts: collections.Counter[str] = collections.Counter()
    with lzma.open(ROOT / "assets" / "corpus" / "corpus.jsonl.xz", "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= 3000:
                break
            text = str(json.loads(line).get("text", ""))
            counts.update(w for w in text.lower().split() if w.isalpha() and len(w) >= 3)
    return [w for w, _ in counts.most_common(n)]


def _text(words: list[str], weights: list[float], rng: random.Random) -> str:
    return " ".join(rng.choices(words, weights, k=rng.randint(6, 12)))


def _filled(path: Path, layers: list[int], width: int, words: list[str], rng: random.Random) -> Any:
    """The explanations file at ``path`` with one explanation a feature of ``layers``: written
    unless an earlier run with the same ``--work`` left it so."""
    from explorer.explanations import Explanations, NewExplanation

    db = Explanations(path)
    want = len(layers) * width
    if db.count() == want:
        print(f"{path.name}: {want:,} explanations, reused")
        return db
    if db.count():
        raise SystemExit(f"{path} holds other explanations: choose another --work")
    zipf = [1 / (rank + 1) for rank in range(len(words))]  # words as often as in text
    t = time.perf_counter()
    for layer in layers:
        db.add(
            NewExplanation(
                layer=layer, feature=f, text=_text(words, zipf, rng),
                source="neuronpedia", method="np", model="gpt-4o-mini",
            )
            for f in range(width)
        )  # fmt: skip
    size = path.stat().st_size / 2**20
    took = time.perf_counter() - t
    print(f"{path.name}: {want:,} explanations written in {took:.0f} s ({size:.0f} MiB with FTS5)")
    return db


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--features", type=int, default=26 * 16384)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--work", type=Path, default=None)
    args = p.parse_args()
    from bench_app import _timed

    from explorer.app import browse

    work = args.work or Path(tempfile.mkdtemp(prefix="gse-xsearch-"))
    rng = random.Random(0)
    words = _words()
    # Queries from frequent to rare words, and one that matches nothing.
    queries = [words[i] for i in (0, 10, 100, 1000, 4000)] + ["zzzq-none"]

    width = 16384
    n_layers = max(1, args.features // width)
    big = _filled(work / "scale.sqlite", list(range(n_layers)), width, words, rng)
    for q in queries:  # what a browse search asks, then the whole rows of the same search
        hits = big.search_features(q, limit=browse.EXPLANATION_HITS)
        keys = _timed(lambda q=q: big.search_features(q, limit=browse.EXPLANATION_HITS), args.runs)
        rows = _timed(lambda q=q: big.search(q, limit=browse.EXPLANATION_HITS), args.runs)
        ranked = "ranked by bm25" if hits.complete else f"the first {browse.EXPLANATION_HITS:,}"
        print(
            f"search {q!r}: {hits.matched if hits.matched is not None else 'over the limit':,} "
            f"matching; features ({ranked}) {_pcts(keys)}; whole rows, ranked: {_pcts(rows)}"
        )
    pages = []
    for _ in range(args.runs):
        layer = rng.randrange(n_layers)
        start = rng.randrange(width - 500)
        t = time.perf_counter()
        best = big.best_many((layer, f) for f in range(start, start + 500))
        pages.append(time.perf_counter() - t)
        assert len(best) == 500
    print(f"best_many, 500 features: {_pcts(pages)}")

    # The whole browse search on the embedded store, without then with explanations.
    from explorer.app import open_explorer  # the app's own start-up (the model too)

    ctx = open_explorer("default", None, str(work / "labels.sqlite"))
    assert ctx.store is not None
    widest = max(ctx.store.n_features(n) for n in ctx.layers)
    small = _filled(work / "embedded.sqlite", list(ctx.layers), widest, words, rng)
    for label, xdb in (("without explanations", None), ("with one a feature", small)):
        ctx.explanations = xdb
        times = []
        for _ in range(max(1, args.runs // len(queries))):
            for q in queries:
                t = time.perf_counter()
                browse.select(ctx, "all", q, "density", True, True, True, 1)
                times.append(time.perf_counter() - t)
        print(f"browse search on the embedded store, {label}: {_pcts(times)}")


if __name__ == "__main__":
    main()
