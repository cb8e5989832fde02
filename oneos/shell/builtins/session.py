"""Built-ins on the session itself: cd, pwd, env, export, unset, history, help, exit, source,
whoami, clear, true, false.

They change or show what the session keeps between lines
(:class:`~oneos.shell.session.Session`); ``exit``, ``source`` and ``help``
ask the interpreter through ``ctx.shell``.
"""

from __future__ import annotations

from oneos.shell.builtins.context import Context
from oneos.shell.builtins.options import count
from oneos.shell.errors import UsageError
from oneos.shell.parser import NAME_PATTERN, Script, parse


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


async def pwd(ctx: Context, args: list[str]) -> int:
    ctx.line(ctx.session.cwd)
    return 0


async def env(ctx: Context, args: list[str]) -> int:
    for k in sorted(ctx.session.env):
        mark = "*" if k in ctx.session.exported else " "
        ctx.line(f"{mark}{k}={ctx.session.env[k]}")
    return 0


async def export(ctx: Context, args: list[str]) -> int:
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


async def unset(ctx: Context, args: list[str]) -> int:
    for name in args:
        ctx.session.env.pop(name, None)
        ctx.session.exported.discard(name)
    return 0


async def history(ctx: Context, args: list[str]) -> int:
    for n, line in enumerate(ctx.session.history, 1):
        ctx.line(f"{n:>5}  {line}")
    return 0


async def help_(ctx: Context, args: list[str]) -> int:
    if args:
        for a in args:
            ctx.line(ctx.shell.help.get(a, f"{a}: not a built-in (it runs as a program through the scheduler)"))
        return 0
    ctx.line("OneOS shell built-ins (anything else runs as a program on a runtime the scheduler picks;")
    ctx.line("add @RUNTIME or @tag:T after a command to place it; see docs/shell.md):")
    for name in sorted(ctx.shell.help):
        ctx.line("  " + ctx.shell.help[name])
    return 0


async def clear(ctx: Context, args: list[str]) -> int:
    ctx.out.write(b"\x1b[H\x1b[2J")
    return 0


async def exit_(ctx: Context, args: list[str]) -> int:
    status = count(args[0], 0) & 0xFF if args else ctx.session.status
    ctx.shell.exit(status)
    return status


async def source(ctx: Context, args: list[str]) -> int:
    if not args:
        raise UsageError("missing file name")

    async def load() -> Script:
        return parse((await ctx.fs.read(ctx.path(args[0]))).decode("utf-8", "replace"))

    return await ctx.shell.source(load)


async def true(ctx: Context, args: list[str]) -> int:
    return 0


async def false(ctx: Context, args: list[str]) -> int:
    return 1


async def whoami(ctx: Context, args: list[str]) -> int:
    ctx.line(ctx.session.user)
    return 0
