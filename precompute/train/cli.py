"""``python -m precompute train-transcoders``: the transcoders' command (registered by the CLI
through :data:`TRAIN_COMMANDS`, as the explain commands are)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from explorer.paths import REPO_ROOT
from precompute.train.transcoders import RECIPES, TranscoderConfig

_SubParsers = Any


def _add_train_transcoders(sub: _SubParsers) -> None:
    d = TranscoderConfig()
    p = sub.add_parser(
        "train-transcoders",
        help="train a transcoder for every layer's MLP (writes assets/transcoders/ for the "
        "default)",
        description="Cache every layer's MLP input (blocks.N.ln2.hook_normalized) and output "
        "(blocks.N.hook_mlp_out) on the corpus, train one BatchTopK transcoder per layer "
        "(saved as sae-lens's JumpReLU transcoder), measure each on held-out tokens and the "
        "whole replacement model, and write layer_N/ directories plus manifest.json. "
        "Everything resumes after a kill: the caches fill in steps, each layer checkpoints "
        "in --work, a finished layer is skipped.",
    )
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default=None,
        help="the settings the shipped transcoders were trained with (flags given as well "
        "override it)",
    )
    p.add_argument("--preset", default=None, help=f"bundle whose model is used ({d.preset})")
    p.add_argument("--layers", type=int, nargs="+", default=None, help="default: all 18")
    p.add_argument("--d-sae", type=int, default=None, help=f"width ({d.d_sae})")
    p.add_argument("--k", type=int, default=None, help=f"target L0 ({d.k})")
    p.add_argument("--no-skip", action="store_true", help="no skip (affine) term")
    p.add_argument(
        "--tokens", type=int, default=None, help=f"training tokens ({d.training_tokens})"
    )
    p.add_argument("--epochs", type=int, default=None, help=f"passes over them ({d.epochs})")
    p.add_argument("--lr", type=float, default=None, help=f"learning rate ({d.lr})")
    p.add_argument("--eval-tokens", type=int, default=None, help=f"({d.eval_tokens})")
    p.add_argument("--ce-tokens", type=int, default=None, help=f"({d.ce_tokens})")
    p.add_argument("--corpus", default=None, help="default, a .jsonl/.txt file or hf:NAME")
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default=str(REPO_ROOT / "assets" / "transcoders"))
    p.add_argument(
        "--work",
        default=str(Path.home() / ".cache" / "gemma-scope-explorer" / "transcoders"),
        help="activation caches (about 14 GB for 300k tokens of 18 layers) and checkpoints",
    )
    p.add_argument("--cache-dir", default=None, help="embedded model cache directory")
    p.set_defaults(func=_cmd_train_transcoders)


def transcoder_config(args: argparse.Namespace) -> TranscoderConfig:
    """The config of the command's flags: the recipe's (or the defaults), then each flag given."""
    base = dict(RECIPES[args.recipe]) if args.recipe else {}
    flags = {
        "preset": args.preset,
        "layers": tuple(args.layers) if args.layers else None,
        "d_sae": args.d_sae,
        "k": args.k,
        "training_tokens": args.tokens,
        "epochs": args.epochs,
        "lr": args.lr,
        "eval_tokens": args.eval_tokens,
        "ce_tokens": args.ce_tokens,
        "corpus": args.corpus,
        "device": args.device,
        "seed": args.seed,
    }
    base.update({k: v for k, v in flags.items() if v is not None})
    if args.no_skip:
        base["skip"] = False
    return TranscoderConfig(**base, out_dir=args.out, work_dir=args.work)


def _cmd_train_transcoders(args: argparse.Namespace) -> int:
    from precompute.train.transcoder_run import metrics_table, train_transcoder_preset

    results = train_transcoder_preset(transcoder_config(args), cache_dir=args.cache_dir)
    print(metrics_table(results))
    return 0


TRAIN_COMMANDS: tuple[Callable[[_SubParsers], None], ...] = (_add_train_transcoders,)
