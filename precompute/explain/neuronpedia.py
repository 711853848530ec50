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
writes from SAEDashboard's batches, one folder per source, ``OUT/<modelId>/<sourceId>/`` (their
importer, ``app/api/admin/import/route.ts``, reads ``v1/<modelId>/<sourceId>/``), holding
``model.jsonl``, ``sourceset.jsonl``, ``source.jsonl``, ``release.jsonl`` and
``features/``, ``activations/``, ``explanations/`` as ``batch-N.jsonl.gz``, with the fields of
their ``db_models`` dataclasses (checked against those in the tests).

What their database requires of those rows (Postgres foreign keys; one violation rejects a whole
statement, and their importer inserts a file, or 10,000 explanations, per statement):
``creatorId`` and ``authorId`` name a ``User`` (:data:`DEFAULT_CREATOR_ID`, the bot user their
``prisma/seed.ts`` makes, unless ``creator_id`` says otherwise); ``typeName`` an
``ExplanationType`` and ``explanationModelName`` an ``ExplanationModelType`` (or null): our method
is mapped to their type (:data:`TYPE_OF_METHOD`), a model is kept when their repository names it
(:data:`EXPLANATION_MODELS`), or the caller names both; an explanation with a name that is not
known is left out and counted, never written. A feature page shows only the activations whose
``creatorId`` is in the webapp's ``PUBLIC_ACTIVATIONS_USER_IDS`` (``lib/env.ts``).
"""

from __future__ import annotations

import gzip
import itertools
import json
import re
import secrets
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
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
BATCH = 1024  # features per batch file (their exports use batches of this order)

# Read in hijohnnylin/neuronpedia at commit ebb8426f. The bot user their prisma/seed.ts creates
# ("the default creator of models, sources, activations, etc when uploaded"), the fallback of
# DEFAULT_CREATOR_USER_ID in apps/webapp/lib/env.ts and the DEFAULT_CREATOR_ID of their
# batch-autointerp.py; their converter requires a DEFAULT_CREATOR_ID.
DEFAULT_CREATOR_ID = "clkht01d40000jv08hvalcvly"
# lib/env.ts: PUBLIC_ACTIVATIONS_USER_IDS when the variable is not set. lib/db/neuron.ts shows a
# feature page only the activations whose creatorId is one of these.
PUBLIC_ACTIVATIONS_USER_IDS = ("cljj57d3c000076ei38vwnv35", "clkht01d40000jv08hvalcvly")
# Explanation types their webapp and tools name: VALID_EXPLAINER_TYPE_NAMES of
# utils/neuronpedia-utils/neuronpedia_utils/batch-autointerp.py, the types
# app/api/explanation/generate/route.tsx generates, and EXPLANATIONTYPE_HUMAN
# (lib/utils/autointerp.ts).
EXPLANATION_TYPES = frozenset(
    {
        "oai_token-act-pair",
        "oai_attention-head",
        "np_max-act-logits",
        "np_max-act",
        "np_acts-logits-general",
        "python-code",
        "eleuther_acts_top20",
        "human",
    }
)
# Explainer models: VALID_EXPLAINER_MODEL_NAMES of their batch-autointerp.py.
EXPLANATION_MODELS = frozenset(
    {
        "gpt-4o-mini",
        "gpt-4.1-nano",
        "gpt-5-nano-2025-08-07",
        "gpt-5-mini-2025-08-07",
        "gpt-5-nano",
        "gemini-2.0-flash",
        "gemini-2.0-flash-lite",
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
        "openai/gpt-oss-120b",
        "google/gemini-2.5-flash-lite",
    }
)
# Our explain method -> their explanation type. Ours is Delphi's DefaultExplainer with
# activations (precompute/explain/prompts.py); their eleuther_acts_top20 is the same explainer
# (apps/autointerp/.../routes/explain/default.py) on a feature's top 20 activations.
TYPE_OF_METHOD = {"max-activating-examples": "eleuther_acts_top20"}
_CUID = re.compile(r"[a-z][a-z0-9]{19,31}")  # Prisma's cuid() ids (25 characters from 'c')
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # model and source ids: one path part
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
# The kinds of source their ids name (gemmascope-res-16k, gemmascope-transcoder-16k, res-jb, ...).
_KINDS = {
    "res": "Residual stream",
    "mlp": "MLP out",
    "att": "Attention",
    "transcoder": "Transcoder",
}


_BAD_CREATOR = (
    "is not a Neuronpedia user id: it must be the id of a User row of the target database, a "
    "cuid (20-32 lowercase letters and digits from a letter), e.g. their seeded bot user "
    f"{DEFAULT_CREATOR_ID}"
)
_BAD_NAME = (
    "is not a name Neuronpedia could register: letters, digits and ._:/@+- only, up to 128, "
    "from a letter or digit"
)
_BAD_ID = (
    "cannot be a Neuronpedia id and folder name: letters, digits and ._- only, up to 100, from a "
    "letter or digit"
)


def _checked(option: str, value: str, pattern: re.Pattern[str], why: str) -> str:
    """``value`` if ``pattern`` takes all of it, else a ValueError: ``option value why``."""
    if not pattern.fullmatch(value):
        raise ValueError(f"{option} {value!r} {why}")
    return value


def visibility_note(creator_id: str) -> str:
    """What a feature page will show of activations made by ``creator_id`` (plain text)."""
    if creator_id in PUBLIC_ACTIVATIONS_USER_IDS:
        return (
            f"activations are by {creator_id}, one of the webapp's default "
            f"PUBLIC_ACTIVATIONS_USER_IDS: feature pages show them unless that variable is set "
            f"without it"
        )
    ids = ",".join((*PUBLIC_ACTIVATIONS_USER_IDS, creator_id))
    return (
        f"activations are by {creator_id}, which is not in the webapp's default "
        f"PUBLIC_ACTIVATIONS_USER_IDS: feature pages show none of them until the webapp runs "
        f"with PUBLIC_ACTIVATIONS_USER_IDS={ids}"
    )


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


def _feature(model_id: str, source_id: str, creator_id: str, rec: FeatureRecord) -> dict[str, Any]:
    """A ``Feature`` of their ``db_models`` (what their converter writes)."""
    edges = rec.hist_edges
    return {
        "modelId": model_id,
        "layer": source_id,
        "index": str(rec.feature),
        "creatorId": creator_id,
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
    model_id: str,
    source_id: str,
    creator_id: str,
    rec: FeatureRecord,
    e: Example,
    bin_: tuple[float, float, float],
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
        "creatorId": creator_id,
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


@dataclass(frozen=True)
class ExplanationNames:
    """The ``typeName`` and ``explanationModelName`` exported explanations get: ``type`` and
    ``model`` when given (the caller says the target database has them), else our method's
    Neuronpedia type (:data:`TYPE_OF_METHOD`, or the method itself when it is one of
    :data:`EXPLANATION_TYPES`) and our model when it is one of :data:`EXPLANATION_MODELS` (none
    when we have none)."""

    type: str | None = None
    model: str | None = None

    def of(self, x: Explanation) -> tuple[str, str | None] | str:
        """(typeName, explanationModelName) of ``x``, or why it cannot be exported (text)."""
        type_name = self.type or TYPE_OF_METHOD.get(x.method)
        if type_name is None and x.method in EXPLANATION_TYPES:
            type_name = x.method
        if type_name is None:
            return f"method {x.method!r}: no Neuronpedia type (name one with --explanation-type)"
        if self.model or not x.model:
            return type_name, self.model
        if x.model not in EXPLANATION_MODELS:
            return (
                f"model {x.model!r}: not an explainer model Neuronpedia registers "
                f"(name one with --explanation-model)"
            )
        return type_name, x.model


def _explanation(
    model_id: str, source_id: str, creator_id: str, x: Explanation, names: tuple[str, str | None]
) -> dict[str, Any]:
    """An ``Explanation`` of their ``db_models``; our scores and names go in ``notes``."""
    notes = f"{x.method} by {x.model or 'no model'} ({x.source}; gemma-scope-explorer)"
    if x.score is not None:
        notes = (
            f"detection {x.detection:.3f}, fuzzing {x.fuzzing:.3f} on {x.n_scored} contexts "
            f"({x.method}, {x.model or 'no model'}, prompt {x.prompt_version}; "
            f"gemma-scope-explorer)"
        )
    return {
        "id": _cuid(),
        "modelId": model_id,
        "layer": source_id,
        "index": str(x.feature),
        "description": x.text,
        "authorId": creator_id,
        "embedding": None,
        "triggeredById": None,
        "typeName": names[0],
        "explanationModelName": names[1],
        "notes": notes,
        "createdAt": x.created,
    }


@dataclass
class ExportReport:
    sources: list[str]
    creator_id: str = DEFAULT_CREATOR_ID
    features: int = 0
    activations: int = 0
    explanations: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # why -> explanations left out
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"wrote {len(self.sources)} sources ({', '.join(self.sources)}): "
            f"{self.features:,} features, {self.activations:,} activations, "
            f"{self.explanations:,} explanations",
            f"creatorId and authorId: {self.creator_id} (a User of the target database)",
            visibility_note(self.creator_id),
        ]
        if self.skipped:
            lines.append(
                f"left out {sum(self.skipped.values()):,} explanations whose names the target "
                f"database would refuse (each would reject its whole batch):"
            )
            lines += [f"  {n:,} of {why}" for why, n in self.skipped.most_common()]
        return "\n".join(lines + self.notes)


def _source_set(store: Store, layer: int, width: int) -> tuple[str, str]:
    """(source set name, kind description) for ``layer``'s SAE: ``gse-<kind>-<width>``, the kind
    from the store's hook and architecture as their ids name it (``res``, ``mlp``, ``att``,
    ``transcoder``)."""
    info = store.manifest.layer(layer)
    hook = ((info.hook_name if info else None) or "").lower()
    arch = ((info.architecture if info else None) or "").lower()
    if "transcoder" in arch or "transcoder" in hook:
        kind = "transcoder"
    elif "mlp" in hook:
        kind = "mlp"
    elif "attn" in hook or hook.endswith("hook_z"):
        kind = "att"
    else:
        kind = "res"
    size = f"{width // 1024}k" if width % 1024 == 0 else str(width)
    return f"gse-{kind}-{size}", _KINDS[kind]


def export_store(
    store_dir: Path,
    out: Path,
    model_id: str | None = None,
    source_set: str | None = None,
    explanations: Path | None = None,
    layers: tuple[int, ...] = (),
    creator: str = "",
    creator_id: str = DEFAULT_CREATOR_ID,
    names: ExplanationNames | None = None,
) -> ExportReport:
    """Write ``store_dir`` (and its explanations, if any) as Neuronpedia export folders,
    ``out/<modelId>/<sourceId>/``."""
    _checked("--creator-id", creator_id, _CUID, _BAD_CREATOR)
    names = names or ExplanationNames()
    for option, name in (("--explanation-type", names.type), ("--explanation-model", names.model)):
        if name is not None:
            _checked(option, name, _NAME, _BAD_NAME)
    if source_set is not None:
        _checked("--source-set", source_set, _ID, _BAD_ID)
    store = Store.open(store_dir)
    model_id = _checked("--model-id", model_id or str(store.manifest.model), _ID, _BAD_ID)
    xpath = explanations or Path(store_dir) / "explanations.sqlite"
    xdb = Explanations(xpath, create=False) if xpath.exists() else None
    report = ExportReport(sources=[], creator_id=creator_id)
    for option, given, known, table in (
        ("--explanation-type", names.type, EXPLANATION_TYPES, "ExplanationType"),
        ("--explanation-model", names.model, EXPLANATION_MODELS, "ExplanationModelType"),
    ):
        if given is not None and given not in known:
            report.notes.append(
                f"note: {option} {given!r} is not a name Neuronpedia's repository registers: "
                f"it must be a row of {table} in the target database, or their import refuses "
                f"every batch of explanations"
            )
    for layer in layers or store.layers:
        if layer not in store.layers:
            raise ValueError(f"layer {layer} is not in the store")
        width = store.n_features(layer)
        default_set, kind = _source_set(store, layer, width)
        set_name = source_set or default_set
        source_id = f"{layer}-{set_name}"
        root = out / model_id / source_id
        meta = {
            "model.jsonl": {
                "id": model_id,
                "instruct": model_id.endswith("-it"),
                "creatorId": creator_id,
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
                "creatorId": creator_id,
                "hasDashboards": True,
                "visibility": "PUBLIC",
                "description": f"{kind} - {width} features",
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
                "creatorId": creator_id,
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
                "creatorId": creator_id,
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
                feats.append(_feature(model_id, source_id, creator_id, rec))
                top = (-1.0, -1.0, -1.0)
                for e in rec.top_examples:
                    acts.append(_activation(model_id, source_id, creator_id, rec, e, top))
                for g in rec.intervals:
                    span = (float(g.lo), float(g.hi), float(g.share))
                    for e in g.examples:
                        acts.append(_activation(model_id, source_id, creator_id, rec, e, span))
                if f in best:
                    named = names.of(best[f])
                    if isinstance(named, str):
                        report.skipped[named] += 1
                    else:
                        expls.append(_explanation(model_id, source_id, creator_id, best[f], named))
            # No empty file: their importer parses a file's first line for its columns, and an
            # empty features or activations file aborts the import.
            for name, records in (
                ("features", feats),
                ("activations", acts),
                ("explanations", expls),
            ):
                if records:
                    _write_jsonl(root / name / f"batch-{b}.jsonl", records, gz=True)
            report.features += len(feats)
            report.activations += len(acts)
            report.explanations += len(expls)
        report.sources.append(f"{model_id}/{source_id}")
    return report
