"""Steering: planted direction, plain generation equals HF's, seeds, per-call hooks, bad input."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
from helpers import make_gemma3, tiny_bundle, write_relu_sae

from explorer.encode import encode
from explorer.steer import (
    MAX_NEW_TOKENS,
    GenerationConfig,
    Steer,
    SteerError,
    generate,
    generate_pair,
)

CAT_FEATURE = 7
PROMPT = "the old house and the"


def _last(it):
    *_, c = it
    return c


@pytest.fixture(scope="module")
def steer_bundle(tmp_path_factory, tokenizer):
    """A tiny Gemma 3 and an SAE on layer 2 whose feature 7 writes the embedding of "cat".

    The embedding is tied to the unembedding, so adding that direction pushes the next-token
    logits toward "cat".
    """
    hf = make_gemma3(len(tokenizer))
    d = hf.config.hidden_size
    g = torch.Generator().manual_seed(5)
    w_enc = torch.randn(d, 16, generator=g) / d**0.5
    w_dec = torch.randn(16, d, generator=g) / d**0.5
    cat = hf.model.embed_tokens.weight[tokenizer.convert_tokens_to_ids("cat")].detach()
    w_dec[CAT_FEATURE] = cat / cat.norm()
    path = tmp_path_factory.mktemp("steer") / "sae"
    write_relu_sae(path, w_enc, torch.zeros(16), "blocks.2.hook_resid_post", w_dec=w_dec)
    return hf, tiny_bundle(hf, tokenizer, {2: path})


def test_plain_greedy_generation_equals_transformers(steer_bundle, tokenizer) -> None:
    hf, bundle = steer_bundle
    out = _last(generate(bundle, PROMPT, GenerationConfig(max_new_tokens=12, temperature=0.0)))
    ids = [tokenizer.bos_token_id, *tokenizer(PROMPT, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    assert out.token_ids[0] == ref[0, len(ids) :].tolist()
    assert out.done and out.stop_reason == "length"


def test_adding_the_planted_feature_steers_toward_its_token(steer_bundle) -> None:
    _, bundle = steer_bundle
    cfg = GenerationConfig(max_new_tokens=10, temperature=0.0)
    pair = _last(generate_pair(bundle, PROMPT, cfg, [Steer(2, CAT_FEATURE, 60.0)]))
    default, steered = pair.texts
    assert default.split().count("cat") <= 2
    assert steered.split().count("cat") >= 8
    # A negative strength pushes away from it.
    away = _last(generate_pair(bundle, PROMPT, cfg, [Steer(2, CAT_FEATURE, -60.0)]))
    assert "cat" not in away.texts[1].split()


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_default_row_is_the_plain_completion_for_the_seed(steer_bundle, temperature) -> None:
    _, bundle = steer_bundle
    cfg = GenerationConfig(max_new_tokens=16, temperature=temperature, seed=11)
    plain = _last(generate(bundle, PROMPT, cfg))
    pair = _last(generate_pair(bundle, PROMPT, cfg, [Steer(2, CAT_FEATURE, 60.0)]))
    assert pair.token_ids[0] == plain.token_ids[0]
    assert pair.token_ids[1] != plain.token_ids[0]
    again = _last(generate_pair(bundle, PROMPT, cfg, [Steer(2, CAT_FEATURE, 60.0)]))
    assert again.token_ids == pair.token_ids  # reproducible with the seed
    if temperature:
        other = _last(generate(bundle, PROMPT, GenerationConfig(16, temperature, seed=12)))
        assert other.token_ids != plain.token_ids


def test_streaming_yields_every_token_and_bounds_length(steer_bundle) -> None:
    _, bundle = steer_bundle
    steps = list(generate(bundle, PROMPT, GenerationConfig(max_new_tokens=5, temperature=0.0)))
    assert [s.n_tokens[0] for s in steps] == [1, 2, 3, 4, 5]
    assert [s.done for s in steps] == [False] * 4 + [True]
    assert steps[-1].texts[0].startswith(steps[1].texts[0])


@pytest.mark.parametrize(("method", "strength"), [("clamp", 3.5), ("ablate", 0.0), ("add", 2.0)])
def test_each_method_changes_the_residual_by_its_formula(steer_bundle, method, strength) -> None:
    """clamp: resid + (s - a_f) d_f; ablate: resid - a_f d_f; add: resid + s d_f; BOS untouched.

    ``d_f`` is the planted decoder row (b_dec is 0, so decode(e_f) - decode(0) = W_dec[f]).
    """
    from explorer.steer import _steering_hooks

    _, bundle = steer_bundle
    sae = bundle.sae(2)
    g = torch.Generator().manual_seed(9)
    resid = torch.randn(1, 5, 32, generator=g)
    enc = sae.W_enc[:, CAT_FEATURE].detach()
    resid[0, 1:] += 4 * enc / enc.norm()  # the feature fires, so ablation has work to do
    a = sae.encode(resid[0]).detach()[:, CAT_FEATURE]
    assert (a[1:] > 0).all()
    d = sae.W_dec[CAT_FEATURE].detach()
    hooks = _steering_hooks(bundle, [(Steer(2, CAT_FEATURE, strength, method),)], [1])
    with torch.inference_mode():
        out = hooks["blocks.2.hook_resid_post"](resid.clone(), None)
    coef = {"clamp": strength - a, "ablate": -a, "add": torch.full_like(a, strength)}[method]
    want = resid[0] + coef[:, None] * d
    want[0] = resid[0, 0]  # BOS
    assert torch.allclose(out[0], want, atol=1e-5)
    assert not torch.allclose(out[0, 1:], resid[0, 1:])


def test_concurrent_calls_never_see_each_others_hooks(steer_bundle) -> None:
    """While one thread steers hard, another's plain completion and encoding are unchanged."""
    _, bundle = steer_bundle
    cfg = GenerationConfig(max_new_tokens=24, temperature=0.8, seed=3)
    alone = _last(generate(bundle, PROMPT, cfg)).token_ids
    enc_alone = encode(bundle, "the cat sat on the mat", top_k=4).to_json()
    barrier = threading.Barrier(3)
    results: dict[str, object] = {}

    def steerer() -> None:
        barrier.wait()
        for _ in range(3):
            _last(generate_pair(bundle, PROMPT, cfg, [Steer(2, CAT_FEATURE, 500.0)]))

    def plain() -> None:
        barrier.wait()
        results["plain"] = [_last(generate(bundle, PROMPT, cfg)).token_ids for _ in range(3)]

    def encoder() -> None:
        barrier.wait()
        results["enc"] = [
            encode(bundle, "the cat sat on the mat", top_k=4).to_json() for _ in range(6)
        ]

    threads = [threading.Thread(target=f) for f in (steerer, plain, encoder)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results["plain"] == [alone] * 3
    assert results["enc"] == [enc_alone] * 6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max new tokens"),
        ({"max_new_tokens": MAX_NEW_TOKENS + 1}, "max new tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": 1e9}, "temperature"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"freq_penalty": float("inf")}, "frequency penalty"),
    ],
)
def test_bad_generation_settings(kwargs, message) -> None:
    with pytest.raises(SteerError, match=message):
        GenerationConfig(**kwargs)


@pytest.mark.parametrize(
    ("steer", "message"),
    [
        (lambda: Steer(2, 0, float("nan")), "strength"),
        (lambda: Steer(2, 0, float("inf")), "strength"),
        (lambda: Steer(2, 0, 1e12), "strength"),
        (lambda: Steer(2, 0, 1.0, "multiply"), "unknown method"),
    ],
)
def test_bad_steers(steer, message) -> None:
    with pytest.raises(SteerError, match=message):
        steer()


@pytest.mark.parametrize(
    ("steer", "prompt", "message"),
    [
        (Steer(2, 16, 1.0), PROMPT, "does not exist"),
        (Steer(2, -1, 1.0), PROMPT, "does not exist"),
        (Steer(3, 0, 1.0), PROMPT, "no SAE"),
        (Steer(2, 0, 1.0), "   ", "empty"),
    ],
)
def test_bad_requests_fail_before_generating(steer_bundle, steer, prompt, message) -> None:
    _, bundle = steer_bundle
    with pytest.raises(SteerError, match=message):
        next(generate_pair(bundle, prompt, GenerationConfig(), [steer]))


def test_long_prompts_keep_their_end(steer_bundle) -> None:
    _, bundle = steer_bundle
    out = _last(generate(bundle, "the cat " * 400, GenerationConfig(2, 0.0)))
    assert out.prompt_truncated and out.n_tokens == [2]


def test_gemma2_generation_with_its_logit_soft_cap_equals_transformers(
    tmp_path, gemma2_hf, tokenizer
) -> None:
    from helpers import make_random_saes

    assert gemma2_hf.config.final_logit_softcapping  # the cap is exercised
    bundle = tiny_bundle(gemma2_hf, tokenizer, make_random_saes(tmp_path, gemma2_hf))
    out = _last(generate(bundle, PROMPT, GenerationConfig(max_new_tokens=12, temperature=0.0)))
    ids = [tokenizer.bos_token_id, *tokenizer(PROMPT, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        ref = gemma2_hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    assert out.token_ids[0] == ref[0, len(ids) :].tolist()
    # The logits themselves, soft cap included (greedy decoding cannot see a monotonic cap).
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    from explorer.steer import _next_logits

    model = bundle.model
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    with torch.no_grad():
        ours = _next_logits(model, torch.tensor([ids]), cache)
        theirs = gemma2_hf(torch.tensor([ids])).logits[:, -1]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_a_suspended_generation_leaves_no_inference_mode_behind(steer_bundle) -> None:
    """Gradio resumes a streaming handler in any worker thread: a generator suspended inside
    ``torch.inference_mode()`` would leave that thread in inference mode (and the next request
    on it would make tensors that later fail in-place updates). Steps must run in any thread."""
    _, bundle = steer_bundle
    cfg = GenerationConfig(max_new_tokens=6, temperature=0.8, seed=2)
    it = generate_pair(bundle, PROMPT, cfg, [Steer(2, CAT_FEATURE, 60.0)])
    steps: list[Any] = []
    while not steps or not steps[-1].done:  # each step in a fresh thread, as Gradio may do
        t = threading.Thread(target=lambda: steps.append(next(it)))
        t.start()
        t.join(timeout=60)
        assert not torch.is_inference_mode_enabled()
    assert steps[-1].done
    whole = _last(generate_pair(bundle, PROMPT, cfg, [Steer(2, CAT_FEATURE, 60.0)]))
    assert steps[-1].token_ids == whole.token_ids
    next(generate(bundle, PROMPT, cfg))
    assert not torch.is_inference_mode_enabled()
