"""Sparse activation records and the run's token table: what the encode step writes and the
reduce reads, in a canonical order that makes every reduction independent of the shard layout.

A record ``(pos, feat, act)`` is one non-zero SAE activation at a non-special position ``pos``
(global, in run order). The canonical key ``feat << POS_BITS | pos`` sorts records by feature,
then position; :func:`canonical` sorts a set of records by it (and refuses duplicates).
:func:`sample_key` gives every record a seeded pseudo-random key that does not depend on the
order in which records arrive (SplitMix64 of the canonical key).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

POS_BITS = 40
"""Canonical record key: ``feat << POS_BITS | pos`` (also the sample key's input)."""
POS_MASK = (1 << POS_BITS) - 1
MAX_FEATURES = 1 << (63 - POS_BITS)
CHUNK = 1 << 20
"""Records per chunk in the per-record passes: temporaries of a few MB, reused by malloc."""
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


class AccumulateError(ValueError):
    """Records, a token table or a config that cannot be reduced; the message is one line."""


def splitmix64(x: NDArray[Any] | int) -> NDArray[np.uint64]:
    """SplitMix64's output for state ``x`` (uint64 in, uint64 out, wrapping arithmetic).

    Convention: ``splitmix64(x)`` is the first number a SplitMix64 generator seeded with ``x``
    returns (Vigna's ``next()``: add the golden gamma, then mix), so
    ``splitmix64(0) == 0xE220A8397B1DCDAF``. It is a bijection of the 64-bit integers.
    """
    z = np.array(x, dtype=np.uint64, ndmin=1)  # a copy: _mix works in place
    return _mix(z).reshape(np.shape(x))


def _mix(z: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """In place: ``z`` becomes ``splitmix64(z)``."""
    with np.errstate(over="ignore"):
        z += _GAMMA
        z ^= z >> np.uint64(30)
        z *= _MIX1
        z ^= z >> np.uint64(27)
        z *= _MIX2
        z ^= z >> np.uint64(31)
    return z


def sample_key(key: NDArray[np.int64], seed: int) -> NDArray[np.uint64]:
    """``splitmix64(seed ^ splitmix64(key))`` for canonical keys ``feat << 40 | pos``."""
    z = _mix(key.astype(np.uint64))
    z ^= np.uint64(seed)
    return _mix(z)


@dataclass(frozen=True)
class TokenTable:
    """Every position of a run, in run order (window after window, each starting with its BOS).

    Args:
        token_ids: int32 ``[N]`` token id of every position, BOS included.
        window: int32 ``[N]`` window index of each position.
        special: bool ``[N]`` BOS / pad / EOS / other special token (never a record).
        window_start: int64 ``[W]`` global position of each window's first position (its BOS).
        window_doc: ``[W]`` doc_id of each window.
        window_offset: int32 ``[W]`` offset of the window's first non-BOS token in its document.
    """

    token_ids: NDArray[np.int32]
    window: NDArray[np.int32]
    special: NDArray[np.bool_]
    window_start: NDArray[np.int64]
    window_doc: list[str]
    window_offset: NDArray[np.int32]

    def __post_init__(self) -> None:
        n, w = len(self.token_ids), len(self.window_start)
        if not (len(self.window) == len(self.special) == n):
            raise AccumulateError(
                f"token table: token_ids, window and special differ in length "
                f"({n}, {len(self.window)}, {len(self.special)})"
            )
        if not (len(self.window_doc) == len(self.window_offset) == w):
            raise AccumulateError(
                f"token table: window_start, window_doc and window_offset differ in length "
                f"({w}, {len(self.window_doc)}, {len(self.window_offset)})"
            )
        starts = np.asarray(self.window_start, dtype=np.int64)
        if w and (starts[0] != 0 or np.any(np.diff(starts) <= 0) or starts[-1] >= n):
            raise AccumulateError(
                "token table: window_start must start at 0 and increase strictly below N"
            )
        lengths = np.diff(np.append(starts, n))
        if n != (0 if w == 0 else int(lengths.sum())) or not np.array_equal(
            self.window, np.repeat(np.arange(w), lengths)
        ):
            raise AccumulateError("token table: window does not match window_start")

    @property
    def n_tokens(self) -> int:
        """Non-special positions: the tokens that statistics count."""
        return int((~np.asarray(self.special, dtype=bool)).sum())

    @property
    def window_end(self) -> NDArray[np.int64]:
        """int64 ``[W]`` one past each window's last position."""
        return np.append(self.window_start[1:], len(self.token_ids)).astype(np.int64)


@dataclass(frozen=True)
class Records:
    """Sparse activations of one layer: feature ``feat`` fired ``act`` at global position ``pos``.

    Arrays are coerced to the dtypes below (a copy only where the dtype differs). Each
    ``(feat, pos)`` pair may appear once (checked when reduced).

    Args:
        pos: int64 ``[M]`` global positions (``0 <= pos < 2**40``).
        feat: int32 ``[M]`` feature ids (``>= 0``).
        act: float32 ``[M]`` activations, all finite and ``> 0``.
    """

    pos: NDArray[np.int64]
    feat: NDArray[np.int32]
    act: NDArray[np.float32]

    def __post_init__(self) -> None:
        arrays = {name: np.asarray(getattr(self, name)) for name in ("pos", "feat", "act")}
        for name, a in arrays.items():
            if a.ndim != 1:
                raise AccumulateError(f"records: {name} must be 1-D, got shape {a.shape}")
            kind, what = ("f", "floats") if name == "act" else ("iu", "integers")
            if a.size and a.dtype.kind not in kind:
                raise AccumulateError(f"records: {name} has dtype {a.dtype}, expected {what}")
        sizes = {name: len(a) for name, a in arrays.items()}
        if len(set(sizes.values())) > 1:
            raise AccumulateError(f"records: arrays differ in length {sizes}")
        pos = np.asarray(self.pos, dtype=np.int64)
        feat = np.asarray(self.feat, dtype=np.int32)
        act = np.asarray(self.act, dtype=np.float32)
        if pos.size:
            if pos.min() < 0 or pos.max() > POS_MASK:
                raise AccumulateError(f"records: pos outside [0, 2**{POS_BITS})")
            if arrays["feat"].min() < 0 or arrays["feat"].max() >= MAX_FEATURES:
                raise AccumulateError(f"records: feature ids outside [0, {MAX_FEATURES})")
            if not np.all(act > 0) or not np.all(np.isfinite(act)):
                raise AccumulateError("records: act must be finite and > 0 (zeros are not records)")
        object.__setattr__(self, "pos", pos)
        object.__setattr__(self, "feat", feat)
        object.__setattr__(self, "act", act)

    def __len__(self) -> int:
        return len(self.pos)

    @classmethod
    def concat(cls, parts: Sequence[Records]) -> Records:
        """The merge: all parts' records together (results never depend on their order)."""
        if not parts:
            return cls.empty()
        return cls(
            pos=np.concatenate([p.pos for p in parts]),
            feat=np.concatenate([p.feat for p in parts]),
            act=np.concatenate([p.act for p in parts]),
        )

    @classmethod
    def empty(cls) -> Records:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))

    def canonical(self) -> Records:
        """The same records in ``(feat, pos)`` order (``self`` when already so)."""
        s = self._sorted
        if s.act is self.act:
            return self
        out = Records(pos=s.key & POS_MASK, feat=(s.key >> POS_BITS).astype(np.int32), act=s.act)
        out.__dict__["_sorted"] = s
        return out

    @cached_property
    def _sorted(self) -> Sorted:
        """Canonical order, computed once per object: :func:`reduce_layer` and :func:`examples`
        both need it, and sorting tens of millions of records takes seconds. Kept with the
        object (12 bytes a record)."""
        return canonical(self)


class Sorted(NamedTuple):
    key: NDArray[np.int64]  # feat << POS_BITS | pos, strictly increasing
    act: NDArray[np.float32]


def canonical(records: Records) -> Sorted:
    """Records sorted by ``(feat, pos)``; raises on a duplicate pair.

    Works chunk by chunk in place on one int64 buffer: at tens of millions of records, fresh
    full-size temporaries cost as much in page faults as the arithmetic itself.
    """
    m, feat, pos = len(records), records.feat, records.pos
    key = np.empty(m, np.int64)
    ordered = True
    for a, c in chunks(key):
        np.left_shift(feat[a : a + len(c)], POS_BITS, out=c, dtype=np.int64)
        c |= pos[a : a + len(c)]
        ordered = ordered and bool(np.all(c[1:] > c[:-1])) and (a == 0 or c[0] > key[a - 1])
    if ordered:
        return Sorted(key, records.act)
    # Pack (feat, pos, index) into one int64 when it fits: np.sort of int64 is several times
    # faster than np.argsort, and the index comes back from the low bits.
    pbits = int(pos.max()).bit_length()
    ibits = (m - 1).bit_length()
    if int(feat.max()).bit_length() + pbits + ibits <= 63:
        for a, c in chunks(key):
            p = c & POS_MASK
            c >>= POS_BITS
            c <<= pbits
            c |= p
            c <<= ibits
            c |= np.arange(a, a + len(c), dtype=np.int64)
        key.sort()
        act = np.empty(m, np.float32)
        for a, c in chunks(key):
            act[a : a + len(c)] = records.act[c & ((1 << ibits) - 1)]
            c >>= ibits
            p = c & ((1 << pbits) - 1)
            c >>= pbits
            c <<= POS_BITS
            c |= p
    else:
        order = np.argsort(key)
        key, act = key[order], records.act[order]
    if not bool(np.all(key[1:] > key[:-1])):
        dup = int(key[1:][key[1:] == key[:-1]][0])
        raise AccumulateError(
            f"records: feature {dup >> POS_BITS} appears twice at pos {dup & POS_MASK}"
        )
    return Sorted(key, act)


def chunks(a: NDArray[Any]) -> Iterator[tuple[int, NDArray[Any]]]:
    """``(start, view)`` over consecutive chunks of ``a``."""
    for start in range(0, len(a), CHUNK):
        yield start, a[start : start + CHUNK]
