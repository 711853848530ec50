"""The label database: one SQLite file, append-only history per scope (see the package doc)."""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from explorer.labels.formats import EXTRA_CELLS, read_csv, read_json, write_csv, write_json
from explorer.labels.rows import (
    COLUMNS,
    MAX_IMPORT_BYTES,
    MAX_LABEL_CHARS,
    MAX_LABELLER_CHARS,
    MAX_NOTES_CHARS,
    MAX_REPORTED_ERRORS,
    REQUIRED_COLUMNS,
    SCHEMA_VERSION,
    ImportReport,
    Label,
    LabelError,
    casefold,
    check_confidence,
    check_index,
    check_text,
    now,
    parse_time,
    show,
)

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 10.0
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SCHEMA = (
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
)
_SELECT = f"SELECT id, {', '.join(COLUMNS)} FROM labels"
_CURRENT_IDS = "SELECT MAX(id) FROM labels WHERE scope = ?"
_INSERT = f"INSERT INTO labels ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"

# (layer, feature, label, notes, confidence, labeller, created_at): what makes two rows duplicates.
_Key = tuple[int, int, str, str, str, str, str]


class Labels:
    """The labels of one scope in a SQLite file (created with its parent folder if missing).

    Args:
        path: The database file. A file that is not a label database is never modified.
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
        """Check the file is ours (or new) before SQLite writes anything, then set up the schema."""
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
            self._check_version(conn)  # before WAL, which would rewrite the header of any file
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                logger.warning("%s: journal mode is %s, not wal", path, mode)
            with _transaction(conn):
                if self._check_version(conn) == 0:
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    logger.info("created label database %s", path)

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
    ) -> tuple[int, int, str, str, str, str]:
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
            cursor = conn.execute(_INSERT, (self.scope, *values, created_at))
            row_id = cursor.lastrowid
        assert row_id is not None
        return Label(row_id, self.scope, *values, created_at)

    # -- reading ----------------------------------------------------------------------------------

    def _select(self, where: str, params: tuple[object, ...]) -> list[Label]:
        with self._connect() as conn:
            return [Label(*row) for row in conn.execute(f"{_SELECT} {where}", params)]

    def current(self, layer: int | str, feature: int | str) -> Label | None:
        """The newest label of ``(layer, feature)``, or None if it was never labelled."""
        rows = self._select(
            "WHERE scope = ? AND layer = ? AND feature = ? ORDER BY id DESC LIMIT 1",
            (self.scope, check_index("layer", layer), check_index("feature", feature)),
        )
        return rows[0] if rows else None

    def history(self, layer: int | str, feature: int | str) -> list[Label]:
        """Every label ever given to ``(layer, feature)``, newest first."""
        return self._select(
            "WHERE scope = ? AND layer = ? AND feature = ? ORDER BY id DESC",
            (self.scope, check_index("layer", layer), check_index("feature", feature)),
        )

    def current_all(self, layer: int | str | None = None) -> dict[tuple[int, int], Label]:
        """``{(layer, feature): current label}`` for every labelled feature (of one layer if given).

        One query: the newest id per feature comes from the ``(scope, layer, feature, id)`` index.
        """
        params: tuple[object, ...] = (self.scope,)
        if layer is None:
            where = f"WHERE id IN ({_CURRENT_IDS} GROUP BY layer, feature)"
        else:
            where = f"WHERE id IN ({_CURRENT_IDS} AND layer = ? GROUP BY feature)"
            params = (self.scope, check_index("layer", layer))
        rows = self._select(f"{where} ORDER BY layer, feature", params)
        return {(row.layer, row.feature): row for row in rows}

    def search(self, text: str, limit: int = 100) -> list[Label]:
        """Current labels whose label or notes contain ``text``, newest first.

        Case-insensitive for all of Unicode (both sides are case-folded), and ``%``/``_`` match
        themselves. An empty ``text`` returns the newest ``limit`` current labels.
        """
        if type(limit) is not int or limit < 1:
            raise ValueError(f"limit must be a positive int, not {limit!r}")
        needle = check_text("search text", text, MAX_NOTES_CHARS).casefold()
        pattern = "%" + re.sub(r"([\\%_])", r"\\\1", needle) + "%"
        with self._connect() as conn:
            conn.create_function("casefold", 1, casefold, deterministic=True)
            rows = conn.execute(
                f"{_SELECT} WHERE id IN ({_CURRENT_IDS} GROUP BY layer, feature) "
                "AND (casefold(label) LIKE ? ESCAPE '\\' OR casefold(notes) LIKE ? ESCAPE '\\') "
                "ORDER BY id DESC LIMIT ?",
                (self.scope, pattern, pattern, limit),
            ).fetchall()
        return [Label(*row) for row in rows]

    def count(self) -> int:
        """Rows of history in this scope (every label ever added, not just current ones)."""
        with self._connect() as conn:
            row = conn.execute("SELECT COUNT(*) FROM labels WHERE scope = ?", (self.scope,))
            return int(row.fetchone()[0])

    # -- export and import ------------------------------------------------------------------------

    def _export_rows(self) -> list[dict[str, object]]:
        rows = self._select("WHERE scope = ? ORDER BY id", (self.scope,))
        return [{k: v for k, v in asdict(row).items() if k != "id"} for row in rows]

    def export_csv(self) -> str:
        """The scope's full history as standard CSV (:data:`COLUMNS`, oldest first).

        Cells are not defused for spreadsheets (``=SUM(...)`` is written as is), so the file
        imports back exactly; write it with encoding ``utf-8-sig`` if Excel must read it.
        """
        return write_csv(self._export_rows())

    def export_json(self) -> str:
        """The scope's full history as a JSON list of objects (:data:`COLUMNS`, oldest first)."""
        return write_json(self._export_rows())

    def import_file(self, path: str | Path) -> ImportReport:
        """:meth:`import_text` of a ``.csv`` or ``.json`` UTF-8 file (a BOM is allowed)."""
        path = Path(path)
        fmt = {".csv": "csv", ".json": "json"}.get(path.suffix.lower())
        if fmt is None:
            raise LabelError(f"{path.name} is neither a .csv nor a .json file")
        try:
            size = path.stat().st_size
            if size > MAX_IMPORT_BYTES:
                raise LabelError(f"{path.name} is {size / 2**20:.1f} MB; the limit is 10 MB")
            data = path.read_bytes()
        except OSError as e:
            raise LabelError(f"cannot read {path.name}: {e.strerror}") from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise LabelError(
                f"{path.name} is not UTF-8 text (bad byte at offset {e.start}); save it as UTF-8"
            ) from None
        return self.import_text(text, fmt)

    def import_text(self, text: str, fmt: str) -> ImportReport:
        """Append the rows of a CSV or JSON export (ours or hand-made) to the history.

        Columns ``layer``, ``feature``, ``label`` are required; ``notes``, ``confidence``,
        ``labeller``, ``created_at``, ``scope`` are optional, others are ignored (and reported).
        A row of another scope, or one that :meth:`add` would refuse, is reported and skipped. A
        row identical to one in the history (or earlier in the text) is a duplicate and skipped,
        so importing an export twice adds nothing. ``created_at`` is kept when it is ISO-8601
        (normalised to UTC), otherwise it is the import time. The valid rows go in, in order, in
        one transaction. CSV rows are numbered as a spreadsheet shows them (header = row 1), JSON
        rows by position (first object = row 1).

        Raises :class:`LabelError` for an unknown ``fmt``, text over 10 MB or 100,000 rows,
        unparsable text or missing required columns, before touching the database.
        """
        if not isinstance(text, str):
            raise LabelError(f"import text must be a string, not {type(text).__name__}")
        if len(text) > MAX_IMPORT_BYTES or len(text.encode("utf-8", "surrogatepass")) > (
            MAX_IMPORT_BYTES
        ):
            raise LabelError("the import is larger than 10 MB; split it into smaller files")
        kind = fmt.strip().lower().lstrip(".") if isinstance(fmt, str) else ""
        if kind == "csv":
            columns, records = read_csv(text.removeprefix("\ufeff"))
        elif kind == "json":
            columns, records = read_json(text.removeprefix("\ufeff"))
        else:
            raise LabelError(f"import format must be csv or json, not {show(fmt)}")
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing and (records or kind == "csv"):
            raise LabelError(f"the import has no {', '.join(missing)} column; those are required")
        errors: list[str] = []
        unknown = [c for c in columns if c and c not in COLUMNS]  # blank: trailing commas
        if unknown:
            errors.append(f"ignored unknown columns: {', '.join(show(c) for c in unknown)}")
        rows: list[tuple[tuple[int, int, str, str, str, str], str | None]] = []
        for number, record in records:
            try:
                rows.append(self._check_record(record))
            except LabelError as e:
                errors.append(f"row {number}: {e}")
        skipped = len(records) - len(rows)
        if len(errors) > MAX_REPORTED_ERRORS:
            errors[MAX_REPORTED_ERRORS:] = [f"... and {len(errors) - MAX_REPORTED_ERRORS} more"]
        added = duplicates = 0
        if rows:
            with self._write() as conn:
                stamp = now()
                seen: set[_Key] = set(
                    conn.execute(
                        f"SELECT {', '.join(COLUMNS[1:])} FROM labels WHERE scope = ?",
                        (self.scope,),
                    )
                )
                fresh: list[_Key] = []
                for values, created_at in rows:
                    key = (*values, created_at or stamp)
                    if key in seen:
                        duplicates += 1
                    else:
                        seen.add(key)
                        fresh.append(key)
                conn.executemany(_INSERT, [(self.scope, *key) for key in fresh])
                added = len(fresh)
        report = ImportReport(added, duplicates, errors, skipped)
        logger.info("%s, scope %s: %s", self.path, self.scope, report.summary())
        return report

    def _check_record(
        self, record: dict[str, object]
    ) -> tuple[tuple[int, int, str, str, str, str], str | None]:
        """One import row's cleaned values and canonical ``created_at`` (None: use now)."""
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
        return values, parse_time(record.get("created_at"))


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
