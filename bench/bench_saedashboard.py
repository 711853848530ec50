"""Our precompute vs SAEDashboard (PyPI ``sae-dashboard`` 0.8.0): same model, layer, tokens.

Run by hand (not a test). The two tools cannot share a virtual environment (SAEDashboard pins
``transformer-lens<3`` and ``transformers<4.57``; we need 3.x and 5.x), so the script has modes,
each run by the interpreter of its side, talking through files in ``--work-dir``::

    # 1. ours (this project's venv): picks the windows, writes tokens.npy, runs the precompute
    python bench/bench_saedashboard.py ours --work-dir /tmp/bench-sd --windows 64
    # 2. SAEDashboard (a venv with sae-dashboard==0.8.0): both runners on tokens.npy
    SD_PYTHON bench/bench_saedashboard.py saedashboard --work-dir /tmp/bench-sd --feature-batches 4
    # 3. either venv: speed-ups and top-example agreement
    python bench/bench_saedashboard.py compare --work-dir /tmp/bench-sd
    # or all three in a row, from this project's venv (SD_PYTHON: the other venv's python):
    python bench/bench_saedashboard.py all --sd-python SD_PYTHON --feature-batches 4

What each side does, on the first ``--windows`` full (128-token, BOS-prefixed) windows of the
default corpus in the precompute run's own order (``precompute.store_build.job.collect_windows``),
with the embedded Gemma 3 270M and our layer-9 SAE, ``torch.set_num_threads(--threads)``:

- ``ours``: ``Job.encode`` (one forward per 32 windows, SAE, sparse records) then ``Job.reduce``
  (statistics, top-20 and interval examples, logit effects, decoder neighbours, store written),
  timed separately. Model and SAE loading are not timed (on either side).
- ``saedashboard``, ``default`` runner: ``SaeVisRunner(SaeVisConfig(hook_point, features=all
  4096, minibatch_size_features=256, minibatch_size_tokens=32, ignore_tokens={pad, bos, eos}))
  .run(sae, model, tokens)``: one forward pass over all tokens per 256-feature batch.
- ``saedashboard``, ``neuronpedia`` runner: ``NeuronpediaRunner(NeuronpediaRunnerConfig(...,
  from_local_sae=True)).run()`` with its own defaults (128 features a batch, 32 prompts a
  forward pass, top 20, 5 quantiles of 5). It caches the model activations to disk during the
  first feature batch and reads them back in every later one; it is run twice: a cold pass
  (empty cache) and a warm pass (all activations cached; only the batch JSONs are deleted).
  Two shortcuts, both outside the timed ``run()``: the runner's model loader is replaced by the
  same model object the default runner gets (transformer-lens cannot resolve our SAE's
  ``model_name`` offline), and its token source (a streamed HF dataset) by the file it reads
  first when present, ``tokens_<n_prompts>.pt`` in its output directory, holding our windows.
- Both SAEDashboard runners call ``sae.fold_W_dec_norm()``; our decoder rows have norm
  1 +- 1e-3 (bf16), so their activations are ours times that norm.

``--feature-batches K`` (``--np-feature-batches K`` for the Neuronpedia runner) runs only the
first K feature batches (K x 256 features for the default runner, K x 128 for the other) and
extrapolates linearly to all 4096 (every batch does the same work, see ``batch_s`` and
``warm_batch_s`` in the JSON; the Neuronpedia cold pass is extrapolated as its first batch, which
does the forward passes and writes the cache, plus the warm per-batch time for the rest); the
report says so. Use it for the default runner below ~32 GB: its memory grows ~1.4 GB per
256-feature batch (~36 s each on 8,192 tokens, 2 threads); the Neuronpedia runner's stays flat
(~5 GB; ~14 s per 128-feature batch, cached), so it can run all 32 batches.

``GSE_CACHE_DIR``: the embedded model's cache (``ours``); the ``saedashboard`` mode sets
``HF_HUB_OFFLINE=1``. ``--work-dir`` holds ``tokens.npy`` ([W, 128] int64, BOS first),
``check.npz``, ``ours*.json/npz``, ``sd_*.json/npz`` and ``report.json``.

``compare`` prints: seconds and features/s of each tool, the speed-ups ours vs the default runner
(target >= 5x) and ours vs the Neuronpedia runner with cached activations (target > 1x), the
check that both sides compute the same residuals and SAE codes, and top-example agreement on a
seeded sample of live features: SAEDashboard's maximum vs our ``max_act`` (relative 1e-2) and the
share of our top-20 (window, position) pairs found in its top-20. The default runner never picks
a top example in the first 6 or last 5 positions of a sequence (its ``buffer=(5, 5)``), so for
it the share is also given over our examples at positions it can pick.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

LAYER = 9
HOOK = f"blocks.{LAYER}.hook_resid_post"
CONTEXT = 128
BATCH_WINDOWS = 32
TL_NAME = "google/gemma-3-270m"
ROOT = Path(__file__).resolve().parent.parent
SAE_DIR = ROOT / "assets" / "saes" / f"layer_{LAYER}"
DEFAULT_BUFFER = (5, 5)  # SAEDashboard's SequencesConfig default


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    torch.manual_seed(0)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _full_windows(tokenizer: Any, n_windows: int) -> tuple[Any, int]:
    """The run's first ``n_windows`` windows of exactly ``CONTEXT`` tokens, as a TokenTable
    (plus how many of the run's windows were scanned to find them).

    Shorter windows (a document's tail) are skipped so that both tools see one ``[W, 128]``
    tensor with no padding; our job then runs on exactly this table.
    """
    from precompute.store_build.job import RunConfig, collect_windows
    from precompute.store_build.records import TokenTable

    tokens = n_windows * CONTEXT * 2
    while True:
        table = collect_windows(RunConfig(tokens=tokens, context_size=CONTEXT), tokenizer)
        lengths = table.window_end - table.window_start
        full = np.flatnonzero(lengths == CONTEXT)[:n_windows]
        if len(full) == n_windows or tokens > 10**8:
            break
        tokens *= 2
    if len(full) < n_windows:
        raise SystemExit(f"the corpus has only {len(full)} full windows")
    ids = np.stack([table.token_ids[table.window_start[w] : table.window_end[w]] for w in full])
    flat = ids.reshape(-1).astype(np.int32)
    special = np.array(sorted(tokenizer.all_special_ids), dtype=np.int32)
    return TokenTable(
        token_ids=flat,
        window=np.repeat(np.arange(n_windows, dtype=np.int32), CONTEXT),
        special=np.isin(flat, special),
        window_start=np.arange(n_windows, dtype=np.int64) * CONTEXT,
        window_doc=[table.window_doc[w] for w in full],
        window_offset=table.window_offset[full],
    ), int(full[-1]) + 1


def run_ours(work: Path, n_windows: int, threads: int, check_windows: int) -> None:
    """Pick the windows, write tokens.npy and check.npz, time our job, write ours.json."""
    import pyarrow.parquet as pq
    import torch

    from explorer.bundle import build_bundle, preset
    from explorer.encode import residuals
    from explorer.gguf_model import embedded_model_dir
    from explorer.store import examples_path, features_path
    from precompute.store_build.job import Job, RunConfig, bundle_meta

    _threads(threads)
    work.mkdir(parents=True, exist_ok=True)
    bundle = build_bundle(preset("default"), device="cpu", dtype="float32")
    sae = bundle.sae(LAYER)
    table, span = _full_windows(bundle.tokenizer, n_windows)
    ids = table.token_ids.reshape(n_windows, CONTEXT).astype(np.int64)
    np.save(work / "tokens.npy", ids)

    # reference residuals and codes for the other side's equivalence check (BOS included)
    check = torch.from_numpy(ids[:check_windows])
    resid = residuals(bundle, check, [LAYER])[LAYER]
    with torch.inference_mode():
        codes = sae.encode(resid).float()
    np.savez(
        work / "check.npz", tokens=ids[:check_windows], resid=resid.numpy(), acts=codes.numpy()
    )

    store, shards = work / "ours-store", work / "ours-work"
    for d in (store, shards):
        shutil.rmtree(d, ignore_errors=True)
    shards.mkdir(parents=True)
    cfg = RunConfig(
        tokens=table.n_tokens, layers=(LAYER,), context_size=CONTEXT, batch_windows=BATCH_WINDOWS
    )
    job = Job(cfg, bundle, store, work_dir=shards, bundle_meta=bundle_meta(bundle))
    residuals(bundle, check[:1], [LAYER])  # warm-up, as on the other side
    t0 = time.perf_counter()
    job.encode(table, shards)
    t1 = time.perf_counter()
    job.reduce(table, shards)
    t2 = time.perf_counter()

    feats = pq.read_table(store / features_path(LAYER)).to_pandas()
    ex = pq.read_table(store / examples_path(LAYER)).to_pandas()
    ex = ex[ex["group"] == "top"]
    centre = []
    for mp, apos, aval in zip(ex["max_pos"], ex["act_pos"], ex["act_val"], strict=True):
        centre.append(float(aval[list(apos).index(mp)]))
    np.savez(
        work / "ours_top.npz",
        max_act=feats["max_act"].to_numpy(np.float32),
        n_fires=feats["n_fires"].to_numpy(np.int64),
        feature=ex["feature"].to_numpy(np.int32),
        window=ex["window"].to_numpy(np.int32),
        pos=(ex["start"].to_numpy(np.int64) + ex["max_pos"].to_numpy(np.int64) + 1),
        act=np.asarray(centre, np.float32),
    )
    _write_json(
        work / "ours.json",
        {
            "windows": n_windows,
            "context_size": CONTEXT,
            "tokens_total": int(ids.size),
            "tokens_counted": table.n_tokens,
            "windows_scanned": span,
            "features": int(sae.cfg.d_sae),
            "threads": torch.get_num_threads(),
            "encode_s": round(t1 - t0, 2),
            "reduce_s": round(t2 - t1, 2),
            "total_s": round(t2 - t0, 2),
            "job_timing": job.timing,
            "model_dir": str(embedded_model_dir()),
            "sae_dir": str(SAE_DIR),
            "special_ids": sorted(int(t) for t in bundle.tokenizer.all_special_ids),
        },
    )
    print(f"ours: encode {t1 - t0:.1f} s, reduce {t2 - t1:.1f} s, total {t2 - t0:.1f} s")


def _load_tl_model(model_dir: str) -> Any:
    """transformer-lens 2.x's own Gemma 3 270M config, weights from the embedded model dir."""
    import torch
    from sae_lens import HookedSAETransformer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model = HookedSAETransformer.from_pretrained_no_processing(
        TL_NAME, hf_model=hf, tokenizer=tok, device="cpu", dtype=torch.float32
    )
    model.eval()
    return model


def _load_sae() -> Any:
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(SAE_DIR), device="cpu", dtype="float32")
    sae.eval()
    return sae


def _check(work: Path, model: Any, sae: Any) -> dict[str, float]:
    """Our residuals and codes vs this side's, on the first windows (BOS included)."""
    import torch

    ref = np.load(work / "check.npz")
    with torch.inference_mode():
        _, cache = model.run_with_cache(
            torch.from_numpy(ref["tokens"]), names_filter=HOOK, stop_at_layer=LAYER + 1
        )
        resid = cache[HOOK]
        acts = sae.encode(resid).float().numpy()
    ours = ref["acts"]
    body = (slice(None), slice(1, None))  # without BOS
    return {
        "resid_max_abs_diff": float(np.abs(resid.numpy() - ref["resid"])[body].max()),
        "resid_max_abs": float(np.abs(ref["resid"])[body].max()),
        "acts_max_abs_diff": float(np.abs(acts - ours)[body].max()),
        "acts_max": float(ours[body].max()),
        "fire_pattern_mismatches": int(((acts > 0) != (ours > 0))[body].sum()),
        "fires": int((ours > 0)[body].sum()),
        "positions": int(ours[body].shape[0] * ours[body].shape[1]),
    }


def _top_rows(
    feature_data_dict: dict[int, Any], buffered: bool
) -> list[tuple[int, int, int, float]]:
    """``(feature, sequence, position, act)`` of each feature's top group (position with BOS)."""
    rows = []
    for feat, fd in feature_data_dict.items():
        top = fd.sequence_data.seq_group_data[0]
        for seq in top.seq_data:
            q = int(seq.qualifying_token_index)
            # coloring starts one after the buffer's first index (see SequenceDataGenerator)
            at = DEFAULT_BUFFER[0] if buffered else q - 1
            rows.append((int(feat), int(seq.original_index), q, float(seq.feat_acts[at])))
    return rows


def _title_max(feature_data_dict: dict[int, Any]) -> dict[int, float]:
    """SAEDashboard's own per-feature maximum, from the top group's title (3 decimals)."""
    out = {}
    for feat, fd in feature_data_dict.items():
        title = fd.sequence_data.seq_group_data[0].title
        out[int(feat)] = float(title.split("=")[-1])
    return out


def _save_top(path: Path, rows: list[tuple[int, int, int, float]], title: dict[int, float]) -> None:
    a = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    feats = np.asarray(sorted(title), dtype=np.int32)
    np.savez(
        path,
        feature=a[:, 0].astype(np.int32),
        window=a[:, 1].astype(np.int32),
        pos=a[:, 2].astype(np.int64),
        act=a[:, 3].astype(np.float32),
        title_feature=feats,
        title_max=np.asarray([title[f] for f in feats], np.float32),
    )


def run_default(work: Path, model: Any, sae: Any, tokens: Any, batches: int | None) -> None:
    import torch
    from sae_dashboard.sae_vis_data import SaeVisConfig, SaeVisData
    from sae_dashboard.sae_vis_runner import SaeVisRunner

    n_feat = int(sae.cfg.d_sae)
    per = 256
    n_batches = -(-n_feat // per)
    run_batches = min(batches or n_batches, n_batches)
    tok = model.tokenizer
    cfg = SaeVisConfig(
        hook_point=HOOK,
        features=range(min(run_batches * per, n_feat)),
        minibatch_size_features=per,
        minibatch_size_tokens=BATCH_WINDOWS,
        device="cpu",
        ignore_tokens={tok.pad_token_id, tok.bos_token_id, tok.eos_token_id},
        verbose=True,
    )
    with torch.inference_mode():
        model(tokens[:1], stop_at_layer=LAYER + 1)  # warm-up, as on our side
    stamps: list[float] = []  # end of each feature batch (the runner merges it with update)
    merge = SaeVisData.update

    def stamped(self: Any, other: Any) -> None:
        merge(self, other)
        stamps.append(time.perf_counter())

    SaeVisData.update = stamped  # type: ignore[method-assign]
    t0 = time.perf_counter()
    data = SaeVisRunner(cfg).run(encoder=sae, model=model, tokens=tokens)
    seconds = time.perf_counter() - t0
    SaeVisData.update = merge  # type: ignore[method-assign]
    _save_top(
        work / "sd_default_top.npz",
        _top_rows(data.feature_data_dict, buffered=True),
        _title_max(data.feature_data_dict),
    )
    scale = n_batches / run_batches
    _write_json(
        work / "sd_default.json",
        {
            "runner": "SaeVisRunner",
            "feature_batches_run": run_batches,
            "feature_batches_total": n_batches,
            "features_run": len(cfg.features),  # type: ignore[arg-type]
            "measured_s": round(seconds, 2),
            "total_s": round(seconds * scale, 2),
            "extrapolated": run_batches < n_batches,
            "batch_s": [round(b - a, 2) for a, b in itertools.pairwise([t0, *stamps])],
            "minibatch_size_tokens": BATCH_WINDOWS,
            "buffer": list(DEFAULT_BUFFER),
        },
    )
    print(f"default runner: {seconds:.1f} s for {run_batches}/{n_batches} feature batches")


def run_neuronpedia(work: Path, model: Any, tokens: Any, batches: int | None) -> None:
    import torch
    from sae_dashboard.neuronpedia import neuronpedia_runner as npr
    from sae_dashboard.neuronpedia.neuronpedia_runner_config import NeuronpediaRunnerConfig

    out = work / "sd-neuronpedia"
    shutil.rmtree(out, ignore_errors=True)

    def use_our_model(self: Any) -> None:  # replaces NeuronpediaRunner._initialize_model
        self.model = model
        self.hook_name = self.sae.cfg.metadata.hook_name

    def no_dataset(self: Any) -> None:  # replaces _setup_activation_store (tokens come below)
        self.activations_store = None
        self.cached_activations_dir = out / "cached_activations"

    rows: list[tuple[int, int, int, float]] = []
    title: dict[int, float] = {}
    spent = [0.0]  # our extraction's seconds: subtracted from the runner's time
    stamps: list[float] = []  # when each feature batch's JSON was made
    convert = npr.NeuronpediaConverter.convert_to_np_json

    def keep_top(model_: Any, vis_data: Any, *rest: Any) -> str:
        t = time.perf_counter()
        rows.extend(_top_rows(vis_data.feature_data_dict, buffered=False))
        title.update(_title_max(vis_data.feature_data_dict))
        spent[0] += time.perf_counter() - t
        out = convert(model_, vis_data, *rest)
        stamps.append(time.perf_counter())
        return out

    npr.NeuronpediaRunner._initialize_model = use_our_model  # type: ignore[method-assign]
    npr.NeuronpediaRunner._setup_activation_store = no_dataset  # type: ignore[method-assign]
    npr.NeuronpediaConverter.convert_to_np_json = staticmethod(keep_top)  # type: ignore[method-assign]

    n_prompts = int(tokens.shape[0])
    cfg = NeuronpediaRunnerConfig(
        sae_set="gse-default",
        sae_path=str(SAE_DIR),
        from_local_sae=True,
        huggingface_dataset_path="default",  # never read: the tokens file is (see docstring)
        outputs_dir=str(out),
        n_prompts_total=n_prompts,
        n_tokens_in_prompt=int(tokens.shape[1]),
        sae_dtype="float32",
        model_dtype="float32",
        sae_device="cpu",
        model_device="cpu",
        activation_store_device="cpu",
        shuffle_tokens=False,
    )
    t0 = time.perf_counter()
    runner = npr.NeuronpediaRunner(cfg)
    setup_s = time.perf_counter() - t0
    n_batches = -(-int(runner.sae.cfg.d_sae) // cfg.n_features_at_a_time)
    run_batches = min(batches or n_batches, n_batches)
    if run_batches < n_batches:
        runner.cfg.end_batch = run_batches - 1
    torch.save(tokens.clone(), Path(runner.cfg.outputs_dir) / f"tokens_{n_prompts}.pt")

    def one_pass() -> tuple[float, list[float]]:
        for f in Path(runner.cfg.outputs_dir).glob("batch-*.json"):
            f.unlink()
        runner.activations_store = None  # run() deletes it
        rows.clear()
        title.clear()
        stamps.clear()
        spent[0] = 0.0
        t = time.perf_counter()
        runner.run()
        total = time.perf_counter() - t - spent[0]
        edges = [t, *stamps]
        return total, [b - a for a, b in itertools.pairwise(edges)]

    cold_s, cold_batches = one_pass()
    warm_s, warm_batches = one_pass()
    _save_top(work / "sd_neuronpedia_top.npz", rows, title)
    warm_per = warm_s / run_batches
    cold_total = cold_s
    if run_batches < n_batches:
        cold_total = cold_batches[0] + (n_batches - 1) * warm_per
    cache_dir = runner.cached_activations_dir
    _write_json(
        work / "sd_neuronpedia.json",
        {
            "runner": "NeuronpediaRunner",
            "feature_batches_run": run_batches,
            "feature_batches_total": n_batches,
            "n_features_at_a_time": cfg.n_features_at_a_time,
            "n_prompts_in_forward_pass": cfg.n_prompts_in_forward_pass,
            "setup_s": round(setup_s, 2),
            "cold_measured_s": round(cold_s, 2),
            "cold_first_batch_s": round(cold_batches[0], 2) if cold_batches else None,
            "cold_total_s": round(cold_total, 2),
            "warm_measured_s": round(warm_s, 2),
            "warm_batch_s": [round(x, 2) for x in warm_batches],
            "warm_total_s": round(warm_per * n_batches, 2),
            "extrapolated": run_batches < n_batches,
            "cache_mb": round(sum(f.stat().st_size for f in cache_dir.glob("*")) / 2**20, 1),
        },
    )
    print(
        f"neuronpedia runner: cold {cold_s:.1f} s, warm (cached) {warm_s:.1f} s "
        f"for {run_batches}/{n_batches} feature batches"
    )


def run_saedashboard(
    work: Path, runners: list[str], threads: int, batches: int | None, np_batches: int | None
) -> None:
    """Load model and SAE (untimed), check them against ours, run the chosen runners."""
    import torch

    _threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    meta = json.loads((work / "ours.json").read_text())
    tokens = torch.from_numpy(np.load(work / "tokens.npy"))
    model = _load_tl_model(meta["model_dir"])
    sae = _load_sae()
    check = _check(work, model, sae)
    _write_json(work / "sd_check.json", check)
    print("equivalence check:", json.dumps(check))
    if "default" in runners:
        run_default(work, model, sae, tokens, batches)
    if "neuronpedia" in runners:
        run_neuronpedia(work, model, tokens, np_batches)


def _agreement(
    ours: Any, theirs: Any, sample: np.ndarray, eligible: tuple[int, int] | None
) -> dict[str, Any]:
    """Max-value agreement and top-k overlap on ``sample`` features."""

    def key(w: np.ndarray, p: np.ndarray) -> np.ndarray:
        return w.astype(np.int64) * 1_000_000 + p

    pos_ok = theirs["act"] > 0
    their_keys: dict[int, set[int]] = {}
    their_best: dict[int, float] = {}
    for f, k, a in zip(
        theirs["feature"][pos_ok],
        key(theirs["window"][pos_ok], theirs["pos"][pos_ok]),
        theirs["act"][pos_ok],
        strict=True,
    ):
        their_keys.setdefault(int(f), set()).add(int(k))
        their_best[int(f)] = max(their_best.get(int(f), 0.0), float(a))
    title = dict(zip(theirs["title_feature"].tolist(), theirs["title_max"].tolist(), strict=True))
    found = total = found_el = total_el = 0
    max_ok = title_ok = max_n = 0
    worst = title_worst = 0.0
    for f in sample.tolist():
        mine = ours["feature"] == f
        keys = key(ours["window"][mine], ours["pos"][mine])
        acts = ours["act"][mine]
        hit = np.array([int(k) in their_keys.get(f, set()) for k in keys], dtype=bool)
        found, total = found + int(hit.sum()), total + len(keys)
        in_range = np.ones(len(keys), bool)
        if eligible is not None:
            p = ours["pos"][mine]
            in_range = (p >= eligible[0]) & (p < eligible[1])
        found_el, total_el = found_el + int(hit[in_range].sum()), total_el + int(in_range.sum())
        m = float(ours["max_act"][f])
        if f in title:
            title_ok += abs(title[f] - m) <= 1e-2 * m
            title_worst = max(title_worst, abs(title[f] - m) / m)
        # SAEDashboard's top-example max vs ours over the positions it can pick
        if in_range.any() and f in their_best:
            ref = float(acts[in_range].max())
            err = abs(their_best[f] - ref) / ref
            worst = max(worst, err)
            max_ok += err <= 1e-2
            max_n += 1
    out = {
        "features": len(sample),
        "title_max_within_1e-2": title_ok,
        "title_max_worst_rel_err": round(title_worst, 5),
        "top_example_max_within_1e-2": f"{max_ok}/{max_n}",
        "top_example_max_worst_rel_err": round(worst, 5),
        "our_topk_pairs_found": f"{found}/{total} ({found / max(total, 1):.1%})",
    }
    if eligible is not None:
        out["our_topk_pairs_found_at_eligible_positions"] = (
            f"{found_el}/{total_el} ({found_el / max(total_el, 1):.1%})"
        )
    return out


def compare(work: Path, n_sample: int, seed: int) -> dict[str, Any]:
    ours = json.loads((work / "ours.json").read_text())
    ours_top = np.load(work / "ours_top.npz")
    live = np.flatnonzero(ours_top["n_fires"] > 0)
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {
        "tokens": f"{ours['windows']} windows x {ours['context_size']} = {ours['tokens_total']}",
        "features": ours["features"],
        "live_features": len(live),
        "threads": ours["threads"],
        "ours": {k: ours[k] for k in ("encode_s", "reduce_s", "total_s")},
    }
    report["ours"]["features_per_s"] = round(ours["features"] / ours["total_s"], 1)
    if (work / "sd_check.json").is_file():
        report["equivalence"] = json.loads((work / "sd_check.json").read_text())
    for name, eligible in (("default", DEFAULT_BUFFER), ("neuronpedia", None)):
        path = work / f"sd_{name}.json"
        if not path.is_file():
            continue
        sd = json.loads(path.read_text())
        total = sd["total_s"] if name == "default" else sd["warm_total_s"]
        entry = dict(sd)
        entry["features_per_s"] = round(ours["features"] / total, 1)
        entry["speedup_ours_vs_this"] = round(total / ours["total_s"], 2)
        if name == "neuronpedia":
            entry["speedup_ours_vs_cold"] = round(sd["cold_total_s"] / ours["total_s"], 2)
        theirs = np.load(work / f"sd_{name}_top.npz")
        covered = np.intersect1d(live, theirs["title_feature"])
        sample = np.sort(rng.choice(covered, size=min(n_sample, len(covered)), replace=False))
        window = None
        if eligible is not None:
            window = (eligible[0] + 1, CONTEXT - eligible[1])
        entry["agreement"] = _agreement(ours_top, theirs, sample, window)
        report[f"saedashboard_{name}"] = entry
    return report


def _print_report(r: dict[str, Any]) -> None:
    print(f"tokens: {r['tokens']}; layer {LAYER}, {r['features']} features; threads {r['threads']}")
    o = r["ours"]
    print(
        f"ours:            encode {o['encode_s']} s + reduce {o['reduce_s']} s = "
        f"{o['total_s']} s ({o['features_per_s']} features/s)"
    )
    if "equivalence" in r:
        print(f"equivalence:     {json.dumps(r['equivalence'])}")
    if d := r.get("saedashboard_default"):
        extra = " (extrapolated)" if d["extrapolated"] else ""
        print(
            f"default runner:  {d['total_s']} s{extra} ({d['features_per_s']} features/s); "
            f"ours is {d['speedup_ours_vs_this']}x faster (target >= 5x)"
        )
        print(f"  agreement: {json.dumps(d['agreement'])}")
    if n := r.get("saedashboard_neuronpedia"):
        extra = " (extrapolated)" if n["extrapolated"] else ""
        print(
            f"neuronpedia:     cached {n['warm_total_s']} s{extra} "
            f"({n['features_per_s']} features/s), cold (caching pass) {n['cold_total_s']} s; "
            f"ours is {n['speedup_ours_vs_this']}x faster than cached (target > 1x), "
            f"{n['speedup_ours_vs_cold']}x than cold"
        )
        print(f"  agreement: {json.dumps(n['agreement'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    # fmt: off
    add("mode", choices=["ours", "saedashboard", "compare", "all"])
    add("--work-dir", type=Path, default=Path("/tmp/bench-saedashboard"))
    add("--windows", type=int, default=64, help="full 128-token windows")
    add("--threads", type=int, default=2)
    add("--check-windows", type=int, default=4)
    add("--runners", default="default,neuronpedia", help="SAEDashboard runners to time")
    add("--feature-batches", type=int, help="default runner: K batches, extrapolate")
    add("--np-feature-batches", type=int, help="the same for the Neuronpedia runner")
    add("--sample", type=int, default=200, help="live features compared")
    add("--seed", type=int, default=0)
    add("--sd-python", help="the SAEDashboard venv's python (mode all)")
    # fmt: on
    args = parser.parse_args()
    work = args.work_dir
    if args.mode == "ours":
        run_ours(work, args.windows, args.threads, args.check_windows)
    elif args.mode == "saedashboard":
        runners = args.runners.split(",")
        run_saedashboard(work, runners, args.threads, args.feature_batches, args.np_feature_batches)
    elif args.mode == "all":
        if not args.sd_python:
            raise SystemExit("mode all needs --sd-python")
        script = str(Path(__file__).resolve())
        common = ["--work-dir", str(work), "--threads", str(args.threads)]
        ours = [sys.executable, script, "ours", *common, "--windows", str(args.windows)]
        subprocess.run(ours, check=True)
        sd = [args.sd_python, script, "saedashboard", *common, "--runners", args.runners]
        for flag, value in (
            ("--feature-batches", args.feature_batches),
            ("--np-feature-batches", args.np_feature_batches),
        ):
            if value:
                sd += [flag, str(value)]
        subprocess.run(sd, check=True)
    if args.mode in ("compare", "all"):
        report = compare(work, args.sample, args.seed)
        _write_json(work / "report.json", report)
        _print_report(report)


if __name__ == "__main__":
    main()
