"""Chat messages for the explainer and the two scorers, and parsing their replies (Delphi's method).

The explainer (Delphi's ``DefaultExplainer`` with activations, as Neuronpedia's
max-activating-examples explainer does it) sees highlighted examples, ``<<tokens>>`` where the
activation is above 0.3 of the example's maximum, each followed by its activations scaled to
0..10 by the feature's maximum; we number the examples as Delphi's few-shot examples are numbered
and add the feature's promoted tokens (Neuronpedia's explainers show them too). The detection
scorer sees plain held-out contexts, the fuzzing scorer highlighted ones; both answer a list of
0/1 and are scored by balanced accuracy. Any change to the messages bumps ``PROMPT_VERSION``.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from typing import Literal

from precompute.explain import delphi_prompts as d

METHOD = "max-activating-examples"
PROMPT_VERSION = "delphi-default-v1"
THRESHOLD = 0.3  # Delphi's highlight threshold, a fraction of the example's maximum
MAX_LISTED = 10  # Delphi lists an example's activations until it has listed more than 10
NOT_PARSED = "Explanation could not be parsed."
Messages = list[dict[str, str]]
Scorer = Literal["detection", "fuzzing"]


def _marked(tokens: Sequence[str], check: Sequence[bool]) -> str:
    """Runs of checked tokens between ``<<`` and ``>>`` (Delphi's ``_highlight``)."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if check[i]:
            out.append("<<")
            while i < len(tokens) and check[i]:
                out.append(tokens[i])
                i += 1
            out.append(">>")
        else:
            out.append(tokens[i])
            i += 1
    return "".join(out)


def highlight(tokens: Sequence[str], acts: Sequence[float], threshold: float = THRESHOLD) -> str:
    """The explainer's view of an example: tokens above ``threshold`` × its maximum marked."""
    top = max(acts, default=0.0)
    return _marked(tokens, [top > 0 and a > top * threshold for a in acts])


def join_activations(
    tokens: Sequence[str], acts: Sequence[float], max_act: float, threshold: float = THRESHOLD
) -> str:
    """Delphi's ``_join_activations``: ``Activations: ("tok" : 7), …`` with activations scaled
    to 0..10 by the feature's maximum (floored), for the tokens above the threshold."""
    top = max(acts, default=0.0)
    parts: list[str] = []
    for tok, a in zip(tokens, acts, strict=True):
        if a > top * threshold:
            if len(parts) > MAX_LISTED:
                break
            norm = math.floor(a * 10 / max_act) if max_act > 0 else 0
            parts.append(f'("{tok}" : {norm}), ')
    return "Activations: " + "".join(parts)


def explainer_messages(
    examples: Sequence[tuple[Sequence[str], Sequence[float]]],
    max_act: float,
    promoted: Sequence[str] = (),
) -> Messages:
    """The explainer's chat: Delphi's system prompt and few-shot examples, then ours."""
    lines: list[str] = []
    for i, (tokens, acts) in enumerate(examples, start=1):
        lines.append(f"Example {i}: {highlight(tokens, acts)}")
        lines.append(join_activations(tokens, acts, max_act))
    if promoted:
        listed = ", ".join(json.dumps(t, ensure_ascii=False) for t in promoted)
        lines.append(f"Tokens this latent promotes most in the output: {listed}")
    messages: Messages = [{"role": "system", "content": d.EXPLAINER_SYSTEM}]
    for shown, answer in d.EXPLAINER_FEW_SHOT:
        messages.append({"role": "user", "content": shown})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": "\n" + "\n".join(lines) + "\n"})
    return messages


def parse_explanation(reply: str) -> tuple[str, bool]:
    """The explanation in a reply and whether it followed the format: the text after Delphi's
    ``[EXPLANATION]:`` marker (its first line), else the reply's first non-empty line."""
    match = re.search(r"\[EXPLANATION\]:\s*(.*)", reply, re.DOTALL)
    if match and match.group(1).strip():
        return match.group(1).strip().splitlines()[0].strip(), True
    for line in reply.splitlines():
        if line.strip():
            return line.strip(), False
    return "", False


def scorer_messages(kind: Scorer, explanation: str, texts: Sequence[str]) -> Messages:
    """Delphi's detection or fuzzing prompt over ``texts`` (``Example 0: …`` lines)."""
    system, few_shot = (
        (d.DETECTION_SYSTEM, d.DETECTION_FEW_SHOT)
        if kind == "detection"
        else (d.FUZZING_SYSTEM, d.FUZZING_FEW_SHOT)
    )
    examples = "\n".join(f"Example {i}: {t}" for i, t in enumerate(texts))
    messages: Messages = [{"role": "system", "content": system}]
    for shown, answer in few_shot:
        messages.append({"role": "user", "content": shown})
        messages.append({"role": "assistant", "content": answer})
    prompt = d.SCORER_PROMPT.format(explanation=explanation, examples=examples)
    messages.append({"role": "user", "content": prompt})
    return messages


def parse_predictions(reply: str, n: int) -> list[bool] | None:
    """The first ``[...]`` list in a reply, as Delphi parses it; ``None`` unless it is a JSON
    list of ``n`` zeros and ones."""
    match = re.search(r"\[.*?\]", reply, re.DOTALL)
    if match is None:
        return None
    try:
        values = json.loads(match.group(0))
    except ValueError:
        return None
    if not isinstance(values, list) or len(values) != n:
        return None
    if not all(v in (0, 1) and not isinstance(v, float) for v in values):
        return None
    return [bool(v) for v in values]


def fuzz_activating(tokens: Sequence[str], acts: Sequence[float]) -> str:
    """A held-out activating context for fuzzing: tokens at or above 0.3 × its maximum marked
    (Delphi's ``_prepare_text`` for a correct example)."""
    top = max(acts, default=0.0)
    return _marked(tokens, [top > 0 and a >= top * THRESHOLD for a in acts])


def fuzz_wrong(tokens: Sequence[str], n_marked: int, rng: random.Random) -> str:
    """A non-activating context for fuzzing with ``n_marked`` tokens marked falsely: the token at
    ``len - len // 4`` (where Delphi's contexts have their activation) and random others."""
    n = len(tokens)
    k = min(max(n_marked, 1), n)
    pos = n - n // 4
    picked = {pos} if pos < n else set()
    rest = [i for i in range(n) if i not in picked]
    picked.update(rng.sample(rest, k - len(picked)))
    return _marked(tokens, [i in picked for i in range(n)])


def n_marked(acts_of_examples: Sequence[Sequence[float]]) -> int:
    """How many tokens a false fuzzing context marks: the mean number of non-zero activations
    of the held-out activating contexts, rounded up (Delphi's ``mean_n_activations_ceil``)."""
    if not acts_of_examples:
        return 1
    counts = [sum(1 for a in acts if a != 0) for acts in acts_of_examples]
    return max(1, math.ceil(sum(counts) / len(counts)))


def balanced_accuracy(truth: Sequence[bool], predicted: Sequence[bool | None]) -> float:
    """Mean of the recall on positives and on negatives; an unparsed prediction (``None``) counts
    as wrong. A class with no samples is left out of the mean."""
    recalls = []
    for cls in (True, False):
        idx = [i for i, t in enumerate(truth) if t is cls]
        if idx:
            recalls.append(sum(1 for i in idx if predicted[i] is cls) / len(idx))
    return sum(recalls) / len(recalls) if recalls else 0.0
