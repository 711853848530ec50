"""The steering evaluation: does steering with a feature pull the model toward its concept, and
what does it cost in fluency?

For a feature, each method and each strength (in units of the feature's max activation in the
store), over prompts and seeds, one batch per (prompt, seed) generates the default continuation
and every steered one (:func:`explorer.steer.generate_rows`: same seed per row), and measures:

- **concept**: the steered feature's activation on the continuation, read back by the same SAE
  on an *unsteered* forward pass over prompt + continuation (so the steering vector itself is not
  counted), averaged over the continuation's tokens, as a fraction of the feature's max
  activation. ``fires`` is the share of continuation tokens where it is above 0.
- **lift**: how much the steering raises the probability of the feature's top promoted tokens
  (the store's ``top_logits``): on the steered continuation, the mean over its positions of
  P(promoted set) under the steered model minus that under the unsteered one.
- **perplexity** of the continuation under the unsteered model, and **repetition**: the share of
  the continuation's token bigrams that already occurred earlier in it (``0``: none repeats).

The best trade-off (:func:`recommend`) is the strength with the highest concept among the
readable ones: mean perplexity at most :data:`PPL_FACTOR` × the default's and repetition at most
the default's + :data:`REP_MARGIN`. Deterministic given the seeds (greedy at temperature 0).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from explorer.hooks import routed
from explorer.steer import GenerationConfig, Steer, generate_rows, prompt_ids, steering_hooks

if TYPE_CHECKING:
    import torch

    from explorer.bundle import Bundle

logger = logging.getLogger(__name__)

PPL_FACTOR = 2.0
"""A steered continuation is readable when its perplexity is at most this × the default's…"""
REP_MARGIN = 0.15
"""…and its repetition rate at most the default's + this."""
DEFAULT_MULTIPLES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
DEFAULT_PROMPTS = (
    "My favourite food is",
    "Yesterday I went to",
    "The story begins when",
)


def repetition_rate(ids: Sequence[int], n: int = 2) -> float:
    """The share of ``ids``' n-grams that already occurred earlier in ``ids`` (0 for text too
    short to have two). ``a b a b a b``: bigrams ab ba ab ba ab, 3 of 5 repeat: 0.6."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    if len(grams) < 2:
        return 0.0
    seen: set[tuple[int, ...]] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


def perplexity_of(logits: torch.Tensor, ids: Sequence[int], start: int) -> float:
    """``exp`` of the mean negative log-likelihood of ``ids[start:]``, where ``logits[i]`` are
    the next-token logits after ``ids[: i + 1]`` (``[len(ids), vocab]``)."""
    import torch

    if start >= len(ids) or start < 1:
        return float("nan")
    logp = torch.log_softmax(logits[start - 1 : len(ids) - 1].double(), dim=-1)
    target = torch.tensor(ids[start:], dtype=torch.long)
    nll = -logp[torch.arange(len(target)), target].mean()
    return float(torch.exp(nll))


@dataclass(frozen=True)
class Measure:
    """The measures of one continuation (see the module docstring)."""

    concept: float
    fires: float
    lift: float
    perplexity: float
    repetition: float
    text: str = ""


def measure(
    bundle: Bundle,
    prompt: Sequence[int],
    continuation: Sequence[int],
    layer: int,
    feature: int,
    max_act: float,
    promoted: Sequence[int],
    steer: Steer | None = None,
    steer_prompt: bool = True,
) -> Measure:
    """Measure one continuation (token ids after ``prompt``, which starts with BOS) for the
    feature ``(layer, feature)``.

    Two teacher-forced passes over ``prompt + continuation``: unsteered (perplexity, and the
    SAE's read-back of the feature on the continuation) and, when ``steer`` is given, steered as
    generation steered it (the promoted tokens' lift). ``steer`` ``None`` is the default row
    (lift 0).
    """
    import torch

    ids = list(prompt) + list(continuation)
    start = len(prompt)
    model = bundle.model
    hook = bundle.spec.hook_name(layer)
    tokens = torch.tensor([ids], device=bundle.device)
    with torch.inference_mode():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n == hook)
        logits = logits[0].float().cpu()
        sae = bundle.sae(layer)
        resid = cache[hook][0, start:].to(sae.dtype)
        acts = sae.encode(resid)[:, feature].float().cpu() if len(continuation) else None
        lift = 0.0
        if steer is not None and len(continuation):
            skip = 1 if steer_prompt else start - 1
            with routed(model, steering_hooks(bundle, [steer], skip)):
                steered = model(tokens)[0].float().cpu()
            lift = _promoted_mass(steered, promoted, start, len(ids)) - _promoted_mass(
                logits, promoted, start, len(ids)
            )
    scale = max_act if max_act > 0 else 1.0
    return Measure(
        concept=float(acts.mean()) / scale if acts is not None else 0.0,
        fires=float((acts > 0).float().mean()) if acts is not None else 0.0,
        lift=lift,
        perplexity=perplexity_of(logits, ids, start),
        repetition=repetition_rate(continuation),
        text=str(bundle.tokenizer.decode(list(continuation), skip_special_tokens=True)),
    )


def _promoted_mass(logits: torch.Tensor, promoted: Sequence[int], start: int, end: int) -> float:
    """Mean over the positions predicting ``ids[start:end]`` of P(any promoted token)."""
    import torch

    if not promoted:
        return 0.0
    probs = torch.softmax(logits[start - 1 : end - 1].double(), dim=-1)
    return float(probs[:, list(promoted)].sum(dim=-1).mean())


# --- the sweep ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalConfig:
    """What to sweep. ``multiples`` are strengths in units of the feature's max activation."""

    methods: tuple[str, ...] = ("add",)
    multiples: tuple[float, ...] = DEFAULT_MULTIPLES
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    seeds: tuple[int, ...] = (0, 1)
    tokens: int = 24
    temperature: float = 0.7
    steer_prompt: bool = True


@dataclass
class Row:
    """One (feature, method, strength) averaged over prompts × seeds; ``strength`` 0 with
    method ``none`` is the default row."""

    layer: int
    feature: int
    method: str
    multiple: float
    strength: float
    concept: float
    fires: float
    lift: float
    perplexity: float
    repetition: float
    n: int
    readable: bool = False
    recommended: bool = False
    examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean(values: Sequence[float]) -> float:
    good = [v for v in values if not math.isnan(v)]
    return sum(good) / len(good) if good else float("nan")


def _row(
    layer: int, feature: int, method: str, mult: float, strength: float, ms: list[Measure]
) -> Row:
    return Row(
        layer=layer,
        feature=feature,
        method=method,
        multiple=mult,
        strength=strength,
        concept=_mean([m.concept for m in ms]),
        fires=_mean([m.fires for m in ms]),
        lift=_mean([m.lift for m in ms]),
        perplexity=_mean([m.perplexity for m in ms]),
        repetition=_mean([m.repetition for m in ms]),
        n=len(ms),
        examples=[m.text for m in ms[:2]],
    )


def evaluate_feature(
    bundle: Bundle,
    layer: int,
    feature: int,
    max_act: float,
    promoted: Sequence[int],
    cfg: EvalConfig,
) -> list[Row]:
    """The default row, then one row per (method, multiple), with :func:`recommend` applied."""
    variants = [(m, x) for m in cfg.methods for x in cfg.multiples]
    steers = [Steer(layer, feature, round(x * max_act, 2), m) for m, x in variants]
    per: list[list[Measure]] = [[] for _ in range(len(variants) + 1)]
    for prompt in cfg.prompts:
        ids, _ = prompt_ids(bundle, prompt, cfg.tokens)
        for seed in cfg.seeds:
            gen = GenerationConfig(
                max_new_tokens=cfg.tokens,
                temperature=cfg.temperature,
                seed=seed,
                time_limit_s=600.0,
                steer_prompt=cfg.steer_prompt,
            )
            *_, last = generate_rows(bundle, prompt, gen, [(), *[(s,) for s in steers]])
            for r, cont in enumerate(last.token_ids):
                steer = steers[r - 1] if r else None
                per[r].append(
                    measure(
                        bundle, ids, cont, layer, feature, max_act, promoted, steer,
                        cfg.steer_prompt,
                    )
                )  # fmt: skip
    rows = [_row(layer, feature, "none", 0.0, 0.0, per[0])]
    rows += [
        _row(layer, feature, m, x, s.strength, per[i + 1])
        for i, ((m, x), s) in enumerate(zip(variants, steers, strict=True))
    ]
    return recommend(rows)


def recommend(rows: list[Row]) -> list[Row]:
    """Mark readable rows and, per method, the recommended one: the highest concept among the
    readable rows that beat the default's concept (none if no row is both). ``rows[0]`` is the
    default row."""
    base = rows[0]
    best: dict[str, Row] = {}
    for row in rows[1:]:
        row.readable = (
            row.perplexity <= PPL_FACTOR * base.perplexity
            and row.repetition <= base.repetition + REP_MARGIN
        )
        if row.readable and row.concept > base.concept:
            if row.method not in best or row.concept > best[row.method].concept:
                best[row.method] = row
    for row in best.values():
        row.recommended = True
    return rows


# --- the command --------------------------------------------------------------------------------


def parse_feature(text: str) -> tuple[int, int]:
    """``"12:1013"`` -> ``(12, 1013)``; a ``ValueError`` (the CLI's ``error:`` line) otherwise."""
    layer, sep, feature = text.partition(":")
    if not sep or not layer.strip().isdigit() or not feature.strip().isdigit():
        raise ValueError(f"a feature is LAYER:ID such as 12:1013, not {text!r}")
    return int(layer), int(feature)


def evaluate(
    bundle: Bundle, store: Any, features: Sequence[tuple[int, int]], cfg: EvalConfig
) -> list[Row]:
    """:func:`evaluate_feature` for each feature, its max activation and promoted tokens read
    from ``store`` (an :class:`explorer.store.Store`)."""
    rows: list[Row] = []
    for layer, feature in features:
        try:
            bundle.check_feature(layer, feature)
        except ValueError as err:
            raise ValueError(f"feature {layer}:{feature}: {err}") from None
        logger.info("evaluating feature %d:%d", layer, feature)
        rec = store.feature(layer, feature)
        if not rec.max_act or rec.max_act <= 0:
            raise ValueError(
                f"feature {layer}:{feature} never fires in the store: nothing to scale"
            )
        rows += evaluate_feature(
            bundle, layer, feature, float(rec.max_act), list(rec.top_logits), cfg
        )
    return rows


def rows_from_report(report: Any) -> list[Row]:
    """The rows of a report written with ``--out`` (a ``ValueError`` if it is not one)."""
    names = [f.name for f in dataclasses.fields(Row)]
    try:
        return [Row(**{k: r[k] for k in names if k in r}) for r in report["rows"]]
    except (KeyError, TypeError) as err:
        raise ValueError(f"not a steer-eval report ({err})") from None


def steering_table(rows: Sequence[Row]) -> Any:
    """The rows as ``steering.parquet``'s table (:func:`explorer.store.schema.steering_schema`)."""
    import pyarrow as pa

    from explorer.store.schema import steering_schema

    cols = [f.name for f in steering_schema()]
    data = {c: [getattr(r, c) for r in rows] for c in cols}
    return pa.table(data).cast(steering_schema())


def report_lines(rows: Sequence[Row]) -> list[str]:
    """The evaluation as a table for the terminal, a feature at a time."""
    out = [
        f"{'layer:feature':>13} {'method':>6} {'× max':>5} {'strength':>9} {'concept':>7} "
        f"{'fires':>5} {'lift':>6} {'ppl':>7} {'rep':>5}  readable"
    ]
    for r in rows:
        mark = ("yes" if r.readable else "no") if r.method != "none" else "-"
        if r.recommended:
            mark += "  <- recommended"
        out.append(
            f"{r.layer:>6}:{r.feature:<6} {r.method:>6} {r.multiple:>5g} {r.strength:>9.1f} "
            f"{r.concept:>7.3f} {r.fires:>5.2f} {r.lift:>+6.3f} {r.perplexity:>7.1f} "
            f"{r.repetition:>5.2f}  {mark}"
        )
    return out
