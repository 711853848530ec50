"""Does the microscope show contrast? The spread of its token shades and heatmap cells on each
curated text of the embedded default (the store's 4 layers x 4,096 features).

    python bench/contrast.py [--preset default]

For each curated text (assets/curated.json), encoded on the page's default layers and shown with
the page's defaults, it prints the share of tokens whose shade is under 40% and at 60% or more of
the colour scale, and the shades' standard deviation (in % of the scale): for the default view
(the tokens shaded by the text's strongest feature) and for the strongest-feature view (each
token by its own strongest feature, the view before issue 20); then the same shares for the
heatmap's cells under each of its metrics. The shades are the values the page's colours are
computed from (:class:`explorer.app.shading.Shading`, capped at 100%). A view with contrast has
most tokens light and a few dark; a view without has every token dark.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def spread(shades: np.ndarray) -> tuple[float, float, float]:
    """``(share under 40, share at 60 or more, standard deviation)`` of shades in % (0-100)."""
    s = np.clip(np.nan_to_num(shades.astype(float)), 0.0, 100.0)
    return float((s < 40).mean()), float((s >= 60).mean()), float(s.std())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="default")
    args = parser.parse_args()

    from explorer.app import microscope, open_explorer, shading

    ctx = open_explorer(args.preset, None, str(Path(tempfile.mkdtemp()) / "labels.sqlite"))
    layers = microscope.default_layers(ctx)
    head = f"{'text':<32} {'tok':>4}  {'view':<22} {'<40%':>6} {'>=60%':>6} {'std':>5}"
    print(f"layers {layers}; shades in % of the colour scale\n{head}")
    totals: dict[str, list[float]] = {}
    for text in ctx.content["texts"]:
        enc = microscope.encode_text(ctx, text, layers)
        default = microscope.show(ctx, enc)
        feature = default.shading.feature
        rows = [
            ("tokens: default", f"tokens: {shading.shade_value(feature)}", default),
            (
                "tokens: strongest",
                "tokens: strongest",
                microscope.show(ctx, enc, shade="strongest"),
            ),
        ]
        for metric in microscope.METRICS:
            rows.append(
                (f"heatmap: {metric}", f"heatmap: {metric}", microscope.show(ctx, enc, metric))
            )
        name = repr(text[:28])
        for key, what, v in rows:
            if key.startswith("tokens"):
                shades = v.shading.rel
            else:
                z = np.asarray(v.heatmap.data[0].z, dtype=float)
                shades = 100 * z / max(float(z.max()), 1e-9)
            low, high, std = spread(np.asarray(shades))
            totals.setdefault(key, []).append(low)
            n = len(enc.tokens)
            print(f"{name:<32} {n:>4}  {what:<22} {low:>6.0%} {high:>6.0%} {std:>5.1f}")
            name = ""
    print("\nmean share of tokens / cells under 40%:")
    for key, lows in totals.items():
        print(f"  {key:<28} {np.mean(lows):.0%}")


if __name__ == "__main__":
    main()
