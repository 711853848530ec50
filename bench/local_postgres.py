"""A throw-away PostgreSQL cluster for the benches: Debian's server binaries, a data folder of
its own, listening on 127.0.0.1 and a unix socket in that folder only (used by
``bench/neuronpedia_import.py``)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any


class Failed(Exception):
    """A step of the import failed as their code would (the message is Postgres's)."""


def _bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[4]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise SystemExit("no PostgreSQL server here: apt-get install postgresql")


class Postgres:
    """A throw-away cluster in ``root``: 127.0.0.1 and a unix socket in ``root`` only."""

    def __init__(self, root: Path, db: str = "neuronpedia") -> None:
        self.root = root
        self.db = db
        self.bin = _bindir()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *cmd: str) -> None:
        r = subprocess.run([*self.as_user, *cmd], capture_output=True, text=True, check=False)
        if r.returncode:
            raise SystemExit(f"{Path(cmd[0]).name} failed: {r.stderr.strip() or r.stdout.strip()}")

    def start(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        if self.as_user:
            shutil.chown(self.root, "postgres")
        data = self.root / "data"
        self._run(
            str(self.bin / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--locale=C.UTF-8",
        )  # fmt: skip
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
            f"-c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(data), "-o", opts, "-l",
            str(self.root / "server.log"), "-w", "start",
        )  # fmt: skip
        self.psql(f'CREATE DATABASE "{self.db}"', db="postgres")

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "stop")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.db}"

    def psql(self, sql: str, db: str | None = None, single: bool = False) -> str:
        """Run ``sql``; its tuples (unaligned, tab-separated), or :class:`Failed` with the error."""
        cmd = [
            str(self.bin / "psql"), "-X", "-q", "-tA", "-F", "\t", "-h", str(self.root),
            "-p", str(self.port), "-U", "postgres", "-d", db or self.db,
            "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose",
        ]  # fmt: skip
        if single:
            cmd.append("-1")
        r = subprocess.run(cmd, input=sql, capture_output=True, text=True, check=False)
        if r.returncode:
            lines = [x for x in r.stderr.splitlines() if x.startswith(("ERROR", "DETAIL"))]
            raise Failed(" ".join(lines) or r.stderr.strip())
        return r.stdout

    def rows(self, sql: str) -> list[dict[str, Any]]:
        out = self.psql(f"SELECT coalesce(json_agg(t), '[]') FROM ({sql}) t").strip()
        rows: list[dict[str, Any]] = json.loads(out)
        return rows
