"""The line editor with no terminal (oneos.shell.editor): every key, UTF-8, cells, kill ring, search, drawing.

What :class:`View` writes is checked on a small terminal emulator written
here (xterm's rules for the little the editor sends: printing with wide and
combining characters and the pending wrap at the right margin, CR, LF,
cursor moves, erase below), against the same text printed on a clean
screen: the screen must hold exactly the prompt and the line, wrapped, with
the cursor on the right cell.  Hypothesis types random keys at random
widths and checks that after every key.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oneos.shell.editor import (
    BACKSPACE,
    CTRL_A,
    CTRL_B,
    CTRL_C,
    CTRL_D,
    CTRL_E,
    CTRL_F,
    CTRL_G,
    CTRL_K,
    CTRL_L,
    CTRL_N,
    CTRL_P,
    CTRL_R,
    CTRL_U,
    CTRL_W,
    CTRL_Y,
    ENTER,
    HISTORY_LINES,
    TAB,
    Action,
    History,
    Key,
    KeyDecoder,
    LineEditor,
    View,
    char_cells,
    column_after,
    columns,
    completed,
    completion_word,
    encoded,
    escape,
    has_invalid,
    history_bytes,
    parse_history,
    saved_in_history,
    shown,
    zero_width,
)

# -- a terminal emulator, for what View writes ------------------------------------------------------------


class Emulator:
    """An xterm-like screen of *cols* columns and unbounded rows: the few things the editor writes."""

    CSI = re.compile(r"\x1b\[(\d*)(;\d+)*([A-Za-z])")

    def __init__(self, cols: int) -> None:
        self.cols = cols
        self.rows: list[list[str]] = [[""] * cols]
        self.row = self.col = 0
        #: the last column was written: the next character wraps (DECAWM)
        self.pending = False

    def _line(self, row: int) -> list[str]:
        while len(self.rows) <= row:
            self.rows.append([""] * self.cols)
        return self.rows[row]

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            m = self.CSI.match(text, i)
            if m:
                self._csi(int(m.group(1) or 0), m.group(3))
                i = m.end()
                continue
            assert text[i] != "\x1b", f"unexpected escape {text[i : i + 8]!r}"
            self._char(text[i])
            i += 1

    def _csi(self, n: int, final: str) -> None:
        n = max(n, 1) if final in "ABCD" else n
        self.pending = False if final in "ABCDH" else self.pending
        if final == "A":
            self.row = max(0, self.row - n)
        elif final == "B":
            self.row += n
        elif final == "C":
            self.col = min(self.cols - 1, self.col + n)
        elif final == "D":
            self.col = max(0, self.col - n)
        elif final == "H":
            self.row = self.col = 0
        elif final == "J":
            if n == 2:
                self.rows = [[""] * self.cols]
            else:
                line = self._line(self.row)
                for c in range(self.col, self.cols):
                    line[c] = ""
                del self.rows[self.row + 1 :]
        else:
            raise AssertionError(f"unexpected CSI {final}")

    def _char(self, ch: str) -> None:
        if ch == "\r":
            self.col, self.pending = 0, False
        elif ch == "\n":
            self.row, self.pending = self.row + 1, False
        elif ch == "\x07":
            pass
        else:
            assert ch >= " ", f"control {ch!r} written"
            w = char_cells(ch)
            if w == 0:
                line = self._line(self.row)
                at = self.col - 1 if not self.pending else self.col
                line[max(at, 0)] += ch
                return
            if self.pending:
                self.row, self.col, self.pending = self.row + 1, 0, False
            if self.col + w > self.cols:
                self.row, self.col = self.row + 1, 0
            line = self._line(self.row)
            line[self.col] = ch
            if w == 2:
                line[self.col + 1] = ""
            self.col += w
            if self.col >= self.cols:
                self.col, self.pending = self.cols - 1, True

    def screen(self) -> list[str]:
        rows = ["".join(c or " " for c in row).rstrip() for row in self.rows]
        while rows and not rows[-1]:
            rows.pop()
        return rows

    def cursor(self) -> tuple[int, int]:
        """Where the next character goes (a pending wrap: the next row)."""
        return (self.row + 1, 0) if self.pending else (self.row, self.col)


def expected(text: str, cursor: int, cols: int, lead: str = "") -> tuple[list[str], tuple[int, int]]:
    """The screen and cursor when *lead* then *text* are printed on a clean screen, the cursor before text[cursor]."""
    screen = Emulator(cols)
    screen.feed(lead + shown(text[:cursor]))
    if cursor < len(text) and not screen.pending and screen.col + char_cells(shown(text[cursor])[0]) > cols:
        where = (screen.row + 1, 0)  # the wide character there wrapped
    else:
        where = screen.cursor()
    screen.feed(shown(text[cursor:]))
    return screen.screen(), where


class Drawn:
    """An editor, its view and the emulated screen, checked after every key."""

    def __init__(self, cols: int = 80, prompt: str = "$ ", history: list[str] | None = None, lead: str = "") -> None:
        self.editor = LineEditor(History(history if history is not None else []))
        self.view = View(cols)
        self.screen = Emulator(cols)
        #: output before the prompt, with no line end (the drawing starts where it left the cursor)
        self.lead = lead
        self.screen.feed(lead)
        self.view.moved_to(column_after(0, lead, cols))
        self.prompt = prompt
        self.written: list[str] = []
        self.draw()

    def draw(self) -> None:
        text, cursor = self.editor.display(self.prompt)
        out = self.view.draw(text, cursor)
        self.written.append(out)
        self.screen.feed(out)
        want_screen, want_cursor = expected(text, cursor, self.view.cols, self.lead)
        assert self.screen.screen() == want_screen
        assert self.screen.cursor() == want_cursor

    def press(self, *keys: str | Key) -> Action:
        action = Action.NONE
        for key in keys:
            action = self.editor.press(key)
            self.draw()
        return action

    def type(self, text: str) -> None:
        self.press(*text)


def editor_with(text: str, cursor: int | None = None, history: list[str] | None = None) -> LineEditor:
    editor = LineEditor(History(history if history is not None else []))
    editor.set_line(text, cursor)
    return editor


def press(editor: LineEditor, *keys: str | Key) -> Action:
    action = Action.NONE
    for key in keys:
        action = editor.press(key)
    return action


# -- UTF-8 in, cells out ----------------------------------------------------------------------------------


def test_utf8_split_anywhere_arrives_whole():
    data = 'echo ünï > "日本語 ü.txt" 😀'.encode()
    one_by_one = KeyDecoder()
    assert "".join(one_by_one.feed(bytes([b])) for b in data) == data.decode()
    for cut in range(len(data)):
        decoder = KeyDecoder()
        first = decoder.feed(data[:cut])
        assert decoder.pending == (len(first.encode()) < cut)
        assert first + decoder.feed(data[cut:]) == data.decode()


def test_bytes_that_are_not_utf8_are_marked_and_given_back_exactly():
    decoder = KeyDecoder()
    text = decoder.feed(b"a\xff\xc3(")  # a byte never in UTF-8, and a lead byte followed by ASCII
    assert text[0] == "a" and text[-1] == "(" and has_invalid(text)
    assert encoded(text) == b"a\xff\xc3("
    assert shown(text) == "a\ufffd\ufffd("
    decoder.feed(b"\xe6\x97")  # half of a character, then a key that is not a byte
    rest = decoder.flush()
    assert has_invalid(rest) and encoded(rest) == b"\xe6\x97"
    assert decoder.feed("日".encode()) == "日"  # and decoding goes on
    assert not has_invalid("日本語 \ufffd typed as itself")


def test_cells_of_wide_combining_control_and_invalid_characters():
    assert [char_cells(c) for c in "a日ü😀Ａ"] == [1, 2, 1, 2, 2]
    assert char_cells("\u0301") == 0 and char_cells("\u200d") == 0 and zero_width("\ufe0f")
    assert char_cells("\x01") == 2 and shown("\x01") == "^A"
    assert char_cells("\udcff") == 1 and shown("\udcff") == "\ufffd"


def test_column_after_output():
    assert column_after(0, "hello", 80) == 5
    assert column_after(3, "ab\r\ncd", 80) == 2
    assert column_after(0, "\x1b[31m日本\x1b[0m", 80) == 4
    assert column_after(0, "\x1b]0;title\x07x", 80) == 1
    assert column_after(0, "abcdef", 4) == 2  # wrapped
    assert column_after(0, "abcd", 4) == 4  # a full row: the terminal waits to wrap
    assert column_after(2, "\t", 80) == 8 and column_after(5, "\b", 80) == 4


# -- keys -----------------------------------------------------------------------------------------------------


def test_printable_characters_insert_at_the_cursor():
    editor = editor_with("ac", 1)
    assert editor.press("b") is Action.NONE
    assert (editor.line, editor.cursor) == ("abc", 2)
    press(editor, "日", "\u0301")
    assert editor.line == "ab日\u0301c"


def test_moving_keys():
    editor = editor_with("one two", 3)
    assert press(editor, CTRL_A) is Action.NONE and editor.cursor == 0
    assert press(editor, CTRL_E) is Action.NONE and editor.cursor == 7
    assert press(editor, CTRL_B, CTRL_B) is Action.NONE and editor.cursor == 5
    assert press(editor, CTRL_F) is Action.NONE and editor.cursor == 6
    assert press(editor, Key.HOME) is Action.NONE and editor.cursor == 0
    assert press(editor, Key.LEFT) is Action.BELL and editor.cursor == 0
    assert press(editor, Key.RIGHT) is Action.NONE and editor.cursor == 1
    assert press(editor, Key.END) is Action.NONE and editor.cursor == 7
    assert press(editor, Key.RIGHT) is Action.BELL


def test_word_moves_alt_b_alt_f_and_ctrl_arrows():
    editor = editor_with("cat  /home/ann/notes.txt", None)
    press(editor, Key.ALT_B)
    assert editor.line[editor.cursor :] == "txt"
    press(editor, Key.CTRL_LEFT, Key.CTRL_LEFT)
    assert editor.line[editor.cursor :] == "ann/notes.txt"
    press(editor, Key.ALT_F)
    assert editor.line[: editor.cursor] == "cat  /home/ann"
    press(editor, Key.CTRL_RIGHT)
    assert editor.line[: editor.cursor] == "cat  /home/ann/notes"
    press(editor, CTRL_A, Key.ALT_F)
    assert editor.cursor == 3
    editor = editor_with("café\u0301 日本語 x", 0)  # marks and CJK are word characters
    press(editor, Key.ALT_F)
    assert editor.line[: editor.cursor] == "café\u0301"
    press(editor, Key.ALT_F)
    assert editor.line[: editor.cursor] == "café\u0301 日本語"


def test_backspace_delete_and_ctrl_d():
    editor = editor_with("abc", 1)
    assert press(editor, BACKSPACE) is Action.NONE and (editor.line, editor.cursor) == ("bc", 0)
    assert press(editor, BACKSPACE) is Action.BELL
    assert press(editor, Key.DELETE) is Action.NONE and editor.line == "c"
    assert press(editor, "\x08") is Action.BELL  # Ctrl-H is backspace too
    assert press(editor, CTRL_D) is Action.NONE and editor.line == ""  # under the cursor, on a non-empty line
    assert press(editor, CTRL_D) is Action.EOF  # on an empty line: logout
    editor = editor_with("ab")
    assert press(editor, CTRL_D) is Action.BELL and editor.line == "ab"  # at the end: nothing under the cursor


def test_a_character_and_its_combining_marks_go_together():
    editor = editor_with("xe\u0301\u0302y", None)
    press(editor, Key.LEFT)
    assert editor.cursor == 4
    press(editor, Key.LEFT)
    assert editor.cursor == 1  # before the e, not between it and its marks
    press(editor, Key.DELETE)
    assert editor.line == "xy"
    editor = editor_with("ae\u0301")
    press(editor, BACKSPACE)
    assert editor.line == "a"


def test_kill_keys_and_yank():
    editor = editor_with("echo hello world", 10)
    assert press(editor, CTRL_K) is Action.NONE and editor.line == "echo hello"
    assert press(editor, CTRL_Y) is Action.NONE and editor.line == "echo hello world"
    press(editor, CTRL_A, CTRL_E)
    assert press(editor, CTRL_W) is Action.NONE and editor.line == "echo hello "
    assert press(editor, CTRL_U) is Action.NONE and editor.line == ""
    # the two kills in a row made one entry: a yank gives both back
    press(editor, CTRL_Y)
    assert editor.line == "echo hello world"
    assert press(editor, Key.ALT_Y) is Action.NONE and editor.line == " world"  # the older kill instead
    press(editor, CTRL_A)
    assert press(editor, CTRL_U) is Action.BELL  # nothing before the cursor


def test_alt_d_and_alt_backspace_kill_words():
    editor = editor_with("rm -r old/stuff now", 6)
    press(editor, Key.ALT_D)
    assert editor.line == "rm -r /stuff now"
    press(editor, Key.ALT_D)
    assert editor.line == "rm -r  now"
    press(editor, CTRL_Y)
    assert editor.line == "rm -r old/stuff now"  # consecutive forward kills: one entry, in order
    press(editor, Key.ALT_BACKSPACE)
    assert editor.line == "rm -r old/ now"


def test_ctrl_w_kills_up_to_a_blank_and_ctrl_y_pastes_it_elsewhere():
    editor = editor_with("cp a/b.txt   c", None)
    press(editor, CTRL_W)
    assert editor.line == "cp a/b.txt   "
    press(editor, CTRL_W)
    assert editor.line == "cp "
    press(editor, CTRL_A, CTRL_Y)
    assert editor.line == "a/b.txt   ccp "


def test_yank_with_nothing_killed_and_alt_y_without_a_yank_ring_the_bell():
    editor = editor_with("x")
    assert press(editor, CTRL_Y) is Action.BELL
    assert press(editor, Key.ALT_Y) is Action.BELL


def test_control_keys_for_the_terminal():
    editor = editor_with("ls", None)
    assert press(editor, CTRL_L) is Action.CLEAR
    assert press(editor, TAB) is Action.COMPLETE
    assert press(editor, CTRL_C) is Action.INTERRUPT
    assert press(editor, CTRL_G) is Action.BELL
    assert press(editor, ENTER) is Action.ACCEPT and press(editor, "\n") is Action.ACCEPT
    assert editor.take() == "ls" and editor.line == "" and editor.cursor == 0
    assert press(editor, "\x1c") is Action.NONE and editor.line == ""  # another control: ignored


def test_the_line_stops_at_its_limit():
    editor = LineEditor(limit=5)
    press(editor, *"abcde")
    assert press(editor, "f") is Action.BELL and editor.line == "abcde"
    press(editor, CTRL_A, CTRL_K)
    press(editor, *"xyz")
    assert press(editor, CTRL_Y) is Action.BELL  # only "ab" of the kill fits
    assert editor.line == "xyzab"
    assert not editor.replace(0, 0, "1234")


def test_up_and_down_browse_the_history_and_keep_the_new_line():
    editor = editor_with("draft", history=["first", "second"])
    assert press(editor, Key.UP) is Action.NONE and editor.line == "second"
    assert press(editor, CTRL_P) is Action.NONE and editor.line == "first"
    assert press(editor, Key.UP) is Action.BELL and editor.line == "first"
    assert press(editor, Key.DOWN) is Action.NONE and editor.line == "second"
    assert press(editor, CTRL_N) is Action.NONE and editor.line == "draft"
    assert press(editor, Key.DOWN) is Action.BELL
    editor.take()
    assert press(editor, Key.UP) is Action.NONE and editor.line == "second"  # from the end again


def test_history_keeps_the_last_lines_and_skips_blank_ones():
    history = History(limit=3)
    for line in ["a", "  ", "b", "c", "d"]:
        history.add(line)
    assert history.entries == ["b", "c", "d"]


# -- reverse search --------------------------------------------------------------------------------------------

LINES = ["ls /tmp", "cat notes.txt", "echo one", "cat other.txt", "pwd"]


def test_ctrl_r_narrows_as_the_query_grows_and_enter_runs_the_match():
    editor = editor_with("", history=list(LINES))
    press(editor, CTRL_R)
    assert editor.display("$ ")[0] == "(reverse-i-search)`': "
    press(editor, "o")
    assert editor.line == "cat other.txt"  # the newest line holding "o"
    press(editor, "n")
    assert editor.line == "echo one"  # the newest holding "on"
    text, cursor = editor.display("$ ")
    assert text == "(reverse-i-search)`on': echo one" and text[cursor:] == "one"
    assert press(editor, ENTER) is Action.ACCEPT and editor.line == "echo one" and editor.search is None


def test_ctrl_r_again_finds_older_and_a_failed_search_says_so():
    editor = editor_with("", history=list(LINES))
    press(editor, CTRL_R, *"cat")
    assert editor.line == "cat other.txt"
    assert press(editor, CTRL_R) is Action.NONE and editor.line == "cat notes.txt"
    assert press(editor, CTRL_R) is Action.BELL and editor.line == "cat notes.txt"
    assert editor.display("$ ")[0].startswith("(failed reverse-i-search)`cat': ")
    assert press(editor, "z") is Action.BELL
    press(editor, BACKSPACE)
    assert editor.line == "cat other.txt"  # the query shrank: searched again from the newest


def test_ctrl_g_and_ctrl_c_cancel_the_search_and_give_the_line_back():
    for cancel in (CTRL_G, CTRL_C):
        editor = editor_with("draft", 2, history=list(LINES))
        press(editor, CTRL_R, *"pwd")
        assert editor.line == "pwd"
        assert press(editor, cancel) is Action.NONE
        assert (editor.line, editor.cursor, editor.search) == ("draft", 2, None)


def test_another_key_keeps_the_match_and_does_what_it_does():
    editor = editor_with("", history=list(LINES))
    press(editor, CTRL_R, *"notes")
    assert editor.line == "cat notes.txt" and editor.line[editor.cursor :] == "notes.txt"
    press(editor, CTRL_E, *" more")
    assert editor.line == "cat notes.txt more" and editor.search is None
    editor = editor_with("", history=list(LINES))
    press(editor, CTRL_R, *"echo", Key.UP)
    assert editor.line == "cat notes.txt"  # Up goes on from the entry found
    editor = editor_with("", history=list(LINES))
    press(editor, CTRL_R, *"one", CTRL_R)  # no older match
    press(editor, CTRL_A)
    assert (editor.line, editor.cursor, editor.search) == ("echo one", 0, None)


def test_ctrl_r_twice_searches_the_last_query_again():
    history = History(list(LINES))
    editor = LineEditor(history)
    press(editor, CTRL_R, *"cat", ENTER)
    editor.take()
    press(editor, CTRL_R, CTRL_R)
    assert editor.line == "cat other.txt"


# -- drawing ----------------------------------------------------------------------------------------------------


def test_typing_at_the_end_is_echoed_as_typed():
    drawn = Drawn()
    assert drawn.written == ["$ "]
    drawn.type("ls 日本")
    assert drawn.written[1:] == ["l", "s", " ", "日", "本"]


def test_wide_characters_move_the_cursor_by_two_cells():
    drawn = Drawn()
    drawn.type("日本語 ü")
    drawn.press(Key.LEFT, Key.LEFT)
    assert drawn.screen.cursor() == (0, 2 + 6)
    drawn.press(Key.LEFT)
    assert drawn.screen.cursor() == (0, 2 + 4)
    assert drawn.written[-1] == "\x1b[2D"
    drawn.press(CTRL_A)
    assert drawn.screen.cursor() == (0, 2)


def test_editing_in_the_middle_redraws_from_the_change_only():
    drawn = Drawn()
    drawn.type("echo wrld")
    drawn.press(Key.LEFT, Key.LEFT, Key.LEFT)
    drawn.press("o")
    assert drawn.written[-1] == "\x1b[Jorld\x1b[3D"
    assert drawn.screen.screen() == ["$ echo world"]
    drawn.press(CTRL_E, BACKSPACE)
    assert drawn.written[-1] == "\x1b[1D\x1b[J"


def test_long_lines_wrap_and_the_cursor_goes_back_across_rows():
    drawn = Drawn(cols=10)
    drawn.type("abcdefghijklmnopqrstu")  # "$ " + 21: three rows
    assert drawn.screen.screen() == ["$ abcdefgh", "ijklmnopqr", "stu"]
    drawn.press(CTRL_A)
    assert drawn.screen.cursor() == (0, 2)
    drawn.press("X")
    assert drawn.screen.screen() == ["$ Xabcdefg", "hijklmnopq", "rstu"]
    drawn.press(CTRL_E, CTRL_U)
    assert drawn.screen.screen() == ["$"]


def test_a_line_that_fills_the_row_puts_the_cursor_on_the_next_one():
    drawn = Drawn(cols=6)
    drawn.type("abcd")
    assert drawn.written[-1] == "d\r\n" and drawn.screen.cursor() == (1, 0)
    drawn.press(BACKSPACE)
    assert drawn.screen.screen() == ["$ abc"] and drawn.screen.cursor() == (0, 5)


def test_a_wide_character_that_does_not_fit_goes_to_the_next_row():
    drawn = Drawn(cols=5)
    drawn.type("ab日")
    assert drawn.screen.screen() == ["$ ab", "日"]
    drawn.press(Key.LEFT)
    assert drawn.screen.cursor() == (1, 0)
    drawn.press(Key.LEFT)
    assert drawn.screen.cursor() == (0, 3)


def test_the_prompt_is_drawn_from_where_output_left_the_cursor():
    view = View(20)
    view.moved_to(5)  # a program printed "hello" with no line end
    screen = Emulator(20)
    screen.feed("hello")
    screen.feed(view.draw("$ ab", 4))
    assert screen.screen() == ["hello$ ab"]
    screen.feed(view.draw("$ abc", 3))
    assert screen.screen() == ["hello$ abc"] and screen.cursor() == (0, 8)


def test_erase_and_finish():
    drawn = Drawn(cols=8)
    drawn.type("abcdefghij")
    drawn.press(CTRL_A)
    drawn.screen.feed(drawn.view.erase())
    assert drawn.screen.screen() == [] and drawn.screen.cursor() == (0, 0)
    drawn.screen.feed(drawn.view.draw("$ abcdefghij", 2))
    drawn.screen.feed(drawn.view.finish("^C"))
    assert drawn.screen.screen() == ["$ abcdef", "ghij^C"] and drawn.screen.cursor() == (2, 0)
    assert drawn.view.text == "" and drawn.view.origin == 0


def test_search_prompt_replaces_the_prompt_on_the_screen():
    drawn = Drawn(history=["make test", "ls"])
    drawn.press(CTRL_R, "m")
    assert drawn.screen.screen() == ["(reverse-i-search)`m': make test"]
    drawn.press(CTRL_G)
    assert drawn.screen.screen() == ["$"]


def test_unknown_width_never_wraps():
    view = View(0)
    screen_out = view.draw("$ " + "x" * 500, 3)
    assert "\r\n" not in screen_out and screen_out.endswith("\x1b[499D")


# -- completion helpers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "start", "text", "quote", "kind"),
    [
        ("", 0, "", "", "command"),
        ("ec", 0, "ec", "", "command"),
        ("cat ", 4, "", "", "path"),
        ("cat no", 4, "no", "", "path"),
        ("ls /ho", 3, "/ho", "", "path"),
        ("./to", 0, "./to", "", "path"),
        ("ls | wc -l; ech", 12, "ech", "", "command"),
        ("true && ca", 8, "ca", "", "command"),
        ("A=1 B=2 ec", 8, "ec", "", "command"),
        ("echo x > ou", 9, "ou", "", "path"),
        ("echo x 2>er", 9, "er", "", "path"),
        ("cat my\\ fi", 4, "my fi", "", "path"),
        ('cat "日本語 ', 4, "日本語 ", '"', "path"),
        ("cat 'it''s", 4, "its", "'", "path"),
        ('cat "a\\"b', 4, 'a"b', '"', "path"),
        ("sort @rt", 5, "@rt", "", "placement"),
        ("sort @dev:ca", 5, "@dev:ca", "", "placement"),
        ("echo $HO", 5, "$HO", "", ""),
        ("ls *.t", 3, "*.t", "", ""),
        ("X=/ho", 0, "X=/ho", "", ""),
        ("echo # comm", 11, "", "", ""),
    ],
)
def test_completion_word(line, start, text, quote, kind):
    word = completion_word(line)
    assert (word.start, word.text, word.quote, word.kind) == (start, text, quote, kind)


def test_completed_words_are_quoted_as_they_were():
    plain = completion_word("cat my")
    assert completed(plain, "my file (1).txt", True) == "my\\ file\\ \\(1\\).txt "
    assert completed(plain, "docs/", False) == "docs/"
    dq = completion_word('cat "my')
    assert completed(dq, 'my "x" $1.txt', True) == '"my \\"x\\" \\$1.txt" '
    sq = completion_word("cat 'it")
    assert completed(sq, "it's", True) == "'it'\\''s' "
    assert escape("@home") == "\\@home" and escape("a@b#c") == "a@b#c" and escape("#x") == "\\#x"


def test_columns_fill_the_width_down_first():
    names = ["alpha", "beta", "gamma", "delta", "日本語"]
    lines = columns(names, 24)
    assert lines == ["alpha   gamma   日本語", "beta    delta"]
    assert columns(names, 5) == names
    assert columns([f"n{i}" for i in range(10)], 80, limit=4)[-1] == "... and 6 more"


# -- the history file ------------------------------------------------------------------------------------------


def test_history_file_round_trip_limit_and_size():
    lines = [f"echo {i} ü" for i in range(HISTORY_LINES + 50)]
    data = history_bytes(lines)
    assert parse_history(data) == lines[-HISTORY_LINES:]
    small = history_bytes(["a" * 10, "b" * 10, "c" * 10], size=25)
    assert small == b"b" * 10 + b"\n" + b"c" * 10 + b"\n"
    assert parse_history(b"one\n\n  \ntwo\n\xff") == ["one", "two", "\ufffd"]


def test_which_lines_are_saved():
    assert saved_in_history("ls")
    assert not saved_in_history(" export TOKEN=secret")
    assert not saved_in_history("   ")


# -- random typing ---------------------------------------------------------------------------------------------

KEYS = st.one_of(
    st.sampled_from(list("ab ") + ["日", "語", "ü", "\u0301", "😀", "\udcc3", "/"]),
    st.sampled_from(
        [CTRL_A, CTRL_B, CTRL_D, CTRL_E, CTRL_F, CTRL_G, CTRL_K, CTRL_R, CTRL_U, CTRL_W, CTRL_Y, BACKSPACE, CTRL_C]
    ),
    st.sampled_from(list(Key)),
)


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(KEYS, max_size=60),
    cols=st.integers(min_value=4, max_value=30),
    lead=st.text(alphabet="x日", max_size=40),
)
def test_random_keys_never_break_the_line_or_the_screen(keys, cols, lead):
    drawn = Drawn(cols=cols, history=["ab 日", "ü a", "b\u0301"], lead=lead)
    drawn.editor.limit = 40
    for key in keys:
        action = drawn.press(key)
        editor = drawn.editor
        assert 0 <= editor.cursor <= len(editor.text) <= 40
        assert editor.cursor == 0 or editor.cursor == len(editor.text) or not zero_width(editor.text[editor.cursor])
        if action in (Action.ACCEPT, Action.INTERRUPT, Action.EOF):
            drawn.screen.feed(drawn.view.finish())
            assert drawn.screen.cursor()[1] == 0
            drawn.screen, drawn.lead = Emulator(cols), ""  # the next line starts on a clean row
            editor.take()
            drawn.draw()


@given(column=st.integers(min_value=0, max_value=12), text=st.text(alphabet="ab日\u0301", max_size=40))
def test_column_after_output_agrees_with_the_emulator(column, text):
    screen = Emulator(12)
    screen.feed("x" * column + text)
    assert column_after(column, text, 12) == (12 if screen.pending else screen.col)
