"""How well the offline "likely to steer" estimate (explorer/steerability.py) predicts steer-eval.

    python bench/steer_estimate.py --sample 30   # the features to evaluate, one line per layer
    python bench/steer_estimate.py --store assets/store REPORT.json [REPORT.json ...]

``--sample N`` prints N live features drawn at random per layer (``numpy.random.default_rng(0)``,
layer after layer), as ``LAYER:ID`` for ``steer-eval --features``.

The reports are ``python -m precompute steer-eval --out REPORT.json`` runs, or a store's
``steering.parquet`` (``steer-eval --write-store``). A feature *steers*,
by ``--label``: ``concept`` when steer-eval recommends a strength for it (a readable strength
whose concept read back beats the default's; ``--margin M`` asks it to beat it by at least M, a
fraction of the feature's max); ``lift`` when at a readable strength its promoted tokens gain at
least ``--min-lift`` probability (the signal docs/steering.md finds better for output
features, which fire before their concept word, not on it); ``either`` when one of them holds
(the default). Prints, for the estimate and each of its signals, the AUC (the chance that a
feature that steers scores above one that does not; ties count half), and the precision and
recall of "likely to steer" (estimate >= steerability.LIKELY); then per layer.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from explorer import steerability
from explorer.store import Store
from precompute.steer_eval import PPL_FACTOR, REP_MARGIN


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """The Mann-Whitney AUC of ``score`` for the positives of ``label`` (ties count half)."""
    pos, neg = score[label], score[~label]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def auc_interval(
    score: np.ndarray, label: np.ndarray, n: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """A 90% bootstrap interval of :func:`auc` (features resampled with replacement)."""
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        at = rng.integers(0, len(score), len(score))
        value = auc(score[at], label[at])
        if value == value:
            draws.append(value)
    return float(np.percentile(draws, 5)), float(np.percentile(draws, 95))


def verdicts(
    reports: list[Path], label: str = "either", margin: float = 0.0, min_lift: float = 0.01
) -> dict[tuple[int, int], bool]:
    """``{(layer, feature): steers}`` from steer-eval reports (the module docstring)."""
    rows: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for path in reports:
        if path.suffix == ".parquet":  # a store's steering.parquet
            found = pq.read_table(path).to_pylist()
        else:
            found = json.loads(path.read_text())["rows"]
        for row in found:
            rows[(int(row["layer"]), int(row["feature"]))].append(row)
    out = {}
    for key, found in rows.items():
        base = next(r for r in found if r["method"] == "none")
        concept = any(r["recommended"] and r["concept"] >= base["concept"] + margin for r in found)
        readable = [  # steer-eval's rule (steering.parquet does not keep it)
            r["perplexity"] <= PPL_FACTOR * base["perplexity"]
            and r["repetition"] <= base["repetition"] + REP_MARGIN
            for r in found
        ]
        lift = any(ok and r["lift"] >= min_lift for ok, r in zip(readable, found, strict=True))
        out[key] = {"concept": concept, "lift": lift, "either": concept or lift}[label]
    return out


def sample(store: Store, per_layer: int, seed: int = 0) -> dict[int, list[int]]:
    """``{layer: features}``: ``per_layer`` live features of each layer, drawn at random."""
    rng = np.random.default_rng(seed)
    out = {}
    for layer in store.layers:
        df = store.features(layer, ["feature", "dead"])
        live = df.loc[~df["dead"], "feature"].to_numpy()
        out[layer] = sorted(rng.choice(live, per_layer, replace=False).tolist())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="*", type=Path)
    parser.add_argument("--sample", type=int, help="print this many live features per layer")
    parser.add_argument("--store", default="assets/store")
    parser.add_argument("--label", choices=["concept", "lift", "either"], default="either")
    parser.add_argument("--margin", type=float, default=0.0)
    parser.add_argument("--min-lift", type=float, default=0.01)
    args = parser.parse_args()
    store = Store.open(args.store)
    if args.sample:
        for layer, features in sample(store, args.sample).items():
            print(" ".join(f"{layer}:{f}" for f in features))
        return
    steers = verdicts(args.reports, args.label, args.margin, args.min_lift)
    keys = sorted(steers)
    label = np.array([steers[k] for k in keys])
    per_layer = {layer: steerability.signals(store, layer) for layer in store.layers}
    base = np.cumsum([0] + [store.n_features(n) for n in store.layers])
    offset = dict(zip(store.layers, base[:-1].tolist(), strict=True))
    est = steerability.estimate(store)
    score = {"estimate": np.array([est[offset[a] + b] for a, b in keys])}
    for name in per_layer[store.layers[0]]:
        score[name] = np.array([per_layer[a][name][b] for a, b in keys])
    score["layer"] = np.array([a for a, _ in keys], dtype=float)
    likely = score["estimate"] >= steerability.LIKELY
    print(f"{len(keys)} features, {label.sum()} steer (by {args.label})")
    for name, values in score.items():
        lo, hi = auc_interval(values, label)
        print(f"  AUC {name:>10}: {auc(values, label):.3f} (90% bootstrap {lo:.2f}-{hi:.2f})")
    hits, n_likely, n_steer = int((likely & label).sum()), int(likely.sum()), int(label.sum())
    print(
        f"  likely to steer (>= {steerability.LIKELY:g}): {n_likely} features, "
        f"precision {hits / max(n_likely, 1):.2f}, recall {hits / max(n_steer, 1):.2f}"
    )
    layers = np.array([a for a, _ in keys])
    for layer in sorted(set(layers.tolist())):
        at = layers == layer
        print(
            f"  layer {layer}: {int(at.sum())} features, {int(label[at].sum())} steer, "
            f"AUC {auc(score['estimate'][at], label[at]):.3f}"
        )


if __name__ == "__main__":
    main()
