"""Gemma Scope Explorer: explore the features that sparse autoencoders find in Gemma models.

The library and the app. Rooms (each folder's ``__init__`` says more):

- model side: ``bundle`` (presets, the Bundle of model + SAEs), ``hooked`` (HF -> transformer-lens),
  ``gguf_model`` (the embedded model; ``gguf_file`` reads a GGUF, ``gguf_convert`` turns it into a
  Hugging Face directory), ``hooks`` (per-call routed hooks), ``encode``, ``steer``;
- ``store/``: the artifact formats (the feature store and the SAE-set manifest), one owner;
- ``labels/``: human labels in SQLite;
- ``explanations/``: machine explanations (LLM-generated and scored, or imported), in SQLite;
- ``circuits/``: attribution graphs (circuit-tracer's method) over transcoders, their file
  format and feature interventions;
- ``app/``: the Gradio app, one module per tab;
- shared names: ``paths`` (where assets are), ``files`` (atomic writes, sha256).

May import: the standard library and the declared dependencies; never ``precompute`` (the app
must start without the batch machinery). Importing the package is cheap: models, SAEs and Gradio
load only when a command needs them.
"""

__version__ = "0.1.0"
