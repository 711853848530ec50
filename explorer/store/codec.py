"""Rows of the store <-> what callers use, in both directions, vectorized.

Encode (the batch side calls these): per-feature statistics and examples as numpy arrays become
the features, examples, tokens and vocab tables of :mod:`explorer.store.schema`. An example does
not repeat its context: it points into ``tokens.parquet`` (window, start, length) and keeps only
the feature's non-zero activations (``act_pos``/``act_val``, float16).

Decode (the reader calls these): :class:`TokenContext` holds the windows and vocabulary in memory
and rebuilds dense :class:`Example` records (ids, texts, activations with zeros elsewhere) and the
features' ``*_logits_tokens``; :func:`feature_record` assembles one :class:`FeatureRecord`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from explorer.store.schema import REBUILD, TOKENS, VOCAB, StoreError, group_names, group_order

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class Example:
    """One example context of a feature.

    Args:
        doc_id: the document it comes from.
        start: offset (in tokens) of the first context token in that document.
        tokens: the context's tokens as text.
        token_ids: their ids.
        acts: the feature's activation on each context token (0 where it does not fire).
        max_pos: index of the example's centre (the activation it was chosen for) in the context.
    """

    doc_id: str
    start: int
    tokens: list[str]
    token_ids: list[int]
    acts: list[float]
    max_pos: int


@dataclass(frozen=True)
class IntervalGroup:
    """Examples drawn uniformly from one activation interval ``[lo, hi)`` of a feature.

    Args:
        lo: the interval's lower bound.
        hi: its upper bound (the last interval includes max_act).
        share: the fraction of the feature's fires in this interval (count / n_fires).
        examples: up to ``per_interval`` examples, in rank order.
        count: how many fires fall in this interval.
    """

    lo: float
    hi: float
    share: float
    examples: list[Example]
    count: int


@dataclass(frozen=True)
class FeatureRecord:
    """Everything a feature's dashboard shows: its statistics and its examples.

    The statistics mirror the columns of :func:`explorer.store.schema.features_schema` (see
    there); ``hist_edges`` adds the histogram's ``n_bins + 1`` implied edges.

    Args:
        layer: the layer.
        feature: the feature's index in that layer's SAE.
        top_examples: the strongest activations, strongest first.
        intervals: one group per activation interval, lowest first (empty ones included).
        source: the feature's source (``res``, ``transcoder``).
    """

    layer: int
    feature: int
    density: float
    n_fires: int
    max_act: float
    mean_act: float
    dead: bool
    dense: bool
    hist_counts: list[int]
    hist_edges: list[float]
    interval_counts: list[int]
    top_logits: list[int]
    top_logits_tokens: list[str]
    top_logits_values: list[float]
    bottom_logits: list[int]
    bottom_logits_tokens: list[str]
    bottom_logits_values: list[float]
    neighbours: list[int]
    neighbour_cos: list[float]
    top_examples: list[Example]
    intervals: list[IntervalGroup]
    source: str = "res"


# ------------------------------------------------------------------------------------ encode


def _list_array(values: np.ndarray, offsets: np.ndarray, type_: Any) -> pa.Array:
    import pyarrow as pa

    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, type_))


def _fixed_lists(matrix: np.ndarray, type_: Any) -> pa.Array:
    """``[F, k]`` → a list column of F rows of k values each."""
    rows, k = matrix.shape
    return _list_array(matrix.reshape(-1), np.arange(0, rows * k + 1, k), type_)


@dataclass(frozen=True)
class FeatureColumns:
    """One layer's per-feature statistics, ``F`` features, as the reduce computes them.

    Args:
        density, n_fires, max_act, mean_act, dead, dense: ``[F]`` each.
        hist_counts: ``[F, n_bins]``; ``interval_counts``: ``[F, n_intervals]``.
        top_logits, top_values, bottom_logits, bottom_values: ``[F, k]`` token ids and values.
        neighbours, neighbour_cos: ``[F, k]`` feature ids and decoder cosines.
    """

    density: np.ndarray
    n_fires: np.ndarray
    max_act: np.ndarray
    mean_act: np.ndarray
    dead: np.ndarray
    dense: np.ndarray
    hist_counts: np.ndarray
    interval_counts: np.ndarray
    top_logits: np.ndarray
    top_values: np.ndarray
    bottom_logits: np.ndarray
    bottom_values: np.ndarray
    neighbours: np.ndarray
    neighbour_cos: np.ndarray


def features_table(cols: FeatureColumns) -> pa.Table:
    """The features table of one layer (:func:`~explorer.store.schema.features_schema`)."""
    import pyarrow as pa

    n = len(cols.n_fires)
    return pa.table(
        {
            "feature": pa.array(np.arange(n, dtype=np.int32)),
            "density": pa.array(cols.density.astype(np.float64)),
            "n_fires": pa.array(cols.n_fires.astype(np.int64)),
            "max_act": pa.array(cols.max_act.astype(np.float32)),
            "mean_act": pa.array(cols.mean_act.astype(np.float32)),
            "dead": pa.array(cols.dead),
            "dense": pa.array(cols.dense),
            "hist_counts": _fixed_lists(cols.hist_counts.astype(np.int64), pa.int64()),
            "interval_counts": _fixed_lists(cols.interval_counts.astype(np.int64), pa.int64()),
            "top_logits": _fixed_lists(cols.top_logits.astype(np.int32), pa.int32()),
            "top_logits_values": _fixed_lists(cols.top_values.astype(np.float16), pa.float16()),
            "bottom_logits": _fixed_lists(cols.bottom_logits.astype(np.int32), pa.int32()),
            "bottom_logits_values": _fixed_lists(
                cols.bottom_values.astype(np.float16), pa.float16()
            ),
            "neighbours": _fixed_lists(cols.neighbours.astype(np.int32), pa.int32()),
            "neighbour_cos": _fixed_lists(cols.neighbour_cos.astype(np.float16), pa.float16()),
        }
    )


def examples_table(
    feature: np.ndarray,
    group: np.ndarray,
    rank: np.ndarray,
    window: np.ndarray,
    start: np.ndarray,
    max_pos: np.ndarray,
    acts: Sequence[np.ndarray],
    n_intervals: int,
) -> pa.Table:
    """The examples table of one layer (:func:`~explorer.store.schema.examples_schema`).

    Args (``[E]`` each, one entry per example):
        feature: the feature; ``group`` its :func:`group_order` (0 top, k interval k);
            ``rank`` its rank inside the group.
        window: the window of ``tokens.parquet`` it lies in; ``start`` the context's first index
            in that window (BOS dropped).
        max_pos: the example's centre inside the context.
        acts: the feature's activation on each context token (the context's length is its size).
        n_intervals: the number of intervals (names the groups).
    """
    import pyarrow as pa

    lens = np.array([len(a) for a in acts], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    flat = np.concatenate(acts).astype(np.float32) if len(acts) else np.zeros(0, np.float32)
    fires = np.flatnonzero(flat)
    n_fires = np.diff(np.searchsorted(fires, offsets))
    act_offsets = np.concatenate([[0], np.cumsum(n_fires)])
    act_pos = fires - np.repeat(offsets[:-1], n_fires)
    names = np.array(group_names(n_intervals))
    return pa.table(
        {
            "feature": pa.array(feature.astype(np.int32)),
            "group": pa.DictionaryArray.from_arrays(
                pa.array(group.astype(np.int32)), pa.array(names)
            ).cast(pa.string()),
            "rank": pa.array(rank.astype(np.int16)),
            "window": pa.array(window.astype(np.int32)),
            "start": pa.array(start.astype(np.int16)),
            "length": pa.array(lens.astype(np.int16)),
            "max_pos": pa.array(max_pos.astype(np.int16)),
            "act_pos": _list_array(act_pos.astype(np.int16), act_offsets, pa.int16()),
            "act_val": _list_array(flat[fires].astype(np.float16), act_offsets, pa.float16()),
        }
    )


def tokens_table(
    token_ids: np.ndarray, lengths: np.ndarray, doc_id: Sequence[str], offset: np.ndarray
) -> pa.Table:
    """``tokens.parquet``: window ``w`` holds ``lengths[w]`` ids of the flat ``token_ids``
    (BOS already dropped), from document ``doc_id[w]`` at token ``offset[w]``."""
    import pyarrow as pa

    return pa.table(
        {
            "window": pa.array(np.arange(len(lengths), dtype=np.int32)),
            "doc_id": pa.array(list(doc_id), pa.string()),
            "offset": pa.array(offset.astype(np.int32)),
            "token_ids": _list_array(
                token_ids.astype(np.int32), np.concatenate([[0], np.cumsum(lengths)]), pa.int32()
            ),
        }
    )


def vocab_table(ids: np.ndarray, token_text: Callable[[np.ndarray], list[str]]) -> pa.Table:
    """``vocab.parquet``: the text of each distinct id of ``ids``."""
    import pyarrow as pa

    unique = np.unique(ids).astype(np.int32)
    return pa.table({"token_id": pa.array(unique), "text": pa.array(token_text(unique))})


# ------------------------------------------------------------------------------------ decode


@dataclass(frozen=True)
class TokenContext:
    """The store's windows and vocabulary in memory, to rebuild examples from.

    Args:
        path: the store (for messages).
        flat: int32 ``[N]`` every window's token ids, BOS dropped, window after window.
        offsets: int32 ``[W + 1]`` window ``w`` is ``flat[offsets[w] : offsets[w + 1]]``.
        doc_id: ``[W]`` each window's document.
        offset: int32 ``[W]`` offset of each window's first token in its document.
        vocab_ids: int32 ``[V]`` sorted token ids; ``vocab_text`` their texts.
    """

    path: Path
    flat: np.ndarray
    offsets: np.ndarray
    doc_id: list[str]
    offset: np.ndarray
    vocab_ids: np.ndarray
    vocab_text: np.ndarray

    @classmethod
    def from_tables(cls, path: Path, tokens: pa.Table, vocab: pa.Table) -> TokenContext:
        ids = tokens.column("token_ids").combine_chunks()
        vocab_ids = vocab.column("token_id").to_numpy()
        order = np.argsort(vocab_ids, kind="stable")
        return cls(
            path=path,
            flat=ids.values.to_numpy(zero_copy_only=False),
            offsets=ids.offsets.to_numpy(),
            doc_id=tokens.column("doc_id").to_pylist(),
            offset=tokens.column("offset").to_numpy(),
            vocab_ids=vocab_ids[order],
            vocab_text=np.array(vocab.column("text").to_pylist(), dtype=object)[order],
        )

    def texts(self, ids: np.ndarray, what: str) -> list[str]:
        at = np.searchsorted(self.vocab_ids, ids)
        at = np.minimum(at, len(self.vocab_ids) - 1) if len(self.vocab_ids) else at
        if len(ids) and (not len(self.vocab_ids) or np.any(self.vocab_ids[at] != ids)):
            raise StoreError(
                f"store {self.path}: {what} use token ids missing from {VOCAB}; {REBUILD}"
            )
        texts: list[str] = self.vocab_text[at].tolist()
        return texts

    def with_logit_texts(self, table: pa.Table) -> pa.Table:
        """``table`` with ``top_logits_tokens``/``bottom_logits_tokens`` (texts from the vocab)
        after their id columns, as :class:`FeatureRecord` has them."""
        import pyarrow as pa

        for side in ("top", "bottom"):
            ids = table.column(f"{side}_logits").combine_chunks()
            texts = self.texts(ids.values.to_numpy(zero_copy_only=False), f"{side}_logits")
            column = pa.ListArray.from_arrays(ids.offsets, pa.array(texts, pa.string()))
            at = table.schema.get_field_index(f"{side}_logits") + 1
            table = table.add_column(at, f"{side}_logits_tokens", column)
        return table

    def examples(self, rows: pa.Table) -> list[tuple[dict[str, Any], Example]]:
        """Each row's ``{"group", "rank"}`` and its rebuilt :class:`Example`."""
        window = rows.column("window").to_numpy()
        start = rows.column("start").to_numpy().astype(np.int64)
        length = rows.column("length").to_numpy().astype(np.int64)
        max_pos = rows.column("max_pos").to_numpy()
        act_pos = rows.column("act_pos").combine_chunks()
        act_val = rows.column("act_val").combine_chunks()
        first = self.offsets[window] + start
        if np.any(first + length > self.offsets[window + 1]):
            raise StoreError(
                f"store {self.path}: an example reaches past its window in {TOKENS}; {REBUILD}"
            )
        # One gather for every context of the feature, then one vocab lookup.
        bounds = np.concatenate([[0], np.cumsum(length)])
        idx = np.repeat(first - bounds[:-1], length) + np.arange(bounds[-1])
        ids = self.flat[idx]
        texts = self.texts(ids, "examples")
        acts = np.zeros(bounds[-1], dtype=np.float32)
        n_acts = np.diff(act_pos.offsets.to_numpy())
        acts[np.repeat(bounds[:-1], n_acts) + act_pos.flatten().to_numpy()] = (
            act_val.flatten().to_numpy().astype(np.float32)
        )
        ids_list, acts_list = ids.tolist(), acts.tolist()
        meta = rows.select(["group", "rank"]).to_pylist()
        out = []
        for i, (m, w) in enumerate(zip(meta, window.tolist(), strict=True)):
            a, b = int(bounds[i]), int(bounds[i + 1])
            example = Example(
                doc_id=self.doc_id[w],
                start=int(self.offset[w]) + int(start[i]),
                tokens=texts[a:b],
                token_ids=ids_list[a:b],
                acts=acts_list[a:b],
                max_pos=int(max_pos[i]),
            )
            out.append((m, example))
        return out


def feature_record(
    layer: int,
    feature: int,
    row: dict[str, Any],
    examples: Sequence[tuple[dict[str, Any], Example]],
    source: str = "res",
) -> FeatureRecord:
    """One feature's record from its features row (with logit texts) and its decoded examples
    (any order: grouped by :func:`group_order` and sorted by rank here)."""
    by_group: dict[int, list[tuple[dict[str, Any], Example]]] = {}
    for ex in examples:
        by_group.setdefault(group_order(ex[0]["group"]), []).append(ex)
    for group in by_group.values():
        group.sort(key=lambda ex: ex[0]["rank"])
    max_act, n_fires = float(row["max_act"]), int(row["n_fires"])
    n_bins, counts = len(row["hist_counts"]), row["interval_counts"]
    intervals = []
    for k, count in enumerate(counts, start=1):
        got = by_group.get(k, [])
        lo, hi = max_act * (k - 1) / len(counts), max_act * k / len(counts)
        share = count / n_fires if n_fires else 0.0
        intervals.append(IntervalGroup(lo, hi, share, [ex for _, ex in got], count))
    stats = {k: v for k, v in row.items() if k != "feature"}
    return FeatureRecord(
        layer=layer,
        feature=feature,
        source=source,
        hist_edges=[max_act * i / n_bins for i in range(n_bins + 1)],
        top_examples=[ex for _, ex in by_group.get(0, [])],
        intervals=intervals,
        **stats,
    )
