"""Bundles: a model, its tokenizer, one SAE per chosen layer and (optionally) one transcoder per
layer, named by presets.

Every Gemma model goes through one path: transformers loads the weights (from the embedded
model's cache, a local directory, or the hub), and :func:`hooked_from_hf` builds a
``HookedSAETransformer`` from that model's own config and weights without any processing, so the
residual stream equals transformers' hidden states. transformer-lens itself only knows Gemma
configs by their official hub names; deriving the config from the HF config lets the same code
serve Gemma 2 2B, the embedded Gemma 3 270M, local fine-tunes and the tiny random test models
(the tests check that the derived config equals transformer-lens's own for the official names).

SAEs load lazily, one layer at a time, into a bounded LRU cache: Gemma Scope's 26 layers of
16k-wide SAEs would take about 8 GB at once. Transcoders (a second source of features: each
reads an MLP's input and writes its output) load the same way, into a cache of their own. Every
transcoder a bundle hands out reads ``blocks.N.ln2.hook_normalized`` and writes
``blocks.N.hook_mlp_out`` (:data:`TRANSCODER_IN`, :data:`TRANSCODER_OUT`): one trained on the
pre-feedforward norm's *weighted* output (Gemma Scope 2's, whose ``hf_hook_name`` says so) gets
the norm's weight folded into its encoder (:func:`fold_norm_weight`).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer.gguf_model import embedded_identity, embedded_model_dir
from explorer.hooked import hooked_from_hf
from explorer.paths import ASSETS_SAES, ASSETS_TRANSCODERS
from explorer.store.schema import sae_ref

if TYPE_CHECKING:
    from sae_lens import SAE, HookedSAETransformer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

RESID_POST = "blocks.{layer}.hook_resid_post"
TRANSCODER_IN = "blocks.{layer}.ln2.hook_normalized"
TRANSCODER_OUT = "blocks.{layer}.hook_mlp_out"
# The HF module whose output is the pre-feedforward norm's weighted output: a transcoder that
# names it (Gemma Scope 2's) reads ``ln2.w * ln2.hook_normalized``.
_HF_WEIGHTED_MLP_IN = "pre_feedforward_layernorm.output"
DEFAULT_LAYERS = (5, 9, 12, 15)  # the layers Gemma Scope 2 covers for Gemma 3 270M


class BundleError(ValueError):
    """A bundle cannot be built as asked; the message says why and what to do instead."""


@dataclass(frozen=True)
class SAESource:
    """Where one layer's SAE comes from: a sae-lens registry entry or a local directory.

    Args:
        release: sae-lens release name, e.g. ``gemma-scope-2b-pt-res-canonical``.
        sae_id: the SAE's id inside that release, e.g. ``layer_3/width_16k/canonical``.
        path: a local directory in sae-lens's own format (``cfg.json`` and
            ``sae_weights.safetensors``), used instead of ``release``/``sae_id``.
    """

    release: str | None = None
    sae_id: str | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.release is None or self.sae_id is None):
            raise BundleError("an SAE source is either a local path or a release plus an sae_id")

    @property
    def online(self) -> bool:
        return self.path is None

    def describe(self) -> str:
        return self.path if self.path is not None else f"{self.release}/{self.sae_id}"


@dataclass(frozen=True)
class BundleSpec:
    """What a bundle is made of.

    Args:
        name: the preset name (or ``custom``).
        model: ``embedded`` for the packaged Gemma 3 270M, a hub model name, or a local
            Hugging Face model directory.
        saes: one SAE source per layer, in layer order.
        hook_template: the hook each SAE reads, with ``{layer}`` in it.
        max_tokens: typed text longer than this (BOS included) is truncated.
        online: whether building the bundle needs the Hugging Face hub.
        description: one line for humans.
        transcoders: one transcoder source per layer, in layer order (none: no transcoders).
    """

    name: str
    model: str
    saes: tuple[tuple[int, SAESource], ...]
    hook_template: str = RESID_POST
    max_tokens: int = 1024
    online: bool = False
    description: str = ""
    transcoders: tuple[tuple[int, SAESource], ...] = ()

    def __post_init__(self) -> None:
        if not self.saes:
            raise BundleError(f"bundle {self.name!r} has no SAE layers")
        layers = [layer for layer, _ in self.saes]
        if layers != sorted(set(layers)) or layers[0] < 0:
            raise BundleError(f"bundle {self.name!r}: layers must be distinct and non-negative")
        if self.max_tokens < 2:
            raise BundleError("max_tokens must be at least 2 (BOS and one token)")
        tc_layers = [layer for layer, _ in self.transcoders]
        if tc_layers != sorted(set(tc_layers)) or (tc_layers and tc_layers[0] < 0):
            raise BundleError(f"bundle {self.name!r}: transcoder layers must be distinct")

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(layer for layer, _ in self.saes)

    def hook_name(self, layer: int) -> str:
        return self.hook_template.format(layer=layer)

    def source(self, layer: int) -> SAESource:
        for candidate, source in self.saes:
            if candidate == layer:
                return source
        raise BundleError(
            f"layer {layer} is not in bundle {self.name!r}; its layers are "
            + ", ".join(map(str, self.layers))
        )

    @property
    def transcoder_layers(self) -> tuple[int, ...]:
        return tuple(layer for layer, _ in self.transcoders)

    def transcoder_source(self, layer: int) -> SAESource:
        for candidate, source in self.transcoders:
            if candidate == layer:
                return source
        if not self.transcoders:
            raise BundleError(f"bundle {self.name!r} has no transcoders")
        raise BundleError(
            f"layer {layer} has no transcoder in bundle {self.name!r}; its transcoder layers "
            "are " + ", ".join(map(str, self.transcoder_layers))
        )


def _shipped_transcoder_layers() -> tuple[int, ...]:
    """The layers of ``assets/transcoders`` (its manifest's), none when they are not there."""
    from explorer.store.saes import SaeManifest, SaeManifestError

    try:
        return tuple(x.layer for x in SaeManifest.read(ASSETS_TRANSCODERS).layers)
    except SaeManifestError:
        return ()


def _default_spec() -> BundleSpec:
    return BundleSpec(
        name="default",
        model="embedded",
        saes=tuple((n, SAESource(path=str(ASSETS_SAES / f"layer_{n}"))) for n in DEFAULT_LAYERS),
        description="embedded Gemma 3 270M (GGUF Q4_K_M) with this project's own SAEs and "
        "transcoders (offline)",
        transcoders=tuple(
            (n, SAESource(path=str(ASSETS_TRANSCODERS / f"layer_{n}")))
            for n in _shipped_transcoder_layers()
        ),
    )


# Gemma Scope's transcoders for Gemma 2 2B: the 16k id of each layer in sae-lens's registry
# (``gemma-scope-2b-pt-transcoders``; the test checks them against it).
GEMMA_2_TRANSCODER_L0 = (
    76, 65, 49, 54, 88, 87, 95, 70, 52, 72, 88, 5, 6, 8, 8, 8, 10, 12, 13, 12, 11, 13, 15, 25,
    37, 41,
)  # fmt: skip


def _gemma_3_270m_spec() -> BundleSpec:
    release = "gemma-scope-2-270m-pt-res"
    return BundleSpec(
        name="gemma-3-270m",
        model="google/gemma-3-270m",
        saes=tuple(
            (n, SAESource(release=release, sae_id=f"layer_{n}_width_16k_l0_medium"))
            for n in DEFAULT_LAYERS
        ),
        online=True,
        description="google/gemma-3-270m with Gemma Scope 2 (16k, layers 5 9 12 15; "
        "transcoders on all 18 layers; online)",
        transcoders=tuple(
            (
                n,
                SAESource(
                    release="gemma-scope-2-270m-pt-transcoders-all",
                    sae_id=f"layer_{n}_width_16k_l0_small_affine",
                ),
            )
            for n in range(18)
        ),
    )


def _gemma_2_2b_spec() -> BundleSpec:
    release = "gemma-scope-2b-pt-res-canonical"
    return BundleSpec(
        name="gemma-2-2b",
        model="google/gemma-2-2b",
        saes=tuple(
            (n, SAESource(release=release, sae_id=f"layer_{n}/width_16k/canonical"))
            for n in range(26)
        ),
        online=True,
        description="google/gemma-2-2b with Gemma Scope (16k canonical, all 26 layers; "
        "transcoders 16k on all 26 layers; online)",
        transcoders=tuple(
            (
                n,
                SAESource(
                    release="gemma-scope-2b-pt-transcoders",
                    sae_id=f"layer_{n}/width_16k/average_l0_{l0}",
                ),
            )
            for n, l0 in enumerate(GEMMA_2_TRANSCODER_L0)
        ),
    )


PRESETS = {
    "default": _default_spec,
    "gemma-3-270m": _gemma_3_270m_spec,
    "gemma-2-2b": _gemma_2_2b_spec,
}


def preset(name: str) -> BundleSpec:
    """The spec of a named preset; an unknown name is a :class:`BundleError` listing the known."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise BundleError(
            f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)} "
            "(or give --model and --sae for a custom bundle)"
        ) from None


def parse_sae_source(text: str, layer: int) -> SAESource:
    """Parse a custom SAE argument for one layer; ``{layer}`` in it is replaced by the layer.

    ``RELEASE:SAE_ID`` names a sae-lens registry entry; anything else is a local directory:

    >>> parse_sae_source("gemma-scope-2b-pt-res-canonical:layer_{layer}/width_16k/canonical", 3)
    ... # doctest: +NORMALIZE_WHITESPACE
    SAESource(release='gemma-scope-2b-pt-res-canonical',
              sae_id='layer_3/width_16k/canonical', path=None)
    """
    filled = text.replace("{layer}", str(layer))
    if Path(filled).expanduser().exists() or ":" not in filled:
        return SAESource(path=str(Path(filled).expanduser()))
    release, sae_id = filled.split(":", 1)
    return SAESource(release=release, sae_id=sae_id)


def custom_spec(model: str, sae: str, layers: list[int], max_tokens: int = 1024) -> BundleSpec:
    """A bundle of any Gemma 2/3 text model (hub name or local dir) and SAEs per layer."""
    if not layers:
        raise BundleError("a custom bundle needs --layers")
    sources = tuple((n, parse_sae_source(sae, n)) for n in sorted(set(layers)))
    online = not Path(model).expanduser().is_dir() or any(s.online for _, s in sources)
    return BundleSpec(
        name="custom",
        model=model,
        saes=sources,
        max_tokens=max_tokens,
        online=online,
        description=f"{model} with {sae}",
    )


# ---------------------------------------------------------------------------- model loading


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``; anything else passes."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` is float32 on the CPU (bfloat16 matmuls are slow there) and bfloat16 on a GPU."""
    if dtype != "auto":
        return dtype
    return "float32" if device == "cpu" else "bfloat16"


def load_hf_model(
    model: str, cache_dir: str | Path | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a transformers model and tokenizer: ``embedded``, a local dir or a hub name."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model == "embedded":
        location: str | Path = embedded_model_dir(cache_dir)
    else:
        location = model
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        hf_model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    except OSError as err:
        raise BundleError(_offline_message(f"model {model!r}", err)) from None
    hf_model.eval()
    return hf_model, tokenizer


def _offline_message(what: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"cannot load {what}: {first[:200]}. It needs the Hugging Face hub (network access, and "
        "for Gemma a token: `huggingface-cli login`) or a local copy; "
        "`--preset default` works offline"
    )


def load_sae(source: SAESource, device: str = "cpu", dtype: str = "float32") -> SAE:
    """Load one SAE from a local sae-lens directory or from the sae-lens registry."""
    from sae_lens import SAE

    if source.path is not None:
        path = Path(source.path)
        if not (path / "cfg.json").is_file():
            raise BundleError(
                f"no SAE at {path} (cfg.json missing)"
                + (
                    "; build the default SAEs with `python -m precompute train-saes --preset "
                    "default`"
                    if path.parent == ASSETS_SAES
                    else ""
                )
            )
        return SAE.load_from_disk(path, device=device, dtype=dtype)
    if source.release is None or source.sae_id is None:  # excluded by SAESource itself
        raise BundleError(f"incomplete SAE source {source!r}")
    try:
        return SAE.from_pretrained(source.release, source.sae_id, device=device, dtype=dtype)
    except (OSError, ValueError) as err:  # offline / not cached / unknown id
        raise BundleError(_offline_message(f"SAE {source.describe()}", err)) from None
    except RuntimeError as err:  # e.g. cached weights whose shapes contradict the config
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else "RuntimeError"
        raise BundleError(f"cannot load SAE {source.describe()}: {first}") from None


def fold_norm_weight(tc: SAE, model: HookedSAETransformer, layer: int) -> SAE:
    """Make ``tc`` read :data:`TRANSCODER_IN` and write :data:`TRANSCODER_OUT` of ``layer``.

    A transcoder trained on the pre-feedforward norm's weighted output (its ``hf_hook_name``
    ends in ``pre_feedforward_layernorm.output``: Gemma Scope 2's; sae-lens names
    ``hook_mlp_in`` for them, the residual before the norm) reads ``w * x`` where ``x`` is
    ``ln2.hook_normalized`` and ``w`` the norm's weight: the weight is folded into the encoder
    (and the skip term), which is exact. Others must already name the two hooks.
    """
    import torch

    meta = tc.cfg.metadata
    want_in, want_out = TRANSCODER_IN.format(layer=layer), TRANSCODER_OUT.format(layer=layer)
    hf_in = str(meta.get("hf_hook_name") or "")
    if hf_in.endswith(_HF_WEIGHTED_MLP_IN) and f"layers.{layer}." in hf_in:
        w = model.blocks[layer].ln2.w.detach().to(tc.W_enc.device, tc.W_enc.dtype)
        with torch.no_grad():
            tc.W_enc.mul_(w.unsqueeze(-1))
            if hasattr(tc, "W_skip"):
                tc.W_skip.mul_(w.unsqueeze(0))  # [d_out, d_in]: input columns
        meta.hook_name = want_in
    if meta.get("hook_name_out") is None:  # not recorded (sae-lens's own training): the MLP's
        meta.hook_name_out = want_out
    if meta.hook_name != want_in or meta.get("hook_name_out") != want_out:
        raise BundleError(
            f"a transcoder of layer {layer} reads {meta.hook_name!r} and writes "
            f"{meta.get('hook_name_out')!r}; this explorer needs {want_in!r} and {want_out!r}"
        )
    return tc


@dataclass
class Bundle:
    """A loaded model plus lazily loaded SAEs (at most ``max_saes`` held at once)."""

    spec: BundleSpec
    model: HookedSAETransformer
    tokenizer: PreTrainedTokenizerBase
    device: str = "cpu"
    dtype: str = "float32"
    max_saes: int = 8
    _saes: OrderedDict[int, SAE] = field(default_factory=OrderedDict, repr=False)
    _transcoders: OrderedDict[int, SAE] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _widths: dict[int, int] = field(default_factory=dict, repr=False)

    @property
    def layers(self) -> tuple[int, ...]:
        return self.spec.layers

    def sae(self, layer: int) -> SAE:
        """The SAE of ``layer``, loaded on first use; the least recently used one is dropped."""
        source = self.spec.source(layer)
        return self._cached(self._saes, layer, lambda: load_sae(source, self.device, self.dtype))

    def transcoder(self, layer: int) -> SAE:
        """The transcoder of ``layer`` (sae-lens's transcoder class), loaded on first use into
        its own LRU cache; it reads :data:`TRANSCODER_IN` and writes :data:`TRANSCODER_OUT`."""
        source = self.spec.transcoder_source(layer)

        def load() -> SAE:
            tc = load_sae(source, self.device, self.dtype)
            if not hasattr(tc, "cfg") or not hasattr(tc.cfg, "d_out"):
                raise BundleError(f"{source.describe()} is not a transcoder")
            return fold_norm_weight(tc, self.model, layer)

        return self._cached(self._transcoders, layer, load)

    def _cached(self, cache: OrderedDict[int, SAE], layer: int, load: Any) -> SAE:
        with self._lock:
            if layer in cache:
                cache.move_to_end(layer)
                return cache[layer]
        sae = load()
        sae.eval()
        with self._lock:
            cache[layer] = sae
            cache.move_to_end(layer)
            while len(cache) > self.max_saes:
                cache.popitem(last=False)
        return sae

    def width(self, layer: int) -> int:
        """The number of features of ``layer``'s SAE (loaded once to learn it, then remembered
        even after the SAE leaves the cache)."""
        if layer not in self._widths:
            self._widths[layer] = int(self.sae(layer).cfg.d_sae)
        return self._widths[layer]

    def check_feature(self, layer: int, feature: int) -> None:
        """The one check that a (layer, feature) exists; a :class:`BundleError` says why not."""
        if layer not in self.layers:
            have = ", ".join(map(str, self.layers))
            raise BundleError(f"layer {layer} has no SAE in this bundle (layers: {have})")
        width = self.width(layer)
        if isinstance(feature, bool) or not 0 <= feature < width:
            raise BundleError(f"feature {feature} does not exist on layer {layer} (0–{width - 1})")

    def check_layers(self, layers: list[int] | None) -> list[int]:
        """Validate requested layers (``None`` means all of the bundle's)."""
        if layers is None:
            return list(self.layers)
        for layer in layers:
            self.spec.source(layer)
        return sorted(set(layers))

    @property
    def special_ids(self) -> set[int]:
        """Token ids that never count as positions: BOS, EOS, PAD and the other specials."""
        return set(self.tokenizer.all_special_ids)


def bundle_identity(spec: BundleSpec) -> dict[str, Any]:
    """What a store records of the bundle it was built with, and what the app checks it against.

    ``{"model", "model_sha256", "layers": {layer: {"hook_name", "sae"}}}``. The embedded model is
    named ``gemma-3-270m`` with its GGUF's sha256; other models by their name (no hash: a hub
    model is not downloaded just to hash it).
    """
    if spec.model == "embedded":
        ident = embedded_identity()
        model, sha = ident["model"], ident["gguf_sha256"]
    else:
        model, sha = spec.model, None
    layers = {
        layer: {"hook_name": spec.hook_name(layer), "sae": sae_ref(src.describe())}
        for layer, src in spec.saes
    }
    return {"model": model, "model_sha256": sha, "layers": layers}


def build_bundle(
    spec: BundleSpec,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: str | Path | None = None,
    max_saes: int = 8,
) -> Bundle:
    """Load the model of ``spec`` (SAEs load later, on first use of each layer)."""
    if spec.name == "default" and not any(
        (Path(s.path) / "cfg.json").is_file() for _, s in spec.saes if s.path
    ):
        raise BundleError(
            f"the default SAEs are not in {ASSETS_SAES}; build them with "
            "`python -m precompute train-saes --preset default`"
        )
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    hf_model, tokenizer = load_hf_model(spec.model, cache_dir)
    model = hooked_from_hf(hf_model, tokenizer, device=device, dtype=dtype)
    del hf_model
    return Bundle(
        spec=spec, model=model, tokenizer=tokenizer, device=device, dtype=dtype, max_saes=max_saes
    )
