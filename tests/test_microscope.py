"""The microscope compares layers fairly: strength is an activation as a % of the feature's
maximum over the store, and every "strongest" (token shading, heatmap, token table, whole-text
ranking, search by inference) is by that, with the raw activation beside it.

The planted case: on the tiny app, one feature (A) has the largest raw activation on the text but
a store maximum ten times that, and another (B, on the other layer, weak in raw terms) has a
store maximum equal to its peak on the text. Raw ranking puts A first; relative ranking must put
B first everywhere. Rankings are also checked against a brute-force computation over every
feature of both layers.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from explorer.app import Context, UserError, browse, microscope, render
from explorer.encode import encode

TEXT = "the cat sat on the mat and the dog ran"
LAYERS = (1, 2)
WIDTH = 48


def all_acts(ctx: Context, text: str = TEXT) -> dict[int, np.ndarray]:
    """``{layer: [n_tokens, width]}`` every feature's raw activation (an independent dense
    computation: top-k over the whole width, scattered back)."""
    enc = encode(ctx.bundle, text, top_k=WIDTH)
    out = {}
    for layer, la in enc.layers.items():
        dense = np.zeros((len(enc.tokens), WIDTH))
        np.put_along_axis(dense, la.feature_ids.numpy(), la.acts.numpy(), axis=1)
        out[layer] = dense
    return out


def brute_top(
    acts: dict[int, np.ndarray], maxes: dict[int, np.ndarray], aggregate: str
) -> list[tuple[int, int]]:
    """Every firing feature ranked by relative strength (max or sum over tokens), raw to break
    ties, features with no store maximum last."""
    rows = []
    for layer, a in acts.items():
        for f in range(WIDTH):
            col = a[:, f][a[:, f] > 0]
            if not len(col):
                continue
            m = maxes[layer][f]
            rel = 100 * col / m if m > 0 else None
            agg = (lambda x: float(x.max())) if aggregate == "max" else (lambda x: float(x.sum()))
            rows.append(
                ((rel is not None, agg(rel) if rel is not None else 0.0, agg(col)), layer, f)
            )
    rows.sort(key=lambda r: r[0], reverse=True)
    return [(layer, f) for _, layer, f in rows]


@pytest.fixture
def planted(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[int, int, int]]:
    """Plant store maxima: A (raw strongest) at 10%, B (a weak feature on the other layer) at
    100%, every other feature at most 50%. Returns ``{"A": (layer, feature, peak token), …}``."""
    acts = all_acts(ctx)
    layer_a = max(LAYERS, key=lambda n: acts[n].max())
    pos_a, feat_a = np.unravel_index(acts[layer_a].argmax(), acts[layer_a].shape)
    layer_b = next(n for n in LAYERS if n != layer_a)
    peaks_b = acts[layer_b].max(axis=0)
    feat_b = int(np.where(peaks_b > 0, peaks_b, np.inf).argmin())  # the weakest that fires
    pos_b = int(acts[layer_b][:, feat_b].argmax())
    maxes = {n: np.maximum(m, 2 * acts[n].max(axis=0)) for n, m in ctx.max_acts().items()}
    maxes[layer_a][feat_a] = 10 * acts[layer_a][pos_a, feat_a]
    maxes[layer_b][feat_b] = acts[layer_b][pos_b, feat_b]
    monkeypatch.setattr(ctx, "max_acts", lambda source="res": maxes)
    return {"A": (layer_a, int(feat_a), int(pos_a)), "B": (layer_b, feat_b, pos_b)}


def pairs(table: pd.DataFrame) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in zip(table["layer"], table["feature"], strict=True)]


def test_planted_relative_strength_beats_raw_everywhere(ctx: Context, planted) -> None:
    (la, fa, pa), (lb, fb, pb) = planted["A"], planted["B"]
    acts = all_acts(ctx)
    assert acts[la].max() > acts[lb][:, fb].max()  # raw ranking would put A above B
    view = microscope.view(ctx, TEXT, ["1", "2"], "max activation", max_density_pct=100)
    top = view.text_top
    assert pairs(top)[0] == (lb, fb)
    assert top["max % of max"].iat[0] == pytest.approx(100.0)
    assert top["max act"].iat[0] == pytest.approx(acts[lb][:, fb].max(), abs=5e-4)  # raw beside
    assert (la, fa) not in pairs(top)[:5]  # A, raw strongest, is at 10%: far down or cut
    at_a = microscope.token_features(ctx, view.encoding, pa, 100)
    row_a = pairs(at_a).index((la, fa))
    assert at_a["% of max"].iat[row_a] == pytest.approx(10.0)
    assert at_a["activation"].iat[row_a] == pytest.approx(acts[la].max(), abs=5e-4)
    # The token table of B's peak token, the token shading, the heatmap, search by inference.
    table = microscope.token_features(ctx, view.encoding, pb, 100)
    assert pairs(table)[0] == (lb, fb) and table["% of max"].iat[0] == pytest.approx(100.0)
    span = re.findall(
        r'<span class="gse-tok" data-pos="(\d+)" style="([^"]*)" title="([^"]*)"', view.tokens_html
    )[pb]
    assert f"background: {render.strength_colour(1.0)};" in span[1]
    assert f"L{lb} res #{fb}: 100% of its max" in span[2]
    assert view.highlighted[pb][1] == pytest.approx(1.0)
    assert view.heatmap.data[0].z[LAYERS.index(lb)][pb] == pytest.approx(100.0)
    found = browse.search_by_inference(ctx, TEXT, 100)
    assert pairs(found)[0] == (lb, fb) and "max % of max" in found.columns


@pytest.mark.parametrize("aggregate", ["max", "sum"])
def test_whole_text_ranking_equals_brute_force(ctx: Context, planted, aggregate: str) -> None:
    view = microscope.view(ctx, TEXT, ["1", "2"], max_density_pct=100, aggregate=aggregate)
    want = brute_top(all_acts(ctx), ctx.max_acts(), aggregate)
    assert pairs(view.text_top) == want[: microscope.TEXT_TOP]
    assert list(view.text_top.columns) == [
        "layer", "feature", "label", f"{aggregate} % of max", f"{aggregate} act", "tokens",
        "density %", "source",
    ]  # fmt: skip


def test_relative_strength_is_act_over_the_store_max(ctx: Context) -> None:
    """No planting: each row's % equals its raw activation over the store's own record."""
    store = ctx.store
    assert store is not None
    view = microscope.view(ctx, TEXT, ["1", "2"], max_density_pct=100)
    table = microscope.token_features(ctx, view.encoding, 3, 100)
    assert len(table) > 10
    for layer, f, rel, act in zip(
        table["layer"], table["feature"], table["% of max"], table["activation"], strict=True
    ):
        assert rel == pytest.approx(100 * act / store.feature(layer, f).max_act, abs=0.06)
    assert table["% of max"].tolist() == sorted(table["% of max"], reverse=True)


def test_heatmap_is_relative_and_every_layer_reads(ctx: Context) -> None:
    view = microscope.view(ctx, TEXT, ["1", "2"], "max activation", max_density_pct=100)
    heat = view.heatmap.data[0]
    z = np.array(heat.z)
    assert z.shape == (2, len(view.encoding.tokens))
    assert (z >= 0).all() and (z <= 100).all()
    assert (heat.zmin, heat.zmax) == (0.0, 100.0)
    assert [list(s) for s in heat.colorscale] == render.COLOURSCALE  # the one colour scale
    acts, maxes = all_acts(ctx), ctx.max_acts()
    for row, layer in enumerate(LAYERS):
        want = np.clip(100 * acts[layer] / maxes[layer], 0, 100).max(axis=1)
        assert z[row] == pytest.approx(want, abs=1e-6)
        assert z[row].max() > 60  # readable: each layer's strongest cell is well into the scale
    # Raw values would differ by layer; relative ones share the 0-100 range.
    assert "% of max" in heat.hovertemplate and "of its max" in heat.text[0][0]


def test_dead_in_store_features_rank_last_and_say_so(ctx: Context, planted) -> None:
    layer_b, feat_b, pos_b = planted["B"]
    maxes = ctx.max_acts()
    maxes[layer_b][feat_b] = 0.0  # B never fired in the store
    view = microscope.view(ctx, TEXT, ["1", "2"], max_density_pct=100)
    assert "1 features never fired in the store" in view.status
    table = microscope.token_features(ctx, view.encoding, pos_b, 100)
    assert pairs(table)[-1] == (layer_b, feat_b) and np.isnan(table["% of max"].iat[-1])
    assert table["activation"].iat[-1] > 0  # raw still shown
    assert not np.isnan(table["% of max"].iloc[:-1]).any()


def test_without_a_store_each_layer_is_relative_to_the_text(ctx: Context) -> None:
    bare = replace(ctx, store=None)
    view = microscope.view(bare, TEXT, ["1", "2"], "max activation")
    assert "no maxima for layer 1, 2" in view.status
    z = np.array(view.heatmap.data[0].z)
    assert z.max(axis=1) == pytest.approx([100.0, 100.0])
    acts = all_acts(ctx)
    top = view.text_top
    layer, _ = pairs(top)[0]
    assert top["max % of max"].iat[0] == pytest.approx(100.0)
    assert top["max act"].iat[0] == pytest.approx(acts[layer].max(), abs=5e-4)


def test_no_layer_ticked_is_a_user_error(ctx: Context) -> None:
    with pytest.raises(UserError, match="choose at least one layer"):
        microscope.view(ctx, TEXT, [])
    assert list(microscope.view(ctx, TEXT, None, max_density_pct=100).encoding.layers) == [1, 2]
    with pytest.raises(UserError, match="heatmap shows"):
        microscope.view(ctx, TEXT, ["1"], metric="bogus")
    with pytest.raises(UserError, match="max or sum"):
        microscope.view(ctx, TEXT, ["1"], aggregate="mean")


def test_the_chosen_token_is_outlined_and_named(ctx: Context) -> None:
    view = microscope.view(ctx, TEXT, ["1", "2"], max_density_pct=100)
    assert _outlined(view.tokens_html) == ["0"]  # the token the first token table lists
    html_2 = microscope.tokens_marked(ctx, view.encoding, 2, 100)
    assert _outlined(html_2) == ["2"]
    assert re.search(r'data-pos="2"[^>]*outline[^>]*aria-current="true">sat</span>', html_2)
    # Only the mark moved: the shading is the same.
    assert re.sub(r" outline[^;]*;[^;]*;| aria-current=\"true\"", "", html_2) == re.sub(
        r" outline[^;]*;[^;]*;| aria-current=\"true\"", "", view.tokens_html
    )
    assert microscope.token_caption(view.encoding, 2).startswith("Features on token 2: “sat”")
    with pytest.raises(UserError, match="token must be from 0 to 9"):
        microscope.tokens_marked(ctx, view.encoding, 10, 100)


def _outlined(html_text: str) -> list[str]:
    return re.findall(r'data-pos="(\d+)" style="[^"]*outline', html_text)


def test_encode_keeps_the_top_k_by_relative_strength(ctx: Context) -> None:
    """``scales`` chooses each token's top-k by act / scale; the acts stay raw."""
    full = encode(ctx.bundle, TEXT, layers=[1], top_k=WIDTH).layers[1]
    raw = encode(ctx.bundle, TEXT, layers=[1], top_k=3).layers[1]
    weak = int(full.feature_ids[0, int(full.n_active[0]) - 1])  # the weakest active on token 0
    assert weak not in raw.feature_ids[0].tolist()
    scales = torch.ones(WIDTH, dtype=torch.float64)
    scales[weak] = float(full.acts[0, int(full.n_active[0]) - 1]) / 1000  # 1000 x its own scale
    rel = encode(ctx.bundle, TEXT, layers=[1], top_k=3, scales={1: scales}).layers[1]
    assert int(rel.feature_ids[0, 0]) == weak
    dense = dict(zip(full.feature_ids[0].tolist(), full.acts[0].tolist(), strict=True))
    assert rel.acts[0].tolist() == pytest.approx([dense[int(f)] for f in rel.feature_ids[0]])
    assert torch.equal(rel.n_active, raw.n_active)
    for bad in (torch.zeros(WIDTH), torch.ones(WIDTH - 1)):
        with pytest.raises(ValueError, match="one positive number per feature"):
            encode(ctx.bundle, TEXT, layers=[1], top_k=3, scales={1: bad})


def test_a_weak_raw_feature_survives_a_small_top_k(
    ctx: Context, planted, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The microscope keeps each token's top-k by relative strength, so B (weak in raw terms, at
    100% of its max) is kept even when only 3 features per token are."""
    layer_b, feat_b, pos_b = planted["B"]
    raw = all_acts(ctx)[layer_b][pos_b]
    assert (raw > raw[feat_b]).sum() >= 3  # a raw top-3 would drop B
    monkeypatch.setattr(microscope, "TOP_PER_TOKEN", 3)
    view = microscope.view(ctx, TEXT, ["1", "2"], max_density_pct=100)
    table = microscope.token_features(ctx, view.encoding, pos_b, 100)
    assert len(table) == 6 and pairs(table)[0] == (layer_b, feat_b)


def test_default_layers_fit_the_sae_cache(ctx: Context) -> None:
    from dataclasses import replace

    assert microscope.default_layers(ctx) == [1, 2]  # the cache holds both: all ticked
    many = replace(
        ctx.bundle,
        spec=replace(
            ctx.bundle.spec, saes=tuple((n, ctx.bundle.spec.saes[0][1]) for n in range(26))
        ),
        max_saes=8,
    )
    picked = microscope.default_layers(replace(ctx, bundle=many))
    assert picked == [0, 4, 7, 11, 14, 18, 21, 25]
