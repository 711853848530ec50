"""The manifest of a directory of trained SAEs (``assets/saes/manifest.json``): written by
``precompute train-saes``, read by the precompute run (it copies each layer's metrics into the
store's manifest) and by anyone who wants to know how the shipped SAEs were made.

::

    manifest.json      this file: provenance (versions, model, corpus and its sha256, the
                       training config) and one entry per layer with its held-out metrics
    layer_N/           sae-lens's inference format (cfg.json, sae_weights.safetensors), plus
                       metrics.json (the same metrics, written when the layer finished)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from explorer.files import atomic_write_text

SAES_KIND = "saes"
SAES_SCHEMA_VERSION = 1
SAES_MANIFEST = "manifest.json"


class SaeManifestError(ValueError):
    """An SAE manifest that cannot be read; the message says which file and why."""


@dataclass(frozen=True)
class SaeLayer:
    """One trained layer.

    Args:
        layer: the layer index.
        path: its directory, relative to the manifest (``layer_5``).
        metrics: everything measured on held-out tokens and about the training run
            (``hook_name``, ``explained_variance``, ``l0``, ``dead_fraction``, ``ce_clean``,
            ``ce_spliced``, ``ce_delta``, ``training_tokens``, ``training_seconds``, ``device``…).
    """

    layer: int
    path: str
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "path": self.path, **self.metrics}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SaeLayer:
        rest = {k: v for k, v in data.items() if k not in ("layer", "path")}
        layer, path = data.get("layer"), data.get("path")
        if not isinstance(layer, int) or not isinstance(path, str):
            raise SaeManifestError(f"an SAE manifest layer lacks 'layer' or 'path': {data!r}"[:200])
        return cls(layer=layer, path=path, metrics=rest)


@dataclass(frozen=True)
class SaeManifest:
    """Provenance and metrics of a directory of SAEs, one per layer.

    Args:
        package_version: this project's version that trained them.
        sae_lens_version: sae-lens's version.
        torch_version: torch's version.
        model: the model's name (``gemma-3-270m`` for the embedded one).
        architecture: what the saved SAEs are (e.g. ``jumprelu (trained as batchtopk)``).
        corpus: the corpus spec trained on; ``corpus_sha256`` its fingerprint.
        train_config: the training config (``TrainConfig.to_dict()``).
        layers: one entry per layer, in layer order.
        model_info: other facts about the model (``model_source``, ``gguf_sha256``).
    """

    package_version: str
    sae_lens_version: str
    torch_version: str
    model: str
    architecture: str
    corpus: str
    corpus_sha256: str
    train_config: dict[str, Any]
    layers: tuple[SaeLayer, ...]
    model_info: dict[str, Any] = field(default_factory=dict)

    def layer(self, layer: int) -> SaeLayer | None:
        """The entry of ``layer``, or ``None`` if it was not trained."""
        return next((x for x in self.layers if x.layer == layer), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SAES_SCHEMA_VERSION,
            "kind": SAES_KIND,
            "package_version": self.package_version,
            "sae_lens_version": self.sae_lens_version,
            "torch_version": self.torch_version,
            "model": self.model,
            **self.model_info,
            "architecture": self.architecture,
            "corpus": self.corpus,
            "corpus_sha256": self.corpus_sha256,
            "train_config": self.train_config,
            "layers": [x.to_dict() for x in sorted(self.layers, key=lambda x: x.layer)],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SaeManifest:
        if data.get("kind") != SAES_KIND:
            raise SaeManifestError(f"not an SAE manifest: kind is {data.get('kind')!r}")
        if data.get("schema_version") != SAES_SCHEMA_VERSION:
            raise SaeManifestError(
                f"SAE manifest schema version {data.get('schema_version')!r}, this code reads "
                f"{SAES_SCHEMA_VERSION}"
            )
        named = {
            "schema_version", "kind", "package_version", "sae_lens_version", "torch_version",
            "model", "architecture", "corpus", "corpus_sha256", "train_config", "layers",
        }  # fmt: skip
        layers = data.get("layers")
        if not isinstance(layers, list):
            raise SaeManifestError("SAE manifest has no 'layers' list")
        try:
            return cls(
                package_version=str(data["package_version"]),
                sae_lens_version=str(data["sae_lens_version"]),
                torch_version=str(data["torch_version"]),
                model=str(data["model"]),
                architecture=str(data["architecture"]),
                corpus=str(data["corpus"]),
                corpus_sha256=str(data["corpus_sha256"]),
                train_config=dict(data["train_config"]),
                layers=tuple(SaeLayer.from_dict(x) for x in layers),
                model_info={k: v for k, v in data.items() if k not in named},
            )
        except (KeyError, TypeError, ValueError) as err:
            raise SaeManifestError(f"SAE manifest lacks or garbles {err}") from None

    @classmethod
    def read(cls, directory: Path) -> SaeManifest:
        """Read ``directory/manifest.json``; a :class:`SaeManifestError` says what is wrong."""
        path = Path(directory) / SAES_MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SaeManifestError(f"no SAE manifest at {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SaeManifestError(f"cannot read {path}: {err}") from None
        if not isinstance(data, dict):
            raise SaeManifestError(f"{path} is not a JSON object")
        return cls.from_dict(data)

    def write(self, directory: Path) -> None:
        """Write ``directory/manifest.json`` atomically."""
        atomic_write_text(Path(directory) / SAES_MANIFEST, json.dumps(self.to_dict(), indent=2))
