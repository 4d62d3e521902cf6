"""A generator on another host: `python -m workbench.recipes.rl.remote`, started over
ssh by the trainer (trainer.py `RemoteGenerator`). It reads its arguments as one JSON
line on stdin (`messages.GeneratorStart`; the run's secret is among them: it never
appears on a command line or in a store), then runs the same `generator_main` as a
local generator. It logs nothing to a store of its own: what it measures travels to the
trainer as `Stats` messages and lands in the trainer's run; its printed lines reach the
trainer's log through ssh.

It leaves when told to stop, when the trainer has been silent too long (transport.py),
or when its stdin ends: the trainer (or its ssh client) is gone.
"""

from __future__ import annotations

import os
import sys
import threading


def _watch_stdin() -> None:
    """Exit at once when stdin ends: the ssh connection or the trainer is gone."""
    while sys.stdin.readline():
        pass
    os._exit(1)


def main() -> None:
    line = sys.stdin.readline()
    if not line.strip():
        print("remote generator: no arguments on stdin", file=sys.stderr)
        sys.exit(2)
    from workbench.recipes.rl.messages import GeneratorStart

    try:
        start = GeneratorStart.from_json(line)
    except ValueError as exc:  # a workbench of another version on this host, say
        print(f"remote generator: {exc}", file=sys.stderr)
        sys.exit(2)
    threading.Thread(target=_watch_stdin, name="wb-watch-stdin", daemon=True).start()
    from workbench.recipes.rl.generator import generator_main

    generator_main(start)


if __name__ == "__main__":
    main()
