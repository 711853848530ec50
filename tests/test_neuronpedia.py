"""Neuronpedia in and out: their explanation exports imported for the gemma-2-2b preset, and a
store exported in their format, checked against their own ``db_models`` dataclasses and against
what their database and importer require (foreign keys, the ``v1/<modelId>/<sourceId>/`` folder
level, the users whose activations a feature page shows)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from explorer.explanations import Explanations, NewExplanation
from precompute.__main__ import main
from precompute.explain.neuronpedia import (
    DEFAULT_CREATOR_ID,
    EXPLANATION_MODELS,
    EXPLANATION_TYPES,
    ExplanationNames,
    export_store,
    import_explanations,
)

FIXTURES = Path(__file__).parent / "fixtures" / "neuronpedia"
BATCH = FIXTURES / "gemma-2-2b" / "20-gemmascope-res-16k" / "explanations" / "batch-0.jsonl"


def _their(name: str, cls: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"np_{name}", FIXTURES / "db_models" / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, cls)


def test_import_maps_sources_to_layers_and_skips_the_rest(tmp_path: Path) -> None:
    db_path = tmp_path / "x.sqlite"
    report = import_explanations([BATCH], "gemma-2-2b", db_path)
    assert (report.read, report.added, report.skipped_other, report.skipped_range) == (7, 4, 2, 1)
    db = Explanations(db_path)
    first = db.best(20, 0)
    assert first is not None and first.source == "neuronpedia" and first.score is None
    assert first.text == "references to legal documents and court cases"
    assert first.method == "oai_token-act-pair" and first.model == "gpt-4o-mini"
    assert first.ref == "neuronpedia:cm1a2b3c4d5e6f7g8h9i0j1k2"
    assert [x.text for x in db.history(20, 1)] == [
        "markup in scraped pages",
        "<b>bold</b> HTML tags & entities in web text",  # stored verbatim, escaped when shown
    ]
    assert db.best(20, 16383) is not None
    # Their published files are gzipped; importing the same rows again adds nothing.
    packed = tmp_path / "batch-0.jsonl.gz"
    packed.write_bytes(gzip.compress(BATCH.read_bytes()))
    again = import_explanations([packed], "gemma-2-2b", db_path)
    assert (again.read, again.added) == (7, 0)
    assert db.count() == 4


def test_import_refuses_what_is_not_an_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "modelId": "gemma-2-2b"}\n')
    out = tmp_path / "x.sqlite"
    assert main(["neuronpedia-import", str(bad), "--explanations", str(out)]) == 2
    assert "bad.jsonl:1: not a Neuronpedia explanation (no layer)" in capsys.readouterr().err
    bad.write_text("not json\n")
    assert main(["neuronpedia-import", str(bad), "--explanations", str(out)]) == 2
    assert "bad.jsonl:1: not a JSON line" in capsys.readouterr().err
    assert main(["neuronpedia-import", str(BATCH), "--explanations", str(out), "--preset", "x"])
    assert "no Neuronpedia source is known for preset 'x'" in capsys.readouterr().err
    assert main(["neuronpedia-import", str(BATCH), "--explanations", str(out)]) == 0
    assert "4 added" in capsys.readouterr().out


def _read(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _store_copy(app_parts: Any, tmp_path: Path, rows: list[NewExplanation]) -> Path:
    _, store = app_parts
    store_dir = tmp_path / "store"
    shutil.copytree(store.path, store_dir)
    if rows:
        Explanations(store_dir / "explanations.sqlite").add(rows)
    return store_dir


def _x(feature: int, method: str, model: str, **kw: Any) -> NewExplanation:
    return NewExplanation(
        **{"layer": 1, "feature": feature, "text": f"text {feature}", "source": "llm",
           "method": method, "model": model, **kw},
    )  # fmt: skip


def _records(root: Path, name: str) -> list[dict[str, Any]]:
    if name.endswith(".jsonl"):
        return _read(root / name)
    return [r for f in sorted((root / name).glob("*.gz")) for r in _read(f)]


def test_export_writes_their_format(app_parts: Any, tmp_path: Path) -> None:
    _, store = app_parts
    scored = _x(3, "max-activating-examples", "gpt-4o-mini", prompt_version="v",
                detection=0.75, fuzzing=0.5, score=0.625, n_scored=8)  # fmt: skip
    store_dir = _store_copy(app_parts, tmp_path, [scored])
    out = tmp_path / "np"
    report = export_store(store_dir, out, model_id="tiny", creator="me")
    assert report.sources == ["tiny/1-gse-res-48", "tiny/2-gse-res-48"]
    assert report.features == 96 and report.explanations == 1
    classes = {
        "model.jsonl": _their("model.py", "Model"),
        "sourceset.jsonl": _their("source_set.py", "SourceSet"),
        "source.jsonl": _their("source.py", "Source"),
        "release.jsonl": _their("source_release.py", "SourceRelease"),
        "features": _their("feature.py", "Feature"),
        "activations": _their("activation.py", "Activation"),
        "explanations": _their("explanation.py", "Explanation"),
    }
    root = out / "tiny" / "1-gse-res-48"
    for name, cls in classes.items():
        records = _records(root, name)
        assert records, name
        for r in records:
            cls(**r)  # their dataclass: an unknown or missing field is a TypeError
            assert set(r) == set(cls.__dataclass_fields__), name
    features = _read(root / "features" / "batch-0.jsonl.gz")
    assert [f["index"] for f in features] == [str(i) for i in range(48)]
    rec = store.feature(1, 3)
    f3 = features[3]
    assert f3["layer"] == "1-gse-res-48" and f3["modelId"] == "tiny"
    assert f3["pos_str"] == rec.top_logits_tokens and f3["frac_nonzero"] == rec.density
    assert len(f3["freq_hist_data_bar_values"]) == len(f3["freq_hist_data_bar_heights"])
    acts = [a for a in _read(root / "activations" / "batch-0.jsonl.gz") if a["index"] == "3"]
    n_examples = len(rec.top_examples) + sum(len(g.examples) for g in rec.intervals)
    assert len(acts) == n_examples
    top = acts[0]
    assert top["tokens"] == rec.top_examples[0].tokens
    assert top["maxValue"] == max(top["values"]) == top["values"][top["maxValueTokenIndex"]]
    (expl,) = _read(root / "explanations" / "batch-0.jsonl.gz")
    assert expl["description"] == "text 3" and expl["index"] == "3"
    assert "detection 0.750, fuzzing 0.500 on 8 contexts" in expl["notes"]


# Their foreign keys (apps/webapp/prisma/migrations at ebb8426f) as (child file, child columns,
# parent file, parent columns); users and explanation names are checked apart.
FOREIGN_KEYS = (
    ("sourceset.jsonl", ("modelId",), "model.jsonl", ("id",)),
    ("sourceset.jsonl", ("releaseName",), "release.jsonl", ("name",)),
    ("source.jsonl", ("modelId", "setName"), "sourceset.jsonl", ("modelId", "name")),
    ("features", ("modelId",), "model.jsonl", ("id",)),
    ("features", ("modelId", "layer"), "source.jsonl", ("modelId", "id")),
    ("activations", ("modelId", "layer", "index"), "features", ("modelId", "layer", "index")),
    ("explanations", ("modelId",), "model.jsonl", ("id",)),
    ("explanations", ("modelId", "layer", "index"), "features", ("modelId", "layer", "index")),
)
SEEDED_USERS = {"clkht01d40000jv08hvalcvly", "cljgamm90000076zdchicy6zj"}  # their seed.ts
FILES = ("model.jsonl", "sourceset.jsonl", "source.jsonl", "release.jsonl", "features",
         "activations", "explanations")  # fmt: skip


def _check_foreign_keys(
    root: Path, users: set[str], types: frozenset[str], models: frozenset[str]
) -> dict[str, list[dict[str, Any]]]:
    """Every row of a source folder as their database would check it; the rows by file."""
    rows = {name: _records(root, name) if (root / name).exists() else [] for name in FILES}
    for child, cols, parent, keys in FOREIGN_KEYS:
        have = {tuple(r[k] for k in keys) for r in rows[parent]}
        for r in rows[child]:
            assert tuple(r[c] for c in cols) in have, (child, cols, r)
    for name, records in rows.items():
        for r in records:
            for col in ("creatorId", "authorId"):
                if col in r:
                    assert r[col] in users, (name, col, r[col])
    for r in rows["explanations"]:
        assert r["typeName"] is None or r["typeName"] in types, r["typeName"]
        assert r["explanationModelName"] is None or r["explanationModelName"] in models
    return rows


def test_export_rows_satisfy_their_foreign_keys(app_parts: Any, tmp_path: Path) -> None:
    rows = [
        _x(3, "max-activating-examples", "gpt-4o-mini"),  # ours, by a model they register
        _x(4, "max-activating-examples", "gemma-3-270m"),  # a model they do not register
        _x(5, "oai_token-act-pair", "gpt-4o-mini", source="neuronpedia"),  # one of their types
        _x(6, "made-up-method", ""),  # a method with no type of theirs
        _x(7, "max-activating-examples", ""),  # no model
    ]
    store_dir = _store_copy(app_parts, tmp_path, rows)
    out = tmp_path / "np"
    report = export_store(store_dir, out, model_id="tiny")
    # The folder level their importer reads: OUT/<modelId>/<sourceId>/.
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/*")) == [
        "tiny/1-gse-res-48", "tiny/2-gse-res-48",
    ]  # fmt: skip
    root = out / "tiny" / "1-gse-res-48"
    found = _check_foreign_keys(root, {DEFAULT_CREATOR_ID}, EXPLANATION_TYPES, EXPLANATION_MODELS)
    (model,) = found["model.jsonl"]
    (source,) = found["source.jsonl"]
    assert (model["id"], source["id"]) == ("tiny", "1-gse-res-48")
    names = {
        int(r["index"]): (r["typeName"], r["explanationModelName"]) for r in found["explanations"]
    }
    assert names == {
        3: ("eleuther_acts_top20", "gpt-4o-mini"),
        5: ("oai_token-act-pair", "gpt-4o-mini"),
        7: ("eleuther_acts_top20", None),
    }
    assert report.explanations == 3 and sum(report.skipped.values()) == 2
    text = report.summary()
    assert "left out 2 explanations" in text
    assert "1 of model 'gemma-3-270m'" in text and "1 of method 'made-up-method'" in text
    # No empty batch file (their importer reads a file's first line for its columns).
    for f in out.rglob("*.gz"):
        assert _read(f), f
    assert not (out / "tiny" / "2-gse-res-48" / "explanations").exists()


def test_export_creator_id_and_visibility(app_parts: Any, tmp_path: Path) -> None:
    store_dir = _store_copy(app_parts, tmp_path, [_x(3, "max-activating-examples", "")])
    mine = "cm1x2y3z4a5b6c7d8e9f0g1h2"
    report = export_store(store_dir, tmp_path / "np", model_id="tiny", layers=(1,), creator_id=mine)
    root = tmp_path / "np" / "tiny" / "1-gse-res-48"
    _check_foreign_keys(root, {mine}, EXPLANATION_TYPES, EXPLANATION_MODELS)
    with pytest.raises(AssertionError):  # the seeded users are not the creator: a 23503
        _check_foreign_keys(root, SEEDED_USERS, EXPLANATION_TYPES, EXPLANATION_MODELS)
    assert (
        "PUBLIC_ACTIVATIONS_USER_IDS=cljj57d3c000076ei38vwnv35,clkht01d40000jv08hvalcvly,"
        f"{mine}" in report.summary()
    )
    default = export_store(store_dir, tmp_path / "np2", model_id="tiny", layers=(1,))
    assert "one of the webapp's default PUBLIC_ACTIVATIONS_USER_IDS" in default.summary()
    _check_foreign_keys(
        tmp_path / "np2" / "tiny" / "1-gse-res-48", SEEDED_USERS, EXPLANATION_TYPES,
        EXPLANATION_MODELS,
    )  # fmt: skip


def test_export_names_given_and_source_kind(app_parts: Any, tmp_path: Path) -> None:
    rows = [_x(3, "max-activating-examples", "gemma-3-270m"), _x(4, "made-up-method", "x")]
    store_dir = _store_copy(app_parts, tmp_path, rows)
    manifest = json.loads((store_dir / "manifest.json").read_text())
    manifest["bundle"]["layers"][1]["architecture"] = "jumprelu_transcoder"
    (store_dir / "manifest.json").write_text(json.dumps(manifest))
    names = ExplanationNames(type="np_max-act", model="my-local-llm")
    report = export_store(store_dir, tmp_path / "np", model_id="tiny", names=names)
    assert report.sources == ["tiny/1-gse-res-48", "tiny/2-gse-transcoder-48"]
    assert report.explanations == 2 and not report.skipped
    (source,) = _read(tmp_path / "np" / "tiny" / "2-gse-transcoder-48" / "sourceset.jsonl")
    assert source["description"] == "Transcoder - 48 features"
    root = tmp_path / "np" / "tiny" / "1-gse-res-48"
    found = _check_foreign_keys(
        root, {DEFAULT_CREATOR_ID}, EXPLANATION_TYPES, frozenset({"my-local-llm"})
    )
    assert {(r["typeName"], r["explanationModelName"]) for r in found["explanations"]} == {
        ("np_max-act", "my-local-llm")
    }
    assert "--explanation-model 'my-local-llm' is not a name Neuronpedia" in report.summary()
    assert "--explanation-type" not in report.summary()


def test_export_cli_refuses_bad_input_and_says_how_to_show_activations(
    app_parts: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store_dir = _store_copy(app_parts, tmp_path, [])
    base = ["neuronpedia-export", "--store", str(store_dir), "--out", str(tmp_path / "np")]
    for extra, message in (
        (["--creator-id", "gemma-scope-explorer"], "--creator-id 'gemma-scope-explorer' is not a"),
        (["--creator-id", ""], "--creator-id '' is not a Neuronpedia user id"),
        (["--explanation-model", "two words"], "--explanation-model 'two words' is not a name"),
        (["--explanation-type", "<b>x</b>"], "--explanation-type '<b>x</b>' is not a name"),
        (["--model-id", "../up"], "--model-id '../up' cannot be a Neuronpedia id"),
    ):
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "np").exists()
    with pytest.raises(SystemExit):
        main(["neuronpedia-export", "--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    assert "--creator-id" in helptext and DEFAULT_CREATOR_ID in helptext
    assert "PUBLIC_ACTIVATIONS_USER_IDS" in helptext and "OUT/<model id>/" in helptext
    assert main([*base, "--layers", "2", "--model-id", "tiny"]) == 0
    out = capsys.readouterr().out
    assert f"creatorId and authorId: {DEFAULT_CREATOR_ID}" in out
    assert "PUBLIC_ACTIVATIONS_USER_IDS" in out
