"""How the microscope shades a text's tokens: by one chosen feature (the default), or each token by
its strongest feature.

Every token has *some* feature near its maximum (the strongest of 4 x 4,096 features sits at
50-117% of its maximum on the default's curated texts), so shading each token by its strongest
feature paints the whole text dark orange and says nothing. Shading by **one** feature, as
Neuronpedia does, shows where that feature fires: most tokens stay white, a few light up. The
text opens shaded by its own strongest feature (the first row of the whole-text table); any
feature of the tables, or any ``layer:feature`` typed in the "Shade tokens by" box, replaces it,
and the strongest-feature view stays as one choice. A text encoded with the transcoders is shaded
by a transcoder feature, written ``tc9:123``.

A feature's activation on every token is exact: the encoding keeps every active feature of every
token (:attr:`explorer.encode.LayerActivations.active`), so no forward pass runs again. Strength is
relative (% of the feature's maximum over the store). The store's maximum is over its corpus, so a
new text can go past it (117%): the value is shown as it is, the colour stops at 100%.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from explorer.app import render
from explorer.app.context import UserError
from explorer.app.strength import Cells, cell_text, layer_name
from explorer.store.schema import BY_SHORT, RES, SHORT, feature_name

if TYPE_CHECKING:
    from explorer.app.context import Context
    from explorer.encode import Encoding

STRONGEST = "strongest"  # the "Shade tokens by" value of the strongest-feature view
STRONGEST_NAME = "each token's strongest feature (all layers)"
_FEATURE = re.compile(
    r"\s*(?:(res|tc)\s*)?(?:layer\s*)?([0-9]{1,9})\s*[:/ ]\s*(?:feature\s*|#)?([0-9]{1,9})\s*"
)


def parse_shade(value: Any) -> tuple[int, int] | None:
    """``"9:1324"`` (or ``"layer 9 feature 1324"``) -> ``(9, 1324)``; ``"strongest"`` -> ``None``
    (:func:`parse_shade_source` keeps the source of ``tc9:1324``).

    >>> parse_shade("12:688"), parse_shade("strongest")
    ((12, 688), None)
    """
    found = parse_shade_source(value)
    return None if found is None else (found[0], found[1])


def parse_shade_source(value: Any) -> tuple[int, int, str] | None:
    """``"9:1324"`` -> ``(9, 1324, "res")``, ``"tc9:1324"`` (or ``"L9 tc #1324"``'s ``tc 9
    #1324``) -> ``(9, 1324, "transcoder")``; ``"strongest"`` -> ``None``."""
    text = str(value if value is not None else "").strip()
    if text.lower() == STRONGEST:
        return None
    found = _FEATURE.fullmatch(text)
    if not found:
        raise UserError(
            f"shade the tokens by a feature written layer:feature, such as 9:123 (tc9:123 for a "
            f"transcoder's), or by {STRONGEST!r}, not {text[:40]!r}"
        )
    return int(found[2]), int(found[3]), BY_SHORT.get(found[1] or "", RES)


def shade_value(feature: tuple[int, int] | None, source: str = RES) -> str:
    """The "Shade tokens by" value of ``feature`` (``None``: the strongest-feature view):
    ``9:123``, a transcoder's ``tc9:123``."""
    if feature is None:
        return STRONGEST
    prefix = "" if source == RES else SHORT[source]
    return f"{prefix}{feature[0]}:{feature[1]}"


@dataclass(frozen=True)
class Shading:
    """The token view's shading.

    Args:
        feature: the feature shading the tokens, ``None`` for each token's strongest.
        rel: ``[n_tokens]`` relative strength (% of the feature's store maximum, uncapped: the
            colour stops at 100); 0 where nothing fires.
        titles: each token's tooltip (plain text).
        caption: what the shading shows, in words (plain text).
        source: the source of ``feature`` (the encoding's).
    """

    feature: tuple[int, int] | None
    rel: np.ndarray
    titles: list[str]
    caption: str
    source: str = RES

    @property
    def value(self) -> str:
        """The "Shade tokens by" value of this shading."""
        return shade_value(self.feature, self.source)

    def html(self, tokens: Sequence[str], mark: int | None) -> str:
        """The tokens as spans on the one colour scale, ``mark`` outlined."""
        capped = np.clip(np.nan_to_num(self.rel), 0.0, 100.0)
        return render.token_spans(tokens, capped.tolist(), 100.0, mark, self.titles)


def _shown(token: str) -> str:
    return repr(token)[1:-1]


def by_strongest(
    tokens: Sequence[str], layers: Sequence[int], c: Cells, source: str = RES
) -> Shading:
    """Each token shaded by its strongest feature over ``layers`` (the heatmap's cells)."""
    best = c.rel.argmax(axis=0)
    cols = np.arange(len(tokens))
    rel = np.maximum(c.rel[best, cols], 0.0)
    titles = [
        f"{i}: {_shown(t)} · "
        + cell_text(layers[b], int(c.feature[b, i]), float(c.rel[b, i]), float(c.act[b, i]), source)
        for i, (t, b) in enumerate(zip(tokens, best, strict=True))
    ]
    dark = int((rel >= 50).sum())
    caption = (
        f"Shaded by each token's strongest feature over {'' if source == RES else 'tc '}"
        f"layers {', '.join(map(str, layers))}: "
        f"{dark} of {len(tokens)} tokens have a feature at half its maximum or more, so this view "
        "is mostly dark. Pick one feature to see where it fires."
    )
    return Shading(None, rel, titles, caption, source)


def feature_acts(ctx: Context, enc: Encoding, layer: int, feature: int) -> np.ndarray:
    """``[n_tokens]`` one feature's exact activation on every token of ``enc``."""
    layer, feature = ctx.check_feature(layer, feature, enc.source)
    if layer not in enc.layers:
        shown = ", ".join(map(str, enc.layers))
        raise UserError(
            f"{layer_name(layer, enc.source)} is not encoded (layers {shown} are): tick it to "
            "shade by its features"
        )
    return enc.layers[layer].feature(feature).numpy().astype(float)


def by_feature(ctx: Context, enc: Encoding, layer: int, feature: int, label: str = "") -> Shading:
    """The tokens shaded by one feature: its activation as a % of its maximum over the store
    (against its own peak on this text when the store has no maximum for it)."""
    acts = feature_acts(ctx, enc, layer, feature)
    maxes = ctx.max_acts(enc.source)
    top = float(maxes[layer][feature]) if layer in maxes else 0.0
    peak = float(acts.max(initial=0.0))
    against = top if top > 0 else peak
    rel = 100.0 * acts / against if against > 0 else np.zeros_like(acts)
    basis = "its maximum over the corpus" if top > 0 else "its peak on this text"
    titles = [
        f"{i}: {_shown(t)} · {feature_name(layer, feature, enc.source)}: "
        + (f"{r:.0f}% of {basis} (activation {a:.3g})" if a > 0 else "does not fire")
        for i, (t, r, a) in enumerate(zip(enc.tokens, rel, acts, strict=True))
    ]
    caption = _caption(ctx, enc, (layer, feature), label, rel, basis)
    return Shading((layer, feature), rel, titles, caption, enc.source)


def _caption(
    ctx: Context, enc: Encoding, key: tuple[int, int], label: str, rel: np.ndarray, basis: str
) -> str:
    layer, feature = key
    named = feature_name(layer, feature, enc.source)
    name = f"{named} (layer {layer} · feature {feature})" + (f" ({label[:80]})" if label else "")
    fires = int((rel > 0).sum())
    if not fires:
        return f"Shaded by {name}: it does not fire on this text."
    at = int(rel.argmax())
    line = (
        f"Shaded by {name}: it fires on {fires} of {len(rel)} tokens, most on "
        f"“{_shown(enc.tokens[at])}” ({rel[at]:.0f}% of {basis})."
    )
    if rel[at] > 100:
        line += (
            " This text goes past the corpus's strongest activation (the maximum is over the "
            "store's corpus, not a ceiling): the value is shown as it is, the colour stops at 100%."
        )
    dens = ctx.densities(enc.source)
    if layer in dens and float(dens[layer][feature]) > ctx.dense_threshold:
        line += " It is a dense feature: it fires on many tokens of any text."
    return line
