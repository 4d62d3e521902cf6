"""Dashboard themes shipped as package data (`workbench.themes`).

- `THEMES`: the workbench's Textual themes, by name. Every colour the
  dashboard draws comes from a theme variable ($primary, $error, ...), so
  switching theme re-colours charts, heatmaps and tables alike.
- `load_theme_name()` / `save_theme_name(name)`: the chosen theme, remembered in
  `$XDG_CONFIG_HOME/workbench/settings.json` (`~/.config/...` without XDG).
- `stylesheet(name)`: path of a shipped .tcss file (the app's `CSS_PATH`, and
  the default styles of the widgets in `workbench.screens.widgets`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from textual.theme import BUILTIN_THEMES, Theme

__all__ = [
    "DEFAULT_THEME",
    "THEMES",
    "load_theme_name",
    "load_setting",
    "save_setting",
    "register_themes",
    "save_theme_name",
    "settings_path",
    "stylesheet",
]


def stylesheet(name: str = "workbench") -> Path:
    """Path of a shipped stylesheet, for `App.CSS_PATH`."""
    path = Path(str(resources.files(__name__) / f"{name}.tcss"))
    if not path.is_file():
        raise FileNotFoundError(f"no theme stylesheet {name!r} in {path.parent}")
    return path


# Okabe & Ito's palette ("Color Universal Design", 2008): eight colours that
# stay distinct under the common forms of colour blindness. The high-contrast
# theme is built from it alone, on pure black with white text.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}

THEMES: dict[str, Theme] = {
    theme.name: theme
    for theme in (
        # Dark: the default. Muted surfaces so that data colours carry the
        # meaning; error red and warning amber kept apart from the series colours.
        Theme(
            name="workbench-dark",
            primary="#5AA9E6",
            secondary="#9D8DF1",
            accent="#4FD1C5",
            warning="#F2B84B",
            error="#F0616D",
            success="#7BC67B",
            foreground="#D8DEE9",
            background="#15181E",
            surface="#1C2028",
            panel="#262C36",
            dark=True,
        ),
        # Light: for bright rooms and light terminals; colours darkened enough
        # to keep contrast on white.
        Theme(
            name="workbench-light",
            primary="#1F6FB2",
            secondary="#6A4FC4",
            accent="#0F8A80",
            warning="#B26B00",
            error="#C8283A",
            success="#2E7D32",
            foreground="#1E2329",
            background="#F7F8FA",
            surface="#FFFFFF",
            panel="#E6E9EF",
            dark=False,
        ),
        # High contrast, colour-blind safe: Okabe-Ito hues only, on black.
        # Error (vermillion) and success (bluish green) differ in lightness as
        # well as hue, so they stay apart for deuteranopes and protanopes.
        Theme(
            name="workbench-high-contrast",
            primary=OKABE_ITO["sky_blue"],
            secondary=OKABE_ITO["reddish_purple"],
            accent=OKABE_ITO["orange"],
            warning=OKABE_ITO["yellow"],
            error=OKABE_ITO["vermillion"],
            success=OKABE_ITO["bluish_green"],
            foreground="#FFFFFF",
            background="#000000",
            surface="#000000",
            panel="#1A1A1A",
            boost="#FFFFFF1A",
            dark=True,
            luminosity_spread=0.25,
            text_alpha=1.0,
        ),
    )
}

DEFAULT_THEME = "workbench-dark"


def register_themes(app: Any) -> None:
    """Register every workbench theme with a Textual `App` (call before setting `app.theme`)."""
    for theme in THEMES.values():
        app.register_theme(theme)


def settings_path() -> Path:
    """Where the dashboard settings live: `settings.json` in the config folder
    (`workbench.paths.config_dir`)."""
    from workbench.paths import config_dir

    return config_dir() / "settings.json"


def _read_settings() -> dict[str, Any]:
    """The settings dict; {} when the file is missing, unreadable or not a JSON object.

    A corrupt settings file must never stop the dashboard from opening: the
    worst it may cost is the default theme.
    """
    try:
        data = json.loads(settings_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_theme_name() -> str:
    """The remembered theme, or DEFAULT_THEME when none is saved or it is unknown.

    Textual's built-in themes (chosen through the command palette) are valid
    too; a name that is neither (a theme removed since) falls back silently.
    """
    name = _read_settings().get("theme")
    if isinstance(name, str) and (name in THEMES or name in BUILTIN_THEMES):
        return name
    return DEFAULT_THEME


def save_theme_name(name: str) -> None:
    """Remember `name` as the theme, keeping any other settings in the file."""
    save_setting("theme", name)


def load_setting(key: str) -> Any:
    """One saved dashboard setting (None when unset or the file is unreadable)."""
    return _read_settings().get(key)


def save_setting(key: str, value: Any) -> None:
    """Save one setting, keeping the others.

    The write is atomic (a temporary file in the same folder, then
    os.replace), so two dashboards closing at once or a crash mid-write leave
    either the old or the new file, never a truncated one.
    """
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = _read_settings()
    settings[key] = value
    fd, tmp = tempfile.mkstemp(prefix=".settings-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(settings, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
