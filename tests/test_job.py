"""The precompute run end to end on the tiny model: brute force, shards, resume."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import WORDS, tiny_bundle

from explorer.store import Store
from precompute.accumulate import ReduceConfig
from precompute.job import Job, RunConfig, collect_windows


def _corpus(path: Path, n_docs: int = 30) -> Path:
    rng = random.Random(1)
    with path.open("w") as f:
        for i in range(n_docs):
            text = " ".join(rng.choice(WORDS[:40]) for _ in range(rng.randint(20, 70)))
            f.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
    return path


@pytest.fixture
def job_parts(tmp_path: Path, gemma3_hf, tokenizer, random_saes):  # type: ignore[no-untyped-def]
    bundle = tiny_bundle(gemma3_hf, tokenizer, random_saes)
    cfg = RunConfig(
        corpus=str(_corpus(tmp_path / "c.jsonl")),
        tokens=1200,
        context_size=16,
        batch_windows=8,
        shard_tokens=300,
        reduce=ReduceConfig(top_k=5, n_bins=10, n_intervals=3, per_interval=2, before=4, after=2),
    )
    return bundle, cfg, tmp_path


def _run(bundle, cfg, out: Path) -> Path:  # type: ignore[no-untyped-def]
    return Job(cfg, bundle, out, bundle_meta={"model": "tiny"}).run()


def _tables(store: Path) -> dict[str, object]:
    return {
        str(p.relative_to(store)): pq.read_table(p).to_pylist()
        for p in sorted(store.rglob("*.parquet"))
    }


def test_store_statistics_equal_a_brute_force_pass(job_parts) -> None:  # type: ignore[no-untyped-def]
    bundle, cfg, tmp = job_parts
    store = _run(bundle, cfg, tmp / "store")
    table = collect_windows(cfg, bundle.tokenizer)
    for layer in (1, 2):
        dense = []  # brute force: every window alone, dense codes, BOS dropped
        for w in range(len(table.window_start)):
            s = int(table.window_start[w])
            e = (
                int(table.window_start[w + 1])
                if w + 1 < len(table.window_start)
                else len(table.token_ids)
            )
            ids = torch.tensor([table.token_ids[s:e].astype(np.int64)])
            with torch.no_grad():
                _, cache = bundle.model.run_with_cache(ids)
                codes = bundle.sae(layer).encode(cache[f"blocks.{layer}.hook_resid_post"][0])
            dense.append(codes[~torch.from_numpy(table.special[s:e])].numpy())
        acts = np.concatenate(dense)
        feats = Store.open(store).features(layer)
        n_fires = (acts > 0).sum(0)
        assert feats["n_fires"].tolist() == n_fires.tolist()
        np.testing.assert_allclose(feats["density"], n_fires / acts.shape[0])
        np.testing.assert_allclose(feats["max_act"], acts.max(0), rtol=1e-5)
        for f in np.flatnonzero(n_fires)[:10]:
            col = acts[:, f]
            hist = np.minimum((col[col > 0] / col.max() * 10).astype(int), 9)
            assert feats["hist_counts"][f].tolist() == np.bincount(hist, minlength=10).tolist()
        reader = Store.open(store)
        for f in np.flatnonzero(n_fires)[:10]:
            top = reader.feature(layer, int(f)).top_examples
            want = np.sort(acts[:, f][acts[:, f] > 0])[::-1][:5]
            got = [ex.acts[ex.max_pos] for ex in top]
            np.testing.assert_allclose(got, want, rtol=1e-3)  # act_val is float16
            for ex in top:  # the context is the run's tokens at the recorded place
                (w,) = [
                    w
                    for w, (doc, off) in enumerate(
                        zip(table.window_doc, table.window_offset, strict=True)
                    )
                    if doc == ex.doc_id
                    and off <= ex.start < off + table.window_end[w] - 1 - table.window_start[w]
                ]
                s = int(table.window_start[w]) + 1 + ex.start - int(table.window_offset[w])
                assert ex.token_ids == table.token_ids[s : s + len(ex.token_ids)].tolist()


def test_shard_layout_does_not_change_the_store(job_parts) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    bundle, cfg, tmp = job_parts
    one = _run(bundle, replace(cfg, shard_tokens=10**6), tmp / "one")
    many = _run(bundle, cfg, tmp / "many")
    assert len(list((tmp / "many.work").glob("shard-*.npz"))) > 2
    assert len(list((tmp / "one.work").glob("shard-*.npz"))) == 1
    assert _tables(one) == _tables(many)


def test_a_killed_run_resumes_to_the_same_store(job_parts, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import precompute.job as job_mod

    bundle, cfg, tmp = job_parts
    reference = _run(bundle, cfg, tmp / "ref")
    calls = {"n": 0}
    real = job_mod._save_shard

    def dies_on_third(path, records, meta):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            path.with_name(path.name + ".tmp").write_bytes(b"torn")  # a half-written shard
            raise KeyboardInterrupt
        real(path, records, meta)

    monkeypatch.setattr(job_mod, "_save_shard", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        _run(bundle, cfg, tmp / "resumed")
    assert not (tmp / "resumed").exists()  # no store until the run completes
    monkeypatch.setattr(job_mod, "_save_shard", real)
    encoded: list[range] = []
    real_encode = job_mod.encode_batch

    def spy(bundle, table, windows, layers):  # type: ignore[no-untyped-def]
        encoded.append(windows)
        return real_encode(bundle, table, windows, layers)

    monkeypatch.setattr(job_mod, "encode_batch", spy)
    resumed = _run(bundle, cfg, tmp / "resumed")
    assert encoded and min(r.start for r in encoded) > 0  # the first two shards were reused
    assert _tables(resumed) == _tables(reference)
