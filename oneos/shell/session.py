"""What one login keeps between the lines it runs, and what its client sends while they run.

* :class:`Session`: the user, cwd, variables (and which are exported),
  the last status, the history and the background jobs;
* :class:`Job`: one and-or list being run (its agents, what its built-ins
  wait on, its pipes), so Ctrl-C and a vanished client can stop it;
* :class:`SessionInput`: the bytes the client sends while commands run,
  handed to the first stage of the foreground pipeline as its stdin;
* :class:`Grid`: the network as this session's user sees it (files, RPC,
  the broker, a clock).

Nothing here runs commands: that is :mod:`oneos.shell.interpreter`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from oneos.agents.info import AgentInfo
from oneos.fs import paths
from oneos.shell.streams import StreamPipe

#: Lines kept in a session's history.
HISTORY_SIZE = 1000
#: Bytes of session input held for the program before the front end is asked to pause its client.
INPUT_LIMIT = 1024 * 1024
#: Largest piece handed to a reader at once (the transfer cuts frames anyway).
INPUT_CHUNK = 64 * 1024


class Session:
    """What one login keeps between lines: user, cwd, variables, history, jobs."""

    def __init__(self, user: str, home: str | None = None, env: dict[str, str] | None = None) -> None:
        self.user = user
        self.home = home or "/home"
        self.cwd = self.home
        self.env: dict[str, str] = {
            "USER": user,
            "HOME": self.home,
            "PWD": self.cwd,
            "SHELL": "oneos",
            "PS1": "\\u@oneos:\\w$ ",
        }
        self.env.update(env or {})
        #: names passed to agents in their environment (``export``)
        self.exported: set[str] = set()
        self.status = 0
        self.history: list[str] = []
        self.jobs: dict[int, Job] = {}
        self._next_job = 1

    def remember(self, line: str) -> None:
        """Add a typed line to the history (the last HISTORY_SIZE are kept)."""
        if line.strip():
            self.history.append(line.rstrip("\n"))
            del self.history[:-HISTORY_SIZE]

    def new_job(self, text: str) -> Job:
        job = Job(self._next_job, text)
        self._next_job += 1
        return job

    def set_cwd(self, path: str) -> None:
        self.env["OLDPWD"] = self.cwd
        self.cwd = path
        self.env["PWD"] = path

    def prompt(self) -> str:
        """PS1 with ``\\u`` (user), ``\\w`` (cwd, ~ for home) and ``\\W`` (its last name)."""
        cwd = self.cwd
        short = "~" + cwd[len(self.home) :] if paths.is_within(cwd, self.home) else cwd
        ps1 = self.env.get("PS1", "$ ")
        return ps1.replace("\\u", self.user).replace("\\w", short).replace("\\W", paths.basename(cwd) or "/")

    def agent_env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in self.env.items() if k in self.exported}
        env.update(extra)
        env["ONEOS_CWD"] = self.cwd
        env["ONEOS_USER"] = self.user
        return env


@dataclass
class Job:
    """An and-or list being run: its agents and waits, so they can be stopped; its result."""

    number: int
    text: str
    #: the agents it started (their records as spawn answered)
    agents: list[AgentInfo] = field(default_factory=list)
    done: defer.Deferred | None = None
    status: int | None = None
    #: started with '&': never reads the session's input
    background: bool = False
    #: set by Ctrl-C / hangup; built-ins that wait (tail -f, reading input) end with 130
    stopped: bool = False
    #: what the job's built-ins are waiting on, cancelled when it is stopped
    waiting: set[defer.Deferred] = field(default_factory=set)
    #: pipes between the stages running now, broken when it is stopped (nothing waits on them after)
    pipes: list[StreamPipe] = field(default_factory=list)

    async def wait(self, d: defer.Deferred) -> Any:
        """Await *d* unless the job is stopped meanwhile (then CancelledError, as Ctrl-C should)."""
        if self.stopped:
            d.cancel()
            d.addErrback(lambda f: None)  # (its CancelledError is this one)
            raise defer.CancelledError()
        self.waiting.add(d)
        try:
            return await d
        finally:
            self.waiting.discard(d)


_EOF = None  # a terminal's Ctrl-D, queued in SessionInput between data chunks


class SessionInput:
    """Bytes the session's client sends while commands run, for the foreground pipeline's stdin.

    The SSH/telnet front end feeds it (:meth:`feed`, :meth:`end_of_input`,
    :meth:`close`); the interpreter hands one :meth:`reader` at a time (a
    transfer *Source*) to the first stage of a foreground pipeline.

    Two kinds of end, because a pipe and a terminal differ: :meth:`close` is
    the channel's EOF (``ssh host CMD < file``) and is final, every later
    reader sees EOF at once; :meth:`end_of_input` is a terminal's Ctrl-D and
    ends only the current reader's input, the next program reads fresh
    typing, as on a tty.

    Input waits here until a reader takes it (the program may still be
    starting).  Past *limit* bytes the front end's *pause* is called, so a
    fast client cannot fill the shell's memory while a program reads slowly;
    *resume* once the backlog is taken.  Without *pause*, input past the
    limit is dropped and :meth:`feed` returns False.
    """

    def __init__(
        self, limit: int = INPUT_LIMIT, pause: Callable[[], Any] | None = None, resume: Callable[[], Any] | None = None
    ) -> None:
        self.limit = limit
        self._pause = pause
        self._resume = resume
        self.paused = False
        self.closed = False
        self._chunks: deque[bytes | None] = deque()
        self._size = 0
        self._reader: _InputReader | None = None
        self._waiting: defer.Deferred | None = None

    # -- the front end's side ------------------------------------------------------
    def feed(self, data: bytes) -> bool:
        if self.closed or not data:
            return True
        if self._pause is None and self._size + len(data) > self.limit:
            return False
        self._chunks.append(data)
        self._size += len(data)
        self._wake()
        if self._size > self.limit and not self.paused and self._pause is not None:
            self.paused = True
            self._pause()
        return True

    def end_of_input(self) -> None:
        """Ctrl-D at a terminal: the current (or next) reader's input ends here."""
        if not self.closed:
            self._chunks.append(_EOF)
            self._wake()

    def close(self) -> None:
        """The client will send nothing more (channel EOF or gone)."""
        self.closed = True
        self._wake()

    def discard(self) -> None:
        """Drop what no program read (a terminal's typing during a command that did not want it)."""
        self._chunks.clear()
        self._size = 0
        self._maybe_resume()

    # -- the interpreter's side ----------------------------------------------------
    def reader(self) -> _InputReader:
        """A Source for one stage; any earlier reader is ended first (one reader at a time)."""
        if self._reader is not None:
            self._release(self._reader)
        self._reader = _InputReader(self)
        return self._reader

    def _next(self, reader: _InputReader) -> defer.Deferred:
        if reader.ended or reader is not self._reader:
            return defer.succeed(b"")
        if self._chunks:
            return defer.succeed(self._take(reader))
        if self.closed:
            reader.ended = True
            return defer.succeed(b"")

        def cancelled(d: defer.Deferred) -> None:
            if self._waiting is d:
                self._waiting = None

        self._waiting = defer.Deferred(cancelled)
        return self._waiting

    def _take(self, reader: _InputReader) -> bytes:
        first = self._chunks.popleft()
        if first is _EOF:
            reader.ended = True
            return b""
        parts, size = [first], len(first)
        while self._chunks and self._chunks[0] is not _EOF and size < INPUT_CHUNK:
            chunk = self._chunks.popleft()
            assert chunk is not None
            parts.append(chunk)
            size += len(chunk)
        self._size -= size
        self._maybe_resume()
        return b"".join(parts)

    def _wake(self) -> None:
        d, reader = self._waiting, self._reader
        if d is None or reader is None or not (self._chunks or self.closed):
            return
        self._waiting = None
        if self._chunks:
            d.callback(self._take(reader))
        else:
            reader.ended = True
            d.callback(b"")

    def _release(self, reader: _InputReader) -> None:
        reader.ended = True
        if self._reader is reader:
            self._reader = None
            d, self._waiting = self._waiting, None
            if d is not None:
                d.callback(b"")

    def _maybe_resume(self) -> None:
        if self.paused and self._size <= self.limit // 2:
            self.paused = False
            if self._resume is not None:
                self._resume()


class _InputReader:
    """One stage's view of the session input: a transfer Source ending at EOF or :meth:`close`."""

    def __init__(self, feed: SessionInput) -> None:
        self.feed = feed
        self.ended = False

    def next(self) -> defer.Deferred:
        return self.feed._next(self)

    def close(self) -> None:
        """The stage is over: stop taking input (a pending read ends with EOF)."""
        self.feed._release(self)


class Grid:
    """What the interpreter needs of the network: files, RPC, the broker, a clock.

    In the shell service these are the runtime's own objects; tests may pass
    fakes.
    """

    def __init__(self, fs: Any, rpc: Any, client: Any, reactor: Any) -> None:
        self.fs = fs
        self.rpc = rpc
        self.client = client
        self.reactor = reactor

    def for_user(self, user: str) -> Grid:
        """The same network for one login: every file operation is made, and checked, as *user*."""
        return Grid(self.fs.as_user(user), self.rpc, self.client, self.reactor)
