"""What every run-screen tab shares: a title, a fit test, and a refresh from a feed."""

from __future__ import annotations

from textual.containers import Container

from workbench.feed import RunFeed


class RunTab(Container):
    """A tab's content. Subclasses set TITLE and KINDS / PREFIXES and implement
    `update_from`. Refreshing only the visible tab keeps a live refresh cheap."""

    TITLE = ""
    KINDS: tuple[str, ...] = ()  # kinds it always fits; () = every kind
    PREFIXES: tuple[str, ...] = ()  # metric prefixes that make it fit any run
    FOLLOWS_FILES = False  # refresh on every poll, not only when the store has news
    FOCUS: str | None = None  # what takes the keys when the tab is shown ("" = the tab)

    @classmethod
    def wants(cls, feed: RunFeed) -> bool:
        if not cls.KINDS and not cls.PREFIXES:
            return True
        if feed.row["kind"] in cls.KINDS:
            return True
        keys = feed.keys() + feed.dist_keys() + feed.matrix_keys()
        return any(k.startswith(cls.PREFIXES) for k in keys) if cls.PREFIXES else False

    def update_from(self, feed: RunFeed) -> None:
        raise NotImplementedError
