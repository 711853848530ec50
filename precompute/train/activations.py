"""The activation stream SAEs train on: residuals of several layers from one forward pass per
batch of corpus windows, BOS and padding dropped, mixed in a seeded shuffling buffer.

The residuals are captured through the same routed hooks as ``explorer.encode``
(:mod:`explorer.hooks`), so what an SAE is trained on is read exactly as the app reads it, and the
capture never leaks into another forward pass on the same model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sae_lens import HookedSAETransformer
    from torch import Tensor

    from precompute.train.config import TrainConfig


@dataclass
class ActivationStream:
    """Residual activations of several layers from one forward pass per batch of windows.

    ``batches()`` yields ``{layer: [batch_size, d_model]}`` dicts from a shuffling buffer, BOS and
    padding removed. The window order and the shuffling are seeded.

    Args:
        model: the model; the pass stops after the last layer in ``hooks``.
        hooks: ``{key: hook_name}`` of the activations to capture: a layer for an SAE's
            residual, or a string such as ``"9_in"`` (a transcoder reads two hooks a layer).
            The keys of one stream are of one type (they are sorted).
        windows: a fresh iterator of token-id windows (BOS first) on each call.
        pad_id: the id padding short windows.
        special_ids: ids whose positions are dropped (BOS, pad, …).
        model_batch: windows per forward pass.
        buffer_batches: forward passes mixed in the shuffling buffer.
        seed: seeds the shuffling.
        device: where the model runs and the activations stay.
    """

    model: HookedSAETransformer
    hooks: dict[Any, str]
    windows: Callable[[], Iterator[list[int]]]
    pad_id: int
    special_ids: set[int]
    model_batch: int = 32
    buffer_batches: int = 16
    seed: int = 0
    device: str = "cpu"
    tokens_read: int = field(default=0, init=False)

    def forward(self, windows: list[list[int]]) -> dict[Any, Tensor]:
        """One forward pass; returns each layer's activations ``[n_kept, d_model]`` at the
        non-special positions."""
        import torch

        from explorer.hooks import routed
        from precompute.corpus import pad_windows

        ids, keep = pad_windows(windows, self.pad_id, self.special_ids)
        layer_of = {hook: layer for layer, hook in self.hooks.items()}
        captured: dict[Any, Tensor] = {}

        def capture(act: Tensor, hook: Any) -> None:
            captured[layer_of[hook.name]] = act

        with torch.inference_mode(), routed(self.model, dict.fromkeys(layer_of, capture)):
            self.model(
                ids.to(self.device), stop_at_layer=last_block(self.hooks) + 1, return_type=None
            )
        keep_dev = keep.to(self.device)
        self.tokens_read += int(keep.sum())
        return {n: captured[n][keep_dev].float() for n in self.hooks}

    def raw_batches(self) -> Iterator[dict[Any, Tensor]]:
        """Forward passes in corpus order, unshuffled."""
        chunk: list[list[int]] = []
        for window in self.windows():
            chunk.append(window)
            if len(chunk) == self.model_batch:
                yield self.forward(chunk)
                chunk = []
        if chunk:
            yield self.forward(chunk)

    def batches(self, batch_size: int) -> Iterator[dict[Any, Tensor]]:
        """Shuffled training batches; reads the corpus again from the start when it runs out."""
        import torch

        gen = torch.Generator().manual_seed(self.seed)
        while True:
            source = self.raw_batches()
            exhausted = False
            yielded = 0
            while not exhausted:
                parts: list[dict[Any, Tensor]] = []
                for _ in range(self.buffer_batches):
                    try:
                        parts.append(next(source))
                    except StopIteration:
                        exhausted = True
                        break
                if not parts:
                    break
                buffer = {n: torch.cat([p[n] for p in parts]) for n in self.hooks}
                size = next(iter(buffer.values())).shape[0]
                order = torch.randperm(size, generator=gen).to(self.device)
                for start in range(0, size - batch_size + 1, batch_size):
                    idx = order[start : start + batch_size]
                    yielded += 1
                    yield {n: buffer[n][idx] for n in self.hooks}
            if yielded == 0:
                raise ValueError(
                    f"the corpus gives fewer than batch_size={batch_size} tokens per buffer: "
                    "use a larger corpus or a smaller batch size"
                )


def last_block(hooks: dict[Any, str]) -> int:
    """The last block a set of hooks reads (``blocks.N.…``): the forward pass stops after it."""
    blocks = []
    for name in hooks.values():
        parts = name.split(".")
        if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
            raise ValueError(f"{name!r} is not a hook inside a block (blocks.N.…)")
        blocks.append(int(parts[1]))
    return max(blocks)


def window_ids(
    cfg: TrainConfig, tokenizer: Any, split: str, mixed: bool = False
) -> Iterator[list[int]]:
    """Token-id windows (BOS first) of the configured corpus split: in file order, or with
    ``mixed`` in the documents' representative order (``precompute.corpus.run_documents``: a
    corpus file is ordered by source, so a prefix in file order is one source)."""
    from precompute.corpus import iter_documents, run_documents, token_windows

    spec = cfg.corpus
    docs = run_documents(spec, split, cfg.seed) if mixed else iter_documents(spec, split)
    for window in token_windows(docs, tokenizer, cfg.context_size):
        yield list(window.token_ids)


def mean_and_scale(batches: list[dict[int, Tensor]], d_in: int) -> dict[int, tuple[Tensor, float]]:
    """Per layer: the mean activation and sae-lens's scaling factor ``sqrt(d_in) / mean norm``.

    Gemma 3 270M's residual stream is dominated by its mean (about 98% of the norm at layer 9):
    the trainer initialises ``b_dec`` at it, in the scaled units it sees, or most features die.
    Both come from the same batches so that they agree.
    """
    import torch

    out = {}
    for layer in batches[0]:
        acts = torch.cat([b[layer] for b in batches]).double()
        mean = acts.mean(0)
        scale = d_in**0.5 / float(acts.norm(dim=-1).mean())
        out[layer] = (mean.float(), scale)
    return out
