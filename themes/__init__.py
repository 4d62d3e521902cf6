"""Dashboard themes shipped as package data (`workbench.themes`): .tcss stylesheets."""

from importlib import resources
from pathlib import Path


def stylesheet(name: str = "workbench") -> Path:
    """Path of a shipped stylesheet, for `App.CSS_PATH`."""
    path = Path(str(resources.files(__name__) / f"{name}.tcss"))
    if not path.is_file():
        raise FileNotFoundError(f"no theme stylesheet {name!r} in {path.parent}")
    return path
