"""Where the project's own files are: the repository root and the embedded default's assets.

Computed once, here, from this file's location (an editable install or a clone). Caches for
converted models live elsewhere (``explorer.gguf_model.cache_root``).
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS = REPO_ROOT / "assets"
ASSETS_CORPUS = ASSETS / "corpus"
ASSETS_SAES = ASSETS / "saes"
ASSETS_TRANSCODERS = ASSETS / "transcoders"
ASSETS_STORE = ASSETS / "store"
CURATED = ASSETS / "curated.json"
