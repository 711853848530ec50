"""Time, peak memory, size and scores of one attribution graph.

Run by hand (not a test)::

    python bench/bench_graph.py --size default --tokens 16      # the embedded default
    python bench/bench_graph.py --size default --tokens 64
    python bench/bench_graph.py --size gemma2 --tokens 16       # Gemma 2 2B's shape, 26 x 16k
    python bench/bench_graph.py --size tiny | mid [--max-feature-nodes 1024] [--batch-size 32]

``default`` is the embedded Gemma 3 270M with its transcoders (``assets/transcoders``, all 18
layers) on the first ``--tokens`` tokens of a corpus document; ``gemma2`` the random-weight model
of Gemma 2 2B's shape (``bench/gemma2_shape.py``: shared blocks on a CPU, ``--distinct-blocks``
where memory allows) with 26 random JumpReLU transcoders of width 16,384 (L0 about 70, Gemma
Scope's ``gemma-scope-2b-pt-transcoders`` shape), on the same text. ``tiny`` is the tests' model
(4 layers, d_model 32, 48-feature transcoders, about a fifth of them firing); ``mid`` is shaped
like Gemma 3 270M but for the vocabulary (18 layers, d_model 640, vocabulary 4,096) with
2,048-feature random transcoders, about 3% firing, on random token ids.
The prompt is ``--tokens`` tokens, BOS first. Prints nodes and edges before and after pruning
and the replacement and completeness scores besides the time. ``--warmup`` untimed graphs
(one by default; ``--warmup 0`` where one graph takes many minutes), then ``--runs`` timed ones
(``attribute`` + ``prune`` + ``to_json``): wall and CPU seconds (the
process's user + system time: on a machine shared with other jobs the wall time varies with
their load). Peak memory:
the process's resident high-water mark (VmHWM) during the timed runs, reset just before them
(Linux ``/proc/self/clear_refs``), and the resident size before them; the model and transcoders
are built before. ``--flops`` counts one graph's floating-point operations (torch's
``FlopCounterMode``) and prints them instead of timing.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["tiny", "mid", "default", "gemma2"], default="tiny")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gse-scale"), help="gemma2's files")
    parser.add_argument("--distinct-blocks", action="store_true", help="gemma2: 26 distinct blocks")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--max-feature-nodes", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed graphs first (0 for gemma2 on a CPU)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--flops", action="store_true", help="count one graph's floating-point operations instead"
    )
    args = parser.parse_args()

    import torch

    from explorer.circuits import attribute, prune, to_json

    torch.set_num_threads(args.threads)
    if args.size in ("default", "gemma2"):
        model, tcs, ids = _real_size(args)
    else:
        model, tcs, ids = _random_size(args)

    def one() -> tuple[float, float, Any, Any]:
        t, cpu = time.perf_counter(), _cpu_s()
        graph = attribute(
            model, tcs, ids, max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size
        )
        pruned = prune(graph)
        data = to_json(pruned, "bench")
        wall = time.perf_counter() - t
        return wall, _cpu_s() - cpu, pruned, data

    if args.flops:
        _count_flops(model, tcs, ids, args)
        return
    for _ in range(args.warmup):
        one()
    rss_before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    runs = [one() for _ in range(args.runs)]
    peak = _rss_kib("VmHWM")
    seconds, cpu_seconds = [r[0] for r in runs], [r[1] for r in runs]
    _, _, graph, data = runs[-1]
    edges = int((graph.adjacency != 0).sum())
    assert graph.scores is not None and graph.node_mask is not None
    print(f"model {args.size}: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
          f"vocab {model.cfg.d_vocab}, transcoders {tcs[0].W_dec.shape[0]} wide; "
          f"{len(ids)} tokens; torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"active features {graph.n_active}, feature nodes {graph.n_features} "
          f"(cap {args.max_feature_nodes}), batch {args.batch_size}")  # fmt: skip
    print(f"before pruning: {graph.n_nodes} nodes, {edges} non-zero edges; after: "
          f"{len(data['nodes'])} nodes, {len(data['links'])} edges")  # fmt: skip
    print(f"scores: replacement {graph.scores.replacement:.3f}, completeness "
          f"{graph.scores.completeness:.3f}; top logit {graph.logit_tokens[0]!r} "
          f"p={float(graph.logit_probs[0]):.2f}")  # fmt: skip
    print(f"graph (attribute + prune + to_json): median {statistics.median(seconds):.2f} s "
          f"(runs {', '.join(f'{s:.2f}' for s in seconds)}); "
          f"CPU time median {statistics.median(cpu_seconds):.2f} s")  # fmt: skip
    print(f"resident before {rss_before / 1024:.0f} MiB, peak during runs {peak / 1024:.0f} MiB "
          f"(+{(peak - rss_before) / 1024:.0f} MiB)")  # fmt: skip


def _count_flops(model: Any, tcs: list[Any], ids: list[int], args: Any) -> None:
    """One graph (attribute + prune), counting the floating-point operations of every matrix
    multiplication of the forward pass and of each backward batch with the formulas of torch's
    ``FlopCounterMode`` (whose module tracker cannot run beside ``autograd.grad``). A GPU
    projection divides the count by a sustained rate (``docs/circuits.md``)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    from explorer.circuits import attribute, prune

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            count = flop_registry.get(func._overloadpacket)
            if count is not None:
                self.total += count(*args, **kwargs, out_val=out)
            return out

    batches: list[int] = []
    counter = Counter()
    t = time.perf_counter()
    with counter:
        g = attribute(
            model, tcs, ids, max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size,
            progress=lambda done, total: batches.append(done),
        )  # fmt: skip
        prune(g)
    wall = time.perf_counter() - t
    total = counter.total
    print(f"model {args.size}, {len(ids)} tokens, feature nodes {g.n_features} "
          f"(cap {args.max_feature_nodes}), {len(g.logit_tokens)} logits, batch "
          f"{args.batch_size}: {len(batches)} backward batches")  # fmt: skip
    print(f"floating-point operations: {total / 1e9:,.3f} GFLOP ({total / 1e9 / wall:.1f} "
          f"GFLOP/s over {wall:.1f} s, the counter's own overhead included)")  # fmt: skip


def _text_ids(tokenizer: Any, n: int) -> list[int]:
    """The first ``n`` tokens (BOS first) of the first corpus document long enough."""
    from precompute.corpus import run_documents

    for doc in run_documents("default", "heldout", 0):
        ids = list(tokenizer(doc.text, add_special_tokens=True).input_ids)
        if len(ids) >= n:
            return ids[:n]
    raise SystemExit(f"no corpus document has {n} tokens")


def _real_size(args: Any) -> tuple[Any, list[Any], list[int]]:
    """The embedded default (or Gemma 2 2B's shape) with a transcoder on every layer."""
    if args.size == "default":
        from explorer.bundle import build_bundle, preset

        bundle = build_bundle(preset("default"), device="cpu", dtype="float32")
        if not bundle.spec.transcoders:
            raise SystemExit("the default has no transcoders (assets/transcoders)")
    else:
        from gemma2_shape import build_gemma2_shape

        bundle = build_gemma2_shape(
            args.work, shared_blocks=not args.distinct_blocks, transcoders=True
        ).bundle
    n_layers = int(bundle.model.cfg.n_layers)
    bundle.max_saes = n_layers
    tcs = [bundle.transcoder(n) for n in range(n_layers)]
    return bundle.model, tcs, _text_ids(bundle.tokenizer, args.tokens)


def _random_size(args: Any) -> tuple[Any, list[Any], list[int]]:
    """The tests' tiny model, or the mid-sized random one, on random token ids."""
    import torch
    from circuits_helpers import make_transcoders
    from helpers import make_gemma3, make_tokenizer
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from explorer.hooked import hooked_from_hf

    tok = make_tokenizer()
    where = Path(tempfile.mkdtemp(prefix="bench-graph-"))
    if args.size == "tiny":
        hf = make_gemma3(len(tok))
        tcs = make_transcoders(where, 32, 4)
    else:
        cfg = Gemma3TextConfig(
            vocab_size=4096, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
            num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
            max_position_embeddings=1024, sliding_window=512, pad_token_id=0, eos_token_id=1,
            bos_token_id=2, layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3,
        )  # fmt: skip
        torch.manual_seed(0)
        hf = Gemma3ForCausalLM(cfg).eval()
        tcs = make_transcoders(where, 640, 18, width=2048, thresholds=(1.8, 2.2))
    model = hooked_from_hf(hf, tok)
    gen = torch.Generator().manual_seed(0)
    ids = [2, *torch.randint(4, len(tok), (args.tokens - 1,), generator=gen).tolist()]
    return model, tcs, ids


if __name__ == "__main__":
    main()
