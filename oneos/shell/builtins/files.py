"""Built-ins on files of the OneOS tree: ls, cat, cp, mv, rm, mkdir, touch, chmod, chown, stat.

Options, exit statuses and errors are coreutils' where the name is theirs
(tests/unit/test_shell_vs_bash.py runs them beside the real ones); ``ls``
marks directories with a ``/`` (as ``ls -p``).

Paths are taken from the session's cwd; every operation is made, and
checked against owners and modes, as the session's user (``ctx.fs``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

from oneos.errors import OneOSError, describe
from oneos.fs import paths
from oneos.fs.errors import FSError, IsADirectory
from oneos.fs.permissions import mode_string, parse_mode
from oneos.shell import devices
from oneos.shell.builtins.context import Context
from oneos.shell.builtins.options import BadUsage, split_options
from oneos.shell.errors import BrokenPipe, UsageError


def _long(st: Any, name: str) -> str:
    when = time.strftime("%b %d %H:%M", time.localtime(st.mtime))
    return f"{mode_string(st.kind, st.mode)} {st.owner:<8} {st.size:>10} {when} {name}"


async def ls(ctx: Context, args: list[str]) -> int:
    """One name a line; directories end with ``/``. ``-l`` long, ``-a`` with ``.``, ``..`` and dot files, ``-A``
    dot files only, ``-d`` directories themselves.  A name that cannot be listed makes the status 2, as coreutils."""
    opts, targets = split_options(args, "laA1dpF", status=2)
    status = 0
    targets = targets or ["."]
    files: list[tuple[str, Any]] = []
    dirs: list[tuple[str, Any]] = []
    devs: list[str] = []
    # One round trip for the stats: one target's stat and entries together (list_stat), or every target's stat
    listings: dict[str, Any] = {}
    in_tree = [ctx.path(t) for t in targets if not devices.is_device_path(ctx.path(t))]
    found: list[Any] = []
    if len(in_tree) == 1 and not opts.get("d"):
        try:
            listing = await ctx.fs.list_stat(in_tree[0], parent=bool(opts.get("a")))
            listings[listing.stat.path], found = listing, [listing.stat]
        except FSError as e:
            found = [e]
    elif in_tree:
        found = await ctx.fs.stat_many(in_tree)
    stats = iter(found)
    for t in targets:
        if devices.is_device_path(ctx.path(t)):
            devs.append(t)
            continue
        st = next(stats)
        if isinstance(st, Exception):
            if not isinstance(st, FSError):
                raise st
            ctx.error(describe(st))
            status = 2
            continue
        (dirs if st.is_dir and not opts.get("d") else files).append((t, st))
    for t, st in files:
        ctx.line(_long(st, t) if opts.get("l") else t + ("/" if st.is_dir and t != "/" and not t.endswith("/") else ""))
    for n, (t, st) in enumerate(dirs):
        if len(targets) > 1:
            ctx.line(("\n" if n or files else "") + f"{t}:")
        listing = listings.get(st.path) or await ctx.fs.list_stat(st.path, parent=bool(opts.get("a")))
        entries = listing.entries_or_raise()
        if st.path == "/" and not any(entry.name == "dev" for entry in entries):
            entries = [*entries, devices.dev_entry()]  # /dev: the devices, not in the store
        named = [(entry.name, entry) for entry in sorted(entries, key=lambda entry: entry.name)]
        if opts.get("a"):
            named = [(".", st), ("..", listing.parent or st), *named]
        for name, entry in named:
            if name.startswith(".") and not (opts.get("a") or opts.get("A")):
                continue
            shown = name + ("/" if entry.is_dir and not opts.get("l") else "")
            ctx.line(_long(entry, name) if opts.get("l") else shown)
    for n, t in enumerate(devs):  # /dev: the live runtimes' devices, not the file store
        try:
            lines = await devices.list_dev(ctx.grid, ctx.job, ctx.path(t), bool(opts.get("l")), t)
        except OneOSError as e:
            ctx.error(describe(e))
            status = 1
            continue
        if len(targets) > 1 and devices.is_device_dir(ctx.path(t)):
            ctx.line(("\n" if n or files or dirs else "") + f"{t}:")
        for line in lines:
            ctx.line(line)
    return status


async def cat(ctx: Context, args: list[str]) -> int:
    """Files (``-`` is standard input) to the output, streamed; ``-n`` numbers the lines, ``-E`` ends them with ``$``."""
    opts, names = split_options(args, "unE")
    if opts.get("n") or opts.get("E"):
        return await _cat_lines(ctx, names, bool(opts.get("n")), bool(opts.get("E")))
    status = 0
    for name in names or ["-"]:
        if name == "-":
            async for chunk in ctx.chunks():
                await ctx.send(chunk)
            continue
        if devices.is_device_path(ctx.path(name)):
            status = max(status, await _cat_device(ctx, ctx.path(name)))
            continue
        try:
            await ctx.copy_file(ctx.path(name))
        except FSError as e:
            ctx.error(describe(e))
            status = 1
    return status


async def _cat_lines(ctx: Context, names: list[str], number: bool, ends: bool) -> int:
    """``cat -n`` / ``cat -E``: line by line, the numbering going on across files (as coreutils)."""
    status, n = 0, 0
    for name in names or ["-"]:
        source = ctx.stdin if name == "-" else ctx.open_input(ctx.path(name))
        try:
            while line := await source.readline():
                body, newline = (line[:-1], b"\n") if line.endswith(b"\n") else (line, b"")
                n += 1
                prefix = f"{n:>6}\t".encode() if number else b""
                await ctx.send(prefix + body + (b"$" if ends and newline else b"") + newline)
        except BrokenPipe:
            raise
        except OneOSError as e:
            ctx.error(describe(e))
            status = 1
    return status


async def _cat_device(ctx: Context, path: str) -> int:
    """A device's stream to the output at the reader's pace; a reader that stops ends it (BrokenPipe)."""
    stream = ctx.open_input(path)
    try:
        async for chunk in stream.chunks():
            await ctx.send(chunk)
    except OneOSError as e:
        if isinstance(e, BrokenPipe):
            raise
        ctx.error(describe(e))
        return 1
    finally:
        stream.close()
    return 0


async def mkdir(ctx: Context, args: list[str]) -> int:
    opts, names = split_options(args, "p")
    if not names:
        raise BadUsage("missing operand", 1)
    status = 0
    for name in names:
        try:
            await ctx.fs.mkdir(ctx.path(name), parents=bool(opts.get("p")), exist_ok=bool(opts.get("p")))
        except FSError as e:
            ctx.error(describe(e))
            status = 1
    return status


async def rm(ctx: Context, args: list[str]) -> int:
    """coreutils' rm: a directory needs ``-r`` (or ``-d`` when it is empty); ``-f`` ignores missing names."""
    opts, names = split_options(args, "rRfd")
    if not names and not opts.get("f"):
        raise BadUsage("missing operand", 1)
    recursive = bool(opts.get("r") or opts.get("R"))
    status = 0
    for name in names:
        try:
            if not recursive:
                st = await ctx.fs.stat(ctx.path(name))
                if st.is_dir and not opts.get("d"):
                    raise IsADirectory(ctx.path(name), "a directory: use rm -r")
            await ctx.fs.remove(ctx.path(name), recursive=recursive)
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


async def mv(ctx: Context, args: list[str]) -> int:
    _, names = split_options(args, "fn")
    if len(names) < 2:
        raise BadUsage("missing destination operand" if names else "missing file operand", 1)
    return await _each(ctx, await _into(ctx, names[:-1], names[-1]), lambda pair: ctx.fs.rename(*pair))


async def cp(ctx: Context, args: list[str]) -> int:
    opts, names = split_options(args, "rRfa")
    if len(names) < 2:
        raise BadUsage("missing destination operand" if names else "missing file operand", 1)
    recursive = bool(opts.get("r") or opts.get("R") or opts.get("a"))

    async def copy(pair: tuple[str, str]) -> None:
        if not recursive and (await ctx.fs.stat(pair[0])).is_dir:
            raise IsADirectory(pair[0], "a directory: use cp -r")
        await ctx.fs.copy(*pair, recursive=recursive)

    return await _each(ctx, await _into(ctx, names[:-1], names[-1]), copy)


async def touch(ctx: Context, args: list[str]) -> int:
    _, names = split_options(args, "c")
    if not names:
        raise BadUsage("missing file operand", 1)
    return await _each(ctx, names, lambda name: ctx.fs.write(ctx.path(name), b"", "append"))


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


async def chown(ctx: Context, args: list[str]) -> int:
    if len(args) < 2:
        raise UsageError("usage: chown USER PATH...")
    owner, names = args[0], args[1:]
    return await _each(ctx, names, lambda name: ctx.fs.chown(ctx.path(name), owner))


async def stat(ctx: Context, args: list[str]) -> int:
    status = 0
    for name in args:
        try:
            ctx.line(json.dumps(asdict(await ctx.fs.stat(ctx.path(name)))))
        except FSError as e:
            ctx.error(describe(e))
            status = 1
    return status
