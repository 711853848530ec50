"""``explain``: explain and score a store's features with an LLM, appending to the explanations.

Per feature: one explainer request, then the detection and fuzzing scorers on the held-out
contexts, ``per_prompt`` contexts a request (shuffled, seeded), all through one
:class:`ChatClient` (so the concurrency limit holds for the whole run). A finished feature is one
row appended at once; features that have a row of the same method, model and prompt version are
skipped, so a killed run resumes where it stopped (a feature in flight is redone).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from explorer.explanations import Explanations, NewExplanation
from explorer.store import Store
from explorer.store.codec import TokenContext
from precompute.explain import prompts as P
from precompute.explain.client import ChatClient, LLMConfig, LLMError, Usage, run_sync
from precompute.explain.samples import Context, FeatureSamples, feature_samples

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExplainConfig:
    """What to explain and how much to show and test.

    Args:
        store: the store directory.
        explanations: the explanations file (default ``<store>/explanations.sqlite``).
        layers: layers to explain (empty: all of the store's).
        features: features to explain (empty: every feature that fires, in order).
        limit: explain at most this many features (``None``: no limit).
        n_explain: top examples shown to the explainer (plus one per interval).
        n_test: held-out activating contexts (and as many non-activating) per scorer.
        per_prompt: contexts in one scorer request.
        max_failures: stop the run after this many features failed.
        seed: for the non-activating contexts and the shuffles.
    """

    store: Path
    explanations: Path | None = None
    layers: tuple[int, ...] = ()
    features: tuple[int, ...] = ()
    limit: int | None = None
    n_explain: int = 10
    n_test: int = 10
    per_prompt: int = 5
    max_failures: int = 10
    seed: int = 0

    @property
    def explanations_path(self) -> Path:
        return self.explanations or Path(self.store) / "explanations.sqlite"


@dataclass
class ExplainReport:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    empty: int = 0
    scores: list[float] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)

    def summary(self) -> str:
        mean = f"{sum(self.scores) / len(self.scores):.3f}" if self.scores else "n/a"
        return (
            f"explained {self.done} features ({self.skipped} done before, {self.failed} failed"
            f"{f', {self.empty} with too few examples' if self.empty else ''}); "
            f"mean score {mean}; {self.usage.report()}"
        )


def _plain(c: Context) -> str:
    return "".join(c.tokens)


async def _classify(
    client: ChatClient,
    kind: P.Scorer,
    explanation: str,
    samples: list[tuple[str, bool]],
    size: int,
) -> tuple[float, int]:
    """Balanced accuracy of one scorer over ``samples`` (text, is activating) and how many
    predictions could not be parsed."""

    async def ask(batch: list[tuple[str, bool]]) -> list[bool | None]:
        messages = P.scorer_messages(kind, explanation, [t for t, _ in batch])
        reply = await client.chat(messages, max_tokens=16 + 4 * len(batch))
        parsed = P.parse_predictions(reply, len(batch))
        return list(parsed) if parsed is not None else [None] * len(batch)

    batches = [samples[i : i + size] for i in range(0, len(samples), size)]
    answers = await asyncio.gather(*(ask(b) for b in batches))
    predicted = [p for a in answers for p in a]
    truth = [t for _, t in samples]
    return P.balanced_accuracy(truth, predicted), sum(p is None for p in predicted)


async def explain_feature(
    client: ChatClient, s: FeatureSamples, seed: int = 0, per_prompt: int = 5
) -> NewExplanation | None:
    """Explain and score one feature; ``None`` when it has nothing to explain or test."""
    if not s.shown or not s.activating or not s.non_activating:
        return None
    reply = await client.chat(
        P.explainer_messages([(c.tokens, c.acts) for c in s.shown], s.max_act, s.promoted)
    )
    text, parsed = P.parse_explanation(reply)
    if not text:
        raise LLMError(f"empty explanation for {s.layer}/{s.feature}")
    rng = random.Random(f"{seed}:{s.layer}:{s.feature}:score")
    detection = [(_plain(c), True) for c in s.activating]
    detection += [(_plain(c), False) for c in s.non_activating]
    marked = P.n_marked([c.acts for c in s.activating])
    fuzzing = [(P.fuzz_activating(c.tokens, c.acts), True) for c in s.activating]
    fuzzing += [(P.fuzz_wrong(c.tokens, marked, rng), False) for c in s.non_activating]
    rng.shuffle(detection)
    rng.shuffle(fuzzing)
    (det, det_bad), (fuz, fuz_bad) = await asyncio.gather(
        _classify(client, "detection", text, detection, per_prompt),
        _classify(client, "fuzzing", text, fuzzing, per_prompt),
    )
    return NewExplanation(
        layer=s.layer,
        feature=s.feature,
        text=text,
        source="llm",
        method=P.METHOD,
        model=client.cfg.model,
        prompt_version=P.PROMPT_VERSION,
        detection=det,
        fuzzing=fuz,
        score=(det + fuz) / 2,
        n_scored=len(detection),
        extra={
            "format_followed": parsed,
            "n_activating": len(s.activating),
            "n_non_activating": len(s.non_activating),
            "unparsed_predictions": det_bad + fuz_bad,
            "negative_fire_risk": round(s.fire_risk, 4),
        },
    )


def _targets(store: Store, cfg: ExplainConfig) -> list[tuple[int, int]]:
    layers = cfg.layers or store.layers
    for layer in layers:
        if layer not in store.layers:
            known = ", ".join(str(n) for n in store.layers)
            raise ValueError(f"layer {layer} is not in the store (its layers: {known})")
    out: list[tuple[int, int]] = []
    for layer in layers:
        df = store.features(layer, ["feature", "n_fires"])
        if cfg.features:
            width = len(df)
            for f in cfg.features:
                if not 0 <= f < width:
                    raise ValueError(f"feature {f} is past layer {layer}'s width ({width})")
            out += [(layer, f) for f in cfg.features]
        else:
            out += [(layer, int(f)) for f in df.loc[df["n_fires"] > 0, "feature"]]
    return out


async def _run(
    store: Store, db: Explanations, cfg: ExplainConfig, llm: LLMConfig, progress: bool
) -> ExplainReport:
    report = ExplainReport()
    done = db.done(P.METHOD, llm.model, P.PROMPT_VERSION)
    targets = _targets(store, cfg)
    todo = [t for t in targets if t not in done]
    report.skipped = len(targets) - len(todo)
    if cfg.limit is not None:
        todo = todo[: cfg.limit]
    tc: TokenContext = store.token_context()
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    for t in todo:
        queue.put_nowait(t)
    bar = tqdm(total=len(todo), disable=not progress, desc="explain", unit="feature")
    async with ChatClient(llm, report.usage) as client:

        async def worker() -> None:
            while not queue.empty() and report.failed < cfg.max_failures:
                layer, feature = queue.get_nowait()
                rec = store.feature(layer, feature)
                s = feature_samples(rec, tc, cfg.n_explain, cfg.n_test, seed=cfg.seed)
                try:
                    row = await explain_feature(client, s, cfg.seed, cfg.per_prompt)
                    report.empty += row is None
                except LLMError as e:
                    report.failed += 1
                    logger.warning("%d/%d failed: %s", layer, feature, e)
                    row = None
                if row is not None:
                    db.add([row])
                    report.done += 1
                    report.scores.append(float(row.score or 0.0))
                bar.update(1)

        await asyncio.gather(*(worker() for _ in range(max(1, llm.concurrency))))
    bar.close()
    if report.failed >= cfg.max_failures:
        raise LLMError(
            f"stopped after {report.failed} features failed (see the warnings above); "
            f"{report.done} were explained and saved, run again to resume"
        )
    return report


def run_explain(cfg: ExplainConfig, llm: LLMConfig, progress: bool = True) -> ExplainReport:
    """Explain and score the configured features; appends one row per finished feature."""
    if cfg.n_test < 1 or cfg.n_explain < 1 or cfg.per_prompt < 1:
        raise ValueError("--n-test, --n-explain and --per-prompt must be at least 1")
    store = Store.open(cfg.store)
    db = Explanations(cfg.explanations_path)
    return run_sync(_run(store, db, cfg, llm, progress))
