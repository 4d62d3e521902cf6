"""Config: the run's spec as launched (TOML, highlighted), or its config for SDK runs."""

from __future__ import annotations

import json

from rich.syntax import Syntax
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from workbench.feed import RunFeed
from workbench.screens.tabs.base import RunTab


class ConfigTab(RunTab):
    TITLE = "Config"
    FOCUS = "VerticalScroll"  # scrolls with the keyboard at once, no Tab first

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(id="config-text")

    def on_mount(self) -> None:
        self._shown: str | None = None

    def update_from(self, feed: RunFeed) -> None:
        text, lexer = feed.spec_text, "toml"
        if not text:  # an SDK run has a config, not a spec
            text, lexer = json.dumps(feed.config, indent=2, sort_keys=True), "json"
        if text != self._shown:
            self._shown = text
            theme = "ansi_light" if not self.app.current_theme.dark else "monokai"
            self.query_one("#config-text", Static).update(
                Syntax(text, lexer, theme=theme, line_numbers=True, word_wrap=True))
