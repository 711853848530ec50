"""Relative strength: a feature's activation as a % of its maximum over the store.

This is how the microscope (and search by inference, through it) compares features across
layers: raw activations grow with depth, a relative one reads 0-100% on every layer, as on
Neuronpedia. Pure numpy over the few features an encoding kept per token: the store's maxima and
densities are looked up once per layer (cached on the :class:`Context`), never per feature.

Fallbacks: a feature dead in the store (maximum 0) has no relative value (NaN; it ranks after
every feature that has one, by raw activation); a layer the store has no maxima for is measured
against the strongest activation of that layer on the text itself (``per_text``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from explorer.store.schema import RES, SHORT, feature_name

if TYPE_CHECKING:
    from torch import Tensor

    from explorer.app.context import Context
    from explorer.encode import Encoding

REL = "% of max"  # the column of relative strength, in every table
# The top-k scale of a feature with no store maximum: far above any real maximum, so such a
# feature is kept only after every feature that has one (and ranked among them by raw value).
NO_MAX_SCALE = 1e12


@dataclass(frozen=True)
class LayerStrength:
    """One layer's top features on each token, with their relative strength.

    Args:
        layer: the layer.
        ids: ``[n_tokens, k]`` feature ids (each token's top-k by relative strength).
        acts: ``[n_tokens, k]`` their raw activations.
        rel: ``[n_tokens, k]`` activation as a % of the feature's store maximum; NaN where the
            feature has none (dead in the store); against this text's strongest activation of
            the layer when ``per_text``.
        kept: ``[n_tokens, k]`` active and not denser than the density filter.
        hidden: active entries the density filter hid.
        per_text: the store has no maxima for this layer (see the module's fallbacks).
    """

    layer: int
    ids: np.ndarray
    acts: np.ndarray
    rel: np.ndarray
    kept: np.ndarray
    hidden: int
    per_text: bool

    def ranked(self) -> np.ndarray:
        """``rel`` where kept and known, else -1: the key "strongest" is taken by."""
        return np.where(self.kept & ~np.isnan(self.rel), self.rel, -1.0)


def rank_scales(ctx: Context, layers: Sequence[int], source: str = RES) -> dict[int, Tensor]:
    """Per layer the store maxima of ``source``'s features as :func:`encode`'s top-k scales
    (dead features far above)."""
    import torch

    maxes = ctx.max_acts(source)
    return {
        n: torch.from_numpy(np.where(maxes[n] > 0, maxes[n], NO_MAX_SCALE))
        for n in layers
        if n in maxes
    }


def strengths(ctx: Context, enc: Encoding, max_density: float) -> dict[int, LayerStrength]:
    """Relative strength and the density filter for every layer of ``enc`` (vectorized: one
    lookup of the layer's maxima and densities per layer)."""
    dens, maxes = ctx.densities(enc.source), ctx.max_acts(enc.source)
    out = {}
    for layer, la in enc.layers.items():
        ids, acts = la.feature_ids.numpy(), la.acts.numpy().astype(float)
        kept = acts > 0
        hidden = 0
        if layer in dens:
            dense = dens[layer][ids] > max_density
            hidden = int((kept & dense).sum())
            kept &= ~dense
        if layer in maxes:
            top = maxes[layer][ids]
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.where(top > 0, 100.0 * acts / top, np.nan)
        else:
            peak = float(acts[kept].max()) if kept.any() else 0.0
            rel = 100.0 * acts / peak if peak > 0 else np.zeros_like(acts)
        out[layer] = LayerStrength(layer, ids, acts, rel, kept, hidden, layer not in maxes)
    return out


@dataclass(frozen=True)
class Cells:
    """The strongest shown feature of each (layer, token): ``[n_layers, n_tokens]`` arrays;
    ``rel`` is -1 where no feature is shown."""

    rel: np.ndarray
    feature: np.ndarray
    act: np.ndarray


def cells(layers: Sequence[int], st: dict[int, LayerStrength]) -> Cells:
    """Each (layer, token)'s strongest shown feature by relative strength (the heatmap's cells;
    the token shading takes the strongest over layers)."""
    rel, feature, act = [], [], []
    for layer in layers:
        s = st[layer]
        key = s.ranked()
        j = key.argmax(axis=1)
        rows = np.arange(key.shape[0])
        rel.append(key[rows, j])
        feature.append(s.ids[rows, j])
        act.append(s.acts[rows, j])
    return Cells(np.array(rel), np.array(feature), np.array(act))


def cell_text(layer: int, feature: int, rel: float, act: float, source: str = RES) -> str:
    """One cell in words (a tooltip): ``L9 res #12: 83% of its max (activation 213)``."""
    if rel < 0:
        return f"{layer_name(layer, source)}: no feature shown"
    name = feature_name(layer, feature, source)
    return f"{name}: {rel:.0f}% of its max (activation {act:.3g})"


def layer_name(layer: int, source: str = RES) -> str:
    """``layer 9`` (a residual SAE's), ``tc layer 9`` (a transcoder's)."""
    return f"layer {layer}" if source == RES else f"{SHORT[source]} layer {layer}"


@dataclass(frozen=True)
class PerFeature:
    """Every shown feature of a text, aggregated over its tokens (arrays, one entry per
    ``(layer, feature)`` in that order); ``order`` ranks them: relative strength first (features
    with none last), then raw activation, ties in ``(layer, feature)`` order."""

    layer: np.ndarray
    feature: np.ndarray
    rel: np.ndarray
    act: np.ndarray
    tokens: np.ndarray
    order: np.ndarray


def per_feature(st: dict[int, LayerStrength], aggregate: str) -> PerFeature:
    """The whole text's features, ``aggregate`` (``"max"`` or ``"sum"``) over tokens of both the
    relative and the raw activation, vectorized (``np.unique`` + ufunc ``.at``, no pandas
    group-by). A feature's relative values are all NaN or none is (one maximum per feature)."""
    shown = [s for s in st.values() if s.kept.any()]
    if not shown:
        empty = np.zeros(0)
        return PerFeature(
            empty.astype(int), empty.astype(int), empty, empty, empty, empty.astype(int)
        )
    layer = np.concatenate([np.full(int(s.kept.sum()), s.layer) for s in shown])
    feature = np.concatenate([s.ids[s.kept] for s in shown]).astype(np.int64)
    act = np.concatenate([s.acts[s.kept] for s in shown])
    rel = np.concatenate([s.rel[s.kept] for s in shown])
    key = layer.astype(np.int64) << 32 | feature
    keys, inv = np.unique(key, return_inverse=True)
    n = len(keys)
    known = ~np.isnan(rel)
    a, r = np.zeros(n), np.zeros(n)
    if aggregate == "max":
        np.maximum.at(a, inv, act)
        np.maximum.at(r, inv, np.where(known, rel, 0.0))
    else:
        np.add.at(a, inv, act)
        np.add.at(r, inv, np.where(known, rel, 0.0))
    r[np.bincount(inv, weights=known, minlength=n) == 0] = np.nan
    order = np.lexsort((-a, -np.nan_to_num(r, nan=-1.0)))  # the last key sorts first
    return PerFeature(
        layer=(keys >> 32).astype(int),
        feature=(keys & 0xFFFFFFFF).astype(int),
        rel=r,
        act=a,
        tokens=np.bincount(inv, minlength=n),
        order=order,
    )
