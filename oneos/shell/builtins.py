"""The shell's built-in commands: files, processes, runtimes and the session itself.

Each built-in is ``async def name(ctx, args) -> int``.  File commands work on
the OneOS tree through :class:`oneos.fs.client.FSClient`, with relative
paths taken from the session's cwd; process commands ask the scheduler.

Built-ins run at the same time as the other stages of their pipeline, so
they stream: they read their standard input a piece at a time
(``await ctx.read()``, ``async for chunk in ctx.chunks()``,
``await ctx.readline()``; ``await ctx.input()`` reads it whole, up to
:data:`~oneos.shell.interpreter.MAX_INPUT`, for the few that need it all)
and write with ``await ctx.send(data)``, which waits while the reader is
behind.  ``ctx.out.write`` / ``ctx.line`` are fine for small outputs.  A
reader that went away makes writes raise
:class:`~oneos.shell.interpreter.BrokenPipe`: let it propagate (status 141,
no message, as SIGPIPE).  A typed :class:`OneOSError` raised here becomes
``NAME: message`` and status 1.  Every wait goes through ``ctx.job`` so
Ctrl-C and a vanished client end it.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from typing import Any

from twisted.internet import defer

from oneos.errors import OneOSError, describe
from oneos.fs import paths
from oneos.fs.errors import FSError
from oneos.fs.permissions import mode_string, parse_mode

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


class Input:
    """A stream a built-in reads (its standard input, or a file): by chunk, by line, or whole.

    *source* is a transfer-style Source (``next()`` fires with bytes, ``b''``
    at the end) with an optional ``close()``; None reads as empty.  Waits go
    through *job*, so Ctrl-C ends them with CancelledError.
    """

    def __init__(self, source: Any, job: Any, name: str = "standard input") -> None:
        self.source = source
        self.job = job
        self.name = name
        self._buffer = bytearray()
        self._ended = source is None

    async def read(self) -> bytes:
        """The next piece (any size), or b'' at the end."""
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            return data
        if self._ended:
            return b""
        data = await self.job.wait(self.source.next())
        if not data:
            self._ended = True
        return bytes(data)

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            data = await self.read()
            if not data:
                return
            yield data

    async def readline(self, limit: int | None = None) -> bytes:
        """The next line with its newline (the last one may lack it); b'' at the end.

        A line longer than *limit* (default MAX_INPUT) is an error, not a
        truncation.
        """
        from oneos.shell.interpreter import MAX_INPUT, ShellError

        limit = MAX_INPUT if limit is None else limit
        searched = 0
        while True:
            at = self._buffer.find(b"\n", searched)
            if at >= 0:
                line = bytes(self._buffer[: at + 1])
                del self._buffer[: at + 1]
                return line
            searched = len(self._buffer)
            if searched > limit:
                raise ShellError(f"{self.name}: a line longer than {_size(limit)}")
            if self._ended:
                line = bytes(self._buffer)
                self._buffer.clear()
                return line
            data = await self.job.wait(self.source.next())
            if not data:
                self._ended = True
            self._buffer += data

    async def readall(self, limit: int | None = None) -> bytes:
        """Everything to the end, refusing (with an error, never truncating) past *limit* bytes."""
        from oneos.shell.interpreter import MAX_INPUT, ShellError

        limit = MAX_INPUT if limit is None else limit
        parts, size = [], 0
        async for data in self.chunks():
            size += len(data)
            if size > limit:
                self.close()
                raise ShellError(f"{self.name} is larger than {_size(limit)}, too large to read whole")
            parts.append(data)
        return b"".join(parts)

    def close(self) -> None:
        """Read no more: whoever writes to it stops (BrokenPipe), as a Unix pipe's writer after its reader exits."""
        self._ended = True
        self._buffer.clear()
        close = getattr(self.source, "close", None)
        if close is not None:
            close()


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 else f"{n} bytes"


class _OutSink:
    """A transfer Sink into a built-in's output (``cat FILE``), with its back-pressure.

    When the reader has gone (or Ctrl-C), bytes are dropped instead of
    failing the transfer, which would leave its connection open and paused;
    :attr:`gone` fires at that moment so the built-in can stop waiting.
    """

    def __init__(self, ctx: "Context", writer: Any) -> None:
        self.ctx = ctx
        self.writer = writer
        self.broken = False
        self.gone: defer.Deferred = defer.Deferred()

    def write(self, data: bytes) -> defer.Deferred:
        from oneos.shell.interpreter import BrokenPipe

        if self.broken or self.ctx.job.stopped:
            return defer.succeed(None)
        try:
            self.writer.write(data)
        except BrokenPipe:
            self._broken()
            return defer.succeed(None)
        drain = getattr(self.writer, "drain", None)
        if drain is None:
            return defer.succeed(None)
        return drain().addErrback(self._reader_gone)

    def _reader_gone(self, failure: Any) -> None:
        from oneos.shell.interpreter import BrokenPipe

        failure.trap(BrokenPipe)
        self._broken()

    def _broken(self) -> None:
        if not self.broken:
            self.broken = True
            if not self.gone.called:  # (cancelled by Ctrl-C)
                self.gone.callback(None)

    def finish(self) -> defer.Deferred:
        return defer.succeed({})

    def abort(self) -> None:
        pass


class Context:
    """One built-in invocation: its session, input and output, the job it belongs to."""

    def __init__(self, interp: Any, name: str, stdin: Any, out: Any, err: Any, assignments: dict[str, str],
                 job: Any = None) -> None:
        from oneos.shell.interpreter import Job

        self.interp = interp
        self.session = interp.session
        self.grid = interp.grid
        self.fs = interp.grid.fs
        self.name = name
        self.out = out
        self.err = err
        self.assignments = assignments
        self.job = job if job is not None else Job(0, name)
        #: standard input: the previous stage's pipe, a '< FILE', the session's input (first stage), or nothing
        self.stdin = Input(stdin, self.job)
        self._unpaced = 0

    # -- input ------------------------------------------------------------------
    async def read(self) -> bytes:
        """The next piece of standard input, b'' at its end."""
        return await self.stdin.read()

    def chunks(self) -> AsyncIterator[bytes]:
        """``async for chunk in ctx.chunks()``: standard input a piece at a time."""
        return self.stdin.chunks()

    async def readline(self) -> bytes:
        return await self.stdin.readline()

    async def input(self, limit: int | None = None) -> bytes:
        """All of standard input, for built-ins that need it whole; an error past *limit* (MAX_INPUT)."""
        return await self.stdin.readall(limit)

    def close_input(self) -> None:
        self.stdin.close()

    def open_input(self, path: str) -> Input:
        """A OneOS file as a stream (opened at the first read; a missing file fails that read)."""
        from oneos.shell.interpreter import FileInput

        return Input(FileInput(self.fs, path), self.job, path)

    # -- output -----------------------------------------------------------------
    async def send(self, data: bytes, writer: Any = None) -> None:
        """Write *data* (to ctx.out by default) and wait until the writer has room again.

        BrokenPipe when its reader has gone.  A writer without ``drain()``
        (a session terminal without back-pressure) is not waited on, but
        the reactor gets a turn every UNPACED_BURST bytes so Ctrl-C and
        other sessions are served.
        """
        from oneos.shell.interpreter import UNPACED_BURST

        writer = self.out if writer is None else writer
        writer.write(data)
        drain = getattr(writer, "drain", None)
        if drain is not None:
            await self.job.wait(drain())
            return
        self._unpaced += len(data)
        if self._unpaced >= UNPACED_BURST:
            self._unpaced = 0
            if self.grid.reactor is not None:
                await self.sleep(0)
            elif self.job.stopped:
                raise defer.CancelledError()

    async def copy_file(self, path: str, offset: int = 0, length: int | None = None) -> None:
        """Stream a OneOS file (or a byte range) to ctx.out, at the reader's pace; BrokenPipe if the reader goes."""
        from oneos.shell.interpreter import BrokenPipe

        sink = _OutSink(self, self.out)
        if offset or length is not None:
            reading = self.fs.read_into(path, sink, offset, length)
        else:
            reading = self.fs.read_into(path, sink)
        # Whichever comes first: the end of the file, or the reader going away (the rest of the
        # transfer is then drained in the background, dropped).
        either = defer.DeferredList([reading, sink.gone], fireOnOneCallback=True, fireOnOneErrback=True,
                                    consumeErrors=True)
        try:
            await self.job.wait(either)
        except defer.FirstError as e:
            e.subFailure.raiseException()
        if sink.broken:
            raise BrokenPipe(f"{self.name}: the reader has gone")

    def open_output(self, path: str, append: bool = False) -> Any:
        """A OneOS file written as a stream (``tee``): ``write``/``drain``, then ``await finish()``."""
        from oneos.shell.interpreter import FileOutput

        return FileOutput(self.fs, path, append)

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


def _sources(ctx: Context, files: list[str]) -> list[tuple[str, Input]]:
    """(name, stream) for each file, standard input for ``-`` or when no file is given."""
    return [(name, ctx.stdin if name == "-" else ctx.open_input(ctx.path(name))) for name in files or ["-"]]


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


def _long(st: Any, name: str) -> str:
    when = time.strftime("%b %d %H:%M", time.localtime(st.mtime))
    return f"{mode_string(st.kind, st.mode)} {st.owner:<8} {st.size:>10} {when} {name}"


@builtin("ls", "ls [-l] [-a] [PATH...]   list directories (-l: mode, owner, size, mtime, name; -a: dot files too)")
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


@builtin("cat", "cat [FILE...]   print files (or standard input), streamed")
async def cat(ctx: Context, args: list[str]) -> int:
    status = 0
    for name in args or ["-"]:
        if name == "-":
            async for chunk in ctx.chunks():
                await ctx.send(chunk)
            continue
        try:
            await ctx.copy_file(ctx.path(name))
        except FSError as e:
            ctx.error(describe(e))
            status = 1
    return status


#: Bytes ``yes`` writes at a time (whole lines).
YES_BLOCK = 64 * 1024


@builtin("yes", "yes [STRING...]   print STRING (default: y) over and over, until the reader stops or Ctrl-C")
async def yes(ctx: Context, args: list[str]) -> int:
    line = ((" ".join(args) if args else "y") + "\n").encode("utf-8", "replace")
    block = line * max(1, YES_BLOCK // len(line))
    while True:  # ends with BrokenPipe (the reader stopped: 141) or CancelledError (Ctrl-C: 130)
        await ctx.send(block)


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


async def _each(ctx: Context, items: Any, op: Any) -> int:
    """``await op(item)`` for every item; a failure is reported and makes the status 1, the others still run."""
    status = 0
    for item in items:
        try:
            await op(item)
        except FSError as e:
            ctx.error(describe(e))
            status = 1
    return status


@builtin("mv", "mv SRC... DEST   move or rename")
async def mv(ctx: Context, args: list[str]) -> int:
    _, names = split_options(args, "f")
    if len(names) < 2:
        raise UsageError("usage: mv SRC... DEST")
    return await _each(ctx, await _into(ctx, names[:-1], names[-1]), lambda pair: ctx.fs.rename(*pair))


@builtin("cp", "cp [-r] SRC... DEST   copy (-r: directories)")
async def cp(ctx: Context, args: list[str]) -> int:
    opts, names = split_options(args, "rRf")
    if len(names) < 2:
        raise UsageError("usage: cp [-r] SRC... DEST")
    recursive = bool(opts.get("r") or opts.get("R"))
    return await _each(ctx, await _into(ctx, names[:-1], names[-1]),
                       lambda pair: ctx.fs.copy(*pair, recursive=recursive))


@builtin("touch", "touch FILE...   create empty files (existing ones get a new mtime)")
async def touch(ctx: Context, args: list[str]) -> int:
    if not args:
        raise UsageError("missing file operand")
    for name in args:
        await ctx.fs.write(ctx.path(name), b"", "append")
    return 0


@builtin("chmod", "chmod MODE PATH...   change permission bits: octal (600, 755) or u/g/o/a with +-= rwxXst "
                  "(u+x,go-r); the owner or root only")
async def chmod(ctx: Context, args: list[str]) -> int:
    if len(args) < 2:
        raise UsageError("usage: chmod MODE PATH...")
    spec, names = args[0], args[1:]
    try:
        mode = parse_mode(spec)  # checks the spelling before anything changes
    except ValueError as e:
        raise UsageError(str(e)) from None
    symbolic = not spec.isdigit()

    async def change(name: str) -> None:
        path = ctx.path(name)
        wanted = mode
        if symbolic:  # relative to what the entry has now
            st = await ctx.fs.stat(path)
            wanted = parse_mode(spec, st.mode, is_dir=st.is_dir)
        await ctx.fs.chmod(path, wanted)

    return await _each(ctx, names, change)


@builtin("chown", "chown USER PATH...   give files to USER (root only)")
async def chown(ctx: Context, args: list[str]) -> int:
    if len(args) < 2:
        raise UsageError("usage: chown USER PATH...")
    owner, names = args[0], args[1:]
    return await _each(ctx, names, lambda name: ctx.fs.chown(ctx.path(name), owner))


def _start_of_last(data: bytes | bytearray, n: int) -> int | None:
    """Where the last *n* lines of *data* start, or None if it holds *n* lines or fewer.

    Lines end with a newline; a final line without one counts too (as tail).
    """
    pos = len(data) - 1 if data.endswith(b"\n") else len(data)
    for _ in range(n):
        at = data.rfind(b"\n", 0, pos)
        if at < 0:
            return None
        pos = at
    return pos + 1


async def _head(ctx: Context, source: Input, n: int) -> None:
    """Copy the first *n* lines of *source*, then stop reading it (its writer gets BrokenPipe)."""
    left = n
    while left > 0:
        chunk = await source.read()
        if not chunk:
            break
        pos = 0
        while left > 0:
            at = chunk.find(b"\n", pos)
            if at < 0:
                break
            pos, left = at + 1, left - 1
        await ctx.send(chunk[:pos] if left == 0 else chunk)
    source.close()


#: First block ``head FILE`` reads (doubled up to HEAD_BLOCK_MAX until it holds enough lines).
HEAD_BLOCK = 64 * 1024
HEAD_BLOCK_MAX = 4 * 1024 * 1024


async def _head_file(ctx: Context, path: str, n: int) -> None:
    """The first *n* lines of a OneOS file, read in growing blocks so a large file is not read to its end.

    (Streaming the file and stopping early would leave the rest of its
    transfer to drain: ``head -n 1 BIG`` should cost one small read.)
    """
    from oneos.fs.errors import IsADirectory

    st = await ctx.fs.stat(path)
    if st.is_dir:
        raise IsADirectory(path)
    left, pos, block = n, 0, HEAD_BLOCK
    while left > 0:
        piece = await ctx.job.wait(ctx.fs.read(path, pos, block))
        end = 0
        while left > 0:
            at = piece.find(b"\n", end)
            if at < 0:
                break
            end, left = at + 1, left - 1
        await ctx.send(piece[:end] if left == 0 else piece)
        if len(piece) < block:
            return
        pos, block = pos + len(piece), min(block * 2, HEAD_BLOCK_MAX)


@builtin("head", "head [-n N] [FILE...]   first N lines (default 10)")
async def head(ctx: Context, args: list[str]) -> int:
    opts, files = split_options(args, "", "n")
    n = _count(opts.get("n"), 10)
    status = 0
    for i, name in enumerate(files or ["-"]):
        if len(files) > 1:
            ctx.line(("\n" if i else "") + f"==> {name} <==")
        try:
            if name == "-":
                await _head(ctx, ctx.stdin, n)
            else:
                await _head_file(ctx, ctx.path(name), n)
        except FSError as e:
            ctx.error(describe(e))
            status = 1
    return status


async def _tail_stream(source: Input, n: int) -> bytes:
    """The last *n* lines of a stream, keeping only about that much of it in memory."""
    from oneos.shell.interpreter import MAX_INPUT, ShellError

    kept = bytearray()
    trim_at = 1024 * 1024
    async for chunk in source.chunks():
        if n == 0:
            continue
        kept += chunk
        if len(kept) > trim_at:
            start = _start_of_last(kept, n)
            if start:
                del kept[:start]
            if len(kept) > MAX_INPUT:
                raise ShellError(f"the last {n} lines are larger than {MAX_INPUT // 2**20} MiB")
            trim_at = 2 * len(kept) + 1024 * 1024  # amortised: trimming stays linear in the input
    start = _start_of_last(kept, n) if n else len(kept)
    return bytes(kept[start or 0:])


#: First block ``tail FILE`` reads from the end (doubled until it holds enough lines).
TAIL_BLOCK = 64 * 1024


async def _tail_file(ctx: Context, path: str, n: int) -> tuple[bytes, int]:
    """The last *n* lines of a OneOS file, read backwards from its end; and the size it had.

    A large file is never read whole: blocks from the end, doubling, until
    they hold *n* lines (at most MAX_INPUT bytes, past which it is an error).
    """
    from oneos.fs.errors import IsADirectory
    from oneos.shell.interpreter import MAX_INPUT, ShellError

    st = await ctx.fs.stat(path)
    if st.is_dir:
        raise IsADirectory(path)
    size = st.size
    if n == 0 or size == 0:
        return b"", size
    data, start, block = b"", size, TAIL_BLOCK
    while start > 0:
        begin = max(0, start - block)
        data = await ctx.job.wait(ctx.fs.read(path, begin, start - begin)) + data
        start, block = begin, block * 2
        at = _start_of_last(data, n)
        if at is not None:
            return data[at:], size
        if len(data) > MAX_INPUT:
            raise ShellError(f"{path}: the last {n} lines are larger than {MAX_INPUT // 2**20} MiB")
    return data, size


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
    status = 0
    for i, name in enumerate(files or ["-"]):
        if len(files) > 1:
            ctx.line(("\n" if i else "") + f"==> {name} <==")
        try:
            last = await _tail_stream(ctx.stdin, n) if name == "-" else (await _tail_file(ctx, ctx.path(name), n))[0]
        except FSError as e:
            ctx.error(describe(e))
            status = 1
            continue
        await ctx.send(last)
    return status


async def _follow(ctx: Context, name: str, n: int) -> int:
    """``tail -f``: the last *n* lines, then whatever is appended, until the job is stopped.

    The file system has no change notifications, so the size is polled every
    FOLLOW_INTERVAL seconds and only the new bytes are read (streamed, from
    the old end).  A file that shrinks was truncated: it is followed again
    from its start.  A file that vanishes is waited for (as ``tail -F``).
    Ends only through Ctrl-C or the session's end (status 130).
    """
    path = ctx.path(name)
    last, offset = await _tail_file(ctx, path, n)
    await ctx.send(last)
    missing = False
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
                await ctx.copy_file(path, offset, st.size - offset)
            except FSError as e:
                ctx.error(describe(e))
                continue
            offset = st.size


_WHITESPACE = b" \t\n\r\x0b\x0c"


async def _counts(source: Input, which: list[str]) -> dict[str, int]:
    """Lines, words and bytes of a stream, a chunk at a time (a word may span two chunks)."""
    counts = {"l": 0, "w": 0, "c": 0}
    in_word = False
    async for chunk in source.chunks():
        counts["c"] += len(chunk)
        if "l" in which:
            counts["l"] += chunk.count(b"\n")
        if "w" in which:
            words = len(chunk.split())
            if words and in_word and chunk[:1] not in _WHITESPACE:
                words -= 1  # the previous chunk's last word goes on
            counts["w"] += words
            in_word = chunk[-1:] not in _WHITESPACE
    return counts


@builtin("wc", "wc [-l] [-w] [-c] [FILE...]   count lines, words, bytes")
async def wc(ctx: Context, args: list[str]) -> int:
    opts, files = split_options(args, "lwc")
    which = [k for k in "lwc" if opts.get(k)] or ["l", "w", "c"]
    totals = {"l": 0, "w": 0, "c": 0}
    sources = _sources(ctx, files)
    status = 0
    for name, source in sources:
        try:
            counts = await _counts(source, which)
        except FSError as e:
            ctx.error(describe(e))
            status = 1
            continue
        for k in totals:
            totals[k] += counts[k]
        ctx.line(" ".join(f"{counts[k]:>7}" for k in which) + ("" if name == "-" else f" {name}"))
    if len(sources) > 1:
        ctx.line(" ".join(f"{totals[k]:>7}" for k in which) + " total")
    return status


@builtin("tee", "tee [-a] FILE...   copy standard input to files and to the output, streamed")
async def tee(ctx: Context, args: list[str]) -> int:
    from oneos.shell.interpreter import BrokenPipe

    opts, files = split_options(args, "a")
    outputs = [(name, ctx.open_output(ctx.path(name), bool(opts.get("a")))) for name in files]
    status = 0
    try:
        async for chunk in ctx.chunks():
            ctx.out.write(chunk)
            waits = [getattr(ctx.out, "drain", lambda: defer.succeed(None))()]
            for _, output in outputs:
                if output.error is None:
                    try:
                        output.write(chunk)
                    except BrokenPipe:
                        continue  # that file failed: reported at the end, the others go on
                    waits.append(output.drain().addErrback(lambda f: f.trap(BrokenPipe) and None))
            await ctx.job.wait(defer.gatherResults(waits, consumeErrors=True).addErrback(_first_error))
    finally:
        for name, output in outputs:
            error = await output.finish()
            if error is not None:
                ctx.error(f"{name}: {describe(error)}")
                status = 1
    return status


def _first_error(failure: Any) -> Any:
    """gatherResults wraps the failure: give the original (BrokenPipe from the output)."""
    failure.trap(defer.FirstError)
    return failure.value.subFailure


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
                    info = await ctx.grid.rpc.call("scheduler", method, timeout=10.0, agent_id=i,
                                                   user=ctx.interp.session.user)
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
