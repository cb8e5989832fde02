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

import importlib
from typing import TYPE_CHECKING, Any

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

#: where each name of the package's API lives: imported on first use (PEP 562), because every
#: runtime imports this package for its front door (oneos.shell.service) and most never parse a line
_HOMES = {"expand_word": "expand", "glob_pattern": "expand", "unparse": "expand"}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_HOMES.get(name, 'parser')}")
    value = getattr(module, name)
    globals()[name] = value
    return value


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
