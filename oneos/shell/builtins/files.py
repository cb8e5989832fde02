"""Built-ins on files of the OneOS tree: ls, cat, cp, mv, rm, mkdir, touch, chmod, chown, stat.

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
from oneos.fs.errors import FSError
from oneos.fs.permissions import mode_string, parse_mode
from oneos.shell import devices
from oneos.shell.builtins.context import Context
from oneos.shell.builtins.options import split_options
from oneos.shell.errors import BrokenPipe, UsageError


def _long(st: Any, name: str) -> str:
    when = time.strftime("%b %d %H:%M", time.localtime(st.mtime))
    return f"{mode_string(st.kind, st.mode)} {st.owner:<8} {st.size:>10} {when} {name}"


async def ls(ctx: Context, args: list[str]) -> int:
    opts, targets = split_options(args, "la1")
    status = 0
    targets = targets or ["."]
    files: list[tuple[str, Any]] = []
    dirs: list[tuple[str, Any]] = []
    devs: list[str] = []
    for t in targets:
        if devices.is_device_path(ctx.path(t)):
            devs.append(t)
            continue
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
        for entry in sorted(entries, key=lambda entry: entry.name):
            if entry.name.startswith(".") and not opts.get("a"):
                continue
            shown = entry.name + ("/" if entry.is_dir and not opts.get("l") else "")
            ctx.line(_long(entry, entry.name) if opts.get("l") else shown)
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
    status = 0
    for name in args or ["-"]:
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
        raise UsageError("missing directory name")
    status = 0
    for name in names:
        try:
            await ctx.fs.mkdir(ctx.path(name), parents=bool(opts.get("p")), exist_ok=bool(opts.get("p")))
        except FSError as e:
            ctx.error(describe(e))
            status = 1
    return status


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


async def mv(ctx: Context, args: list[str]) -> int:
    _, names = split_options(args, "f")
    if len(names) < 2:
        raise UsageError("usage: mv SRC... DEST")
    return await _each(ctx, await _into(ctx, names[:-1], names[-1]), lambda pair: ctx.fs.rename(*pair))


async def cp(ctx: Context, args: list[str]) -> int:
    opts, names = split_options(args, "rRf")
    if len(names) < 2:
        raise UsageError("usage: cp [-r] SRC... DEST")
    recursive = bool(opts.get("r") or opts.get("R"))
    return await _each(
        ctx, await _into(ctx, names[:-1], names[-1]), lambda pair: ctx.fs.copy(*pair, recursive=recursive)
    )


async def touch(ctx: Context, args: list[str]) -> int:
    if not args:
        raise UsageError("missing file operand")
    for name in args:
        await ctx.fs.write(ctx.path(name), b"", "append")
    return 0


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
