"""Documents from a corpus spec, and the BOS-prefixed token windows that precompute feeds the model.

A corpus *spec* is one string, so that a store's manifest can name its corpus exactly:

- ``"default"``: the shipped corpus, ``assets/corpus/corpus.jsonl.xz`` (built by
  ``python -m precompute build-corpus``; every record carries its own ``split``);
- a path to ``.jsonl`` / ``.jsonl.gz`` / ``.jsonl.xz`` (one JSON object a line with at least
  ``"text"``; optional ``"id"``, ``"source"``, ``"split"``) or to a ``.txt`` file (documents
  separated by two or more blank lines, or by a form feed);
- ``"hf:NAME"`` or ``"hf:NAME:CONFIG"``: a Hugging Face dataset, streamed (online only). The real
  corpus of the Gemma Scope presets is ``hf:monology/pile-uncopyrighted``.

Documents without a ``split`` field are split by a hash of their id (about
``HELDOUT_FRACTION`` of them held out), so the split never depends on the order they are read in.

>>> [d.doc_id for d in iter_documents("notes.txt", split="all")]  # doctest: +SKIP
['notes:0000', 'notes:0001']
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import lzma
import os
import re
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, cast
from urllib.parse import urlparse

from explorer.files import file_sha256
from explorer.paths import ASSETS_CORPUS

logger = logging.getLogger(__name__)

SPLITS = ("train", "heldout", "all")
HELDOUT_FRACTION = 0.06
"""Share of documents held out when a corpus does not say (hash of the doc id, so stable)."""
MIN_WINDOW_TOKENS = 8
"""A document's last chunk with fewer tokens than this (BOS not counted) is dropped."""
HF_PREFIX = "hf:"
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.xz")
_TXT_SPLIT = re.compile(r"\f|\n[ \t]*\n(?:[ \t]*\n)+")
_OFFLINE_VALUES = {"1", "true", "yes", "on"}


class CorpusError(ValueError):
    """A corpus spec, file or source that cannot be read; the message is one line."""


@dataclass(frozen=True)
class Document:
    """One document of a corpus.

    Args:
        doc_id: stable identifier, unique within the corpus (e.g. ``austen-emma-0042``).
        text: the document text (UTF-8, ``\\n`` newlines).
        source: where it comes from (a source name, a file stem or a dataset subset).
    """

    doc_id: str
    text: str
    source: str


@dataclass(frozen=True)
class Window:
    """One model input: BOS followed by up to ``context_size - 1`` tokens of one document.

    Args:
        doc_id: the document the tokens come from.
        start: offset of the first non-BOS token within the document's token list.
        token_ids: ``[bos, t_start, t_start+1, …]``.
    """

    doc_id: str
    start: int
    token_ids: list[int]


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer that :func:`token_windows` uses."""

    bos_token_id: int | None

    def __call__(self, text: str, *, add_special_tokens: bool = ...) -> Any: ...


def default_corpus_path() -> Path:
    """The shipped corpus file (it may not exist yet: ``python -m precompute build-corpus``)."""
    return ASSETS_CORPUS / "corpus.jsonl.xz"


def assign_split(doc_id: str, heldout_fraction: float = HELDOUT_FRACTION) -> str:
    """``"heldout"`` for about ``heldout_fraction`` of ids, else ``"train"``; a pure function.

    The first 8 bytes of sha256(doc_id) as an integer, compared with the fraction of 2**64.
    """
    if not 0.0 <= heldout_fraction <= 1.0:
        raise CorpusError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}")
    h = int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "big")
    return "heldout" if h < heldout_fraction * 2**64 else "train"


def iter_documents(spec: str, split: str = "train") -> Iterator[Document]:
    """Yield the documents of ``spec`` that belong to ``split`` (``train``, ``heldout``, ``all``).

    Raises ``CorpusError`` for an unknown split, a bad spec, a missing or unreadable file, invalid
    UTF-8 (naming the file, line and byte offset) or an unreachable Hugging Face hub. Errors in a
    file are raised when the generator reaches them.
    """
    if split not in SPLITS:
        raise CorpusError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    if not isinstance(spec, str) or not spec.strip():
        raise CorpusError(f"bad corpus spec {spec!r}: expected 'default', a file path or 'hf:NAME'")
    if spec.startswith(HF_PREFIX):
        return _iter_hf(spec, split)
    path = _resolve_path(spec)
    if path.name.endswith(".txt"):
        return _iter_txt(path, split)
    return _iter_jsonl(path, split)


def run_documents(spec: str, split: str = "all", seed: int = 0) -> Iterator[Document]:
    """The documents a precompute run reads, in a representative order.

    Corpus files are ordered by source (all of Austen, then Shakespeare, ...), so the first million
    tokens in file order would come from one source. For a file spec this yields the held-out
    documents first (for ``split="all"``), then the training documents, each group in a
    permutation drawn from ``seed``: any prefix of the stream mixes the sources in their corpus
    shares, and held-out text is used before text the SAEs were trained on. An ``hf:`` spec is a
    stream and keeps its own order.
    """
    if spec.startswith(HF_PREFIX):
        yield from iter_documents(spec, split)
        return
    import numpy as np

    rng = np.random.default_rng(seed)
    for part in ("heldout", "train") if split == "all" else (split,):
        docs = list(iter_documents(spec, part))
        for i in rng.permutation(len(docs)):
            yield docs[int(i)]


def corpus_sha256(spec: str) -> str:
    """Fingerprint of a corpus spec for manifests.

    For ``default`` and file specs: sha256 of the file's bytes (compressed bytes for ``.gz`` /
    ``.xz``). For ``hf:`` specs: sha256 of the spec string itself — a streamed dataset cannot be
    hashed without reading all of it, so the fingerprint names the dataset, not its content.
    """
    if spec.startswith(HF_PREFIX):
        _parse_hf(spec)
        return hashlib.sha256(spec.encode("utf-8")).hexdigest()

    path = _resolve_path(spec)
    try:
        return file_sha256(path)
    except OSError as e:
        raise CorpusError(f"cannot read corpus file {path}: {e.strerror or e}") from e


def token_windows(
    docs: Iterable[Document],
    tokenizer: Tokenizer,
    context_size: int = 128,
    min_tokens: int = MIN_WINDOW_TOKENS,
) -> Iterator[Window]:
    """Cut each document into BOS-prefixed windows of at most ``context_size`` tokens.

    Each document is tokenized on its own without special tokens, cut into consecutive chunks of
    ``context_size - 1`` tokens, and each chunk is prefixed with ``tokenizer.bos_token_id``. Windows
    never span two documents. A chunk shorter than ``min(min_tokens, context_size - 1)`` tokens —
    only a document's last chunk can be — is dropped (too little context to be worth a forward
    pass). Order: documents in input order, windows by position.

    With ``context_size=4`` a document tokenized as ``[5, 6, 7, 8]`` and ``min_tokens=1`` gives
    ``Window(start=0, token_ids=[bos, 5, 6, 7])`` and ``Window(start=3, token_ids=[bos, 8])``.
    """
    if context_size < 2:
        raise CorpusError(f"context_size must be at least 2 (BOS + 1 token), got {context_size}")
    if min_tokens < 1:
        raise CorpusError(f"min_tokens must be at least 1, got {min_tokens}")
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise CorpusError("tokenizer has no bos_token_id: windows must start with BOS")
    chunk = context_size - 1
    min_len = min(min_tokens, chunk)
    for doc in docs:
        ids = list(tokenizer(doc.text, add_special_tokens=False)["input_ids"])
        for start in range(0, len(ids), chunk):
            piece = ids[start : start + chunk]
            if len(piece) < min_len:
                continue
            yield Window(doc_id=doc.doc_id, start=start, token_ids=[int(bos), *map(int, piece)])


# --- files -------------------------------------------------------------------------------------


def _resolve_path(spec: str) -> Path:
    if spec == "default":
        path = default_corpus_path()
        if not path.is_file():
            raise CorpusError(
                f"default corpus not found at {path}: build it with `python -m precompute "
                "build-corpus`"
            )
        return path
    path = Path(spec).expanduser()
    name = path.name
    if not (name.endswith(_JSONL_SUFFIXES) or name.endswith(".txt")):
        raise CorpusError(
            f"bad corpus spec {spec!r}: expected 'default', 'hf:NAME[:CONFIG]' or a file ending "
            "in .jsonl, .jsonl.gz, .jsonl.xz or .txt"
        )
    if not path.is_file():
        raise CorpusError(f"corpus file not found: {path}")
    return path


def _open_binary(path: Path) -> IO[bytes]:
    try:
        if path.name.endswith(".gz"):
            return cast(IO[bytes], gzip.open(path, "rb"))
        if path.name.endswith(".xz"):
            return lzma.open(path, "rb")
        return path.open("rb")
    except OSError as e:
        raise CorpusError(f"cannot open corpus file {path}: {e.strerror or e}") from e


def _decode(data: bytes, path: Path, line_no: int, offset: int) -> str:
    """Strict UTF-8; on failure say which file, line and byte offset (of the decompressed data)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"invalid UTF-8 in {path} at line {line_no}, byte offset {offset + e.start}"
        ) from e


def _iter_jsonl(path: Path, split: str) -> Iterator[Document]:
    stem = path.name.split(".")[0]
    offset = 0
    with _open_binary(path) as f:
        line_no = 0
        while True:
            try:
                raw = f.readline()
            except (OSError, EOFError, lzma.LZMAError) as e:
                raise CorpusError(f"cannot read corpus file {path}: {e}") from e
            if not raw:
                break
            line_no += 1
            line = _decode(raw, path, line_no, offset).strip()
            offset += len(raw)
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"invalid JSON in {path} at line {line_no}: {e.msg}") from e
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise CorpusError(f"{path} line {line_no}: expected an object with a 'text' string")
            doc_id = str(obj.get("id", f"{stem}:{line_no:06d}"))
            doc_split = obj.get("split")
            if doc_split is None:
                doc_split = assign_split(doc_id)
            elif doc_split not in ("train", "heldout"):
                raise CorpusError(
                    f"{path} line {line_no}: split must be 'train' or 'heldout', got {doc_split!r}"
                )
            if split in ("all", doc_split):
                yield Document(doc_id=doc_id, text=obj["text"], source=str(obj.get("source", stem)))


def _iter_txt(path: Path, split: str) -> Iterator[Document]:
    """Plain text: documents are separated by 2+ blank lines or a form feed; blank ones skipped."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"cannot read corpus file {path}: {e.strerror or e}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_no = data.count(b"\n", 0, e.start) + 1
        raise CorpusError(
            f"invalid UTF-8 in {path} at line {line_no}, byte offset {e.start}"
        ) from e
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    stem = path.name.removesuffix(".txt")
    pieces = [p.strip() for p in _TXT_SPLIT.split(text)]
    for k, piece in enumerate(p for p in pieces if p):
        doc_id = f"{stem}:{k:04d}"
        if split in ("all", assign_split(doc_id)):
            yield Document(doc_id=doc_id, text=piece, source=stem)


# --- Hugging Face --------------------------------------------------------------------------------


def _parse_hf(spec: str) -> tuple[str, str | None]:
    parts = spec[len(HF_PREFIX) :].split(":")
    if len(parts) > 2 or not parts[0] or (len(parts) == 2 and not parts[1]):
        raise CorpusError(f"bad corpus spec {spec!r}: expected 'hf:NAME' or 'hf:NAME:CONFIG'")
    return parts[0], (parts[1] if len(parts) == 2 else None)


def _check_hub_reachable(spec: str, timeout_s: float = 5.0) -> None:
    """Fail fast (instead of `datasets`' retry loop) when offline mode is set or the hub is down."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _OFFLINE_VALUES:
            raise CorpusError(f"corpus {spec} needs the Hugging Face hub, but {var} is set")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        raise CorpusError(
            f"corpus {spec} needs the Hugging Face hub, but {host}:{port} is unreachable ({e})"
        ) from e


def _iter_hf(spec: str, split: str) -> Iterator[Document]:
    """Stream ``train`` of a hub dataset; our train/heldout split is by hash of ``NAME:index``."""
    name, config = _parse_hf(spec)
    _check_hub_reachable(spec)
    try:
        import datasets  # heavy: only when an hf: corpus is actually read
    except ImportError as e:
        raise CorpusError(
            f"corpus {spec} needs the `datasets` package: pip install datasets"
        ) from e
    try:
        ds = datasets.load_dataset(name, config, split="train", streaming=True)
    except Exception as e:  # the hub raises many types; all mean "cannot read this dataset"
        msg = " ".join(str(e).split())
        raise CorpusError(f"cannot open {spec}: {type(e).__name__}: {msg}") from e
    logger.info("streaming %s (split %s)", spec, split)
    return _hf_documents(ds, name, split)


def _hf_documents(ds: Iterable[dict[str, Any]], name: str, split: str) -> Iterator[Document]:
    for i, row in enumerate(ds):
        text = row.get("text")
        if not isinstance(text, str):
            raise CorpusError(f"hf:{name} row {i} has no 'text' string")
        doc_id = str(row.get("id", f"{name}:{i:09d}"))
        if split not in ("all", assign_split(doc_id)):
            continue
        meta = row.get("meta")
        source = meta.get("pile_set_name", name) if isinstance(meta, dict) else name
        yield Document(doc_id=doc_id, text=text, source=str(source))


def pad_windows(windows: list[list[int]], pad_id: int, special_ids: set[int]) -> tuple[Any, Any]:
    """Right-pad token windows into torch ``ids [B, T]``; ``keep [B, T]`` marks the tokens
    that count (not special, not pad).

    Right padding is safe under causal attention: pads come after every real token.
    """
    import torch

    width = max(len(w) for w in windows)
    ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    for row, w in enumerate(windows):
        ids[row, : len(w)] = torch.tensor(w)
    keep = ~torch.isin(ids, torch.tensor(sorted(special_ids | {pad_id})))
    return ids, keep
