"""The app as a separate process on 127.0.0.1, for the benchmarks that measure it from outside."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class AppProcess:
    pid: int
    url: str
    ready_s: float  # from process start until the page answered


@contextmanager
def app_process(
    timeout_s: float = 300.0, env: dict[str, str] | None = None
) -> Iterator[AppProcess]:
    """``python -m explorer`` (the embedded default, a throwaway label database) on a free port,
    with ``env`` added to this process's environment; yields once the page answers, stops it on
    exit."""
    port = free_port()
    labels = str(Path(tempfile.mkdtemp()) / "labels.sqlite")
    env = dict(os.environ, GSE_LABELS=labels, **(env or {}))
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "explorer", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() - t0 > timeout_s:
                    raise SystemExit("the app did not start") from None
                time.sleep(0.2)
        yield AppProcess(proc.pid, url, time.monotonic() - t0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
