"""The app process killed (SIGKILL) while users save labels: on restart the database is intact and
every label whose save was acknowledged over HTTP is there."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import free_port

from explorer.labels import Labels

TESTS = Path(__file__).resolve().parent

# A real server process: the tiny app (the helpers' bundle and a random store) on 127.0.0.1.
SERVER = """
import sys, time
sys.path[:0] = [{tests!r}, {root!r}]
from pathlib import Path
import helpers
from explorer.app import Context, build_app
from explorer.labels import Labels
from explorer.store import Store
from precompute.store_build.accumulate import ReduceConfig
from precompute.store_build.job import Job, RunConfig

tmp = Path({tmp!r})
tok = helpers.make_tokenizer()
hf = helpers.make_gemma3(len(tok))
bundle = helpers.tiny_bundle(hf, tok, helpers.make_random_saes(tmp, hf))
corpus = helpers.write_word_corpus(tmp / "c.jsonl", n_docs=10)
cfg = RunConfig(corpus=str(corpus), tokens=300, context_size=16, batch_windows=8,
                reduce=ReduceConfig(top_k=3, n_bins=5, n_intervals=2, per_interval=1))
store = Job(cfg, bundle, tmp / "store", bundle_meta={{"model": "tiny"}}).run()
labels = Labels({db!r}, scope="tiny", widths={{1: 48, 2: 48}})
demo = build_app(Context(bundle=bundle, store=Store.open(store), labels=labels))
demo.queue().launch(server_name="127.0.0.1", server_port={port}, prevent_thread_lock=True,
                    quiet=True)
print("READY", flush=True)
while True:
    time.sleep(1)
"""


@pytest.mark.slow
def test_labels_acknowledged_before_a_sigkill_survive(tmp_path: Path) -> None:
    from gradio_client import Client

    port, db = free_port(), tmp_path / "labels.sqlite"
    code = SERVER.format(
        tests=str(TESTS), root=str(TESTS.parent), tmp=str(tmp_path), db=str(db), port=port
    )
    server = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert server.stdout is not None
        deadline = time.monotonic() + 120
        while server.stdout.readline().strip() != "READY":
            assert server.poll() is None and time.monotonic() < deadline, "server did not start"
        acknowledged: list[tuple[int, str]] = []
        lock = threading.Lock()
        stop = threading.Event()

        def writer(i: int) -> None:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            n = 0
            while not stop.is_set():
                label = f"writer {i} label {n}"
                try:
                    client.predict(2, n % 48, label, f"w{i}", "", api_name="/label_feature")
                except Exception:  # the server died under us: that save was not acknowledged
                    return
                with lock:
                    acknowledged.append((n % 48, label))
                n += 1

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        while len(acknowledged) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(server.pid, signal.SIGKILL)  # mid-stream: writers are still saving
        server.wait(timeout=30)
        stop.set()
        for t in threads:
            t.join(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    assert len(acknowledged) >= 30
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    reopened = Labels(db, scope="tiny", widths={1: 48, 2: 48})
    stored = {(h.feature, h.label) for f in range(48) for h in reopened.history(2, f)}
    missing = [a for a in acknowledged if a not in stored]
    assert missing == []
