"""A local Hugging Face hub cache, written file by file in ``huggingface_hub``'s own layout.

The real cache of a repository looks like this (``huggingface_hub`` 2.x)::

    <cache>/models--google--gemma-scope-2b-pt-res/
        refs/main                                   # the commit hash "main" points at
        blobs/<sha256 of the file>                  # LFS files (weights) ...
        blobs/<git blob sha1>                       # ... and plain files (json) by their etag
        snapshots/<commit>/layer_3/width_16k/average_l0_59/params.npz -> ../../../../../blobs/…

With ``HF_HUB_OFFLINE=1``, ``hf_hub_download`` resolves ``refs/main`` and returns the snapshot
path, exactly as it does for a file downloaded earlier; a file missing there raises
``LocalEntryNotFoundError``.

sae-lens's Gemma Scope 2 loader also reads each ``params.safetensors`` header with two HTTP range
requests that ignore offline mode; :class:`RangeRequestHub` answers them from this cache the way
the hub would, or fails the way an unreachable hub does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


def commit_of(repo_id: str) -> str:
    """A fixed 40-hex commit hash per repository (what ``refs/main`` holds)."""
    return hashlib.sha1(repo_id.encode()).hexdigest()


def repo_cache_dir(cache: Path, repo_id: str) -> Path:
    """``models--owner--name``, as ``huggingface_hub.file_download.repo_folder_name`` spells it."""
    return cache / ("models--" + repo_id.replace("/", "--"))


def write_hub_file(cache: Path, repo_id: str, path: str, data: bytes, lfs: bool = True) -> Path:
    """Put ``data`` at ``path`` of ``repo_id``'s ``main`` in the cache; returns the snapshot path.

    The blob is named by its etag: the sha256 for LFS files, the git blob sha1 for plain ones.
    """
    if lfs:
        etag = hashlib.sha256(data).hexdigest()
    else:
        etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    repo = repo_cache_dir(cache, repo_id)
    commit = commit_of(repo_id)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    blob = repo / "blobs" / etag
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    pointer = repo / "snapshots" / commit / path
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    return pointer


def write_hub_json(cache: Path, repo_id: str, path: str, obj: dict[str, Any]) -> Path:
    return write_hub_file(cache, repo_id, path, json.dumps(obj, indent=2).encode(), lfs=False)


def point_hub_at(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """Make ``huggingface_hub`` use ``cache``, offline.

    ``huggingface_hub.constants`` reads ``HF_HOME``/``HF_HUB_CACHE`` once, at import, and
    ``hf_hub_download`` reads ``constants.HF_HUB_CACHE`` on every call: the environment is set
    for any process started later, the constant for this one.
    """
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(cache.parent / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache that ``huggingface_hub`` uses, offline, for this test."""
    cache = tmp_path / "hub"
    cache.mkdir()
    point_hub_at(monkeypatch, cache)
    return cache


@dataclass
class _Response:
    url: str
    status_code: int
    content: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def raise_for_status(self) -> None:
        import requests

        if self.status_code >= 400:
            raise requests.HTTPError(f"{self.status_code} Client Error for url: {self.url}")


@dataclass
class RangeRequestHub:
    """Stands in for ``requests`` in sae-lens's loaders: ``get`` answers hub range requests.

    Args:
        cache: the hub cache whose snapshots hold the files.
        reachable: ``False`` fails every request as an unreachable hub does (name resolution).
        requests: ``(url, Range header)`` of each request, in order.
    """

    cache: Path
    reachable: bool = True
    requests: list[tuple[str, str]] = field(default_factory=list)

    def get(self, url: str, headers: dict[str, Any], timeout: float | None = None) -> _Response:
        import requests
        from huggingface_hub import constants

        self.requests.append((url, str(headers.get("Range"))))
        if not self.reachable:
            raise requests.ConnectionError(f"Failed to resolve host of {url}")
        match = re.fullmatch(
            re.escape(constants.ENDPOINT) + r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", url
        )
        if match is None:
            return _Response(url, 404)
        repo_id, revision, path = match.groups()
        if revision == "main":
            revision = commit_of(repo_id)
        file = repo_cache_dir(self.cache, repo_id) / "snapshots" / revision / path
        if not file.is_file():
            return _Response(url, 404)
        data = file.read_bytes()
        start, end = map(int, re.fullmatch(r"bytes=(\d+)-(\d+)", headers["Range"]).groups())  # type: ignore[union-attr]
        return _Response(url, 206, data[start : end + 1])

    def install(self, monkeypatch: pytest.MonkeyPatch) -> RangeRequestHub:
        """Replace ``requests`` inside sae-lens's loader module (only there) with this hub."""
        from sae_lens.loading import pretrained_sae_loaders

        monkeypatch.setattr(pretrained_sae_loaders, "requests", self)
        return self
