"""The artifact formats, one owner: the feature store that ``precompute`` writes and the app
reads, and the manifest of a directory of trained SAEs.

A store is a directory::

    manifest.json                 provenance, and every file with its row count, size and sha256
    tokens.parquet                one row per window of the run, BOS dropped
    vocab.parquet                 the text of every token id the store uses
    features/layer=NN.parquet     one row per feature, sorted by feature
    examples/layer=NN.parquet     one row per example, sorted by (feature, group, rank);
                                  groups run 'top', 'interval 1', …

Modules: ``schema`` (names, Arrow schemas, :class:`StoreManifest`, the version), ``codec``
(statistics and examples <-> rows, both directions), ``reader`` (:class:`Store`), ``saes`` (the
SAE-set manifest). May import: the standard library, numpy (pyarrow and pandas lazily, so that
importing the package stays light), ``explorer.paths`` and ``explorer.files``; never the model
side (torch, the bundle) nor ``precompute``.
"""

from explorer.store.codec import Example, FeatureRecord, IntervalGroup
from explorer.store.reader import Store
from explorer.store.saes import SaeLayer, SaeManifest, SaeManifestError
from explorer.store.schema import (
    KIND,
    MANIFEST,
    SCHEMA_VERSION,
    TOKENS,
    VOCAB,
    StoreError,
    StoreLayer,
    StoreManifest,
    examples_path,
    examples_schema,
    features_path,
    features_schema,
    group_order,
    interval_group,
    sae_ref,
    tokens_schema,
    vocab_schema,
)

__all__ = [
    "KIND",
    "MANIFEST",
    "SCHEMA_VERSION",
    "TOKENS",
    "VOCAB",
    "Example",
    "FeatureRecord",
    "IntervalGroup",
    "SaeLayer",
    "SaeManifest",
    "SaeManifestError",
    "Store",
    "StoreError",
    "StoreLayer",
    "StoreManifest",
    "examples_path",
    "examples_schema",
    "features_path",
    "features_schema",
    "group_order",
    "interval_group",
    "sae_ref",
    "tokens_schema",
    "vocab_schema",
]
