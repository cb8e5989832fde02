"""Built-ins of the shell language itself: test / [, :, break, continue, return, local, shift.

``break``, ``continue`` and ``return`` raise the interpreter's signals
(:mod:`oneos.shell.control`) that unwind to the loop or function they end;
``local`` and ``shift`` change the function's scope.  They reach the scope
through ``ctx.shell.scope`` (the interpreter's
:class:`~oneos.shell.interpreter.ShellView`); a context without one behaves
as the top of a session (no loop, no function).

``test`` follows POSIX's rules by number of arguments (so ``[ -n ]`` and
``[ ! = x ]`` mean what they mean in bash), then a precedence parser for
longer expressions (``!``, ``-a`` above ``-o``, parentheses).  File tests
look at the OneOS tree as the session's user: ``-r``/``-w``/``-x`` follow
the tree's owners and modes (:func:`oneos.fs.permissions.permitted`), there
are no symbolic links, FIFOs, sockets nor block devices.  A usage error
(``[ 1 -eq x ]``, a missing ``]``) is status 2, as in bash.
"""

from __future__ import annotations

from typing import Any

from oneos.errors import OneOSError
from oneos.fs import permissions
from oneos.fs.store import Stat
from oneos.shell.builtins.context import Context
from oneos.shell.control import BreakLoop, ContinueLoop, ReturnFrom, Scope
from oneos.shell.parser import NAME_PATTERN

#: Status of a misused built-in (bash's).
USAGE = 2

_UNARY = frozenset("-e -f -d -r -w -x -s -z -n -L -h -b -c -p -S -t -g -u -k -O -G -N".split())
_BINARY = frozenset("= == != < > -eq -ne -lt -le -gt -ge -nt -ot -ef".split())


def _scope(ctx: Context) -> Scope | None:
    scope = getattr(ctx.shell, "scope", None)
    return scope if isinstance(scope, Scope) else None


def _number(text: str) -> int | None:
    """An integer argument as bash takes it (blanks around it, a sign); None if it is not one."""
    word = text.strip()
    digits = word[1:] if word[:1] in "+-" else word
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    return int(word)


async def colon(ctx: Context, args: list[str]) -> int:
    """``:``: nothing, successfully (``while :; do``)."""
    return 0


async def _loop_count(ctx: Context, args: list[str]) -> int | None:
    """N of ``break N`` / ``continue N`` (1 by default); None after saying what is wrong."""
    if len(args) > 1:
        ctx.error("too many arguments")
        return None
    if not args:
        return 1
    n = _number(args[0])
    if n is None:
        ctx.error(f"{args[0]}: numeric argument required")
        return None
    if n < 1:
        ctx.error(f"{args[0]}: loop count out of range")
        return None
    return n


async def _leave_loops(ctx: Context, args: list[str], signal: type[BreakLoop] | type[ContinueLoop]) -> int:
    """Raise *signal* for ``N`` loops (at most as many as enclose us); bash's complaints otherwise."""
    n = await _loop_count(ctx, args)
    if n is None:
        return 1
    scope = _scope(ctx)
    if scope is None or scope.loops == 0:
        ctx.error("only meaningful in a `for', `while', or `until' loop")
        return 0
    raise signal(min(n, scope.loops))


async def break_(ctx: Context, args: list[str]) -> int:
    """``break [N]``: leave the N innermost loops (all of them if there are fewer)."""
    return await _leave_loops(ctx, args, BreakLoop)


async def continue_(ctx: Context, args: list[str]) -> int:
    """``continue [N]``: the next turn of the Nth enclosing loop."""
    return await _leave_loops(ctx, args, ContinueLoop)


async def return_(ctx: Context, args: list[str]) -> int:
    """``return [N]``: end the function (or sourced file) with N (default: the last command's status)."""
    scope = _scope(ctx)
    if scope is None or not (scope.in_function or scope.sourcing):
        ctx.error("can only `return' from a function or sourced script")
        return USAGE
    if len(args) > 1:
        ctx.error("too many arguments")
        return USAGE
    status = ctx.session.status
    if args:
        n = _number(args[0])
        if n is None:
            ctx.error(f"{args[0]}: numeric argument required")
            raise ReturnFrom(USAGE)
        status = n
    raise ReturnFrom(status & 0xFF)


async def local(ctx: Context, args: list[str]) -> int:
    """``local NAME[=VALUE]...``: variables of the function running, given back their values when it returns."""
    scope = _scope(ctx)
    if scope is None or not scope.in_function:
        ctx.error("can only be used in a function")
        return 1
    status = 0
    for arg in args:
        name, eq, value = arg.partition("=")
        if not NAME_PATTERN.fullmatch(name):
            ctx.error(f"`{arg}': not a valid identifier")
            status = 1
            continue
        scope.make_local(name, value if eq else None)
    return status


async def shift(ctx: Context, args: list[str]) -> int:
    """``shift [N]``: drop the first N positional parameters; status 1 (nothing dropped) if there are fewer."""
    if len(args) > 1:
        ctx.error("too many arguments")
        return 1
    n = _number(args[0]) if args else 1
    if n is None or n < 0:
        ctx.error(f"{args[0]}: numeric argument required" if n is None else f"{args[0]}: shift count out of range")
        return 1
    scope = _scope(ctx)
    positional = scope.positional if scope is not None else []
    if n > len(positional):
        return 1
    del positional[:n]
    return 0


# --- test / [ -------------------------------------------------------------------


class _TestError(Exception):
    """A misused ``test``: its message, and status 2."""


async def test(ctx: Context, args: list[str]) -> int:
    """``test EXPRESSION``: 0 if true, 1 if false, 2 if it cannot be read."""
    return await _run_test(ctx, args)


async def bracket(ctx: Context, args: list[str]) -> int:
    """``[ EXPRESSION ]``: ``test`` with a closing ``]``."""
    if not args or args[-1] != "]":
        ctx.error("missing `]'")
        return USAGE
    return await _run_test(ctx, args[:-1])


async def _run_test(ctx: Context, args: list[str]) -> int:
    try:
        return 0 if await _Test(ctx, args).run() else 1
    except _TestError as e:
        ctx.error(str(e))
        return USAGE


class _Test:
    """One ``test`` expression: POSIX's rules for up to four arguments, then precedence parsing."""

    def __init__(self, ctx: Context, args: list[str]) -> None:
        self.ctx = ctx
        self.args = args
        self.i = 0

    async def run(self) -> bool:
        args = self.args
        if len(args) <= 4:
            return await self.counted(args)
        return await self.parse_all()

    async def counted(self, args: list[str]) -> bool:
        """POSIX's table: what 0 to 4 arguments mean."""
        n = len(args)
        if n == 0:
            return False
        if n == 1:
            return args[0] != ""
        if n == 2:
            if args[0] == "!":
                return args[1] == ""
            if args[0] in _UNARY:
                return await self.unary(args[0], args[1])
            raise _TestError(f"{args[0]}: unary operator expected")
        if n == 3:
            if args[1] in _BINARY:
                return await self.binary(args[0], args[1], args[2])
            if args[1] in ("-a", "-o"):
                left, right = args[0] != "", args[2] != ""
                return (left and right) if args[1] == "-a" else (left or right)
            if args[0] == "!":
                return not await self.counted(args[1:])
            if args[0] == "(" and args[2] == ")":
                return args[1] != ""
            raise _TestError(f"{args[1]}: binary operator expected")
        if args[0] == "!":
            return not await self.counted(args[1:])
        if args[0] == "(" and args[3] == ")":
            return await self.counted(args[1:3])
        return await self.parse_all()

    async def parse_all(self) -> bool:
        self.i = 0
        value = await self.either()
        if self.i < len(self.args):
            raise _TestError("too many arguments")
        return value

    def peek(self, offset: int = 0) -> str | None:
        at = self.i + offset
        return self.args[at] if at < len(self.args) else None

    async def either(self) -> bool:
        value = await self.both()
        while self.peek() == "-o":
            self.i += 1
            right = await self.both()
            value = value or right
        return value

    async def both(self) -> bool:
        value = await self.negation()
        while self.peek() == "-a":
            self.i += 1
            right = await self.negation()
            value = value and right
        return value

    async def negation(self) -> bool:
        if self.peek() == "!" and self.peek(1) is not None:
            self.i += 1
            return not await self.negation()
        return await self.primary()

    async def primary(self) -> bool:
        token = self.peek()
        if token is None:
            raise _TestError("argument expected")
        operator = self.peek(1)
        if operator is not None and operator in _BINARY and self.peek(2) is not None:  # first, so '( = (' compares
            self.i += 3
            return await self.binary(token, operator, self.args[self.i - 1])
        if token == "(":
            self.i += 1
            value = await self.either()
            if self.peek() != ")":
                raise _TestError("`)' expected")
            self.i += 1
            return value
        if token in _UNARY and operator is not None:
            self.i += 2
            return await self.unary(token, operator)
        self.i += 1
        return token != ""

    # -- the operators -------------------------------------------------------------
    async def stat(self, path: str) -> Stat | None:
        try:
            st: Stat = await self.ctx.fs.stat(self.ctx.path(path))
        except OneOSError:
            return None
        return st

    async def unary(self, op: str, arg: str) -> bool:
        if op == "-z":
            return arg == ""
        if op == "-n":
            return arg != ""
        if op == "-t":
            return False  # a built-in's streams are never a terminal's file descriptor
        st = await self.stat(arg) if arg else None
        if st is None:
            return False
        user = self.ctx.session.user
        checks: dict[str, Any] = {
            "-e": True,
            "-f": st.is_file,
            "-d": st.is_dir,
            "-s": st.is_dir or st.size > 0,
            "-r": permissions.permitted(user, st.owner, st.mode, permissions.READ),
            "-w": permissions.permitted(user, st.owner, st.mode, permissions.WRITE),
            "-x": permissions.permitted(user, st.owner, st.mode, permissions.EXECUTE)
            and (st.is_dir or bool(st.mode & 0o111)),
            "-O": st.owner == user,
            "-G": st.owner == user,
            "-u": bool(st.mode & permissions.SETUID),
            "-g": bool(st.mode & permissions.SETGID),
            "-k": bool(st.mode & permissions.STICKY),
        }
        return bool(checks.get(op, False))  # -L -h -b -c -p -S -N: the tree has none of these

    def integer(self, text: str) -> int:
        n = _number(text)
        if n is None:
            raise _TestError(f"{text}: integer expression expected")
        return n

    async def binary(self, left: str, op: str, right: str) -> bool:
        if op in ("=", "=="):
            return left == right
        if op == "!=":
            return left != right
        if op == "<":
            return left.encode() < right.encode()
        if op == ">":
            return left.encode() > right.encode()
        if op in ("-nt", "-ot", "-ef"):
            a, b = await self.stat(left), await self.stat(right)
            if op == "-ef":
                return a is not None and b is not None and a.path == b.path
            if op == "-nt":
                return a is not None and (b is None or a.mtime > b.mtime)
            return b is not None and (a is None or a.mtime < b.mtime)
        a_num, b_num = self.integer(left), self.integer(right)
        return {
            "-eq": a_num == b_num,
            "-ne": a_num != b_num,
            "-lt": a_num < b_num,
            "-le": a_num <= b_num,
            "-gt": a_num > b_num,
            "-ge": a_num >= b_num,
        }[op]
