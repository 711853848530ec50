"""``python -m explorer``: the command line.

With no command it starts the app (the embedded default and its shipped store on
http://127.0.0.1:7860); every flag can also come from an environment variable (``GSE_PRESET``,
``GSE_STORE``, ``GSE_LABELS``, ``GSE_HOST``, ``GSE_PORT``), which is how a Hugging Face Space
sets them. ``encode`` prints each token's strongest SAE features per layer (a table, or JSON with
``--json``). Errors are one line on stderr and a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from explorer.app import open_explorer
from explorer.app.render import CSS
from explorer.bundle import BundleError, build_bundle, custom_spec, preset
from explorer.encode import EncodeError, encode
from explorer.paths import ASSETS


def _bundle_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("bundle")
    g.add_argument("--preset", default="default", help="default, gemma-3-270m or gemma-2-2b")
    g.add_argument("--model", help="custom bundle: a hub model name or a local HF model directory")
    g.add_argument(
        "--sae",
        help="custom bundle: RELEASE:SAE_ID or a local SAE directory, with {layer} in it",
    )
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, … (default auto)")
    g.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 (default auto)")
    g.add_argument("--cache-dir", help="where the embedded model is converted and cached")
    g.add_argument("--max-tokens", type=int, default=1024, help="token limit for the text")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m explorer", description="Explore SAE features of Gemma models."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    _app_args(parser)
    sub = parser.add_subparsers(dest="command")
    enc = sub.add_parser("encode", help="token-level feature activations of a text")
    _bundle_args(enc)
    enc.add_argument("--layers", nargs="+", metavar="N", help="layers to encode (default: all)")
    enc.add_argument("--top", type=int, default=5, help="features per token and layer")
    enc.add_argument("--json", action="store_true", help="print JSON instead of a table")
    enc.add_argument("--include-special", action="store_true", help="also report BOS")
    enc.add_argument("text", nargs="?", help="the text to encode")
    gr = sub.add_parser(
        "graph",
        help="the attribution graph of a prompt's next token, as a circuit-tracer graph file",
        description="Attribute the next token of --prompt through the bundle's transcoders "
        "(circuit-tracer's method: docs/circuits.md), prune it and write the graph file that "
        "circuit-tracer's viewer and Neuronpedia's graph pages read.",
    )
    _bundle_args(gr)
    gr.add_argument("--prompt", help="the text whose next token to explain")
    gr.add_argument("--target", help="one token to explain (default: the top predictions)")
    gr.add_argument("--out", type=Path, help="the graph file to write (.json)")
    gr.add_argument(
        "--curated",
        nargs="?",
        const=ASSETS / "graphs",
        type=Path,
        metavar="DIR",
        help="write the app's curated graphs: each entry of DIR/index.json (default "
        "assets/graphs) as DIR/<slug>.json, instead of --prompt and --out",
    )
    gr.add_argument("--max-feature-nodes", type=int, default=1024, help="(default 1024)")
    gr.add_argument("--node-threshold", type=float, default=0.8, help="(default 0.8)")
    gr.add_argument("--edge-threshold", type=float, default=0.98, help="(default 0.98)")
    gr.set_defaults(max_tokens=64)
    return parser


def _env(name: str, default: str | None) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or default


def _app_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("app (no command)")
    g.add_argument(
        "--preset",
        dest="app_preset",
        default=_env("GSE_PRESET", "default"),
        help="bundle preset (env GSE_PRESET; default: default)",
    )
    g.add_argument(
        "--store",
        default=_env("GSE_STORE", None),
        help="feature store directory (env GSE_STORE; default: assets/store for the "
        "default preset, none otherwise)",
    )
    g.add_argument(
        "--labels",
        default=_env("GSE_LABELS", None),
        help="label database (env GSE_LABELS; default: /data/labels.sqlite on a "
        "Space with persistent storage, else ~/.local/share/gemma-scope-explorer/)",
    )
    g.add_argument(
        "--explanations",
        default=_env("GSE_EXPLANATIONS", None),
        help="explanations file (env GSE_EXPLANATIONS; default: the store's "
        "explanations.sqlite when it has one)",
    )
    # A Space sets GRADIO_SERVER_NAME=0.0.0.0 (and the port): Gradio's own variables count too.
    g.add_argument(
        "--host",
        default=_env("GSE_HOST", _env("GRADIO_SERVER_NAME", "127.0.0.1")),
        help="address to listen on (env GSE_HOST or GRADIO_SERVER_NAME; default 127.0.0.1)",
    )
    g.add_argument(
        "--port",
        type=int,
        default=int(_env("GSE_PORT", _env("GRADIO_SERVER_PORT", "7860")) or 7860),
        help="port (env GSE_PORT or GRADIO_SERVER_PORT; default 7860)",
    )
    g.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    g.add_argument(
        "--public",
        action="store_true",
        default=None,
        help="published mode: label writes need a Hugging Face login or the owner's key "
        "(GSE_OWNER_KEY), import and retract are the owner's (env GSE_PUBLIC=1; on by itself "
        "on a Hugging Face Space)",
    )
    g.add_argument(
        "--app-cache-dir",
        dest="app_cache_dir",
        default=_env("GSE_CACHE_DIR", None),
        help=argparse.SUPPRESS,
    )


def cmd_app(args: argparse.Namespace) -> int:
    # Here, not at the top: it loads Gradio, which the encode command does without.
    from explorer.app.layout import build_app

    ctx = open_explorer(
        args.app_preset,
        args.store,
        args.labels,
        args.app_cache_dir,
        public=True if (args.public or args.share) else None,  # a gradio.live link is public
        explanations_path=args.explanations,
    )
    demo = build_app(ctx)
    print(f"Gemma Scope Explorer: http://{args.host}:{args.port}", flush=True)
    demo.queue(default_concurrency_limit=4).launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        css=CSS,
        footer_links=["api"],
    )
    return 0


def split_layers(args: argparse.Namespace) -> None:
    """``--layers 5 9 "some text"``: argparse gives the text to ``--layers``; take it back.

    Leading whole numbers are layers; one trailing item is the text when no text was given.
    """
    items = list(args.layers or [])
    layers: list[int] = []
    while items and items[0].lstrip("-").isdigit():
        layers.append(int(items.pop(0)))
    if items and args.text is None and len(items) == 1:
        args.text = items.pop()
    if items:
        raise EncodeError(f"--layers takes whole numbers, not {items[0]!r}")
    if args.layers is not None and not layers:
        raise EncodeError("--layers needs at least one layer number")
    args.layers = layers or None
    if args.text is None:
        raise EncodeError("no text given: python -m explorer encode [options] TEXT")


def make_spec(args: argparse.Namespace) -> Any:
    if args.model or args.sae:
        if not (args.model and args.sae):
            raise BundleError("a custom bundle needs both --model and --sae (and --layers)")
        return custom_spec(args.model, args.sae, args.layers or [], max_tokens=args.max_tokens)
    spec = preset(args.preset)
    if args.max_tokens != spec.max_tokens:
        spec = replace(spec, max_tokens=args.max_tokens)
    return spec


def cmd_encode(args: argparse.Namespace) -> int:
    split_layers(args)
    if not args.text.strip():
        raise EncodeError("the text is empty: give some text to encode")
    if args.top <= 0:
        raise EncodeError(f"--top must be a positive number, not {args.top}")
    spec = make_spec(args)
    if args.layers:
        for layer in args.layers:
            spec.source(layer)  # fail on an unknown layer before loading anything
    bundle = build_bundle(spec, device=args.device, dtype=args.dtype, cache_dir=args.cache_dir)
    result = encode(
        bundle, args.text, layers=args.layers, top_k=args.top, include_special=args.include_special
    )
    if args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
        return 0
    print(format_table(result))
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from explorer.circuits.cli import GraphRequest, check_spec, write_graph

    for name in ("node_threshold", "edge_threshold"):
        if not 0 < getattr(args, name) <= 1:
            raise BundleError(f"--{name.replace('_', '-')} must be between 0 and 1")
    if args.max_feature_nodes <= 0:
        raise BundleError("--max-feature-nodes must be a positive number")
    spec = make_spec(args)
    check_spec(spec)
    if args.curated is not None:
        from explorer.circuits.cli import write_curated

        bundle = build_bundle(spec, device=args.device, dtype="float32", cache_dir=args.cache_dir)
        print("\n".join(write_curated(bundle, args.curated)))
        return 0
    if args.prompt is None or args.out is None:
        raise BundleError("give --prompt and --out (or --curated)")
    req = GraphRequest(
        prompt=args.prompt,
        target=args.target,
        max_tokens=args.max_tokens,
        max_feature_nodes=args.max_feature_nodes,
        node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold,
    )
    bundle = build_bundle(spec, device=args.device, dtype="float32", cache_dir=args.cache_dir)
    print(write_graph(bundle, req, args.out))
    return 0


def format_table(result: Any) -> str:
    """A plain-text table: one row per token, one column per layer of ``feature(act)`` pairs."""
    layers = list(result.layers)
    header = ["#", "token", *[f"layer {n}" for n in layers]]
    rows = []
    for i, token in enumerate(result.tokens):
        cells = [str(i), repr(token)[1:-1]]
        for n in layers:
            cells.append(" ".join(f"{f}({a:.1f})" for f, a in result.layers[n].top(i)) or "-")
        rows.append(cells)
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    head = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    note = ["(truncated at the token limit)"] if result.truncated else []
    return "\n".join([f"preset: {result.preset}", head, *lines, *note])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        if args.command is None:
            return cmd_app(args)
        return {"encode": cmd_encode, "graph": cmd_graph}[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ValueError as err:  # BundleError, EncodeError: messages meant for the user
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if args.debug:
            raise
        print(f"error: {type(err).__name__}: {err} (run with --debug for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
