"""One pipeline stage once its command is expanded: argv, variables, where its streams go.

:func:`expand` turns a parsed :class:`~oneos.shell.parser.Command` into a
:class:`Stage`: words expanded and globbed against the OneOS tree
(:class:`~oneos.shell.words.Words`), redirections resolved to OneOS paths,
``2>&1`` / ``1>&2`` made into shared destinations, and the function or
built-in it names (if it names one and has no placement suffix).  The
interpreter runs function and built-in stages itself and hands consecutive
program stages to the launcher (:mod:`oneos.shell.launcher`);
:func:`redirections` also resolves a compound command's redirections.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from oneos.fs import paths
from oneos.shell.errors import ShellError
from oneos.shell.parser import Command, Redirect, Word
from oneos.shell.words import Words


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
    #: the function it calls (a :class:`~oneos.shell.parser.FunctionDef`), if its name is one
    function: Any = None
    #: status of the last command substitution in its words (the status of a command without a name)
    substitution_status: int | None = None

    def file_dests(self) -> list[FileDest]:
        """The files its stdout and stderr go to, each once (``> F 2>&1`` is one file)."""
        return [d for d in {id(d): d for d in (self.stdout, self.stderr)}.values() if isinstance(d, FileDest)]


class RunState:
    """What the stages of one pipeline run share: whether any stream failed."""

    def __init__(self) -> None:
        self.failed = False


async def expand(
    command: Command,
    words: Words,
    *,
    cwd: str,
    builtins: Mapping[str, Any],
    functions: Mapping[str, Any],
    piped_in: bool,
    piped_out: bool,
) -> Stage:
    """*command* as a Stage: words expanded and globbed (in *cwd*), redirections resolved.

    A name that is a function (of *functions*) is looked up before the
    built-ins, as in bash; a placed stage (``@RUNTIME``) is always a program.
    """
    argv = await words.argv(command.words)
    assignments = await assigned(command, words)
    stdin_file, stdout, stderr = await redirections(command.redirects, words, cwd, piped_in, piped_out)
    where = command.placement
    placed = where.runtime is not None or bool(where.tags) or bool(where.near)
    builtin = builtins.get(argv[0]) if argv and not placed else None
    function = functions.get(argv[0]) if argv and not placed else None
    return Stage(
        argv, assignments, stdin_file, stdout, stderr, where.runtime, where.tags, builtin, where.near, function
    )


async def assigned(command: Command, words: Words) -> dict[str, str]:
    """The command's ``NAME=value`` prefixes, expanded left to right, each seeing the ones before it.

    As bash: ``A=1 B=$A cmd`` gives B the value 1 (the command's own words
    were expanded before, without them: ``A=1 echo $A`` prints the old A).
    """
    assignments: dict[str, str] = {}
    if not command.assignments:
        return assignments
    env = words.env
    words.env = ChainMap(assignments, env)
    try:
        for a in command.assignments:
            assignments[a.name] = await words.text(a.value)
    finally:
        words.env = env
    return assignments


async def redirections(
    redirects: Sequence[Redirect], words: Words, cwd: str, piped_in: bool, piped_out: bool
) -> tuple[str | None, Any, Any]:
    """(stdin file, stdout, stderr) of a stage or a compound command: OneOS paths, or PIPE / the terminal."""
    stdin_file: str | None = None
    stdout: Any = PIPE if piped_out else TERMINAL_OUT
    stderr: Any = TERMINAL_ERR
    for r in redirects:
        if r.op == ">&":
            if (r.fd, r.target) == (2, 1):
                stderr = stdout
            elif (r.fd, r.target) == (1, 2):
                stdout = stderr
            elif r.fd != r.target:
                raise ShellError(f"{r.fd}>&{r.target}: only 2>&1 and 1>&2 are supported")
            continue
        assert not isinstance(r.target, int)
        target = await _target(r.target, words)
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
    return stdin_file, stdout, stderr


async def _target(word: Word, words: Words) -> str:
    """A redirection's file name: globbed as bash does, one match is used, several are "ambiguous redirect".

    A pattern that matches nothing is the name as typed (``> *.log`` with no
    log creates ``*.log``).  Variables are never split nor globbed here either.
    """
    names = await words.argv([word])
    if len(names) != 1:
        raise ShellError(f"{await words.text(word)}: ambiguous redirect")
    if not names[0]:
        raise ShellError("a redirection needs a file name")
    return names[0]
