"""The explanations database: appends only, the best explanation, imports without duplicates,
full-text search, and files that are not ours left alone."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from explorer.explanations import ExplanationError, Explanations, NewExplanation


def _row(feature: int, text: str, score: float | None, **kw: object) -> NewExplanation:
    return NewExplanation(
        layer=3,
        feature=feature,
        text=text,
        source=str(kw.pop("source", "llm")),
        method="max-activating-examples",
        model="m",
        prompt_version="v1",
        detection=score,
        fuzzing=score,
        score=score,
        n_scored=10 if score is not None else 0,
        **kw,  # type: ignore[arg-type]
    )


def test_appends_only_and_best_prefers_scored_then_higher_then_newer(tmp_path: Path) -> None:
    db = Explanations(tmp_path / "e.sqlite")
    assert db.add([_row(1, "unscored import", None, source="neuronpedia")]) == 1
    assert db.best(3, 1) is not None and db.best(3, 1).score is None  # type: ignore[union-attr]
    db.add([_row(1, "weak", 0.55), _row(1, "strong", 0.8), _row(1, "also strong", 0.8)])
    best = db.best(3, 1)
    assert best is not None and best.text == "also strong"  # ties: the newest
    assert [r.text for r in db.history(3, 1)] == [
        "also strong",
        "strong",
        "weak",
        "unscored import",
    ]
    assert db.best(3, 2) is None and db.best_map(3)[1] == best
    conn = sqlite3.connect(db.path)
    for sql in ("UPDATE explanations SET text = 'x'", "DELETE FROM explanations"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(sql)
    conn.close()
    assert db.count() == 4
    assert db.done("max-activating-examples", "m", "v1") == {(3, 1)}
    assert db.done("max-activating-examples", "m", "v2") == set()


def test_refs_make_imports_idempotent_and_rows_are_checked(tmp_path: Path) -> None:
    db = Explanations(tmp_path / "e.sqlite")
    rows = [_row(5, "dates", None, ref="np:abc"), _row(6, "names", None, ref="np:def")]
    assert db.add(rows) == 2
    assert db.add(rows) == 0
    assert db.count() == 2
    with pytest.raises(ExplanationError, match=r"detection must be in \[0, 1\]"):
        db.add([_row(7, "x", 1.5)])
    with pytest.raises(ExplanationError, match="empty"):
        db.add([_row(7, "   ", 0.5)])
    with pytest.raises(ExplanationError, match="feature must be an integer"):
        db.add([_row(-1, "x", 0.5)])
    assert db.count() == 2  # a bad row adds nothing


def test_search_is_literal_and_ranked(tmp_path: Path) -> None:
    db = Explanations(tmp_path / "e.sqlite")
    db.add([_row(1, "Python print calls", 0.7), _row(2, 'quotes "and" <b>tags</b>', 0.6)])
    assert [r.feature for r in db.search("print")] == [1]
    assert [r.feature for r in db.search('"and" <b>')] == [2]
    assert [r.feature for r in db.search("Py")] == [1]  # under 3 characters: a scan
    assert db.search("nothing like this") == []
    # The features alone, once each, at their best match: bm25 ranks the shorter text first.
    db.add([_row(3, "print print", 0.5), _row(1, "print again", 0.5), _row(4, "pr_nt", None)])
    assert [r.feature for r in db.search("print")][:1] == [3]
    assert db.search_features("print") == ([(3, 3), (3, 1)], 3, True)
    assert db.search_features("_n") == ([(3, 4)], 1, True)  # a scan, LIKE's wildcards escaped
    assert db.search_features("  ") == ([], 0, True)
    # More matches than the limit: the first ones by id, unranked, and the hits say so.
    assert db.search_features("print", limit=2) == ([(3, 1), (3, 3)], 3, False)
    assert db.search_features("pr", limit=2) == ([(3, 1), (3, 3)], None, False)  # not counted
    assert db.search_features("pr", limit=4) == ([(3, 1), (3, 3), (3, 4)], 4, True)


def test_foreign_files_are_left_untouched(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ExplanationError, match="not SQLite"):
        Explanations(text)
    assert text.read_text() == "hello"
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(ExplanationError, match="something else"):
        Explanations(other)
    with pytest.raises(ExplanationError, match="no explanations database"):
        Explanations(tmp_path / "missing.sqlite", create=False)
    assert not (tmp_path / "missing.sqlite").exists()


def test_dashboard_header_shows_the_best_explanation_escaped(ctx: Any, tmp_path: Path) -> None:
    from explorer.app import dashboard

    plain = dashboard.header(ctx, 1, 3)
    assert "gse-explanation" not in plain  # no explanations file: nothing shown
    db = Explanations(tmp_path / "e.sqlite")
    ctx.explanations = db
    ctx.labels.add(1, 3, "a person's label")
    db.add(
        [
            NewExplanation(
                layer=1, feature=3, text="<img src=x onerror=alert(1)> tags", source="llm",
                method="max-activating-examples", model="gemma-3-270m", detection=0.7,
                fuzzing=0.54, score=0.62, n_scored=20,
            ),
            NewExplanation(
                layer=1, feature=3, text="imported", source="neuronpedia", method="np",
                model="gpt-4o-mini",
            ),
        ]
    )  # fmt: skip
    html = dashboard.header(ctx, 1, 3)
    assert "a person&#x27;s label" in html  # the label stays the label
    assert (
        '<div class="gse-explanation gse-muted">Explanation: &lt;img src=x onerror=alert(1)&gt; '
        "tags (score 0.62; llm, gemma-3-270m)</div>"
    ) in html
    assert "<img" not in html
    assert dashboard.explanation_line(ctx, 1, 4) == ""


def test_the_app_opens_the_stores_explanations_only_when_there(tmp_path: Path) -> None:
    from explorer.app.context import open_explanations

    assert open_explanations(None, str(tmp_path)) is None
    assert open_explanations(None, None) is None
    Explanations(tmp_path / "explanations.sqlite")
    found = open_explanations(None, str(tmp_path))
    assert found is not None and found.path == tmp_path / "explanations.sqlite"
    with pytest.raises(ExplanationError, match="no explanations database"):
        open_explanations(str(tmp_path / "missing.sqlite"), None)
    assert not (tmp_path / "missing.sqlite").exists()


def _pairs(table: Any) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in zip(table["layer"], table["feature"], strict=True)]


def test_browse_finds_features_by_their_explanations(
    ctx: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import live_feature

    from explorer.app import browse

    plain = browse.features(ctx, "all", "", hide_dense=False)
    assert "explanation" not in plain.columns  # no explanations file: no column
    f1, f2 = live_feature(ctx, 1), live_feature(ctx, 2)
    db = Explanations(tmp_path / "e.sqlite")
    ctx.explanations = db
    hostile = "<b>Towns</b> in Minnesota & Wisconsin"
    db.add(
        [
            NewExplanation(layer=1, feature=f1, text="weekdays", source="llm", method="m",
                           model="x", score=0.9),
            NewExplanation(layer=1, feature=f1, text="minnesota, once", source="llm",
                           method="m", model="x", score=0.2),  # found, but not the best
            NewExplanation(layer=2, feature=f2, text=hostile, source="neuronpedia", method="np",
                           model="y"),
            NewExplanation(layer=7, feature=1, text="minnesota elsewhere", source="llm",
                           method="m", model="x"),  # a layer the store has not: ignored
        ]
    )  # fmt: skip
    hits = browse.features(ctx, "all", "Minnesota", hide_dense=False, hide_dead=False)
    assert set(_pairs(hits)) == {(1, f1), (2, f2)}
    shown = dict(zip(_pairs(hits), hits["explanation"], strict=True))
    assert shown[(1, f1)] == "weekdays"  # the column holds the best explanation
    assert shown[(2, f2)] == hostile  # verbatim: the table shows text
    assert list(hits.columns[:5]) == ["layer", "feature", "source", "label", "explanation"]
    # Explanation hits rank before plain top-token hits, labels before both, whatever the sort
    # (explanations and these labels are the residual SAEs' features').
    token = next(t for t in plain["top_tokens"] if len(t.split()[0].strip()) >= 3).split()[0]
    by_token = browse.features(ctx, "all", token, "n_fires", True, False, False, source="res")
    assert len(by_token) >= 2
    last = _pairs(by_token)[-1]
    db.add([NewExplanation(layer=last[0], feature=last[1], text=f"says {token}", source="llm",
                           method="m", model="x")])  # fmt: skip
    ranked = browse.features(ctx, "all", token, "n_fires", True, False, False, source="res")
    assert _pairs(ranked)[0] == last
    assert len(ranked) == len(by_token)
    ascending = browse.features(
        ctx, "all", "minnesota", "n_fires", False, False, False, source="res"
    )
    bottom = _pairs(ascending)[-1]
    ctx.labels.add(*bottom, "Minnesota, by a person")
    ranked = browse.features(ctx, "all", "minnesota", "n_fires", False, False, False, source="res")
    assert _pairs(ranked)[0] == bottom
    # A long explanation is cut short in the table, at a word.
    db.add([NewExplanation(layer=1, feature=f1, text="Minnesota " + "lakes and rivers " * 20,
                           source="llm", method="m", model="x", score=0.95)])  # fmt: skip
    long = browse.features(ctx, "all", "minnesota", hide_dense=False, hide_dead=False)
    cut = dict(zip(_pairs(long), long["explanation"], strict=True))[(1, f1)]
    assert len(cut) <= browse.EXPLANATION_CHARS and cut.endswith(" rivers …")
    assert cut.startswith("Minnesota lakes and rivers lakes")
    # A search that takes only the first explanations that match says so in the caption.
    assert browse.select(ctx, "all", "minnesota", hide_dense=False).partial == ""
    monkeypatch.setattr(browse, "EXPLANATION_HITS", 1)
    first = browse.select(ctx, "all", "minnesota", hide_dense=False)
    assert first.partial == "only the first 1 of 4 matching explanations searched"
    assert "; only the first 1 of 4 matching explanations searched: refine the search; " in (
        browse.page_caption(*first[1:])
    )
    monkeypatch.undo()
    # An unreadable explanations file leaves the rest of the search working.
    db.path.write_bytes(b"not a database, any more")
    left = browse.features(ctx, "all", "minnesota", hide_dense=False, hide_dead=False)
    assert _pairs(left) == [bottom]
    assert left["explanation"].tolist() == [""]
    from explorer.app import dashboard

    assert dashboard.explanation_line(ctx, 1, f1) == ""  # the dashboard still opens


def test_best_many_reads_a_page_of_features_in_chunks(tmp_path: Path) -> None:
    from explorer.explanations import db as xdb

    db = Explanations(tmp_path / "e.sqlite")
    db.add([_row(f, f"feature {f}", 0.5) for f in range(0, 900, 2)])
    db.add([_row(4, "better", 0.9), _row(6, "unscored", None)])
    best = db.best_many((3, f) for f in range(900))
    assert len(best) == 450 > xdb.PAIRS_PER_QUERY
    assert best[(3, 4)].text == "better" and best[(3, 6)].text == "feature 6"
    assert (3, 5) not in best and db.best_many([]) == {}
    assert all(best[(3, f)] == db.best(3, f) for f in range(0, 900, 2))
