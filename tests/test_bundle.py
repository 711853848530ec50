"""Bundles: presets, the HF → transformer-lens path, lazy SAE loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import write_relu_sae

from explorer.bundle import (
    Bundle,
    BundleError,
    BundleSpec,
    SAESource,
    build_bundle,
    custom_spec,
    parse_sae_source,
    preset,
)
from explorer.hooked import ModelTypeError, hooked_config, hooked_from_hf, transpose_weights_once


def _hf_config_of(official: str):
    """The HF config of an official Gemma, rebuilt from transformer-lens's hard-coded table."""
    from transformers import Gemma2Config, Gemma3TextConfig

    if official == "google/gemma-2-2b":
        return Gemma2Config(
            vocab_size=256000,
            hidden_size=2304,
            intermediate_size=9216,
            num_hidden_layers=26,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
            query_pre_attn_scalar=256,
            max_position_embeddings=8192,
            sliding_window=4096,
            rms_norm_eps=1e-6,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
        )
    return Gemma3TextConfig(  # google/gemma-3-270m, as in its config.json
        vocab_size=262144,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        query_pre_attn_scalar=256,
        max_position_embeddings=32768,
        sliding_window=512,
        rms_norm_eps=1e-6,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3,
    )


@pytest.mark.parametrize("official", ["google/gemma-2-2b", "google/gemma-3-270m"])
def test_derived_config_equals_transformer_lens_official(official: str) -> None:
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    ref = get_pretrained_model_config(official).to_dict()
    mine = hooked_config(_hf_config_of(official)).to_dict()
    ignore = {"model_name", "tokenizer_name", "original_architecture"}
    diffs = {k: (ref.get(k), mine.get(k)) for k in set(ref) | set(mine) if k not in ignore}
    diffs = {k: v for k, v in diffs.items() if v[0] != v[1]}
    assert diffs == {}
    assert mine["original_architecture"] == ref["original_architecture"]


@pytest.mark.parametrize("which", ["gemma2_hf", "gemma3_hf"])
def test_residuals_equal_transformers_hidden_states(which: str, request, tokenizer) -> None:
    hf = request.getfixturevalue(which)
    model = hooked_from_hf(hf, tokenizer)
    text = "the cat sat on the mat . the quick red fox jumped over the lazy dog"
    ids = torch.tensor(
        [[tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]]
    )
    with torch.no_grad():
        hidden = hf(ids, output_hidden_states=True).hidden_states
        logits, cache = model.run_with_cache(ids)
        ref_logits = hf(ids).logits
    for layer in range(
        hf.config.num_hidden_layers - 1
    ):  # the last HF state is after the final norm
        torch.testing.assert_close(
            cache[f"blocks.{layer}.hook_resid_post"], hidden[layer + 1], rtol=1e-5, atol=1e-5
        )
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)


def test_linear_weights_are_laid_out_so_no_forward_pass_copies_them(gemma3_hf, tokenizer) -> None:
    """transformer-lens multiplies by ``W.T.contiguous()``: that must not copy (see bundle.py)."""

    import einops

    model = hooked_from_hf(gemma3_hf, tokenizer)
    assert model.unembed.W_U.T.is_contiguous()
    for block in model.blocks:
        assert block.mlp.W_in.T.is_contiguous() and block.mlp.W_out.T.is_contiguous()
        # The attention's rearrangements before F.linear are views of the weights, not copies.
        attn = block.attn
        for w in (attn.W_Q, attn._W_K, attn._W_V):
            flat = einops.rearrange(w, "head d_model d_head -> (head d_head) d_model")
            assert flat.data_ptr() == w.data_ptr() and flat.is_contiguous()
        out = einops.rearrange(attn.W_O, "head d_head d_model -> d_model (head d_head)")
        assert out.data_ptr() == attn.W_O.data_ptr() and out.is_contiguous()
    assert transpose_weights_once(model) == 0  # already done by hooked_from_hf
    ids = torch.tensor([[2, 5, 6, 7]])
    with torch.no_grad():
        fast = model(ids)
        for module in model.modules():  # the plain layout, for comparison
            for name in ("W_U", "W_gate", "W_in", "W_out", "W_Q", "_W_K", "_W_V", "W_O"):
                p = module._parameters.get(name)
                if p is not None:
                    p.data = p.data.contiguous()
        assert not model.unembed.W_U.T.is_contiguous()
        assert model.blocks[0].attn.W_Q.is_contiguous()
        assert torch.equal(fast, model(ids))  # bit-identical


def test_presets_and_unknown_preset() -> None:
    assert preset("default").layers == (5, 9, 12, 15)
    assert preset("gemma-3-270m").source(9).sae_id == "layer_9_width_16k_l0_medium"
    g2 = preset("gemma-2-2b")
    assert g2.layers == tuple(range(26)) and g2.online
    assert g2.source(3) == SAESource(
        release="gemma-scope-2b-pt-res-canonical", sae_id="layer_3/width_16k/canonical"
    )
    assert g2.hook_name(3) == "blocks.3.hook_resid_post"
    with pytest.raises(BundleError, match=r"unknown preset 'gemma-9'.*default"):
        preset("gemma-9")
    with pytest.raises(BundleError, match="layer 7 is not in bundle 'default'"):
        preset("default").source(7)


def test_custom_spec_parses_registry_and_local_sources(tmp_path: Path) -> None:
    (tmp_path / "layer_2").mkdir()
    local = custom_spec(str(tmp_path), str(tmp_path / "layer_{layer}"), [2])
    assert local.saes == ((2, SAESource(path=str(tmp_path / "layer_2"))),)
    assert not local.online
    reg = parse_sae_source("gemma-scope-2b-pt-res-canonical:layer_{layer}/width_16k/canonical", 4)
    assert reg.sae_id == "layer_4/width_16k/canonical" and reg.online
    with pytest.raises(BundleError, match="needs --layers"):
        custom_spec("m", "s", [])


def test_spec_validation() -> None:
    with pytest.raises(BundleError):
        BundleSpec(name="x", model="m", saes=())
    with pytest.raises(BundleError):
        BundleSpec(name="x", model="m", saes=((3, SAESource(path="a")), (1, SAESource(path="b"))))
    with pytest.raises(BundleError):
        SAESource(release="r")


def test_saes_load_lazily_with_a_bounded_cache(tmp_path: Path, gemma3_hf, tokenizer) -> None:
    d = gemma3_hf.config.hidden_size
    dirs = {
        n: write_relu_sae(
            tmp_path / f"s{n}", torch.randn(d, 8), torch.zeros(8), f"blocks.{n}.hook_resid_post"
        )
        for n in range(3)
    }
    spec = BundleSpec(
        name="t", model="m", saes=tuple((n, SAESource(path=str(p))) for n, p in dirs.items())
    )
    bundle = Bundle(
        spec=spec, model=hooked_from_hf(gemma3_hf, tokenizer), tokenizer=tokenizer, max_saes=2
    )
    assert list(bundle._saes) == []
    first = bundle.sae(0)
    assert bundle.sae(0) is first  # cached
    bundle.sae(1)
    bundle.sae(2)  # evicts layer 0, the least recently used
    assert list(bundle._saes) == [1, 2]
    assert bundle.sae(0) is not first


def test_missing_local_sae_is_a_clear_error(tmp_path: Path) -> None:
    from explorer.bundle import load_sae

    with pytest.raises(BundleError, match=r"no SAE at .*cfg.json missing"):
        load_sae(SAESource(path=str(tmp_path / "nowhere")))


def test_default_preset_without_saes_names_the_build_command(monkeypatch, tmp_path: Path) -> None:
    import explorer.bundle as b

    spec = BundleSpec(
        name="default",
        model="embedded",
        saes=((5, SAESource(path=str(tmp_path / "layer_5"))),),
    )
    with pytest.raises(BundleError, match="python -m precompute train-saes --preset default"):
        b.build_bundle(spec)


def test_unsupported_architecture_is_refused() -> None:
    from transformers import LlamaConfig

    with pytest.raises(ModelTypeError, match="'llama' is not supported"):
        hooked_config(LlamaConfig())


def test_online_model_offline_is_one_clear_error() -> None:
    spec = BundleSpec(
        name="x",
        model="google/this-model-is-not-cached",
        saes=((0, SAESource(release="r", sae_id="s")),),
        online=True,
    )
    with pytest.raises(BundleError, match=r"needs the Hugging Face hub.*--preset default"):
        build_bundle(spec, device="cpu", dtype="float32")
