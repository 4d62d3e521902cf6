"""A fast decoder for plotext's ANSI output, as Rich segments.

Why not `rich.text.Text.from_ansi`: it is general (cursor codes, OSC links, any SGR)
and builds a Text with spans, about 10 ms for one 118x18 chart on the 2-core dev
machine, as long as plotext takes to draw it. A live refresh redraws four charts.
plotext emits only SGR colour codes (reset, 256-colour and truecolour fore- and
background, bold/italic/underline), so a regex split and a style cache per code
sequence are enough: `wb bench tui` measures the refresh through this path.
Unknown SGR parameters are ignored rather than guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from rich.color import Color
from rich.console import Console, ConsoleOptions
from rich.segment import Segment
from rich.style import Style

_SGR = re.compile(r"\x1b\[([0-9;]*)m")
_ATTRS = {1: "bold", 2: "dim", 3: "italic", 4: "underline", 7: "reverse", 9: "strike"}
_NOT_ATTRS = {22: ("bold", "dim"), 23: ("italic",), 24: ("underline",), 27: ("reverse",),
              29: ("strike",)}


def _apply(style: Style, params: str) -> Style:
    """`style` after one SGR sequence."""
    codes = [int(c) if c else 0 for c in params.split(";")] if params else [0]
    i = 0
    while i < len(codes):
        c = codes[i]
        if c == 0:
            style = Style.null()
        elif c in _ATTRS:
            style += Style(**{_ATTRS[c]: True})
        elif c in _NOT_ATTRS:
            style += Style(**dict.fromkeys(_NOT_ATTRS[c], False))
        elif c in (38, 48) and i + 1 < len(codes):
            kind = codes[i + 1]
            if kind == 2 and i + 4 < len(codes):
                color = Color.from_rgb(*codes[i + 2:i + 5])
                i += 3
            elif kind == 5 and i + 2 < len(codes):
                color = Color.from_ansi(codes[i + 2])
                i += 1
            else:
                color = None
            i += 1
            if color is not None:
                style += Style(color=color) if c == 38 else Style(bgcolor=color)
        elif 30 <= c <= 37 or 90 <= c <= 97:
            style += Style(color=Color.from_ansi(c - 30 if c < 90 else c - 82))
        elif 40 <= c <= 47 or 100 <= c <= 107:
            style += Style(bgcolor=Color.from_ansi(c - 40 if c < 100 else c - 92))
        elif c == 39:
            style += Style(color=Color.default())
        elif c == 49:
            style += Style(bgcolor=Color.default())
        i += 1
    return style


class AnsiLines:
    """Decoded lines of ANSI text; a Rich renderable (one line per line, no wrapping)."""

    _cache: dict[tuple[Style, str], Style] = {}  # (style before, SGR params) -> after

    def __init__(self, text: str) -> None:
        self.lines: list[list[Segment]] = [self._decode(line) for line in text.split("\n")]

    def _decode(self, line: str) -> list[Segment]:
        parts = _SGR.split(line)
        style = Style.null()
        out = [Segment(parts[0], style)] if parts[0] else []
        cache = self._cache
        for k in range(1, len(parts), 2):
            key = (style, parts[k])
            nxt = cache.get(key)
            if nxt is None:
                nxt = cache[key] = _apply(style, parts[k])
                if len(cache) > 4096:  # bounded: theme changes bring new colours
                    cache.clear()
            style = nxt
            if parts[k + 1]:
                out.append(Segment(parts[k + 1], style))
        return out

    @property
    def plain(self) -> str:
        return "\n".join("".join(s.text for s in line) for line in self.lines)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        last = len(self.lines) - 1
        for i, line in enumerate(self.lines):
            yield from line
            if i < last:
                yield Segment.line()
