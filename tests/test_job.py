"""The precompute run end to end on the tiny model: brute force, shards, resume."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import tiny_bundle, write_word_corpus

from explorer.store import Store
from precompute.store_build.accumulate import ReduceConfig
from precompute.store_build.job import Job, RunConfig, collect_windows, shard_ranges


@pytest.fixture
def job_parts(tmp_path: Path, gemma3_hf, tokenizer, random_saes):
    bundle = tiny_bundle(gemma3_hf, tokenizer, random_saes)
    cfg = RunConfig(
        corpus=str(write_word_corpus(tmp_path / "c.jsonl")),
        tokens=1200,
        context_size=16,
        batch_windows=8,
        shard_tokens=300,
        reduce=ReduceConfig(top_k=5, n_bins=10, n_intervals=3, per_interval=2, before=4, after=2),
    )
    return bundle, cfg, tmp_path


def _run(bundle, cfg, out: Path) -> Path:
    return Job(cfg, bundle, out, bundle_meta={"model": "tiny"}).run()


def _tables(store: Path) -> dict[str, object]:
    return {
        str(p.relative_to(store)): pq.read_table(p).to_pylist()
        for p in sorted(store.rglob("*.parquet"))
    }


def test_store_statistics_equal_a_brute_force_pass(job_parts) -> None:
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


def test_shard_layout_does_not_change_the_store(job_parts) -> None:
    from dataclasses import replace

    bundle, cfg, tmp = job_parts
    one = _run(bundle, replace(cfg, shard_tokens=10**6), tmp / "one")
    many = _run(bundle, cfg, tmp / "many")
    assert len(list((tmp / "many.work").glob("shard-*.npz"))) > 2
    assert len(list((tmp / "one.work").glob("shard-*.npz"))) == 1
    assert _tables(one) == _tables(many)


def test_many_feature_blocks_give_the_one_block_store(job_parts, monkeypatch) -> None:
    """One block per layer is the old reduce (every record at once); tiny blocks change nothing."""
    from dataclasses import replace

    import precompute.store_build.job as job_mod

    bundle, cfg, tmp = job_parts
    blocks: list[int] = []
    real = job_mod.reduce_blocks

    def spy(*args):
        out = real(*args)
        blocks.append(out[2])
        return out

    monkeypatch.setattr(job_mod, "reduce_blocks", spy)
    one = _run(bundle, replace(cfg, reduce_memory_mb=10_000.0), tmp / "one")
    assert blocks == [1, 1]
    many = _run(bundle, replace(cfg, reduce_memory_mb=0.002), tmp / "many")  # ~40 records
    assert min(blocks[2:]) > 10
    assert _tables(one) == _tables(many)


def test_old_format_shards_are_recomputed(job_parts, monkeypatch) -> None:
    """A work directory from before the feature index: its shards are encoded again."""
    import json

    import precompute.store_build.job as job_mod

    bundle, cfg, tmp = job_parts
    reference = _run(bundle, cfg, tmp / "ref")
    work = tmp / "ref.work"
    for path in sorted(work.glob("shard-*.npz"))[:2]:  # rewritten as the first format
        with np.load(path) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            meta.pop("format")
            old = {k: z[k] for k in z.files if not k.startswith(("fptr_", "meta"))}
        np.savez(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **old)
    encoded: list[range] = []
    real_encode = job_mod.encode_batch

    def spy(bundle, table, windows, layers):
        encoded.append(windows)
        return real_encode(bundle, table, windows, layers)

    monkeypatch.setattr(job_mod, "encode_batch", spy)
    again = Job(cfg, bundle, tmp / "again", work_dir=work, bundle_meta={"model": "tiny"}).run()
    assert encoded and min(r.start for r in encoded) == 0  # the old shards were redone...
    ranges = shard_ranges(collect_windows(cfg, bundle.tokenizer), cfg.shard_tokens)
    assert len(ranges) > 2 and max(r.stop for r in encoded) == ranges[1][1]  # ...and only they
    assert _tables(again) == _tables(reference)


def test_a_killed_run_resumes_to_the_same_store(job_parts, monkeypatch) -> None:
    import precompute.store_build.job as job_mod

    bundle, cfg, tmp = job_parts
    reference = _run(bundle, cfg, tmp / "ref")
    calls = {"n": 0}
    real = job_mod.save_shard

    def dies_on_third(path, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            path.with_name(path.name + ".tmp").write_bytes(b"torn")  # a half-written shard
            raise KeyboardInterrupt
        real(path, *args)

    monkeypatch.setattr(job_mod, "save_shard", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        _run(bundle, cfg, tmp / "resumed")
    assert not (tmp / "resumed").exists()  # no store until the run completes
    monkeypatch.setattr(job_mod, "save_shard", real)
    encoded: list[range] = []
    real_encode = job_mod.encode_batch

    def spy(bundle, table, windows, layers):
        encoded.append(windows)
        return real_encode(bundle, table, windows, layers)

    monkeypatch.setattr(job_mod, "encode_batch", spy)
    resumed = _run(bundle, cfg, tmp / "resumed")
    assert encoded and min(r.start for r in encoded) > 0  # the first two shards were reused
    assert _tables(resumed) == _tables(reference)


RUNNER = """
import sys, time, torch
torch.set_num_threads(1)
import precompute.store_build.job as job
from explorer.bundle import build_bundle, custom_spec
from precompute.store_build.accumulate import ReduceConfig
real = job.save_shard
def slow_save(*args):  # gives the test time to kill between and inside shards
    time.sleep(0.15)
    real(*args)
    time.sleep(0.15)
job.save_shard = slow_save
model, sae, corpus, out = sys.argv[1:5]
bundle = build_bundle(custom_spec(model, sae, [1, 2]), device="cpu", dtype="float32")
cfg = job.RunConfig(corpus=corpus, tokens=1200, context_size=16, batch_windows=8,
                    shard_tokens=150, reduce=ReduceConfig(top_k=5, n_bins=10, n_intervals=3,
                    per_interval=2, before=4, after=2))
job.Job(cfg, bundle, __import__("pathlib").Path(out), bundle_meta={"model": "tiny"}).run()
"""


@pytest.mark.parametrize("kill_after", [1, 3])
def test_sigkill_then_resume_equals_an_uninterrupted_run(
    tmp_path: Path, gemma3_hf, tokenizer, random_saes, kill_after: int
) -> None:
    """A real process is SIGKILLed mid-run; the resumed run's store equals a clean run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from explorer.bundle import build_bundle, custom_spec

    model_dir = tmp_path / "model"
    gemma3_hf.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    for layer, path in random_saes.items():
        path.rename(tmp_path / f"sae_layer{layer}")
    sae = str(tmp_path / "sae_layer{layer}")
    corpus = str(write_word_corpus(tmp_path / "c.jsonl"))
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(model_dir), sae, corpus, str(out)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    work = tmp_path / "killed.work"
    deadline = time.monotonic() + 120
    while len(list(work.glob("shard-*.npz"))) < kill_after and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    time.sleep(random.Random(kill_after).uniform(0.0, 0.3))  # inside or between shard writes
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    shards_at_kill = len(list(work.glob("shard-*.npz")))
    assert kill_after <= shards_at_kill
    assert not out.exists()  # a killed run leaves no store
    stamps = {p.name: p.stat().st_mtime_ns for p in work.glob("shard-*.npz")}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic as the killed process
    try:
        from precompute.store_build.accumulate import ReduceConfig as RC

        bundle = build_bundle(
            custom_spec(str(model_dir), sae, [1, 2]), device="cpu", dtype="float32"
        )
        cfg = RunConfig(
            corpus=corpus,
            tokens=1200,
            context_size=16,
            batch_windows=8,
            shard_tokens=150,
            reduce=RC(top_k=5, n_bins=10, n_intervals=3, per_interval=2, before=4, after=2),
        )
        resumed = _run(bundle, cfg, out)
        clean = _run(bundle, cfg, tmp_path / "clean")
    finally:
        torch.set_num_threads(threads)
    assert Store.open(resumed).layers == (1, 2)
    kept = [n for n, t in stamps.items() if (work / n).stat().st_mtime_ns == t]
    assert len(kept) == len(stamps)  # the killed run's finished shards were reused, not redone
    assert _tables(resumed) == _tables(clean)


# ------------------------------------------------------------------------- several sources


@pytest.fixture
def two_source_parts(job_parts, gemma3_hf, tokenizer, random_saes):
    """The tiny Gemma 3 with random SAEs on layers 1 and 2 and random JumpReLU transcoders on
    all four layers (about 3% of their features firing on a token)."""
    from circuits_helpers import make_transcoders

    _, cfg, tmp = job_parts
    make_transcoders(tmp / "tc", 32, 4, width=40, thresholds=(1.8, 2.2))
    tcs = {n: tmp / "tc" / f"tc{n}" for n in range(4)}
    bundle = tiny_bundle(gemma3_hf, tokenizer, random_saes, transcoder_dirs=tcs)
    return bundle, cfg, tmp


def _dense_codes(bundle, table, hook: str, encode) -> np.ndarray:
    """Brute force: every window alone through the whole model, dense codes, BOS dropped."""
    dense = []
    for w in range(len(table.window_start)):
        s = int(table.window_start[w])
        e = int(table.window_end[w])
        ids = torch.tensor([table.token_ids[s:e].astype(np.int64)])
        with torch.no_grad():
            _, cache = bundle.model.run_with_cache(ids)
            codes = encode(cache[hook][0])
        dense.append(codes[~torch.from_numpy(table.special[s:e])].numpy())
    return np.concatenate(dense)


def test_both_sources_in_one_pass_equal_brute_force_and_a_one_source_run(
    two_source_parts,
) -> None:
    from dataclasses import replace

    from explorer.store.schema import feature_name

    bundle, cfg, tmp = two_source_parts
    both = _run(bundle, cfg, tmp / "both")
    root = Store.open(both)
    assert root.sources == ("res", "transcoder")
    tc = root.source("tc")
    assert tc is root.source("transcoder") and tc.layers == (0, 1, 2, 3)
    assert root.layers == (1, 2)
    table = collect_windows(cfg, bundle.tokenizer)
    for layer in (0, 3):
        acts = _dense_codes(
            bundle, table, f"blocks.{layer}.ln2.hook_normalized", bundle.transcoder(layer).encode
        )
        feats = tc.features(layer)
        n_fires = (acts > 0).sum(0)
        assert 0 < n_fires.sum() and feats["n_fires"].tolist() == n_fires.tolist()
        np.testing.assert_allclose(feats["max_act"], acts.max(0), rtol=1e-5)
        f = int(np.argmax(n_fires))
        record = tc.feature(layer, f)
        assert record.source == "transcoder" and feature_name(layer, f, "transcoder") == (
            f"L{layer} tc #{f}"
        )
        want = np.sort(acts[:, f][acts[:, f] > 0])[::-1][:5]
        got = [ex.acts[ex.max_pos] for ex in record.top_examples]
        np.testing.assert_allclose(got, want, rtol=1e-3)
        assert tc.descriptions(layer)[f]  # every live feature is described
    # the residual SAEs' tables are those of a run without transcoders, byte for byte in content
    res_only = _run(bundle, replace(cfg, sources=("res",)), tmp / "res")
    tables = _tables(both)
    assert {k: v for k, v in tables.items() if not k.startswith("transcoder/")} == _tables(res_only)
    assert any(k.startswith("transcoder/descriptions/") for k in tables)
    entry = root.manifest.layer(2, "transcoder")
    assert entry is not None and entry.hook_name == "blocks.2.ln2.hook_normalized"
    assert entry.d_sae == 40


def test_a_store_without_transcoders_reads_and_refuses_the_source_in_one_line(
    job_parts,
) -> None:
    """A store written before sources (the residual SAEs only) opens as it did; asking it for
    transcoder features is one line naming what it holds."""
    bundle, cfg, tmp = job_parts
    store = Store.open(_run(bundle, cfg, tmp / "old"))
    assert store.sources == ("res",) and store.source("res") is store
    from explorer.store import StoreError

    with pytest.raises(StoreError, match=r"has no transcoder features \(its sources: res\)"):
        store.source("tc")
    with pytest.raises(StoreError, match="unknown source 'mlp'"):
        store.source("mlp")


def test_transcoder_shards_resume_and_a_source_change_recomputes_them(two_source_parts) -> None:
    from dataclasses import replace

    bundle, cfg, tmp = two_source_parts
    out = tmp / "store"
    _run(bundle, replace(cfg, sources=("res",)), out)
    first = sorted((tmp / "store.work").glob("shard-*.npz"))
    with np.load(first[0]) as z:
        assert "pos_1" in z and "pos_tc0" not in z
    _run(bundle, cfg, out)  # the fingerprint names the units: every shard is recomputed
    with np.load(first[0]) as z:
        assert "pos_1" in z and "pos_tc0" in z and "fptr_tc3" in z
    assert Store.open(out).source("transcoder").layers == (0, 1, 2, 3)
