"""``oneos configure``: write ``$ONEOS_HOME/config.json`` by answering questions.

Like the original's first run, it asks for each setting, shows the current
value as the default, validates every answer on the spot and asks again when
one is invalid, then writes the file atomically.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from oneos.config import Config, load_config, oneos_home, save_config, with_changes
from oneos.errors import ConfigError

SUMMARY = "answer a few questions to write $ONEOS_HOME/config.json"

#: (setting, question, how to show the current value)
QUESTIONS: list[tuple[str, str, Callable[[Config], str]]] = [
    ("id", "Runtime id (blank for a random one)", lambda c: "" if c.generated_id else c.id),
    ("pubsub", "Pubsub broker URL", lambda c: c.pubsub),
    ("store", "File store URL (sqlite:///PATH or mongodb://HOST:PORT/DB)", lambda c: c.store),
    ("memory_mb", "Memory limit for agents, MB", lambda c: str(c.memory_mb)),
    ("kernel", "Host kernel services if elected? (yes/no)", lambda c: "yes" if c.kernel else "no"),
    ("tags", "Tags, comma-separated", lambda c: ",".join(c.tags)),
]


def interview(config: Config, ask: Callable[[str], str], say: Callable[[str], None]) -> Config:
    """Ask every question, re-asking until each answer validates."""
    for field, question, show in QUESTIONS:
        while True:
            current = show(config)
            answer = ask(f"{question} [{current}]: ").strip()
            value: Any = answer if answer else current
            try:
                config = with_changes(config, **{field: value})
                break
            except ConfigError as e:
                say(f"  {e.problem}; try again")
    return config


def run(argv: list[str], stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oneos configure", description=SUMMARY)
    parser.add_argument("--home", type=Path, help="OneOS home (default $ONEOS_HOME or ~/.oneos)")
    args = parser.parse_args(argv)
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    home = args.home or oneos_home()
    config = load_config(home)

    def ask(prompt: str) -> str:
        stdout.write(prompt)
        stdout.flush()
        line = stdin.readline()
        if not line:
            raise EOFError
        return line

    def say(text: str) -> None:
        stdout.write(text + "\n")

    try:
        config = interview(config, ask, say)
    except (EOFError, KeyboardInterrupt):
        say("\nno answers; nothing written")
        return 1
    path = save_config(config)
    say(f"wrote {path}")
    return 0
