"""Bundles: a model, its tokenizer and one SAE per chosen layer, named by presets.

Every Gemma model goes through one path: transformers loads the weights (from the embedded
model's cache, a local directory, or the hub), and :func:`hooked_from_hf` builds a
``HookedSAETransformer`` from that model's own config and weights without any processing, so the
residual stream equals transformers' hidden states. transformer-lens itself only knows Gemma
configs by their official hub names; deriving the config from the HF config lets the same code
serve Gemma 2 2B, the embedded Gemma 3 270M, local fine-tunes and the tiny random test models
(the tests check that the derived config equals transformer-lens's own for the official names).

SAEs load lazily, one layer at a time, into a bounded LRU cache: Gemma Scope's 26 layers of
16k-wide SAEs would take about 8 GB at once.
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
from explorer.paths import ASSETS_SAES
from explorer.store.schema import sae_ref

if TYPE_CHECKING:
    from sae_lens import SAE, HookedSAETransformer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

RESID_POST = "blocks.{layer}.hook_resid_post"
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
    """

    name: str
    model: str
    saes: tuple[tuple[int, SAESource], ...]
    hook_template: str = RESID_POST
    max_tokens: int = 1024
    online: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if not self.saes:
            raise BundleError(f"bundle {self.name!r} has no SAE layers")
        layers = [layer for layer, _ in self.saes]
        if layers != sorted(set(layers)) or layers[0] < 0:
            raise BundleError(f"bundle {self.name!r}: layers must be distinct and non-negative")
        if self.max_tokens < 2:
            raise BundleError("max_tokens must be at least 2 (BOS and one token)")

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


def _default_spec() -> BundleSpec:
    return BundleSpec(
        name="default",
        model="embedded",
        saes=tuple((n, SAESource(path=str(ASSETS_SAES / f"layer_{n}"))) for n in DEFAULT_LAYERS),
        description="embedded Gemma 3 270M (GGUF Q4_K_M) with this project's own SAEs (offline)",
    )


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
        description="google/gemma-3-270m with Gemma Scope 2 (16k, layers 5 9 12 15; online)",
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
        description="google/gemma-2-2b with Gemma Scope (16k canonical, all 26 layers; online)",
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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _widths: dict[int, int] = field(default_factory=dict, repr=False)

    @property
    def layers(self) -> tuple[int, ...]:
        return self.spec.layers

    def sae(self, layer: int) -> SAE:
        """The SAE of ``layer``, loaded on first use; the least recently used one is dropped."""
        source = self.spec.source(layer)
        with self._lock:
            if layer in self._saes:
                self._saes.move_to_end(layer)
                return self._saes[layer]
        sae = load_sae(source, device=self.device, dtype=self.dtype)
        sae.eval()
        with self._lock:
            self._saes[layer] = sae
            self._saes.move_to_end(layer)
            while len(self._saes) > self.max_saes:
                self._saes.popitem(last=False)
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
