"""The batch side of Gemma Scope Explorer: corpus, SAE training and the feature store.

``python -m precompute --help`` lists the commands. Rooms: ``corpus`` (documents -> windows, read
by every run), ``job`` (the precompute run: encode to shards, reduce, write), ``records`` and
``accumulate`` (sparse records and their exact reductions), ``features`` (properties from the
weights), ``write`` (the atomic store writer), ``train/`` (SAE training), ``corpus_build/`` (the
once-run builder of the default corpus), ``explain/`` (LLM explanations and their scores,
Neuronpedia import and export).

May import ``explorer`` (bundles, encoding, the store format) and the declared dependencies;
nothing in ``explorer`` imports this package. Importing it is cheap: torch, transformers and
sae-lens load only when a command needs them.
"""
