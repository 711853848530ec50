"""``python -m precompute`` commands of the explanations room: ``explain``,
``neuronpedia-import``, ``neuronpedia-export`` and ``serve-llm`` (the ``_add_<name>`` /
``_cmd_<name>`` pattern of :mod:`precompute.__main__`, which lists :data:`EXPLAIN_COMMANDS`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

_SubParsers = Any  # argparse's _SubParsersAction is private


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
    from precompute.explain.neuronpedia import DEFAULT_CREATOR_ID, PUBLIC_ACTIVATIONS_USER_IDS

    p = sub.add_parser(
        "neuronpedia-export",
        help="write a store (features, activations, explanations) in Neuronpedia's format",
        description="Write one folder per layer, OUT/<model id>/<layer>-<source set>/, the "
        "layout Neuronpedia's importer reads (v1/<modelId>/<sourceId>/) and their SAEDashboard "
        "converter writes: model/sourceset/source/release.jsonl and features/, activations/, "
        "explanations/ batch-N.jsonl.gz (each feature's best explanation). Every creatorId and "
        "authorId is --creator-id, which must be a User of the target database. Explanation "
        "types and explainer models must exist there too (ExplanationType, "
        "ExplanationModelType); an explanation whose names Neuronpedia does not register is "
        "left out and counted, since one unknown name rejects a whole batch of their import. "
        "See docs/neuronpedia.md.",
    )
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--model-id", default=None, help="default: the store's model name")
    p.add_argument("--source-set", default=None, help="default: gse-<res|mlp|att|...>-<width>")
    p.add_argument("--explanations", type=Path, default=None, help="default: STORE's own")
    p.add_argument("--layers", type=int, nargs="+", default=[], help="default: all")
    p.add_argument("--creator", default="", help="creator name for the source set")
    p.add_argument(
        "--creator-id",
        default=DEFAULT_CREATOR_ID,
        help=f"the Neuronpedia User id written as every creatorId and authorId; it must exist "
        f"in the target database (default: {DEFAULT_CREATOR_ID}, the bot user of their "
        f"prisma/seed.ts). A feature page shows only activations by users in the webapp's "
        f"PUBLIC_ACTIVATIONS_USER_IDS (default: {','.join(PUBLIC_ACTIVATIONS_USER_IDS)}): "
        f"with another id, add it there",
    )
    p.add_argument(
        "--explanation-type",
        default=None,
        help="typeName of every exported explanation, an ExplanationType of the target "
        "database (default: our max-activating-examples method as eleuther_acts_top20, the "
        "same Delphi explainer; a Neuronpedia type kept as it is)",
    )
    p.add_argument(
        "--explanation-model",
        default=None,
        help="explanationModelName of every exported explanation, an ExplanationModelType of "
        "the target database (default: the explanation's model when Neuronpedia's repository "
        "names it, e.g. gpt-4o-mini; others are left out and counted)",
    )
    p.set_defaults(func=_cmd_neuronpedia_export)


def _cmd_neuronpedia_export(args: argparse.Namespace) -> int:
    from precompute.explain.neuronpedia import ExplanationNames, export_store

    report = export_store(
        args.store,
        args.out,
        model_id=args.model_id,
        source_set=args.source_set,
        explanations=args.explanations,
        layers=tuple(args.layers),
        creator=args.creator,
        creator_id=args.creator_id,
        names=ExplanationNames(type=args.explanation_type, model=args.explanation_model),
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


EXPLAIN_COMMANDS: tuple[Callable[[_SubParsers], None], ...] = (
    _add_explain,
    _add_neuronpedia_import,
    _add_neuronpedia_export,
    _add_serve_llm,
)
