"""The batch side of Gemma Scope Explorer: corpus, SAE training and the feature store.

``python -m precompute --help`` lists the commands. Rooms: ``corpus`` (documents -> windows, read
by every run), ``store_build/`` (the precompute run: encode to shards, exact reduce, the atomic
store writer, its Ray variant), ``describe`` (automatic descriptions from a store), ``steer_eval``
(the steering evaluation), ``train/`` (SAE training), ``corpus_build/`` (the once-run builder of
the default corpus), ``explain/`` (LLM explanations and their scores, Neuronpedia import and
export). ``docs/architecture.md`` maps them.

May import ``explorer`` (bundles, encoding, the store format) and the declared dependencies;
nothing in ``explorer`` imports this package. Importing it is cheap: torch, transformers and
sae-lens load only when a command needs them.
"""
