"""Built-ins on text streams: echo, printf, yes, head, tail, wc, tee.

Their options, output formats and exit statuses are bash's and GNU
coreutils' (tests/unit/test_shell_vs_bash.py runs them side by side).

They stream: input is read a piece at a time and output written as it is
made, so their input can be of any size (see :mod:`oneos.shell.builtins.context`).
``head FILE`` and ``tail FILE`` read a file in growing blocks from its start
or its end, so they read little of a large file.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer

from oneos.errors import OneOSError, describe
from oneos.fs.errors import FSError, IsADirectory
from oneos.shell.builtins.context import MAX_INPUT, Context, Input
from oneos.shell.builtins.options import BadUsage, signed_count, split_options
from oneos.shell.devices import is_device_path
from oneos.shell.errors import BrokenPipe, ShellError, UsageError
from oneos.shell.parser import NAME_PATTERN
from oneos.shell.streams import FileInput


async def echo(ctx: Context, args: list[str]) -> int:
    """As bash's: leading words made only of ``-n``, ``-e``, ``-E`` letters are options, anything else is text."""
    newline, escapes = True, False
    while args and len(args[0]) > 1 and args[0][0] == "-" and set(args[0][1:]) <= set("neE"):
        for flag in args[0][1:]:
            if flag == "n":
                newline = False
            else:
                escapes = flag == "e"
        args = args[1:]
    text = " ".join(args)
    if not escapes:
        ctx.write(text + ("\n" if newline else ""))
        return 0
    data, stop = unescape(text, "echo")
    ctx.out.write(data if stop or not newline else data + b"\n")
    return 0


_SIMPLE_ESCAPES = {"a": 7, "b": 8, "e": 27, "E": 27, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92}
_OCTAL = frozenset("01234567")
_HEX = frozenset("0123456789abcdefABCDEF")


def _digits(text: str, at: int, allowed: frozenset[str], most: int) -> str:
    end = at
    while end < len(text) and end - at < most and text[end] in allowed:
        end += 1
    return text[at:end]


def unescape(text: str, mode: str) -> tuple[bytes, bool]:
    """Backslash escapes as bash reads them: the bytes, and whether ``\\c`` stopped the output there.

    *mode* ``echo`` (``echo -e``): ``\\0NNN`` octal, ``\\c`` stops; ``b``
    (printf's ``%b``): as echo, and ``\\NNN`` too; ``format`` (printf's
    format): ``\\NNN`` octal, ``\\"`` ``\\'`` ``\\?``, no ``\\c``.  All of
    them: ``\\a \\b \\e \\f \\n \\r \\t \\v \\\\``, ``\\xHH``, ``\\uHHHH``,
    ``\\UHHHHHHHH`` (as UTF-8); an unknown escape stays as it is.
    """
    out = bytearray()
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c != "\\" or i + 1 >= n:
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        e = text[i + 1]
        i += 2
        if e in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[e])
        elif e == "c" and mode != "format":
            return bytes(out), True
        elif e == "0" and mode != "format":
            digits = _digits(text, i, _OCTAL, 3)
            out.append(int(digits or "0", 8) & 0xFF)
            i += len(digits)
        elif e in _OCTAL and (mode == "format" or (mode == "b" and e != "0")):
            digits = e + _digits(text, i, _OCTAL, 2)
            out.append(int(digits, 8) & 0xFF)
            i += len(digits) - 1
        elif e in "xuU":
            digits = _digits(text, i, _HEX, {"x": 2, "u": 4, "U": 8}[e])
            if not digits:
                out += ("\\" + e).encode()
            elif e == "x":
                out.append(int(digits, 16))
            else:
                out += chr(min(int(digits, 16), 0x10FFFF)).encode("utf-8", "surrogatepass")
            i += len(digits)
        elif e in "\"'?" and mode == "format":
            out += e.encode()
        else:
            out += ("\\" + e).encode("utf-8", "surrogateescape")
    return bytes(out), False


# --- printf ------------------------------------------------------------------------

_SPEC = re.compile(r"%(?P<flags>[-+ #0]*)(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d*))?(?P<length>hh|h|ll|l|L|j|z|t)?")
_CONVERSIONS = frozenset("diouxXeEfFgGcsbq")
#: Characters ``%q`` escapes with a backslash anywhere (``~`` and ``#`` only first), as bash.
_Q_SPECIAL = frozenset(" \t\n'\"\\|&;()<>!{}*[?]^$`,")


class _PrintfError(Exception):
    """A conversion printf cannot make: reported, the status becomes 1, printing goes on (as bash)."""


def _number(arg: str) -> tuple[int, bool]:
    """An integer argument as bash's printf reads it: (value, valid).

    ``0x1f`` hex, ``010`` octal, ``'A`` the character's code; an invalid one
    gives what its valid start says (``12abc`` is 12), and False.
    """
    text = arg.strip(" \t\n")
    if text[:1] in ("'", '"'):
        return (ord(text[1]) if len(text) > 1 else 0), True
    m = re.match(r"[-+]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if m is None:
        return 0, not text
    digits = m.group().lstrip("+-")
    value = int(digits, 16) if digits[:2].lower() == "0x" else int(digits, 8) if digits.startswith("0") else int(digits)
    return (-value if m.group().startswith("-") else value), m.end() == len(text)


def _float(arg: str) -> tuple[float, bool]:
    text = arg.strip(" \t\n")
    if text[:1] in ("'", '"'):
        return (float(ord(text[1])) if len(text) > 1 else 0.0), True
    m = re.match(r"[-+]?(inf(inity)?|nan|(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)", text, re.IGNORECASE)
    if m is None:
        return 0.0, not text
    return float(m.group()), m.end() == len(text)


def shell_quote(text: str) -> str:
    """``%q``: *text* quoted so the shell reads it back as one word, as bash writes it.

    Printable text gets backslashes before the characters the shell would
    act on (``a\\ b``); text with control characters is ``$'...'``; the empty
    string is ``''``.
    """
    if not text:
        return "''"
    if any(not c.isprintable() and c not in " " for c in text):
        named = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r", 27: "\\E"}
        pieces = []
        for c in text:
            if c in "'\\":
                pieces.append("\\" + c)
            elif c.isprintable() or c == " ":
                pieces.append(c)
            else:
                pieces.append(named.get(ord(c)) or "".join(f"\\{b:03o}" for b in c.encode("utf-8", "surrogateescape")))
        return "$'" + "".join(pieces) + "'"
    return "".join("\\" + c if c in _Q_SPECIAL or (i == 0 and c in "~#") else c for i, c in enumerate(text))


def _convert(spec: re.Match[str], conversion: str, take: Any) -> bytes:
    """One ``%...`` conversion of printf, its arguments taken with *take*; _PrintfError for a bad number."""
    flags = spec.group("flags")
    width = spec.group("width")
    precision = spec.group("precision")
    problems: list[str] = []
    if width == "*":
        value, ok = _number(take() or "")
        width = str(value)
    if precision == "*":
        value, ok = _number(take() or "")
        precision = str(max(value, 0))
    arg = take()
    layout = f"%{flags}{width or ''}" + (f".{precision or 0}" if precision is not None else "")
    if conversion in "diouxX":
        value, ok = _number(arg or "")
        if not ok:
            problems.append(f"{arg}: invalid number")
        if conversion in "ouxX" and value < 0:
            value += 2**64
        if conversion == "o" and "#" in flags:  # C's 010, not Python's 0o10
            digits = format(value, "o")
            text = _pad("0" + digits if digits != "0" else digits, flags, width)
        else:
            text = (layout + ("d" if conversion in "iu" else conversion)) % value
    elif conversion in "eEfFgG":
        number, ok = _float(arg or "")
        if not ok:
            problems.append(f"{arg}: invalid number")
        text = (layout + conversion) % number
    else:
        if conversion == "c":
            value_text = (arg or "")[:1]
        elif conversion == "q":
            value_text = shell_quote(arg or "")
        else:
            value_text = arg or ""
        if conversion == "b":
            data, stop = unescape(value_text, "b")
            value_text = data.decode("utf-8", "surrogateescape")
            if stop:
                raise _Stop((layout + "s") % value_text)
        text = (layout + "s") % value_text
    encoded = text.encode("utf-8", "surrogateescape")
    if problems:
        raise _PrintfError(problems[0], encoded)
    return encoded


def _pad(text: str, flags: str, width: str | None) -> str:
    """*text* widened to *width* as C pads a number: left with ``-``, zeros with ``0``, else spaces."""
    size = int(width or 0)
    if "-" in flags:
        return text.ljust(size)
    return text.rjust(size, "0" if "0" in flags else " ")


class _Stop(Exception):
    """``\\c`` in a ``%b`` argument: print what came before it, then nothing more."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


async def printf(ctx: Context, args: list[str]) -> int:
    """bash's printf: the format is applied again while arguments remain; missing ones are empty or 0.

    ``-v NAME`` puts the output in a variable instead.  A bad number is
    reported and its conversion still printed (status 1), an unknown
    conversion ends the output (status 1), as bash does.
    """
    target = None
    if args[:1] == ["-v"] and len(args) > 1:
        target, args = args[1], args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    elif args and args[0].startswith("-") and len(args[0]) > 1:
        raise BadUsage(f"{args[0]}: invalid option")
    if not args:
        raise BadUsage("usage: printf [-v var] format [arguments]")
    fmt, rest = args[0], list(args[1:])
    out = bytearray()
    status = 0
    position = 0

    def take() -> str | None:
        nonlocal position
        if position >= len(rest):
            return None
        position += 1
        return rest[position - 1]

    while True:
        start = position
        i = 0
        converted = False
        while i < len(fmt):
            at = fmt.find("%", i)
            literal = fmt[i : len(fmt) if at < 0 else at]
            if literal:
                out += unescape(literal, "format")[0]
            if at < 0:
                break
            if fmt.startswith("%%", at):
                out += b"%"
                i = at + 2
                continue
            spec = _SPEC.match(fmt, at)
            assert spec is not None  # ('%' alone matches)
            conversion = fmt[spec.end() : spec.end() + 1]
            if conversion not in _CONVERSIONS or not conversion:
                ctx.error(f"`{conversion or '%'}': invalid format character")
                return _printf_done(ctx, target, out, 1)
            converted = True
            try:
                out += _convert(spec, conversion, take)
            except _PrintfError as e:
                ctx.error(str(e.args[0]))
                out += e.args[1]
                status = 1
            except _Stop as e:
                out += e.text.encode("utf-8", "surrogateescape")
                return _printf_done(ctx, target, out, status)
            i = spec.end() + 1
        if not converted or position >= len(rest) or position == start:
            break
    return _printf_done(ctx, target, out, status)


def _printf_done(ctx: Context, target: str | None, out: bytearray, status: int) -> int:
    if target is None:
        ctx.out.write(bytes(out))
    else:
        if not NAME_PATTERN.fullmatch(target):
            raise BadUsage(f"`{target}': not a valid identifier", 1)
        ctx.session.env[target] = out.decode("utf-8", "replace")
    return status


#: Bytes ``yes`` writes at a time (whole lines).
YES_BLOCK = 64 * 1024


async def yes(ctx: Context, args: list[str]) -> int:
    if args[:1] == ["--"]:
        args = args[1:]
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


async def _all_but_lines(ctx: Context, source: Input, n: int) -> None:
    """``head -n -N``: everything but the last *n* lines, streamed (only those *n* lines are held back)."""
    held = bytearray()
    async for chunk in source.chunks():
        held += chunk
        lines = held.count(b"\n")
        if lines > n:
            end = -1
            for _ in range(lines - n):
                end = held.find(b"\n", end + 1)
            await ctx.send(bytes(held[: end + 1]))
            del held[: end + 1]
    if held and not held.endswith(b"\n"):  # a last line without its newline counts as one
        if not n:
            await ctx.send(bytes(held))
        elif held.count(b"\n") == n:
            await ctx.send(bytes(held[: held.find(b"\n") + 1]))


async def _all_but_bytes(ctx: Context, source: Input, n: int) -> None:
    """``head -c -N``: everything but the last *n* bytes, streamed."""
    held = bytearray()
    async for chunk in source.chunks():
        held += chunk
        if len(held) > n:
            await ctx.send(bytes(held[: len(held) - n]))
            del held[: len(held) - n]


def _header(ctx: Context, name: str, first: bool) -> None:
    ctx.line(("" if first else "\n") + f"==> {'standard input' if name == '-' else name} <==")


async def _each_file(ctx: Context, names: list[str], headers: bool, read: Callable[[str], Awaitable[None]]) -> int:
    """head's and tail's walk over their files: a missing one is reported without a header, a
    directory after its header; ``==> NAME <==`` headers when asked; status 1 if any failed."""
    status, shown = 0, 0
    for name in names:
        try:
            is_dir = await _check_file(ctx, name)
        except OneOSError as e:
            ctx.error(describe(e))
            status = 1
            continue
        if headers:
            _header(ctx, name, not shown)
        shown += 1
        try:
            if is_dir:
                raise IsADirectory(ctx.path(name))
            await read(name)
        except BrokenPipe:
            raise
        except OneOSError as e:
            ctx.error(describe(e))
            status = 1
    return status


async def _check_file(ctx: Context, name: str) -> bool:
    """A named file's stat before reading (a missing one is reported, without a header); True for a directory."""
    if name == "-" or is_device_path(ctx.path(name)):
        return False
    return bool((await ctx.fs.stat(ctx.path(name))).is_dir)


async def head(ctx: Context, args: list[str]) -> int:
    """coreutils' head: ``-n N`` lines (``-n -N``: all but the last N), ``-c N`` bytes, headers for several files."""
    opts, files = split_options(args, "qv", "nc")
    n, line_sign = signed_count(opts.get("n"), 10)
    size, byte_sign = (None, "") if opts.get("c") is None else signed_count(opts.get("c"), 0, "bytes")
    names = files or ["-"]
    headers = (len(names) > 1 and not opts.get("q")) or bool(opts.get("v"))

    async def one(name: str) -> None:
        source = ctx.stdin if name == "-" else None
        if size is not None:  # -c N: bytes, streamed (a device under /dev too)
            stream = source or ctx.open_input(ctx.path(name))
            await (_all_but_bytes if byte_sign == "-" else _head_bytes)(ctx, stream, size)
        elif line_sign == "-":
            await _all_but_lines(ctx, source or ctx.open_input(ctx.path(name)), n)
        elif source is not None:
            await _head(ctx, source, n)
        elif is_device_path(ctx.path(name)):
            await _head(ctx, ctx.open_input(ctx.path(name)), n)
        else:
            await _head_file(ctx, ctx.path(name), n)

    return await _each_file(ctx, names, headers, one)


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


async def _tail_bytes(ctx: Context, name: str, n: int) -> bytes:
    """``tail -c N``: the last *n* bytes of a file (read from its end) or of standard input (streamed, keeping *n*)."""
    if name != "-" and not is_device_path(ctx.path(name)):
        st = await ctx.fs.stat(ctx.path(name))
        if st.is_dir:
            raise IsADirectory(st.path)
        start = max(0, st.size - n)
        return bytes(await ctx.job.wait(ctx.fs.read(st.path, start, st.size - start))) if n else b""
    kept = bytearray()
    async for chunk in (ctx.stdin if name == "-" else ctx.open_input(ctx.path(name))).chunks():
        kept += chunk
        if len(kept) > 2 * n + 65536:
            del kept[: len(kept) - n]
    return bytes(kept[len(kept) - n :]) if n else b""


async def _tail_from(ctx: Context, source: Input, skip: int, lines: bool) -> None:
    """``tail -n +N`` / ``tail -c +N``: skip the first *skip* lines (or bytes), stream the rest."""
    async for chunk in source.chunks():
        if skip and lines:
            pos = 0
            while skip:
                at = chunk.find(b"\n", pos)
                if at < 0:
                    break
                pos, skip = at + 1, skip - 1
            chunk = chunk[pos:] if not skip else b""
        elif skip:
            chunk, skip = chunk[skip:], max(0, skip - len(chunk))
        if chunk:
            await ctx.send(chunk)


async def tail(ctx: Context, args: list[str]) -> int:
    """coreutils' tail: ``-n N`` (``+N``: from line N), ``-c N`` (``+N``), ``-f`` for one file, headers for several."""
    opts, files = split_options(args, "fFqv", "nc")
    n, line_sign = signed_count(opts.get("n"), 10)
    size, byte_sign = (None, "") if opts.get("c") is None else signed_count(opts.get("c"), 0, "bytes")
    if opts.get("f") or opts.get("F"):
        if len(files) != 1:
            raise UsageError("-f follows exactly one file")
        return await _follow(ctx, files[0], n)
    names = files or ["-"]
    headers = (len(names) > 1 and not opts.get("q")) or bool(opts.get("v"))

    async def one(name: str) -> None:
        def stream() -> Input:
            return ctx.stdin if name == "-" else ctx.open_input(ctx.path(name))

        if size is not None and byte_sign == "+":
            await _tail_from(ctx, stream(), max(size - 1, 0), lines=False)
        elif size is not None:
            await ctx.send(await _tail_bytes(ctx, name, size))
        elif line_sign == "+":
            await _tail_from(ctx, stream(), max(n - 1, 0), lines=True)
        elif name == "-" or is_device_path(ctx.path(name)):
            await ctx.send(await _tail_stream(stream(), n))
        else:
            await ctx.send((await _tail_file(ctx, ctx.path(name), n))[0])

    return await _each_file(ctx, names, headers, one)


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
    """Lines, words, characters and bytes of a stream, a chunk at a time (a word may span two chunks).

    Characters are UTF-8 characters: every byte that does not continue one.
    """
    counts = {"l": 0, "w": 0, "m": 0, "c": 0}
    in_word = False
    async for chunk in source.chunks():
        counts["c"] += len(chunk)
        if "l" in which:
            counts["l"] += chunk.count(b"\n")
        if "m" in which:
            counts["m"] += len(chunk) - sum(1 for b in chunk if 0x80 <= b < 0xC0)
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


async def _wc_width(ctx: Context, names: list[str], columns: int) -> int:
    """The width of wc's numbers, as coreutils: none for one count of one input; else the digits of the
    regular files' total size, at least 7 when an input is not a regular file (a pipe, a device, a directory)."""
    if len(names) == 1 and columns == 1:
        return 1
    least, total = 1, 0
    for name in names:
        source = ctx.stdin.source if name == "-" else None
        path = getattr(source, "path", None) if name == "-" else ctx.path(name)
        if path is None or is_device_path(path) or (name == "-" and not isinstance(source, FileInput)):
            least = 7
            continue
        try:
            st = await ctx.fs.stat(path)
        except FSError:
            continue
        if st.is_dir:
            least = 7
        else:
            total += st.size
    return max(len(str(total)), least)


async def wc(ctx: Context, args: list[str]) -> int:
    """coreutils' wc: ``-l`` lines, ``-w`` words, ``-m`` characters, ``-c`` bytes, always in that order."""
    opts, files = split_options(args, "lwmc")
    which = [k for k in "lwmc" if opts.get(k)] or ["l", "w", "c"]
    totals = {"l": 0, "w": 0, "m": 0, "c": 0}
    sources = _sources(ctx, files)
    width = await _wc_width(ctx, [name for name, _ in sources], len(which))
    status = 0

    def show(counts: dict[str, int], name: str | None) -> None:
        ctx.line(" ".join(f"{counts[k]:>{width}}" for k in which) + ("" if name is None else f" {name}"))

    for name, source in sources:
        try:
            counts = await _counts(source, which)
        except FSError as e:
            ctx.error(describe(e))
            status = 1
            if not isinstance(e, IsADirectory):
                continue
            counts = {"l": 0, "w": 0, "m": 0, "c": 0}  # (coreutils still prints a line of zeros)
        for k in totals:
            totals[k] += counts[k]
        show(counts, name if files else None)
    if len(sources) > 1:
        show(totals, "total")
    return status


async def tee(ctx: Context, args: list[str]) -> int:
    opts, files = split_options(args, "aip")
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
