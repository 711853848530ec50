"""The firing-rate cap (precompute/train/balanced.py), the activation cache and the recipes:
a planted dense direction gets capped, the saved JumpReLU SAE fires exactly where the training
SAE selected, a saved SAE is a fine-tuning start that changes nothing, the cache resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.config import SAETrainerConfig
from sae_lens.training.multi_sae_trainer import MultiSAETrainer

from precompute.train import TrainConfig, load_saved
from precompute.train.balanced import BalancedBatchTopKTrainingSAE
from precompute.train.recipes import RECIPES, stage_configs
from precompute.train.trainer import save_compact

D_IN, D_SAE, K = 16, 48, 3
SCALE = 0.37  # the activation scaler's factor: not 1, so the units must be right


def _data(n: int, seed: int) -> torch.Tensor:
    """Sparse sums of 40 random unit directions, plus one 'dense' direction present on half of
    the tokens with a small, varying weight: what a plain BatchTopK SAE gives a dense feature."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(
        torch.randn(41, D_IN, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    codes = (torch.rand(n, 40, generator=g) < 0.06).float() * (
        1 + 4 * torch.rand(n, 40, generator=g)
    )
    dense = (torch.rand(n, 1, generator=g) < 0.5).float() * (
        0.5 + 3 * torch.rand(n, 1, generator=g)
    )
    return 20 + torch.cat([codes, dense], 1) @ dirs  # an offset, as Gemma's mean residual


def _train(sae: BatchTopKTrainingSAE, x: torch.Tensor, steps: int = 400, bs: int = 256) -> None:
    def provider():
        g = torch.Generator().manual_seed(0)
        while True:
            yield {"h": x[torch.randint(len(x), (bs,), generator=g)]}

    cfg = SAETrainerConfig(
        total_training_samples=steps * bs,
        train_batch_size_samples=bs,
        lr=3e-3,
        lr_end=3e-4,
        lr_decay_steps=steps // 5,
        device="cpu",
        dead_feature_window=100,
        feature_sampling_window=200,
    )
    trainer = MultiSAETrainer(
        cfg=cfg, saes={"s": sae}, hook_names={"s": "h"}, data_provider=provider()
    )
    trainer.trainers["s"].activation_scaler.scaling_factor = SCALE
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0) * SCALE)
    trainer.fit()


def _cfg() -> BatchTopKTrainingSAEConfig:
    return BatchTopKTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, k=K, device="cpu", normalize_activations="expected_average_only_in"
    )


def _densities(path: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (load_saved(path).encode(x) > 0).float().mean(0)


def test_the_cap_bounds_every_features_firing_rate_where_plain_batchtopk_does_not(
    tmp_path: Path,
) -> None:
    x, held = _data(20_000, 0), _data(5_000, 1)
    torch.manual_seed(0)
    plain = BatchTopKTrainingSAE(_cfg())
    _train(plain, x)
    save_compact(plain, tmp_path / "plain")
    torch.manual_seed(0)
    capped = BalancedBatchTopKTrainingSAE(_cfg(), max_density=0.12, rate=0.05)
    _train(capped, x)
    save_compact(capped, tmp_path / "capped")
    plain_d, capped_d = _densities(tmp_path / "plain", held), _densities(tmp_path / "capped", held)
    assert float(plain_d.max()) > 0.17  # without the cap, some feature fires on the dense direction
    assert float(capped_d.max()) < 0.14
    assert bool((capped.select_bias < 0).any())  # the cap did the work, through the bias
    # the saved thresholds are per feature now; the features it left alone keep the global one
    threshold = load_saved(tmp_path / "capped").threshold.detach()
    assert float(threshold.max()) > float(threshold.min()) * 1.05


def test_the_saved_jumprelu_fires_exactly_where_training_selected(tmp_path: Path) -> None:
    x = _data(6_000, 0)
    torch.manual_seed(0)
    sae = BalancedBatchTopKTrainingSAE(_cfg(), max_density=0.1, rate=0.05)
    _train(sae, x, steps=150)
    # what training selects: score > the global threshold (the trainer has folded SCALE into
    # the weights, the threshold and the bias already: this reads raw inputs, as inference does)
    probe = _data(2_000, 2)
    with torch.no_grad():
        _, pre = sae.encode_with_hidden_pre(probe)
        selected = (pre + sae.select_bias) > sae.topk_threshold
        want = torch.where(selected, pre, torch.zeros_like(pre))
    save_compact(sae, tmp_path / "s")
    saved = load_saved(tmp_path / "s")
    with torch.no_grad():
        got = saved.encode(probe)
    fired_want, fired_got = want > 0, got > 0
    # bfloat16 matrices: a handful of activations right at a threshold may flip
    assert (fired_want != fired_got).float().mean() < 2e-3
    assert float(fired_got.float().sum()) > 0


def test_a_saved_sae_is_a_fine_tuning_start_that_changes_nothing(tmp_path: Path) -> None:
    x = _data(6_000, 0)
    torch.manual_seed(0)
    first = BalancedBatchTopKTrainingSAE(_cfg(), max_density=0.1, rate=0.05)
    _train(first, x, steps=150)
    save_compact(first, tmp_path / "a")
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "a" / "sae_weights.safetensors"))
    second = BalancedBatchTopKTrainingSAE(_cfg(), max_density=0.1)
    second.load_inference_weights(weights, scale=2.5)
    second.fold_activation_norm_scaling_factor(2.5)  # what the trainer does after zero steps
    save_compact(second, tmp_path / "b")
    a, b = load_saved(tmp_path / "a"), load_saved(tmp_path / "b")
    probe = _data(1_000, 3)
    with torch.no_grad():
        fa, fb = a.encode(probe), b.encode(probe)
    # the round trip through the trainer's units re-rounds the bfloat16 matrices: an activation
    # right at its threshold may flip, nothing else moves
    same = (fa > 0) == (fb > 0)
    assert float(same.float().mean()) > 0.999 and float((fa > 0).float().sum()) > 0
    torch.testing.assert_close(fb[same], fa[same], rtol=1e-2, atol=1e-2)


def test_a_floor_revives_the_features_a_lower_k_starves(tmp_path: Path) -> None:
    """From a trained SAE, a fine-tune at a lower k stops some features firing at all; a floor
    under the firing rate (the same bias, raised) keeps them alive, and the cap still holds."""
    x, held = _data(20_000, 0), _data(5_000, 1)
    torch.manual_seed(0)
    first = BalancedBatchTopKTrainingSAE(_cfg(), max_density=0.12, rate=0.05)
    _train(first, x)
    save_compact(first, tmp_path / "first")
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "first" / "sae_weights.safetensors"))
    low_k = BatchTopKTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, k=1, device="cpu", normalize_activations="expected_average_only_in"
    )
    dead = {}
    for name, floor in (("no-floor", None), ("floor", 0.004)):
        torch.manual_seed(0)
        sae = BalancedBatchTopKTrainingSAE(low_k, max_density=0.12, rate=0.05, min_density=floor)
        sae.load_inference_weights(weights, scale=SCALE)
        _train(sae, x, steps=300)
        save_compact(sae, tmp_path / name)
        d = _densities(tmp_path / name, held)
        dead[name] = int((d == 0).sum())
        assert float(d.max()) < 0.14, name
    assert dead["no-floor"] >= 3, dead
    assert dead["floor"] == 0, dead


def test_cap_validation() -> None:
    with pytest.raises(ValueError, match="max_density"):
        BalancedBatchTopKTrainingSAE(_cfg(), max_density=1.5)
    with pytest.raises(ValueError, match="max_density"):
        TrainConfig(max_density=0.0)
    with pytest.raises(ValueError, match="init"):
        TrainConfig(init="some/saes")
    with pytest.raises(ValueError, match="min_density"):
        BalancedBatchTopKTrainingSAE(_cfg(), max_density=0.01, min_density=0.02)
    with pytest.raises(ValueError, match="min_density"):
        TrainConfig(min_density=0.001)  # no cap


def test_the_default_recipe_chains_its_stages(tmp_path: Path) -> None:
    base = TrainConfig(out_dir=str(tmp_path / "out"), activation_cache=str(tmp_path / "acts"))
    first, last = stage_configs("default", base, tmp_path / "work")
    assert len(RECIPES["default"]) == 2
    assert first.out_dir == str(tmp_path / "work" / "batchtopk") and first.init is None
    assert first.max_density is None and first.min_density is None
    assert first.activation_cache is None and first.k == 64
    assert last.out_dir == str(tmp_path / "out") and last.init == first.out_dir
    assert (
        last.max_density == 0.007
        and last.free_features == 200
        and last.min_density == 0.0001
        and last.k == 48
        and last.activation_cache == base.activation_cache
    )
    with pytest.raises(ValueError, match="unknown recipe"):
        stage_configs("nope", base, tmp_path)


def test_the_activation_cache_resumes_to_the_same_bytes_and_keeps_big_values(
    tmp_path: Path, gemma3_hf, tokenizer
) -> None:
    from dataclasses import replace

    from test_train import _corpus

    from explorer.hooked import hooked_from_hf
    from precompute.train import cache
    from precompute.train.activations import ActivationStream, window_ids

    cfg = TrainConfig(
        layers=(1, 2),
        d_sae=64,
        k=4,
        context_size=32,
        model_batch=4,
        corpus=str(_corpus(tmp_path / "c.jsonl")),
    )
    model = hooked_from_hf(gemma3_hf, tokenizer)
    stream = ActivationStream(
        model=model,
        hooks={n: cfg.hook_name(n) for n in cfg.layers},
        windows=lambda: window_ids(cfg, tokenizer, "train"),
        pad_id=tokenizer.pad_token_id or 0,
        special_ids=set(tokenizer.all_special_ids),
        model_batch=4,
    )
    key = {"corpus": "test"}
    whole = cache.fill(tmp_path / "whole", stream, 600, 2, key)
    part = cache.fill(tmp_path / "part", stream, 200, 2, key)  # stopped early, as if killed
    assert not part.complete and 200 <= part.tokens < whole.tokens
    done = cache.fill(tmp_path / "part", stream, 600, 2, key)
    assert done.tokens == whole.tokens and done.windows == whole.windows
    for n in (1, 2):
        a = (tmp_path / "whole" / f"layer_{n}.bf16").read_bytes()
        assert a == (tmp_path / "part" / f"layer_{n}.bf16").read_bytes()
        # what the stream gives, rounded to bfloat16
        first = stream.forward(list(window_ids(cfg, tokenizer, "train"))[:1])[n]
        got = cache.rows(cache.open_layer(tmp_path / "whole", n, whole)[: len(first)])
        torch.testing.assert_close(got, first.to(torch.bfloat16).float(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="another source"):
        cache.fill(tmp_path / "whole", stream, 600, 3, key)
    # a finished cache serves a stream of fewer layers; an unfinished one does not
    one = replace(stream, hooks={2: stream.hooks[2]})
    assert cache.fill(tmp_path / "whole", one, 600, 2, key) == whole
    (tmp_path / "part2").mkdir()
    cache.fill(tmp_path / "part2", stream, 100, 2, key)
    with pytest.raises(ValueError, match="another source"):
        cache.fill(tmp_path / "part2", one, 600, 2, key)
    # training reads a cache only if it was made from its own source, finished or not
    from precompute.train.trainer import _training_batches

    other = replace(cfg, activation_cache=str(tmp_path / "whole"), training_tokens=600)
    with pytest.raises(ValueError, match="another source"):
        _training_batches(other, stream, tokenizer, "cpu")
    own = replace(other, activation_cache=str(tmp_path / "own"), batch_size=50)
    batch = next(_training_batches(own, stream, tokenizer, "cpu"))
    assert sorted(batch) == [1, 2] and batch[1].shape == (50, 32)
    made = cache.read_info(tmp_path / "own")
    assert made is not None and made.key["corpus"] == cfg.corpus
    # Gemma's residuals pass float16's 65,504; bfloat16 keeps them
    import numpy as np

    big = torch.tensor([[70_000.0, -1e5, 1.5]]).to(torch.bfloat16)
    assert torch.equal(cache.rows(big.view(torch.uint16).numpy().astype(np.uint16)), big.float())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--min-density", "0.001"], "min_density needs max_density"),
        (["--max-density", "0.01", "--min-density", "0.05"], "between 0 and it"),
        (["--max-density", "0.01", "--balance-rate", "0"], "balance_rate must be a positive"),
    ],
)
def test_train_saes_refuses_a_bad_cap_in_one_line(argv, message, capsys, tmp_path) -> None:
    from precompute.__main__ import main

    assert main(["train-saes", "--out", str(tmp_path / "saes"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "saes").exists()
