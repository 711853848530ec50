"""Transcoders: a sparse dictionary per layer that reads an MLP's input and writes its output.

Hooks (transformer-lens names, the convention of Gemma Scope's transcoders in sae-lens):

- input ``blocks.N.ln2.hook_normalized``: the pre-feedforward RMSNorm's normalised vector
  ``x / rms(x)``, the same in folded and unfolded transformer-lens models;
- output ``blocks.N.hook_mlp_out``: the MLP's output after the post-feedforward norm.

The norm's per-channel weight is linear, so it is part of the function learned: the MLP the
transcoder replaces is ``hook_mlp_out = ln2_post(mlp(ln2.w * input))`` (:func:`mlp_of_input`,
tested on the real model).

Training (:func:`train_transcoders`) is BatchTopK with the firing-rate controller of the SAEs
(:func:`precompute.train.balanced.balance_step`: a cap, a floor, a few free features), plus an
optional skip (affine) term ``x @ W_skip``, on activations cached once on disk
(:mod:`precompute.train.cache`: one forward pass of the model for all layers). Saved as
sae-lens's ``JumpReLUSkipTranscoder`` (or ``JumpReLUTranscoder``) with per-feature thresholds
and unit-norm decoder rows, so ``SAE.load_from_disk`` returns sae-lens's transcoder class and a
feature's activation is in the output's units. Resumable: the activation cache fills in steps,
every layer checkpoints its optimizer state every ``checkpoint_every`` steps (in the work
directory, never in ``assets/``), and a finished layer is never trained again.

Metrics (:mod:`precompute.train.replacement`): per layer on held-out tokens read in the
corpus's representative order, explained variance of the MLP output, L0, dead and dense shares;
for the whole replacement model (every MLP replaced, no error terms) the next-token
cross-entropy increase and the top-1 agreement with the original model.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer.files import atomic_write_text

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

logger = logging.getLogger(__name__)

INPUT_HOOK = "blocks.{layer}.ln2.hook_normalized"
OUTPUT_HOOK = "blocks.{layer}.hook_mlp_out"


def in_key(layer: int) -> str:
    """The activation cache's key of a layer's input."""
    return f"{layer}_in"


def out_key(layer: int) -> str:
    """The activation cache's key of a layer's output."""
    return f"{layer}_out"


def hooks_of(layers: tuple[int, ...]) -> dict[str, str]:
    """``{cache key: hook name}`` of the inputs and outputs of ``layers``."""
    out = {}
    for n in layers:
        out[in_key(n)] = INPUT_HOOK.format(layer=n)
        out[out_key(n)] = OUTPUT_HOOK.format(layer=n)
    return out


def mlp_of_input(model: Any, layer: int, x: Tensor) -> Tensor:
    """What the model's block ``layer`` writes at ``hook_mlp_out`` for the transcoder input
    ``x`` (``ln2.hook_normalized``): the function a transcoder approximates."""
    block = model.blocks[layer]
    y = block.mlp(x * block.ln2.w)
    return block.ln2_post(y) if hasattr(block, "ln2_post") else y


@dataclass(frozen=True)
class TranscoderConfig:
    """How to train a bundle's transcoders.

    Args:
        preset: the bundle preset whose model is used.
        layers: layers to train (the default: all 18 of Gemma 3 270M).
        d_sae: dictionary width.
        k: BatchTopK's average number of active features per token (the target L0).
        skip: learn a skip (affine) term ``x @ W_skip`` beside the features.
        training_tokens: cached activation rows each transcoder trains on (one epoch each).
        epochs: passes over the cached rows.
        batch_size: rows per optimizer step.
        lr: Adam learning rate (constant, then linear decay to a tenth over the last 20%).
        context_size: tokens per window, BOS included.
        model_batch: windows per forward pass while caching.
        corpus: corpus spec.
        eval_tokens: held-out tokens for the per-layer metrics (EV, L0, dead, dense).
        ce_tokens: held-out tokens for the replacement model's cross-entropy and agreement.
        seed: seeds the init and the batch order.
        device: ``auto``, ``cpu`` or ``cuda``.
        out_dir: where ``layer_N/`` and the manifest are written.
        work_dir: the activation caches and the checkpoints.
        max_density: the firing-rate cap; ``min_density`` the floor; ``free_features`` how
            many of the densest features the cap leaves alone; ``balance_rate`` the largest
            threshold change per step (see :func:`~precompute.train.balanced.balance_step`).
        checkpoint_every: optimizer steps between checkpoints.
        aux_k: the auxiliary loss of Gao et al. 2024 ("Scaling and evaluating sparse
            autoencoders"): on each row, the ``aux_k`` dead features (running firing rate under
            ``aux_dead_rate``) with the largest pre-activations reconstruct what the live ones
            missed, weighted ``aux_alpha``; it gives dead features a gradient (0: off).
    """

    preset: str = "default"
    layers: tuple[int, ...] = tuple(range(18))
    d_sae: int = 2048
    k: int = 16
    skip: bool = True
    training_tokens: int = 300_000
    epochs: int = 2
    batch_size: int = 1024
    lr: float = 1e-3
    context_size: int = 128
    model_batch: int = 32
    corpus: str = "default"
    eval_tokens: int = 50_000
    ce_tokens: int = 8_000
    seed: int = 0
    device: str = "auto"
    out_dir: str = "assets/transcoders"
    work_dir: str = "transcoder-work"
    max_density: float = 0.008
    min_density: float = 0.0001
    free_features: int = 150
    balance_rate: float = 0.05
    checkpoint_every: int = 20
    aux_k: int = 64
    aux_alpha: float = 1 / 32
    aux_dead_rate: float = 1e-5
    aux_relu: bool = False

    def __post_init__(self) -> None:
        if not self.layers or any(n < 0 for n in self.layers):
            raise ValueError("layers must be a non-empty list of non-negative layer indices")
        for name in ("d_sae", "k", "training_tokens", "epochs", "batch_size", "context_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.k >= self.d_sae:
            raise ValueError("k must be smaller than d_sae")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ValueError("lr must be a positive number")
        if not 0 < self.min_density < self.max_density < 1:
            raise ValueError("need 0 < min_density < max_density < 1")
        if not 0 <= self.free_features < self.d_sae:
            raise ValueError("free_features must be between 0 and d_sae - 1")
        if self.checkpoint_every <= 0:
            raise ValueError("checkpoint_every must be positive")

    @property
    def steps(self) -> int:
        return self.epochs * (self.training_tokens // self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["layers"] = list(self.layers)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TranscoderConfig:
        return cls(**{**data, "layers": tuple(data.get("layers", ()))})


# The settings of the shipped transcoders (``train-transcoders --recipe default``), over the
# config's defaults; chosen from the pilot in docs (width vs EV on two layers).
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
}


def architecture(cfg: TranscoderConfig) -> str:
    kind = "jumprelu_skip_transcoder" if cfg.skip else "jumprelu_transcoder"
    return (
        f"{kind} (trained as batchtopk k={cfg.k}, firing rate capped at "
        f"{cfg.max_density:.2%}, floor {cfg.min_density:.3%})"
    )


class Stopped(RuntimeError):
    """Training stopped on request (``should_stop``); the last checkpoint is kept."""


@dataclass
class _State:
    """Everything a layer's training needs to resume exactly."""

    params: dict[str, Tensor]
    opt: Any
    step: int
    theta: float  # the global selection threshold (EMA of the smallest selected score)
    select_bias: Tensor
    density_ema: Tensor
    x_scale: float
    y_scale: float


def load_rows(path: Path, key: str, info: Any, limit: int) -> Tensor:
    """A cached key's first ``limit`` rows as a bfloat16 tensor in memory."""
    import numpy as np
    import torch

    from precompute.train import cache

    bits: np.ndarray = cache.open_layer(path, key, info)[:limit]
    return torch.from_numpy(np.array(bits, dtype="<u2")).view(torch.bfloat16)


def _init_state(cfg: TranscoderConfig, x: Tensor, y: Tensor, layer: int, device: str) -> _State:
    import torch

    gen = torch.Generator().manual_seed(cfg.seed * 1000 + layer)
    sample = torch.linspace(0, x.shape[0] - 1, min(x.shape[0], 65_536)).long()
    xs, ys = x[sample].float(), y[sample].float()
    d_in, d_out = x.shape[1], y.shape[1]
    x_scale = d_in**0.5 / float(xs.norm(dim=-1).mean())
    y_scale = d_out**0.5 / float(ys.norm(dim=-1).mean())
    w_dec = torch.randn(cfg.d_sae, d_out, generator=gen)
    w_dec /= w_dec.norm(dim=-1, keepdim=True)
    w_enc = torch.randn(d_in, cfg.d_sae, generator=gen) / d_in**0.5
    # centred pre-activations: the MLP's normalised input shares a large mean direction, and an
    # encoder column pointing away from it would never fire (dead from the first step)
    params = {
        "W_enc": w_enc,
        "b_enc": -(xs.mean(0) * x_scale) @ w_enc,
        "W_dec": w_dec,
        "b_dec": (ys * y_scale).mean(0),
    }
    if cfg.skip:
        params["W_skip"] = torch.zeros(d_in, d_out)
    params = {k: v.to(device).requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.Adam(list(params.values()), lr=cfg.lr, betas=(0.9, 0.999))
    return _State(
        params=params,
        opt=opt,
        step=0,
        theta=-1.0,
        select_bias=torch.zeros(cfg.d_sae, device=device),
        density_ema=torch.full((cfg.d_sae,), -1.0, device=device),
        x_scale=x_scale,
        y_scale=y_scale,
    )


def _save_checkpoint(path: Path, state: _State) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "params": {k: v.detach() for k, v in state.params.items()},
            "opt": state.opt.state_dict(),
            "step": state.step,
            "theta": state.theta,
            "select_bias": state.select_bias,
            "density_ema": state.density_ema,
            "x_scale": state.x_scale,
            "y_scale": state.y_scale,
        },
        tmp,
    )
    tmp.replace(path)


def _load_checkpoint(path: Path, cfg: TranscoderConfig, device: str) -> _State | None:
    import torch

    if not path.is_file():
        return None
    data = torch.load(path, map_location=device, weights_only=True)
    params = {k: v.to(device).requires_grad_(True) for k, v in data["params"].items()}
    opt = torch.optim.Adam(list(params.values()), lr=cfg.lr)
    opt.load_state_dict(data["opt"])
    return _State(
        params=params,
        opt=opt,
        step=int(data["step"]),
        theta=float(data["theta"]),
        select_bias=data["select_bias"],
        density_ema=data["density_ema"],
        x_scale=float(data["x_scale"]),
        y_scale=float(data["y_scale"]),
    )


def _lr(cfg: TranscoderConfig, step: int) -> float:
    steps = cfg.steps
    decay_from = steps - steps // 5
    if step < decay_from:
        return cfg.lr
    frac = (step - decay_from) / max(1, steps - decay_from)
    return cfg.lr * (1 - 0.9 * frac)


def _batch_order(cfg: TranscoderConfig, layer: int, epoch: int, n: int) -> np.ndarray:
    import numpy as np

    return np.random.default_rng([cfg.seed, layer, epoch]).permutation(n)


def train_layer(
    cfg: TranscoderConfig,
    x: Tensor,
    y: Tensor,
    layer: int,
    checkpoint: Path,
    device: str = "cpu",
    should_stop: Callable[[int], bool] | None = None,
) -> dict[str, Tensor]:
    """Train one transcoder on rows ``x`` (inputs) and ``y`` (outputs), resuming from
    ``checkpoint`` when it exists; returns its inference weights in sae-lens's layout and the
    model's units (:func:`inference_weights`). ``should_stop(step)`` true raises
    :class:`Stopped` after writing a checkpoint."""
    import torch

    from precompute.train.balanced import balance_step
    from precompute.train.sparse import SparseDecode, SparseEncode, batch_topk

    state = _load_checkpoint(checkpoint, cfg, device) or _init_state(cfg, x, y, layer, device)
    p = state.params
    n = x.shape[0]
    per_epoch = n // cfg.batch_size
    if per_epoch == 0:
        raise ValueError(f"{n} rows are fewer than a batch ({cfg.batch_size})")
    steps = cfg.epochs * per_epoch
    t0, logged = time.perf_counter(), state.step
    order = None
    order_epoch = -1
    while state.step < steps:
        step = state.step
        epoch, i = divmod(step, per_epoch)
        if epoch != order_epoch:
            order, order_epoch = _batch_order(cfg, layer, epoch, n), epoch
        assert order is not None
        idx = torch.from_numpy(order[i * cfg.batch_size : (i + 1) * cfg.batch_size])
        xb = x[idx].to(device).float() * state.x_scale
        yb = y[idx].to(device).float() * state.y_scale
        with torch.no_grad():  # which features fire: a dense pass without autograd
            score = xb @ p["W_enc"] + p["b_enc"]
            pre_flat = score.flatten().clone()
            score += state.select_bias
            top = batch_topk(score.flatten(), cfg.k * xb.shape[0], state.theta)
            chosen = top.indices[top.values > 0]
            # a chosen feature's value is relu(pre): one selected by the floor's bias alone
            # (pre <= 0) fires with 0
            live = chosen[pre_flat[chosen] > 0]
            row, col = live // cfg.d_sae, live % cfg.d_sae
        # the values, and what they write, with gradients on the firing pairs only
        vals = SparseEncode.apply(xb, p["W_enc"], p["b_enc"], row, col, pre_flat[live])
        recon = SparseDecode.apply(vals, p["W_dec"], row, col, xb.shape[0]) + p["b_dec"]
        if "W_skip" in p:
            recon = recon + xb @ p["W_skip"]
        loss = (recon - yb).pow(2).sum(-1).mean() / yb.shape[1]
        if cfg.aux_k and float(state.density_ema.min()) >= 0:
            loss = loss + cfg.aux_alpha * _aux_loss(cfg, state, xb, yb - recon.detach(), pre_flat)
        for group in state.opt.param_groups:
            group["lr"] = _lr(cfg, step)
        state.opt.zero_grad(set_to_none=True)
        loss.backward()
        state.opt.step()
        with torch.no_grad():
            p["W_dec"] /= p["W_dec"].norm(dim=-1, keepdim=True).clamp_min(1e-8)
            smallest = float(top.values[-1].clamp_min(0))
            state.theta = smallest if state.theta < 0 else 0.99 * state.theta + 0.01 * smallest
            # the rate at which a feature fires (not at which it is chosen: the floor's bias can
            # choose a feature whose pre-activation is never positive, which is dead all the same
            # at inference, and must be seen as dead to be resampled)
            density = torch.bincount(col, minlength=cfg.d_sae) / xb.shape[0]
            balance_step(
                state.select_bias,
                state.density_ema,
                density,
                state.theta,
                max_density=cfg.max_density,
                rate=cfg.balance_rate,
                ema=0.98,
                free=cfg.free_features,
                min_density=cfg.min_density,
            )
        state.step += 1
        if state.step % RESAMPLE_EVERY == 0 and state.step <= steps - steps // 5:
            resampled = resample_dead(state, cfg, layer, xb, yb - recon.detach())
            if resampled:
                logger.info(
                    "layer %d: step %d: %d dead features resampled", layer, state.step, resampled
                )
        if state.step % cfg.checkpoint_every == 0 or state.step == steps:
            _save_checkpoint(checkpoint, state)
            with torch.no_grad():
                ev = 1 - float((recon - yb).pow(2).sum() / (yb - yb.mean(0)).pow(2).sum())
            rate = (time.perf_counter() - t0) / max(1, state.step - logged)
            logger.info(
                "layer %d: step %d/%d  loss %.4f  EV %.3f  L0 %.1f  above cap %d  %.2f s/step",
                layer,
                state.step,
                steps,
                float(loss.detach()),
                ev,
                len(live) / xb.shape[0],
                int((state.density_ema > cfg.max_density).sum()),
                rate,
            )
            t0, logged = time.perf_counter(), state.step
            if should_stop is not None and should_stop(state.step):
                raise Stopped(f"stopped at step {state.step}; the checkpoint is {checkpoint}")
    return inference_weights(state)


def _aux_loss(cfg: TranscoderConfig, state: _State, xb: Tensor, err: Tensor, pre: Tensor) -> Tensor:
    """The dead features' reconstruction of ``err`` (``aux_k`` per row, by pre-activation), as
    a mean squared error per output dimension; 0 when no feature is dead."""
    import torch

    from precompute.train.sparse import SparseDecode, SparseEncode

    p = state.params
    dead = (state.density_ema < cfg.aux_dead_rate).nonzero().squeeze(-1)
    if len(dead) == 0:
        return err.new_zeros(())
    b = xb.shape[0]
    values, at = pre.view(b, cfg.d_sae)[:, dead].topk(min(cfg.aux_k, len(dead)), dim=-1)
    row = torch.arange(b, device=xb.device).repeat_interleave(values.shape[1])
    col, values = dead[at.flatten()], values.flatten()
    if cfg.aux_relu:
        keep = values > 0
        row, col, values = row[keep], col[keep], values[keep]
    vals = SparseEncode.apply(xb, p["W_enc"], p["b_enc"], row, col, values)
    recon = SparseDecode.apply(vals, p["W_dec"], row, col, b)
    return (recon - err).pow(2).sum(-1).mean() / err.shape[1]


RESAMPLE_EVERY = 100  # steps between two looks for dead features (none in the last 20%)
DEAD_RATE = 1e-6  # a running firing rate below this is dead (not one firing in ~500 steps)


def resample_dead(state: _State, cfg: TranscoderConfig, layer: int, xb: Tensor, err: Tensor) -> int:
    """Give every dead feature a new direction where the transcoder does worst, as Anthropic's
    resampling does: for a row drawn with probability ∝ its squared error, the encoder reads that
    row's input (so the feature fires on it, at 1.5 × the selection threshold) and the decoder
    writes that row's error; its optimizer moments, selection bias and running rate restart.

    A feature whose pre-activation is never positive gets no gradient through the ReLU, and the
    floor's bias cannot select it into firing: without this, 46% of layer 0's features of the
    first training were dead. Seeded by (seed, layer, step): a resumed run resamples the same.
    Returns how many were resampled."""
    import torch

    dead = (state.density_ema < DEAD_RATE).nonzero().squeeze(-1)
    if len(dead) == 0 or state.theta <= 0:
        return 0
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + layer * 10_007 + state.step)
    weights = err.pow(2).sum(-1).double().cpu()
    rows = torch.multinomial(weights, len(dead), replacement=True, generator=gen)
    rows = rows.to(xb.device)
    mean = xb.mean(0)
    x, e = xb[rows] - mean, err[rows]  # centred on the batch: it fires on its row, not on all
    p = state.params
    with torch.no_grad():
        p["W_enc"][:, dead] = (x / x.pow(2).sum(-1, keepdim=True) * 1.5 * state.theta).T
        p["b_enc"][dead] = -mean @ p["W_enc"][:, dead]
        p["W_dec"][dead] = e / e.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        for name, index in (("W_enc", (slice(None), dead)), ("b_enc", dead), ("W_dec", dead)):
            moments = state.opt.state.get(p[name], {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in moments:
                    moments[key][index] = 0
        state.select_bias[dead] = 0
        state.density_ema[dead] = cfg.min_density
    return len(dead)


def inference_weights(state: _State) -> dict[str, Tensor]:
    """The trained weights in the model's units, sae-lens's layout, decoder rows of unit norm.

    Trained in scaled units (inputs times ``x_scale``, outputs times ``y_scale``); a feature's
    saved activation is its trained value divided by ``y_scale``, so that activation times its
    unit decoder row is what it writes to the MLP output."""
    import torch

    p = {k: v.detach().float().cpu() for k, v in state.params.items()}
    sx, sy = state.x_scale, state.y_scale
    threshold = (state.theta - state.select_bias.cpu()).clamp_min(0)
    out = {
        "W_enc": p["W_enc"] * (sx / sy),
        "b_enc": p["b_enc"] / sy,
        "threshold": threshold / sy,
        "W_dec": p["W_dec"],
        "b_dec": p["b_dec"] / sy,
    }
    if "W_skip" in p:
        out["W_skip"] = (p["W_skip"] * (sx / sy)).T.contiguous()  # sae-lens: [d_out, d_in]
    return {k: v.to(torch.float32).contiguous() for k, v in out.items()}


def save_transcoder(
    weights: dict[str, Tensor], path: Path, layer: int, model_name: str, cfg: TranscoderConfig
) -> None:
    """Write ``weights`` as sae-lens's inference format (``cfg.json``,
    ``sae_weights.safetensors``; matrices in bfloat16, vectors in float32) into ``path``,
    through a temporary sibling directory (a killed run never leaves a half layer)."""
    import shutil

    import sae_lens
    import torch
    from safetensors.torch import save_file

    from explorer.files import replace_dir

    d_in, d_sae = weights["W_enc"].shape
    d_out = weights["W_dec"].shape[1]
    config = {
        "architecture": "jumprelu_skip_transcoder"
        if "W_skip" in weights
        else "jumprelu_transcoder",
        "d_in": d_in,
        "d_sae": d_sae,
        "d_out": d_out,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            # without its version sae-lens reads a config as pre-6.0 and drops the metadata
            "sae_lens_version": sae_lens.__version__,
            "sae_lens_training_version": None,
            "model_name": model_name,
            "hook_name": INPUT_HOOK.format(layer=layer),
            "hook_name_out": OUTPUT_HOOK.format(layer=layer),
            "hook_layer": layer,
            "context_size": cfg.context_size,
            "prepend_bos": True,
            "dataset_path": cfg.corpus,
        },
    }
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    compact = {
        k: (v.to(torch.bfloat16) if v.ndim == 2 else v.float()).contiguous()
        for k, v in weights.items()
    }
    save_file(compact, str(tmp / "sae_weights.safetensors"))
    atomic_write_text(tmp / "cfg.json", json.dumps(config, indent=2))
    replace_dir(tmp, path)


def load_transcoder(path: Path, device: str = "cpu") -> Any:
    """A saved layer directory as sae-lens's transcoder object, in float32."""
    from sae_lens import SAE

    return SAE.load_from_disk(str(path), device=device, dtype="float32")
