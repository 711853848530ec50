"""Interventions on transcoder features (explorer.circuits.intervene), against transformer-lens's
own ``run_with_hooks`` / ``run_with_cache`` doing the same by hand."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from circuits_helpers import make_transcoders

from explorer.circuits import attribute, intervene


@pytest.fixture(scope="module")
def setup(gemma3_hf, tokenizer, tmp_path_factory) -> tuple[Any, list[Any], torch.Tensor]:
    from explorer.hooked import hooked_from_hf

    model = hooked_from_hf(gemma3_hf, tokenizer)
    tcs = make_transcoders(tmp_path_factory.mktemp("tc"), d_model=32, n_layers=4)
    ids = torch.tensor([tokenizer.bos_token_id, *tokenizer("the cat sat on the mat")["input_ids"]])
    return model, tcs, ids


def by_hand(
    model: Any,
    tcs: list[Any],
    ids: torch.Tensor,
    nodes: list[tuple[int, int, int]],
    scale: float,
    freeze: bool,
) -> torch.Tensor:
    """The next-token probabilities with each node's decoder contribution times ``scale``."""
    with torch.no_grad():
        _, cache = model.run_with_cache(ids[None])
        hooks = []
        for layer, pos, feature in nodes:
            a = tcs[layer].encode(cache[f"blocks.{layer}.ln2.hook_normalized"])[0, pos, feature]
            delta = torch.zeros_like(cache[f"blocks.{layer}.hook_mlp_out"])
            delta[0, pos] = (scale - 1) * a * tcs[layer].W_dec[feature]
            hooks.append((f"blocks.{layer}.hook_mlp_out", lambda x, hook, d=delta: x + d))
        if freeze:
            for name in cache:
                if name.endswith("hook_pattern"):
                    hooks.append((name, lambda x, hook, p=cache[name]: p))
        return torch.softmax(model.run_with_hooks(ids[None], fwd_hooks=hooks)[0, -1], -1)


def node_of(graph: Any, i: int) -> tuple[int, int, int]:
    layer, pos, feature = (int(v) for v in graph.features[i])
    return layer, pos, feature


def probs_of(
    predictions: list[tuple[int, str, float]], reference: torch.Tensor
) -> tuple[list[float], list[float]]:
    return [p for _, _, p in predictions], [float(reference[t]) for t, _, _ in predictions]


def test_scale_one_changes_nothing(setup) -> None:
    model, tcs, ids = setup
    out = intervene(model, tcs, ids, [(1, 2, 0), (2, 3, 5)], 1.0)
    assert len(out.baseline) == 10
    for preds in (out.frozen, out.unfrozen):
        assert [t for t, _, _ in preds] == [t for t, _, _ in out.baseline]
        assert [p for _, _, p in preds] == pytest.approx([p for _, _, p in out.baseline], abs=1e-6)


@pytest.mark.parametrize("scale", [0.0, 4.0])
def test_frozen_and_unfrozen_match_the_same_change_by_hand(setup, scale) -> None:
    model, tcs, ids = setup
    graph = attribute(model, tcs, ids, max_feature_nodes=None)
    nodes = [node_of(graph, i) for i in (0, 5, graph.n_features // 2)]
    out = intervene(model, tcs, ids, nodes, scale, top_k=5)
    for preds, freeze in ((out.frozen, True), (out.unfrozen, False)):
        got, expected = probs_of(preds, by_hand(model, tcs, ids, nodes, scale, freeze))
        assert got == pytest.approx(expected, abs=1e-6)
    baseline = torch.softmax(model(ids[None])[0, -1], -1).detach()
    assert [p for _, _, p in out.unfrozen] != pytest.approx(
        probs_of(out.unfrozen, baseline)[1], abs=1e-4
    )
    # Attention responds to the change: freezing it gives other probabilities.
    assert [p for _, _, p in out.frozen] != pytest.approx(
        probs_of(out.frozen, by_hand(model, tcs, ids, nodes, scale, False))[1], abs=1e-5
    )
    assert out.activations == pytest.approx(
        [float(graph.activations[graph.feature_index(*n)]) for n in nodes]
    )


def test_nothing_downstream_attends_to_the_last_layer(setup) -> None:
    """A feature on the last layer at the last position reaches the logits without attention:
    frozen and unfrozen agree."""
    model, tcs, ids = setup
    graph = attribute(model, tcs, ids, max_feature_nodes=None)
    last = [
        i
        for i, (layer, pos, _) in enumerate(graph.features.tolist())
        if layer == 3 and pos == len(ids) - 1
    ]
    node = node_of(graph, last[0])
    out = intervene(model, tcs, ids, [node], 0.0)
    assert [p for _, _, p in out.frozen] == pytest.approx([p for _, _, p in out.unfrozen], abs=1e-6)


def test_bad_requests_are_refused(setup) -> None:
    model, tcs, ids = setup
    with pytest.raises(ValueError, match="outside"):
        intervene(model, tcs, ids, [(4, 0, 0)], 0.0)
    with pytest.raises(ValueError, match="outside"):
        intervene(model, tcs, ids, [(0, len(ids), 0)], 0.0)
    with pytest.raises(ValueError, match="no feature"):
        intervene(model, tcs, ids, [(0, 1, 48)], 0.0)
    with pytest.raises(ValueError, match="finite"):
        intervene(model, tcs, ids, [(0, 1, 0)], float("nan"))


def test_watched_tokens_report_their_probability_wherever_they_rank(setup) -> None:
    model, tcs, ids = setup
    graph = attribute(model, tcs, ids, max_feature_nodes=None)
    nodes = [node_of(graph, 0)]
    out = intervene(model, tcs, ids, nodes, 0.0, top_k=3, watch=[5, 7])
    for token, (base, frozen, unfrozen) in zip((5, 7), out.watched, strict=True):
        assert base == pytest.approx(float(by_hand(model, tcs, ids, nodes, 1.0, False)[token]))
        assert frozen == pytest.approx(float(by_hand(model, tcs, ids, nodes, 0.0, True)[token]))
        assert unfrozen == pytest.approx(float(by_hand(model, tcs, ids, nodes, 0.0, False)[token]))
    with pytest.raises(ValueError, match="not a token id"):
        intervene(model, tcs, ids, nodes, 0.0, watch=[10**9])
