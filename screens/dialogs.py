"""Small modal dialogs shared by the screens: a yes/no confirmation.

Destructive actions (stop a run, delete a run) ask first, because a stray key on a
keyboard-driven screen must never cost a training run. Keys: `y`/`enter` confirm,
`n`/`escape` cancel; the buttons do the same for a mouse.
"""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from workbench.themes import stylesheet


class ConfirmScreen(ModalScreen[bool]):
    """Ask one question; dismiss with True (confirmed) or False."""

    CSS_PATH = str(stylesheet("dialogs"))
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "Cancel", show=False),
    ]

    def __init__(self, question: str, *, confirm_label: str = "Yes",
                 danger: bool = True) -> None:
        super().__init__()
        self.question = question
        self.confirm_label = confirm_label
        self.danger = danger

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question, id="question", markup=False)
            with Horizontal(id="buttons"):
                yield Button(f"{self.confirm_label} (y)", id="yes",
                             variant="error" if self.danger else "primary")
                yield Button("Cancel (n)", id="no")

    def on_mount(self) -> None:
        # Enter on the focused button confirms, as the (y) label says; the focus starts
        # there so `enter` and `y` mean the same.
        self.query_one("#yes", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
