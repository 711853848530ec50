"""A backup of a million rows of label history restores exactly: the export is written in chunks,
the import streams it back into an empty database, and the history is the same row for row, while
the process's memory stays far below the size of the file.

The work runs in child processes, so their peak memory is their own (reset before each phase
through ``/proc/self/clear_refs`` where Linux allows it): one fills the source database, then one
per format, side by side, exports it, imports the file into an empty database and compares the
two row for row. Each prints what it measured (seconds, peak RSS) as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).parents[1]
ROWS = 1_000_000
MAX_PHASE_RSS_MB = 400  # the files are ~90 MB (CSV) and ~210 MB (JSON): holding one, or its rows,
# would pass this; streaming stays near 100 MB

CHILD = r"""
import json, resource, sqlite3, sys, time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, sys.argv[1])
from explorer.labels import Labels
from explorer.labels.rows import content_hash, format_time

work, n, step = Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
NASTY = ["=SUM(A1)", "+1", "-x", "@cmd", "'=x", "''x", "'quoted'", "🧠 emoji", "plain",
         'say "hi", ok']
CONFIDENCES = ("low", "medium", "high")
measured = {}


def reset_peak():
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def phase(name, fn):
    reset = reset_peak()
    start, cpu = time.perf_counter(), cpu_s()
    result = fn()
    measured[name] = {"s": round(time.perf_counter() - start, 1), "cpu_s": round(cpu_s() - cpu, 1),
                      "peak_rss_mb": round(peak_mb()), "peak_reset": reset}
    return result


def rows():
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(n):
        values = (
            i % 26,
            (i * 7919) % 16384,
            f"{NASTY[i % len(NASTY)]} {i}",
            "" if i % 3 == 0 else f"{NASTY[i // 3 % len(NASTY)]}\nline two, \"quoted\" {i}",
            CONFIDENCES[i % 3],
            NASTY[i // 7 % len(NASTY)] if i % 5 == 0 else "",
        )
        at = format_time(base + timedelta(microseconds=i * 1001))  # some without a fraction
        yield ("default", *values, at, "old" if i % 2 else None, content_hash(*values))


def fill():
    source = Labels(work / "source.db", "default")
    conn = sqlite3.connect(source.path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    insert = ("INSERT INTO labels (scope, layer, feature, label, notes, confidence, labeller, "
              "created_at, batch, content_hash) VALUES ")
    batch = []
    for row in rows():
        batch.append(row)
        if len(batch) == 1000:
            conn.execute(insert + ", ".join(["(?,?,?,?,?,?,?,?,?,?)"] * 1000),
                         [v for r in batch for v in r])
            batch.clear()
    if batch:
        conn.execute(insert + ", ".join(["(?,?,?,?,?,?,?,?,?,?)"] * len(batch)),
                     [v for r in batch for v in r])
    conn.execute("INSERT INTO retractions (label_id, retracted_by, reason, created_at) "
                 "SELECT id, '@mod', '=why\nnot', '2026-06-01T00:00:00Z' FROM labels "
                 "WHERE id % 1009 = 0")
    conn.execute("COMMIT")
    conn.close()
    return source


ALL = ("SELECT l.id, l.scope, l.layer, l.feature, l.label, l.notes, l.confidence, l.labeller, "
       "l.created_at, r.created_at, r.retracted_by, r.reason FROM labels l "
       "LEFT JOIN retractions r ON r.label_id = l.id ORDER BY l.id")


def same_history(a, b):
    left = sqlite3.connect(a).execute(ALL)
    right = sqlite3.connect(b).execute(ALL)
    count = 0
    for x, y in zip(left, right, strict=True):
        assert x == y, (x, y)
        count += 1
    return count


if step == "fill":
    measured["rows"] = phase("fill", fill).count()
else:  # a leg: export the source as `step`, import it into an empty database, compare
    source = Labels(work / "source.db", "default")
    path = work / f"backup.{step}"
    measured["rows written"] = phase("export", lambda: source.export_to(path))
    measured["MB"] = round(path.stat().st_size / 2**20)
    target = Labels(work / f"{step}.db", "default")
    report = phase("import", lambda: target.import_file(path, max_bytes=None, max_rows=None))
    measured["report"] = [report.added, report.duplicates, report.skipped, report.errors]
    measured["identical rows"] = phase("compare", lambda: same_history(source.path, target.path))
    measured["current"] = phase("current_all", lambda: len(target.current_all()))
    measured["current in source"] = len(source.current_all())
    found = phase("search", lambda: [f"{r.label} {r.notes}" for r in target.search("plain 99")])
    measured["found"] = [len(found), all("plain" in t and "99" in t for t in found)]
    path.unlink()
print(json.dumps(measured))
"""


def _child(tmp_path: Path, step: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(REPO), str(tmp_path), str(ROWS), step],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _measured(child: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = child.communicate(timeout=1800)
    assert child.returncode == 0, err[-5000:]
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


@pytest.mark.slow
def test_a_million_row_backup_restores_exactly(tmp_path: Path) -> None:
    fill = _measured(_child(tmp_path, "fill"))
    assert fill["rows"] == ROWS
    legs = {fmt: _child(tmp_path, fmt) for fmt in ("csv", "json")}  # two cores, two legs
    try:
        measured = {"fill": fill, **{fmt: _measured(child) for fmt, child in legs.items()}}
    finally:
        for child in legs.values():
            if child.poll() is None:
                child.kill()
                child.communicate()
    print(json.dumps(measured, indent=1))  # with -s: the numbers the docs quote
    for fmt in ("csv", "json"):
        leg = measured[fmt]
        assert leg["rows written"] == ROWS
        assert leg["report"] == [ROWS, 0, 0, []]
        assert leg["identical rows"] == ROWS
        assert leg["current"] == leg["current in source"] > 0
        assert leg["found"][0] > 0 and leg["found"][1]
        for step in ("export", "import"):
            if leg[step]["peak_reset"]:
                assert leg[step]["peak_rss_mb"] < MAX_PHASE_RSS_MB, (fmt, step, leg[step])
