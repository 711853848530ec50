"""``precompute explain`` end to end against a real OpenAI-compatible server: llama.cpp's
(``llama-cpp-python[server]``) serving the embedded Gemma 3 270M GGUF on 127.0.0.1. The run is
killed once a feature is saved and run again: it resumes, nothing is written twice.

Marked ``llm`` (skipped unless ``--llm`` or ``GSE_LLM_TESTS=1``): installing the server compiles
llama.cpp (see docs/explanations.md for the time it took here).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import free_port

from explorer.explanations import Explanations
from explorer.paths import ASSETS_STORE, REPO_ROOT
from precompute.explain.serve import MODEL_ALIAS, embedded_gguf, server_command

pytestmark = pytest.mark.llm
FEATURES = ("0", "1")


@pytest.fixture(scope="module")
def llm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("llama_cpp.server")
    port = free_port()
    cmd = server_command(embedded_gguf(), "127.0.0.1", port, n_ctx=8192)
    log = tmp_path_factory.mktemp("llm") / "server.log"
    with log.open("wb") as sink:  # a file: llama.cpp logs far more than a pipe holds
        server = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                err = log.read_text(errors="replace")[-2000:]
                pytest.fail(f"llama.cpp server exited: {err}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama.cpp server did not start in 180 s")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _explain(url: str, db: Path) -> list[str]:
    return [
        sys.executable, "-m", "precompute", "explain", "--store", str(ASSETS_STORE),
        "--explanations", str(db), "--llm-url", url, "--llm-model", MODEL_ALIAS,
        "--layers", "9", "--features", *FEATURES, "--n-explain", "5", "--n-test", "2",
        "--per-prompt", "4",
        "--concurrency", "2", "--timeout", "300", "--no-system-role", "--no-progress",
    ]  # fmt: skip


def _rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM explanations").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_explain_end_to_end_killed_and_resumed(llm_url: str, tmp_path: Path) -> None:
    db = tmp_path / "explanations.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(_explain(llm_url, db), env=env, cwd=REPO_ROOT)
    deadline = time.monotonic() + 500
    while _rows(db) == 0 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, "the first run ended before it could be killed"
    first.send_signal(signal.SIGKILL)
    first.wait()
    saved = _rows(db)
    assert 1 <= saved < len(FEATURES)
    t0 = time.perf_counter()
    second = subprocess.run(
        _explain(llm_url, db), env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=560
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"({saved} done before, 0 failed)" in second.stdout
    rows = [r for f in FEATURES for r in Explanations(db).history(9, int(f))]
    assert len(rows) == len(FEATURES) == _rows(db)  # one row a feature: resumed, not redone
    for r in rows:
        assert r.source == "llm" and r.model == MODEL_ALIAS and r.text
        for value in (r.detection, r.fuzzing, r.score):
            assert value is not None and 0.0 <= value <= 1.0
        assert r.n_scored == 4
    print(f"\nresumed run: {time.perf_counter() - t0:.0f} s; {second.stdout.strip()}")
    for r in rows:
        print(f"  9/{r.feature}: {r.describe()} det {r.detection:.2f} fuzz {r.fuzzing:.2f}")
