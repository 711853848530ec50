"""The label database: one SQLite file, append-only history per scope (see the package doc)."""

from __future__ import annotations

import codecs
import io
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Generator, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

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
    MAX_LABEL_CHARS,
    MAX_LABELLER_CHARS,
    MAX_NOTES_CHARS,
    MAX_REPORTED_ERRORS,
    REQUIRED_COLUMNS,
    RETRACTION_COLUMNS,
    SCHEMA_VERSION,
    ImportReport,
    Label,
    LabelError,
    casefold,
    check_confidence,
    check_index,
    check_text,
    content_hash,
    new_batch_id,
    now,
    parse_time,
    show,
)

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 10.0
_SQLITE_MAGIC = b"SQLite format 3\x00"
_APPEND_ONLY = "BEGIN SELECT RAISE(ABORT, 'label history is append-only'); END"
# Version 1, exactly as it was created: a new file gets it and then the migrations, so a new
# file and a migrated one have the same schema.
_SCHEMA_1 = (
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
    f"CREATE TRIGGER labels_no_update BEFORE UPDATE ON labels {_APPEND_ONLY}",
    f"CREATE TRIGGER labels_no_delete BEFORE DELETE ON labels {_APPEND_ONLY}",
)
# Version 2: import batches, content hashes for the duplicate check, retractions (a table of
# their own, append-only too, so retracting never changes a label row or a label id), and the
# FTS5 index of label + notes (external content, filled by a trigger: rows are only inserted).
_MIGRATE_TO_2 = (
    "ALTER TABLE labels ADD COLUMN batch TEXT",
    "ALTER TABLE labels ADD COLUMN content_hash INTEGER",
    # The one write to existing rows there will ever be: their content hash, derived from
    # columns that stay as they were, in the migration's transaction (so no one ever sees the
    # trigger missing).
    "DROP TRIGGER labels_no_update",
    "UPDATE labels SET content_hash = "
    "label_hash(layer, feature, label, notes, confidence, labeller)",
    f"CREATE TRIGGER labels_no_update BEFORE UPDATE ON labels {_APPEND_ONLY}",
    "CREATE INDEX labels_by_content ON labels (scope, content_hash, created_at)",
    "CREATE INDEX labels_by_batch ON labels (scope, batch) WHERE batch IS NOT NULL",
    """CREATE TABLE retractions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        label_id INTEGER NOT NULL UNIQUE REFERENCES labels (id),
        retracted_by TEXT NOT NULL,
        reason TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    f"CREATE TRIGGER retractions_no_update BEFORE UPDATE ON retractions {_APPEND_ONLY}",
    f"CREATE TRIGGER retractions_no_delete BEFORE DELETE ON retractions {_APPEND_ONLY}",
    "CREATE VIRTUAL TABLE labels_fts USING fts5("
    "label, notes, content='labels', content_rowid='id', tokenize='trigram')",
    "CREATE TRIGGER labels_fts_insert AFTER INSERT ON labels BEGIN "
    "INSERT INTO labels_fts (rowid, label, notes) VALUES (new.id, new.label, new.notes); END",
    "INSERT INTO labels_fts (labels_fts) VALUES ('rebuild')",
)

_SELECT = (
    "SELECT l.id, l.scope, l.layer, l.feature, l.label, l.notes, l.confidence, l.labeller, "
    "l.created_at, l.batch, r.created_at, COALESCE(r.retracted_by, ''), COALESCE(r.reason, '') "
    "FROM labels l LEFT JOIN retractions r ON r.label_id = l.id"
)
_NOT_RETRACTED = "NOT EXISTS (SELECT 1 FROM retractions x WHERE x.label_id = {}.id)"
# The current label of each feature: its newest row that is not retracted.
_CURRENT_IDS = f"SELECT MAX(c.id) FROM labels c WHERE c.scope = ? AND {_NOT_RETRACTED.format('c')}"
_IS_CURRENT = (  # of the row ``l`` of _SELECT
    "r.id IS NULL AND NOT EXISTS (SELECT 1 FROM labels n WHERE n.scope = l.scope "
    "AND n.layer = l.layer AND n.feature = l.feature AND n.id > l.id "
    f"AND {_NOT_RETRACTED.format('n')})"
)
_INSERT = (
    "INSERT INTO labels (scope, layer, feature, label, notes, confidence, labeller, created_at, "
    "batch, content_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_RETRACT = (
    "INSERT INTO retractions (label_id, retracted_by, reason, created_at) VALUES (?, ?, ?, ?)"
)
# Duplicate checks, through the content-hash index whatever the planner thinks of the feature
# index (one feature with a long history must not make an import quadratic).
_SAME_CONTENT = (
    "layer = ? AND feature = ? AND label = ? AND notes = ? AND confidence = ? AND labeller = ?"
)
_FIND_EXACT = (
    "SELECT id FROM labels INDEXED BY labels_by_content WHERE scope = ? AND content_hash = ? "
    f"AND created_at = ? AND {_SAME_CONTENT} LIMIT 1"
)
_FIND_LIVE = (
    "SELECT id FROM labels l INDEXED BY labels_by_content WHERE scope = ? AND content_hash = ? "
    f"AND {_SAME_CONTENT} AND {_NOT_RETRACTED.format('l')} LIMIT 1"
)
INSERT_ROWS = 1000  # rows per INSERT statement of an import (10 parameters each)
MIN_FTS_TERM = 3  # the trigram index finds terms of 3 characters or more
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
FORMATS = ("csv", "json")

# One checked import row: (layer, feature, label, notes, confidence, labeller), its canonical
# ``created_at`` (None: not given), and its retraction (at, by, reason) if it has one.
_Values = tuple[int, int, str, str, str, str]
_Checked = tuple[_Values, str | None, tuple[str, str, str] | None]


class Labels:
    """The labels of one scope in a SQLite file (created with its parent folder if missing).

    Args:
        path: The database file. A file that is not a label database is never modified; a
            label database of schema 1 is migrated in place to schema 2 on opening.
        scope: The SAE set these labels belong to; other scopes in the file are invisible.
        widths: ``{layer: number of features}``; when given, writes and imports refuse layers not
            in it and features past the width. Reads never check it, so labels stay readable.
    """

    def __init__(
        self, path: str | Path, scope: str, widths: Mapping[int, int] | None = None
    ) -> None:
        if not isinstance(scope, str) or not scope.strip():
            raise ValueError(f"scope must be a non-empty string, not {scope!r}")
        if widths is not None and not all(
            type(k) is int and type(v) is int and k >= 0 and v > 0 for k, v in widths.items()
        ):
            raise ValueError(f"widths must map layers >= 0 to widths > 0, not {widths!r}")
        self.path = Path(path).expanduser().absolute()  # immune to later chdir
        self.scope = scope.strip()
        self.widths: dict[int, int] | None = None if widths is None else dict(widths)
        self._write_lock = threading.Lock()
        self._create()

    def __repr__(self) -> str:
        return f"Labels({str(self.path)!r}, scope={self.scope!r})"

    # -- database ---------------------------------------------------------------------------------

    def _create(self) -> None:
        """Check the file is ours (or new) before SQLite writes anything, then set up the schema
        (or migrate an older one)."""
        path = self.path
        try:
            if path.is_dir():
                raise LabelError(f"{path} is a folder, not a label database")
            if path.exists():
                with path.open("rb") as f:
                    head = f.read(len(_SQLITE_MAGIC))
                if head and head != _SQLITE_MAGIC:
                    raise LabelError(
                        f"{path} is not a label database (not SQLite); it was left untouched, "
                        "so choose another path"
                    )
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LabelError(f"cannot open the label database {path}: {e.strerror}") from None
        with self._connect() as conn:
            current = self._check_version(conn)  # before WAL, which rewrites any file's header
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                logger.warning("%s: journal mode is %s, not wal", path, mode)
            if current == SCHEMA_VERSION:
                return
            conn.create_function("label_hash", 6, content_hash, deterministic=True)
            with _transaction(conn):
                version = self._check_version(conn)  # again: another process may have been first
                if version == 0:
                    for statement in _SCHEMA_1:
                        conn.execute(statement)
                    logger.info("created label database %s", path)
                if version < 2:
                    for statement in _MIGRATE_TO_2:
                        conn.execute(statement)
                    if version:
                        logger.info("migrated label database %s to schema 2", path)
                if version < SCHEMA_VERSION:
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _check_version(self, conn: sqlite3.Connection) -> int:
        # One read transaction for both reads: in autocommit each statement sees its own
        # snapshot, and another process creating the schema in between would make a new label
        # database look like someone else's (version 0, yet tables).
        own = not conn.in_transaction
        if own:
            conn.execute("BEGIN")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            tables = [
                row[0]
                for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%'"
                )
            ]
        finally:
            if own:
                conn.execute("COMMIT")
        if version > SCHEMA_VERSION:
            raise LabelError(
                f"{self.path} was written by a newer version of the explorer (label schema "
                f"{version}, this one reads {SCHEMA_VERSION}); upgrade to open it"
            )
        if version == 0:
            if tables:
                raise LabelError(
                    f"{self.path} is a SQLite database of something else (tables: "
                    f"{', '.join(tables[:5])}), not a label database; choose another path"
                )
        return version

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A fresh autocommit connection; database failures become a :class:`LabelError`."""
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA synchronous = FULL")
            yield conn
        except sqlite3.ProgrammingError:
            raise
        except sqlite3.DatabaseError as e:
            busy = "locked" in str(e) or "busy" in str(e)
            why = "it is busy, try again" if busy else str(e)
            raise LabelError(f"label database {self.path}: {why}") from e
        finally:
            if conn is not None:
                conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front (``BEGIN IMMEDIATE``) so it never fails halfway."""
        # The lock spares same-object writers SQLite's sleep-and-retry busy handler.
        with self._connect() as conn, self._write_lock, _transaction(conn):
            yield conn

    def _check_row(
        self,
        layer: object,
        feature: object,
        label: object,
        notes: object,
        confidence: object,
        labeller: object,
    ) -> _Values:
        """Validated, cleaned values of one row, or :class:`LabelError` saying what is wrong."""
        layer_n = check_index("layer", layer)
        feature_n = check_index("feature", feature)
        if self.widths is not None:
            if layer_n not in self.widths:
                known = ", ".join(str(n) for n in sorted(self.widths))
                raise LabelError(f"layer {layer_n} has no SAE here; the layers are {known}")
            width = self.widths[layer_n]
            if feature_n >= width:
                raise LabelError(f"feature {feature_n} is past layer {layer_n}'s width ({width})")
        text = check_text("label", label, MAX_LABEL_CHARS)
        if not text:
            raise LabelError("label is empty")
        return (
            layer_n,
            feature_n,
            text,
            check_text("notes", notes, MAX_NOTES_CHARS, multiline=True),
            check_confidence(confidence),
            check_text("labeller", labeller, MAX_LABELLER_CHARS),
        )

    # -- writing ----------------------------------------------------------------------------------

    def add(
        self,
        layer: int | str,
        feature: int | str,
        label: str,
        notes: str = "",
        confidence: str = "medium",
        labeller: str = "",
    ) -> Label:
        """Append a label for ``(layer, feature)``; it becomes the current one. Returns the row.

        ``layer``/``feature`` may be ints or digit strings; ``label`` is stripped and must not be
        empty. Raises :class:`LabelError` for any invalid value, before touching the database.
        """
        values = self._check_row(layer, feature, label, notes, confidence, labeller)
        with self._write() as conn:
            created_at = now()  # taken under the write lock, so times increase with ids
            cursor = conn.execute(
                _INSERT, (self.scope, *values, created_at, None, content_hash(*values))
            )
            row_id = cursor.lastrowid
        assert row_id is not None
        return Label(row_id, self.scope, *values, created_at)

    def retract(self, label_id: int, by: str = "", reason: str = "") -> Label:
        """Retract the label row ``label_id`` (an :attr:`Label.id` of this scope) by appending a
        retraction: the row stays in the history, marked, and stops being current, so the
        feature's previous label (if any) is current again. Returns the row as now stored.

        Raises :class:`LabelError` for an unknown or already retracted id or an invalid ``by``
        (at most 100 characters) or ``reason`` (at most 4000).
        """
        row_id = check_index("label id", label_id)
        retraction = (
            check_text("retracted_by", by, MAX_LABELLER_CHARS),
            check_text("reason", reason, MAX_NOTES_CHARS, multiline=True),
        )
        with self._write() as conn:
            found = conn.execute(
                "SELECT r.id FROM labels l LEFT JOIN retractions r ON r.label_id = l.id "
                "WHERE l.id = ? AND l.scope = ?",
                (row_id, self.scope),
            ).fetchone()
            if found is None:
                raise LabelError(f"there is no label {row_id} in scope {self.scope!r}")
            if found[0] is not None:
                raise LabelError(f"label {row_id} is already retracted")
            conn.execute(_RETRACT, (row_id, *retraction, now()))
        return self._select("WHERE l.id = ?", (row_id,))[0]

    def retract_batch(self, batch: str, by: str = "", reason: str = "") -> int:
        """Retract every row an import added (:attr:`ImportReport.batch`) that is not retracted
        yet, in one transaction; returns how many. Raises :class:`LabelError` if no row of this
        scope came from ``batch``."""
        if not isinstance(batch, str) or not batch.strip():
            raise LabelError(f"an import batch id is needed, not {show(batch)}")
        retraction = (
            check_text("retracted_by", by, MAX_LABELLER_CHARS),
            check_text("reason", reason, MAX_NOTES_CHARS, multiline=True),
        )
        with self._write() as conn:
            known = conn.execute(
                "SELECT 1 FROM labels WHERE scope = ? AND batch = ? LIMIT 1",
                (self.scope, batch.strip()),
            ).fetchone()
            if known is None:
                raise LabelError(f"no label in scope {self.scope!r} came from import {show(batch)}")
            cursor = conn.execute(
                "INSERT INTO retractions (label_id, retracted_by, reason, created_at) "
                f"SELECT l.id, ?, ?, ? FROM labels l WHERE l.scope = ? AND l.batch = ? "
                f"AND {_NOT_RETRACTED.format('l')} ORDER BY l.id",
                (*retraction, now(), self.scope, batch.strip()),
            )
            count = cursor.rowcount
        logger.info("%s, scope %s: retracted %d rows of %s", self.path, self.scope, count, batch)
        return count

    # -- reading ----------------------------------------------------------------------------------

    def _select(self, where: str, params: tuple[object, ...]) -> list[Label]:
        with self._connect() as conn:
            return [Label(*row) for row in conn.execute(f"{_SELECT} {where}", params)]

    def current(self, layer: int | str, feature: int | str) -> Label | None:
        """The newest label of ``(layer, feature)`` that is not retracted, or None if it has
        none."""
        rows = self._select(
            "WHERE l.scope = ? AND l.layer = ? AND l.feature = ? AND r.id IS NULL "
            "ORDER BY l.id DESC LIMIT 1",
            (self.scope, check_index("layer", layer), check_index("feature", feature)),
        )
        return rows[0] if rows else None

    def history(self, layer: int | str, feature: int | str) -> list[Label]:
        """Every label ever given to ``(layer, feature)``, newest first, retracted ones included
        (:attr:`Label.retracted`)."""
        return self._select(
            "WHERE l.scope = ? AND l.layer = ? AND l.feature = ? ORDER BY l.id DESC",
            (self.scope, check_index("layer", layer), check_index("feature", feature)),
        )

    def current_all(self, layer: int | str | None = None) -> dict[tuple[int, int], Label]:
        """``{(layer, feature): current label}`` for every labelled feature (of one layer if given).

        One query: the newest id per feature comes from the ``(scope, layer, feature, id)`` index.
        """
        params: tuple[object, ...] = (self.scope,)
        if layer is None:
            where = f"WHERE l.id IN ({_CURRENT_IDS} GROUP BY c.layer, c.feature)"
        else:
            where = f"WHERE l.id IN ({_CURRENT_IDS} AND c.layer = ? GROUP BY c.feature)"
            params = (self.scope, check_index("layer", layer))
        rows = self._select(f"{where} ORDER BY l.layer, l.feature", params)
        return {(row.layer, row.feature): row for row in rows}

    def search(self, text: str, limit: int = 100) -> list[Label]:
        """Current labels whose label or notes contain every word of ``text``, best first.

        Case-insensitive for all of Unicode, and literal: the words are matched as substrings,
        whatever characters they hold (quotes, ``*``, ``%``, ``NEAR``, brackets). Words of 3
        characters or more are looked up in the FTS5 trigram index and the results ranked by
        bm25 (a match in the label weighs twice one in the notes; ties: newest first); when every
        word is shorter, the current labels are scanned and the newest come first. An empty
        ``text`` returns the newest ``limit`` current labels. Lone surrogates are ignored;
        ``text`` over 4000 characters is a :class:`LabelError`.
        """
        if type(limit) is not int or limit < 1:
            raise ValueError(f"limit must be a positive int, not {limit!r}")
        if isinstance(text, str):
            text = _LONE_SURROGATE.sub("", text)
        words = check_text("search text", text, MAX_NOTES_CHARS).split()
        long = [w for w in words if len(w) >= MIN_FTS_TERM]
        short = [w for w in words if len(w) < MIN_FTS_TERM]
        params: list[object] = []
        like = ""
        for word in short:
            pattern = "%" + re.sub(r"([\\%_])", r"\\\1", word.casefold()) + "%"
            like += (
                " AND (casefold(l.label) LIKE ? ESCAPE '\\' "
                "OR casefold(l.notes) LIKE ? ESCAPE '\\')"
            )
            params += [pattern, pattern]
        if long:
            query = " ".join('"' + w.replace('"', '""') + '"' for w in long)
            sql = (
                f"{_SELECT} JOIN labels_fts ON labels_fts.rowid = l.id "
                f"WHERE labels_fts MATCH ? AND l.scope = ? AND {_IS_CURRENT}{like} "
                "ORDER BY bm25(labels_fts, 2.0, 1.0), l.id DESC LIMIT ?"
            )
            params = [query, self.scope, *params, limit]
        else:
            sql = (
                f"{_SELECT} WHERE l.id IN ({_CURRENT_IDS} GROUP BY c.layer, c.feature){like} "
                "ORDER BY l.id DESC LIMIT ?"
            )
            params = [self.scope, *params, limit]
        with self._connect() as conn:
            conn.create_function("casefold", 1, casefold, deterministic=True)
            rows = conn.execute(sql, params).fetchall()
        return [Label(*row) for row in rows]

    def count(self) -> int:
        """Rows of history in this scope (every label ever added, retracted ones too)."""
        with self._connect() as conn:
            row = conn.execute("SELECT COUNT(*) FROM labels WHERE scope = ?", (self.scope,))
            return int(row.fetchone()[0])

    def batches(self) -> list[tuple[str, int, int]]:
        """The imports that added rows to this scope, oldest first: ``(batch id, rows added,
        rows of them retracted)``."""
        with self._connect() as conn:
            return [
                (str(batch), int(rows), int(retracted))
                for batch, rows, retracted in conn.execute(
                    "SELECT l.batch, COUNT(*), COUNT(r.id) FROM labels l "
                    "LEFT JOIN retractions r ON r.label_id = l.id "
                    "WHERE l.scope = ? AND l.batch IS NOT NULL GROUP BY l.batch ORDER BY MIN(l.id)",
                    (self.scope,),
                )
            ]

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
                    conn.execute(f"{_SELECT} WHERE l.scope = ? ORDER BY l.id", (self.scope,))
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

    def _check_record(self, record: dict[str, object]) -> _Checked:
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
        self.exact: set[tuple[_Values, str]] = set()  # content and time of the pending rows
        self.live: set[_Values] = set()  # content of the pending rows that are not retracted
        self.retractions: list[tuple[int, tuple[str, str, str]]] = []  # (pending index, ...)

    def add(
        self, values: _Values, created_at: str | None, retraction: tuple[str, str, str] | None
    ) -> bool:
        """Queue the row unless it is a duplicate (then False)."""
        digest = content_hash(*values)
        if created_at is None:
            if (
                values in self.live
                or self.conn.execute(_FIND_LIVE, (self.scope, digest, *values)).fetchone()
            ):
                return False
        elif (values, created_at) in self.exact or self.conn.execute(
            _FIND_EXACT, (self.scope, digest, created_at, *values)
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
        sql = _INSERT + ", (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" * (n - 1)
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
                _RETRACT, [(first + i, by, reason, at) for i, (at, by, reason) in self.retractions]
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


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back if the body raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
