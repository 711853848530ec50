"""Label files: exports as standard CSV or JSON, written in chunks, and the streaming parse of
imported ones (ours or hand-made) into numbered records; the database checks each record's values.

CSV cells are defused for spreadsheets and restored on import (:func:`defuse`, :func:`restore`).
A CSV row whose quoting is broken is reported and never merged with the rows after it
(:func:`read_csv`). Nothing here holds a whole file: exports are produced chunk by chunk and
imports are read line by line (CSV) or object by object (JSON).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

from explorer.labels.rows import MULTILINE_COLUMNS, LabelError, show

CHUNK_ROWS = 1000  # rows per exported chunk
CHUNK_CHARS = 1 << 20  # characters per read of a JSON import

# -- spreadsheet safety ---------------------------------------------------------------------------

# OWASP's "CSV injection" starts: a spreadsheet treats a cell that begins with one of these as
# a formula (tab and CR: some strip them and look again). The quote is added to the list so the
# rule can be undone exactly: a cell that already began with a quote gets a second one.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_DEFUSED_STARTS = (*FORMULA_STARTS, "'")


def defuse(cell: str) -> str:
    """``cell`` with a ``'`` in front if it starts with ``= + - @``, tab, CR or ``'``."""
    return "'" + cell if cell.startswith(_DEFUSED_STARTS) else cell


def restore(cell: str) -> str:
    """The inverse of :func:`defuse`: drop a leading ``'`` that :func:`defuse` would have added.

    Exactly one ``'`` goes, and only when the next character is one :func:`defuse` prefixes,
    so ``restore(defuse(x)) == x`` for every text, and a hand-made ``'quoted'`` keeps its quote.
    """
    return cell[1:] if cell[:1] == "'" and cell[1:2] in _DEFUSED_STARTS else cell


# -- export ---------------------------------------------------------------------------------------


def csv_chunks(rows: Iterable[Sequence[object]], columns: Sequence[str]) -> Iterator[str]:
    """Standard CSV (a header of ``columns``, then ``rows`` as sequences), every text cell
    defused, in chunks of :data:`CHUNK_ROWS` rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    n = 0
    for row in rows:
        writer.writerow([defuse(v) if isinstance(v, str) else v for v in row])
        n += 1
        if n % CHUNK_ROWS == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def json_chunks(rows: Iterable[Mapping[str, object]]) -> Iterator[str]:
    """A JSON list of objects, exactly as ``json.dumps(list(rows), ensure_ascii=False,
    indent=1)`` writes it, in chunks of :data:`CHUNK_ROWS` rows."""
    parts: list[str] = []
    first = True
    for row in rows:
        parts.append(("[\n " if first else ",\n ") + _object_in_list(row))
        first = False
        if len(parts) == CHUNK_ROWS:
            yield "".join(parts)
            parts.clear()
    parts.append("[]" if first else "\n]")
    yield "".join(parts)


_ENCODE = json.JSONEncoder(ensure_ascii=False).encode  # C-accelerated for scalars


def _object_in_list(row: Mapping[str, object]) -> str:
    """``row`` as ``json.dumps(..., ensure_ascii=False, indent=1)`` writes it inside a list."""
    if row and all(
        isinstance(k, str) and (v is None or isinstance(v, str | int | float))
        for k, v in row.items()
    ):  # our rows: built here, since json's C encoder does no indenting (3 times faster)
        return (
            "{\n  " + ",\n  ".join(f"{_ENCODE(k)}: {_ENCODE(v)}" for k, v in row.items()) + "\n }"
        )
    # Anything else: one object at indent 1, shifted one level in (JSON strings hold no raw
    # newlines).
    return json.dumps(row, ensure_ascii=False, indent=1).replace("\n", "\n ")


# -- import ---------------------------------------------------------------------------------------

EXTRA_CELLS = "\x00extra cells"  # key under which read_csv flags cells past the header
# ``(row number, record)`` where a record is ``{column: value}``, or a string: why the row is bad.
Record = tuple[int, dict[str, object] | str]


class _Lines:
    """Physical lines, remembering those read for the record being parsed, with push-back."""

    def __init__(self, source: Iterable[str]) -> None:
        self._source = iter(source)
        self._back: list[str] = []  # pushed-back lines, the next one last
        self.taken: list[str] = []

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = self._back.pop() if self._back else next(self._source)
        self.taken.append(line)
        return line

    def again_after_first(self) -> None:
        """Read again every line of the record being parsed but its first one."""
        self._back.extend(reversed(self.taken[1:]))
        self.taken = []


class CsvRecords:
    """The records of a CSV: :attr:`columns` (the header, lower-cased) is read at once, the rows
    as they are iterated: ``(row number, {column: cell} or why the row is bad)``.

    Rows are numbered as a spreadsheet shows them (header = row 1); blank rows are counted and
    skipped. Cells are :func:`restore`-d. A bad row never swallows the rows after it:

    * a quote that is never closed properly (the file ends inside it, a character other than a
      comma or line end follows the closing quote, or the quoted cell grows past ``csv``'s
      128 KiB field limit), or
    * a cell that runs over several lines in a column other than :data:`MULTILINE_COLUMNS`
      (a label or a number never spans lines; a line break in one means a quote opened there
      and closed somewhere in a later row)

    makes that row a reported error, and parsing resumes at the line after the row's first line,
    so the rows its open quote ran over are read as rows again. A quoted notes cell that spans
    lines and closes properly is one cell, as in any CSV.
    """

    def __init__(self, source: Iterable[str]) -> None:
        self._lines = _Lines(source)
        reader = self._reader()
        try:
            header = next(reader, None)
        except csv.Error as e:
            raise LabelError(f"the CSV header cannot be read: {e}") from None
        if header is None:
            raise LabelError("the CSV is empty; it needs a header row with layer, feature, label")
        self.columns = [name.strip().lower() for name in header]
        repeated = sorted({c for c in self.columns if c and self.columns.count(c) > 1})
        if repeated:
            raise LabelError(f"the CSV header repeats {', '.join(map(show, repeated))}")
        self._lines.taken = []
        self._reader_now = reader

    def _reader(self) -> Iterator[list[str]]:
        return csv.reader(self._lines, strict=True)

    def __iter__(self) -> Iterator[Record]:
        columns = self.columns
        reader = self._reader_now
        number = 1
        while True:
            number += 1
            try:
                cells = next(reader, None)
            except csv.Error as e:
                why = str(e).replace("'\"'", "the closing quote")
                yield number, f"a quoted cell is not closed properly ({why}); the row was skipped"
                self._lines.again_after_first()
                reader = self._reader()
                continue
            if cells is None:
                return
            span = len(self._lines.taken)
            if span > 1:
                broken = next(
                    (
                        i
                        for i, cell in enumerate(cells)
                        if ("\n" in cell or "\r" in cell)
                        and (i >= len(columns) or columns[i] not in MULTILINE_COLUMNS)
                    ),
                    None,
                )
                if broken is not None:
                    name = show(columns[broken]) if broken < len(columns) else "an extra"
                    why = f"the {name} cell runs over {span} lines: is a closing quote missing?"
                    yield number, f"{why} The row was skipped"
                    self._lines.again_after_first()
                    reader = self._reader()
                    continue
            self._lines.taken = []
            if not any(cell.strip() for cell in cells):
                continue
            cells = [c[1:] if c[:1] == "'" and c[1:2] in _DEFUSED_STARTS else c for c in cells]
            record: dict[str, object] = dict(zip(columns, cells, strict=False))
            record[EXTRA_CELLS] = any(cell.strip() for cell in cells[len(columns) :])
            yield number, record


def read_csv(source: Iterable[str]) -> CsvRecords:
    """The records of a CSV given as physical lines (a file opened with ``newline=""``)."""
    return CsvRecords(source)


_WHITESPACE = re.compile(r"[ \t\n\r]*")


class JsonRecords:
    """The objects of a JSON list, parsed one at a time from text chunks, numbered from 1.

    :attr:`columns` (keys lower-cased, in order of first use) is complete once iterated.
    Raises :class:`LabelError` for malformed JSON, a top level that is not a list, or an item
    that is not an object, when the parse gets there.
    """

    def __init__(self, chunks: Iterable[str]) -> None:
        self._chunks = iter(chunks)
        self._buf = ""
        self._pos = 0
        self._lines_before = 0  # line breaks in text already dropped from the buffer
        self._eof = False
        self._decoder = json.JSONDecoder()
        self.columns: list[str] = []

    def _more(self) -> bool:
        """Append the next chunk to the buffer (dropping what was parsed); False at the end."""
        if self._eof:
            return False
        chunk = next(self._chunks, None)
        if chunk is None:
            self._eof = True
            return False
        self._lines_before += self._buf.count("\n", 0, self._pos)
        self._buf = self._buf[self._pos :] + chunk
        self._pos = 0
        return True

    def _peek(self) -> str:
        """The next non-blank character ('' at the end), not consumed."""
        while True:
            self._pos = _WHITESPACE.match(self._buf, self._pos).end()  # type: ignore[union-attr]
            if self._pos < len(self._buf) or not self._more():
                return self._buf[self._pos : self._pos + 1]

    def _malformed(self, e: json.JSONDecodeError) -> LabelError:
        line = self._lines_before + e.lineno
        return LabelError(f"the JSON is malformed ({e.msg} at line {line})")

    def _value(self) -> object:
        """The next JSON value, reading more chunks until it is complete."""
        self._peek()
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as e:
                if self._grow():
                    continue
                raise self._malformed(e) from None
            except RecursionError:
                raise LabelError("the JSON is nested too deeply") from None
            if end == len(self._buf) and self._grow():
                continue  # a number may go on in the next chunk
            self._pos = end
            return value

    def _grow(self) -> bool:
        """Read until the unparsed text at least doubles (so a long value parses in linear
        time); False if nothing was left to read."""
        target = 2 * max(len(self._buf) - self._pos, CHUNK_CHARS)
        grew = False
        while len(self._buf) - self._pos < target and self._more():
            grew = True
        return grew

    def _expect(self, what: str) -> LabelError:
        doc = self._buf
        e = json.JSONDecodeError(what, doc, min(self._pos, len(doc)))
        return self._malformed(e)

    def __iter__(self) -> Iterator[Record]:
        first = self._peek()
        if first != "[":
            if first:
                self._value()  # malformed, or valid but not a list
            else:
                raise self._expect("Expecting value")
            raise LabelError("the JSON must be a list of objects, one per label")
        self._pos += 1
        seen: dict[str, None] = {}
        number = 0
        if self._peek() == "]":
            self._pos += 1
        else:
            while True:
                item = self._value()
                number += 1
                if not isinstance(item, dict):
                    raise LabelError(
                        f"the JSON must be a list of objects, but item {number} is not one"
                    )
                record = {str(k).strip().lower(): v for k, v in item.items()}
                for key in record:
                    if key not in seen:
                        seen[key] = None
                        self.columns.append(key)
                yield number, record
                after = self._peek()
                self._pos += 1
                if after == "]":
                    break
                if after != ",":
                    self._pos -= 1
                    raise self._expect("Expecting ',' delimiter")
        if self._peek():
            raise self._expect("Extra data")


def read_json(chunks: Iterable[str]) -> JsonRecords:
    """The records of a JSON list of objects given as text chunks."""
    return JsonRecords(chunks)
