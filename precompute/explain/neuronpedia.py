"""Neuronpedia in and out: their explanation exports in, a store out in their export format.

In: Neuronpedia publishes its explanations in its datasets bucket
(``neuronpedia-datasets/v1/<modelId>/<layer>-<sourceSet>/explanations/batch-N.jsonl.gz``), one
JSON object a line with the columns of ``export_explanations`` in
``utils/neuronpedia-utils/neuronpedia_utils/export-data.py`` (``id``, ``modelId``, ``layer`` (the
source id, e.g. ``20-gemmascope-res-16k``), ``index`` (a string), ``description``, ``typeName``,
``explanationModelName``, ...). :func:`import_explanations` maps a preset's source ids to its
layers and appends the rows with ``source="neuronpedia"`` and ``ref`` their id, so importing
twice adds nothing. Scores are not in their exports; imported rows are unscored.

Out: :func:`export_store` writes what their ``convert-saedashboard-to-neuronpedia-export.py``
writes from SAEDashboard's batches, one folder per source (``<layer>-<sourceSet>``) holding
``model.jsonl``, ``sourceset.jsonl``, ``source.jsonl``, ``release.jsonl`` and
``features/``, ``activations/``, ``explanations/`` as ``batch-N.jsonl.gz``, with the fields of
their ``db_models`` dataclasses (checked against those in the tests).
"""

from __future__ import annotations

import gzip
import itertools
import json
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from explorer.bundle import preset
from explorer.explanations import Explanation, Explanations, NewExplanation
from explorer.store import Store
from explorer.store.codec import Example, FeatureRecord

# Preset -> (Neuronpedia model id, source set, SAE width); source ids are "<layer>-<set>".
SOURCES = {
    "gemma-2-2b": ("gemma-2-2b", "gemmascope-res-16k", 16384),
    # This project's own SAEs, as neuronpedia-export names them by default (round trips).
    "default": ("gemma-3-270m", "gse-res-4k", 4096),
}
CREATOR_ID = "gemma-scope-explorer"
BATCH = 1024  # features per batch file (their exports use batches of this order)


@dataclass
class ImportReport:
    read: int = 0
    added: int = 0
    skipped_other: int = 0
    skipped_range: int = 0

    def summary(self) -> str:
        return (
            f"read {self.read:,} explanations: {self.added:,} added, "
            f"{self.read - self.added - self.skipped_other - self.skipped_range:,} already there, "
            f"{self.skipped_other:,} of other models or sources, "
            f"{self.skipped_range:,} past the preset's layers or width"
        )


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    raise ValueError(f"{path}:{n}: not a JSON line") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"{path}:{n}: not a JSON object")
                yield n, obj
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read it ({e})") from None


def import_explanations(
    files: Iterable[Path], preset_name: str, explanations: Path
) -> ImportReport:
    """Append the explanations of ``preset_name``'s SAEs found in Neuronpedia export files."""
    if preset_name not in SOURCES:
        raise ValueError(
            f"no Neuronpedia source is known for preset {preset_name!r}; "
            f"known: {', '.join(SOURCES)}"
        )
    model_id, source_set, width = SOURCES[preset_name]
    layers = set(preset(preset_name).layers)
    db = Explanations(explanations)
    report = ImportReport()
    for path in files:
        rows: list[NewExplanation] = []
        for n, obj in _lines(Path(path)):
            missing = [
                k for k in ("id", "modelId", "layer", "index", "description") if k not in obj
            ]
            if missing:
                raise ValueError(f"{path}:{n}: not a Neuronpedia explanation (no {missing[0]})")
            report.read += 1
            head, _, tail = str(obj["layer"]).partition("-")
            if obj["modelId"] != model_id or tail != source_set or not head.isdigit():
                report.skipped_other += 1
                continue
            layer, index = int(head), str(obj["index"])
            if layer not in layers or not index.isdigit() or int(index) >= width:
                report.skipped_range += 1
                continue
            if not str(obj["description"]).strip():
                report.skipped_other += 1
                continue
            rows.append(
                NewExplanation(
                    layer=layer,
                    feature=int(index),
                    text=str(obj["description"]),
                    source="neuronpedia",
                    method=str(obj.get("typeName") or "neuronpedia"),
                    model=str(obj.get("explanationModelName") or ""),
                    ref=f"neuronpedia:{obj['id']}",
                    extra={"modelId": model_id, "source": obj["layer"]},
                )
            )
        report.added += db.add(rows)
    return report


# -- out -----------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _cuid() -> str:
    """An id shaped like their converter's (25 lowercase letters and digits, from a letter)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "c" + "".join(secrets.choice(alphabet) for _ in range(24))


def _write_jsonl(path: Path, records: Iterable[dict[str, Any]], gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data, compresslevel=5))
    else:
        path.write_bytes(data)


def _feature(model_id: str, source_id: str, rec: FeatureRecord) -> dict[str, Any]:
    """A ``Feature`` of their ``db_models`` (what their converter writes)."""
    edges = rec.hist_edges
    return {
        "modelId": model_id,
        "layer": source_id,
        "index": str(rec.feature),
        "creatorId": CREATOR_ID,
        "createdAt": _now(),
        "maxActApprox": float(rec.max_act),
        "hasVector": False,
        "vector": [],
        "vectorLabel": None,
        "vectorDefaultSteerStrength": 10,
        "hookName": None,
        "topkCosSimIndices": [int(x) for x in rec.neighbours],
        "topkCosSimValues": [float(x) for x in rec.neighbour_cos],
        "neuron_alignment_indices": [],
        "neuron_alignment_values": [],
        "neuron_alignment_l1": [],
        "correlated_neurons_indices": [],
        "correlated_neurons_pearson": [],
        "correlated_neurons_l1": [],
        "correlated_features_indices": [],
        "correlated_features_pearson": [],
        "correlated_features_l1": [],
        "neg_str": list(rec.bottom_logits_tokens),
        "neg_values": [float(x) for x in rec.bottom_logits_values],
        "pos_str": list(rec.top_logits_tokens),
        "pos_values": [float(x) for x in rec.top_logits_values],
        "frac_nonzero": float(rec.density),
        "freq_hist_data_bar_heights": [float(x) for x in rec.hist_counts],
        "freq_hist_data_bar_values": [(a + b) / 2 for a, b in itertools.pairwise(edges)],
        "logits_hist_data_bar_heights": [],
        "logits_hist_data_bar_values": [],
        "decoder_weights_dist": [],
        "sourceSetName": None,
    }


def _activation(
    model_id: str, source_id: str, rec: FeatureRecord, e: Example, bin_: tuple[float, float, float]
) -> dict[str, Any]:
    """An ``Activation`` of their ``db_models``; top examples have bin -1 (no interval)."""
    values = [float(a) for a in e.acts]
    top = max(values, default=0.0)
    return {
        "id": _cuid(),
        "tokens": list(e.tokens),
        "index": str(rec.feature),
        "layer": source_id,
        "modelId": model_id,
        "maxValue": top,
        "maxValueTokenIndex": values.index(top) if values else 0,
        "minValue": min(values, default=0.0),
        "values": values,
        "creatorId": CREATOR_ID,
        "dataSource": None,
        "dataIndex": None,
        "dfaValues": [],
        "dfaTargetIndex": None,
        "dfaMaxValue": None,
        "createdAt": _now(),
        "lossValues": [],
        "logitContributions": None,
        "binMin": bin_[0],
        "binMax": bin_[1],
        "binContains": bin_[2],
        "qualifyingTokenIndex": int(e.max_pos),
        "zIndices": None,
        "zValues": None,
    }


def _explanation(model_id: str, source_id: str, x: Explanation) -> dict[str, Any]:
    """An ``Explanation`` of their ``db_models``; our scores go in ``notes``."""
    notes = None
    if x.score is not None:
        notes = (
            f"detection {x.detection:.3f}, fuzzing {x.fuzzing:.3f} on {x.n_scored} contexts "
            f"({x.method}, prompt {x.prompt_version}; gemma-scope-explorer)"
        )
    return {
        "id": _cuid(),
        "modelId": model_id,
        "layer": source_id,
        "index": str(x.feature),
        "description": x.text,
        "authorId": CREATOR_ID,
        "embedding": None,
        "triggeredById": None,
        "typeName": x.method,
        "explanationModelName": x.model or None,
        "notes": notes,
        "createdAt": x.created,
    }


@dataclass
class ExportReport:
    sources: list[str]
    features: int = 0
    activations: int = 0
    explanations: int = 0

    def summary(self) -> str:
        return (
            f"wrote {len(self.sources)} sources ({', '.join(self.sources)}): "
            f"{self.features:,} features, {self.activations:,} activations, "
            f"{self.explanations:,} explanations"
        )


def export_store(
    store_dir: Path,
    out: Path,
    model_id: str | None = None,
    source_set: str | None = None,
    explanations: Path | None = None,
    layers: tuple[int, ...] = (),
    creator: str = "",
) -> ExportReport:
    """Write ``store_dir`` (and its explanations, if any) as Neuronpedia export folders."""
    store = Store.open(store_dir)
    model_id = model_id or str(store.manifest.model)
    xpath = explanations or Path(store_dir) / "explanations.sqlite"
    xdb = Explanations(xpath, create=False) if xpath.exists() else None
    report = ExportReport(sources=[])
    for layer in layers or store.layers:
        if layer not in store.layers:
            raise ValueError(f"layer {layer} is not in the store")
        width = store.n_features(layer)
        default_set = f"gse-res-{width // 1024}k" if width % 1024 == 0 else f"gse-res-{width}"
        set_name = source_set or default_set
        source_id = f"{layer}-{set_name}"
        root = out / source_id
        meta = {
            "model.jsonl": {
                "id": model_id,
                "instruct": model_id.endswith("-it"),
                "creatorId": CREATOR_ID,
                "displayNameShort": model_id,
                "displayName": model_id,
                "tlensId": None,
                "dimension": None,
                "visibility": "PUBLIC",
                "defaultSourceSetName": None,
                "defaultSourceId": None,
                "inferenceEnabled": True,
                "layers": 0,
                "neuronsPerLayer": 0,
                "createdAt": _now(),
                "owner": "",
                "updatedAt": _now(),
                "website": None,
            },
            "sourceset.jsonl": {
                "modelId": model_id,
                "name": set_name,
                "creatorId": CREATOR_ID,
                "hasDashboards": True,
                "visibility": "PUBLIC",
                "description": f"Residual stream - {width} features",
                "type": "",
                "creatorName": creator,
                "urls": [],
                "creatorEmail": None,
                "releaseName": set_name,
                "defaultOfModelId": None,
                "defaultRange": 1,
                "defaultShowBreaks": True,
                "showDfa": False,
                "showCorrelated": False,
                "showHeadAttribution": False,
                "showUmap": False,
                "createdAt": _now(),
            },
            "source.jsonl": {
                "id": source_id,
                "modelId": model_id,
                "setName": set_name,
                "creatorId": CREATOR_ID,
                "hasDashboards": True,
                "inferenceEnabled": False,
                "inferenceHosts": [],
                "saelensConfig": None,
                "saelensRelease": None,
                "saelensSaeId": None,
                "hfRepoId": None,
                "hfFolderId": None,
                "visibility": "PUBLIC",
                "defaultOfModelId": None,
                "hasUmap": False,
                "hasUmapLogSparsity": False,
                "hasUmapClusters": False,
                "num_prompts": None,
                "num_tokens_in_prompt": None,
                "dataset": None,
                "notes": None,
                "createdAt": _now(),
            },
            "release.jsonl": {
                "name": set_name,
                "description": f"{model_id} {set_name}",
                "creatorName": creator,
                "creatorId": CREATOR_ID,
                "visibility": "PUBLIC",
                "isNewUi": False,
                "featured": False,
                "descriptionShort": set_name,
                "urls": [],
                "creatorEmail": None,
                "creatorNameShort": creator,
                "defaultSourceSetName": None,
                "defaultSourceId": None,
                "defaultUmapSourceIds": [],
                "createdAt": _now(),
            },
        }
        for name, record in meta.items():
            _write_jsonl(root / name, [record], gz=False)
        best = xdb.best_map(layer) if xdb is not None else {}
        for b, lo in enumerate(range(0, width, BATCH)):
            feats, acts, expls = [], [], []
            for f in range(lo, min(lo + BATCH, width)):
                rec = store.feature(layer, f)
                feats.append(_feature(model_id, source_id, rec))
                for e in rec.top_examples:
                    acts.append(_activation(model_id, source_id, rec, e, (-1.0, -1.0, -1.0)))
                for g in rec.intervals:
                    for e in g.examples:
                        span = (float(g.lo), float(g.hi), float(g.share))
                        acts.append(_activation(model_id, source_id, rec, e, span))
                if f in best:
                    expls.append(_explanation(model_id, source_id, best[f]))
            _write_jsonl(root / "features" / f"batch-{b}.jsonl", feats, gz=True)
            _write_jsonl(root / "activations" / f"batch-{b}.jsonl", acts, gz=True)
            _write_jsonl(root / "explanations" / f"batch-{b}.jsonl", expls, gz=True)
            report.features += len(feats)
            report.activations += len(acts)
            report.explanations += len(expls)
        report.sources.append(source_id)
    return report
