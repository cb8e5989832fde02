"""The shell language parser and word expansion: tables, errors and properties.

Pure functions, so no reactor and no grid: every case is one call.  The
hypothesis tests check the two promises the shell server relies on: any
text either parses or raises ShellSyntaxError (never a crash), and unparse
renders an AST that parses back to the same AST.
"""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oneos.errors import OneOSError, describe
from oneos.shell import (
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
    expand_word,
    glob_pattern,
    parse,
    unparse,
)
from oneos.shell.parser import DEVICE_PATTERN, RUNTIME_PATTERN, TAG_PATTERN, canonical_parts

#: Enough examples to find the parser's usual mistakes within the unit tier's budget (under 20 s in all);
#: hypothesis keeps the failing examples it found in .hypothesis/ and tries them first next time.
QUICK = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- helpers -------------------------------------------------------------------


def L(text: str) -> Literal:
    return Literal(text, quoted=False)


def Q(text: str) -> Literal:
    return Literal(text, quoted=True)


def W(*parts: Literal | Param | str) -> Word:
    """A word; a bare str is an unquoted literal."""
    return Word(tuple(L(p) if isinstance(p, str) else p for p in parts))


def only_command(line: str) -> Command:
    """The single command of a one-command line."""
    script = parse(line)
    assert len(script.items) == 1 and not script.items[0].rest
    (command,) = script.items[0].first.stages
    return command


def argument(line: str) -> Word:
    """The single argument of ``echo ARG``-shaped lines."""
    command = only_command(line)
    assert command.words[0] == W("echo") and len(command.words) == 2, command
    return command.words[1]


def simple(*words: str, **kw: object) -> Command:
    return Command(tuple(W(w) for w in words), **kw)  # type: ignore[arg-type]


def one(*stages: Command, rest: tuple = (), background: bool = False) -> AndOr:
    return AndOr(Pipeline(stages), rest, background)


def check_round_trip(script: Script) -> None:
    text = unparse(script)
    assert parse(text) == script, text


# --- words: quoting, escapes, variables ---------------------------------------

WORDS = [
    ("echo abc", W("abc")),
    ("echo 'a b'", W(Q("a b"))),
    ('echo "a b"', W(Q("a b"))),
    ("echo a\\ b", W("a", Q(" "), "b")),
    ("echo 'a'\"b\"", W(Q("ab"))),
    ('echo "it\'s"', W(Q("it's"))),
    ("echo it\\'s", W("it", Q("'"), "s")),
    ("echo 'a\\b'", W(Q("a\\b"))),
    ('echo "a\\"b"', W(Q('a"b'))),
    ('echo "a\\\\b"', W(Q("a\\b"))),
    ('echo "a\\b"', W(Q("a\\b"))),
    ('echo "\\$X"', W(Q("$X"))),
    ("echo '$X'", W(Q("$X"))),
    ("echo $X", W(Param("X"))),
    ("echo $X_1y", W(Param("X_1y"))),
    ("echo ${X}y", W(Param("X"), "y")),
    ("echo $X.txt", W(Param("X"), ".txt")),
    ('echo "$X y"', W(Param("X", quoted=True), Q(" y"))),
    ('echo "a${B}c"', W(Q("a"), Param("B", quoted=True), Q("c"))),
    ('echo "$X"', W(Param("X", quoted=True))),
    ("echo $?", W(Param("?"))),
    ("echo ${?}", W(Param("?"))),
    ("echo $?x", W(Param("?"), "x")),
    ("echo $", W("$")),
    ("echo a$-b", W("a$-b")),
    ("echo $1", W("$1")),
    ('echo "$"', W(Q("$"))),
    ("echo ''", W(Q(""))),
    ('echo ""', W(Q(""))),
    ("echo a''b", W("ab")),
    ("echo ''$X", W(Param("X"))),
    ("echo a#b", W("a#b")),
    ("echo \\#", W(Q("#"))),
    ("echo *.txt", W("*.txt")),
    ("echo '*'.txt", W(Q("*"), ".txt")),
    ("echo [ab]?", W("[ab]?")),
    ("echo é☃\x01", W("é☃\x01")),
    ("echo a\\\nb", W("ab")),
    ('echo "a\\\nb"', W(Q("ab"))),
    ('echo "a\nb"', W(Q("a\nb"))),
    ("echo 'a\nb'", W(Q("a\nb"))),
    ("echo \\@rt", W(Q("@"), "rt")),
    ("echo ''@rt", W(Q(""), "@rt")),
    ("echo x=1", W("x=1")),
    ("echo {a,b}~!", W("{a,b}~!")),
    ("echo \t a\r", W("a")),
]


@pytest.mark.parametrize("line, word", WORDS, ids=[w[0] for w in WORDS])
def test_word(line: str, word: Word) -> None:
    assert argument(line) == word
    check_round_trip(parse(line))


# --- lists, pipelines, comments -------------------------------------------------

A, B, C, D = (simple(x) for x in "abcd")

STRUCTURE = [
    ("", Script()),
    ("   \t ", Script()),
    ("# only a comment", Script()),
    ("\n\n", Script()),
    ("  # one\n  # two\n", Script()),
    ("a", Script((one(A),))),
    ("a;", Script((one(A),))),
    ("a # comment ; b", Script((one(A),))),
    ("a; b", Script((one(A), one(B)))),
    ("a\nb", Script((one(A), one(B)))),
    ("a;\n\n b\n", Script((one(A), one(B)))),
    ("a &", Script((one(A, background=True),))),
    ("a & b", Script((one(A, background=True), one(B)))),
    ("a&b&", Script((one(A, background=True), one(B, background=True)))),
    ("a && b || c", Script((one(A, rest=(("&&", Pipeline((B,))), ("||", Pipeline((C,))))),))),
    ("a | b | c", Script((one(A, B, C),))),
    ("a|b&&c|d &", Script((one(A, B, rest=(("&&", Pipeline((C, D))),), background=True),))),
    ("a &&\n\n b", Script((one(A, rest=(("&&", Pipeline((B,))),)),))),
    ("a |\n b", Script((one(A, B),))),
    ("a ||  # why not\n b", Script((one(A, rest=(("||", Pipeline((B,))),)),))),
    ("a \\\n | b", Script((one(A, B),))),
]


@pytest.mark.parametrize("line, script", STRUCTURE, ids=[repr(s[0]) for s in STRUCTURE])
def test_structure(line: str, script: Script) -> None:
    assert parse(line) == script
    check_round_trip(parse(line))


# --- redirections ----------------------------------------------------------------

REDIRECTS = [
    ("cat < in > out", ("cat",), [Redirect(0, "<", W("in")), Redirect(1, ">", W("out"))]),
    ("cmd >> log", ("cmd",), [Redirect(1, ">>", W("log"))]),
    ("cmd>>log", ("cmd",), [Redirect(1, ">>", W("log"))]),
    ("cmd 2> err", ("cmd",), [Redirect(2, ">", W("err"))]),
    ("cmd 2>>err", ("cmd",), [Redirect(2, ">>", W("err"))]),
    ("cmd 2>&1", ("cmd",), [Redirect(2, ">&", 1)]),
    ("cmd 2>& 1", ("cmd",), [Redirect(2, ">&", 1)]),
    ("cmd >&2", ("cmd",), [Redirect(1, ">&", 2)]),
    ("cmd 0<in", ("cmd",), [Redirect(0, "<", W("in"))]),
    ("cmd 3>x", ("cmd",), [Redirect(3, ">", W("x"))]),
    ("cmd > out 2>&1", ("cmd",), [Redirect(1, ">", W("out")), Redirect(2, ">&", 1)]),
    ("cmd 2>&1 > out", ("cmd",), [Redirect(2, ">&", 1), Redirect(1, ">", W("out"))]),
    ("cmd >out arg", ("cmd", "arg"), [Redirect(1, ">", W("out"))]),
    ('cmd > "$D/a b"', ("cmd",), [Redirect(1, ">", W(Param("D", True), Q("/a b")))]),
    ("echo 2 > x", ("echo", "2"), [Redirect(1, ">", W("x"))]),
    ("echo a2>x", ("echo", "a2"), [Redirect(1, ">", W("x"))]),
    ("echo '2'>x", ("echo", Q("2")), [Redirect(1, ">", W("x"))]),
    ("> truncated", (), [Redirect(1, ">", W("truncated"))]),
    ("cmd > @rt", ("cmd",), [Redirect(1, ">", W("@rt"))]),
]


@pytest.mark.parametrize("line, words, redirects", REDIRECTS, ids=[r[0] for r in REDIRECTS])
def test_redirects(line: str, words: tuple, redirects: list[Redirect]) -> None:
    command = only_command(line)
    assert command.words == tuple(W(w) for w in words)
    assert command.redirects == tuple(redirects)
    check_round_trip(parse(line))


# --- assignments -----------------------------------------------------------------

ASSIGNMENTS = [
    ("A=1 cmd", [Assignment("A", W("1"))], ("cmd",)),
    ("A=1 B=2", [Assignment("A", W("1")), Assignment("B", W("2"))], ()),
    ("A= cmd", [Assignment("A", W())], ("cmd",)),
    ("A='' cmd", [Assignment("A", W())], ("cmd",)),
    ('A="x y" cmd', [Assignment("A", W(Q("x y")))], ("cmd",)),
    ("A=$B/c cmd", [Assignment("A", W(Param("B"), "/c"))], ("cmd",)),
    ("A=a=b cmd", [Assignment("A", W("a=b"))], ("cmd",)),
    ("_x9=1 cmd", [Assignment("_x9", W("1"))], ("cmd",)),
    ("A=1 >f B=2 cmd", [Assignment("A", W("1")), Assignment("B", W("2"))], ("cmd",)),
    ("cmd A=1", [], ("cmd", "A=1")),
    ("'A'=1 cmd", [], ((Q("A"), "=1"), "cmd")),
    ("1A=2 cmd", [], ("1A=2", "cmd")),
    ("export A=1 B", [], ("export", "A=1", "B")),
]


@pytest.mark.parametrize("line, assignments, words", ASSIGNMENTS, ids=[a[0] for a in ASSIGNMENTS])
def test_assignments(line: str, assignments: list[Assignment], words: tuple) -> None:
    command = only_command(line)
    assert command.assignments == tuple(assignments)
    assert command.words == tuple(W(*w) if isinstance(w, tuple) else W(w) for w in words)
    check_round_trip(parse(line))


# --- placement -------------------------------------------------------------------

PLACEMENTS = [
    ("cmd @rt-1", ("cmd",), Placement("rt-1")),
    ("cmd a @tag:gpu @tag:fast", ("cmd", "a"), Placement(None, ("gpu", "fast"))),
    ("cmd @tag:gpu @rt.2 @tag:x:y", ("cmd",), Placement("rt.2", ("gpu", "x:y"))),
    ("cmd a @rt > out", ("cmd", "a"), Placement("rt")),
    ("cmd a > out @rt", ("cmd", "a"), Placement("rt")),
    ("A=1 cmd @rt", ("cmd",), Placement("rt")),
    ("cmd '@rt'", ("cmd", Q("@rt")), Placement()),
    ("cmd @rt arg", ("cmd", "@rt", "arg"), Placement()),
    ("@rt cmd", ("@rt", "cmd"), Placement()),
    ("cmd a@rt", ("cmd", "a@rt"), Placement()),
    ("cmd @dev:cam0", ("cmd",), Placement(near=("cam0",))),
    ("cmd a @dev:cam0 @rt-2 @dev:mic.1 @tag:x", ("cmd", "a"), Placement("rt-2", ("x",), ("cam0", "mic.1"))),
    ("cmd '@dev:cam0'", ("cmd", Q("@dev:cam0")), Placement()),
    ("cmd @dev:cam0 > out", ("cmd",), Placement(near=("cam0",))),
]


@pytest.mark.parametrize("line, words, placement", PLACEMENTS, ids=[p[0] for p in PLACEMENTS])
def test_placement(line: str, words: tuple, placement: Placement) -> None:
    command = only_command(line)
    assert command.words == tuple(W(w) for w in words)
    assert command.placement == placement
    check_round_trip(parse(line))


def test_placement_per_stage() -> None:
    stages = parse("gen @rt-1 | grep x @tag:fast | wc").items[0].first.stages
    assert [s.placement for s in stages] == [Placement("rt-1"), Placement(None, ("fast",)), Placement()]


def test_placement_names_follow_config_rules() -> None:
    """The parser copies config's id/tag rules to stay light; they must agree."""
    from oneos.config import ID_PATTERN
    from oneos.config import TAG_PATTERN as CONFIG_TAG_PATTERN

    assert ID_PATTERN.pattern == "^" + RUNTIME_PATTERN.pattern + "$"
    assert CONFIG_TAG_PATTERN.pattern == "^" + TAG_PATTERN.pattern + "$"


def test_device_placement_names_follow_the_device_name_rule() -> None:
    from oneos.devices.info import _NAME

    assert _NAME.pattern == "^" + DEVICE_PATTERN.pattern + "$"


def test_device_placement_makes_a_builtin_name_a_program() -> None:
    """``echo x @dev:cam0`` must run on a runtime, so it is placed (as with @RUNTIME)."""
    stages = parse("gen @dev:rnd | wc @dev:a @dev:b").items[0].first.stages
    assert [s.placement.near for s in stages] == [("rnd",), ("a", "b")]


# --- syntax errors ---------------------------------------------------------------

ERRORS = [
    ("ls |", 4, "expected a command after '|'"),
    ("ls | ;", 5, "expected a command after '|', found ';'"),
    ("| a", 0, "expected a command before '|'"),
    ("a && ", 5, "expected a command after '&&'"),
    ("a && || b", 5, "expected a command after '&&', found '||'"),
    ("a ||  # c", 9, "expected a command after '||'"),
    ("a;;", 2, "expected a command before ';'"),
    (";a", 0, "expected a command before ';'"),
    ("&", 0, "expected a command before '&'"),
    ("a & &", 4, "expected a command before '&'"),
    ('echo "abc', 5, "unterminated double quote"),
    ("echo 'x", 5, "unterminated single quote"),
    ('echo "a\\"', 5, "unterminated double quote"),
    ("a > ", 4, "expected a file name after '>'"),
    ("a >> ;", 5, "expected a file name after '>>', found ';'"),
    ("a < | b", 4, "expected a file name after '<'"),
    ("a 2>", 4, "expected a file name after '>'"),
    ("a <> f", 3, "expected a file name after '<'"),
    ("a >| f", 3, "expected a file name after '>'"),
    ("a >&x", 4, "expected a file descriptor number after '>&'"),
    ("a >&", 4, "expected a file descriptor number after '>&'"),
    ("a >&12", 4, "file descriptor 12 is out of range"),
    ("echo 12>x", 5, "file descriptor 12 is out of range"),
    ("a &> f", 2, "'&>' is not supported"),
    ("@rt", 0, "expected a command before the placement '@rt'"),
    ("A=1 @rt", 4, "expected a command before the placement"),
    ("a @rt @rt2", 6, "one runtime only"),
    ("a @", 2, "expected a runtime id after '@'"),
    ("a @tag:", 2, "expected a tag after '@'"),
    ("a @bad/name", 2, "expected a runtime id"),
    ("a @$X", 2, "placement must be plain text"),
    ('a @"rt"', 2, "placement must be plain text"),
    ("a @dev:", 2, "expected a device name after '@'"),
    ("a @dev:rt-2/cam0", 2, "expected a device name after '@' in '@dev:rt-2/cam0' (write @RUNTIME, @tag:TAG or @dev:"),
    ("a @dev:-x", 2, "expected a device name"),
    ("@dev:cam0", 0, "expected a command before the placement '@dev:cam0'"),
    ("echo $(ls)", 5, "command substitution '$(' is not supported"),
    ("echo `ls`", 5, "command substitution with '`'"),
    ('echo "`"', 6, "command substitution with '`'"),
    ('echo "$(x)"', 6, "command substitution"),
    ("a (b)", 2, "'(' is not supported"),
    ("a)", 1, "')' is not supported"),
    ("a\\", 1, "expected a character after '\\'"),
    ("${a-b}", 2, "expected a variable name inside '${...}', found 'a-b'"),
    ("${}", 2, "expected a variable name"),
    ("${1}", 2, "expected a variable name"),
    ("echo ${x", 5, "unterminated '${'"),
    ("\0", 0, "NUL characters are not allowed"),
    ("echo a\0b", 6, "NUL"),
]


@pytest.mark.parametrize("line, position, expected", ERRORS, ids=[repr(e[0]) for e in ERRORS])
def test_syntax_error(line: str, position: int, expected: str) -> None:
    with pytest.raises(ShellSyntaxError) as info:
        parse(line)
    assert info.value.position == position
    assert expected in info.value.reason
    assert str(info.value).startswith(f"syntax error at column {position + 1}: ")


def test_error_message_is_plain_and_typed() -> None:
    with pytest.raises(OneOSError) as info:
        parse("ls -l |")
    assert describe(info.value) == "syntax error at column 8: expected a command after '|'"


def test_error_names_line_in_multi_line_input() -> None:
    with pytest.raises(ShellSyntaxError) as info:
        parse("echo ok\nls |")
    assert info.value.position == 12
    assert "at line 2, column 5:" in str(info.value)


def test_unterminated_quote_points_at_its_start() -> None:
    with pytest.raises(ShellSyntaxError) as info:
        parse('a; echo "abc\n\ndef')
    assert info.value.position == 8
    assert "expected a closing '\"'" in str(info.value)


def test_line_length_limit() -> None:
    parse("a" * MAX_LINE)
    with pytest.raises(ShellSyntaxError) as info:
        parse("a" * (MAX_LINE + 1))
    assert info.value.position == MAX_LINE
    assert "too long" in str(info.value)


def test_long_lines_are_iterative_not_recursive() -> None:
    """Thousands of stages or items must not hit the recursion limit."""
    assert len(parse("a|" * 5000 + "a").items[0].first.stages) == 5001
    assert len(parse("a;" * 5000).items) == 5000
    assert len(parse("a && " * 5000 + "a").items[0].rest) == 5000


def test_parse_rejects_non_text() -> None:
    with pytest.raises(TypeError):
        parse(b"ls")  # type: ignore[arg-type]


# --- expansion -------------------------------------------------------------------

ENV = {"X": "x y", "G": "a?b", "EMPTY": ""}

EXPANSIONS = [
    ("echo $X", "x y"),
    ("echo ${X}z", "x yz"),
    ('echo "$X"', "x y"),
    ("echo '$X'", "$X"),
    ("echo \\$X", "$X"),
    ("echo $UNSET.", "."),
    ("echo $?", "3"),
    ("echo a\\ b'c'\"d\"", "a bcd"),
    ("echo ''", ""),
]


@pytest.mark.parametrize("line, text", EXPANSIONS, ids=[e[0] for e in EXPANSIONS])
def test_expand_word(line: str, text: str) -> None:
    assert expand_word(argument(line), ENV, 3) == text


GLOBS = [
    ("echo *.txt", "*.txt"),
    ("echo /d/?[ab]", "/d/?[ab]"),
    ("echo plain", None),
    ("echo '*.txt'", None),
    ('echo "[x]"', None),
    ("echo \\*", None),
    ("echo $G", None),
    ("echo '*'*", "[*]*"),
    ("echo \\*x*", "[*]x*"),
    ("echo '['*", "[[]*"),
    ("echo $G*", "a[?]b*"),
    ('echo "$X"/*', "x y/*"),
    ("echo $?*", "3*"),
]


@pytest.mark.parametrize("line, pattern", GLOBS, ids=[g[0] for g in GLOBS])
def test_glob_pattern(line: str, pattern: str | None) -> None:
    assert glob_pattern(argument(line), ENV, 3) == pattern


def test_glob_pattern_matches_quoted_text_literally() -> None:
    pattern = glob_pattern(argument("echo 'a*['*"), {}, 0)
    assert pattern is not None
    assert fnmatch.fnmatchcase("a*[.txt", pattern)
    assert not fnmatch.fnmatchcase("abc[.txt", pattern)


@QUICK
@given(st.text().filter(lambda t: "\0" not in t), st.text(alphabet="ab*"))
def test_glob_escape_property(prefix: str, tail: str) -> None:
    """Quoted text matches exactly itself whatever characters it holds."""
    word = Word(canonical_parts([Q(prefix), L("*")]))
    pattern = glob_pattern(word, {}, 0)
    assert pattern is not None
    assert fnmatch.fnmatchcase(prefix + tail, pattern)


# --- unparse ---------------------------------------------------------------------

UNPARSED = [
    ("echo  hi", "echo hi"),
    ('A="x y" cmd "$N" $M', "A='x y' cmd \"${N}\" ${M}"),
    ("echo it\\'s", "echo it\\'s"),
    ("a|b&&c", "a | b && c"),
    ("a & b;c\n", "a & b; c"),
    ("a 2>&1 >f @rt", "a @rt 2>&1 > f"),
    ("a <f 0<g 1>h", "a < f < g > h"),
    ("", ""),
]


@pytest.mark.parametrize("line, text", UNPARSED, ids=[u[0] for u in UNPARSED])
def test_unparse(line: str, text: str) -> None:
    assert unparse(parse(line)) == text


# --- properties ------------------------------------------------------------------

SHELLY = st.sampled_from(
    list(" \t\n\r;&|<>()'\"\\$#@=*?[]{}`!~-_/.0129aAzZ")
    + ["$(", "${", "2>&1", "&&", "||", "@tag:", "\x00", "é", "\udc80", "\u2028"]
)
FUZZ_TEXT = st.one_of(
    st.text(),
    st.lists(SHELLY, max_size=40).map("".join),
    st.binary(max_size=200).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)


@QUICK
@given(FUZZ_TEXT)
def test_fuzz_parse_never_crashes(text: str) -> None:
    """Any text parses or raises ShellSyntaxError, and what parses round-trips."""
    try:
        script = parse(text)
    except ShellSyntaxError as e:
        assert 0 <= e.position <= len(text)
        assert str(e).startswith("syntax error at ")
        return
    assert isinstance(script, Script)
    check_round_trip(script)


# Valid lines built from fragments: quoting, variables, redirections, placement.
ARG = st.sampled_from(
    [
        "a",
        "-l",
        "'x y'",
        '"$A b"',
        "\\*",
        "${B}c",
        "$?",
        "*.txt",
        "'@q'",
        "k=v",
        "''",
        '""',
        "é",
        "a\\ b",
        "'it'\\''s'",
        "2",
        "[ab]",
    ]
)
REDIRECT_TEXT = st.sampled_from(["> f", ">>g", "< h", "2> e", "2>&1", ">&2", '> "$OUT"'])
PLACEMENT_TEXT = st.sampled_from(["@rt-1", "@tag:gpu", "@tag:fast", "@r.2"])


@st.composite
def command_lines(draw: st.DrawFn) -> str:
    assignments = draw(st.lists(st.sampled_from(["A=1", "B='x y'", "C=$A", "D="]), max_size=2))
    args = draw(st.lists(ARG, max_size=4))
    redirects = draw(st.lists(REDIRECT_TEXT, max_size=2))
    runtime = draw(st.lists(st.sampled_from(["@rt-1", "@r.2"]), max_size=1))
    tags = draw(st.lists(st.sampled_from(["@tag:gpu", "@tag:fast", "@dev:cam0"]), max_size=2))
    return " ".join(assignments + ["cmd"] + args + runtime + tags + redirects)


@st.composite
def script_lines(draw: st.DrawFn) -> str:
    commands = draw(st.lists(command_lines(), min_size=1, max_size=4))
    text = commands[0]
    for command in commands[1:]:
        text += draw(st.sampled_from([" | ", "|", " && ", "||\n", " ; ", " & ", "\n", " # note\n"])) + command
    return text + draw(st.sampled_from(["", " &", ";", " # done", "\n"]))


@QUICK
@given(script_lines())
def test_round_trip_of_generated_lines(line: str) -> None:
    script = parse(line)
    check_round_trip(script)


# Generated ASTs: canonical by construction, so parse(unparse(ast)) == ast exactly.
UNQUOTED = st.text(alphabet="abcxyz019._/-+:,*?[]%^", min_size=1, max_size=6)
QUOTED = st.text(st.characters(blacklist_characters="\0"), max_size=6)
ALNUM = "abcXYZ0189"


def identifiers(first: str, rest: str) -> st.SearchStrategy[str]:
    """Cheaper than st.from_regex, which made the AST test ten times slower."""
    return st.builds(lambda a, b: a + b, st.sampled_from(first), st.text(alphabet=rest, max_size=5))


VAR_NAME = identifiers("abcXYZ_", ALNUM + "_")
NAMES = VAR_NAME | st.just("?")
RUNTIME_NAME = identifiers(ALNUM, ALNUM + "._-")
TAG_NAME = identifiers(ALNUM, ALNUM + "._:-")


def parts() -> st.SearchStrategy[tuple]:
    part = st.one_of(
        UNQUOTED.map(L),
        QUOTED.map(Q),
        st.builds(Param, NAMES, st.booleans()),
    )
    return st.lists(part, min_size=1, max_size=3).map(canonical_parts).filter(bool)


WORD = parts().map(Word)


def assignment_value(value_parts: tuple) -> Word:
    """As the parser does: a value's leading ``''`` guards nothing, so it goes."""
    while value_parts and value_parts[0] == Q(""):
        value_parts = value_parts[1:]
    return Word(canonical_parts(value_parts))


REDIRECT = st.one_of(
    st.builds(Redirect, st.integers(0, 9), st.sampled_from(["<", ">", ">>"]), WORD),
    st.builds(Redirect, st.integers(0, 9), st.just(">&"), st.integers(0, 9)),
)
PLACEMENT = st.builds(
    Placement,
    st.none() | RUNTIME_NAME,
    st.lists(TAG_NAME, max_size=2).map(tuple),
    st.lists(RUNTIME_NAME, max_size=2).map(tuple),  # device names follow the runtime id rule
)


@st.composite
def commands(draw: st.DrawFn) -> Command:
    assignments = draw(st.lists(st.builds(Assignment, VAR_NAME, parts().map(assignment_value)), max_size=1))
    words = draw(st.lists(WORD, max_size=2))
    redirects = draw(st.lists(REDIRECT, max_size=1))
    placement = draw(PLACEMENT) if words else Placement()
    if not (words or assignments or redirects):
        words = [W("cmd")]
    return Command(tuple(words), tuple(redirects), tuple(assignments), placement)


PIPELINE = st.lists(commands(), min_size=1, max_size=2).map(lambda c: Pipeline(tuple(c)))
AND_OR = st.builds(
    AndOr,
    PIPELINE,
    st.lists(st.tuples(st.sampled_from(["&&", "||"]), PIPELINE), max_size=1).map(tuple),
    st.booleans(),
)
SCRIPT = st.lists(AND_OR, max_size=2).map(lambda items: Script(tuple(items)))


@settings(QUICK, max_examples=60)  # generating ASTs is the slow part
@given(SCRIPT)
def test_round_trip_of_generated_asts(script: Script) -> None:
    check_round_trip(script)
