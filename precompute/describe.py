"""Automatic descriptions: a short line per live feature, derived from what the store holds.

No model and no LLM: over the centres of a feature's stored examples (its top activations and
the interval samples, each a distinct corpus position), the most frequent tokens with their
counts, the token before (or after) them when one dominates, and the feature's top promoted
tokens that occur in the corpus, in plain words, e.g. ``fires on " London" (12 of 45 examples),
" York" (5), " Paris" (3), mostly after " in" (16 of 45); pushes toward " proper", " Airport"``.
Promoted tokens the corpus never contains (scripts and fragments of Gemma's 262k vocabulary that
the unembedding ranks high by chance) are left out. Deterministic, and vectorized over all
features of a layer (numpy and pandas, no per-feature Python loop). The job computes them at the
end of its reduce; :func:`add_descriptions` adds them to a store written before they existed,
leaving every other file as it is.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from explorer.steerability import is_word
from explorer.store.codec import TokenContext
from explorer.store.reader import Store
from explorer.store.schema import (
    descriptions_path,
    descriptions_schema,
    examples_path,
    group_order,
    unit_label,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from numpy.typing import NDArray

logger = logging.getLogger(__name__)

N_TOKENS = 3  # tokens named per feature
N_PROMOTED = 2  # promoted tokens named per feature
CONTEXT_SHARE = 0.5  # a context token must precede (or follow) this share of the centres…
CONTEXT_MIN = 3  # …and at least this many


def _quoted(texts: NDArray[Any]) -> NDArray[Any]:
    """Token texts as JSON strings: quotes show leading spaces, escapes show newlines."""
    return np.array([json.dumps(t, ensure_ascii=False) for t in texts.tolist()], dtype=object)


def _ranked(
    feature: NDArray[np.int64], value: NDArray[np.int64], order: NDArray[np.int64], limit: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Per feature, its ``limit`` most frequent values: (feature, value, count, rank).

    Ties go to the value first seen in the best-ranked example (``order``: top examples first,
    by rank, then the interval samples), then to the smaller value.
    """
    if len(feature) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    pair = np.lexsort((order, value, feature))
    f, v, o = feature[pair], value[pair], order[pair]
    first = np.ones(len(f), dtype=bool)
    first[1:] = (f[1:] != f[:-1]) | (v[1:] != v[:-1])
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, len(f)))
    f, v, best = f[starts], v[starts], o[starts]  # ``order`` sorted within a pair: first is best
    by = np.lexsort((v, best, -counts, f))
    f, v, counts = f[by], v[by], counts[by]
    head = np.ones(len(f), dtype=bool)
    head[1:] = f[1:] != f[:-1]
    rank = np.arange(len(f)) - np.maximum.accumulate(np.where(head, np.arange(len(f)), 0))
    keep = rank < limit
    return f[keep], v[keep], counts[keep], rank[keep]


def corpus_counts(context: TokenContext) -> NDArray[np.int64]:
    """How often each token id occurs in the store's corpus (BOS excluded), indexed by id; ids
    past the last one the corpus uses count 0 (:func:`in_corpus`)."""
    return np.bincount(context.flat.astype(np.int64)).astype(np.int64)


def in_corpus(counts: NDArray[np.int64], ids: NDArray[np.int64]) -> NDArray[np.bool_]:
    """Whether each of ``ids`` occurs in the corpus that ``counts`` (:func:`corpus_counts`)
    counted."""
    ok = (ids >= 0) & (ids < len(counts))
    out = np.zeros(len(ids), dtype=bool)
    out[ok] = counts[ids[ok]] > 0
    return out


def _promoted(features: pa.Table, context: TokenContext) -> NDArray[np.int64]:
    """``[n, N_PROMOTED]`` each feature's first promoted tokens (``top_logits``, best first)
    that occur in the corpus; -1 where fewer do.

    The unembedding ranks all 262k tokens of Gemma's vocabulary, and a feature's top logit
    effects are often tokens of scripts or fragments the corpus never contains ("人在",
    "チック"): the unembedding's noise, which a reader cannot place. They are skipped.
    """
    logits = features.column("top_logits").combine_chunks()
    starts = logits.offsets.to_numpy().astype(np.int64)
    lens = np.diff(starts)
    ids = logits.values.to_numpy().astype(np.int64)[starts[0] : starts[-1]]
    owner = np.repeat(np.arange(len(lens)), lens)
    keep = in_corpus(corpus_counts(context), ids)
    before = np.concatenate([[0], np.cumsum(keep)])  # kept tokens before each, all features
    rank = before[:-1] - before[starts[:-1] - starts[0]][owner]  # …and in its own feature
    chosen = keep & (rank < N_PROMOTED)
    promoted = np.full((len(lens), N_PROMOTED), -1, dtype=np.int64)
    promoted[owner[chosen], rank[chosen]] = ids[chosen]
    return promoted


def _agreement(
    features: pa.Table,
    feat: NDArray[np.int64],
    token: NDArray[np.int64],
    after: NDArray[np.int64],
    n_examples: NDArray[np.int32],
    context: TokenContext,
) -> NDArray[np.float32]:
    """``[n]`` per feature, the share of its distinct example centres (``feat``, ``token``, the
    token ``after`` it or -1) whose token, or the token after it, is a word the feature promotes:
    one of its ``top_logits`` that reads as a whole word (:func:`explorer.steerability.is_word`),
    compared as text, case and surrounding spaces aside. What :mod:`explorer.steerability`
    reads: a feature that fires on, or just before, a word it promotes makes the model write
    the text that makes it fire (a word piece does not count: "thunder" promotes "bolts")."""
    logits = features.column("top_logits").combine_chunks()
    starts = logits.offsets.to_numpy().astype(np.int64)
    ids = logits.values.to_numpy().astype(np.int64)[starts[0] : starts[-1]]
    owner = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
    used = np.unique(np.concatenate([ids, token, after[after >= 0]]))
    texts = context.texts(used, "descriptions")
    norm = np.array([" ".join(t.split()).lower() for t in texts])
    names, codes = np.unique(norm, return_inverse=True)
    codes = np.where(norm == "", -1, codes).astype(np.int64)
    width = len(names) + 1
    word = np.array([is_word(t) for t in texts], dtype=bool)

    def key(f: NDArray[np.int64], ids: NDArray[np.int64]) -> NDArray[np.int64]:
        c = codes[np.searchsorted(used, ids)]
        return np.where(c >= 0, f * width + c, -1)

    promoted = np.where(word[np.searchsorted(used, ids)], key(owner, ids), -1)
    promoted = np.unique(promoted[promoted >= 0])
    on = np.isin(key(feat, token), promoted)
    before = (after >= 0) & np.isin(key(feat, np.maximum(after, used[0])), promoted)
    hits = np.bincount(feat, weights=on | before, minlength=len(n_examples))
    return (hits / np.maximum(n_examples, 1)).astype(np.float32)


def describe_layer(features: pa.Table, examples: pa.Table, context: TokenContext) -> pa.Table:
    """The descriptions table of one layer (:func:`explorer.store.descriptions_schema`).

    Args:
        features: the layer's features table (``feature``, ``dead``, ``top_logits``), one row
            per feature in feature order.
        examples: its examples table, in any row order.
        context: the store's windows and vocabulary.
    """
    import pandas as pd
    import pyarrow as pa

    n = features.num_rows
    feat = examples.column("feature").to_numpy().astype(np.int64)
    window = examples.column("window").to_numpy().astype(np.int64)
    inside = examples.column("start").to_numpy().astype(np.int64) + examples.column(
        "max_pos"
    ).to_numpy().astype(np.int64)
    groups = examples.column("group").to_numpy(zero_copy_only=False)
    names, at = np.unique(groups, return_inverse=True)
    level = np.array([group_order(str(g)) for g in names], dtype=np.int64)[at]
    order = level * 2**16 + examples.column("rank").to_numpy().astype(np.int64)
    centre = context.offsets[window].astype(np.int64) + inside
    length = np.diff(context.offsets)[window].astype(np.int64)
    # One count per corpus position: a centre kept as a top example and drawn again as an
    # interval sample counts once (its best-ranked occurrence).
    by = np.lexsort((order, centre, feat))
    feat, centre, order, inside, length = (a[by] for a in (feat, centre, order, inside, length))
    new = np.ones(len(feat), dtype=bool)
    new[1:] = (feat[1:] != feat[:-1]) | (centre[1:] != centre[:-1])
    feat, centre, order, inside, length = (a[new] for a in (feat, centre, order, inside, length))
    n_examples = np.bincount(feat, minlength=n).astype(np.int32)
    token = context.flat[centre].astype(np.int64)
    before = np.where(inside > 0, context.flat[np.maximum(centre - 1, 0)], -1).astype(np.int64)
    after = np.where(
        inside + 1 < length, context.flat[np.minimum(centre + 1, len(context.flat) - 1)], -1
    ).astype(np.int64)

    tf, tv, tc, tr = _ranked(feat, token, order, N_TOKENS)
    tok_ids = np.full((n, N_TOKENS), -1, dtype=np.int64)
    tok_counts = np.zeros((n, N_TOKENS), dtype=np.int64)
    tok_ids[tf, tr], tok_counts[tf, tr] = tv, tc

    ctx_kind = np.full(n, "", dtype=object)
    ctx_token = np.full(n, -1, dtype=np.int64)
    ctx_count = np.zeros(n, dtype=np.int64)
    # 'before X': X follows the centres; 'after X': X precedes them (and wins when both dominate).
    for kind, values in (("before", after), ("after", before)):
        ok = values >= 0
        cf, cv, cc, _ = _ranked(feat[ok], values[ok], order[ok], 1)
        dominant = (cc >= CONTEXT_MIN) & (cc >= CONTEXT_SHARE * n_examples[cf])
        cf, cv, cc = cf[dominant], cv[dominant], cc[dominant]
        ctx_kind[cf], ctx_token[cf], ctx_count[cf] = kind, cv, cc

    promoted = _promoted(features, context)
    agreement = _agreement(features, feat, token, after, n_examples, context)

    # The line: token texts looked up once per distinct id, then joined column-wise.
    used = np.unique(np.concatenate([tok_ids.ravel(), ctx_token, promoted.ravel()]))
    used = used[used >= 0]
    texts = _quoted(np.array(context.texts(used, "descriptions"), dtype=object))
    quoted = dict(zip(used.tolist(), texts.tolist(), strict=True))
    quoted[-1] = ""
    text = np.vectorize(quoted.__getitem__, otypes=[object])
    dead = features.column("dead").to_numpy(zero_copy_only=False)

    def col(values: Any) -> pd.Series:
        return pd.Series(values, dtype=object)

    of = col(n_examples.astype(str))
    line = col(np.where(tok_ids[:, 0] >= 0, "fires on ", ""))
    for j in range(N_TOKENS):
        count = col(tok_counts[:, j].astype(str))
        part = (
            col(text(tok_ids[:, j]))
            + " ("
            + count
            + (" of " + of + " examples)" if j == 0 else ")")
        )
        part = part.where(tok_ids[:, j] >= 0, "")
        sep = col(np.where((j > 0) & (tok_ids[:, j] >= 0), ", ", ""))
        line = line + sep + part
    ctx_part = (
        ", mostly " + col(ctx_kind) + " " + col(text(ctx_token))
        + " (" + col(ctx_count.astype(str)) + " of " + of + ")"
    ).where(ctx_token >= 0, "")  # fmt: skip
    line = line + ctx_part
    prom = col(text(promoted[:, 0]))
    for j in range(1, N_PROMOTED):
        prom = prom + col(np.where(promoted[:, j] >= 0, ", ", "")) + col(text(promoted[:, j]))
    lead = col(np.where(tok_ids[:, 0] >= 0, "; pushes toward ", "pushes toward "))
    line = line + (lead + prom).where(promoted[:, 0] >= 0, "")
    line = line.where(~dead, "")

    def lists(values: NDArray[np.int64], valid: NDArray[np.bool_]) -> pa.ListArray:
        sizes = valid.sum(axis=1)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
        return pa.ListArray.from_arrays(
            pa.array(offsets), pa.array(values[valid].astype(np.int32), pa.int32())
        )

    valid_tok = (tok_ids >= 0) & ~dead[:, None]
    valid_prom = (promoted >= 0) & ~dead[:, None]
    return pa.table(
        {
            "feature": pa.array(features.column("feature").to_numpy(), pa.int32()),
            "description": pa.array(line.tolist(), pa.string()),
            "n_examples": pa.array(n_examples, pa.int32()),
            "tokens": lists(tok_ids, valid_tok),
            "counts": lists(tok_counts, valid_tok),
            "context": pa.array(np.where(dead, "", ctx_kind).tolist(), pa.string()),
            "context_token": pa.array(np.where(dead, -1, ctx_token), pa.int32()),
            "context_count": pa.array(np.where(dead, 0, ctx_count), pa.int32()),
            "promoted": lists(promoted, valid_prom),
            "agreement": pa.array(np.where(dead, 0.0, agreement), pa.float32()),
        },
        schema=descriptions_schema(),
    )


def add_descriptions(store_dir: Path) -> dict[str, int]:
    """Compute the descriptions of every layer of every source of the store at ``store_dir``
    and add them to it.

    Only the descriptions files and the manifest are written (each atomically, the manifest
    last, so an interrupted run leaves the store as it was); existing descriptions are replaced.
    Returns ``{"layer 5": described features, "transcoder layer 3": …}``.
    """
    import pyarrow.parquet as pq

    from precompute.store_build.write import add_to_store

    t0 = time.perf_counter()
    store_dir = Path(store_dir)
    root = Store.open(store_dir, verify=True)
    context = root.token_context()
    tables, described = {}, {}
    for source in root.sources:
        store = root.source(source)
        for layer in store.layers:
            name = descriptions_path(layer, source)
            examples = pq.read_table(store_dir / examples_path(layer, source))
            tables[name] = describe_layer(store.features_arrow(layer), examples, context)
            lines = tables[name]["description"].to_pylist()
            described[unit_label((source, layer))] = sum(1 for d in lines if d)
    add_to_store(store_dir, tables)
    logger.info("described %s in %.1f s", store_dir, time.perf_counter() - t0)
    return described
