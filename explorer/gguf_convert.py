"""The embedded Gemma 3 GGUF -> a Hugging Face model directory, without transformers' GGUF loader.

It writes what ``from_pretrained(..., gguf_file=...)`` followed by ``save_pretrained`` writes
(``model.safetensors``, ``config.json``, ``generation_config.json``, ``tokenizer.json``,
``tokenizer_config.json``), byte for byte but for the two keys transformers adds to the last to
say how it was loaded (``is_local``, ``local_files_only``), in about 15 s instead of 85 on two
shared cores. ``tests/test_gguf_convert.py`` compares it with transformers' own conversion of the
same file. It replicates transformers 5's rules for a ``gemma3`` GGUF (transformers'
``modeling_gguf_pytorch_utils.py`` and ``integrations/``):

- Weights: ``gguf.quants.dequantize`` to float32 (what transformers calls), renamed from
  llama.cpp's names; every ``*norm.weight`` is stored by llama.cpp as ``1 + w`` (Gemma's RMSNorm
  scales by ``1 + w``) and gets 1 subtracted, in float32 (transformers' ``Gemma2TensorProcessor``,
  also used for gemma3). No q/k row permutation: that is llama's, not Gemma's. No
  ``output.weight`` means the unembedding is tied to the embedding, so the file holds no
  ``lm_head.weight``.
- Config: the GGUF keys transformers maps for gemma3 (``integrations/ggml.py``), the vocabulary
  size from the token list, built by ``AutoConfig.for_model`` like transformers does.
- Tokenizer (``integrations/gguf/gguf_tokenizer_mapping.py``'s ``gemma_tokenizer``): tokens made
  of spaces are respelled with ``▁``; the GGUF has no merges, so they are rebuilt from the
  vocabulary (every split of a token into two tokens, tokens in file order, longer left part
  first: what ``generate_merges`` yields when the score is minus the position, computed directly
  in one pass); control tokens are added as special, user-defined ones as plain added tokens;
  BOS is prepended (``add_bos_token``).

    convert(Path("model.gguf"), Path("out"))   # out/ then loads with from_pretrained
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from explorer.gguf_file import GGUFError, GGUFFile, read_gguf

if TYPE_CHECKING:
    import torch

ARCHITECTURE = "gemma3"
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
# GGUF metadata key -> config attribute (transformers' GGUF_CONFIG_MAPPING for gemma3).
_CONFIG_KEYS = {
    "general.name": "_model_name_or_path",
    "gemma3.context_length": "max_position_embeddings",
    "gemma3.block_count": "num_hidden_layers",
    "gemma3.feed_forward_length": "intermediate_size",
    "gemma3.embedding_length": "hidden_size",
    "gemma3.rope.freq_base": "rope_theta",
    "gemma3.attention.key_length": "head_dim",
    "gemma3.attention.head_count": "num_attention_heads",
    "gemma3.attention.head_count_kv": "num_key_value_heads",
    "gemma3.attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "gemma3.attention.sliding_window": "sliding_window",
    "gemma3.vocab_size": "vocab_size",
    "tokenizer.ggml.bos_token_id": "bos_token_id",
    "tokenizer.ggml.eos_token_id": "eos_token_id",
    "tokenizer.ggml.unknown_token_id": "unk_token_id",
    "tokenizer.ggml.padding_token_id": "pad_token_id",
}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp's token types
_CHUNK_ELEMENTS = 1 << 22  # dequantize this many values at a time: the temporaries stay small


def hf_name(gguf_name: str) -> str:
    """llama.cpp's tensor name -> transformers' (``blk.3.ffn_norm.weight`` ->
    ``model.layers.3.pre_feedforward_layernorm.weight``)."""
    if m := _LAYER.fullmatch(gguf_name):
        if m[2] in _LAYER_NAMES:
            return f"model.layers.{m[1]}.{_LAYER_NAMES[m[2]]}.weight"
    elif gguf_name.endswith(".weight") and gguf_name[: -len(".weight")] in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name[: -len(".weight")]] + ".weight"
    raise GGUFError(f"tensor {gguf_name!r} has no counterpart in a Gemma 3 model")


def hf_weights(gguf: GGUFFile) -> Iterator[tuple[str, torch.Tensor]]:
    """Each tensor as transformers loads it: ``(name, float32 tensor)``, in file order."""
    _check_architecture(gguf)
    n_layers = int(gguf.metadata[f"{ARCHITECTURE}.block_count"])
    expected = {
        f"model.layers.{n}.{v}.weight" for n in range(n_layers) for v in _LAYER_NAMES.values()
    }
    expected |= {"model.embed_tokens.weight", "model.norm.weight"}
    names = {gguf_name: hf_name(gguf_name) for gguf_name in gguf.tensors}
    if missing := expected - set(names.values()):
        raise GGUFError(f"{gguf.path}: missing tensors {sorted(missing)[:5]}")
    for gguf_name, name in names.items():
        tensor = _dequantized(gguf, gguf_name)
        if "norm.weight" in gguf_name:  # llama.cpp stores Gemma's norms as 1 + w
            tensor.numpy()[...] -= np.float32(1)
        yield name, tensor


def _dequantized(gguf: GGUFFile, name: str) -> torch.Tensor:
    """``gguf.dequantize`` of the whole tensor, computed a block of rows at a time into one
    output (the same values: each block of a row dequantizes on its own; 2-4x faster).

    The output is torch's memory, not numpy's: numpy asks for huge pages on large arrays, and
    where the kernel compacts memory to find them, touching a fresh gigabyte took 3-4 s instead
    of 1 on our two shared cores.
    """
    import torch
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    info = gguf.tensors[name]
    raw = gguf.raw(name)
    qtype = GGMLQuantizationType(info.ggml_type)
    tensor = torch.empty(info.shape, dtype=torch.float32)
    out = tensor.numpy()
    if out.ndim < 2:
        out[...] = dequantize(raw, qtype)
        return tensor
    rows = max(1, _CHUNK_ELEMENTS // info.shape[-1])
    for start in range(0, info.shape[0], rows):
        out[start : start + rows] = dequantize(raw[start : start + rows], qtype)
    return tensor


def write_weights(gguf: GGUFFile, path: Path) -> None:
    """``model.safetensors`` as ``save_pretrained`` writes it (float32, ``{"format": "pt"}``)."""
    from safetensors.torch import save_file

    save_file(dict(hf_weights(gguf)), str(path), metadata={"format": "pt"})


def config_dict(gguf: GGUFFile) -> dict[str, Any]:
    """The keyword arguments transformers builds the model's config from."""
    _check_architecture(gguf)
    out: dict[str, Any] = {
        "model_type": "gemma3_text",  # the GGUF holds only the text model
        "tie_word_embeddings": "output.weight" not in gguf.tensors,
    }
    for key, attribute in _CONFIG_KEYS.items():
        if key in gguf.metadata:
            out[attribute] = gguf.metadata[key]
    out.setdefault("vocab_size", len(gguf.metadata["tokenizer.ggml.tokens"]))
    return out


def write_config(gguf: GGUFFile, directory: Path) -> None:
    """``config.json`` and ``generation_config.json``, as a float32 ``Gemma3ForCausalLM``."""
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.for_model(**config_dict(gguf))
    config.architectures = ["Gemma3ForCausalLM"]
    config.dtype = "float32"
    config.save_pretrained(directory)
    GenerationConfig.from_model_config(config).save_pretrained(directory)


def gemma_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """The merges transformers rebuilds for a Gemma GGUF: every split of a token into two tokens,
    tokens in vocabulary order, the longer left part first.

    ``{"a": 0, "b": 1, "ab": 2, "abb": 3, "bb": 4}`` ->
    ``[("a", "b"), ("ab", "b"), ("a", "bb"), ("b", "b")]``
    """
    return [
        (token[:i], token[i:])
        for token in sorted(vocab, key=vocab.__getitem__)
        for i in range(len(token) - 1, 0, -1)
        if token[:i] in vocab and token[i:] in vocab
    ]


def write_tokenizer(gguf: GGUFFile, directory: Path) -> None:
    """``tokenizer.json`` and ``tokenizer_config.json`` of transformers' ``GemmaTokenizer``."""
    from tokenizers import AddedToken
    from tokenizers.processors import TemplateProcessing
    from transformers import GemmaTokenizer

    meta = gguf.metadata
    if meta.get("tokenizer.ggml.model") != "llama":  # llama.cpp's name for sentencepiece
        raise GGUFError(f"tokenizer {meta.get('tokenizer.ggml.model')!r}, not sentencepiece")
    if not meta.get("tokenizer.ggml.add_bos_token") or meta.get("tokenizer.ggml.add_eos_token"):
        raise GGUFError("only a tokenizer that adds BOS and no EOS is converted directly")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types = meta["tokenizer.ggml.token_type"].tolist()
    respelled = ["▁" * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {token: index for index, token in enumerate(respelled)}
    # Pairs, as transformers' GGUF path passes them (the annotation says strings "a b").
    tokenizer = GemmaTokenizer(vocab=vocab, merges=gemma_merges(vocab))  # type: ignore[arg-type]
    control = [
        AddedToken(t, normalized=False, special=True)
        for t, kind in zip(tokens, types, strict=True)
        if kind == _CONTROL
    ]
    tokenizer.add_special_tokens(
        {"additional_special_tokens": control},
        replace_extra_special_tokens=False,
    )
    known = tokenizer.get_vocab()
    tokenizer.add_tokens(
        [
            AddedToken(t, normalized=False, special=False)
            for t, kind in zip(tokens, types, strict=True)
            if kind == _USER_DEFINED and t in known
        ]
    )
    specials = {
        name: tokens[int(meta[f"tokenizer.ggml.{key}"])]
        for name, key in (
            ("bos_token", "bos_token_id"),
            ("eos_token", "eos_token_id"),
            ("unk_token", "unknown_token_id"),
            ("pad_token", "padding_token_id"),
        )
    }
    bos, bos_id = specials["bos_token"], int(meta["tokenizer.ggml.bos_token_id"])
    backend = tokenizer.backend_tokenizer
    backend.post_processor = TemplateProcessing(  # what transformers sets for add_bos_token
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
    )
    directory.mkdir(parents=True, exist_ok=True)
    backend.save(str(directory / "tokenizer.json"))
    config = {
        "backend": "tokenizers",
        **specials,
        "mask_token": "<mask>",  # GemmaTokenizer's default
        "model_max_length": int(1e30),  # transformers' "no limit" (VERY_LARGE_INTEGER)
        "tokenizer_class": "GemmaTokenizer",
    }
    text = json.dumps(dict(sorted(config.items())), indent=2, ensure_ascii=False)
    (directory / "tokenizer_config.json").write_text(text + "\n")


def convert(gguf_path: Path, directory: Path) -> None:
    """Write the Hugging Face model directory of the Gemma 3 GGUF at ``gguf_path``."""
    gguf = read_gguf(gguf_path)
    directory.mkdir(parents=True, exist_ok=True)
    write_tokenizer(gguf, directory)
    write_config(gguf, directory)
    write_weights(gguf, directory / "model.safetensors")


def _check_architecture(gguf: GGUFFile) -> None:
    arch = gguf.metadata.get("general.architecture")
    if arch != ARCHITECTURE:
        raise GGUFError(
            f"{gguf.path}: architecture {arch!r}, this converter knows {ARCHITECTURE!r}"
        )
