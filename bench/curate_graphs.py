"""Read candidate prompts' attribution graphs as text, to choose the Circuits tab's curated graphs.

    PYTHONPATH=. python bench/curate_graphs.py [--preset default] [--save DIR] [PROMPT ...]

For each prompt (default: the candidates below): the model's top 5 next tokens, then the graph of
the top one as the tab computes it (one target, pruned at 0.8 / 0.98): its scores, size, the
embeddings' effects on the target per token, and the most influential feature and error nodes
with their layer, token and effect. Captions in ``assets/graphs/index.json`` are written from
this and from the graph in the tab; ``python -m explorer graph --curated`` then writes the files
(``--save DIR`` writes each graph file here too, as ``<slug>.json``, the slug from the prompt).
Each graph takes 30-100 s on a loaded 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

# Short prompts the embedded model gets right (its top token, p): a fact, a list, a verse, code.
CANDIDATES = [
    "The Eiffel Tower is in the city of",  # ' Paris' 0.50
    "Michael Jordan plays the sport of",  # ' basketball' 0.76
    "Monday, Tuesday, Wednesday,",  # ' Thursday' 0.76
    "one, two, three, four,",  # ' five' 0.70
    "Roses are red, violets are",  # ' blue' 0.92
    "Twinkle, twinkle, little star, how I wonder what you",  # ' are' 0.80
    "def add(a, b):\n    return a",  # ' +' 0.76
    "The opposite of hot is",  # ' cold' 0.59
]


def main() -> None:
    from explorer.app import Context, circuits
    from explorer.bundle import build_bundle, preset
    from explorer.labels import Labels
    from explorer.paths import ASSETS_STORE
    from explorer.store import Store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--save", type=Path, help="write each graph file into this directory")
    parser.add_argument("prompts", nargs="*")
    args = parser.parse_args()
    bundle = build_bundle(preset(args.preset))
    where = Path(tempfile.mkdtemp())
    store = Store.open(ASSETS_STORE) if args.preset == "default" else None
    ctx = Context(bundle=bundle, store=store, labels=Labels(where / "l.sqlite", scope="x"))
    for prompt in args.prompts or CANDIDATES:
        start = time.perf_counter()
        c = circuits.open_graph(ctx, prompt, "")
        took = time.perf_counter() - start
        text = json.dumps(c.data, separators=(",", ":"))
        size = len(text) / 1024
        if args.save is not None:
            args.save.mkdir(parents=True, exist_ok=True)
            (args.save / f"{c.slug}.json").write_text(text)
        scores = c.file.metadata.get("scores") or {}
        tokens = c.file.metadata["prompt_tokens"]
        print(f"\n=== {prompt!r}  ({took:.0f} s, {size:.0f} KB)")
        print("top 5:", ", ".join(f"{t!r} {p:.3f}" for _, t, p in c.top[:5]))
        print(
            f"target {c.target_token!r}; replacement {scores.get('replacement', 0):.2f}, "
            f"completeness {scores.get('completeness', 0):.2f}; {len(c.nodes)} nodes, "
            f"{len(c.file.links)} links"
        )
        embeds = sorted((n for n in c.nodes.values() if n.kind == "token"), key=lambda n: n.pos)
        print("embeddings:", ", ".join(f"{tokens[n.pos]!r} {n.effect:+.2f}" for n in embeds))
        inner = [n for n in c.nodes.values() if n.kind in ("feature", "error")]
        inner.sort(key=lambda n: n.influence if n.influence is not None else 1.0)
        for n in inner[:15]:
            print(f"  {_line(ctx, n, tokens)}")
        # The strongest features specific to the prompt: dense ones (always on, bias-like) left
        # out, each with what ablating it does to the target.
        specific = [n for n in inner if n.kind == "feature" and not _dense(ctx, n)]
        print("not dense:")
        for n in specific[:5]:
            out = circuits.intervention(ctx, c, [n.node_id], 0)
            base, frozen, unfrozen = out.result.watched[0]
            print(
                f"  {_line(ctx, n, tokens)}; ablated p {base:.2f} -> {frozen:.2f} frozen, "
                f"{unfrozen:.2f} unfrozen; {circuits.feature_text(ctx, n)[:70]!r}"
            )


def _dense(ctx: Any, n: Any) -> bool:
    from explorer.app import circuits

    found = circuits.feature_density(ctx, n)
    return found is not None and found[0] > found[1]


def _line(ctx: Any, n: Any, tokens: list[str]) -> str:
    from explorer.app import circuits

    found = circuits.feature_density(ctx, n)
    dens = f" dens {100 * found[0]:6.2f}%" if found is not None else ""
    return (
        f"{n.name:16} @{n.pos:2} {tokens[n.pos]!r:14} act {n.activation or 0:8.2f} "
        f"infl {n.influence or 0:.3f} effect {n.effect:+.3f}{dens}"
    )


if __name__ == "__main__":
    main()
