"""The artifact formats, one owner: the feature store that ``precompute`` writes and the app reads,
and the manifest of a directory of trained SAEs.

Modules: ``reader`` (the store: schema, examples, reader), ``saes`` (the SAE-set manifest).
May import: the standard library, numpy/pyarrow/pandas, ``explorer.paths`` and ``explorer.files``;
never the model side (torch, the bundle) nor ``precompute``.
"""

from explorer.store.reader import *  # noqa: F403  (temporary: split in the next step)
from explorer.store.saes import SaeLayer, SaeManifest, SaeManifestError

__all__ = ["SaeLayer", "SaeManifest", "SaeManifestError"]
