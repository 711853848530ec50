"""encode(): planted features, an independent recomputation, BOS handling, limits, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_gemma3, tiny_bundle, write_relu_sae

from explorer.bundle import BundleError
from explorer.encode import EncodeError, encode

PLANTED = 5  # the planted feature's id
DIM = 31  # the residual dimension that carries it


@pytest.fixture
def planted(tmp_path: Path, tokenizer):
    """A Gemma 3 whose residual stream is just the scaled embedding, and an SAE on layer 2
    whose feature 5 reads dimension 31, which only the token "cat" writes (2.0 before scaling).

    Attention and MLP outputs are zeroed, so ``resid_post = embed * sqrt(d_model)`` on every
    layer; feature 5 = relu(resid[31] - 1), i.e. ``2 * sqrt(32) - 1`` on "cat" and 0 elsewhere.
    """
    hf = make_gemma3(len(tokenizer))
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = hf.model.embed_tokens.weight
        emb[:, DIM] = 0.0
        emb[tokenizer.convert_tokens_to_ids("cat"), DIM] = 2.0
    d = hf.config.hidden_size
    w = torch.randn(d, 16) * 0.1
    w[DIM, :] = 0.0
    w[:, PLANTED] = 0.0
    w[DIM, PLANTED] = 1.0
    b = torch.full((16,), -5.0)  # the other features stay silent
    b[PLANTED] = -1.0
    sae = write_relu_sae(tmp_path / "planted", w, b, "blocks.2.hook_resid_post")
    return tiny_bundle(hf, tokenizer, {2: sae})


def test_planted_feature_fires_on_its_token_only_with_the_hand_computed_value(planted) -> None:
    result = encode(planted, "the cat sat on the mat and the cat ran", top_k=3)
    expected = 2.0 * 32**0.5 - 1.0
    layer = result.layers[2]
    for i, token in enumerate(result.tokens):
        top = dict(layer.top(i))
        if token == "cat":
            assert list(top) == [PLANTED]
            assert top[PLANTED] == pytest.approx(expected, rel=1e-5)
        else:
            assert PLANTED not in top
            assert int(layer.n_active[i]) == 0
    assert result.tokens.count("cat") == 2


def test_activations_equal_an_independent_recomputation(random_saes, gemma3_hf, tokenizer) -> None:
    from safetensors.numpy import load_file

    bundle = tiny_bundle(gemma3_hf, tokenizer, random_saes)
    text = "the big dog ran to the old house and the bird sang"
    result = encode(bundle, text, top_k=4)
    ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        hidden = gemma3_hf(torch.tensor([ids]), output_hidden_states=True).hidden_states
    assert result.token_ids == ids[1:]
    for layer, path in random_saes.items():
        params = load_file(str(path / "sae_weights.safetensors"))
        h = hidden[layer + 1][0, 1:].double().numpy()  # BOS dropped
        acts = np.maximum(h @ params["W_enc"].astype(np.float64) + params["b_enc"], 0.0)
        la = result.layers[layer]
        assert la.n_active.tolist() == (acts > 0).sum(1).tolist()
        for pos in range(len(ids) - 1):
            want = sorted(((a, f) for f, a in enumerate(acts[pos]) if a > 0), reverse=True)[:4]
            got = la.top(pos)
            assert [f for f, _ in got] == [f for _, f in want]
            np.testing.assert_allclose([a for _, a in got], [a for a, _ in want], rtol=1e-4)


def test_bos_is_never_reported_unless_asked(random_saes, gemma3_hf, tokenizer) -> None:
    bundle = tiny_bundle(gemma3_hf, tokenizer, random_saes)
    plain = encode(bundle, "hello world")
    assert plain.tokens == ["hello", "world"]
    assert tokenizer.bos_token_id not in plain.token_ids
    full = encode(bundle, "hello world", include_special=True)
    assert full.token_ids[0] == tokenizer.bos_token_id and len(full.tokens) == 3


def test_long_text_is_truncated_and_says_so(random_saes, gemma3_hf, tokenizer) -> None:
    bundle = tiny_bundle(gemma3_hf, tokenizer, random_saes, max_tokens=6)
    result = encode(bundle, "one two three four five one two three four five")
    assert result.truncated and len(result.tokens) == 5  # 6 minus BOS
    assert not encode(bundle, "one two").truncated


def test_json_shape(random_saes, gemma3_hf, tokenizer) -> None:
    bundle = tiny_bundle(gemma3_hf, tokenizer, random_saes)
    out = encode(bundle, "the cat sat", layers=[2], top_k=2).to_json()
    assert set(out) == {"preset", "tokens", "truncated", "layers"}
    assert list(out["layers"]) == ["2"] and len(out["layers"]["2"]) == 3
    for token_feats in out["layers"]["2"]:
        assert len(token_feats) <= 2
        assert all(set(f) == {"feature", "act"} and f["act"] > 0 for f in token_feats)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"text": ""}, EncodeError, "empty"),
        ({"text": " \n\t "}, EncodeError, "empty"),
        ({"text": "cat", "top_k": 0}, EncodeError, "positive"),
        ({"text": "cat", "top_k": -3}, EncodeError, "positive"),
        ({"text": "cat", "top_k": 2.5}, EncodeError, "positive"),
        ({"text": "cat", "layers": [7]}, BundleError, "layer 7 is not in bundle"),
    ],
)
def test_bad_input(random_saes, gemma3_hf, tokenizer, kwargs, error, match) -> None:
    bundle = tiny_bundle(gemma3_hf, tokenizer, random_saes)
    with pytest.raises(error, match=match):
        encode(bundle, **kwargs)
