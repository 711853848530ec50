"""Time and peak memory of one attribution graph on a seeded random Gemma 3 model.

Run by hand (not a test)::

    python bench/bench_circuits.py --size tiny
    python bench/bench_circuits.py --size mid [--max-feature-nodes 1024] [--batch-size 32]

``tiny`` is the tests' model (4 layers, d_model 32, 48-feature transcoders, about a fifth of
them firing); ``mid`` is shaped like Gemma 3 270M but for the vocabulary (18 layers, d_model 640,
4 heads of 256, one KV head, MLP 2048, vocabulary 4,096) with 2,048-feature random JumpReLU
transcoders on every layer, about 3% firing (thresholds 1.8 to 2.2 on unit-norm encoder rows).
The prompt is ``--tokens`` tokens, BOS first. One warm-up graph, then ``--runs`` timed ones
(``attribute`` + ``prune`` + ``to_json``): wall and CPU seconds (the process's user + system
time: on a machine shared with other jobs the wall time varies with their load). Peak memory:
the process's resident high-water mark (VmHWM) during the timed runs, reset just before them
(Linux ``/proc/self/clear_refs``), and the resident size before them; the model and transcoders
are built before.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


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
    parser.add_argument("--size", choices=["tiny", "mid"], default="tiny")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--max-feature-nodes", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from circuits_helpers import make_transcoders
    from helpers import make_gemma3, make_tokenizer
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from explorer.circuits import attribute, prune, to_json
    from explorer.hooked import hooked_from_hf

    torch.set_num_threads(args.threads)
    tok = make_tokenizer()
    where = Path(tempfile.mkdtemp(prefix="bench-circuits-"))
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

    def one() -> tuple[float, float, int, int, int]:
        t, cpu = time.perf_counter(), _cpu_s()
        graph = attribute(
            model, tcs, ids, max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size
        )
        data = to_json(prune(graph), "bench")
        wall = time.perf_counter() - t
        return wall, _cpu_s() - cpu, graph.n_active, graph.n_features, len(data["links"])

    one()  # warm-up
    rss_before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    runs = [one() for _ in range(args.runs)]
    peak = _rss_kib("VmHWM")
    seconds, cpu_seconds = [r[0] for r in runs], [r[1] for r in runs]
    _, _, n_active, n_features, n_links = runs[-1]
    print(f"model {args.size}: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
          f"vocab {model.cfg.d_vocab}, transcoders {tcs[0].W_dec.shape[0]} wide; "
          f"{len(ids)} tokens; torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"active features {n_active}, feature nodes {n_features} (cap {args.max_feature_nodes}), "
          f"batch {args.batch_size}, links kept {n_links}")  # fmt: skip
    print(f"graph (attribute + prune + to_json): median {statistics.median(seconds):.2f} s "
          f"(runs {', '.join(f'{s:.2f}' for s in seconds)}); "
          f"CPU time median {statistics.median(cpu_seconds):.2f} s")  # fmt: skip
    print(f"resident before {rss_before / 1024:.0f} MiB, peak during runs {peak / 1024:.0f} MiB "
          f"(+{(peak - rss_before) / 1024:.0f} MiB)")  # fmt: skip


if __name__ == "__main__":
    main()
