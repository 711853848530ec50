"""The online presets' Gemma Scope SAEs, loaded offline from a hub cache in the hub's own layout.

``gemma-2-2b`` and ``gemma-3-270m`` name sae-lens registry entries; :func:`load_sae` hands them
to ``SAE.from_pretrained``, which resolves each id to a file in a hub repository and downloads
it. These tests write those files (tiny, random, with the real names and keys) into a local
hub cache and run the same call with ``HF_HUB_OFFLINE=1``:

* ``gemma-scope-2b-pt-res-canonical`` (sae-lens's ``gemma_2`` loader): one file,
  ``google/gemma-scope-2b-pt-res`` : ``layer_3/width_16k/average_l0_59/params.npz`` with
  ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc``, ``b_dec``, ``threshold``. The
  loader takes ``d_in`` from the repo name (``2b`` → 2304) and ``d_sae`` from the folder
  (``width_16k`` → 16384), not from the file; the release's ``config_overrides`` (sae-lens's own
  per-release override, applied last) shrinks them to the tiny model's 32 × 64.
* ``gemma-scope-2-270m-pt-res`` (``gemma_3`` loader): ``google/gemma-scope-2-270m-pt`` :
  ``resid_post/layer_5_width_16k_l0_medium/config.json`` (optional: when absent it is inferred)
  and ``params.safetensors`` with lowercase ``w_enc``, ``w_dec``, ``b_enc``, ``b_dec``,
  ``threshold``. Its sizes come from the safetensors header, which the loader reads with two HTTP
  range requests that ignore offline mode; :class:`hub_layout.RangeRequestHub` answers them from
  the cache (so with no network even a complete cache cannot load this preset: see
  :func:`test_gemma_scope_2_needs_the_hub_even_when_cached`).

Each SAE is checked against the file's values and the JumpReLU formula computed by hand, then
run on a tiny random Gemma through ``HookedSAETransformer`` and through :func:`encode`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import make_gemma2, make_gemma3
from hub_layout import RangeRequestHub, write_hub_file, write_hub_json
from huggingface_hub.errors import LocalEntryNotFoundError

from explorer.bundle import Bundle, BundleError, BundleSpec, SAESource, load_sae, preset
from explorer.encode import encode

D_IN = 32  # the tiny models' d_model
D_SAE = 64
G2_RELEASE = "gemma-scope-2b-pt-res-canonical"
G2_REPO = "google/gemma-scope-2b-pt-res"
G2_LAYER = 3
G2_PATH = "layer_3/width_16k/average_l0_59"
G3_RELEASE = "gemma-scope-2-270m-pt-res"
G3_REPO = "google/gemma-scope-2-270m-pt"
G3_LAYER = 5
G3_PATH = "resid_post/layer_5_width_16k_l0_medium"
TEXT = "the quick fox jumped over the lazy dog . hello world"


def jumprelu_params(seed: int) -> dict[str, np.ndarray]:
    """Random Gemma Scope style weights scaled to the tiny models' residual stream (std ≈ 2.5).

    Thresholds are positive and ``b_dec`` is non-zero (Gemma Scope does not subtract it from the
    input), so both a missing mask and a wrongly applied ``b_dec`` would show.
    """
    rng = np.random.default_rng(seed)
    w_enc = rng.normal(size=(D_IN, D_SAE)) / np.sqrt(D_IN)
    return {
        "W_enc": w_enc.astype(np.float32),
        "W_dec": (w_enc.T + 0.1 * rng.normal(size=(D_SAE, D_IN))).astype(np.float32),
        "b_enc": rng.normal(scale=0.5, size=D_SAE).astype(np.float32),
        "b_dec": rng.normal(scale=0.3, size=D_IN).astype(np.float32),
        "threshold": rng.uniform(0.5, 2.5, size=D_SAE).astype(np.float32),
    }


def jumprelu_by_hand(x: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """``[..., d_in] -> [..., d_sae]``: ``pre = x @ W_enc + b_enc; act = pre * (pre > θ)``."""
    pre = x.astype(np.float64) @ p["W_enc"] + p["b_enc"]
    return pre * (pre > p["threshold"])


def g2_source() -> SAESource:
    return preset("gemma-2-2b").source(G2_LAYER)


def g3_source() -> SAESource:
    return preset("gemma-3-270m").source(G3_LAYER)


@pytest.fixture
def tiny_gemma_scope_release(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink the Gemma Scope release's sizes to the tiny model's via its ``config_overrides``."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    entry = get_pretrained_saes_directory()[G2_RELEASE]
    overrides = {**(entry.config_overrides or {}), "d_in": D_IN, "d_sae": D_SAE}
    monkeypatch.setattr(entry, "config_overrides", overrides)


@pytest.fixture
def gemma_scope(hub: Path, tiny_gemma_scope_release: None) -> dict[str, np.ndarray]:
    """Gemma Scope's ``params.npz`` for layer 3 in the cache; returns the arrays written."""
    import io

    params = jumprelu_params(seed=23)
    buf = io.BytesIO()
    np.savez(buf, **params)  # type: ignore[arg-type]  # numpy stubs: allow_pickle
    write_hub_file(hub, G2_REPO, f"{G2_PATH}/params.npz", buf.getvalue())
    return params


@pytest.fixture
def gemma_scope_2(hub: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Gemma Scope 2's ``config.json`` and ``params.safetensors`` for layer 5 in the cache.

    Returns the arrays written (under the loader's own names) and the range-request hub.
    """
    from safetensors.numpy import save

    params = jumprelu_params(seed=35)
    write_hub_json(
        hub,
        G3_REPO,
        f"{G3_PATH}/config.json",
        {  # the keys of a real Gemma Scope 2 resid_post config.json
            "width": D_SAE,
            "model_name": "google/gemma-3-270m-pt",
            "architecture": "jump_relu",
            "l0": 55,
            "affine_connection": False,
            "hf_hook_point_in": f"model.layers.{G3_LAYER}.output",
            "hf_hook_point_out": f"model.layers.{G3_LAYER}.output",
            "type": "sae",
        },
    )
    stored = {key.lower(): value for key, value in params.items()}  # w_enc, w_dec, …
    write_hub_file(hub, G3_REPO, f"{G3_PATH}/params.safetensors", save(stored))
    return {"params": params, "remote": RangeRequestHub(hub).install(monkeypatch)}


@pytest.fixture(scope="module")
def gemma2_model(tokenizer):
    from explorer.hooked import hooked_from_hf

    return hooked_from_hf(make_gemma2(len(tokenizer), n_layers=4, d_model=D_IN), tokenizer)


@pytest.fixture(scope="module")
def gemma3_model(tokenizer):
    from explorer.hooked import hooked_from_hf

    return hooked_from_hf(make_gemma3(len(tokenizer), n_layers=6, d_model=D_IN), tokenizer)


# ------------------------------------------------------------------------------ the registry


def test_presets_name_these_hub_files() -> None:
    """The layout written below is where the presets' registry entries point."""
    from sae_lens.loading.pretrained_sae_loaders import get_conversion_loader_name
    from sae_lens.loading.pretrained_saes_directory import get_repo_id_and_folder_name

    assert g2_source() == SAESource(release=G2_RELEASE, sae_id="layer_3/width_16k/canonical")
    assert get_repo_id_and_folder_name(G2_RELEASE, g2_source().sae_id) == (G2_REPO, G2_PATH)
    assert get_conversion_loader_name(G2_RELEASE) == "gemma_2"
    assert g3_source() == SAESource(release=G3_RELEASE, sae_id="layer_5_width_16k_l0_medium")
    assert get_repo_id_and_folder_name(G3_RELEASE, g3_source().sae_id) == (G3_REPO, G3_PATH)
    assert get_conversion_loader_name(G3_RELEASE) == "gemma_3"


def test_gemma_2_loader_takes_sizes_from_names_not_the_file() -> None:
    """What the override replaces: only ``d_in``/``d_sae``; hook and architecture stay real."""
    from sae_lens.loading.pretrained_sae_loaders import get_gemma_2_config_from_hf

    cfg = get_gemma_2_config_from_hf(G2_REPO, G2_PATH, device="cpu")
    assert (cfg["d_in"], cfg["d_sae"]) == (2304, 16384)
    assert cfg["architecture"] == "jumprelu"
    assert cfg["hook_name"] == "blocks.3.hook_resid_post"
    assert cfg["apply_b_dec_to_input"] is False


# ------------------------------------------------------------------- Gemma Scope (Gemma 2 2B)


def test_gemma_scope_loads_offline_from_the_hub_cache(gemma_scope: dict[str, np.ndarray]) -> None:
    from sae_lens import JumpReLUSAE

    sae = load_sae(g2_source())
    assert type(sae) is JumpReLUSAE
    assert sae.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (D_IN, D_SAE)
    for name, value in gemma_scope.items():
        assert torch.equal(getattr(sae, name).detach(), torch.from_numpy(value)), name
    x = np.random.default_rng(1).normal(scale=2.5, size=(40, D_IN)).astype(np.float32)
    want = jumprelu_by_hand(x, gemma_scope)
    assert 0.1 < (want > 0).mean() < 0.6  # the mask matters: some fire, most do not
    with torch.no_grad():
        got = sae.encode(torch.from_numpy(x))
        recon = sae.decode(got)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    want_recon = want @ gemma_scope["W_dec"] + gemma_scope["b_dec"]
    np.testing.assert_allclose(recon.numpy(), want_recon, rtol=1e-4, atol=1e-4)


def test_gemma_scope_runs_on_a_tiny_gemma_2(gemma_scope, gemma2_model, tokenizer) -> None:
    sae = load_sae(g2_source())
    ids = torch.tensor(
        [[tokenizer.bos_token_id, *tokenizer(TEXT, add_special_tokens=False)["input_ids"]]]
    )
    hook = "blocks.3.hook_resid_post"
    with torch.no_grad():
        _, clean = gemma2_model.run_with_cache(ids, names_filter=hook)
        logits, cache = gemma2_model.run_with_cache_with_saes(ids, saes=[sae])
    assert gemma2_model.acts_to_saes == {}  # run_with_saes attaches for the call only
    want = jumprelu_by_hand(clean[hook][0].numpy(), gemma_scope)
    assert (want > 0).any(axis=-1).all()  # every position has an active feature
    got = cache[f"{hook}.hook_sae_acts_post"][0]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)
    recon = cache[f"{hook}.hook_sae_recons"][0]
    want_recon = want @ gemma_scope["W_dec"] + gemma_scope["b_dec"]
    np.testing.assert_allclose(recon.numpy(), want_recon, rtol=1e-4, atol=1e-4)
    assert logits.shape == (1, ids.shape[1], len(tokenizer))


def _assert_encoding_matches(
    encoding: Any, layer: int, clean_resid: np.ndarray, params: dict[str, np.ndarray], k: int
) -> None:
    """``encoding``'s top-``k`` per token equals a brute-force top-``k`` of the hand formula."""
    acts = jumprelu_by_hand(clean_resid, params)
    assert len(encoding.tokens) == acts.shape[0]
    for i in range(acts.shape[0]):
        order = np.argsort(-acts[i], kind="stable")[:k]
        want = [(int(f), float(acts[i, f])) for f in order if acts[i, f] > 0]
        got = encoding.layers[layer].top(i)
        assert [f for f, _ in got] == [f for f, _ in want], i
        np.testing.assert_allclose([a for _, a in got], [a for _, a in want], rtol=1e-4)
        assert int(encoding.layers[layer].n_active[i]) == int((acts[i] > 0).sum())


def test_gemma_scope_encodes_through_a_bundle(gemma_scope, gemma2_model, tokenizer) -> None:
    spec = BundleSpec(name="gemma-2-2b-offline", model="in-memory", saes=((3, g2_source()),))
    bundle = Bundle(spec=spec, model=gemma2_model, tokenizer=tokenizer)
    encoding = encode(bundle, TEXT, top_k=4)
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert encoding.token_ids == ids
    with torch.no_grad():
        _, clean = gemma2_model.run_with_cache(torch.tensor([[tokenizer.bos_token_id, *ids]]))
    resid = clean["blocks.3.hook_resid_post"][0, 1:].numpy()  # BOS is not reported
    _assert_encoding_matches(encoding, 3, resid, gemma_scope, k=4)


# ---------------------------------------------------------------- Gemma Scope 2 (Gemma 3 270M)


def test_gemma_scope_2_loads_offline_from_the_hub_cache(gemma_scope_2: dict[str, Any]) -> None:
    from huggingface_hub import constants
    from sae_lens import JumpReLUSAE

    params = gemma_scope_2["params"]
    sae = load_sae(g3_source())
    assert type(sae) is JumpReLUSAE
    assert sae.cfg.metadata.hook_name == "blocks.5.hook_resid_post"
    assert sae.cfg.metadata.model_name == "google/gemma-3-270m"
    assert sae.cfg.metadata.hf_hook_name == "model.layers.5.output"
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (D_IN, D_SAE)
    for name, value in params.items():
        assert torch.equal(getattr(sae, name).detach(), torch.from_numpy(value)), name
    # The only network traffic: the safetensors header, 8 bytes of length then the JSON.
    url = f"{constants.ENDPOINT}/{G3_REPO}/resolve/main/{G3_PATH}/params.safetensors"
    requests = gemma_scope_2["remote"].requests
    assert [u for u, _ in requests] == [url, url]
    assert requests[0][1] == "bytes=0-7" and requests[1][1].startswith("bytes=8-")
    x = np.random.default_rng(2).normal(scale=2.5, size=(40, D_IN)).astype(np.float32)
    want = jumprelu_by_hand(x, params)
    assert 0.1 < (want > 0).mean() < 0.6
    with torch.no_grad():
        got = sae.encode(torch.from_numpy(x))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


def test_gemma_scope_2_config_json_is_optional(hub: Path, gemma_scope_2: dict[str, Any]) -> None:
    """Offline, a missing ``config.json`` is inferred from the folder name, as sae-lens does."""
    from hub_layout import commit_of, repo_cache_dir

    config = repo_cache_dir(hub, G3_REPO) / "snapshots" / commit_of(G3_REPO) / G3_PATH
    assert json.loads((config / "config.json").read_text())["architecture"] == "jump_relu"
    (config / "config.json").unlink()
    sae = load_sae(g3_source())
    assert sae.cfg.metadata.hook_name == "blocks.5.hook_resid_post"
    assert sae.cfg.metadata.hf_hook_name == "model.layers.5.output"


def test_gemma_scope_2_runs_on_a_tiny_gemma_3(gemma_scope_2, gemma3_model, tokenizer) -> None:
    params = gemma_scope_2["params"]
    sae = load_sae(g3_source())
    ids = torch.tensor(
        [[tokenizer.bos_token_id, *tokenizer(TEXT, add_special_tokens=False)["input_ids"]]]
    )
    hook = "blocks.5.hook_resid_post"
    with torch.no_grad():
        _, clean = gemma3_model.run_with_cache(ids, names_filter=hook)
        gemma3_model.add_sae(sae)
        try:
            _, cache = gemma3_model.run_with_cache(ids)
        finally:
            gemma3_model.reset_saes()
    want = jumprelu_by_hand(clean[hook][0].numpy(), params)
    assert (want > 0).any(axis=-1).all()
    got = cache[f"{hook}.hook_sae_acts_post"][0]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)


def test_gemma_scope_2_encodes_through_a_bundle(gemma_scope_2, gemma3_model, tokenizer) -> None:
    spec = BundleSpec(name="gemma-3-270m-offline", model="in-memory", saes=((5, g3_source()),))
    bundle = Bundle(spec=spec, model=gemma3_model, tokenizer=tokenizer)
    encoding = encode(bundle, TEXT, top_k=4)
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        _, clean = gemma3_model.run_with_cache(torch.tensor([[tokenizer.bos_token_id, *ids]]))
    resid = clean["blocks.5.hook_resid_post"][0, 1:].numpy()
    _assert_encoding_matches(encoding, 5, resid, gemma_scope_2["params"], k=4)


# ------------------------------------------------------------------------ what offline cannot do


def _assert_one_line_offline_error(err: pytest.ExceptionInfo[BundleError], what: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"cannot load SAE {what}: ")
    assert "Hugging Face hub" in message and "`--preset default` works offline" in message


def test_a_file_missing_from_the_cache_is_one_clear_error(
    hub: Path, tiny_gemma_scope_release: None
) -> None:
    # The repository is cached (refs/main, a snapshot) but not this layer's params.npz.
    write_hub_file(hub, G2_REPO, "layer_0/width_16k/average_l0_105/params.npz", b"other layer")
    with pytest.raises(BundleError) as err:
        load_sae(g2_source())
    _assert_one_line_offline_error(err, f"{G2_RELEASE}/layer_3/width_16k/canonical")
    assert "local cache" in str(err.value)
    assert isinstance(err.value.__context__, LocalEntryNotFoundError)  # a FileNotFoundError


def test_an_empty_cache_is_one_clear_error(hub: Path) -> None:
    with pytest.raises(BundleError) as err:
        load_sae(g2_source())
    _assert_one_line_offline_error(err, f"{G2_RELEASE}/layer_3/width_16k/canonical")
    assert isinstance(err.value.__context__, LocalEntryNotFoundError)


def test_gemma_scope_2_needs_the_hub_even_when_cached(
    gemma_scope_2: dict[str, Any], monkeypatch: pytest.MonkeyPatch, hub: Path
) -> None:
    """sae-lens reads the safetensors header over HTTP whatever ``HF_HUB_OFFLINE`` says."""
    unreachable = RangeRequestHub(hub, reachable=False).install(monkeypatch)
    with pytest.raises(BundleError) as err:
        load_sae(g3_source())
    _assert_one_line_offline_error(err, f"{G3_RELEASE}/layer_5_width_16k_l0_medium")
    assert "Failed to resolve" in str(err.value)
    assert len(unreachable.requests) == 1


# -------------------------------------------------------------------------------- online twin


@pytest.mark.online
def test_gemma_2_2b_preset_layer_0_sae_from_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real file behind the offline tests above (about 300 MB; needs a hub token)."""
    from huggingface_hub import constants
    from sae_lens import JumpReLUSAE

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    sae = load_sae(preset("gemma-2-2b").source(0))
    assert type(sae) is JumpReLUSAE
    assert sae.cfg.metadata.hook_name == "blocks.0.hook_resid_post"
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (2304, 16384)
    assert tuple(sae.W_enc.shape) == (2304, 16384) and bool((sae.threshold > 0).all())
