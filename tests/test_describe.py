"""Automatic descriptions: recounted feature by feature, written by the job and by `describe`
alike, shipped for every live feature of the default store, shown and searched in the app."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from explorer.app import browse, dashboard
from explorer.app.context import AUTO, Context
from explorer.app.render import badges_html
from explorer.paths import ASSETS_STORE
from explorer.steerability import is_word
from explorer.store import Store, StoreError
from explorer.store.codec import TokenContext
from explorer.store.schema import MANIFEST, descriptions_path, examples_path
from precompute.__main__ import main
from precompute.describe import CONTEXT_MIN, CONTEXT_SHARE, N_PROMOTED, N_TOKENS, describe_layer


def _ranked(seen: list[int], limit: int) -> list[tuple[int, int]]:
    """(value, count) most frequent first; ties to the value seen first."""
    counts = Counter(seen)
    first = {v: i for i, v in reversed(list(enumerate(seen)))}
    return sorted(counts.items(), key=lambda vc: (-vc[1], first[vc[0]]))[:limit]


def _recount(
    store: Store,
    layer: int,
    feature: int,
    share: float = CONTEXT_SHARE,
    least: int = CONTEXT_MIN,
    is_word: Callable[[str], bool] = is_word,
) -> dict[str, Any]:
    """One feature's description fields, recomputed from its record in plain Python."""
    rec = store.feature(layer, feature)
    examples = list(rec.top_examples) + [e for g in rec.intervals for e in g.examples]
    top = store.features_arrow(layer).column("top_logits")[feature].as_py()
    vocab = store.token_context()

    def word(token: int) -> str:
        return " ".join(vocab.texts(np.array([token]), "test")[0].split()).lower()

    texts = vocab.texts(np.array(top, dtype=np.int64), "test")
    pushed = {word(t) for t, text in zip(top, texts, strict=True) if is_word(text)} - {""}
    centres, tokens, before, after = set(), [], [], []
    agree = 0
    for e in examples:  # top by rank, then interval 1, 2, … by rank: the tie-break order
        key = (e.doc_id, e.start + e.max_pos)
        if key in centres:
            continue
        centres.add(key)
        tokens.append(e.token_ids[e.max_pos])
        if e.max_pos > 0:
            before.append(e.token_ids[e.max_pos - 1])
        if e.max_pos + 1 < len(e.token_ids):
            after.append(e.token_ids[e.max_pos + 1])
        near = e.token_ids[e.max_pos : e.max_pos + 2]  # the centre, and the token after it
        agree += any(word(t) in pushed for t in near)
    top_tokens = _ranked(tokens, N_TOKENS)
    context, context_token, context_count = "", -1, 0
    for kind, seen in (("before", after), ("after", before)):
        best = _ranked(seen, 1)
        if best and best[0][1] >= least and best[0][1] >= share * len(centres):
            context, (context_token, context_count) = kind, best[0]
    if rec.dead:
        return {"n_examples": len(centres), "tokens": [], "counts": [], "context": "",
                "context_token": -1, "context_count": 0, "promoted": [],
                "agreement": 0.0}  # fmt: skip
    corpus = set(vocab.flat.tolist())  # promoted tokens the corpus never holds: left out
    promoted = [t for t in top if t in corpus][:N_PROMOTED]
    return {
        "n_examples": len(centres),
        "tokens": [t for t, _ in top_tokens],
        "counts": [c for _, c in top_tokens],
        "context": context,
        "context_token": context_token,
        "context_count": context_count,
        "promoted": promoted,
        "agreement": pytest.approx(agree / max(len(centres), 1), abs=1e-6),
    }


def test_descriptions_equal_a_feature_by_feature_recount(app_parts) -> None:
    _, store = app_parts
    assert store.has_descriptions
    checked = 0
    for layer in store.layers:
        table = pq.read_table(store.path / descriptions_path(layer)).to_pylist()
        feats = store.features(layer, ["dead"])["dead"].tolist()
        for f, row in enumerate(table):
            assert row["feature"] == f
            want = _recount(store, layer, f)
            assert {k: row[k] for k in want} == want, (layer, f)
            assert (row["description"] == "") == feats[f]
            checked += 1
    assert checked == 96


def test_context_rule_equals_the_recount(app_parts, monkeypatch) -> None:
    # Random words rarely share a neighbour: lower the bar so that the rule picks contexts.
    import precompute.describe as describe

    monkeypatch.setattr(describe, "CONTEXT_SHARE", 0.3)
    monkeypatch.setattr(describe, "CONTEXT_MIN", 2)
    _, store = app_parts
    kinds: Counter[str] = Counter()
    for layer in store.layers:
        examples = pq.read_table(store.path / examples_path(layer))
        rows = describe_layer(store.features_arrow(layer), examples, store.token_context())
        for f, row in enumerate(rows.to_pylist()):
            want = _recount(store, layer, f, share=0.3, least=2)
            assert {k: row[k] for k in want} == want, (layer, f)
            kinds[row["context"]] += 1
    assert kinds["before"] and kinds["after"], kinds


def test_agreement_equals_the_recount(app_parts, monkeypatch) -> None:
    # The tiny tokenizer splits on spaces: no token reads as a word by the real rule (a leading
    # space), so take any alphabetic token for one here, in both counts.
    import precompute.describe as describe

    def alphabetic(text: str) -> bool:
        return text.isalpha() and len(text) > 1

    monkeypatch.setattr(describe, "is_word", alphabetic)
    _, store = app_parts
    agreeing = 0
    for layer in store.layers:
        examples = pq.read_table(store.path / examples_path(layer))
        rows = describe_layer(store.features_arrow(layer), examples, store.token_context())
        for f, row in enumerate(rows.to_pylist()):
            want = _recount(store, layer, f, is_word=alphabetic)["agreement"]
            assert row["agreement"] == want, (layer, f)
            agreeing += row["agreement"] > 0
    assert agreeing  # some features fire on or before a token they promote


def test_the_line_names_tokens_counts_context_and_promoted(app_parts, monkeypatch) -> None:
    import precompute.describe as describe

    monkeypatch.setattr(describe, "CONTEXT_SHARE", 0.3)
    monkeypatch.setattr(describe, "CONTEXT_MIN", 2)
    _, store = app_parts
    tc = store.token_context()
    text = dict(zip(tc.vocab_ids.tolist(), tc.vocab_text, strict=True))
    examples = pq.read_table(store.path / examples_path(2))
    rows = describe_layer(store.features_arrow(2), examples, store.token_context()).to_pylist()
    row = next(r for r in rows if r["context"] and r["description"] and r["promoted"])
    line = row["description"]

    def quoted(token: int) -> str:
        return json.dumps(text[token], ensure_ascii=False)

    n = row["n_examples"]
    first = f"fires on {quoted(row['tokens'][0])} ({row['counts'][0]} of {n} examples)"
    assert line.startswith(first)
    for token, count in zip(row["tokens"][1:], row["counts"][1:], strict=True):
        assert f", {quoted(token)} ({count})" in line
    how = (
        f", mostly {row['context']} {quoted(row['context_token'])} ({row['context_count']} of {n})"
    )
    assert how in line
    promoted = ", ".join(quoted(t) for t in row["promoted"])
    assert line.endswith(f"; pushes toward {promoted}")
    assert "×" not in line and "—" not in line  # no symbols left for a newcomer to decode


def _strip_descriptions(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "descriptions")
    manifest = json.loads((dst / MANIFEST).read_text())
    manifest["files"] = {
        k: v for k, v in manifest["files"].items() if not k.startswith("descriptions/")
    }
    (dst / MANIFEST).write_text(json.dumps(manifest))
    return dst


def test_describe_command_writes_what_the_job_wrote(app_parts, tmp_path: Path, capsys) -> None:
    _, store = app_parts
    bare = _strip_descriptions(store.path, tmp_path / "bare")
    plain = Store.open(bare)
    assert not plain.has_descriptions and set(plain.descriptions(1)) == {""}
    assert main(["describe", "--store", str(bare)]) == 0
    assert "layer 2:" in capsys.readouterr().out
    job = json.loads((store.path / MANIFEST).read_text())["files"]
    again = json.loads((bare / MANIFEST).read_text())["files"]
    assert again == job  # same bytes for every file, the descriptions included
    assert Store.open(bare, verify=True).descriptions(2) == store.descriptions(2)


def test_descriptions_are_all_layers_or_none(app_parts, tmp_path: Path) -> None:
    _, store = app_parts
    half = tmp_path / "half"
    shutil.copytree(store.path, half)
    manifest = json.loads((half / MANIFEST).read_text())
    del manifest["files"][descriptions_path(1)]
    (half / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"lists no descriptions/layer=01\.parquet"):
        Store.open(half)


def test_describe_reports_a_missing_store(tmp_path: Path, capsys) -> None:
    assert main(["describe", "--store", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: store directory") and "Traceback" not in err


def test_ties_duplicates_and_window_edges_on_a_hand_made_layer() -> None:
    # Windows: [10 11 12 13] and [20 21 22]; feature 0 fires at 11 (top 0), at 13 (top 1, last
    # of its window: no token after), at 11 again (interval 1: counted once) and at 20 (first
    # of its window: no token before). Feature 1 is dead.
    ctx = TokenContext(
        path=Path("."),
        flat=pa.array([10, 11, 12, 13, 20, 21, 22], pa.int32()).to_numpy(),
        offsets=pa.array([0, 4, 7], pa.int32()).to_numpy(),
        doc_id=["a", "b"],
        offset=pa.array([0, 0], pa.int32()).to_numpy(),
        vocab_ids=pa.array([10, 11, 12, 13, 20, 21, 22, 99], pa.int32()).to_numpy(),
        vocab_text=pa.array(["<b>", " ox", "\n", "y", "z", "w", "v", "p"]).to_numpy(
            zero_copy_only=False
        ),
    )
    features = pa.table(
        {
            "feature": pa.array([0, 1], pa.int32()),
            "dead": [False, True],
            "top_logits": pa.array([[99, 10, 11], [99]], pa.list_(pa.int32())),
        }
    )
    examples = pa.table(
        {
            "feature": pa.array([0, 0, 0, 0], pa.int32()),
            "group": ["interval 1", "top", "top", "interval 1"],
            "rank": pa.array([0, 0, 1, 1], pa.int16()),
            "window": pa.array([0, 0, 0, 1], pa.int32()),
            "start": pa.array([0, 1, 0, 0], pa.int16()),
            "max_pos": pa.array([1, 0, 3, 0], pa.int16()),
        }
    )
    out = describe_layer(features, examples, ctx).to_pylist()
    assert out[0]["n_examples"] == 3
    # three tokens once each: ties go to the best-ranked example (top 0, top 1, interval)
    assert out[0]["tokens"] == [11, 13, 20] and out[0]["counts"] == [1, 1, 1]
    assert out[0]["context"] == "" and out[0]["context_token"] == -1  # 1 of 3 < CONTEXT_MIN
    # 99 ("p") is promoted most but never occurs in the corpus: left out
    assert out[0]["promoted"] == [10, 11]
    assert out[0]["description"] == (
        'fires on " ox" (1 of 3 examples), "y" (1), "z" (1); pushes toward "<b>", " ox"'
    )
    # it fires on " ox", a word it promotes, at 1 of its 3 centres; never before a promoted word
    assert out[0]["agreement"] == pytest.approx(1 / 3)
    assert out[1] == {
        "feature": 1, "description": "", "n_examples": 0, "tokens": [], "counts": [],
        "context": "", "context_token": -1, "context_count": 0, "promoted": [],
        "agreement": 0.0,
    }  # fmt: skip


def test_shipped_store_describes_every_live_feature() -> None:
    store = Store.open(ASSETS_STORE)
    assert store.has_descriptions
    for layer in store.layers:
        dead = store.features(layer, ["dead"])["dead"].to_numpy()
        described = [bool(d) for d in store.descriptions(layer)]
        assert described == (~dead).tolist()
    french = store.description(12, 1013)  # the curated nationality feature
    assert french.startswith('fires on " French" (') and "examples)" in french
    # Its top promoted tokens are noise the corpus never contains ('人在', ' Moderna'): the line
    # names those it does contain.
    promoted = store.features_arrow(12).column("top_logits")[1013].as_py()
    corpus = set(store.token_context().flat.tolist())
    assert promoted[0] not in corpus and "人在" not in french
    assert "pushes toward" in french


def test_shipped_descriptions_are_reproduced_by_the_command(tmp_path: Path) -> None:
    bare = _strip_descriptions(ASSETS_STORE, tmp_path / "store")
    assert main(["describe", "--store", str(bare)]) == 0
    shipped = json.loads((ASSETS_STORE / MANIFEST).read_text())["files"]
    again = json.loads((bare / MANIFEST).read_text())["files"]
    assert again == shipped


def test_app_shows_searches_and_marks_descriptions(ctx: Context) -> None:
    store = ctx.store
    assert store is not None
    f = next(i for i, d in enumerate(store.descriptions(2)) if d)
    auto = store.description(2, f)
    header = dashboard.header(ctx, 2, f)
    assert "automatic</span>" in header and "unlabelled" in header
    rows = ctx.summary()
    assert (rows.loc[(rows.layer == 2) & (rows.feature == f), "description"] == auto).all()
    word = json.loads(auto.removeprefix("fires on ").split(" (")[0]).strip()  # its top token
    found = browse.features(ctx, layer="2", query=word, hide_dense=False)
    assert f in found["feature"].tolist()
    hit = found[found["feature"] == f].iloc[0]
    assert hit[browse.AUTO_COLUMN] == auto and hit["label"] == ""
    labels: dict[tuple[int, int], Any] = {}
    assert ctx.shown_label(labels, 2, f) == AUTO + auto
    ctx.labels.add(2, f, "a person's label", "", "high", "tester")
    assert ctx.shown_label(ctx.labels.current_all(), 2, f) == "a person's label"
    header = dashboard.header(ctx, 2, f)
    assert "a person&#x27;s label" in header or "a person's label" in header
    assert "automatic</span>" in header  # still there, under the person's label


def test_description_text_is_escaped_in_the_header(app_parts) -> None:
    _, store = app_parts
    rec = store.feature(2, 0)
    html = badges_html(rec, None, 0.01, auto='"<img src=x onerror=alert(1)>" ×3')
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
