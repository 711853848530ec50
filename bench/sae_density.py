"""Issue 13's SAE targets for sets of trained SAEs, read over an activation cache.

Run by hand (not a test):

    python bench/sae_density.py --cache DIR [--tokens 200000] [--layers 5 9 12 15] \
        --saes SAES_DIR...

``--cache`` is a finished ``train-saes --activation-cache`` directory (bfloat16 residuals of the
training split); each ``SAES_DIR`` holds ``layer_N/`` directories (``assets/saes``, or a
``train-saes --out``). For each layer and SAE set, over ``--tokens`` cached rows read in blocks of
8,192 spread evenly over the whole cache (the cache holds the training windows in corpus order, so
its first rows are one part of the corpus: the first 200k rows of layer 9 counted 26% of a k = 48
capped SAE's features above 1%, an even sample 10.9%): explained variance, L0, dead (never fired),
dense (fired on more than 1% of the rows) and how many features fall in each density band. No model
forward pass: a few seconds per layer. The rows are training tokens: a fine-tune has seen them once
(EV in-sample; the held-out EV and CE are train-saes' own metrics).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

BANDS = (0.0, 1e-5, 1e-4, 1e-3, 0.007, 0.01, 0.03, 0.1, 1.01)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--layers", type=int, nargs="+", default=None)
    parser.add_argument("--saes", type=Path, nargs="+", required=True, help="SAE directories")
    args = parser.parse_args()

    import torch

    from explorer.store.schema import DEFAULT_DENSE_THRESHOLD
    from precompute.train import cache, load_saved

    info = cache.read_info(args.cache)
    if info is None:
        raise SystemExit(f"error: no activation cache in {args.cache}")
    n = min(args.tokens, info.tokens)
    bands = " ".join(f"<{hi:g}" for hi in BANDS[1:])
    print(f"{n} cached tokens; features per density band: {bands}")
    print("| layer | SAEs | EV | L0 | dead | dense (>1%) | bands |")
    print("|---|---|---|---|---|---|---|")
    blocks = _blocks(info.tokens, n)  # the same rows for every layer and SAE set
    for layer in args.layers or list(info.layers):
        x = cache.open_layer(args.cache, layer, info)
        mean = sum(cache.rows(x[a:b]).double().sum(0) for a, b in blocks) / n  # once per layer
        mean = mean.float()
        for saes in args.saes:
            if not (saes / f"layer_{layer}").is_dir():
                continue
            sae = load_saved(saes / f"layer_{layer}")
            fires = torch.zeros(sae.cfg.d_sae)
            sse = total = 0.0
            with torch.inference_mode():
                for lo, hi in blocks:
                    a = cache.rows(x[lo:hi])
                    f = sae.encode(a)
                    fires += (f > 0).sum(0)
                    sse += float(((a - sae.decode(f)) ** 2).sum())
                    total += float(((a - mean) ** 2).sum())
            dens = fires / n
            counts = [
                int(((dens >= lo) & (dens < hi)).sum()) for lo, hi in itertools.pairwise(BANDS)
            ]
            print(
                f"| {layer} | {saes} | {1 - sse / total:.3f} | {float(dens.sum()):.1f} "
                f"| {float((fires == 0).float().mean()):.1%} "
                f"| {float((dens > DEFAULT_DENSE_THRESHOLD).float().mean()):.1%} "
                f"| {' '.join(map(str, counts))} |",
                flush=True,
            )


def _blocks(total: int, n: int, size: int = 8192) -> list[tuple[int, int]]:
    """Row ranges of ``size`` (the last one shorter) that add up to ``n`` rows, their starts
    spread evenly over ``total`` rows."""
    count = -(-n // size)
    step = (total - size) / max(1, count - 1) if count > 1 else 0
    out = []
    for i in range(count):
        lo = int(i * step)
        out.append((lo, lo + min(size, n - i * size)))
    return out


if __name__ == "__main__":
    main()
