"""BatchTopK with a firing-rate cap: sae-lens's ``BatchTopKTrainingSAE`` whose feature *selection*
is shifted per feature by a non-learned bias that keeps each feature's firing rate at or below
``max_density``.

Why: a plain BatchTopK SAE on Gemma 3 270M leaves 12–31% of its features firing on more than 1%
of tokens; such features are rarely interpretable, and the microscope hides them. The bias is the
auxiliary-loss-free load balancing of mixture-of-experts routers (Wang et al. 2024, "Auxiliary-
Loss-Free Load Balancing Strategy for Mixture-of-Experts") applied to SAE features:

- a feature is selected where ``hidden_pre + select_bias`` is among the batch's top ``k × batch``
  scores; its *value* stays ``hidden_pre`` (the bias only decides whether it fires, so it never
  biases the reconstruction and gets no gradient);
- after each step, a feature whose running firing rate is above the cap gets its bias lowered, one
  below it gets it raised back toward 0, by at most ``rate × topk_threshold`` per step;
- with a floor (``min_density``), the same bias also works the other way: a feature firing less
  often than the floor gets it *raised* above 0 (at most to the threshold, so a selected feature's
  value stays positive), so it is selected, gets gradient and learns a direction worth firing for;
  once above the floor its bias relaxes back toward 0. Without it, a fine-tune to a lower k killed
  half of layer 5's features (dead 49% over 200k tokens, from 16%).

Saved, this is exactly a JumpReLU SAE with per-feature thresholds ``threshold − select_bias``: a
feature fires where ``hidden_pre > threshold_i``, as in Gemma Scope, and reads the same everywhere
(the app, the store, steering).
"""

from __future__ import annotations

from typing import Any

import torch
from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput


class BalancedBatchTopKTrainingSAE(BatchTopKTrainingSAE):
    """BatchTopK with a per-feature selection bias that caps firing rates (see the module).

    Args:
        cfg: sae-lens's BatchTopK training config.
        max_density: the firing-rate cap (fraction of tokens).
        rate: the largest bias change per step, in units of the global threshold.
        ema: smoothing of the running firing rate (per step).
        free: how many features may fire above the cap: the ``free`` densest ones by running
            rate are left alone (a direction present on most tokens needs a feature, or every
            feature carries a share of it).
        min_density: the floor (fraction of tokens), or ``None`` for none.
    """

    topk_threshold: torch.Tensor
    select_bias: torch.Tensor
    density_ema: torch.Tensor

    def __init__(
        self,
        cfg: BatchTopKTrainingSAEConfig,
        max_density: float,
        rate: float = 0.02,
        ema: float = 0.98,
        free: int = 0,
        min_density: float | None = None,
    ) -> None:
        super().__init__(cfg)
        if not 0 < max_density < 1:
            raise ValueError("max_density must be a fraction between 0 and 1")
        if min_density is not None and not 0 < min_density < max_density:
            raise ValueError("min_density must be a fraction between 0 and max_density")
        self.min_density = min_density
        self.max_density = max_density
        self.rate = rate
        self.ema = ema
        self.free = free
        d = self.cfg.d_sae
        self.register_buffer("select_bias", torch.zeros(d, device=self.W_dec.device))
        self.register_buffer("density_ema", torch.full((d,), -1.0, device=self.W_dec.device))
        self._min_score: torch.Tensor | None = None

    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sae_in = self.process_sae_in(x)
        hidden_pre = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)
        if self.cfg.rescale_acts_by_decoder_norm:
            hidden_pre = hidden_pre * self.W_dec.norm(dim=-1)
        score = hidden_pre.detach() + self.select_bias
        chosen = self.activation_fn(score) > 0
        self._min_score = score[chosen].min() if bool(chosen.any()) else None
        # relu: with a floor's positive bias a selected score can sit above a negative value
        feature_acts = self.hook_sae_acts_post(hidden_pre.relu() * chosen)
        return feature_acts, hidden_pre

    @torch.no_grad()
    def update_topk_threshold(self, acts_topk: torch.Tensor) -> None:
        """The global threshold tracks the smallest selected *score* (not value): a feature
        fires where ``hidden_pre + select_bias`` exceeds it. sae-lens's update, fed that score."""
        if self._min_score is not None:
            super().update_topk_threshold(self._min_score.reshape(1))

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        output = super().training_forward_pass(step_input)
        self.balance((output.feature_acts > 0).float().mean(0))
        output.metrics["dense_features"] = (self.density_ema > self.max_density).sum()
        return output

    @torch.no_grad()
    def balance(self, batch_density: torch.Tensor) -> None:
        """One controller step from one batch's firing rates (:func:`balance_step`)."""
        balance_step(
            self.select_bias,
            self.density_ema,
            batch_density,
            float(self.topk_threshold),
            max_density=self.max_density,
            rate=self.rate,
            ema=self.ema,
            free=self.free,
            min_density=self.min_density,
        )

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        super().fold_activation_norm_scaling_factor(scaling_factor)
        if self.cfg.rescale_acts_by_decoder_norm:  # the bias is in the threshold's units
            self.select_bias /= scaling_factor

    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        bias = state_dict.pop("select_bias")
        state_dict.pop("density_ema")
        super().process_state_dict_for_saving_inference(state_dict)
        state_dict["threshold"] = state_dict["threshold"] - bias.to(state_dict["threshold"])

    @torch.no_grad()
    def load_inference_weights(self, weights: dict[str, torch.Tensor], scale: float) -> None:
        """Start from a saved JumpReLU SAE (``sae_weights.safetensors`` of a layer directory,
        decoder rows of unit norm) in the trainer's scaled units (inputs multiplied by
        ``scale``): the saved per-feature thresholds become the global threshold (their
        minimum) plus this feature's selection bias, so training resumes where it ended.
        """
        dev = self.W_dec.device
        self.W_enc.copy_(weights["W_enc"].float().to(dev))
        self.W_dec.copy_(weights["W_dec"].float().to(dev))
        self.b_enc.copy_(weights["b_enc"].float().to(dev) * scale)
        self.b_dec.copy_(weights["b_dec"].float().to(dev) * scale)
        threshold = weights["threshold"].double().to(dev) * scale
        self.topk_threshold = threshold.min()
        self.select_bias.copy_((threshold.min() - threshold).float())


@torch.no_grad()
def balance_step(
    bias: torch.Tensor,
    density_ema: torch.Tensor,
    batch_density: torch.Tensor,
    threshold: float,
    *,
    max_density: float,
    rate: float,
    ema: float,
    free: int,
    min_density: float | None,
) -> None:
    """One step of the firing-rate controller, in place: fold one batch's firing rates into the
    running rate ``density_ema`` (negative: not started), then move each feature's selection
    ``bias`` toward keeping its rate under ``max_density`` (and over ``min_density``), by at
    most ``rate × threshold`` (the global selection threshold) per step. The SAEs' trainer
    (:class:`BalancedBatchTopKTrainingSAE`) and the transcoders'
    (:mod:`precompute.train.transcoders`) share it."""
    if bool((density_ema < 0).all()):
        density_ema.copy_(batch_density)
    else:
        density_ema.mul_(ema).add_(batch_density, alpha=1 - ema)
    d = density_ema
    up = rate * threshold  # the largest change per step
    error = (d / max_density - 1).clamp(-1, 1)
    if free:
        densest = d.topk(free).indices
        error[densest] = -1.0  # relax back toward no bias
    new = (bias - up * error).clamp(max=0)
    if min_density is not None:
        ratio = d / min_density
        starving = ratio < 1
        relaxed = (bias - up * (ratio - 1).clamp(0, 1)).clamp(min=0)
        new = torch.where(bias > 0, relaxed, new)
        raised = (bias + up * (1 - ratio).clamp(0, 1)).clamp(max=threshold)
        new = torch.where(starving, raised, new)
    bias.copy_(new)
