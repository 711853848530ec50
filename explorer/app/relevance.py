"""Browse's order: how relevant a feature is to a search, and which features are worth opening
first when there is no search ("interesting first").

A search ranks its matches in tiers, best first (the chosen sort breaks ties within a tier):

0. a person's or a curated label that holds every word of the search as a whole word;
1. a machine explanation that matches (full-text index, best match first);
2. a token of the feature that *is* the search (case and spaces aside): one it fires on,
   weighted by the share of its stored examples centred on it (``" love"`` on 26 of 40: 0.65),
   the token most of them follow or precede (half that share), or one it promotes
   (:data:`PROMOTED_WEIGHT` for the first, then less by rank); the best weight first;
3. a label that holds the search inside a longer word ("love" in "lovely");
4. a token that holds the search inside a longer one ("code" in "ncoder", "number" in
   "numberWith").

"Interesting first" (:func:`interest`): people's labels first, then features that fire on
rare tokens in most of their examples (a token feature a newcomer can read), rather than the
densest features, which fire on " but", " a", " to".
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from explorer.store import Store

PROMOTED_WEIGHT = 0.25
"""The weight of a search matching a feature's first promoted token; the k-th weighs this / k."""
CONTEXT_WEIGHT = 0.5
"""A token most of the examples follow or precede weighs this × the share it covers."""
PROMOTED_SHOWN = 5
"""Promoted tokens searched: those Browse shows (its ``top_tokens`` column)."""
EVIDENCE_FIRES = 1000
"""A feature that fired fewer times than this counts as proportionally less interesting (a
token seen once or twice tells little)."""

TIER_LABEL, TIER_EXPLANATION, TIER_TOKEN, TIER_LABEL_PART, TIER_TOKEN_PART, TIER_NONE = range(6)


def normalize(text: str) -> str:
    """A token or a search as they are compared: lower case, spaces collapsed and trimmed
    (``" Love"`` -> ``"love"``)."""
    return " ".join(text.split()).lower()


def whole_words(query: str) -> re.Pattern[str]:
    """A pattern that finds ``query`` (already normalized) as whole words only."""
    return re.compile(r"(?<!\w)" + re.escape(query) + r"(?!\w)")


@dataclass(frozen=True)
class TokenIndex:
    """Every token a search can match as a whole, in long form over the summary's rows.

    Args:
        row: ``[M]`` the summary row of each entry.
        code: ``[M]`` its normalized text, as an index into ``codes``' keys.
        weight: ``[M]`` how much of the feature it covers (see the module docstring).
        keys: the distinct normalized texts; ``code`` indexes them.
    """

    row: np.ndarray
    code: np.ndarray
    weight: np.ndarray
    keys: list[str]

    @functools.cached_property
    def codes(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}

    def weights(self, query: str, n_rows: int) -> np.ndarray:
        """``[n_rows]`` per row, the best weight of a token whose text is ``query``
        (normalized); 0 where none is."""
        out = np.zeros(n_rows)
        code = self.codes.get(query)
        if code is not None:
            hit = self.code == code
            np.maximum.at(out, self.row[hit], self.weight[hit])
        return out

    def partial(self, query: str, n_rows: int) -> np.ndarray:
        """``[n_rows]`` whether a token of the row holds ``query`` (normalized) in its text:
        one scan of the distinct texts, not of the rows."""
        inside = np.array([query in k for k in self.keys], dtype=bool)
        out = np.zeros(n_rows, dtype=bool)
        if len(inside):
            out[self.row[inside[self.code]]] = True
        return out


def _lists(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (values, offsets)."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.to_numpy(zero_copy_only=False).astype(np.int64)
    return values[offsets[0] : offsets[-1]], offsets - offsets[0]


def _ranks(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a list column's flat values: each one's row and its position in its list."""
    lens = np.diff(offsets)
    owner = np.repeat(np.arange(len(lens)), lens)
    return owner, np.arange(int(offsets[-1])) - offsets[:-1][owner]


def _fires_on(fields: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A layer's descriptions -> each top token a feature fires on, the feature's row in the
    layer, and the share of the feature's examples centred on it."""
    examples = np.maximum(fields.column("n_examples").to_numpy(), 1).astype(float)
    tokens, offsets = _lists(fields.column("tokens"))
    counts, _ = _lists(fields.column("counts"))
    owner, _ = _ranks(offsets)
    return tokens, owner, counts / examples[owner]


def token_index(store: Store) -> TokenIndex:
    """The :class:`TokenIndex` of every feature of ``store``, rows in the summary's order
    (layer by layer, feature by feature). Vectorized per layer."""
    rows, ids, weights = [], [], []
    base = 0
    for layer in store.layers:
        n = store.n_features(layer)
        logits, offsets = _lists(store.features_arrow(layer).column("top_logits"))
        owner, rank = _ranks(offsets)
        shown = rank < PROMOTED_SHOWN
        rows.append(base + owner[shown])
        ids.append(logits[shown])
        weights.append(PROMOTED_WEIGHT / (rank[shown] + 1.0))
        fields = store.description_fields(layer)
        if fields is not None:
            tokens, owner, share = _fires_on(fields)
            rows.append(base + owner)
            ids.append(tokens)
            weights.append(share)
            examples = np.maximum(fields.column("n_examples").to_numpy(), 1).astype(float)
            context = fields.column("context_token").to_numpy().astype(np.int64)
            has = np.flatnonzero(context >= 0)
            share = fields.column("context_count").to_numpy()[has] / examples[has]
            rows.append(base + has)
            ids.append(context[has])
            weights.append(CONTEXT_WEIGHT * share)
            promoted, offsets = _lists(fields.column("promoted"))
            owner, rank = _ranks(offsets)
            rows.append(base + owner)
            ids.append(promoted)
            weights.append(PROMOTED_WEIGHT / (rank + 1.0))
        base += n
    row = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    tok = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    weight = np.concatenate(weights) if weights else np.zeros(0)
    distinct, at = np.unique(tok, return_inverse=True)
    texts = [normalize(t) for t in store.token_context().texts(distinct, "the search")]
    keys = sorted(set(texts))
    codes = {k: i for i, k in enumerate(keys)}
    code = np.array([codes[t] for t in texts], dtype=np.int64)[at]
    return TokenIndex(row=row, code=code, weight=weight, keys=keys)


def interest(store: Store, summary: pd.DataFrame) -> np.ndarray:
    """``[rows]`` how readable each feature of ``summary`` (:meth:`Context.summary`) is likely to
    be, from 0: the share of its stored examples centred on each of its top tokens, times how
    rare that token is in the corpus (``log(N / count) / log(N)``: 1 for a token seen once,
    about 0.4 for " but"), summed, and scaled down for a feature that fired fewer than
    :data:`EVIDENCE_FIRES` times. 0 without descriptions."""
    out = np.zeros(len(summary))
    flat = store.token_context().flat
    if not len(flat):
        return out
    counts = np.bincount(flat.astype(np.int64))
    log_n = np.log(max(len(flat), 2))
    base = 0
    for layer in store.layers:
        fields = store.description_fields(layer)
        n = store.n_features(layer)
        if fields is not None:
            tokens, owner, share = _fires_on(fields)
            seen = np.ones(len(tokens))
            inside = tokens < len(counts)
            seen[inside] = np.maximum(counts[tokens[inside]], 1)
            rarity = np.log(len(flat) / seen) / log_n
            np.add.at(out, base + owner, share * rarity)
        base += n
    fires = summary["n_fires"].to_numpy(dtype=float)
    return out * np.minimum(1.0, fires / EVIDENCE_FIRES)


def tiers(
    keys: np.ndarray,
    query: str,
    labelled: list[tuple[int, str]],
    explained: list[int],
    index: TokenIndex,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's tier for ``query`` (the module docstring; :data:`TIER_NONE`: no match) and
    its order within the tier (lower first).

    Args:
        keys: ``[n]`` each row's feature as one int (``layer << 32 | feature``).
        query: the search as typed.
        labelled: ``(key, label text)`` of the labels that match, best first (a person's
            through the label index, then any other label holding the search).
        explained: the keys of the features whose explanations match, best first.
        index: the rows' tokens (:func:`token_index`).
    """
    import pandas as pd

    n = len(keys)
    q = normalize(query)
    tier = np.full(n, TIER_NONE, dtype=np.int64)
    within = np.zeros(n)
    at = pd.Index(keys)
    patterns = [whole_words(w) for w in q.split()]

    def put(rows: np.ndarray, level: int, order: np.ndarray) -> None:
        free = (rows >= 0) & (tier[np.maximum(rows, 0)] > level)
        tier[rows[free]], within[rows[free]] = level, order[free]

    whole = np.array(
        [all(p.search(normalize(t)) for p in patterns) for _, t in labelled], dtype=bool
    )
    label_rows = at.get_indexer([k for k, _ in labelled]).astype(np.int64)
    place = np.arange(len(labelled), dtype=float)
    put(label_rows[whole], TIER_LABEL, place[whole])
    put(at.get_indexer(explained).astype(np.int64), TIER_EXPLANATION, np.arange(len(explained)))
    weight = index.weights(q, n)
    token_rows = np.flatnonzero(weight > 0)
    put(token_rows, TIER_TOKEN, -weight[token_rows])
    put(label_rows[~whole], TIER_LABEL_PART, place[~whole])
    part_rows = np.flatnonzero(index.partial(q, n))
    put(part_rows, TIER_TOKEN_PART, np.zeros(len(part_rows)))
    return tier, within


def concat(indexes: list[TokenIndex], sizes: list[int]) -> TokenIndex:
    """One :class:`TokenIndex` over several summaries stacked in order (``sizes``: each one's
    rows): browse's rows of every source together."""
    keys = sorted({k for index in indexes for k in index.keys})
    codes = {k: i for i, k in enumerate(keys)}
    rows, code, weight = [], [], []
    base = 0
    for index, size in zip(indexes, sizes, strict=True):
        remap = np.array([codes[k] for k in index.keys], dtype=np.int64)
        rows.append(index.row + base)
        code.append(remap[index.code] if len(index.code) else index.code)
        weight.append(index.weight)
        base += size
    return TokenIndex(
        row=np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64),
        code=np.concatenate(code) if code else np.zeros(0, dtype=np.int64),
        weight=np.concatenate(weight) if weight else np.zeros(0),
        keys=keys,
    )
