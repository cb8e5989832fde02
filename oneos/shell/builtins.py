"""The shell's built-in commands: files, processes, runtimes and the session itself.

Each built-in is ``async def name(ctx, args) -> int``.  File commands work on
the OneOS tree through :class:`oneos.fs.client.FSClient`, with relative
paths taken from the session's cwd; process commands ask the scheduler.
Built-ins see their standard input as bytes (``await ctx.input()``: what
the previous stage wrote, or, for the first stage, the session's input read
to its end) and write through ``ctx.out`` / ``ctx.err``; a typed
:class:`OneOSError` raised here becomes ``NAME: message`` and status 1.
Built-ins that wait (``tail -f``, reading typed input) wait through
``ctx.job`` so Ctrl-C and a vanished client end them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from oneos.errors import OneOSError, describe
from oneos.fs import paths
from oneos.fs.errors import FSError

Builtin = Callable[["Context", list[str]], Awaitable[int]]
BUILTINS: dict[str, Builtin] = {}
HELP: dict[str, str] = {}


class UsageError(OneOSError):
    """Wrong options or arguments for a built-in."""


def builtin(name: str, usage: str, *aliases: str) -> Callable[[Builtin], Builtin]:
    def register(fn: Builtin) -> Builtin:
        for n in (name, *aliases):
            BUILTINS[n] = fn
        HELP[name] = usage + (f"  (also: {', '.join(aliases)})" if aliases else "")
        return fn

    return register


class Context:
    """One built-in invocation: its session, input and output writers, the job it belongs to."""

    def __init__(self, interp: Any, name: str, stdin: bytes | None, out: Any, err: Any, assignments: dict[str, str],
                 job: Any = None, source: Any = None) -> None:
        from oneos.shell.interpreter import Job

        self.interp = interp
        self.session = interp.session
        self.grid = interp.grid
        self.fs = interp.grid.fs
        self.name = name
        self.stdin = stdin
        self.out = out
        self.err = err
        self.assignments = assignments
        self.job = job if job is not None else Job(0, name)
        #: the session's input (a transfer Source) when this is a pipeline's first stage, else None
        self.source = source

    async def input(self) -> bytes:
        """Standard input as bytes: the pipe's, else the session's read to its end (Ctrl-D / EOF)."""
        if self.stdin is None and self.source is not None:
            from oneos.shell.interpreter import MAX_CAPTURE, ShellError

            parts, size = [], 0
            while True:
                data = await self.job.wait(self.source.next())
                if not data:
                    break
                size += len(data)
                if size > MAX_CAPTURE:
                    raise ShellError(f"input larger than {MAX_CAPTURE // 2**20} MiB")
                parts.append(data)
            self.stdin = b"".join(parts)
        return self.stdin or b""

    async def sleep(self, seconds: float) -> None:
        """Wait on the reactor's clock; Ctrl-C (or the client leaving) ends the wait with CancelledError."""
        from twisted.internet import task

        await self.job.wait(task.deferLater(self.grid.reactor, seconds, lambda: None))

    def path(self, p: str) -> str:
        return paths.normalise(p, self.session.cwd)

    def write(self, text: str) -> None:
        self.out.write(text.encode("utf-8", "replace"))

    def line(self, text: str = "") -> None:
        self.write(text + "\n")

    def error(self, text: str) -> None:
        self.err.write(f"{self.name}: {text}\n".encode("utf-8", "replace"))


def split_options(args: list[str], known: str, with_value: str = "") -> tuple[dict[str, str | bool], list[str]]:
    """Short options (``-la``, ``-n 5``, ``-n5``, ``-5`` for ``-n 5``); ``--`` ends them."""
    opts: dict[str, str | bool] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest.extend(args[i + 1:])
            break
        if len(a) > 1 and a.startswith("-") and a != "-":
            if "n" in with_value and a[1:].isdigit():
                opts["n"] = a[1:]
                i += 1
                continue
            j = 1
            while j < len(a):
                c = a[j]
                if c in with_value:
                    value = a[j + 1:] or (args[i + 1] if i + 1 < len(args) else None)
                    if value is None:
                        raise UsageError(f"option -{c} needs a value")
                    if not a[j + 1:]:
                        i += 1
                    opts[c] = value
                    break
                if c not in known:
                    raise UsageError(f"unknown option -{c}")
                opts[c] = True
                j += 1
        else:
            rest.append(a)
        i += 1
    return opts, rest


def _count(value: str | bool | None, default: int) -> int:
    if value is None or value is True:
        return default
    try:
        n = int(str(value))
    except ValueError:
        raise UsageError(f"{value!r} is not a number") from None
    if n < 0:
        raise UsageError(f"{value!r} is not a count")
    return n


async def _inputs(ctx: Context, files: list[str]) -> list[tuple[str, bytes]]:
    """(name, bytes) of each file, or of stdin when no file (or ``-``) is given."""
    out = []
    for name in files or ["-"]:
        if name == "-":
            out.append(("-", await ctx.input()))
        else:
            out.append((name, await ctx.fs.read(ctx.path(name))))
    return out


# -- navigation ---------------------------------------------------------------


@builtin("cd", "cd [DIR]   change directory (default: home; '-' for the previous one)")
async def cd(ctx: Context, args: list[str]) -> int:
    if len(args) > 1:
        raise UsageError("too many arguments")
    target = args[0] if args else ctx.session.home
    if target == "-":
        target = ctx.session.env.get("OLDPWD", ctx.session.cwd)
    path = ctx.path(target)
    st = await ctx.fs.stat(path)
    if not st.is_dir:
        raise UsageError(f"{path}: not a directory")
    ctx.session.set_cwd(path)
    return 0


@builtin("pwd", "pwd        print the current directory")
async def pwd(ctx: Context, args: list[str]) -> int:
    ctx.line(ctx.session.cwd)
    return 0


def _mode_text(st: Any) -> str:
    bits = "rwxrwxrwx"
    perm = "".join(bits[i] if st.mode & (1 << (8 - i)) else "-" for i in range(9))
    return ("d" if st.is_dir else "-") + perm


def _long(st: Any, name: str) -> str:
    when = time.strftime("%b %d %H:%M", time.localtime(st.mtime))
    return f"{_mode_text(st)} {st.owner:<8} {st.size:>10} {when} {name}"


@builtin("ls", "ls [-l] [-a] [PATH...]   list directories (-l long form, -a dot files too)")
async def ls(ctx: Context, args: list[str]) -> int:
    opts, targets = split_options(args, "la1")
    status = 0
    targets = targets or ["."]
    files, dirs = [], []
    for t in targets:
        try:
            st = await ctx.fs.stat(ctx.path(t))
        except FSError as e:
            ctx.error(describe(e))
            status = 1
            continue
        (dirs if st.is_dir else files).append((t, st))
    for t, st in files:
        ctx.line(_long(st, t) if opts.get("l") else t)
    for n, (t, st) in enumerate(dirs):
        if len(targets) > 1:
            ctx.line(("\n" if n or files else "") + f"{t}:")
        entries = await ctx.fs.listdir(st.path)
        for e in sorted(entries, key=lambda e: e.name):
            if e.name.startswith(".") and not opts.get("a"):
                continue
            shown = e.name + ("/" if e.is_dir and not opts.get("l") else "")
            ctx.line(_long(e, e.name) if opts.get("l") else shown)
    return status


# -- files ------------------------------------------------------------------------


class _OutSink:
    """Streams a file straight to the writer (``cat`` of a large file)."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def write(self, data: bytes) -> Any:
        from twisted.internet import defer

        self.writer.write(data)
        return defer.succeed(None)

    def finish(self) -> Any:
        from twisted.internet import defer

        return defer.succeed({})

    def abort(self) -> None:
        pass


@builtin("cat", "cat [FILE...]   print files (or standard input)")
async def cat(ctx: Context, args: list[str]) -> int:
    status = 0
    for name in args or ["-"]:
        if name == "-":
            ctx.out.write(await ctx.input())
            continue
        try:
            await ctx.fs.read_into(ctx.path(name), _OutSink(ctx.out))
        except FSError as e:
            ctx.error(describe(e))
            status = 1
    return status


@builtin("echo", "echo [-n] WORDS...   print words")
async def echo(ctx: Context, args: list[str]) -> int:
    newline = True
    if args and args[0] == "-n":
        newline, args = False, args[1:]
    ctx.write(" ".join(args) + ("\n" if newline else ""))
    return 0


@builtin("mkdir", "mkdir [-p] DIR...   make directories (-p: parents too, no error if present)")
async def mkdir(ctx: Context, args: list[str]) -> int:
    opts, names = split_options(args, "p")
    if not names:
        raise UsageError("missing directory name")
    status = 0
    for name in names:
        try:
            await ctx.fs.mkdir(ctx.path(name), parents=bool(opts.get("p")), exist_ok=bool(opts.get("p")))
        except FSError as e:
            ctx.error(describe(e))
            status = 1
    return status


@builtin("rm", "rm [-r] [-f] PATH...   remove files (-r: directories and their content)")
async def rm(ctx: Context, args: list[str]) -> int:
    opts, names = split_options(args, "rRf")
    if not names and not opts.get("f"):
        raise UsageError("missing operand")
    status = 0
    for name in names:
        try:
            await ctx.fs.remove(ctx.path(name), recursive=bool(opts.get("r") or opts.get("R")))
        except FSError as e:
            if opts.get("f") and getattr(e, "code", "") == "ENOENT":
                continue
            ctx.error(describe(e))
            status = 1
    return status


async def _into(ctx: Context, sources: list[str], dest: str) -> list[tuple[str, str]]:
    """(src, dst) pairs: into *dest* when it is a directory, else to it (one source only)."""
    target = ctx.path(dest)
    is_dir = False
    try:
        is_dir = (await ctx.fs.stat(target)).is_dir
    except FSError:
        pass
    if len(sources) > 1 and not is_dir:
        raise UsageError(f"{target}: not a directory (several sources)")
    pairs = []
    for s in sources:
        src = ctx.path(s)
        pairs.append((src, paths.join(target, paths.basename(src)) if is_dir else target))
    return pairs


@builtin("mv", "mv SRC... DEST   move or rename")
async def mv(ctx: Context, args: list[str]) -> int:
    _, names = split_options(args, "f")
    if len(names) < 2:
        raise UsageError("usage: mv SRC... DEST")
    status = 0
    for src, dst in await _into(ctx, names[:-1], names[-1]):
        try:
            await ctx.fs.rename(src, dst)
        except FSError as e:
            ctx.error(describe(e))
            status = 1
    return status


@builtin("cp", "cp [-r] SRC... DEST   copy (-r: directories)")
async def cp(ctx: Context, args: list[str]) -> int:
    opts, names = split_options(args, "rRf")
    if len(names) < 2:
        raise UsageError("usage: cp [-r] SRC... DEST")
    status = 0
    for src, dst in await _into(ctx, names[:-1], names[-1]):
        try:
            await ctx.fs.copy(src, dst, recursive=bool(opts.get("r") or opts.get("R")))
        except FSError as e:
            ctx.error(describe(e))
            status = 1
    return status


@builtin("touch", "touch FILE...   create empty files (existing ones get a new mtime)")
async def touch(ctx: Context, args: list[str]) -> int:
    if not args:
        raise UsageError("missing file operand")
    for name in args:
        await ctx.fs.write(ctx.path(name), b"", "append")
    return 0


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


@builtin("head", "head [-n N] [FILE...]   first N lines (default 10)")
async def head(ctx: Context, args: list[str]) -> int:
    opts, files = split_options(args, "", "n")
    n = _count(opts.get("n"), 10)
    inputs = await _inputs(ctx, files)
    for i, (name, data) in enumerate(inputs):
        if len(inputs) > 1:
            ctx.line(("\n" if i else "") + f"==> {name} <==")
        ctx.out.write(b"".join(_lines(data)[:n]))
    return 0


#: How often ``tail -f`` looks at the file's size (seconds of the reactor's clock).
FOLLOW_INTERVAL = 0.5


@builtin("tail", "tail [-n N] [-f] [FILE...]   last N lines (default 10); -f: then what is appended to FILE, until Ctrl-C")
async def tail(ctx: Context, args: list[str]) -> int:
    opts, files = split_options(args, "fF", "n")
    n = _count(opts.get("n"), 10)
    if opts.get("f") or opts.get("F"):
        if len(files) != 1:
            raise UsageError("-f follows exactly one file")
        return await _follow(ctx, files[0], n)
    inputs = await _inputs(ctx, files)
    for i, (name, data) in enumerate(inputs):
        if len(inputs) > 1:
            ctx.line(("\n" if i else "") + f"==> {name} <==")
        ctx.out.write(b"".join(_lines(data)[-n:] if n else []))
    return 0


async def _follow(ctx: Context, name: str, n: int) -> int:
    """``tail -f``: the last *n* lines, then whatever is appended, until the job is stopped.

    The file system has no change notifications, so the size is polled every
    FOLLOW_INTERVAL seconds and only the new bytes are read (streamed, from
    the old end).  A file that shrinks was truncated: it is followed again
    from its start.  A file that vanishes is waited for (as ``tail -F``).
    Ends only through Ctrl-C or the session's end (status 130).
    """
    path = ctx.path(name)
    data = await ctx.fs.read(path)
    ctx.out.write(b"".join(_lines(data)[-n:] if n else []))
    offset, missing = len(data), False
    while True:
        await ctx.sleep(FOLLOW_INTERVAL)
        try:
            st = await ctx.fs.stat(path)
        except FSError as e:
            if not missing:
                ctx.error(f"{describe(e)}; waiting for it to come back")
                missing, offset = True, 0
            continue
        if missing:
            ctx.error(f"{path} is back; following it from its start")
            missing = False
        if st.size < offset:
            ctx.error(f"{path}: file truncated")
            offset = 0
        if st.size > offset:
            try:
                await ctx.fs.read_into(path, _OutSink(ctx.out), offset, st.size - offset)
            except FSError as e:
                ctx.error(describe(e))
                continue
            offset = st.size


@builtin("wc", "wc [-l] [-w] [-c] [FILE...]   count lines, words, bytes")
async def wc(ctx: Context, args: list[str]) -> int:
    opts, files = split_options(args, "lwc")
    which = [k for k in "lwc" if opts.get(k)] or ["l", "w", "c"]
    totals = {"l": 0, "w": 0, "c": 0}
    inputs = await _inputs(ctx, files)
    for name, data in inputs:
        counts = {"l": data.count(b"\n"), "w": len(data.split()), "c": len(data)}
        for k in totals:
            totals[k] += counts[k]
        ctx.line(" ".join(f"{counts[k]:>7}" for k in which) + ("" if name == "-" else f" {name}"))
    if len(inputs) > 1:
        ctx.line(" ".join(f"{totals[k]:>7}" for k in which) + " total")
    return 0


@builtin("tee", "tee [-a] FILE...   copy standard input to files and to the output")
async def tee(ctx: Context, args: list[str]) -> int:
    opts, files = split_options(args, "a")
    data = await ctx.input()
    ctx.out.write(data)
    for name in files:
        await ctx.fs.write(ctx.path(name), data, "append" if opts.get("a") else "truncate")
    return 0


# -- processes and runtimes -----------------------------------------------------------


@builtin("ps", "ps [-a]   agents running anywhere in the network (-a: recently ended too)")
async def ps(ctx: Context, args: list[str]) -> int:
    from oneos.cli.control import format_ps

    opts, _ = split_options(args, "a")
    rows = await ctx.grid.rpc.call("scheduler", "ps", timeout=10.0, all=bool(opts.get("a")))
    ctx.line(format_ps(rows))
    return 0


def _control(method: str) -> Builtin:
    async def control(ctx: Context, args: list[str]) -> int:
        if not args:
            raise UsageError("missing agent id (see 'ps')")
        status = 0
        for agent_id in args:
            if agent_id.startswith("%"):  # a job: every agent it started
                job = _job(ctx, agent_id)
                ids = [a["id"] for a in job.agents]
            else:
                ids = [agent_id]
            for i in ids:
                try:
                    info = await ctx.grid.rpc.call("scheduler", method, timeout=10.0, agent_id=i)
                    ctx.line(f"{info['id']} on {info['runtime']}: {info['state']}")
                except OneOSError as e:
                    ctx.error(describe(e))
                    status = 1
        return status

    return control


BUILTINS["kill"] = _control("kill")
HELP["kill"] = "kill ID...   stop agents (SIGTERM, then SIGKILL); %N for a job"
BUILTINS["pause"] = _control("pause")
HELP["pause"] = "pause ID...   pause agents (SIGSTOP)"
BUILTINS["resume"] = _control("resume")
HELP["resume"] = "resume ID...   resume paused agents (SIGCONT)"


@builtin("runtimes", "runtimes   the runtimes of the network", "rs")
async def runtimes(ctx: Context, args: list[str]) -> int:
    rows = await ctx.grid.rpc.call("kernel", "runtimes", timeout=10.0)
    header = ("ID", "STATE", "LEADER", "ADDRESS", "CPU%", "MEM MB", "AGENTS", "TAGS")
    table = [header]
    for r in sorted(rows, key=lambda r: r["id"]):
        table.append((r["id"], r.get("state", ""), "*" if r.get("leader") else "", str(r.get("address", "")),
                      f"{float(r.get('cpu_percent', 0) or 0):.0f}", f"{float(r.get('memory_used_mb', r.get('memory_mb', 0)) or 0):.0f}",
                      str(r.get("agents", 0)), ",".join(r.get("tags", []) or [])))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    ctx.line("\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in table))
    return 0


@builtin("pipes", "pipes   pipes between agents: bytes carried and rate")
async def pipes(ctx: Context, args: list[str]) -> int:
    from oneos.cli.control import format_pipes

    rows = await ctx.grid.rpc.call("scheduler", "pipes", timeout=10.0)
    ctx.line(format_pipes(rows))
    return 0


def _job(ctx: Context, spec: str | None) -> Any:
    jobs = ctx.session.jobs
    if not jobs:
        raise UsageError("no jobs")
    if spec is None:
        return jobs[max(jobs)]
    try:
        n = int(spec.lstrip("%"))
    except ValueError:
        raise UsageError(f"{spec!r} is not a job number") from None
    if n not in jobs:
        raise UsageError(f"no job {n}")
    return jobs[n]


@builtin("jobs", "jobs   background jobs of this session")
async def jobs(ctx: Context, args: list[str]) -> int:
    for n, job in sorted(ctx.session.jobs.items()):
        state = "running" if job.status is None else f"done ({job.status})"
        agents = " ".join(a["id"] for a in job.agents)
        ctx.line(f"[{n}] {state:<10} {job.text}" + (f"   agents: {agents}" if agents else ""))
    for n in [n for n, j in ctx.session.jobs.items() if j.status is not None]:
        ctx.session.jobs.pop(n, None)
    return 0


@builtin("fg", "fg [N]   wait for background job N (default: the latest) in the foreground")
async def fg(ctx: Context, args: list[str]) -> int:
    job = _job(ctx, args[0] if args else None)
    ctx.line(job.text)
    return await ctx.interp.wait_job(job)


# -- the session ----------------------------------------------------------------------


@builtin("env", "env   show the shell's variables (exported ones are marked *)")
async def env(ctx: Context, args: list[str]) -> int:
    for k in sorted(ctx.session.env):
        mark = "*" if k in ctx.session.exported else " "
        ctx.line(f"{mark}{k}={ctx.session.env[k]}")
    return 0


@builtin("export", "export NAME[=VALUE]...   pass variables to the programs this shell starts")
async def export(ctx: Context, args: list[str]) -> int:
    from oneos.shell.parser import NAME_PATTERN

    if not args:
        for k in sorted(ctx.session.exported):
            ctx.line(f"export {k}={ctx.session.env.get(k, '')}")
        return 0
    for a in args:
        name, eq, value = a.partition("=")
        if not NAME_PATTERN.fullmatch(name):
            raise UsageError(f"{name!r} is not a variable name")
        if eq:
            ctx.session.env[name] = value
        ctx.session.exported.add(name)
    return 0


@builtin("unset", "unset NAME...   forget variables")
async def unset(ctx: Context, args: list[str]) -> int:
    for name in args:
        ctx.session.env.pop(name, None)
        ctx.session.exported.discard(name)
    return 0


@builtin("history", "history   lines typed in this session")
async def history(ctx: Context, args: list[str]) -> int:
    for n, line in enumerate(ctx.session.history, 1):
        ctx.line(f"{n:>5}  {line}")
    return 0


@builtin("help", "help [COMMAND]   what the built-ins do")
async def help_(ctx: Context, args: list[str]) -> int:
    if args:
        for a in args:
            ctx.line(HELP.get(a, f"{a}: not a built-in (it runs as a program through the scheduler)"))
        return 0
    ctx.line("OneOS shell built-ins (anything else runs as a program on a runtime the scheduler picks;")
    ctx.line("add @RUNTIME or @tag:T after a command to place it; see docs/shell.md):")
    for name in sorted(HELP):
        ctx.line("  " + HELP[name])
    return 0


@builtin("clear", "clear   clear the screen")
async def clear(ctx: Context, args: list[str]) -> int:
    ctx.out.write(b"\x1b[H\x1b[2J")
    return 0


@builtin("exit", "exit [N]   end the session with status N (default: the last status)", "logout")
async def exit_(ctx: Context, args: list[str]) -> int:
    status = _count(args[0], 0) & 0xFF if args else ctx.session.status
    ctx.interp.exit_status = status
    return status


@builtin("source", "source FILE   run a OneOS file's lines in this session", ".")
async def source(ctx: Context, args: list[str]) -> int:
    from oneos.shell.parser import parse

    if not args:
        raise UsageError("missing file name")
    if ctx.interp._depth >= 16:
        raise UsageError("too deeply nested")
    text = (await ctx.fs.read(ctx.path(args[0]))).decode("utf-8", "replace")
    script = parse(text)
    ctx.interp._depth += 1
    try:
        return await ctx.interp.run_script(script)
    finally:
        ctx.interp._depth -= 1


@builtin("true", "true   do nothing, successfully")
async def true(ctx: Context, args: list[str]) -> int:
    return 0


@builtin("false", "false   do nothing, unsuccessfully")
async def false(ctx: Context, args: list[str]) -> int:
    return 1


@builtin("whoami", "whoami   the user of this session")
async def whoami(ctx: Context, args: list[str]) -> int:
    ctx.line(ctx.session.user)
    return 0


@builtin("stat", "stat PATH...   a file's metadata as JSON")
async def stat(ctx: Context, args: list[str]) -> int:
    status = 0
    for name in args:
        try:
            ctx.line(json.dumps(asdict(await ctx.fs.stat(ctx.path(name)))))
        except FSError as e:
            ctx.error(describe(e))
            status = 1
    return status
