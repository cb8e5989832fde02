"""Built-ins on text streams: echo, yes, head, tail, wc, tee.

They stream: input is read a piece at a time and output written as it is
made, so their input can be of any size (see :mod:`oneos.shell.builtins.context`).
``head FILE`` and ``tail FILE`` read a file in growing blocks from its start
or its end, so they read little of a large file.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from oneos.errors import OneOSError, describe
from oneos.fs.errors import FSError, IsADirectory
from oneos.shell.builtins.context import MAX_INPUT, Context, Input
from oneos.shell.builtins.options import count, split_options
from oneos.shell.devices import is_device_path
from oneos.shell.errors import BrokenPipe, ShellError, UsageError


async def echo(ctx: Context, args: list[str]) -> int:
    newline = True
    if args and args[0] == "-n":
        newline, args = False, args[1:]
    ctx.write(" ".join(args) + ("\n" if newline else ""))
    return 0


#: Bytes ``yes`` writes at a time (whole lines).
YES_BLOCK = 64 * 1024


async def yes(ctx: Context, args: list[str]) -> int:
    line = ((" ".join(args) if args else "y") + "\n").encode("utf-8", "replace")
    block = line * max(1, YES_BLOCK // len(line))
    while True:  # ends with BrokenPipe (the reader stopped: 141) or CancelledError (Ctrl-C: 130)
        await ctx.send(block)


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


async def _head_bytes(ctx: Context, source: Input, n: int) -> None:
    """Copy the first *n* bytes of *source*, then stop reading it (its writer gets BrokenPipe)."""
    left = n
    while left > 0:
        chunk = await source.read()
        if not chunk:
            break
        await ctx.send(chunk[:left])
        left -= len(chunk)
    source.close()


async def head(ctx: Context, args: list[str]) -> int:
    opts, files = split_options(args, "", "nc")
    n = count(opts.get("n"), 10)
    size = None if opts.get("c") is None else count(opts.get("c"), 0)
    status = 0
    for i, name in enumerate(files or ["-"]):
        if len(files) > 1:
            ctx.line(("\n" if i else "") + f"==> {name} <==")
        try:
            if size is not None:  # -c N: bytes, streamed (a device under /dev too)
                await _head_bytes(ctx, ctx.stdin if name == "-" else ctx.open_input(ctx.path(name)), size)
            elif name == "-":
                await _head(ctx, ctx.stdin, n)
            elif is_device_path(ctx.path(name)):
                await _head(ctx, ctx.open_input(ctx.path(name)), n)
            else:
                await _head_file(ctx, ctx.path(name), n)
        except BrokenPipe:
            raise
        except OneOSError as e:
            ctx.error(describe(e))
            status = 1
    return status


async def _tail_stream(source: Input, n: int) -> bytes:
    """The last *n* lines of a stream, keeping only about that much of it in memory."""
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
    return bytes(kept[start or 0 :])


#: First block ``tail FILE`` reads from the end (doubled until it holds enough lines).
TAIL_BLOCK = 64 * 1024


async def _tail_file(ctx: Context, path: str, n: int) -> tuple[bytes, int]:
    """The last *n* lines of a OneOS file, read backwards from its end; and the size it had.

    A large file is never read whole: blocks from the end, doubling, until
    they hold *n* lines (at most MAX_INPUT bytes, past which it is an error).
    """
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


async def tail(ctx: Context, args: list[str]) -> int:
    opts, files = split_options(args, "fF", "n")
    n = count(opts.get("n"), 10)
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


def _sources(ctx: Context, files: list[str]) -> list[tuple[str, Input]]:
    """(name, stream) for each file, standard input for ``-`` or when no file is given."""
    return [(name, ctx.stdin if name == "-" else ctx.open_input(ctx.path(name))) for name in files or ["-"]]


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


async def tee(ctx: Context, args: list[str]) -> int:
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
