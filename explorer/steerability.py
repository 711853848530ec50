"""Is steering with a feature likely to pull the text its way? An estimate from the store alone.

``python -m precompute steer-eval`` measures it (docs/steering.md), about a minute of CPU per
feature; this estimate gives every live feature a number from 0 to 1 at no cost, from what the
store already holds. Output features steer, input features do not (docs/steering.md): a feature
whose promoted tokens (its logit effects) are what it fires on, or what follows where it fires,
makes the model write the text that makes it fire; a feature that fires on " thunder" and
promotes "bolts" and tokens the corpus never holds brings no thunder back.

Two signals, each from 0 to 1:

- ``words``: the share of its top promoted tokens (``top_logits``) that read as whole words
  (:func:`is_word`: " church", " wonderful"; not "bolts", "ization", "人在"): what an output
  feature promotes, where an input feature's logit effects are word pieces and the
  unembedding's noise on Gemma's 262k vocabulary;
- ``agreement``: the share of its stored examples centred on one of those promoted words, or
  just before one (the store's descriptions, ``precompute.describe``), counted full at
  :data:`AGREEMENT_FULL`.

The estimate is their mean (:func:`estimate`); :data:`LIKELY` reads "likely to steer". How well
it predicts steer-eval is measured by ``python bench/steer_estimate.py`` (docs/steering.md).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from explorer.store import Store

logger = logging.getLogger(__name__)

AGREEMENT_FULL = 0.1
"""The share of examples on (or before) a promoted token that counts as full agreement: 4 of a
feature's ~40 stored examples is already far above chance (most features have none)."""
LIKELY = 0.5
"""An estimate at or above this reads "likely to steer"."""


def is_word(text: str) -> bool:
    """Whether a token's text reads as a whole word: a space, then two letters or more
    (``" church"``, ``" Über"``), not a word piece (``"bolts"``), punctuation or a space.

    >>> [is_word(t) for t in (" church", "bolts", " 3D", " a")]
    [True, False, False, False]
    """
    return len(text) > 2 and text[0] == " " and text[1:].isalpha()


def signals(store: Store, layer: int) -> dict[str, np.ndarray]:
    """``{"agreement", "words"}``: ``[features]`` the estimate's two signals on ``layer``.

    ``agreement`` is 0 for a store without descriptions, or described before they counted it
    (``python -m precompute describe`` adds it).
    """
    n = store.n_features(layer)
    logits = store.features_arrow(layer).column("top_logits").combine_chunks()
    offsets = logits.offsets.to_numpy().astype(np.int64)
    ids = logits.values.to_numpy().astype(np.int64)[offsets[0] : offsets[-1]]
    owner = np.repeat(np.arange(n), np.diff(offsets))
    distinct, at = np.unique(ids, return_inverse=True)
    texts = store.token_context().texts(distinct, "the logit effects")
    word = np.array([is_word(t) for t in texts], dtype=bool)[at]
    words = np.bincount(owner, weights=word, minlength=n) / np.maximum(np.diff(offsets), 1)
    fields = store.description_fields(layer)
    if fields is not None and "agreement" in fields.column_names:
        agreement = fields.column("agreement").to_numpy().astype(np.float64)
    else:
        logger.info("store %s has no agreement on layer %d: run describe", store.path, layer)
        agreement = np.zeros(n)
    return {"agreement": agreement, "words": words}


def estimate(store: Store) -> np.ndarray:
    """``[features of every layer]``, layer by layer and feature by feature (the order of the
    app's summary): each feature's estimate, the mean of ``words`` and
    ``min(1, agreement / AGREEMENT_FULL)``."""
    out = []
    for layer in store.layers:
        s = signals(store, layer)
        out.append((s["words"] + np.minimum(1.0, s["agreement"] / AGREEMENT_FULL)) / 2)
    return np.concatenate(out) if out else np.zeros(0)
