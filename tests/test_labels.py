"""Feature labels: append-only history per scope, validation, verbatim Unicode, exact export/import
round trips, malformed imports reported, foreign files left alone, safe from many threads and
durable when the writing process is killed."""

from __future__ import annotations

import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from explorer.labels import (
    MAX_REPORTED_ERRORS,
    SCHEMA_VERSION,
    ImportReport,
    Label,
    LabelError,
    Labels,
)

REPO = Path(__file__).parents[1]
WIDTHS = {3: 16, 9: 4096}


@pytest.fixture
def labels(tmp_path: Path) -> Labels:
    return Labels(tmp_path / "labels.db", scope="default", widths=WIDTHS)


def _all_history(labels: Labels) -> list[Label]:
    """Every row of the scope, oldest first, gathered feature by feature (independent of export)."""
    rows = [row for key in labels.current_all() for row in labels.history(*key)]
    return sorted(rows, key=lambda row: row.id)


def _text_of(labels: Labels, layer: int, feature: int) -> str | None:
    """The current label's text, or None."""
    row = labels.current(layer, feature)
    return None if row is None else row.label


# -- adding and reading ---------------------------------------------------------------------------


def test_add_appends_and_current_is_newest(labels: Labels) -> None:
    first = labels.add(9, 12, "French words", notes="mostly nouns", labeller="ana")
    second = labels.add(9, 12, "French and Italian words", confidence="high")
    other = labels.add(9, 13, "dates")
    third = labels.add("9", " 12 ", "Romance languages", confidence="low")

    assert first.id < second.id < other.id < third.id
    assert (third.layer, third.feature) == (9, 12)  # digit strings are accepted as numbers
    assert labels.current(9, 12) == third
    assert labels.history(9, 12) == [third, second, first]  # newest first, nothing overwritten
    assert labels.history(9, 12)[-1].notes == "mostly nouns"
    assert labels.current(9, 13) == other
    assert labels.current(9, 14) is None and labels.history(9, 14) == []
    assert labels.count() == 4
    assert first.confidence == "medium" and first.labeller == "ana" and first.scope == "default"
    moment = datetime.fromisoformat(first.created_at)
    assert first.created_at.endswith("Z") and moment.tzinfo is not None
    assert abs(datetime.now(UTC) - moment) < timedelta(minutes=5)


def test_scopes_in_one_file_are_isolated(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "labels.db"  # the parent folders are created
    a = Labels(path, "default")
    b = Labels(path, "gemma-2-2b")
    a.add(9, 12, "French words")
    b.add(9, 12, "closing brackets")
    b.add(9, 12, "closing brackets and braces")

    assert _text_of(a, 9, 12) == "French words"
    assert [row.label for row in b.history(9, 12)] == [
        "closing brackets and braces",
        "closing brackets",
    ]
    assert (a.count(), b.count()) == (1, 2)
    assert [row.scope for row in a.current_all().values()] == ["default"]
    assert a.search("brackets") == [] and len(b.search("brackets")) == 1
    assert "closing" not in a.export_csv() and "French" not in b.export_json()
    assert Labels(path, "third").count() == 0


def test_current_all_agrees_with_current(labels: Labels) -> None:
    for layer, feature, text in [
        (3, 0, "a"),
        (9, 5, "b"),
        (3, 0, "c"),
        (9, 7, "d"),
        (9, 5, "e"),
        (3, 15, "f"),
    ]:
        labels.add(layer, feature, text)

    everything = labels.current_all()
    assert {key: row.label for key, row in everything.items()} == {
        (3, 0): "c",
        (3, 15): "f",
        (9, 5): "e",
        (9, 7): "d",
    }
    assert all(labels.current(*key) == row for key, row in everything.items())
    assert labels.current_all(layer=9) == {k: v for k, v in everything.items() if k[0] == 9}
    assert labels.current_all(layer=4) == {}


def test_search_is_case_insensitive_literal_and_over_current_labels(labels: Labels) -> None:
    labels.add(9, 1, "French words", notes="mentions Paris")
    labels.add(9, 2, "100% sure")
    labels.add(9, 3, "snake_case names")
    labels.add(9, 4, "Äpfel und Birnen")
    labels.add(9, 5, "old banana")
    labels.add(9, 5, "fruit")  # replaces "old banana"
    labels.add(9, 6, "snakes")

    def found(text: str, limit: int = 100) -> list[str]:
        return [row.label for row in labels.search(text, limit)]

    assert found("FRENCH") == ["French words"]
    assert found("paris") == ["French words"]  # notes are searched too
    assert found("%") == ["100% sure"]  # % is literal, not a wildcard
    assert found("e_c") == ["snake_case names"]  # _ is literal
    assert found("äPFEL") == ["Äpfel und Birnen"]  # Unicode case folding, not just ASCII
    assert found("banana") == []  # only current labels
    assert found("snake") == ["snakes", "snake_case names"]  # newest first
    assert found("snake", limit=1) == ["snakes"]
    assert len(found("")) == 6


# -- validation -----------------------------------------------------------------------------------

BAD_ADDS: list[tuple[dict[str, Any], str]] = [
    ({"feature": -1}, "0 or more"),
    ({"feature": 4096}, "past layer 9's width (4096)"),
    ({"layer": 7}, "the layers are 3, 9"),
    ({"layer": True}, "whole number"),
    ({"feature": False}, "whole number"),
    ({"feature": "abc"}, "whole number"),
    ({"feature": "-3"}, "0 or more"),
    ({"feature": "+3a"}, "whole number"),
    ({"feature": "1e3"}, "whole number"),
    ({"feature": 12.0}, "whole number"),
    ({"feature": None}, "whole number"),
    ({"label": ""}, "label is empty"),
    ({"label": " \n\t\x00 "}, "label is empty"),
    ({"label": "x" * 201}, "201 characters long; the limit is 200"),
    ({"label": 42}, "label must be text"),
    ({"label": "bad \ud800 surrogate"}, "invalid Unicode"),
    ({"notes": "x" * 4001}, "limit is 4000"),
    ({"labeller": "x" * 101}, "limit is 100"),
    ({"confidence": "very"}, "low, medium or high"),
    ({"confidence": 3}, "low, medium or high"),
]


@pytest.mark.parametrize(("change", "message"), BAD_ADDS, ids=[m for _, m in BAD_ADDS])
def test_add_rejects_bad_input(labels: Labels, change: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"layer": 9, "feature": 12, "label": "fine", **change}
    with pytest.raises(LabelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        labels.add(**args)
    assert labels.count() == 0


def test_widths_bound_writes_but_not_reads(tmp_path: Path) -> None:
    path = tmp_path / "labels.db"
    Labels(path, "default").add(9, 9000, "from a wider SAE")  # no widths: any feature is fine
    narrow = Labels(path, "default", widths={9: 4096})
    assert narrow.add(9, 4095, "last feature").feature == 4095
    assert narrow.current(9, 9000) is not None  # old labels stay readable
    with pytest.raises(LabelError, match="past layer 9's width"):
        narrow.add(9, 9000, "again")
    assert isinstance(LabelError("x"), ValueError)


HOSTILE = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)"> & &amp;',
    "🧠 neurons 👩‍🔬🏳️‍🌈",
    "שלום עולם \u202eevil\u202c مرحبا",
    "e\u0301 a\u0308 Z\u0335\u0321\u0354a\u0336lgo",
    "'; DROP TABLE labels; --",
    '=HYPERLINK("http://x","y"), "quoted", semi;colon',
    "\u200bzero\u200dwidth\ufeff",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_round_trips_verbatim(tmp_path: Path, labels: Labels, text: str) -> None:
    added = labels.add(9, 1, text, notes=f"{text}\n{text}", labeller=text[:100])
    assert (added.label, added.notes, added.labeller) == (text, f"{text}\n{text}", text[:100])
    assert labels.current(9, 1) == added
    assert labels.search(text[:5]) == [added]
    for fmt, exported in [("csv", labels.export_csv()), ("json", labels.export_json())]:
        fresh = Labels(tmp_path / f"fresh-{fmt}.db", "default")
        assert fresh.import_text(exported, fmt).added == 1
        assert fresh.current(9, 1) == added


def test_control_characters_are_removed(labels: Labels) -> None:
    added = labels.add(
        9,
        1,
        "  a\nb\tc\x00d\x1b[31m\r\n\x7fe\x85f  ",
        notes="line 1\r\nline 2\ttabbed\x00\x07\rline 3",
        labeller="bob\nsmith",
    )
    assert added.label == "a b c d [31m e f"
    assert added.notes == "line 1\nline 2\ttabbed\nline 3"
    assert added.labeller == "bob smith"
    assert labels.current(9, 1) == added


# -- export and import ----------------------------------------------------------------------------


def _fill(labels: Labels) -> None:
    labels.add(9, 12, "French words", notes="nouns, mostly\n\"quoted\" and 'single'", labeller="a")
    labels.add(9, 12, "French and Italian", confidence="high")
    labels.add(3, 0, "<b>bold</b> 🧠", notes="=1+2", confidence="low", labeller="b, c")
    labels.add(9, 12, "Romance languages")
    labels.add(3, 15, "  spaced  ")


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_import_round_trip_and_idempotence(tmp_path: Path, labels: Labels, fmt: str) -> None:
    _fill(labels)
    exported = labels.export_csv() if fmt == "csv" else labels.export_json()

    fresh = Labels(tmp_path / "fresh.db", "default", widths=WIDTHS)
    assert fresh.import_text(exported, fmt) == ImportReport(added=5, duplicates=0)
    assert _all_history(fresh) == _all_history(labels)  # ids, times and text identical
    assert fresh.export_csv() == labels.export_csv()
    assert fresh.export_json() == labels.export_json()

    again = fresh.import_text(exported, fmt)
    assert (again.added, again.duplicates, again.skipped) == (0, 5, 0)
    assert labels.import_text(exported, fmt).added == 0  # into its own source, too
    assert fresh.count() == labels.count() == 5


def test_export_columns_and_order(labels: Labels) -> None:
    _fill(labels)
    rows = json.loads(labels.export_json())
    assert list(rows[0]) == [
        "scope",
        "layer",
        "feature",
        "label",
        "notes",
        "confidence",
        "labeller",
        "created_at",
    ]
    assert [row["label"] for row in rows] == [
        "French words",
        "French and Italian",
        "<b>bold</b> 🧠",
        "Romance languages",
        "spaced",
    ]
    assert labels.export_csv().startswith(
        "scope,layer,feature,label,notes,confidence,labeller,created_at\r\n"
    )


def test_import_file(tmp_path: Path, labels: Labels) -> None:
    good = tmp_path / "mine.CSV"
    good.write_text("layer,feature,label\n9,1,café\n", encoding="utf-8-sig")  # Excel's BOM
    assert labels.import_file(good).added == 1
    assert _text_of(labels, 9, 1) == "café"

    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("layer,feature,label\n9,2,café\n".encode("latin-1"))
    with pytest.raises(LabelError, match=r"latin1\.csv is not UTF-8"):
        labels.import_file(latin1)
    with pytest.raises(LabelError, match=r"notes\.txt is neither"):
        labels.import_file(tmp_path / "notes.txt")
    with pytest.raises(LabelError, match=r"cannot read missing\.json"):
        labels.import_file(tmp_path / "missing.json")
    big = tmp_path / "big.json"
    with big.open("wb") as f:
        f.truncate(10 * 2**20 + 1)  # sparse: the size is checked before reading
    with pytest.raises(LabelError, match="limit is 10 MB"):
        labels.import_file(big)
    assert labels.count() == 1


HEADER = "layer,feature,label"
TIME = "2026-01-02T03:04:05Z"
# (format, text, expected): expected is a LabelError message, or (added, duplicates, skipped,
# fragments that must each appear in the report's errors, in order).
BAD_IMPORTS: list[tuple[str, str, str | tuple[int, int, int, list[str]]]] = [
    ("csv", "layer,label\n9,x\n", "no feature column"),
    ("csv", "", "the CSV is empty"),
    ("csv", "layer,feature,label,Label\n9,1,x,y\n", "repeats 'label'"),
    ("csv", f"{HEADER}\n9,abc,x\n9,1,ok\n", (1, 0, 1, ["row 2: feature must be a whole number"])),
    ("csv", f"{HEADER}\n9,1,ok\n\n9,99999,x\n", (1, 0, 1, ["row 4: feature 99999 is past layer"])),
    ("csv", f"{HEADER}\n7,1,x\n", (0, 0, 1, ["row 2: layer 7 has no SAE here"])),
    ("csv", f"{HEADER}\n9,1,\n", (0, 0, 1, ["row 2: label is missing"])),
    ("csv", f"{HEADER}\n9,1,x,surplus\n", (0, 0, 1, ["row 2: it has more cells"])),
    ("csv", f"{HEADER}\n9,1,x,\n", (1, 0, 0, [])),  # a trailing empty cell is fine
    ("csv", f"{HEADER},colour\n9,1,x,red\n", (1, 0, 0, ["ignored unknown columns: 'colour'"])),
    ("csv", f"{HEADER},confidence\n9,1,x,sure\n", (0, 0, 1, ["row 2: confidence must be"])),
    (
        "csv",
        f"scope,{HEADER}\nother,9,1,x\ndefault,9,2,y\n,9,3,z\n",
        (2, 0, 1, ["row 2: scope 'other' is not this label set's scope 'default'"]),
    ),
    (
        "csv",
        f"{HEADER},created_at\n9,1,x,{TIME}\n9,1,x,{TIME}\n9,1,x,2026-01-02T04:04:05+01:00\n",
        (1, 2, 0, []),  # the same instant in another zone is the same row
    ),
    ("csv", f"{HEADER}\n9,1,x\n9,1,x\n9,1,y\n", (2, 1, 0, [])),  # no time: same content
    ("json", '[{"layer": 9, "feature": 1, "label": "x"', "the JSON is malformed"),
    ("json", '{"layer": 9, "feature": 1, "label": "x"}', "must be a list of objects"),
    ("json", "[1, 2]", "item 1 is not one"),
    ("json", '[{"layer": 9, "label": "x"}]', "no feature column"),
    ("json", "[]", (0, 0, 0, [])),
    (
        "json",
        json.dumps(
            [
                {"layer": 9, "feature": True, "label": "x"},
                {"layer": 9, "feature": 1.5, "label": "x"},
                {"layer": 9, "feature": 2, "label": 3},
                {"layer": 9, "feature": 3},
                {"layer": "9", "feature": "4", "label": "ok", "notes": None},
            ]
        ),
        (
            1,
            0,
            4,
            [
                "row 1: feature must be a whole number, not True",
                "row 2: feature must be a whole number, not 1.5",
                "row 3: label must be text",
                "row 4: label is missing",
            ],
        ),
    ),
    (
        "json",
        json.dumps([{"layer": 9, "feature": 1, "label": "x", "created_at": TIME, "scope": "s2"}]),
        (0, 0, 1, ["row 1: scope 's2' is not"]),
    ),
    (
        "json",
        json.dumps([{"layer": 9, "feature": 1, "label": "x", "created_at": TIME}] * 3),
        (1, 2, 0, []),
    ),
    ("xml", "<labels/>", "format must be csv or json"),
    ("csv", "x" * (10 * 2**20 + 1), "larger than 10 MB"),
    ("json", "[" + "0," * (5 * 2**20) + "0]", "larger than 10 MB"),
    ("csv", HEADER + "\n" + "9,1,x\n" * 100_001, "more than 100,000 rows"),
    ("json", json.dumps([{}] * 100_001), "more than 100,000 rows"),
]


@pytest.mark.parametrize(
    ("fmt", "text", "expected"),
    BAD_IMPORTS,
    ids=[f"{i}-{fmt}-{text[:20]!r}" for i, (fmt, text, _) in enumerate(BAD_IMPORTS)],
)
def test_malformed_imports(
    labels: Labels, fmt: str, text: str, expected: str | tuple[int, int, int, list[str]]
) -> None:
    if isinstance(expected, str):
        with pytest.raises(LabelError, match=expected):
            labels.import_text(text, fmt)
        assert labels.count() == 0
        return
    added, duplicates, skipped, fragments = expected
    report = labels.import_text(text, fmt)
    assert (report.added, report.duplicates, report.skipped) == (added, duplicates, skipped)
    assert len(report.errors) == len(fragments)
    for error, fragment in zip(report.errors, fragments, strict=True):
        assert error.startswith(fragment), (error, fragment)
    assert labels.count() == added


def test_import_times_are_kept_normalised_or_replaced(labels: Labels) -> None:
    text = (
        "layer,feature,label,created_at,confidence\n"
        "9,1,a,2026-01-02T03:04:05Z,HIGH\n"
        "9,2,b,2026-01-02T05:04:05.250000+02:00,\n"
        "9,3,c,2026-01-02 03:04,low\n"
        "9,4,d,yesterday,medium\n"
    )
    assert labels.import_text(text, "csv").added == 4
    got = {key[1]: row for key, row in labels.current_all().items()}
    assert (got[1].created_at, got[1].confidence) == ("2026-01-02T03:04:05Z", "high")
    assert (got[2].created_at, got[2].confidence) == ("2026-01-02T03:04:05.250000Z", "medium")
    assert got[3].created_at == "2026-01-02T03:04:00Z"  # no zone: taken as UTC
    now = datetime.now(UTC)
    assert abs(now - datetime.fromisoformat(got[4].created_at)) < timedelta(minutes=5)


def test_import_error_list_is_capped(labels: Labels) -> None:
    report = labels.import_text(HEADER + "\n" + "9,-1,x\n" * 50 + "9,1,ok\n", "csv")
    assert (report.added, report.skipped) == (1, 50)
    assert len(report.errors) == MAX_REPORTED_ERRORS + 1
    assert report.errors[0].startswith("row 2: feature must be 0 or more")
    assert report.errors[-1] == f"... and {50 - MAX_REPORTED_ERRORS} more"
    assert report.summary() == "Added 1 label; 0 duplicates, 50 rows with errors."


def test_import_inserts_all_valid_rows_or_none(tmp_path: Path, labels: Labels) -> None:
    # A trigger makes the database itself refuse the third row, after two were inserted.
    with sqlite3.connect(labels.path) as conn:
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON labels WHEN NEW.label = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
        )
    conn.close()
    with pytest.raises(LabelError, match="refused by test"):
        labels.import_text(f"{HEADER}\n9,1,a\n9,2,b\n9,3,boom\n9,4,d\n", "csv")
    assert labels.count() == 0
    assert labels.add(9, 1, "still writable").id > 0


# -- the database file ----------------------------------------------------------------------------


def _foreign_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE thesis (chapter TEXT)")
        conn.execute("INSERT INTO thesis VALUES ('one')")
    conn.close()


def _newer_labels(path: Path) -> None:
    Labels(path, "default").add(9, 1, "x")
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"My thesis, chapter one.\n" * 100), "is not a label database"),
        (lambda p: p.write_bytes(b"SQLite"), "is not a label database"),
        (lambda p: p.write_bytes(bytes(range(256)) * 8), "is not a label database"),
        (_foreign_sqlite, "SQLite database of something else"),
        (_newer_labels, "newer version of the explorer"),
    ],
    ids=["text", "short", "binary", "foreign-sqlite", "newer-schema"],
)
def test_foreign_file_is_refused_and_left_untouched(
    tmp_path: Path, make: Any, message: str
) -> None:
    path = tmp_path / "precious.db"
    make(path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(LabelError, match=message) as caught:
        Labels(path, "default")
    assert str(path) in str(caught.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_database_settings_and_append_only(labels: Labels) -> None:
    labels.add(9, 1, "x")
    with sqlite3.connect(labels.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE labels SET label = 'y'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM labels")
    conn.close()
    assert _text_of(labels, 9, 1) == "x"
    with labels._connect() as conn:  # per-connection settings: durability and patience
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000


# -- threads and crashes --------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [True, False], ids=["one-object", "object-per-thread"])
def test_many_threads_add_without_loss(tmp_path: Path, shared: bool) -> None:
    path = tmp_path / "labels.db"
    common = Labels(path, "default") if shared else None
    start = threading.Barrier(8)

    def worker(t: int) -> list[Label]:
        start.wait()
        # Separate objects open the fresh file at the same moment: schema creation races too.
        mine = common or Labels(path, "default")
        return [mine.add(9, t, f"thread {t} label {i}") for i in range(25)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(worker, range(8)))

    labels = Labels(path, "default")
    assert labels.count() == 200
    ids = [row.id for rows in results for row in rows]
    assert len(set(ids)) == 200
    for t, rows in enumerate(results):
        assert labels.history(9, t) == rows[::-1]  # every returned row stored, as returned
        assert labels.current(9, t) == rows[-1]


CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from explorer.labels import Labels
labels = Labels(sys.argv[2], "default")
i = 0
while True:
    row = labels.add(1, i % 5, f"label {i}", notes="n" * 500)
    print(row.id, flush=True)
    i += 1
"""


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "labels.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(REPO), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    printed: list[int] = []
    deadline = time.monotonic() + 30
    try:
        while len(printed) < 30 and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            printed.append(int(line))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    reader.join(timeout=10)
    while (line := lines.get(timeout=10)) is not None:  # ids printed before the kill landed
        if line.endswith("\n"):
            printed.append(int(line))
    assert child.stderr is not None
    assert len(printed) >= 30, child.stderr.read()
    assert child.returncode == -signal.SIGKILL

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    stored = {row.id: row for row in _all_history(Labels(path, "default"))}
    assert printed == sorted(printed)
    for row_id in printed:
        assert stored[row_id].label == f"label {row_id - 1}"
