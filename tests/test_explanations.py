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
