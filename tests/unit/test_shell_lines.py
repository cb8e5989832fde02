"""The shell's line discipline (oneos.shell.lines): bytes in, lines and editing events out, no I/O.

The last tests drive the telnet and no-terminal SSH front ends with fakes
(no sockets), to check they act on the events as the discipline means.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer

from oneos.shell.lines import (
    END_OF_INPUT,
    INTERRUPT,
    TOO_LONG,
    CookedLine,
    Echo,
    Line,
    ScriptLines,
    TelnetLines,
    Text,
    cooked_key,
)
from oneos.shell.session import SessionInput

# -- the keys of a cooked terminal --------------------------------------------------------------


def test_cooked_key_rules():
    assert cooked_key(b"\x03", b"half") == [INTERRUPT]
    assert cooked_key(b"\x04", b"half") == [Text(b"half")]
    assert cooked_key(b"\x04", b"") == [END_OF_INPUT]
    assert cooked_key(b"\r", b"line") == [Line(b"line")]
    assert cooked_key(b"\n", b"") == [Line(b"")]
    assert cooked_key(b"a", b"") is None and cooked_key(b"\x7f", b"x") is None


# -- CookedLine: a raw terminal cooked here (ssh -t HOST LINE) ---------------------------------------


def test_cooked_typing_is_echoed_and_enter_sends_the_line():
    tty = CookedLine()
    assert tty.feed(b"hi") == [Echo(b"hi")]  # one echo for a burst of keys
    assert tty.feed(b"\r") == [Echo(b"\r\n"), Line(b"hi")]
    assert tty.feed(b"x\ny\r") == [Echo(b"x\r\n"), Line(b"x"), Echo(b"y\r\n"), Line(b"y")]
    assert tty.line == bytearray()


def test_cooked_erase_takes_a_whole_utf8_character():
    tty = CookedLine()
    tty.feed("aé".encode())
    assert tty.feed(b"\x7f") == [Echo(b"\b \b")]
    assert tty.line == bytearray(b"a")
    assert tty.feed(b"\x08") == [Echo(b"\b \b")]
    assert tty.feed(b"\x7f") == []  # nothing to erase: nothing shown
    assert tty.feed("€\x7f!\r".encode()) == [Echo("€".encode() + b"\b \b!\r\n"), Line(b"!")]


def test_cooked_ctrl_c_and_ctrl_d():
    tty = CookedLine()
    assert tty.feed(b"abc\x03") == [Echo(b"abc^C\r\n"), INTERRUPT]
    assert tty.line == bytearray()  # the typed line is dropped
    assert tty.feed(b"part\x04") == [Echo(b"part"), Text(b"part")]  # sent without a newline, no echo
    assert tty.feed(b"\x04") == [END_OF_INPUT]


def test_cooked_drops_other_control_bytes_and_keys_past_the_limit():
    tty = CookedLine(limit=3)
    assert tty.feed(b"\x1b[A\t") == [Echo(b"[A")]  # ESC and TAB dropped, the rest of the sequence is text
    assert tty.feed(b"bcd\r") == [Echo(b"b\r\n"), Line(b"[Ab")]


# -- ScriptLines: no terminal (ssh -T HOST < script) ------------------------------------------------


def test_script_lines_wait_until_taken_and_the_last_needs_no_newline():
    s = ScriptLines()
    assert s.feed(b"ls\npw") == []
    assert s.waiting and s.next_line() == b"ls" and not s.waiting
    assert s.feed(b"d\necho \x03") == []  # no byte is a key here
    s.end()
    assert [s.next_line(), s.next_line(), s.next_line()] == [b"pwd", b"echo \x03", None]


def test_script_line_too_long_is_dropped_to_its_end():
    s = ScriptLines(limit=5)
    assert s.feed(b"ok\n123") == []
    assert s.feed(b"456") == [TOO_LONG]
    assert s.feed(b"789") == []  # still the same line: dropped, said once
    assert s.feed(b"0\nnext\n") == []
    assert [s.next_line(), s.next_line(), s.next_line()] == [b"ok", b"next", None]
    s.feed(b"12345678")
    s.end()  # a dropped last line stays dropped
    assert s.next_line() is None


# -- TelnetLines: the client edits; CR LF, CR NUL, CR end lines ----------------------------------------


def test_telnet_line_ends_and_lines_waiting_at_the_prompt():
    t = TelnetLines()
    assert t.feed(b"one\r\ntwo\r\0three\rfou", running=False) == []
    assert [t.next_line(), t.next_line(), t.next_line(), t.next_line()] == [b"one", b"two", b"three", None]
    t.feed(b"r\n", running=False)
    assert t.next_line() == b"four"


def test_telnet_ctrl_c_at_the_prompt_drops_what_was_typed_before_it():
    t = TelnetLines()
    t.feed(b"waiting\npartial", running=False)
    assert t.feed(b"more\x03after\n", running=False) == [INTERRUPT]
    assert [t.next_line(), t.next_line()] == [b"after", None]
    t.feed(b"typed", running=False)
    t.discard()  # telnet's IP command at the prompt
    t.feed(b"\n", running=False)
    assert t.next_line() == b""


def test_telnet_ctrl_d_logs_out_only_on_an_empty_line():
    t = TelnetLines()
    assert t.feed(b"\x04", running=False) == [END_OF_INPUT]
    assert t.feed(b"ec\x04ho\n", running=False) == []  # inside a line: dropped
    assert t.next_line() == b"echo"
    t.feed(b"x\n", running=False)
    assert t.feed(b"\x04", running=False) == []  # a line is waiting: not an empty line
    assert t.next_line() == b"x"


def test_telnet_line_too_long_at_the_prompt():
    t = TelnetLines(limit=4)
    assert t.feed(b"12345", running=False) == [TOO_LONG]
    assert t.feed(b"6\n", running=False) == []
    assert t.next_line() == b"6"


def test_telnet_input_while_a_command_runs_goes_as_it_comes():
    t = TelnetLines()
    t.feed(b"queued\n", running=False)
    assert t.feed(b"a\r\nb\x03c\x04d", running=True) == [Text(b"a\nb"), INTERRUPT, Text(b"c"), END_OF_INPUT, Text(b"d")]
    assert t.feed(b"\x04\x04", running=True) == [END_OF_INPUT, END_OF_INPUT]  # every Ctrl-D ends input
    assert t.next_line() == b"queued"  # lines typed at the prompt still wait


# -- the front ends act on the events ---------------------------------------------------------------


class FakeInterp:
    """Records what a front end asks of its interpreter; lines end when the test says so."""

    def __init__(self) -> None:
        from oneos.shell.session import Session

        self.session = Session("ann", home="/home/ann")
        self.input: SessionInput | None = None
        self.exit_status: int | None = None
        self.ran: list[str] = []
        self.running: list[defer.Deferred] = []
        self.interrupts = 0
        self.errors: list[str] = []

    def execute(self, line: str, record: bool = True) -> defer.Deferred:
        self.ran.append(line)
        d: defer.Deferred = defer.Deferred()
        self.running.append(d)
        return d

    def finish(self, status: int = 0) -> None:
        self.running.pop(0).callback(status)

    def interrupt(self) -> None:
        self.interrupts += 1

    def error(self, text: str) -> None:
        self.errors.append(text)

    def hangup(self) -> None:
        pass


class FakeShell:
    def __init__(self, interp: FakeInterp) -> None:
        self.interp = interp
        self.reactor = None

    def new_interpreter(self, user: str, out: Any, err: Any) -> FakeInterp:
        return self.interp

    def prepare(self, interp: Any) -> defer.Deferred:
        return defer.succeed(None)

    def forget(self, interp: Any) -> None:
        pass


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.lost = False

    def write(self, data: bytes) -> None:
        self.written += data

    def loseConnection(self) -> None:
        self.lost = True


@pytest.fixture
def telnet():
    from oneos.shell.telnet import TelnetShell

    interp = FakeInterp()
    shell = TelnetShell("ann", FakeShell(interp))  # type: ignore[arg-type]
    shell.transport = transport = FakeTransport()
    shell.connectionMade()
    return shell, interp, transport


def test_telnet_front_end_runs_lines_one_at_a_time_and_feeds_the_program(telnet):
    shell, interp, transport = telnet
    assert transport.written.endswith(b"ann@oneos:~$ ")
    shell.dataReceived(b"cat\r\nls\r\n")
    assert interp.ran == ["cat"]  # ls waits for cat
    shell.dataReceived(b"typed\r\n\x04")
    read = interp.input.reader()
    assert read.next().result == b"typed\n" and read.next().result == b""  # Ctrl-D: end of cat's input
    interp.finish()
    assert interp.ran == ["cat", "ls"]
    shell.dataReceived(b"\x03")  # Ctrl-C while ls runs
    assert interp.interrupts == 1 and transport.written.endswith(b"^C\n")
    interp.finish(130)
    shell.dataReceived(b"\x04")
    assert transport.lost  # Ctrl-D on an empty line at the prompt


def test_telnet_front_end_ctrl_c_at_the_prompt_and_a_line_too_long(telnet):
    shell, interp, transport = telnet
    shell.dataReceived(b"half a line\x03")
    assert transport.written.endswith(b"^C\nann@oneos:~$ ") and interp.interrupts == 0
    shell.dataReceived(b"\r\n")
    assert interp.ran == [""]
    interp.finish()
    shell.dataReceived(b"x" * 70_000)
    assert interp.errors and "line too long" in interp.errors[0]


def test_telnet_front_end_asks_for_the_rest_of_an_open_construct(telnet):
    shell, interp, transport = telnet
    shell.dataReceived(b"for x in a b; do\r\n")
    assert interp.ran == [] and transport.written.endswith(b"> ")  # bash's PS2
    shell.dataReceived(b"  echo $x\r\ndone\r\nls\r\n")
    assert interp.ran == ["for x in a b; do\n  echo $x\ndone"]  # one input; ls waits for it
    assert interp.session.history[-3:] == ["for x in a b; do", "  echo $x", "done"]
    interp.finish()
    assert interp.ran[-1] == "ls"
    interp.finish()
    # Ctrl-C drops an unfinished construct: the next line starts afresh
    shell.dataReceived(b"if true; then\r\n\x03")
    assert transport.written.endswith(b"^C\nann@oneos:~$ ")
    shell.dataReceived(b"pwd\r\n")
    assert interp.ran[-1] == "pwd"
    interp.finish()
    # Ctrl-D inside one runs what was typed, for the parser to say what is missing (as bash does)
    shell.dataReceived(b"echo 'open\r\n")
    shell.dataReceived(b"\x04")
    assert interp.ran[-1] == "echo 'open" and not transport.lost


def test_ssh_without_a_terminal_runs_the_script_then_ends():
    from oneos.shell.ssh import _ScriptShell

    interp, ended = FakeInterp(), []
    script = _ScriptShell(interp, FakeShell(interp), ended.append)  # type: ignore[arg-type]
    script.dataReceived(b"cd /tmp\npwd")
    assert interp.ran == ["cd /tmp"]
    interp.finish()
    assert interp.ran == ["cd /tmp"]  # 'pwd' has no newline yet
    script.eof()
    assert interp.ran == ["cd /tmp", "pwd"] and ended == []
    interp.session.status = 3
    interp.finish(3)
    assert ended == [3]
