"""Expanding words that need the interpreter: command substitution, arithmetic, ``~USER``, ``"$@"``, globs.

A :class:`Words` is made for each command the interpreter expands, with the
scope's variables and positional parameters, the file system (globs, and
whether ``/home/USER`` exists) and a callback that runs a command
substitution's script in a subshell and returns what it printed.

The rules, bash's unless :mod:`oneos.shell.expand` says otherwise:

* a variable's value is never split nor globbed (``$X`` is one argument);
* ``"$@"`` gives one argument per positional parameter (none when there are
  none), ``$*`` and ``$#`` one each;
* the output of an unquoted ``$(...)`` is split into words at blanks and
  newlines (bash with the default IFS) but never globbed; quoted, it is one
  word; its trailing newlines are removed either way;
* a word that is made only of expansions that came out empty is dropped
  when one of them was an unquoted ``$(...)`` or ``"$@"`` (``echo $(true) x``
  has one argument);
* only unquoted ``*``, ``?`` and ``[`` typed on the line glob; a pattern
  that matches nothing stays as it is.

A failed ``$((...))`` raises :class:`~oneos.shell.control.AbortLine` (bash
abandons the rest of the line); the last command substitution's status is
kept in :attr:`Words.substitution_status`, which is the status of a command
that has no name (``x=$(false)`` sets ``$?`` to 1).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from oneos.errors import describe
from oneos.fs import paths
from oneos.shell import arith
from oneos.shell.control import AbortLine
from oneos.shell.expand import GLOB_CHARS, escape_glob, param_value, tilde_value
from oneos.shell.parser import ArithSub, CommandSub, Literal, Param, Part, Script, Tilde, Word

#: Runs a command substitution's script in a subshell: (what it printed, its status).
Substitute = Callable[[Script], Awaitable[tuple[str, int]]]

_BLANKS = re.compile(r"[ \t\n]+")
#: A bracket expression: '[' with a ']' after it.
_BRACKETS = re.compile(r"\[.+\]")

# A field is a list of (text, wildcard) segments: wildcard text is what was typed unquoted.
_Segment = tuple[str, bool]


class _Fields:
    """Builds the argument words of one shell word, piece by piece."""

    def __init__(self) -> None:
        self.fields: list[list[_Segment]] = []
        self.current: list[_Segment] = []
        #: the current field exists even if empty (it had a literal, a quoted part or a variable)
        self.real = False

    def add(self, text: str, wildcard: bool = False, real: bool = True) -> None:
        self.current.append((text, wildcard))
        self.real = self.real or real

    def close(self) -> None:
        if self.real or any(text for text, _ in self.current):
            self.fields.append(self.current)
        self.current, self.real = [], False

    def finish(self) -> list[list[_Segment]]:
        self.close()
        return self.fields


class Words:
    """Expands the words of one command in a scope (see the module's rules)."""

    def __init__(
        self,
        env: MutableMapping[str, str],
        status: int,
        positional: Sequence[str],
        home: str,
        fs: Any,
        cwd: str,
        substitute: Substitute,
    ) -> None:
        self.env = env
        self.status = status
        self.positional = positional
        self.home = home
        self.fs = fs
        self.cwd = cwd
        self.substitute = substitute
        #: status of the last command substitution run, if any
        self.substitution_status: int | None = None

    # -- what callers ask ---------------------------------------------------------
    async def argv(self, words: Sequence[Word]) -> list[str]:
        """Command arguments (or ``for`` words): fields, then globs against the OneOS tree."""
        argv: list[str] = []
        for word in words:
            for segments in await self.fields(word):
                argv.extend(await self._glob(segments))
        return argv

    async def text(self, word: Word) -> str:
        """One string, never split nor globbed: an assignment's value, a redirection's target, ``case``'s word."""
        pieces = []
        for i, part in enumerate(word.parts):
            if isinstance(part, Param) and part.name == "@":
                pieces.append(" ".join(self.positional))
            else:
                pieces.append(await self._value(part, first=i == 0))
        return "".join(pieces)

    async def pattern(self, word: Word) -> str:
        """A ``case`` pattern: typed wildcards are wildcards, anything quoted or expanded matches itself."""
        pieces = []
        for i, part in enumerate(word.parts):
            if isinstance(part, Literal) and not part.quoted:
                pieces.append(part.text)
            else:
                pieces.append(escape_glob(await self._value(part, first=i == 0)))
        return "".join(pieces)

    async def arithmetic_text(self, parts: Sequence[Part]) -> str:
        """The text of an arithmetic expression once its ``$X``, ``$(...)`` and inner ``$((...))`` are expanded."""
        return "".join([await self._value(part, first=False) for part in parts])

    def evaluate(self, text: str) -> int:
        """An arithmetic expression's value, assigning to this scope's variables (ArithError if it fails)."""

        def assign(name: str, value: str) -> None:
            self.env[name] = value

        return arith.evaluate(text, self.env.get, assign)

    # -- parts ------------------------------------------------------------------------
    async def fields(self, word: Word) -> list[list[_Segment]]:
        fields = _Fields()
        for i, part in enumerate(word.parts):
            if isinstance(part, Literal):
                fields.add(part.text, wildcard=not part.quoted)
            elif isinstance(part, Param) and part.name == "@":
                for n, value in enumerate(self.positional):
                    if n:
                        fields.close()
                    fields.add(value)
            elif isinstance(part, CommandSub) and not part.quoted:
                self._split_into(fields, await self._substitute(part.script))
            else:
                fields.add(await self._value(part, first=i == 0))
        return fields.finish()

    @staticmethod
    def _split_into(fields: _Fields, text: str) -> None:
        """An unquoted substitution's output, split at blanks and newlines (bash's default IFS)."""
        if not text:
            return
        if text[0] in " \t\n":
            fields.close()
        pieces = [p for p in _BLANKS.split(text) if p]
        for n, piece in enumerate(pieces):
            if n:
                fields.close()
            fields.add(piece)
        if text[-1] in " \t\n":
            fields.close()

    async def _value(self, part: Part, first: bool) -> str:
        if isinstance(part, Literal):
            return part.text
        if isinstance(part, Param):
            return param_value(part.name, self.env, self.status, self.positional)
        if isinstance(part, Tilde):
            return await self._tilde(part)
        if isinstance(part, CommandSub):
            return await self._substitute(part.script)
        assert isinstance(part, ArithSub)
        text = await self.arithmetic_text(part.parts)
        try:
            return str(self.evaluate(text))
        except arith.ArithError as e:
            raise AbortLine(describe(e)) from None

    async def _tilde(self, part: Tilde) -> str:
        if not part.user:
            return self.env.get("HOME") or self.home
        if part.user in ("+", "-"):  # ~+ is $PWD, ~- is $OLDPWD (as typed when there is none)
            return self.env.get("PWD" if part.user == "+" else "OLDPWD") or "~" + part.user
        home = tilde_value(part, self.env)
        if await self.fs.exists(home):
            return home
        return "~" + part.user  # no such user's home: left as typed, as bash does

    async def _substitute(self, script: Script) -> str:
        text, status = await self.substitute(script)
        self.substitution_status = self.status = status  # ('echo $(exit 3) $?' prints 3, as bash)
        return text

    async def _glob(self, segments: list[_Segment]) -> list[str]:
        text = "".join(t for t, _ in segments)
        if not any(wild and not GLOB_CHARS.isdisjoint(t) for t, wild in segments):
            return [text]
        pattern = "".join(t if wild else escape_glob(t) for t, wild in segments)
        typed = "".join(t for t, wild in segments if wild)
        if "*" not in typed and "?" not in typed and not _BRACKETS.search(pattern):
            return [text]  # '[' alone (the test command) can only match itself: no lookup
        matches = await self.fs.glob(pattern, self.cwd)
        if not matches:
            return [text]
        return [display(m, pattern, self.cwd) for m in matches]


def display(match: str, pattern: str, cwd: str) -> str:
    """A glob match shown the way it was asked: relative patterns give relative names (as bash).

    The directories typed before the first wildcard stay as typed, so
    ``./*.txt`` gives ``./a.txt`` and ``../a*`` gives ``../ab``.
    """
    if pattern.startswith("/"):
        return match
    prefix = ""
    for component in pattern.split("/")[:-1]:
        if paths.has_magic(component):
            break
        prefix += component + "/"
    base = posixpath.normpath(posixpath.join(cwd, prefix)) if prefix else cwd
    return prefix + posixpath.relpath(match, base)
