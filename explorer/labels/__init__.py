"""Feature labels: what people decide a feature means, kept in SQLite apart from the feature store.

The store is read-only and rebuilt by ``precompute``; labels are the one thing users write, so they
live in their own small database that survives a rebuild. Every label belongs to a *scope* (the SAE
set, e.g. the preset name ``"default"``): feature 12 of layer 9 means something different in
another SAE set, so every query is within one scope, and one file can hold several scopes.

History is append-only: :meth:`Labels.add` inserts a row and nothing is ever updated or deleted
(triggers refuse both). A feature's current label is its newest row (highest id)::

    labels = Labels("labels.db", scope="default", widths={9: 4096})
    labels.add(9, 12, "French words")
    labels.add(9, 12, "French and Italian words", confidence="high")
    labels.current(9, 12).label  # 'French and Italian words'; history(9, 12) has both, newest first

Durability and threads: WAL with ``synchronous=FULL``, so a write that returned survives the
process being killed (and a power cut); a fresh connection per operation, so one :class:`Labels`
is safe from Gradio's thread pool. Writes from one object are serialised by a lock; writes from
other objects or processes wait on SQLite's lock (``busy_timeout`` 10 s).

Text is stored verbatim (any Unicode, HTML included) apart from control characters: whoever renders
a label must escape it. Exports are standard CSV/JSON that import back to the identical history;
the CSV is not defused against spreadsheet formulas (a label starting with ``=`` stays as it is),
since prefixing cells would break the round trip.

Modules: ``rows`` (a label's fields, limits and value checks), ``formats`` (CSV/JSON export
and import parsing), ``db`` (:class:`Labels`, the SQLite history). May import the standard
library only: the labels never need the model, the store or Gradio.
"""

from explorer.labels.db import Labels
from explorer.labels.rows import (
    COLUMNS,
    CONFIDENCES,
    MAX_IMPORT_BYTES,
    MAX_IMPORT_ROWS,
    MAX_LABEL_CHARS,
    MAX_LABELLER_CHARS,
    MAX_NOTES_CHARS,
    MAX_REPORTED_ERRORS,
    REQUIRED_COLUMNS,
    SCHEMA_VERSION,
    ImportReport,
    Label,
    LabelError,
)

__all__ = [
    "COLUMNS",
    "CONFIDENCES",
    "MAX_IMPORT_BYTES",
    "MAX_IMPORT_ROWS",
    "MAX_LABELLER_CHARS",
    "MAX_LABEL_CHARS",
    "MAX_NOTES_CHARS",
    "MAX_REPORTED_ERRORS",
    "REQUIRED_COLUMNS",
    "SCHEMA_VERSION",
    "ImportReport",
    "Label",
    "LabelError",
    "Labels",
]
