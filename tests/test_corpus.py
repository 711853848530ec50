"""Corpus readers, token windows and the corpus builder, all offline on files made in tmp_path."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from precompute.corpus import (
    CorpusError,
    Document,
    assign_split,
    corpus_sha256,
    default_corpus_path,
    iter_documents,
    run_documents,
    token_windows,
)
from precompute.corpus_build import (
    BuildCorpusConfig,
    ExtractedSource,
    LicenceExcerpt,
    SourceInfo,
    SourceText,
    balance,
    chunk_sections,
    clean_text,
    write_corpus,
)
from precompute.corpus_build.extract import _dict_b64, _drop_lists

# --- iter_documents ------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".xz"):
        data = lzma.compress(data)
    path.write_bytes(data)
    return path


ROWS = [
    {"id": "a", "text": "first document", "source": "s1", "split": "train"},
    {"id": "b", "text": "second document", "split": "heldout"},
    {"text": "third, no id and no split"},
]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.xz"])
def test_jsonl_documents_and_splits(tmp_path: Path, suffix: str) -> None:
    path = _write_jsonl(tmp_path / f"mini{suffix}", ROWS)
    every = list(iter_documents(str(path), split="all"))
    assert [d.doc_id for d in every] == ["a", "b", "mini:000003"]
    assert every[0] == Document("a", "first document", "s1")
    assert every[1].source == "mini"  # the file stem when a row names no source
    train = [d.doc_id for d in iter_documents(str(path), split="train")]
    heldout = [d.doc_id for d in iter_documents(str(path), split="heldout")]
    assert "a" in train and "b" in heldout
    # The row without a split goes where the hash of its id says.
    assert ("mini:000003" in heldout) == (assign_split("mini:000003") == "heldout")
    assert sorted(train + heldout) == sorted(d.doc_id for d in every)


def test_run_documents_put_heldout_first_and_mix_sources(tmp_path: Path) -> None:
    rows = [
        {"id": f"{src}-{i}", "text": f"{src} {i}", "source": src, "split": split}
        for src in ("austen", "pydocs")
        for i in range(20)
        for split in ["heldout" if i < 3 else "train"]
    ]
    path = str(_write_jsonl(tmp_path / "c.jsonl", rows))
    order = [d.doc_id for d in run_documents(path, "all", seed=0)]
    assert sorted(order) == sorted(r["id"] for r in rows)  # each document once
    assert {int(i.split("-")[1]) for i in order[:6]} == {0, 1, 2}  # the 6 held-out ones first
    # The file is ordered by source; a prefix of the run's order mixes them.
    assert {i.split("-")[0] for i in order[6:16]} == {"austen", "pydocs"}
    assert order == [d.doc_id for d in run_documents(path, "all", seed=0)]  # deterministic
    assert order != [d.doc_id for d in run_documents(path, "all", seed=1)]
    train = [d.doc_id for d in run_documents(path, "train", seed=0)]
    assert sorted(train) == sorted(r["id"] for r in rows if r["split"] == "train")


def test_txt_documents_split_on_two_blank_lines_or_form_feed(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("one\npara\n\nstill one\n\n\n\ntwo\r\n\r\n\r\nthree\fFour\n\n\n\n")
    docs = list(iter_documents(str(path), split="all"))
    assert [d.text for d in docs] == ["one\npara\n\nstill one", "two", "three", "Four"]
    assert [d.doc_id for d in docs] == ["notes:0000", "notes:0001", "notes:0002", "notes:0003"]
    assert {d.source for d in docs} == {"notes"}


def test_split_is_deterministic_and_about_six_percent(tmp_path: Path) -> None:
    ids = [f"doc-{i}" for i in range(20_000)]
    first = [assign_split(i) for i in ids]
    assert first == [assign_split(i) for i in ids]
    share = first.count("heldout") / len(ids)
    assert 0.05 < share < 0.07
    assert assign_split("x", 0.0) == "train" and assign_split("x", 1.0) == "heldout"

    path = tmp_path / "many.txt"
    path.write_text("\n\n\n".join(f"document number {i}" for i in range(300)))
    runs = [[d.doc_id for d in iter_documents(str(path), s)] for s in ("train", "heldout", "all")]
    again = [[d.doc_id for d in iter_documents(str(path), s)] for s in ("train", "heldout", "all")]
    assert runs == again
    train, heldout, every = runs
    assert not set(train) & set(heldout) and sorted(train + heldout) == sorted(every)
    assert heldout, "300 documents should hold some out"


def test_invalid_utf8_names_file_line_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl at line 2, byte offset 30"):
        list(iter_documents(str(path), split="all"))
    txt = tmp_path / "bad.txt"
    txt.write_bytes(b"ok\n\xff\n")
    with pytest.raises(CorpusError, match=r"bad\.txt at line 2, byte offset 3"):
        list(iter_documents(str(txt), split="all"))


def test_bad_inputs_raise_corpus_error(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="not found"):
        iter_documents(str(tmp_path / "missing.jsonl"))
    with pytest.raises(CorpusError, match="unknown split"):
        iter_documents(str(tmp_path / "missing.jsonl"), split="test")
    with pytest.raises(CorpusError, match="bad corpus spec"):
        iter_documents(str(tmp_path / "data.csv"))
    with pytest.raises(CorpusError, match="bad corpus spec"):
        iter_documents("hf:")
    bad_json = tmp_path / "broken.jsonl"
    bad_json.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(CorpusError, match=r"invalid JSON in .*broken\.jsonl at line 2"):
        list(iter_documents(str(bad_json), split="all"))
    no_text = _write_jsonl(tmp_path / "notext.jsonl", [{"body": "x"}])
    with pytest.raises(CorpusError, match="'text'"):
        list(iter_documents(str(no_text), split="all"))
    assert issubclass(CorpusError, ValueError)


def test_hf_spec_offline_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(CorpusError, match="HF_HUB_OFFLINE") as info:
        iter_documents("hf:monology/pile-uncopyrighted")
    assert time.perf_counter() - t0 < 2.0
    assert "\n" not in str(info.value)


def test_corpus_sha256(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "c.jsonl.xz", ROWS)
    assert corpus_sha256(str(path)) == hashlib.sha256(path.read_bytes()).hexdigest()
    spec = "hf:monology/pile-uncopyrighted"
    assert corpus_sha256(spec) == hashlib.sha256(spec.encode()).hexdigest()
    with pytest.raises(CorpusError):
        corpus_sha256(str(tmp_path / "nope.txt"))


# --- token_windows -------------------------------------------------------------------------------

VOCAB = ["<pad>", "<eos>", "<bos>", "<unk>", *"abcdefghijklmnopqrstuvwxyz"]


def _tiny_tokenizer(bos: bool = True) -> Any:
    """One token per letter (a WordLevel over single letters, split on every character)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w"), behavior="isolated")
    kwargs = {"bos_token": "<bos>"} if bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", **kwargs)


def test_token_windows_golden() -> None:
    tok = _tiny_tokenizer()
    bos = tok.bos_token_id
    assert bos == 2
    ids = tok("abcd", add_special_tokens=False)["input_ids"]
    assert ids == [4, 5, 6, 7]
    windows = list(token_windows([Document("d", "abcd", "s")], tok, context_size=4, min_tokens=1))
    assert [(w.start, w.token_ids) for w in windows] == [(0, [bos, 4, 5, 6]), (3, [bos, 7])]
    # With the default minimum the 1-token tail is dropped.
    assert len(list(token_windows([Document("d", "abcd", "s")], tok, context_size=4))) == 1


def test_token_windows_cover_each_document() -> None:
    tok = _tiny_tokenizer()
    bos = tok.bos_token_id
    letters = "abcdefghijklmnopqrstuvwxyz"
    docs = [Document(f"d{n}", " ".join(letters[i % 26] for i in range(n)), "s") for n in range(40)]
    context, min_tokens = 8, 3
    windows = list(token_windows(docs, tok, context_size=context, min_tokens=min_tokens))
    assert all(w.token_ids[0] == bos and 2 <= len(w.token_ids) <= context for w in windows)
    assert all(bos not in w.token_ids[1:] for w in windows)
    for doc in docs:
        tokens = tok(doc.text, add_special_tokens=False)["input_ids"]
        mine = [w for w in windows if w.doc_id == doc.doc_id]
        joined = [t for w in mine for t in w.token_ids[1:]]
        assert [w.start for w in mine] == list(range(0, len(joined), context - 1))
        tail = len(tokens) % (context - 1)
        dropped = tail if 0 < tail < min_tokens else 0
        assert joined == tokens[: len(tokens) - dropped]
    # Deterministic order: documents in input order, windows by position.
    assert windows == list(token_windows(docs, tok, context_size=context, min_tokens=min_tokens))


def test_token_windows_rejects_bad_arguments() -> None:
    with pytest.raises(CorpusError, match="bos_token_id"):
        list(token_windows([Document("d", "ab", "s")], _tiny_tokenizer(bos=False)))
    with pytest.raises(CorpusError, match="context_size"):
        list(token_windows([Document("d", "ab", "s")], _tiny_tokenizer(), context_size=1))


# --- the builder's pure parts ------------------------------------------------------------------


def test_clean_text() -> None:
    assert clean_text("\ufeffa\r\nb\x00c  \r\td\x0c\n") == "a\nbc\n\td\n"


def test_dictd_base64_numbers() -> None:
    assert _dict_b64("A") == 0 and _dict_b64("b") == 27 and _dict_b64("BdqM") == 383_628


def test_drop_lists_removes_indexes_only() -> None:
    index = "\n\n".join(f"headword {i}" for i in range(12))
    entries = "\n\n".join([":foo: n.\nA real definition.", "See {bar}.", ":baz:", ":qux:"])
    text = "Intro line one\nline two\n\n" + index + "\n\n" + entries
    assert _drop_lists(text) == "Intro line one\nline two\n\n" + entries


def test_balance_water_filling() -> None:
    assert balance({"a": 90, "b": 10, "c": 10}, 0.5) == {
        "a": 20,
        "b": float("inf"),
        "c": float("inf"),
    }
    two = balance({"a": 100, "b": 100, "c": 10, "d": 10}, 0.4)
    assert two["a"] == two["b"] == pytest.approx(0.4 * 20 / 0.2)  # a = b = 40, total 100
    assert balance({"a": 5, "b": 5}, 0.5) == {"a": float("inf"), "b": float("inf")}
    with pytest.raises(CorpusError, match="cannot keep"):
        balance({"only": 10}, 0.4)


def test_chunk_sections_keeps_text_and_bounds() -> None:
    cfg = BuildCorpusConfig(min_chars=60, max_chars=120, min_doc_chars=10, sources=("x",))
    para = "word " * 9  # 44 characters
    section = "\n\n".join(f"{para}{i}" for i in range(7)) + "\n\nTHE END"
    docs = chunk_sections([section, "tiny"], cfg)
    assert all(len(d) <= cfg.max_chars + cfg.min_doc_chars for d in docs)
    assert all(len(d) >= cfg.min_chars for d in docs[:-1])
    assert " ".join(" ".join(docs).split()) == " ".join(section.split())  # nothing lost
    assert docs[-1].endswith("THE END")  # a short tail joins the document before it
    long_line = "x" * 250 + "\n" + "y " * 200
    pieces = chunk_sections([long_line], cfg)
    assert all(len(p) <= cfg.max_chars + cfg.min_doc_chars for p in pieces)
    assert "".join(pieces).replace("\n", "").replace(" ", "") == long_line.replace(
        "\n", ""
    ).replace(" ", "")


def _fake_source(name: str, n_works: int, paragraphs: int) -> ExtractedSource:
    info = SourceInfo(
        name=name,
        description=f"fake {name}",
        registry="Test",
        package=f"fake-{name}",
        version="1.0",
        license="public-domain",
        license_note="Made up for a test.",
        excerpts=(LicenceExcerpt(path="COPYING", text="Public domain.", file_sha256="0" * 64),),
    )
    texts = tuple(
        SourceText(
            f"work-{w}",
            tuple(
                "\n\n".join(
                    f"{name} w{w} s{s} p{p} " + "lorem ipsum " * 8 for p in range(paragraphs)
                )
                for s in range(3)
            ),
        )
        for w in range(n_works)
    )
    return ExtractedSource(info, texts)


def _fake_sources() -> dict[str, ExtractedSource]:
    return {
        "big": _fake_source("big", 6, 12),
        "mid": _fake_source("mid", 2, 10),
        "small": _fake_source("small", 1, 8),
    }


def _read_records(path: Path) -> list[dict[str, str]]:
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_write_corpus_is_byte_identical_and_balanced(tmp_path: Path) -> None:
    cfg = BuildCorpusConfig(
        min_chars=150,
        max_chars=400,
        min_doc_chars=20,
        max_share=0.5,
        heldout_fraction=0.2,
        xz_preset=1,
        xz_extreme=False,
        sources=("big", "mid", "small"),
    )
    a = write_corpus(_fake_sources(), tmp_path / "a", cfg)
    b = write_corpus(_fake_sources(), tmp_path / "b", cfg)
    for name in ("corpus.jsonl.xz", "manifest.json", "NOTICE"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert a.corpus_sha256 == b.corpus_sha256 and a.sources == b.sources

    records = _read_records(tmp_path / "a" / "corpus.jsonl.xz")
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)
    assert all(list(r) == ["id", "text", "source", "license", "split"] for r in records)
    chars = Counter[str]()
    for r in records:
        chars[r["source"]] += len(r["text"])
        assert r["split"] == assign_split(r["id"], 0.2)
    total = sum(chars.values())
    assert max(chars.values()) / total <= 0.5
    assert chars["big"] < sum(len(t) for t in _fake_sources()["big"].texts[0].sections) * 6
    assert {r["split"] for r in records} == {"train", "heldout"}

    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(a.corpus_path.read_bytes()).hexdigest()
    assert manifest["splits"] == {"train": a.n_train, "heldout": a.n_heldout}
    assert {s["name"]: s["n_chars"] for s in manifest["sources"]} == dict(chars)
    notice = (tmp_path / "a" / "NOTICE").read_text()
    assert "fake-big 1.0" in notice and "Public domain." in notice


def test_write_corpus_names_a_missing_source(tmp_path: Path) -> None:
    sources = _fake_sources()
    del sources["mid"]
    cfg = BuildCorpusConfig(sources=("big", "mid", "small"))
    with pytest.raises(CorpusError, match="source 'mid'"):
        write_corpus(sources, tmp_path, cfg)
    assert not (tmp_path / "corpus.jsonl.xz").exists()


def test_cli_reports_errors_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import precompute.__main__ as cli

    def fail(*args: Any, **kwargs: Any) -> None:
        raise CorpusError("source 'devil': `apt-get download dict-devil` failed (exit 100): E: x")

    monkeypatch.setattr(cli, "build_corpus", fail)
    assert cli.main(["build-corpus", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "error: source 'devil': `apt-get download dict-devil` failed (exit 100): E: x\n"


# --- the shipped corpus -------------------------------------------------------------------------


@pytest.mark.skipif(not default_corpus_path().is_file(), reason="assets/corpus not built")
def test_shipped_corpus_is_valid() -> None:
    path = default_corpus_path()
    manifest = json.loads((path.parent / "manifest.json").read_text())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest["sha256"]
    assert corpus_sha256("default") == manifest["sha256"]
    records = _read_records(path)
    splits = Counter(r["split"] for r in records)
    assert splits["train"] > 0 and splits["heldout"] > 0
    assert set(splits) == {"train", "heldout"}
    assert dict(splits) == manifest["splits"]
    assert len({r["id"] for r in records}) == len(records)
    chars = Counter[str]()
    for r in records:
        chars[r["source"]] += len(r["text"])
    assert max(chars.values()) / sum(chars.values()) <= 0.45
    first = next(iter_documents("default", split="heldout"))
    assert first.text and first.source in chars
