"""Neuronpedia in and out: their explanation exports imported for the gemma-2-2b preset, and a
store exported in their format, checked against their own ``db_models`` dataclasses."""

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
from precompute.explain.neuronpedia import export_store, import_explanations

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


def test_export_writes_their_format(app_parts: Any, tmp_path: Path) -> None:
    _, store = app_parts
    store_dir = tmp_path / "store"
    shutil.copytree(store.path, store_dir)
    Explanations(store_dir / "explanations.sqlite").add(
        [
            NewExplanation(
                layer=1, feature=3, text="word starts", source="llm", method="m", model="g",
                prompt_version="v", detection=0.75, fuzzing=0.5, score=0.625, n_scored=8,
            )
        ]
    )  # fmt: skip
    out = tmp_path / "np"
    report = export_store(store_dir, out, model_id="tiny", creator="me")
    assert report.sources == ["1-gse-res-48", "2-gse-res-48"]
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
    root = out / "1-gse-res-48"
    for name, cls in classes.items():
        files = [root / name] if name.endswith(".jsonl") else sorted((root / name).glob("*.gz"))
        records = [r for f in files for r in _read(f)]
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
    assert expl["description"] == "word starts" and expl["index"] == "3"
    assert "detection 0.750, fuzzing 0.500 on 8 contexts" in expl["notes"]
