"""The interpreter and built-ins against an in-memory file system (no network).

Programs (agents) need a real runtime: tests/integration/test_shell_ssh.py covers them;
programs inside loops and substitutions run over the fakes of test_shell_streams.py here.
Side by side with bash: tests/unit/test_shell_vs_bash_control.py.
"""

from __future__ import annotations

from twisted.internet import task

from oneos.shell.interpreter import Interpreter
from oneos.shell.session import Grid, Session
from oneos.shell.users import hash_password, verify_password
from oneos.testing.shell import FakeFS, Out


def make(fs: FakeFS | None = None, user: str = "ann"):
    fs = fs or FakeFS()
    out, err = Out(), Out()
    interp = Interpreter(Session(user, home="/home"), Grid(fs, None, None, None), out, err)
    return interp, out, err, fs


def run(interp: Interpreter, line: str) -> int:
    results: list = []
    interp.execute(line).addBoth(results.append)
    assert results, "the fake file system answers synchronously"
    return results[0]


def test_echo_variables_and_status():
    interp, out, err, _ = make()
    assert run(interp, 'X=hello; echo "$X" ${X}-world $?; false; echo $?') == 0
    assert out.text == "hello hello-world 0\n1\n"


def test_and_or_lists():
    interp, out, _, _ = make()
    run(interp, "true && echo a || echo b; false && echo c || echo d")
    assert out.text == "a\nd\n"


def test_cd_pwd_and_missing_directory():
    interp, out, err, _ = make()
    assert run(interp, "cd /tmp; pwd") == 0
    assert run(interp, "cd /nope") == 1
    assert out.text == "/tmp\n"
    assert "no such file" in err.text
    assert interp.session.cwd == "/tmp"


def test_redirections_to_oneos_files():
    interp, out, err, fs = make()
    run(interp, "cd /tmp; echo one > f; echo two >> f; cat < f; cat nope 2> e; cat nope > both 2>&1")
    assert fs.files["/tmp/f"] == b"one\ntwo\n"
    assert out.text == "one\ntwo\n"
    assert b"no such file" in fs.files["/tmp/e"] and b"no such file" in fs.files["/tmp/both"]


def test_builtin_pipelines_and_globs():
    interp, out, _, fs = make()
    fs.files.update({"/tmp/a.txt": b"1\n2\n3\n", "/tmp/b.txt": b"x\n", "/tmp/c.log": b""})
    run(interp, "cd /tmp; ls *.txt; cat a.txt | tail -n 2 | wc -l; echo '*.txt'")
    assert out.text.split() == ["a.txt", "b.txt", "2", "*.txt"]


def test_streaming_builtins_yes_head_tail_tee_wc():
    interp, out, err, fs = make()
    fs.files["/tmp/n"] = b"".join(b"%d\n" % i for i in range(1, 101))
    assert (
        run(interp, "cd /tmp; yes ab | head -n 2; tail -n 2 n | tee t1 | wc -l; head -n 1 < n; cat n | tail -n 1") == 0
    )
    assert out.text.split() == ["ab", "ab", "2", "1", "100"]
    assert fs.files["/tmp/t1"] == b"99\n100\n"
    assert run(interp, "yes | head -n 1 > /tmp/y; cat /tmp/y; yes | true") == 0
    assert out.text.endswith("100\ny\n") and err.text == ""
    assert run(interp, "cat /tmp/n > /nodir/f") == 1 and "no such file" in err.text


def test_syntax_errors_and_export():
    interp, out, err, _ = make()
    assert run(interp, "echo 'open") == 2
    assert "syntax error" in err.text
    run(interp, "export A=1; B=2")
    assert interp.session.agent_env({"C": "3"})["A"] == "1"
    assert "B" not in interp.session.agent_env({}) and interp.session.env["B"] == "2"


def test_exit_and_history():
    interp, out, _, _ = make()
    run(interp, "echo a")
    assert run(interp, "exit 9; echo never") == 9
    assert interp.exit_status == 9
    assert interp.session.history == ["echo a", "exit 9; echo never"]
    assert out.text == "a\n"


def test_sessions_are_separate():
    fs = FakeFS()
    a, b = make(fs)[0], make(fs)[0]
    run(a, "cd /tmp; X=1")
    assert b.session.cwd == "/home" and "X" not in b.session.env


def test_password_hashes():
    stored = hash_password("pw-1", n=2**10)
    assert verify_password("pw-1", stored) and not verify_password("pw-2", stored)
    assert not verify_password("pw-1", "garbage")


# --- the shell language: compound commands, functions, substitutions ----------------------------


def lines(interp: Interpreter, out, line: str) -> tuple[int, list[str]]:
    """Run *line* from a clean output; (status, the lines printed)."""
    out.data.clear()
    status = run(interp, line)
    return status, out.text.splitlines()


def test_if_elif_else():
    interp, out, err, _ = make()
    assert lines(interp, out, "if false; then echo a; elif true; then echo b; else echo c; fi") == (0, ["b"])
    assert lines(interp, out, "if false; then echo a; fi; echo $?") == (0, ["0"])
    assert lines(interp, out, "if true; then false; fi") == (1, [])
    assert lines(interp, out, "if ! false && [ 1 -lt 2 ]; then echo yes; fi") == (0, ["yes"])
    assert err.text == ""


def test_loops_break_and_continue_levels():
    interp, out, err, _ = make()
    assert lines(interp, out, "i=0; while [ $i -lt 3 ]; do echo $i; i=$((i+1)); done") == (0, ["0", "1", "2"])
    assert lines(interp, out, "i=0; until [ $i -eq 2 ]; do i=$((i+1)); done; echo $i") == (0, ["2"])
    loops = "for a in 1 2 3; do for b in x y z; do if [ $b = y ]; then continue 2; fi; echo $a$b; done; done"
    assert lines(interp, out, loops) == (0, ["1x", "2x", "3x"])
    assert lines(interp, out, "for a in 1 2; do while true; do break 2; done; echo no; done; echo $a") == (0, ["1"])
    assert lines(interp, out, "for a in 1 2; do break 9; done; echo $a") == (0, ["1"])  # (all the loops there are)
    assert lines(interp, out, "for a in 1 2; do false; done") == (1, [])
    assert err.text == ""
    assert lines(interp, out, "break; echo $?") == (0, ["0"])
    assert "only meaningful in a `for', `while', or `until' loop" in err.text
    assert lines(interp, out, "for a in 1; do break 0; echo $?; done") == (0, ["1"])
    assert "loop count out of range" in err.text


def test_for_over_globs_substitutions_and_positional_parameters():
    interp, out, _, fs = make()
    fs.files.update({"/home/a.txt": b"", "/home/b.txt": b"", "/home/c.log": b""})
    assert lines(interp, out, "for f in *.txt none*; do echo $f; done") == (0, ["a.txt", "b.txt", "none*"])
    assert lines(interp, out, 'for w in $(echo "a  b") "$(echo \'c  d\')"; do echo "[$w]"; done') == (
        0,
        ["[a]", "[b]", "[c  d]"],
    )
    assert lines(interp, out, "for x; do echo never; done; echo $?") == (0, ["0"])  # no positional parameters
    assert lines(interp, out, "f() { for x; do echo \"<$x>\"; done; echo $#; }; f 1 '2 3'") == (
        0,
        ["<1>", "<2 3>", "2"],
    )
    assert lines(interp, out, "for ((i = 0; i < 3; i += 2)); do echo $i; done; echo $i") == (0, ["0", "2", "4"])


def test_case_patterns_and_fall_through():
    interp, out, _, _ = make()
    script = "for w in apple b.txt '*' zz; do case $w in a*) echo A;; *.txt|*.log) echo T;; '*') echo S;; *) echo -;; esac; done"
    assert lines(interp, out, script) == (0, ["A", "T", "S", "-"])
    assert lines(interp, out, "case x in x) echo 1;& y) echo 2;; z) echo 3;; esac") == (0, ["1", "2"])
    assert lines(interp, out, "case x in x) echo 1;;& y) echo 2;; *) echo 3;; esac") == (0, ["1", "3"])
    assert lines(interp, out, "P='*'; case abc in $P) echo glob;; *) echo literal;; esac") == (0, ["literal"])
    assert lines(interp, out, "case q in a) echo a;; esac; echo $?") == (0, ["0"])


def test_functions_arguments_return_and_locals():
    interp, out, err, _ = make()
    run(interp, 'greet() { echo "hi $1 ($#): $@"; return 3; }')
    assert lines(interp, out, "greet ann 'b c'; echo $?") == (0, ["hi ann (2): ann b c", "3"])
    run(interp, "function count { local n=0; while [ $n -lt $1 ]; do n=$((n+1)); done; echo $n; }")
    assert lines(interp, out, "n=keep; count 4; echo $n") == (0, ["4", "keep"])
    assert lines(interp, out, 'f() { local v; echo "[$v]"; v=in; }; v=out; f; echo $v') == (0, ["[]", "out"])
    assert lines(interp, out, "f() { return 300; }; f; echo $?") == (0, ["44"])
    assert lines(interp, out, 'f() { echo "$1"; shift 2; echo "$# $1"; }; f a b c') == (0, ["a", "1 c"])
    assert lines(interp, out, "X=1 greet x > /tmp/o; echo [$X]; cat /tmp/o") == (0, ["[]", "hi x (1): x"])
    fib = "fib() { if [ $1 -lt 2 ]; then echo $1; else echo $(( $(fib $(($1 - 1))) + $(fib $(($1 - 2))) )); fi; }"
    assert lines(interp, out, fib + "; fib 10") == (0, ["55"])
    assert err.text == ""
    assert lines(interp, out, "local x=1; return 4; echo $?") == (0, ["2"])
    assert "local: can only be used in a function" in err.text
    assert "return: can only `return' from a function or sourced script" in err.text


def test_function_recursion_is_limited_like_bash():
    """Recursion that never ends stops at MAX_FUNCTION_DEPTH with bash's message; the rest of the line is dropped."""
    from oneos.shell.interpreter import MAX_FUNCTION_DEPTH

    interp, out, err, _ = make()
    assert lines(interp, out, "f() { f; }; f; echo same-line") == (1, [])
    assert err.text == f"oneos: f: maximum function nesting level exceeded ({MAX_FUNCTION_DEPTH})\n"
    assert lines(interp, out, "echo next line; f() { :; }; f") == (0, ["next line"])
    depth = "n=0; d() { n=$((n+1)); if [ $n -lt 900 ]; then d; fi; }; d; echo $n"
    assert lines(interp, out, depth) == (0, ["900"])  # deep, but within the limit: fresh stacks, no RecursionError


def test_function_recursion_with_a_reactor_gives_it_turns():
    """With a reactor, deep calls continue from its loop (fresh stacks) and give it turns on the way."""
    clock = task.Clock()
    scheduled: list = []
    call_later = clock.callLater

    def counted(delay: float, f, *args, **kw):
        scheduled.append(delay)
        return call_later(delay, f, *args, **kw)

    clock.callLater = counted  # type: ignore[method-assign]
    err = Out()
    interp = Interpreter(Session("ann", home="/home"), Grid(FakeFS(), None, None, clock), Out(), err)
    result: list = []
    interp.execute("f() { f; }; f").addBoth(result.append)
    assert not result and clock.getDelayedCalls()  # waiting on the reactor, not spinning
    while not result:
        clock.advance(0.001)
    assert result == [1] and len(scheduled) > 200
    assert "maximum function nesting level exceeded" in err.text


def test_subshells_and_pipeline_stages_do_not_leak():
    interp, out, _, _ = make()
    assert lines(interp, out, "cd /tmp; X=1; (cd /; X=2; echo $X; pwd); echo $X; pwd") == (0, ["2", "/", "1", "/tmp"])
    assert lines(interp, out, "(exit 3); echo $?; (f() { :; }); type=1") == (0, ["3"])
    assert lines(interp, out, 'x=$(cd /; Y=5; echo $Y); echo "$x[$Y]"; pwd') == (0, ["5[]", "/tmp"])
    assert lines(interp, out, "Z=1 | cat; cd / | cat; echo [$Z]; pwd") == (0, ["[]", "/tmp"])  # stages are subshells
    assert lines(interp, out, "exit 4 | cat; echo still here") == (0, ["still here"])
    assert interp.exit_status is None
    assert lines(interp, out, "{ cd /; Y=6; }; echo $Y; pwd") == (0, ["6", "/"])  # a group runs in the shell


def test_redirections_and_pipes_on_compound_commands():
    interp, out, err, fs = make()
    assert run(interp, "for i in 1 2 3; do echo $i; done > /tmp/n; while false; do :; done >> /tmp/n") == 0
    assert fs.files["/tmp/n"] == b"1\n2\n3\n"
    assert lines(interp, out, "i=0; while [ $i -lt 5 ]; do echo $i; i=$((i+1)); done | tail -n 2") == (0, ["3", "4"])
    assert lines(interp, out, "{ echo a; cat /nope; echo b; } > /tmp/o 2> /tmp/e; cat /tmp/o") == (0, ["a", "b"])
    assert b"no such file" in fs.files["/tmp/e"] and err.text == ""
    assert lines(interp, out, "if true; then echo x; fi 2>&1 | cat") == (0, ["x"])
    assert lines(interp, out, "cat /tmp/n | while false; do :; done; echo $?") == (0, ["0"])
    assert lines(interp, out, "for f in a b; do echo $f; done < /tmp/n") == (0, ["a", "b"])
    err.data.clear()
    assert lines(interp, out, "{ cat /nope; echo o; } 2>&1; f() { echo e >&2; }; f 2>&1") == (
        0,
        [
            "cat: /nope: no such file or directory",
            "o",
            "e",
        ],
    )
    assert err.text == ""  # (2>&1 at the top: into the session's stdout, not its stderr)


def test_command_substitution():
    interp, out, _, fs = make()
    fs.files["/tmp/f"] = b"one two\nthree\n\n\n"
    assert lines(interp, out, 'echo "[$(cat /tmp/f)]"') == (0, ["[one two", "three]"])
    assert lines(interp, out, "echo $(cat /tmp/f)") == (0, ["one two three"])
    assert lines(interp, out, "x=$(false); echo $? `echo back` $(echo $(echo nest))") == (0, ["1 back nest"])
    assert lines(interp, out, "echo a$(true)b $(true) c") == (0, ["ab c"])
    assert lines(interp, out, "x=$(exit 7); echo $?; echo $(exit 8) $?; echo $?") == (0, ["7", "8", "0"])
    assert lines(interp, out, 'x="$(echo a; echo b)"; echo "$x"') == (0, ["a", "b"])


def test_arithmetic_and_the_errors_that_abandon_a_line():
    interp, out, err, _ = make()
    assert lines(interp, out, "x=5; echo $((x += 2)) $x $((x++ * 2)) $x $((2 ** 62 * 4)) $((-7 / 2))") == (
        0,
        ["7 7 14 8 0 -3"],
    )
    assert lines(interp, out, "((y = 2 + 3)); echo $y; ((0)); echo $?") == (0, ["5", "1"])
    assert lines(interp, out, "echo $((1 / 0)); echo same line") == (1, [])
    assert err.text == 'oneos: 1 / 0: division by 0 (error token is "0")\n'
    assert lines(interp, out, "echo $((1 +))\necho next line") == (0, ["next line"])
    assert "syntax error: operand expected" in err.text
    assert lines(interp, out, "((1 / 0)); echo $?") == (0, ["1"])  # the command fails, the line goes on (bash)
    assert lines(interp, out, "(echo $((1 / 0))); echo $?") == (0, ["1"])  # a subshell ends, not the line


def test_tilde():
    interp, out, _, fs = make(user="ann")
    fs.files["/home/bob"] = None
    assert lines(interp, out, "echo ~ ~/x ~bob ~bob/y ~nobody 'a'~ \\~") == (
        0,
        ["/home /home/x /home/bob /home/bob/y ~nobody a~ ~"],
    )
    assert lines(interp, out, "cd /tmp; cd /; echo ~+ ~- ~-/x") == (0, ["/ /tmp /tmp/x"])
    assert lines(interp, out, "cd /tmp; cd ~bob; pwd; cd ~; pwd; A=~/z; echo $A") == (
        0,
        ["/home/bob", "/home", "/home/z"],
    )


def test_test_builtin_files_strings_numbers_and_usage():
    interp, out, err, fs = make()
    fs.files.update({"/tmp/f": b"x", "/tmp/empty": b""})
    checks = (
        "[ -e /tmp/f ]; [ -f /tmp/f ]; [ ! -d /tmp/f ]; [ -d /tmp ]; [ -s /tmp/f ]; [ ! -s /tmp/empty ]; "
        "[ -r /tmp/f ]; [ ! -w /tmp/f ]; [ ! -x /tmp/f ]; [ -x /tmp ]; [ ! -e /nope ]; [ -z '' ]; [ -n x ]; "
        "[ a = a -a b != c ]; [ 1 -lt 2 -o x ]; [ \\( 2 -ge 2 \\) ]; test abc \\< abd"
    )
    statuses = [lines(interp, out, f"{check}; echo $?")[1] for check in checks.split("; ")]
    assert statuses == [["0"]] * len(statuses)  # (the fake tree's files belong to root, mode 644: ann may not write)
    root, root_out, _, _ = make(fs, user="root")
    assert lines(root, root_out, "[ -w /tmp/f ]; echo $?") == (0, ["0"])
    assert lines(interp, out, "[ 1 -eq x ]; echo $?; [ a; echo $?; test -q x; echo $?") == (0, ["2", "2", "2"])
    assert "integer expression expected" in err.text and "missing `]'" in err.text


def test_an_endless_loop_yields_to_the_reactor_and_stops_with_ctrl_c():
    clock = task.Clock()
    out, err = Out(), Out()
    interp = Interpreter(Session("ann", home="/home"), Grid(FakeFS(), None, None, clock), out, err)
    result: list = []
    interp.execute("while true; do echo y > /tmp/y; done; echo never").addBoth(result.append)
    for _ in range(20):
        assert not result and clock.getDelayedCalls()  # waiting for its turn: the reactor runs in between
        clock.advance(0.001)
    interp.interrupt()
    clock.advance(0.001)
    assert result == [130]
    assert out.text == "" and not clock.getDelayedCalls()
    assert run_clocked(interp, clock, "echo after") == 0 and out.text == "after\n"


def run_clocked(interp: Interpreter, clock: task.Clock, line: str) -> int:
    result: list = []
    interp.execute(line).addBoth(result.append)
    while not result:
        clock.advance(0.001)
    return result[0]


def test_unfinished_scripts_are_syntax_errors_with_a_position():
    interp, out, err, _ = make()
    assert run(interp, "for i in 1 2\ndo\n  echo $i\n") == 2
    assert (
        err.text
        == "oneos: syntax error at line 1, column 1: unfinished 'for': expected 'done' before the end of input\n"
    )
    assert out.text == ""


def test_sourced_scripts_define_functions_and_return():
    interp, out, _, fs = make()
    fs.files["/tmp/lib.sh"] = b'greet() {\n  echo "hello $1"\n}\nif true; then\n  return 5\nfi\necho never\n'
    assert lines(interp, out, "source /tmp/lib.sh; echo $?; greet you") == (0, ["5", "hello you"])


def test_background_lists_run_in_a_copy_of_the_shell():
    interp, out, _, _ = make()
    run(interp, "cd /tmp; X=1")
    run(interp, "cd / & X=2 &")
    assert interp.session.cwd == "/tmp" and interp.session.env["X"] == "1"


def test_is_incomplete_is_what_a_terminal_needs():
    from oneos.shell.parser import is_incomplete

    typed = ["while true", "do", "  echo x", "done"]
    assert [is_incomplete("\n".join(typed[: n + 1])) for n in range(len(typed))] == [True, True, True, False]


# --- programs inside the language (the fake grid of test_shell_streams.py) -----------------------


def test_programs_inside_loops_groups_and_substitutions(monkeypatch):
    from test_shell_streams import Harness

    h = Harness(monkeypatch)
    assert h.run("for w in a b; do echo $w | upper @rt-1; done") == 0
    assert h.out.text == "A\nB\n" and [s["program"] for s in h.grid.spawned] == ["upper", "upper"]
    h.out.data.clear()
    assert h.run('x=$(echo hi | upper @rt-1); echo "[$x] $?"') == 0  # placement inside a substitution
    assert h.out.text == "[HI] 0\n"
    h.out.data.clear()
    assert h.run("for i in 1 2 3; do echo l$i; done | upper | xcat") == 0  # a loop feeding programs
    assert h.out.text == "L1\nL2\nL3\n"
    h.out.data.clear()
    assert h.run("{ echo a; echo b | upper; } > /tmp/o; cat /tmp/o; if true; then echo c | fail3; fi") == 3
    assert h.out.text == "a\nB\n" and "fail3: bad input" in h.err.text
    h.err.data.clear()
    assert h.run("for i in 1; do echo x | upper @rt-9; done") != 0  # the placement reached the scheduler
    assert "rt-9" in h.err.text


def test_ctrl_c_stops_a_loop_of_programs(monkeypatch):
    from test_shell_streams import TICK, Harness

    h = Harness(monkeypatch)
    result = h.start("while true; do echo y | xcat; done")
    for _ in range(200):
        h.clock.advance(TICK)
    assert not result and len(h.grid.spawned) > 3
    job = h.interp.foreground
    assert job is not None and len(job.agents) <= 1  # ended agents are not kept by a job that runs on
    h.interp.interrupt()
    for _ in range(20):
        h.clock.advance(TICK)
    assert result == [130] and h.grid.running() == []


def test_a_script_without_a_terminal_runs_multi_line_constructs_whole():
    """``ssh -T HOST < script``: a construct spread over lines is run once complete; an unfinished one at the
    end is run as it is, for its syntax error."""
    from oneos.shell.ssh import _ScriptShell
    from test_shell_lines import FakeInterp, FakeShell

    interp, ended = FakeInterp(), []
    script = _ScriptShell(interp, FakeShell(interp), ended.append)  # type: ignore[arg-type]
    script.dataReceived(b"for i in 1 2\ndo\n  echo $i\n")
    assert interp.ran == []
    script.dataReceived(b"done\necho x\nif true\n")
    assert interp.ran == ["for i in 1 2\ndo\n  echo $i\ndone"]
    interp.finish()
    assert interp.ran[-1] == "echo x"
    interp.finish()
    script.eof()
    assert interp.ran[-1] == "if true\n" and ended == []
    interp.finish(2)
    assert ended == [0]  # (the fake's session status: the real interpreter sets 2)
