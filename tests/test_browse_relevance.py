"""Browse ranks a search by relevance and opens on interesting features: checked on the shipped
store (Gemma 3 270M, 4 layers x 4,096 features), where the issue found the obvious feature
buried ("French" put its one labelled feature last, "love" its " love" feature eleventh, "code"
opened on a feature matched through "ncoder", the default order on " but", " a", " to").

No model: the context holds the shipped store, the curated labels and a label database of the
test's own; Browse reads nothing else.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd
import pytest

from explorer.app import browse, dashboard, relevance
from explorer.app.context import Context, curated_labels, load_curated
from explorer.labels import Labels
from explorer.paths import ASSETS_STORE
from explorer.store import Store

if TYPE_CHECKING:
    from explorer.bundle import Bundle


@pytest.fixture(scope="module")
def store() -> Store:
    return Store.open(ASSETS_STORE)


@pytest.fixture
def shipped(store: Store, tmp_path: Path) -> Context:
    content = load_curated("default")
    widths = {n: store.n_features(n) for n in store.layers}
    return Context(
        bundle=cast("Bundle", SimpleNamespace(layers=list(store.layers))),
        store=store,
        labels=Labels(tmp_path / "labels.sqlite", scope="default", widths=widths),
        curated=curated_labels(content),
        content=content,
    )


def _fires_on(description: str) -> tuple[str, float]:
    """The top token of an automatic description and the share of the examples it covers:
    'fires on " love" (26 of 40 examples), …' -> (" love", 0.65)."""
    assert description.startswith("fires on "), description
    rest = description.removeprefix("fires on ")
    token, end = json.JSONDecoder().raw_decode(rest)
    counted = re.match(r" \((\d+) of (\d+) examples\)", rest[end:])
    assert counted, description
    return token, int(counted[1]) / int(counted[2])


def _covers(table: pd.DataFrame, word: str) -> list[float]:
    """Per row, the share of its examples centred on ``word`` as its top token (0 otherwise)."""
    out = []
    for text in table[browse.AUTO_COLUMN]:
        token, share = _fires_on(text)
        out.append(share if token.strip().lower() == word else 0.0)
    return out


def test_love_opens_on_the_feature_that_fires_on_love(shipped: Context) -> None:
    found = browse.features(shipped, "all", "love")
    covers = _covers(found, "love")
    assert covers[0] > 0.5  # the first row fires on " love" in most of its examples
    assert covers[0] == max(covers)
    # the features whose top token is " love", most covered first, whatever their density
    shares = [c for c in covers if c > 0]
    assert len(shares) >= 5 and shares == sorted(shares, reverse=True)
    # and all of them before any feature that holds "love" only inside a longer word ("lovely")
    whole = _whole(shipped, found, "love")
    assert not whole.all() and list(whole) == sorted(whole, reverse=True)
    assert max(i for i, c in enumerate(covers) if c > 0) < np.flatnonzero(~whole).min()


def test_french_opens_on_its_labelled_feature(shipped: Context) -> None:
    found = browse.features(shipped, "all", "French")
    assert (found["layer"].iat[0], found["feature"].iat[0]) == (12, 1013)
    assert "French" in found["label"].iat[0]
    # a person's label comes first too, before the curated one
    shipped.labels.add(9, 2980, "French words", "", "high", "tester")
    found = browse.features(shipped, "all", "french")
    assert found[["layer", "feature"]].values.tolist()[:2] == [[9, 2980], [12, 1013]]


def _whole(ctx: Context, found: pd.DataFrame, word: str) -> np.ndarray:
    """Per row of ``found``, whether a token of the feature is ``word`` as a whole."""
    rows = pd.MultiIndex.from_frame(ctx.summary()[["layer", "feature"]])
    at = rows.get_indexer(pd.MultiIndex.from_frame(found[["layer", "feature"]]))
    return np.asarray(ctx.tokens().weights(word, len(rows))[at] > 0)


def test_code_and_number_open_on_whole_words_not_fragments(shipped: Context) -> None:
    for word, fragment in (("code", "ncoder"), ("number", "numberwith")):
        found = browse.features(shipped, "all", word)
        whole = _whole(shipped, found, word)
        assert list(whole) == sorted(whole, reverse=True)  # whole words first
        assert _covers(found, word)[0] > 0.5, found.head(3)
        through = [
            i for i, t in enumerate(found["top_tokens"]) if fragment in t.lower() and not whole[i]
        ]
        assert through and min(through) > np.flatnonzero(whole).max()


def test_the_chosen_sort_breaks_ties_within_a_tier(shipped: Context) -> None:
    """Features that only hold the search inside a longer token share a tier: the chosen sort
    orders them."""
    found = browse.features(shipped, "all", "ncoder", "n_fires", True)
    assert len(found) > 1 and found["n_fires"].tolist() == sorted(found["n_fires"], reverse=True)


def test_default_order_opens_on_labelled_then_readable_features(shipped: Context) -> None:
    first = browse.features(shipped)  # the defaults: interesting first, dense and dead hidden
    curated = {tuple(k) for k in shipped.curated}
    n = len(curated)
    assert {tuple(r) for r in first[["layer", "feature"]].values[:n].tolist()} == curated
    # then no feature whose top token is one of the corpus's 100 most frequent (" but", " a",
    # " to", ",", ...) among the next 50 rows
    context = shipped.store.token_context()  # type: ignore[union-attr]
    frequent = np.argsort(np.bincount(context.flat))[::-1][:100]
    common = set(context.texts(np.sort(frequent), "test"))
    tops = [_fires_on(d)[0] for d in first[browse.AUTO_COLUMN].iloc[n : n + 50]]
    assert not set(tops) & common, set(tops) & common
    assert {" but", " a", " to"} <= common


def test_sort_names_are_checked(shipped: Context) -> None:
    with pytest.raises(browse.UserError, match="cannot sort by 'top_tokens'"):
        browse.features(shipped, "all", "", "top_tokens")


def test_random_feature_follows_the_layer_filter(shipped: Context) -> None:
    rng = random.Random(0)
    picked = {dashboard.random_feature(shipped, "9", rng) for _ in range(20)}
    assert {layer for layer, _ in picked} == {9} and len(picked) > 1


def test_tiers_on_a_hand_made_index() -> None:
    # rows 0..3; row 0 fires on " love" in 2 of 10, row 1 in 8 of 10, row 2 promotes "love",
    # row 3 has "lovely"
    index = relevance.TokenIndex(
        row=np.array([0, 1, 2, 3]),
        code=np.array([0, 0, 0, 1]),
        weight=np.array([0.2, 0.8, relevance.PROMOTED_WEIGHT, 0.9]),
        keys=["love", "lovely"],
    )
    keys = np.arange(4)
    tier, within = relevance.tiers(keys, " Love ", [], [], index)
    order = np.lexsort((within, tier)).tolist()
    assert order == [1, 2, 0, 3]
    assert tier.tolist() == [relevance.TIER_TOKEN] * 3 + [relevance.TIER_TOKEN_PART]
    # a label with the word comes first, one with a longer word after every whole-word token
    tier, _ = relevance.tiers(keys, "love", [(3, "love letters"), (0, "lovelorn")], [2], index)
    assert tier.tolist() == [
        relevance.TIER_TOKEN, relevance.TIER_TOKEN, relevance.TIER_EXPLANATION,
        relevance.TIER_LABEL,
    ]  # fmt: skip
    tier, _ = relevance.tiers(keys, "love", [(3, "lovelorn")], [], index)
    assert tier[3] == relevance.TIER_LABEL_PART
