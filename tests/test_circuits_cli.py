"""``python -m explorer graph``: a tiny bundle with a transcoder per layer writes a graph file
that reads back; bad prompts, targets and bundles get one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
from circuits_helpers import make_transcoders

from explorer.__main__ import main
from explorer.bundle import Bundle, BundleError, BundleSpec, SAESource
from explorer.circuits import from_json
from explorer.circuits.cli import GraphInputError, GraphRequest, slug_of, write_graph
from explorer.hooked import hooked_from_hf


@pytest.fixture(scope="module")
def bundle(gemma3_hf, tokenizer, tmp_path_factory) -> Bundle:
    model = hooked_from_hf(gemma3_hf, tokenizer)
    where = tmp_path_factory.mktemp("tcs")
    n = model.cfg.n_layers
    make_transcoders(where, model.cfg.d_model, n)
    spec = BundleSpec(
        name="tiny",
        model="tiny",
        saes=((0, SAESource(path="/nonexistent")),),
        transcoders=tuple((layer, SAESource(path=str(where / f"tc{layer}"))) for layer in range(n)),
    )
    return Bundle(spec=spec, model=model, tokenizer=tokenizer)


def test_the_command_writes_a_graph_file_that_reads_back(bundle: Bundle, tmp_path: Path) -> None:
    out = tmp_path / "g.json"
    summary = write_graph(bundle, GraphRequest(prompt="the quick fox jumped over the"), out)
    assert summary.startswith(f"wrote {out}: ")
    assert "replacement score" in summary and "completeness" in summary
    graph = from_json(out)
    assert graph.metadata["slug"] == "the-quick-fox-jumped-over-the"
    kinds = {node["feature_type"] for node in graph.nodes}
    assert "embedding" in kinds and "logit" in kinds
    assert graph.links


def test_a_typed_target_is_the_graphs_only_logit(bundle: Bundle, tmp_path: Path) -> None:
    word = " dog"
    (tid,) = bundle.tokenizer(word, add_special_tokens=False).input_ids
    write_graph(bundle, GraphRequest(prompt="the quick fox", target=word), tmp_path / "t.json")
    logits = [n for n in from_json(tmp_path / "t.json").nodes if n["feature_type"] == "logit"]
    assert [n["feature"] for n in logits] == [tid]


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (GraphRequest(prompt="   "), "the prompt is empty"),
        (GraphRequest(prompt="the fox " * 40, max_tokens=16), "at most 16"),
        (GraphRequest(prompt="the fox", target="quick fox"), "not one"),
    ],
)
def test_bad_input_is_one_clear_message(
    bundle: Bundle, tmp_path: Path, req: GraphRequest, message: str
) -> None:
    with pytest.raises(GraphInputError, match=message):
        write_graph(bundle, req, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_a_bundle_missing_a_layers_transcoder_is_refused(bundle: Bundle, tmp_path: Path) -> None:
    spec = BundleSpec(
        name="partial", model="tiny", saes=bundle.spec.saes, transcoders=bundle.spec.transcoders[1:]
    )
    partial = Bundle(spec=spec, model=bundle.model, tokenizer=bundle.tokenizer)
    with pytest.raises(BundleError, match="none on layers 0"):
        write_graph(partial, GraphRequest(prompt="the fox"), tmp_path / "x.json")


def test_cli_refuses_a_preset_without_transcoders_before_loading(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import explorer.__main__ as cli

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("loaded a model")

    monkeypatch.setattr(cli, "build_bundle", boom)
    monkeypatch.setattr(cli, "preset", lambda name: BundleSpec(
        name="default", model="embedded", saes=((5, SAESource(path="/x")),)
    ))  # fmt: skip
    code = main(["graph", "--prompt", "hi", "--out", str(tmp_path / "g.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        err.startswith("error: preset 'default' has no transcoders") and "train-transcoders" in err
    )
    assert main(["graph", "--prompt", "hi", "--out", "g.json", "--node-threshold", "2"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err


def test_slug() -> None:
    assert slug_of("The capital of France is") == "the-capital-of-france-is"
    assert slug_of("<<>>") == "graph"
