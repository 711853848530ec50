"""The Gemma Scope-shaped benchmark fixture (``bench/gemma2_shape.py``) at a tiny scale: its
config is Gemma 2 2B's, its SAEs' thresholds give the L0 asked for on text they were not
calibrated on, and shared blocks still hook every layer."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from gemma2_shape import build_gemma2_shape, gemma2_2b_config

from explorer.encode import residuals
from explorer.hooked import hooked_config
from precompute.corpus import pad_windows, run_documents, token_windows

TINY = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "query_pre_attn_scalar": 32,
    "vocab_size": 256_000,
}


def _unseen_windows(bundle: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Eight windows of training documents (the dictionaries were calibrated on the first
    held-out ones), padded: ids and the mask of real tokens."""
    windows = []
    for w in token_windows(run_documents("default", "train", 7), bundle.tokenizer, 128):
        windows.append(w.token_ids)
        if len(windows) == 8:
            break
    return pad_windows(windows, 0, bundle.special_ids)


def test_config_is_gemma_2_2b_as_transformer_lens_knows_it() -> None:
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    ref = get_pretrained_model_config("google/gemma-2-2b").to_dict()
    mine = hooked_config(gemma2_2b_config()).to_dict()
    ignore = {"model_name", "tokenizer_name", "original_architecture"}
    diffs = {k: (ref.get(k), mine.get(k)) for k in set(ref) | set(mine) if k not in ignore}
    assert {k: v for k, v in diffs.items() if v[0] != v[1]} == {}
    assert (mine["n_layers"], mine["d_model"], mine["d_vocab"]) == (26, 2304, 256_000)


@pytest.mark.parametrize("shared", [False, True])
def test_tiny_shape_l0_near_target_on_unseen_text(tmp_path: Path, shared: bool) -> None:
    width, l0 = 512, 20.0
    shape = build_gemma2_shape(
        tmp_path, width=width, l0=l0, calibration_tokens=1024, shared_blocks=shared, **TINY
    )
    bundle = shape.bundle
    assert all(abs(v - l0) < 0.1 * l0 for v in shape.calibration_l0.values())
    ids, keep = _unseen_windows(bundle)
    resid = residuals(bundle, ids, [0, 1])
    assert not torch.allclose(resid[0], resid[1])  # every block hooked, the stream moves on
    for layer in (0, 1):
        sae = bundle.sae(layer)
        assert type(sae).__name__ == "JumpReLUSAE" and sae.cfg.d_sae == width
        torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(width))
        with torch.inference_mode():
            feats = sae.encode(resid[layer][keep])
        measured = float((feats > 0).sum(-1).float().mean())
        assert 0.6 * l0 < measured < 1.4 * l0, (layer, measured)
        assert int((feats > 0).any(0).sum()) > width // 2  # not a few features doing it all
    blocks = bundle.model.blocks
    same = blocks[0].mlp.W_in.data_ptr() == blocks[1].mlp.W_in.data_ptr()
    assert same == shared
    assert bundle.model.W_U.data_ptr() == bundle.model.W_E.data_ptr()  # tied, no copy


def test_same_seed_same_weights(tmp_path: Path) -> None:
    a = build_gemma2_shape(tmp_path / "a", width=64, l0=8, calibration_tokens=256, **TINY)
    b = build_gemma2_shape(tmp_path / "b", width=64, l0=8, calibration_tokens=256, **TINY)
    for (name, p), (_, q) in zip(
        a.bundle.model.named_parameters(), b.bundle.model.named_parameters(), strict=True
    ):
        assert torch.equal(p, q), name
    torch.testing.assert_close(a.bundle.sae(1).threshold, b.bundle.sae(1).threshold)


def test_tiny_shape_transcoders_read_the_mlp_input_at_the_target_l0(tmp_path: Path) -> None:
    """With ``transcoders=True`` each layer also gets a Gemma Scope-shaped transcoder (the
    bundle's second source) whose L0 on unseen text is near the target."""
    from explorer.bundle import TRANSCODER_IN
    from explorer.encode import activations

    width, l0 = 512, 20.0
    shape = build_gemma2_shape(
        tmp_path, width=width, l0=l0, calibration_tokens=1024, transcoders=True, **TINY
    )
    bundle = shape.bundle
    assert bundle.spec.transcoder_layers == (0, 1)
    assert shape.transcoder_l0 and all(abs(v - l0) < 0.1 * l0 for v in shape.transcoder_l0.values())
    ids, keep = _unseen_windows(bundle)
    acts = activations(bundle, ids, {TRANSCODER_IN.format(layer=n): n for n in (0, 1)})
    for layer in (0, 1):
        tc = bundle.transcoder(layer)
        assert type(tc).__name__ == "JumpReLUTranscoder" and tc.cfg.d_sae == width
        with torch.inference_mode():
            feats = tc.encode(acts[layer][keep])
        measured = float((feats > 0).sum(-1).float().mean())
        assert 0.6 * l0 < measured < 1.4 * l0, (layer, measured)
