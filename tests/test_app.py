"""The app's handlers on a tiny bundle with a real store and label database, then the running app
driven over HTTP by gradio_client (127.0.0.1 only)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pandas as pd
import pytest
from helpers import live_feature

from explorer.app import Context, UserError, browse, dashboard, labelling, microscope, steering
from explorer.encode import encode
from explorer.steer import Steer

HOSTILE_LABEL = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>'


# --- handlers -----------------------------------------------------------------------------------


def test_microscope_matches_encode_and_hides_dense_features_visibly(ctx: Context) -> None:
    text = "the cat sat on the mat and the dog ran"
    view = microscope.view(ctx, text, ["1", "2"], "max activation", max_density_pct=100)
    enc = encode(ctx.bundle, text, top_k=32)
    assert [t for t, _ in view.highlighted] == enc.tokens
    assert view.heatmap.data[0].z.shape == (2, len(enc.tokens))
    # The heatmap's value is the strongest feature per token and layer, as a % of its store max.
    maxes = ctx.max_acts()
    for row, layer in enumerate((1, 2)):
        for pos in range(len(enc.tokens)):
            rel = [min(100.0, 100 * a / maxes[layer][f]) for f, a in enc.layers[layer].top(pos)]
            assert view.heatmap.data[0].z[row][pos] == pytest.approx(max(rel, default=0.0))
    assert "hidden" not in view.status
    # With the filter at 0% every feature that fires anywhere is dense: all hidden, and said so.
    hidden = microscope.view(ctx, text, ["1", "2"], max_density_pct=0)
    assert "hidden" in hidden.status and hidden.text_top.empty
    first = view.text_top.iloc[0]
    layer, feature = int(first["layer"]), int(first["feature"])
    best = max(
        a for pos in range(len(enc.tokens)) for f, a in enc.layers[layer].top(pos) if f == feature
    )
    assert first["max act"] == pytest.approx(best, abs=5e-4)  # rounded to 3 places


def test_token_features_list_every_layer(ctx: Context) -> None:
    view = microscope.view(ctx, "the cat sat on the mat", max_density_pct=100)
    table = microscope.token_features(ctx, view.encoding, 1, 100)
    enc = view.encoding
    want = {(layer, f) for layer in (1, 2) for f, _ in enc.layers[layer].top(1)}
    assert set(zip(table["layer"], table["feature"], strict=True)) == want


def test_dashboard_shows_the_store_and_marks_test_text(ctx: Context) -> None:
    feature = live_feature(ctx)
    rec = ctx.store.feature(2, feature)  # type: ignore[union-attr]
    view = dashboard.view(ctx, "2", feature, "the cat sat on the mat and the dog ran to the house")
    assert f"Layer 2 · feature {feature}" in view.header
    assert list(view.histogram.data[0].y) == rec.hist_counts
    assert view.neighbours["feature"].tolist() == rec.neighbours
    assert view.top_examples.count('class="gse-ex"') == len(rec.top_examples)
    assert "max on your text" in view.test
    # The mark is at the feature's maximum on the test text, recomputed here.
    from explorer.encode import feature_activations

    _, acts, _ = feature_activations(
        ctx.bundle, "the cat sat on the mat and the dog ran to the house", 2, feature
    )
    assert max(acts) > 0  # the feature fires on the test text: there is a mark to check
    assert view.histogram.layout.shapes[0].x0 == pytest.approx(max(acts))


def test_labels_show_up_everywhere_and_stay_escaped(ctx: Context) -> None:
    feature = live_feature(ctx, 1)
    ctx.save_label(1, feature, HOSTILE_LABEL, "notes", "high", "tester")
    view = dashboard.view(ctx, 1, feature)
    assert HOSTILE_LABEL not in view.header and "&lt;script&gt;" in view.header
    table = browse.features(ctx, "1", "onerror", hide_dense=False)
    assert table["feature"].tolist() == [feature]
    assert labelling.label_history(ctx, 1, feature)["label"].tolist()[0] == HOSTILE_LABEL
    for _ in range(20):
        assert labelling.next_unlabelled(ctx, "1", "any") != (1, feature)


def test_browse_sorts_filters_and_searches_top_tokens(ctx: Context) -> None:
    table = browse.features(ctx, "all", "", "n_fires", True, False, True)
    assert table["n_fires"].tolist() == sorted(table["n_fires"], reverse=True)
    assert (table["n_fires"] > 0).all()
    token = table["top_tokens"].iat[0].split()[0]
    hits = browse.features(ctx, "all", token, hide_dense=False)
    found = hits["top_tokens"] + " " + hits[browse.AUTO_COLUMN]  # searched: both, and labels
    assert len(hits) and all(token.lower() in t.lower() for t in found)
    assert (hits["top_tokens"].str.lower().str.contains(token.lower(), regex=False)).any()
    layer, feature = dashboard.random_feature(ctx, "2", random.Random(3))
    assert layer == 2 and not ctx.store.feature(2, feature).dead  # type: ignore[union-attr]


def test_steering_streams_default_and_steered(ctx: Context) -> None:
    feature = live_feature(ctx)
    steers = steering.add_steer(ctx, [], 2, feature, "", "add")
    assert steers[0].strength == pytest.approx(steering.default_strength(ctx, 2, feature))
    steers = steering.add_steer(ctx, steers, 2, feature, "300", "add")
    out = list(steering.steer(ctx, "the cat sat", steers, 0, 6, 1, 0))
    assert len(out) == 6 and "token limit" in out[-1][2]
    default, steered, _ = out[-1]
    plain = list(
        steering.steer(
            ctx, "the cat sat", steering.add_steer(ctx, [], 2, feature, "0", "add"), 0, 6
        )
    )
    assert default == plain[-1][0] == plain[-1][1]  # strength 0 changes nothing
    assert steered != default


def _one_steer(ctx: Context) -> list[Steer]:
    """Layer 2 feature 1 at its default strength: a valid steering list."""
    return steering.add_steer(ctx, [], 2, 1, "", "add")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda ex: microscope.view(ex, "   "), "empty"),
        (lambda ex: microscope.view(ex, "the cat", ["7"]), "layer"),
        (lambda ex: microscope.view(ex, "the cat", ["x"]), "whole number"),
        (lambda ex: microscope.view(ex, "the cat", []), "choose at least one layer"),
        (lambda ex: microscope.view(ex, "the cat", None, max_density_pct="nan"), "density"),
        (lambda ex: dashboard.view(ex, 2, -1), "feature must be from 0 to 47"),
        (lambda ex: dashboard.view(ex, 2, 48), "feature must be from 0 to 47"),
        (lambda ex: dashboard.view(ex, 2, "abc"), "whole number"),
        (lambda ex: dashboard.view(ex, 2, 1.5), "whole number"),
        (lambda ex: dashboard.view(ex, 9, 1), "no SAE"),
        (lambda ex: dashboard.view(ex, None, 1), "missing"),
        (lambda ex: steering.add_steer(ex, [], 2, 1, "inf", "add"), "strength"),
        (lambda ex: steering.add_steer(ex, [], 2, 1, "1e30", "add"), "strength"),
        (lambda ex: steering.add_steer(ex, [], 2, 1, "1", "multiply"), "method"),
        (lambda ex: list(steering.steer(ex, "hi", [], 0.7, 10)), "at least one feature"),
        (lambda ex: list(steering.steer(ex, "the cat", _one_steer(ex), -1)), "temper"),
        (lambda ex: list(steering.steer(ex, "the cat", _one_steer(ex), 0, 999)), "max"),
        (lambda ex: list(steering.steer(ex, "the cat", _one_steer(ex), 0, 5, -3)), "seed"),
        (lambda ex: list(steering.steer(ex, " ", _one_steer(ex), 0, 5)), "empty"),
        (lambda ex: browse.features(ex, "all", "x" * 300), "too long"),
        (lambda ex: browse.features(ex, "all", "", "bogus"), "sort"),
        (lambda ex: ex.save_label(2, 1, "   ", "", "medium", ""), "label"),
        (lambda ex: microscope.token_features(ex, None, 0), "encode a text first"),
    ],
)
def test_bad_input_is_a_user_error(ctx: Context, call, message) -> None:
    with pytest.raises(UserError, match=message):
        call(ctx)


# --- the running app ----------------------------------------------------------------------------


def test_each_tab_main_action_over_http(served: str, ctx: Context) -> None:
    from gradio_client import Client

    client = Client(served, verbose=False)
    micro = client.predict(
        "the cat sat on the mat", ["1", "2"], "max activation", 100, "max", api_name="/microscope"
    )
    shown = re.findall(r'<span class="gse-tok" data-pos="\d+"[^>]*>([^<]*)</span>', micro[0])
    assert shown == encode(ctx.bundle, "the cat sat on the mat").tokens
    assert "outline" in micro[0].split("</span>")[0]  # the first token is the one listed
    token_table = micro[6]  # an update: the table and its title naming the token
    assert token_table["label"].startswith("Features on token 0: “the”")
    assert token_table["value"]["headers"][3] == "% of max" and token_table["value"]["data"]
    feature = live_feature(ctx)
    dash = client.predict("2", feature, api_name="/open_feature")
    assert f"feature {feature}" in dash[2]
    # The UI's save: for the feature this session's dashboard shows (opened just above).
    saved, header = client.predict("a label over http", "client", "", api_name="/save_label")
    assert "Saved label" in saved and "a label over http" in header
    assert ctx.labels.current(2, feature).label == "a label over http"  # type: ignore[union-attr]
    # The label API: by number.
    other = next(f for f in range(48) if f != feature)
    said = client.predict(2, other, "by number", "client", "", api_name="/label_feature")
    assert said.startswith("Saved label") and ctx.labels.current(2, other).label == "by number"  # type: ignore[union-attr]
    table = client.predict("2", "label over http", "density", True, False, True, api_name="/browse")
    assert [row[1] for row in table["data"]] == [feature]
    found = client.predict("the cat sat on the mat", 100, api_name="/search_inference")
    assert found["data"]


def test_every_endpoint_names_its_parameters(served: str) -> None:
    """gradio_client's view of the API: a parameter is named after the handler's argument, so a
    ``*args`` handler shows ``param_2`` …, a one-letter argument ``t``, and a lambda's endpoint is
    ``lambda_N``; a client cannot tell what to pass."""
    from gradio_client import Client

    api = Client(served, verbose=False).view_api(print_info=False, return_format="dict")
    endpoints = api["named_endpoints"]
    assert {"/microscope", "/generate", "/steer_link", "/label_feature"} <= set(endpoints)
    assert not api["unnamed_endpoints"]
    anonymous = {
        f"{name}({p['parameter_name']})"
        for name, endpoint in endpoints.items()
        for p in endpoint["parameters"]
        if re.fullmatch(r"param_\d+", p["parameter_name"]) or len(p["parameter_name"]) < 3
    }
    assert not anonymous, f"parameters without a meaningful name: {sorted(anonymous)}"
    assert not [name for name in endpoints if re.fullmatch(r"/lambda(_\d+)?", name)]
    assert [p["parameter_name"] for p in endpoints["/steer_link"]["parameters"]] == [
        "prompt", "steering", "temperature", "max_new_tokens", "seed", "frequency_penalty",
    ]  # fmt: skip


def test_steering_over_http_streams_and_reports_bad_input(served: str, ctx: Context) -> None:
    from gradio_client import Client

    client = Client(served, verbose=False)
    feature = live_feature(ctx)
    steers = steering.add_steer(ctx, [], 2, feature, "200", "add")
    table = {
        "headers": ["layer", "feature", "strength", "method", "label"],
        "data": [[s.layer, s.feature, s.strength, s.method, ""] for s in steers],
    }
    job = client.submit("the cat sat", table, 0, 5, 0, 0, api_name="/generate")
    final = job.result(timeout=60)
    assert len(job.outputs()) >= 2  # streamed: more than one update
    want = list(steering.steer(ctx, "the cat sat", steers, 0, 5, 0, 0))[-1]
    assert tuple(final[:2]) == want[:2]
    with pytest.raises(Exception, match="feature must be from 0 to 47"):
        client.predict("2", 4000, api_name="/open_feature")
    # The app keeps serving after an error.
    assert client.predict("2", feature, api_name="/open_feature")[1] == feature


def test_store_mismatch_is_refused_at_start(tmp_path: Path, ctx: Context) -> None:
    from explorer.store import StoreError

    store = ctx.store
    assert store is not None
    with pytest.raises(StoreError, match="built with model 'tiny', the bundle has 'gemma-3-270m'"):
        store.check_bundle("gemma-3-270m", None, {1: {}, 2: {}})


@pytest.mark.parametrize(
    "text",
    [
        "the cat\x00\x01\x1b[31m sat",  # control characters
        "the cat 🐈‍⬛ sat 👩🏽‍💻",  # emoji, joined sequences
        "the cat مرحبا بالعالم sat \u202eevil",  # right-to-left text and an override
        "the cafe\u0301 n\u0303 cat",  # combining marks
        "<script>alert(1)</script> the cat",  # markup is text
        "the cat " * 5000,  # far past the token limit
    ],
)
def test_odd_but_valid_text_is_served(ctx: Context, text: str) -> None:
    view = microscope.view(ctx, text, max_density_pct=100)
    assert len(view.highlighted) <= ctx.bundle.spec.max_tokens
    if len(text) > 10_000:
        assert "cut at 64 tokens" in view.status
    assert "<script>" not in render_all(ctx, view)


def render_all(ctx: Context, view) -> str:
    """Every HTML string a microscope result leads to (its top feature's dashboard included)."""
    if view.text_top.empty:
        return ""
    layer, feature = int(view.text_top["layer"].iat[0]), int(view.text_top["feature"].iat[0])
    dash = dashboard.view(ctx, layer, feature, "<script>alert(1)</script> the cat")
    return dash.header + dash.top_examples + dash.intervals + dash.test


def test_curated_labels_show_until_someone_labels_the_feature(ctx: Context) -> None:
    from dataclasses import replace

    df = ctx.summary_layer(1)
    live = df[~df["dead"]]["feature"].tolist()
    feature = next(f for f in live if ctx.labels.current(1, f) is None)
    ex = replace(ctx, curated={(1, feature): "curated label"})
    assert "curated label" in dashboard.view(ex, 1, feature).header
    assert browse.features(ex, "1", "curated label", hide_dense=False)["feature"].tolist() == [
        feature
    ]
    ex.save_label(1, feature, "a person's label", "", "medium", "")
    assert "a person&#x27;s label" in dashboard.view(ex, 1, feature).header
    assert "curated label" not in dashboard.view(ex, 1, feature).header


def test_browse_pages_cover_every_match_once_in_order(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    both = browse.features(ctx, "all", "", "n_fires", True, False, False)
    assert len(both) == 96 + 160  # res: 2 layers x 48; tc: 4 layers x 40
    whole = browse.features(ctx, "all", "", "n_fires", True, False, False, source="res")
    assert len(whole) == 96 and set(whole["source"]) == {"res"}  # one page of 500 holds them
    monkeypatch.setattr(browse, "BROWSE_ROWS", 10)
    pages = [
        browse.select(ctx, "all", "", "n_fires", True, False, False, p, "res") for p in range(1, 11)
    ]
    assert [len(p.table) for p in pages] == [10] * 9 + [6]
    assert {p.total for p in pages} == {96} and {p.hidden for p in pages} == {0}
    joined = pd.concat([p.table for p in pages], ignore_index=True)
    pd.testing.assert_frame_equal(joined, whole)
    # ties in the sort key keep (layer, feature) order
    keys = list(zip(-joined["n_fires"], joined["layer"], joined["feature"], strict=True))
    assert keys == sorted(keys)
    table, total, page, *_ = browse.select(ctx, "all", "", "n_fires", True, False, False, 99, "res")
    assert page == 10 and table.equals(pages[-1].table)  # past the end: the last page
    assert browse.page_caption(total, page) == (
        "Features 91–96 of 96 (page 10 of 10; click a row to open)"
    )
    ascending = browse.features(ctx, "2", "", "feature", False, False, False, source="res")
    assert ascending["feature"].tolist() == list(range(10))
    with pytest.raises(UserError, match="page"):
        browse.features(ctx, "all", "", "density", True, True, True, 0)


def test_a_search_says_how_many_matches_the_filters_hide(ctx: Context) -> None:
    everything = browse.features(ctx, "all", "", hide_dense=False, hide_dead=False)
    df = ctx.browse_summary()
    token = everything["top_tokens"].iat[0].split()[0]
    found = browse.select(ctx, "all", token, hide_dense=False, hide_dead=False)
    shown = browse.select(ctx, "all", token, hide_dense=True, hide_dead=True)
    assert found.hidden == 0 and found.total > 0
    hits = set(
        zip(found.table["layer"], found.table["feature"], found.table["source"], strict=True)
    )
    dense_or_dead = {
        (a, b, c) for a, b, c, x, y in zip(df["layer"], df["feature"], df["source"], df["dense"],
                                           df["dead"], strict=True) if x or y
    }  # fmt: skip
    assert shown.hidden == len(hits & dense_or_dead) > 0  # the tiny store's live ones are dense
    assert shown.total == found.total - shown.hidden
    caption = browse.page_caption(*shown[1:])
    if shown.total == 0:
        assert caption == (
            f"Features: none shown; {shown.hidden} match among the hidden dense or dead "
            "(untick Hide dense or Hide dead to see them)"
        )
    else:
        assert f"; {shown.hidden} more among the hidden dense or dead: untick" in caption
    assert browse.select(ctx, "all", "", hide_dense=True, hide_dead=True).hidden == 0  # no search
