"""Helpers the tests share: tiny random Gemma 2 / Gemma 3 models and their tokenizer, planted
SAEs in sae-lens's format, a word corpus, a tiny bundle, a free port.

Everything is built from configs in memory (no hub), seeded, and small enough to build in well
under a second. Fixtures that use these live in ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import random
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import (
        Gemma2ForCausalLM,
        Gemma3ForCausalLM,
        PreTrainedModel,
        PreTrainedTokenizerBase,
    )

    from explorer.app import Context
    from explorer.bundle import Bundle

WORDS = (
    "the a cat dog sat on mat rug and ran to house tree bird sang sun moon was is of in "
    "big small red blue green old new happy sad quick slow jumped over lazy fox river "
    "city road car book read wrote said hello world one two three four five . , ! ?"
).split()
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0..3, as in Gemma's vocabulary


def make_tokenizer() -> PreTrainedTokenizerBase:
    """A word-level tokenizer over :data:`WORDS` with Gemma's special-token ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    # Round-trip through a directory, as real tokenizers are loaded: transformer-lens re-opens
    # the tokenizer by its ``name_or_path``.
    from transformers import AutoTokenizer

    where = tempfile.mkdtemp(prefix="tiny-tokenizer-")
    fast.save_pretrained(where)
    return AutoTokenizer.from_pretrained(where)


def _tiny_config(vocab_size: int, n_layers: int, d_model: int) -> dict[str, Any]:
    """The config fields tiny Gemma 2 and Gemma 3 share (Gemma's special-token ids)."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": d_model,
        "intermediate_size": 2 * d_model,
        "num_hidden_layers": n_layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "max_position_embeddings": 256,
        "sliding_window": 8,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
    }


def make_gemma3(vocab_size: int, n_layers: int = 4, d_model: int = 32) -> Gemma3ForCausalLM:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(
        **_tiny_config(vocab_size, n_layers, d_model),
        layer_types=["sliding_attention"] * (n_layers - 1) + ["full_attention"],
    )
    torch.manual_seed(1)
    return Gemma3ForCausalLM(cfg).eval()


def make_gemma2(vocab_size: int, n_layers: int = 4, d_model: int = 32) -> Gemma2ForCausalLM:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(**_tiny_config(vocab_size, n_layers, d_model))
    torch.manual_seed(2)
    return Gemma2ForCausalLM(cfg).eval()


def write_relu_sae(
    path: Path,
    w_enc: torch.Tensor,
    b_enc: torch.Tensor,
    hook_name: str,
    w_dec: torch.Tensor | None = None,
) -> Path:
    """Save a standard (ReLU) SAE in sae-lens's format: ``relu(x @ w_enc + b_enc)``.

    ``b_dec`` is zero and not subtracted from the input, so activations are hand-computable.
    """
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_in, d_sae = w_enc.shape
    cfg = StandardSAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        apply_b_dec_to_input=False,
        metadata=SAEMetadata(hook_name=hook_name, model_name="tiny"),
    )
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(w_enc)
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(w_dec if w_dec is not None else w_enc.T)
        sae.b_dec.zero_()
    path.mkdir(parents=True, exist_ok=True)
    sae.save_model(path)
    return path


def tiny_bundle(
    hf_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sae_dirs: dict[int, Path],
    max_tokens: int = 64,
    transcoder_dirs: dict[int, Path] | None = None,
) -> Bundle:
    """A :class:`explorer.bundle.Bundle` over an in-memory model and local SAE directories (and
    transcoder directories, when given)."""
    from explorer.bundle import Bundle, BundleSpec, SAESource
    from explorer.hooked import hooked_from_hf

    spec = BundleSpec(
        name="tiny",
        model="in-memory",
        saes=tuple((n, SAESource(path=str(p))) for n, p in sorted(sae_dirs.items())),
        max_tokens=max_tokens,
        transcoders=tuple(
            (n, SAESource(path=str(p))) for n, p in sorted((transcoder_dirs or {}).items())
        ),
    )
    return Bundle(spec=spec, model=hooked_from_hf(hf_model, tokenizer), tokenizer=tokenizer)


@dataclass(frozen=True)
class TinyBundleFactory:
    """Builds the tiny Gemma 3 bundle from scratch, as a Ray worker builds a preset's: the
    seeded model and tokenizer are the same in every process.

    ``pid_dir``: each build leaves a file named after its process id there (to find the
    workers). ``delay_s``: a sleep before every forward pass (a slower model, so that a test can
    act while a run is under way).
    """

    sae_dirs: tuple[tuple[int, str], ...]
    pid_dir: str | None = None
    delay_s: float = 0.0
    transcoder_dirs: tuple[tuple[int, str], ...] = ()

    def __call__(self) -> Bundle:
        tokenizer = make_tokenizer()
        bundle = tiny_bundle(
            make_gemma3(len(tokenizer)),
            tokenizer,
            {n: Path(p) for n, p in self.sae_dirs},
            transcoder_dirs={n: Path(p) for n, p in self.transcoder_dirs},
        )
        if self.delay_s:
            delay = self.delay_s
            bundle.model.register_forward_pre_hook(lambda *_: time.sleep(delay))
        if self.pid_dir:
            Path(self.pid_dir, str(os.getpid())).touch()
        return bundle


def make_random_saes(
    where: Path, hf_model: PreTrainedModel, layers: tuple[int, ...] = (1, 2), width: int = 48
) -> dict[int, Path]:
    """Random ReLU SAEs (seeded by layer) on ``layers`` of a tiny model, written under ``where``."""
    d = hf_model.config.hidden_size
    out = {}
    for layer in layers:
        g = torch.Generator().manual_seed(layer)
        w = torch.randn(d, width, generator=g) / d**0.5
        b = torch.full((width,), -0.1)
        out[layer] = write_relu_sae(where / f"sae{layer}", w, b, f"blocks.{layer}.hook_resid_post")
    return out


def write_word_corpus(path: Path, n_docs: int = 30) -> Path:
    """A small seeded jsonl corpus of random :data:`WORDS` (20 to 70 words a document)."""
    rng = random.Random(1)
    with path.open("w") as f:
        for i in range(n_docs):
            text = " ".join(rng.choice(WORDS[:40]) for _ in range(rng.randint(20, 70)))
            f.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
    return path


def live_feature(ctx: Context, layer: int = 2) -> int:
    """The feature of ``layer`` that fires most often in the tiny store."""
    df = ctx.summary_layer(layer)
    live = df[~df["dead"]].sort_values("n_fires", ascending=False)
    return int(live["feature"].iat[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(ctx: Any) -> Iterator[str]:
    """The app over ``ctx`` launched on 127.0.0.1 (a free port); yields its URL, then closes it
    (the body of a ``served`` fixture)."""
    from explorer.app import build_app
    from explorer.app.render import CSS

    demo = build_app(ctx)
    port = free_port()
    demo.queue().launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=CSS
    )
    yield f"http://127.0.0.1:{port}/"
    demo.close()
