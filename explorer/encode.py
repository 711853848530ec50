"""Text → tokens × layers × features: each token's strongest SAE features on every chosen layer.

One forward pass serves all layers: hooks capture the residual stream at each chosen layer and
the pass stops right after the last of them (``stop_at_layer``), so no logits are computed. The
text is tokenized without special tokens and BOS is prepended by hand, so the model sees exactly
what it saw in training; BOS (and any other special token) is then dropped from the result:
Gemma Scope style SAEs were not trained on it and hundreds of latents fire there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from explorer.bundle import TRANSCODER_IN, Bundle, BundleError
from explorer.hooks import routed
from explorer.store.schema import RES, check_source

if TYPE_CHECKING:
    from torch import Tensor

K = TypeVar("K")


class EncodeError(ValueError):
    """Input that cannot be encoded; the message is meant for the user."""


@dataclass(frozen=True)
class LayerActivations:
    """One layer's result for the reported (non-special) tokens.

    Args:
        layer: the layer index.
        feature_ids: ``[n_tokens, k]`` ids of each token's top-k features, strongest first (by
            raw activation, or by relative strength when :func:`encode` was given scales).
        acts: ``[n_tokens, k]`` their activations; entries past a token's active count are 0.
        n_active: ``[n_tokens]`` how many features are active (> 0) on each token.
        active: every active feature (not only the top-k), when :func:`encode` was asked to keep
            them: ``(positions, feature ids, activations)``, one entry per active (token,
            feature), in (position, feature) order; ``None`` otherwise.
    """

    layer: int
    feature_ids: Tensor
    acts: Tensor
    n_active: Tensor
    active: tuple[Tensor, Tensor, Tensor] | None = None

    def feature(self, feature: int) -> Tensor:
        """``[n_tokens]`` one feature's exact activation on every token (0 where it does not
        fire), from :attr:`active`: no forward pass."""
        import torch

        if self.active is None:
            raise ValueError("this encoding kept only each token's top features")
        pos, ids, acts = self.active
        out = torch.zeros(self.n_active.shape[0], dtype=acts.dtype)
        hit = ids == feature
        out[pos[hit]] = acts[hit]
        return out

    def top(self, position: int) -> list[tuple[int, float]]:
        """``[(feature, act), …]`` for one token, only the active ones."""
        n = min(int(self.n_active[position]), self.acts.shape[1])
        return [
            (int(f), float(a))
            for f, a in zip(self.feature_ids[position, :n], self.acts[position, :n], strict=True)
        ]


@dataclass(frozen=True)
class Encoding:
    """The result of :func:`encode` for one text.

    Args:
        preset: the bundle's name.
        tokens: the reported tokens as text (BOS and other specials left out).
        token_ids: their ids.
        truncated: whether the text was cut at the bundle's token limit.
        layers: per layer, the top features of each reported token.
        source: whose features: the residual SAEs' (``res``) or the transcoders'.
    """

    preset: str
    tokens: list[str]
    token_ids: list[int]
    truncated: bool
    layers: dict[int, LayerActivations]
    source: str = RES

    def to_json(self) -> dict[str, Any]:
        """The CLI's JSON shape: ``{"preset", "tokens", "truncated", "layers": {"9": [[…]]}}``."""
        return {
            "preset": self.preset,
            "tokens": self.tokens,
            "truncated": self.truncated,
            "layers": {
                str(layer): [
                    [{"feature": f, "act": round(a, 4)} for f, a in la.top(i)]
                    for i in range(len(self.tokens))
                ]
                for layer, la in self.layers.items()
            },
        }


def text_ids(bundle: Bundle, text: str) -> list[int]:
    """The text's token ids, no BOS; a typed ``<bos>`` or ``<eos>`` stays text.

    ``split_special_tokens`` keeps typed special-token strings from becoming control tokens.
    """
    tok = bundle.tokenizer
    return list(tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def with_bos(bundle: Bundle, ids: list[int]) -> list[int]:
    bos = bundle.tokenizer.bos_token_id
    return ids if bos is None else [bos, *ids]


def tokenize(bundle: Bundle, text: str) -> tuple[list[int], bool]:
    """BOS + the text's tokens, cut at the bundle's limit; returns ``(ids, truncated)``."""
    if not isinstance(text, str) or not text.strip():
        raise EncodeError("the text is empty: type some text to encode")
    ids = with_bos(bundle, text_ids(bundle, text))
    limit = bundle.spec.max_tokens
    truncated = len(ids) > limit
    return ids[:limit], truncated


def dictionary(bundle: Bundle, layer: int, source: str = RES) -> Any:
    """The SAE (``res``) or the transcoder (``transcoder``) of ``layer``."""
    return bundle.sae(layer) if check_source(source) == RES else bundle.transcoder(layer)


def input_hook(bundle: Bundle, layer: int, source: str = RES) -> str:
    """What a source's dictionary of ``layer`` reads: the SAE's hook, or the transcoder's
    :data:`explorer.bundle.TRANSCODER_IN`."""
    if check_source(source) == RES:
        return bundle.spec.hook_name(layer)
    return TRANSCODER_IN.format(layer=layer)


def check_layers(bundle: Bundle, layers: list[int] | None, source: str = RES) -> list[int]:
    """A source's requested layers (``None``: all of them), or a :class:`BundleError`."""
    if check_source(source) == RES:
        return bundle.check_layers(layers)
    if layers is None:
        return list(bundle.spec.transcoder_layers)
    for layer in layers:
        bundle.spec.transcoder_source(layer)
    return sorted(set(layers))


def residuals(bundle: Bundle, ids: Tensor, layers: list[int]) -> dict[int, Tensor]:
    """``{layer: resid [batch, pos, d_model]}`` for all ``layers`` from one forward pass."""
    return activations(bundle, ids, {bundle.spec.hook_name(layer): layer for layer in layers})


def activations(bundle: Bundle, ids: Tensor, names: Mapping[str, K]) -> dict[K, Tensor]:
    """``{key: activation [batch, pos, d]}`` of every hook ``names`` maps to a key, from one
    forward pass stopped after the last block a hook is in (``blocks.N.…``).

    The capture hooks are routed to this call only (:mod:`explorer.hooks`), so concurrent calls on
    the shared model never see each other's activations.
    """
    import torch

    captured: dict[K, Tensor] = {}

    def capture(act: Tensor, hook: Any) -> None:
        captured[names[hook.name]] = act.detach()

    last = max(int(name.split(".")[1]) for name in names)
    with torch.inference_mode(), routed(bundle.model, dict.fromkeys(names, capture)):
        bundle.model(ids.to(bundle.device), stop_at_layer=last + 1, return_type=None)
    return captured


def encode(
    bundle: Bundle,
    text: str,
    layers: list[int] | None = None,
    top_k: int = 10,
    include_special: bool = False,
    scales: Mapping[int, Tensor] | None = None,
    keep_active: bool = False,
    source: str = RES,
) -> Encoding:
    """Encode ``text`` and return each token's ``top_k`` features on each chosen layer.

    ``include_special=True`` keeps BOS and other special tokens in the result (they are always
    in the forward pass). ``scales`` (per layer, one positive number per feature, e.g. each
    feature's maximum over a corpus) picks each token's ``top_k`` by ``act / scale`` instead of
    by raw activation, so a feature that is strong *for itself* is kept even where a feature
    with larger raw activations crowds it; the returned ``acts`` stay raw. A layer missing from
    ``scales`` is ranked by raw activation. ``keep_active`` also keeps every active feature of
    every token (:attr:`LayerActivations.active`: as many entries as the SAE's L0 per token), so
    any feature's activation on the text can be read later without another forward pass.
    ``source="transcoder"`` encodes with the transcoders instead (each reads its layer's
    :data:`explorer.bundle.TRANSCODER_IN`), in the same one forward pass.
    """

    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
        raise EncodeError(f"top-k must be a positive whole number, not {top_k!r}")
    source = check_source(source)
    chosen = check_layers(bundle, layers, source)
    ids, keep, resid, truncated = _reported(bundle, text, chosen, include_special, source)
    out: dict[int, LayerActivations] = {}
    for layer in chosen:
        scale = None if scales is None else scales.get(layer)
        sae = dictionary(bundle, layer, source)
        out[layer] = _layer_top(sae, layer, resid[layer], top_k, scale, keep_active)
    decode = bundle.tokenizer.decode
    return Encoding(
        preset=bundle.spec.name,
        tokens=[str(decode([ids[i]])) for i in keep],
        token_ids=[ids[i] for i in keep],
        truncated=truncated,
        layers=out,
        source=source,
    )


def _reported(
    bundle: Bundle, text: str, layers: list[int], include_special: bool = False, source: str = RES
) -> tuple[list[int], list[int], dict[int, Tensor], bool]:
    """Tokenize and run ``text`` once: ``(ids, kept positions, {layer: resid [kept, d]}, cut)``.

    Every position goes through the model; only the kept ones (non-special unless
    ``include_special``) are returned.
    """
    import torch

    ids, truncated = tokenize(bundle, text)
    special = bundle.special_ids
    keep = [i for i, t in enumerate(ids) if include_special or t not in special]
    keep_t = torch.tensor(keep, dtype=torch.long)
    names = {input_hook(bundle, layer, source): layer for layer in layers}
    resid = activations(bundle, torch.tensor([ids]), names)
    return ids, keep, {n: r[0, keep_t] for n, r in resid.items()}, truncated


def _layer_top(
    sae: Any,
    layer: int,
    resid: Tensor,
    top_k: int,
    scale: Tensor | None = None,
    keep_active: bool = False,
) -> LayerActivations:
    """The ``top_k`` features of each position (by ``act / scale`` when ``scale`` is given:
    positive, so active features still come before inactive ones); with ``keep_active``, every
    active feature too (sparse)."""
    import torch

    with torch.inference_mode():
        feats = sae.encode(resid.to(sae.dtype)).float()  # [pos, d_sae]
    k = min(top_k, feats.shape[-1])
    if scale is None:
        acts, ids = feats.topk(k, dim=-1)
    else:
        if scale.shape != feats.shape[-1:] or not bool((scale > 0).all()):
            raise ValueError(f"layer {layer}: scales must be one positive number per feature")
        _, ids = (feats / scale.to(feats)).topk(k, dim=-1)
        acts = feats.gather(-1, ids)
    acts = acts.clamp_min(0.0)
    active = None
    if keep_active:
        pos, fid = (feats > 0).nonzero(as_tuple=True)
        active = (pos.cpu(), fid.cpu(), feats[pos, fid].cpu())
    return LayerActivations(
        layer=layer,
        feature_ids=ids.cpu(),
        acts=acts.cpu(),
        n_active=(feats > 0).sum(-1).cpu(),
        active=active,
    )


def feature_activations(
    bundle: Bundle, text: str, layer: int, feature: int, source: str = RES
) -> tuple[list[str], list[float], bool]:
    """One feature's activation on every (non-special) token of ``text`` (a residual SAE's or,
    with ``source="transcoder"``, a transcoder's feature).

    ``(tokens, acts, truncated)``; used to mark a user's own text on a feature's dashboard.
    """
    import torch

    source = check_source(source)
    chosen = check_layers(bundle, [layer], source)
    sae = dictionary(bundle, layer, source)
    try:
        if source == RES:
            bundle.check_feature(layer, feature)
        elif isinstance(feature, bool) or not 0 <= feature < int(sae.cfg.d_sae):
            raise BundleError(
                f"feature {feature} does not exist on transcoder layer {layer} "
                f"(0–{int(sae.cfg.d_sae) - 1})"
            )
    except BundleError as err:
        raise EncodeError(str(err)) from None
    ids, keep, resid, truncated = _reported(bundle, text, chosen, source=source)
    with torch.inference_mode():
        acts = sae.encode(resid[layer].to(sae.dtype))[:, feature].float().clamp_min(0.0)
    decode = bundle.tokenizer.decode
    return [str(decode([ids[i]])) for i in keep], acts.tolist(), truncated
