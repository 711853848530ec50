"""One owner for the dense threshold: the store's manifest. A store built with
``--dense-threshold 0.005`` (0.5%) flags features above 0.5% dense, and every view that filters by
density takes the same 0.5% by default: the microscope and search by inference hide what the store
calls dense, their density boxes start at 0.5, and the labelling queue's "dense" band holds exactly
the features the store flags.

The store is precomputed from the tiny Gemma 3 with SAEs whose encoder biases fall from -1.5 to -3
across the width, so their densities spread from 0 to tens of %, with a few between 0.5% and 1%:
the ones a hard-coded 1% would show as not dense.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from helpers import tiny_bundle, write_relu_sae, write_word_corpus

from explorer.app import Context, UserError, browse, build_app, labelling, microscope
from explorer.encode import encode

THRESHOLD = 0.005
WIDTH = 48
WIDTHS = {1: WIDTH, 2: WIDTH}


@pytest.fixture(scope="module")
def half(tmp_path_factory, gemma3_hf, tokenizer) -> Context:
    """The app's context over a store reduced with a 0.5% dense threshold."""
    from explorer.labels import Labels
    from explorer.store import Store
    from precompute.store_build.accumulate import ReduceConfig
    from precompute.store_build.job import Job, RunConfig

    tmp = tmp_path_factory.mktemp("half")
    d = gemma3_hf.config.hidden_size
    saes = {}
    for layer in (1, 2):
        g = torch.Generator().manual_seed(layer)
        w = torch.randn(d, WIDTH, generator=g) / d**0.5
        b = -torch.linspace(1.5, 3.0, WIDTH)
        saes[layer] = write_relu_sae(tmp / f"sae{layer}", w, b, f"blocks.{layer}.hook_resid_post")
    cfg = RunConfig(
        corpus=str(write_word_corpus(tmp / "c.jsonl")),
        tokens=1500,
        context_size=16,
        batch_windows=8,
        reduce=ReduceConfig(top_k=5, n_bins=10, n_intervals=3, dense_threshold=THRESHOLD),
    )
    bundle = tiny_bundle(gemma3_hf, tokenizer, saes)
    store = Job(cfg, bundle, tmp / "store", bundle_meta={"model": "tiny"}).run()
    labels = Labels(tmp / "labels.sqlite", scope="tiny", widths=WIDTHS)
    return Context(bundle=bundle, store=Store.open(store), labels=labels)


def _between(ctx: Context) -> set[tuple[int, int]]:
    """The features dense at 0.5% but not at 1%."""
    s = ctx.summary()
    mid = s[(s["density"] > THRESHOLD) & (s["density"] <= 0.01)]
    return set(zip(mid["layer"].astype(int), mid["feature"].astype(int), strict=True))


def _text_with(
    ctx: Context, wanted: set[tuple[int, int]], tmp: Path
) -> tuple[str, set[tuple[int, int]]]:
    """A document of the store's (seeded) corpus on which some of ``wanted`` fire, and which."""
    for line in write_word_corpus(tmp / "c.jsonl").read_text().splitlines():
        text = json.loads(line)["text"]
        enc = encode(ctx.bundle, text, top_k=WIDTH)
        fired = {
            (layer, int(f))
            for layer, la in enc.layers.items()
            for f in np.unique(la.feature_ids[la.acts > 0].numpy())
        }
        if fired & wanted:
            return text, fired & wanted
    raise AssertionError("no corpus document fires a feature between 0.5% and 1%")


def test_the_store_flags_dense_at_its_own_threshold(half: Context) -> None:
    assert half.dense_threshold == THRESHOLD
    s = half.summary()
    assert (s["dense"] == (s["density"] > THRESHOLD)).all()
    assert _between(half), "the planted SAEs have features between 0.5% and 1%"


def test_microscope_and_search_hide_what_the_store_calls_dense(
    half: Context, tmp_path: Path
) -> None:
    text, fired = _text_with(half, _between(half), tmp_path)
    dens = half.densities()

    def shown(table) -> set[tuple[int, int]]:
        return set(zip(table["layer"].astype(int), table["feature"].astype(int), strict=True))

    view = microscope.view(half, text)
    assert not shown(view.text_top) & fired
    assert all(dens[la][f] <= THRESHOLD for la, f in shown(view.text_top))
    assert "density above 0.5%" in view.status
    # At 1% they would be shown: the default is what makes the difference.
    assert fired <= shown(microscope.view(half, text, max_density_pct=1).text_top)
    assert not shown(browse.search_by_inference(half, text)) & fired
    table = microscope.token_features(half, view.encoding, 0)
    assert all(dens[la][f] <= THRESHOLD for la, f in shown(table))


def test_the_density_boxes_start_at_the_store_threshold(half: Context) -> None:
    demo = build_app(half)
    boxes = [
        b
        for b in demo.blocks.values()
        if isinstance(b, gr.Number) and b.label == "Hide features denser than (%)"
    ]
    assert len(boxes) == 2  # the microscope's and search by inference's
    assert all(b.value == pytest.approx(100 * THRESHOLD) for b in boxes)
    bands = next(
        b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "Density"
    )
    assert [c[0] for c in bands.choices][-1] == "dense (> 0.5%)"


def test_the_labelling_bands_end_at_the_store_threshold(half: Context, tmp_path: Path) -> None:
    from explorer.labels import Labels

    bands = labelling.density_bands(half.dense_threshold)
    assert list(bands) == [
        "rare (≤ 0.01%)",
        "sparse (0.01–0.1%)",
        "common (0.1–0.5%)",
        "dense (> 0.5%)",
    ]
    s = half.summary().set_index(["layer", "feature"])
    rng = random.Random(0)
    picked = {labelling.next_unlabelled(half, "all", "dense (> 0.5%)", rng) for _ in range(40)}
    assert all(s.loc[p, "dense"] for p in picked)
    common = {labelling.next_unlabelled(half, "all", "common (0.1–0.5%)", rng) for _ in range(40)}
    assert all(0.001 < s.loc[p, "density"] <= THRESHOLD for p in common)
    # With every other feature labelled, the dense band's queue is the features between 0.5% and
    # 1%, and the common band's is empty.
    own = replace(half, labels=Labels(tmp_path / "l.sqlite", scope="tiny", widths=WIDTHS))
    between = _between(half)
    for layer, feature in s.index:
        if (layer, feature) not in between:
            own.labels.add(layer, feature, "seen")
    picked = {labelling.next_unlabelled(own, "all", "dense (> 0.5%)", rng) for _ in range(20)}
    assert picked <= between
    with pytest.raises(UserError, match="every feature in this selection is labelled"):
        labelling.next_unlabelled(own, "all", "common (0.1–0.5%)", rng)


def test_the_default_threshold_keeps_the_usual_bands() -> None:
    assert list(labelling.density_bands(0.01)) == [
        "rare (≤ 0.01%)",
        "sparse (0.01–0.1%)",
        "common (0.1–1%)",
        "dense (> 1%)",
    ]
