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

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--save", type=Path, help="write each graph file into this directory")
    parser.add_argument("prompts", nargs="*")
    args = parser.parse_args()
    bundle = build_bundle(preset(args.preset))
    where = Path(tempfile.mkdtemp())
    ctx = Context(bundle=bundle, store=None, labels=Labels(where / "l.sqlite", scope="x"))
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
            print(
                f"  {n.name:16} @{n.pos:2} {tokens[n.pos]!r:14} act {n.activation or 0:8.2f} "
                f"infl {n.influence or 0:.3f} effect {n.effect:+.3f}"
            )


if __name__ == "__main__":
    main()
