"""The label database: one SQLite file, append-only history per scope (see the package doc)."""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from explorer.labels.rows import (
    MAX_LABEL_CHARS,
    MAX_LABELLER_CHARS,
    MAX_NOTES_CHARS,
    SCHEMA_VERSION,
    Label,
    LabelError,
    casefold,
    check_confidence,
    check_index,
    check_text,
    content_hash,
    now,
    show,
)
from explorer.labels.schema import (
    BUSY_TIMEOUT_S,
    CURRENT_IDS,
    INSERT,
    IS_CURRENT,
    LONE_SURROGATE,
    MIGRATE_TO_2,
    MIN_FTS_TERM,
    NOT_RETRACTED,
    RETRACT,
    SCHEMA_1,
    SELECT,
    SQLITE_MAGIC,
    Values,
)
from explorer.labels.transfer import Transfers

logger = logging.getLogger(__name__)


class Labels(Transfers):
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
                    head = f.read(len(SQLITE_MAGIC))
                if head and head != SQLITE_MAGIC:
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
                    for statement in SCHEMA_1:
                        conn.execute(statement)
                    logger.info("created label database %s", path)
                if version < 2:
                    for statement in MIGRATE_TO_2:
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
    ) -> Values:
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
                INSERT, (self.scope, *values, created_at, None, content_hash(*values))
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
            conn.execute(RETRACT, (row_id, *retraction, now()))
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
                f"AND {NOT_RETRACTED.format('l')} ORDER BY l.id",
                (*retraction, now(), self.scope, batch.strip()),
            )
            count = cursor.rowcount
        logger.info("%s, scope %s: retracted %d rows of %s", self.path, self.scope, count, batch)
        return count

    # -- reading ----------------------------------------------------------------------------------

    def _select(self, where: str, params: tuple[object, ...]) -> list[Label]:
        with self._connect() as conn:
            return [Label(*row) for row in conn.execute(f"{SELECT} {where}", params)]

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
            where = f"WHERE l.id IN ({CURRENT_IDS} GROUP BY c.layer, c.feature)"
        else:
            where = f"WHERE l.id IN ({CURRENT_IDS} AND c.layer = ? GROUP BY c.feature)"
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
            text = LONE_SURROGATE.sub("", text)
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
                f"{SELECT} JOIN labels_fts ON labels_fts.rowid = l.id "
                f"WHERE labels_fts MATCH ? AND l.scope = ? AND {IS_CURRENT}{like} "
                "ORDER BY bm25(labels_fts, 2.0, 1.0), l.id DESC LIMIT ?"
            )
            params = [query, self.scope, *params, limit]
        else:
            sql = (
                f"{SELECT} WHERE l.id IN ({CURRENT_IDS} GROUP BY c.layer, c.feature){like} "
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
