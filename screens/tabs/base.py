"""What every run-screen tab shares: a title, a fit test, and a refresh from a feed.

Which tabs a kind always shows is the kind's declaration (`workbench.kinds`:
`Recipe.tabs`, by `RunTab.tab_name()`), so no tab names a kind; a tab itself says only
whether it fits every run (`ALWAYS`) and which metric prefixes make it fit any run
(`PREFIXES`, data-driven: a custom SDK run that logs `rollout/*` gets Rollouts).
"""

from __future__ import annotations

from textual.containers import Container
from textual.message import Message

from workbench.feed import RunFeed
from workbench.kinds import declared


class RunTab(Container):
    """A tab's content. Subclasses set TITLE (and ALWAYS / PREFIXES when the tab does
    not fit every run) and implement `update_from`. Refreshing only the visible tab
    keeps a live refresh cheap."""

    TITLE = ""
    # False: shown only for a kind that declares it (`Recipe.tabs`) or a run that
    # logged keys under PREFIXES.
    ALWAYS = True
    PREFIXES: tuple[str, ...] = ()  # metric prefixes that make it fit any run
    FOLLOWS_FILES = False  # refresh on every poll, not only when the store has news
    FOCUS: str | None = None  # what takes the keys when the tab is shown ("" = the tab)

    class Ready(Message):
        """Posted when the tab's content is mounted. The run screen mounts a tab's
        content lazily (after a paint), so a tab chosen before then learns of it here."""

        def __init__(self, tab: RunTab) -> None:
            super().__init__()
            self.tab = tab

    def _on_mount(self) -> None:
        # Textual dispatches a Mount to the handler of every class in the MRO, the
        # subclass's own on_mount first: the content is complete when this posts.
        self.post_message(self.Ready(self))

    @classmethod
    def tab_name(cls) -> str:
        """The tab's id in kind declarations (`Recipe.tabs`): its title in lower case."""
        return cls.TITLE.lower()

    @classmethod
    def wants(cls, feed: RunFeed) -> bool:
        """Whether the run shows this tab: always, by its kind's declaration, or once
        it has logged a key under one of PREFIXES."""
        if cls.ALWAYS or cls.tab_name() in declared(feed.row.kind).tabs:
            return True
        if not cls.PREFIXES:
            return False
        keys = feed.keys() + feed.dist_keys() + feed.matrix_keys()
        return any(k.startswith(cls.PREFIXES) for k in keys)

    def update_from(self, feed: RunFeed) -> None:
        raise NotImplementedError
