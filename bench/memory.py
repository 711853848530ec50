"""What the scale benches measure besides time: this process's memory and the bytes on disk.

Shared by ``bench_scale.py`` (the precompute) and ``bench_scale_app.py`` (the app on its store),
so that neither imports the other's script for them. Linux only (``/proc``, ``ru_maxrss`` in kB).
"""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def rss_gb() -> float:
    """This process's resident memory now, in GB (NaN where ``/proc`` has no VmRSS line)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1e6
    return float("nan")


def dir_bytes(path: Path, pattern: str = "**/*") -> int:
    """The total size of the files under ``path`` that match ``pattern``."""
    return sum(p.stat().st_size for p in path.glob(pattern) if p.is_file())
