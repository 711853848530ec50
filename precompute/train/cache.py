"""An on-disk cache of training activations, for machines where the model's forward pass is the
cost (a CPU): the residuals are computed once, then read for every epoch and every run.

Layout of a cache directory: ``layer_K.bf16`` per key of the stream (a layer ``N`` for an SAE's
residual; ``N_in`` and ``N_out`` for a transcoder's two hooks), raw little-endian bfloat16
``[n_tokens, d_model]`` row-major (float16 overflows: Gemma's residuals pass 65,504 at some
positions), and ``cache.json`` (what was cached and how far it got). Filling is resumable: the
files are cut back to the last recorded row count and the windows already read are skipped, so a
killed run loses at most one forward pass.

The windows are an even sample of the corpus split (every ``stride``-th window), so a cache much
smaller than the corpus still sees every source.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer.files import atomic_write_text

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

    from precompute.train.activations import ActivationStream

logger = logging.getLogger(__name__)

META = "cache.json"


@dataclass(frozen=True)
class CacheInfo:
    """What a cache holds: ``layers``, ``d_model``, ``tokens`` (rows per layer), ``windows`` (read
    so far), ``stride`` and the identity of its source (``key``: corpus, split, model, hooks…)."""

    layers: tuple[Any, ...]
    d_model: int
    tokens: int
    windows: int
    stride: int
    complete: bool
    key: dict[str, Any]


def read_info(path: Path) -> CacheInfo | None:
    """The cache's metadata, or ``None`` when there is none yet."""
    try:
        data = json.loads((path / META).read_text())
    except (OSError, ValueError):
        return None
    return CacheInfo(**{**data, "layers": tuple(data["layers"])})


def _write_info(path: Path, info: CacheInfo) -> None:
    atomic_write_text(path / META, json.dumps(asdict(info), indent=2))


def fill(
    path: Path,
    stream: ActivationStream,
    max_tokens: int,
    stride: int,
    key: dict[str, Any],
) -> CacheInfo:
    """Fill (or resume filling) the cache at ``path`` with up to ``max_tokens`` rows per layer
    from every ``stride``-th window of ``stream``'s windows.

    A cache made from another source (``key``, layers, stride) is an error, never mixed in;
    a finished one with more layers than ``stream``'s serves those it has (a one-layer trial
    reads the recipe's four-layer cache).
    """
    path.mkdir(parents=True, exist_ok=True)
    layers = tuple(sorted(stream.hooks))
    d_model = int(stream.model.cfg.d_model)
    info = read_info(path) or CacheInfo(layers, d_model, 0, 0, stride, False, key)
    finished = info.complete or info.tokens >= max_tokens
    has_layers = info.layers == layers or (finished and set(layers) <= set(info.layers))
    if (info.d_model, info.stride, info.key) != (d_model, stride, key) or not has_layers:
        raise ValueError(
            f"the cache in {path} was made from another source ({info.key}, layers "
            f"{list(info.layers)}, stride {info.stride}); use a new directory"
        )
    if finished:  # nothing to add
        return info
    row_bytes = d_model * 2
    files = {}
    for n in layers:
        f = open(path / f"layer_{n}.bf16", "r+b" if (path / f"layer_{n}.bf16").exists() else "w+b")
        f.truncate(info.tokens * row_bytes)
        f.seek(info.tokens * row_bytes)
        files[n] = f
    tokens, windows = info.tokens, info.windows
    try:
        chunk: list[list[int]] = []
        exhausted = True
        # every stride-th window, after the ones already cached
        for window in itertools.islice(stream.windows(), windows * stride, None, stride):
            chunk.append(window)
            if len(chunk) == stream.model_batch:
                tokens = _append(stream, chunk, files, tokens)
                windows += len(chunk)
                chunk = []
                _flush(files)
                info = CacheInfo(layers, d_model, tokens, windows, stride, False, key)
                _write_info(path, info)
                logger.info("cached %d tokens (%d windows)", tokens, windows)
                if tokens >= max_tokens:
                    exhausted = False
                    break
        if chunk and exhausted:
            tokens = _append(stream, chunk, files, tokens)
            windows += len(chunk)
            _flush(files)
    finally:
        for f in files.values():
            f.close()
    # complete: the windows ran out; a cache stopped at max_tokens can still grow
    info = CacheInfo(layers, d_model, tokens, windows, stride, exhausted, key)
    _write_info(path, info)
    return info


def _append(stream: ActivationStream, chunk: list[list[int]], files: dict[Any, Any], n: int) -> int:
    import torch

    acts = stream.forward(chunk)
    rows = 0
    for layer, f in files.items():
        a = acts[layer].to(torch.bfloat16).cpu().view(torch.uint16).numpy()
        f.write(a.astype("<u2", copy=False).tobytes())
        rows = a.shape[0]
    return n + rows


def _flush(files: dict[Any, Any]) -> None:
    for f in files.values():
        f.flush()
        os.fsync(f.fileno())


def open_layer(path: Path, layer: Any, info: CacheInfo) -> np.ndarray:
    """A read-only memory map of one layer's rows ``[tokens, d_model]`` (bfloat16 bits as
    uint16: :func:`rows` turns them into float32)."""
    import numpy as np

    return np.memmap(
        path / f"layer_{layer}.bf16", dtype="<u2", mode="r", shape=(info.tokens, info.d_model)
    )


def rows(bits: np.ndarray) -> Tensor:
    """bfloat16 bits (uint16) as a float32 tensor."""
    import numpy as np
    import torch

    return torch.from_numpy(np.array(bits, dtype="<u2")).view(torch.bfloat16).float()


def batches(
    path: Path, info: CacheInfo, layers: tuple[Any, ...], batch_size: int, seed: int, device: str
) -> Iterator[dict[Any, Tensor]]:
    """Endless shuffled float32 batches ``{layer: [batch_size, d_model]}`` from the cache: each
    epoch is a fresh permutation of all rows (the same rows for every layer: one token's
    residuals at every layer, as the stream gives them)."""
    import numpy as np

    maps = {n: open_layer(path, n, info) for n in layers}
    rng = np.random.default_rng(seed)
    if info.tokens < batch_size:
        raise ValueError(f"the cache holds {info.tokens} tokens, fewer than a batch ({batch_size})")
    while True:
        order = rng.permutation(info.tokens)
        for start in range(0, info.tokens - batch_size + 1, batch_size):
            idx = np.sort(order[start : start + batch_size])
            yield {n: rows(m[idx]).to(device) for n, m in maps.items()}
