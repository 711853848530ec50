"""Fixtures for the Circuits tab's tests: the app's context over the tiny Gemma 3 with random
transcoders on all four layers (beside the residual SAEs and store of ``conftest.app_parts``),
one curated graph precomputed into its own graphs directory.
Registered for every test module by ``conftest.py``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from circuits_helpers import make_transcoders

CURATED_PROMPT = "the cat sat on the mat and the dog"
CAPTION = "a random tiny model: nothing to read, only the plumbing"


@pytest.fixture(scope="session")
def circuit_parts(app_parts, tmp_path_factory) -> tuple[Any, Any, Path]:
    """``(bundle with transcoders, store, graphs directory with one curated graph)``."""
    from explorer.bundle import Bundle, SAESource
    from explorer.circuits.cli import write_curated

    bundle, store = app_parts
    tmp = tmp_path_factory.mktemp("circuits")
    n = int(bundle.model.cfg.n_layers)
    make_transcoders(tmp / "tc", bundle.model.cfg.d_model, n)
    sources = tuple((layer, SAESource(path=str(tmp / "tc" / f"tc{layer}"))) for layer in range(n))
    spec = replace(bundle.spec, transcoders=sources)
    tc_bundle = Bundle(spec=spec, model=bundle.model, tokenizer=bundle.tokenizer)
    graphs = tmp / "graphs"
    graphs.mkdir()
    index = {
        "preset": spec.name,
        "graphs": [
            {"slug": "cat-sat", "prompt": CURATED_PROMPT, "target": None, "caption": CAPTION}
        ],
    }
    (graphs / "index.json").write_text(json.dumps(index))
    write_curated(tc_bundle, graphs)
    return tc_bundle, store, graphs


@pytest.fixture
def circuit_ctx(circuit_parts, tmp_path: Path):
    """The app's context with transcoders and the curated graph (a fresh graph cache)."""
    from explorer.app import Context
    from explorer.circuits.library import GraphLibrary
    from explorer.labels import Labels

    bundle, store, graphs = circuit_parts
    labels = Labels(tmp_path / "labels.sqlite", scope="tiny", widths={1: 48, 2: 48})
    return Context(bundle=bundle, store=store, labels=labels, graphs=GraphLibrary(graphs))
