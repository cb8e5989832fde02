"""The OneOS shell beside /bin/bash: the same line, the same files, the same stdout and exit status.

Each case runs twice: in the OneOS interpreter over an in-memory tree
(:func:`oneos.testing.shell.run_oneos`) and in bash over the same tree on
disk (:func:`oneos.testing.shell.run_bash_batch`: every case in one of two
bash processes, and one test per feature, so the file stays fast).  Both start in ``/w`` with
``HOME=/home/ann`` and ``LC_ALL=C``.  Compared: stdout, the exit status,
and whether stderr is empty (its wording is each shell's own).

The cases are written from the bash manual and POSIX, grouped by feature.
A case where OneOS differs on purpose carries :class:`Differs`: the phrase
that names the difference in docs/shell.md ("Differences from bash"), and
what OneOS prints instead, which is checked (so the documented behaviour is
tested too, and a difference that goes away is noticed).  There are no
skips and no xfails.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from oneos.fs.paths import match_name
from oneos.shell.expand import match_glob
from oneos.shell.interpreter import Interpreter
from oneos.shell.session import Grid, Session
from oneos.testing.shell import Out, PosixFakeFS, ShellRun, run_bash_batch, run_oneos

BASH = shutil.which("bash") or "/bin/bash"
DOC = Path(__file__).resolve().parents[2] / "docs" / "shell.md"

Files = dict[str, "bytes | None"]


@dataclass(frozen=True)
class Differs:
    """A documented difference: *doc* is found in docs/shell.md's "Differences from bash"; OneOS gives *stdout*/*status*."""

    doc: str
    stdout: str
    status: int = 0


@dataclass(frozen=True)
class Case:
    line: str
    files: Files = field(default_factory=dict)
    differs: Differs | None = None
    #: compare only the output lines matching this (sorted): for ``env``, whose bash side holds PATH, SHLVL ...
    only: str | None = None
    #: run by bash only, before the line (``shopt -s globstar``: what OneOS always does)
    bash_prelude: str = ""


# --- trees ---------------------------------------------------------------------

GLOB: Files = {
    f"/w/{name}": data
    for name, data in {
        "a.txt": b"alpha\n",
        "b.txt": b"beta\n",
        "c.log": b"log\n",
        ".hidden": b"h\n",
        "ab": b"",
        "abc": b"",
        "Ab": b"",
        "B": b"",
        "1": b"",
        "a-b": b"",
        "!x": b"",
        "#h": b"",
        "[x]": b"",
        "_u": b"",
        "d1/x.txt": b"x\n",
        "d1/y.log": b"y\n",
        "d1/.z": b"z\n",
        "d2/sub/deep.txt": b"deep\n",
    }.items()
}
TEXT: Files = {
    "/w/f3": b"one two\nthree\n",
    "/w/n": b"".join(b"%d\n" % i for i in range(1, 13)),
    "/w/nonl": b"a\nb",
    "/w/empty": b"",
    "/w/sp": b"  lead and  trail  \n\ttab\n",
    "/w/d1/in.txt": b"inside\n",
}
DIRS: Files = {"/w/d1/d11/f": b"f\n", "/w/d2": None, "/w/file": b"x\n"}


def C(line: str, files: Files | None = None, **kw: object) -> Case:  # noqa: N802 (a table reads better short)
    return Case(line, files if files is not None else {}, **kw)  # type: ignore[arg-type]


CASES: dict[str, list[Case]] = {
    "quoting": [
        C("echo 'a  b'  \"c  d\"  e"),
        C('echo "it\'s"'),
        C("echo 'say \"hi\"'"),
        C('echo "a\\"b"'),
        C("echo 'a\\b'"),
        C('echo "a\\\\b"'),
        C('echo "a\\$b"'),
        C("echo '$HOME'"),
        C("echo \"x\"'y'z"),
        C("echo ''"),
        C("echo '' | wc -c"),
        C('echo a""b'),
        C('echo "\\n"'),
        C('echo "a\\qb"'),
        C("echo a\\ \\ b"),
        C("echo \\'"),
        C('echo \\"'),
        C("echo \\\\"),
        C("echo 'x'\\''y'"),
        C('echo "$"'),
        C("echo $"),
        C("echo a$ b"),
        C("echo '#' #comment"),
        C("echo a#b"),
        C('echo "#"'),
        C("echo \\#x"),
        C('echo "a   b" | wc -c'),
        C("echo 'a;b' \"c|d\" 'e&f' '<g>'"),
        C("echo \"'\" '\"'"),
    ],
    "escapes": [
        C("echo \\a\\b\\c"),
        C("echo \\*", GLOB),
        C('echo "\\*"'),
        C("echo \\$HOME"),
        C('echo "\\$HOME"'),
        C("echo a\\\nb"),
        C("echo a \\\nb"),
        C("echo \\\\\\\\"),
        C("echo \\;"),
        C("echo \\|x"),
        C("echo \\ "),
        C("echo \\>f; ls", {}),
    ],
    "parameters": [
        C("X=1; echo $X"),
        C("X=1; echo ${X}y"),
        C("X=1; echo $Xy."),
        C("false; echo $?"),
        C("false; echo $?; echo $?"),
        C("true; echo $?"),
        C("echo $UNSET_ZZ."),
        C('echo "[$UNSET_ZZ]"'),
        C("X='a  b'; echo \"$X\""),
        C("X='a  b'; echo $X", differs=Differs("never word-split", "a  b\n")),
        C("X='*'; echo $X", GLOB, differs=Differs("never word-split nor globbed", "*\n")),
        C("X=a; echo $X*", GLOB),
        C("X=5; X=6; echo $X"),
        C("A=1 B=2; echo $A$B"),
        C("A=1 B=$A; echo $B"),
        C("A=1 B=$A C=$B; echo $A$B$C"),
        C('A=1 true; echo "[$A]"'),
        C("X=1; X=2 true; echo $X"),
        C('A=1 echo "[$A]"'),
        C("echo $USER"),
        C("echo $HOME"),
        C("echo $PWD"),
        C('X=hello; echo "$X"-"$X"'),
        C('X=1; echo "${X}"'),
        C("X=a; Y=$X$X; echo $Y"),
        C('X="a b"; Y=$X; echo "$Y"'),
        C('X=; echo "[$X]"'),
        C("X=''; echo \"[$X]\""),
        C("false; X=$?; echo $X"),
        C("X=$HOME; echo $X"),
        C("_a1=ok; echo $_a1"),
        C("X=1; echo $X$X$X"),
        C('echo "$?"'),
    ],
    "globs": [
        C("echo *", GLOB),
        C("echo *.txt", GLOB),
        C("echo ?.txt", GLOB),
        C("echo ??", GLOB),
        C("echo a*", GLOB),
        C("echo .*", GLOB),
        C("echo *z", GLOB),
        C("echo [ab].txt", GLOB),
        C("echo [a-c].*", GLOB),
        C("echo [!a].txt", GLOB),
        C("echo [^a].txt", GLOB),
        C("echo [[:upper:]]*", GLOB),
        C("echo [[:digit:]]", GLOB),
        C("echo [[:punct:]]*", GLOB),
        C("echo [[:alpha:]][[:alnum:]]", GLOB),
        C("echo [[:lower:]]?", GLOB),
        C("echo [[:space:]]*", GLOB),
        C("echo *[[:digit:]]*", GLOB),
        C("echo [![:alpha:]]*", GLOB),
        C("echo [[:alpha:][:digit:]]", GLOB),
        C("echo [\\!]x", GLOB),
        C("echo [\\[]x*", GLOB),
        C("echo []]*", GLOB),
        C("echo [!]]?", GLOB),
        C("echo [a-]*", GLOB),
        C("echo [-a]?b", GLOB),
        C("echo \\[x\\]", GLOB),
        C("echo '[x]'", GLOB),
        C("echo [[]x[]]", GLOB),
        C("echo d1/*", GLOB),
        C("echo */x.txt", GLOB),
        C("echo */*.log", GLOB),
        C("echo d1/.*", GLOB),
        C("echo d*/x*", GLOB),
        C('echo "*"', GLOB),
        C("echo '*'.txt", GLOB),
        C("echo \\*.txt", GLOB),
        C('echo *".txt"', GLOB),
        C('echo "a"*', GLOB),
        C("echo [xyz]q", GLOB),
        C("echo a[", GLOB),
        C("echo a[b", GLOB),
        C("echo ?hidden", GLOB),
        C("echo [.]hidden", GLOB),
        C("echo .h*", GLOB),
        C("echo d2/*/*", GLOB),
        C("echo */*/*.txt", GLOB),
        C("echo A*", GLOB),
        C("echo [A-Z]*", GLOB),
        C("echo [a-z]", GLOB),
        C("echo ?", GLOB),
        C("echo *.[tl][xo]?", GLOB),
        C("echo [[:alpha:]]", GLOB),
        C("echo [[:xdigit:]]*", GLOB),
        C("echo *[!a-z]", GLOB),
        C("echo **/*.txt", GLOB, bash_prelude="shopt -s globstar"),
        C("echo d2/**/*.txt", GLOB, bash_prelude="shopt -s globstar"),
        C(
            "echo **/*.txt",
            GLOB,
            differs=Differs("is always recursive", "a.txt b.txt d1/x.txt d2/sub/deep.txt\n"),
        ),
        C("cat *.txt", GLOB),
        C("cat [!a].txt *.log", GLOB),
        C("wc -l *.txt", GLOB),
        C("cd d1; echo *", GLOB),
        C("cd d1; echo ../a*", GLOB),
        C("echo ./*.txt", GLOB),
    ],
    "redirections": [
        C("echo a > f; cat f"),
        C("echo a>f; cat f"),
        C("echo a >> f; echo b >> f; cat f"),
        C("echo a > f; echo b > f; cat f"),
        C("echo a > f; cat < f"),
        C("echo a > f; cat 0< f"),
        C("echo a 1> f; cat f"),
        C("cat nofile 2> e; echo $?; wc -l < e"),
        C("cat nofile 2>&1 | wc -l"),
        C("cat nofile > o 2>&1; wc -l < o"),
        C("cat nofile 2>&1 > o | wc -l; wc -c < o"),
        C("echo x 1>&2"),
        C("echo x >&2"),
        C("echo x 2>&1 1>&2 | wc -l"),
        C("echo x 1>&2 2>&1 | wc -l"),
        C("echo x > d1", TEXT),
        C("echo x >> d1", TEXT),
        C("> d1", TEXT),
        C("cat < d1", TEXT),
        C("cat < nofile"),
        C("cat < nofile; echo $?"),
        C("echo x > nodir/f"),
        C("echo x > nodir/f; echo $?"),
        C('echo a > "f g"; cat "f g"'),
        C("echo a > 'f*'; cat 'f*'", GLOB),
        C("echo hi > *.log; cat c.log", GLOB),
        C("echo hi > *.txt; echo $?; cat a.txt", GLOB),
        C("echo hi > *.zzz; cat '*.zzz'", GLOB),
        C("cat < *.log", GLOB),
        C("cat < *.txt", GLOB),
        C("> f; wc -c < f"),
        C("echo a > f; > f; wc -c < f"),
        C("echo a > f > g; cat g; wc -c < f", differs=Differs("only the last is", "a\n", 1)),
        C("echo a 2>/dev/null", differs=Differs("no `/dev/null`", "a\n", 1)),
        C("wc -l < f3 > g; cat g", TEXT),
        C("cat f3 | wc -l > g; cat g", TEXT),
        C("echo a > f; cat f f > g; cat g"),
        C("echo x 2> e; wc -c < e"),
        C("echo a &> f; cat f", differs=Differs("`&>`", "", 2)),
        C("F='x y'; echo a > $F; cat \"x y\"", differs=Differs("never word-split", "a\n")),
        C("echo a > f; cat f > f; wc -c < f", differs=Differs("complete when the command ends", "2\n")),
        C("echo hi 3> f", differs=Differs("descriptors 0, 1 and 2", "", 1)),
    ],
    "pipelines": [
        C("echo a | cat"),
        C("echo a | cat | cat | cat"),
        C("false | true; echo $?"),
        C("true | false; echo $?"),
        C("echo abc | wc -c"),
        C("yes | head -n 3"),
        C("yes ab cd | head -n 2"),
        C("echo abc | head -c 2"),
        C("echo a | echo b"),
        C("cat nofile | wc -l"),
        C("cat nofile | cat; echo $?"),
        C("cat f3 | head -n 1 | wc -c", TEXT),
        C("! true; echo $?"),
        C("! false; echo $?"),
        C("! echo a | false; echo $?"),
        C("! true | true; echo $?"),
        C("yes | true; echo $?"),
        C("cat n | tail -n 2 | head -n 1", TEXT),
        C("echo a | tee f | cat; cat f"),
        C("cat f3 | cat - n | wc -l", TEXT),
        C("false | false | true"),
        C("true | true | false"),
    ],
    "lists": [
        C("true && echo a"),
        C("false && echo a"),
        C("false || echo b"),
        C("true || echo b"),
        C("false && echo a || echo b"),
        C("true && false || echo c"),
        C("true; false"),
        C("false; true"),
        C("echo a; echo b"),
        C("false || false && echo x"),
        C("true && false && echo x; echo $?"),
        C("echo a && false; echo $?"),
        C("false || true && echo y"),
        C("true || false && echo z"),
        C("false && true || false; echo $?"),
        C("echo a;echo b;"),
        C("echo a ; ; echo b"),
        C("echo a |"),
        C("| echo a"),
        C("&& echo a"),
        C("echo a &&"),
        C("echo 'open"),
        C('echo "open'),
        C("echo a; exit 3; echo b"),
        C("exit 4"),
        C("false; exit"),
        C("true & echo b"),
        C("true &"),
        C("true & true & echo done"),
        C("true &\necho b"),
        C("echo a\necho b"),
        C("# just a comment"),
        C(""),
        C("   "),
    ],
    "echo": [
        C("echo"),
        C("echo -n a"),
        C("echo -n"),
        C("echo -n a b; echo c"),
        C("echo -e 'a\\tb'"),
        C("echo -e 'a\\nb'"),
        C("echo -E 'a\\nb'"),
        C("echo 'a\\nb'"),
        C("echo -n -e 'x\\n'"),
        C("echo -ne 'x\\ty'"),
        C("echo -en 'p\\nq'"),
        C("echo -x"),
        C("echo -- a"),
        C("echo -nn a"),
        C("echo -n- a"),
        C("echo -e '\\x41\\x62'"),
        C("echo -e '\\0101\\060'"),
        C("echo -e 'a\\cb'; echo"),
        C("echo -e '\\\\'"),
        C("echo -e 'a\\qb'"),
        C("echo -e -n x; echo"),
        C("echo a -n"),
        C("echo -e '\\e' | wc -c"),
        C("echo -e 'a\\rb' | wc -c"),
        C("echo -eE 'a\\tb'"),
        C("echo -Ee 'a\\tb'"),
        C("echo -e"),
        C("echo -e 'x\\'"),
        C("echo - a"),
        C("echo a    b"),
        C("echo '-n'"),
    ],
    "printf": [
        C("printf 'a\\n'"),
        C("printf '%s\\n' a b c"),
        C("printf '%s-%s\\n' a b c"),
        C("printf '%d\\n' 42 -7"),
        C("printf '%5d|\\n' 42"),
        C("printf '%-5d|\\n' 42"),
        C("printf '%05d\\n' 42"),
        C("printf '%x %X %o\\n' 255 255 8"),
        C("printf '%c\\n' hello"),
        C("printf '%s\\n'"),
        C("printf '%d\\n'"),
        C("printf '[%5s][%-5s]\\n' ab cd"),
        C("printf '%.2s\\n' abcdef"),
        C("printf '%.3f\\n' 3.14159"),
        C("printf '%e\\n' 1234.5"),
        C("printf '%g\\n' 0.0001"),
        C("printf '%%\\n'"),
        C("printf '%b\\n' 'a\\tb'"),
        C("printf '%s\\n' 'a\\tb'"),
        C("printf 'no newline'"),
        C("printf '%q\\n' 'a b'"),
        C("printf '%q\\n' \"it's\""),
        C("printf '%q\\n' ''"),
        C("printf '%q\\n' plain"),
        C("printf '%d\\n' abc"),
        C("printf '%d\\n' 12abc"),
        C("printf '%i\\n' 0x1f"),
        C("printf '%d\\n' 010"),
        C("printf '%d\\n' \"'A\""),
        C("printf"),
        C("printf -- '%s\\n' x"),
        C("printf '\\x41\\101\\n'"),
        C("printf '%s %s\\n' one"),
        C("printf '%+d % d\\n' 5 5"),
        C("printf '%*d|\\n' 4 7"),
        C("printf '%u\\n' 7"),
        C("printf 'a%sb\\n' ''"),
        C("printf '%s' x | wc -c"),
        C("printf '%z\\n' 1"),
        C("printf '%b' 'x\\c' y; echo"),
        C("printf '%5.1f|\\n' 2.25"),
        C("printf '%s\\n' -n"),
        C("printf '%#o %#x %#X\\n' 8 255 255"),
        C("printf '%-6s|%6.2f|\\n' ab 3.14159"),
        C("printf '%.3d|%+.2e\\n' 5 12345"),
        C("printf '%s=%d\\n' a 1 b 2 c"),
        C("printf '%b\\n' '\\0101' '\\101' 'x\\ty'"),
        C("printf 'tab\\there\\n'"),
        C("printf '%s\\n' \"a b\" 'c'"),
        C("printf '%q\\n' 'a,b' '~x' '#a' 'a=b' '{x}'"),
        C("printf '%q\\n' \"$(printf 'a\\tb')\""),
        C("printf -v V '%s-%s' a b; echo $V"),
        C("printf -z; echo $?"),
        C("printf '%c%c\\n' ab cd"),
        C("printf '%5s|%-5s|\\n' long-word x"),
        C("printf '%d %d\\n' 1"),
        C("printf '%s\\n' \"'quoted'\""),
        C("printf '%x\\n' -1"),
        C("printf '%e\\n' abc; echo $?"),
    ],
    "cd": [
        C("cd d1; pwd", TEXT),
        C("cd d1; cd ..; pwd", TEXT),
        C("cd; pwd"),
        C("cd d1/; pwd", TEXT),
        C("cd nodir; echo $?"),
        C("cd f3; echo $?", TEXT),
        C("cd d1 d1; echo $?", TEXT),
        C("cd -; echo $?"),
        C("cd d1; cd -; pwd", TEXT),
        C("cd d1; cd - > d1/o; cat d1/o", TEXT),
        C("cd ../../../../../../../../../../..; pwd"),
        C("cd d1; cd ../..; pwd", TEXT),
        C("cd .; pwd"),
        C("cd ./d1/../d1; pwd", TEXT),
        C("cd d1; echo $OLDPWD", TEXT),
        C("cd d1; echo $PWD", TEXT),
        C("cd d1; cd -; echo $OLDPWD", TEXT),
        C("HOME=d1; cd; pwd", TEXT),
        C("unset HOME; cd; echo $?"),
        C("cd -P d1; pwd", TEXT),
        C("cd -L d1; pwd", TEXT),
        C("cd -- d1; pwd", TEXT),
        C("cd -z; echo $?"),
        C("pwd; pwd -L; pwd -P"),
        C("pwd -z; echo $?"),
        C("cd d1/d11; cd ../..; pwd", DIRS),
        C("cd d1/nope; echo $?; pwd", DIRS),
        C("cd file/x; echo $?", DIRS),
        C("cd d2 && pwd", DIRS),
        C("cd d1 | true; pwd", DIRS),
        C('X=1 | true; echo "[$X]"'),
        C("exit 3 | true; echo after"),
    ],
    "variables": [
        C("export T_A=1; env", only="^T_"),
        C("T_B=2; env", only="^T_"),
        C("export T_C; T_C=3; env", only="^T_"),
        C("T_D=4 env", only="^T_"),
        C("export T_E=5; unset T_E; env", only="^T_"),
        C("export T_F=1 T_G=2; env", only="^T_"),
        C("export T_H='a b'; env", only="^T_"),
        C("T_I=1; export T_I; env", only="^T_"),
        C("export T_J=1; T_J=2; env", only="^T_"),
        C("export T_K=1; export -n T_K; env", only="^T_"),
        C("export T_L=1; T_L=9 env", only="^T_"),
        C("T_M=1 T_N=$T_M env", only="^T_"),
        C("export T_O=x; export -p", only="T_O"),
        C("export T_P='say \"hi\"'; export", only="T_P"),
        C("export 1x=2; echo $?"),
        C("export -z; echo $?"),
        C("export T_Q=1; echo $T_Q"),
        C('X=1; unset X; echo "[$X]"'),
        C("unset NOPE_ZZ; echo $?"),
        C("unset 1x; echo $?"),
        C("unset -v X; echo $?"),
        C('X=1 Y=2; unset X Y; echo "[$X$Y]"'),
        C("export X=1 && echo $X"),
        C("export =x; echo $?"),
        C("export T_R=1; env -u T_R", only="^T_"),
        C("env T_S=1 T_T=2", only="^T_"),
        C("export T_U=1; env -i T_V=2"),
        C("unset -z; echo $?"),
        C("export T_W; export -p", only="T_W"),
        C("export -n NOPE_ZZ; echo $?"),
        C('X=1; export X; unset X; echo "[$X]"; env', only="^X="),
        C("export A1=1 2b=2 C3=3; echo $?; echo $A1$C3"),
    ],
    "wc": [
        C("wc f3", TEXT),
        C("wc -l f3", TEXT),
        C("wc -w f3", TEXT),
        C("wc -c f3", TEXT),
        C("wc -c < f3", TEXT),
        C("wc -lw f3", TEXT),
        C("wc -c -l f3", TEXT),
        C("echo hi | wc"),
        C("echo hi | wc -l"),
        C("echo hi | wc -lc"),
        C("wc -l f3 f3", TEXT),
        C("wc f3 n", TEXT),
        C("wc nofile; echo $?"),
        C("wc f3 nofile; echo $?", TEXT),
        C("printf 'a b' | wc -w"),
        C("printf 'a b' | wc -l"),
        C("wc -c f3 - < n", TEXT),
        C("wc < empty", TEXT),
        C("wc empty", TEXT),
        C("wc -l empty", TEXT),
        C("wc -w sp", TEXT),
        C("wc nonl", TEXT),
        C("wc -z f3; echo $?", TEXT),
        C("wc -m f3", TEXT),
        C("printf 'x y\\nz' | wc -m"),
        C("wc -- f3", TEXT),
        C("cat n | wc -l", TEXT),
        C("wc -lwc n f3 empty", TEXT),
    ],
    "head-tail": [
        C("head -n 3 n", TEXT),
        C("head -3 n", TEXT),
        C("head n", TEXT),
        C("head -c 5 n", TEXT),
        C("head -n 0 n; echo $?", TEXT),
        C("head -n -10 n", TEXT),
        C("head -n 2 f3 n", TEXT),
        C("head nofile; echo $?"),
        C("head -n x n; echo $?", TEXT),
        C("head -j n; echo $?", TEXT),
        C("head -n 1 < n", TEXT),
        C("cat n | head -2", TEXT),
        C("head -n1 n", TEXT),
        C("head -c 3 nonl; echo", TEXT),
        C("head -q -n 1 f3 n", TEXT),
        C("head -- -n", {"/w/-n": b"dash\n"}),
        C("tail -n 3 n", TEXT),
        C("tail -3 n", TEXT),
        C("tail n", TEXT),
        C("tail -n +11 n", TEXT),
        C("tail -n +1 f3", TEXT),
        C("tail -c 4 n", TEXT),
        C("tail -n 1 nonl; echo", TEXT),
        C("echo -n abc | tail -n 1; echo"),
        C("tail -n 1 f3 n", TEXT),
        C("tail nofile; echo $?"),
        C("tail -n 0 n; echo $?", TEXT),
        C("cat n | tail -n 2", TEXT),
        C("tail -j n; echo $?", TEXT),
        C("tail -n x n; echo $?", TEXT),
        C("head d1; echo $?", TEXT),
        C("tail d1; echo $?", TEXT),
        C("head -c -3 f3", TEXT),
        C("head -n -1 nonl", TEXT),
        C("head -n -0 f3", TEXT),
        C("tail -c +5 f3", TEXT),
        C("tail -c 0 f3; echo $?", TEXT),
        C("cat n | tail -c 3", TEXT),
        C("cat f3 | tail -n +2", TEXT),
        C("head -v -n 1 f3", TEXT),
        C("tail -q -n 1 f3 nonl; echo", TEXT),
        C("head -n 1 - f3 < n", TEXT),
        C("head -c x f3; echo $?", TEXT),
    ],
    "cat-tee": [
        C("cat f3", TEXT),
        C("cat f3 f3", TEXT),
        C("cat nofile; echo $?"),
        C("cat f3 nofile nonl; echo; echo $?", TEXT),
        C("cat - < f3", TEXT),
        C("echo x | cat - f3", TEXT),
        C("echo x | cat f3 -", TEXT),
        C("cat d1; echo $?", TEXT),
        C("cat empty | wc -c", TEXT),
        C("cat -- f3", TEXT),
        C("cat -z f3; echo $?", TEXT),
        C("echo a | tee f; cat f"),
        C("echo a | tee -a f > g; echo b | tee -a f > g; cat f g"),
        C("echo a | tee"),
        C("echo a | tee f g > h; cat f g h"),
        C("echo a | tee d1; echo $?", TEXT),
        C("echo a | tee -z f; echo $?"),
        C("cat -n f3 nonl", TEXT),
        C("cat -E f3", TEXT),
        C("cat -nE f3", TEXT),
        C("echo x | cat -n - f3", TEXT),
        C("cat -u f3", TEXT),
    ],
    "files": [
        C("mkdir x; cd x; pwd"),
        C("mkdir x; mkdir x; echo $?"),
        C("mkdir -p x/y/z; cd x/y/z; pwd"),
        C("mkdir a/b; echo $?"),
        C("mkdir; echo $?"),
        C("mkdir -z x; echo $?"),
        C("mkdir -p x x; echo $?"),
        C("touch t; wc -c < t"),
        C("touch; echo $?"),
        C("echo a > t; touch t; cat t"),
        C("touch nodir/t; echo $?"),
        C("rm file; cat file; echo $?", DIRS),
        C("rm nofile; echo $?"),
        C("rm -f nofile; echo $?"),
        C("rm; echo $?"),
        C("rm -f; echo $?"),
        C("rm d2; echo $?", DIRS),
        C("rm -r d1; cd d1; echo $?", DIRS),
        C("rm -rf d1 nofile; echo $?", DIRS),
        C("rm -z file; echo $?", DIRS),
        C("rm -- file; echo $?", DIRS),
        C("cp file f2; cat f2", DIRS),
        C("cp file d2; cat d2/file", DIRS),
        C("cp d1 d3; echo $?", DIRS),
        C("cp -r d1 d3; cat d3/d11/f", DIRS),
        C("cp file; echo $?", DIRS),
        C("cp nofile x; echo $?"),
        C("cp -z file x; echo $?", DIRS),
        C("cp file file2 nodir; echo $?", DIRS),
        C("mv file f2; cat f2; cat file; echo $?", DIRS),
        C("mv file d2; cat d2/file", DIRS),
        C("mv file; echo $?", DIRS),
        C("mv nofile x; echo $?"),
        C("mv -z file x; echo $?", DIRS),
        C("mv d2 d3; cd d3; pwd", DIRS),
        C("ls file", DIRS),
        C("ls file nofile; echo $?", DIRS),
        C("ls nofile; echo $?"),
        C("ls -z; echo $?"),
        C("ls d1/d11", DIRS),
        C("ls *.txt", GLOB),
        C("ls -1 a.txt b.txt", GLOB),
        C("ls d1", GLOB),
        C("ls -a d1", GLOB, differs=Differs("trailing `/`", "./\n../\n.z\nx.txt\ny.log\n")),
        C("ls -A d1", GLOB),
        C("ls", DIRS, differs=Differs("trailing `/`", "d1/\nd2/\nfile\n")),
        C("ls | wc -l", DIRS),
        C("ls -- file", DIRS),
        C("ls -d d1/d11", DIRS, differs=Differs("trailing `/`", "d1/d11/\n")),
        C("rm -d d2; cd d2; echo $?", DIRS),
        C("rm -d d1; echo $?", DIRS),
        C("touch a b; ls a b"),
        C("touch nodir/x ok; echo $?; ls ok"),
        C("mkdir m1 m2; cd m2; pwd"),
        C("cp -r d1 d2; cat d2/d1/d11/f", DIRS),
        C("mv file nodir/x; echo $?", DIRS),
    ],
    "builtins": [
        C("true; echo $?"),
        C("false; echo $?"),
        C("true extra args"),
        C("false extra"),
        C("exit 300"),
        C("exit -1"),
        C("exit abc"),
        C("exit 1x"),
        C("exit 1 2; echo $?", differs=Differs("returns 1 without exiting", "1\n")),
        C("env true; echo $?", differs=Differs("runs no command", "125\n")),
        C("echo 'echo hi; false' > s; source s"),
        C("echo 'X=5' > s; . s; echo $X"),
        C("echo 'exit 7' > s; . s; echo after"),
        C("source; echo $?"),
        C("source nofile; echo $?"),
        C("echo 'echo $?' > s; false; . s"),
        C("yes | head -n 2"),
        C("yes a b | head -n 1"),
        C("yes -- x | head -n 1"),
        C("yes '' | head -n 2 | wc -c"),
    ],
}


# --- the runs ------------------------------------------------------------------

IDS = [f"{group}-{n:02d}" for group, cases in CASES.items() for n in range(len(cases))]
ALL = dict(zip(IDS, (case for cases in CASES.values() for case in cases), strict=True))


@pytest.fixture(scope="module")
def bash_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ShellRun]:
    """Every case in bash at once (two bash processes), by id."""
    if not Path(BASH).exists():
        pytest.skip(f"no bash at {BASH}: the side-by-side comparison needs it")
    root = tmp_path_factory.mktemp("bash")
    lines = [(f"{c.bash_prelude}\n{c.line}" if c.bash_prelude else c.line, c.files) for c in ALL.values()]
    return dict(zip(ALL, run_bash_batch(lines, root, bash=BASH), strict=True))


def _shown(out: str, only: str | None) -> str:
    if only is None:
        return out
    return "".join(sorted(line + "\n" for line in out.splitlines() if re.search(only, line)))


def _differences_section() -> str:
    text = DOC.read_text()
    start = text.index("## Differences from bash")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def _problem(case: Case, ours: ShellRun, theirs: ShellRun) -> str | None:
    """What is wrong with one case, or None: the same stdout, status and (non-)empty stderr, or the documented difference."""
    got = (_shown(ours.stdout, case.only), ours.status)
    bash = (_shown(theirs.stdout, case.only), theirs.status)
    if case.differs is not None:
        if case.differs.doc not in _differences_section():
            return f"{case.differs.doc!r} is not in docs/shell.md's Differences from bash"
        if got != (case.differs.stdout, case.differs.status):
            return f"not the documented difference: {ours}"
        if bash == got:
            return "bash now agrees with OneOS: the difference is gone"
        return None
    if got != bash or bool(ours.stderr) != bool(theirs.stderr):
        return f"\n    oneos: {ours}\n    bash:  {theirs}"
    return None


@pytest.mark.parametrize("group", list(CASES))
def test_same_as_bash(group: str, bash_runs: dict[str, ShellRun]) -> None:
    """Every case of one feature: all of them are run, every mismatch is reported (one test per group keeps it fast)."""
    problems = []
    for n, case in enumerate(CASES[group]):
        case_id = f"{group}-{n:02d}"
        problem = _problem(case, run_oneos(case.line, case.files), bash_runs[case_id])
        if problem is not None:
            problems.append(f"{case_id} {case.line!r}: {problem}")
    assert not problems, "\n".join(problems)


def test_enough_cases() -> None:
    assert len(ALL) >= 250


def test_background_jobs_are_announced_at_a_terminal_only() -> None:
    """``cmd &`` prints nothing of its own unless the session is interactive; then the notices go to stderr."""
    quiet = run_oneos("true & echo b")
    assert (quiet.stdout, quiet.stderr) == ("b\n", "")
    fs = PosixFakeFS()
    out, err = Out(), Out()
    interp = Interpreter(Session("ann", home="/home"), Grid(fs, None, None, None), out, err)
    interp.interactive = True
    done: list[object] = []
    interp.execute("true &").addBoth(done.append)
    assert done == [0] and out.text == ""
    assert err.text.splitlines() == ["[1] started  true", "[1] done (0)  true"]


def test_glob_matcher_rules() -> None:
    """The pattern rules the store's glob and ``case`` share (oneos.fs.paths.glob_regex), beyond what the cases list."""
    assert match_glob("a/b", "a*b") and match_glob("\n", "?")  # (case: '*' and '?' match '/' and newline)
    assert match_glob("]", "[]]") and match_glob("b", "[!]a]") and not match_glob("a", "[!]a]")
    assert match_glob("-", "[a-]") and not match_glob("b", "[c-a]")  # a reversed range matches nothing
    assert not match_glob("a", "[[:nosuch:]]") and match_glob("[", "[")
    assert match_glob("x", "[[=x=]]") and match_glob("\\", "\\\\")
    assert not match_name(".h", "?h") and not match_name(".h", "[.]h") and match_name(".h", "\\.h")
