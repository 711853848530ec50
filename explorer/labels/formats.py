"""Label files: exports as standard CSV or JSON, and the parsing of imported ones (ours or
hand-made) into numbered records; the database checks each record's values."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping

from explorer.labels.rows import COLUMNS, MAX_IMPORT_ROWS, LabelError, show


def write_csv(rows: Iterable[Mapping[str, object]]) -> str:
    """Rows as standard CSV with a header of :data:`COLUMNS`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_json(rows: Iterable[Mapping[str, object]]) -> str:
    """Rows as a JSON list of objects."""
    return json.dumps(list(rows), ensure_ascii=False, indent=1)


EXTRA_CELLS = "\x00extra cells"  # key under which _read_csv keeps cells past the header
Records = list[tuple[int, dict[str, object]]]


def read_csv(text: str) -> tuple[list[str], Records]:
    """Header (lower-cased) and ``(row number, {column: cell})``; blank lines are skipped."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise LabelError("the CSV is empty; it needs a header row with layer, feature, label")
        columns = [name.strip().lower() for name in header]
        repeated = sorted({c for c in columns if c and columns.count(c) > 1})
        if repeated:
            raise LabelError(f"the CSV header repeats {', '.join(map(show, repeated))}")
        records: Records = []
        for number, cells in enumerate(reader, start=2):
            if not any(cell.strip() for cell in cells):
                continue
            if len(records) >= MAX_IMPORT_ROWS:
                raise LabelError(f"the import has more than {MAX_IMPORT_ROWS:,} rows; split it")
            record: dict[str, object] = dict(zip(columns, cells, strict=False))
            record[EXTRA_CELLS] = any(cell.strip() for cell in cells[len(columns) :])
            records.append((number, record))
    except csv.Error as e:
        raise LabelError(f"the CSV cannot be read: {e}") from None
    return columns, records


def read_json(text: str) -> tuple[list[str], Records]:
    """Keys (lower-cased, in order of first use) and ``(row number, object)``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise LabelError(f"the JSON is malformed ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise LabelError("the JSON is nested too deeply") from None
    if not isinstance(data, list):
        raise LabelError("the JSON must be a list of objects, one per label")
    if len(data) > MAX_IMPORT_ROWS:
        raise LabelError(f"the import has more than {MAX_IMPORT_ROWS:,} rows; split it")
    columns: dict[str, None] = {}
    records: Records = []
    for number, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            raise LabelError(f"the JSON must be a list of objects, but item {number} is not one")
        record = {str(k).strip().lower(): v for k, v in item.items()}
        columns.update(dict.fromkeys(record))
        records.append((number, record))
    return list(columns), records
