"""Shared fixtures: tiny random Gemma 2 / Gemma 3 models, a small tokenizer, planted SAEs.

Everything is built from configs in memory (no hub), seeded, and small enough to build in well
under a second.
"""

from __future__ import annotations

import os
import random

# Tests never touch the network, whatever the environment says.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import numpy as np
import pytest
import torch

WORDS = (
    "the a cat dog sat on mat rug and ran to house tree bird sang sun moon was is of in "
    "big small red blue green old new happy sad quick slow jumped over lazy fox river "
    "city road car book read wrote said hello world one two three four five . , ! ?"
).split()
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0..3, as in Gemma's vocabulary


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--online", action="store_true", help="run tests that need the hub")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--online"):
        return
    skip = pytest.mark.skip(reason="needs the Hugging Face hub; run with --online")
    for item in items:
        if "online" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def make_tokenizer():  # type: ignore[no-untyped-def]
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
    import tempfile

    from transformers import AutoTokenizer

    where = tempfile.mkdtemp(prefix="tiny-tokenizer-")
    fast.save_pretrained(where)
    return AutoTokenizer.from_pretrained(where)


def _tiny_config(vocab_size: int, n_layers: int, d_model: int) -> dict[str, object]:
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


def make_gemma3(vocab_size: int, n_layers: int = 4, d_model: int = 32):  # type: ignore[no-untyped-def]
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(
        **_tiny_config(vocab_size, n_layers, d_model),
        layer_types=["sliding_attention"] * (n_layers - 1) + ["full_attention"],
    )
    torch.manual_seed(1)
    return Gemma3ForCausalLM(cfg).eval()


def make_gemma2(vocab_size: int, n_layers: int = 4, d_model: int = 32):  # type: ignore[no-untyped-def]
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(**_tiny_config(vocab_size, n_layers, d_model))
    torch.manual_seed(2)
    return Gemma2ForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tokenizer():  # type: ignore[no-untyped-def]
    return make_tokenizer()


@pytest.fixture(scope="session")
def gemma3_hf(tokenizer):  # type: ignore[no-untyped-def]
    return make_gemma3(len(tokenizer))


@pytest.fixture(scope="session")
def gemma2_hf(tokenizer):  # type: ignore[no-untyped-def]
    return make_gemma2(len(tokenizer))


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


def tiny_bundle(hf_model, tokenizer, sae_dirs: dict[int, Path], max_tokens: int = 64):  # type: ignore[no-untyped-def]
    """A :class:`explorer.bundle.Bundle` over an in-memory model and local SAE directories."""
    from explorer.bundle import Bundle, BundleSpec, SAESource
    from explorer.hooked import hooked_from_hf

    spec = BundleSpec(
        name="tiny",
        model="in-memory",
        saes=tuple((n, SAESource(path=str(p))) for n, p in sorted(sae_dirs.items())),
        max_tokens=max_tokens,
    )
    return Bundle(spec=spec, model=hooked_from_hf(hf_model, tokenizer), tokenizer=tokenizer)


def make_random_saes(where: Path, hf_model, layers=(1, 2), width: int = 48) -> dict[int, Path]:  # type: ignore[no-untyped-def]
    """Random ReLU SAEs (seeded by layer) on ``layers`` of a tiny model, written under ``where``."""
    d = hf_model.config.hidden_size
    out = {}
    for layer in layers:
        g = torch.Generator().manual_seed(layer)
        w = torch.randn(d, width, generator=g) / d**0.5
        b = torch.full((width,), -0.1)
        out[layer] = write_relu_sae(where / f"sae{layer}", w, b, f"blocks.{layer}.hook_resid_post")
    return out


@pytest.fixture
def random_saes(tmp_path: Path, gemma3_hf) -> dict[int, Path]:  # type: ignore[no-untyped-def]
    """Random ReLU SAEs (width 48) on layers 1 and 2 of the tiny Gemma 3 (not the last layer,
    whose HF hidden state is taken after the final norm)."""
    return make_random_saes(tmp_path, gemma3_hf)


def write_word_corpus(path: Path, n_docs: int = 30) -> Path:
    """A small seeded jsonl corpus of random :data:`WORDS` (20 to 70 words a document)."""
    import json

    rng = random.Random(1)
    with path.open("w") as f:
        for i in range(n_docs):
            text = " ".join(rng.choice(WORDS[:40]) for _ in range(rng.randint(20, 70)))
            f.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
    return path


def live_feature(ctx, layer: int = 2) -> int:  # type: ignore[no-untyped-def]
    """The feature of ``layer`` that fires most often in the tiny store."""
    df = ctx.summary_layer(layer)
    live = df[~df["dead"]].sort_values("n_fires", ascending=False)
    return int(live["feature"].iat[0])


@pytest.fixture(scope="session")
def ctx(tmp_path_factory, gemma3_hf, tokenizer):  # type: ignore[no-untyped-def]
    """The app's :class:`explorer.app.Context` over the tiny Gemma 3 with random SAEs on layers 1
    and 2, a real store precomputed from a small random-word corpus, and a label database."""
    from explorer.app import Context
    from explorer.labels import Labels
    from explorer.store import Store
    from precompute.accumulate import ReduceConfig
    from precompute.job import Job, RunConfig

    tmp = tmp_path_factory.mktemp("app")
    corpus = write_word_corpus(tmp / "c.jsonl")
    bundle = tiny_bundle(gemma3_hf, tokenizer, make_random_saes(tmp, gemma3_hf))
    cfg = RunConfig(
        corpus=str(corpus),
        tokens=1500,
        context_size=16,
        batch_windows=8,
        reduce=ReduceConfig(top_k=5, n_bins=10, n_intervals=3, per_interval=2, before=4, after=2),
    )
    store = Job(cfg, bundle, tmp / "store", bundle_meta={"model": "tiny"}).run()
    labels = Labels(tmp / "labels.sqlite", scope="tiny", widths={1: 48, 2: 48})
    return Context(bundle=bundle, store=Store.open(store), labels=labels)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def served(ctx):  # type: ignore[no-untyped-def]
    """The app over :func:`ctx`, launched on 127.0.0.1 (a free port); yields its URL."""
    from explorer.app import build_app
    from explorer.app.render import CSS

    demo = build_app(ctx)
    port = free_port()
    demo.queue().launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=CSS
    )
    yield f"http://127.0.0.1:{port}/"
    demo.close()
