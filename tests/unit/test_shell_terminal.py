"""The interactive SSH terminal (oneos.shell.ssh.ShellTerminal) over insults, on a StringTransport.

What a user at a terminal types arrives as bytes, escape sequences included;
these tests send such bytes (and garbage no terminal would send) through
twisted.conch's insults ServerProtocol into the real ShellTerminal and a real
interpreter on an in-memory file system, and read what goes back.  No
sockets, no SSH: the key exchange is tested in tests/integration.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.conch.insults import insults
from twisted.internet import defer
from twisted.internet.testing import StringTransport

from oneos.shell.interpreter import Interpreter
from oneos.shell.parser import MAX_LINE
from oneos.shell.session import Grid, Session
from oneos.shell.ssh import ShellTerminal
from oneos.testing.shell import FakeFS

UP = b"\x1b[A"
LEFT = b"\x1b[D"
BACKSPACE = b"\x7f"


class FakeShell:
    """The parts of ShellService a session asks for: a fresh interpreter, a ready home."""

    def __init__(self, fs: FakeFS) -> None:
        self.fs = fs

    def new_interpreter(self, user: str, out: Any, err: Any) -> Interpreter:
        return Interpreter(Session(user, home="/home"), Grid(self.fs, None, None, None), out, err)

    def prepare(self, interp: Any) -> defer.Deferred:
        return defer.succeed(None)


class FakeChannel:
    """What ShellTerminal asks of its ShellSession: an interpreter, the shell, and how to end."""

    def __init__(self) -> None:
        self.fs = FakeFS()
        self.shell = FakeShell(self.fs)
        self.terminal: ShellTerminal | None = None
        self.interp: Interpreter | None = None
        self.ended: list[int] = []

    def _interpreter(self, out: Any, err: Any) -> Interpreter:
        self.interp = self.shell.new_interpreter("ann", out, err)
        return self.interp

    def _end(self, status: int) -> None:
        self.ended.append(status)


class Screen:
    """A terminal session: type bytes, read what the shell wrote back since the last read."""

    def __init__(self) -> None:
        self.channel = FakeChannel()
        self.transport = StringTransport()
        self.server = insults.ServerProtocol(ShellTerminal, self.channel)
        self.server.makeConnection(self.transport)

    def type(self, data: bytes) -> bytes:
        self.transport.clear()
        self.server.dataReceived(data)
        return self.transport.value()

    @property
    def terminal(self) -> ShellTerminal:
        assert self.channel.terminal is not None
        return self.channel.terminal


def test_the_banner_and_prompt_come_first_and_a_line_runs_on_enter():
    screen = Screen()
    assert b"OneOS shell" in screen.transport.value() and screen.transport.value().endswith(b"ann@oneos:~$ ")
    out = screen.type(b"echo hello\r")
    assert b"hello\r\n" in out and out.endswith(b"ann@oneos:~$ ")


def test_editing_keys_change_the_line_before_it_runs():
    screen = Screen()
    out = screen.type(b"echo wrld" + LEFT * 3 + b"o" + b"\r")
    assert b"world" in out
    out = screen.type(b"echo oops" + BACKSPACE * 4 + b"fine\r")
    assert b"fine\r\n" in out and b"oops\r\n" not in out


def test_up_arrow_recalls_the_previous_line():
    screen = Screen()
    screen.type(b"echo first\r")
    out = screen.type(UP + b"\r")
    assert out.count(b"first") >= 2  # redrawn, then printed again by the command


def test_ctrl_c_drops_the_typed_line_and_runs_nothing():
    screen = Screen()
    out = screen.type(b"echo never\x03")
    assert b"^C" in out and out.endswith(b"ann@oneos:~$ ")
    out = screen.type(b"\r")
    assert b"never" not in out


def test_tab_completes_a_builtin_and_a_path():
    screen = Screen()
    screen.channel.fs.files["/home/notes.txt"] = b"x"
    screen.type(b"ech\t")
    assert b"".join(screen.terminal.lineBuffer) == b"echo "
    screen.type(b"/home/no\t")
    assert b"".join(screen.terminal.lineBuffer) == b"echo /home/notes.txt "


def test_a_line_cannot_grow_past_the_parsers_limit():
    screen = Screen()
    screen.type(b"x" * (MAX_LINE + 5000))
    assert len(screen.terminal.lineBuffer) == MAX_LINE
    screen.type(b"\x03")
    assert b"ok" in screen.type(b"echo ok\r")


def test_garbage_and_broken_escape_sequences_leave_a_working_terminal():
    """Bytes no terminal sends (truncated CSI, huge parameters, lone ESC, C1 controls, invalid UTF-8)."""
    screen = Screen()
    rng = random.Random(11)
    insults_ = [
        b"\x1b",
        b"\x1b[",
        b"\x1b[99999999999999999999~",
        b"\x1b[1;2;3;4;5;6;7;8;9;10H",
        b"\x1bO",
        b"\x1b[?1049h",
        b"\x9b\x9c\x90",
        b"\xff\xfe\xc3",
        b"\x1b]0;title\x07",
    ]
    for _ in range(300):
        if rng.random() < 0.5:
            screen.type(rng.choice(insults_))
        else:
            # anything but Enter, Ctrl-D and Ctrl-C, which have meanings tested elsewhere
            screen.type(bytes(rng.choice([b for b in range(256) if b not in (3, 4, 10, 13)]) for _ in range(8)))
    screen.type(b"\x03")
    out = screen.type(b"echo still here\r")
    assert b"still here\r\n" in out and out.endswith(b"ann@oneos:~$ ")


def test_ctrl_d_on_an_empty_line_logs_out_with_the_last_status():
    screen = Screen()
    screen.type(b"false\r")
    screen.type(b"\x04")
    assert screen.channel.ended == [1]


def test_ctrl_d_on_a_typed_line_does_not_log_out():
    screen = Screen()
    screen.type(b"echo x\x04")
    assert screen.channel.ended == []


def test_exit_in_a_line_ends_the_session_with_its_status():
    screen = Screen()
    screen.type(b"exit 7\r")
    assert screen.channel.ended == [7]


def test_a_resize_keeps_what_is_on_the_screen():
    screen = Screen()
    screen.type(b"echo before\r")
    screen.transport.clear()
    screen.terminal.terminalSize(132, 50)
    assert screen.transport.value() == b"" and (screen.terminal.width, screen.terminal.height) == (132, 50)
