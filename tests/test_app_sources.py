"""The app shows both sources (issue 21 §3): a transcoder feature (``tc``) through every surface's
handlers, as a residual SAE's (``res``) is: named ``L2 tc #5`` wherever it is shown, its own
labels, links that carry the source, browse's source column and filter, the microscope's
transcoder layers and shading, and steering at the MLP's output (against a hand-made hook run).

The tiny store (``conftest.app_parts``) holds res SAEs on layers 1 and 2 and transcoders on
layers 0 to 3: layer 0 has a transcoder only.
"""

from __future__ import annotations

import pytest
import torch

from explorer.app import (
    Context,
    UserError,
    browse,
    dashboard,
    labelling,
    links,
    microscope,
    steering,
)
from explorer.app.context import source_scope
from explorer.encode import encode
from explorer.steer import GenerationConfig, Steer, SteerError, generate_pair
from explorer.store.schema import feature_name

TEXT = "the cat sat on the mat and the dog ran to the house"
TC = "transcoder"


def tc_live(ctx: Context, layer: int = 2) -> int:
    """The transcoder feature of ``layer`` that fires most often in the tiny store."""
    df = ctx.summary_layer(layer, TC)
    return int(df[~df["dead"]].sort_values("n_fires", ascending=False)["feature"].iat[0])


def test_the_context_offers_both_sources_and_checks_each(ctx: Context) -> None:
    assert ctx.sources == ("res", TC)
    assert ctx.source("tc") == ctx.source("transcoder") == TC and ctx.source("") == "res"
    assert ctx.check_feature(0, 39, "tc") == (0, 39)  # layer 0: a transcoder only
    with pytest.raises(UserError, match="layer 0 has no SAE here; the layers are 1, 2"):
        ctx.check_feature(0, 1)
    with pytest.raises(UserError, match="feature must be from 0 to 39"):
        ctx.check_feature(2, 40, "tc")
    with pytest.raises(UserError, match="unknown source 'sae': use res or tc"):
        ctx.check_feature(2, 1, "sae")
    assert feature_name(9, 456, "tc") == ctx.name(9, 456, TC) == "L9 tc #456"


def test_labels_are_per_source(ctx: Context) -> None:
    said = ctx.save_label(2, 5, "a tc label", "", "medium", "me", source="tc")
    assert "for L2 tc #5: 'a tc label'" in said
    assert ctx.label_of(2, 5, TC) == "a tc label" and ctx.label_of(2, 5) == ""
    assert ctx.labels.current(2, 5) is None
    assert ctx.labels_for(TC).scope == source_scope("tiny", TC) == "tiny/transcoder"
    assert ctx.labels_for(TC).path == ctx.labels.path  # one file, its own scope
    with pytest.raises(UserError, match="feature must be from 0 to 39"):
        ctx.save_label(2, 45, "too far", "", "medium", "me", source="tc")
    header = dashboard.view(ctx, 2, 5, source="tc").header
    assert "a tc label" in header and "L2 tc #5" in header
    assert "a tc label" not in dashboard.view(ctx, 2, 5).header
    assert labelling.label_history(ctx, 2, 5, "tc")["label"].tolist() == ["a tc label"]
    assert labelling.label_history(ctx, 2, 5).empty


def test_a_tc_dashboard_names_its_source_and_reads_its_own_data(ctx: Context) -> None:
    feature = tc_live(ctx, 0)
    v = dashboard.view(ctx, 0, feature, "the cat sat", source="tc")
    rec = ctx.need_reader(TC).feature(0, feature)
    assert v.source == TC and v.record is not None and v.record.source == TC
    assert v.record.max_act == rec.max_act and v.record.n_fires == rec.n_fires
    assert f"L0 tc #{feature}" in v.header and "transcoder: reads the MLP" in v.header
    assert set(v.neighbours["name"]) <= {f"L0 tc #{f}" for f in range(40)}
    values = dashboard.open_values(ctx, 0, feature, source="tc")
    assert values[11] == (0, feature, TC) and values[-2] == "tc"  # shown, the source radio
    with pytest.raises(UserError, match="layer 0 has no SAE here"):
        dashboard.view(ctx, 0, feature)  # the same numbers, the res source: no such layer


def test_a_store_without_transcoders_says_so_and_still_encodes(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(type(ctx.store), "sources", property(lambda self: ("res",)))
    with pytest.raises(UserError, match=r"no transcoder data.*python -m precompute run"):
        dashboard.view(ctx, 2, 3, source="tc")
    enc = microscope.encode_text(ctx, TEXT, None, "tc")  # the bundle's transcoders: all layers
    assert list(enc.layers) == [0, 1, 2, 3] and enc.source == TC
    v = microscope.show(ctx, enc, max_density_pct=100)
    assert "no maxima" in v.status  # strength against the text's own peak


def test_the_microscope_shows_every_transcoder_layer_and_shades_exactly(ctx: Context) -> None:
    v = microscope.view(ctx, TEXT, None, max_density_pct=100, source="tc")
    assert list(v.encoding.layers) == [0, 1, 2, 3] and v.encoding.source == TC
    assert list(v.heatmap.data[0].y) == [f"tc layer {n}" for n in range(4)]
    assert "transcoder (tc) layers" in v.status
    assert set(v.text_top["source"]) == {"tc"}
    layer, feature = int(v.text_top["layer"].iat[0]), int(v.text_top["feature"].iat[0])
    assert v.shading.value == f"tc{layer}:{feature}"
    assert f"L{layer} tc #{feature}" in v.shading.caption
    assert v.shade_choices[1][0].startswith(f"L{layer} tc #{feature}")
    # Exact: the transcoder's own encoding of ln2.hook_normalized, BOS left out.
    ids = torch.tensor([[ctx.bundle.tokenizer.bos_token_id, *v.encoding.token_ids]])
    _, cache = ctx.bundle.model.run_with_cache(ids)
    tc = ctx.bundle.transcoder(layer)
    want = tc.encode(cache[f"blocks.{layer}.ln2.hook_normalized"][0, 1:])[:, feature]
    got = v.encoding.layers[layer].feature(feature)
    torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-4)
    assert bool((want > 0).any())
    # A res shade on a tc encoding (and the other way round) is one clear message.
    with pytest.raises(UserError, match=r"L2 res #3 is a res feature .* choose the source res"):
        microscope.show(ctx, v.encoding, shade="2:3")
    res = microscope.encode_text(ctx, TEXT, ["2"])
    with pytest.raises(UserError, match=r"L2 tc #3 is a tc feature"):
        microscope.show(ctx, res, shade="tc2:3")
    assert microscope.default_layers(ctx, TC) == [0, 1, 2, 3]


def test_links_carry_the_source(ctx: Context) -> None:
    query = links.feature_query(9, 456, source=TC)
    assert query == "?tab=dashboard&source=tc&layer=9&feature=456"
    found = links.parse([("tab", "dashboard"), ("source", "tc"), ("layer", "9"),
                         ("feature", "456")])  # fmt: skip
    assert found.feature == (9, 456) and found.source == TC and not found.problems
    old = links.parse([("layer", "9"), ("feature", "456")])
    assert (
        old.source == "res" and links.feature_query(9, 456) == "?tab=dashboard&layer=9&feature=456"
    )
    bad = links.parse([("source", "sae"), ("layer", "9"), ("feature", "1")])
    assert bad.problems == ["source must be res or tc, not 'sae'"] and bad.source == "res"
    steer = links.steer_query("hi", [(9, 123, 40.0, "add", TC), (2, 5, 3.0, "clamp", "res")])
    assert "steer=tc9%3A123%3A40%3Aadd%2C2%3A5%3A3%3Aclamp" in steer
    parsed = links.parse([("steer", "tc9:123:40:add,2:5:3:clamp")])
    assert parsed.steers == [(9, 123, 40.0, "add", TC), (2, 5, 3.0, "clamp", "res")]
    assert links.parse([("steer", "xx9:1:2:add")]).problems  # strict as before
    micro = links.parse([("text", "a"), ("source", "tc"), ("shade", "tc3:7")])
    assert micro.micro["shade"] == "tc3:7" and micro.source == TC
    view = {"text": "a", "shade": "tc3:7", "source": "tc", "layers": [0, 1, 2, 3]}
    assert links.microscope_query(view, {"layers": [0, 1, 2, 3]}) == (
        "?tab=microscope&text=a&source=tc&shade=tc3%3A7"
    )
    assert links.browse_query({"source": "tc"}) == "?tab=browse&browse_source=tc"
    assert links.parse([("browse_source", "tc")]).browse == {"source": "tc"}


def test_browse_has_a_source_column_filter_and_search(ctx: Context) -> None:
    page = browse.select(ctx, "all", "", "interest", True, False, False, source="tc")
    assert page.total == 160 and set(page.table["source"]) == {"tc"}
    assert list(page.table.columns[:4]) == ["layer", "feature", "source", "label"]
    feature = tc_live(ctx, 0)
    ctx.save_label(0, feature, "zebra crossing", "", "medium", "me", source="tc")
    found = browse.select(ctx, "all", "zebra", "interest", True, False, False)
    assert found.total == 1 and found.table.iloc[0][["layer", "feature", "source"]].tolist() == [
        0, feature, "tc",
    ]  # fmt: skip
    assert found.table["label"].iat[0] == "zebra crossing"
    first = browse.select(ctx, "all", "", "interest", True, False, False).table
    assert first.iloc[0][["layer", "feature", "source"]].tolist() == [0, feature, "tc"]
    rng = __import__("random").Random(0)
    picked = {dashboard.random_any(ctx, "all", rng)[2] for _ in range(40)}
    assert picked == {"res", TC}


def test_a_tc_steer_adds_its_decoder_row_to_the_mlp_output(ctx: Context) -> None:
    layer, feature, strength = 1, tc_live(ctx, 1), 40.0
    cfg = GenerationConfig(max_new_tokens=6, temperature=0.0, seed=0)
    steer = Steer(layer, feature, strength, "add", "tc")
    last = list(generate_pair(ctx.bundle, "the cat sat", cfg, [steer]))[-1]
    default, steered = last.token_ids
    assert default != steered
    # By hand: greedy decoding with W_dec[feature] * strength added to blocks.1.hook_mlp_out at
    # every position but BOS.
    direction = ctx.bundle.transcoder(layer).W_dec[feature].detach()

    def add(x: torch.Tensor, hook: object) -> torch.Tensor:
        x[:, 1:] += strength * direction
        return x

    ids = [ctx.bundle.tokenizer.bos_token_id, *ctx.bundle.tokenizer("the cat sat")["input_ids"]]
    ids = [i for n, i in enumerate(ids) if n == 0 or i != ctx.bundle.tokenizer.bos_token_id]
    made: list[int] = []
    with torch.inference_mode():
        for _ in range(6):
            logits = ctx.bundle.model.run_with_hooks(
                torch.tensor([ids + made]), fwd_hooks=[(f"blocks.{layer}.hook_mlp_out", add)]
            )
            made.append(int(logits[0, -1].argmax()))
    assert steered == made[: len(steered)]
    # Through the app: the table names the source; the same completion.
    table = steering.with_feature(ctx, None, layer, feature, strength, "add", "tc")
    assert table["source"].tolist() == ["tc"]
    *_, (plain, with_tc, _) = steering.steer(ctx, "the cat sat", table, 0.0, 6, 0, 0.0)
    assert (plain, with_tc) == tuple(last.texts)


def test_a_tc_steer_is_add_only_and_checked(ctx: Context) -> None:
    with pytest.raises(SteerError, match="L1 tc #3: a transcoder feature steers with add only"):
        Steer(1, 3, 5.0, "clamp", "tc")
    with pytest.raises(UserError, match="row 1: L1 tc #3 is a transcoder feature: it steers with"):
        steering.parse_steers(ctx, [[1, 3, 5.0, "ablate", "", "", "tc"]])
    with pytest.raises(UserError, match="row 1: feature must be from 0 to 39"):
        steering.parse_steers(ctx, [[1, 40, 5.0, "add", "", "", "tc"]])
    assert steering.parse_steers(ctx, [[0, 3, 5.0, "add", "", "", "tc"]]) == [
        Steer(0, 3, 5.0, "add", TC)
    ]
    blank = steering.parse_steers(ctx, [[0, 3, None, "add", "", "", "tc"]])[0].strength
    max_act = float(ctx.summary_layer(0, TC)["max_act"].iat[3])
    assert blank == (round(max_act, 2) if max_act > 0 else 10.0)


def test_encode_with_transcoders_matches_its_top_k(ctx: Context) -> None:
    enc = encode(ctx.bundle, TEXT, [2], top_k=3, source="tc")
    assert enc.source == TC and list(enc.layers) == [2]
    assert enc.layers[2].feature_ids.shape[1] == 3
