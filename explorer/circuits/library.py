"""The Circuits tab's graphs: the curated ones shipped precomputed, and a small cache of the rest.

Computing an attribution graph takes tens of seconds on a CPU, so the app keeps them:

- **curated** graphs ship as files, ``assets/graphs/<slug>.json`` (circuit-tracer's graph file,
  :mod:`explorer.circuits.files`), listed with their captions in ``assets/graphs/index.json``
  (``{"preset": ..., "graphs": [{"slug", "prompt", "target", "caption"}]}``; ``target`` null
  means the top prediction). They belong to one preset: another bundle gets none. They are
  written by ``python -m explorer graph --curated`` (:mod:`explorer.circuits.cli`).
- graphs computed in the app are kept per ``(prompt, target)`` in a bounded LRU
  (:data:`MAX_CACHED`), shared by every session (a graph depends on nothing else).

No Gradio, no torch: files and a dictionary. The app's ``Context`` holds one
:class:`GraphLibrary` (``ctx.graphs``); the command line reads the same index.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from explorer.paths import ASSETS

logger = logging.getLogger(__name__)

ASSETS_GRAPHS = ASSETS / "graphs"
INDEX = "index.json"
MAX_CACHED = 8
NODE_THRESHOLD = 0.8
EDGE_THRESHOLD = 0.85
"""The app's graphs, curated and computed, are pruned to these: circuit-tracer's 0.98 for edges
keeps 7,000 to 30,000 links on the embedded default (0.5 to 2 MB a file, more lines than a
plot can show); 0.85 keeps 1,500 to 6,000."""


@dataclass(frozen=True)
class CuratedGraph:
    """One curated graph: its file's slug, the prompt and target it explains, and a caption
    written by reading the graph."""

    slug: str
    prompt: str
    target: str | None
    caption: str


def read_index(directory: Path) -> tuple[str | None, list[CuratedGraph]]:
    """``(preset, curated graphs)`` of ``directory/index.json``; ``(None, [])`` when there is
    none. An entry lacking a field, or with one of the wrong type, is left out (logged)."""
    try:
        data = json.loads((directory / INDEX).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, []
    except (OSError, ValueError) as e:
        logger.warning("cannot read %s: %s", directory / INDEX, e)
        return None, []
    if not isinstance(data, dict):
        return None, []
    found = []
    for entry in data.get("graphs", []):
        ok = isinstance(entry, dict) and all(
            isinstance(entry.get(k), str) for k in ("slug", "prompt", "caption")
        )
        if not ok or not isinstance(entry.get("target"), str | None):
            logger.warning("a curated graph entry is malformed: %r", entry)
            continue
        found.append(
            CuratedGraph(entry["slug"], entry["prompt"], entry["target"], entry["caption"])
        )
    preset = data.get("preset")
    return (preset if isinstance(preset, str) else None), found


@dataclass
class GraphLibrary:
    """The curated graphs of ``directory`` (for bundles of preset ``preset``, read from the
    index when not given) and the cache of graphs computed since the app started."""

    directory: Path = ASSETS_GRAPHS
    max_cached: int = MAX_CACHED
    _cache: OrderedDict[tuple[str, str], Any] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _index: tuple[str | None, list[CuratedGraph]] | None = field(default=None, repr=False)

    def index(self) -> tuple[str | None, list[CuratedGraph]]:
        if self._index is None:
            self._index = read_index(self.directory)
        return self._index

    def curated(self, preset: str) -> list[CuratedGraph]:
        """The curated graphs of ``preset`` whose files exist."""
        owner, graphs = self.index()
        if owner != preset:
            return []
        return [g for g in graphs if self.path(g).is_file()]

    def path(self, graph: CuratedGraph) -> Path:
        return self.directory / f"{graph.slug}.json"

    def find(self, preset: str, prompt: str, target: str) -> CuratedGraph | None:
        """The curated graph of ``(prompt, target)`` (``target`` ``""``: the top prediction)."""
        for g in self.curated(preset):
            if g.prompt == prompt and (g.target or "") == target:
                return g
        return None

    def get(self, key: tuple[str, str]) -> Any | None:
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
            return found

    def put(self, key: tuple[str, str], value: Any) -> None:
        with self._lock:
            self._cache[key] = value
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)

    def __len__(self) -> int:
        return len(self._cache)
