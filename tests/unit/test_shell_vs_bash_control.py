"""The shell language beside /bin/bash: if, loops, case, functions, groups, subshells, substitutions, test.

Each case runs in the OneOS interpreter over an in-memory tree
(:func:`oneos.testing.shell.run_oneos`) and in bash over the same tree on
disk (:func:`oneos.testing.shell.run_bash_batch`: all the cases in two bash
processes, once per module, so the file stays fast).  Compared: stdout, the
exit status, and whether anything was written to stderr (its wording is
each shell's own).  Only built-ins (echo, printf, test, cat, head, tail ...)
are used, so no runtime is needed.

The cases are written from the bash manual, grouped by construct.  What
OneOS does differently on purpose is listed in docs/shell.md ("Differences
from bash") and tested in tests/unit/test_shell_interpreter.py, not here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from oneos.testing.shell import ShellRun, run_bash_batch, run_oneos

BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed: nothing to compare the shell with")

#: The tree both shells start in (cwd /w, HOME /home/ann).
FILES: dict[str, bytes | None] = {
    "/w/f": b"data\n",
    "/w/empty": b"",
    "/w/d": None,
    "/w/a.txt": b"a\n",
    "/w/b.txt": b"b\n",
    "/w/c.log": b"c\n",
}

GROUPS: dict[str, list[str]] = {
    "if": [
        "if true; then echo yes; fi",
        'if false; then echo yes; fi; echo "status $?"',
        "if false; then echo a; elif true; then echo b; else echo c; fi",
        "if false; then echo a; elif false; then echo b; else echo c; fi",
        "if ! false; then echo negated; fi",
        "if true && false; then echo a; else echo b; fi",
        "if false || true; then echo a; fi",
        "if true; then false; fi; echo $?",
        "x=3; if [ $x -gt 2 ]; then echo big; fi",
        "if true\nthen\n  echo multi\nfi",
        "if if true; then false; fi; then echo a; else echo b; fi",
        "if true; then echo to-file; fi > out; cat out",
    ],
    "while": [
        "i=0; while [ $i -lt 3 ]; do echo $i; i=$((i+1)); done",
        "i=0; until [ $i -ge 3 ]; do echo $i; i=$((i+1)); done",
        "while false; do echo never; done; echo $?",
        "i=0; while true; do i=$((i+1)); if [ $i -eq 3 ]; then break; fi; done; echo $i",
        "i=0; while [ $i -lt 5 ]; do i=$((i+1)); if [ $i -eq 2 ]; then continue; fi; echo $i; done",
        "i=0; while [ $i -lt 2 ]; do i=$((i+1)); false; done; echo $?",
        "while :; do echo once; break; done; echo $?",
        "i=0; while [ $i -lt 3 ]; do echo $i; i=$((i+1)); done | tail -n 1",
        "i=0; while [ $i -lt 3 ]; do echo line$i; i=$((i+1)); done > out; cat out",
        "i=0\nwhile [ $i -lt 2 ]\ndo\n  echo $i\n  i=$((i+1))\ndone",
    ],
    "for": [
        "for x in a b c; do echo $x; done",
        "for x in; do echo never; done; echo $?",
        'for x in a \'b c\' "d e"; do echo "[$x]"; done',
        "for f in *.txt; do echo $f; done",
        "for f in *.none; do echo $f; done",
        "for x in a b; do for y in 1 2; do echo $x$y; done; done",
        "for x in 1 2 3 4; do if [ $x = 3 ]; then break; fi; echo $x; done",
        "for x in 1 2 3 4; do if [ $x = 2 ]; then continue; fi; echo $x; done",
        "for x in a b; do for y in 1 2 3; do if [ $y = 2 ]; then continue 2; fi; echo $x$y; done; done",
        "for x in a b; do for y in 1 2; do break 2; done; echo no; done; echo after $x",
        "for x in a b c; do :; done; echo $x",
        "for x in $(echo a b c); do echo $x; done",
        "for x in 1 2 3; do echo $x; done | tail -n 1",
        "for x in 1 2; do false; done; echo $?",
        "for ((i=0; i<3; i++)); do echo $i; done",
        "for ((i=10; i>0; i-=4)); do echo $i; done; echo $i",
        "for x in a b\ndo\n  echo $x\ndone",
    ],
    "case": [
        "case abc in a*) echo starts;; *) echo other;; esac",
        "case xyz in a*) echo a;; *z) echo z;; esac",
        "case b in a|b|c) echo abc;; esac",
        'case q in a) echo a;; esac; echo "st $?"',
        "case x in x) echo one;& y) echo two;; z) echo three;; esac",
        "case x in x) echo one;;& *) echo any;; esac",
        "case a.txt in *.txt) echo text;; *) echo other;; esac",
        "v=hello; case $v in h?llo) echo match;; esac",
        "case '*' in '*') echo star;; esac",
        'case abc in "a*") echo quoted;; *) echo literal;; esac',
        "case x in (x) echo paren;; esac",
        "case b in a) ;; b) ;; esac; echo $?",
        "case b in a) false;; b) false;; esac; echo $?",
        "case $(echo hi) in hi) echo subst;; esac",
        "case x in\n  x)\n    echo multi\n    ;;\nesac",
    ],
    "function": [
        'f() { echo "hi $1"; }; f there',
        "f() { echo $#; }; f a b c; f",
        "f() { echo \"$@\"; }; f 1 '2 3'",
        "f() { for a in \"$@\"; do echo \"[$a]\"; done; }; f x 'y z' ''",
        "f() { for a; do echo \"<$a>\"; done; }; f x 'y z'",
        "f() { return 3; }; f; echo $?",
        "f() { false; return; }; f; echo $?",
        "f() { echo in; return; echo no; }; f",
        "function g { echo g; }; g",
        "function h() { echo h; }; h",
        "f() { local x=1; echo $x; }; x=2; f; echo $x",
        "f() { x=inner; }; x=outer; f; echo $x",
        'f() { local a=1 b; echo "$a${b}"; }; f',
        "fact() { if [ $1 -le 1 ]; then echo 1; else echo $(( $1 * $(fact $(( $1 - 1 ))) )); fi; }; fact 5",
        'f() { echo "$1"; shift; echo "$1 $#"; }; f a b c',
        "f() { return 300; }; f; echo $?",
        "f() { echo out; } > out; f; cat out",
        "f() { echo $1; }; f $(echo x y)",
        "f() { g() { echo inner; }; }; f; g",
        'f() { echo $FOO; }; FOO=bar f; echo "[$FOO]"',
        "f() { echo $1; }; f a | tail -n 1",
        "count() { n=0; while [ $n -lt $1 ]; do n=$((n+1)); done; echo $n; }; count 4",
        "f() {\n  echo multi-line\n}\nf",
        "f() { shift 5; echo $?; }; f a",
    ],
    "group": [
        "{ echo a; echo b; }",
        "{ echo a; echo b; } | tail -n 1",
        "( echo sub )",
        "x=1; ( x=2; echo $x ); echo $x",
        "cd d; ( cd /; pwd ); pwd",
        "( exit 3 ); echo $?",
        "{ false; }; echo $?",
        "x=1; { x=2; }; echo $x",
        "( echo a; false ) || echo failed",
        "{ echo a; echo b; } > out; cat out",
        "( cd d && pwd ); pwd",
        "{ echo a; } && { echo b; }",
        "( ( echo deep ) )",
        "f() ( x=in; echo $x ); x=out; f; echo $x",
    ],
    "substitution": [
        "echo $(echo hello)",
        'echo "$(echo a; echo b)"',
        'x=$(echo "  spaced  "); echo "[$x]"',
        'echo "[$(echo a; echo; echo)]"',
        "echo $(echo a   b    c)",
        'echo "$(echo a   b)"',
        "x=$(false); echo $?",
        "x=$(exit 7); echo $?",
        "echo $(exit 3) $?; echo $?",
        "echo `echo back`",
        "echo $(echo $(echo nested))",
        "echo a$(echo b)c",
        "echo $(true) x",
        'echo "x$(true)y"',
        "cd d; x=$(cd /; pwd); echo $x; pwd",
        "echo $(x=5; echo $x) [$x]",
        'echo "$(echo \'q"uote\')"',
        'for w in $(echo "a b" c); do echo "<$w>"; done',
        "echo $(cat f)",
        "n=$(echo f | cat); echo [$n]",
    ],
    "arithmetic": [
        "echo $((1 + 2 * 3))",
        "echo $(( (1 + 2) * 3 ))",
        "echo $((7 / 2)) $((7 % 2)) $((-7 / 2)) $((2 ** 10))",
        "x=5; echo $((x + 1)) $(($x + 1))",
        "x=5; echo $((x += 2)) $x",
        "x=5; echo $((x++)) $x $((++x)) $((x--)) $((--x))",
        "echo $((1 < 2)) $((2 < 1)) $((1 == 1)) $((1 != 1))",
        "echo $((1 && 0)) $((1 || 0)) $((!0)) $((!5))",
        "echo $((1 ? 10 : 20)) $((0 ? 10 : 20))",
        "echo $((0x10)) $((010)) $((2#101))",
        "echo $((unset_var + 1))",
        "echo $((1 / 0)); echo after",
        "echo $((1 / 0)) | cat; echo after $?",
        "echo a | echo $((1 / 0)); echo after $?",
        "echo $((1--1)) $((2++2))",
        "((x = 3 * 4)); echo $x",
        "(( 0 )); echo $?; (( 5 )); echo $?",
        "a=b; b=7; echo $((a + 1))",
        "echo $((9223372036854775807 + 1))",
        "i=0; echo $((i++)) $((i++)) $i",
        "echo $(( 0 && 1 / 0 ))",
        "((1 / 0)); echo $?",
        "echo $((1 << 4)) $((255 & 15)) $((6 ^ 3)) $((~0))",
    ],
    "test": [
        "[ -e f ] && echo exists; [ -e nope ]; echo $?",
        "[ -f f ]; echo $?; [ -f d ]; echo $?",
        "[ -d d ]; echo $?; [ -d f ]; echo $?",
        "[ -s f ]; echo $?; [ -s empty ]; echo $?",
        "[ -r f ]; echo $?; [ -r nope ]; echo $?",
        "[ -x d ]; echo $?; [ -x f ]; echo $?",
        '[ -z "" ]; echo $?; [ -n "" ]; echo $?; [ -n x ]; echo $?',
        "[ a = a ]; echo $?; [ a != a ]; echo $?; [ a == b ]; echo $?",
        "[ 1 -eq 1 ]; echo $?; [ 2 -lt 1 ]; echo $?; [ 3 -ge 3 ]; echo $?; [ -5 -le -6 ]; echo $?",
        "[ ! -e nope ]; echo $?",
        "[ -e f -a -d d ]; echo $?; [ -e nope -o -d d ]; echo $?",
        "[ \\( -e f \\) ]; echo $?",
        "[ abc \\< abd ]; echo $?; [ b \\> a ]; echo $?",
        'test -n ""; echo $?; test x; echo $?; test; echo $?',
        "[ 1 -eq x ]; echo $?",
        "[ a; echo $?",
        "[ ]; echo $?; [ -n ]; echo $?; [ ! ]; echo $?; [ = ]; echo $?",
        "[ x = x -a y = z ]; echo $?; [ ! x = y ]; echo $?",
        "[ -q x ]; echo $?",
        "[ ' 12 ' -gt 3 ]; echo $?",
    ],
    "other": [
        "! true; echo $?",
        "! false; echo $?",
        "! false | true; echo $?",
        "break; echo $?",
        "continue; echo $?",
        "return; echo $?",
        "local x=1; echo $?",
        "f() { shift; echo $?; }; f",
        "echo ~ ~/x",
        "cd ~; pwd",
        "echo ~nosuchuser ~+ ~-",
        "cd d; cd ..; echo ~- ~+/f",
        "echo a; # comment\necho b",
        "x=1; x=$((x + 1)) && echo $x || echo no",
        "true && { echo a; false; } || echo b",
        ": ignored words; echo $?",
        "for i in 1 2; do ( if [ $i = 2 ]; then exit 5; fi; echo $i ); echo st $?; done",
        "for i in 1 2; do break | cat; echo $i; done; for i in 1 2; do x=$(break); echo $i; done",
        "for i in 1 2; do { break; } | cat; echo $i; done; for i in 1 2; do (continue); echo c$i; done",
        "f() { (return 3); echo $?; }; f",
    ],
}

CASES = [(group, line) for group, lines in GROUPS.items() for line in lines]


@pytest.fixture(scope="module")
def bash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ShellRun]]:
    """Every case's result in bash, run once for the module.

    The trees go to a tmpfs when there is one: a disk-backed /tmp makes the
    thousand small files of the cases cost seconds.
    """
    assert BASH is not None
    shm = "/dev/shm"
    with tempfile.TemporaryDirectory(prefix="oneos-vs-bash-", dir=shm if os.access(shm, os.W_OK) else None) as root:
        if not root.startswith(shm):
            root = str(tmp_path_factory.mktemp("bash"))
        results = run_bash_batch([(line, FILES) for _, line in CASES], Path(root), bash=BASH)
        yield {line: result for (_, line), result in zip(CASES, results, strict=True)}


def test_cases_are_many_and_distinct() -> None:
    assert len(CASES) >= 80
    assert len({line for _, line in CASES}) == len(CASES)


@pytest.mark.parametrize("group, line", CASES, ids=[f"{group}: {line[:60]}" for group, line in CASES])
def test_same_as_bash(group: str, line: str, bash: dict[str, ShellRun]) -> None:
    ours, theirs = run_oneos(line, FILES), bash[line]
    assert (ours.stdout, ours.status) == (theirs.stdout, theirs.status), f"bash's stderr: {theirs.stderr!r}"
    assert bool(ours.stderr) == bool(theirs.stderr), (ours.stderr, theirs.stderr)
