"""Label files: CSV cells defused for spreadsheets and restored exactly, malformed CSV rows reported
without swallowing the rows after them, exports written in chunks, JSON parsed as a stream."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import pytest

from explorer.labels import Label, LabelError, Labels
from explorer.labels.formats import (
    CHUNK_ROWS,
    FORMULA_STARTS,
    csv_chunks,
    defuse,
    json_chunks,
    read_csv,
    read_json,
    restore,
)

WIDTHS = {3: 16, 9: 4096}

# Texts a spreadsheet would run, and the ones that make the rule's inverse tricky.
NASTY = [
    "=SUM(A1)",
    "+1",
    "-x",
    "@cmd",
    "\tx",
    "\rx",
    "'=x",
    "''x",
    "'quoted'",
    "🧠 emoji 👩‍🔬",
    "",
    "'",
    "''",
    "'''",
    "=",
    "-",
    "'-",
    "a'b",
    " =x",
    "=\n=",
    '"=x"',
    '=HYPERLINK("http://x","y")',
    "-1+1",
    "@",
    "'\t",
    "\n=x",
    "＝SUM(A1)",  # full-width: not a formula start, left alone
]
_ALPHABET = ["=", "+", "-", "@", "\t", "\r", "\n", "'", '"', ",", "a", "🧠", " ", "\u200b"]


def _random_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` seeded random texts over an alphabet of formula starts, quotes and separators."""
    rng = random.Random(seed)
    return ["".join(rng.choices(_ALPHABET, k=rng.randint(0, 6))) for _ in range(n)]


@pytest.fixture
def labels(tmp_path: Path) -> Labels:
    return Labels(tmp_path / "labels.db", scope="default", widths=WIDTHS)


def _history(labels: Labels) -> list[Label]:
    rows = [row for key in _features(labels) for row in labels.history(*key)]
    return sorted(rows, key=lambda row: row.id)


def _features(labels: Labels) -> set[tuple[int, int]]:
    return {(int(r["layer"]), int(r["feature"])) for r in json.loads(labels.export_json())}


# -- defusing -------------------------------------------------------------------------------------


def test_defuse_is_safe_and_exactly_undone() -> None:
    for text in NASTY + _random_texts(20_000):
        cell = defuse(text)
        assert not cell.startswith(FORMULA_STARTS), text
        assert restore(cell) == text, text
        if not text.startswith((*FORMULA_STARTS, "'")):
            assert cell == text  # everything else is written as it is


def test_defuse_examples() -> None:
    assert defuse("=SUM(A1)") == "'=SUM(A1)"
    assert defuse("'quoted'") == "''quoted'"
    assert defuse("''x") == "'''x"
    assert defuse("plain") == "plain"
    assert restore("'quoted'") == "'quoted'"  # a hand-made cell keeps its quote
    assert restore("'=x") == "=x" and restore("''x") == "'x"


def test_csv_round_trip_of_random_tables() -> None:
    """Tables of nasty texts through the CSV writer and the streaming reader, cell for cell."""
    rng = random.Random(1)
    pool = NASTY + _random_texts(500, seed=2)
    columns = ("label", "notes", "retract_reason")  # notes may span lines
    for _ in range(30):
        rows = [[rng.choice(pool) for _ in columns] for _ in range(rng.randint(1, 40))]
        for row in rows:
            row[0] = row[0].replace("\n", " ").replace("\r", " ")  # one-line column
        text = "".join(csv_chunks(rows, columns))
        for raw in csv.reader(io.StringIO(text, newline="")):
            assert not any(cell.startswith(FORMULA_STARTS) for cell in raw), raw
        got = list(read_csv(io.StringIO(text, newline="")))
        blank = [not any(c.strip() for c in row) for row in rows]
        want = [(n, row) for n, (row, b) in enumerate(zip(rows, blank, strict=True), 2) if not b]
        assert [(n, [r[c] for c in columns]) for n, r in got if isinstance(r, dict)] == want


@pytest.mark.parametrize("text", [t for t in NASTY if t.strip()])
def test_database_csv_export_is_defused_and_imports_back(
    tmp_path: Path, labels: Labels, text: str
) -> None:
    added = labels.add(9, 1, f"{text} label", notes=text, labeller=text[:100])
    labels.add(9, 2, text if text.strip() else "x", notes=f"{text}\n{text}")
    exported = labels.export_csv()
    for raw in csv.reader(io.StringIO(exported, newline="")):
        assert not any(cell.startswith(FORMULA_STARTS) for cell in raw), raw
    header, first, _ = list(csv.reader(io.StringIO(exported, newline="")))
    cells = dict(zip(header, first, strict=True))
    assert cells["label"] == defuse(added.label)  # stored stripped: "\tx" is "x"
    if text == "=SUM(A1)":
        assert cells["label"] == "'=SUM(A1) label"
    fresh = Labels(tmp_path / "fresh.db", "default")
    assert fresh.import_text(exported, "csv").added == 2
    assert _history(fresh) == _history(labels)
    assert fresh.current(9, 1) == added
    assert fresh.export_csv() == exported


def test_json_export_is_not_defused(labels: Labels) -> None:
    labels.add(9, 1, "=SUM(A1)", notes="'quoted'")
    row = json.loads(labels.export_json())[0]
    assert (row["label"], row["notes"]) == ("=SUM(A1)", "'quoted'")


def test_hand_made_csv_keeps_its_quotes_and_loses_only_defusing_ones(labels: Labels) -> None:
    text = "layer,feature,label,notes\n9,1,'quoted',plain\n9,2,'=1+1,''twice\n"
    assert labels.import_text(text, "csv").added == 2
    assert labels.current(9, 1) is not None and labels.current(9, 1).label == "'quoted'"  # type: ignore[union-attr]
    second = labels.current(9, 2)
    assert second is not None and (second.label, second.notes) == ("=1+1", "'twice")


# -- malformed CSV rows ---------------------------------------------------------------------------

HEADER = "layer,feature,label"


def _labels_of(labels: Labels) -> dict[int, str]:
    return {feature: row.label for (_, feature), row in labels.current_all(9).items()}


def test_an_unclosed_quote_swallows_nothing(labels: Labels) -> None:
    report = labels.import_text(f'{HEADER}\n9,1,"oops\n9,2,fine\n9,3,also fine\n', "csv")
    assert (report.added, report.skipped) == (2, 1)
    assert len(report.errors) == 1
    assert report.errors[0].startswith("row 2: a quoted cell is not closed properly")
    assert _labels_of(labels) == {2: "fine", 3: "also fine"}


def test_a_properly_closed_multiline_notes_cell_imports(labels: Labels) -> None:
    text = (
        "layer,feature,label,notes\r\n"
        '9,1,x,"line one\r\n9,2,looks like a row\r\n\r\n""quoted"", with a comma"\r\n'
        "9,3,y,\r\n"
    )
    report = labels.import_text(text, "csv")
    assert (report.added, report.skipped, report.errors) == (2, 0, [])
    first = labels.current(9, 1)
    assert first is not None
    assert first.notes == 'line one\n9,2,looks like a row\n\n"quoted", with a comma'
    assert _labels_of(labels) == {1: "x", 3: "y"}
    fresh_text = labels.export_csv()  # and our own export of it reads back the same
    assert (
        Labels(labels.path.with_name("again.db"), "default").import_text(fresh_text, "csv").added
        == 2
    )


# (text after the header, added features, errors as (row, fragment))
MALFORMED: list[tuple[str, dict[int, str], list[tuple[int, str]]]] = [
    # the file ends inside the quote
    ('9,1,"oops\n9,2,fine\n', {2: "fine"}, [(2, "not closed properly")]),
    # no line break at the very end
    ('9,1,"oops\n9,2,fine', {2: "fine"}, [(2, "not closed properly")]),
    # the quote closes at the next row's quote, followed by text
    ('9,1,"oops\n9,2,"fine"\n9,3,ok\n', {2: "fine", 3: "ok"}, [(2, "not closed properly")]),
    # ... followed by a comma: a label over three lines, then an open quote to the end
    (
        '9,1,"oops\n9,2,fine\n9,3,",x\n9,4,ok\n',
        {2: "fine", 4: "ok"},
        [(2, "the 'label' cell runs over 3 lines"), (4, "not closed properly")],
    ),
    # text after a closing quote on one line
    ('9,1,"a"b\n9,2,ok\n', {2: "ok"}, [(2, "not closed properly")]),
    # a quoted number over two lines; its second line, read again, opens a quote to the end
    (
        '9,"1\n",x\n9,2,ok\n',
        {2: "ok"},
        [(2, "the 'feature' cell runs over 2 lines"), (3, "not closed properly")],
    ),
    # a blank row counts in the numbering
    ('9,1,ok\n\n9,2,"bad\n9,3,ok\n', {1: "ok", 3: "ok"}, [(4, "not closed properly")]),
    # a quoted cell far past any label's length (csv's field limit)
    ('9,1,"' + "x" * 200_000 + "\n9,2,ok\n", {2: "ok"}, [(2, "field larger than field limit")]),
    # a quote inside an unquoted cell is text, as in every CSV
    ('9,1,5" screen\n9,2,ok\n', {1: '5" screen', 2: "ok"}, []),
]


@pytest.mark.parametrize(
    ("body", "features", "errors"), MALFORMED, ids=[repr(m[0][:24]) for m in MALFORMED]
)
def test_malformed_csv_rows_are_reported_never_merged(
    labels: Labels, body: str, features: dict[int, str], errors: list[tuple[int, str]]
) -> None:
    report = labels.import_text(f"{HEADER}\n{body}", "csv")
    assert _labels_of(labels) == features
    assert (report.added, report.skipped) == (len(features), len(errors))
    assert len(report.errors) == len(errors), report.errors
    for got, (row, fragment) in zip(report.errors, errors, strict=True):
        assert got.startswith(f"row {row}: "), got
        assert fragment in got, got


def test_malformed_notes_in_a_notes_column(labels: Labels) -> None:
    text = 'layer,feature,label,notes\n9,1,a,"oops\n9,2,b,fine\n9,3,c,"closed"\n'
    report = labels.import_text(text, "csv")
    assert _labels_of(labels) == {2: "b", 3: "c"}
    assert [e.split(":")[0] for e in report.errors] == ["row 2"]


def test_malformed_rows_in_a_file_stream(tmp_path: Path, labels: Labels) -> None:
    path = tmp_path / "hand.csv"
    path.write_text(f'{HEADER}\n9,1,"oops\n9,2,fine\n9,3,also fine\n', encoding="utf-8")
    report = labels.import_file(path)
    assert (report.added, report.skipped) == (2, 1)


# -- export in chunks -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, CHUNK_ROWS, CHUNK_ROWS + 1, 2 * CHUNK_ROWS + 7])
def test_json_chunks_write_what_json_dumps_writes(n: int) -> None:
    rows: list[dict[str, object]] = [
        {"label": f'r{i}\n"🧠"\u2028\ud83e', "layer": i, "notes": None, "x": 1.5, "ok": i % 2 == 0}
        for i in range(n)
    ]
    rows += [{}, {"nested": [1, {"a": None}]}, {"n": float("nan")}, {"é": -0.0}]
    chunks = list(json_chunks(rows))
    assert "".join(chunks) == json.dumps(rows, ensure_ascii=False, indent=1)
    assert len(chunks) == (n + 4) // CHUNK_ROWS + 1


def test_csv_chunks_are_chunks() -> None:
    rows = [[i, f"=r{i}"] for i in range(2 * CHUNK_ROWS + 3)]
    chunks = list(csv_chunks(rows, ["a", "b"]))
    assert len(chunks) == 3
    assert "".join(chunks).splitlines()[:2] == ["a,b", "0,'=r0"]


def test_export_to_a_path_and_a_file_object(tmp_path: Path, labels: Labels) -> None:
    for i in range(5):
        labels.add(9, i, f"=label {i}")
    path = tmp_path / "backup.csv"
    assert labels.export_to(path) == 5
    assert path.read_bytes().decode("utf-8") == labels.export_csv()
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
    buffer = io.StringIO(newline="")
    assert labels.export_to(buffer, "json") == 5
    assert buffer.getvalue() == labels.export_json()
    assert labels.export_to(tmp_path / "backup.JSON") == 5
    with pytest.raises(LabelError, match="export format must be csv or json"):
        labels.export_to(tmp_path / "backup.txt")
    with pytest.raises(LabelError, match="cannot write"):
        labels.export_to(tmp_path / "missing" / "backup.csv")
    assert sorted(p.name for p in tmp_path.iterdir() if "backup" in p.name) == [
        "backup.JSON",
        "backup.csv",
    ]


def test_an_abandoned_export_lets_go_of_the_database(labels: Labels) -> None:
    rows = "".join(f"9,{i},label {i}\n" for i in range(CHUNK_ROWS + 5))
    assert labels.import_text(f"{HEADER}\n{rows}", "csv").added == CHUNK_ROWS + 5
    chunks = labels.export_chunks("csv")
    next(chunks)
    labels.add(9, 1, "written while an export is under way")
    rest = "".join(chunks)  # the export's snapshot: the new row is not in it
    assert "under way" not in rest
    chunks = labels.export_chunks("json")
    next(chunks)
    chunks.close()
    labels.add(9, 2, "after")
    with pytest.raises(LabelError, match="export format"):
        labels.export_chunks("xml")


# -- JSON as a stream -----------------------------------------------------------------------------


def _json_records(text: str, size: int) -> list[tuple[int, object]]:
    return list(read_json(text[i : i + size] for i in range(0, max(len(text), 1), size)))


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10**6])
def test_json_parses_the_same_in_chunks_of_any_size(size: int) -> None:
    items: list[dict[str, object]] = [
        {"Layer": 9, "feature": 12345678901234, "label": 'x "y" \\ 🧠', "notes": [1, {"a": 2}]},
        {"layer": 1.5e3, "feature": -0, "label": None, "extra": True},
        {},
    ]
    text = " \n" + json.dumps(items, indent=2) + "\n\t "
    got = _json_records(text, size)
    assert got == [
        (i, {str(k).lower(): v for k, v in item.items()}) for i, item in enumerate(items, 1)
    ]
    records = read_json([text])
    list(records)
    assert records.columns == ["layer", "feature", "label", "notes", "extra"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "malformed"),
        ("   \n ", "malformed"),
        ("[", "malformed"),
        ("[{}", "malformed"),
        ("[{},]", "malformed"),
        ("[{} {}]", "Expecting ',' delimiter"),
        ("[{}] x", "Extra data"),
        ("[{}]]", "Extra data"),
        ('[{"a": 1,}]', "malformed"),
        ("{}", "must be a list of objects, one per label"),
        ('"text"', "must be a list of objects"),
        ("12", "must be a list of objects"),
        ("[{}, 3]", "item 2 is not one"),
        ("[" * 100_000, "nested too deeply|malformed"),
        ("[" + "[" * 100_000 + "]" * 100_000 + "]", "nested too deeply"),
    ],
)
@pytest.mark.parametrize("size", [1, 5, 10**6])
def test_malformed_json_is_refused_in_any_chunking(text: str, message: str, size: int) -> None:
    if size == 1 and len(text) > 1000:
        return  # the same as size 5, only slower
    with pytest.raises(LabelError, match=message):
        _json_records(text, size)


def test_malformed_json_reports_its_line_across_chunks() -> None:
    text = "[\n" + ",\n".join(['{"layer": 9, "feature": 1, "label": "x"}'] * 500) + ",\n}\n]"
    with pytest.raises(LabelError, match="at line 502"):
        _json_records(text, 100)


def test_a_bad_byte_is_located_in_a_large_file(tmp_path: Path, labels: Labels) -> None:
    head = f"{HEADER}\n".encode()
    line = "é".encode() * 50 + b"\n"  # two bytes each, lines of 101: some cut by a block edge
    body = head + line * (3 * 2**20 // len(line))
    path = tmp_path / "big.csv"
    path.write_bytes(body + b"9,2,bad \xff byte\n" + line)
    with pytest.raises(
        LabelError, match=rf"big\.csv is not UTF-8 text \(bad byte at offset {len(body) + 8}\)"
    ):
        labels.import_file(path, max_bytes=None, max_rows=None)
    assert labels.count() == 0  # nothing of the file went in
