"""Built-ins on the session itself: cd, pwd, env, export, unset, history, help, exit, source,
whoami, clear, true, false.

They change or show what the session keeps between lines
(:class:`~oneos.shell.session.Session`); ``exit``, ``source`` and ``help``
ask the interpreter through ``ctx.shell``.
"""

from __future__ import annotations

import posixpath

from oneos.fs.errors import NotADirectory
from oneos.shell import devices
from oneos.shell.builtins.context import Context
from oneos.shell.builtins.options import BadUsage, split_options
from oneos.shell.parser import NAME_PATTERN, Script, parse


def _climb(cwd: str, target: str) -> str:
    """*target* from *cwd*, ``..`` resolved textually and stopping at ``/`` (``cd ../../..`` from near the top is ``/``).

    The file system refuses a path that climbs above its root; ``cd``, as
    bash, just stays at the top.
    """
    path = posixpath.normpath(posixpath.join(cwd, target))
    return "/" + path.lstrip("/")


async def cd(ctx: Context, args: list[str]) -> int:
    """bash's cd: no operand is ``$HOME``, ``-`` is ``$OLDPWD`` (printed), ``-L``/``-P`` are the same here (no links)."""
    _, names = split_options(args, "LPe@", permute=False, status=2)
    if len(names) > 1:
        raise BadUsage("too many arguments", 1)
    show = False
    if not names:
        home = ctx.session.env.get("HOME")
        if home is None:
            raise BadUsage("HOME not set", 1)
        target = home
    elif names[0] == "-":
        target = ctx.session.env.get("OLDPWD", "")
        if not target:
            raise BadUsage("OLDPWD not set", 1)
        show = True
    else:
        target = names[0]
    if not target:  # cd "" (or an empty HOME): stays, as bash
        return 0
    path = ctx.path(_climb(ctx.session.cwd, target))
    if devices.is_device_path(path):  # /dev is the live runtimes' devices, not the store's
        await devices.enter_dir(ctx.grid, ctx.job, path)
    else:
        st = await ctx.fs.stat(path)
        if not st.is_dir:
            raise NotADirectory(target)
    ctx.session.set_cwd(path)
    if show:
        ctx.line(path)
    return 0


async def pwd(ctx: Context, args: list[str]) -> int:
    split_options(args, "LP", permute=False, status=2)
    ctx.line(ctx.session.cwd)
    return 0


async def env(ctx: Context, args: list[str]) -> int:
    """The environment programs get: exported variables (with this command's ``NAME=value`` prefixes), as coreutils' env.

    ``env NAME=VALUE...`` shows them added, ``-u NAME`` removed, ``-i``
    starts from nothing; running a command through env is not supported.
    """
    opts, rest = split_options(args, "i", "u", permute=False, status=125)
    shown = {} if opts.get("i") else ctx.session.agent_env(ctx.assignments)
    if isinstance(opts.get("u"), str):
        shown.pop(str(opts["u"]), None)
    for word in rest:
        name, eq, value = word.partition("=")
        if not eq or not name:
            raise BadUsage(f"{word}: running a command through env is not supported (write NAME=VALUE {word})", 125)
        shown[name] = value
    for k in sorted(shown):
        ctx.line(f"{k}={shown[k]}")
    return 0


def _declare(name: str, value: str | None) -> str:
    """One line of ``export -p``, as bash writes it: ``declare -x NAME="value"``."""
    if value is None:
        return f"declare -x {name}"
    escaped = "".join("\\" + c if c in '"\\$`' else c for c in value)
    return f'declare -x {name}="{escaped}"'


async def export(ctx: Context, args: list[str]) -> int:
    """bash's export: ``NAME[=VALUE]...``, ``-n`` to stop exporting, no operand (or ``-p``) lists them."""
    opts, names = split_options(args, "np", permute=False, status=2)
    if not names:
        for k in sorted(ctx.session.exported):
            ctx.line(_declare(k, ctx.session.env.get(k)))
        return 0
    status = 0
    for a in names:
        name, eq, value = a.partition("=")
        if not NAME_PATTERN.fullmatch(name):
            ctx.error(f"`{a}': not a valid identifier")
            status = 1
            continue
        if eq:
            ctx.session.env[name] = value
        if opts.get("n"):
            ctx.session.exported.discard(name)
        else:
            ctx.session.exported.add(name)
    return status


async def unset(ctx: Context, args: list[str]) -> int:
    """bash's unset: variables (``-v``, the default) or functions (``-f``)."""
    opts, names = split_options(args, "fvn", permute=False, status=2)
    functions = getattr(getattr(ctx.shell, "scope", None), "functions", None)
    for name in names:
        if opts.get("f"):
            if functions is not None:
                functions.pop(name, None)
            continue
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
    """bash's exit: ``exit N`` ends with N & 255; a word that is not a number ends with 2, after saying so."""
    if args[:1] == ["--"]:
        args = args[1:]
    if len(args) > 1:
        raise BadUsage("too many arguments", 1)
    status = ctx.session.status
    if args:
        text = args[0].strip()
        digits = text[1:] if text[:1] in "+-" else text
        if not digits.isdigit() or not digits.isascii():
            ctx.error(f"{args[0]}: numeric argument required")
            status = 2
        else:
            status = int(text) & 0xFF
    ctx.shell.exit(status)
    return status


async def source(ctx: Context, args: list[str]) -> int:
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        raise BadUsage("filename argument required")

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
