"""The store build: ``python -m precompute run`` (corpus -> SAE codes -> a feature store).

One room per stage, in the order the data flows:

- :mod:`~precompute.store_build.job`: the run (:class:`~.job.RunConfig`, :class:`~.job.Job`,
  :func:`~.job.run_preset`): encode to shards, reduce, write;
- :mod:`~precompute.store_build.records`: sparse records ``(pos, feat, act)`` in canonical order,
  and the run's token table;
- :mod:`~precompute.store_build.shards`: the encode step's checkpoint files, read back by feature
  block; :mod:`~precompute.store_build.storage`: the shard directory a cluster run shares (a path
  or an fsspec URL);
- :mod:`~precompute.store_build.accumulate`: exact per-feature statistics and example selection;
  :mod:`~precompute.store_build.blocks`: that reduce one feature block at a time;
- :mod:`~precompute.store_build.features`: what comes from the weights alone (logit effects,
  decoder neighbours);
- :mod:`~precompute.store_build.write`: the atomic store writer (``describe`` and
  ``steer-eval`` add their files through it too);
- :mod:`~precompute.store_build.cluster`: the same run on Ray (``--ray``).

May import ``explorer`` (bundles, encoding, the store format), :mod:`precompute.corpus` and
:mod:`precompute.describe`. Importing the package is cheap: it re-exports nothing, and torch and
Ray load only when a run needs them.
"""
