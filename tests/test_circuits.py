"""Attribution graphs (explorer.circuits): every edge against an independent frozen replacement
model (tests/circuits_helpers.py), on tiny random Gemma 3 / Gemma 2 models with random JumpReLU
transcoders on every layer."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from circuits_helpers import FrozenReplacement, make_transcoders

from explorer.circuits import AttributionCancelled, Graph, TranscoderError, attribute, attribution

PROMPT = "the cat sat on the mat and the dog ran"
TOL = 1e-4


@pytest.fixture(scope="module")
def hooked3(gemma3_hf, tokenizer):
    from explorer.hooked import hooked_from_hf

    return hooked_from_hf(gemma3_hf, tokenizer)


@pytest.fixture(scope="module")
def hooked2(gemma2_hf, tokenizer):
    from explorer.hooked import hooked_from_hf

    return hooked_from_hf(gemma2_hf, tokenizer)


@pytest.fixture(scope="module")
def tcs(tmp_path_factory) -> list[Any]:
    return make_transcoders(tmp_path_factory.mktemp("tc"), d_model=32, n_layers=4)


@pytest.fixture(scope="module")
def skip_tcs(tmp_path_factory) -> list[Any]:
    return make_transcoders(
        tmp_path_factory.mktemp("tcs"), d_model=32, n_layers=4, skip=True, seed=1
    )


@pytest.fixture(scope="module")
def ids(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer.bos_token_id, *tokenizer(PROMPT)["input_ids"]])


def _setup(request: pytest.FixtureRequest, name: str) -> tuple[Any, list[Any]]:
    model_name, tc_name = name.split("+")
    return request.getfixturevalue(model_name), request.getfixturevalue(tc_name)


def targets_of(graph: Graph) -> list[int]:
    return [*range(graph.n_features), *range(graph.logit_start, graph.n_nodes)]


def worst_edge_error(graph: Graph, fr: FrozenReplacement) -> float:
    """Largest difference between the graph's edges and the independent model's direct effects."""
    rows = torch.tensor(targets_of(graph))
    return float((graph.adjacency[rows] - fr.effects(graph)[rows]).abs().max())


def test_transcoders_are_sae_lens_jumprelu_loaded_from_disk(tcs, skip_tcs) -> None:
    from sae_lens import JumpReLUSkipTranscoder, JumpReLUTranscoder

    assert all(type(tc) is JumpReLUTranscoder for tc in tcs)
    assert all(type(tc) is JumpReLUSkipTranscoder for tc in skip_tcs)
    assert tcs[0].cfg.metadata.hook_name == "blocks.0.ln2.hook_normalized"


@pytest.mark.parametrize("setup", ["hooked3+tcs", "hooked2+tcs", "hooked3+skip_tcs"])
def test_every_edge_equals_autograd_on_the_frozen_model(request, setup, ids) -> None:
    model, transcoders = _setup(request, setup)
    graph = attribute(model, transcoders, ids, max_feature_nodes=None, batch_size=16)
    assert graph.n_features == graph.n_active > 50
    assert worst_edge_error(graph, FrozenReplacement(model, transcoders, ids)) < TOL
    assert graph.adjacency[graph.error_start : graph.logit_start].abs().sum() == 0


@pytest.mark.parametrize("freeze", [{"norms"}, {"attention"}])
def test_the_edge_check_fails_when_something_is_not_frozen(
    hooked3, tcs, ids, freeze, monkeypatch
) -> None:
    """With attention (or the norm scales) left live, the implementation's edges no longer match
    the frozen model: the check above would fail."""
    monkeypatch.setattr(attribution, "FREEZE", frozenset(freeze))
    graph = attribute(hooked3, tcs, ids, max_feature_nodes=None)
    assert worst_edge_error(graph, FrozenReplacement(hooked3, tcs, ids)) > 100 * TOL


def test_unfrozen_attention_gives_other_effects(hooked3, tcs, ids) -> None:
    """The same check against a reference that lets attention move differs as well."""
    graph = attribute(hooked3, tcs, ids, max_feature_nodes=None)
    live = FrozenReplacement(hooked3, tcs, ids, freeze=("scale",))
    assert worst_edge_error(graph, live) > 100 * TOL


@pytest.mark.parametrize("setup", ["hooked3+tcs", "hooked2+skip_tcs"])
def test_each_target_is_its_incoming_edges_plus_fixed_terms(request, setup, ids) -> None:
    """logit - mean(logits) (and a feature's pre-activation) = sum of incoming edges + what the
    replacement model gives with every node switched off (biases, BOS)."""
    model, transcoders = _setup(request, setup)
    graph = attribute(model, transcoders, ids, max_feature_nodes=None)
    fr = FrozenReplacement(model, transcoders, ids)
    fs, es, ts = fr.ones()
    with torch.no_grad():
        off_logits, off_pre = fr.run([0 * f for f in fs], 0 * es, 0 * ts)
        logits = model(ids[None])[0, -1]
    off_logits = off_logits[0]
    if model.cfg.output_logits_soft_cap > 0:  # attribution is of the logits before the cap
        cap = model.cfg.output_logits_soft_cap
        logits = cap * torch.atanh(logits / cap)
    for k, token in enumerate(graph.logit_ids):
        row = graph.adjacency[graph.logit_index(k)]
        fixed = off_logits[token] - off_logits.mean()
        assert float(row.sum() + fixed) == pytest.approx(
            float(logits[token] - logits.mean()), abs=TOL
        )
    for i, (layer, pos, feature) in enumerate(graph.features.tolist()):
        fixed = off_pre[layer][0, pos, feature]
        assert float(graph.adjacency[i].sum() + fixed) == pytest.approx(
            float(graph.activations[i]), abs=TOL
        )


def total_effects(graph: Graph) -> torch.Tensor:
    """``[n_nodes, n_nodes]`` total effect of a node's scale on every target, from the graph: a
    feature's change in pre-activation re-scales its output by ``change / activation``."""
    a = graph.adjacency.double()
    d = torch.zeros(graph.n_nodes, dtype=torch.float64)
    d[: graph.n_features] = 1 / graph.activations.double()
    eye = torch.eye(graph.n_nodes, dtype=torch.float64)
    return torch.linalg.solve(eye - a * d[None, :], a)


def test_scaling_one_node_changes_each_logit_by_the_total_effect(hooked3, tcs, ids) -> None:
    """In the replacement model where features respond to their inputs (gated as on the prompt),
    tripling any node changes every target by twice the graph's total effect (all paths)."""
    graph = attribute(hooked3, tcs, ids, max_feature_nodes=None)
    effects = total_effects(graph).float()
    measured = FrozenReplacement(hooked3, tcs, ids).effects(graph, value=3.0, propagate=True)
    logits = slice(graph.logit_start, graph.n_nodes)
    assert torch.allclose(measured[logits], 2 * effects[logits], atol=TOL, rtol=0)
    # Paths through features count: the total effects are not the direct ones.
    assert float((effects[logits] - graph.adjacency[logits]).abs().max()) > 1e-2


def test_max_feature_nodes_keeps_the_uncapped_edges_among_the_kept(hooked3, tcs, ids) -> None:
    full = attribute(hooked3, tcs, ids, max_feature_nodes=None)
    capped = attribute(hooked3, tcs, ids, max_feature_nodes=40, batch_size=8, update_interval=1)
    assert capped.n_features == 40 and capped.n_active == full.n_active
    index = [full.feature_index(*f) for f in capped.features.tolist()]
    cols = torch.tensor([*index, *range(full.error_start, full.n_nodes)])
    keep = capped.adjacency[: capped.n_features]
    assert torch.allclose(keep, full.adjacency[torch.tensor(index)][:, cols], atol=1e-6)
    assert torch.allclose(
        capped.adjacency[capped.logit_start :],
        full.adjacency[full.logit_start :][:, cols],
        atol=1e-6,
    )
    # The kept features are the influential ones: more influence than 40 picked at random.
    from explorer.circuits.prune import node_influence

    infl = node_influence(full)[: full.n_features]
    assert float(infl[index].sum()) > 2 * 40 / full.n_features * float(infl.sum())


def test_target_attributes_only_that_token(hooked3, tcs, ids, tokenizer) -> None:
    token = tokenizer.convert_tokens_to_ids("dog")
    graph = attribute(hooked3, tcs, ids, target=token)
    assert graph.logit_ids == [token] and graph.logit_tokens == ["dog"]
    with torch.no_grad():
        probs = torch.softmax(hooked3(ids[None])[0, -1], -1)
    assert float(graph.logit_probs[0]) == pytest.approx(float(probs[token]), rel=1e-5)


def test_logits_are_the_top_ones_up_to_the_probability(hooked3, tcs, ids) -> None:
    from explorer.circuits.attribution import salient_logits

    logits = torch.tensor([5.0, 4.0, 1.0, 0.0, -1.0])
    chosen, probs = salient_logits(logits, max_n_logits=10, desired_prob=0.9)
    assert chosen.tolist() == [0, 1] and float(probs.sum()) >= 0.9 > float(probs[0])
    assert len(salient_logits(torch.zeros(50), max_n_logits=10)[0]) == 10


def test_progress_reports_every_batch_and_cancel_stops(hooked3, tcs, ids) -> None:
    seen: list[tuple[int, int]] = []
    graph = attribute(
        hooked3,
        tcs,
        ids,
        max_feature_nodes=50,
        batch_size=8,
        progress=lambda d, t: seen.append((d, t)),
    )
    total = graph.n_logits + 50
    assert seen[-1] == (total, total) and all(t == total for _, t in seen)
    assert [d for d, _ in seen] == sorted({d for d, _ in seen}) and len(seen) >= 50 // 8

    stop = threading.Event()

    def stop_after_two(done: int, total: int) -> None:
        if len(calls) == 1:
            stop.set()
        calls.append(done)

    calls: list[int] = []
    with pytest.raises(AttributionCancelled, match="cancelled after"):
        attribute(hooked3, tcs, ids, batch_size=8, progress=stop_after_two, cancel=stop)
    assert len(calls) == 2
    with pytest.raises(AttributionCancelled):
        attribute(hooked3, tcs, ids, cancel=lambda: True)


def test_the_shared_model_is_left_as_it_was(hooked3, tcs, ids) -> None:
    before = hooked3(ids[None])
    attribute(hooked3, tcs, ids, max_feature_nodes=20)
    assert torch.equal(hooked3(ids[None]), before)
    assert all(p.grad is None for p in hooked3.parameters())


def test_transcoders_must_fit(hooked3, tcs, ids, tmp_path: Path) -> None:
    with pytest.raises(TranscoderError, match="one per layer"):
        attribute(hooked3, tcs[:3], ids)
    wide = make_transcoders(tmp_path, d_model=16, n_layers=4)
    with pytest.raises(TranscoderError, match="16"):
        attribute(hooked3, wide, ids)


def test_importing_the_package_is_light() -> None:
    code = (
        "import sys, explorer.circuits; "
        "heavy = {'torch', 'transformer_lens', 'sae_lens'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_bos_alone_has_no_feature_nodes_and_bad_targets_are_refused(hooked3, tcs, ids) -> None:
    graph = attribute(hooked3, tcs, ids[:1])
    assert graph.n_features == 0 < graph.n_active + 1
    assert graph.n_nodes == 4 * 1 + 1 + graph.n_logits
    assert graph.adjacency[graph.logit_start :, graph.token_index(0)].abs().min() > 0
    with pytest.raises(ValueError, match="not a token id"):
        attribute(hooked3, tcs, ids, target=hooked3.cfg.d_vocab)
