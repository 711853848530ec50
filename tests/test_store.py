"""The store: written atomically by precompute.store_build.write, read back equal by
explorer.store, and every kind of damage or mismatch reported as a one-line StoreError."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import precompute.store_build.write as write
from explorer.paths import REPO_ROOT
from explorer.store import (
    SCHEMA_VERSION,
    TOKENS,
    VOCAB,
    Example,
    FeatureRecord,
    Store,
    StoreError,
    examples_path,
    features_path,
    features_schema,
    interval_group,
)
from precompute.store_build.write import WriteError, write_store

LAYERS = (3, 7)
N_FEATURES, N_BINS, N_INTERVALS, TOP_K, PER_INTERVAL, CTX = 6, 4, 2, 2, 2, 5
WINDOW = 9  # tokens per window (BOS dropped)
DEAD = 0  # feature 0 never fires
EMPTY = (2, 1)  # feature 2 has no fires in interval 1
VOCAB_IDS = range(60)


def text(token_id: int) -> str:
    return f"▁t{token_id}"


def make_layer(
    layer: int, windows: list[dict[str, Any]]
) -> tuple[pd.DataFrame, list[dict[str, Any]], list[dict[str, Any]]]:
    """A hand-made layer: features 1..5 fire, feature 2's first interval is empty.

    Each example gets a window of its own, appended to ``windows``; returns the features, the
    examples' rows and, for each row, the :class:`Example` fields the reader must rebuild.
    """
    rng = np.random.default_rng(layer)
    feats, exs, truth = [], [], []
    for f in range(N_FEATURES):
        n_fires = 10 * f
        max_act = 0.0 if f == DEAD else f + 0.5
        counts = [0, 0] if f == DEAD else [3, 10 * f - 3]
        if f == EMPTY[0]:
            counts = [0, 10 * f]
        feats.append(
            {
                "feature": f,
                "density": n_fires / 1000,
                "n_fires": n_fires,
                "max_act": max_act,
                "mean_act": max_act / 2,
                "dead": f == DEAD,
                "dense": n_fires / 1000 > 0.01,
                "hist_counts": rng.integers(0, 9, N_BINS).tolist(),
                "interval_counts": counts,
                "top_logits": [f, f + 1, 50 + f],
                "top_logits_values": [3.0, 2.0, 1.0],
                "bottom_logits": [59, 8, 7],
                "bottom_logits_values": [-1.0, -2.0, -3.0],
                "neighbours": [(f + 1) % N_FEATURES],
                "neighbour_cos": [0.5],
            }
        )
        if f == DEAD:
            continue
        groups = ["top"] * TOP_K + [
            interval_group(k) for k in (1, 2) for _ in range(PER_INTERVAL) if (f, k) != EMPTY
        ]
        seen: dict[str, int] = {}
        for group in groups:
            rank = seen[group] = seen.get(group, -1) + 1
            doc_id, offset = f"doc-{layer}-{f}-{group}-{rank}", int(rng.integers(0, 100))
            ids = rng.integers(4, 40, WINDOW).tolist()
            windows.append(
                {"window": len(windows), "doc_id": doc_id, "offset": offset, "token_ids": ids}
            )
            start, max_pos = int(rng.integers(0, WINDOW - CTX + 1)), int(rng.integers(0, CTX))
            acts = rng.random(CTX).astype(np.float16)
            acts[(acts < 0.4) & (np.arange(CTX) != max_pos)] = 0  # sparse; the centre fires
            act_pos = np.flatnonzero(acts)
            exs.append(
                {
                    "feature": f,
                    "group": group,
                    "rank": rank,
                    "window": len(windows) - 1,
                    "start": start,
                    "length": CTX,
                    "max_pos": max_pos,
                    "act_pos": act_pos.tolist(),
                    "act_val": acts[act_pos].tolist(),
                }
            )
            truth.append(
                {
                    "feature": f,
                    "doc_id": doc_id,
                    "start": offset + start,
                    "token_ids": ids[start : start + CTX],
                    "tokens": [text(i) for i in ids[start : start + CTX]],
                    "acts": acts.astype(np.float32).tolist(),
                    "max_pos": max_pos,
                }
            )
    return pd.DataFrame(feats), exs, truth


def make_vocab() -> pd.DataFrame:
    return pd.DataFrame({"token_id": list(VOCAB_IDS), "text": [text(i) for i in VOCAB_IDS]})


def make_manifest() -> dict[str, Any]:
    return {
        "package_version": "0.1.0",
        "bundle": {
            "preset": "default",
            "model": "embedded",
            "model_sha256": "ab" * 32,
            "layers": [
                {
                    "layer": n,
                    "hook_name": f"blocks.{n}.hook_resid_post",
                    "sae": str(REPO_ROOT / "assets" / "saes" / f"layer_{n}"),
                    "d_sae": N_FEATURES,
                    "architecture": "jumprelu",
                    "metrics": {"l0": 12.5},
                }
                for n in LAYERS
            ],
        },
        "tokens": 1000,
        "reduce": {"top_k": TOP_K, "n_bins": N_BINS, "n_intervals": N_INTERVALS},
    }


@dataclass
class Tables:
    """What :func:`write_store` takes, and what the reader must give back (``truth``)."""

    features: dict[int, Any]
    examples: dict[int, Any]
    tokens: pa.Table
    vocab: pd.DataFrame
    truth: dict[int, list[dict[str, Any]]]

    def write(self, out: Path, manifest: dict[str, Any] | None = None, **kwargs: Any) -> Path:
        return write_store(
            out,
            make_manifest() if manifest is None else manifest,
            self.features,
            self.examples,
            self.tokens,
            self.vocab,
            **kwargs,
        )


@pytest.fixture
def tables() -> Tables:
    """Features and examples per layer (examples shuffled; one layer as pandas, one as arrow)."""
    features, examples, truth = {}, {}, {}
    windows: list[dict[str, Any]] = []
    for n in LAYERS:
        feats, exs, truth[n] = make_layer(n, windows)
        shuffled = random.Random(n).sample(exs, len(exs))
        features[n] = feats
        if n == LAYERS[0]:
            examples[n] = pd.DataFrame(shuffled)
        else:
            examples[n] = pa.Table.from_pylist(shuffled).cast(write.examples_schema())
    return Tables(features, examples, pa.Table.from_pylist(windows), make_vocab(), truth)


@pytest.fixture
def store_dir(tmp_path: Path, tables: Tables) -> Path:
    return tables.write(tmp_path / "store", rows_per_group=4)


def test_round_trip(store_dir: Path, tables: Tables) -> None:
    store = Store.open(store_dir)
    assert store.layers == LAYERS
    manifest = store.manifest.to_dict()
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["kind"] == "store"
    assert {k: v for k, v in manifest.items() if k not in ("files", "schema_version", "kind")} == (
        make_manifest()
    )
    assert sorted(manifest["files"]) == sorted(
        [TOKENS, VOCAB] + [features_path(n) for n in LAYERS] + [examples_path(n) for n in LAYERS]
    )
    for n in LAYERS:
        features = tables.features[n]
        pd.testing.assert_frame_equal(
            store.features(n)[["feature", "n_fires", "dead", "dense"]],
            features[["feature", "n_fires", "dead", "dense"]].astype(
                {"feature": "int32", "n_fires": "int64"}
            ),
        )
        for side in ("top_logits", "bottom_logits"):  # texts filled in from the vocab
            assert store.features(n)[f"{side}_tokens"].map(list).tolist() == [
                [text(i) for i in ids] for ids in features[side]
            ]
        for f in range(N_FEATURES):
            rec = store.feature(n, f)
            want = [e for e in tables.truth[n] if e["feature"] == f]
            got = [(g, ex) for g, exs in _groups(rec) for ex in exs]
            assert [ex.doc_id for _, ex in got] == [e["doc_id"] for e in want]
            for (_, ex), e in zip(got, want, strict=True):
                assert ex.tokens == e["tokens"] and ex.token_ids == e["token_ids"]
                assert ex.start == e["start"] and ex.max_pos == e["max_pos"]
                assert ex.acts == e["acts"]  # dense again, zeros where it does not fire
            row = features.iloc[f]
            assert rec.n_fires == row["n_fires"] and rec.dead == row["dead"]
            assert rec.hist_counts == row["hist_counts"]
            assert rec.top_logits_tokens == [text(i) for i in row["top_logits"]]
            assert rec.bottom_logits_tokens == [text(i) for i in row["bottom_logits"]]
            np.testing.assert_allclose(rec.hist_edges, np.linspace(0, row["max_act"], N_BINS + 1))


def _groups(rec: FeatureRecord) -> list[tuple[str, list[Example]]]:
    return [("top", rec.top_examples)] + [
        (interval_group(k), g.examples) for k, g in enumerate(rec.intervals, start=1)
    ]


def test_feature_groups_in_order(store_dir: Path) -> None:
    store = Store.open(store_dir)
    rec = store.feature(7, 3)
    assert [e.doc_id for e in rec.top_examples] == ["doc-7-3-top-0", "doc-7-3-top-1"]
    assert [[e.doc_id for e in g.examples] for g in rec.intervals] == [
        [f"doc-7-3-interval {k}-{r}" for r in range(PER_INTERVAL)] for k in (1, 2)
    ]
    assert [(g.lo, g.hi) for g in rec.intervals] == [(0.0, 1.75), (1.75, 3.5)]
    assert [g.count for g in rec.intervals] == [3, 27]
    assert [g.share for g in rec.intervals] == pytest.approx([0.1, 0.9])

    empty = store.feature(7, EMPTY[0]).intervals[EMPTY[1] - 1]
    assert (empty.lo, empty.hi, empty.share, empty.examples) == (0.0, 1.25, 0.0, [])

    dead = store.feature(3, DEAD)
    assert dead.dead and dead.top_examples == [] and all(not g.examples for g in dead.intervals)
    assert dead.hist_edges == [0.0] * (N_BINS + 1)


def test_row_groups_never_split_a_feature(store_dir: Path) -> None:
    pf = pq.ParquetFile(store_dir / examples_path(3))
    assert pf.num_row_groups > 1
    seen: set[int] = set()
    for i in range(pf.num_row_groups):
        feats = set(pf.read_row_group(i, columns=["feature"]).column(0).to_pylist())
        assert not feats & seen
        seen |= feats


def test_schema_is_the_record(store_dir: Path) -> None:
    """Every features column reaches FeatureRecord under its own name."""
    fields = set(FeatureRecord.__dataclass_fields__)
    assert set(features_schema().names) <= fields
    assert pq.ParquetFile(store_dir / features_path(3)).schema_arrow.equals(features_schema())


def test_unknown_layer_or_feature(store_dir: Path) -> None:
    store = Store.open(store_dir)
    with pytest.raises(StoreError, match=r"layer 4 is not in store .*; its layers are 3, 7"):
        store.feature(4, 0)
    with pytest.raises(StoreError, match=r"feature 6 is not in layer 3; its features are 0\.\.5"):
        store.feature(3, 6)


def _edit_manifest(store_dir: Path, **changes: Any) -> None:
    where = store_dir / "manifest.json"
    manifest = json.loads(where.read_text())
    manifest.update(changes)
    where.write_text(json.dumps(manifest))


def _one_line(err: pytest.ExceptionInfo[StoreError]) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("no_dir", "store directory .* does not exist"),
        ("no_manifest", "has no manifest.json"),
        ("garbage_manifest", "manifest.json is not valid JSON"),
        ("list_manifest", "manifest.json is not a JSON object"),
        ("kind", "is not a feature store: its manifest kind is 'saes', not 'store'"),
        ("schema", "^store schema version 2, this explorer reads version 1: rebuild with "),
        ("delete", r"examples/layer=07.parquet is missing; rebuild"),
        ("truncate", r"examples/layer=07.parquet has \d+ bytes, the manifest says \d+ \(truncated"),
        ("footer", r"examples/layer=07.parquet is not a readable Parquet file \("),
        ("rows", r"features/layer=03.parquet has 6 rows, the manifest says 7 \(truncated"),
        ("unlisted", r"manifest.json lists no features/layer=03.parquet"),
        ("d_sae", r"features/layer=03.parquet has 6 features, the layer's SAE has d_sae 16"),
        ("no_tokens", r"tokens.parquet is missing; rebuild"),
        ("unlisted_vocab", r"manifest.json lists no vocab.parquet"),
        ("vocab_schema", r"vocab.parquet has columns \['token_id'\], schema version 1 has"),
        ("windows", r"examples/layer=03.parquet points at windows 0\.\.\d+, tokens.parquet has 3 "),
    ],
)
def test_open_rejects_damage(store_dir: Path, damage: str, expected: str) -> None:
    manifest = json.loads((store_dir / "manifest.json").read_text())
    ex7 = store_dir / examples_path(7)
    if damage == "no_dir":
        store_dir = store_dir.parent / "nowhere"
    elif damage == "no_manifest":
        (store_dir / "manifest.json").unlink()
    elif damage == "garbage_manifest":
        (store_dir / "manifest.json").write_bytes(b"{\x00 not json")
    elif damage == "list_manifest":
        (store_dir / "manifest.json").write_text("[1, 2]")
    elif damage == "kind":
        _edit_manifest(store_dir, kind="saes")
    elif damage == "schema":
        _edit_manifest(store_dir, schema_version=2)
    elif damage == "delete":
        ex7.unlink()
    elif damage == "truncate":
        ex7.write_bytes(ex7.read_bytes()[:-100])
    elif damage == "footer":  # same size, the footer overwritten
        data = bytearray(ex7.read_bytes())
        data[-64:] = b"\xff" * 64
        ex7.write_bytes(bytes(data))
    elif damage == "rows":
        manifest["files"][features_path(3)]["rows"] = 7
        _edit_manifest(store_dir, files=manifest["files"])
    elif damage == "unlisted":
        del manifest["files"][features_path(3)]
        _edit_manifest(store_dir, files=manifest["files"])
    elif damage == "d_sae":
        manifest["bundle"]["layers"][0]["d_sae"] = 16
        _edit_manifest(store_dir, bundle=manifest["bundle"])
    elif damage == "no_tokens":
        (store_dir / TOKENS).unlink()
    elif damage == "unlisted_vocab":
        del manifest["files"][VOCAB]
        _edit_manifest(store_dir, files=manifest["files"])
    elif damage == "vocab_schema":
        _replace_file(store_dir, VOCAB, pq.read_table(store_dir / VOCAB).select(["token_id"]))
    elif damage == "windows":  # a well-formed tokens file from another (shorter) run
        _replace_file(store_dir, TOKENS, pq.read_table(store_dir / TOKENS).slice(0, 3))
    with pytest.raises(StoreError) as err:
        Store.open(store_dir)
    assert _one_line(err)
    assert err.match(expected)


def _replace_file(store_dir: Path, name: str, table: pa.Table) -> None:
    """Overwrite ``name`` with ``table`` and record it in the manifest, as a writer would."""
    pq.write_table(table, store_dir / name)
    manifest = json.loads((store_dir / "manifest.json").read_text())
    manifest["files"][name].update(
        rows=table.num_rows, bytes=(store_dir / name).stat().st_size, sha256=None
    )
    _edit_manifest(store_dir, files=manifest["files"])


def test_schema_version_message(store_dir: Path) -> None:
    _edit_manifest(store_dir, schema_version=2)
    with pytest.raises(StoreError) as err:
        Store.open(store_dir)
    assert str(err.value) == (
        "store schema version 2, this explorer reads version 1: "
        "rebuild with `python -m precompute run …`"
    )


def test_truncated_file_without_recorded_size(store_dir: Path) -> None:
    """Without the manifest's byte count, the footer check still catches a truncated file."""
    manifest = json.loads((store_dir / "manifest.json").read_text())
    del manifest["files"][examples_path(7)]["bytes"]
    _edit_manifest(store_dir, files=manifest["files"])
    ex7 = store_dir / examples_path(7)
    ex7.write_bytes(ex7.read_bytes()[: ex7.stat().st_size // 2])
    with pytest.raises(StoreError, match="is not a readable Parquet file"):
        Store.open(store_dir)


def test_flipped_bytes(store_dir: Path) -> None:
    """A flipped byte passes the cheap open, fails ``verify=True``, and fails the feature read
    that touches it (page checksums) instead of returning wrong numbers."""
    ex3 = store_dir / examples_path(3)
    data = bytearray(ex3.read_bytes())
    data[len(data) // 3] ^= 0xFF
    ex3.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"examples/layer=03.parquet does not match its sha256"):
        Store.open(store_dir, verify=True)
    store = Store.open(store_dir)
    with pytest.raises(StoreError, match=r"cannot read .* from examples/layer=03.parquet"):
        for f in range(N_FEATURES):
            store.feature(3, f)


def _bundle_layers(**override: Any) -> dict[int, dict[str, Any]]:
    layers = {
        n: {
            "hook_name": f"blocks.{n}.hook_resid_post",
            "sae": f"assets/saes/layer_{n}",
            "d_sae": N_FEATURES,
        }
        for n in LAYERS
    }
    for key, value in override.items():
        layers[7][key] = value
    return layers


def test_check_bundle(store_dir: Path) -> None:
    store = Store.open(store_dir)
    sha = "ab" * 32
    store.check_bundle("embedded", sha, _bundle_layers())  # relative SAE path matches absolute
    store.check_bundle("embedded", None, {n: {} for n in (*LAYERS, 9)})  # unknown: not compared
    cases: list[tuple[tuple[str, str | None, dict[int, dict[str, Any]]], str]] = [
        (("google/gemma-2-2b", sha, _bundle_layers()), "model 'embedded', the bundle has 'google"),
        (("embedded", "cd" * 32, _bundle_layers()), f"sha256 {sha}, the bundle's is {'cd' * 32}"),
        (("embedded", sha, {3: _bundle_layers()[3]}), "has layer 7, the bundle has layers 3;"),
        (
            ("embedded", sha, _bundle_layers(hook_name="blocks.7.hook_mlp_out")),
            "layer 7 has hook_name 'blocks.7.hook_resid_post', the bundle has 'blocks.7.hook_mlp",
        ),
        (
            ("embedded", sha, _bundle_layers(sae="gemma-scope-2b-pt-res-canonical/layer_7")),
            r"layer 7 has sae '.*assets/saes/layer_7', the bundle has 'gemma-scope-2b",
        ),
        (
            ("embedded", sha, _bundle_layers(d_sae=16384)),
            "layer 7 has d_sae 6, the bundle has 16384",
        ),
    ]
    for args, expected in cases:
        with pytest.raises(StoreError, match=expected) as err:
            store.check_bundle(*args)
        assert _one_line(err)


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def _fail_after_first_file(monkeypatch: pytest.MonkeyPatch) -> None:
    real = write.write_parquet
    calls: list[int] = []

    def flaky(*args: Any, **kwargs: Any) -> dict[str, Any]:
        if calls:
            raise OSError("disk full (simulated)")
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(write, "write_parquet", flaky)


def test_interrupted_write_leaves_nothing(
    tmp_path: Path, tables: Tables, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_after_first_file(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        tables.write(tmp_path / "store")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_existing_store(
    store_dir: Path, tables: Tables, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _snapshot(store_dir)
    _fail_after_first_file(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        tables.write(store_dir, {**make_manifest(), "tokens": 2})
    assert [p.name for p in store_dir.parent.iterdir()] == [store_dir.name]
    assert _snapshot(store_dir) == before
    assert Store.open(store_dir, verify=True).manifest.tokens == 1000


def test_killed_write_leaves_no_readable_store(
    tmp_path: Path, tables: Tables, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process killed mid-write cannot clean up: what it leaves is hidden and unreadable."""
    _fail_after_first_file(monkeypatch)
    monkeypatch.setattr(write, "_cleanup", lambda tmp: None)
    with pytest.raises(OSError, match="simulated"):
        tables.write(tmp_path / "store")
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".tmp-store-")
    with pytest.raises(StoreError, match=r"has no manifest\.json"):
        Store.open(left)
    with pytest.raises(StoreError, match="does not exist"):
        Store.open(tmp_path / "store")


def test_rewrite_replaces_store(store_dir: Path, tables: Tables) -> None:
    tables.write(store_dir, {**make_manifest(), "tokens": 2})
    assert Store.open(store_dir).manifest.tokens == 2
    assert [p.name for p in store_dir.parent.iterdir()] == [store_dir.name]


def test_write_refuses_foreign_directory(tmp_path: Path, tables: Tables) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(WriteError, match="does not look like a store"):
        tables.write(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("missing_column", r"layer 3 features: missing columns \['neighbour_cos'\]"),
        ("bad_type", r"layer 3 examples: column start is (large_)?string, the schema says int16"),
        ("duplicate", "layer 3 examples: two examples share a .feature, group, rank."),
        ("bad_group", "layer 3 examples: unknown group 'interval 3'"),
        ("ragged", "layer 3 examples: act_pos and act_val differ in length"),
        ("act_pos", "layer 3 examples: act_pos must index into the context"),
        (
            "outside",
            r"layer 3 examples: a context \(start, length\) does not lie inside its window",
        ),
        ("window", r"layer 3 examples: 'window' must lie in \[0, \d+\) \(the tokens' rows\)"),
        ("overflow", "layer 3 examples: act_val must be finite"),
        ("vocab", "tokens: token id 4 is not in the vocab"),
        ("logit_vocab", "layer 3 features top_logits: token id 99 is not in the vocab"),
        ("layers", r"manifest bundle.layers are \[3\], the tables' are \[3, 7\]"),
        ("d_sae", "layer 3 features have 6 rows, its d_sae is 16"),
    ],
)
def test_write_validates(tmp_path: Path, tables: Tables, damage: str, expected: str) -> None:
    feats, exs = tables.features[3].copy(), tables.examples[3].copy()
    manifest = make_manifest()
    if damage == "missing_column":
        feats = feats.drop(columns=["neighbour_cos"])
    elif damage == "bad_type":
        exs["start"] = exs["start"].astype(str)
    elif damage == "duplicate":
        exs = pd.concat([exs, exs.iloc[:1]])
    elif damage == "bad_group":
        exs.loc[0, "group"] = "interval 3"
    elif damage == "ragged":
        exs.at[0, "act_val"] = [1.0] * (len(exs.at[0, "act_pos"]) + 1)
    elif damage == "act_pos":
        exs.at[0, "act_pos"] = [CTX] * len(exs.at[0, "act_pos"])
    elif damage == "outside":
        exs.loc[0, "start"] = WINDOW - CTX + 1
    elif damage == "window":
        exs.loc[0, "window"] = tables.tokens.num_rows
    elif damage == "overflow":
        exs.at[0, "act_val"] = [70000.0] * len(exs.at[0, "act_pos"])
    elif damage == "vocab":
        tables.vocab = tables.vocab[tables.vocab.token_id != 4]
    elif damage == "logit_vocab":
        feats.at[0, "top_logits"] = [99, 1, 2]
    elif damage == "layers":
        manifest["bundle"]["layers"] = manifest["bundle"]["layers"][:1]
    elif damage == "d_sae":
        manifest["bundle"]["layers"][0]["d_sae"] = 16
    tables.features, tables.examples = {**tables.features, 3: feats}, {**tables.examples, 3: exs}
    with pytest.raises(WriteError, match=expected):
        tables.write(tmp_path / "store", manifest)
    assert not (tmp_path / "store").exists()


def test_store_module_is_light() -> None:
    """The app imports the store without pyarrow, pandas or the batch side."""
    code = (
        "import sys, explorer.store; "
        "heavy = {'pyarrow', 'pandas', 'precompute', 'torch'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
