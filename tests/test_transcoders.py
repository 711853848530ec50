"""Transcoder training on the tiny model: the hooks reproduce the MLP, training learns, the saved
files are sae-lens's transcoder class, the units survive saving, a killed layer resumes exactly,
and the replacement model's metrics come from real forward passes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from test_train import _corpus

from explorer.hooked import hooked_from_hf
from explorer.store.saes import SaeManifest
from precompute.train import transcoders as tc_module
from precompute.train.transcoder_run import replacement_metrics, train_transcoders
from precompute.train.transcoders import (
    Stopped,
    TranscoderConfig,
    hooks_of,
    load_transcoder,
    mlp_of_input,
    train_layer,
)


@pytest.mark.parametrize("which", ["gemma3_hf", "gemma2_hf"])
def test_the_two_hooks_reproduce_each_mlp(which: str, request, tokenizer) -> None:
    model = hooked_from_hf(request.getfixturevalue(which), tokenizer)
    ids = torch.randint(1, model.cfg.d_vocab, (2, 12))
    with torch.no_grad():  # random norm weights (a fresh model has ones, which hide them)
        for block in model.blocks:
            block.ln2.w.uniform_(0.5, 2.0)
    names = list(hooks_of(tuple(range(model.cfg.n_layers))).values())
    with torch.inference_mode():
        _, cache = model.run_with_cache(ids, names_filter=names)
        for n in range(model.cfg.n_layers):
            x = cache[f"blocks.{n}.ln2.hook_normalized"]
            y = cache[f"blocks.{n}.hook_mlp_out"]
            torch.testing.assert_close(mlp_of_input(model, n, x), y, rtol=1e-5, atol=1e-5)
            # the norm's weight is part of the function: without it the MLP is another one
            assert not torch.allclose(model.blocks[n].ln2_post(model.blocks[n].mlp(x)), y)


@pytest.fixture
def setup(tmp_path: Path, gemma3_hf, tokenizer):
    cfg = TranscoderConfig(
        layers=(1, 2),
        d_sae=64,
        k=4,
        training_tokens=8_000,
        epochs=8,
        batch_size=200,
        lr=1e-2,
        context_size=32,
        model_batch=8,
        corpus=str(_corpus(tmp_path / "corpus.jsonl")),
        eval_tokens=800,
        ce_tokens=300,
        device="cpu",
        out_dir=str(tmp_path / "tc"),
        work_dir=str(tmp_path / "work"),
        max_density=0.2,
        min_density=0.001,
        free_features=4,
        checkpoint_every=10,
    )
    return cfg, hooked_from_hf(gemma3_hf, tokenizer), tokenizer


def test_training_learns_saves_sae_lens_transcoders_and_writes_the_manifest(setup) -> None:
    cfg, model, tok = setup
    results = train_transcoders(cfg, model, tok, {"model": "tiny"})
    assert sorted(results["layers"]) == [1, 2]
    manifest = SaeManifest.read(Path(cfg.out_dir))
    assert [x.layer for x in manifest.layers] == [1, 2]
    assert "transcoder" in manifest.architecture
    assert manifest.train_config["replacement_model"] == results["replacement"]
    for layer in (1, 2):
        tc = load_transcoder(Path(cfg.out_dir) / f"layer_{layer}")
        assert type(tc).__name__ == "JumpReLUSkipTranscoder"
        assert tc.cfg.metadata.hook_name == f"blocks.{layer}.ln2.hook_normalized"
        assert tc.cfg.metadata.hook_name_out == f"blocks.{layer}.hook_mlp_out"
        # decoder rows of unit norm: an activation is what the feature writes, in output units
        torch.testing.assert_close(tc.W_dec.norm(dim=-1), torch.ones(cfg.d_sae), atol=1e-2, rtol=0)
        m = results["layers"][layer]
        assert m["explained_variance"] > 0.5, m
        assert 0 < m["l0"] < cfg.d_sae
        assert json.loads((Path(cfg.out_dir) / f"layer_{layer}" / "metrics.json").read_text())
    # an untrained transcoder explains nothing: the metric can fail
    fresh = load_transcoder(Path(cfg.out_dir) / "layer_1")
    with torch.no_grad():
        fresh.W_enc.normal_()
        fresh.W_dec.normal_()
        fresh.W_skip.zero_()
    from precompute.train.cache import read_info
    from precompute.train.transcoder_run import layer_metrics

    info = read_info(Path(cfg.work_dir) / "eval")
    assert info is not None
    assert layer_metrics(cfg, 1, fresh, info)["explained_variance"] < 0.2
    r = results["replacement"]
    assert r["ce_tokens"] > 0 and 0 <= r["top1_agreement"] <= 1
    assert r["ce_delta"] == pytest.approx(r["ce_replaced"] - r["ce_clean"], abs=2e-4)
    # a second run finds every layer finished and trains nothing
    again = train_transcoders(cfg, model, tok, {"model": "tiny"})
    assert again["layers"] == results["layers"]


def test_replacement_with_perfect_transcoders_changes_nothing(setup) -> None:
    """A 'transcoder' that is the MLP itself gives the clean model's loss and full agreement;
    a broken one does not (the hooks really replace the MLP)."""
    cfg, model, tok = setup

    class Exact(torch.nn.Module):
        def __init__(self, layer: int, scale: float = 1.0) -> None:
            super().__init__()
            self.layer, self.scale = layer, scale

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return mlp_of_input(model, self.layer, x) * self.scale

    layers = range(model.cfg.n_layers)
    exact = replacement_metrics(cfg, model, tok, {n: Exact(n) for n in layers}, "cpu")
    assert exact["ce_delta"] == pytest.approx(0, abs=1e-4)
    assert exact["top1_agreement"] == 1.0
    broken = replacement_metrics(cfg, model, tok, {n: Exact(n, 100.0) for n in layers}, "cpu")
    # (the tiny random model's logits are nearly flat: a small loss change, many flips)
    assert broken["ce_delta"] > 0.005
    assert broken["top1_agreement"] < 0.8


def test_saved_units_match_the_trained_model_and_a_killed_layer_resumes_exactly(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    n, d = 2_000, 16
    x = torch.randn(n, d)
    x = x / x.norm(dim=-1, keepdim=True) * d**0.5
    y = (torch.relu(x @ torch.randn(d, 40)) @ torch.randn(40, d) * 7.0).to(torch.bfloat16)
    x = x.to(torch.bfloat16)
    cfg = TranscoderConfig(
        layers=(0,),
        d_sae=32,
        k=4,
        training_tokens=n,
        epochs=8,
        batch_size=250,
        lr=1e-2,
        max_density=0.3,
        min_density=0.001,
        free_features=2,
        checkpoint_every=5,
    )
    whole = train_layer(cfg, x, y, 0, tmp_path / "a.pt")
    with pytest.raises(Stopped):
        train_layer(cfg, x, y, 0, tmp_path / "b.pt", should_stop=lambda step: step == 10)
    resumed = train_layer(cfg, x, y, 0, tmp_path / "b.pt")
    assert sorted(whole) == ["W_dec", "W_enc", "W_skip", "b_dec", "b_enc", "threshold"]
    for k in whole:
        torch.testing.assert_close(resumed[k], whole[k], rtol=0, atol=0)
    # the saved transcoder computes, in the model's units, what training optimised
    tc_module.save_transcoder(whole, tmp_path / "layer_0", 0, "synthetic", cfg)
    tc = load_transcoder(tmp_path / "layer_0")
    y_hat = tc(x.float())
    ev = 1 - float((y_hat - y.float()).pow(2).sum() / (y.float() - y.float().mean(0)).pow(2).sum())
    assert ev > 0.5  # in the wrong units (a scale off) it is far below 0
    # and the weights kept in bf16 on disk are the trained ones, rounded
    torch.testing.assert_close(tc.W_enc, whole["W_enc"], rtol=1e-2, atol=1e-3)
    assert dataclasses.replace(cfg, epochs=1).steps == n // 250
    assert cfg.steps == 8 * (n // 250)


def test_sparse_steps_equal_dense_autograd() -> None:
    """The sparse encode/decode give the dense products' values and gradients, and the
    candidate top-k the full one."""
    from precompute.train.sparse import SparseDecode, SparseEncode, batch_topk

    torch.manual_seed(3)
    b, d, w = 7, 5, 9
    x = torch.randn(b, d)
    w_enc = torch.randn(d, w, requires_grad=True)
    b_enc = torch.randn(w, requires_grad=True)
    w_dec = torch.randn(w, d, requires_grad=True)
    pre = x @ w_enc + b_enc
    mask = torch.rand(b, w) < 0.4
    row, col = mask.nonzero().T
    g = torch.randn(b, d)
    ((pre * mask) @ w_dec * g).sum().backward()
    dense = [t.grad.clone() for t in (w_enc, b_enc, w_dec)]  # type: ignore[union-attr]
    for t in (w_enc, b_enc, w_dec):
        t.grad = None
    vals = SparseEncode.apply(x, w_enc, b_enc, row, col, pre.detach()[row, col])
    out = SparseDecode.apply(vals, w_dec, row, col, b)
    torch.testing.assert_close(out, ((pre * mask) @ w_dec).detach())
    (out * g).sum().backward()
    for want, t in zip(dense, (w_enc, b_enc, w_dec), strict=True):
        torch.testing.assert_close(t.grad, want)
    scores = torch.randn(1000)
    full = scores.topk(50)
    fast = batch_topk(scores, 50, theta=float(full.values[-1]))  # candidates above half of it
    assert torch.equal(fast.indices.sort().values, full.indices.sort().values)


def test_dead_features_are_resampled_where_the_error_is() -> None:
    """A feature that never fires gets an encoder that fires on a high-error row and a decoder
    along that row's error; live features and their optimizer state are untouched."""
    from precompute.train.transcoders import _init_state, resample_dead

    torch.manual_seed(0)
    cfg = TranscoderConfig(layers=(0,), d_sae=16, k=2, free_features=0, checkpoint_every=5)
    x = torch.randn(64, 8)
    y = torch.randn(64, 8)
    state = _init_state(cfg, x.bfloat16(), y.bfloat16(), 0, "cpu")
    state.theta = 0.5
    state.step = 100
    p = state.params
    (p["W_enc"].sum() + p["W_dec"].sum() + p["b_enc"].sum()).backward()
    state.opt.step()  # moments exist
    state.density_ema.fill_(0.01)
    dead = torch.tensor([3, 7])
    state.density_ema[dead] = 0
    live_enc = p["W_enc"][:, 0].detach().clone()
    err = torch.zeros(64, 8)
    err[5] = torch.arange(8.0)  # all the error on one row: it is drawn
    assert resample_dead(state, cfg, 0, x, err) == 2
    with torch.no_grad():
        pre = x[5] @ p["W_enc"][:, dead] + p["b_enc"][dead]
    torch.testing.assert_close(pre, torch.full((2,), 0.75))  # 1.5 x the threshold
    torch.testing.assert_close(p["W_dec"][dead], (err[5] / err[5].norm()).expand(2, 8))
    assert torch.equal(p["W_enc"][:, 0], live_enc)
    moments = state.opt.state[p["W_enc"]]
    assert moments["exp_avg"][:, dead].abs().sum() == 0 and moments["exp_avg"][:, 0].abs().sum() > 0
    assert bool((state.density_ema[dead] == cfg.min_density).all())
    assert resample_dead(state, cfg, 0, x, err) == 0  # not dead any more


def test_the_auxiliary_loss_trains_only_dead_features_toward_the_error() -> None:
    """Gao et al.'s auxiliary loss: the ``aux_k`` dead features with the largest pre-activations
    reconstruct the error; its gradient reaches those features alone, equals dense autograd of
    the same loss, and it is zero when no feature is dead."""
    from precompute.train.transcoders import _aux_loss, _init_state

    torch.manual_seed(0)
    cfg = TranscoderConfig(layers=(0,), d_sae=16, k=2, aux_k=2, skip=False, free_features=0)
    x, y = torch.randn(32, 8), torch.randn(32, 8)
    state = _init_state(cfg, x.bfloat16(), y.bfloat16(), 0, "cpu")
    p = state.params
    state.density_ema.fill_(0.01)
    dead = torch.tensor([2, 5, 11])
    state.density_ema[dead] = 0
    err = torch.randn(32, 8)
    with torch.no_grad():
        pre = x @ p["W_enc"] + p["b_enc"]
    loss = _aux_loss(cfg, state, x, err, pre.flatten())
    loss.backward()
    grad = p["W_enc"].grad
    assert grad is not None
    alive = torch.ones(16, dtype=torch.bool)
    alive[dead] = False
    assert grad[:, alive].abs().sum() == 0 and grad[:, dead].abs().sum() > 0
    # the same loss by dense autograd: each row's two largest dead pre-activations, linear
    w_enc = p["W_enc"].detach().clone().requires_grad_(True)
    dense = x @ w_enc + p["b_enc"].detach()
    picked = dense[:, dead].topk(2, dim=-1)
    codes = torch.zeros(32, 16).scatter(1, dead[picked.indices], picked.values)
    want = ((codes @ p["W_dec"].detach()) - err).pow(2).sum(-1).mean() / 8
    want.backward()
    torch.testing.assert_close(loss.detach(), want.detach())
    torch.testing.assert_close(grad, w_enc.grad)
    state.density_ema.fill_(0.01)
    assert float(_aux_loss(cfg, state, x, err, pre.flatten())) == 0.0
