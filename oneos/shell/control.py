"""What running shell code keeps besides the session: scopes, streams, and the signals that unwind it.

* :class:`Scope`: the state a command sees and changes: the session (cwd,
  variables, ``$?``), the functions defined, the positional parameters
  (``$1``.. of the function running), its local variables, the loops it is
  in, and whether ``exit`` was called.  A subshell (``( ... )``, ``$(...)``,
  each stage of a pipeline of several, a background job) runs in a
  :meth:`~Scope.fork`, so what it changes does not leak, as bash's fork.
* :class:`IO`: where a command's standard streams go (the session's, a pipe,
  a file of a redirection, a command substitution's capture).
* :class:`ShellSignal` and its kinds: ``break``, ``continue``, ``return`` and
  an error that abandons the rest of the line (a failed ``$((...))``, the
  function nesting limit), raised where they happen and caught by the loop,
  function, subshell or line they end.

Nothing here runs commands: that is :mod:`oneos.shell.interpreter`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from oneos.shell.errors import ShellError
from oneos.shell.parser import FunctionDef
from oneos.shell.session import Session

#: Largest output a command substitution may hold (as a built-in's whole input).
MAX_CAPTURE = 64 * 1024 * 1024


class ShellSignal(Exception):
    """A transfer of control that unwinds the interpreter's coroutines up to what it ends.

    Not a :class:`~oneos.errors.OneOSError`: the places that turn errors
    into messages let it pass.
    """


class BreakLoop(ShellSignal):
    """``break N``: leave N enclosing loops."""

    def __init__(self, count: int) -> None:
        super().__init__(f"break {count}")
        self.count = count


class ContinueLoop(ShellSignal):
    """``continue N``: the next iteration of the Nth enclosing loop."""

    def __init__(self, count: int) -> None:
        super().__init__(f"continue {count}")
        self.count = count


class ReturnFrom(ShellSignal):
    """``return N``: end the function (or sourced file) running, with status N."""

    def __init__(self, status: int) -> None:
        super().__init__(f"return {status}")
        self.status = status


class AbortLine(ShellSignal):
    """An error after which bash abandons the rest of the line: a failed ``$((...))``, too deep a recursion.

    The line's status is 1; a subshell it happens in ends with 1.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Frame:
    """One function call in progress: what its ``local`` variables hid, restored when it returns."""

    name: str
    #: variable -> (its value before ``local``, or None if it was unset; whether it was exported)
    saved: dict[str, tuple[str | None, bool]] = field(default_factory=dict)


class Scope:
    """The shell state commands run in: a session, functions, positional parameters, locals, loops."""

    def __init__(self, session: Session, top: bool = True) -> None:
        self.session = session
        #: name -> definition (``f() { ...; }``)
        self.functions: dict[str, FunctionDef] = {}
        #: ``$1``.. of the function running (empty at the top)
        self.positional: list[str] = []
        #: function calls in progress, innermost last
        self.frames: list[Frame] = []
        #: loops running in the innermost function body (``break`` outside one is an error, as in bash)
        self.loops = 0
        #: sourced files running (``return`` ends one)
        self.sourcing = 0
        #: set by ``exit``: what this scope (the session, or a subshell) ends with
        self.exit_status: int | None = None
        #: the session's own scope (``exit`` ends the session) rather than a subshell
        self.top = top

    def fork(self) -> Scope:
        """A subshell's copy: the same values, changed independently from now on.

        The copy shares what belongs to the login rather than to the shell
        process (history, the job table, the user); cwd, variables, exported
        names, ``$?``, functions and positional parameters are its own.
        """
        session = copy.copy(self.session)
        session.env = dict(self.session.env)
        session.exported = set(self.session.exported)
        child = Scope(session, top=False)
        child.functions = dict(self.functions)
        child.positional = list(self.positional)
        child.frames = [Frame(f.name) for f in self.frames]  # locals are plain variables of the copy
        child.loops = self.loops
        child.sourcing = self.sourcing
        return child

    @property
    def in_function(self) -> bool:
        return bool(self.frames)

    def make_local(self, name: str, value: str | None) -> None:
        """``local NAME[=VALUE]`` in the innermost function: hide NAME's value until the function returns."""
        frame = self.frames[-1]
        env = self.session.env
        if name not in frame.saved:
            frame.saved[name] = (env.get(name), name in self.session.exported)
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value

    def restore_locals(self, frame: Frame) -> None:
        """The function of *frame* returned: its locals' names get back what they held."""
        env, exported = self.session.env, self.session.exported
        for name, (value, was_exported) in frame.saved.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
            if was_exported:
                exported.add(name)
            else:
                exported.discard(name)


class _SessionInput:
    """Marks "the session's input": each pipeline takes a fresh reader of it (foreground only)."""

    def __repr__(self) -> str:
        return "SESSION_INPUT"


SESSION_INPUT: Any = _SessionInput()


@dataclass
class IO:
    """Where a command's streams go.

    ``stdin``: None (no input), :data:`SESSION_INPUT`, or a transfer-style
    Source shared by the commands of a compound command (each borrows it;
    the one that opened it closes it).  ``out`` / ``err``: writers, None for
    the interpreter's own (looked up at each use, as a front end may swap
    them).
    """

    stdin: Any = SESSION_INPUT
    out: Any = None
    err: Any = None


class Borrowed:
    """A Source lent to one command of a list: reading it reads the shared one; closing it does not close it."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def next(self) -> Any:
        return self.source.next()

    def close(self) -> None:
        pass


class Capture:
    """The output of a command substitution, kept whole (up to MAX_CAPTURE, then an error)."""

    def __init__(self, limit: int = MAX_CAPTURE) -> None:
        self.data = bytearray()
        self.limit = limit

    def write(self, data: bytes) -> None:
        if len(self.data) + len(data) > self.limit:
            raise ShellError(f"the output of a command substitution is larger than {self.limit // 2**20} MiB")
        self.data += data

    def text(self) -> str:
        """What was printed, decoded, without its trailing newlines (as bash)."""
        return self.data.decode("utf-8", "replace").rstrip("\n")
