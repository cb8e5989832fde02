"""The shell language parser and word expansion: tables, errors and properties.

Pure functions, so no reactor and no grid: every case is one call.  The
hypothesis tests check the two promises the shell server relies on: any
text either parses or raises ShellSyntaxError (never a crash), and unparse
renders an AST that parses back to the same AST; both for simple lines and
for the compound commands (if, loops, case, functions, substitutions).
"""

from __future__ import annotations

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
from oneos.shell.expand import match_glob
from oneos.shell.parser import (
    DEVICE_PATTERN,
    MAX_NESTING,
    RUNTIME_PATTERN,
    TAG_PATTERN,
    ArithCommand,
    ArithFor,
    ArithSub,
    Case,
    CaseItem,
    CommandSub,
    For,
    FunctionDef,
    Group,
    If,
    Loop,
    Subshell,
    Tilde,
    canonical_parts,
    is_incomplete,
)

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


def SUB(*stages: object, quoted: bool = False) -> CommandSub:
    """``$(STAGE | STAGE)``: a command substitution of one pipeline."""
    return CommandSub(Script((one(*stages),)), quoted)  # type: ignore[arg-type]


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
    ("echo $1", W(Param("1"))),
    ("echo $10", W(Param("1"), "0")),
    ("echo ${10}", W(Param("10"))),
    ("echo ${01}", W(Param("1"))),
    ("echo $#", W(Param("#"))),
    ("echo ${#}", W(Param("#"))),
    ('echo "$@"', W(Param("@", quoted=True))),
    ("echo $*x", W(Param("*"), "x")),
    ("echo $0", W(Param("0"))),
    ("echo $$", W("$$")),
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
    # tilde prefixes: unquoted, first, before '/' or the end of the word
    ("echo ~", W(Tilde())),
    ("echo ~/x", W(Tilde(), "/x")),
    ("echo ~ann", W(Tilde("ann"))),
    ("echo ~ann/d/*", W(Tilde("ann"), "/d/*")),
    ("echo a~", W("a~")),
    ("echo '~'", W(Q("~"))),
    ("echo \\~", W(Q("~"))),
    ("echo ~'x'", W("~", Q("x"))),
    ("echo ~x:y", W("~x:y")),
    ("echo ''~", W(Q(""), "~")),
    ("echo ~+/x", W(Tilde("+"), "/x")),
    ("echo ~-", W(Tilde("-"))),
    ("echo ~++", W("~++")),
    # substitutions
    ("echo $(a b)", W(SUB(simple("a", "b")))),
    ('echo "$(a)x"', W(SUB(simple("a"), quoted=True), Q("x"))),
    ("echo `a`", W(SUB(simple("a")))),
    ("echo `echo \\`b\\``", W(SUB(Command((W("echo"), W(SUB(simple("b")))))))),
    ("echo $()", W(CommandSub(Script()))),
    ("echo $( (a) )", W(SUB(Subshell(Script((one(simple("a")),)))))),
    ("echo $((1 + $x))", W(ArithSub((Q("1 + "), Param("x", quoted=True))))),
    ('echo "$((2*(3)))"', W(ArithSub((Q("2*(3)"),), quoted=True))),
    ("echo $(())", W(ArithSub(()))),
    ('echo $(( "1" + $(a) ))', W(ArithSub((Q(" 1 + "), SUB(simple("a"), quoted=True), Q(" "))))),
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


# --- compound commands -------------------------------------------------------------


def S(*items: AndOr) -> Script:
    return Script(items)


def body(*stages: object) -> Script:
    """A list of one pipeline."""
    return Script((one(*stages),))  # type: ignore[arg-type]


COMPOUNDS = [
    ("{ a; b; }", Group(S(one(A), one(B)))),
    ("{ a\n}", Group(body(A))),
    ("{ a & }", Group(S(one(A, background=True)))),
    ("( a; b )", Subshell(S(one(A), one(B)))),
    ("(a)", Subshell(body(A))),
    ("( (a) )", Subshell(body(Subshell(body(A))))),
    ("if a; then b; fi", If(((body(A), body(B)),))),
    ("if a\nthen\n b\nelif c; then d; else a; b; fi", If(((body(A), body(B)), (body(C), body(D))), S(one(A), one(B)))),
    ("if a; then b; else if c; then d; fi; fi", If(((body(A), body(B)),), body(If(((body(C), body(D)),))))),
    ("while a; do b; done", Loop(body(A), body(B))),
    ("until a && b; do c; done", Loop(S(one(A, rest=(("&&", Pipeline((B,))),))), body(C), until=True)),
    ("while a | b\ndo c\ndone", Loop(body(A, B), body(C))),
    ("for x in a 'b c' $Y; do c; done", For("x", (W("a"), W(Q("b c")), W(Param("Y"))), body(C))),
    ("for x in\ndo c; done", For("x", (), body(C))),  # (the list ends at the newline)
    ("for x; do c; done", For("x", None, body(C))),
    ("for x do c; done", For("x", None, body(C))),
    ("for x\ndo c\ndone", For("x", None, body(C))),
    ("for x\nin a\ndo c; done", For("x", (W("a"),), body(C))),
    ("for x in; do c; done", For("x", (), body(C))),
    ("for x in do done; do c; done", For("x", (W("do"), W("done")), body(C))),
    ("for ((i=0; i<3; i++)); do c; done", ArithFor((Q("i=0"),), (Q(" i<3"),), (Q(" i++"),), body(C))),
    ("for ((;;))\ndo c; done", ArithFor((), (), (), body(C))),
    (
        "case $x in a|b) c;; *) ;; esac",
        Case(W(Param("x")), (CaseItem((W("a"), W("b")), body(C)), CaseItem((W("*"),), S()))),
    ),
    (
        "case x in (a) c;& b) d;;& esac",
        Case(W("x"), (CaseItem((W("a"),), body(C), ";&"), CaseItem((W("b"),), body(D), ";;&"))),
    ),
    ("case x in\n a)\n c\nesac", Case(W("x"), (CaseItem((W("a"),), body(C)),))),
    ("case x\nin esac", Case(W("x"), ())),
    ("case if in fi|'esac') ;; esac", Case(W("if"), (CaseItem((W("fi"), W(Q("esac"))), S()),))),
    ("((x = 1 + 2))", ArithCommand((Q("x = 1 + 2"),))),
    ("(( (1) ))", ArithCommand((Q(" (1) "),))),
    ("(())", ArithCommand(())),
    ("f() { a; }", FunctionDef("f", Group(body(A)))),
    ("f ( ) ( a )", FunctionDef("f", Subshell(body(A)))),
    ("f()\n{\n a\n}", FunctionDef("f", Group(body(A)))),
    ("function f { a; }", FunctionDef("f", Group(body(A)))),
    ("function f() { a; }", FunctionDef("f", Group(body(A)))),
    ("my-fn() { a; }", FunctionDef("my-fn", Group(body(A)))),
    ("f() if a; then b; fi", FunctionDef("f", If(((body(A), body(B)),)))),
    ("f() { a; } > out", FunctionDef("f", Group(body(A), (Redirect(1, ">", W("out")),)))),
]


@pytest.mark.parametrize("line, node", [c for c in COMPOUNDS if c[1] is not None], ids=lambda c: repr(c))
def test_compound(line: str, node: object) -> None:
    script = parse(line)
    assert len(script.items) == 1 and not script.items[0].rest
    assert script.items[0].first.stages == (node,)
    check_round_trip(script)


PIPED_COMPOUNDS = [
    (
        "while a; do b; done > f 2>&1 | c",
        one(Loop(body(A), body(B), redirects=(Redirect(1, ">", W("f")), Redirect(2, ">&", 1))), C),
    ),
    (
        "for x in a; do b; done | c < in",
        one(For("x", (W("a"),), body(B)), simple("c", redirects=(Redirect(0, "<", W("in")),))),
    ),
    ("! { a; } && b &", AndOr(Pipeline((Group(body(A)),), negated=True), (("&&", Pipeline((B,))),), True)),
    ("! ! a", AndOr(Pipeline((A,), negated=False))),
    ("a && if b; then c; fi", one(A, rest=(("&&", Pipeline((If(((body(B), body(C)),)),))),))),
    ("a |\n while b; do c; done", one(A, Loop(body(B), body(C)))),
    ("echo if then fi", one(simple("echo", "if", "then", "fi"))),
    ("'if' a", one(Command((W(Q("if")), W("a"))))),
    ("{a; }", None),
]


@pytest.mark.parametrize("line, item", [c for c in PIPED_COMPOUNDS if c[1] is not None], ids=lambda c: repr(c))
def test_compound_in_lists(line: str, item: AndOr) -> None:
    script = parse(line)
    assert script.items == (item,)
    check_round_trip(script)


def test_reserved_words_only_where_a_command_starts() -> None:
    script = parse("if true; then echo fi done; fi; echo then")
    assert len(script.items) == 2
    (node,) = script.items[0].first.stages
    assert isinstance(node, If) and node.clauses[0][1] == body(simple("echo", "fi", "done"))


def test_lists_know_where_lines_end() -> None:
    """An error that abandons "the rest of the line" needs to know where the line ends (not part of ==)."""
    script = parse("a; b\nc & d\n\ne")
    assert [item.ends_line for item in script.items] == [False, True, False, True, True]
    assert parse("a;\nb").items[0].ends_line


COMPOUND_ERRORS = [
    ("if a; fi", 6, "unexpected 'fi' (expected 'then')"),
    ("if a; then b; done", 14, "unexpected 'done' (expected 'elif' or 'else' or 'fi')"),
    ("while a; do b; fi", 15, "unexpected 'fi' (expected 'done')"),
    ("fi", 0, "unexpected 'fi'"),
    ("a; done", 3, "unexpected 'done'"),
    ("}", 0, "unexpected '}'"),
    ("{a; }", 4, "unexpected '}'"),
    ("{ }", 2, "expected a command after '{', found '}'"),
    ("( )", 2, "expected a command after '(', found ')'"),
    ("if then", 3, "expected a command after 'if', found 'then'"),
    ("if a; then fi", 11, "expected a command after 'then', found 'fi'"),
    ("while a; do done", 12, "expected a command after 'do', found 'done'"),
    ("for 1x in a; do b; done", 4, "expected a variable name after 'for', found a word"),
    ("for x y; do b; done", 6, "expected 'do' to go with the 'for' at column 1, found a word"),
    ("for x in a > f; do b; done", 11, "expected ';' or a newline after the words of 'for', found '>'"),
    ("for ((i=0; i<3)); do a; done", 4, "expected 'for ((INIT; TEST; STEP))' (three expressions separated by ';')"),
    ("for ((i=0; i<3) ); do a; done", 4, "expected 'for ((INIT; TEST; STEP))'"),
    ("case x a) b;; esac", 7, "expected 'in' to go with the 'case' at column 1, found a word"),
    ("case x in a b) c;; esac", 12, "expected ')' to go with the 'case' at column 1, found a word"),
    ("case x in a) b;; ;; esac", 17, "expected a pattern, found ';;'"),
    ("case ; in", 5, "expected a word after 'case', found ';'"),
    ("f() echo", 4, "the body of function 'f' must be a compound command such as '{ ...; }', found a word"),
    ("function 1f { a; }", 9, "expected a function name after 'function', found a word"),
    ("function if { a; }", 9, "expected a function name after 'function', found 'if'"),
    ("if a; then b; fi c", 17, "expected ';', '&', '&&', '||', '|' or the end of the line, found a word"),
    ("{ a; } b", 7, "expected ';', '&', '&&', '||', '|' or the end of the line, found a word"),
    ("( a ) )", 6, "unexpected ')'"),
    ("a ;; b", 2, "unexpected ';;'"),
    ("(a;;)", 2, "unexpected ';;' (expected ')')"),
    ("echo $(fi)", 7, "unexpected 'fi' (expected ')')"),
    ("x=1 (a)", 4, "unexpected '(' (quote it to use it literally)"),
    ("if a; then b; fi\nfi", 17, "unexpected 'fi'"),
]


@pytest.mark.parametrize("line, position, expected", COMPOUND_ERRORS, ids=[repr(e[0]) for e in COMPOUND_ERRORS])
def test_compound_syntax_error(line: str, position: int, expected: str) -> None:
    with pytest.raises(ShellSyntaxError) as info:
        parse(line)
    assert (info.value.position, info.value.reason) == (position, expected)
    assert not info.value.incomplete
    assert not is_incomplete(line)


INCOMPLETE = [
    ("if a", 0, "unfinished 'if': expected 'then' before the end of input"),
    ("if a; then", 0, "unfinished 'if': expected a command after 'then' before the end of input"),
    ("if a; then b", 0, "unfinished 'if': expected 'fi' before the end of input"),
    ("if a; then b; else", 0, "unfinished 'if': expected a command after 'else' before the end of input"),
    ("x; while a; do", 3, "unfinished 'while': expected a command after 'do' before the end of input"),
    ("until a\ndo b\n", 0, "unfinished 'until': expected 'done' before the end of input"),
    ("for x in a b", 0, "unfinished 'for': expected 'do' before the end of input"),
    ("for x in do c", 0, "unfinished 'for': expected 'do' before the end of input"),
    ("for", 0, "unfinished 'for': expected a variable name before the end of input"),
    ("for ((i=0;", 0, "unfinished 'for': expected '))' before the end of input"),
    ("case x in", 0, "unfinished 'case': expected 'esac' before the end of input"),
    ("case x in a) b;;", 0, "unfinished 'case': expected 'esac' before the end of input"),
    ("case x in a", 0, "unfinished 'case': expected ')' before the end of input"),
    ("case", 0, "unfinished 'case': expected a word before the end of input"),
    ("{ a;", 0, "unfinished '{': expected '}' before the end of input"),
    ("( a", 0, "unfinished '(': expected ')' before the end of input"),
    ("f()", 0, "unfinished function 'f': expected its body before the end of input"),
    ("f() {", 4, "unfinished '{': expected a command after '{' before the end of input"),
    ("function f", 0, "unfinished function 'f': expected its body before the end of input"),
    ("function", 0, "unfinished 'function': expected a function name before the end of input"),
    ("echo 'a", 5, 'unterminated single quote (expected a closing "\'" before the end of input)'),
    ('echo "a\nb', 5, "unterminated double quote (expected a closing '\"' before the end of input)"),
    ("echo $(a", 5, "unfinished '$(': expected ')' before the end of input"),
    ("echo $(if a; then b", 7, "unfinished 'if': expected 'fi' before the end of input"),
    ("echo `a", 5, "unterminated '`' (expected a closing '`' before the end of input)"),
    ("echo $((1 +", 5, "unfinished '$((': expected '))' before the end of input"),
    ("((1 +", 0, "unfinished '((': expected '))' before the end of input"),
    ("echo ${", 5, "unterminated '${' (expected a variable name and a closing '}')"),
    ("a |", 3, "expected a command after '|'"),
    ("a &&", 4, "expected a command after '&&'"),
    ("a ||\n", 5, "expected a command after '||'"),
    ("a \\", 2, "expected a character after '\\' (it is the last character)"),
]


@pytest.mark.parametrize("line, position, expected", INCOMPLETE, ids=[repr(e[0]) for e in INCOMPLETE])
def test_incomplete_input(line: str, position: int, expected: str) -> None:
    """What a terminal answers with a continuation prompt; what a script reports, with a position."""
    assert is_incomplete(line)
    with pytest.raises(ShellSyntaxError) as info:
        parse(line)
    assert (info.value.position, info.value.reason) == (position, expected)
    assert info.value.incomplete


@pytest.mark.parametrize(
    "text", ["", "echo a", "if a; then b; fi", "echo `if a`", "echo $(a;;)", "fi", "a )", "${1a}", "a;;", "echo 'a'"]
)
def test_complete_or_unfixable_input(text: str) -> None:
    assert not is_incomplete(text)


def test_lines_joined_by_a_terminal_parse_as_one_script() -> None:
    lines = ["for i in 1 2", "do", "  if [ $i = 2 ]; then", "    echo two", "  fi", "done | wc -l"]
    for n in range(1, len(lines)):
        assert is_incomplete("\n".join(lines[:n])), lines[:n]
    script = parse("\n".join(lines))
    assert isinstance(script.items[0].first.stages[0], For)


def test_errors_in_backquotes_point_into_the_line() -> None:
    with pytest.raises(ShellSyntaxError) as info:
        parse("echo `a \\`b |\\``")
    assert info.value.position == 14  # the inner backquote closing 'b |'
    assert "expected a command after '|'" in info.value.reason


NESTED_TOO_DEEPLY = [
    "(" * 200 + "a" + ")" * 200,
    "$(" * 1000,
    "echo " + "$(echo " * (MAX_NESTING + 1) + ")" * (MAX_NESTING + 1),
    "if a; then " * 100,
    "{ " * 100 + "a;" + " }" * 100,
    "while a; do " * (MAX_NESTING + 1) + "b" + "; done" * (MAX_NESTING + 1),
    "f() { " * 100,
    "echo $((" + "(" * 100_000,
    "x=$(( " + "(" * 1000 + "1" + ")" * 1000 + " ))",
]


@pytest.mark.parametrize("text", NESTED_TOO_DEEPLY, ids=lambda t: t[:30] + f"...({len(t)})")
def test_nesting_is_bounded(text: str) -> None:
    """Deep nesting is a syntax error, never a RecursionError (how fast: benchmarks, not here)."""
    with pytest.raises(ShellSyntaxError) as info:
        parse(text[:MAX_LINE])
    assert "nested too deeply" in info.value.reason or info.value.incomplete


def test_nesting_below_the_limit_parses() -> None:
    depth = MAX_NESTING - 1
    script = parse("( " * depth + "a" + " )" * depth)
    check_round_trip(script)
    check_round_trip(parse("echo " + "$(echo " * depth + "x" + ")" * depth))


def test_long_flat_scripts_parse_whole() -> None:
    """Long flat scripts parse item by item (no recursion per item): every item is there."""
    assert len(parse("if a; then b; fi\n" * 2000).items) == 2000
    assert len(parse("echo $(a) $((1+2)) `b`;" * 1000).items) == 1000


# --- syntax errors ---------------------------------------------------------------

ERRORS = [
    ("ls |", 4, "expected a command after '|'"),
    ("ls | ;", 5, "expected a command after '|', found ';'"),
    ("| a", 0, "expected a command before '|'"),
    ("a && ", 5, "expected a command after '&&'"),
    ("a && || b", 5, "expected a command after '&&', found '||'"),
    ("a ||  # c", 9, "expected a command after '||'"),
    ("a;;", 1, "unexpected ';;'"),
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
    ("echo $(ls", 5, "unfinished '$(': expected ')' before the end of input"),
    ("echo `ls", 5, "unterminated '`'"),
    ('echo "`"', 6, "unterminated '`'"),
    ('echo "$(x', 6, "unfinished '$('"),
    ('echo "$(x"', 9, "unterminated double quote"),
    ("echo $(a;;)", 8, "unexpected ';;' (expected ')')"),
    ("echo `a |`", 9, "expected a command after '|' (inside '`...`')"),
    ("a (b)", 3, "expected ')' after 'a (', found a word"),
    ("a)", 1, "unexpected ')'"),
    ("echo (", 6, "expected ')' after 'echo (', found end of input"),
    ("a b (", 4, "unexpected '('"),
    ("a\\", 1, "expected a character after '\\'"),
    ("${a-b}", 2, "expected a variable name inside '${...}', found 'a-b'"),
    ("${}", 2, "expected a variable name"),
    ("${1a}", 2, "expected a variable name"),
    ("${#X}", 2, "modifiers are not supported"),
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
    ("echo '*'*", "\\**"),
    ("echo \\*x*", "\\*x*"),
    ("echo '['*", "\\[*"),
    ("echo $G*", "a\\?b*"),
    ('echo "$X"/*', "x y/*"),
    ("echo $?*", "3*"),
]


@pytest.mark.parametrize("line, pattern", GLOBS, ids=[g[0] for g in GLOBS])
def test_glob_pattern(line: str, pattern: str | None) -> None:
    assert glob_pattern(argument(line), ENV, 3) == pattern


def test_glob_pattern_matches_quoted_text_literally() -> None:
    pattern = glob_pattern(argument("echo 'a*['*"), {}, 0)
    assert pattern is not None
    assert match_glob("a*[.txt", pattern)
    assert not match_glob("abc[.txt", pattern)


@QUICK
@given(st.text().filter(lambda t: "\0" not in t), st.text(alphabet="ab*"))
def test_glob_escape_property(prefix: str, tail: str) -> None:
    """Quoted text matches exactly itself whatever characters it holds."""
    word = Word(canonical_parts([Q(prefix), L("*")]))
    pattern = glob_pattern(word, {}, 0)
    assert pattern is not None
    assert match_glob(prefix + tail, pattern)


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
    + ["$((", "((", "))", ";;", ";&", "~/", "$@", "$#", "$1", "`a`"]
    + [" if ", " then ", " elif ", " else ", " fi ", " while ", " until ", " do ", " done ", " for x in "]
    + [" case ", " in ", " esac ", "{ ", " }", "f() ", "function ", "! "]
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


# Valid lines built from fragments: quoting, variables, redirections, placement, substitutions.
ARG = st.sampled_from(
    [
        "a",
        "~/x",
        '"$@"',
        "$1",
        "$(a b)",
        '"$(a | b)"',
        "`c`",
        "$((1 + $N * (2)))",
        "fi",
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


# Compound commands built from valid pieces, nested: every one must parse and round-trip.


def _lists(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(
        lambda items, sep: sep.join(items),
        st.lists(children, min_size=1, max_size=2),
        st.sampled_from(["; ", " & ", "\n", " # note\n"]),
    )


def _compounds(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    body = _lists(children)
    compound = st.one_of(
        st.builds("{{ {}; }}".format, body),
        st.builds("( {} )".format, body),
        st.builds("if {}; then {}; fi".format, body, body),
        st.builds("if {}\nthen {}\nelif {}; then {}; else {}; fi".format, body, body, body, body, body),
        st.builds("while {}; do {}; done".format, body, body),
        st.builds("until {}\ndo\n{}\ndone".format, body, body),
        st.builds("for x in a 'b c' $Y; do {}; done".format, body),
        st.builds("for x; do {}; done".format, body),
        st.builds("for ((i = 0; i < $N; i++)); do {}; done".format, body),
        st.builds("case $x in a|'b') {};; (*) {} ;& esac".format, body, body),
        st.builds("f() {{ {}; }}".format, body),
        st.builds("function g {{ {}; }}".format, body),
        st.builds("g() ( {} )".format, body),
        st.builds("echo $({}) `echo q`".format, body),
        st.builds('x="$({})"'.format, body),
        st.just("(( x += 2 ))"),
    )
    suffix = st.sampled_from(["", " > out", " 2>&1 | wc -l", " && b"])
    return st.builds(lambda c, s: c + s, compound, suffix)


COMPOUND_LINES = st.recursive(command_lines(), _compounds, max_leaves=5)


@QUICK
@given(COMPOUND_LINES)
def test_round_trip_of_generated_compound_lines(line: str) -> None:
    script = parse(line)
    check_round_trip(script)
    assert not is_incomplete(line)


@settings(QUICK, max_examples=60)
@given(COMPOUND_LINES, st.integers(min_value=1))
def test_every_prefix_of_a_line_is_complete_or_not(line: str, cut: int) -> None:
    """A terminal asks for more only for a proper prefix that is unfinished: never a crash."""
    prefix = line[: cut % (len(line) + 1)]
    try:
        parse(prefix)
    except ShellSyntaxError as e:
        assert e.incomplete == is_incomplete(prefix)
        assert 0 <= e.position <= len(prefix)


# Generated ASTs with compound commands and substitutions, canonical by construction.
ARITH_TEXT = st.text(alphabet="0123456789+-*/ xyz<>=!&|?:%", min_size=1, max_size=6)


def arith_parts(scripts: st.SearchStrategy[Script]) -> st.SearchStrategy[tuple]:
    part = st.one_of(
        ARITH_TEXT.map(Q),
        st.builds(Param, VAR_NAME, st.just(True)),
        st.builds(CommandSub, scripts, st.just(True)),
    )
    return st.lists(part, max_size=3).map(canonical_parts)


def rich_words(scripts: st.SearchStrategy[Script]) -> st.SearchStrategy[Word]:
    part = st.one_of(
        UNQUOTED.map(L),
        QUOTED.map(Q),
        st.builds(Param, NAMES, st.booleans()),
        st.builds(CommandSub, scripts, st.booleans()),
        st.builds(ArithSub, arith_parts(scripts), st.booleans()),
    )
    plain = st.lists(part, min_size=1, max_size=3).map(canonical_parts).filter(bool).map(Word)
    tilde = st.builds(
        lambda user, rest: Word((Tilde(user),) + ((L("/" + rest),) if rest is not None else ())),
        st.sampled_from(["", "ann", "b.c"]),
        st.none() | UNQUOTED,
    )
    return plain | tilde


def compound_nodes(scripts: st.SearchStrategy[Script]) -> st.SearchStrategy[object]:
    full = scripts.map(lambda script: script if script.items else Script((one(B),)))
    words = rich_words(scripts)
    redirects = st.lists(REDIRECT, max_size=1).map(tuple)
    arith = arith_parts(scripts)
    item = st.builds(
        CaseItem, st.lists(words, min_size=1, max_size=2).map(tuple), scripts, st.sampled_from([";;", ";&", ";;&"])
    )
    compound = st.one_of(
        st.builds(Group, full, redirects),
        st.builds(Subshell, full, redirects),
        st.builds(If, st.lists(st.tuples(full, full), min_size=1, max_size=2).map(tuple), st.none() | full, redirects),
        st.builds(Loop, full, full, st.booleans(), redirects),
        st.builds(For, VAR_NAME, st.none() | st.lists(words, max_size=2).map(tuple), full, redirects),
        st.builds(ArithFor, arith, arith, arith, full, redirects),
        st.builds(Case, words, st.lists(item, max_size=2).map(tuple), redirects),
        st.builds(ArithCommand, arith, redirects),
    )
    return compound | st.builds(FunctionDef, VAR_NAME, compound)


def rich_scripts(children: st.SearchStrategy[Script]) -> st.SearchStrategy[Script]:
    scripts = st.deferred(lambda: children)  # (so that reprs name the children once, not once per use)
    words = rich_words(scripts)
    command = st.builds(
        lambda name, args, redirects: Command((name, *args), tuple(redirects)),
        words,
        st.lists(words, max_size=2),
        st.lists(REDIRECT, max_size=1),
    )
    stage = command | compound_nodes(scripts)
    pipeline = st.builds(
        lambda stages, negated: Pipeline(tuple(stages), negated), st.lists(stage, min_size=1, max_size=2), st.booleans()
    )
    rest = st.lists(st.tuples(st.sampled_from(["&&", "||"]), pipeline), max_size=1).map(tuple)
    and_or = st.builds(AndOr, pipeline, rest, st.booleans())
    return st.lists(and_or, max_size=2).map(lambda items: Script(tuple(items)))


RICH_SCRIPT = st.recursive(st.just(Script((one(A),))) | st.just(Script()), rich_scripts, max_leaves=4)


@settings(QUICK, max_examples=60)
@given(RICH_SCRIPT)
def test_round_trip_of_generated_compound_asts(script: Script) -> None:
    check_round_trip(script)
