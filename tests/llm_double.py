"""A scripted OpenAI-compatible chat server on 127.0.0.1 (stdlib ``http.server``), for the
protocol, retry, concurrency and resume tests of ``precompute explain``.

It answers ``POST /v1/chat/completions``: the explainer gets ``[EXPLANATION]: <explanation>``,
a scorer a list of ``answer`` (1 by default) per ``Example i:`` line of the last message. Before
answering it can fail: ``fail`` is a list of HTTP statuses returned to the next requests, in order.
It records every request body, and the most requests it held at once.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Script:
    explanation: str = "[EXPLANATION]: words about queues"
    answer: int = 1
    wrong_length: bool = False
    delay_s: float = 0.0
    fail: list[int] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.bodies.append(body)
            if self.fail:
                status = self.fail.pop(0)
                return status, {"error": {"message": f"scripted {status}"}}
        last = body["messages"][-1]["content"]
        if last.startswith("Latent explanation:"):
            n = len(re.findall(r"^Example \d+:", last, re.MULTILINE)) + self.wrong_length
            text = json.dumps([self.answer] * n)
        else:
            text = self.explanation
        usage = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
        return 200, {
            "id": "x",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            "usage": usage,
        }


def _handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            with script.lock:
                script.active += 1
                script.max_active = max(script.max_active, script.active)
            try:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                time.sleep(script.delay_s)
                if self.path != "/v1/chat/completions":
                    status, data = 404, {"error": "not found"}
                else:
                    status, data = script.reply(body)
            finally:
                with script.lock:
                    script.active -= 1
            raw = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            if status == 429:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(raw)

    return Handler


@contextmanager
def serve(script: Script) -> Iterator[str]:
    """Serve ``script`` on 127.0.0.1 (a free port); yields the API base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
