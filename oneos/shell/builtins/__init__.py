"""The shell's built-in commands, by topic, and the one table that names them.

* :mod:`~oneos.shell.builtins.files`: ls, cat, cp, mv, rm, mkdir, touch, chmod, chown, stat;
* :mod:`~oneos.shell.builtins.text`: echo, printf, yes, head, tail, wc, tee (text streams);
* :mod:`~oneos.shell.builtins.jobs`: ps, kill, pause, resume, jobs, fg, runtimes, pipes
  (jobs and programs);
* :mod:`~oneos.shell.builtins.session`: cd, pwd, env, export, unset, history, help, exit,
  source, whoami, clear, true, false (the session itself);
* :mod:`~oneos.shell.builtins.flow`: test, [, :, break, continue, return, local, shift
  (the language's own).

What a built-in sees is :class:`~oneos.shell.builtins.context.Context`; how
to write one is said there.  :data:`TABLE` below is the registry: a built-in
exists when it is listed here, under its names (the first is the one
``help`` lists, the others are aliases) with its line of usage.  The
interpreter looks commands up in :data:`BUILTINS` and gives ``help`` the
:data:`HELP` texts; it is the only module that imports this package's
registry, and no built-in imports the interpreter.
"""

from __future__ import annotations

import functools

from oneos.errors import describe
from oneos.shell.builtins import files, flow, jobs, session, text
from oneos.shell.builtins.context import Builtin, Context
from oneos.shell.builtins.options import BadUsage

#: (names, built-in, usage) for every built-in.
TABLE: tuple[tuple[tuple[str, ...], Builtin, str], ...] = (
    # -- files (files.py)
    (
        ("ls",),
        files.ls,
        "ls [-l] [-a|-A] [-d] [PATH...]   list directories (-l: mode, owner, size, mtime, name; -a: dot files, . and ..; "
        "-A: dot files; -d: directories themselves)",
    ),
    (
        ("cat",),
        files.cat,
        "cat [-n] [-E] [FILE...]   print files (or standard input, -; or devices, /dev/RUNTIME/NAME), streamed "
        "(-n: number the lines; -E: $ at their ends)",
    ),
    (("cp",), files.cp, "cp [-r] SRC... DEST   copy (-r: directories)"),
    (("mv",), files.mv, "mv SRC... DEST   move or rename"),
    (
        ("rm",),
        files.rm,
        "rm [-r] [-f] [-d] PATH...   remove files (-r: directories and their content; -d: empty directories)",
    ),
    (("mkdir",), files.mkdir, "mkdir [-p] DIR...   make directories (-p: parents too, no error if present)"),
    (("touch",), files.touch, "touch FILE...   create empty files (existing ones get a new mtime)"),
    (
        ("chmod",),
        files.chmod,
        "chmod MODE PATH...   change permission bits: octal (600, 755) or u/g/o/a with +-= rwxXst (u+x,go-r); "
        "the owner or root only",
    ),
    (("chown",), files.chown, "chown USER PATH...   give files to USER (root only)"),
    (("stat",), files.stat, "stat PATH...   a file's metadata as JSON"),
    # -- text streams (text.py)
    (("echo",), text.echo, "echo [-neE] WORDS...   print words (-n: no newline; -e: backslash escapes)"),
    (
        ("printf",),
        text.printf,
        "printf FORMAT [ARGS...]   format and print ARGS (%s %d %i %u %o %x %X %c %f %e %g %b %q, widths, flags; "
        "the format is reused for the remaining ARGS)",
    ),
    (("yes",), text.yes, "yes [STRING...]   print STRING (default: y) over and over, until the reader stops or Ctrl-C"),
    (
        ("head",),
        text.head,
        "head [-n N] [-c N] [-q|-v] [FILE...]   first N lines (default 10); -c: first N bytes; "
        "-n -N / -c -N: all but the last N",
    ),
    (
        ("tail",),
        text.tail,
        "tail [-n N] [-c N] [-f] [-q|-v] [FILE...]   last N lines (default 10) or bytes; -n +N / -c +N: from the Nth on; "
        "-f: then what is appended to FILE, until Ctrl-C",
    ),
    (("wc",), text.wc, "wc [-l] [-w] [-m] [-c] [FILE...]   count lines, words, characters, bytes"),
    (("tee",), text.tee, "tee [-a] FILE...   copy standard input to files and to the output, streamed"),
    # -- jobs and programs (jobs.py)
    (("ps",), jobs.ps, "ps [-a]   agents running anywhere in the network (-a: recently ended too)"),
    (("kill",), jobs.kill, "kill ID...   stop agents (SIGTERM, then SIGKILL); %N for a job"),
    (("pause",), jobs.pause, "pause ID...   pause agents (SIGSTOP)"),
    (("resume",), jobs.resume, "resume ID...   resume paused agents (SIGCONT)"),
    (("jobs",), jobs.jobs, "jobs   background jobs of this session"),
    (("fg",), jobs.fg, "fg [N]   wait for background job N (default: the latest) in the foreground"),
    (("runtimes", "rs"), jobs.runtimes, "runtimes   the runtimes of the network"),
    (("pipes",), jobs.pipes, "pipes   pipes between agents: bytes carried and rate"),
    # -- the session (session.py)
    (("cd",), session.cd, "cd [DIR]   change directory (default: $HOME; '-': $OLDPWD, printed)"),
    (("pwd",), session.pwd, "pwd        print the current directory"),
    (("env",), session.env, "env [-i] [-u NAME] [NAME=VALUE...]   the environment programs get (exported variables)"),
    (
        ("export",),
        session.export,
        "export [-n] [-p] NAME[=VALUE]...   pass variables to the programs this shell starts (-n: stop)",
    ),
    (("unset",), session.unset, "unset [-v|-f] NAME...   forget variables (-f: functions)"),
    (("history",), session.history, "history   lines typed in this session"),
    (("help",), session.help_, "help [COMMAND]   what the built-ins do"),
    (("exit", "logout"), session.exit_, "exit [N]   end the session with status N (default: the last status)"),
    (("source", "."), session.source, "source FILE   run a OneOS file's lines in this session"),
    (("whoami",), session.whoami, "whoami   the user of this session"),
    (("clear",), session.clear, "clear   clear the screen"),
    (("true",), session.true, "true   do nothing, successfully"),
    (("false",), session.false, "false   do nothing, unsuccessfully"),
    # -- the language's own (flow.py)
    ((":",), flow.colon, ":   do nothing, successfully (while :; do ...)"),
    (
        ("test",),
        flow.test,
        "test EXPR   0 if EXPR is true: -e -f -d -r -w -x -s PATH, -z -n S, S = S, N -eq N, !, -a, -o",
    ),
    (("[",), flow.bracket, "[ EXPR ]   test EXPR"),
    (("break",), flow.break_, "break [N]   leave the N innermost loops"),
    (("continue",), flow.continue_, "continue [N]   the next turn of the Nth enclosing loop"),
    (("return",), flow.return_, "return [N]   end the function or sourced file with status N (default: the last one)"),
    (("local",), flow.local, "local NAME[=VALUE]...   variables of the running function, restored when it returns"),
    (("shift",), flow.shift, "shift [N]   drop the first N positional parameters ($1 ...)"),
)


def _usage_status(builtin: Builtin) -> Builtin:
    """*builtin*, answering a :class:`BadUsage` with its message and its own status (2 for bash's built-ins).

    Other errors keep the interpreter's treatment (one line, status 1).
    """

    @functools.wraps(builtin)
    async def run(ctx: Context, args: list[str]) -> int:
        try:
            return await builtin(ctx, args)
        except BadUsage as e:
            ctx.error(describe(e))
            return e.status

    return run


#: Every name (aliases too) -> its built-in.
BUILTINS: dict[str, Builtin] = {name: _usage_status(fn) for names, fn, _ in TABLE for name in names}
#: Every built-in's first name -> its line of usage (with its aliases), for ``help``.
HELP: dict[str, str] = {
    names[0]: usage + (f"  (also: {', '.join(names[1:])})" if names[1:] else "") for names, _, usage in TABLE
}
