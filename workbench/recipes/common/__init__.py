"""The recipe kit: what every recipe (pretrain, rl, depth) shares, so that no recipe
imports another's internals for it.

- ``checkpoint``: atomic, fsynced checkpoint folders, keep-last-N, latest complete one;
- ``parallel``: this process's place in the data-parallel group (``Parallel``),
  ``run_in_parallel`` around a recipe body, and ``pick_device``;
- ``seeding``: ``seed_everything`` for Python, NumPy and torch.

See docs/ARCHITECTURE.md ("Recipes").
"""
