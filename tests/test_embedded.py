"""Smoke tests of the real embedded Gemma 3 270M and the shipped default SAEs.

One fresh conversion into a temporary cache (the direct one, about 15 s on 2 cores), then: it is
reused, its residuals equal transformers' hidden states, and the default preset encodes text.
Deselect with ``-m "not slow"`` for a quick run.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from explorer import gguf_model
from explorer.bundle import build_bundle, load_hf_model, preset
from explorer.encode import encode
from explorer.hooked import hooked_from_hf
from explorer.paths import ASSETS_SAES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(embedded_cache: Path) -> Path:
    return embedded_cache


@pytest.fixture(scope="module")
def bundle(cache: Path):
    return build_bundle(preset("default"), device="cpu", dtype="float32", cache_dir=cache)


def test_conversion_is_cached_and_reused(cache: Path, monkeypatch) -> None:
    hf_dir = cache / gguf_model.HF_DIR_NAME
    marker = json.loads((hf_dir / gguf_model.MARKER).read_text())
    assert marker["gguf_sha256"] == gguf_model.gguf_sha256()
    assert marker["converter"] == "direct"  # not transformers' fallback
    assert (hf_dir / "model.safetensors").stat().st_size > 500_000_000  # dequantized, float32
    assert not list(cache.glob(".convert-*"))  # no leftovers
    assert not list(cache.rglob("*.gguf"))  # the assembled GGUF is not kept

    def boom(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_model, "_convert", boom)
    assert gguf_model.embedded_model_dir(cache) == hf_dir


def test_a_partial_conversion_is_not_taken_for_a_cache(tmp_path: Path) -> None:
    hf_dir = tmp_path / gguf_model.HF_DIR_NAME
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{}")  # no marker: an interrupted conversion
    assert not gguf_model._is_converted(hf_dir)


def test_residuals_equal_transformers_hidden_states(cache: Path) -> None:
    hf, tok = load_hf_model("embedded", cache)
    model = hooked_from_hf(hf, tok)
    ids = tok("The cat sat on the mat. It was a sunny day in May.", return_tensors="pt").input_ids
    assert ids[0, 0] == tok.bos_token_id
    with torch.no_grad():
        hidden = hf(ids, output_hidden_states=True).hidden_states
        _, cache_ = model.run_with_cache(ids, names_filter=lambda n: n.endswith("resid_post"))
    for layer in range(hf.config.num_hidden_layers - 1):  # the last state is after the final norm
        got, want = cache_[f"blocks.{layer}.hook_resid_post"], hidden[layer + 1]
        assert float((got - want).norm() / want.norm()) < 1e-5, layer


def test_transcoder_hooks_reproduce_every_mlp_of_the_real_model(cache: Path) -> None:
    """The two hooks the transcoders read and write reproduce each of the 18 MLPs: what
    ``mlp_of_input`` computes from ``ln2.hook_normalized`` is ``hook_mlp_out`` (float32)."""
    from precompute.train.transcoders import hooks_of, mlp_of_input

    hf, tok = load_hf_model("embedded", cache)
    model = hooked_from_hf(hf, tok)
    ids = tok("Paris is the capital of France, and Rome is the capital of", return_tensors="pt")
    names = list(hooks_of(tuple(range(model.cfg.n_layers))).values())
    with torch.inference_mode():
        _, acts = model.run_with_cache(ids.input_ids, names_filter=names)
        for n in range(model.cfg.n_layers):
            want = acts[f"blocks.{n}.hook_mlp_out"]
            got = mlp_of_input(model, n, acts[f"blocks.{n}.ln2.hook_normalized"])
            assert float((got - want).norm() / want.norm()) < 1e-5, n


def test_shipped_saes_match_their_manifest() -> None:
    manifest = json.loads((ASSETS_SAES / "manifest.json").read_text())
    assert manifest["gguf_sha256"] == gguf_model.gguf_sha256()
    assert [m["layer"] for m in manifest["layers"]] == list(preset("default").layers)
    for entry in manifest["layers"]:
        cfg = json.loads((ASSETS_SAES / entry["path"] / "cfg.json").read_text())
        assert cfg["d_in"] == 640 and cfg["d_sae"] == manifest["train_config"]["d_sae"]
        assert cfg["metadata"]["hook_name"] == f"blocks.{entry['layer']}.hook_resid_post"
        assert 0.0 < entry["explained_variance"] <= 1.0


def test_default_preset_encodes_a_sentence(bundle) -> None:
    result = encode(bundle, "The cat sat on the mat.", top_k=5)
    assert result.tokens == ["The", " cat", " sat", " on", " the", " mat", "."]
    assert list(result.layers) == [5, 9, 12, 15]
    for layer in result.layers.values():
        assert torch.isfinite(layer.acts).all()
        assert (layer.acts[:, 0] > 0).all()  # every token has an active feature
        l0 = float(layer.n_active.float().mean())
        assert 5 < l0 < 400, l0  # trained for L0 ≈ 64
        assert all(not math.isnan(a) for i in range(7) for _, a in layer.top(i))


def test_typed_special_tokens_stay_text(bundle) -> None:
    tok = bundle.tokenizer
    result = encode(bundle, "a <eos> b <bos>", top_k=1)
    assert tok.eos_token_id not in result.token_ids and tok.bos_token_id not in result.token_ids
    assert "".join(result.tokens) == "a <eos> b <bos>"


def test_cli_json_on_the_default_preset(cache: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "explorer",
            "encode",
            "--cache-dir",
            str(cache),
            "--json",
            "--layers",
            "9",
            "--top",
            "3",
            "The cat sat on the mat.",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["preset"] == "default" and list(out["layers"]) == ["9"]
    assert len(out["layers"]["9"]) == len(out["tokens"]) == 7


# --- the shipped store and the app on the embedded default --------------------------------------

ASSETS = ASSETS_SAES.parent


def test_shipped_store_passes_its_manifest_checks() -> None:
    """Each file's size, rows, schema and sha256; built with this model, SAEs and corpus."""
    from explorer.bundle import bundle_identity
    from explorer.files import file_sha256
    from explorer.store import Store

    store = Store.open(ASSETS / "store", verify=True)
    ident = bundle_identity(preset("default"))
    widths = {}
    for layer in store.layers:
        cfg = json.loads((ASSETS_SAES / f"layer_{layer}" / "cfg.json").read_text())
        widths[layer] = {**ident["layers"][layer], "d_sae": cfg["d_sae"]}
    store.check_bundle(ident["model"], ident["model_sha256"], widths)
    m = store.manifest
    assert store.layers == preset("default").layers
    assert m.tokens is not None and m.tokens >= 1_000_000
    assert m.corpus is not None
    assert m.corpus["sha256"] == file_sha256(ASSETS / "corpus" / "corpus.jsonl.xz")
    size = sum(p.stat().st_size for p in (ASSETS / "store").rglob("*") if p.is_file())
    assert size <= 30 * 2**20, size
    for layer in store.layers:
        feats = store.features(layer, ["feature", "n_fires", "max_act", "dead"])
        assert len(feats) == widths[layer]["d_sae"]
        assert (feats["dead"] == (feats["n_fires"] == 0)).all()


def test_curated_graph_captions_name_their_graphs_features_and_say_which_are_dense() -> None:
    """Each caption's ``L4 tc #866 on ' Eiffel'`` is a feature node of its graph (at that
    token); a sentence naming a feature the store finds dense says so, and one calling its
    features rare names none that is dense."""
    from explorer.store import Store

    graphs = ASSETS / "graphs"
    index = json.loads((graphs / "index.json").read_text())
    store = Store.open(ASSETS / "store")
    tc = store.source("tc")
    dense_at = store.manifest.dense_threshold
    assert len(index["graphs"]) >= 4
    for entry in index["graphs"]:
        data = json.loads((graphs / f"{entry['slug']}.json").read_text())
        tokens = data["metadata"]["prompt_tokens"]
        at: dict[tuple[int, int], set[str]] = {}
        for node in data["nodes"]:
            if node["feature_type"] == "cross layer transcoder":
                layer, feature, pos = (int(x) for x in node["node_id"].split("_"))
                at.setdefault((layer, feature), set()).add(tokens[pos])
        named_any = False
        for sentence in re.split(r"(?<=[.!?])\s", entry["caption"]):
            for layer_s, feature_s, token in re.findall(
                r"L(\d+) tc #(\d+)(?: on '([^']*)')?", sentence
            ):
                named_any = True
                key = (int(layer_s), int(feature_s))
                assert key in at, (entry["slug"], key)
                assert not token or token in at[key], (entry["slug"], key, token)
                dense = tc.feature(*key).density > dense_at
                if dense:
                    assert re.search(r"dense|every token|always-on", sentence), sentence
                if re.search(r"\brare\b", sentence):
                    assert not dense, sentence
        assert named_any, entry["slug"]


def test_curated_features_are_live_and_labelled() -> None:
    from explorer.store import Store

    curated = json.loads((ASSETS / "curated.json").read_text())
    assert len(curated["texts"]) >= 3 and len(curated["features"]) >= 6
    store = Store.open(ASSETS / "store")
    for f in curated["features"]:
        rec = store.feature(f["layer"], f["feature"])
        assert not rec.dead and not rec.dense and f["label"].strip()
        peak = rec.top_examples[0]
        assert peak.acts[peak.max_pos] == pytest.approx(rec.max_act, rel=1e-2)  # float16 acts


def test_the_app_opens_on_the_embedded_default(cache: Path, tmp_path: Path) -> None:
    """``python -m explorer``'s own start-up path: model, SAEs, shipped store, labels; then each
    tab's main handler on real text."""
    from explorer.app import browse, dashboard, microscope, open_explorer, steering
    from explorer.app.steer_table import to_table
    from explorer.steer import Steer

    ctx = open_explorer("default", None, str(tmp_path / "labels.sqlite"), str(cache))
    view = microscope.view(ctx, "The cat sat on the mat.")
    assert [t for t, _ in view.highlighted] == ["The", " cat", " sat", " on", " the", " mat", "."]
    assert not view.text_top.empty
    layer, feature = int(view.text_top["layer"].iat[0]), int(view.text_top["feature"].iat[0])
    dash = dashboard.view(ctx, layer, feature, "The cat sat on the mat.")
    assert f"Layer {layer} · feature {feature}" in dash.header and "max on your text" in dash.test
    steers = steering.add_steer(ctx, [], layer, feature, None, "add")
    default, steered, status = list(steering.steer(ctx, "The cat", steers, 0.0, 4, 0, 0.0))[-1]
    assert default and steered and "stopped" in status
    assert not browse.features(ctx, "all", "").empty
    # Each steering demo's feature is named (the Steering tab's table, the dashboard); a curated
    # feature keeps its own label.
    named = {(f["layer"], f["feature"]): f["label"] for f in ctx.content["features"]}
    for d in ctx.content["steering"]:
        want = named.get((d["layer"], d["feature"]), d["label"])
        assert ctx.label_of(d["layer"], d["feature"]) == want
        row = to_table(ctx, [Steer(d["layer"], d["feature"], d["strength"], d["method"])])
        assert row["label"].iat[0] == want


# --- the microscope compares layers fairly on the embedded default ------------------------------

# Which curated text shows off each curated feature, and on which token (curated.json lists texts
# and features apart; this is the pairing its "why" lines describe).
SHOWCASE = {
    (5, 2407): (0, "Miss"),
    (5, 3947): (1, " line"),
    (5, 1309): (0, " less"),
    (9, 1324): (0, " when"),
    (9, 1171): (3, " ever"),
    (12, 1013): (2, " French"),
    (12, 3872): (2, " once"),
    (12, 688): (2, " thunder"),
    (15, 3282): (3, " to"),
    (15, 2559): (3, " other"),
}
TOKEN_ROWS = 10  # "shown": among the first rows of its token's table (default density filter)


@pytest.fixture(scope="module")
def app_ctx(bundle, tmp_path_factory: pytest.TempPathFactory):
    """The app's context on the embedded default: this module's bundle, the shipped store."""
    from explorer.app import Context
    from explorer.app.context import load_curated
    from explorer.labels import Labels
    from explorer.store import Store

    store = Store.open(ASSETS / "store")
    labels = Labels(
        tmp_path_factory.mktemp("labels") / "labels.sqlite",
        scope="default",
        widths={n: store.n_features(n) for n in store.layers},
    )
    return Context(bundle=bundle, store=store, labels=labels, content=load_curated())


def test_each_curated_text_shows_its_curated_features(app_ctx) -> None:
    """With relative strength, every curated feature (layers 5 to 15) is near the top of its
    token's table in its own text's microscope view, at the default density filter; and every
    layer of the heatmap reads (its strongest cell well into the 0-100% scale)."""
    from explorer.app import microscope

    texts = app_ctx.content["texts"]
    assert {(f["layer"], f["feature"]) for f in app_ctx.content["features"]} == set(SHOWCASE)
    views = {
        i: microscope.view(app_ctx, texts[i], metric="max activation")
        for i in {i for i, _ in SHOWCASE.values()}
    }
    missing = []
    for (layer, feature), (i, token) in SHOWCASE.items():
        view = views[i]
        pos = view.encoding.tokens.index(token)
        table = microscope.token_features(app_ctx, view.encoding, pos, 1.0)
        rows = list(zip(table["layer"], table["feature"], strict=True))[:TOKEN_ROWS]
        if (layer, feature) not in rows:
            missing.append((layer, feature, token, rows[:3]))
    assert not missing, missing
    for view in views.values():
        z = view.heatmap.data[0].z
        assert all(0 <= v <= 100 for row in z for v in row)
        assert min(max(row) for row in z) > 50, [max(row) for row in z]
        # The whole-text ranking draws on every layer (by raw activation: layers 12 and 15 only).
        assert set(view.text_top["layer"]) == {5, 9, 12, 15}


def test_each_curated_text_opens_with_contrast(app_ctx) -> None:
    """The microscope's default view teaches: the text is shaded by its strongest feature, so most
    tokens stay light and a few stand out; shading each token by its own strongest feature (the
    view before) leaves none light (bench/contrast.py prints the figures)."""
    from explorer.app import microscope

    for text in app_ctx.content["texts"]:
        enc = microscope.encode_text(app_ctx, text)
        shown = microscope.show(app_ctx, enc).shading
        strongest = microscope.show(app_ctx, enc, shade="strongest").shading
        assert shown.feature is not None
        assert (shown.rel < 40).mean() >= 0.8, (text[:30], shown.feature)
        assert 1 <= (shown.rel >= 60).sum() <= len(enc.tokens) // 4
        assert (strongest.rel < 40).mean() < 0.1
