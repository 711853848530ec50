"""The microscope's shading: by one feature (the text's strongest by default), exact on every
token, past-the-maximum values shown as they are with the colour capped, and every control
applied from the encoding without a forward pass."""

from __future__ import annotations

import re

import numpy as np
import pytest

from explorer.app import Context, UserError, microscope, microscope_tab, render, shading
from explorer.encode import encode

TEXT = "the cat sat on the mat and the dog ran"
WIDTH = 48


def dense_acts(ctx: Context, layer: int) -> np.ndarray:
    """``[n_tokens, width]`` every feature's activation (top-k over the whole width)."""
    la = encode(ctx.bundle, TEXT, layers=[layer], top_k=WIDTH).layers[layer]
    out = np.zeros((la.acts.shape[0], WIDTH))
    np.put_along_axis(out, la.feature_ids.numpy(), la.acts.numpy(), axis=1)
    return out


def test_a_feature_shades_every_token_exactly(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    acts = dense_acts(ctx, 2)
    feature = int((acts > 0).sum(axis=0).argmax())  # fires on the most tokens
    monkeypatch.setattr(microscope, "TOP_PER_TOKEN", 2)  # the tables keep 2 a token: not enough
    v = microscope.view(ctx, TEXT, ["1", "2"], max_density_pct=100, shade=f"2:{feature}")
    kept = {int(f) for f in v.encoding.layers[2].feature_ids.flatten()}
    assert v.shading.feature == (2, feature)
    top = float(ctx.max_acts()[2][feature])
    assert v.shading.rel == pytest.approx(100 * acts[:, feature] / top, abs=1e-3)
    assert v.encoding.layers[2].feature(feature).numpy() == pytest.approx(acts[:, feature])
    assert (acts[:, feature] > 0).sum() > 2 and len(kept) < WIDTH  # read beyond the top-k
    spans = re.findall(r'style="background: (rgb\([^)]*\));', v.tokens_html)
    assert spans == [render.strength_colour(min(r, 100) / 100) for r in v.shading.rel]


def test_the_text_opens_shaded_by_its_top_feature_with_contrast(ctx: Context) -> None:
    v = microscope.view(ctx, TEXT, ["1", "2"], max_density_pct=100)
    top = v.text_top
    assert v.shading.feature == (int(top["layer"].iat[0]), int(top["feature"].iat[0]))
    assert f"layer {v.shading.feature[0]} · feature {v.shading.feature[1]}" in v.shading.caption
    strongest = microscope.show(ctx, v.encoding, max_density_pct=100, shade="strongest")
    assert strongest.shading.feature is None
    assert "each token's strongest feature" in strongest.shading.caption
    light = (v.shading.rel < 40).mean()
    assert light > (strongest.shading.rel < 40).mean()
    assert light >= 0.5  # most tokens light: the few where the feature fires stand out
    assert [v for _, v in v.shade_choices[:2]] == [
        "strongest",
        f"{v.shading.feature[0]}:{v.shading.feature[1]}",
    ]


def test_past_the_store_maximum_is_said_and_the_colour_capped(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    acts = dense_acts(ctx, 2)
    feature = int(acts.max(axis=0).argmax())
    peak = float(acts[:, feature].max())
    maxes = {n: m.copy() for n, m in ctx.max_acts().items()}
    maxes[2][feature] = peak / 2  # the text reaches 200% of the "corpus" maximum
    monkeypatch.setattr(ctx, "max_acts", lambda source="res": maxes)
    v = microscope.view(ctx, TEXT, ["1", "2"], max_density_pct=100, shade=f"2:{feature}")
    at = int(acts[:, feature].argmax())
    assert v.shading.rel[at] == pytest.approx(200.0, abs=0.1)
    assert "goes past the corpus's strongest activation" in v.shading.caption
    assert "200% of its maximum over the corpus" in v.shading.titles[at]
    span = re.findall(r'data-pos="\d+" style="background: (rgb\([^)]*\));', v.tokens_html)[at]
    assert span == render.strength_colour(1.0)
    assert "go past their feature's maximum over the corpus (up to 200%)" in v.status
    assert v.highlighted[at][1] == 1.0


def test_every_control_applies_without_a_forward_pass(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = microscope.encode_text(ctx, TEXT, ["1", "2"])

    def no_pass(*args: object, **kwargs: object) -> None:
        raise AssertionError("encoded again")

    monkeypatch.setattr(microscope, "encode", no_pass)
    seen = set()
    for metric in microscope.METRICS:
        for aggregate in microscope.AGGREGATES:
            for shade in (None, "strongest", "1:3", "layer 2 feature 5"):
                v = microscope.show(ctx, enc, metric, 100, aggregate, shade, token=4)
                assert v.token == 4 and 'data-pos="4" style="background' in v.tokens_html
                seen.add((v.heatmap.data[0].colorbar.title.text, v.text_top.columns[3]))
    assert seen == {
        (what, f"{agg} % of max")
        for what in ("active features", "% of max")
        for agg in microscope.AGGREGATES
    }


@pytest.mark.parametrize(
    ("value", "want"),
    [("9:123", (9, 123)), (" layer 2 feature 7 ", (2, 7)), ("2 #7", (2, 7)), ("strongest", None)],
)
def test_a_shade_value_reads_as_a_feature(value: str, want: tuple[int, int] | None) -> None:
    assert shading.parse_shade(value) == want
    assert shading.parse_shade(shading.shade_value(want)) == want


@pytest.mark.parametrize("value", ["", "9", "9:1e3", "<b>9:1</b>", "9:-1"])
def test_a_bad_shade_value_is_refused_with_its_text(value: str) -> None:
    with pytest.raises(UserError, match="layer:feature, such as 9:123"):
        shading.parse_shade(value)


def test_shading_needs_an_encoded_layer_and_a_real_feature(ctx: Context) -> None:
    enc = microscope.encode_text(ctx, TEXT, ["1"])
    with pytest.raises(UserError, match=r"layer 2 is not encoded \(layers 1 are\)"):
        microscope.show(ctx, enc, shade="2:3")
    with pytest.raises(UserError, match="feature must be from 0 to 47"):
        microscope.show(ctx, enc, shade="1:48")


def test_encoding_the_same_text_again_keeps_its_token_and_feature(ctx: Context) -> None:
    enc = microscope.encode_text(ctx, TEXT, ["1", "2"])
    before = {"text": TEXT, "token": 3, "shade": "2:5"}
    assert microscope_tab.kept_choices(enc, before, TEXT) == ("2:5", 3)
    assert microscope_tab.kept_choices(enc, before, TEXT + " again") == (None, 0)
    only_1 = microscope.encode_text(ctx, TEXT, ["1"])
    assert microscope_tab.kept_choices(only_1, before, TEXT) == (None, 3)
    assert microscope_tab.kept_choices(enc, {**before, "token": 99}, TEXT) == ("2:5", 0)
