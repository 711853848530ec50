"""Feature labels: what people decide a feature means, kept in SQLite apart from the feature store.

The store is read-only and rebuilt by ``precompute``; labels are the one thing users write, so they
live in their own small database that survives a rebuild. Every label belongs to a *scope* (the SAE
set, e.g. the preset name ``"default"``): feature 12 of layer 9 means something different in
another SAE set, so every query is within one scope, and one file can hold several scopes.

History is append-only: :meth:`Labels.add` inserts a row and nothing is ever updated or deleted
(triggers refuse both). A feature's current label is its newest row (highest id) that is not
retracted::

    labels = Labels("labels.db", scope="default", widths={9: 4096})
    labels.add(9, 12, "French words")
    row = labels.add(9, 12, "French and Italian words", confidence="high")
    labels.current(9, 12).label  # 'French and Italian words'; history(9, 12) has both, newest first
    labels.retract(row.id, by="ana", reason="too broad")
    labels.current(9, 12).label  # 'French words' again; history(9, 12) still has both

Retracting appends a row to a table of retractions (append-only too): the retracted label stays
in :meth:`Labels.history`, marked (:attr:`Label.retracted`), and leaves the current views
(:meth:`Labels.current`, :meth:`Labels.current_all`, :meth:`Labels.search`). Every import
tags the rows it adds with a batch id (:attr:`ImportReport.batch`), and
:meth:`Labels.retract_batch` retracts a whole import at once.

Durability and threads: WAL with ``synchronous=FULL``, so a write that returned survives the
process being killed (and a power cut); a fresh connection per operation, so one :class:`Labels`
is safe from Gradio's thread pool. Writes from one object are serialised by a lock; writes from
other objects or processes wait on SQLite's lock (``busy_timeout`` 10 s). A file of schema 1 is
migrated in place, in one transaction, when it is opened.

Text is stored verbatim (any Unicode, HTML included) apart from control characters: whoever renders
a label must escape it. :meth:`Labels.search` goes through an FTS5 trigram index of label and
notes, ranked by bm25; any text is a literal query.

Exports are standard CSV/JSON of the full history (retractions included) that import back to the
identical history, written in chunks (:meth:`Labels.export_to`, :meth:`Labels.export_chunks`)
and read back as a stream, so a backup of any size restores (``import_file(path,
max_bytes=None, max_rows=None)``, or ``python -m explorer.labels import``; the default limits,
10 MB and 100,000 rows, are for what the public may upload). Importing a file twice adds
nothing. The CSV is defused against spreadsheet formulas (OWASP's CSV injection rule): a cell
that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a ``'`` in front
(``=SUM(A1)`` is written ``'=SUM(A1)``, which a spreadsheet shows as text), and so does a cell
that already starts with ``'``, so the rule is reversible: the CSV import removes exactly that
one quote (a ``'`` followed by one of those characters or by another ``'``), and export ->
import is lossless for every text. JSON is written as it is. A CSV row with broken quoting is
reported as ``row N: ...`` and skipped without swallowing the rows after it.

Modules: ``rows`` (a label's fields, limits and value checks), ``formats`` (CSV/JSON export
and the streaming import parse, CSV defusing), ``schema`` (the SQL: tables, migration,
statements), ``transfer`` (export and import of a history, streamed), ``db`` (:class:`Labels`,
the SQLite history),
``__main__`` (the command line: export, import, retract). May import the standard
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
    RETRACTION_COLUMNS,
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
    "RETRACTION_COLUMNS",
    "SCHEMA_VERSION",
    "ImportReport",
    "Label",
    "LabelError",
    "Labels",
]
