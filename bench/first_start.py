"""First start: ``python -m explorer`` with an empty model cache until the page answers.

    python bench/first_start.py [--converters transformers,direct] [--rounds 1]

Each round starts the app once per converter (``GSE_GGUF_CONVERTER``), each with a fresh
``GSE_CACHE_DIR`` in a temporary directory (removed afterwards), so the embedded GGUF is assembled
and converted on the way up; then once more on the filled cache (the start every later run
pays). Prints, per start, the time until the page answered and the conversion's own time (the
``seconds`` its ``conversion.json`` records: assembling, dequantizing, writing). Converters
alternate order between rounds, since a shared machine drifts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from app_process import app_process

from explorer.gguf_model import CONVERTERS, HF_DIR_NAME, MARKER


def first_start(converter: str) -> tuple[float, float, float]:
    """``(first start, its conversion, start on the filled cache)`` in seconds."""
    cache = Path(tempfile.mkdtemp(prefix="gse-first-start-"))
    env = {"GSE_CACHE_DIR": str(cache), "GSE_GGUF_CONVERTER": converter}
    try:
        with app_process(env=env) as app:
            first = app.ready_s
        marker = json.loads((cache / HF_DIR_NAME / MARKER).read_text())
        if marker.get("converter") != converter:
            raise SystemExit(f"asked for {converter}, converted with {marker.get('converter')}")
        with app_process(env=env) as app:
            warm = app.ready_s
        return first, float(marker["seconds"]), warm
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--converters", default=",".join(reversed(CONVERTERS)))
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    converters = args.converters.split(",")
    if unknown := set(converters) - set(CONVERTERS):
        parser.error(f"unknown converter(s) {sorted(unknown)}; known: {', '.join(CONVERTERS)}")
    for r in range(args.rounds):
        for converter in converters if r % 2 == 0 else converters[::-1]:
            first, conversion, warm = first_start(converter)
            print(
                f"round {r + 1} {converter:>12}: first start {first:5.1f} s "
                f"(conversion {conversion:5.1f} s), then {warm:5.1f} s on the filled cache",
                flush=True,
            )


if __name__ == "__main__":
    main()
