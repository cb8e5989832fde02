"""The interactive terminal (oneos.shell.terminal.ShellTerminal) over insults, on a StringTransport.

What a user at a terminal types arrives as bytes, escape sequences included;
these tests send such bytes (and garbage no terminal would send) through
twisted.conch's insults ServerProtocol into the real ShellTerminal and a real
interpreter on an in-memory file system, and read what goes back.  No
sockets, no SSH: the key exchange is tested in tests/integration, the
editing keys one by one in tests/unit/test_shell_editor.py.
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from twisted.conch.insults import insults
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from oneos.fs import errors as fs_errors
from oneos.runtime.status import DeviceStatus, RuntimeStatus
from oneos.shell.editor import completion_word
from oneos.shell.interpreter import Interpreter
from oneos.shell.parser import MAX_LINE
from oneos.shell.session import Grid, Session
from oneos.shell.ssh import ShellTerminal
from oneos.shell.terminal import PROGRAMS_TTL, Candidate
from oneos.testing.shell import FakeFS

UP = b"\x1b[A"
DOWN = b"\x1b[B"
LEFT = b"\x1b[D"
BACKSPACE = b"\x7f"
HISTORY = "/home/.oneos_history"


class HomeFS(FakeFS):
    """FakeFS with the one-message reads and writes the history file uses; *refuse* makes them fail as EACCES."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse = False
        self.modes: dict[str, int] = {}

    def read_small(self, path: str) -> defer.Deferred:
        if self.refuse:
            return defer.fail(fs_errors.PermissionDenied(path))
        return self.read(path)

    def write_small(self, path: str, data: bytes, exclusive: bool = False) -> defer.Deferred:
        if self.refuse:
            return defer.fail(fs_errors.PermissionDenied(path))
        return self.write(path, data)

    def chmod(self, path: str, perm: int) -> defer.Deferred:
        self.modes[path] = perm
        return defer.succeed(self._stat(path))


class FakeRPC:
    """The kernel's ``runtimes``: rt-1 (a camera, tag gpu), rt-2, and a dead one."""

    def call(self, target: str, method: str, timeout: float | None = None, **args: Any) -> defer.Deferred:
        assert method == "runtimes"
        rows = [
            RuntimeStatus("rt-1", "i1", tags=("gpu",), devices=(DeviceStatus("cam0", "in", "v4l2"),)),
            RuntimeStatus("rt-2", "i2"),
            RuntimeStatus("rt-3", "i3", state="dead"),
        ]
        return defer.succeed([asdict(r) for r in rows])


class FakeShell:
    """The parts of ShellService a session asks for: a fresh interpreter, a ready home."""

    def __init__(self, fs: FakeFS) -> None:
        self.fs = fs
        self.rpc = FakeRPC()

    def new_interpreter(self, user: str, out: Any, err: Any) -> Interpreter:
        return Interpreter(Session(user, home="/home"), Grid(self.fs, self.rpc, None, None), out, err)

    def prepare(self, interp: Any) -> defer.Deferred:
        return defer.succeed(None)


class FakeChannel:
    """What ShellTerminal asks of its ShellSession: an interpreter, the shell, and how to end."""

    def __init__(self, fs: FakeFS | None = None) -> None:
        self.fs = fs if fs is not None else FakeFS()
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
    """A terminal session: type bytes, read what the shell wrote back since the last read.

    Its completer looks programs up on *path* (not this machine's PATH), on a
    clock the test moves.
    """

    def __init__(self, fs: FakeFS | None = None, path: str = "") -> None:
        self.channel = FakeChannel(fs)
        self.transport = StringTransport()
        self.server = insults.ServerProtocol(ShellTerminal, self.channel)
        self.server.makeConnection(self.transport)
        self.path = path
        self.clock = task.Clock()
        completer = self.terminal.completer
        assert completer is not None
        completer.host_path = lambda: self.path
        completer.seconds = self.clock.seconds

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


def test_an_unfinished_construct_asks_for_more_lines_and_runs_them_together():
    screen = Screen()
    out = screen.type(b"for x in a b\r")
    assert out.endswith(b"> ") and screen.terminal.continued == ["for x in a b"]
    assert screen.type(b"do echo got-$x\r").endswith(b"> ")
    out = screen.type(b"done\r")
    assert b"got-a\r\ngot-b\r\n" in out and out.endswith(b"ann@oneos:~$ ")
    history = screen.terminal.interp.session.history
    assert history[-3:] == ["for x in a b", "do echo got-$x", "done"]  # each line as typed
    out = screen.type(b"echo 'open quote\r")
    assert out.endswith(b"> ")
    out = screen.type(b"\x03")  # Ctrl-C drops the unfinished construct
    assert out.endswith(b"ann@oneos:~$ ") and screen.terminal.continued == []
    out = screen.type(b"if then\r")  # an error more lines cannot fix is reported at once
    assert b"syntax error" in out.lower() and out.endswith(b"ann@oneos:~$ ")
    screen.type(b"while true\r")
    out = screen.type(b"\x04")  # Ctrl-D inside a construct: what is missing, and no logout
    assert b"expected 'do'" in out and b"logout" not in out and out.endswith(b"ann@oneos:~$ ")
    assert screen.terminal.continued == []


def test_tab_completes_a_builtin_and_a_path():
    screen = Screen()
    screen.channel.fs.files["/home/notes.txt"] = b"x"
    screen.type(b"ech\t")
    assert screen.terminal.editor.line == "echo "
    screen.type(b"/home/no\t")
    assert screen.terminal.editor.line == "echo /home/notes.txt "


def test_a_line_cannot_grow_past_the_parsers_limit():
    screen = Screen()
    screen.type(b"x" * (MAX_LINE + 5000))
    assert len(screen.terminal.editor.text) == MAX_LINE
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


# -- UTF-8 ------------------------------------------------------------------------------------------------


def test_typed_utf8_reaches_the_interpreter_exactly_however_it_is_cut():
    line = 'echo ünï > "日本語 ü.txt"\r'.encode()
    for cut in (1, 6, 7, 13, 14, len(line) - 1):
        screen = Screen()
        screen.type(line[:cut])
        screen.type(line[cut:])
        assert screen.channel.fs.files["/home/日本語 ü.txt"] == "ünï\n".encode()
        assert "日本語 ü.txt".encode() in screen.type(b"ls\r")
        assert "ünï\r\n".encode() in screen.type('cat "日本語 ü.txt"\r'.encode())


def test_a_line_with_bytes_that_are_not_utf8_is_refused_and_kept_to_correct():
    screen = Screen()
    out = screen.type(b'echo x > "bad\xff.txt"\r')
    assert b"\r\noneos: this line holds bytes that are not UTF-8" in out
    assert out.endswith('ann@oneos:~$ echo x > "bad\ufffd.txt"\x1b[6D'.encode())
    assert not [p for p in screen.channel.fs.files if "bad" in p]
    editor = screen.terminal.editor
    assert editor.cursor == editor.line.index('.txt"') - 1  # at the byte that is not UTF-8
    screen.type(b"\x04X\r")  # Ctrl-D (or Delete) takes it away, then the right letter
    assert screen.channel.fs.files["/home/badX.txt"] == b"x\n"


def test_wide_characters_are_echoed_and_the_cursor_moves_by_two_cells():
    screen = Screen()
    assert screen.type("日本".encode()) == "日本".encode()
    assert screen.type(LEFT) == b"\x1b[2D"
    assert screen.type("語".encode()) == "\x1b[J語本\x1b[2D".encode()
    assert "日語本\r\n".encode() in screen.type(b"\x01echo \r")


# -- keys -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "shown"),
    [
        (b"cho hello\x01e\x05 there\r", b"hello there\r\n"),  # Ctrl-A, Ctrl-E
        (b"junk\x15echo ok\r", b"ok\r\n"),  # Ctrl-U
        (b"echo one two\x17three\r", b"one three\r\n"),  # Ctrl-W
        (b"ab echo\x1bb\x15\x05 \x19\r", b"ab\r\n"),  # Alt-B, Ctrl-U, Ctrl-E, Ctrl-Y
        (b"echo a b\x02\x02\x0b\r", b"a\r\n"),  # Ctrl-B, Ctrl-K
        (b"echo b c\x1bb\x1bba\x1bfX\r", b"abX c\r\n"),  # Alt-B, Alt-F
        (b"echo xhi\x1b[1;5D\x1b[3~\r", b"hi\r\n"),  # Ctrl-Left, Delete
        (b"echo xab\x02\x02\x02\x04\r", b"ab\r\n"),  # Ctrl-D under the cursor
        (b"cho 1\x1b[He\x1b[F2\r", b"12\r\n"),  # Home, End
        (b"cho 1\x1b[1~e\x1b[4~2\r", b"12\r\n"),
        (b"cho 1\x1bOHe\x1bOF2\r", b"12\r\n"),  # application-mode Home, End
        (b"echo 1 2\x1b[1;5D\x1b[1;5D\x1b[1;5C3\r", b"13 2\r\n"),  # Ctrl-Right
    ],
)
def test_emacs_and_terminal_keys(keys, shown):
    screen = Screen()
    assert shown in screen.type(keys)
    assert screen.channel.ended == []


def test_ctrl_l_clears_the_screen_and_draws_the_line_again():
    screen = Screen()
    screen.type(b"echo hi")
    assert screen.type(b"\x0c") == b"\x1b[H\x1b[2Jann@oneos:~$ echo hi"


def test_ctrl_r_finds_an_earlier_line_and_enter_runs_it():
    screen = Screen()
    screen.type(b"echo alpha\r")
    screen.type(b"echo beta\r")
    out = screen.type(b"\x12alp")
    assert out.startswith(b"\r\x1b[J(reverse-i-search)`': ") and out.endswith(b"p': echo alpha\x1b[5D")
    assert screen.terminal.editor.display("$ ") == ("(reverse-i-search)`alp': echo alpha", 30)
    assert b"alpha\r\n" in screen.type(b"\r")
    screen.type(b"\x12bet\x07")  # Ctrl-G: the search is given up, the (empty) line back
    assert screen.terminal.editor.line == "" and screen.terminal.editor.search is None
    screen.type(b"\x12bet\x05 again\r")  # another key keeps the line found and edits it
    assert screen.terminal.interp.session.history[-1] == "echo beta again"


# -- completion -------------------------------------------------------------------------------------------------


def test_a_second_tab_lists_files_after_a_command_not_builtins():
    screen = Screen()
    screen.channel.fs.files.update({"/home/notes.txt": b"", "/home/news.txt": b"", "/home/.hidden": b""})
    screen.type(b"cat n")
    assert screen.type(b"\t") == b"\x07"  # nothing to add: the bell
    out = screen.type(b"\t")
    assert b"news.txt   notes.txt\r\n" in out and b"echo" not in out and b".hidden" not in out
    assert out.endswith(b"ann@oneos:~$ cat n")
    screen.type(b"\x15cat \t")
    out = screen.type(b"\t")
    assert b"news.txt" in out and b"echo" not in out
    out = screen.type(b"\x15e\t\t")
    assert b"echo" in out and b"exit" in out and b"notes" not in out


def test_tab_escapes_spaces_and_marks_directories():
    screen = Screen()
    screen.channel.fs.files.update({"/home/my file (1).txt": b"x\n", "/home/docs": None, "/home/docs/a.txt": b""})
    screen.type(b"cat my\t")
    assert screen.terminal.editor.line == "cat my\\ file\\ \\(1\\).txt "
    assert b"x\r\n" in screen.type(b"\r")
    screen.type(b'cat "my\t')
    assert screen.terminal.editor.line == 'cat "my file (1).txt" '
    screen.type(b"\x15cd do\t")
    assert screen.terminal.editor.line == "cd docs/"
    screen.type(b"\t")
    assert screen.terminal.editor.line == "cd docs/a.txt "


def test_tab_after_an_at_completes_live_runtimes_devices_and_tags():
    screen = Screen()
    screen.type(b"sort @r\t")
    assert screen.terminal.editor.line == "sort @rt-"
    out = screen.type(b"\t")
    assert b"@rt-1  @rt-2" in out and b"rt-3" not in out
    screen.type(b"\x15sort @dev:\t")
    assert screen.terminal.editor.line == "sort @dev:cam0 "
    screen.type(b"\x15sort @tag:\t")
    assert screen.terminal.editor.line == "sort @tag:gpu "
    screen.type(b"\x15cat /dev/\t")
    assert screen.terminal.editor.line == "cat /dev/rt-1/"
    screen.type(b"\t")
    assert screen.terminal.editor.line == "cat /dev/rt-1/cam0 "


def make_file(path: Path, mode: int) -> Path:
    path.write_bytes(b"#!/bin/sh\n")
    path.chmod(mode)
    return path


def command_candidates(screen: Screen, text: str) -> list[str]:
    """What Tab offers for *text* as the first word of a line (the completer's answer, as texts)."""
    completer = screen.terminal.completer
    assert completer is not None
    found: list[Candidate] = []
    completer.candidates(completion_word(text)).addCallback(found.extend)
    return [c.text for c in found]


def test_the_command_word_completes_a_function_of_the_session():
    screen = Screen()
    screen.type(b"greet() { echo hi; }\r")
    screen.type(b"gre\t")
    assert screen.terminal.editor.line == "greet "
    assert b"hi\r\n" in screen.type(b"\r")


def test_the_command_word_completes_reserved_words():
    screen = Screen()
    screen.type(b"whi\t")
    assert screen.terminal.editor.line == "while "
    assert command_candidates(screen, "f") == ["false", "fg", "fi", "for", "function"]
    assert command_candidates(screen, "cat f") == []  # an argument is a path, not a command


def test_the_command_word_completes_executables_on_the_path_only(tmp_path: Path):
    bin_dir, other = tmp_path / "bin", tmp_path / "other"
    bin_dir.mkdir()
    other.mkdir()
    make_file(bin_dir / "mytool", 0o755)
    make_file(bin_dir / "mydata", 0o644)  # not executable
    (bin_dir / "mydir").mkdir()  # searchable, but not a program
    make_file(other / "myscript", 0o700)
    # a missing directory, a file, a relative entry and a repeated one are skipped without a word
    path = [str(tmp_path / "missing"), str(bin_dir / "mytool"), "bin", str(bin_dir), str(other), str(bin_dir)]
    screen = Screen(path=os.pathsep.join(path))
    assert command_candidates(screen, "my") == ["myscript", "mytool"]
    screen.type(b"myt\t")
    assert screen.terminal.editor.line == "mytool "
    screen.type(b"\x15mys\t")
    assert screen.terminal.editor.line == "myscript "
    screen.type(b"\x15myd\t")
    assert screen.terminal.editor.line == "myd"


def test_a_name_offered_twice_is_listed_once(tmp_path: Path):
    make_file(tmp_path / "echo", 0o755)  # a program named like a built-in
    make_file(tmp_path / "while", 0o755)  # ... and like a reserved word
    screen = Screen(path=str(tmp_path))
    screen.type(b"echo() { :; }\r")  # ... and a function named like both
    interp = screen.channel.interp
    assert interp is not None and "echo" in interp.top.functions
    assert command_candidates(screen, "ech") == ["echo"]
    assert command_candidates(screen, "whi") == ["while"]
    screen.type(b"ech\t")
    assert screen.terminal.editor.line == "echo "  # one candidate: completed and closed


def test_programs_are_listed_again_after_a_while_and_from_an_exported_path(tmp_path: Path):
    host, own = tmp_path / "host", tmp_path / "own"
    host.mkdir()
    own.mkdir()
    screen = Screen(path=str(host))
    make_file(host / "prog1", 0o755)
    assert command_candidates(screen, "prog") == ["prog1"]
    make_file(host / "prog2", 0o755)
    assert command_candidates(screen, "prog") == ["prog1"]  # the listing is reused for a while
    screen.clock.advance(PROGRAMS_TTL)
    assert command_candidates(screen, "prog") == ["prog1", "prog2"]
    make_file(own / "prog3", 0o755)
    screen.type(f"PATH={own}\r".encode())  # not exported: programs do not get it
    assert command_candidates(screen, "prog") == ["prog1", "prog2"]
    screen.type(b"export PATH\r")  # now they do
    assert command_candidates(screen, "prog") == ["prog3"]


def test_a_command_word_with_a_slash_completes_from_the_tree():
    screen = Screen()
    screen.channel.fs.files.update({"/home/tool.sh": b"", "/home/bin": None, "/home/bin/x.py": b""})
    screen.type(b"./to\t")
    assert screen.terminal.editor.line == "./tool.sh "
    screen.type(b"\x15bin/\t")
    assert screen.terminal.editor.line == "bin/x.py "


def test_a_completion_that_answers_after_more_typing_is_dropped():
    screen = Screen()
    late: defer.Deferred = defer.Deferred()
    screen.channel.fs.listdir = lambda path: late  # type: ignore[method-assign]
    screen.type(b"cat no\t")
    screen.type(b"x")
    late.callback([])
    assert screen.terminal.editor.line == "cat nox"


# -- history ------------------------------------------------------------------------------------------------------


def test_the_history_outlives_the_session_in_the_users_home():
    fs = HomeFS()
    first = Screen(fs)
    first.type(b"echo one\r")
    first.type(b" echo secret\r")  # a leading space: not saved
    first.type(b"echo two\r")
    assert fs.files[HISTORY] == b"echo one\necho two\n" and fs.modes[HISTORY] == 0o600
    assert first.terminal.editor.history.entries[-2:] == [" echo secret", "echo two"]  # (kept for this session)
    second = Screen(fs)
    second.type(UP)
    assert second.terminal.editor.line == "echo two"
    second.type(UP)
    assert second.terminal.editor.line == "echo one"
    out = second.type(DOWN + DOWN + b"history\r")
    assert b"echo one" in out and b"secret" not in out
    assert fs.files[HISTORY] == b"echo one\necho two\nhistory\n"


def test_without_a_writable_home_the_history_stays_in_the_session_quietly():
    fs = HomeFS()
    fs.refuse = True
    screen = Screen(fs)
    out = screen.type(b"echo one\r") + screen.type(b"echo two\r")
    assert b"denied" not in out.lower() and b"\noneos: " not in out
    screen.type(UP)
    assert screen.terminal.editor.line == "echo two"
    assert HISTORY not in fs.files


# -- output and programs ------------------------------------------------------------------------------------------


def test_output_while_a_line_is_edited_goes_above_it():
    screen = Screen()
    screen.type(b"echo ab\x02")
    screen.transport.clear()
    screen.channel.interp.out.write(b"job done\n")
    out = screen.transport.value()
    assert out.startswith(b"\r\x1b[Jjob done\r\n")  # the line erased, the output, then the line again
    assert out.endswith(b"ann@oneos:~$ echo ab\x1b[1D")
    assert screen.terminal.editor.line == "echo ab"


def test_a_line_typed_for_a_running_program_reaches_it_as_typed():
    screen = Screen()
    screen.type(b"cat\r")
    assert screen.terminal.busy
    out = screen.type("ünï\r".encode())
    assert out == "ünï\r\nünï\r\n".encode()  # the echo, then cat's output
    out = screen.type(b"\xff\xfe" + UP + b"\t\r")  # bytes as typed; history and completion are the shell's
    assert out.endswith(b"\xff\xfe\r\n")
    out = screen.type(b"\x04")
    assert out.endswith(b"ann@oneos:~$ ") and not screen.terminal.busy
