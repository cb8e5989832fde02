"""The OneOS shell: a bash-like language over the whole grid.

:mod:`oneos.shell.parser` turns text into an AST and
:mod:`oneos.shell.expand` expands words; both are pure (no I/O) so the
shell service can be tested, and fuzzed, without a running grid, as is the
line discipline (:mod:`oneos.shell.lines`).  Above them: the session's state
(:mod:`~oneos.shell.session`), the interpreter (:mod:`~oneos.shell.interpreter`),
the built-ins (:mod:`oneos.shell.builtins`), the program launcher
(:mod:`~oneos.shell.launcher`), the SSH and telnet front ends
(:mod:`~oneos.shell.ssh`, :mod:`~oneos.shell.telnet`) and the ``shell``
service that opens them (:mod:`~oneos.shell.service`); docs/architecture.md
("The shell") lists every module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from oneos.lazyapi import lazy_api

if TYPE_CHECKING:
    from oneos.shell.expand import expand_word, glob_pattern, unparse
    from oneos.shell.parser import (
        MAX_LINE,
        AndOr,
        Assignment,
        Command,
        Literal,
        Param,
        Pipeline,
        Placement,
        Redirect,
        Script,
        ShellSyntaxError,
        Word,
        parse,
    )

__all__ = [
    "MAX_LINE",
    "AndOr",
    "Assignment",
    "Command",
    "Literal",
    "Param",
    "Pipeline",
    "Placement",
    "Redirect",
    "Script",
    "ShellSyntaxError",
    "Word",
    "expand_word",
    "glob_pattern",
    "parse",
    "unparse",
]

# Imported on first use: every runtime imports this package for its front door (oneos.shell.service)
# and most never parse a line (oneos/lazyapi.py).
__getattr__ = lazy_api(
    __name__, {name: "expand" if name in ("expand_word", "glob_pattern", "unparse") else "parser" for name in __all__}
)
