"""Helpers for the attribution-graph tests: random JumpReLU transcoders for every layer of a tiny
model (written in sae-lens's format and loaded back), and an independent frozen replacement model.

The frozen model here shares no code with :mod:`explorer.circuits`: it freezes by *value* (the
prompt's attention patterns and norm scales are cached, then written back over the recomputed
ones by forward hooks), where the implementation freezes by *detaching*; and it measures effects
by scaling a node's contribution and differentiating (or differencing) the output, where the
implementation injects gradients at targets and contracts them with source vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

NORMS = ("ln1", "ln2", "ln1_post", "ln2_post")


def write_transcoder(
    path: Path,
    w_enc: torch.Tensor,
    b_enc: torch.Tensor,
    w_dec: torch.Tensor,
    b_dec: torch.Tensor,
    threshold: torch.Tensor,
    layer: int,
    w_skip: torch.Tensor | None = None,
) -> Path:
    """Save a sae-lens JumpReLU (skip) transcoder reading ``blocks.{layer}.ln2.hook_normalized``."""
    from sae_lens import (
        JumpReLUSkipTranscoder,
        JumpReLUSkipTranscoderConfig,
        JumpReLUTranscoder,
        JumpReLUTranscoderConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    d_in, d_sae = w_enc.shape
    kwargs: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": d_sae,
        "d_out": w_dec.shape[1],
        "apply_b_dec_to_input": False,
        "metadata": SAEMetadata(hook_name=f"blocks.{layer}.ln2.hook_normalized", model_name="tiny"),
    }
    tc: Any
    if w_skip is None:
        tc = JumpReLUTranscoder(JumpReLUTranscoderConfig(**kwargs))
    else:
        tc = JumpReLUSkipTranscoder(JumpReLUSkipTranscoderConfig(**kwargs))
    with torch.no_grad():
        tc.W_enc.copy_(w_enc)
        tc.b_enc.copy_(b_enc)
        tc.W_dec.copy_(w_dec)
        tc.b_dec.copy_(b_dec)
        tc.threshold.copy_(threshold)
        if w_skip is not None:
            tc.W_skip.copy_(w_skip)
    path.mkdir(parents=True, exist_ok=True)
    tc.save_model(path)
    return path


def make_transcoders(
    where: Path,
    d_model: int,
    n_layers: int,
    width: int = 48,
    skip: bool = False,
    seed: int = 0,
    thresholds: tuple[float, float] = (0.5, 1.0),
) -> list[Any]:
    """Random JumpReLU transcoders for every layer, saved under ``where`` and loaded back with
    ``SAE.load_from_disk``. Encoder columns have unit norm, so on the unit-RMS normalised input a
    pre-activation is about N(0, 1): with thresholds drawn from 0.5 to 1.0 (the default) about a
    fifth of the features fire on a token; from 1.8 to 2.2, about 3%."""
    from sae_lens import SAE

    out = []
    lo, hi = thresholds
    for layer in range(n_layers):
        g = torch.Generator().manual_seed(1000 * seed + layer)
        w_enc = torch.randn(d_model, width, generator=g)
        w_enc /= w_enc.norm(dim=0, keepdim=True)
        path = write_transcoder(
            where / f"tc{layer}",
            w_enc=w_enc,
            b_enc=0.1 * torch.randn(width, generator=g),
            w_dec=0.3 * torch.randn(width, d_model, generator=g),
            b_dec=0.1 * torch.randn(d_model, generator=g),
            threshold=lo + (hi - lo) * torch.rand(width, generator=g),
            layer=layer,
            w_skip=0.05 * torch.randn(d_model, d_model, generator=g) if skip else None,
        )
        out.append(SAE.load_from_disk(str(path)).eval())
    return out


class FrozenReplacement:
    """The local replacement model of ``ids``, built independently of the implementation.

    ``run(scales)`` runs the real model with the prompt's attention patterns and norm scales
    written back over the recomputed ones (``freeze`` says which), and every MLP output replaced
    by ``sum_f s_f a_f W_dec[f] + b_dec + s_err * error + skip(input)``, where ``scales`` holds
    a multiplier ``s`` for every node (features, errors, tokens; default 1). With
    ``propagate=False`` the activations ``a_f`` are the prompt's (so effects are direct); with
    ``propagate=True`` they are recomputed from the current MLP input, gated by the prompt's
    active set (the replacement model in which effects travel through features). BOS (position
    0) keeps its MLP outputs fixed, as in the graph.
    """

    def __init__(
        self,
        model: Any,
        transcoders: Sequence[Any],
        ids: torch.Tensor,
        freeze: Sequence[str] = ("pattern", "scale"),
    ) -> None:
        self.model, self.tcs, self.ids = model, list(transcoders), ids
        names = [n for n in model.hook_dict if any(n.endswith(f"hook_{f}") for f in freeze)]
        names = [n for n in names if ".q_norm." not in n and ".k_norm." not in n]
        cache: dict[str, torch.Tensor] = {}
        mlp_in: dict[int, torch.Tensor] = {}
        mlp_out: dict[int, torch.Tensor] = {}

        def keep(x: torch.Tensor, hook: Any) -> None:
            cache[hook.name] = x.detach().clone()

        def keep_in(x: torch.Tensor, hook: Any) -> None:
            mlp_in[hook.layer()] = x.detach().clone()

        def keep_out(x: torch.Tensor, hook: Any) -> None:
            mlp_out[hook.layer()] = x.detach().clone()

        hooks = [(n, keep) for n in names]
        hooks += [(f"blocks.{i}.ln2.hook_normalized", keep_in) for i in range(len(self.tcs))]
        hooks += [(f"blocks.{i}.hook_mlp_out", keep_out) for i in range(len(self.tcs))]
        with torch.no_grad():
            self.logits = model.run_with_hooks(ids[None], fwd_hooks=hooks)[0, -1]
        self.frozen = cache
        self.acts, self.errors, self.active = [], [], []
        with torch.no_grad():
            for i, tc in enumerate(self.tcs):
                a = tc.encode(mlp_in[i])[0]
                recon = tc.decode(a) + self._skip(tc, mlp_in[i])[0]
                self.acts.append(a)
                self.errors.append(mlp_out[i][0] - recon)
                self.active.append(a > 0)
            # BOS's MLP output is fixed, except its skip path (linear in the MLP input).
            self.bos_out = [
                mlp_out[i][0, 0] - self._skip(tc, mlp_in[i])[0, 0] for i, tc in enumerate(self.tcs)
            ]

    @staticmethod
    def _skip(tc: Any, x: torch.Tensor) -> torch.Tensor:
        w = getattr(tc, "W_skip", None)
        return torch.zeros_like(x) if w is None else x @ w.T

    def run(
        self,
        feature_scales: list[torch.Tensor],
        error_scales: torch.Tensor,
        token_scales: torch.Tensor,
        propagate: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(logits [B, vocab] before soft-cap, pre-activations per layer [B, n, d_sae])``
        for a batch of ``B`` settings of the scales.

        ``feature_scales``: per layer ``[B, n, d_sae]``; ``error_scales``: ``[B, L, n]``;
        ``token_scales``: ``[B, n]``. Differentiable in all of them.
        """
        pre: list[torch.Tensor] = []
        model = self.model
        b = token_scales.shape[0]

        def frozen(x: torch.Tensor, hook: Any) -> torch.Tensor:
            return self.frozen[hook.name].expand_as(x)

        def embed(x: torch.Tensor, hook: Any) -> torch.Tensor:
            return x * token_scales[:, :, None]

        def read_in(x: torch.Tensor, hook: Any) -> None:
            tc = self.tcs[hook.layer()]
            pre.append(x @ tc.W_enc + tc.b_enc)
            self._x = x

        def write_out(x: torch.Tensor, hook: Any) -> torch.Tensor:
            i = hook.layer()
            tc = self.tcs[i]
            a = pre[i] * self.active[i] if propagate else self.acts[i]
            out = (a * feature_scales[i]) @ tc.W_dec + tc.b_dec
            out = out + self.errors[i] * error_scales[:, i, :, None]
            bos = self.bos_out[i].expand(b, 1, -1)
            return torch.cat([bos, out[:, 1:]], dim=1) + self._skip(tc, self._x)

        def final(x: torch.Tensor, hook: Any) -> None:
            self._final = x[:, -1]

        hooks: list[tuple[str, Any]] = [(n, frozen) for n in self.frozen]
        hooks.append(("hook_embed", embed))
        hooks.append(("ln_final.hook_normalized", final))
        for i in range(len(self.tcs)):
            hooks.append((f"blocks.{i}.ln2.hook_normalized", read_in))
            hooks.append((f"blocks.{i}.hook_mlp_out", write_out))
        model.run_with_hooks(self.ids.expand(b, -1), fwd_hooks=hooks)
        logits = (self._final * model.ln_final.w) @ model.W_U + model.b_U
        return logits, pre

    def ones(self, batch: int = 1) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """All-ones scales (the prompt itself), ``batch`` times."""
        n = len(self.ids)
        return (
            [torch.ones(batch, *a.shape) for a in self.acts],
            torch.ones(batch, len(self.tcs), n),
            torch.ones(batch, n),
        )

    def effects(
        self, graph: Any, value: float = 2.0, propagate: bool = False, batch: int = 64
    ) -> torch.Tensor:
        """``[n_nodes, n_nodes]``: the change of every target (rows, in ``graph``'s node order:
        a feature's pre-activation, a logit minus the mean logit) when one source (columns) has
        its scale set to ``value`` instead of 1, each source in its own batch row. The model is
        linear in the scales, so with ``value=2`` and ``propagate=False`` this is the matrix of
        direct effects, by finite differences."""
        n_nodes = graph.n_nodes
        out = torch.zeros(n_nodes, n_nodes)
        features = graph.features.tolist()
        logit_ids = torch.tensor(graph.logit_ids)

        def targets(logits: torch.Tensor, pre: list[torch.Tensor]) -> torch.Tensor:
            t = torch.zeros(logits.shape[0], n_nodes)
            for i, (layer, pos, feature) in enumerate(features):
                t[:, i] = pre[layer][:, pos, feature]
            t[:, graph.logit_start :] = logits[:, logit_ids] - logits.mean(dim=1, keepdim=True)
            return t

        with torch.no_grad():
            base = targets(*self.run(*self.ones(), propagate=propagate))
            sources = range(graph.logit_start)
            for lo in range(0, len(sources), batch):
                chunk = sources[lo : lo + batch]
                fs, es, ts = self.ones(len(chunk))
                for row, s in enumerate(chunk):
                    kind, layer, pos, feature = graph.node(s)
                    if kind == "feature":
                        fs[layer][row, pos, feature] = value
                    elif kind == "error":
                        es[row, layer, pos] = value
                    else:
                        ts[row, pos] = value
                changed = targets(*self.run(fs, es, ts, propagate=propagate))
                out[:, lo : lo + len(chunk)] = (changed - base).T
        return out
