"""SAE training on the tiny model: it learns, saves in sae-lens's format, reloads, resumes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from helpers import WORDS

from explorer.hooked import hooked_from_hf
from precompute.train import TrainConfig, evaluate, finished_metrics, load_saved, train_saes
from precompute.train import trainer as trainer_module


def _corpus(path: Path, n_docs: int = 120) -> Path:
    rng = random.Random(0)
    with path.open("w") as f:
        for i in range(n_docs):
            text = " ".join(rng.choice(WORDS[:40]) for _ in range(rng.randint(30, 60)))
            split = "heldout" if i % 10 == 0 else "train"
            f.write(json.dumps({"id": f"d{i}", "text": text, "split": split}) + "\n")
    return path


@pytest.fixture
def setup(tmp_path: Path, gemma3_hf, tokenizer):
    cfg = TrainConfig(
        preset="default",  # names the hooks (blocks.N.hook_resid_post); the model is the tiny one
        layers=(1, 2),
        d_sae=64,
        k=4,
        training_tokens=20_000,
        batch_size=200,
        lr=3e-3,
        context_size=32,
        model_batch=8,
        buffer_batches=4,
        corpus=str(_corpus(tmp_path / "corpus.jsonl")),
        eval_tokens=400,
        device="cpu",
        out_dir=str(tmp_path / "saes"),
    )
    return cfg, hooked_from_hf(gemma3_hf, tokenizer), tokenizer


def test_training_beats_the_untrained_sae_and_reloads_identically(
    setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

    cfg, model, tok = setup
    # The trained SAEs as they are handed to save_compact: their inference weights (sae-lens
    # folds the decoder norms into the encoder and turns the BatchTopK threshold into a JumpReLU
    # one), computed here independently of what gets written.
    trained: dict[str, dict[str, torch.Tensor]] = {}
    real_save = trainer_module.save_compact

    def recording_save(sae, path: Path) -> None:
        state = {k: v.detach().clone() for k, v in sae.state_dict().items()}
        sae.process_state_dict_for_saving_inference(state)
        trained[path.name] = {k: v.detach().cpu().float() for k, v in state.items()}
        real_save(sae, path)

    monkeypatch.setattr(trainer_module, "save_compact", recording_save)
    metrics = train_saes(cfg, model, tok, {"model": "tiny"})
    assert sorted(trained) == ["layer_1", "layer_2"]
    assert sorted(metrics) == [1, 2]
    for layer in (1, 2):
        path = Path(cfg.out_dir) / f"layer_{layer}"
        sae = load_saved(path)
        assert sae.cfg.metadata.hook_name == f"blocks.{layer}.hook_resid_post"
        assert type(sae).__name__ == "JumpReLUSAE"
        untrained = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4))
        baseline = evaluate(cfg, model, tok, layer, untrained, "cpu")["explained_variance"]
        assert metrics[layer]["explained_variance"] > baseline + 0.2
        assert 0 < metrics[layer]["l0"] < 64
        # the saved SAE is the trained one: matrices rounded to bfloat16 on purpose, vectors exact
        saved = {k: v.float() for k, v in sae.state_dict().items()}
        expected = trained[f"layer_{layer}"]
        assert sorted(saved) == sorted(expected)
        assert sorted(saved) == ["W_dec", "W_enc", "b_dec", "b_enc", "threshold"]
        for name, want in expected.items():
            if want.ndim == 2:
                want = want.to(torch.bfloat16).float()
                assert not torch.equal(want, expected[name])  # the rounding did something
            torch.testing.assert_close(saved[name], want, rtol=0, atol=0, msg=name)
        # reload twice: identical outputs
        x = torch.randn(10, 32) * 3
        again = load_saved(path)
        torch.testing.assert_close(sae.encode(x), again.encode(x), rtol=0, atol=0)
        assert finished_metrics(path) == metrics[layer]
    manifest = json.loads((Path(cfg.out_dir) / "manifest.json").read_text())
    assert [m["layer"] for m in manifest["layers"]] == [1, 2]
    assert manifest["train_config"]["k"] == 4 and len(manifest["corpus_sha256"]) == 64


def test_resume_trains_only_the_missing_layers(setup) -> None:
    import shutil

    cfg, model, tok = setup
    first = train_saes(cfg, model, tok)
    layer1 = Path(cfg.out_dir) / "layer_1" / "sae_weights.safetensors"
    stamp = layer1.stat().st_mtime_ns
    shutil.rmtree(Path(cfg.out_dir) / "layer_2")
    second = train_saes(cfg, model, tok)
    assert layer1.stat().st_mtime_ns == stamp  # layer 1 was not retrained
    assert second[1] == first[1] and (Path(cfg.out_dir) / "layer_2" / "cfg.json").is_file()


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("layers", (), "layers"), ("k", 0, "k must"), ("k", 64, "smaller"), ("lr", -1.0, "lr")],
)
def test_config_validation(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value, "d_sae": 64})  # type: ignore[arg-type]


def test_evaluate_counts_dead_and_dense_features(setup) -> None:
    """Dead: never fired on the held-out tokens; dense: fired on more than 1% of them."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    cfg, model, tok = setup
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=32, d_sae=4))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[:, 2] = torch.randn(32)  # fires on about half the tokens
        sae.b_enc.copy_(torch.tensor([5.0, -5.0, 0.0, -5.0]))  # 0: always, 1 and 3: never
        sae.threshold.zero_()
    m = evaluate(cfg, model, tok, 1, sae, "cpu")
    assert (m["dead_fraction"], m["dense_fraction"]) == (0.5, 0.5)
    assert m["l0"] > 1.0  # feature 0 on every token, feature 2 on some


def test_held_out_windows_mix_the_sources(tmp_path: Path, tokenizer) -> None:
    """A corpus file is ordered by source: the held-out evaluation reads its windows in the
    representative order, so a few thousand eval tokens are not all one source."""
    from precompute.train.activations import window_ids

    path = tmp_path / "ordered.jsonl"
    with path.open("w") as f:
        for i in range(40):
            word = WORDS[0] if i < 20 else WORDS[1]  # source A, then source B
            text = " ".join([word] * 40)
            f.write(json.dumps({"id": f"d{i}", "text": text, "split": "heldout"}) + "\n")
    cfg = TrainConfig(layers=(1,), d_sae=64, k=4, context_size=32, corpus=str(path))
    ids = {w: tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in WORDS[:2]}

    def sources(mixed: bool) -> set[str]:
        windows = window_ids(cfg, tokenizer, "heldout", mixed)
        first = [w for _, w in zip(range(6), windows, strict=False)]
        return {w for w, t in ids.items() if any(t in window for window in first)}

    assert sources(mixed=False) == {WORDS[0]}  # file order: one source
    assert sources(mixed=True) == set(WORDS[:2])


def test_metrics_are_reported_as_one_table_and_one_log_line() -> None:
    from precompute.train.evaluate import metrics_line, metrics_table

    m = {"explained_variance": 0.951, "l0": 49.6, "dead_fraction": 0.003, "dense_fraction": 0.078,
         "ce_clean": 3.582, "ce_spliced": 3.77, "ce_delta": 0.188}  # fmt: skip
    older = {k: v for k, v in m.items() if k != "dense_fraction"}  # metrics written before it
    lines = metrics_table({15: older, 9: m}).splitlines()
    assert lines[0].split() == ["layer", "EV", "L0", "dead", "dense", "CE", "clean", "spliced",
                                "delta"]  # fmt: skip
    assert lines[1].split() == ["9", "0.951", "49.6", "0.003", "0.078", "3.582", "3.770", "+0.188"]
    assert lines[2].split()[0] == "15" and lines[2].split()[4] == "nan"
    assert len({len(line) for line in lines}) == 1  # columns line up
    assert metrics_line(m) == (
        "EV 0.951  L0 49.6  dead 0.003  dense 0.078  CE clean 3.582  spliced 3.770  delta +0.188"
    )
