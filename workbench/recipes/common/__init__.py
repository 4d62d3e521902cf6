"""The recipe kit: what every recipe (pretrain, rl, depth) shares, so that no recipe
imports another's internals for it.

- ``checkpoint``: atomic, fsynced checkpoint folders, keep-last-N, latest complete one;
- ``parallel``: this process's place in the data-parallel group (``Parallel``),
  ``run_in_parallel`` around a recipe body, and ``pick_device``;
- ``seeding``: ``seed_everything`` for Python, NumPy and torch.

The kit of the kinds that train a model from a ``TrainedSpec`` (pretrain, depth),
here so that depth trains through the very loop pretrain does without importing it:

- ``model_spec``, ``trained_spec``: the model, optim, train and stability sections
  (torch-free);
- ``builders``: model, optimizers and spike detector from the spec;
- ``trainer``: the ``Trainer`` loop, ``build_trainer`` and ``train``; the recipe
  brings its data (loader, validation batches, optionally a ``Corpus``);
- ``step``: one step and evaluation; ``schedule``: the learning rate of a step;
  ``train_metrics``: update / weight RMS, SVD entropy, MFU; ``precision``: bf16
  autocast on CUDA; ``faults``: test-only fault injection;
- ``trainer_checkpoint``: what a Trainer checkpoint holds, and exact resume;
  ``model_record``: its model.json (torch-free, read by ``wb export-model``).

See docs/ARCHITECTURE.md ("Recipes").
"""
