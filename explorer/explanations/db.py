"""The explanations database: one SQLite file, one append-only table (see the package doc)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 10.0
MAX_TEXT_CHARS = 2000
PAIRS_PER_QUERY = 400  # best_many: 800 parameters a statement (SQLite allows 32,766)
_MAGIC = b"SQLite format 3\x00"
_APPEND_ONLY = "BEGIN SELECT RAISE(ABORT, 'explanations are append-only'); END"
_SCHEMA = (
    """CREATE TABLE explanations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        layer INTEGER NOT NULL CHECK (layer >= 0),
        feature INTEGER NOT NULL CHECK (feature >= 0),
        source TEXT NOT NULL,
        method TEXT NOT NULL,
        model TEXT NOT NULL,
        prompt_version TEXT NOT NULL,
        text TEXT NOT NULL,
        detection REAL CHECK (detection IS NULL OR detection BETWEEN 0 AND 1),
        fuzzing REAL CHECK (fuzzing IS NULL OR fuzzing BETWEEN 0 AND 1),
        score REAL CHECK (score IS NULL OR score BETWEEN 0 AND 1),
        n_scored INTEGER NOT NULL DEFAULT 0,
        created TEXT NOT NULL,
        ref TEXT UNIQUE,
        extra TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX explanations_by_feature ON explanations (layer, feature)",
    "CREATE INDEX explanations_by_run ON explanations (method, model, prompt_version, layer)",
    f"CREATE TRIGGER explanations_no_update BEFORE UPDATE ON explanations {_APPEND_ONLY}",
    f"CREATE TRIGGER explanations_no_delete BEFORE DELETE ON explanations {_APPEND_ONLY}",
    "CREATE VIRTUAL TABLE explanations_fts USING fts5("
    "text, content='explanations', content_rowid='id', tokenize='trigram')",
    "CREATE TRIGGER explanations_fts_insert AFTER INSERT ON explanations BEGIN "
    "INSERT INTO explanations_fts (rowid, text) VALUES (new.id, new.text); END",
)
_COLUMNS = (
    "id, layer, feature, source, method, model, prompt_version, text, detection, fuzzing, score, "
    "n_scored, created, ref, extra"
)
# Best first: scored before unscored, higher score, then newest.
_BEST_ORDER = "score IS NULL, score DESC, id DESC"


class FeatureHits(NamedTuple):
    """What :meth:`Explanations.search_features` found."""

    features: list[tuple[int, int]]  # (layer, feature), best match first when ``complete``
    matched: int | None  # explanations that contain the query (None: more than were read)
    complete: bool  # False: more matched than the limit; ``features`` are the first, unranked


class ExplanationError(ValueError):
    """The explanations file cannot be used, or a row is invalid; the message says why."""


@dataclass(frozen=True)
class NewExplanation:
    """A row to append (the database assigns ``id`` and, unless given, ``created``)."""

    layer: int
    feature: int
    text: str
    source: str
    method: str
    model: str
    prompt_version: str = ""
    detection: float | None = None
    fuzzing: float | None = None
    score: float | None = None
    n_scored: int = 0
    created: str | None = None
    ref: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Explanation:
    """A stored row."""

    id: int
    layer: int
    feature: int
    source: str
    method: str
    model: str
    prompt_version: str
    text: str
    detection: float | None
    fuzzing: float | None
    score: float | None
    n_scored: int
    created: str
    ref: str | None
    extra: dict[str, Any]

    def describe(self) -> str:
        """One line of plain text: the explanation, its score and where it comes from."""
        score = "unscored" if self.score is None else f"score {self.score:.2f}"
        by = f"{self.source}, {self.model}" if self.model else self.source
        return f"{self.text} ({score}; {by})"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _unit(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ExplanationError(f"{name} must be in [0, 1], not {value!r}")
    return v


def _check(row: NewExplanation) -> tuple[Any, ...]:
    for name in ("layer", "feature", "n_scored"):
        value = getattr(row, name)
        if type(value) is not int or value < 0:
            raise ExplanationError(f"{name} must be an integer >= 0, not {value!r}")
    text = " ".join(str(row.text).split())
    if not text:
        raise ExplanationError(f"the explanation of {row.layer}/{row.feature} is empty")
    if len(text) > MAX_TEXT_CHARS:
        text = text[: MAX_TEXT_CHARS - 1] + "…"
    for name in ("source", "method"):
        if not str(getattr(row, name)).strip():
            raise ExplanationError(f"{name} must not be empty")
    return (
        row.layer,
        row.feature,
        row.source.strip(),
        row.method.strip(),
        str(row.model),
        str(row.prompt_version),
        text,
        _unit("detection", row.detection),
        _unit("fuzzing", row.fuzzing),
        _unit("score", row.score),
        row.n_scored,
        row.created or _now(),
        row.ref,
        json.dumps(row.extra, sort_keys=True, ensure_ascii=False),
    )


def _contains(q: str) -> str:
    """The LIKE pattern for text containing ``q`` (its wildcards escaped; ``ESCAPE '\\'``)."""
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _phrase(q: str) -> str:
    """``q`` as one FTS5 phrase: a literal, whatever its quotes and operators."""
    return '"' + q.replace('"', '""') + '"'


def _row(values: tuple[Any, ...]) -> Explanation:
    fields = list(values)
    fields[-1] = json.loads(fields[-1])
    return Explanation(*fields)


class Explanations:
    """The explanations in one SQLite file (created, with its folder, if missing).

    Args:
        path: the database file. A file that is not an explanations database is never modified.
        create: create the file if it is missing (the app opens read paths with ``False``).
    """

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path).expanduser().absolute()
        self._lock = threading.Lock()
        if not self.path.exists() and not create:
            raise ExplanationError(f"no explanations database at {self.path}")
        self._create()

    def __repr__(self) -> str:
        return f"Explanations({str(self.path)!r})"

    def _create(self) -> None:
        path = self.path
        try:
            if path.is_dir():
                raise ExplanationError(f"{path} is a folder, not an explanations database")
            if path.exists():
                with path.open("rb") as f:
                    head = f.read(len(_MAGIC))
                if head and head != _MAGIC:
                    raise ExplanationError(f"{path} is not SQLite; it was left untouched")
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ExplanationError(f"cannot open {path}: {e.strerror}") from None
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                tables = conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'explanations'"
                ).fetchall()
                if version > SCHEMA_VERSION:
                    raise ExplanationError(
                        f"{path} was written by a newer version (schema {version}, this one "
                        f"reads {SCHEMA_VERSION}); upgrade to open it"
                    )
                if version == 0:
                    others = conn.execute(
                        "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                    ).fetchone()[0]
                    if tables or others:
                        raise ExplanationError(
                            f"{path} is a SQLite database of something else; choose another path"
                        )
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("PRAGMA journal_mode = WAL")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute("PRAGMA synchronous = FULL")
            yield conn
        except sqlite3.DatabaseError as e:
            raise ExplanationError(f"explanations database {self.path}: {e}") from e
        finally:
            if conn is not None:
                conn.close()

    # -- writes: appends only -------------------------------------------------------------------

    def add(self, rows: Iterable[NewExplanation]) -> int:
        """Append ``rows`` in one transaction; rows whose ``ref`` is stored already are skipped.
        Returns how many rows were added."""
        values = [_check(r) for r in rows]
        if not values:
            return 0
        sql = (
            "INSERT OR IGNORE INTO explanations (layer, feature, source, method, model, "
            "prompt_version, text, detection, fuzzing, score, n_scored, created, ref, extra) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        count = "SELECT count(*) FROM explanations"
        with self._lock, self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                before = int(conn.execute(count).fetchone()[0])
                conn.executemany(sql, values)
                added = int(conn.execute(count).fetchone()[0]) - before
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return added

    # -- reads ------------------------------------------------------------------------------------

    def _select(self, where: str, params: tuple[Any, ...], tail: str = "") -> list[Explanation]:
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM explanations WHERE {where} {tail}", params
            ).fetchall()
        return [_row(r) for r in rows]

    def count(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT count(*) FROM explanations").fetchone()[0])

    def history(self, layer: int, feature: int) -> list[Explanation]:
        """Every explanation of one feature, best first."""
        return self._select(
            "layer = ? AND feature = ?", (layer, feature), f"ORDER BY {_BEST_ORDER}"
        )

    def best(self, layer: int, feature: int) -> Explanation | None:
        """The feature's best explanation (highest score, scored first, then newest)."""
        found = self._select(
            "layer = ? AND feature = ?", (layer, feature), f"ORDER BY {_BEST_ORDER} LIMIT 1"
        )
        return found[0] if found else None

    def best_map(self, layer: int) -> dict[int, Explanation]:
        """``{feature: best explanation}`` for one layer, in one query."""
        rows = self._select("layer = ?", (layer,), f"ORDER BY feature, {_BEST_ORDER}")
        best: dict[int, Explanation] = {}
        for r in rows:
            best.setdefault(r.feature, r)
        return best

    def best_many(self, pairs: Iterable[tuple[int, int]]) -> dict[tuple[int, int], Explanation]:
        """``{(layer, feature): best explanation}`` for the pairs that have one (a page of the
        browse table), in one query per :data:`PAIRS_PER_QUERY` pairs."""
        want = sorted({(int(a), int(b)) for a, b in pairs})
        best: dict[tuple[int, int], Explanation] = {}
        with self._connect() as conn:
            for i in range(0, len(want), PAIRS_PER_QUERY):
                chunk = want[i : i + PAIRS_PER_QUERY]
                rows = conn.execute(
                    f"WITH want(l, f) AS (VALUES {', '.join(['(?, ?)'] * len(chunk))}) "
                    # Without INDEXED BY, SQLite built an automatic index over the whole table
                    # for each query: a 500-feature page of 425,984 explanations took 535 ms,
                    # 8.6 ms with it (bench/bench_explanation_search.py).
                    f"SELECT {_COLUMNS} FROM want CROSS JOIN explanations "
                    "INDEXED BY explanations_by_feature ON layer = l AND feature = f "
                    f"ORDER BY layer, feature, {_BEST_ORDER}",
                    [v for pair in chunk for v in pair],
                ).fetchall()
                for r in rows:
                    found = _row(r)
                    best.setdefault((found.layer, found.feature), found)
        return best

    def done(self, method: str, model: str, prompt_version: str) -> set[tuple[int, int]]:
        """The ``(layer, feature)`` pairs that have a row of this method, model and prompt."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT DISTINCT layer, feature FROM explanations WHERE method = ? AND model = ? "
                "AND prompt_version = ?",
                (method, model, prompt_version),
            ).fetchall()
        return {(int(a), int(b)) for a, b in rows}

    def search(self, query: str, limit: int = 50) -> list[Explanation]:
        """Explanations whose text contains ``query`` (a literal, 3+ characters: the trigram
        index), ranked by bm25; shorter queries scan with LIKE, in id order."""
        q = " ".join(str(query).split())
        if not q:
            return []
        if len(q) < 3:
            return self._select(
                "text LIKE ? ESCAPE '\\'", (_contains(q),), f"ORDER BY id LIMIT {int(limit)}"
            )
        phrase = _phrase(q)
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {', '.join('e.' + c.strip() for c in _COLUMNS.split(','))} "
                "FROM explanations_fts f JOIN explanations e ON e.id = f.rowid "
                "WHERE explanations_fts MATCH ? ORDER BY bm25(explanations_fts) LIMIT ?",
                (phrase, int(limit)),
            ).fetchall()
        return [_row(r) for r in rows]

    def search_features(self, query: str, limit: int = 50) -> FeatureHits:
        """The features of the explanations containing ``query`` (a feature once, at its best
        match), without reading whole rows: what a search over many features needs.

        Up to ``limit`` matching rows are ranked by bm25, as :meth:`search` does. When more rows
        match, ranking them all costs more than a search may (400 ms for a trigram in 308,000 of
        425,984 rows): the first ``limit`` in id order are taken instead, and the hits say so.
        """
        q = " ".join(str(query).split())
        if not q:
            return FeatureHits([], 0, True)
        with self._connect() as conn:
            if len(q) < 3:  # a scan: take one row more than the limit to know if there are more
                rows = conn.execute(
                    "SELECT layer, feature FROM explanations WHERE text LIKE ? ESCAPE '\\' "
                    "ORDER BY id LIMIT ?",
                    (_contains(q), int(limit) + 1),
                ).fetchall()
                complete = len(rows) <= limit
                matched = len(rows) if complete else None
                rows = rows[:limit]
            else:
                phrase = _phrase(q)
                match = "FROM explanations_fts f JOIN explanations e ON e.id = f.rowid WHERE "
                match += "explanations_fts MATCH ?"
                matched = int(
                    conn.execute(
                        "SELECT count(*) FROM explanations_fts WHERE explanations_fts MATCH ?",
                        (phrase,),
                    ).fetchone()[0]
                )
                complete = matched <= limit
                order = "ORDER BY bm25(explanations_fts) " if complete else ""
                rows = conn.execute(
                    f"SELECT e.layer, e.feature {match} {order}LIMIT ?", (phrase, int(limit))
                ).fetchall()
        features = list(dict.fromkeys((int(a), int(b)) for a, b in rows))
        return FeatureHits(features, matched, complete)
