"""Where the user's workbench configuration lives."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    """`$XDG_CONFIG_HOME/workbench` (else ~/.config/workbench). XDG is honoured because
    the workbench runs over SSH on shared machines, where people point XDG_CONFIG_HOME
    at their own folder."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "workbench"
