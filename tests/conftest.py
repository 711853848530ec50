"""Shared fixtures: the tiny models and tokenizer, random SAEs, and the app's context over a
real precomputed store (helpers they use are in ``helpers.py``). Label databases are per test:
no test sees another's labels."""

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
from browser_ui import browser, ui  # noqa: F401  (fixtures for the browser tests)
from circuits_app import circuit_ctx, circuit_parts  # noqa: F401  (the Circuits tab's)
from helpers import (
    make_gemma2,
    make_gemma3,
    make_random_saes,
    make_tokenizer,
    serve,
    tiny_bundle,
    write_word_corpus,
)
from hub_layout import hub  # noqa: F401  (an offline hub cache, for the hub-layout tests)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--online", action="store_true", help="run tests that need the hub")
    parser.addoption(
        "--llm", action="store_true", help="run tests that serve the embedded GGUF with llama.cpp"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gates = {
        "online": (config.getoption("--online"), "needs the Hugging Face hub; run with --online"),
        "llm": (
            config.getoption("--llm") or os.environ.get("GSE_LLM_TESTS") == "1",
            "serves the embedded GGUF with llama-cpp-python[server]; run with --llm",
        ),
    }
    for item in items:
        for marker, (enabled, reason) in gates.items():
            if marker in item.keywords and not enabled:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache holding one fresh conversion of the embedded GGUF (the direct converter,
    about 15 s on 2 cores), shared by the tests of the real embedded default."""
    from explorer import gguf_model

    root = tmp_path_factory.mktemp("gse-cache")
    gguf_model.embedded_model_dir(root)
    return root


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def gemma3_hf(tokenizer):
    return make_gemma3(len(tokenizer))


@pytest.fixture(scope="session")
def gemma2_hf(tokenizer):
    return make_gemma2(len(tokenizer))


@pytest.fixture
def random_saes(tmp_path: Path, gemma3_hf) -> dict[int, Path]:
    """Random ReLU SAEs (width 48) on layers 1 and 2 of the tiny Gemma 3 (not the last layer,
    whose HF hidden state is taken after the final norm)."""
    return make_random_saes(tmp_path, gemma3_hf)


@pytest.fixture(scope="session")
def app_parts(tmp_path_factory, gemma3_hf, tokenizer):
    """The tiny Gemma 3 with random SAEs on layers 1 and 2 and random JumpReLU transcoders
    (width 40) on all 4 layers, and a real store of both sources precomputed from a small
    random-word corpus (built once: the expensive part of :func:`ctx`)."""
    from circuits_helpers import make_transcoders

    from explorer.store import Store
    from precompute.store_build.accumulate import ReduceConfig
    from precompute.store_build.job import Job, RunConfig

    tmp = tmp_path_factory.mktemp("app")
    corpus = write_word_corpus(tmp / "c.jsonl")
    make_transcoders(tmp / "tc", 32, 4, width=40, thresholds=(1.8, 2.2))
    tcs = {n: tmp / "tc" / f"tc{n}" for n in range(4)}
    saes = make_random_saes(tmp, gemma3_hf)
    bundle = tiny_bundle(gemma3_hf, tokenizer, saes, transcoder_dirs=tcs)
    cfg = RunConfig(
        corpus=str(corpus),
        tokens=1500,
        context_size=16,
        batch_windows=8,
        reduce=ReduceConfig(top_k=5, n_bins=10, n_intervals=3, per_interval=2, before=4, after=2),
    )
    store = Job(cfg, bundle, tmp / "store", bundle_meta={"model": "tiny"}).run()
    return bundle, Store.open(store)


@pytest.fixture
def ctx(app_parts, tmp_path: Path):
    """The app's :class:`explorer.app.Context` over :func:`app_parts`, with a label database of
    its own (a test never sees labels another test saved): the residual SAEs' labels in scope
    ``tiny``, the transcoders' in ``tiny/transcoder`` of the same file."""
    from explorer.app import Context
    from explorer.labels import Labels

    bundle, store = app_parts
    path = tmp_path / "labels.sqlite"
    labels = Labels(path, scope="tiny", widths={1: 48, 2: 48})
    tc_labels = Labels(path, scope="tiny/transcoder", widths=dict.fromkeys(range(4), 40))
    return Context(
        bundle=bundle, store=store, labels=labels, source_labels={"transcoder": tc_labels}
    )


@pytest.fixture
def served(ctx):
    """The app over :func:`ctx`, launched on 127.0.0.1 (a free port); yields its URL."""
    yield from serve(ctx)
