"""The offline "likely to steer" estimate: recomputed by hand on the tiny store, read from a store
described before it existed, shown on the dashboard, in the steering table and as a Browse sort,
and on the shipped store unlikely for the "thunder" feature that never steered (issue 20)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from explorer import steerability
from explorer.app import Context, browse, dashboard, render, steering
from explorer.app.context import load_curated
from explorer.files import file_sha256
from explorer.paths import ASSETS_STORE
from explorer.store import Store
from explorer.store.schema import MANIFEST, descriptions_path


def _alphabetic(text: str) -> bool:
    """A word, for the tiny tokenizer, which splits on spaces (no token has a leading one)."""
    return text.isalpha() and len(text) > 1


def _by_hand(store: Store, layer: int) -> np.ndarray:
    """The estimate of every feature of ``layer``, feature by feature in plain Python (words:
    :func:`_alphabetic`)."""
    vocab = store.token_context()
    fields = pq.read_table(store.path / descriptions_path(layer)).to_pylist()
    out = []
    for f, top in enumerate(store.features_arrow(layer).column("top_logits").to_pylist()):
        texts = vocab.texts(np.array(top, dtype=np.int64), "test")
        words = sum(_alphabetic(t) for t in texts)
        agreement = fields[f]["agreement"]
        full = min(1.0, agreement / steerability.AGREEMENT_FULL)
        out.append((words / max(len(top), 1) + full) / 2)
    return np.array(out)


def test_is_word() -> None:
    words = [" church", " Über", " wonderful"]
    not_words = ["bolts", " 3D", " a", "人在", " ", " don't", "\n", " co-op"]
    assert all(map(steerability.is_word, words))
    assert not any(map(steerability.is_word, not_words))


def test_estimate_equals_a_recount(app_parts, tmp_path: Path, monkeypatch) -> None:
    import precompute.describe as describe

    monkeypatch.setattr(describe, "is_word", _alphabetic)
    monkeypatch.setattr(steerability, "is_word", _alphabetic)
    _, built = app_parts
    shutil.copytree(built.path, tmp_path / "store")
    describe.add_descriptions(tmp_path / "store")  # agreement counted with the same words
    store = Store.open(tmp_path / "store")
    got = steerability.estimate(store)
    want = np.concatenate([_by_hand(store, layer) for layer in store.layers])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert ((got >= 0) & (got <= 1)).all() and len(set(got.round(6))) > 2


def test_a_store_described_before_agreement_still_opens(
    app_parts, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, store = app_parts
    old = tmp_path / "store"
    shutil.copytree(store.path, old)
    manifest = json.loads((old / MANIFEST).read_text())
    for layer in store.layers:
        name = descriptions_path(layer)
        pq.write_table(pq.read_table(old / name).drop_columns(["agreement"]), old / name)
        entry = manifest["files"][name]
        entry.update(bytes=(old / name).stat().st_size, sha256=file_sha256(old / name))
    (old / MANIFEST).write_text(json.dumps(manifest))
    reopened = Store.open(old, verify=True)
    assert reopened.descriptions(2) == store.descriptions(2)  # the lines are still shown
    with caplog.at_level(logging.INFO, logger="explorer.steerability"):
        got = steerability.estimate(reopened)
    assert "run describe" in caplog.text
    words = np.concatenate([steerability.signals(store, n)["words"] for n in store.layers])
    np.testing.assert_allclose(got, words / 2)  # no agreement: the words alone, halved


def test_the_app_shows_the_estimate(ctx: Context, monkeypatch) -> None:
    monkeypatch.setattr(steerability, "is_word", _alphabetic)  # so that the estimates differ
    summary = ctx.summary()
    live = summary[~summary["dead"]]
    assert live["steer"].nunique() > 2
    best = live.sort_values("steer", ascending=False, kind="stable").iloc[0]
    layer, feature = int(best["layer"]), int(best["feature"])
    estimate = ctx.steer_estimate(layer, feature)
    assert estimate == pytest.approx(float(best["steer"])) and estimate is not None
    text = render.steer_text(estimate)
    assert text == f"{'likely' if estimate >= steerability.LIKELY else 'unlikely'} to steer " + (
        f"({estimate:.2f})"
    )
    assert 'gse-steer" title="' in dashboard.header(ctx, layer, feature)
    assert text in dashboard.header(ctx, layer, feature)
    table = steering.with_feature(ctx, None, layer, feature)
    assert table["steering estimate"].tolist() == [text]
    # Browse ranks by it on request, most likely first
    ranked = browse.features(ctx, "all", "", "steer", True, False, True)
    assert ranked[browse.STEER_COLUMN].tolist() == sorted(ranked[browse.STEER_COLUMN], reverse=True)
    assert (ranked["layer"].iat[0], ranked["feature"].iat[0]) == (layer, feature)


def test_on_the_shipped_store_thunder_is_unlikely_and_the_demos_likely() -> None:
    """12 / 688 ("thunder") never produced thunder (docs/steering.md): its logit effects are word
    pieces ("bolts", "subscription"). The steering demos' features, each measured to steer, pull
    the text toward whole words (" lovely", " meetings", " church", " civilization")."""
    store = Store.open(ASSETS_STORE)
    sizes = [store.n_features(n) for n in store.layers]
    base = dict(zip(store.layers, np.cumsum([0, *sizes])[:-1], strict=True))
    got = steerability.estimate(store)
    assert got[base[12] + 688] < steerability.LIKELY
    demos = {(d["layer"], d["feature"]) for d in load_curated("default")["steering"]}
    assert len(demos) >= 4
    assert all(got[base[a] + b] >= steerability.LIKELY for a, b in demos)
    # a minority of the live features reads "likely": the estimate is a warning, not a shrug
    live = np.concatenate([~store.features(n, ["dead"])["dead"].to_numpy() for n in store.layers])
    assert 0.02 < (got[live] >= steerability.LIKELY).mean() < 0.25
