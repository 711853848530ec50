"""The label database from the command line, for its owner: back up, restore, retract.

    python -m explorer.labels export labels.sqlite --scope default backup.csv
    python -m explorer.labels import labels.sqlite --scope default backup.csv
    python -m explorer.labels batches labels.sqlite --scope default
    python -m explorer.labels retract-batch labels.sqlite --scope default 20260102T030405Z-9f8e7d6c
    python -m explorer.labels retract labels.sqlite --scope default 42 --by ana --reason spam

``import`` has no size limit (the app's upload keeps the public one); ``export`` writes the full
history, retractions included, and replaces the file only once it is complete.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from explorer.labels.db import Labels
from explorer.labels.rows import LabelError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m explorer.labels", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, what in [
        ("export", "write the scope's full history to a .csv or .json file"),
        ("import", "append the rows of a .csv or .json file (no size limit)"),
        ("batches", "list the imports, with their rows and retracted rows"),
        ("retract", "retract one label row by its id"),
        ("retract-batch", "retract every row an import added"),
    ]:
        sub = commands.add_parser(name, help=what, description=what)
        sub.add_argument("database", help="the label database (SQLite file)")
        sub.add_argument("--scope", required=True, help="the SAE set, e.g. the preset name")
        if name in ("export", "import"):
            sub.add_argument("file", help="a .csv or .json file")
        if name == "retract":
            sub.add_argument("id", type=int, help="the label row's id")
        if name == "retract-batch":
            sub.add_argument("batch", help="the import's batch id (see batches)")
        if name.startswith("retract"):
            sub.add_argument("--by", default="", help="who retracts")
            sub.add_argument("--reason", default="", help="why")
    args = parser.parse_args(argv)
    try:
        labels = Labels(args.database, args.scope)
        if args.command == "export":
            rows = labels.export_to(args.file)
            print(f"wrote {rows:,} rows to {args.file}")
        elif args.command == "import":
            report = labels.import_file(args.file, max_bytes=None, max_rows=None)
            print(report.summary(), f"Batch: {report.batch}." if report.batch else "")
            for error in report.errors:
                print(f"  {error}")
        elif args.command == "batches":
            for batch, rows, retracted in labels.batches():
                print(f"{batch}\t{rows} rows\t{retracted} retracted")
        elif args.command == "retract":
            row = labels.retract(args.id, by=args.by, reason=args.reason)
            print(f"retracted label {row.id} ({row.layer}/{row.feature}: {row.label!r})")
        else:
            count = labels.retract_batch(args.batch, by=args.by, reason=args.reason)
            print(f"retracted {count} row{'s' * (count != 1)} of {args.batch}")
    except LabelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
