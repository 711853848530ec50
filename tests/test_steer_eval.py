"""The steering evaluation's measures: concept read back by the SAE, lift, perplexity, repetition.

The tiny Gemma 3 gets an SAE on layer 2 whose feature 7 both *writes* the embedding of "cat"
(its decoder row, as in test_steer.py) and *reads* "cat" (its encoder is the direction that
separates the residual at "cat" tokens from the others, with a bias that keeps it at 0 elsewhere):
steering with it should make cats, and the SAE should see them.
"""

from __future__ import annotations

import json
import math
import random
import shutil

import pyarrow.parquet as pq
import pytest
import torch
from helpers import WORDS, make_gemma3, tiny_bundle, write_relu_sae

from explorer.encode import text_ids, with_bos
from explorer.hooked import hooked_from_hf
from explorer.store.schema import StoreError
from precompute.steer_eval import (
    EvalConfig,
    Row,
    evaluate,
    evaluate_feature,
    measure,
    perplexity_of,
    recommend,
    repetition_rate,
    steering_table,
)

CAT = 7
_RNG = random.Random(3)
# Probe texts: random word strings from the tiny vocabulary, some with runs of cats (as a steered
# continuation has), plus the test's own texts.
TEXTS = (
    [" ".join(_RNG.choice(WORDS) for _ in range(12)) for _ in range(40)]
    + [
        " ".join(_RNG.choice(["cat", "cat", _RNG.choice(WORDS)]) for _ in range(10))
        for _ in range(20)
    ]
    + ["the dog ran to the house", "the old house and the cat cat cat"]
)


@pytest.fixture(scope="module")
def cat_bundle(tmp_path_factory, tokenizer):
    hf = make_gemma3(len(tokenizer))
    d = hf.config.hidden_size
    g = torch.Generator().manual_seed(5)
    w_enc = torch.randn(d, 16, generator=g) / d**0.5
    w_dec = torch.randn(16, d, generator=g) / d**0.5
    cat_id = tokenizer.convert_tokens_to_ids("cat")
    cat = hf.model.embed_tokens.weight[cat_id].detach()
    w_dec[CAT] = cat / cat.norm()
    # The reading side, fitted on the unsteered model: cat positions vs the rest.
    probe = hooked_from_hf(hf, tokenizer)
    at, rest = [], []
    for text in TEXTS:
        ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
        with torch.no_grad():
            _, cache = probe.run_with_cache(torch.tensor([ids]))
        resid = cache["blocks.2.hook_resid_post"][0]
        for pos, tid in enumerate(ids[1:], 1):
            (at if tid == cat_id else rest).append(resid[pos])
    # A least-squares linear probe (+1 at cats, -1 elsewhere); the bias keeps it at 0 on 90% of
    # the other tokens (a random 4-layer model does not separate them all: a noisy detector).
    x = torch.stack(at + rest).double()
    y = torch.tensor([1.0] * len(at) + [-1.0] * len(rest), dtype=torch.double)
    direction = torch.linalg.lstsq(x, y[:, None]).solution[:, 0].float()
    on = torch.stack(at) @ direction
    off = torch.stack(rest) @ direction
    assert on.median() > off.quantile(0.9)  # most cats are above the bar
    w_enc[:, CAT] = direction
    b_enc = torch.zeros(16)
    b_enc[CAT] = -off.quantile(0.9)
    path = tmp_path_factory.mktemp("cat") / "sae"
    write_relu_sae(path, w_enc, b_enc, "blocks.2.hook_resid_post", w_dec=w_dec)
    return tiny_bundle(hf, tokenizer, {2: path}), cat_id


def test_repetition_rate_counts_repeated_bigrams() -> None:
    assert repetition_rate([1, 2, 1, 2, 1, 2]) == pytest.approx(3 / 5)
    assert repetition_rate([1, 2, 3, 4, 5]) == 0.0
    assert repetition_rate([4, 4, 4, 4]) == pytest.approx(2 / 3)
    assert repetition_rate([1]) == 0.0
    assert repetition_rate([1, 2, 3, 1, 2, 3], n=3) == pytest.approx(1 / 4)


def test_perplexity_of_a_known_distribution() -> None:
    # Position i predicts ids[i + 1]; uniform over 4 tokens everywhere: perplexity 4.
    ids = [0, 1, 2, 3, 0]
    assert perplexity_of(torch.zeros(5, 4), ids, 1) == pytest.approx(4.0)
    # The continuation (ids[2:]) given probabilities 1/2, 1/4, 1/8: exp(mean nll) = 4.
    probs = torch.full((5, 4), 1e-9)
    for pos, (tok, p) in enumerate(zip([2, 3, 0], [0.5, 0.25, 0.125], strict=True), start=1):
        probs[pos, tok] = p
        probs[pos, (tok + 1) % 4] = 1 - p
    assert perplexity_of(probs.log(), ids, 2) == pytest.approx(4.0, rel=1e-6)
    assert math.isnan(perplexity_of(torch.zeros(5, 4), ids, 5))


def test_concept_reads_the_feature_back_on_the_continuation(cat_bundle, tokenizer) -> None:
    bundle, cat_id = cat_bundle
    prompt = with_bos(bundle, text_ids(bundle, "the dog"))
    cats = measure(bundle, prompt, [cat_id] * 4, 2, CAT, 1.0, [cat_id])
    dogs = measure(bundle, prompt, text_ids(bundle, " ran to the house"), 2, CAT, 1.0, [cat_id])
    assert cats.fires >= 0.75 and dogs.fires <= 0.25
    assert cats.concept > 3 * dogs.concept
    assert cats.lift == 0.0  # no steer: no lift
    assert cats.repetition == pytest.approx(2 / 3)


def test_concept_and_lift_rise_with_strength(cat_bundle) -> None:
    bundle, cat_id = cat_bundle
    cfg = EvalConfig(
        multiples=(5.0, 20.0, 60.0), prompts=("the old house and the", "a dog"), seeds=(0,),
        tokens=10, temperature=0.0,
    )  # fmt: skip
    rows = evaluate_feature(bundle, 2, CAT, 1.0, [cat_id], cfg)
    assert [r.method for r in rows] == ["none", "add", "add", "add"]
    assert [r.strength for r in rows] == [0.0, 5.0, 20.0, 60.0]
    concept = [r.concept for r in rows]
    assert concept == sorted(concept) and concept[-1] > concept[0] + 0.5
    assert rows[-1].fires > 0.8 and rows[0].fires < 0.3
    assert rows[-1].lift > rows[1].lift > 0
    # All cats is repetitive: the strongest push is not readable.
    assert rows[-1].repetition > 0.5 and not rows[-1].readable
    # Deterministic: the same sweep gives the same rows.
    again = evaluate_feature(bundle, 2, CAT, 1.0, [cat_id], cfg)
    assert [r.to_dict() for r in again] == [r.to_dict() for r in rows]


def _row(method: str, strength: float, concept: float, ppl: float, rep: float) -> Row:
    return Row(2, CAT, method, strength, strength, concept, 0.0, 0.0, ppl, rep, 2)


def test_recommend_takes_the_strongest_readable_concept() -> None:
    rows = recommend(
        [
            _row("none", 0, 0.01, 10.0, 0.05),
            _row("add", 1, 0.05, 12.0, 0.05),
            _row("add", 2, 0.20, 19.0, 0.15),  # best readable
            _row("add", 4, 0.60, 25.0, 0.10),  # perplexity above 2x the default's
            _row("add", 8, 0.90, 9.0, 0.60),  # repetitive
            _row("clamp", 1, 0.005, 10.0, 0.05),  # readable but below the default's concept
        ]
    )
    assert [r.readable for r in rows[1:]] == [True, True, False, False, True]
    assert [r.strength for r in rows if r.recommended] == [2]
    table = steering_table(rows)
    assert table.num_rows == 6 and table.column("recommended").to_pylist()[2] is True


def test_write_store_adds_the_table_and_changes_nothing_else(app_parts, tmp_path) -> None:
    """steering.parquet is added and listed; the other files keep their bytes and manifest
    entries; the store reads the recommended strength back (and opens without the table)."""
    from explorer.files import file_sha256
    from explorer.store import Store
    from explorer.store.schema import STEERING
    from precompute.store_build.write import write_steering

    _, shared = app_parts
    store_dir = tmp_path / "store"
    shutil.copytree(shared.path, store_dir)
    before = {p: file_sha256(p) for p in store_dir.rglob("*.parquet")}
    old = json.loads((store_dir / "manifest.json").read_text())
    assert Store.open(store_dir).recommended_strength(2, CAT) is None  # no table: no value
    rows = recommend([_row("none", 0, 0.0, 10.0, 0.0), _row("add", 3, 0.4, 11.0, 0.0)])
    entry = write_steering(store_dir, steering_table(rows))
    assert entry["rows"] == 2
    new = json.loads((store_dir / "manifest.json").read_text())
    assert {k: v for k, v in new["files"].items() if k != STEERING} == old["files"]
    assert {k: v for k, v in new.items() if k != "files"} == {
        k: v for k, v in old.items() if k != "files"
    }
    assert {p: file_sha256(p) for p in before} == before
    store = Store.open(store_dir, verify=True)
    assert store.recommended_strength(2, CAT) == 3.0
    assert store.recommended_strength(2, CAT, "clamp") is None
    assert store.recommended_strength(1, CAT) is None
    assert pq.read_table(store_dir / STEERING).num_rows == 2
    # A damaged table is refused like any other listed file.
    (store_dir / STEERING).write_bytes(b"PAR1")
    with pytest.raises(StoreError, match=r"steering\.parquet"):
        Store.open(store_dir)


def test_evaluate_scales_strength_by_the_store_max(app_parts) -> None:
    bundle, store = app_parts
    feature = int(store.features(2)["max_act"].to_numpy().argmax())
    top = float(store.feature(2, feature).max_act)
    cfg = EvalConfig(multiples=(0.5, 2.0), prompts=("the cat",), seeds=(0,), tokens=4)
    rows = evaluate(bundle, store, [(2, feature)], cfg)
    assert [r.strength for r in rows] == [0.0, round(0.5 * top, 2), round(2 * top, 2)]
    assert all(r.n == 1 and r.perplexity > 0 for r in rows)
    with pytest.raises(ValueError, match="feature 2:99999"):
        evaluate(bundle, store, [(2, 99999)], cfg)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--features", "12x"], "a feature is LAYER:ID such as 12:1013, not '12x'"),
        (["--features", "12:1", "--tokens", "0"], "--tokens must be from 1 to 128"),
        (["--features", "12:1", "--strengths", "0"], "--strengths are multiples"),
    ],
)
def test_cli_refuses_bad_arguments_in_one_line(argv, message, capsys) -> None:
    from precompute.__main__ import main

    assert main(["steer-eval", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_the_app_defaults_to_the_recommended_strength(app_parts, tmp_path) -> None:
    from explorer.app import Context
    from explorer.app.steer_table import default_strength, parse_steers
    from explorer.labels import Labels
    from explorer.store import Store
    from precompute.store_build.write import write_steering

    bundle, shared = app_parts
    feature = int(shared.features(2)["max_act"].to_numpy().argmax())
    top = round(float(shared.feature(2, feature).max_act), 2)
    store_dir = tmp_path / "store"
    shutil.copytree(shared.path, store_dir)
    labels = Labels(tmp_path / "labels.sqlite", scope="tiny", widths={1: 48, 2: 48})
    plain = Context(bundle=bundle, store=Store.open(store_dir), labels=labels)
    assert default_strength(plain, 2, feature) == top  # no table: the max activation
    base = Row(2, feature, "none", 0, 0, 0.0, 0.0, 0.0, 10.0, 0.0, 1)
    best = Row(2, feature, "add", 0.5, 1.25, 0.3, 0.5, 0.1, 11.0, 0.0, 1)
    write_steering(store_dir, steering_table(recommend([base, best])))
    ctx = Context(bundle=bundle, store=Store.open(store_dir), labels=labels)
    assert default_strength(ctx, 2, feature) == 1.25
    assert default_strength(ctx, 2, feature, "clamp") == top
    assert parse_steers(ctx, [[2, feature, "", "add"]])[0].strength == 1.25
    assert parse_steers(ctx, [[2, feature, 7, "add"]])[0].strength == 7.0


def test_steering_demos_load_and_fill_the_steering_tab(ctx, tmp_path) -> None:
    from explorer.app import UserError
    from explorer.app.context import load_curated
    from explorer.app.start import demo_rows
    from explorer.app.steering import demo_values

    good = {"prompt": "the cat", "layer": 2, "feature": 5, "strength": 1.5, "method": "add",
            "seed": 3, "label": "cats", "temperature": 0.0, "max_new_tokens": 12}  # fmt: skip
    bad = [
        {**good, "seed": "3"},
        {**good, "layer": True},
        {k: v for k, v in good.items() if k != "prompt"},
    ]
    path = tmp_path / "curated.json"
    path.write_text(
        json.dumps({"preset": "tiny", "texts": [], "features": [], "steering": [good, *bad]})
    )
    content = load_curated("tiny", path)
    assert content["steering"] == [good]
    assert load_curated("default", path)["steering"] == []  # another preset's demos: none
    assert demo_rows(content) == [["cats", "the cat", "2:5", 1.5, "add", 3]]
    ctx.content = content
    prompt, table, temperature, max_new, seed, freq = demo_values(ctx, 0)
    assert (prompt, temperature, max_new, seed, freq) == ("the cat", 0.0, 12, 3, 0.0)
    assert table.values.tolist()[0][:4] == [2, 5, 1.5, "add"]
    with pytest.raises(UserError, match="demo must be"):
        demo_values(ctx, 1)
