"""The label database's SQL: its schema (version 1 and the migration to 2), the statements the
history is read and written with, and the limits they assume. Text only: no connection here."""

from __future__ import annotations

import re

BUSY_TIMEOUT_S = 10.0
SQLITE_MAGIC = b"SQLite format 3\x00"
APPEND_ONLY = "BEGIN SELECT RAISE(ABORT, 'label history is append-only'); END"
# Version 1, exactly as it was created: a new file gets it and then the migrations, so a new
# file and a migrated one have the same schema.
SCHEMA_1 = (
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
    f"CREATE TRIGGER labels_no_update BEFORE UPDATE ON labels {APPEND_ONLY}",
    f"CREATE TRIGGER labels_no_delete BEFORE DELETE ON labels {APPEND_ONLY}",
)
# Version 2: import batches, content hashes for the duplicate check, retractions (a table of
# their own, append-only too, so retracting never changes a label row or a label id), and the
# FTS5 index of label + notes (external content, filled by a trigger: rows are only inserted).
MIGRATE_TO_2 = (
    "ALTER TABLE labels ADD COLUMN batch TEXT",
    "ALTER TABLE labels ADD COLUMN content_hash INTEGER",
    # The one write to existing rows there will ever be: their content hash, derived from
    # columns that stay as they were, in the migration's transaction (so no one ever sees the
    # trigger missing).
    "DROP TRIGGER labels_no_update",
    "UPDATE labels SET content_hash = "
    "label_hash(layer, feature, label, notes, confidence, labeller)",
    f"CREATE TRIGGER labels_no_update BEFORE UPDATE ON labels {APPEND_ONLY}",
    "CREATE INDEX labels_by_content ON labels (scope, content_hash, created_at)",
    "CREATE INDEX labels_by_batch ON labels (scope, batch) WHERE batch IS NOT NULL",
    """CREATE TABLE retractions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        label_id INTEGER NOT NULL UNIQUE REFERENCES labels (id),
        retracted_by TEXT NOT NULL,
        reason TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    f"CREATE TRIGGER retractions_no_update BEFORE UPDATE ON retractions {APPEND_ONLY}",
    f"CREATE TRIGGER retractions_no_delete BEFORE DELETE ON retractions {APPEND_ONLY}",
    "CREATE VIRTUAL TABLE labels_fts USING fts5("
    "label, notes, content='labels', content_rowid='id', tokenize='trigram')",
    "CREATE TRIGGER labels_fts_insert AFTER INSERT ON labels BEGIN "
    "INSERT INTO labels_fts (rowid, label, notes) VALUES (new.id, new.label, new.notes); END",
    "INSERT INTO labels_fts (labels_fts) VALUES ('rebuild')",
)

SELECT = (
    "SELECT l.id, l.scope, l.layer, l.feature, l.label, l.notes, l.confidence, l.labeller, "
    "l.created_at, l.batch, r.created_at, COALESCE(r.retracted_by, ''), COALESCE(r.reason, '') "
    "FROM labels l LEFT JOIN retractions r ON r.label_id = l.id"
)
NOT_RETRACTED = "NOT EXISTS (SELECT 1 FROM retractions x WHERE x.label_id = {}.id)"
# The current label of each feature: its newest row that is not retracted.
CURRENT_IDS = f"SELECT MAX(c.id) FROM labels c WHERE c.scope = ? AND {NOT_RETRACTED.format('c')}"
IS_CURRENT = (  # of the row ``l`` of SELECT
    "r.id IS NULL AND NOT EXISTS (SELECT 1 FROM labels n WHERE n.scope = l.scope "
    "AND n.layer = l.layer AND n.feature = l.feature AND n.id > l.id "
    f"AND {NOT_RETRACTED.format('n')})"
)
INSERT = (
    "INSERT INTO labels (scope, layer, feature, label, notes, confidence, labeller, created_at, "
    "batch, content_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
RETRACT = "INSERT INTO retractions (label_id, retracted_by, reason, created_at) VALUES (?, ?, ?, ?)"
# Duplicate checks, through the content-hash index whatever the planner thinks of the feature
# index (one feature with a long history must not make an import quadratic).
SAME_CONTENT = (
    "layer = ? AND feature = ? AND label = ? AND notes = ? AND confidence = ? AND labeller = ?"
)
FIND_EXACT = (
    "SELECT id FROM labels INDEXED BY labels_by_content WHERE scope = ? AND content_hash = ? "
    f"AND created_at = ? AND {SAME_CONTENT} LIMIT 1"
)
FIND_LIVE = (
    "SELECT id FROM labels l INDEXED BY labels_by_content WHERE scope = ? AND content_hash = ? "
    f"AND {SAME_CONTENT} AND {NOT_RETRACTED.format('l')} LIMIT 1"
)
INSERT_ROWS = 1000  # rows per INSERT statement of an import (10 parameters each)
MIN_FTS_TERM = 3  # the trigram index finds terms of 3 characters or more
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
FORMATS = ("csv", "json")

# One checked import row: (layer, feature, label, notes, confidence, labeller), its canonical
# ``created_at`` (None: not given), and its retraction (at, by, reason) if it has one.
Values = tuple[int, int, str, str, str, str]
Checked = tuple[Values, str | None, tuple[str, str, str] | None]
