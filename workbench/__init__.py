"""The workbench: launch, record and watch LLM training-dynamics experiments.

`workbench.init(...)` is the SDK entry point (see `workbench.tracking`). It is
imported lazily so that `import workbench` and the `wb` CLI start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["init", "Run", "__version__"]

if TYPE_CHECKING:
    from workbench.tracking import Run, init


def __getattr__(name: str) -> Any:
    if name in ("init", "Run"):
        from workbench import tracking

        return getattr(tracking, name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
