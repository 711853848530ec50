"""A Gemma Scope-shaped bundle built locally: random weights in Gemma 2 2B's exact shape and 26
JumpReLU SAEs of width 16,384 whose thresholds give L0 of about 70. A benchmark fixture, not a
user preset: nothing is downloaded, everything is seeded.

    from gemma2_shape import build_gemma2_shape
    shape = build_gemma2_shape(Path("/tmp/gse-scale"), device="cpu", dtype="float32")
    shape.bundle  # an explorer Bundle: store_build.job.Job and the app run on it unchanged

The model is transformer-lens's ``HookedSAETransformer`` with the config
:func:`explorer.hooked.hooked_config` derives from :func:`gemma2_2b_config` (Gemma 2 2B's published
numbers: 26 layers, d_model 2304, 8 heads of 256 with 4 key-value heads, MLP 9216, vocab 256,000,
soft caps 50 / 30, sliding window 4096 on alternate layers). The unembedding is tied to the
embedding, as in Gemma 2 (one 590M-parameter matrix, not two).

``shared_blocks=True`` (the CPU default of ``bench/bench_scale.py``) lets the 26 blocks share one
block's random weights: the same shapes, the same FLOPs and the same memory traffic per block (a
block's 312 MB never fits a CPU cache), in 2.7 GB of fp32 instead of 10.5 GB, so the model and
all 26 fp32 SAEs (7.9 GB) fit this 2-core, 24 GB machine's 12 GB share. Build distinct blocks
(``shared_blocks=False``) where memory allows, e.g. on a GPU at bf16 (5.2 GB).

The tokenizer is Gemma 3's (the embedded model's, already on disk): Gemma 2's is not here. Its ids
up to 255,999 are Gemma 2's size; ids from 256,000 are added specials (``<end_of_image>``,
``<unusedN>``) that English text never produces (none in 200k corpus tokens).

Thresholds: each SAE's decoder rows are random unit vectors, ``W_enc = W_dec.T``, and each
feature's threshold is the ``1 - l0 / width`` quantile of its pre-activations on calibration
tokens from the corpus (its documents in ``all`` order, shuffled by ``seed + 1``: the mixture a
precompute run reads first, not the same windows), so every feature fires on about
``l0 / width`` of tokens and L0 is about ``l0`` on similar text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import Gemma2Config, PreTrainedTokenizerBase

    from explorer.bundle import Bundle

logger = logging.getLogger(__name__)

GEMMA2_2B = {
    "vocab_size": 256_000,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "query_pre_attn_scalar": 256,
    "max_position_embeddings": 8192,
    "sliding_window": 4096,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh",
    "initializer_range": 0.02,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
}
SAE_WIDTH = 16_384
TARGET_L0 = 70.0


def gemma2_2b_config(**overrides: Any) -> Gemma2Config:
    """Gemma 2 2B's config from its published numbers (``overrides`` shrink it for tests)."""
    from transformers import Gemma2Config

    return Gemma2Config(**{**GEMMA2_2B, **overrides})


def gemma_tokenizer() -> PreTrainedTokenizerBase:
    """Gemma 3's tokenizer, from the embedded model's cache (converted once by the app)."""
    from transformers import AutoTokenizer

    from explorer.gguf_model import embedded_model_dir

    return AutoTokenizer.from_pretrained(embedded_model_dir(None))


def random_model(
    hf_config: Gemma2Config,
    tokenizer: PreTrainedTokenizerBase,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    shared_blocks: bool = False,
) -> Any:
    """A ``HookedSAETransformer`` of ``hf_config``'s shape with seeded random weights.

    Norm weights are 1 and biases 0 (as a trained Gemma's are near), the embedding N(0, 1) (Gemma
    scales its embedding by sqrt(d_model), transformer-lens folds that in), every other matrix
    N(0, 0.02). The unembedding is the embedding's transpose (tied, no copy).
    """
    from sae_lens import HookedSAETransformer

    from explorer.hooked import hooked_config, transpose_weights_once

    cfg = hooked_config(hf_config, device="cpu", dtype=dtype)
    model = HookedSAETransformer(cfg, tokenizer, move_to_device=False)
    if shared_blocks:
        first = model.blocks[0]
        for i, block in enumerate(model.blocks[1:], start=1):
            # parameters from block 0; buffers (rotary tables, masks) from a block of the same
            # attention type (Gemma 2's local and global layers alternate)
            twin = model.blocks[i % 2]
            for (_, mod), (_, src) in zip(
                block.named_modules(), first.named_modules(), strict=True
            ):
                for name in list(mod._parameters):
                    mod._parameters[name] = src._parameters[name]
            for (_, mod), (_, src) in zip(block.named_modules(), twin.named_modules(), strict=True):
                for name in list(mod._buffers):
                    mod._buffers[name] = src._buffers[name]
    gen = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    for name, p in sorted(model.named_parameters(remove_duplicate=False)):
        if id(p) in seen or name.startswith("unembed."):
            continue
        seen.add(id(p))
        leaf = name.rsplit(".", 1)[-1]
        with torch.no_grad():
            if leaf == "w":  # RMSNorm weights
                p.fill_(1.0)
            elif leaf.startswith("b_"):
                p.zero_()
            else:
                std = 1.0 if name == "embed.W_E" else 0.02
                # 4096 rows at a time: no temporary of the 590M-parameter embedding
                flat = p.view(p.shape[0], -1)
                for a in range(0, flat.shape[0], 4096):
                    rows = flat[a : a + 4096]
                    rows.copy_(torch.randn(rows.shape, generator=gen) * std)
    model.unembed.W_U = torch.nn.Parameter(model.embed.W_E.data.T, requires_grad=False)
    with torch.no_grad():
        model.unembed.b_U.zero_()
    model.to(device, print_details=False)
    model.eval()
    model.requires_grad_(False)
    transpose_weights_once(model)
    return model


def calibrated_sae(
    acts: torch.Tensor, width: int, l0: float, hook_name: str, seed: int, dtype: str = "float32"
) -> Any:
    """A sae-lens ``JumpReLUSAE`` on ``acts`` ``[tokens, d_in]``: random unit decoder rows,
    ``W_enc = W_dec.T``, zero biases, each feature's threshold at the ``1 - l0 / width`` quantile
    of its pre-activations on ``acts``."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_in = acts.shape[1]
    gen = torch.Generator().manual_seed(seed)
    w_dec = torch.nn.functional.normalize(torch.randn(width, d_in, generator=gen), dim=-1)
    pre = acts.float() @ w_dec.T  # [tokens, width]
    q = min(max(1.0 - l0 / width, 0.0), 1.0)
    threshold = torch.quantile(pre, q, dim=0).clamp_min(1e-6)
    cfg = JumpReLUSAEConfig(
        d_in=d_in,
        d_sae=width,
        dtype=dtype,
        apply_b_dec_to_input=False,
        metadata=SAEMetadata(hook_name=hook_name, model_name="gemma-2-2b-shape"),
    )
    sae = JumpReLUSAE(cfg)
    with torch.no_grad():
        sae.W_dec.copy_(w_dec)
        sae.W_enc.copy_(w_dec.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.threshold.copy_(threshold)
    return sae.eval()


def calibrated_transcoder(
    acts: torch.Tensor, width: int, l0: float, layer: int, seed: int, dtype: str = "float32"
) -> Any:
    """A sae-lens ``JumpReLUTranscoder`` reading ``blocks.{layer}.ln2.hook_normalized``
    (``acts``, ``[tokens, d_in]``) and writing ``hook_mlp_out``, as Gemma Scope's: random unit
    encoder columns and decoder rows, zero biases, each feature's threshold at the
    ``1 - l0 / width`` quantile of its pre-activations on ``acts``."""
    from sae_lens import JumpReLUTranscoder, JumpReLUTranscoderConfig
    from sae_lens.saes.sae import SAEMetadata

    d_in = acts.shape[1]
    gen = torch.Generator().manual_seed(seed)
    w_enc = torch.nn.functional.normalize(torch.randn(d_in, width, generator=gen), dim=0)
    w_dec = torch.nn.functional.normalize(torch.randn(width, d_in, generator=gen), dim=-1)
    q = min(max(1.0 - l0 / width, 0.0), 1.0)
    threshold = torch.quantile(acts.float() @ w_enc, q, dim=0).clamp_min(1e-6)
    cfg = JumpReLUTranscoderConfig(
        d_in=d_in,
        d_sae=width,
        d_out=d_in,
        dtype=dtype,
        apply_b_dec_to_input=False,
        metadata=SAEMetadata(
            hook_name=f"blocks.{layer}.ln2.hook_normalized",
            hook_name_out=f"blocks.{layer}.hook_mlp_out",
            model_name="gemma-2-2b-shape",
        ),
    )
    tc = JumpReLUTranscoder(cfg)
    with torch.no_grad():
        tc.W_enc.copy_(w_enc)
        tc.W_dec.copy_(w_dec)
        tc.b_enc.zero_()
        tc.b_dec.zero_()
        tc.threshold.copy_(threshold)
    return tc.eval()


@dataclass
class Gemma2Shape:
    bundle: Bundle
    sae_dirs: dict[int, Path]
    calibration_l0: dict[int, float]  # L0 on the calibration tokens, per layer (if calibrated)
    transcoder_dirs: dict[int, Path] | None = None
    transcoder_l0: dict[int, float] | None = None  # the same, of the transcoders (if any)


def build_gemma2_shape(
    where: Path,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    width: int = SAE_WIDTH,
    l0: float = TARGET_L0,
    calibration_tokens: int = 1024,
    shared_blocks: bool = False,
    max_saes: int = 8,
    tokenizer: PreTrainedTokenizerBase | None = None,
    transcoders: bool = False,
    **config_overrides: Any,
) -> Gemma2Shape:
    """The model and one calibrated SAE per layer, saved under ``where/saes/layer_N`` (reused if
    already there and of this width), as an explorer :class:`Bundle` (SAEs load lazily); with
    ``transcoders``, one calibrated transcoder per layer too (``where/transcoders/layer_N``,
    Gemma Scope's ``gemma-scope-2b-pt-transcoders`` shape: 26 x 16k), the bundle's second
    source."""
    from explorer.bundle import Bundle, BundleSpec, SAESource
    from explorer.encode import residuals
    from precompute.corpus import pad_windows, run_documents, token_windows

    tok = tokenizer if tokenizer is not None else gemma_tokenizer()
    hf_config = gemma2_2b_config(**config_overrides)
    model = random_model(hf_config, tok, seed, device, dtype, shared_blocks)
    layers = list(range(hf_config.num_hidden_layers))
    dirs = {n: where / "saes" / f"layer_{n}" for n in layers}
    tc_dirs = {n: where / "transcoders" / f"layer_{n}" for n in layers} if transcoders else {}
    spec = BundleSpec(
        name="gemma-2-2b-shape",
        model="gemma-2-2b-shape",
        saes=tuple((n, SAESource(path=str(dirs[n]))) for n in layers),
        description="random weights in Gemma 2 2B's shape, 26 JumpReLU SAEs 16k (bench only)",
        transcoders=tuple((n, SAESource(path=str(p))) for n, p in tc_dirs.items()),
    )
    bundle = Bundle(spec=spec, model=model, tokenizer=tok, device=device, dtype=dtype)
    bundle.max_saes = max_saes
    windows, n = [], 0
    for w in token_windows(run_documents("default", "all", seed + 1), tok, 128):
        windows.append(w.token_ids)
        n += len(w.token_ids) - 1
        if n >= calibration_tokens:
            break
    ids, keep = pad_windows(windows, tok.pad_token_id or 0, set(tok.all_special_ids))
    l0s: dict[int, float] = {}
    tc_l0s = _calibrate_transcoders(bundle, ids, keep, tc_dirs, width, l0, seed, dtype)
    missing = [n for n in layers if not _saved(dirs[n], width)]
    shape = Gemma2Shape(bundle, dirs, l0s, tc_dirs or None, tc_l0s if transcoders else None)
    if not missing:  # saved by an earlier build with this seed: nothing to calibrate
        return shape
    resid = residuals(bundle, ids, layers)
    for layer in layers:
        acts = resid.pop(layer)[keep.to(bundle.device)].float().cpu()
        if layer in missing:
            sae = calibrated_sae(
                acts, width, l0, spec.hook_name(layer), seed * 1000 + layer + 1, dtype
            )
            sae.save_model(dirs[layer])
        else:
            sae = bundle.sae(layer)
        with torch.inference_mode():
            feats = sae.encode(acts.to(sae.device, sae.dtype))
        l0s[layer] = float((feats > 0).sum(-1).float().mean())
        del sae, feats, acts
    bundle._saes.clear()
    return shape


def _calibrate_transcoders(
    bundle: Bundle,
    ids: torch.Tensor,
    keep: torch.Tensor,
    dirs: dict[int, Path],
    width: int,
    l0: float,
    seed: int,
    dtype: str,
) -> dict[int, float]:
    """Write a calibrated transcoder into each of ``dirs`` that lacks one of this width; their
    L0 on the calibration tokens (only of those written)."""
    from explorer.bundle import TRANSCODER_IN
    from explorer.encode import activations

    missing = [n for n in dirs if not _saved(dirs[n], width)]
    if not missing:
        return {}
    acts_in = activations(bundle, ids, {TRANSCODER_IN.format(layer=n): n for n in missing})
    out: dict[int, float] = {}
    for layer in missing:
        acts = acts_in.pop(layer)[keep.to(bundle.device)].float().cpu()
        tc = calibrated_transcoder(acts, width, l0, layer, seed * 1000 + 500 + layer, dtype)
        tc.save_model(dirs[layer])
        with torch.inference_mode():
            out[layer] = float((tc.encode(acts.to(tc.dtype)) > 0).sum(-1).float().mean())
        del tc, acts
    return out


def _saved(path: Path, width: int) -> bool:
    import json

    try:
        return int(json.loads((path / "cfg.json").read_text())["d_sae"]) == width
    except (OSError, ValueError, KeyError):
        return False
