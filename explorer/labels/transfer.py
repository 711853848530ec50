"""Export and import of a label history: streamed, of any size, exact both ways.

:class:`Transfers` is a part of :class:`explorer.labels.db.Labels` (a mixin: it uses the
database's connection, write transaction and row checks), kept apart because moving a history in
and out of files is its own concern: formats, streaming, limits for public uploads, duplicates,
import batches.
"""

from __future__ import annotations

import codecs
import io
import logging
import os
import sqlite3
from collections.abc import Generator, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, TYPE_CHECKING

from explorer.labels.formats import (
    CHUNK_CHARS,
    EXTRA_CELLS,
    csv_chunks,
    json_chunks,
    read_csv,
    read_json,
)
from explorer.labels.rows import (
    COLUMNS,
    MAX_IMPORT_BYTES,
    MAX_IMPORT_ROWS,
    MAX_LABELLER_CHARS,
    MAX_NOTES_CHARS,
    MAX_REPORTED_ERRORS,
    REQUIRED_COLUMNS,
    RETRACTION_COLUMNS,
    ImportReport,
    LabelError,
    check_text,
    content_hash,
    new_batch_id,
    now,
    parse_time,
    show,
)
from explorer.labels.schema import (
    FIND_EXACT,
    FIND_LIVE,
    FORMATS,
    INSERT,
    INSERT_ROWS,
    RETRACT,
    SELECT,
    Checked,
    Values,
)

logger = logging.getLogger(__name__)


class Transfers:
    """Export and import methods of :class:`~explorer.labels.db.Labels`."""

    scope: str
    path: Path

    if TYPE_CHECKING:  # provided by Labels

        def _connect(self) -> AbstractContextManager[sqlite3.Connection]: ...

        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...

        def _check_row(
            self,
            layer: object,
            feature: object,
            label: object,
            notes: object,
            confidence: object,
            labeller: object,
        ) -> Values: ...

    # -- export -----------------------------------------------------------------------------------

    def export_chunks(self, fmt: str) -> Generator[str, None, None]:
        """The scope's full history as ``"csv"`` or ``"json"`` text, in chunks (oldest first).

        One read snapshot from the first chunk to the last, whatever is written meanwhile;
        memory stays small whatever the history's size. Columns: :data:`COLUMNS`; retracted rows
        also carry :data:`RETRACTION_COLUMNS` (in CSV those columns are there when any row of
        the scope is retracted), so an import into an empty database restores the history
        exactly. CSV cells are defused for spreadsheets (see the package doc); write it with
        encoding ``utf-8-sig`` if Excel must read it, and with ``newline=""``.
        """
        return self._export(_format("export", fmt))

    def _export(self, kind: str, counted: list[int] | None = None) -> Generator[str, None, None]:
        """The chunks; ``counted``, if given, gets the number of rows appended at the end."""
        n = 0

        def count(rows: Iterable[tuple[object, ...]]) -> Iterator[tuple[object, ...]]:
            nonlocal n
            for n, row in enumerate(rows, start=1):  # noqa: B007
                yield row

        with self._connect() as conn:
            conn.execute("BEGIN")  # one snapshot for the header and every row
            try:
                retracted = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM retractions x JOIN labels l "
                    "ON l.id = x.label_id WHERE l.scope = ?)",
                    (self.scope,),
                ).fetchone()[0]
                cursor = count(
                    conn.execute(f"{SELECT} WHERE l.scope = ? ORDER BY l.id", (self.scope,))
                )
                if kind == "csv":
                    width = 13 if retracted else 9
                    columns = (*COLUMNS, *RETRACTION_COLUMNS) if retracted else COLUMNS
                    cells = (row[1:9] + row[10:width] for row in cursor)
                    yield from csv_chunks(cells, columns)
                else:
                    yield from json_chunks(_json_row(row) for row in cursor)
                if counted is not None:
                    counted.append(n)
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")  # read only: nothing to keep

    def export_to(self, target: str | Path | IO[str], fmt: str | None = None) -> int:
        """Write the export (:meth:`export_chunks`) to ``target``; returns the rows written.

        ``target`` is a text file object (opened with ``newline=""`` for CSV), or a path: then
        ``fmt`` defaults to its suffix, and the file is written beside it, flushed to disk and
        only then renamed over ``target``, so a failed export never leaves a half backup.
        """
        if isinstance(target, str | Path):
            path = Path(target)
            kind = _format("export", fmt if fmt is not None else path.suffix)
            partial = path.with_name(f".{path.name}.partial")
            try:
                with partial.open("w", encoding="utf-8", newline="") as f:
                    rows = self._export_counted(kind, f)
                    f.flush()
                    os.fsync(f.fileno())
                partial.replace(path)
            except OSError as e:
                partial.unlink(missing_ok=True)
                raise LabelError(f"cannot write {path}: {e.strerror}") from None
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            return rows
        return self._export_counted(_format("export", fmt or ""), target)

    def _export_counted(self, kind: str, f: IO[str]) -> int:
        counted: list[int] = []
        for chunk in self._export(kind, counted):
            f.write(chunk)
        return counted[0]

    def export_csv(self) -> str:
        """The scope's full history as one CSV string (:meth:`export_chunks`); for small
        histories: a backup of any size goes through :meth:`export_to`."""
        return "".join(self.export_chunks("csv"))

    def export_json(self) -> str:
        """The scope's full history as one JSON string (:meth:`export_chunks`), a list of
        objects; for small histories: a backup of any size goes through :meth:`export_to`."""
        return "".join(self.export_chunks("json"))

    # -- import -----------------------------------------------------------------------------------

    def import_file(
        self,
        path: str | Path,
        *,
        max_bytes: int | None = MAX_IMPORT_BYTES,
        max_rows: int | None = MAX_IMPORT_ROWS,
    ) -> ImportReport:
        """:meth:`import_text` of a ``.csv`` or ``.json`` UTF-8 file (a BOM is allowed), read as a
        stream: the file is never in memory whole.

        The limits are for what the public may upload (a larger file is refused before it is
        read); ``max_bytes=None, max_rows=None`` lifts them, for the owner's restore of a backup
        of any size.
        """
        path = Path(path)
        kind = {".csv": "csv", ".json": "json"}.get(path.suffix.lower())
        if kind is None:
            raise LabelError(f"{path.name} is neither a .csv nor a .json file")
        try:
            size = path.stat().st_size
            if max_bytes is not None and size > max_bytes:
                raise LabelError(
                    f"{path.name} is {size / 2**20:.1f} MB; the limit is {_mb(max_bytes)}"
                )
            f = path.open("r", encoding="utf-8-sig", newline="")
        except OSError as e:
            raise LabelError(f"cannot read {path.name}: {e.strerror}") from None
        with f:
            source: Iterable[str] = f if kind == "csv" else iter(lambda: f.read(CHUNK_CHARS), "")
            try:
                return self._import(kind, source, max_rows)
            except UnicodeDecodeError:
                raise LabelError(
                    f"{path.name} is not UTF-8 text (bad byte at offset {_bad_byte(path)}); "
                    "save it as UTF-8"
                ) from None
            except OSError as e:
                raise LabelError(f"cannot read {path.name}: {e.strerror}") from None

    def import_text(
        self,
        text: str,
        fmt: str,
        *,
        max_bytes: int | None = MAX_IMPORT_BYTES,
        max_rows: int | None = MAX_IMPORT_ROWS,
    ) -> ImportReport:
        """Append the rows of a CSV or JSON export (ours or hand-made) to the history.

        Columns ``layer``, ``feature``, ``label`` are required; ``notes``, ``confidence``,
        ``labeller``, ``created_at``, ``scope`` and :data:`RETRACTION_COLUMNS` are optional,
        others are ignored (and reported). A row of another scope, or one that :meth:`add`
        would refuse, is reported and skipped; so is a CSV row whose quoting is broken (see
        ``formats.CsvRecords``), without touching the rows after it. ``created_at`` is kept when
        it is ISO-8601 (normalised to UTC), otherwise it is the import time.

        Duplicates are skipped, so importing a file twice adds nothing: a row with a valid
        ``created_at`` is a duplicate of a row with the same content (layer, feature, label,
        notes, confidence, labeller) and time; a row without one, of any row with the same
        content that is not retracted, whatever its time (so a file whose import was retracted
        can be imported again). Rows earlier in the same file count. A row with
        ``retracted_at`` is added retracted (an import never retracts a row it did not add).

        The file is parsed as a stream and the valid rows go in, in order, in one transaction,
        each row tagged with the import's batch id (:attr:`ImportReport.batch`, for
        :meth:`retract_batch`). CSV rows are numbered as a spreadsheet shows them (header = row
        1), JSON rows by position (first object = row 1).

        Raises :class:`LabelError`, and adds nothing, for an unknown ``fmt``, text over
        ``max_bytes`` (10 MB) or more than ``max_rows`` (100,000) rows (None: no limit),
        malformed JSON, an unreadable CSV header or missing required columns.
        """
        if not isinstance(text, str):
            raise LabelError(f"import text must be a string, not {type(text).__name__}")
        if max_bytes is not None and (
            len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes
        ):
            raise LabelError(
                f"the import is larger than {_mb(max_bytes)}; split it into smaller files"
            )
        kind = _format("import", fmt)
        text = text.removeprefix("\ufeff")
        source: Iterable[str] = io.StringIO(text, newline="") if kind == "csv" else (text,)
        return self._import(kind, source, max_rows)

    def _import(self, kind: str, source: Iterable[str], max_rows: int | None) -> ImportReport:
        records = read_csv(source) if kind == "csv" else read_json(source)
        if kind == "csv":
            _check_columns(records.columns)  # before touching the database
        errors: list[str] = []
        n_errors = added = duplicates = skipped = n_rows = 0
        batch = new_batch_id()
        with self._write() as conn:
            conn.execute("PRAGMA cache_size = -65536")  # 64 MiB: random-order index pages
            rows = _Batch(conn, self.scope, batch, now())
            for number, record in records:
                n_rows += 1
                if max_rows is not None and n_rows > max_rows:
                    raise LabelError(f"the import has more than {max_rows:,} rows; split it")
                try:
                    if isinstance(record, str):
                        raise LabelError(record)
                    checked = self._check_record(record)
                except LabelError as e:
                    skipped += 1
                    n_errors += 1
                    if len(errors) < MAX_REPORTED_ERRORS:
                        errors.append(f"row {number}: {e}")
                    continue
                if rows.add(*checked):
                    added += 1
                else:
                    duplicates += 1
            rows.flush()
            if kind == "json" and n_rows:
                _check_columns(records.columns)  # all keys are known only now: rolls back
        unknown = [c for c in records.columns if c and c not in (*COLUMNS, *RETRACTION_COLUMNS)]
        if unknown:  # blank: trailing commas
            errors.insert(0, f"ignored unknown columns: {', '.join(show(c) for c in unknown)}")
            n_errors += 1
        if n_errors > MAX_REPORTED_ERRORS:
            errors[MAX_REPORTED_ERRORS:] = [f"... and {n_errors - MAX_REPORTED_ERRORS} more"]
        report = ImportReport(added, duplicates, errors, skipped, batch if added else None)
        logger.info("%s, scope %s: %s (%s)", self.path, self.scope, report.summary(), batch)
        return report

    def _check_record(self, record: dict[str, object]) -> Checked:
        """One import row's cleaned values, canonical ``created_at`` (None: not given) and
        retraction."""
        if record.get(EXTRA_CELLS):
            raise LabelError("it has more cells than the header has columns")
        for name in REQUIRED_COLUMNS:
            value = record.get(name)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise LabelError(f"{name} is missing")
        scope = record.get("scope")
        if isinstance(scope, str):
            scope = scope.strip() or None
        if scope is not None and scope != self.scope:
            raise LabelError(f"scope {show(scope)} is not this label set's scope {self.scope!r}")
        values = self._check_row(
            record["layer"],
            record["feature"],
            record["label"],
            record.get("notes"),
            record.get("confidence"),
            record.get("labeller"),
        )
        retraction = None
        when = record.get("retracted_at")
        if when is not None and not (isinstance(when, str) and not when.strip()):
            at = parse_time(when)
            if at is None:
                raise LabelError(f"retracted_at must be an ISO-8601 time, not {show(when)}")
            retraction = (
                at,
                check_text("retracted_by", record.get("retracted_by"), MAX_LABELLER_CHARS),
                check_text(
                    "retract_reason",
                    record.get("retract_reason"),
                    MAX_NOTES_CHARS,
                    multiline=True,
                ),
            )
        return values, parse_time(record.get("created_at")), retraction


class _Batch:
    """The rows an import adds, inserted :data:`INSERT_ROWS` at a time (one statement each: FTS5
    flushes its pending terms at every statement, so row-by-row inserts cost ~10 times more),
    with the duplicate check over the database and the rows not yet inserted."""

    def __init__(self, conn: sqlite3.Connection, scope: str, batch: str, stamp: str) -> None:
        self.conn, self.scope, self.batch, self.stamp = conn, scope, batch, stamp
        self.params: list[object] = []  # of the pending rows, 10 per row
        self.exact: set[tuple[Values, str]] = set()  # content and time of the pending rows
        self.live: set[Values] = set()  # content of the pending rows that are not retracted
        self.retractions: list[tuple[int, tuple[str, str, str]]] = []  # (pending index, ...)

    def add(
        self, values: Values, created_at: str | None, retraction: tuple[str, str, str] | None
    ) -> bool:
        """Queue the row unless it is a duplicate (then False)."""
        digest = content_hash(*values)
        if created_at is None:
            if (
                values in self.live
                or self.conn.execute(FIND_LIVE, (self.scope, digest, *values)).fetchone()
            ):
                return False
        elif (values, created_at) in self.exact or self.conn.execute(
            FIND_EXACT, (self.scope, digest, created_at, *values)
        ).fetchone():
            return False
        at = created_at or self.stamp
        self.exact.add((values, at))
        if retraction is None:
            self.live.add(values)
        else:
            self.retractions.append((len(self.params) // 10, retraction))
        self.params += (self.scope, *values, at, self.batch, digest)
        if len(self.params) >= 10 * INSERT_ROWS:
            self.flush()
        return True

    def flush(self) -> None:
        n = len(self.params) // 10
        if not n:
            return
        sql = INSERT + ", (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" * (n - 1)
        last = self.conn.execute(sql, self.params).lastrowid
        assert last is not None
        first = last - n + 1  # one statement in an exclusive transaction: consecutive ids
        if self.retractions:
            (placed,) = self.conn.execute(
                "SELECT COUNT(*) FROM labels WHERE id BETWEEN ? AND ? AND batch = ?",
                (first, last, self.batch),
            ).fetchone()
            if placed != n:  # never seen; refuse rather than retract the wrong rows
                raise LabelError("the import's rows did not get consecutive ids; nothing added")
            self.conn.executemany(
                RETRACT, [(first + i, by, reason, at) for i, (at, by, reason) in self.retractions]
            )
        self.params.clear()
        self.exact.clear()
        self.live.clear()
        self.retractions.clear()


def _json_row(row: tuple[object, ...]) -> dict[str, object]:
    """One exported object: :data:`COLUMNS`, and :data:`RETRACTION_COLUMNS` if retracted."""
    out = dict(zip(COLUMNS, row[1:9], strict=True))
    if row[10] is not None:
        out.update(zip(RETRACTION_COLUMNS, row[10:13], strict=True))
    return out


def _format(what: str, fmt: object) -> str:
    kind = fmt.strip().lower().lstrip(".") if isinstance(fmt, str) else ""
    if kind not in FORMATS:
        raise LabelError(f"{what} format must be csv or json, not {show(fmt)}")
    return kind


def _check_columns(columns: list[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise LabelError(f"the import has no {', '.join(missing)} column; those are required")


def _mb(limit: int) -> str:
    return f"{limit / 2**20:g} MB"


def _bad_byte(path: Path) -> int | str:
    """The offset of the first byte of ``path`` that is not UTF-8 ('?' if it reads clean)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # of the next block
    try:
        with path.open("rb") as f:
            while block := f.read(CHUNK_CHARS):
                held = len(decoder.getstate()[0])  # bytes of a character cut by the last block
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as e:
                    return offset - held + e.start
                offset += len(block)
            held = len(decoder.getstate()[0])
            if held:
                return offset - held  # the file ends inside a character
    except OSError:
        pass
    return "?"
