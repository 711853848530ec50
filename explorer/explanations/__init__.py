"""Feature explanations: generated (an LLM's, scored) or imported (Neuronpedia's), in SQLite.

An explanation is not a label: labels are what people decide (:mod:`explorer.labels`, never
touched here); explanations are machine output, kept with where they come from (``source``:
``llm``, ``neuronpedia``), how (``method``, ``model``, ``prompt_version``) and how well they
predict the feature (``detection`` and ``fuzzing`` balanced accuracies, ``score`` their mean, on
``n_scored`` held-out contexts; ``None`` when not scored). The default file sits beside the store
(``<store>/explanations.sqlite``).

The table is append-only (triggers refuse UPDATE and DELETE): a feature's explanations
accumulate, and :meth:`Explanations.best` picks the best-scoring one (scored before unscored,
then newest). Imported rows carry their source's id (``ref``), so importing twice adds nothing.
Text is stored verbatim: whoever renders an explanation must escape it.

May import: the standard library only.
"""

from explorer.explanations.db import (
    SCHEMA_VERSION,
    Explanation,
    ExplanationError,
    Explanations,
    FeatureHits,
    NewExplanation,
)

__all__ = [
    "SCHEMA_VERSION",
    "Explanation",
    "ExplanationError",
    "Explanations",
    "FeatureHits",
    "NewExplanation",
]
