"""The command line: a custom bundle end to end, and bad input as one line and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from explorer.__main__ import main


@pytest.fixture
def tiny_dirs(tmp_path: Path, gemma3_hf, tokenizer, random_saes):
    model_dir = tmp_path / "model"
    gemma3_hf.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    for layer, path in random_saes.items():
        path.rename(tmp_path / f"sae_layer{layer}")
    return model_dir, str(tmp_path / "sae_layer{layer}")


def test_custom_bundle_json(tiny_dirs, capsys) -> None:
    model_dir, sae = tiny_dirs
    rc = main(
        [
            "encode",
            "--model",
            str(model_dir),
            "--sae",
            sae,
            "--layers",
            "1",
            "2",
            "--top",
            "3",
            "--json",
            "the cat sat on the mat",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["preset"] == "custom" and out["tokens"] == ["the", "cat", "sat", "on", "the", "mat"]
    assert set(out["layers"]) == {"1", "2"} and not out["truncated"]
    assert all(len(tok) <= 3 for tok in out["layers"]["1"])


def test_custom_bundle_table(tiny_dirs, capsys) -> None:
    model_dir, sae = tiny_dirs
    rc = main(["encode", "--model", str(model_dir), "--sae", sae, "--layers", "2", "the dog"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert lines[0] == "preset: custom" and "layer 2" in lines[1]
    assert lines[2].split()[1] == "the" and lines[3].split()[1] == "dog"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["encode", ""], "the text is empty"),
        (["encode", "   "], "the text is empty"),
        (["encode", "--preset", "nope", "hi"], "unknown preset 'nope'"),
        (["encode", "--layers", "7", "hi"], "layer 7 is not in bundle 'default'"),
        (["encode", "--top", "0", "hi"], "--top must be a positive number"),
        (["encode", "--top", "-2", "hi"], "--top must be a positive number"),
        (["encode", "--model", "x", "hi"], "needs both --model and --sae"),
        (
            ["encode", "--model", "/nonexistent-model", "--sae", "/nonexistent-sae", "hi"],
            "needs --layers",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, capsys) -> None:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_input_from_a_real_process_has_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "explorer", "encode", "--preset", "gemma-9", "hello"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown preset 'gemma-9'")
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_the_command_line_does_not_load_gradio() -> None:
    """``explorer.__main__`` (and so ``encode``) imports the app's context, never Gradio."""
    code = "import explorer.__main__, sys; print('gradio' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.strip() == "False"


def test_non_numeric_flag_is_an_argparse_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["encode", "--top", "many", "hi"])
    assert exc.value.code == 2
    assert "invalid int value: 'many'" in capsys.readouterr().err


# --- the app's start-up refuses a bad store or label database, before loading the model ---------


def _copy_store(ctx, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(ctx.store.path, tmp_path / "store"))


def _truncate(store: Path) -> None:
    victim = store / "features" / "layer=02.parquet"
    victim.write_bytes(victim.read_bytes()[:-100])


def _other_schema(store: Path) -> None:
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (store / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: None, "was built with model 'tiny', the bundle has 'gemma-3-270m'"),
        (_truncate, "truncated"),
        (lambda s: (s / "examples" / "layer=01.parquet").unlink(), "is missing"),
        (_other_schema, "schema"),
        (lambda s: (s / "manifest.json").write_text("{not json"), "manifest"),
    ],
)
def test_app_refuses_a_bad_store_at_start(ctx, tmp_path: Path, damage, message, capsys) -> None:
    store = _copy_store(ctx, tmp_path)
    damage(store)
    rc = main(["--store", str(store), "--labels", str(tmp_path / "l.sqlite")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_app_refuses_a_label_file_that_is_not_a_database(ctx, tmp_path: Path, capsys) -> None:
    from explorer.app import open_explorer

    bad = tmp_path / "labels.sqlite"
    bad.write_text("my notes, not a database")
    store = _copy_store(ctx, tmp_path)
    with pytest.raises(ValueError, match=r"labels\.sqlite"):
        open_explorer("default", str(store), str(bad), cache_dir=str(tmp_path / "no-cache"))
    assert bad.read_text() == "my notes, not a database"
