"""The online presets' transcoders, loaded offline from a hub cache in the hub's own layout.

* ``gemma-2-2b`` names ``gemma-scope-2b-pt-transcoders`` (sae-lens's ``gemma_2_transcoder``
  loader): ``google/gemma-scope-2b-pt-transcoders`` : ``layer_3/width_16k/average_l0_54/
  params.npz`` with ``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``, ``threshold``; sizes come from
  the names (shrunk to the tiny model's by the release's ``config_overrides``, as the SAE tests
  do). sae-lens says they read ``blocks.N.ln2.hook_normalized`` and write ``hook_mlp_out``.
* ``gemma-3-270m`` names ``gemma-scope-2-270m-pt-transcoders-all`` (``gemma_3`` loader):
  ``google/gemma-scope-2-270m-pt`` : ``transcoder_all/layer_2_width_16k_l0_small_affine/``
  ``config.json`` + ``params.safetensors`` (lowercase keys, ``affine_skip_connection``
  ``[d_in, d_out]``). Their config names the HF input ``pre_feedforward_layernorm.output`` (the
  norm's weighted output) while sae-lens maps it to ``hook_mlp_in``; the bundle folds the norm's
  weight into the encoder so that they read ``ln2.hook_normalized`` like every transcoder here.

Each is checked against a by-hand computation on the file's arrays, on a tiny random model.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import make_gemma2, make_gemma3
from hub_layout import RangeRequestHub, write_hub_file, write_hub_json

from explorer.bundle import (
    GEMMA_2_TRANSCODER_L0,
    Bundle,
    BundleError,
    BundleSpec,
    SAESource,
    preset,
)
from explorer.hooked import hooked_from_hf

D_IN, D_SAE = 32, 64
G2_RELEASE, G2_REPO = "gemma-scope-2b-pt-transcoders", "google/gemma-scope-2b-pt-transcoders"
G2_LAYER, G2_PATH = 3, "layer_3/width_16k/average_l0_54"
G3_RELEASE, G3_REPO = "gemma-scope-2-270m-pt-transcoders-all", "google/gemma-scope-2-270m-pt"
G3_LAYER, G3_PATH = 2, "transcoder_all/layer_2_width_16k_l0_small_affine"


def params(seed: int, skip: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {
        "W_enc": (rng.normal(size=(D_IN, D_SAE)) / np.sqrt(D_IN)).astype(np.float32),
        "W_dec": rng.normal(scale=0.3, size=(D_SAE, D_IN)).astype(np.float32),
        "b_enc": rng.normal(scale=0.3, size=D_SAE).astype(np.float32),
        "b_dec": rng.normal(scale=0.3, size=D_IN).astype(np.float32),
        "threshold": rng.uniform(0.2, 1.0, size=D_SAE).astype(np.float32),
    }
    if skip:
        out["affine_skip_connection"] = rng.normal(scale=0.1, size=(D_IN, D_IN)).astype(np.float32)
    return out


def by_hand(x: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """A JumpReLU transcoder on inputs ``x`` (what the file's arrays mean)."""
    x = x.astype(np.float64)
    pre = x @ p["W_enc"] + p["b_enc"]
    out = (pre * (pre > p["threshold"])) @ p["W_dec"] + p["b_dec"]
    if "affine_skip_connection" in p:
        out = out + x @ p["affine_skip_connection"]
    return out


def bundle_of(model: Any, tokenizer: Any, release: str, layer: int, sae_id: str) -> Bundle:
    spec = BundleSpec(
        name="t",
        model="tiny",
        saes=((0, SAESource(path="/nonexistent")),),  # never loaded here
        transcoders=((layer, SAESource(release=release, sae_id=sae_id)),),
    )
    return Bundle(spec=spec, model=model, tokenizer=tokenizer)


def mlp_input(model: Any, layer: int) -> torch.Tensor:
    """``ln2.hook_normalized`` of ``layer`` on a few random tokens."""
    ids = torch.randint(1, model.cfg.d_vocab, (2, 9))
    with torch.inference_mode():
        _, cache = model.run_with_cache(ids, names_filter=[f"blocks.{layer}.ln2.hook_normalized"])
    return cache[f"blocks.{layer}.ln2.hook_normalized"].reshape(-1, D_IN)


def test_presets_name_these_hub_files() -> None:
    from sae_lens.loading.pretrained_sae_loaders import get_conversion_loader_name
    from sae_lens.loading.pretrained_saes_directory import (
        get_pretrained_saes_directory,
        get_repo_id_and_folder_name,
    )

    g2 = preset("gemma-2-2b")
    assert g2.transcoder_layers == tuple(range(26))
    registry = list(get_pretrained_saes_directory()[G2_RELEASE].saes_map)
    assert [s.sae_id for _, s in g2.transcoders] == registry  # one 16k id per layer
    assert len(GEMMA_2_TRANSCODER_L0) == 26
    source = g2.transcoder_source(G2_LAYER)
    assert get_repo_id_and_folder_name(G2_RELEASE, source.sae_id) == (G2_REPO, G2_PATH)
    assert get_conversion_loader_name(G2_RELEASE) == "gemma_2_transcoder"
    g3 = preset("gemma-3-270m")
    assert g3.transcoder_layers == tuple(range(18))
    source = g3.transcoder_source(G3_LAYER)
    assert get_repo_id_and_folder_name(G3_RELEASE, source.sae_id) == (G3_REPO, G3_PATH)
    assert get_conversion_loader_name(G3_RELEASE) == "gemma_3"
    with pytest.raises(BundleError, match="no transcoder"):
        g3.transcoder_source(18)


def test_gemma_scope_transcoder_loads_offline_and_reads_the_normalised_mlp_input(
    hub: Path, monkeypatch: pytest.MonkeyPatch, tokenizer
) -> None:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    from sae_lens.saes.transcoder import JumpReLUTranscoder

    entry = get_pretrained_saes_directory()[G2_RELEASE]
    overrides = {**(entry.config_overrides or {}), "d_in": D_IN, "d_out": D_IN, "d_sae": D_SAE}
    monkeypatch.setattr(entry, "config_overrides", overrides)
    p = params(7, skip=False)
    buf = io.BytesIO()
    np.savez(buf, **p)  # type: ignore[arg-type]
    write_hub_file(hub, G2_REPO, f"{G2_PATH}/params.npz", buf.getvalue())
    model = hooked_from_hf(make_gemma2(len(tokenizer), n_layers=4, d_model=D_IN), tokenizer)
    bundle = bundle_of(model, tokenizer, G2_RELEASE, G2_LAYER, G2_PATH)
    tc = bundle.transcoder(G2_LAYER)
    assert type(tc) is JumpReLUTranscoder
    assert tc.cfg.metadata.hook_name == "blocks.3.ln2.hook_normalized"
    assert tc.cfg.metadata.hook_name_out == "blocks.3.hook_mlp_out"
    assert bundle.transcoder(G2_LAYER) is tc  # cached
    x = mlp_input(model, G2_LAYER)
    want = by_hand(x.numpy(), p)
    with torch.no_grad():
        got = tc(x)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)


def test_gemma_scope_2_transcoder_gets_the_norm_weight_folded_in(
    hub: Path, monkeypatch: pytest.MonkeyPatch, tokenizer
) -> None:
    from sae_lens.saes.transcoder import JumpReLUSkipTranscoder
    from safetensors.numpy import save

    p = params(11, skip=True)
    write_hub_json(
        hub,
        G3_REPO,
        f"{G3_PATH}/config.json",
        {
            "width": D_SAE,
            "model_name": "google/gemma-3-270m-pt",
            "architecture": "jump_relu",
            "l0": 20,
            "affine_connection": True,
            "hf_hook_point_in": f"model.layers.{G3_LAYER}.pre_feedforward_layernorm.output",
            "hf_hook_point_out": f"model.layers.{G3_LAYER}.post_feedforward_layernorm.output",
            "type": "transcoder",
        },
    )
    stored = {k.lower(): v for k, v in p.items()}
    write_hub_file(hub, G3_REPO, f"{G3_PATH}/params.safetensors", save(stored))
    RangeRequestHub(hub).install(monkeypatch)
    model = hooked_from_hf(make_gemma3(len(tokenizer), n_layers=4, d_model=D_IN), tokenizer)
    with torch.no_grad():  # a norm weight that is not all ones, so that folding shows
        model.blocks[G3_LAYER].ln2.w.uniform_(0.5, 2.0)
    w = model.blocks[G3_LAYER].ln2.w.detach().numpy()
    sae_id = preset("gemma-3-270m").transcoder_source(G3_LAYER).sae_id
    assert sae_id is not None
    tc = bundle_of(model, tokenizer, G3_RELEASE, G3_LAYER, sae_id).transcoder(G3_LAYER)
    assert type(tc) is JumpReLUSkipTranscoder
    assert tc.cfg.metadata.hook_name == "blocks.2.ln2.hook_normalized"
    assert tc.cfg.metadata.hook_name_out == "blocks.2.hook_mlp_out"
    x = mlp_input(model, G3_LAYER)
    with torch.no_grad():
        got = tc(x).numpy()
    # what Gemma Scope 2 computes: the transcoder on the norm's weighted output
    np.testing.assert_allclose(got, by_hand(x.numpy() * w, p), rtol=1e-4, atol=1e-4)
    assert not np.allclose(got, by_hand(x.numpy(), p), atol=1e-2)  # unfolded reads differ


def test_a_transcoder_on_other_hooks_is_refused(tmp_path: Path, tokenizer) -> None:
    from precompute.train.transcoders import TranscoderConfig, save_transcoder

    cfg = TranscoderConfig(layers=(1,), d_sae=8, k=2, free_features=0)
    weights = {
        "W_enc": torch.zeros(D_IN, 8),
        "b_enc": torch.zeros(8),
        "threshold": torch.zeros(8),
        "W_dec": torch.zeros(8, D_IN),
        "b_dec": torch.zeros(D_IN),
    }
    save_transcoder(weights, tmp_path / "layer_1", 1, "tiny", cfg)
    model = hooked_from_hf(make_gemma3(len(tokenizer), n_layers=4, d_model=D_IN), tokenizer)
    spec = BundleSpec(
        name="t",
        model="tiny",
        saes=((0, SAESource(path="/nonexistent")),),
        transcoders=((2, SAESource(path=str(tmp_path / "layer_1"))),),  # layer 1's, as layer 2
    )
    with pytest.raises(BundleError, match=r"reads 'blocks\.1\.ln2\.hook_normalized'"):
        Bundle(spec=spec, model=model, tokenizer=tokenizer).transcoder(2)
