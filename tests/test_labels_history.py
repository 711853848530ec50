"""Label history beyond adding: retractions (of a row or a whole import) that keep the history,
duplicates by content, the migration of a schema-1 file, and ranked FTS5 search that any text is
safe to type into."""

from __future__ import annotations

import json
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from explorer.labels import RETRACTION_COLUMNS, SCHEMA_VERSION, Label, LabelError, Labels

WIDTHS = {3: 16, 9: 4096}
HEADER = "layer,feature,label,notes,confidence,labeller"


@pytest.fixture
def labels(tmp_path: Path) -> Labels:
    return Labels(tmp_path / "labels.db", scope="default", widths=WIDTHS)


def _every_row(labels: Labels) -> list[Label]:
    """The scope's whole history, oldest first (through the export, then history())."""
    keys = {(r["layer"], r["feature"]) for r in json.loads(labels.export_json())}
    rows = [row for key in keys for row in labels.history(*key)]
    return sorted(rows, key=lambda row: row.id)


def test_sqlite_has_fts5_and_trigram() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize='trigram')")
    conn.close()


# -- retraction -----------------------------------------------------------------------------------


def test_retracting_a_label_brings_back_the_previous_one(labels: Labels) -> None:
    first = labels.add(9, 12, "French words", labeller="ana")
    second = labels.add(9, 12, "spam spam", labeller="troll")
    only = labels.add(9, 13, "vandalism")
    kept = labels.add(9, 14, "dates")

    retracted = labels.retract(second.id, by="mod", reason="spam\nobviously")
    assert retracted.retracted and retracted.id == second.id
    assert (retracted.retracted_by, retracted.retract_reason) == ("mod", "spam\nobviously")
    assert (retracted.label, retracted.created_at) == (second.label, second.created_at)
    assert labels.current(9, 12) == first
    assert labels.history(9, 12) == [retracted, first]  # nothing is gone
    assert not first.retracted and first.retracted_at is None

    labels.retract(only.id)
    assert labels.current(9, 13) is None
    assert labels.current_all() == {(9, 12): first, (9, 14): kept}
    assert labels.current_all(9) == {(9, 12): first, (9, 14): kept}
    assert labels.search("spam") == [] and labels.search("vandal") == []
    assert labels.search("French") == [first]
    assert labels.count() == 4  # rows of history, retracted ones included

    again = labels.add(9, 13, "vandalism")  # a new row with the same text is a new label
    assert labels.current(9, 13) == again


def test_retract_refuses_what_it_cannot_retract(tmp_path: Path, labels: Labels) -> None:
    row = labels.add(9, 1, "x")
    other = Labels(labels.path, "other scope").add(9, 1, "y")
    labels.retract(row.id)
    with pytest.raises(LabelError, match="already retracted"):
        labels.retract(row.id)
    with pytest.raises(LabelError, match="there is no label 999"):
        labels.retract(999)
    with pytest.raises(LabelError, match=f"there is no label {other.id}"):
        labels.retract(other.id)  # another scope's row is invisible here
    with pytest.raises(LabelError, match="label id must be a whole number"):
        labels.retract("abc")  # type: ignore[arg-type]
    with pytest.raises(LabelError, match="limit is 100"):
        labels.retract(other.id, by="x" * 101)
    assert Labels(labels.path, "other scope").current(9, 1) == other


def test_retractions_are_append_only(labels: Labels) -> None:
    labels.retract(labels.add(9, 1, "x").id)
    conn = sqlite3.connect(labels.path)
    try:
        for statement in [
            "UPDATE retractions SET reason = 'y'",
            "DELETE FROM retractions",
            "UPDATE labels SET label = 'y'",
            "DELETE FROM labels",
        ]:
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute(statement)
    finally:
        conn.close()
    assert labels.history(9, 1)[0].retracted


def test_an_import_is_a_batch_that_can_be_retracted(labels: Labels) -> None:
    before = labels.add(9, 1, "mine")
    report = labels.import_text(f"{HEADER}\n9,1,theirs,,,\n9,2,new,,,\n9,2,newer,,,\n", "csv")
    assert report.added == 3 and report.batch is not None
    assert {row.batch for row in labels.history(9, 2)} == {report.batch}
    assert labels.current(9, 1).label == "theirs"  # type: ignore[union-attr]
    assert labels.batches() == [(report.batch, 3, 0)]

    assert labels.retract_batch(report.batch, by="owner", reason="bad upload") == 3
    assert labels.current(9, 1) == before
    assert labels.current(9, 2) is None
    assert labels.current_all() == {(9, 1): before}
    assert [row.label for row in labels.history(9, 2)] == ["newer", "new"]
    assert all(row.retracted_by == "owner" for row in labels.history(9, 2))
    assert labels.batches() == [(report.batch, 3, 3)]
    assert labels.retract_batch(report.batch) == 0  # nothing left to retract
    with pytest.raises(LabelError, match="came from import"):
        labels.retract_batch("20260101T000000Z-00000000")
    with pytest.raises(LabelError, match="batch id is needed"):
        labels.retract_batch(" ")

    nothing = labels.import_text(f"{HEADER}\n9,1,mine,,,\n", "csv")  # a duplicate of `before`
    assert (nothing.added, nothing.duplicates, nothing.batch) == (0, 1, None)


def test_retractions_survive_export_and_import_exactly(tmp_path: Path, labels: Labels) -> None:
    a = labels.add(9, 1, "=kept", notes="line\nline")
    b = labels.add(9, 1, "+retracted")
    labels.add(3, 0, "other")
    labels.retract(b.id, by="@mod", reason="-why\n=because")
    with pytest.raises(AssertionError):
        assert not labels.history(9, 1)[0].retracted

    csv_text = labels.export_csv()
    assert csv_text.splitlines()[0].split(",")[-3:] == list(RETRACTION_COLUMNS)
    rows = json.loads(labels.export_json())
    assert [set(RETRACTION_COLUMNS) <= set(row) for row in rows] == [False, True, False]
    assert rows[1]["retracted_by"] == "@mod"  # JSON as it is

    for fmt, text in [("csv", csv_text), ("json", labels.export_json())]:
        fresh = Labels(tmp_path / f"{fmt}.db", "default")
        report = fresh.import_text(text, fmt)
        assert (report.added, report.errors) == (3, [])
        assert _every_row(fresh) == _every_row(labels)
        assert fresh.current(9, 1) == a
        assert fresh.export_csv() == csv_text
        assert fresh.import_text(text, fmt).added == 0


def test_an_import_never_retracts_a_row_it_did_not_add(tmp_path: Path, labels: Labels) -> None:
    row = labels.add(9, 1, "x")
    copy = Labels(tmp_path / "copy.db", "default")
    copy.import_text(labels.export_csv(), "csv")
    copy.retract(copy.current(9, 1).id)  # type: ignore[union-attr]
    report = labels.import_text(copy.export_csv(), "csv")  # the retracted copy of `row`
    assert (report.added, report.duplicates) == (0, 1)
    assert labels.current(9, 1) == row


def test_imported_retractions_are_checked(labels: Labels) -> None:
    text = (
        "layer,feature,label,retracted_at,retracted_by,retract_reason\n"
        "9,1,a,yesterday,,\n"
        "9,2,b,2026-01-02T03:04:05+01:00,me,why\n"
        f"9,3,c,2026-01-02T03:04:05Z,{'x' * 101},\n"
        "9,4,d,,ignored without a time,\n"
    )
    report = labels.import_text(text, "csv")
    assert (report.added, report.skipped) == (2, 2)
    assert report.errors[0].startswith("row 2: retracted_at must be an ISO-8601 time")
    assert report.errors[1].startswith("row 4: retracted_by is 101 characters")
    b = labels.history(9, 2)[0]
    assert (b.retracted_at, b.retracted_by, b.retract_reason) == (
        "2026-01-02T02:04:05Z",
        "me",
        "why",
    )
    assert labels.current(9, 2) is None and labels.current(9, 4) is not None


# -- duplicates by content ------------------------------------------------------------------------


def test_a_hand_made_file_imported_twice_adds_nothing(tmp_path: Path, labels: Labels) -> None:
    path = tmp_path / "mine.csv"
    path.write_text(
        f'{HEADER}\n9,1,French,nouns,high,ana\n9,2,dates,,,\n9,2,dates,,,\n3,0,x,"multi\nline",,\n',
        encoding="utf-8",
    )
    first = labels.import_file(path)
    assert (first.added, first.duplicates) == (3, 1)
    second = labels.import_file(path)
    assert (second.added, second.duplicates, second.batch) == (0, 4, None)
    json_text = json.dumps([{"layer": 9, "feature": 2, "label": "dates"}])
    assert labels.import_text(json_text, "json").duplicates == 1
    assert labels.count() == 3


def test_duplicates_by_content_ignore_time_but_not_content(labels: Labels) -> None:
    labels.add(9, 1, "x", notes="n", confidence="low", labeller="ana")
    text = (
        f"{HEADER}\n"
        "9,1,x,n,low,ana\n"  # same content, no time: a duplicate whatever the time
        "9,1,x,n,LOW, ana \n"  # the same after cleaning
        "9,1,x,n2,low,ana\n"  # other notes
        "9,1,x,n,high,ana\n"  # other confidence
        "9,1,x,n,low,bob\n"  # other labeller
        "9,2,x,n,low,ana\n"  # other feature
    )
    report = labels.import_text(text, "csv")
    assert (report.added, report.duplicates) == (4, 2)
    timed = labels.import_text(
        f"{HEADER},created_at\n9,1,x,n,low,ana,2020-01-01T00:00:00Z\n", "csv"
    )
    assert timed.added == 1  # with a time, the time is part of the key


def test_a_retracted_import_can_be_imported_again(labels: Labels) -> None:
    text = f"{HEADER}\n9,1,a,,,\n9,2,b,,,\n"
    report = labels.import_text(text, "csv")
    assert report.batch is not None
    labels.retract_batch(report.batch)
    again = labels.import_text(text, "csv")
    assert (again.added, again.duplicates) == (2, 0)
    assert {k: v.label for k, v in labels.current_all().items()} == {(9, 1): "a", (9, 2): "b"}
    assert labels.import_text(text, "csv").added == 0


# -- schema 1 files -------------------------------------------------------------------------------

# Schema 1 as the first release of the label database created it.
SCHEMA_1 = [
    """CREATE TABLE labels (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        scope TEXT NOT NULL,
        layer INTEGER NOT NULL,
        feature INTEGER NOT NULL,
        label TEXT NOT NULL,
        notes TEXT NOT NULL,
        confidence TEXT NOT NULL CHECK (confidence IN ('low', 'medium', 'high')),
        labeller TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    "CREATE INDEX labels_by_feature ON labels (scope, layer, feature, id)",
    """CREATE TRIGGER labels_no_update BEFORE UPDATE ON labels
        BEGIN SELECT RAISE(ABORT, 'label history is append-only'); END""",
    """CREATE TRIGGER labels_no_delete BEFORE DELETE ON labels
        BEGIN SELECT RAISE(ABORT, 'label history is append-only'); END""",
]
V1_ROWS = [
    ("default", 9, 12, "French words", "nouns\n'quoted'", "medium", "ana", "2026-01-01T00:00:00Z"),
    ("default", 9, 12, "French and Italian", "", "high", "", "2026-01-02T00:00:00.5Z"),
    ("other", 9, 12, "brackets", "", "low", "bob", "2026-01-03T00:00:00Z"),
    ("default", 3, 0, "=1+2 🧠", "Äpfel", "low", "b, c", "2026-01-04T00:00:00Z"),
]


def _write_v1(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN IMMEDIATE")
    for statement in SCHEMA_1:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.executemany(
        "INSERT INTO labels (scope, layer, feature, label, notes, confidence, labeller, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        V1_ROWS,
    )
    conn.execute("COMMIT")
    conn.close()


def test_a_schema_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _write_v1(path)
    labels = Labels(path, "default", widths=WIDTHS)

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.execute("INSERT INTO labels_fts (labels_fts) VALUES ('integrity-check')")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE labels SET label = 'y'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM labels")
        assert (
            conn.execute("SELECT COUNT(*) FROM labels WHERE content_hash IS NULL").fetchone()[0]
            == 0
        )
    finally:
        conn.close()

    want = [Label(i, *row) for i, row in enumerate(V1_ROWS, start=1) if row[0] == "default"]
    assert _every_row(labels) == want  # ids, text and times as they were
    assert labels.current(9, 12) == want[1]
    assert [row.label for row in labels.search("french")] == ["French and Italian"]
    assert labels.search("äpfel") == [want[2]]  # the old rows are in the search index
    assert Labels(path, "other").current(9, 12).label == "brackets"  # type: ignore[union-attr]
    dup = labels.import_text(f"{HEADER}\n9,12,French words,\"nouns\n'quoted'\",,ana\n", "csv")
    assert (dup.added, dup.duplicates) == (0, 1)  # old rows have their content hash
    new = labels.add(9, 12, "Romance")
    assert new.id == 5
    labels.retract(new.id)
    assert labels.current(9, 12) == want[1]
    Labels(path, "default")  # opening again changes nothing
    assert _every_row(labels) == [*want, labels.history(9, 12)[0]]


def test_many_openers_of_a_schema_1_file_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _write_v1(path)
    start = threading.Barrier(6)

    def open_it(_: int) -> int:
        start.wait()
        return Labels(path, "default").count()

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert list(pool.map(open_it, range(6))) == [3] * 6
    conn = sqlite3.connect(path)
    try:
        assert (
            conn.execute(
                "SELECT COUNT(*) FROM labels_fts WHERE labels_fts MATCH 'French'"
            ).fetchone()[0]
            == 2
        )
    finally:
        conn.close()


# -- search ---------------------------------------------------------------------------------------


def test_search_is_ranked_by_bm25_over_current_labels(labels: Labels) -> None:
    notes_only = labels.add(9, 1, "birds", notes="the cat chased them")
    in_label = labels.add(9, 2, "cat")
    long_label = labels.add(9, 3, "a cat among many other words in a long label")
    labels.add(9, 4, "cat food")
    labels.add(9, 4, "dog food")  # replaces "cat food"
    got = labels.search("cat")
    assert got[0] == in_label
    assert set(got) == {notes_only, in_label, long_label}
    assert got.index(long_label) < got.index(notes_only)  # a label match weighs more
    assert labels.search("CAT", limit=1) == [in_label]
    assert labels.search("food") == [labels.current(9, 4)]


def test_search_words_all_match_as_substrings(labels: Labels) -> None:
    a = labels.add(9, 1, "French words", notes="mostly nouns")
    b = labels.add(9, 2, "words of French origin")
    labels.add(9, 3, "French")
    assert set(labels.search("words french")) == {a, b}  # any order, any place
    assert labels.search("French nouns") == [a]  # across label and notes
    assert set(labels.search("ench wor")) == {a, b}  # inside words too
    assert labels.search("rds ou") == [a]  # "ou" (short) is only in a's notes
    assert labels.search("no") == [a]  # short words only: a scan, newest first
    assert labels.search("zz") == []


def test_search_folds_case_in_any_script(labels: Labels) -> None:
    greek = labels.add(9, 1, "ΣΊΣΥΦΟΣ")
    german = labels.add(9, 2, "Äpfel")
    cjk = labels.add(9, 3, "日本語のテキスト")
    assert labels.search("σίσυφος") == [greek]
    assert labels.search("äPFEL") == [german]
    assert labels.search("テキスト") == [cjk]
    assert labels.search("本語") == [cjk]  # two characters: the scan


NASTY_QUERIES = [
    '"',
    '""',
    '"""',
    "*",
    "a*",
    "*a",
    "NEAR",
    "NEAR(a b)",
    "NEAR(a b, 2)",
    "(",
    ")",
    "()",
    "a OR b",
    "AND",
    "NOT x",
    "x NOT",
    '"unterminated',
    "label:x",
    "notes : x",
    "{label notes}:x",
    "^x",
    "-x",
    "+",
    "x + y",
    "'",
    "\\",
    "%",
    "_",
    "\ud800",
    "x\udfffy",
    "\ud83e",
    "\x00x\x00",
    "\u200b",
    "🧠",
    "e\u0301",
    "a" * 4000,
    ".*",
    "[a-z]",
    "%_%",
    "';--",
    "rank MATCH 'x'",
]


@pytest.mark.parametrize("query", NASTY_QUERIES, ids=[repr(q[:12]) for q in NASTY_QUERIES])
def test_any_text_is_a_literal_query(labels: Labels, query: str) -> None:
    labels.add(9, 1, "plain")
    clean = query.replace("\x00", "").encode("utf-8", "ignore").decode("utf-8", "ignore")
    if clean.strip():
        target = labels.add(9, 2, f"before {clean[:150]} after", notes=clean)
        got = labels.search(query)
        assert target in got
    else:
        assert isinstance(labels.search(query), list)


def test_search_text_too_long_is_a_label_error(labels: Labels) -> None:
    with pytest.raises(LabelError, match="search text is 4001 characters"):
        labels.search("a" * 4001)
    with pytest.raises(ValueError, match="limit must be a positive int"):
        labels.search("a", limit=0)


def test_search_is_literal(labels: Labels) -> None:
    star = labels.add(9, 1, "x*y and NEAR(a b)")
    labels.add(9, 2, "xzy and NEAR a b")
    quote = labels.add(9, 3, 'say "hello" world')
    assert labels.search("x*y") == [star]
    assert labels.search("NEAR(a") == [star]
    assert labels.search('"hello"') == [quote]
    assert labels.search('"hello" world') == [quote]
    assert labels.search('say "hello') == [quote]


def test_the_index_follows_every_write(tmp_path: Path, labels: Labels) -> None:
    row = labels.add(9, 1, "fresh words")
    assert labels.search("fresh") == [row]
    report = labels.import_text(f"{HEADER}\n9,2,imported words,,,\n", "csv")
    assert [r.label for r in labels.search("imported")] == ["imported words"]
    assert report.batch is not None
    labels.retract_batch(report.batch)
    assert labels.search("imported") == []
    conn = sqlite3.connect(labels.path)
    try:
        conn.execute("INSERT INTO labels_fts (labels_fts) VALUES ('integrity-check')")
    finally:
        conn.close()


# -- the command line -----------------------------------------------------------------------------


def test_the_command_line_backs_up_restores_and_retracts(
    tmp_path: Path, labels: Labels, capsys: pytest.CaptureFixture[str]
) -> None:
    from explorer.labels.__main__ import main

    labels.add(9, 1, "=one")
    gone = labels.add(9, 2, "two")
    db, backup = str(labels.path), str(tmp_path / "backup.csv")
    assert main(["retract", db, "--scope", "default", str(gone.id), "--by", "me"]) == 0
    assert main(["export", db, "--scope", "default", backup]) == 0
    assert "wrote 2 rows" in capsys.readouterr().out

    restored = str(tmp_path / "restored.db")
    assert main(["import", restored, "--scope", "default", backup]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Added 2 labels;") and "Batch: " in out
    assert _every_row(Labels(restored, "default")) == _every_row(labels)

    assert main(["batches", restored, "--scope", "default"]) == 0
    batch, rows, retracted = capsys.readouterr().out.split("\t")
    assert (rows, retracted.strip()) == ("2 rows", "1 retracted")
    assert main(["retract-batch", restored, "--scope", "default", batch, "--reason", "x"]) == 0
    assert "retracted 1 row of" in capsys.readouterr().out
    assert Labels(restored, "default").current_all() == {}

    assert main(["retract", restored, "--scope", "default", "999"]) == 1
    assert "error: there is no label 999" in capsys.readouterr().err
