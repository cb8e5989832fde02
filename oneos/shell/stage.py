"""One pipeline stage once its command is expanded: argv, variables, where its streams go.

:func:`expand` turns a parsed :class:`~oneos.shell.parser.Command` into a
:class:`Stage`: words expanded and globbed against the OneOS tree,
redirections resolved to OneOS paths, ``2>&1`` / ``1>&2`` made into shared
destinations, and the built-in it names (if it names one and has no
placement suffix).  The interpreter runs built-in stages itself and hands
consecutive program stages to the launcher (:mod:`oneos.shell.launcher`).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from oneos.fs import paths
from oneos.shell.errors import ShellError
from oneos.shell.expand import expand_word, glob_pattern
from oneos.shell.parser import Command


class FileDest:
    """``> PATH`` / ``>> PATH``: a OneOS file (one object per redirection, so 2>&1 can share it)."""

    def __init__(self, path: str, append: bool) -> None:
        self.path = path
        self.append = append

    def __repr__(self) -> str:
        return f"{'>>' if self.append else '>'} {self.path}"

    @property
    def mode(self) -> str:
        """How the file is opened: ``append`` or ``truncate``."""
        return "append" if self.append else "truncate"


class TerminalDest:
    """The session's own stdout or stderr."""

    def __init__(self, name: str) -> None:
        self.name = name


class PipeDest:
    """Into the next stage of the pipeline."""


TERMINAL_OUT, TERMINAL_ERR, PIPE = TerminalDest("stdout"), TerminalDest("stderr"), PipeDest()


@dataclass
class Stage:
    """One pipeline stage once expanded: argv, environment, where its streams go."""

    argv: list[str]
    assignments: dict[str, str]
    stdin_file: str | None
    #: a FileDest, TERMINAL_OUT / TERMINAL_ERR or PIPE (the same object as stderr after 2>&1 / 1>&2)
    stdout: Any
    stderr: Any
    runtime: str | None = None
    tags: tuple[str, ...] = ()
    builtin: Callable[..., Any] | None = None
    #: devices its runtime must have (``@dev:NAME``)
    near: tuple[str, ...] = ()

    def file_dests(self) -> list[FileDest]:
        """The files its stdout and stderr go to, each once (``> F 2>&1`` is one file)."""
        return [d for d in {id(d): d for d in (self.stdout, self.stderr)}.values() if isinstance(d, FileDest)]


class RunState:
    """What the stages of one pipeline run share: whether any stream failed."""

    def __init__(self) -> None:
        self.failed = False


async def expand(
    command: Command,
    *,
    env: Mapping[str, str],
    status: int,
    cwd: str,
    fs: Any,
    builtins: Mapping[str, Any],
    piped_in: bool,
    piped_out: bool,
) -> Stage:
    """*command* as a Stage: words expanded and globbed (in *cwd*, through *fs*), redirections resolved."""
    argv: list[str] = []
    for word in command.words:
        pattern = glob_pattern(word, env, status)
        if pattern is not None:
            matches = await fs.glob(pattern, cwd)
            if matches:
                argv.extend(_display(m, pattern, cwd) for m in matches)
                continue
        argv.append(expand_word(word, env, status))
    assignments = {a.name: expand_word(a.value, env, status) for a in command.assignments}
    stdin_file: str | None = None
    stdout: Any = PIPE if piped_out else TERMINAL_OUT
    stderr: Any = TERMINAL_ERR
    for r in command.redirects:
        if r.op == ">&":
            if (r.fd, r.target) == (2, 1):
                stderr = stdout
            elif (r.fd, r.target) == (1, 2):
                stdout = stderr
            elif r.fd != r.target:
                raise ShellError(f"{r.fd}>&{r.target}: only 2>&1 and 1>&2 are supported")
            continue
        assert not isinstance(r.target, int)
        target = expand_word(r.target, env, status)
        if not target:
            raise ShellError("a redirection needs a file name")
        path = paths.normalise(target, cwd)
        if r.op == "<":
            if r.fd != 0:
                raise ShellError(f"{r.fd}<: only standard input (0) can be read from a file")
            if piped_in:
                raise ShellError("a stage cannot read both from a pipe and from a file ('<')")
            stdin_file = path
        else:
            dest = FileDest(path, r.op == ">>")
            if r.fd == 1:
                stdout = dest
            elif r.fd == 2:
                stderr = dest
            else:
                raise ShellError(f"{r.fd}>: only standard output (1) and error (2) can be redirected")
    where = command.placement
    placed = where.runtime is not None or bool(where.tags) or bool(where.near)
    builtin = builtins.get(argv[0]) if argv and not placed else None
    return Stage(argv, assignments, stdin_file, stdout, stderr, where.runtime, where.tags, builtin, where.near)


def _display(match: str, pattern: str, cwd: str) -> str:
    """A glob match shown the way it was asked: relative patterns give relative names (as bash)."""
    if pattern.startswith("/"):
        return match
    return posixpath.relpath(match, cwd)
