"""Drop-in shims for other trackers' Python APIs, recording into the workbench store.

`import workbench.compat.wandb as wandb` lets a script written for Weights & Biases
run against the workbench by changing that one import (see `workbench.compat.wandb`
for what is supported, warned about and refused). Submodules are imported on
demand: `import workbench.compat` alone costs nothing.
"""

from __future__ import annotations

__all__ = ["wandb"]
