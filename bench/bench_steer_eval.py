"""The steering evaluation's numbers for the curated steering demos (``assets/curated.json``).

Run by hand (not a test):  python bench/bench_steer_eval.py [--tokens 16]
For each demo, its own prompt, seed, temperature and method at its strength: the steered
feature's read-back concept score (mean activation on the continuation / its max) on the default
and on the steered continuation, the promoted tokens' lift, perplexity under the unsteered model
and repetition, each default vs steered, and the time taken. The table of the demos in
docs/steering.md is this output.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=None, help="default: each demo's own")
    args = parser.parse_args()

    from explorer.app.context import load_curated
    from explorer.bundle import build_bundle, preset
    from explorer.paths import ASSETS_STORE
    from explorer.store import Store
    from precompute.steer_eval import EvalConfig, evaluate_feature

    store = Store.open(ASSETS_STORE)
    bundle = build_bundle(preset("default"), device="cpu", dtype="float32")
    demos = load_curated("default")["steering"]
    print(
        "| demo | feature | strength (x max) | concept default -> steered | fires | lift "
        "| perplexity default -> steered | repetition default -> steered | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for d in demos:
        t0 = time.perf_counter()
        rec = store.feature(d["layer"], d["feature"])
        top = float(rec.max_act)
        cfg = EvalConfig(
            methods=(d["method"],),
            multiples=(d["strength"] / top,),
            prompts=(d["prompt"],),
            seeds=(d["seed"],),
            tokens=args.tokens or int(d.get("max_new_tokens", 32)),
            temperature=float(d.get("temperature", 0.7)),
        )
        base, steered = evaluate_feature(
            bundle, d["layer"], d["feature"], top, list(rec.top_logits), cfg
        )
        print(
            f"| {d.get('label', '')} | {d['layer']}:{d['feature']} | {steered.strength:g} "
            f"({steered.multiple:.2f}) | {base.concept:.3f} -> {steered.concept:.3f} "
            f"| {base.fires:.2f} -> {steered.fires:.2f} | {steered.lift:+.3f} "
            f"| {base.perplexity:.1f} -> {steered.perplexity:.1f} "
            f"| {base.repetition:.2f} -> {steered.repetition:.2f} "
            f"| {time.perf_counter() - t0:.0f} |"
        )
        print(f"<!-- default: {base.examples[0]!r} -->")
        print(f"<!-- steered: {steered.examples[0]!r} -->")


if __name__ == "__main__":
    main()
