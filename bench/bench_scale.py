"""Gemma Scope-shaped, end to end, measured: precompute on a random-weight model of Gemma 2 2B's
exact shape with 26 JumpReLU SAEs of width 16,384 (L0 about 70; ``bench/gemma2_shape.py``), then
the app on the resulting 425,984-feature store (``bench/bench_scale_app.py``).

    python bench/bench_scale.py [--tokens 2048] [--batch-windows 8] [--work /tmp/gse-scale]
        [--app]                                       # this CPU: fp32, blocks share weights
    python bench/bench_scale.py --device cuda --dtype bfloat16 --distinct-blocks \\
        --tokens 262144 --batch-windows 64 --weights exact --gpus 8    # a GPU machine

Prints: precompute (``precompute.store_build.job.Job``'s encode: every SAE, sparse records, shards
written) tokens/s vs the bare forward pass to layer 25 on the same batches, and their ratio with
the FLOP ceiling; peak RSS; shard bytes per token; the reduce's time; store bytes per feature; and
the projected wall time of Neuronpedia's 24,576 x 128 tokens on 1 and N GPUs (formula printed).

``--weights sampled`` (the CPU default) computes the per-feature properties that come from the
weights alone on a sample, because the exact ones cost 19 TFLOP a layer (``W_dec @ W_U``, 16,384
x 2,304 x 256,000: about 6 minutes a layer on this CPU, 2.6 hours for 26): logit effects over the
first ``--sample-vocab`` token ids and decoder neighbours within blocks of 1,024 features. The
store has the same shape and size; the exact cost is timed on a slice (256 features, 1,024
neighbour rows) and the exact reduce time is projected from it. ``--weights exact`` does it all.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

NEURONPEDIA_TOKENS = 24_576 * 128


def flop_ceiling(cfg: Any, n_layers: int, width: int) -> tuple[float, float, float]:
    """FLOPs a token of the bare forward (matmuls of every block, to the last layer) and of the
    SAE encoders, and the best ratio bare / (bare + SAEs) that any implementation can reach."""
    d, h, kv, dh, m = cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head, cfg.d_mlp
    block = 2 * (d * h * dh * 2 + d * kv * dh * 2 + 3 * d * m)  # Q, O, K, V, gate/in/out
    bare = n_layers * block
    sae = n_layers * 2 * d * width
    return bare, sae, bare / (bare + sae)


def sampled_weights(vocab: int) -> tuple[Any, Any]:
    """Cheap stand-ins for precompute.store_build.features' exact logit effects and neighbours:
    the same output shapes, over the first ``vocab`` token ids and within 1,024-feature blocks."""
    from precompute.store_build import features

    def logit_effects(bundle: Any, sae: Any, k: int = 10) -> tuple[np.ndarray, ...]:
        w_u = bundle.model.W_U.detach()[:, :vocab].float()
        outs: list[list[torch.Tensor]] = [[], [], [], []]
        with torch.inference_mode():
            for chunk in sae.W_dec.detach().float().split(1024):
                logits = chunk @ w_u
                for j, largest in ((0, True), (2, False)):
                    v, i = logits.topk(k, dim=-1, largest=largest)
                    outs[j].append(i)
                    outs[j + 1].append(v)
        return tuple(torch.cat(x).numpy() for x in outs)

    def neighbours(sae: Any, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        w = torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=-1)
        idx, val = [], []
        with torch.inference_mode():
            for a in range(0, w.shape[0], 1024):
                blk = w[a : a + 1024]
                sim = blk @ blk.T
                sim.fill_diagonal_(-2.0)
                v, i = sim.topk(k, dim=-1)
                idx.append(i + a)
                val.append(v)
        return torch.cat(idx).numpy().astype(np.int32), torch.cat(val).numpy()

    assert features.logit_effects.__name__ == "logit_effects"
    return logit_effects, neighbours


def exact_weights_seconds(bundle: Any, layer: int) -> tuple[float, float]:
    """Seconds per layer of the exact logit effects and neighbours, timed on a slice (256
    features of the full vocabulary; 1,024 rows against all features) and scaled by width."""
    sae = bundle.sae(layer)
    width = int(sae.cfg.d_sae)
    w_u = bundle.model.W_U.detach().float()
    w = torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=-1)
    with torch.inference_mode():
        t = time.perf_counter()
        logits = sae.W_dec.detach().float()[:256] @ w_u
        logits.topk(10, dim=-1)
        logits.topk(10, dim=-1, largest=False)
        t_logits = (time.perf_counter() - t) * width / 256
        del logits
        t = time.perf_counter()
        (w[:1024] @ w.T).topk(10, dim=-1)
        t_neigh = (time.perf_counter() - t) * width / 1024
    return t_logits, t_neigh


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--batch-windows", type=int, default=8)
    p.add_argument("--work", type=Path, default=Path("/tmp/gse-scale"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--distinct-blocks", action="store_true", help="26 distinct blocks")
    p.add_argument("--weights", choices=["sampled", "exact"], default="sampled")
    p.add_argument("--sample-vocab", type=int, default=2048)
    p.add_argument("--gpus", type=int, default=8, help="N of the projection to N GPUs")
    p.add_argument("--ray-efficiency", type=float, default=0.9)
    p.add_argument("--app", action="store_true", help="then measure the app on the store")
    p.add_argument(
        "--transcoders",
        action="store_true",
        help="a second source: 26 random transcoders of width 16k (Gemma Scope's "
        "gemma-scope-2b-pt-transcoders shape), encoded from the same forward pass",
    )
    args = p.parse_args()

    from gemma2_shape import SAE_WIDTH, build_gemma2_shape
    from memory import dir_bytes, peak_rss_gb, rss_gb

    import precompute.store_build.job as job_mod
    from explorer.store.schema import RES, TRANSCODER, Unit
    from precompute.store_build.job import Job, RunConfig, collect_windows, dictionary

    torch.manual_seed(0)
    t0 = time.perf_counter()
    shape = build_gemma2_shape(
        args.work,
        device=args.device,
        dtype=args.dtype,
        shared_blocks=not args.distinct_blocks,
        max_saes=26,
        calibration_tokens=1024,
        transcoders=args.transcoders,
    )
    bundle = shape.bundle
    model_params = sum(p.numel() for p in bundle.model.parameters())
    layers = list(bundle.layers)
    units: list[Unit] = [(RES, n) for n in layers]
    units += [(TRANSCODER, n) for n in bundle.spec.transcoder_layers]
    for unit in units:
        dictionary(bundle, unit)  # all resident during the encode, as a precompute run holds them
    build_s = time.perf_counter() - t0
    l0 = np.mean(list(shape.calibration_l0.values()) or [np.nan])
    print(
        f"built in {build_s:.0f} s: {len(layers)} layers, d_model {bundle.model.cfg.d_model}, "
        f"vocab {bundle.model.cfg.d_vocab}, {model_params / 1e9:.2f} B parameters held "
        f"({'distinct' if args.distinct_blocks else 'shared'} blocks), {len(layers)} SAEs x "
        f"{SAE_WIDTH} + {len(units) - len(layers)} transcoders x {SAE_WIDTH}; calibration L0 "
        f"{l0:.1f}; RSS {rss_gb():.1f} GB; torch threads "
        f"{torch.get_num_threads()}; {args.device} {args.dtype}"
    )

    cfg = RunConfig(
        tokens=args.tokens, batch_windows=args.batch_windows, reduce_memory_mb=256.0, seed=0
    )
    table = collect_windows(cfg, bundle.tokenizer)
    n_windows = len(table.window_start)
    batches = [
        range(a, min(a + args.batch_windows, n_windows))
        for a in range(0, n_windows, args.batch_windows)
    ]
    stop = max(layers) + 1
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def bare(windows: range) -> None:
        s = table.window_start[windows.start : windows.stop]
        e = table.window_end[windows.start : windows.stop]
        ids = torch.zeros((len(s), int((e - s).max())), dtype=torch.long)
        for row, (a, b) in enumerate(zip(s, e, strict=True)):
            ids[row, : b - a] = torch.from_numpy(table.token_ids[a:b].astype(np.int64))
        with torch.inference_mode():
            bundle.model(ids.to(bundle.device), stop_at_layer=stop, return_type=None)

    def encode(windows: range) -> None:
        job_mod.encode_batch(bundle, table, windows, units)

    # Interleaved, batch by batch, so that other load on the machine hits both sides alike.
    bare(batches[0])  # warm-up
    encode(batches[0])
    t_bare = t_enc = 0.0
    for b in batches:
        for fn, side in ((bare, "bare"), (encode, "encode")):
            sync()
            t = time.perf_counter()
            fn(b)
            sync()
            if side == "bare":
                t_bare += time.perf_counter() - t
            else:
                t_enc += time.perf_counter() - t
    n_tok = int(table.n_tokens)  # positions, BOS included: what both sides run
    out = args.work / "store"
    work = args.work / "store.work"
    for old in work.glob("shard-*.npz"):
        old.unlink()
    job = Job(cfg, bundle, out, work_dir=work, bundle_meta={"model": "gemma-2-2b-shape"})
    work.mkdir(parents=True, exist_ok=True)
    job.encode(table, work)
    sync()
    t_pre = job.timing["encode_s"]
    bare_flops, sae_flops, _ = flop_ceiling(bundle.model.cfg, len(layers), SAE_WIDTH)
    sae_flops *= len(units) / len(layers)  # a transcoder's encoder costs an SAE's
    ceiling = bare_flops / (bare_flops + sae_flops)
    shard_bytes = dir_bytes(work, "shard-*.npz")
    print(
        f"{n_tok} positions in {len(batches)} batches of {args.batch_windows} x 128 (each side "
        "timed batch by batch, interleaved):\n"
        f"  bare forward to layer {stop - 1}: {n_tok / t_bare:.1f} tok/s ({t_bare:.1f} s)\n"
        f"  precompute encode ({len(units)} dictionaries, sparse records): "
        f"{n_tok / t_enc:.1f} tok/s ({t_enc:.1f} s)\n"
        f"  ratio precompute / bare: {t_bare / t_enc:.2f} (target >= 0.75; FLOP ceiling "
        f"{bare_flops / 1e9:.2f} / ({bare_flops / 1e9:.2f} + {sae_flops / 1e9:.2f}) GFLOP a "
        f"token = {ceiling:.2f})\n"
        f"  the Job's encode (the same batches, shards written): {n_tok / t_pre:.1f} tok/s "
        f"({t_pre:.1f} s, ratio {t_bare / t_pre:.2f})\n"
        f"  shards: {shard_bytes / n_tok:.0f} bytes per token ({shard_bytes / 1e6:.1f} MB)\n"
        f"  peak RSS so far {peak_rss_gb():.1f} GB"
    )
    bundle._saes.clear()  # the reduce loads one layer at a time
    bundle._transcoders.clear()
    bundle.max_saes = 2
    gc.collect()
    if args.weights == "sampled":
        t_logits, t_neigh = exact_weights_seconds(bundle, layers[0])
        job_mod.logit_effects, job_mod.neighbours = sampled_weights(args.sample_vocab)
    t = time.perf_counter()
    job.reduce(table, work)
    t_reduce = time.perf_counter() - t
    store_bytes = dir_bytes(out)
    from explorer.store import Store

    root = Store.open(out)
    for source in root.sources:
        st = root.source(source)
        fires = [int(st.features(n, ["n_fires"])["n_fires"].sum()) for n in st.layers]
        store_l0 = np.array(fires) / int(st.manifest.tokens or 1)
        print(
            f"{source} L0 in the store: mean {store_l0.mean():.1f}, "
            f"per layer {store_l0.min():.0f}–{store_l0.max():.0f}"
        )
    n_features = len(units) * SAE_WIDTH
    parts = {
        name: dir_bytes(out, pattern)
        for name, pattern in (
            ("features", "features/*"),
            ("examples", "examples/*"),
            ("transcoder", "transcoder/*/*"),
            ("tokens+vocab", "*.parquet"),
        )
    }
    print(
        f"reduce ({args.weights} weight features): {t_reduce:.1f} s for {len(units)} layers; "
        f"peak RSS {peak_rss_gb():.1f} GB"
    )
    if args.weights == "sampled":
        # the sampled stand-ins' own time is not in the exact projection
        t_sampled = _time_sampled(bundle, layers[0], args.sample_vocab)
        exact = t_reduce + len(units) * (t_logits + t_neigh - t_sampled)
        print(
            f"  exact weight features, timed on a slice: logit effects {t_logits:.0f} s + "
            f"neighbours {t_neigh:.0f} s a layer; exact reduce projected: {t_reduce:.0f} + "
            f"{len(units)} x ({t_logits:.0f} + {t_neigh:.0f} - {t_sampled:.1f}) = {exact:.0f} s"
        )
        t_reduce = exact
    print(
        f"store: {store_bytes / 1e6:.1f} MB, {store_bytes / n_features:.0f} bytes per feature "
        f"over {n_features} features ("
        + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in parts.items())
        + f"); {n_tok} tokens"
    )
    rate = n_tok / t_pre  # the Job's own rate: shards included
    t1 = NEURONPEDIA_TOKENS / rate
    tn = NEURONPEDIA_TOKENS / (rate * args.gpus * args.ray_efficiency)
    print(
        f"projection to Neuronpedia's 24,576 x 128 = {NEURONPEDIA_TOKENS:,} tokens, 26 x 16k:\n"
        f"  wall(N) = tokens / (r x N x e) + reduce, r = {rate:.1f} tok/s measured here on "
        f"{args.device}, e = {args.ray_efficiency} (Ray scaling efficiency, assumed), reduce "
        f"= {t_reduce:.0f} s\n"
        f"  1 device: {t1 / 3600:.2f} h encode + {t_reduce / 3600:.2f} h reduce = "
        f"{(t1 + t_reduce) / 3600:.2f} h; {args.gpus} devices: {tn / 3600:.2f} h + "
        f"{t_reduce / 3600:.2f} h = {(tn + t_reduce) / 3600:.2f} h"
    )
    summary = {
        "device": args.device,
        "dtype": args.dtype,
        "tokens": n_tok,
        "bare_tok_s": n_tok / t_bare,
        "precompute_tok_s": rate,
        "ratio": t_bare / t_enc,
        "job_ratio": t_bare / t_pre,
        "flop_ceiling": ceiling,
        "shard_bytes_per_token": shard_bytes / n_tok,
        "reduce_s": t_reduce,
        "store_bytes_per_feature": store_bytes / n_features,
        "peak_rss_gb": peak_rss_gb(),
        "store_l0": float(store_l0.mean()),
        "transcoders": args.transcoders,
    }
    (args.work / "precompute.json").write_text(json.dumps(summary, indent=1))
    if args.app:
        from bench_scale_app import measure_app

        bundle.max_saes = 8
        measure_app(bundle, out)


def _time_sampled(bundle: Any, layer: int, vocab: int) -> float:
    logit_effects, neighbours = sampled_weights(vocab)
    t = time.perf_counter()
    logit_effects(bundle, bundle.sae(layer))
    neighbours(bundle.sae(layer))
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
