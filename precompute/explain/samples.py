"""What the explainer sees and what the scorers test on, drawn from one feature of a store.

The feature's top examples alternate: even ranks go to the explainer, odd ranks are held out;
the interval samples likewise (even ranks within each interval shown, odd held out). The scorers
test on up to ``n_test`` held-out activating contexts (interval samples first, so low activations
are tested too, then top examples) and as many non-activating ones: spans of the same length cut
at random (seeded by layer and feature) from the store's windows, away from the feature's own
examples. The store does not record where else a feature fires, so a random span contains a fire
with probability about ``1 - (1 - density) ** length`` (``fire_risk``, kept with the scores).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from explorer.store.codec import Example, FeatureRecord, TokenContext


@dataclass(frozen=True)
class Context:
    """A context's tokens (text) and the feature's activations on them (zeros: not firing)."""

    tokens: list[str]
    acts: list[float]


@dataclass(frozen=True)
class FeatureSamples:
    layer: int
    feature: int
    max_act: float
    shown: list[Context]
    promoted: list[str]
    activating: list[Context]
    non_activating: list[Context]
    fire_risk: float


def _ctx(e: Example) -> Context:
    return Context(tokens=list(e.tokens), acts=[float(a) for a in e.acts])


def _spans_of(rec: FeatureRecord) -> dict[str, list[tuple[int, int]]]:
    spans: dict[str, list[tuple[int, int]]] = {}
    examples = list(rec.top_examples) + [e for g in rec.intervals for e in g.examples]
    for e in examples:
        spans.setdefault(e.doc_id, []).append((e.start, e.start + len(e.tokens)))
    return spans


def random_contexts(
    tc: TokenContext, rec: FeatureRecord, lengths: list[int], rng: random.Random
) -> list[Context]:
    """One span per length, from random windows, overlapping none of the feature's examples."""
    taken = _spans_of(rec)
    n_windows = len(tc.offsets) - 1
    out: list[Context] = []
    for length in lengths:
        for _ in range(200):
            w = rng.randrange(n_windows)
            lo, hi = int(tc.offsets[w]), int(tc.offsets[w + 1])
            if hi - lo < length:
                continue
            start = rng.randrange(hi - lo - length + 1)
            doc_start = int(tc.offset[w]) + start
            clash = any(
                a < doc_start + length and doc_start < b for a, b in taken.get(tc.doc_id[w], [])
            )
            if clash:
                continue
            ids = tc.flat[lo + start : lo + start + length]
            out.append(Context(tokens=tc.texts(np.asarray(ids), "contexts"), acts=[0.0] * length))
            break
    return out


def feature_samples(
    rec: FeatureRecord,
    tc: TokenContext,
    n_explain: int = 10,
    n_test: int = 10,
    n_promoted: int = 10,
    seed: int = 0,
) -> FeatureSamples:
    """Split one feature's examples (see the module doc); ``n_test`` of each kind at most."""
    top = list(rec.top_examples)
    shown_ex = top[0::2][:n_explain]
    held_top = top[1::2]
    held_int: list[Example] = []
    for group in reversed(rec.intervals):  # strongest interval first among the samples
        if group.examples:
            shown_ex.append(group.examples[0])  # one per interval, beside the top examples
        held_int.extend(group.examples[1::2])
    # An interval sample can be a top example too: a context shown is never tested.
    seen = {(e.doc_id, e.start) for e in shown_ex}
    held_intervals = [_ctx(e) for e in held_int if (e.doc_id, e.start) not in seen]
    held_top_c = [_ctx(e) for e in held_top if (e.doc_id, e.start) not in seen]
    shown = [_ctx(e) for e in shown_ex]
    activating: list[Context] = []
    # Alternate interval samples and top examples so both ends of the range are tested.
    for a, b in zip(held_intervals, held_top_c, strict=False):
        activating += [a, b]
    longer = held_intervals if len(held_intervals) > len(held_top_c) else held_top_c
    activating += longer[min(len(held_intervals), len(held_top_c)) :]
    activating = activating[:n_test]
    rng = random.Random(f"{seed}:{rec.layer}:{rec.feature}")
    non_activating = random_contexts(tc, rec, [len(c.tokens) for c in activating], rng)
    length = max((len(c.tokens) for c in activating), default=0)
    return FeatureSamples(
        layer=rec.layer,
        feature=rec.feature,
        max_act=float(rec.max_act),
        shown=shown,
        promoted=list(rec.top_logits_tokens[:n_promoted]),
        activating=activating,
        non_activating=non_activating,
        fire_risk=1.0 - (1.0 - float(rec.density)) ** length,
    )
